//! The events a broker or a workflow store meets on its own, outside any worker's attempt,
//! counted through the [`metrics`] facade (a no-op until a recorder is installed; the `weir`
//! binary installs a Prometheus one for `/metrics`). One home for these names, so every
//! back end counts the same thing under the same name.
//!
//! These are rare events (a lease lost with its worker, a job dead-lettered by the broker, a
//! workflow ending), so each call looks its handle up in the recorder; the per-attempt metrics
//! of the hot path are cached handles in `weir-runtime`.

use metrics::counter;

/// `weir_leases_reclaimed_total{queue}`: attempts whose lease ran out (the worker died, hung
/// or lost its connection) and whose job the broker took back. RabbitMQ cannot tell a leased
/// delivery from a prefetched one: there it counts every delivery that came back unsettled.
pub const LEASES_RECLAIMED: &str = "weir_leases_reclaimed_total";

/// `weir_jobs_dead_lettered_total{queue}`: jobs that failed for good (attempts spent, a
/// permanent error, or unreadable), whoever decided it: a worker's outcome or the broker.
pub const DEAD_LETTERED: &str = "weir_jobs_dead_lettered_total";

/// `weir_workflows_finished_total{shape,state}`: workflows that ended, by shape (chain,
/// group, chord) and final state (succeeded, failed).
pub const WORKFLOWS_FINISHED: &str = "weir_workflows_finished_total";

/// Counts `n` leases of `queue` the broker reclaimed.
pub fn leases_reclaimed(queue: &str, n: u64) {
    if n > 0 {
        counter!(LEASES_RECLAIMED, "queue" => queue.to_owned()).increment(n);
    }
}

/// Counts `n` jobs of `queue` the broker dead-lettered itself (not through a worker's
/// outcome, which the worker counts).
pub fn dead_lettered(queue: &str, n: u64) {
    if n > 0 {
        counter!(DEAD_LETTERED, "queue" => queue.to_owned()).increment(n);
    }
}

/// Counts a workflow of `shape` that finished in `state` (both lower-case names).
pub fn workflow_finished(shape: &'static str, state: &'static str) {
    counter!(WORKFLOWS_FINISHED, "shape" => shape, "state" => state).increment(1);
}
