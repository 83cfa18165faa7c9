//! [`MemoryStore`]: workflow state in memory, for tests and in-process use with the
//! [`MemoryBroker`](weir_core::MemoryBroker).

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use weir_core::{BrokerError, JobId, JobState, Member, NewJob, Timestamp, WorkflowId};

use crate::decide::Progress;
use crate::decide::WorkflowState;
use crate::spec::{NewWorkflow, StepSpec};
use crate::state_store::StateStore;
use crate::status::{result_value, MemberStatus, WorkflowStatus};
use crate::tx::{abort, complete, Advance, MemberOutcome, MemberRow, WorkflowTx};

struct Stored {
    progress: Progress,
    created_at: Timestamp,
    /// Members `0..started` were confirmed enqueued by the submission.
    started: u32,
    members: Vec<StoredMember>,
}

#[derive(Clone)]
struct StoredMember {
    job_id: JobId,
    step: StepSpec,
    state: JobState,
    enqueued: bool,
    result: Option<Vec<u8>>,
    error: Option<String>,
}

/// Workflow state in memory: lost with the process. Every call is atomic (one lock).
#[derive(Default)]
pub struct MemoryStore {
    workflows: Mutex<HashMap<WorkflowId, Stored>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A "transaction": the lock is held for the whole of [`complete`]. Changes are applied as
/// they are made, which is safe because nothing in `complete` fails after its first write
/// for this store.
struct Tx<'a>(&'a mut HashMap<WorkflowId, Stored>);

impl Tx<'_> {
    fn stored(&mut self, id: WorkflowId) -> Result<&mut Stored, BrokerError> {
        self.0.get_mut(&id).ok_or(BrokerError::NotFound(id))
    }

    fn slot(&mut self, m: Member) -> Result<&mut StoredMember, BrokerError> {
        self.stored(m.workflow)?
            .members
            .get_mut(m.index as usize)
            .ok_or_else(|| BrokerError::Invalid(format!("workflow member {m} does not exist")))
    }
}

