//! weir's PostgreSQL workflow state store: results and workflow counters for deployments whose
//! jobs go through RabbitMQ on many machines.
//!
//! [`PgStore`] implements [`StateStore`] with two tables, `weir_workflows` and
//! `weir_members`, created on first connect. Advancing a workflow locks its row (`SELECT …
//! FOR UPDATE`), so members finishing on different machines advance it one at a time. The
//! decision logic is `weir_workflow::store::complete`, the same for every store.
//!
//! The blocking `postgres` client runs on a thread of the store's own (a [`Batcher`]): a
//! store call is a few round trips inside a transaction, and the synchronous client keeps
//! [`WorkflowTx`] synchronous for every store.

mod conn;
mod options;
mod tls;
mod tx;

pub use options::PgOptions;

use std::collections::HashMap;

use async_trait::async_trait;

use crate::conn::{db, open_and_migrate, Conn};
use crate::tx::{corrupt, job_id, Tx};
use weir_core::{BrokerError, JobId, JobState, Member, NewJob, Timestamp, WorkflowId};
use weir_workflow::store::{
    abort, complete, Advance, Batcher, MemberOutcome, NewWorkflow, WorkflowTx,
};
use weir_workflow::{result_value, MemberStatus, StateStore, StepSpec, WorkflowStatus};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS weir_workflows (
    id          BYTEA    PRIMARY KEY,
    shape       SMALLINT NOT NULL,
    mode        SMALLINT NOT NULL,
    state       SMALLINT NOT NULL,
    children    BIGINT   NOT NULL,
    succeeded   BIGINT   NOT NULL,
    failed      BIGINT   NOT NULL,
    cancelled   BIGINT   NOT NULL,
    trace_id    TEXT     NOT NULL,
    created_at  BIGINT   NOT NULL,
    finished_at BIGINT
);
-- How many of the jobs a workflow starts with its submission saw confirmed; workflows
-- stored by a weir without this column count as fully submitted. Looked up first: ALTER
-- TABLE locks the table even when the column exists, and every worker runs this on connect.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                    WHERE table_schema = current_schema() AND table_name = 'weir_workflows'
                      AND column_name = 'started') THEN
        ALTER TABLE weir_workflows ADD COLUMN started BIGINT NOT NULL DEFAULT 4294967295;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS weir_workflows_finished ON weir_workflows (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS weir_members (
    workflow BYTEA    NOT NULL REFERENCES weir_workflows (id) ON DELETE CASCADE,
    idx      BIGINT   NOT NULL,
    job_id   BYTEA    NOT NULL,
    kind     TEXT     NOT NULL,
    step     TEXT     NOT NULL,
    state    SMALLINT NOT NULL,
    enqueued BOOLEAN  NOT NULL,
    result   BYTEA,
    error    TEXT,
    PRIMARY KEY (workflow, idx)
);";

/// Workflow state in PostgreSQL. One connection, owned by a thread of its own, runs every
/// call: what has queued meanwhile goes into one transaction (a [`Batcher`]). Members of one workflow all lock its row, so their transactions would queue
/// on that lock anyway; batching them turns one commit per member into one per batch. Cheap to
/// clone (a handle); the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct PgStore {
    batcher: Batcher<Conn>,
    schema: Option<String>,
}

/// Most calls in one transaction.
const BATCH: usize = 256;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, creates the tables if they are missing (under an advisory lock, so many
    /// workers starting at once do not race), and starts the store's thread with that
    /// connection. A connection lost later is replaced before the next batch.
    ///
    /// Cancel safe: the connection is made on a blocking thread; dropped, it is closed when made.
    pub async fn connect(opts: PgOptions) -> Result<Self, BrokerError> {
        let schema = opts.schema.clone();
        let batcher = tokio::task::spawn_blocking(move || {
            let client = open_and_migrate(&opts, SCHEMA)?;
            let conn = Conn {
                opts,
                client: Some(client),
                prepared: HashMap::new(),
            };
            Batcher::start("weir-pg-store", conn, "BEGIN", BATCH)
        })
        .await
        .map_err(|e| BrokerError::Other(format!("store task failed: {e}")))??;
        Ok(PgStore { batcher, schema })
    }

    /// Runs `f` in the next batch; its error fails the batch (see [`Batcher::call`]).
    async fn tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        self.batcher.call(f).await
    }

    /// Runs `f` in the next batch, in a savepoint: its error fails it alone.
    async fn tx_isolated<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        self.batcher.call_isolated(f).await
    }
}

