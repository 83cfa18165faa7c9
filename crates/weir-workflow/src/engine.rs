//! [`Workflows`]: submits durable workflows and advances them as their members finish.

use std::sync::Arc;

use weir_core::{
    Broker, BrokerError, Capability, Clock, JobId, JobState, Member, SystemClock, WorkflowId,
};

use crate::spec::{InvalidWorkflow, WorkflowSpec};
use crate::state_store::StateStore;
use crate::status::{MemberStatus, WorkflowStatus};
use crate::tx::{Advance, MemberOutcome};

/// A workflow could not be submitted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The spec breaks a rule; nothing was stored.
    #[error("invalid workflow: {0}")]
    Invalid(#[from] InvalidWorkflow),
    /// The store or the broker failed. If the workflow was stored, it is marked failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// How many jobs one enqueue call carries when a workflow is submitted.
const SUBMIT_BATCH: usize = 1_000;

/// How many unstarted workflows one rescue looks at.
const RESCUE_BATCH: usize = 1_000;

/// The workflow engine: a broker for the jobs and a [`StateStore`] for what links them.
/// A worker given one (see `WorkerBuilder::workflows` in `weir-runtime`) advances a workflow when one of its members finishes for good, *before* that member's job
/// is settled: if the store or the broker fails, the member is deferred and runs again, so an
/// advance is never lost. Cheap to clone (handles).
#[derive(Clone)]
pub struct Workflows {
    broker: Arc<dyn Broker>,
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows").finish_non_exhaustive()
    }
}

