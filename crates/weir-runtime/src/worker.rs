//! The worker: its builder, the per-queue dispatchers, and the shutdown sequence. The loops
//! that run beside them are in `exec.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_core::{
    Broker, Clock, FetchRequest, Job, Lease, SettleOutcome, Settlement, SystemClock, Timestamp,
};

use weir_sync::ElasticPool;

use crate::autoscale::AutoscaleConfig;
use crate::exec::{autoscale, backoff_pause, execute, heartbeat, settler, Counters, Exec};
use crate::registry::Registry;
use crate::tuning::Tuning;
use crate::workflow::Workflows;

/// Hooks called as jobs start and settle: for progress displays, benchmarks and tests. Keep
/// them cheap; they run on the worker's hot path.
pub trait Observer: Send + Sync + 'static {
    /// A job's handler is about to run.
    fn started(&self, _job: &Job, _at: Timestamp) {}
    /// An attempt's outcome was recorded (or fenced off) by the broker.
    fn settled(&self, _lease: &Lease, _settlement: &Settlement, _outcome: SettleOutcome) {}
}

struct NoObserver;
impl Observer for NoObserver {}

/// One queue a worker serves and how many jobs of it run at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue name.
    pub name: String,
    /// How many of its jobs run at once (its pool size).
    pub concurrency: usize,
}

impl QueueSpec {
    /// Serve `name` with `concurrency` slots (at least 1).
    pub fn new(name: impl Into<String>, concurrency: usize) -> Self {
        QueueSpec {
            name: name.into(),
            concurrency: concurrency.max(1),
        }
    }
}

/// The worker could not be built or could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A setting is out of range.
    #[error("invalid worker setting: {0}")]
    Invalid(String),
}

/// What a worker did, returned when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Attempts started.
    pub started: u64,
    /// Attempts recorded as Succeeded.
    pub succeeded: u64,
    /// Attempts recorded as Retry.
    pub retried: u64,
    /// Attempts recorded as Failed.
    pub failed: u64,
    /// Settles fenced off because the lease was lost.
    pub stale: u64,
    /// Leases given back at shutdown.
    pub released: u64,
    /// Attempts deferred because their limits were full.
    pub deferred: u64,
    /// Jobs finished as Cancelled without running (their workflow had failed).
    pub cancelled: u64,
    /// Times the autoscaler grew a pool.
    pub scaled_up: u64,
    /// Times the autoscaler shrank a pool.
    pub scaled_down: u64,
}

/// Builds a [`Worker`]. See each setter for its default.
pub struct WorkerBuilder {
    broker: Arc<dyn Broker>,
    registry: Registry,
    queues: Vec<QueueSpec>,
    lease: Duration,
    fetch_batch: usize,
    shutdown_grace: Duration,
    observer: Arc<dyn Observer>,
    clock: Arc<dyn Clock>,
    autoscale: HashMap<String, AutoscaleConfig>,
    autoscale_tick: Duration,
    workflows: Option<Workflows>,
}

impl WorkerBuilder {
    /// Lets the autoscaler size `queue`'s pool between `config.min_workers` and
    /// `config.max_workers` (see [`crate::decide`]); the queue's concurrency is then only its
    /// starting size. By default, pools keep their size.
    pub fn autoscale(mut self, queue: impl Into<String>, config: AutoscaleConfig) -> Self {
        self.autoscale.insert(queue.into(), config);
        self
    }

    /// How often the autoscaler looks at backlog and utilisation. By default, 5 s.
    pub fn autoscale_tick(mut self, tick: Duration) -> Self {
        self.autoscale_tick = tick;
        self
    }

