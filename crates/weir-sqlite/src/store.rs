//! [`SqliteStore`]: workflow state in the embedded broker's file (tables `wf_workflows` and
//! `wf_members`, see docs/embedded-format.md), on a connection of its own.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use weir_core::{BrokerError, JobId, JobState, Member, NewJob, Timestamp, WorkflowId};
use weir_workflow::store::{
    abort, complete, Advance, BatchConn, BatchError, Batcher, MemberOutcome, MemberRow,
    NewWorkflow, Progress, WorkflowTx,
};
use weir_workflow::{
    result_value, FailureMode, MemberStatus, Shape, StateStore, StepSpec, WorkflowState,
    WorkflowStatus,
};

use crate::codes::{state, unfinished};
use crate::{open_conn, schema, store_err, SqliteOptions};

/// Workflow state in an embedded broker's SQLite file, on a connection of its own owned by
/// one thread. Calls queue up for that thread, which runs whatever has queued in one
/// `IMMEDIATE` transaction (a [`Batcher`]): one commit for many members finishing at once,
/// the broker's group commit again. Members finishing on several workers (or processes)
/// advance a workflow one at a time. Cheap to clone (a handle); the thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    batcher: Batcher<Conn>,
}

/// Most calls in one transaction.
const BATCH: usize = 512;

/// The store's connection, as the batcher drives it.
struct Conn(Connection);

impl BatchConn for Conn {
    fn control(&mut self, sql: &str) -> Result<(), BatchError> {
        // Cached: parsing these at every call showed in profiles.
        self.0
            .prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map(drop)
            .map_err(BatchError::new)
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store in the file the options name (created and migrated if needed), with
    /// the options' durability. For the file of a broker used alongside, prefer
    /// [`SqliteStore::beside`] (or [`SqliteBroker::store`](crate::SqliteBroker::store)).
    pub fn open(opts: &SqliteOptions) -> Result<Self, BrokerError> {
        Self::start(opts, false)
    }

    /// Opens the store in the file of a broker opened with `opts`, for use with that broker
    /// only. Its commits skip the fsync: the workflow engine always follows a store write
    /// with a durable broker commit in the same WAL (the member's settle, the submission's
    /// enqueue), and that fsync makes every earlier frame durable too. If the process dies
    /// before it, the store write may be lost, but then so is the settle, and the member runs
    /// again and writes it again.
    pub fn beside(opts: &SqliteOptions) -> Result<Self, BrokerError> {
        Self::start(opts, true)
    }

    fn start(opts: &SqliteOptions, beside: bool) -> Result<Self, BrokerError> {
        let invalid = |e: String| BrokerError::Invalid(format!("{}: {e}", opts.path().display()));
        let mut conn = open_conn(opts).map_err(|e| invalid(format!("cannot open: {e}")))?;
        schema::migrate(&mut conn).map_err(invalid)?;
        if beside {
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| invalid(e.to_string()))?;
        }
        let batcher = Batcher::start("weir-sqlite-store", Conn(conn), "BEGIN IMMEDIATE", BATCH)?;
        Ok(SqliteStore { batcher })
    }

    /// Runs `f` in the next batch; its error fails the batch (see [`Batcher::call`]).
    async fn tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        self.batcher.call(move |c| f(&c.0)).await
    }

    /// Runs `f` in the next batch, in a savepoint: its error fails it alone.
    async fn tx_isolated<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        self.batcher.call_isolated(move |c| f(&c.0)).await
    }
}

fn db(e: rusqlite::Error) -> BrokerError {
    store_err(e)
}

fn corrupt(what: &str, v: i64) -> BrokerError {
    BrokerError::Other(format!("workflow store: unknown {what} code {v}"))
}

struct Tx<'a>(&'a Connection);

