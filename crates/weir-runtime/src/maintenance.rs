//! Housekeeping a worker does beside its jobs: completing workflow submissions that were
//! interrupted ([`Workflows::rescue`]), telling workflows of members the broker dead-lettered
//! by itself ([`Workflows::reconcile_dead_letters`]), and deleting finished work older than the
//! retention ([`sweep`]). [`Worker::run`](crate::Worker::run) runs it when the builder asks for it
//! ([`WorkerBuilder::retention`](crate::WorkerBuilder::retention),
//! [`WorkerBuilder::workflows`](crate::WorkerBuilder::workflows)); errors are logged and the
//! next round tries again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_core::{Broker, BrokerError, Capability, Clock, JobState, Timestamp};
use weir_workflow::{StateStore, Workflows};

/// `weir serve`'s default retention: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a workflow may sit with its submission not recorded complete before a rescue
/// looks at it: longer than any submission takes.
pub const RESCUE_AFTER: Duration = Duration::from_secs(600);

/// How often a rescue runs.
const RESCUE_EVERY: Duration = Duration::from_secs(60);

/// What one sweep deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Jobs deleted.
    pub jobs: u64,
    /// Workflows deleted (with their members).
    pub workflows: u64,
}

/// Deletes what finished more than `keep` before `now`: succeeded and cancelled jobs if the
/// broker keeps jobs and declares [`Capability::RetentionByAge`] (RabbitMQ does not), and
/// finished workflows if there is a store. Failed jobs, the dead-letter set, stay until an
/// operator purges them.
///
/// Cancel safety: dropping the future stops the sweep where it is; what was deleted stays
/// deleted.
pub async fn sweep(
    broker: &dyn Broker,
    store: Option<&dyn StateStore>,
    keep: Duration,
    now: Timestamp,
) -> Result<Swept, BrokerError> {
    let before = now.minus(keep);
    let mut out = Swept::default();
    if broker.capabilities().has(Capability::RetentionByAge) {
        if let Some(i) = broker.inspect() {
            for state in [JobState::Succeeded, JobState::Cancelled] {
                out.jobs += i.purge_finished_before(state, before).await?;
            }
        }
    }
    if let Some(s) = store {
        out.workflows = s.purge(before).await?;
    }
    Ok(out)
}

/// What to maintain, and how often.
pub(crate) struct Maintenance {
    pub(crate) broker: Arc<dyn Broker>,
    /// The queues the worker serves, whose dead letters may hold workflow members.
    pub(crate) queues: Vec<String>,
    pub(crate) workflows: Option<Workflows>,
    pub(crate) retention: Option<Duration>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Maintenance {
    /// Runs until `stop`: a rescue every minute (with workflows), and with a retention a
    /// sweep every eighth of it (between 1 s and 10 min).
    pub(crate) async fn run(self, stop: CancellationToken) {
        if self.workflows.is_none() && self.retention.is_none() {
            return;
        }
        let sweep_every = self
            .retention
            .map(|k| (k / 8).clamp(Duration::from_secs(1), Duration::from_secs(600)));
        let mut next_sweep = tokio::time::Instant::now();
        let mut next_rescue = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if let (Some(keep), Some(every)) = (self.retention, sweep_every) {
                if now >= next_sweep {
                    next_sweep = now + every;
                    self.sweep(keep).await;
                }
            }
            if let Some(w) = &self.workflows {
                if now >= next_rescue {
                    next_rescue = now + RESCUE_EVERY;
                    if let Err(e) = w.rescue(RESCUE_AFTER).await {
                        tracing::warn!(error = %e, "checking for interrupted workflow submissions failed");
                    }
                    if let Err(e) = w.reconcile_dead_letters(&self.queues).await {
                        tracing::warn!(error = %e, "checking dead letters for workflow members failed");
                    }
                }
            }
            let wake = match sweep_every {
                Some(_) if self.workflows.is_some() => next_sweep.min(next_rescue),
                Some(_) => next_sweep,
                None => next_rescue,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn sweep(&self, keep: Duration) {
        let store = self.workflows.as_ref().map(|w| &**w.store());
        match sweep(&*self.broker, store, keep, self.clock.now()).await {
            Ok(s) if s.jobs + s.workflows > 0 => tracing::info!(
                jobs = s.jobs,
                workflows = s.workflows,
                "retention: deleted finished work"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; trying again later"),
        }
    }
}