impl WorkflowTx for Tx<'_> {
    fn progress(&mut self, id: WorkflowId) -> Result<Option<Progress>, BrokerError> {
        Ok(self.0.get(&id).map(|s| s.progress.clone()))
    }

    fn set_progress(&mut self, id: WorkflowId, p: &Progress) -> Result<(), BrokerError> {
        self.stored(id)?.progress = p.clone();
        Ok(())
    }

    fn member(&mut self, m: Member) -> Result<Option<MemberRow>, BrokerError> {
        Ok(self.0.get(&m.workflow).and_then(|s| {
            s.members.get(m.index as usize).map(|x| MemberRow {
                job_id: x.job_id,
                state: x.state,
                enqueued: x.enqueued,
                result: x.result.clone(),
                step: x.step.clone(),
            })
        }))
    }

    fn finish_member(
        &mut self,
        m: Member,
        state: JobState,
        result: Option<&[u8]>,
        error: Option<&str>,
    ) -> Result<(), BrokerError> {
        let slot = self.slot(m)?;
        slot.state = state;
        slot.result = result.map(<[u8]>::to_vec);
        slot.error = error.map(str::to_owned);
        Ok(())
    }

    fn results(
        &mut self,
        id: WorkflowId,
        children: u32,
    ) -> Result<Vec<Option<Vec<u8>>>, BrokerError> {
        Ok(self.stored(id)?.members[..children as usize]
            .iter()
            .map(|m| m.result.clone())
            .collect())
    }

    fn cancel_open(&mut self, id: WorkflowId) -> Result<(u32, Vec<JobId>), BrokerError> {
        let mut n = 0;
        let mut jobs = Vec::new();
        for m in &mut self.stored(id)?.members {
            if !m.state.is_finished() {
                m.state = JobState::Cancelled;
                n += 1;
                if m.enqueued {
                    jobs.push(m.job_id);
                }
            }
        }
        Ok((n, jobs))
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn create(&self, wf: NewWorkflow) -> Result<(), BrokerError> {
        let mut map = self.workflows.lock();
        if map.contains_key(&wf.id) {
            return Err(BrokerError::Invalid(format!("workflow {} exists", wf.id)));
        }
        let members = wf
            .members
            .into_iter()
            .map(|m| StoredMember {
                job_id: m.job_id,
                step: m.step,
                state: JobState::Pending,
                enqueued: m.enqueued,
                result: None,
                error: None,
            })
            .collect();
        map.insert(
            wf.id,
            Stored {
                progress: Progress {
                    shape: wf.shape,
                    mode: wf.mode,
                    state: WorkflowState::Running,
                    children: wf.children,
                    succeeded: 0,
                    failed: 0,
                    cancelled: 0,
                    trace_id: wf.trace_id,
                    finished_at: None,
                },
                created_at: wf.created_at,
                started: 0,
                members,
            },
        );
        Ok(())
    }

    async fn complete(
        &self,
        member: Member,
        outcome: MemberOutcome,
        now: Timestamp,
    ) -> Result<Advance, BrokerError> {
        complete(&mut Tx(&mut self.workflows.lock()), member, &outcome, now)
    }

    async fn mark_enqueued(&self, member: Member) -> Result<(), BrokerError> {
        Tx(&mut self.workflows.lock()).slot(member)?.enqueued = true;
        Ok(())
    }

    async fn mark_started(&self, id: WorkflowId, upto: u32) -> Result<(), BrokerError> {
        if let Some(s) = self.workflows.lock().get_mut(&id) {
            s.started = s.started.max(upto);
        }
        Ok(())
    }

    async fn abort(&self, id: WorkflowId, now: Timestamp) -> Result<Vec<JobId>, BrokerError> {
        abort(&mut Tx(&mut self.workflows.lock()), id, now)
    }

    async fn member_state(&self, m: Member) -> Result<Option<JobState>, BrokerError> {
        Ok(self
            .workflows
            .lock()
            .get(&m.workflow)
            .and_then(|s| s.members.get(m.index as usize))
            .map(|x| x.state))
    }

    async fn status(&self, id: WorkflowId) -> Result<Option<WorkflowStatus>, BrokerError> {
        Ok(self
            .workflows
            .lock()
            .get(&id)
            .map(|s| s.progress.clone().into_status(id, s.created_at)))
    }

    async fn members(&self, id: WorkflowId) -> Result<Vec<MemberStatus>, BrokerError> {
        let map = self.workflows.lock();
        let Some(s) = map.get(&id) else {
            return Ok(Vec::new());
        };
        Ok(s.members
            .iter()
            .enumerate()
            .map(|(i, m)| MemberStatus {
                index: i as u32,
                job_id: m.job_id,
                kind: m.step.kind.clone(),
                state: m.state,
                enqueued: m.enqueued,
                result: m.result.as_deref().map(result_value),
                error: m.error.clone(),
            })
            .collect())
    }

    async fn unstarted(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(WorkflowId, Vec<NewJob>)>, BrokerError> {
        let map = self.workflows.lock();
        let mut out: Vec<_> = map
            .iter()
            .filter(|(_, s)| {
                let p = &s.progress;
                p.state == WorkflowState::Running
                    && s.started < p.shape.starts(p.children)
                    && s.created_at < before
            })
            .map(|(id, s)| {
                let starts = s.progress.shape.starts(s.progress.children) as usize;
                let jobs = s.members[..starts]
                    .iter()
                    .enumerate()
                    .skip(s.started as usize)
                    .filter(|(_, m)| !m.state.is_finished())
                    .map(|(i, m)| {
                        let member = Member {
                            workflow: *id,
                            index: i as u32,
                        };
                        m.step.to_start_job(m.job_id, member, &s.progress.trace_id)
                    })
                    .collect();
                (*id, jobs)
            })
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out.truncate(limit);
        Ok(out)
    }

    async fn purge(&self, before: Timestamp) -> Result<u64, BrokerError> {
        let mut map = self.workflows.lock();
        let n = map.len();
        map.retain(|_, s| s.progress.finished_at.is_none_or(|t| t >= before));
        Ok((n - map.len()) as u64)
    }
}
