//! The worker: its builder, and the run that wires its parts together (one dispatcher and one
//! scaler per queue, the settler, the heartbeat loop and maintenance) and takes them down in
//! order on shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_core::{Broker, Clock, Lease, SettleOutcome, Settlement, SystemClock};
use weir_sync::ElasticPool;
use weir_workflow::Workflows;

use crate::autoscale::AutoscaleConfig;
use crate::dispatch::{dispatch, Dispatch};
use crate::heartbeat::heartbeat;
use crate::leases::Leases;
use crate::maintenance::Maintenance;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::observer::{NoObserver, Observer};
use crate::registry::Registry;
use crate::report::{Counters, WorkerReport};
use crate::scaler::{scale_and_report, worker_name};
use crate::settler::settler;
use crate::shared::Shared;
use crate::tuning::Tuning;

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
    retention: Option<Duration>,
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

    /// Advances durable workflows as their members finish (see [`Workflows`]), and every
    /// minute completes workflow submissions that were interrupted ([`Workflows::rescue`]).
    /// By default, none: a workflow member this worker fetches is deferred unrun, with a
    /// warning, for a worker that has a state store.
    pub fn workflows(mut self, w: Workflows) -> Self {
        self.workflows = Some(w);
        self
    }

    /// Deletes succeeded and cancelled jobs (with their results) and finished workflows
    /// once they are older than `keep`, sweeping every eighth of it (see
    /// [`sweep`](crate::retention::sweep)); failed jobs stay until purged. By default, none:
    /// everything is kept (`weir serve` sets 7 days).
    pub fn retention(mut self, keep: Duration) -> Self {
        self.retention = Some(keep);
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
        for n in &names {
            weir_core::validate_queue_name(n).map_err(|e| WorkerError::Invalid(e.to_string()))?;
        }
        if let Some(keep) = self.retention {
            if keep < Duration::from_secs(1) {
                return Err(WorkerError::Invalid(format!(
                    "retention must be at least 1s, got {keep:?}"
                )));
            }
            weir_core::validate_duration("retention", keep, true)
                .map_err(|e| WorkerError::Invalid(e.to_string()))?;
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
            retention: None,
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
    /// grace period to finish; the rest are cancelled and their leases given back; this
    /// process's reports are withdrawn from the broker. Every task it spawned has ended when
    /// this returns.
    ///
    /// Cancel safety: dropping the future stops the worker without draining; its leases
    /// expire and their jobs run again elsewhere.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        let Worker { b, pools, tuning } = self;
        let caps = b.broker.capabilities();
        let (settle_tx, settle_rx) = mpsc::channel(16 * 1024);
        let shared = Arc::new(Shared {
            broker: b.broker.clone(),
            caps,
            registry: b.registry,
            observer: b.observer,
            clock: b.clock.clone(),
            tuning: tuning.clone(),
            leases: Leases::default(),
            counters: Counters::default(),
            membership: Membership::new(b.workflows.clone(), caps),
            metrics: Metrics::new(),
        });
        let worker = worker_name();
        let stop_fetch = CancellationToken::new();
        let stop_rest = CancellationToken::new();
        let settler = tokio::spawn(settler(shared.clone(), settle_rx));
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), b.lease, stop_rest.clone()));
        let maintenance = tokio::spawn(
            Maintenance {
                broker: b.broker.clone(),
                queues: b.queues.iter().map(|q| q.name.clone()).collect(),
                workflows: b.workflows.clone(),
                retention: b.retention,
                clock: b.clock.clone(),
            }
            .run(stop_rest.clone()),
        );
        let mut dispatchers = JoinSet::new();
        let mut scalers = JoinSet::new();
        for q in &b.queues {
            let pool = pools[&q.name].clone();
            dispatchers.spawn(dispatch(
                Dispatch {
                    shared: shared.clone(),
                    pool: pool.clone(),
                    settle_tx: settle_tx.clone(),
                    queue: q.name.clone(),
                    lease: b.lease,
                    fetch_batch: b.fetch_batch,
                    grace: b.shutdown_grace,
                },
                stop_fetch.clone(),
            ));
            scalers.spawn(scale_and_report(
                shared.clone(),
                q.name.clone(),
                pool,
                b.autoscale_tick,
                worker.clone(),
                stop_rest.clone(),
            ));
        }
        let names: Vec<String> = b
            .queues
            .iter()
            .map(|q| format!("{} ({})", q.name, q.concurrency))
            .collect();
        tracing::info!(queues = %names.join(", "), %worker, "worker started");
        shutdown.await;
        tracing::info!(grace = ?b.shutdown_grace, "worker shutting down: no more fetching");
        stop_fetch.cancel();
        while let Some(r) = dispatchers.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "a dispatcher failed");
            }
        }
        // Every attempt has ended: closing our sender lets the settler finish what it has.
        drop(settle_tx);
        if let Err(e) = settler.await {
            tracing::error!(error = %e, "the settler failed");
        }
        give_back(&shared).await;
        stop_rest.cancel();
        let _ = heartbeat.await;
        let _ = maintenance.await;
        while scalers.join_next().await.is_some() {}
        if let Err(e) = shared.broker.retire(&worker).await {
            tracing::debug!(error = %e, "withdrawing this worker's reports failed");
        }
        tracing::info!("worker stopped");
        shared.counters.report()
    }
}

/// Gives back what is still held: attempts cancelled before their outcome was known.
async fn give_back(shared: &Shared) {
    let leftovers: Vec<Lease> = shared.leases.snapshot();
    if leftovers.is_empty() {
        return;
    }
    let n = leftovers.len();
    let items = leftovers
        .into_iter()
        .map(|l| (l, Settlement::Release))
        .collect();
    match shared.broker.settle(items).await {
        Ok(out) => {
            let applied = out.iter().filter(|o| **o == SettleOutcome::Applied).count();
            shared.counters.released(applied as u64);
            tracing::info!(released = applied, of = n, "gave unfinished leases back");
        }
        Err(e) => tracing::warn!(error = %e, "could not give leases back; they will expire"),
    }
}
