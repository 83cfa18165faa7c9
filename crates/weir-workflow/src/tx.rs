//! The store protocol: the handful of reads and writes ([`WorkflowTx`]) that recording a
//! member's outcome needs inside one store transaction, and [`complete`] and [`abort`], written
//! once over it. Each store implements only `WorkflowTx`; the logic stays here.

use weir_core::{BrokerError, JobId, JobState, Member, NewJob, Timestamp, WorkflowId};

use crate::decide::WorkflowState;
use crate::decide::{decide, Input, Next, Progress};
use crate::spec::{Shape, StepSpec};

/// How a member's job finished, as the engine reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberOutcome {
    /// Succeeded, with its JSON result if it returned one.
    Succeeded(Option<Vec<u8>>),
    /// Failed for good (permanent error or attempts exhausted).
    Failed(String),
}

/// A stored member, as a transaction reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberRow {
    /// Its job's id.
    pub job_id: JobId,
    /// Pending (not finished), Succeeded, Failed or Cancelled.
    pub state: JobState,
    /// Its job was enqueued.
    pub enqueued: bool,
    /// Its result, once succeeded.
    pub result: Option<Vec<u8>>,
    /// What to enqueue when its turn comes.
    pub step: StepSpec,
}

/// The operations [`complete`] needs, inside one store transaction that the store opens,
/// commits, or rolls back on error. Each store implements it over its own connection; the
/// decision logic stays here, written once.
pub trait WorkflowTx {
    /// The workflow's progress, locked for the rest of the transaction (`FOR UPDATE` on
    /// PostgreSQL); `None` if there is no such workflow.
    fn progress(&mut self, id: WorkflowId) -> Result<Option<Progress>, BrokerError>;
    /// Writes the progress back.
    fn set_progress(&mut self, id: WorkflowId, p: &Progress) -> Result<(), BrokerError>;
    /// One member.
    fn member(&mut self, m: Member) -> Result<Option<MemberRow>, BrokerError>;
    /// Records a member's final state, with its result or error.
    fn finish_member(
        &mut self,
        m: Member,
        state: JobState,
        result: Option<&[u8]>,
        error: Option<&str>,
    ) -> Result<(), BrokerError>;
    /// The results of members `0..children`, in order.
    fn results(
        &mut self,
        id: WorkflowId,
        children: u32,
    ) -> Result<Vec<Option<Vec<u8>>>, BrokerError>;
    /// Marks every unfinished member Cancelled; returns how many, and the job ids of those
    /// that were enqueued (their jobs are to be cancelled at the broker).
    fn cancel_open(&mut self, id: WorkflowId) -> Result<(u32, Vec<JobId>), BrokerError>;

    /// [`progress`](Self::progress) and [`member`](Self::member) together. A store whose
    /// statements cost a round trip each does both in one.
    fn progress_and_member(
        &mut self,
        m: Member,
    ) -> Result<Option<(Progress, Option<MemberRow>)>, BrokerError> {
        let Some(p) = self.progress(m.workflow)? else {
            return Ok(None);
        };
        Ok(Some((p, self.member(m)?)))
    }

    /// [`finish_member`](Self::finish_member) and [`set_progress`](Self::set_progress)
    /// together (the common case: a member finished and nothing else happens yet).
    fn finish_member_and_progress(
        &mut self,
        m: Member,
        state: JobState,
        result: Option<&[u8]>,
        error: Option<&str>,
        p: &Progress,
    ) -> Result<(), BrokerError> {
        self.finish_member(m, state, result, error)?;
        self.set_progress(m.workflow, p)
    }
}

/// What the engine must do after [`complete`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Advance {
    /// A job to enqueue, then to mark with [`StateStore::mark_enqueued`](crate::StateStore::mark_enqueued).
    pub enqueue: Option<(Member, NewJob)>,
    /// Jobs to cancel at the broker (fail-fast).
    pub cancel: Vec<JobId>,
    /// The workflow finished with this state.
    pub finished: Option<WorkflowState>,
    /// With `finished`: the workflow's shape (what `weir_workflows_finished_total` counts
    /// by).
    pub shape: Option<Shape>,
}

