use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::{
    Inspect, InvalidJob, Job, JobId, JobLimits, JobState, NewJob, QueueStats, Timestamp,
    WorkerStatus,
};

/// A storage or transport failure. Brokers report what went wrong in words an operator can act
/// on; whether to try again is [`BrokerError::is_transient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The store is unavailable for now (busy, locked, disconnected); trying again may work.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (for example a field out of range); retrying will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A job given to `enqueue_many` is invalid (see [`NewJob::validate`]); nothing was
    /// stored.
    #[error("invalid job: {error}")]
    InvalidJob {
        /// Its index in the batch.
        index: usize,
        /// What is wrong with it.
        error: InvalidJob,
    },
    /// The broker cannot do this at all (a capability it does not have).
    #[error("not supported by this broker: {0}")]
    Unsupported(String),
    /// No job with this id.
    #[error("no job with id {0}")]
    NotFound(JobId),
    /// The job is in a state the operation does not apply to.
    #[error("job {id} is {state}: {what}")]
    WrongState {
        /// The job.
        id: JobId,
        /// Its state.
        state: JobState,
        /// What was asked.
        what: String,
    },
    /// The broker has shut down.
    #[error("broker is closed")]
    Closed,
    /// Any other store failure.
    #[error("broker error: {0}")]
    Other(String),
}

impl BrokerError {
    /// True if the same call may succeed later (a worker logs, backs off and goes on).
    pub fn is_transient(&self) -> bool {
        matches!(self, BrokerError::Unavailable(_) | BrokerError::Other(_))
    }
}

/// The result of an enqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    /// The stored job's id: the new one, or the existing one for a duplicate unique key.
    pub id: JobId,
    /// True when the unique key matched an unfinished job and nothing new was stored.
    pub duplicate: bool,
}

/// What a dispatcher asks for.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    /// The queues to take from, served round-robin.
    pub queues: Vec<String>,
    /// At most this many jobs (the free slots the caller has already reserved).
    pub max: usize,
    /// How long the leases last unless renewed by [`Broker::heartbeat`].
    pub lease: Duration,
    /// How long to wait for at least one job before returning an empty batch.
    pub wait: Duration,
}

/// The right to settle one leased job. Its `attempt` is the fencing token: a settle or heartbeat
/// carrying an older attempt than the stored one is rejected, so a worker whose lease expired can
/// never overwrite a newer attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The job.
    pub id: JobId,
    /// A broker-specific handle that finds the job quickly (e.g. its row number).
    pub token: u64,
    /// The attempt this lease is for.
    pub attempt: u32,
}

/// A leased job, ready to run.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The job as stored, with `attempt` already counting this run.
    pub job: Job,
    /// The lease to settle it with.
    pub lease: Lease,
}

/// How an attempt ended, as the broker records it.
#[derive(Clone, Debug, PartialEq)]
pub enum Settlement {
    /// Succeeded, with an optional JSON result.
    Succeeded {
        /// The result to store.
        result: Option<Vec<u8>>,
    },
    /// Failed transiently: run again at `run_at`.
    Retry {
        /// When the next attempt may start.
        run_at: Timestamp,
        /// What went wrong.
        error: String,
    },
    /// Failed for good (or attempts exhausted): into the dead-letter set.
    Failed {
        /// What went wrong.
        error: String,
    },
    /// Given back unrun (graceful shutdown): runnable now, this attempt not counted.
    Release,
    /// Given back unrun until `run_at` (a limit was full): this attempt not counted.
    Defer {
        /// When it may run.
        run_at: Timestamp,
    },
    /// Not run, and never to run: finished as Cancelled (its workflow failed, on a broker
    /// that cannot cancel jobs by id). Brokers that keep jobs record `reason` as its error.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// What happened to one settle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettleOutcome {
    /// Recorded durably.
    Applied,
    /// Fenced: the lease had expired or the job moved on (another attempt, a cancel). Nothing
    /// was written.
    Stale,
}

/// One thing a broker may or may not be able to do. Brokers declare theirs
/// ([`Broker::capabilities`]); the runtime, the workflow engine and the CLI branch on the
/// declaration, and the conformance suite checks that a broker does what it declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// Finds, lists and counts stored jobs: [`Broker::inspect`] returns [`Inspect`].
    Inspect,
    /// Cancels a queued job by id so that it never runs, and takes the lease of a running
    /// one ([`Inspect::cancel`]).
    CancelQueued,
    /// Deduplicates by unique key at enqueue ([`NewJob::unique_key`]).
    UniqueKeys,
    /// Runs ready jobs of a queue highest priority first ([`NewJob::priority`]).
    Priorities,
    /// Keeps a succeeded job's result, readable with [`Inspect::get`].
    StoredResults,
    /// Counts and peeks at queues without finding single jobs: [`Broker::queue_stats`].
    QueueDepths,
    /// Reports how many jobs are runnable now ([`Broker::backlog`]), the autoscaler's input.
    Backlog,
    /// Keeps what workers report about their pools ([`Broker::report`], [`Inspect::workers`]).
    WorkerReports,
    /// Deletes finished jobs by age ([`Inspect::purge_finished_before`]): retention.
    RetentionByAge,
}

