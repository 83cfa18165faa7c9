//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the threshold, so one
//! unlucky commit (and every job waiting on it) pays for copying the log into the database
//! and an extra fsync: tens of milliseconds. The writer's connection has automatic
//! checkpoints turned off, and this thread runs a PASSIVE checkpoint on its own connection
//! instead. A passive checkpoint never blocks the writer. Once it has copied the whole log,
//! the writer's next transaction starts the log over from the beginning, so the log stays small.

use std::time::Duration;

use rusqlite::Connection;

/// How often the log is checkpointed.
const EVERY: Duration = Duration::from_millis(200);

/// Runs until `stop` is closed (the broker was dropped), then checkpoints one last time.
pub(crate) fn run(conn: Connection, stop: flume::Receiver<()>) {
    loop {
        let closed = matches!(
            stop.recv_timeout(EVERY),
            Err(flume::RecvTimeoutError::Disconnected)
        );
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "sqlite broker: checkpoint failed; will try again");
        }
        if closed {
            return;
        }
    }
}
