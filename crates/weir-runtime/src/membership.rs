//! Workflow membership: what a worker does for a job that is a member of a durable workflow.
//! Before it runs, the *gate* (a worker without a state store defers it; on a broker that
//! cannot cancel queued jobs, the store says whether it was cancelled or already finished).
//! After it finishes for good, the *advance* (the engine records the outcome and enqueues
//! what follows, before the job is settled). While it runs on such a broker, the heartbeat
//! asks the store whether its workflow cancelled it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use weir_core::{Capabilities, Capability, Clock, Job, JobState, Member, Settlement};
use weir_workflow::store::MemberOutcome;
use weir_workflow::Workflows;

use crate::leases::Leases;

pub(crate) struct Membership {
    workflows: Option<Workflows>,
    /// The broker cannot cancel a queued job by id, so the store is asked instead.
    ask_store: bool,
    /// Members running now, by lease token, when `ask_store`.
    running: Mutex<HashMap<u64, Member>>,
}

/// Keeps a running member in [`Membership::running`] until dropped.
pub(crate) struct Watched<'a> {
    membership: &'a Membership,
    token: u64,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.membership.running.lock().remove(&self.token);
    }
}

impl Membership {
    pub(crate) fn new(workflows: Option<Workflows>, caps: Capabilities) -> Self {
        Membership {
            workflows,
            ask_store: !caps.has(Capability::CancelQueued),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// What to settle instead of running a workflow member, if anything: a worker without a
    /// state store defers it (it could not record the outcome). On a broker that cannot
    /// cancel by id, the store decides: a member of a failed workflow is still delivered, so
    /// it is finished as Cancelled here, unrun; and a member the store already has as
    /// finished (a duplicate enqueue, or a redelivery after a crash between the record and
    /// the settle) is not run again: a success replays its advance, a failure is
    /// dead-lettered as a duplicate.
    pub(crate) async fn gate(
        &self,
        clock: &dyn Clock,
        leases: &Leases,
        job: &Job,
        member: Member,
    ) -> Option<Settlement> {
        let Some(wf) = &self.workflows else {
            return Some(defer(
                clock,
                job,
                member,
                "this worker has no workflow state store",
            ));
        };
        if !self.ask_store {
            return None;
        }
        match wf.recorded(member).await? {
            JobState::Succeeded => {
                // Its outcome is recorded: replay the advance (a no-op unless the last one
                // was interrupted) rather than run the handler again.
                tracing::debug!(job = %job.id, %member, "member already succeeded: not run again");
                let replay = Settlement::Succeeded { result: None };
                Some(self.advance(clock, leases, job, member, replay).await)
            }
            JobState::Failed => Some(Settlement::Failed {
                error: format!(
                    "member {member} had already failed (a duplicate delivery, not run); its \
                     error is in the workflow's record: weir inspect {}",
                    member.workflow
                ),
            }),
            _ => Some(Settlement::Cancel {
                reason: format!(
                    "cancelled: workflow {} failed before this member ran",
                    member.workflow
                ),
            }),
        }
    }

    /// Watches a running member for a cancellation by its workflow, on a broker that cannot
    /// cancel by id; `None` elsewhere (a lost lease stops it there).
    pub(crate) fn watch(&self, token: u64, member: Member) -> Option<Watched<'_>> {
        if !self.ask_store || self.workflows.is_none() {
            return None;
        }
        self.running.lock().insert(token, member);
        Some(Watched {
            membership: self,
            token,
        })
    }

    /// Advances the workflow of a member that finished for good, before its settle: if that
    /// fails, the member is deferred (its attempt not spent), runs again, and its outcome is
    /// recorded then. Members that will run again (retry, release) advance nothing. Siblings
    /// a fail-fast cancelled that run in this worker have their token fired at once.
    pub(crate) async fn advance(
        &self,
        clock: &dyn Clock,
        leases: &Leases,
        job: &Job,
        member: Member,
        settlement: Settlement,
    ) -> Settlement {
        let outcome = match &settlement {
            Settlement::Succeeded { result } => MemberOutcome::Succeeded(result.clone()),
            Settlement::Failed { error } => MemberOutcome::Failed(error.clone()),
            _ => return settlement,
        };
        let Some(workflows) = &self.workflows else {
            // The gate deferred it before it ran.
            return settlement;
        };
        match workflows.finished(member, outcome).await {
            Ok(cancelled) => {
                if !cancelled.is_empty() {
                    leases.cancel_jobs(&cancelled.into_iter().collect::<HashSet<_>>());
                }
                settlement
            }
            Err(e) => defer(
                clock,
                job,
                member,
                &format!("advancing the workflow failed: {e}"),
            ),
        }
    }

    /// Fires the token of every running member whose workflow cancelled it (on brokers that
    /// cannot cancel by id; elsewhere the lost lease does it). The checks go to the store
    /// together, so a batching store answers them in one transaction.
    pub(crate) async fn stop_cancelled(&self, leases: &Leases) {
        let Some(wf) = &self.workflows else {
            return;
        };
        let running: Vec<(u64, Member)> =
            self.running.lock().iter().map(|(t, m)| (*t, *m)).collect();
        if running.is_empty() {
            return;
        }
        let verdicts =
            futures::future::join_all(running.iter().map(|(_, m)| wf.recorded(*m))).await;
        let tokens: HashSet<u64> = running
            .iter()
            .zip(verdicts)
            .filter(|(_, v)| *v == Some(JobState::Cancelled))
            .map(|((t, _), _)| *t)
            .collect();
        if tokens.is_empty() {
            return;
        }
        let cancelled: Vec<weir_core::Lease> = leases
            .snapshot()
            .into_iter()
            .filter(|l| tokens.contains(&l.token))
            .collect();
        if !cancelled.is_empty() {
            leases.cancel_leases(&cancelled, "its workflow failed");
        }
    }
}

/// A deferral of 1 to 5 s (jittered, so members do not come back all at once), without
/// spending an attempt.
fn defer(clock: &dyn Clock, job: &Job, member: Member, why: &str) -> Settlement {
    let pause = Duration::from_millis(rand::rng().random_range(1_000..5_000));
    tracing::warn!(job = %job.id, %member, ?pause, "{why}; the member is deferred");
    Settlement::Defer {
        run_at: clock.now().plus(pause),
    }
}
