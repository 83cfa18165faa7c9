//! The worker against a real SQLite file: outcomes, failures, limits and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use weir_core::{Broker, Inspect, Job, JobId, JobState, NewJob, TaskContext, TaskError};
use weir_runtime::{Registry, Worker, WorkerReport};
use weir_sqlite::SqliteBroker;
use weir_sync::{Backoff, Jitter};

struct Env {
    broker: Arc<SqliteBroker>,
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(SqliteBroker::open(dir.path().join("w.db")).unwrap());
    Env { broker, _dir: dir }
}

fn fast_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), 2.0, Duration::from_millis(50))
        .unwrap()
        .jitter(Jitter::None)
}

struct Running {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<WorkerReport>,
}

impl Running {
    async fn stop(self) -> WorkerReport {
        let _ = self.stop.send(());
        self.handle.await.unwrap()
    }
}

fn start(
    broker: Arc<SqliteBroker>,
    registry: Registry,
    configure: impl FnOnce(weir_runtime::WorkerBuilder) -> weir_runtime::WorkerBuilder,
) -> Running {
    let b: Arc<dyn Broker> = broker;
    let worker = configure(Worker::builder(b, registry)).build().unwrap();
    let (stop, rx) = oneshot::channel();
    let handle = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    Running { stop, handle }
}

/// Waits (at most 20 s) until at least `n` jobs are leased (running): "at least", so a
/// slow sample that misses the moment all ran at once does not fail the test.
async fn wait_running(b: &SqliteBroker, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = b.counts().await.unwrap();
        if c.iter().map(|q| q.running).sum::<u64>() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {n} jobs running: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `f` every 2 ms until it is true, at most 20 s.
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn wait_finished(i: &dyn Inspect, id: JobId) -> Job {
    for _ in 0..500 {
        let j = i.get(id).await.unwrap().unwrap();
        if j.state.is_finished() {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not finish: {:?}", i.get(id).await.unwrap());
}

/// Counts how many jobs of a kind run at once, and how many ran.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    runs: Arc<AtomicUsize>,
}

impl Gauge {
    /// Registers `kind`: each job holds its place for `ms` milliseconds.
    fn register<'a>(
        &self,
        r: &'a mut Registry,
        kind: &str,
        ms: u64,
    ) -> weir_runtime::KindOptions<'a> {
        let g = self.clone();
        r.register_fn(kind, move |_: serde_json::Value, _cx: TaskContext| {
            let g = g.clone();
            async move {
                g.runs.fetch_add(1, Ordering::SeqCst);
                let n = g.now.fetch_add(1, Ordering::SeqCst) + 1;
                g.peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                g.now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, TaskError>(())
            }
        })
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.default_backoff(fast_backoff());
    r.register_fn("double", |n: u64, _cx: TaskContext| async move {
        Ok::<_, TaskError>(n * 2)
    });
    r.register_fn("flaky", |times: u32, cx: TaskContext| async move {
        if cx.attempt() <= times {
            Err(TaskError::retryable(format!(
                "flaky attempt {}",
                cx.attempt()
            )))
        } else {
            Ok(cx.attempt())
        }
    });
    r.register_fn(
        "boom",
        |_: serde_json::Value, _cx: TaskContext| async move {
            if true {
                panic!("boom");
            }
            Ok::<(), TaskError>(())
        },
    );
    r.register_fn("bad", |_: serde_json::Value, _cx: TaskContext| async move {
        Err::<(), _>(TaskError::permanent("bad input: missing field"))
    });
    r.register_fn("sleep", |ms: u64, cx: TaskContext| async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
            _ = cx.cancellation().cancelled() => Err(TaskError::retryable("cancelled")),
        }
    });
    r
}

