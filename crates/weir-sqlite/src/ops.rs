//! The writer's SQL: every statement that changes jobs. Set-based where the hot path allows
//! (one statement per batch of leases or plain successes), per row otherwise.
//!
//! Unique keys live in their own table rather than in a partial unique index on `jobs`:
//! an index whose condition reads `state` would be checked on every state change, and its
//! possible constraint failure would force SQLite to keep a statement journal for every lease
//! and settle. The writer remembers which unfinished jobs hold a key (`Writer::keyed`), so
//! that settles of all other jobs need not read the key back.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use weir_core::{
    transition, BrokerError, Delivery, Enqueued, Event, Job, JobId, JobState, Lease, NewJob,
    SettleOutcome, Settlement, Timestamp,
};

use crate::codes::{runnable, state, unfinished};
use crate::rows::{delivery_from_row, job_from_row, JOB_COLUMNS, RUN_COLUMNS};
use crate::writer::{Runnable, Writer};

/// `[a,b,c]`, for `json_each`.
fn json_ints(xs: impl Iterator<Item = u64>) -> String {
    let mut s = String::from("[");
    for (i, x) in xs.enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{x}");
    }
    s.push(']');
    s
}

/// Entries popped but not leased are stale (the job moved on), or not due by this round's
/// clock (which can step back). The second kind go back into the index, as delayed
/// entries, so no runnable job is ever dropped from it.
fn reindex_unleased(
    conn: &Connection,
    runnable: &mut Runnable,
    tokens: &[u64],
    leased: &[Delivery],
) -> rusqlite::Result<()> {
    let leased: std::collections::HashSet<u64> = leased.iter().map(|d| d.lease.token).collect();
    let missing = json_ints(tokens.iter().copied().filter(|t| !leased.contains(t)));
    let mut st = conn.prepare_cached(concat!(
        "SELECT seq, queue, priority, run_at FROM jobs
          WHERE seq IN (SELECT value FROM json_each(?1)) AND ",
        runnable!()
    ))?;
    let mut rows = st.query([missing])?;
    while let Some(r) = rows.next()? {
        let queue: String = r.get(1)?;
        runnable.add(
            r.get::<_, i64>(0)? as u64,
            &queue,
            r.get(2)?,
            Timestamp(r.get(3)?),
        );
    }
    Ok(())
}

impl Writer {
    /// Frees a unique key held by the job `seq`, if it holds one.
    fn release_key(&mut self, key: Option<String>, seq: u64) -> rusqlite::Result<()> {
        self.keyed.remove(&seq);
        if let Some(key) = key {
            self.conn
                .prepare_cached("DELETE FROM unique_keys WHERE key = ?1 AND seq = ?2")?
                .execute(params![key, seq as i64])?;
        }
        Ok(())
    }

    fn key_holder(&self, key: &str) -> rusqlite::Result<Option<(u64, JobId)>> {
        self.conn
            .prepare_cached(
                "SELECT u.seq, j.id FROM unique_keys u JOIN jobs j ON j.seq = u.seq WHERE u.key = ?1",
            )?
            .query_row([key], |r| {
                Ok((r.get::<_, i64>(0)? as u64, JobId::from_bytes(r.get(1)?)))
            })
            .optional()
    }

