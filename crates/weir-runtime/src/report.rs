//! What a worker counts while it runs, and the [`WorkerReport`] it returns when it stops.

use std::sync::atomic::{AtomicU64, Ordering};

use weir_core::{SettleOutcome, Settlement};

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

/// The live counters behind a [`WorkerReport`]. Relaxed atomics: each is a statistic on its
/// own, read once at the end.
#[derive(Default)]
pub(crate) struct Counters {
    started: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    released: AtomicU64,
    deferred: AtomicU64,
    cancelled: AtomicU64,
    scaled_up: AtomicU64,
    scaled_down: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn started(&self) {
        add(&self.started, 1);
    }

    /// Counts one settle by its outcome.
    pub(crate) fn settled(&self, settlement: &Settlement, outcome: SettleOutcome) {
        let c = match (outcome, settlement) {
            (SettleOutcome::Stale, _) => &self.stale,
            (_, Settlement::Succeeded { .. }) => &self.succeeded,
            (_, Settlement::Retry { .. }) => &self.retried,
            (_, Settlement::Failed { .. }) => &self.failed,
            (_, Settlement::Defer { .. }) => &self.deferred,
            (_, Settlement::Release) => &self.released,
            (_, Settlement::Cancel { .. }) => &self.cancelled,
        };
        add(c, 1);
    }

    /// Counts leases given back at shutdown, outside the settler.
    pub(crate) fn released(&self, n: u64) {
        add(&self.released, n);
    }

    /// Counts one resize by the autoscaler.
    pub(crate) fn scaled(&self, up: bool) {
        add(
            if up {
                &self.scaled_up
            } else {
                &self.scaled_down
            },
            1,
        );
    }

    pub(crate) fn report(&self) -> WorkerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerReport {
            started: get(&self.started),
            succeeded: get(&self.succeeded),
            retried: get(&self.retried),
            failed: get(&self.failed),
            stale: get(&self.stale),
            released: get(&self.released),
            deferred: get(&self.deferred),
            cancelled: get(&self.cancelled),
            scaled_up: get(&self.scaled_up),
            scaled_down: get(&self.scaled_down),
        }
    }
}