    /// Serves `queue` with `concurrency` slots. May be called for several queues; each gets
    /// its own pool and dispatcher, so a busy queue cannot starve the others. By default, the
    /// queue `default` with 16 slots.
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        self.queues.push(QueueSpec::new(queue, concurrency));
        self
    }

    /// How long a lease lasts without renewal; heartbeats renew it every third of this. A
    /// worker that dies loses its jobs to other workers after at most this long. By default,
    /// 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The most jobs one fetch may lease (bounded by the free slots). By default, 256.
    pub fn fetch_batch(mut self, n: usize) -> Self {
        self.fetch_batch = n;
        self
    }

    /// How long running jobs may finish after shutdown begins before they are cancelled and
    /// their leases given back. By default, 30 s.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// Hooks called as jobs start and settle. By default, none.
    pub fn observer(mut self, o: Arc<dyn Observer>) -> Self {
        self.observer = o;
        self
    }

    /// Advances durable workflows as their members finish (see [`Workflows`]). By default,
    /// none: a workflow member this worker fetches is deferred unrun, with a warning, for a
    /// worker that has a state store.
    pub fn workflows(mut self, w: Workflows) -> Self {
        self.workflows = Some(w);
        self
    }

    /// The clock retry times are computed from. By default, the system clock.
    pub fn clock(mut self, c: Arc<dyn Clock>) -> Self {
        self.clock = c;
        self
    }

    /// Validates the settings.
    pub fn build(mut self) -> Result<Worker, WorkerError> {
        if self.lease < Duration::from_millis(300) {
            return Err(WorkerError::Invalid(format!(
                "lease must be at least 300ms, got {:?}",
                self.lease
            )));
        }
        if self.fetch_batch == 0 {
            return Err(WorkerError::Invalid(
                "fetch batch must be at least 1".into(),
            ));
        }
        if self.queues.is_empty() {
            self.queues
                .push(QueueSpec::new(weir_core::DEFAULT_QUEUE, 16));
        }
        let mut names: Vec<&str> = self.queues.iter().map(|q| q.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(WorkerError::Invalid(format!(
                "queue `{}` listed twice",
                w[0]
            )));
        }
        if names.iter().any(|n| n.is_empty()) {
            return Err(WorkerError::Invalid("queue names must not be empty".into()));
        }
        for (q, c) in &self.autoscale {
            if !self.queues.iter().any(|s| &s.name == q) {
                return Err(WorkerError::Invalid(format!(
                    "autoscale names queue `{q}`, which this worker does not serve"
                )));
            }
            c.validate()
                .map_err(|e| WorkerError::Invalid(format!("autoscale of queue `{q}`: {e}")))?;
        }
        if self.autoscale_tick < Duration::from_millis(10) {
            return Err(WorkerError::Invalid(format!(
                "autoscale tick must be at least 10ms, got {:?}",
                self.autoscale_tick
            )));
        }
        // Utilisation is averaged over a few ticks, so one sample does not decide.
        let window = (self.autoscale_tick * 4).max(Duration::from_secs(1));
        let pools = self
            .queues
            .iter()
            .map(|q| {
                let size = match self.autoscale.get(&q.name) {
                    Some(c) => q.concurrency.clamp(c.min_workers, c.max_workers),
                    None => q.concurrency,
                };
                (
                    q.name.clone(),
                    ElasticPool::with_options(size, 1024, window),
                )
            })
            .collect();
        let tuning = Arc::new(Tuning::default());
        tuning.autoscale.store(Arc::new(self.autoscale.clone()));
        Ok(Worker {
            b: self,
            pools,
            tuning,
        })
    }
}

/// Runs jobs from a broker until told to stop.
///
/// ```no_run
/// # async fn demo(broker: std::sync::Arc<dyn weir_core::Broker>) {
/// use weir_runtime::{Registry, Worker};
/// let mut registry = Registry::new();
/// registry.register_fn("hello", |name: String, _cx| async move {
///     Ok::<_, weir_core::TaskError>(format!("hello, {name}"))
/// });
/// let worker = Worker::builder(broker, registry).queue("default", 8).build().unwrap();
/// let report = worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # }
/// ```
pub struct Worker {
    b: WorkerBuilder,
    pools: HashMap<String, ElasticPool>,
    tuning: Arc<Tuning>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queues", &self.b.queues)
            .field("lease", &self.b.lease)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts building a worker that runs `registry`'s handlers on jobs from `broker`.
    pub fn builder(broker: Arc<dyn Broker>, registry: Registry) -> WorkerBuilder {
        WorkerBuilder {
            broker,
            registry,
            queues: Vec::new(),
            lease: Duration::from_secs(30),
            fetch_batch: 256,
            shutdown_grace: Duration::from_secs(30),
            observer: Arc::new(NoObserver),
            clock: Arc::new(SystemClock),
            autoscale: HashMap::new(),
            autoscale_tick: Duration::from_secs(5),
            workflows: None,
        }
    }

