//! Looking at stored jobs and queues, for the CLI, the HTTP API and the dashboard: the
//! [`Inspect`] capability (brokers that keep jobs), [`QueueStats`] (brokers that can only
//! count and peek, like RabbitMQ), and what they answer with.

use async_trait::async_trait;
use serde::Serialize;

use crate::{BrokerError, Job, JobId, JobPage, JobState, ListFilter, Timestamp};

/// How deep one queue is, as a broker without per-job inspection can honestly tell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    /// The queue.
    pub queue: String,
    /// Jobs due and waiting for a consumer.
    pub ready: u64,
    /// Jobs waiting for a later time (delayed, retrying or deferred).
    pub delayed: u64,
    /// Dead-lettered jobs.
    pub dead: u64,
    /// Consumers attached to the queue (worker processes serving it).
    pub consumers: u64,
    /// False when the broker has no such queue at all (nothing was ever enqueued to it or
    /// served from it): the counts are then zeros, and likely a typo.
    pub exists: bool,
}

/// Counting and peeking at queues, for brokers that cannot find a job by id. A separate
/// capability from [`Inspect`]: RabbitMQ offers this and not that. Both methods only look,
/// and are cancel safe.
#[async_trait]
pub trait QueueStats: Send + Sync {
    /// Depths of `queues`, in input order. A queue that does not exist counts as empty.
    async fn depths(&self, queues: &[String]) -> Result<Vec<QueueDepth>, BrokerError>;

    /// Up to `limit` dead-lettered jobs of `queue`, oldest first, with `last_error` saying why.
    /// Looking does not remove them.
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<Job>, BrokerError>;
}

/// Job counts of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    /// The queue.
    pub queue: String,
    /// Pending jobs, whether due or delayed.
    pub pending: u64,
    /// Jobs leased by a worker.
    pub running: u64,
    /// Jobs waiting for their next attempt.
    pub retryable: u64,
    /// Finished jobs.
    pub succeeded: u64,
    /// Dead-lettered jobs.
    pub failed: u64,
    /// Cancelled jobs.
    pub cancelled: u64,
    /// When the longest-waiting runnable job (pending or retryable, and due) became due;
    /// `None` when no job is waiting to run. `now - oldest_due` is how far behind the queue
    /// is.
    pub oldest_due: Option<Timestamp>,
    /// Jobs that ever finished in this queue (succeeded, failed or cancelled), not lowered
    /// when finished jobs are deleted (retention, purge): the difference between two reads
    /// is what finished in between. 0 where the broker does not keep it.
    pub finished_ever: u64,
}

impl QueueCounts {
    /// Takes `due` as a candidate for [`oldest_due`](Self::oldest_due).
    pub fn waiting_since(&mut self, due: Timestamp) {
        self.oldest_due = Some(self.oldest_due.map_or(due, |o| o.min(due)));
    }

    /// Adds `n` jobs in `state`.
    pub fn add(&mut self, state: JobState, n: u64) {
        match state {
            JobState::Pending => self.pending += n,
            JobState::Running => self.running += n,
            JobState::Retryable => self.retryable += n,
            JobState::Succeeded => self.succeeded += n,
            JobState::Failed => self.failed += n,
            JobState::Cancelled => self.cancelled += n,
        }
    }

    /// The count for `state`.
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Pending => self.pending,
            JobState::Running => self.running,
            JobState::Retryable => self.retryable,
            JobState::Succeeded => self.succeeded,
            JobState::Failed => self.failed,
            JobState::Cancelled => self.cancelled,
        }
    }
}

/// Looking at and steering stored jobs: for the CLI, the HTTP API and the dashboard. A separate
/// capability, because not every broker can offer it (RabbitMQ cannot find a message by id).
///
/// Cancel safety: the reads (`get`, `list`, `counts`, `workers`) are cancel safe. A dropped
/// `retry`, `cancel` or purge may or may not have been applied; ask again with `get`.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// The job with this id.
    async fn get(&self, id: JobId) -> Result<Option<Job>, BrokerError>;
    /// Jobs matching `filter`, newest first.
    async fn list(&self, filter: ListFilter) -> Result<Vec<Job>, BrokerError>;
    /// Counts by queue and state, queues in name order.
    async fn counts(&self) -> Result<Vec<QueueCounts>, BrokerError>;
    /// Runs a Failed job again, with a fresh set of attempts on top of those spent
    /// (`max_attempts` grows by its old value; `attempt` never goes back, so the lease of an
    /// earlier attempt stays fenced off). Errors with [`BrokerError::WrongState`]
    /// for a job in any other state.
    async fn retry(&self, id: JobId) -> Result<Job, BrokerError>;
    /// Cancels an unfinished job; a running attempt loses its lease at its next heartbeat.
    async fn cancel(&self, id: JobId) -> Result<Job, BrokerError>;
    /// Deletes finished jobs in `state` (Succeeded, Failed or Cancelled), optionally of one
    /// queue. Returns how many were deleted.
    async fn purge(&self, state: JobState, queue: Option<&str>) -> Result<u64, BrokerError>;

    /// Deletes jobs in a finished `state` that finished before `before` (retention); returns
    /// how many. By default, `Unsupported`.
    async fn purge_finished_before(
        &self,
        state: JobState,
        before: Timestamp,
    ) -> Result<u64, BrokerError> {
        let _ = (state, before);
        Err(BrokerError::Unsupported("purging by age".into()))
    }

    /// The latest report of every worker process and queue, newest first. By default,
    /// [`BrokerError::Unsupported`].
    async fn workers(&self) -> Result<Vec<WorkerStatus>, BrokerError> {
        Err(BrokerError::Unsupported("worker reports".into()))
    }

    /// One page of the jobs matching `filter`, newest first, starting after `cursor` (a
    /// [`JobPage::next`] of an earlier page; `None` for the first). A broker may return a page
    /// shorter than `filter.limit` (even empty) with a `next` cursor when it stopped to bound
    /// the work of one call; only `next: None` ends the search. By default, one page of
    /// [`list`](Self::list) and no cursor.
    async fn search(
        &self,
        filter: ListFilter,
        cursor: Option<&str>,
    ) -> Result<JobPage, BrokerError> {
        if cursor.is_some() {
            return Err(BrokerError::Unsupported("paging through jobs".into()));
        }
        Ok(JobPage {
            jobs: self.list(filter).await?,
            next: None,
        })
    }

    /// Deletes one finished job (succeeded, failed or cancelled) and returns it. Errors with
    /// [`BrokerError::WrongState`] for an unfinished job (cancel it first) and
    /// [`BrokerError::NotFound`] for an unknown id. By default, `Unsupported`.
    async fn delete(&self, id: JobId) -> Result<Job, BrokerError> {
        let _ = id;
        Err(BrokerError::Unsupported("deleting a job by id".into()))
    }
}

/// What one worker process says about one of its queues.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerStatus {
    /// The process, as `host:pid`.
    pub worker: String,
    /// The queue.
    pub queue: String,
    /// Its pool's size.
    pub size: u64,
    /// Slots busy.
    pub busy: u64,
    /// The autoscaler's last change and its reason, if it made one.
    pub last_decision: Option<String>,
    /// When this was reported.
    pub updated_at: Timestamp,
}