impl Workflows {
    /// An engine over `broker` and `store`, on the system clock.
    pub fn new(broker: Arc<dyn Broker>, store: Arc<dyn StateStore>) -> Self {
        Workflows {
            broker,
            store,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for submission and finish times.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Validates `spec`, stores the workflow, then enqueues what runs first (a chain's first
    /// step; every child of a group or chord). Returns once those jobs are durable. Every
    /// member gets its own job id and the workflow's trace id. If the enqueue fails, the
    /// workflow is marked failed, whatever was enqueued is cancelled where the broker allows,
    /// and the error is returned.
    ///
    /// Cancel safety: dropping the future part way leaves a workflow stored with some of its
    /// first jobs enqueued; [`rescue`](Self::rescue) completes it later.
    pub async fn submit(&self, spec: &WorkflowSpec) -> Result<WorkflowId, SubmitError> {
        spec.validate_with(&self.broker.job_limits())?;
        let id = WorkflowId::new();
        let trace = JobId::new().as_uuid().simple().to_string();
        let (wf, jobs) = spec.plan(id, &trace, self.clock.now());
        self.store.create(wf).await?;
        // Where the broker cannot be asked which jobs it has, each batch is recorded once the
        // broker confirmed it, for a rescue to know where the submission stopped. The records
        // run in the background while the next batches go out (they only raise a high-water
        // mark, so their order does not matter; a busy store can take a while for each), and
        // the submission returns once all are in. A record that fails costs a rescue that
        // enqueues the batch again, not the submission: the jobs are durable. A broker that
        // can be asked needs no record (and beside the embedded broker each record would
        // wait for the file's write lock).
        let record = !self.broker.capabilities().has(Capability::Inspect);
        let mut records = tokio::task::JoinSet::new();
        let mut confirmed = 0;
        let mut jobs = jobs.into_iter().peekable();
        while jobs.peek().is_some() {
            let chunk: Vec<_> = jobs.by_ref().take(SUBMIT_BATCH).collect();
            let n = chunk.len() as u32;
            if let Err(e) = self.broker.enqueue_many(chunk).await {
                tracing::error!(workflow = %id, error = %e, "submitting the workflow failed; it is marked failed");
                if let Ok(open) = self.store.abort(id, self.clock.now()).await {
                    self.cancel_jobs(&open).await;
                }
                return Err(SubmitError::Broker(e));
            }
            confirmed += n;
            if record {
                let store = self.store.clone();
                records.spawn(async move { store.mark_started(id, confirmed).await });
            }
        }
        while let Some(done) = records.join_next().await {
            let error = match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(workflow = %id, %error, "recording the submission's progress failed");
        }
        Ok(id)
    }

    /// Completes submissions that were interrupted (the submitter died between storing a
    /// workflow and enqueueing the jobs it starts with, or part way): for each running
    /// workflow older than `older_than` whose submission is not recorded as complete, the
    /// jobs it starts with that the broker lacks are enqueued, under the ids they were given,
    /// and the submission is recorded as complete. A broker that can look a job up by id is
    /// asked which it has (a submission enqueues in member order, so if the last is there,
    /// all are). Elsewhere (RabbitMQ) the submission recorded each batch the broker confirmed,
    /// and the jobs after the last record are enqueued: the batch in flight when the
    /// submitter died may be enqueued twice (a member the store has as finished is then not
    /// run again). Returns how many jobs were enqueued. `older_than` must exceed the longest
    /// submission: a submitter still enqueueing would collide with the rescue.
    ///
    /// Cancel safety: dropped part way, the workflows not yet looked at are looked at next time; a submission completed twice enqueues nothing new on a broker that keeps job ids.
    pub async fn rescue(&self, older_than: std::time::Duration) -> Result<u64, BrokerError> {
        let now = self.clock.now();
        let before = now.minus(older_than);
        let inspect = self
            .broker
            .inspect()
            .filter(|_| self.broker.capabilities().has(Capability::Inspect));
        let mut enqueued = 0;
        for (id, jobs) in self.store.unstarted(before, RESCUE_BATCH).await? {
            let Some(status) = self.store.status(id).await? else {
                continue;
            };
            let missing = match (inspect, jobs.last()) {
                (Some(i), Some(last)) if i.get(last.id).await?.is_some() => Vec::new(),
                (Some(i), _) => {
                    let mut missing = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        if i.get(job.id).await?.is_none() {
                            missing.push(job);
                        }
                    }
                    missing
                }
                (None, _) => jobs,
            };
            if !missing.is_empty() {
                tracing::warn!(workflow = %id, jobs = missing.len(), "completing an interrupted submission");
                enqueued += missing.len() as u64;
                for chunk in missing.chunks(SUBMIT_BATCH) {
                    self.broker.enqueue_many(chunk.to_vec()).await?;
                }
            }
            self.store
                .mark_started(id, status.shape.starts(status.children))
                .await?;
        }
        Ok(enqueued)
    }

    /// A workflow's status; `None` if the store has no such workflow.
    ///
    /// Cancel safe (a read).
    pub async fn status(&self, id: WorkflowId) -> Result<Option<WorkflowStatus>, BrokerError> {
        self.store.status(id).await
    }

    /// A workflow's members, in order, with their results and errors.
    ///
    /// Cancel safe (a read).
    pub async fn members(&self, id: WorkflowId) -> Result<Vec<MemberStatus>, BrokerError> {
        self.store.members(id).await
    }

    /// The member's state in the store when it is already final: Cancelled (its workflow
    /// failed), or Succeeded/Failed (this delivery is a duplicate, or a redelivery after a
    /// crash between the record and the settle). `None` while it is open, for an unknown
    /// member, and on a store error: the member then runs, and its outcome is recorded, or
    /// ignored, when it finishes.
    ///
    /// The runtime asks this before it runs a member on a broker that cannot cancel queued
    /// jobs ([`Capability::CancelQueued`]), and for the members it runs at each heartbeat.
    ///
    /// Cancel safe (a read).
    pub async fn recorded(&self, member: Member) -> Option<JobState> {
        match self.store.member_state(member).await {
            Ok(Some(state)) if state.is_finished() => Some(state),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(%member, error = %e, "cannot check the member's workflow; running it");
                None
            }
        }
    }

    /// Records a member's final outcome and carries out what follows: enqueue the next step
    /// or the callback (then mark it enqueued), or cancel the open siblings. Returns the job
    /// ids cancelled, so the caller can stop those it runs itself.
    ///
    /// The runtime calls this before it settles a member's job; an error means the outcome
    /// may not be recorded, and the member should run again. Cancel safety: dropping the
    /// future may leave the outcome recorded and the next step not enqueued; the member's
    /// next run replays the advance.
    pub async fn finished(
        &self,
        member: Member,
        outcome: MemberOutcome,
    ) -> Result<Vec<JobId>, BrokerError> {
        let Advance {
            enqueue,
            cancel,
            finished,
            mut shape,
        } = self
            .store
            .complete(member, outcome, self.clock.now())
            .await?;
        let (mut cancel, mut finished, mut pending) = (cancel, finished, enqueue);
        // Each turn enqueues one member or fails it for good, so this ends.
        while let Some((next, job)) = pending.take() {
            let id = job.id;
            match self.broker.enqueue(job).await {
                Ok(_) => self.store.mark_enqueued(next).await?,
                // A replay after a crash between an enqueue and its mark: a broker that keeps
                // ids refuses the job a second time, and it is there already.
                Err(_) if self.broker_has(id).await => {
                    tracing::debug!(job = %id, "next step enqueued before; marking it");
                    self.store.mark_enqueued(next).await?;
                }
                // The broker will never take this job (a spec validated before a limit
                // changed, a priority RabbitMQ refuses): running `member` again would not
                // help, so the member that cannot be enqueued fails with the reason and the
                // workflow goes on from there (a chain fails). Bounded: one record, no loop.
                Err(e @ (BrokerError::InvalidJob { .. } | BrokerError::Unsupported(_))) => {
                    tracing::warn!(workflow = %member.workflow, member = %next, error = %e, "the broker refused a workflow member; it fails");
                    let reason = format!("the broker refused this member's job: {e}");
                    let then = self
                        .store
                        .complete(next, MemberOutcome::Failed(reason), self.clock.now())
                        .await?;
                    cancel.extend(then.cancel);
                    finished = finished.or(then.finished);
                    shape = shape.or(then.shape);
                    pending = then.enqueue;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(state) = finished {
            tracing::info!(workflow = %member.workflow, state = state.as_str(), "workflow finished");
            if let Some(shape) = shape {
                weir_core::telemetry::workflow_finished(shape.as_str(), state.as_str());
            }
        }
        self.cancel_jobs(&cancel).await;
        Ok(cancel)
    }

    /// Cancels a running workflow: it ends Failed, its open members are recorded as
    /// cancelled (so a chord's callback or a chain's next step never runs), pending ones are
    /// cancelled at the broker where it can ([`Capability::CancelQueued`]), and running ones
    /// are stopped (a lost lease, or on other brokers the store's record, fires their token
    /// at their worker's next heartbeat). Returns the job ids of the members cancelled.
    /// Errors: [`BrokerError::NotFound`] for an unknown workflow, [`BrokerError::Invalid`]
    /// (naming the state it ended in) for one that already finished.
    ///
    /// Cancel safety: dropped after the store's record, the members are cancelled there and
    /// workers finish them unrun as they meet them.
    pub async fn cancel(&self, id: WorkflowId) -> Result<Vec<JobId>, BrokerError> {
        let status = self
            .store
            .status(id)
            .await?
            .ok_or(BrokerError::NotFound(id))?;
        if status.state != crate::WorkflowState::Running {
            return Err(BrokerError::Invalid(format!(
                "workflow {id} already finished ({})",
                status.state.as_str()
            )));
        }
        let cancelled = self.store.abort(id, self.clock.now()).await?;
        tracing::info!(workflow = %id, members = cancelled.len(), "workflow cancelled");
        weir_core::telemetry::workflow_finished(
            status.shape.as_str(),
            crate::WorkflowState::Failed.as_str(),
        );
        self.cancel_jobs(&cancelled).await;
        Ok(cancelled)
    }

    /// Records that a member's job ended outside any worker (an operator cancelled it by
    /// id): the member fails with `reason`, and its workflow goes on as for any failure (a
    /// fail-fast workflow cancels the rest). Returns the job ids cancelled as a result.
    ///
    /// Cancel safety: as [`finished`](Self::finished).
    pub async fn member_ended(
        &self,
        member: Member,
        reason: impl Into<String>,
    ) -> Result<Vec<JobId>, BrokerError> {
        self.finished(member, MemberOutcome::Failed(reason.into()))
            .await
    }

    /// Finds workflow members among the dead letters of `queues` that their workflow still
    /// has as open, and records them as failed with the dead letter's error: on a broker
    /// that dead-letters by itself (RabbitMQ's `x-delivery-limit` on a job that keeps
    /// killing its worker), that is the only way such a member's end reaches the workflow.
    /// Brokers without dead-letter queues ([`Capability::QueueDepths`]) have nothing to
    /// find. Looks at up to 1,000 dead letters per queue; returns how many members it
    /// recorded. Idempotent: a member recorded once is skipped after.
    ///
    /// Cancel safety: dropped part way, the members not yet recorded are found next time.
    pub async fn reconcile_dead_letters(&self, queues: &[String]) -> Result<u64, BrokerError> {
        if !self.broker.capabilities().has(Capability::QueueDepths) {
            return Ok(0);
        }
        let Some(stats) = self.broker.queue_stats() else {
            return Ok(0);
        };
        let mut recorded = 0;
        for q in queues {
            for job in stats.dead_letters(q, 1_000).await? {
                let Some(member) = job.member else { continue };
                if self
                    .store
                    .member_state(member)
                    .await?
                    .is_none_or(|s| s.is_finished())
                {
                    continue;
                }
                let why = format!(
                    "dead-lettered by the broker: {}",
                    job.last_error.as_deref().unwrap_or("no error recorded")
                );
                tracing::warn!(workflow = %member.workflow, %member, job = %job.id, "a dead-lettered member reaches its workflow");
                self.finished(member, MemberOutcome::Failed(why)).await?;
                recorded += 1;
            }
        }
        Ok(recorded)
    }

    /// True if the broker can look jobs up by id and has `id`.
    async fn broker_has(&self, id: JobId) -> bool {
        match self.broker.inspect() {
            Some(i) if self.broker.capabilities().has(Capability::Inspect) => {
                matches!(i.get(id).await, Ok(Some(_)))
            }
            _ => false,
        }
    }

    /// Cancels jobs at the broker where it can (`Inspect::cancel`): pending ones become
    /// Cancelled, and a running one loses its lease, so its worker fires its cancellation
    /// token at the next heartbeat. Jobs already finished are left as they are. Elsewhere the
    /// store's record is what workers go by.
    async fn cancel_jobs(&self, ids: &[JobId]) {
        if ids.is_empty() {
            return;
        }
        let inspect = self
            .broker
            .inspect()
            .filter(|_| self.broker.capabilities().has(Capability::CancelQueued));
        let Some(inspect) = inspect else {
            // RabbitMQ: workers find these cancelled in the store, and finish queued ones
            // unrun and stop running ones at their next heartbeat.
            tracing::debug!(jobs = ids.len(), "members cancelled in the store only");
            return;
        };
        for id in ids {
            match inspect.cancel(*id).await {
                Ok(_) | Err(BrokerError::NotFound(_) | BrokerError::WrongState { .. }) => {}
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "cancelling a workflow member failed")
                }
            }
        }
    }
}
