//! [`Observer`]: hooks a worker calls as jobs start and settle.

use weir_core::{Job, Lease, SettleOutcome, Settlement, Timestamp};

/// Hooks called as jobs start and settle: for progress displays, benchmarks and tests. Keep
/// them cheap; they run on the worker's hot path.
pub trait Observer: Send + Sync + 'static {
    /// A job's handler is about to run.
    fn started(&self, _job: &Job, _at: Timestamp) {}
    /// An attempt's outcome was recorded (or fenced off) by the broker.
    fn settled(&self, _lease: &Lease, _settlement: &Settlement, _outcome: SettleOutcome) {}
}

/// The observer of a worker that was given none.
pub(crate) struct NoObserver;

impl Observer for NoObserver {}
