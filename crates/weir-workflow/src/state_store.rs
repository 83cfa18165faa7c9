//! [`StateStore`]: where workflow state lives.

use async_trait::async_trait;
use weir_core::{BrokerError, JobId, JobState, Member, NewJob, Timestamp, WorkflowId};

use crate::spec::NewWorkflow;
use crate::status::{MemberStatus, WorkflowStatus};
use crate::tx::{Advance, MemberOutcome};

/// Where workflow state lives: the embedded SQLite file, memory, or PostgreSQL for many
/// machines. Every store passes the store conformance suite (`weir-testkit`).
///
/// Cancel safety: the reads (`member_state`, `status`, `members`, `unstarted`) are cancel
/// safe. A dropped write may or may not have been applied (the SQL stores run it on their own
/// thread either way); every write is idempotent or guarded, so calling it again is safe.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Stores a new workflow and its members. Fails with `Invalid` if the id exists.
    async fn create(&self, wf: NewWorkflow) -> Result<(), BrokerError>;
    /// Records a member's outcome and advances the workflow, atomically (see [`complete`](crate::store::complete)).
    async fn complete(
        &self,
        member: Member,
        outcome: MemberOutcome,
        now: Timestamp,
    ) -> Result<Advance, BrokerError>;
    /// Records that a member's job was enqueued (after the broker confirmed it).
    async fn mark_enqueued(&self, member: Member) -> Result<(), BrokerError>;
    /// Fails a running workflow whose jobs could not be enqueued at submission; returns the
    /// job ids of its open members.
    async fn abort(&self, id: WorkflowId, now: Timestamp) -> Result<Vec<JobId>, BrokerError>;
    /// A member's state (Pending until it finishes; Cancelled once a fail-fast cancelled it);
    /// `None` if unknown. Workers on brokers that cannot cancel jobs by id ask this before
    /// running a member.
    async fn member_state(&self, member: Member) -> Result<Option<JobState>, BrokerError>;
    /// A workflow's status.
    async fn status(&self, id: WorkflowId) -> Result<Option<WorkflowStatus>, BrokerError>;
    /// Its members, in order.
    async fn members(&self, id: WorkflowId) -> Result<Vec<MemberStatus>, BrokerError>;
    /// Deletes workflows finished before `before`, with their members; returns how many.
    async fn purge(&self, before: Timestamp) -> Result<u64, BrokerError>;
    /// Records that the broker has the jobs of members `0..upto` of those a submission
    /// enqueues (see [`Shape::starts`](crate::Shape::starts)): recorded per confirmed batch by a submission to a
    /// broker that cannot look jobs up by id, and as complete by a rescue. Never lowers what
    /// was recorded; an unknown workflow is ignored.
    async fn mark_started(&self, id: WorkflowId, upto: u32) -> Result<(), BrokerError>;
    /// Up to `limit` running workflows created before `before` whose submission was not
    /// recorded as complete ([`mark_started`](Self::mark_started)), each with the jobs it
    /// starts with that were not recorded (ids and payloads as submitted): what a rescue of
    /// an interrupted submission enqueues (see `Workflows::rescue`). Workflows stored by a
    /// weir older than `mark_started` count as complete.
    async fn unstarted(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(WorkflowId, Vec<NewJob>)>, BrokerError>;
}
