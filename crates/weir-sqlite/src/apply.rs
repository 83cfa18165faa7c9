//! The writer applying one command inside the round's transaction.

use std::time::Instant;

use rusqlite::{params, OptionalExtension};
use weir_core::{BrokerError, Job, JobId, Timestamp};

use crate::codes::state;
use crate::commands::{Cmd, Done, Purged};
use crate::writer::{Writer, PURGE, PURGE_WINDOW_END};

impl Writer {
    /// Applies one command; `None` when it was parked (a fetch that found nothing).
    pub(crate) fn apply(&mut self, cmd: Cmd, now: Timestamp) -> rusqlite::Result<Option<Done>> {
        Ok(Some(match cmd {
            Cmd::Enqueue(jobs, reply) => {
                let r = self.enqueue(jobs, now)?;
                Done::Enqueue(reply, r)
            }
            Cmd::Fetch(f) => {
                if f.reply.is_closed() {
                    return Ok(None);
                }
                self.serve(&f.queues)?;
                let got = self.lease(&f.queues, f.max, f.lease, now)?;
                if got.is_empty() && f.deadline > Instant::now() && f.max > 0 {
                    self.parked.push(f);
                    return Ok(None);
                }
                Done::Fetch(f.reply, got)
            }
            Cmd::Settle(items, reply) => {
                let out = self.settle(items, now)?;
                Done::Settle(reply, out)
            }
            Cmd::Heartbeat(leases, extend, reply) => {
                let until = now.plus(extend).0;
                let mut st = self.conn.prepare_cached(concat!(
                    "UPDATE jobs SET lease_until = ?3 WHERE seq = ?1 AND attempt = ?2 AND state = ",
                    state!(running)
                ))?;
                let mut out = Vec::with_capacity(leases.len());
                for l in &leases {
                    out.push(st.execute(params![l.token as i64, l.attempt, until])? == 1);
                }
                Done::Heartbeat(reply, out)
            }
            Cmd::Retry(id, reply) => {
                let r = self.manual_retry(id, now)?;
                Done::Job(reply, Box::new(r))
            }
            Cmd::Cancel(id, reply) => {
                let r = self.cancel(id, now)?;
                Done::Job(reply, Box::new(r))
            }
            Cmd::Delete(id, reply) => {
                let r = self.delete(id)?;
                Done::Job(reply, Box::new(r))
            }
            Cmd::Report(w, reply) => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO workers (worker, queue, size, busy, last_decision, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (worker, queue) DO UPDATE SET size = excluded.size,
                             busy = excluded.busy, last_decision = excluded.last_decision,
                             updated_at = excluded.updated_at",
                    )?
                    .execute(params![
                        w.worker,
                        w.queue,
                        w.size as i64,
                        w.busy as i64,
                        w.last_decision,
                        w.updated_at.0
                    ])?;
                Done::Unit(reply)
            }
            Cmd::Retire(worker, reply) => {
                self.conn
                    .prepare_cached("DELETE FROM workers WHERE worker = ?1")?
                    .execute([worker])?;
                Done::Unit(reply)
            }
            Cmd::Backlog(queues, reply) => {
                // Answered from memory (the queues are served from now on); nothing to
                // commit.
                self.serve(&queues)?;
                self.runnable.index.promote(now);
                let counts = queues
                    .iter()
                    .map(|q| self.runnable.index.ready_len(q) as u64)
                    .collect();
                let _ = reply.send(Ok(counts));
                return Ok(None);
            }
            Cmd::Purge(p, reply) => {
                let r = if !p.state.is_finished() {
                    Err(BrokerError::Invalid(format!(
                        "purge takes a finished state (succeeded, failed, cancelled), not {}",
                        p.state
                    )))
                } else {
                    // Row numbers must never be reused (other processes find new jobs by
                    // `seq > last_seen`): remember the highest before deleting.
                    self.conn
                        .prepare_cached(
                            "INSERT INTO meta (key, value)
                             SELECT 'seq_floor', COALESCE(MAX(seq), 0) FROM jobs WHERE true
                             ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                        )?
                        .execute([])?;
                    let end: Option<i64> = self
                        .conn
                        .prepare_cached(PURGE_WINDOW_END)?
                        .query_row(params![p.after, p.window.saturating_sub(1) as i64], |r| {
                            r.get(0)
                        })
                        .optional()?;
                    let deleted = self.conn.prepare_cached(PURGE)?.execute(params![
                        p.state.code(),
                        p.queue,
                        p.before.map(|t| t.0),
                        p.after,
                        end.unwrap_or(i64::MAX)
                    ])?;
                    Ok(Purged {
                        deleted: deleted as u64,
                        next: end,
                    })
                };
                Done::Purged(reply, r)
            }
        }))
    }
}

impl Writer {
    /// Deletes one finished job. Like a purge, it first records the highest row number, so
    /// row numbers are never reused (other processes find new jobs by `seq > last_seen`).
    pub(crate) fn delete(&mut self, id: JobId) -> rusqlite::Result<Result<Job, BrokerError>> {
        let Some((seq, job)) = self.find(id)? else {
            return Ok(Err(BrokerError::NotFound(id)));
        };
        if !job.state.is_finished() {
            return Ok(Err(BrokerError::WrongState {
                id,
                state: job.state,
                what: "delete (only a finished job is deleted; cancel it first)".into(),
            }));
        }
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value)
                 SELECT 'seq_floor', COALESCE(MAX(seq), 0) FROM jobs WHERE true
                 ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
            )?
            .execute([])?;
        self.conn
            .prepare_cached("DELETE FROM jobs WHERE seq = ?1")?
            .execute([seq as i64])?;
        Ok(Ok(job))
    }
}
