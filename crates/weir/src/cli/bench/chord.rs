//! `weir bench --chord N`: a durable chord of N children, after N plain jobs on the same
//! broker as the baseline. Children are no-ops, so what is measured is weir's cost: the
//! store transaction per child and the callback's hand-off.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::workflow::{StepSpec, WorkflowSpec, WorkflowState, Workflows};
use weir::{Broker, NewJob, Registry, StateStore, TaskContext, TaskError, Worker};

use super::{micros, BenchArgs, Done};

/// Latest child end and the callback's start, in µs since the bench clock started.
#[derive(Default)]
struct Marks {
    last_child_end: AtomicU64,
    callback_start: AtomicU64,
}

fn registry(marks: Arc<Marks>) -> Registry {
    let mut r = Registry::new();
    let m = marks.clone();
    r.register_fn("bench_child", move |n: u64, _cx: TaskContext| {
        m.last_child_end.fetch_max(micros(), Ordering::Relaxed);
        async move { Ok::<_, TaskError>(n) }
    });
    r.register_fn(
        "bench_callback",
        move |v: serde_json::Value, _cx: TaskContext| {
            marks.callback_start.store(micros(), Ordering::Relaxed);
            let n = v.as_array().map_or(0, Vec::len);
            async move { Ok::<_, TaskError>(n) }
        },
    );
    r
}

pub(super) async fn run(
    broker: Arc<dyn Broker>,
    store: Arc<dyn StateStore>,
    n: u32,
    a: &BenchArgs,
    target: &str,
) -> anyhow::Result<ExitCode> {
    let marks = Arc::new(Marks::default());
    let done = Arc::new(Done {
        settled: AtomicU64::new(0),
        target: u64::from(n),
        notify: tokio::sync::Notify::new(),
    });
    let wf = Workflows::new(broker.clone(), store.clone());
    let worker = Worker::builder(broker.clone(), registry(marks.clone()))
        .queue("bench", a.workers as usize)
        .fetch_batch(a.fetch_batch as usize)
        .observer(done.clone())
        .workflows(wf.clone())
        .build()?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let _ = micros();
    let running = tokio::spawn({
        let stop = stop.clone();
        worker.run(async move { stop.notified().await })
    });
    if !a.json {
        out!(
            "weir bench --chord: {n} children, {} workers, {target}",
            a.workers
        );
    }

    // Baseline: the same number of plain jobs, enqueued in batches of 1,000.
    let t0 = Instant::now();
    for start in (0..n).step_by(1000) {
        let jobs = (start..(start + 1000).min(n))
            .map(|i| NewJob::new("bench_child", i.to_string()).queue("bench"))
            .collect();
        broker.enqueue_many(jobs).await?;
    }
    while done.settled.load(Ordering::Relaxed) < u64::from(n) {
        let _ = tokio::time::timeout(Duration::from_millis(100), done.notify.notified()).await;
    }
    let plain = t0.elapsed().as_secs_f64();
    done.settled.store(0, Ordering::Relaxed);

    // The chord.
    let children = (0..n)
        .map(|i| StepSpec::new("bench_child", i.into()).queue("bench"))
        .collect();
    let spec = WorkflowSpec::chord(children, StepSpec::kind("bench_callback").queue("bench"));
    let start_us = micros();
    let t1 = Instant::now();
    let id = wf.submit(&spec).await?;
    let submit = t1.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    // A child settles only after its outcome is recorded in the store: the n-th settle is the
    // end of the children's phase.
    let mut recorded = None;
    let status = loop {
        if recorded.is_none() && done.settled.load(Ordering::Relaxed) >= u64::from(n) {
            recorded = Some(t1.elapsed().as_secs_f64());
        }
        let s = store.status(id).await?.expect("stored");
        if s.state != WorkflowState::Running {
            break s;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "chord still running after 10 minutes: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let total = t1.elapsed().as_secs_f64();
    stop.notify_one();
    running.await?;
    anyhow::ensure!(
        status.state == WorkflowState::Succeeded,
        "the chord did not succeed: {status:?}"
    );
    let last_child = marks.last_child_end.load(Ordering::Relaxed);
    let callback = marks.callback_start.load(Ordering::Relaxed);
    let handlers_secs = last_child.saturating_sub(start_us) as f64 / 1e6;
    let recorded_secs = recorded.unwrap_or(total);
    let callback_ms = callback.saturating_sub(last_child) as f64 / 1000.0;
    let plain_rate = f64::from(n) / plain;
    let chord_rate = f64::from(n) / recorded_secs;
    if !a.json {
        out!("  baseline    {plain_rate:.0} plain jobs/s ({plain:.3} s)");
        out!(
            "  chord       {chord_rate:.0} children/s recorded ({recorded_secs:.3} s from submit until every child was recorded and settled; submit {submit:.3} s; the last handler ended at {handlers_secs:.3} s)"
        );
        out!(
            "  callback    started {callback_ms:.1} ms after the last child's handler ended; chord done in {total:.3} s"
        );
        out!(
            "  ratio       {:.2}x the baseline's rate",
            chord_rate / plain_rate
        );
    }
    if a.json {
        out!(
            "{}",
            serde_json::json!({
                "children": n,
                "baseline_jobs_per_sec": plain_rate,
                "children_per_sec": chord_rate,
                "handlers_done_seconds": handlers_secs,
                "submit_seconds": submit,
                "callback_latency_ms": callback_ms,
                "chord_seconds": total,
                "workers": a.workers,
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}
