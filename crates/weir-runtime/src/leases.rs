//! The leases a worker holds, each with the token that stops its attempt. An entry lives
//! from the start of an attempt until its settle is durable, so heartbeats cover the time a
//! settle waits for its commit; whatever is left at shutdown is given back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use weir_core::{JobId, Lease};

#[derive(Default)]
pub(crate) struct Leases {
    /// By lease token.
    held: Mutex<HashMap<u64, (Lease, CancellationToken)>>,
    /// Set when the grace period is over: attempts stopped from then on are given back.
    stopping: AtomicBool,
}

impl Leases {
    /// Holds `lease` until [`release`](Self::release); `token` stops its attempt.
    pub(crate) fn hold(&self, lease: Lease, token: CancellationToken) {
        self.held.lock().insert(lease.token, (lease, token));
    }

    /// Forgets the leases of settled attempts.
    pub(crate) fn release<'a>(&self, leases: impl IntoIterator<Item = &'a Lease>) {
        let mut held = self.held.lock();
        for l in leases {
            held.remove(&l.token);
        }
    }

    /// Every lease held now.
    pub(crate) fn snapshot(&self) -> Vec<Lease> {
        self.held.lock().values().map(|(l, _)| *l).collect()
    }

    /// Fires the token of each lease in `lost` that is still held.
    pub(crate) fn cancel_leases(&self, lost: &[Lease], why: &str) {
        let held = self.held.lock();
        for l in lost {
            if let Some((_, token)) = held.get(&l.token) {
                tracing::warn!(job = %l.id, attempt = l.attempt, "{why}: cancelling the attempt");
                token.cancel();
            }
        }
    }

    /// Fires the token of every held attempt of a job in `jobs`.
    pub(crate) fn cancel_jobs(&self, jobs: &HashSet<JobId>) {
        for (lease, token) in self.held.lock().values() {
            if jobs.contains(&lease.id) {
                token.cancel();
            }
        }
    }

    /// The grace period is over: attempts stopped from now on are given back unspent.
    pub(crate) fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Fires the token of every held attempt.
    pub(crate) fn cancel_all(&self) {
        for (_, token) in self.held.lock().values() {
            token.cancel();
        }
    }

    /// True once [`mark_stopping`](Self::mark_stopping) was called.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}