    /// The queues it serves.
    pub fn queues(&self) -> &[QueueSpec] {
        &self.b.queues
    }

    /// The settings this worker reads live (backoffs, autoscaling); see [`Tuning`].
    pub fn tuning(&self) -> Arc<Tuning> {
        self.tuning.clone()
    }

    /// The pool of `queue`: a handle that stays valid while the worker runs, to watch it
    /// ([`ElasticPool::stats`]) or resize it ([`ElasticPool::resize`]) live. A resize takes
    /// effect at once for growth; shrinking waits for running jobs to finish.
    pub fn pool(&self, queue: &str) -> Option<ElasticPool> {
        self.pools.get(queue).cloned()
    }

    /// Runs until `shutdown` completes, then drains: no more fetching; running jobs get the
    /// grace period to finish; the rest are cancelled and their leases given back. Every task
    /// it spawned has ended when this returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        let Worker { b, pools, tuning } = self;
        let (settle_tx, settle_rx) = mpsc::channel(16 * 1024);
        let exec = Arc::new(Exec {
            broker: b.broker.clone(),
            registry: b.registry,
            observer: b.observer,
            clock: b.clock,
            inflight: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            tuning: tuning.clone(),
            counters: Counters::default(),
            workflows: b.workflows,
            members: Mutex::new(HashMap::new()),
        });
        let stop_fetch = CancellationToken::new();
        let settler = tokio::spawn(settler(exec.clone(), settle_rx));
        let hb_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(exec.clone(), b.lease, hb_stop.clone()));
        let mut dispatchers = JoinSet::new();
        for q in &b.queues {
            dispatchers.spawn(dispatch(
                Dispatch {
                    exec: exec.clone(),
                    pool: pools[&q.name].clone(),
                    settle_tx: settle_tx.clone(),
                    queue: q.clone(),
                    lease: b.lease,
                    fetch_batch: b.fetch_batch,
                    grace: b.shutdown_grace,
                },
                stop_fetch.clone(),
            ));
        }
        let mut scalers = JoinSet::new();
        for q in &b.queues {
            scalers.spawn(autoscale(
                exec.clone(),
                q.name.clone(),
                pools[&q.name].clone(),
                b.autoscale_tick,
                hb_stop.clone(),
            ));
        }
        tracing::info!(queues = ?b.queues, "worker started");
        shutdown.await;
        tracing::info!(grace = ?b.shutdown_grace, "worker shutting down: no more fetching");
        stop_fetch.cancel();
        while let Some(r) = dispatchers.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "a dispatcher failed");
            }
        }
        // Every executor has ended: closing our sender lets the settler finish what it has.
        drop(settle_tx);
        if let Err(e) = settler.await {
            tracing::error!(error = %e, "the settler failed");
        }
        // What is still held was cancelled before its outcome was known: give it back.
        let leftovers: Vec<Lease> = exec.inflight.lock().values().map(|(l, _)| *l).collect();
        if !leftovers.is_empty() {
            let n = leftovers.len();
            let items = leftovers
                .into_iter()
                .map(|l| (l, Settlement::Release))
                .collect();
            match exec.broker.settle(items).await {
                Ok(out) => {
                    let applied = out.iter().filter(|o| **o == SettleOutcome::Applied).count();
                    exec.counters
                        .released
                        .fetch_add(applied as u64, Ordering::Relaxed);
                    tracing::info!(released = applied, of = n, "gave unfinished leases back");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not give leases back; they will expire")
                }
            }
        }
        hb_stop.cancel();
        let _ = heartbeat.await;
        while scalers.join_next().await.is_some() {}
        tracing::info!("worker stopped");
        report(&exec.counters)
    }
}

