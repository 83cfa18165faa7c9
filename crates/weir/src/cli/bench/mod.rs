//! `weir bench`: end-to-end no-op throughput (enqueue → run → durable settle) and
//! enqueue → start latency, on a fresh queue.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::Notify;
use weir::{
    AmqpBroker, AmqpOptions, Broker, Lease, MemoryBroker, NewJob, Observer, Registry,
    SettleOutcome, Settlement, SqliteBroker, SqliteOptions, StateStore, Synchronous, TaskContext,
    TaskError, Worker,
};

mod chord;

use super::Args;

#[derive(ClapArgs, Debug)]
pub(crate) struct BenchArgs {
    /// How many tasks.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    tasks: u64,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    workers: u32,
    /// Most jobs leased per fetch.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    fetch_batch: u32,
    /// Enqueue at this many tasks per second instead of as fast as possible (for latency).
    #[arg(long)]
    rate: Option<u64>,
    /// Embedded queue file. By default, a fresh temporary file.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Commit durability: full (fsync every commit, the default) or normal.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    sync: String,
    /// Use the in-memory broker (measures the runtime alone).
    #[arg(long, conflicts_with = "amqp")]
    memory: bool,
    /// Use RabbitMQ at this URL, on queues of a fresh namespace deleted afterwards.
    #[arg(long, value_name = "URL", conflicts_with_all = ["path", "memory"])]
    amqp: Option<String>,
    /// Print the result as one JSON object instead of the text.
    #[arg(long)]
    json: bool,
    /// Run a durable chord of this many children instead (embedded broker and store, or
    /// --amqp with --store): first the same number of plain jobs as a baseline, then the
    /// chord; reports children per second and the callback latency.
    #[arg(long, value_name = "CHILDREN", value_parser = clap::value_parser!(u32).range(1..=99_999))]
    chord: Option<u32>,
    /// Record Prometheus metrics while running, as `weir serve --http` does (the recorder
    /// installed, the broker measured), to compare with a run without.
    #[arg(long)]
    metrics: bool,
}

#[derive(Deserialize)]
struct Stamp {
    t: u64,
}

fn clock() -> &'static Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now)
}

fn micros() -> u64 {
    clock().elapsed().as_micros() as u64
}

struct Done {
    settled: AtomicU64,
    target: u64,
    notify: Notify,
}

impl Observer for Done {
    fn settled(&self, _l: &Lease, s: &Settlement, out: SettleOutcome) {
        if out == SettleOutcome::Applied
            && matches!(s, Settlement::Succeeded { .. })
            && self.settled.fetch_add(1, Ordering::Relaxed) + 1 == self.target
        {
            self.notify.notify_one();
        }
    }
}

