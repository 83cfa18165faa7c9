//! The commands the writer thread takes ([`Cmd`]), and the replies it holds until the
//! transaction they belong to has committed ([`Done`]).

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use weir_core::{
    BrokerError, Delivery, Enqueued, Job, JobId, JobState, Lease, NewJob, SettleOutcome,
    Settlement, Timestamp, WorkerStatus,
};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, BrokerError>>;

pub(crate) enum Cmd {
    Enqueue(Vec<NewJob>, Reply<Vec<Enqueued>>),
    Fetch(Fetch),
    Settle(Vec<(Lease, Settlement)>, Reply<Vec<SettleOutcome>>),
    Heartbeat(Vec<Lease>, Duration, Reply<Vec<bool>>),
    Retry(JobId, Reply<Job>),
    Cancel(JobId, Reply<Job>),
    /// Deletes one finished job.
    Delete(JobId, Reply<Job>),
    /// One window of a purge.
    Purge(Purge, Reply<Purged>),
    Backlog(Vec<String>, Reply<Vec<u64>>),
    Report(WorkerStatus, Reply<()>),
    /// Forgets the reports of a worker process that stopped.
    Retire(String, Reply<()>),
}

/// One window of a purge: deletes the finished jobs in `state` (of one queue or all,
/// finished before a time or ever) among the `window` rows after seq `after`. The caller
/// repeats it from [`Purged::next`] to the end of the table, so no command holds the writer
/// for more than one window, whatever the size of the file, and finished jobs need no index
/// (which every settle would pay for).
pub(crate) struct Purge {
    pub(crate) state: JobState,
    pub(crate) queue: Option<String>,
    pub(crate) before: Option<Timestamp>,
    pub(crate) after: i64,
    pub(crate) window: usize,
}

/// What one purge window did.
#[derive(Debug)]
pub(crate) struct Purged {
    pub(crate) deleted: u64,
    /// Where the next window starts; `None` at the end of the table.
    pub(crate) next: Option<i64>,
}

pub(crate) struct Fetch {
    pub(crate) queues: Vec<String>,
    pub(crate) max: usize,
    pub(crate) lease: Duration,
    /// Until when it may stay parked.
    pub(crate) deadline: Instant,
    pub(crate) reply: Reply<Vec<Delivery>>,
}

/// A reply computed inside the transaction, sent only once it committed.
pub(crate) enum Done {
    Enqueue(Reply<Vec<Enqueued>>, Result<Vec<Enqueued>, BrokerError>),
    Fetch(Reply<Vec<Delivery>>, Vec<Delivery>),
    Settle(Reply<Vec<SettleOutcome>>, Vec<SettleOutcome>),
    Heartbeat(Reply<Vec<bool>>, Vec<bool>),
    Job(Reply<Job>, Box<Result<Job, BrokerError>>),
    Purged(Reply<Purged>, Result<Purged, BrokerError>),
    Unit(Reply<()>),
}

impl Done {
    pub(crate) fn fail(self, err: &str) {
        let e = || BrokerError::Unavailable(err.to_owned());
        match self {
            Done::Enqueue(r, _) => drop(r.send(Err(e()))),
            Done::Fetch(r, _) => drop(r.send(Err(e()))),
            Done::Settle(r, _) => drop(r.send(Err(e()))),
            Done::Heartbeat(r, _) => drop(r.send(Err(e()))),
            Done::Job(r, _) => drop(r.send(Err(e()))),
            Done::Purged(r, _) => drop(r.send(Err(e()))),
            Done::Unit(r) => drop(r.send(Err(e()))),
        }
    }
}

pub(crate) fn cmd_fail(cmd: Cmd, err: &str) {
    let e = BrokerError::Unavailable(err.to_owned());
    match cmd {
        Cmd::Enqueue(_, r) => drop(r.send(Err(e))),
        Cmd::Fetch(f) => drop(f.reply.send(Err(e))),
        Cmd::Settle(_, r) => drop(r.send(Err(e))),
        Cmd::Heartbeat(_, _, r) => drop(r.send(Err(e))),
        Cmd::Retry(_, r) | Cmd::Cancel(_, r) | Cmd::Delete(_, r) => drop(r.send(Err(e))),
        Cmd::Purge(_, r) => drop(r.send(Err(e))),
        Cmd::Backlog(_, r) => drop(r.send(Err(e))),
        Cmd::Report(_, r) | Cmd::Retire(_, r) => drop(r.send(Err(e))),
    }
}
