//! `weir demo`: a mixed workload on a fresh embedded queue, with live progress and a summary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::Notify;
use weir::{
    Backoff, Job, JobState, Lease, ListFilter, NewJob, Observer, Registry, SettleOutcome,
    Settlement, SqliteBroker, Timestamp, Worker,
};

use super::Args;

#[derive(ClapArgs, Debug)]
pub(crate) struct DemoArgs {
    /// How many tasks.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    tasks: u64,
    /// Jobs run at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    workers: u32,
    /// The queue file; replaced if an earlier demo made it, refused if anything else is there.
    #[arg(long, default_value = "weir-demo.db")]
    db: PathBuf,
}

/// Counts what the worker does, for the progress bars and the summary.
#[derive(Default)]
struct Tally {
    started: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    lag_ms: Mutex<Option<Histogram<u64>>>,
    done: Notify,
    total: u64,
}

impl Tally {
    fn finished(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

impl Observer for Tally {
    fn started(&self, job: &Job, at: Timestamp) {
        self.started.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.lag_ms.lock().as_mut() {
            let _ = h.record(at.since(job.run_at).as_millis() as u64);
        }
    }

    fn settled(&self, _lease: &Lease, s: &Settlement, out: SettleOutcome) {
        if out != SettleOutcome::Applied {
            return;
        }
        match s {
            Settlement::Succeeded { .. } => self.succeeded.fetch_add(1, Ordering::Relaxed),
            Settlement::Retry { .. } => self.retried.fetch_add(1, Ordering::Relaxed),
            Settlement::Failed { .. } => self.failed.fetch_add(1, Ordering::Relaxed),
            Settlement::Release | Settlement::Defer { .. } | Settlement::Cancel { .. } => 0,
        };
        if self.finished() >= self.total {
            self.done.notify_one();
        }
    }
}

/// The mix: mostly short work, some urgent, some delayed, some that fail and recover, and some
/// that fail for good in each way a task can.
fn workload(n: u64) -> Vec<NewJob> {
    let mut rng = rand::rng();
    (0..n)
        .map(|i| match i % 100 {
            0..=59 => NewJob::new("sleep", format!(r#"{{"ms":{}}}"#, rng.random_range(1..30))),
            60..=69 => NewJob::new("noop", "{}").priority(10),
            70..=79 => NewJob::new("sleep", r#"{"ms":5}"#)
                .delay(Duration::from_millis(rng.random_range(500..3000))),
            80..=91 => NewJob::new("fail", format!(r#"{{"times":{}}}"#, 1 + i % 2)).max_attempts(5),
            92..=95 => NewJob::new("fail", r#"{"times":10}"#).max_attempts(3),
            96..=97 => NewJob::new("sleep", r#"{"ms":"soon"}"#),
            _ => NewJob::new("shell", r#"{"cmd":"sh","args":["-c","echo hi"]}"#),
        })
        .collect()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

pub(crate) async fn run(_args: &Args, a: &DemoArgs) -> anyhow::Result<ExitCode> {
    // The demo starts from an empty file, but deletes only a file an earlier demo made (it
    // leaves a marker beside it): never a user's database that happens to be named so.
    let with = |suffix: &str| {
        let mut p = a.db.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    };
    let marker = with(".weir-demo");
    if a.db.exists() {
        if !marker.exists() {
            anyhow::bail!(
                "{} exists and was not made by `weir demo`: give another --db, or remove it yourself",
                a.db.display()
            );
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(with(suffix));
        }
    }
    std::fs::write(
        &marker,
        "made by `weir demo`: its next run may replace the database beside this file\n",
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    let broker = Arc::new(SqliteBroker::open(&a.db)?);
    let url = format!("sqlite:{}", a.db.display());
    let tally = Arc::new(Tally {
        total: a.tasks,
        lag_ms: Mutex::new(Histogram::new(3).ok()),
        ..Default::default()
    });
    let mut registry = Registry::new();
    registry.default_backoff(Backoff::new(
        Duration::from_millis(100),
        2.0,
        Duration::from_secs(2),
    )?);
    weir::builtins::register(&mut registry, &weir::config::Config::default())
        .map_err(anyhow::Error::msg)?;

    println!(
        "weir demo: {} tasks on {url}, {} workers",
        a.tasks, a.workers
    );
    let t0 = Instant::now();
    let jobs = workload(a.tasks);
    let mut it = jobs.into_iter().peekable();
    while it.peek().is_some() {
        weir::Broker::enqueue_many(&*broker, it.by_ref().take(1000).collect()).await?;
    }
    let enqueued = t0.elapsed();

    let worker = Worker::builder(broker.clone(), registry)
        .queue(weir::DEFAULT_QUEUE, a.workers as usize)
        .observer(tally.clone())
        .shutdown_grace(Duration::from_secs(5))
        .build()?;
    let stop = Arc::new(Notify::new());
    let run = tokio::spawn({
        let stop = stop.clone();
        worker.run(async move { stop.notified().await })
    });

    let bars = MultiProgress::new();
    let done_bar = bars.add(ProgressBar::new(a.tasks));
    done_bar.set_style(style(
        "{prefix:>10} [{bar:40.green/white}] {pos}/{len} {msg}",
    ));
    done_bar.set_prefix("finished");
    let ok_bar = bars.add(ProgressBar::new(a.tasks));
    ok_bar.set_style(style("{prefix:>10} [{bar:40.cyan/white}] {pos}"));
    ok_bar.set_prefix("succeeded");
    let info = bars.add(ProgressBar::new_spinner());
    info.set_style(style("{prefix:>10} {msg}"));
    info.set_prefix("");
    let start = Instant::now();
    loop {
        let finished = tally.finished();
        done_bar.set_position(finished);
        ok_bar.set_position(tally.succeeded.load(Ordering::Relaxed));
        let secs = start.elapsed().as_secs_f64().max(0.001);
        done_bar.set_message(format!("{:.0} tasks/s", finished as f64 / secs));
        info.set_message(format!(
            "retries {}  dead-lettered {}  attempts started {}",
            tally.retried.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            tally.started.load(Ordering::Relaxed),
        ));
        if finished >= a.tasks {
            break;
        }
        tokio::select! {
            _ = tally.done.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let elapsed = start.elapsed();
    done_bar.finish();
    ok_bar.finish();
    info.finish();
    stop.notify_one();
    run.await?;

    let succeeded = tally.succeeded.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    println!();
    println!(
        "{} tasks in {:.2} s (enqueued in {:.0} ms): {:.0} tasks/s",
        a.tasks,
        elapsed.as_secs_f64(),
        enqueued.as_secs_f64() * 1000.0,
        a.tasks as f64 / elapsed.as_secs_f64()
    );
    println!("  succeeded      {succeeded}");
    println!("  retries        {}", tally.retried.load(Ordering::Relaxed));
    println!("  dead-lettered  {failed}");
    if let Some(h) = tally.lag_ms.lock().as_ref() {
        println!(
            "  start lag      p50 {} ms  p90 {} ms  p99 {} ms  max {} ms  (from due time to start)",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    // How to call this binary again from here (it is often not on PATH after `cargo run`).
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| {
            let cwd = std::env::current_dir().ok()?;
            Some(p.strip_prefix(&cwd).map(|r| r.to_path_buf()).unwrap_or(p))
        })
        .map_or_else(|| "weir".to_owned(), |p| p.display().to_string());
    let dead = weir::Inspect::list(
        &*broker,
        ListFilter {
            state: Some(JobState::Failed),
            queue: None,
            limit: usize::MAX / 2,
            ..Default::default()
        },
    )
    .await?;
    let mut reasons: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for j in &dead {
        let e = reasons
            .entry(j.last_error.clone().unwrap_or_default())
            .or_insert((0, j.id.to_string()));
        e.0 += 1;
    }
    if !reasons.is_empty() {
        println!("\nDead-lettered tasks by reason:");
        let mut by_count: Vec<_> = reasons.into_iter().collect();
        by_count.sort_by_key(|e| std::cmp::Reverse(e.1 .0));
        for (reason, (n, example)) in by_count {
            println!("  {n:>6}  {reason}\n          e.g. {exe} --broker {url} inspect {example}");
        }
    }
    println!(
        "\nLook around:  {exe} --broker {url} status   |   {exe} --broker {url} list --state failed"
    );
    Ok(ExitCode::SUCCESS)
}
