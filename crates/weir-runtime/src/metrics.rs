//! What a running worker measures, through the [`metrics`] facade: attempts by outcome, how
//! long jobs waited and ran, pool sizes and autoscaler decisions, broker calls. With no
//! recorder installed every handle is a no-op; the `weir` binary installs a Prometheus one
//! for `/metrics` (see `weir serve --http`).
//!
//! Names follow Prometheus conventions (prefix `weir_`, seconds, `_total` counters) and labels
//! stay bounded: `queue`, `kind` (a kind no handler is registered for is `unknown`, so
//! producers cannot grow the label set), `outcome`, `op`, `direction`. Handles are made once
//! per (queue, kind) and cached, so the hot path does no allocation and no registry lookup.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use weir_core::{
    Broker, BrokerError, Capabilities, Delivery, Enqueued, FetchRequest, Inspect, JobLimits, Lease,
    NewJob, QueueStats, SettleOutcome, Settlement, WorkerStatus,
};

/// How one attempt ended, for `weir_attempts_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Retry,
    Failed,
    Panic,
    Timeout,
    Deferred,
    Released,
    Cancelled,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::Success,
        Outcome::Retry,
        Outcome::Failed,
        Outcome::Panic,
        Outcome::Timeout,
        Outcome::Deferred,
        Outcome::Released,
        Outcome::Cancelled,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Retry => "retry",
            Outcome::Failed => "failed",
            Outcome::Panic => "panic",
            Outcome::Timeout => "timeout",
            Outcome::Deferred => "deferred",
            Outcome::Released => "released",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The outcome a settlement records. A retry or failure caused by a panic or a timeout is
    /// told apart by the error the runtime wrote for it.
    pub(crate) fn of(s: &Settlement) -> Outcome {
        let cause = |error: &str, otherwise| {
            if error.starts_with("handler panicked") {
                Outcome::Panic
            } else if error.starts_with("timed out after") {
                Outcome::Timeout
            } else {
                otherwise
            }
        };
        match s {
            Settlement::Succeeded { .. } => Outcome::Success,
            Settlement::Retry { error, .. } => cause(error, Outcome::Retry),
            Settlement::Failed { error } => cause(error, Outcome::Failed),
            Settlement::Defer { .. } => Outcome::Deferred,
            Settlement::Release => Outcome::Released,
            Settlement::Cancel { .. } => Outcome::Cancelled,
        }
    }
}

/// The handles of one (queue, kind).
pub(crate) struct KindMetrics {
    outcomes: [Counter; 8],
    dead: Counter,
    run: Histogram,
    wait: Histogram,
    latency: Histogram,
}

impl KindMetrics {
    fn new(queue: &str, kind: &str) -> Self {
        let outcomes = Outcome::ALL.map(|o| {
            counter!("weir_attempts_total", "queue" => queue.to_owned(), "kind" => kind.to_owned(), "outcome" => o.label())
        });
        KindMetrics {
            outcomes,
            dead: counter!(weir_core::telemetry::DEAD_LETTERED, "queue" => queue.to_owned()),
            run: histogram!("weir_job_run_seconds", "queue" => queue.to_owned(), "kind" => kind.to_owned()),
            wait: histogram!("weir_job_wait_seconds", "queue" => queue.to_owned(), "kind" => kind.to_owned()),
            latency: histogram!("weir_job_latency_seconds", "queue" => queue.to_owned(), "kind" => kind.to_owned()),
        }
    }

    /// An attempt started `waited` after its job was due.
    pub(crate) fn started(&self, waited: Duration) {
        self.wait.record(waited.as_secs_f64());
    }

    /// The handler ran for `took`.
    pub(crate) fn ran(&self, took: Duration) {
        self.run.record(took.as_secs_f64());
    }

    /// The attempt ended with `s`; `since_enqueue` is the job's age, recorded when the job is
    /// finished (not when it will run again).
    pub(crate) fn ended(&self, s: &Settlement, since_enqueue: Duration) {
        let o = Outcome::of(s);
        self.outcomes[Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0)].increment(1);
        if matches!(s, Settlement::Failed { .. }) {
            self.dead.increment(1);
        }
        if matches!(
            s,
            Settlement::Succeeded { .. } | Settlement::Failed { .. } | Settlement::Cancel { .. }
        ) {
            self.latency.record(since_enqueue.as_secs_f64());
        }
    }
}

/// The cache of handles of one worker.
pub(crate) struct Metrics {
    kinds: parking_lot::RwLock<HashMap<String, HashMap<String, Arc<KindMetrics>>>>,
    /// Per named limit (configured names only, so bounded): deferrals, and jobs holding it.
    limits: parking_lot::RwLock<HashMap<Arc<str>, (Counter, Gauge)>>,
    stale: Counter,
}

