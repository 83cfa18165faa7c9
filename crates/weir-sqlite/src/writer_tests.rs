//! The writer's own tests (next to `writer.rs`, which they test from inside).

use super::*;
use rusqlite::params;
use tokio::sync::oneshot;
use weir_core::{NewJob, SystemClock};

fn writer(dir: &tempfile::TempDir) -> Writer {
    let mut conn = Connection::open(dir.path().join("w.db")).unwrap();
    crate::schema::migrate(&mut conn).unwrap();
    Writer::new(conn, Arc::new(SystemClock), Duration::from_millis(100)).unwrap()
}

fn state_attempt(w: &Writer) -> (i64, i64) {
    w.conn
        .query_row("SELECT state, attempt FROM jobs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
}

/// The writer leased jobs for a fetch whose caller then went away: the leases are given
/// back in the next round, attempt unspent.
#[test]
fn leases_of_an_abandoned_fetch_are_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(&dir);
    let (tx, _rx) = oneshot::channel();
    w.round(vec![Cmd::Enqueue(vec![NewJob::new("k", "{}")], tx)]);
    let (tx, rx) = oneshot::channel();
    let fetch = Fetch {
        queues: vec!["default".into()],
        max: 1,
        lease: Duration::from_secs(30),
        deadline: Instant::now(),
        reply: tx,
    };
    let now = w.clock.now();
    w.runnable.now = now;
    w.conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let done = w
        .apply(Cmd::Fetch(fetch), now)
        .unwrap()
        .expect("leased at once");
    w.conn.execute_batch("COMMIT").unwrap();
    assert_eq!(state_attempt(&w), (1, 1));
    drop(rx);
    w.send(done);
    assert_eq!(w.orphans.len(), 1);
    w.round(Vec::new());
    assert!(w.orphans.is_empty());
    assert_eq!(
        state_attempt(&w),
        (0, 0),
        "pending again, attempt not spent"
    );
}

/// Only the queues a process fetches from (or asks the backlog of) are indexed: one that
/// only enqueues holds nothing, whatever the backlog, and a worker's index holds its own
/// queues, loaded from disk when first named and kept as jobs arrive.
#[test]
fn only_served_queues_are_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(&dir);
    let jobs = |q: &str, n| (0..n).map(|_| NewJob::new("k", "{}").queue(q)).collect();
    let (tx, _rx) = oneshot::channel();
    w.round(vec![Cmd::Enqueue(jobs("a", 3), tx)]);
    let (tx, _rx) = oneshot::channel();
    w.round(vec![Cmd::Enqueue(jobs("b", 5), tx)]);
    assert!(w.runnable.index.is_empty(), "a producer indexes nothing");
    let (tx, rx) = oneshot::channel();
    w.round(vec![Cmd::Backlog(vec!["a".into()], tx)]);
    assert_eq!(rx.blocking_recv().unwrap().unwrap(), vec![3]);
    assert_eq!(w.runnable.index.len(), 3, "a, loaded when first named");
    let (tx, _rx) = oneshot::channel();
    w.round(vec![Cmd::Enqueue(jobs("a", 1), tx)]);
    let (tx, _rx) = oneshot::channel();
    w.round(vec![Cmd::Enqueue(jobs("b", 1), tx)]);
    assert_eq!(
        w.runnable.index.ready_len("a"),
        4,
        "new jobs of a are added"
    );
    assert_eq!(w.runnable.index.ready_len("b"), 0, "b is not served here");
    // A failed round reloads the served queues only.
    w.reload().unwrap();
    assert_eq!(w.runnable.index.len(), 4);
}

/// A purge window reads its rows by seq range, never the whole table: that is what keeps
/// each command short on a file with millions of jobs.
#[test]
fn a_purge_window_is_a_seq_range() {
    let dir = tempfile::tempdir().unwrap();
    let w = writer(&dir);
    let plan: Vec<String> = w
        .conn
        .prepare(&format!("EXPLAIN QUERY PLAN {PURGE}"))
        .unwrap()
        .query_map(params![3, None::<String>, None::<i64>, 0, 10], |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plan = plan.join("; ");
    assert!(plan.contains("rowid>? AND rowid<?"), "{plan}");
}

/// A newer weir migrated the file under a running process: that process stops writing
/// (each command fails, saying why) instead of writing the older way.
#[test]
fn a_file_upgraded_underneath_is_not_written_the_old_way() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(&dir);
    let other = Connection::open(dir.path().join("w.db")).unwrap();
    other
        .pragma_update(None, "user_version", crate::schema::VERSION + 1)
        .unwrap();
    let (tx, rx) = oneshot::channel();
    w.round(vec![Cmd::Enqueue(vec![NewJob::new("k", "{}")], tx)]);
    let e = rx.blocking_recv().unwrap().unwrap_err().to_string();
    assert!(e.contains("newer weir"), "{e}");
    let n: i64 = other
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "nothing written");
}