impl WorkflowTx for Tx<'_> {
    fn progress(&mut self, id: WorkflowId) -> Result<Option<Progress>, BrokerError> {
        let row = self
            .0
            .prepare_cached(
                "SELECT shape, mode, state, children, succeeded, failed, cancelled, trace_id,
                        finished_at
                   FROM wf_workflows WHERE id = ?1",
            )
            .map_err(db)?
            .query_row([id.as_bytes()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get::<_, Option<i64>>(8)?,
                ))
            })
            .optional()
            .map_err(db)?;
        let Some((shape, mode, state, children, succeeded, failed, cancelled, trace_id, fin)) = row
        else {
            return Ok(None);
        };
        Ok(Some(Progress {
            shape: Shape::from_code(shape).ok_or_else(|| corrupt("shape", shape))?,
            mode: FailureMode::from_code(mode).ok_or_else(|| corrupt("mode", mode))?,
            state: WorkflowState::from_code(state).ok_or_else(|| corrupt("state", state))?,
            children,
            succeeded,
            failed,
            cancelled,
            trace_id,
            finished_at: fin.map(Timestamp),
        }))
    }

    fn set_progress(&mut self, id: WorkflowId, p: &Progress) -> Result<(), BrokerError> {
        self.0
            .prepare_cached(
                "UPDATE wf_workflows SET state = ?2, succeeded = ?3, failed = ?4, cancelled = ?5,
                        finished_at = ?6
                  WHERE id = ?1",
            )
            .map_err(db)?
            .execute(params![
                id.as_bytes(),
                p.state.code(),
                p.succeeded,
                p.failed,
                p.cancelled,
                p.finished_at.map(|t| t.0)
            ])
            .map_err(db)?;
        Ok(())
    }

    fn member(&mut self, m: Member) -> Result<Option<MemberRow>, BrokerError> {
        let row = self
            .0
            .prepare_cached(
                "SELECT job_id, state, enqueued, result, step FROM wf_members
                  WHERE workflow = ?1 AND idx = ?2",
            )
            .map_err(db)?
            .query_row(params![m.workflow.as_bytes(), m.index], |r| {
                Ok((
                    r.get::<_, [u8; 16]>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .optional()
            .map_err(db)?;
        let Some((job, state, enqueued, result, step)) = row else {
            return Ok(None);
        };
        Ok(Some(MemberRow {
            job_id: JobId::from_bytes(job),
            state: JobState::from_code(state).ok_or_else(|| corrupt("member state", state))?,
            enqueued,
            result,
            step: serde_json::from_str::<StepSpec>(&step)
                .map_err(|e| BrokerError::Other(format!("workflow member {m}: step: {e}")))?,
        }))
    }

    fn finish_member(
        &mut self,
        m: Member,
        state: JobState,
        result: Option<&[u8]>,
        error: Option<&str>,
    ) -> Result<(), BrokerError> {
        self.0
            .prepare_cached(
                "UPDATE wf_members SET state = ?3, result = ?4, error = ?5
                  WHERE workflow = ?1 AND idx = ?2",
            )
            .map_err(db)?
            .execute(params![
                m.workflow.as_bytes(),
                m.index,
                state.code(),
                result,
                error
            ])
            .map_err(db)?;
        Ok(())
    }

    fn results(
        &mut self,
        id: WorkflowId,
        children: u32,
    ) -> Result<Vec<Option<Vec<u8>>>, BrokerError> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT result FROM wf_members WHERE workflow = ?1 AND idx < ?2 ORDER BY idx",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![id.as_bytes(), children], |r| r.get(0))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn cancel_open(&mut self, id: WorkflowId) -> Result<(u32, Vec<JobId>), BrokerError> {
        let mut st = self
            .0
            .prepare_cached(concat!(
                "UPDATE wf_members SET state = ",
                state!(cancelled),
                " WHERE workflow = ?1 AND ",
                unfinished!(),
                " RETURNING job_id, enqueued"
            ))
            .map_err(db)?;
        let rows = st
            .query_map([id.as_bytes()], |r| {
                Ok((r.get::<_, [u8; 16]>(0)?, r.get::<_, bool>(1)?))
            })
            .map_err(db)?;
        let mut n = 0;
        let mut jobs = Vec::new();
        for row in rows {
            let (job, enqueued) = row.map_err(db)?;
            n += 1;
            if enqueued {
                jobs.push(JobId::from_bytes(job));
            }
        }
        Ok((n, jobs))
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn create(&self, wf: NewWorkflow) -> Result<(), BrokerError> {
        // Isolated: a duplicate id fails this call alone.
        self.tx_isolated(move |tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO wf_workflows (id, shape, mode, state, children, succeeded,
                                               failed, cancelled, trace_id, created_at, started)
                     VALUES (?1, ?2, ?3, 0, ?4, 0, 0, 0, ?5, ?6, 0) ON CONFLICT DO NOTHING",
                )
                .map_err(db)?
                .execute(params![
                    wf.id.as_bytes(),
                    wf.shape.code(),
                    wf.mode.code(),
                    wf.children,
                    wf.trace_id,
                    wf.created_at.0
                ])
                .map_err(db)?;
            if inserted == 0 {
                return Err(BrokerError::Invalid(format!("workflow {} exists", wf.id)));
            }
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO wf_members (workflow, idx, job_id, kind, step, state, enqueued)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
                )
                .map_err(db)?;
            for (i, m) in wf.members.iter().enumerate() {
                let step = serde_json::to_string(&m.step)
                    .map_err(|e| BrokerError::Invalid(format!("member {i}: {e}")))?;
                st.execute(params![
                    wf.id.as_bytes(),
                    i as u32,
                    m.job_id.as_bytes(),
                    m.step.kind,
                    step,
                    m.enqueued
                ])
                .map_err(db)?;
            }
            Ok(())
        })
        .await
    }

    async fn complete(
        &self,
        member: Member,
        outcome: MemberOutcome,
        now: Timestamp,
    ) -> Result<Advance, BrokerError> {
        self.tx(move |tx| complete(&mut Tx(tx), member, &outcome, now))
            .await
    }

    async fn mark_enqueued(&self, member: Member) -> Result<(), BrokerError> {
        self.tx(move |tx| {
            tx.prepare_cached(
                "UPDATE wf_members SET enqueued = 1 WHERE workflow = ?1 AND idx = ?2",
            )
            .map_err(db)?
            .execute(params![member.workflow.as_bytes(), member.index])
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn mark_started(&self, id: WorkflowId, upto: u32) -> Result<(), BrokerError> {
        self.tx(move |tx| {
            tx.prepare_cached("UPDATE wf_workflows SET started = MAX(started, ?2) WHERE id = ?1")
                .map_err(db)?
                .execute(params![id.as_bytes(), upto])
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn abort(&self, id: WorkflowId, now: Timestamp) -> Result<Vec<JobId>, BrokerError> {
        // Isolated: an unknown id fails this call alone.
        self.tx_isolated(move |tx| abort(&mut Tx(tx), id, now))
            .await
    }

    async fn member_state(&self, m: Member) -> Result<Option<JobState>, BrokerError> {
        self.tx(move |tx| {
            let code: Option<i64> = tx
                .prepare_cached("SELECT state FROM wf_members WHERE workflow = ?1 AND idx = ?2")
                .map_err(db)?
                .query_row(params![m.workflow.as_bytes(), m.index], |r| r.get(0))
                .optional()
                .map_err(db)?;
            code.map(|c| JobState::from_code(c).ok_or_else(|| corrupt("member state", c)))
                .transpose()
        })
        .await
    }

    async fn status(&self, id: WorkflowId) -> Result<Option<WorkflowStatus>, BrokerError> {
        self.tx(move |tx| {
            let Some(p) = Tx(tx).progress(id)? else {
                return Ok(None);
            };
            let created: i64 = tx
                .query_row(
                    "SELECT created_at FROM wf_workflows WHERE id = ?1",
                    [id.as_bytes()],
                    |r| r.get(0),
                )
                .map_err(db)?;
            Ok(Some(p.into_status(id, Timestamp(created))))
        })
        .await
    }

    async fn members(&self, id: WorkflowId) -> Result<Vec<MemberStatus>, BrokerError> {
        self.tx(move |tx| {
            let mut st = tx
                .prepare_cached(
                    "SELECT idx, job_id, kind, state, enqueued, result, error FROM wf_members
                      WHERE workflow = ?1 ORDER BY idx",
                )
                .map_err(db)?;
            let rows = st
                .query_map([id.as_bytes()], |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        r.get::<_, [u8; 16]>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, bool>(4)?,
                        r.get::<_, Option<Vec<u8>>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (index, job, kind, state, enqueued, result, error) = row.map_err(db)?;
                out.push(MemberStatus {
                    index,
                    job_id: JobId::from_bytes(job),
                    kind,
                    state: JobState::from_code(state)
                        .ok_or_else(|| corrupt("member state", state))?,
                    enqueued,
                    result: result.as_deref().map(result_value),
                    error,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn unstarted(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(WorkflowId, Vec<NewJob>)>, BrokerError> {
        self.tx(move |tx| {
            // `starts` as in `Shape::starts`: 1 for a chain (code 0), else the children.
            let mut st = tx
                // A workflow's state 0 is running (WorkflowState::Running).
                .prepare_cached(
                    "SELECT id, trace_id, started,
                            CASE shape WHEN 0 THEN MIN(children, 1) ELSE children END AS starts
                       FROM wf_workflows
                      WHERE state = 0 AND created_at < ?1
                        AND started < CASE shape WHEN 0 THEN MIN(children, 1) ELSE children END
                      ORDER BY id LIMIT ?2",
                )
                .map_err(db)?;
            let found: Vec<([u8; 16], String, u32, u32)> = st
                .query_map(params![before.0, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            let mut out = Vec::with_capacity(found.len());
            let mut members = tx
                .prepare_cached(concat!(
                    "SELECT idx, job_id, step FROM wf_members
                      WHERE workflow = ?1 AND idx >= ?2 AND idx < ?3 AND state = ",
                    state!(pending),
                    " ORDER BY idx"
                ))
                .map_err(db)?;
            for (id, trace, started, starts) in found {
                let id = WorkflowId::from_bytes(id);
                let rows: Vec<(u32, [u8; 16], String)> = members
                    .query_map(params![id.as_bytes(), started, starts], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(db)?
                    .collect::<Result<_, _>>()
                    .map_err(db)?;
                let mut jobs = Vec::with_capacity(rows.len());
                for (index, job, step) in rows {
                    let member = Member {
                        workflow: id,
                        index,
                    };
                    let step: StepSpec = serde_json::from_str(&step).map_err(|e| {
                        BrokerError::Other(format!("workflow member {member}: step: {e}"))
                    })?;
                    jobs.push(step.to_start_job(JobId::from_bytes(job), member, &trace));
                }
                out.push((id, jobs));
            }
            Ok(out)
        })
        .await
    }

    async fn purge(&self, before: Timestamp) -> Result<u64, BrokerError> {
        self.tx(move |tx| {
            tx.execute(
                "DELETE FROM wf_members WHERE workflow IN
                   (SELECT id FROM wf_workflows WHERE finished_at < ?1)",
                [before.0],
            )
            .map_err(db)?;
            let n = tx
                .execute(
                    "DELETE FROM wf_workflows WHERE finished_at < ?1",
                    [before.0],
                )
                .map_err(db)?;
            Ok(n as u64)
        })
        .await
    }
}
