//! The single writer: one thread owns the write connection and the in-memory ready order.
//!
//! Why one thread and not a connection pool: SQLite admits one writer at a time anyway, and a
//! thread that drains every queued command into one transaction gets *group commit* for free —
//! while one commit waits on fsync, the next batch queues up, so the cost of an fsync is shared
//! by every enqueue, lease and settle that arrived meanwhile. Replies go out only after COMMIT
//! returns, so a caller that got `Ok` has its write on disk.
//!
//! A fetch that finds nothing *parks* here until jobs become runnable or its wait runs out.
//! Parked fetches are served at the end of every round, inside its transaction, so a job
//! enqueued in a round is leased in the same commit: one fsync between enqueue and start.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};

use crate::codes::{runnable, state, unfinished};
use crate::commands::{cmd_fail, Cmd, Done, Fetch};
use weir_core::{BrokerError, Clock, JobState, Lease, ReadyIndex, Settlement, Timestamp};

/// How many commands one transaction takes at most.
const MAX_BATCH: usize = 4096;

/// The in-memory ready order of the queues this process serves, at the time of the current
/// round. Only served queues are kept: a process that only enqueues or inspects (a CLI call, a
/// producer) holds no index, whatever the file's backlog, and a worker holds its own queues'.
pub(crate) struct Runnable {
    pub(crate) index: ReadyIndex,
    /// The time of the current round.
    pub(crate) now: Timestamp,
    /// Queues fetched from (or asked the backlog of) by this process; loaded from disk when
    /// first named (see [`Writer::serve`]).
    served: HashSet<String>,
}

impl Runnable {
    /// Adds a runnable (or delayed) job, if its queue is served here.
    pub(crate) fn add(&mut self, seq: u64, queue: &str, priority: i32, run_at: Timestamp) {
        if self.served.contains(queue) {
            self.index.insert(queue, priority, run_at, seq, self.now);
        }
    }

    /// True if any of `queues` has a runnable entry (possibly a stale one).
    fn has_ready(&mut self, queues: &[String]) -> bool {
        self.index.promote(self.now);
        queues.iter().any(|q| self.index.ready_len(q) > 0)
    }
}

/// The last seq of the next purge window: the `?2`-th row after seq `?1` (none: the window
/// runs to the end of the table).
pub(crate) const PURGE_WINDOW_END: &str =
    "SELECT seq FROM jobs WHERE seq > ?1 ORDER BY seq LIMIT 1 OFFSET ?2";