async fn enqueue(
    b: &SqliteBroker,
    kind: &str,
    payload: &str,
    f: impl FnOnce(NewJob) -> NewJob,
) -> JobId {
    b.enqueue(f(NewJob::new(kind, payload.as_bytes().to_vec())))
        .await
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_recorded() {
    let e = env();
    let b = &*e.broker;
    let ok = enqueue(b, "double", "21", |j| j).await;
    let flaky = enqueue(b, "flaky", "2", |j| j.max_attempts(5)).await;
    let exhausted = enqueue(b, "flaky", "9", |j| j.max_attempts(2)).await;
    let bad = enqueue(b, "bad", "{}", |j| j).await;
    let w = start(e.broker.clone(), registry(), |w| w.queue("default", 4));
    let i = b as &dyn Inspect;
    let j = wait_finished(i, ok).await;
    assert_eq!(
        (j.state, j.result.as_deref()),
        (JobState::Succeeded, Some(&b"42"[..]))
    );
    let j = wait_finished(i, flaky).await;
    assert_eq!((j.state, j.attempt), (JobState::Succeeded, 3));
    assert_eq!(j.last_error.as_deref(), Some("flaky attempt 2"));
    let j = wait_finished(i, exhausted).await;
    assert_eq!((j.state, j.attempt), (JobState::Failed, 2));
    assert_eq!(
        j.last_error.as_deref(),
        Some("flaky attempt 2 (attempt 2 of 2: attempts exhausted)")
    );
    let j = wait_finished(i, bad).await;
    assert_eq!(
        (j.state, j.attempt),
        (JobState::Failed, 1),
        "permanent errors are not retried"
    );
    let r = w.stop().await;
    assert_eq!(r.succeeded, 2);
    assert_eq!(r.failed, 2);
    assert_eq!(r.retried, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_malformed_payloads_and_unknown_kinds_fail_cleanly() {
    let e = env();
    let b = &*e.broker;
    let boom = enqueue(b, "boom", "{}", |j| j.max_attempts(2)).await;
    let malformed = enqueue(b, "double", r#"{"not":"a number"}"#, |j| j).await;
    let unknown = enqueue(b, "nope", "{}", |j| j).await;
    let after = enqueue(b, "double", "1", |j| j).await;
    let w = start(e.broker.clone(), registry(), |w| w);
    let i = b as &dyn Inspect;
    let j = wait_finished(i, boom).await;
    assert_eq!(
        (j.state, j.attempt),
        (JobState::Failed, 2),
        "a panic is retryable"
    );
    assert!(j.last_error.unwrap().starts_with("handler panicked: boom"));
    let j = wait_finished(i, malformed).await;
    assert_eq!((j.state, j.attempt), (JobState::Failed, 1));
    let err = j.last_error.unwrap();
    assert!(
        err.starts_with("payload for kind `double` does not decode:"),
        "{err}"
    );
    let j = wait_finished(i, unknown).await;
    assert_eq!(j.state, JobState::Failed);
    let err = j.last_error.unwrap();
    assert!(err.contains("unknown task kind `nope`"), "{err}");
    // The worker lived through all of it.
    assert_eq!(wait_finished(i, after).await.state, JobState::Succeeded);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_retryable_failures() {
    let e = env();
    let b = &*e.broker;
    let id = enqueue(b, "sleep", "10000", |j| {
        j.timeout(Duration::from_millis(50)).max_attempts(2)
    })
    .await;
    let w = start(e.broker.clone(), registry(), |w| w);
    let j = wait_finished(b, id).await;
    assert_eq!((j.state, j.attempt), (JobState::Failed, 2));
    assert!(j.last_error.unwrap().starts_with("timed out after 50ms"));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_running_and_leased_jobs() {
    let e = env();
    let b = &*e.broker;
    let gauge = Gauge::default();
    let mut r = registry();
    gauge.register(&mut r, "track", 5);
    let jobs = (0..50)
        .map(|_| NewJob::new("track", b"{}".to_vec()))
        .collect();
    let ids: Vec<JobId> = b
        .enqueue_many(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let w = start(e.broker.clone(), r, |w| w.queue("default", 3));
    let mut max_leased = 0;
    for id in &ids {
        loop {
            let c = b.counts().await.unwrap();
            max_leased = max_leased.max(c.iter().map(|q| q.running).sum::<u64>());
            if b.get(*id).await.unwrap().unwrap().state.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    w.stop().await;
    assert!(gauge.peak() <= 3, "peak {}", gauge.peak());
    assert_eq!(gauge.peak(), 3, "the pool was used");
    // Leased = running + settling; never more than the pool plus the settles in flight.
    assert!(max_leased <= 6, "leased {max_leased} with 3 slots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_jobs_finish() {
    let e = env();
    let b = &*e.broker;
    let ids: Vec<JobId> =
        futures::future::join_all((0..8).map(|_| enqueue(b, "sleep", "200", |j| j))).await;
    let w = start(e.broker.clone(), registry(), |w| {
        w.queue("default", 8)
            .shutdown_grace(Duration::from_secs(10))
    });
    // Wait until all eight are running, then stop.
    wait_running(b, 8).await;
    let r = w.stop().await;
    assert_eq!((r.succeeded, r.released), (8, 0));
    for id in ids {
        assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Succeeded);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_grace_releases_leases() {
    let e = env();
    let b = &*e.broker;
    let ids: Vec<JobId> =
        futures::future::join_all((0..4).map(|_| enqueue(b, "sleep", "60000", |j| j))).await;
    let w = start(e.broker.clone(), registry(), |w| {
        w.queue("default", 4)
            .shutdown_grace(Duration::from_millis(100))
    });
    wait_running(b, 4).await;
    let r = w.stop().await;
    assert_eq!(r.released, 4, "{r:?}");
    for id in ids {
        let j = b.get(id).await.unwrap().unwrap();
        assert_eq!(
            (j.state, j.attempt),
            (JobState::Pending, 0),
            "given back, attempt not spent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_fires_its_token() {
    let e = env();
    let b = &*e.broker;
    let mut r = registry();
    let (tx, rx) = oneshot::channel::<()>();
    let tx = Arc::new(parking_lot::Mutex::new(Some(tx)));
    r.register_fn(
        "wait_cancel",
        move |_: serde_json::Value, cx: TaskContext| {
            let tx = tx.clone();
            async move {
                cx.cancellation().cancelled().await;
                if let Some(tx) = tx.lock().take() {
                    let _ = tx.send(());
                }
                Err::<(), _>(TaskError::retryable("stopped"))
            }
        },
    );
    let id = enqueue(b, "wait_cancel", "{}", |j| j).await;
    let w = start(e.broker.clone(), r, |w| w.lease(Duration::from_millis(300)));
    until("the job to run", async || {
        b.get(id).await.unwrap().unwrap().state == JobState::Running
    })
    .await;
    b.cancel(id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("token fired")
        .unwrap();
    let r = w.stop().await;
    assert_eq!(r.stale, 1);
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_do_not_end_the_worker() {
    let e = env();
    let faulty = Arc::new(weir_testkit::FaultyBroker::new(e.broker.clone()));
    faulty.fail_fetches(3);
    faulty.fail_settles(2);
    faulty.fail_heartbeats(2);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(enqueue(&e.broker, "double", &i.to_string(), |j| j).await);
    }
    let b: Arc<dyn Broker> = faulty.clone();
    let worker = Worker::builder(b, registry())
        .lease(Duration::from_millis(600))
        .build()
        .unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    for id in ids {
        assert_eq!(
            wait_finished(&*e.broker, id).await.state,
            JobState::Succeeded
        );
    }
    let _ = stop.send(());
    let r = handle.await.unwrap();
    assert_eq!(r.succeeded, 20, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_the_pool_under_load_runs_more_at_once_and_loses_nothing() {
    let e = env();
    let b = &*e.broker;
    let gauge = Gauge::default();
    let mut r = registry();
    gauge.register(&mut r, "track", 30);
    let jobs = (0..60)
        .map(|_| NewJob::new("track", b"{}".to_vec()))
        .collect();
    let ids: Vec<JobId> = b
        .enqueue_many(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let b2: Arc<dyn Broker> = e.broker.clone();
    let worker = Worker::builder(b2, r).queue("default", 2).build().unwrap();
    let pool = worker.pool("default").unwrap();
    assert!(worker.pool("other").is_none());
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    until("four runs", async || gauge.runs() >= 4).await;
    assert!(gauge.peak() <= 2);
    pool.resize(10);
    for id in &ids {
        assert_eq!(wait_finished(b, *id).await.state, JobState::Succeeded);
    }
    let _ = stop.send(());
    handle.await.unwrap();
    assert!(gauge.peak() > 2, "the pool grew: peak {}", gauge.peak());
    assert!(gauge.peak() <= 10);
    assert_eq!(gauge.runs(), 60, "each job ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_grows_a_pool_under_backlog() {
    let e = env();
    let b = &*e.broker;
    let gauge = Gauge::default();
    let mut r = registry();
    gauge.register(&mut r, "track", 40);
    let jobs = (0..80)
        .map(|_| NewJob::new("track", b"{}".to_vec()))
        .collect();
    let ids: Vec<JobId> = b
        .enqueue_many(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let cfg = weir_runtime::AutoscaleConfig {
        min_workers: 1,
        max_workers: 8,
        ..Default::default()
    };
    let b2: Arc<dyn Broker> = e.broker.clone();
    let worker = Worker::builder(b2, r)
        .queue("default", 1)
        .autoscale("default", cfg)
        .autoscale_tick(Duration::from_millis(20))
        .build()
        .unwrap();
    let pool = worker.pool("default").unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    for id in &ids {
        assert_eq!(wait_finished(b, *id).await.state, JobState::Succeeded);
    }
    let _ = stop.send(());
    let report = handle.await.unwrap();
    assert!(report.scaled_up >= 1, "{report:?}");
    assert_eq!(
        pool.stats().size,
        8,
        "straight to the cap: 80 waiting on 1 worker"
    );
    assert!(gauge.peak() > 1 && gauge.peak() <= 8);
}

#[test]
fn autoscale_settings_are_checked_when_built() {
    let b: Arc<dyn Broker> = Arc::new(weir_core::MemoryBroker::new());
    let bad = weir_runtime::AutoscaleConfig {
        min_workers: 9,
        max_workers: 2,
        ..Default::default()
    };
    let e = Worker::builder(b.clone(), Registry::new())
        .autoscale("default", bad)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("autoscale of queue `default`: min_workers (9)"),
        "{e}"
    );
    let e = Worker::builder(b, Registry::new())
        .autoscale("nope", Default::default())
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`nope`, which this worker does not serve"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_three_holds_across_a_larger_pool() {
    let e = env();
    let b = &*e.broker;
    let gauge = Gauge::default();
    let mut r = registry();
    gauge
        .register(&mut r, "db_work", 10)
        .limit("db")
        .limit_with(|p| vec![format!("tenant:{}", p["tenant"])]);
    let jobs = (0..50)
        .map(|i| NewJob::new("db_work", format!(r#"{{"tenant":{}}}"#, i % 5)))
        .collect();
    let ids: Vec<JobId> = b
        .enqueue_many(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let b2: Arc<dyn Broker> = e.broker.clone();
    let worker = Worker::builder(b2, r).queue("default", 16).build().unwrap();
    worker.tuning().set_limits(std::collections::HashMap::from([
        (
            "db".to_string(),
            weir_sync::LimitSpec {
                concurrency: Some(3),
                rate: None,
            },
        ),
        (
            "tenant".to_string(),
            weir_sync::LimitSpec {
                concurrency: Some(1),
                rate: None,
            },
        ),
    ]));
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    for id in &ids {
        let j = wait_finished(b, *id).await;
        assert_eq!(
            (j.state, j.attempt),
            (JobState::Succeeded, 1),
            "deferrals spend no attempt"
        );
    }
    let _ = stop.send(());
    let report = handle.await.unwrap();
    assert!(gauge.peak() <= 3, "peak {}", gauge.peak());
    assert!(report.deferred > 0, "{report:?}");
    assert_eq!(report.succeeded, 50);
}