/// Records `outcome` for member `m` and advances its workflow, inside `tx`. Idempotent: an
/// outcome for a member that already has one keeps the first, and replays the decision it led
/// to (an enqueue not yet marked is returned again).
pub fn complete<T: WorkflowTx>(
    tx: &mut T,
    m: Member,
    outcome: &MemberOutcome,
    now: Timestamp,
) -> Result<Advance, BrokerError> {
    let mut out = Advance::default();
    let Some((mut p, Some(row))) = tx.progress_and_member(m)? else {
        return Ok(out);
    };
    // The member's record, written below: with the progress in one go when nothing else
    // happens, before anything else otherwise (a fail-fast must not cancel this member).
    let mut record = None;
    let (succeeded, result) = if row.state.is_finished() {
        match row.state {
            JobState::Succeeded => (true, row.result),
            // A failure was acted on when recorded; a cancelled member is out of the game.
            _ => return Ok(out),
        }
    } else {
        let (state, result, error) = match outcome {
            MemberOutcome::Succeeded(r) => (JobState::Succeeded, r.clone(), None),
            MemberOutcome::Failed(e) => (JobState::Failed, None, Some(e.as_str())),
        };
        let callback = p.shape == Shape::Chord && m.index == p.children;
        if !callback {
            if state == JobState::Succeeded {
                p.succeeded += 1;
            } else {
                p.failed += 1;
            }
        }
        record = Some((state, error));
        (state == JobState::Succeeded, result)
    };
    let next = decide(&p, m.index, succeeded);
    match (next, record) {
        (Next::Wait, None) => return Ok(out), // a replay with nothing to do
        (Next::Wait, Some((state, error))) => {
            tx.finish_member_and_progress(m, state, result.as_deref(), error, &p)?;
            return Ok(out);
        }
        (_, Some((state, error))) => tx.finish_member(m, state, result.as_deref(), error)?,
        (_, None) => {}
    }
    match next {
        Next::Wait => {}
        Next::Enqueue { index, input } => {
            let next = Member {
                workflow: m.workflow,
                index,
            };
            if let Some(n) = tx.member(next)? {
                if !n.enqueued && !n.state.is_finished() {
                    let payload = match input {
                        Input::ResultOf(i) if i == m.index => result.unwrap_or_else(null),
                        Input::ResultOf(i) => tx
                            .member(Member {
                                workflow: m.workflow,
                                index: i,
                            })?
                            .and_then(|r| r.result)
                            .unwrap_or_else(null),
                        Input::AllResults => results_array(tx.results(m.workflow, p.children)?),
                    };
                    let job = n.step.to_job(n.job_id, next, &p.trace_id, payload);
                    out.enqueue = Some((next, job));
                }
            }
        }
        Next::Finish(state) => {
            p.state = state;
            p.finished_at = Some(now);
            out.finished = Some(state);
            out.shape = Some(p.shape);
        }
        Next::FailFast => {
            let (n, cancel) = tx.cancel_open(m.workflow)?;
            p.cancelled += n;
            p.state = WorkflowState::Failed;
            p.finished_at = Some(now);
            out.finished = Some(WorkflowState::Failed);
            out.shape = Some(p.shape);
            out.cancel = cancel;
        }
    }
    tx.set_progress(m.workflow, &p)?;
    Ok(out)
}

fn null() -> Vec<u8> {
    b"null".to_vec()
}

/// The children's results as one JSON array; a result that is not JSON becomes a string.
fn results_array(results: Vec<Option<Vec<u8>>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        results
            .iter()
            .map(|r| r.as_ref().map_or(4, Vec::len) + 1)
            .sum::<usize>()
            + 2,
    );
    out.push(b'[');
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match r {
            None => out.extend_from_slice(b"null"),
            Some(b) if serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok() => {
                out.extend_from_slice(b)
            }
            Some(b) => out.extend_from_slice(
                serde_json::to_string(&String::from_utf8_lossy(b))
                    .unwrap_or_default()
                    .as_bytes(),
            ),
        }
    }
    out.push(b']');
    out
}

/// Fails a running workflow whose submission could not be completed, inside `tx`: every open
/// member is cancelled. Returns the job ids of those that were enqueued. `NotFound` if there
/// is no such workflow.
pub fn abort<T: WorkflowTx>(
    tx: &mut T,
    id: WorkflowId,
    now: Timestamp,
) -> Result<Vec<JobId>, BrokerError> {
    let Some(mut p) = tx.progress(id)? else {
        return Err(BrokerError::NotFound(id));
    };
    if p.state != WorkflowState::Running {
        // Finished meanwhile: it keeps the state it finished with, and the caller hears so.
        return Err(BrokerError::Invalid(format!(
            "workflow {id} already finished ({})",
            p.state.as_str()
        )));
    }
    let (n, jobs) = tx.cancel_open(id)?;
    p.cancelled += n;
    p.state = WorkflowState::Failed;
    p.finished_at.get_or_insert(now);
    tx.set_progress(id, &p)?;
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_array_keeps_order_and_wraps_non_json() {
        let a = results_array(vec![Some(b"1".to_vec()), None, Some(b"not json".to_vec())]);
        assert_eq!(String::from_utf8(a).unwrap(), r#"[1,null,"not json"]"#);
    }
}
