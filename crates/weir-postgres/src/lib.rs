//! weir's PostgreSQL workflow state store: results and workflow counters for deployments whose
//! jobs go through RabbitMQ on many machines.
//!
//! [`PgStore`] implements [`StateStore`] with two tables, `weir_workflows` and
//! `weir_members`, created on first connect. Advancing a workflow locks its row (`SELECT …
//! FOR UPDATE`), so members finishing on different machines advance it one at a time. The
//! decision logic is `weir_core::workflow::complete`, the same for every store.
//!
//! The blocking `postgres` client runs on a thread of the store's own (a [`Batcher`]): a
//! store call is a few round trips inside a transaction, and the synchronous client keeps
//! [`WorkflowTx`] synchronous for every store.

use async_trait::async_trait;
use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use weir_core::workflow::{
    abort, complete, result_value, Advance, BatchConn, Batcher, FailureMode, Member, MemberOutcome,
    MemberRow, MemberStatus, NewWorkflow, Progress, Shape, StateStore, StepSpec, WorkflowId,
    WorkflowState, WorkflowStatus, WorkflowTx,
};
use weir_core::{BrokerError, JobId, JobState, NewJob, Timestamp};

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

/// Where to connect: a libpq-style URL (`postgres://user@host:port/db`), plus weir's own
/// optional `schema=NAME` query parameter, which puts the tables in that schema (created if
/// missing) instead of the connection's default one.
#[derive(Clone, Debug)]
pub struct PgOptions {
    url: String,
    schema: Option<String>,
}

impl PgOptions {
    /// Parses `postgres://…` or `postgresql://…`; `schema=` may be one of the query parameters.
    ///
    /// ```
    /// let o = weir_postgres::PgOptions::from_url("postgres://u@h/db?schema=jobs").unwrap();
    /// assert_eq!(o.schema(), Some("jobs"));
    /// assert!(weir_postgres::PgOptions::from_url("mysql://h").is_err());
    /// assert!(weir_postgres::PgOptions::from_url("postgres://h/db?schema=a;b").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "`{url}` is not a PostgreSQL URL (expected postgres://user@host/db)"
            ));
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut schema = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.strip_prefix("schema=") {
                Some(s) => {
                    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!(
                            "PostgreSQL URL: schema `{s}` must be letters, digits and `_`"
                        ));
                    }
                    schema = Some(s.to_owned());
                }
                None => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        url.parse::<postgres::Config>()
            .map_err(|e| format!("PostgreSQL URL: {e}"))?;
        Ok(PgOptions { url, schema })
    }

    /// The schema the tables live in, if not the default.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }
}

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

/// The store's connection, reconnected before a batch when it was lost, with its prepared
/// statements: a query given as text costs the postgres client a prepare round trip each
/// time, which doubled the cost of advancing a workflow.
struct Conn {
    opts: PgOptions,
    client: Option<Client>,
    prepared: HashMap<&'static str, Statement>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Conn {
    fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("ensure() connects before every batch")
    }

    fn prep(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(st) = self.prepared.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client().prepare(sql)?;
        self.prepared.insert(sql, st.clone());
        Ok(st)
    }

    fn query(&mut self, sql: &'static str, p: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let st = self.prep(sql)?;
        self.client().query(&st, p)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        let st = self.prep(sql)?;
        self.client().query_opt(&st, p)
    }

    fn query_one(&mut self, sql: &'static str, p: Params<'_>) -> Result<Row, postgres::Error> {
        let st = self.prep(sql)?;
        self.client().query_one(&st, p)
    }

    fn execute(&mut self, sql: &'static str, p: Params<'_>) -> Result<u64, postgres::Error> {
        let st = self.prep(sql)?;
        self.client().execute(&st, p)
    }
}

impl BatchConn for Conn {
    fn control(&mut self, sql: &str) -> Result<(), String> {
        let r = self
            .client()
            .batch_execute(sql)
            .map_err(|e| db(e).to_string());
        if self.client().is_closed() {
            self.client = None;
        }
        r
    }

    fn ensure(&mut self) -> Result<(), String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.prepared.clear();
            self.client = Some(open(&self.opts).map_err(|e| e.to_string())?);
        }
        Ok(())
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// The server's own message when there is one (`postgres::Error`'s display is only "db
/// error" then).
fn db(e: postgres::Error) -> BrokerError {
    match e.as_db_error() {
        Some(d) => BrokerError::Unavailable(format!(
            "postgres: {} ({}): {}",
            d.message(),
            d.code().code(),
            d.detail().unwrap_or("")
        )),
        None => BrokerError::Unavailable(format!("postgres: {e}")),
    }
}

fn corrupt(what: &str, v: i64) -> BrokerError {
    BrokerError::Other(format!("workflow store: unknown {what} code {v}"))
}

/// A new connection, in the options' schema.
fn open(opts: &PgOptions) -> Result<Client, BrokerError> {
    let mut c = Client::connect(&opts.url, NoTls).map_err(db)?;
    if let Some(s) = &opts.schema {
        // The name was checked to be [A-Za-z0-9_]+ when parsed.
        c.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{s}\"; SET search_path TO \"{s}\""
        ))
        .map_err(db)?;
    }
    Ok(c)
}

impl PgStore {
    /// Connects, creates the tables if they are missing (under an advisory lock, so many
    /// workers starting at once do not race), and starts the store's thread with that
    /// connection. A connection lost later is replaced before the next batch.
    pub async fn connect(opts: PgOptions) -> Result<Self, BrokerError> {
        let schema = opts.schema.clone();
        let batcher = tokio::task::spawn_blocking(move || {
            let mut client = open(&opts)?;
            let mut tx = client.transaction().map_err(db)?;
            tx.execute("SELECT pg_advisory_xact_lock(7746765570)", &[])
                .map_err(db)?;
            tx.batch_execute(SCHEMA).map_err(db)?;
            tx.commit().map_err(db)?;
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

struct Tx<'a>(&'a mut Conn);

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
fn progress_from(r: &Row) -> Result<Progress, BrokerError> {
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
fn member_from(r: &Row, at: usize, m: Member) -> Result<MemberRow, BrokerError> {
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

fn job_id(bytes: &[u8]) -> Result<JobId, BrokerError> {
    <[u8; 16]>::try_from(bytes)
        .map(JobId::from_bytes)
        .map_err(|_| {
            BrokerError::Other(format!("workflow store: a job id of {} bytes", bytes.len()))
        })
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