/// Deletes the finished jobs of one purge window, seqs `?4 < seq <= ?5` (see [`Purge`]).
pub(crate) const PURGE: &str = "DELETE FROM jobs
     WHERE seq > ?4 AND seq <= ?5 AND state = ?1 AND (?2 IS NULL OR queue = ?2)
       AND (?3 IS NULL OR finished_at < ?3)";

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    clock: Arc<dyn Clock>,
    /// Fetches waiting for jobs, oldest first.
    pub(crate) parked: Vec<Fetch>,
    pub(crate) runnable: Runnable,
    /// Highest job seq this process knows of; newer rows were written by another process.
    pub(crate) max_seen: i64,
    /// Unfinished jobs that hold a unique key (their settles release it).
    pub(crate) keyed: HashSet<u64>,
    /// Highest wakeup id seen.
    max_wakeup: i64,
    poll_interval: Duration,
    last_poll: Instant,
    /// Leases whose fetch was abandoned by its caller; given back in the next round.
    orphans: Vec<Lease>,
    /// When expired leases were last looked for (clock time, so tests can move it).
    last_reap: Timestamp,
    /// Commit rounds still to fail on purpose (fault-injection tests only).
    pub(crate) faults: Option<Arc<std::sync::atomic::AtomicU32>>,
    /// Rounds failed in a row, and when a round that only gives back orphans may run
    /// again: a store that keeps failing is retried every poll interval, not in a spin.
    failed_rounds: u32,
    retry_after: Option<Instant>,
    /// Leases the reaper took back in this round (queue, and whether the job failed for
    /// good), counted in the metrics once the round commits.
    pub(crate) reaped: Vec<(String, bool)>,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        clock: Arc<dyn Clock>,
        poll_interval: Duration,
    ) -> rusqlite::Result<Self> {
        let mut w = Writer {
            conn,
            clock,
            parked: Vec::new(),
            runnable: Runnable {
                index: ReadyIndex::new(),
                now: Timestamp(0),
                served: HashSet::new(),
            },
            max_seen: 0,
            max_wakeup: 0,
            keyed: HashSet::new(),
            poll_interval,
            last_poll: Instant::now(),
            orphans: Vec::new(),
            last_reap: Timestamp(0),
            faults: None,
            failed_rounds: 0,
            retry_after: None,
            reaped: Vec::new(),
        };
        w.reload()?;
        Ok(w)
    }

    /// Serves `queues` from now on: each one not served yet has its runnable rows loaded
    /// into the ready index (one read of the unfinished rows per new queue), and from then
    /// on every job that becomes runnable in it is added as it does.
    pub(crate) fn serve(&mut self, queues: &[String]) -> rusqlite::Result<()> {
        for q in queues {
            if !self.runnable.served.contains(q) {
                self.runnable.served.insert(q.clone());
                self.load_queue(q)?;
            }
        }
        Ok(())
    }

    fn load_queue(&mut self, queue: &str) -> rusqlite::Result<()> {
        let now = self.clock.now();
        // `unfinished` as well as `runnable`: it lets SQLite use the jobs_unfinished index.
        let mut st = self.conn.prepare_cached(concat!(
            "SELECT seq, priority, run_at FROM jobs WHERE queue = ?1 AND ",
            runnable!(),
            " AND ",
            unfinished!()
        ))?;
        let mut rows = st.query([queue])?;
        while let Some(r) = rows.next()? {
            self.runnable.index.insert(
                queue,
                r.get(1)?,
                Timestamp(r.get(2)?),
                r.get::<_, i64>(0)? as u64,
                now,
            );
        }
        Ok(())
    }

    /// Rebuilds the ready index of the served queues from the rows on disk (at start, and
    /// after a failed transaction, whose index changes were never applied).
    fn reload(&mut self) -> rusqlite::Result<()> {
        self.runnable.index.clear();
        let served: Vec<String> = self.runnable.served.iter().cloned().collect();
        for q in &served {
            self.load_queue(q)?;
        }
        self.keyed = self
            .conn
            .prepare("SELECT seq FROM unique_keys")?
            .query_map([], |r| r.get::<_, i64>(0).map(|s| s as u64))?
            .collect::<rusqlite::Result<_>>()?;
        self.max_seen = self
            .conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM jobs", [], |r| r.get(0))?;
        self.max_wakeup =
            self.conn
                .query_row("SELECT COALESCE(MAX(id), 0) FROM wakeups", [], |r| r.get(0))?;
        Ok(())
    }

    pub(crate) fn run(mut self, rx: flume::Receiver<Cmd>) {
        loop {
            let wait = self.next_wake();
            let first = if wait.is_zero() {
                rx.try_recv().ok()
            } else {
                match rx.recv_timeout(wait) {
                    Ok(c) => Some(c),
                    Err(flume::RecvTimeoutError::Timeout) => None,
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut batch: Vec<Cmd> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.round(batch);
        }
        // Give back leases nobody will settle, so they run at once elsewhere.
        for f in self.parked.drain(..) {
            let _ = f.reply.send(Err(BrokerError::Closed));
        }
        if !self.orphans.is_empty() {
            self.round(Vec::new());
        }
    }

    fn next_wake(&self) -> Duration {
        if !self.orphans.is_empty() {
            return self
                .retry_after
                .map_or(Duration::ZERO, |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .max(Duration::from_millis(1));
        }
        let mut wait = self.poll_interval.saturating_sub(self.last_poll.elapsed());
        if let Some(deadline) = self.parked.iter().map(|f| f.deadline).min() {
            wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        }
        if let Some(due) = self.runnable.index.next_due() {
            let now = self.clock.now();
            wait = wait.min(due.since(now).max(Duration::from_millis(1)));
        }
        wait.max(Duration::from_millis(1))
    }

    /// Whether a parked fetch could be served now.
    fn servable(&mut self) -> bool {
        let Writer {
            parked, runnable, ..
        } = self;
        parked.iter().any(|f| runnable.has_ready(&f.queues))
    }

    /// Answers parked fetches whose wait ran out (or whose caller left) with nothing.
    fn expire_parked(&mut self) {
        let now = Instant::now();
        let (gone, kept): (Vec<Fetch>, Vec<Fetch>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|f| f.deadline <= now || f.reply.is_closed());
        self.parked = kept;
        for f in gone {
            let _ = f.reply.send(Ok(Vec::new()));
        }
    }

    /// One transaction: external changes, expired leases, then every queued command, then the
    /// parked fetches.
    fn round(&mut self, batch: Vec<Cmd>) {
        let now = self.clock.now();
        self.runnable.now = now;
        let reap = now.since(self.last_reap) >= Duration::from_secs(1);
        if batch.is_empty() && self.orphans.is_empty() {
            // Idle: a read-only look for other processes' writes and expired leases; a write
            // only if that made a parked fetch servable.
            if let Err(e) = self.idle_poll(now, reap) {
                tracing::warn!(error = %e, "sqlite broker: poll failed");
            }
            if !self.servable() {
                self.expire_parked();
                return;
            }
        }
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = format!("cannot start a write transaction: {e}");
            tracing::warn!("sqlite broker: {msg}");
            for c in batch {
                cmd_fail(c, &msg);
            }
            self.expire_parked();
            return;
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut result = self.poll_external();
        if result.is_ok() && reap {
            result = self.reap(now);
        }
        if result.is_ok() {
            result = self.release_orphans(now);
        }
        let mut rest = batch.into_iter();
        if result.is_ok() {
            for cmd in rest.by_ref() {
                match self.apply(cmd, now) {
                    Ok(Some(d)) => done.push(d),
                    Ok(None) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        if result.is_ok() {
            result = self.serve_parked(now, &mut done);
        }
        if result.is_ok() && self.take_fault() {
            result = Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                Some("injected fault".into()),
            ));
        }
        if result.is_ok() {
            result = self.conn.execute_batch("COMMIT");
        }
        match result {
            Ok(()) => {
                if reap {
                    self.last_reap = now;
                }
                self.orphans.clear();
                self.failed_rounds = 0;
                self.retry_after = None;
                for (queue, failed) in self.reaped.drain(..) {
                    weir_core::telemetry::leases_reclaimed(&queue, 1);
                    if failed {
                        weir_core::telemetry::dead_lettered(&queue, 1);
                    }
                }
                self.last_poll = Instant::now();
                for d in done {
                    self.send(d);
                }
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.reaped.clear();
                self.failed_rounds += 1;
                self.retry_after = Some(Instant::now() + self.poll_interval);
                if self.failed_rounds >= 3 && !self.orphans.is_empty() {
                    // Giving them back keeps failing (with the round): leave them to expire,
                    // and the reaper takes them back (an attempt spent), rather than fail every
                    // round that carries them.
                    tracing::warn!(
                        leases = self.orphans.len(),
                        "sqlite broker: abandoned leases could not be given back; they expire"
                    );
                    self.orphans.clear();
                }
                let msg = e.to_string();
                tracing::warn!(error = %msg, "sqlite broker: transaction rolled back");
                // Leases of this round were never committed; their entries are rebuilt here.
                if let Err(e) = self.reload() {
                    tracing::error!(error = %e, "sqlite broker: reloading the ready index failed");
                }
                // Commands report their own mistakes as values (`Ok(Err(..))`), so an error
                // here is the store's (I/O, disk full, lock timeout): every command of the
                // batch is told, as a transient error, and nothing of it was written.
                let msg = format!("transaction rolled back: {msg}");
                for d in done {
                    d.fail(&msg);
                }
                for c in rest {
                    cmd_fail(c, &msg);
                }
            }
        }
        self.expire_parked();
    }

    /// Leases for parked fetches, oldest first, while jobs are runnable.
    fn serve_parked(&mut self, now: Timestamp, done: &mut Vec<Done>) -> rusqlite::Result<()> {
        if self.parked.is_empty() {
            return Ok(());
        }
        let mut waiting = Vec::with_capacity(self.parked.len());
        for f in std::mem::take(&mut self.parked) {
            if f.reply.is_closed() {
                continue;
            }
            if !self.runnable.has_ready(&f.queues) {
                waiting.push(f);
                continue;
            }
            match self.lease(&f.queues, f.max, f.lease, now) {
                Ok(got) if got.is_empty() => waiting.push(f),
                Ok(got) => done.push(Done::Fetch(f.reply, got)),
                Err(e) => {
                    waiting.push(f);
                    self.parked = waiting;
                    return Err(e);
                }
            }
        }
        self.parked = waiting;
        Ok(())
    }

    fn send(&mut self, d: Done) {
        match d {
            Done::Enqueue(r, v) => drop(r.send(v)),
            Done::Fetch(r, v) => {
                if let Err(Ok(lost)) = r.send(Ok(v)) {
                    // The caller stopped waiting: give the leases back next round.
                    self.orphans.extend(lost.into_iter().map(|d| d.lease));
                }
            }
            Done::Settle(r, v) => drop(r.send(Ok(v))),
            Done::Heartbeat(r, v) => drop(r.send(Ok(v))),
            Done::Job(r, v) => drop(r.send(*v)),
            Done::Purged(r, v) => drop(r.send(v)),
            Done::Unit(r) => drop(r.send(Ok(()))),
        }
    }

    fn idle_poll(&mut self, now: Timestamp, reap: bool) -> rusqlite::Result<()> {
        self.runnable.index.promote(now);
        self.poll_external()?;
        self.last_poll = Instant::now();
        if reap {
            self.last_reap = now;
            let expired: Option<i64> = self
                .conn
                .query_row(
                    concat!(
                        "SELECT seq FROM jobs WHERE state = ",
                        state!(running),
                        " AND lease_until < ?1 LIMIT 1"
                    ),
                    [now.0],
                    |r| r.get(0),
                )
                .optional()?;
            if expired.is_some() {
                self.conn.execute_batch("BEGIN IMMEDIATE")?;
                let r = self
                    .reap(now)
                    .and_then(|_| self.conn.execute_batch("COMMIT"));
                if let Err(e) = r {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    self.reload()?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Learns of jobs other processes enqueued or made runnable again.
    fn poll_external(&mut self) -> rusqlite::Result<()> {
        // A newer weir may have migrated the file while this process ran: stop writing to
        // it (every command fails, saying why) rather than keep it in a form the newer one
        // does not expect (e.g. finishing jobs without the counts it keeps).
        let version: i64 = self
            .conn
            .prepare_cached("PRAGMA user_version")?
            .query_row([], |r| r.get(0))?;
        if version > crate::schema::VERSION {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                Some(format!(
                    "the file was upgraded to schema version {version} by a newer weir while \
                     this process ran (it knows version {}): stop this process and run the \
                     newer weir",
                    crate::schema::VERSION
                )),
            ));
        }
        let mut st = self.conn.prepare_cached(
            "SELECT seq, queue, priority, run_at, state, unique_key IS NOT NULL
               FROM jobs WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut rows = st.query([self.max_seen])?;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            self.max_seen = self.max_seen.max(seq);
            let state = JobState::from_code(r.get(4)?);
            if matches!(state, Some(JobState::Pending | JobState::Retryable)) {
                let queue: String = r.get(1)?;
                self.runnable
                    .add(seq as u64, &queue, r.get(2)?, Timestamp(r.get(3)?));
            }
            if state.is_some_and(|s| !s.is_finished()) && r.get::<_, bool>(5)? {
                self.keyed.insert(seq as u64);
            }
        }
        drop(rows);
        let mut st = self.conn.prepare_cached(
            "SELECT w.id, j.seq, j.queue, j.priority, j.run_at, j.state, j.unique_key IS NOT NULL
               FROM wakeups w LEFT JOIN jobs j ON j.seq = w.seq
              WHERE w.id > ?1 ORDER BY w.id",
        )?;
        let mut rows = st.query([self.max_wakeup])?;
        while let Some(r) = rows.next()? {
            self.max_wakeup = self.max_wakeup.max(r.get(0)?);
            let state = r.get::<_, Option<i64>>(5)?.and_then(JobState::from_code);
            if matches!(state, Some(JobState::Pending | JobState::Retryable)) {
                let seq = r.get::<_, i64>(1)? as u64;
                let queue: String = r.get(2)?;
                self.runnable
                    .add(seq, &queue, r.get(3)?, Timestamp(r.get(4)?));
                if r.get::<_, bool>(6)? {
                    self.keyed.insert(seq);
                }
            }
        }
        Ok(())
    }

    /// Gives back the leases of abandoned fetches. They are forgotten only once the round
    /// commits: a rolled-back round tries again in the next.
    fn release_orphans(&mut self, now: Timestamp) -> rusqlite::Result<()> {
        for l in self.orphans.clone() {
            self.settle_one(&l, Settlement::Release, now)?;
        }
        Ok(())
    }

    /// True (once) if an injected fault is due: see `SqliteOptions::inject_commit_faults`.
    fn take_fault(&self) -> bool {
        self.faults.as_ref().is_some_and(|f| {
            f.fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |n| n.checked_sub(1),
            )
            .is_ok()
        })
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