pub(crate) async fn run(args: &Args, a: &BenchArgs) -> anyhow::Result<ExitCode> {
    let _dir;
    let mut store: Option<Arc<dyn StateStore>> = None;
    let mut amqp = None;
    let (broker, target): (Arc<dyn Broker>, String) = if a.memory {
        (Arc::new(MemoryBroker::new()), "memory".into())
    } else if let Some(url) = &a.amqp {
        let prefix = format!("weir-bench-{}.", std::process::id());
        let sep = if url.contains('?') { '&' } else { '?' };
        let b = Arc::new(AmqpBroker::new(&format!("{url}{sep}prefix={prefix}"))?);
        b.connect(&["bench"]).await?;
        amqp = Some(b.clone());
        let o = AmqpOptions::from_url(url).map_err(anyhow::Error::msg)?;
        (
            b,
            format!(
                "rabbitmq ({:?} queues) at {}",
                o.queue_type,
                o.display_url()
            ),
        )
    } else {
        let path = match &a.path {
            Some(p) => p.clone(),
            None => {
                let d = tempfile::tempdir()?;
                let p = d.path().join("bench.db");
                _dir = d;
                p
            }
        };
        let sync = if a.sync == "normal" {
            Synchronous::Normal
        } else {
            Synchronous::Full
        };
        let opts = SqliteOptions::new(&path).synchronous(sync);
        let b = SqliteBroker::open_with(opts)?;
        if a.chord.is_some() {
            store = Some(Arc::new(b.store()?));
        }
        (
            Arc::new(b),
            format!("sqlite (sync={}) at {}", a.sync, path.display()),
        )
    };
    let broker = if a.metrics {
        super::http::metered(broker)?.0
    } else {
        broker
    };
    if let Some(n) = a.chord {
        let store = match store {
            Some(s) => s,
            None if a.memory => Arc::new(weir::MemoryStore::new()),
            None => args.require_store().await?,
        };
        let out = chord::run(broker.clone(), store, n, a, &target).await;
        if let Some(b) = amqp {
            b.delete_queues(&["bench".to_owned()]).await?;
            b.close().await;
        }
        return out;
    }
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let mut registry = Registry::new();
    {
        let latency = latency.clone();
        registry.register_fn("bench", move |s: Stamp, _cx: TaskContext| {
            let _ = latency.lock().record(micros().saturating_sub(s.t));
            async { Ok::<_, TaskError>(()) }
        });
    }
    let done = Arc::new(Done {
        settled: AtomicU64::new(0),
        target: a.tasks,
        notify: Notify::new(),
    });
    let worker = Worker::builder(broker.clone(), registry)
        .queue("bench", a.workers as usize)
        .fetch_batch(a.fetch_batch as usize)
        .observer(done.clone())
        .build()?;
    let stop = Arc::new(Notify::new());
    let _ = micros();
    let running = tokio::spawn({
        let stop = stop.clone();
        worker.run(async move { stop.notified().await })
    });
    let mode = match a.rate {
        Some(r) => format!("{r} tasks/s offered"),
        None => "as fast as possible".to_owned(),
    };
    if !a.json {
        out!(
            "weir bench: {} no-op tasks, {} workers, {target}, enqueued {mode}",
            a.tasks,
            a.workers
        );
    }
    let t0 = Instant::now();
    let producer = tokio::spawn({
        let broker = broker.clone();
        let (n, rate) = (a.tasks, a.rate);
        async move {
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let started = Instant::now();
            while sent < n {
                let k = match rate {
                    None => 1000.min(n - sent),
                    Some(r) => {
                        tick.tick().await;
                        let due = (started.elapsed().as_secs_f64() * r as f64) as u64;
                        due.min(n).saturating_sub(sent)
                    }
                };
                if k == 0 {
                    continue;
                }
                let t = micros();
                let jobs = (0..k)
                    .map(|_| NewJob::new("bench", format!(r#"{{"t":{t}}}"#)).queue("bench"))
                    .collect();
                broker.enqueue_many(jobs).await?;
                sent += k;
            }
            anyhow::Ok(())
        }
    });
    producer.await??;
    // Wait for the last settle; a run that stops making progress is reported, not waited on.
    let mut last = (done.settled.load(Ordering::Relaxed), Instant::now());
    while done.settled.load(Ordering::Relaxed) < a.tasks {
        let _ = tokio::time::timeout(Duration::from_secs(1), done.notify.notified()).await;
        let now = done.settled.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            let counts = match broker.inspect() {
                Some(i) => format!("{:?}", i.counts().await?),
                None => "unknown".into(),
            };
            anyhow::bail!(
                "bench stalled: {now} of {} tasks settled, none in the last 10 s; broker counts: {counts}",
                a.tasks
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.notify_one();
    running.await?;
    if let Some(b) = amqp {
        b.delete_queues(&["bench".to_owned()]).await?;
        b.close().await;
    }
    let h = latency.lock();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rate = a.tasks as f64 / secs;
    if !a.json {
        out!("  throughput  {rate:.0} tasks/s ({secs:.3} s)");
        out!(
            "  latency     p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (enqueue -> start)",
            ms(0.5),
            ms(0.99),
            h.max() as f64 / 1000.0
        );
    }
    if a.json {
        out!(
            "{}",
            serde_json::json!({
                "tasks": a.tasks,
                "seconds": secs,
                "tasks_per_sec": rate,
                "p50_ms": ms(0.5),
                "p99_ms": ms(0.99),
                "max_ms": h.max() as f64 / 1000.0,
                "workers": a.workers,
                "rate": a.rate,
                "broker": if a.memory { "memory" } else if a.amqp.is_some() { "amqp" } else { "sqlite" },
                "sync": a.sync,
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}