impl Metrics {
    /// Handles on the recorder installed now (none: every handle a no-op).
    pub(crate) fn new() -> Self {
        Metrics {
            kinds: parking_lot::RwLock::new(HashMap::new()),
            limits: parking_lot::RwLock::new(HashMap::new()),
            stale: counter!("weir_settles_stale_total"),
        }
    }

    /// The handles for `kind` on `queue`; `known` says whether a handler is registered for
    /// the kind (if not, it is counted as `unknown`).
    pub(crate) fn kind(&self, queue: &str, kind: &str, known: bool) -> Arc<KindMetrics> {
        let kind = if known { kind } else { "unknown" };
        if let Some(m) = self.kinds.read().get(queue).and_then(|q| q.get(kind)) {
            return m.clone();
        }
        self.kinds
            .write()
            .entry(queue.to_owned())
            .or_default()
            .entry(kind.to_owned())
            .or_insert_with(|| Arc::new(KindMetrics::new(queue, kind)))
            .clone()
    }

    /// A settle was refused: the lease had been lost (the job ran elsewhere or again).
    pub(crate) fn stale(&self) {
        self.stale.increment(1);
    }

    fn with_limit(&self, name: &str, f: impl FnOnce(&(Counter, Gauge))) {
        if let Some(h) = self.limits.read().get(name) {
            return f(h);
        }
        let mut map = self.limits.write();
        let h = map.entry(name.into()).or_insert_with(|| {
            (
                counter!("weir_limit_deferrals_total", "limit" => name.to_owned()),
                gauge!("weir_limit_in_flight", "limit" => name.to_owned()),
            )
        });
        f(h)
    }

    /// A job was deferred because the limit `name` was full.
    pub(crate) fn deferred_by(&self, name: &str) {
        self.with_limit(name, |(deferrals, _)| deferrals.increment(1));
    }

    /// Counts the jobs running under `admission`'s limits in `weir_limit_in_flight` until
    /// the returned guard drops (when the attempt ends, or its future is dropped).
    pub(crate) fn hold_limits<'a>(&'a self, admission: &weir_sync::Admission) -> HeldLimits<'a> {
        let names: Vec<std::sync::Arc<str>> = admission.limits().cloned().collect();
        for n in &names {
            self.with_limit(n, |(_, held)| held.increment(1.0));
        }
        HeldLimits {
            metrics: self,
            names,
        }
    }
}

/// Jobs counted in `weir_limit_in_flight` (see [`Metrics::hold_limits`]).
pub(crate) struct HeldLimits<'a> {
    metrics: &'a Metrics,
    names: Vec<std::sync::Arc<str>>,
}

impl Drop for HeldLimits<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            self.metrics.with_limit(n, |(_, held)| held.decrement(1.0));
        }
    }
}

/// The pool gauges of one queue, and its autoscaler's decisions.
pub(crate) struct PoolMetrics {
    size: Gauge,
    busy: Gauge,
    target: Gauge,
    up: Counter,
    down: Counter,
}

impl PoolMetrics {
    pub(crate) fn new(queue: &str) -> Self {
        PoolMetrics {
            size: gauge!("weir_pool_size", "queue" => queue.to_owned()),
            busy: gauge!("weir_pool_busy", "queue" => queue.to_owned()),
            target: gauge!("weir_pool_target", "queue" => queue.to_owned()),
            up: counter!("weir_autoscaler_decisions_total", "queue" => queue.to_owned(), "direction" => "up"),
            down: counter!("weir_autoscaler_decisions_total", "queue" => queue.to_owned(), "direction" => "down"),
        }
    }

    /// The pool as it is now, and the size it is headed for.
    pub(crate) fn observe(&self, size: usize, busy: usize, target: usize) {
        self.size.set(size as f64);
        self.busy.set(busy as f64);
        self.target.set(target as f64);
    }

    /// The autoscaler resized the pool.
    pub(crate) fn decided(&self, up: bool) {
        if up { &self.up } else { &self.down }.increment(1);
    }
}

/// A [`Broker`] that measures the calls made through it: `weir_broker_op_seconds{op}` (a
/// histogram of enqueue, fetch, settle, heartbeat latency), `weir_broker_errors_total{op}`
/// (the broker unavailable or failing; a refused job is not counted) and
/// `weir_jobs_enqueued_total{queue}`. Everything else is passed through unchanged.
pub struct MeteredBroker {
    inner: Arc<dyn Broker>,
    ops: [(Histogram, Counter); 4],
    enqueued: parking_lot::RwLock<HashMap<String, Counter>>,
}

