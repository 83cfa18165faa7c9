//! [`MeteredStore`]: a workflow [`StateStore`] that measures the calls made through it, as
//! [`MeteredBroker`](crate::MeteredBroker) does for a broker.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use metrics::{counter, histogram, Counter, Histogram};
use weir_core::{BrokerError, JobId, JobState, Member, NewJob, Timestamp, WorkflowId};
use weir_workflow::store::{Advance, MemberOutcome, NewWorkflow};
use weir_workflow::{MemberStatus, StateStore, WorkflowStatus};

/// The operations measured, in the order of [`MeteredStore::ops`].
const OPS: [&str; 10] = [
    "create",
    "complete",
    "mark_enqueued",
    "abort",
    "member_state",
    "status",
    "members",
    "purge",
    "mark_started",
    "unstarted",
];

/// A [`StateStore`] that measures the calls made through it: `weir_store_op_seconds{op}` (a
/// histogram of each call's latency) and `weir_store_errors_total{op}` (calls that failed).
/// Everything is passed through unchanged. Install the metrics recorder first: handles made
/// before it count nowhere.
pub struct MeteredStore {
    inner: Arc<dyn StateStore>,
    ops: [(Histogram, Counter); 10],
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn StateStore>) -> Self {
        MeteredStore {
            inner,
            ops: OPS.map(|op| {
                (
                    histogram!("weir_store_op_seconds", "op" => op),
                    counter!("weir_store_errors_total", "op" => op),
                )
            }),
        }
    }

    fn measure<T>(
        &self,
        op: usize,
        started: Instant,
        r: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let (took, errors) = &self.ops[op];
        took.record(started.elapsed().as_secs_f64());
        if r.is_err() {
            errors.increment(1);
        }
        r
    }
}

#[async_trait]
impl StateStore for MeteredStore {
    async fn create(&self, wf: NewWorkflow) -> Result<(), BrokerError> {
        let t = Instant::now();
        self.measure(0, t, self.inner.create(wf).await)
    }

    async fn complete(
        &self,
        member: Member,
        outcome: MemberOutcome,
        now: Timestamp,
    ) -> Result<Advance, BrokerError> {
        let t = Instant::now();
        self.measure(1, t, self.inner.complete(member, outcome, now).await)
    }

    async fn mark_enqueued(&self, member: Member) -> Result<(), BrokerError> {
        let t = Instant::now();
        self.measure(2, t, self.inner.mark_enqueued(member).await)
    }

    async fn abort(&self, id: WorkflowId, now: Timestamp) -> Result<Vec<JobId>, BrokerError> {
        let t = Instant::now();
        self.measure(3, t, self.inner.abort(id, now).await)
    }

    async fn member_state(&self, member: Member) -> Result<Option<JobState>, BrokerError> {
        let t = Instant::now();
        self.measure(4, t, self.inner.member_state(member).await)
    }

    async fn status(&self, id: WorkflowId) -> Result<Option<WorkflowStatus>, BrokerError> {
        let t = Instant::now();
        self.measure(5, t, self.inner.status(id).await)
    }

    async fn members(&self, id: WorkflowId) -> Result<Vec<MemberStatus>, BrokerError> {
        let t = Instant::now();
        self.measure(6, t, self.inner.members(id).await)
    }

    async fn purge(&self, before: Timestamp) -> Result<u64, BrokerError> {
        let t = Instant::now();
        self.measure(7, t, self.inner.purge(before).await)
    }

    async fn mark_started(&self, id: WorkflowId, upto: u32) -> Result<(), BrokerError> {
        let t = Instant::now();
        self.measure(8, t, self.inner.mark_started(id, upto).await)
    }

    async fn unstarted(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(WorkflowId, Vec<NewJob>)>, BrokerError> {
        let t = Instant::now();
        self.measure(9, t, self.inner.unstarted(before, limit).await)
    }
}