#[async_trait]
impl StateStore for PgStore {
    async fn create(&self, wf: NewWorkflow) -> Result<(), BrokerError> {
        // Isolated: a duplicate id fails this call alone.
        self.tx_isolated(move |tx| {
            let id = wf.id.as_bytes().to_vec();
            let n = tx
                .execute(
                    "INSERT INTO weir_workflows (id, shape, mode, state, children, succeeded,
                                                 failed, cancelled, trace_id, created_at, started)
                     VALUES ($1, $2, $3, 0, $4, 0, 0, 0, $5, $6, 0) ON CONFLICT DO NOTHING",
                    &[
                        &id,
                        &(wf.shape.code() as i16),
                        &(wf.mode.code() as i16),
                        &i64::from(wf.children),
                        &wf.trace_id,
                        &wf.created_at.0,
                    ],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(BrokerError::Invalid(format!("workflow {} exists", wf.id)));
            }
            // One statement for every member: arrays, unnested server-side.
            let mut idx = Vec::with_capacity(wf.members.len());
            let mut jobs = Vec::with_capacity(wf.members.len());
            let mut kinds = Vec::with_capacity(wf.members.len());
            let mut steps = Vec::with_capacity(wf.members.len());
            let mut enqueued = Vec::with_capacity(wf.members.len());
            for (i, m) in wf.members.iter().enumerate() {
                idx.push(i as i64);
                jobs.push(m.job_id.as_bytes().to_vec());
                kinds.push(m.step.kind.clone());
                steps.push(
                    serde_json::to_string(&m.step)
                        .map_err(|e| BrokerError::Invalid(format!("member {i}: {e}")))?,
                );
                enqueued.push(m.enqueued);
            }
            tx.execute(
                "INSERT INTO weir_members (workflow, idx, job_id, kind, step, state, enqueued)
                 SELECT $1, i, j, k, s, 0, e
                   FROM UNNEST($2::BIGINT[], $3::BYTEA[], $4::TEXT[], $5::TEXT[], $6::BOOLEAN[])
                        AS t(i, j, k, s, e)",
                &[&id, &idx, &jobs, &kinds, &steps, &enqueued],
            )
            .map_err(db)?;
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

    async fn mark_started(&self, id: WorkflowId, upto: u32) -> Result<(), BrokerError> {
        self.tx(move |tx| {
            tx.execute(
                "UPDATE weir_workflows SET started = GREATEST(started, $2) WHERE id = $1",
                &[&id.as_bytes().as_slice(), &i64::from(upto)],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn mark_enqueued(&self, member: Member) -> Result<(), BrokerError> {
        self.tx(move |tx| {
            tx.execute(
                "UPDATE weir_members SET enqueued = TRUE WHERE workflow = $1 AND idx = $2",
                &[
                    &member.workflow.as_bytes().as_slice(),
                    &i64::from(member.index),
                ],
            )
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
        self.tx(move |c| {
            let row = c
                .query_opt(
                    "SELECT state FROM weir_members WHERE workflow = $1 AND idx = $2",
                    &[&m.workflow.as_bytes().as_slice(), &i64::from(m.index)],
                )
                .map_err(db)?;
            row.map(|r| {
                let code: i16 = r.get(0);
                JobState::from_code(code.into()).ok_or_else(|| corrupt("member state", code.into()))
            })
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
                .query_one(
                    "SELECT created_at FROM weir_workflows WHERE id = $1",
                    &[&id.as_bytes().as_slice()],
                )
                .map_err(db)?
                .get(0);
            Ok(Some(p.into_status(id, Timestamp(created))))
        })
        .await
    }

    async fn members(&self, id: WorkflowId) -> Result<Vec<MemberStatus>, BrokerError> {
        self.tx(move |c| {
            let rows = c
                .query(
                    "SELECT idx, job_id, kind, state, enqueued, result, error FROM weir_members
                      WHERE workflow = $1 ORDER BY idx",
                    &[&id.as_bytes().as_slice()],
                )
                .map_err(db)?;
            rows.iter()
                .map(|r| {
                    let state: i16 = r.get(3);
                    Ok(MemberStatus {
                        index: r.get::<_, i64>(0) as u32,
                        job_id: job_id(r.get(1))?,
                        kind: r.get(2),
                        state: JobState::from_code(state.into())
                            .ok_or_else(|| corrupt("member state", state.into()))?,
                        enqueued: r.get(4),
                        result: r.get::<_, Option<&[u8]>>(5).map(result_value),
                        error: r.get(6),
                    })
                })
                .collect()
        })
        .await
    }

    async fn unstarted(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(WorkflowId, Vec<NewJob>)>, BrokerError> {
        self.tx(move |c| {
            // `starts` as in `Shape::starts`: 1 for a chain (code 0), else the children.
            let found = c
                .query(
                    "SELECT id, trace_id, started, starts FROM (
                        SELECT id, trace_id, started, created_at, state,
                               CASE shape WHEN 0 THEN LEAST(children, 1) ELSE children END
                                   AS starts
                          FROM weir_workflows) w
                      WHERE state = 0 AND created_at < $1 AND started < starts
                      ORDER BY id LIMIT $2",
                    &[&before.0, &(limit as i64)],
                )
                .map_err(db)?;
            let mut out = Vec::with_capacity(found.len());
            for w in &found {
                let id = job_id(w.get(0))?;
                let trace: String = w.get(1);
                let (started, starts): (i64, i64) = (w.get(2), w.get(3));
                let rows = c
                    .query(
                        "SELECT idx, job_id, step FROM weir_members
                          WHERE workflow = $1 AND idx >= $2 AND idx < $3 AND state = 0
                          ORDER BY idx",
                        &[&id.as_bytes().as_slice(), &started, &starts],
                    )
                    .map_err(db)?;
                let mut jobs = Vec::with_capacity(rows.len());
                for r in &rows {
                    let member = Member {
                        workflow: id,
                        index: r.get::<_, i64>(0) as u32,
                    };
                    let step: StepSpec = serde_json::from_str(r.get(2)).map_err(|e| {
                        BrokerError::Other(format!("workflow member {member}: step: {e}"))
                    })?;
                    jobs.push(step.to_start_job(job_id(r.get(1))?, member, &trace));
                }
                out.push((id, jobs));
            }
            Ok(out)
        })
        .await
    }

    async fn purge(&self, before: Timestamp) -> Result<u64, BrokerError> {
        self.tx(move |c| {
            c.execute(
                "DELETE FROM weir_workflows WHERE finished_at < $1",
                &[&before.0],
            )
            .map_err(db)
        })
        .await
    }
}