const OPS: [&str; 4] = ["enqueue", "fetch", "settle", "heartbeat"];

/// The most queue names `weir_jobs_enqueued_total` carries; later ones count under
/// [`OTHER_QUEUES`].
const MAX_QUEUE_LABELS: usize = 1_000;

/// The `queue` label of enqueues past [`MAX_QUEUE_LABELS`] names.
const OTHER_QUEUES: &str = "(other)";

impl MeteredBroker {
    /// Wraps `inner`. Install the metrics recorder first: handles made before it count
    /// nowhere.
    pub fn new(inner: Arc<dyn Broker>) -> Self {
        MeteredBroker {
            inner,
            ops: OPS.map(|op| {
                (
                    histogram!("weir_broker_op_seconds", "op" => op),
                    counter!("weir_broker_errors_total", "op" => op),
                )
            }),
            enqueued: parking_lot::RwLock::new(HashMap::new()),
        }
    }

    fn measure<T>(&self, op: usize, started: Instant, r: &Result<T, BrokerError>) {
        let (took, errors) = &self.ops[op];
        took.record(started.elapsed().as_secs_f64());
        // The broker or its connection failing, not a request it refused (a bad job, an
        // unsupported feature): those are the caller's, and counted where they are made.
        if matches!(
            r,
            Err(BrokerError::Unavailable(_) | BrokerError::Closed | BrokerError::Other(_))
        ) {
            errors.increment(1);
        }
    }

    fn count_enqueued(&self, queue: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(c) = self.enqueued.read().get(queue) {
            c.increment(n);
            return;
        }
        let mut map = self.enqueued.write();
        // Producers name queues freely: past MAX_QUEUE_LABELS names, the rest share one.
        let queue = if map.len() >= MAX_QUEUE_LABELS {
            OTHER_QUEUES
        } else {
            queue
        };
        map.entry(queue.to_owned())
            .or_insert_with(|| counter!("weir_jobs_enqueued_total", "queue" => queue.to_owned()))
            .increment(n);
    }
}

#[async_trait]
impl Broker for MeteredBroker {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn job_limits(&self) -> JobLimits {
        self.inner.job_limits()
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, BrokerError> {
        let started = Instant::now();
        // Runs of one queue (a batch is nearly always one queue): one name kept per run, not
        // per job.
        let mut runs: Vec<(String, usize)> = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            if runs.last().is_none_or(|(q, _)| *q != j.queue) {
                runs.push((j.queue.clone(), i));
            }
        }
        let r = self.inner.enqueue_many(jobs).await;
        self.measure(0, started, &r);
        if let Ok(done) = &r {
            for (k, (queue, start)) in runs.iter().enumerate() {
                let end = runs.get(k + 1).map_or(done.len(), |(_, s)| *s);
                let fresh = done
                    .get(*start..end.min(done.len()))
                    .unwrap_or_default()
                    .iter()
                    .filter(|e| !e.duplicate)
                    .count();
                self.count_enqueued(queue, fresh as u64);
            }
        }
        r
    }

    async fn fetch(&self, req: FetchRequest) -> Result<Vec<Delivery>, BrokerError> {
        let started = Instant::now();
        let r = self.inner.fetch(req).await;
        self.measure(1, started, &r);
        r
    }

    async fn settle(
        &self,
        settlements: Vec<(Lease, Settlement)>,
    ) -> Result<Vec<SettleOutcome>, BrokerError> {
        let started = Instant::now();
        let r = self.inner.settle(settlements).await;
        self.measure(2, started, &r);
        r
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        let started = Instant::now();
        let r = self.inner.heartbeat(leases, extend).await;
        self.measure(3, started, &r);
        r
    }

    async fn backlog(&self, queues: &[String]) -> Result<Vec<u64>, BrokerError> {
        self.inner.backlog(queues).await
    }

    async fn report(&self, status: WorkerStatus) -> Result<(), BrokerError> {
        self.inner.report(status).await
    }

    async fn retire(&self, worker: &str) -> Result<(), BrokerError> {
        self.inner.retire(worker).await
    }

    async fn set_capacity(&self, queue: &str, slots: usize) -> Result<(), BrokerError> {
        self.inner.set_capacity(queue, slots).await
    }

    async fn close(&self) {
        self.inner.close().await
    }

    fn inspect(&self) -> Option<&dyn Inspect> {
        self.inner.inspect()
    }

    fn queue_stats(&self) -> Option<&dyn QueueStats> {
        self.inner.queue_stats()
    }
}