    /// The next free row number: above every row, and above every row ever purged (the
    /// `seq_floor` that purge records), so a number is never reused.
    fn next_seq(&self) -> rusqlite::Result<i64> {
        self.conn
            .prepare_cached(
                "SELECT MAX(COALESCE((SELECT MAX(seq) FROM jobs), 0),
                            COALESCE((SELECT value FROM meta WHERE key = 'seq_floor'), 0)) + 1",
            )?
            .query_row([], |r| r.get(0))
    }

    pub(crate) fn enqueue(
        &mut self,
        jobs: Vec<NewJob>,
        now: Timestamp,
    ) -> rusqlite::Result<Result<Vec<Enqueued>, BrokerError>> {
        let mut out = Vec::with_capacity(jobs.len());
        // Row numbers only grow, even across purges (see `next_seq`); assigned here once per
        // command rather than by AUTOINCREMENT, which writes sqlite_sequence on every row.
        let mut seq = self.next_seq()?;
        let mut insert = self.conn.prepare_cached(concat!(
            "INSERT INTO jobs (seq, id, kind, queue, payload, priority, run_at, attempt,
                               max_attempts, timeout_ms, unique_key, trace_id, created_at, state,
                               member)
             VALUES (?12, ?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11, ",
            state!(pending),
            ", ?13)"
        ))?;
        for new in jobs {
            if let Some(key) = &new.unique_key {
                if let Some((_, id)) = self.key_holder(key)? {
                    out.push(Enqueued {
                        id,
                        duplicate: true,
                    });
                    continue;
                }
            }
            let job = new.into_job(now);
            let inserted = insert.execute(params![
                job.id.as_bytes(),
                job.kind,
                job.queue,
                job.payload,
                job.priority,
                job.run_at.0,
                job.max_attempts,
                job.timeout.map(|d| d.as_millis() as i64),
                job.unique_key,
                job.trace_id,
                job.created_at.0,
                seq,
                job.member.map(|m| m.to_string()),
            ]);
            match inserted {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    // Only the id can clash; the statement changed nothing, so the
                    // transaction goes on.
                    return Ok(Err(BrokerError::Invalid(format!(
                        "job id {} already exists",
                        job.id
                    ))));
                }
                Err(e) => return Err(e),
            }
            let this = seq;
            seq += 1;
            let seq = this;
            if let Some(key) = &job.unique_key {
                self.conn
                    .prepare_cached("INSERT INTO unique_keys (key, seq) VALUES (?1, ?2)")?
                    .execute(params![key, seq])?;
                self.keyed.insert(seq as u64);
            }
            self.max_seen = self.max_seen.max(seq);
            self.runnable
                .add(seq as u64, &job.queue, job.priority, job.run_at);
            out.push(Enqueued {
                id: job.id,
                duplicate: false,
            });
        }
        Ok(Ok(out))
    }

    /// Leases up to `max` runnable jobs in one statement per batch of index entries.
    pub(crate) fn lease(
        &mut self,
        queues: &[String],
        max: usize,
        lease: Duration,
        now: Timestamp,
    ) -> rusqlite::Result<Vec<Delivery>> {
        let until = now.plus(lease).0;
        let mut out = Vec::with_capacity(max.min(4096));
        let sql = format!(
            "UPDATE jobs SET state = {running}, attempt = attempt + 1, lease_until = ?2
              WHERE seq IN (SELECT value FROM json_each(?1)) AND {runnable} AND run_at <= ?3
          RETURNING {RUN_COLUMNS}",
            running = state!(running),
            runnable = runnable!(),
        );
        let mut st = self.conn.prepare_cached(&sql)?;
        while out.len() < max {
            let tokens = self.runnable.index.take(queues, max - out.len(), now);
            if tokens.is_empty() {
                break;
            }
            // The index holds hints; the row's own state and run_at decide.
            let first = out.len();
            let mut rows = st.query(params![json_ints(tokens.iter().copied()), until, now.0])?;
            while let Some(r) = rows.next()? {
                out.push(delivery_from_row(r)?);
            }
            drop(rows);
            if out.len() - first < tokens.len() {
                reindex_unleased(&self.conn, &mut self.runnable, &tokens, &out[first..])?;
            }
            // Keep the index's order (priority, then run_at) within the batch.
            let pos: HashMap<u64, usize> =
                tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
            out[first..].sort_by_key(|d| pos.get(&d.lease.token).copied().unwrap_or(usize::MAX));
        }
        Ok(out)
    }

    /// Settles a batch: plain successes of jobs without a unique key in one statement, the
    /// rest row by row.
    pub(crate) fn settle(
        &mut self,
        items: Vec<(Lease, Settlement)>,
        now: Timestamp,
    ) -> rusqlite::Result<Vec<SettleOutcome>> {
        let mut out = vec![SettleOutcome::Stale; items.len()];
        let mut fast: HashMap<u64, (usize, u32)> = HashMap::with_capacity(items.len());
        let mut slow = Vec::new();
        for (i, (lease, s)) in items.into_iter().enumerate() {
            let plain = matches!(s, Settlement::Succeeded { result: None })
                && !self.keyed.contains(&lease.token)
                && !fast.contains_key(&lease.token);
            if plain {
                fast.insert(lease.token, (i, lease.attempt));
            } else {
                slow.push((i, lease, s));
            }
        }
        if !fast.is_empty() {
            let mut pairs = String::with_capacity(fast.len() * 16);
            pairs.push('[');
            for (n, (token, (_, attempt))) in fast.iter().enumerate() {
                if n > 0 {
                    pairs.push(',');
                }
                let _ = write!(pairs, "[{token},{attempt}]");
            }
            pairs.push(']');
            let mut st = self.conn.prepare_cached(concat!(
                "UPDATE jobs SET state = ",
                state!(succeeded),
                ", lease_until = NULL, finished_at = ?2
                   FROM (SELECT value ->> 0 AS s, value ->> 1 AS a FROM json_each(?1)) AS x
                  WHERE jobs.seq = x.s AND jobs.attempt = x.a AND jobs.state = ",
                state!(running),
                " RETURNING jobs.seq, jobs.queue"
            ))?;
            let mut rows = st.query(params![pairs, now.0])?;
            // Finished jobs by queue (nearly always one): a name kept per queue, not per row.
            let mut done: Vec<(String, i64)> = Vec::new();
            while let Some(r) = rows.next()? {
                if let Some((i, _)) = fast.get(&(r.get::<_, i64>(0)? as u64)) {
                    out[*i] = SettleOutcome::Applied;
                }
                let queue = r.get_ref(1)?.as_str()?;
                match done.iter_mut().find(|(q, _)| q == queue) {
                    Some((_, n)) => *n += 1,
                    None => done.push((queue.to_owned(), 1)),
                }
            }
            drop(rows);
            drop(st);
            for (queue, n) in done {
                self.count_finished(&queue, JobState::Succeeded, n)?;
            }
        }
        for (i, lease, s) in slow {
            out[i] = self.settle_one(&lease, s, now)?;
        }
        Ok(out)
    }

    pub(crate) fn settle_one(
        &mut self,
        lease: &Lease,
        s: Settlement,
        now: Timestamp,
    ) -> rusqlite::Result<SettleOutcome> {
        let seq = lease.token as i64;
        let applied = match s {
            Settlement::Succeeded { result } => self.finish(
                concat!(
                    "UPDATE jobs SET state = ",
                    state!(succeeded),
                    ", lease_until = NULL, finished_at = ?3, result = ?4
                      WHERE seq = ?1 AND attempt = ?2 AND state = ",
                    state!(running),
                    " RETURNING unique_key, queue"
                ),
                params![seq, lease.attempt, now.0, result],
                lease.token,
                JobState::Succeeded,
            )?,
            Settlement::Failed { error } => self.finish(
                concat!(
                    "UPDATE jobs SET state = ",
                    state!(failed),
                    ", lease_until = NULL, finished_at = ?3, last_error = ?4
                      WHERE seq = ?1 AND attempt = ?2 AND state = ",
                    state!(running),
                    " RETURNING unique_key, queue"
                ),
                params![seq, lease.attempt, now.0, error],
                lease.token,
                JobState::Failed,
            )?,
            Settlement::Cancel { reason } => self.finish(
                concat!(
                    "UPDATE jobs SET state = ",
                    state!(cancelled),
                    ", lease_until = NULL, finished_at = ?3, last_error = ?4
                      WHERE seq = ?1 AND attempt = ?2 AND state = ",
                    state!(running),
                    " RETURNING unique_key, queue"
                ),
                params![seq, lease.attempt, now.0, reason],
                lease.token,
                JobState::Cancelled,
            )?,
            Settlement::Retry { run_at, error } => self.requeue(
                concat!(
                    "UPDATE jobs SET state = ",
                    state!(retryable),
                    ", lease_until = NULL, run_at = ?3, last_error = ?4
                      WHERE seq = ?1 AND attempt = ?2 AND state = ",
                    state!(running),
                    " RETURNING queue, priority"
                ),
                params![seq, lease.attempt, run_at.0, error],
                lease.token,
                run_at,
            )?,
            Settlement::Release | Settlement::Defer { .. } => {
                let run_at = match s {
                    Settlement::Defer { run_at } => run_at,
                    _ => now,
                };
                self.requeue(
                    concat!(
                        "UPDATE jobs SET state = ",
                        state!(pending),
                        ", lease_until = NULL, run_at = ?3, attempt = MAX(attempt - 1, 0)
                          WHERE seq = ?1 AND attempt = ?2 AND state = ",
                        state!(running),
                        " RETURNING queue, priority"
                    ),
                    params![seq, lease.attempt, run_at.0],
                    lease.token,
                    run_at,
                )?
            }
        };
        Ok(if applied {
            SettleOutcome::Applied
        } else {
            SettleOutcome::Stale
        })
    }

    /// Runs a settle that finishes the job (`sql` returns its `unique_key`) and frees the key.
    /// False if the lease was stale.
    /// Runs `sql`, which finishes one job in `state` and returns its unique key and queue;
    /// counts it and releases its key. False if no row matched (a stale lease).
    fn finish(
        &mut self,
        sql: &str,
        p: impl rusqlite::Params,
        token: u64,
        state: JobState,
    ) -> rusqlite::Result<bool> {
        let row: Option<(Option<String>, String)> = self
            .conn
            .prepare_cached(sql)?
            .query_row(p, |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match row {
            Some((key, queue)) => {
                self.count_finished(&queue, state, 1)?;
                self.release_key(key, token)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Adds `n` to the count of finished jobs of `queue` in `state` (see schema version 5:
    /// the writer counts where jobs finish; triggers count the rare ways back out).
    pub(crate) fn count_finished(
        &self,
        queue: &str,
        state: JobState,
        n: i64,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO finished_counts (queue, state, n, done) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (queue, state) DO UPDATE
                   SET n = n + excluded.n, done = done + excluded.n",
            )?
            .execute(params![queue, state.code(), n])?;
        Ok(())
    }

    fn requeue(
        &mut self,
        sql: &str,
        p: impl rusqlite::Params,
        seq: u64,
        run_at: Timestamp,
    ) -> rusqlite::Result<bool> {
        let row: Option<(String, i32)> = self
            .conn
            .prepare_cached(sql)?
            .query_row(p, |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(match row {
            Some((queue, priority)) => {
                self.runnable.add(seq, &queue, priority, run_at);
                self.wake(seq)?;
                true
            }
            None => false,
        })
    }

    /// Tells the other processes on this file that job `seq` is runnable again (each keeps
    /// its own ready order, and learns of rows it did not write only through new seqs and
    /// this table). Without it, a job retried, deferred, released or reclaimed by one process
    /// (a short-lived CLI call, a worker that then dies) would be invisible to the others
    /// until they restart.
    fn wake(&mut self, seq: u64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("INSERT INTO wakeups (seq, at) VALUES (?1, ?2)")?
            .execute(params![seq as i64, self.runnable.now.0])?;
        Ok(())
    }

    /// Expired leases: runnable again, or Failed once the attempts are spent (so a job that
    /// keeps killing its worker ends in the dead-letter set). A workflow member with its
    /// attempts spent runs once more instead, with `attempt > max_attempts`: the worker
    /// fails it without running it, through the workflow's advance, so the workflow learns.
    pub(crate) fn reap(&mut self, now: Timestamp) -> rusqlite::Result<()> {
        let mut st = self.conn.prepare_cached(concat!(
            "UPDATE jobs SET
                 state = CASE WHEN attempt >= max_attempts AND member IS NULL THEN ",
            state!(failed),
            " ELSE ",
            state!(pending),
            " END,
                 finished_at = CASE WHEN attempt >= max_attempts AND member IS NULL THEN ?1 END,
                 run_at = ?1,
                 lease_until = NULL,
                 last_error = 'lease expired during attempt ' || attempt || ' (worker lost)'
                     || CASE WHEN attempt >= max_attempts
                             THEN '; attempts exhausted (' || max_attempts || ')' ELSE '' END
               WHERE state = ",
            state!(running),
            " AND lease_until < ?1
           RETURNING seq, queue, priority, state, unique_key"
        ))?;
        let mut rows = st.query([now.0])?;
        let mut failed = Vec::new();
        let mut woken = Vec::new();
        let mut n = 0;
        while let Some(r) = rows.next()? {
            n += 1;
            let seq = r.get::<_, i64>(0)? as u64;
            let queue: String = r.get(1)?;
            if r.get::<_, i64>(3)? == i64::from(JobState::Pending.code()) {
                self.runnable.add(seq, &queue, r.get(2)?, now);
                self.reaped.push((queue, false));
                woken.push(seq);
            } else {
                self.reaped.push((queue.clone(), true));
                failed.push((seq, r.get::<_, Option<String>>(4)?, queue));
            }
        }
        drop(rows);
        drop(st);
        for (seq, key, queue) in failed {
            self.count_finished(&queue, JobState::Failed, 1)?;
            self.release_key(key, seq)?;
        }
        for seq in woken {
            self.wake(seq)?;
        }
        if n > 0 {
            tracing::info!(count = n, "sqlite broker: reclaimed expired leases");
        }
        self.conn
            .prepare_cached("DELETE FROM wakeups WHERE at < ?1")?
            .execute([now.0 - 3_600_000])?;
        Ok(())
    }

    pub(crate) fn find(&self, id: JobId) -> rusqlite::Result<Option<(u64, Job)>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
        self.conn
            .prepare_cached(&sql)?
            .query_row([id.as_bytes()], job_from_row)
            .optional()
    }

    /// The job with `id`, if `event` applies to it; otherwise what is wrong, as a value.
    fn find_for(
        &self,
        id: JobId,
        event: Event,
    ) -> rusqlite::Result<Result<(u64, Job), BrokerError>> {
        let Some((seq, job)) = self.find(id)? else {
            return Ok(Err(BrokerError::NotFound(id)));
        };
        Ok(match transition(job.state, event) {
            Ok(_) => Ok((seq, job)),
            Err(e) => Err(BrokerError::WrongState {
                id,
                state: job.state,
                what: e.to_string(),
            }),
        })
    }

    pub(crate) fn manual_retry(
        &mut self,
        id: JobId,
        now: Timestamp,
    ) -> rusqlite::Result<Result<Job, BrokerError>> {
        let (seq, job) = match self.find_for(id, Event::ManualRetry)? {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(key) = &job.unique_key {
            if let Some((_, holder)) = self.key_holder(key)? {
                return Ok(Err(BrokerError::Invalid(format!(
                    "unique key `{key}` is held by unfinished job {holder}"
                ))));
            }
            self.conn
                .prepare_cached("INSERT INTO unique_keys (key, seq) VALUES (?1, ?2)")?
                .execute(params![key, seq as i64])?;
            self.keyed.insert(seq);
        }
        self.conn
            .prepare_cached(concat!(
                "UPDATE jobs SET state = ",
                state!(pending),
                ",
                 max_attempts = MIN(attempt + max_attempts, 4294967295),
                 run_at = ?2, finished_at = NULL WHERE seq = ?1 AND state = ",
                state!(failed)
            ))?
            .execute(params![seq as i64, now.0])?;
        // Other processes serving this file learn of it through `wakeups`.
        self.conn
            .prepare_cached("INSERT INTO wakeups (seq, at) VALUES (?1, ?2)")?
            .execute(params![seq as i64, now.0])?;
        self.runnable.add(seq, &job.queue, job.priority, now);
        Ok(Ok(self.find(id)?.map(|(_, j)| j).unwrap_or(job)))
    }

    pub(crate) fn cancel(
        &mut self,
        id: JobId,
        now: Timestamp,
    ) -> rusqlite::Result<Result<Job, BrokerError>> {
        let (seq, job) = match self.find_for(id, Event::Cancel)? {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        self.conn
            .prepare_cached(concat!(
                "UPDATE jobs SET state = ",
                state!(cancelled),
                ", lease_until = NULL, finished_at = ?2 WHERE seq = ?1 AND ",
                unfinished!()
            ))?
            .execute(params![seq as i64, now.0])?;
        self.count_finished(&job.queue, JobState::Cancelled, 1)?;
        self.release_key(job.unique_key.clone(), seq)?;
        Ok(Ok(self.find(id)?.map(|(_, j)| j).unwrap_or(job)))
    }
}