struct Dispatch {
    exec: Arc<Exec>,
    pool: ElasticPool,
    settle_tx: mpsc::Sender<(Lease, Settlement)>,
    queue: QueueSpec,
    lease: Duration,
    fetch_batch: usize,
    grace: Duration,
}

/// One queue's loop: reserve slots, then fetch that many, then run them.
async fn dispatch(d: Dispatch, stop: CancellationToken) {
    let mut running = JoinSet::new();
    let mut failures = 0u32;
    let queues = vec![d.queue.name.clone()];
    // The pool size the broker was last told (a push broker sizes its prefetch to it).
    let mut announced = None;
    loop {
        while running.try_join_next().is_some() {}
        let size = d.pool.size();
        if announced != Some(size) {
            match d.exec.broker.set_capacity(&d.queue.name, size).await {
                Ok(()) => announced = Some(size),
                // Fetching goes on with the old capacity; the next loop tries again.
                Err(e) => {
                    tracing::warn!(queue = %d.queue.name, size, error = %e, "telling the broker the pool size failed")
                }
            }
        }
        // Reserve first: nothing is fetched that cannot run now.
        let mut slots = tokio::select! {
            _ = stop.cancelled() => break,
            s = d.pool.reserve_up_to(d.fetch_batch) => s,
        };
        if slots.is_empty() {
            break; // the pool was closed
        }
        let req = FetchRequest {
            queues: queues.clone(),
            max: slots.len(),
            lease: d.lease,
            wait: Duration::from_secs(1),
        };
        // Cancel safe: a fetch dropped here leases nothing (the broker gives back what it took).
        let fetched = tokio::select! {
            _ = stop.cancelled() => break,
            r = d.exec.broker.fetch(req) => r,
        };
        match fetched {
            Ok(deliveries) => {
                failures = 0;
                for delivery in deliveries {
                    let Some(slot) = slots.pop() else { break };
                    running.spawn(execute(d.exec.clone(), d.settle_tx.clone(), delivery, slot));
                }
            }
            Err(e) => {
                // A store error never ends a worker: log it, back off, go on.
                failures = failures.saturating_add(1);
                let pause = backoff_pause(failures);
                tracing::warn!(queue = %d.queue.name, error = %e, retry_in = ?pause, "fetch failed");
                drop(slots);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    // Drain: running jobs get the grace period, then are cancelled and abandoned; their
    // leases stay in `inflight` and are given back by `Worker::run`.
    let deadline = tokio::time::Instant::now() + d.grace;
    let drained = tokio::time::timeout_at(deadline, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            queue = %d.queue.name,
            running = running.len(),
            "grace period over: cancelling running jobs"
        );
        // Abort first, then fire the tokens (for work the handlers started elsewhere): an
        // attempt stopped by shutdown is given back unspent, never recorded as a failure.
        d.exec.stopping.store(true, Ordering::Release);
        running.abort_all();
        for (_, token) in d.exec.inflight.lock().values() {
            token.cancel();
        }
        while running.join_next().await.is_some() {}
    }
}

fn report(c: &Counters) -> WorkerReport {
    WorkerReport {
        started: c.started.load(Ordering::Relaxed),
        succeeded: c.succeeded.load(Ordering::Relaxed),
        retried: c.retried.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        stale: c.stale.load(Ordering::Relaxed),
        released: c.released.load(Ordering::Relaxed),
        deferred: c.deferred.load(Ordering::Relaxed),
        cancelled: c.cancelled.load(Ordering::Relaxed),
        scaled_up: c.scaled_up.load(Ordering::Relaxed),
        scaled_down: c.scaled_down.load(Ordering::Relaxed),
    }
}
