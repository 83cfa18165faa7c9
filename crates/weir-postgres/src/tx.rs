//! The store's side of the workflow transaction protocol ([`WorkflowTx`]) over its
//! connection, and the row decoding it needs.

use postgres::Row;
use weir_core::{BrokerError, JobId, JobState, Member, Timestamp, WorkflowId};
use weir_workflow::store::{MemberRow, Progress, WorkflowTx};
use weir_workflow::{FailureMode, Shape, StepSpec, WorkflowState};

use crate::conn::{db, Conn};

pub(crate) struct Tx<'a>(pub(crate) &'a mut Conn);

impl WorkflowTx for Tx<'_> {
    fn progress(&mut self, id: WorkflowId) -> Result<Option<Progress>, BrokerError> {
        let Some(r) = self
            .0
            .query_opt(
                "SELECT shape, mode, state, children, succeeded, failed, cancelled, trace_id,
                        finished_at
                   FROM weir_workflows WHERE id = $1 FOR UPDATE",
                &[&id.as_bytes().as_slice()],
            )
            .map_err(db)?
        else {
            return Ok(None);
        };
        progress_from(&r).map(Some)
    }

    fn set_progress(&mut self, id: WorkflowId, p: &Progress) -> Result<(), BrokerError> {
        self.0
            .execute(
                "UPDATE weir_workflows SET state = $2, succeeded = $3, failed = $4,
                        cancelled = $5, finished_at = $6
                  WHERE id = $1",
                &[
                    &id.as_bytes().as_slice(),
                    &(p.state.code() as i16),
                    &i64::from(p.succeeded),
                    &i64::from(p.failed),
                    &i64::from(p.cancelled),
                    &p.finished_at.map(|t| t.0),
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    fn member(&mut self, m: Member) -> Result<Option<MemberRow>, BrokerError> {
        let Some(r) = self
            .0
            .query_opt(
                "SELECT job_id, state, enqueued, result, step FROM weir_members
                  WHERE workflow = $1 AND idx = $2",
                &[&m.workflow.as_bytes().as_slice(), &i64::from(m.index)],
            )
            .map_err(db)?
        else {
            return Ok(None);
        };
        member_from(&r, 0, m).map(Some)
    }

    fn finish_member(
        &mut self,
        m: Member,
        state: JobState,
        result: Option<&[u8]>,
        error: Option<&str>,
    ) -> Result<(), BrokerError> {
        self.0
            .execute(
                "UPDATE weir_members SET state = $3, result = $4, error = $5
                  WHERE workflow = $1 AND idx = $2",
                &[
                    &m.workflow.as_bytes().as_slice(),
                    &i64::from(m.index),
                    &i16::from(state.code()),
                    &result,
                    &error,
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    fn results(
        &mut self,
        id: WorkflowId,
        children: u32,
    ) -> Result<Vec<Option<Vec<u8>>>, BrokerError> {
        Ok(self
            .0
            .query(
                "SELECT result FROM weir_members WHERE workflow = $1 AND idx < $2 ORDER BY idx",
                &[&id.as_bytes().as_slice(), &i64::from(children)],
            )
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// One round trip: the workflow row, locked, joined with the member.
    fn progress_and_member(
        &mut self,
        m: Member,
    ) -> Result<Option<(Progress, Option<MemberRow>)>, BrokerError> {
        let Some(r) = self
            .0
            .query_opt(
                "SELECT w.shape, w.mode, w.state, w.children, w.succeeded, w.failed,
                        w.cancelled, w.trace_id, w.finished_at,
                        x.job_id, x.state, x.enqueued, x.result, x.step
                   FROM weir_workflows w
                   LEFT JOIN weir_members x ON x.workflow = w.id AND x.idx = $2
                  WHERE w.id = $1
                    FOR UPDATE OF w",
                &[&m.workflow.as_bytes().as_slice(), &i64::from(m.index)],
            )
            .map_err(db)?
        else {
            return Ok(None);
        };
        let p = progress_from(&r)?;
        let member = match r.get::<_, Option<&[u8]>>(9) {
            None => None,
            Some(_) => Some(member_from(&r, 9, m)?),
        };
        Ok(Some((p, member)))
    }

    /// One round trip: the member's record and the workflow's counters.
    fn finish_member_and_progress(
        &mut self,
        m: Member,
        state: JobState,
        result: Option<&[u8]>,
        error: Option<&str>,
        p: &Progress,
    ) -> Result<(), BrokerError> {
        self.0
            .execute(
                "WITH member AS (
                     UPDATE weir_members SET state = $7, result = $8, error = $9
                      WHERE workflow = $1 AND idx = $10)
                 UPDATE weir_workflows SET state = $2, succeeded = $3, failed = $4,
                        cancelled = $5, finished_at = $6
                  WHERE id = $1",
                &[
                    &m.workflow.as_bytes().as_slice(),
                    &(p.state.code() as i16),
                    &i64::from(p.succeeded),
                    &i64::from(p.failed),
                    &i64::from(p.cancelled),
                    &p.finished_at.map(|t| t.0),
                    &i16::from(state.code()),
                    &result,
                    &error,
                    &i64::from(m.index),
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    fn cancel_open(&mut self, id: WorkflowId) -> Result<(u32, Vec<JobId>), BrokerError> {
        let rows = self
            .0
            .query(
                "UPDATE weir_members SET state = 5 WHERE workflow = $1 AND state < 3
                 RETURNING job_id, enqueued",
                &[&id.as_bytes().as_slice()],
            )
            .map_err(db)?;
        let mut jobs = Vec::new();
        for r in &rows {
            if r.get::<_, bool>(1) {
                jobs.push(job_id(r.get(0))?);
            }
        }
        Ok((rows.len() as u32, jobs))
    }
}

/// A workflow row's progress, from its first nine columns (shape … finished_at).
pub(crate) fn progress_from(r: &Row) -> Result<Progress, BrokerError> {
    let (shape, mode, state): (i16, i16, i16) = (r.get(0), r.get(1), r.get(2));
    let n = |i: usize| r.get::<_, i64>(i) as u32;
    Ok(Progress {
        shape: Shape::from_code(shape.into()).ok_or_else(|| corrupt("shape", shape.into()))?,
        mode: FailureMode::from_code(mode.into()).ok_or_else(|| corrupt("mode", mode.into()))?,
        state: WorkflowState::from_code(state.into())
            .ok_or_else(|| corrupt("state", state.into()))?,
        children: n(3),
        succeeded: n(4),
        failed: n(5),
        cancelled: n(6),
        trace_id: r.get(7),
        finished_at: r.get::<_, Option<i64>>(8).map(Timestamp),
    })
}

/// A member row: `job_id, state, enqueued, result, step` from column `at` on.
pub(crate) fn member_from(r: &Row, at: usize, m: Member) -> Result<MemberRow, BrokerError> {
    let state: i16 = r.get(at + 1);
    Ok(MemberRow {
        job_id: job_id(r.get(at))?,
        state: JobState::from_code(state.into())
            .ok_or_else(|| corrupt("member state", state.into()))?,
        enqueued: r.get(at + 2),
        result: r.get(at + 3),
        step: serde_json::from_str::<StepSpec>(r.get(at + 4))
            .map_err(|e| BrokerError::Other(format!("workflow member {m}: step: {e}")))?,
    })
}

pub(crate) fn job_id(bytes: &[u8]) -> Result<JobId, BrokerError> {
    <[u8; 16]>::try_from(bytes)
        .map(JobId::from_bytes)
        .map_err(|_| {
            BrokerError::Other(format!("workflow store: a job id of {} bytes", bytes.len()))
        })
}

pub(crate) fn corrupt(what: &str, v: i64) -> BrokerError {
    BrokerError::Other(format!("workflow store: unknown {what} code {v}"))
}