impl Capability {
    /// Every capability, in declaration order.
    pub const ALL: [Capability; 9] = [
        Capability::Inspect,
        Capability::CancelQueued,
        Capability::UniqueKeys,
        Capability::Priorities,
        Capability::StoredResults,
        Capability::QueueDepths,
        Capability::Backlog,
        Capability::WorkerReports,
        Capability::RetentionByAge,
    ];

    /// A short lowercase name, e.g. `cancel_queued`.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Inspect => "inspect",
            Capability::CancelQueued => "cancel_queued",
            Capability::UniqueKeys => "unique_keys",
            Capability::Priorities => "priorities",
            Capability::StoredResults => "stored_results",
            Capability::QueueDepths => "queue_depths",
            Capability::Backlog => "backlog",
            Capability::WorkerReports => "worker_reports",
            Capability::RetentionByAge => "retention_by_age",
        }
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// The set of [`Capability`]s a broker declares.
///
/// ```
/// use weir_core::{Capabilities, Capability};
/// let c = Capabilities::NONE.with(Capability::Inspect).with(Capability::Backlog);
/// assert!(c.has(Capability::Inspect));
/// assert!(!c.has(Capability::Priorities));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(u32);

impl Capabilities {
    /// No capability: a broker that only enqueues, leases and settles.
    pub const NONE: Capabilities = Capabilities(0);

    /// This set plus `c`.
    pub const fn with(self, c: Capability) -> Capabilities {
        Capabilities(self.0 | c.bit())
    }

    /// True if `c` is in the set.
    pub const fn has(self, c: Capability) -> bool {
        self.0 & c.bit() != 0
    }

    /// The capabilities in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL.into_iter().filter(move |c| self.has(*c))
    }
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Capability::as_str))
            .finish()
    }
}

impl Serialize for Capabilities {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Capability::as_str))
    }
}

