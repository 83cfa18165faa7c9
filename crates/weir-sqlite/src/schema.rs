//! The on-disk schema and its migrations. See docs/embedded-format.md for the invariants.

use rusqlite::Connection;

/// Each entry moves the schema from version `i` to `i + 1` (stored in `PRAGMA user_version`).
/// Append only: never edit a released migration.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: jobs, the unfinished-rows index, held unique keys, cross-process wakeups.
    "CREATE TABLE jobs (
        seq          INTEGER PRIMARY KEY,
        id           BLOB    NOT NULL,
        kind         TEXT    NOT NULL,
        queue        TEXT    NOT NULL,
        payload      BLOB    NOT NULL,
        priority     INTEGER NOT NULL,
        run_at       INTEGER NOT NULL,
        attempt      INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        timeout_ms   INTEGER,
        unique_key   TEXT,
        trace_id     TEXT    NOT NULL,
        created_at   INTEGER NOT NULL,
        state        INTEGER NOT NULL,
        lease_until  INTEGER,
        last_error   TEXT,
        result       BLOB,
        finished_at  INTEGER
     );
     CREATE UNIQUE INDEX jobs_id ON jobs(id);
     CREATE INDEX jobs_unfinished ON jobs(state) WHERE state < 3;
     CREATE TABLE unique_keys (
        key TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE wakeups (
        id  INTEGER PRIMARY KEY AUTOINCREMENT,
        seq INTEGER NOT NULL,
        at  INTEGER NOT NULL
     );",
    // 1 -> 2: what each worker process reports about its queues (for `weir status`).
    "CREATE TABLE workers (
        worker        TEXT    NOT NULL,
        queue         TEXT    NOT NULL,
        size          INTEGER NOT NULL,
        busy          INTEGER NOT NULL,
        last_decision TEXT,
        updated_at    INTEGER NOT NULL,
        PRIMARY KEY (worker, queue)
     ) WITHOUT ROWID;",
    // 2 -> 3: workflows (chain, group, chord). A job's membership, and the workflow state the
    // embedded `SqliteStore` keeps in the same file.
    "ALTER TABLE jobs ADD COLUMN member TEXT;
     CREATE TABLE wf_workflows (
        id          BLOB    PRIMARY KEY,
        shape       INTEGER NOT NULL,
        mode        INTEGER NOT NULL,
        state       INTEGER NOT NULL,
        children    INTEGER NOT NULL,
        succeeded   INTEGER NOT NULL,
        failed      INTEGER NOT NULL,
        cancelled   INTEGER NOT NULL,
        trace_id    TEXT    NOT NULL,
        created_at  INTEGER NOT NULL,
        finished_at INTEGER
     ) WITHOUT ROWID;
     CREATE TABLE wf_members (
        workflow BLOB    NOT NULL,
        idx      INTEGER NOT NULL,
        job_id   BLOB    NOT NULL,
        kind     TEXT    NOT NULL,
        step     TEXT    NOT NULL,
        state    INTEGER NOT NULL,
        enqueued INTEGER NOT NULL,
        result   BLOB,
        error    TEXT,
        PRIMARY KEY (workflow, idx)
     ) WITHOUT ROWID;
     CREATE INDEX wf_finished ON wf_workflows(finished_at) WHERE finished_at IS NOT NULL;",
    // 3 -> 4: how many of the jobs a workflow starts with the submission saw confirmed, so an
    // interrupted submission can be completed on brokers that cannot look a job up by id.
    // Workflows stored before count as fully submitted.
    "ALTER TABLE wf_workflows ADD COLUMN started INTEGER NOT NULL DEFAULT 4294967295;",
    // 4 -> 5: counts of finished jobs by queue and state, so `weir status`, the API and
    // /metrics read a few rows instead of counting millions of finished jobs (unfinished ones
    // are counted through `jobs_unfinished`). The writer adds to them where a job finishes
    // (one statement per settle batch: a trigger there cost every job ~7 % of throughput);
    // the rare ways out of a finished state (a retry, a delete, a purge) are counted by
    // triggers, exact whichever process or statement does them. Filled once.
    "CREATE TABLE finished_counts (
        queue TEXT    NOT NULL,
        state INTEGER NOT NULL,
        n     INTEGER NOT NULL,
        PRIMARY KEY (queue, state)
     ) WITHOUT ROWID;
     INSERT INTO finished_counts (queue, state, n)
        SELECT queue, state, COUNT(*) FROM jobs WHERE state >= 3 GROUP BY queue, state;
     CREATE TRIGGER finished_counts_reopen AFTER UPDATE OF state ON jobs
       WHEN OLD.state >= 3 AND NEW.state != OLD.state BEGIN
        UPDATE finished_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
        INSERT INTO finished_counts (queue, state, n) SELECT NEW.queue, NEW.state, 1
          WHERE NEW.state >= 3
          ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER finished_counts_delete AFTER DELETE ON jobs WHEN OLD.state >= 3 BEGIN
        UPDATE finished_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
     END;",
    // 5 -> 6: `done`, how many jobs ever finished by queue and state: raised where `n` is,
    // never lowered (not by a retention sweep, a purge, a delete or a retry), so the API's
    // throughput (finished per second) is not thrown off when finished jobs are deleted.
    "ALTER TABLE finished_counts ADD COLUMN done INTEGER NOT NULL DEFAULT 0;
     UPDATE finished_counts SET done = n;
     DROP TRIGGER finished_counts_reopen;
     CREATE TRIGGER finished_counts_reopen AFTER UPDATE OF state ON jobs
       WHEN OLD.state >= 3 AND NEW.state != OLD.state BEGIN
        UPDATE finished_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
        INSERT INTO finished_counts (queue, state, n, done) SELECT NEW.queue, NEW.state, 1, 1
          WHERE NEW.state >= 3
          ON CONFLICT (queue, state) DO UPDATE SET n = n + 1, done = done + 1;
     END;",
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the file up to [`VERSION`], in one transaction per step. Refuses a file written by a
/// newer weir.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), String> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| format!("reading schema version: {e}"))?;
    if current > VERSION {
        return Err(format!(
            "the database has schema version {current}, newer than this weir understands ({VERSION}); upgrade weir"
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| format!("migration {}: {e}", i + 1))?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| format!("migration {}: {e}", i + 1))?;
        if now > i as i64 {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(|e| format!("migration {}: {e}", i + 1))?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(|e| format!("migration {}: {e}", i + 1))?;
        tx.commit()
            .map_err(|e| format!("migration {}: {e}", i + 1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written by a weir at schema 3 keeps its workflows: migration 4 counts them as
    /// fully submitted, so no rescue enqueues their first jobs again.
    #[test]
    fn migration_4_counts_existing_workflows_as_submitted() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("v3.db")).unwrap();
        for sql in &MIGRATIONS[..3] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "user_version", 3).unwrap();
        c.execute(
            "INSERT INTO wf_workflows (id, shape, mode, state, children, succeeded, failed,
                                       cancelled, trace_id, created_at)
             VALUES (x'01', 2, 0, 0, 5, 0, 0, 0, 't', 0)",
            [],
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let (version, started): (i64, i64) = c
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), started FROM wf_workflows",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((version, started), (VERSION, 4_294_967_295));
    }
}