/// The small interface a worker needs. Every backend implements it and passes the shared
/// conformance suite (`weir-testkit`).
///
/// Delivery is at-least-once: a job is only finished by a durable [`settle`](Broker::settle);
/// a lease that is neither settled nor renewed expires and the job runs again.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// What this broker can do beyond enqueue, fetch, settle and heartbeat. Declared, not
    /// inferred: callers branch on it, and the conformance suite checks it.
    fn capabilities(&self) -> Capabilities;

    /// The limits this broker puts on new jobs (checked by [`crate::check_new_jobs`] in
    /// every `enqueue_many`). By default, [`JobLimits::default`].
    fn job_limits(&self) -> JobLimits {
        JobLimits::default()
    }

    /// Stores one job. Returns once the job is durable.
    ///
    /// Cancel safety: dropping the future may or may not store the job; a producer that
    /// needs to know sets its own id ([`NewJob::id`]) and looks it up, or enqueues again
    /// with a unique key.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, BrokerError> {
        let mut out = self.enqueue_many(vec![job]).await?;
        out.pop()
            .ok_or_else(|| BrokerError::Other("enqueue_many returned nothing".into()))
    }

    /// Stores many jobs in as few commits as the broker can; results in input order. Returns
    /// once all are durable. Every job is checked first ([`crate::check_new_jobs`]): one bad
    /// job fails the call with [`BrokerError::InvalidJob`] and stores nothing.
    ///
    /// Cancel safety: as [`enqueue`](Self::enqueue).
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, BrokerError>;

    /// Leases up to `req.max` runnable jobs, highest priority first, then earliest `run_at`.
    /// Waits up to `req.wait` for at least one.
    ///
    /// Cancel safety: dropping the future before it returns leases nothing for the caller; a
    /// broker that had already leased jobs gives them back.
    async fn fetch(&self, req: FetchRequest) -> Result<Vec<Delivery>, BrokerError>;

    /// Records how attempts ended, fenced by their leases; results in input order. Returns
    /// once the outcomes are durable.
    ///
    /// Cancel safety: dropping the future may or may not record the outcomes; a lease not
    /// settled expires and the job runs again, so nothing is lost.
    async fn settle(
        &self,
        settlements: Vec<(Lease, Settlement)>,
    ) -> Result<Vec<SettleOutcome>, BrokerError>;

    /// Extends the leases by `extend` from now; `false` marks a lease that is no longer held
    /// (its attempt should stop).
    ///
    /// Cancel safety: safe; a dropped heartbeat extends some leases or none.
    async fn heartbeat(&self, leases: &[Lease], extend: Duration)
        -> Result<Vec<bool>, BrokerError>;

    /// Jobs runnable now in each of `queues` (due, not running), in input order: the signal
    /// an autoscaler grows on. It may count a few jobs that were cancelled or taken by
    /// another process since. By default, [`BrokerError::Unsupported`]; a broker that
    /// implements it declares [`Capability::Backlog`]. Cancel safe (it only reads).
    async fn backlog(&self, queues: &[String]) -> Result<Vec<u64>, BrokerError> {
        let _ = queues;
        Err(BrokerError::Unsupported("backlog".into()))
    }

    /// Records what a worker process reports about one of its queues, for `weir status` and
    /// dashboards ([`Inspect::workers`]). Returns [`BrokerError::Unsupported`] by default;
    /// workers then simply do not appear in status. A broker that keeps reports declares
    /// [`Capability::WorkerReports`]. Cancel safe.
    async fn report(&self, status: WorkerStatus) -> Result<(), BrokerError> {
        let _ = status;
        Err(BrokerError::Unsupported("worker reports".into()))
    }

    /// Forgets every report of the worker process `worker` (`host:pid`), which stopped
    /// cleanly, so that status shows no pools for it. By default, nothing. Cancel safe.
    async fn retire(&self, worker: &str) -> Result<(), BrokerError> {
        let _ = worker;
        Ok(())
    }

    /// Tells the broker that this process runs at most `slots` jobs of `queue` at once. A
    /// broker that pushes jobs to consumers (RabbitMQ) sizes its prefetch to it, so a worker
    /// never holds more jobs than it can run; a broker that leases on fetch ignores it. The
    /// runtime calls it before its first fetch of a queue and after every resize of that
    /// queue's pool. By default, ignored. Cancel safe.
    async fn set_capacity(&self, queue: &str, slots: usize) -> Result<(), BrokerError> {
        let _ = (queue, slots);
        Ok(())
    }

    /// Closes this handle once the last worker using it has stopped (and settled or released
    /// what it held): a broker that pushes jobs ahead of fetches (RabbitMQ's prefetch) gives
    /// the ones no worker fetched back without spending an attempt. Later calls on the handle
    /// may fail with [`BrokerError::Closed`]. By default, nothing. Cancel safe: what was not
    /// given back returns as after a lost worker.
    async fn close(&self) {}

    /// The inspection capability, if this broker declares [`Capability::Inspect`].
    fn inspect(&self) -> Option<&dyn Inspect> {
        None
    }

    /// The queue-depth capability, for brokers that cannot inspect single jobs but can count
    /// and peek at their queues (RabbitMQ), declared as [`Capability::QueueDepths`]. `None`
    /// by default.
    fn queue_stats(&self) -> Option<&dyn QueueStats> {
        None
    }
}

/// A broker or store URL that cannot be used; the URL in the message has its password hidden.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{url}`: {reason}")]
pub struct InvalidUrl {
    url: String,
    reason: String,
}

impl InvalidUrl {
    /// `url` (redacted here, see [`redact_url`]) is wrong because of `reason`.
    pub fn new(url: &str, reason: impl Into<String>) -> Self {
        InvalidUrl {
            url: redact_url(url),
            reason: reason.into(),
        }
    }

    /// What is wrong.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl From<InvalidUrl> for BrokerError {
    fn from(e: InvalidUrl) -> Self {
        BrokerError::Invalid(e.to_string())
    }
}

/// `url` with any password replaced by `***`, for logs and messages: the one in the
/// authority (`user:password@`) and any `password=` or `sslpassword=` query parameter.
///
/// ```
/// use weir_core::redact_url;
/// assert_eq!(redact_url("amqp://u:pw@h:5672/%2f"), "amqp://u:***@h:5672/%2f");
/// assert_eq!(redact_url("amqp://h/"), "amqp://h/");
/// assert_eq!(redact_url("sqlite:./a@b.db"), "sqlite:./a@b.db");
/// assert_eq!(
///     redact_url("postgres://u@h/db?sslmode=require&password=s3cret"),
///     "postgres://u@h/db?sslmode=require&password=***"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => match base[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &base[..s + 3], &base[at..]),
            None => base.to_owned(),
        },
        _ => base.to_owned(),
    };
    if let Some(q) = query {
        out.push('?');
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                // `password`, `sslpassword`, and any odd spelling a parser might still
                // read as one (`??password`, `PassWord`).
                Some((k, _)) if k.to_ascii_lowercase().ends_with("password") => {
                    format!("{k}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}
