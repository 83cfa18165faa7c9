//! What is particular to the embedded broker: several processes on one file, durability across
//! reopening, and fetches abandoned by their callers.

use std::time::Duration;

use futures::FutureExt;
use weir_core::{Broker, FetchRequest, Inspect, JobState, NewJob, Settlement};
use weir_sqlite::{SqliteBroker, SqliteOptions};

fn req(queue: &str, wait: Duration) -> FetchRequest {
    FetchRequest {
        queues: vec![queue.into()],
        max: 10,
        lease: Duration::from_secs(30),
        wait,
    }
}

fn open(path: &std::path::Path) -> SqliteBroker {
    SqliteBroker::open_with(SqliteOptions::new(path).poll_interval(Duration::from_millis(20)))
        .unwrap()
}

/// Each handle has its own writer and ready order, as two processes would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_enqueues_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let server = open(&path);
    let cli = open(&path);
    // Enqueued elsewhere: the waiting server learns of it by polling.
    let id = cli
        .enqueue(NewJob::new("k", "{}").queue("x"))
        .await
        .unwrap()
        .id;
    let got = server
        .fetch(req("x", Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.id, id);
    let s = Settlement::Failed {
        error: "bad".into(),
    };
    server.settle(vec![(got[0].lease, s)]).await.unwrap();
    // Retried elsewhere: the server learns of it through the wakeups table.
    assert_eq!(cli.retry(id).await.unwrap().state, JobState::Pending);
    let again = server
        .fetch(req("x", Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "a job retried by another process runs");
    assert_eq!(
        again[0].lease.attempt, 2,
        "the attempt count goes on after a retry"
    );
    // Both handles lease from one file: every job exactly once, none by both.
    let mut enqueued = Vec::new();
    for _ in 0..20 {
        let out = cli
            .enqueue(NewJob::new("k", "{}").queue("y"))
            .await
            .unwrap();
        enqueued.push(out.id);
    }
    let mut leased = Vec::new();
    let start = std::time::Instant::now();
    while leased.len() < enqueued.len() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {} of 20 delivered",
            leased.len()
        );
        let (a, b) = tokio::join!(
            server.fetch(req("y", Duration::from_millis(300))),
            cli.fetch(req("y", Duration::from_millis(300)))
        );
        leased.extend(a.unwrap().into_iter().chain(b.unwrap()).map(|d| d.job.id));
    }
    leased.sort();
    enqueued.sort();
    assert_eq!(leased, enqueued, "every job leased exactly once");
}

/// Purging the newest rows never lets a row number be reused, which would hide new jobs from
/// other processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_does_not_hide_new_jobs_from_other_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("purge.db");
    let server = open(&path);
    let cli = open(&path);
    for _ in 0..3 {
        server.enqueue(NewJob::new("k", "{}")).await.unwrap();
    }
    let got = server.fetch(req("default", Duration::ZERO)).await.unwrap();
    let s = got
        .iter()
        .map(|d| (d.lease, Settlement::Succeeded { result: None }))
        .collect();
    server.settle(s).await.unwrap();
    // Let the server see every row, then delete them all from the other handle.
    server
        .fetch(req("default", Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(cli.purge(JobState::Succeeded, None).await.unwrap(), 3);
    // The count of jobs ever finished is not lowered by the purge (the API's throughput
    // reads it), while the succeeded count is.
    let c = cli.counts().await.unwrap();
    assert_eq!((c[0].succeeded, c[0].finished_ever), (0, 3), "{c:?}");
    let id = cli.enqueue(NewJob::new("k", "{}")).await.unwrap().id;
    let got = server
        .fetch(req("default", Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "the new job is seen");
    assert_eq!(got[0].job.id, id);
}

/// What was acknowledged survives a close; leases held at a crash run again.
/// A purge larger than one window deletes in several writer commands, and deletes everything
/// it should: only the state and age asked for, failed jobs kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_many_windows_deletes_exactly_what_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir.path().join("big.db"));
    let n = 12_345;
    weir_testkit::finished_jobs(&b, n, 100).await;
    let failed = n.div_ceil(100) as u64;
    let i = b.inspect().unwrap();
    let hour_ago = weir_core::Timestamp(weir_core::Timestamp::now().0 - 3_600_000);
    assert_eq!(
        i.purge_finished_before(JobState::Succeeded, hour_ago)
            .await
            .unwrap(),
        0,
        "nothing is that old"
    );
    let soon = weir_core::Timestamp(weir_core::Timestamp::now().0 + 60_000);
    assert_eq!(
        i.purge_finished_before(JobState::Succeeded, soon)
            .await
            .unwrap(),
        n as u64 - failed
    );
    let counts = &i.counts().await.unwrap()[0];
    assert_eq!((counts.succeeded, counts.failed), (0, failed));
    assert_eq!(i.purge(JobState::Failed, None).await.unwrap(), failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.db");
    let (pending, leased) = {
        let b = open(&path);
        let pending = b
            .enqueue(NewJob::new("k", r#"{"n":1}"#).priority(3))
            .await
            .unwrap()
            .id;
        let leased = b.enqueue(NewJob::new("k", "{}")).await.unwrap().id;
        let got = b
            .fetch(FetchRequest {
                max: 1,
                lease: Duration::from_millis(300),
                ..req("default", Duration::ZERO)
            })
            .await
            .unwrap();
        assert_eq!(got[0].job.id, pending, "priority first");
        (leased, pending)
    };
    let b = open(&path);
    assert_eq!(
        b.get(leased).await.unwrap().unwrap().state,
        JobState::Running
    );
    let mut seen = Vec::new();
    for _ in 0..100 {
        for d in b
            .fetch(req("default", Duration::from_millis(50)))
            .await
            .unwrap()
        {
            seen.push((d.job.id, d.lease.attempt));
        }
        if seen.len() == 2 {
            break;
        }
    }
    seen.sort();
    let mut want = vec![(pending, 1), (leased, 2)];
    want.sort();
    assert_eq!(seen, want, "the pending job and the reclaimed one both run");
}

/// A fetch dropped by its caller (a cancelled future) leaves the jobs runnable. (The case where
/// the writer had already leased them is a unit test in `writer.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_fetch_leaves_jobs_available() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir.path().join("orphan.db"));
    let id = b.enqueue(NewJob::new("k", "{}")).await.unwrap().id;
    // Poll once, so the request reaches the writer, then drop it.
    let fut = b.fetch(req("default", Duration::from_secs(5)));
    assert!(
        fut.now_or_never().is_none(),
        "a fetch waits for the writer's commit"
    );
    let got = b
        .fetch(req("default", Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].job.id, got[0].lease.attempt),
        (id, 1),
        "given back unspent"
    );
}

#[tokio::test]
async fn refuses_a_newer_schema_and_bad_urls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    drop(open(&path));
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let e = SqliteBroker::open(&path).unwrap_err().to_string();
    assert!(e.contains("schema version 99"), "{e}");
    assert!(SqliteOptions::from_url("sqlite:x.db?sync=maybe")
        .unwrap_err()
        .to_string()
        .contains("sync must be"));
    assert!(SqliteOptions::from_url("sqlite:x.db?mode=rw")
        .unwrap_err()
        .to_string()
        .contains("unknown parameter `mode=rw`"));
    // A payload limit SQLite could not honour is refused, so a validated job always fits.
    assert!(SqliteOptions::from_url("sqlite:x.db?max_payload=500000000")
        .unwrap_err()
        .to_string()
        .contains("one SQLite row of at most 1 GB"));
    let big = weir_core::JobLimits {
        max_payload: usize::MAX,
    };
    let b =
        SqliteBroker::open_with(SqliteOptions::new(dir.path().join("big.db")).limits(big)).unwrap();
    assert_eq!(b.job_limits().max_payload, weir_sqlite::MAX_PAYLOAD_LIMIT);
}

/// A job that one process puts back (a retry, a release, a deferral, a reclaimed lease) is
/// seen by the others on the file, even after that process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_put_back_by_one_process_is_seen_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wake.db");
    let server = open(&path);
    let cli = open(&path);
    let id = server
        .enqueue(NewJob::new("k", "{}").queue("w"))
        .await
        .unwrap()
        .id;
    // Another process takes it and asks for a retry at once, then goes away.
    let got = cli.fetch(req("w", Duration::from_secs(5))).await.unwrap();
    assert_eq!(got.len(), 1);
    let retry = Settlement::Retry {
        run_at: weir_core::Timestamp::now(),
        error: "again".into(),
    };
    cli.settle(vec![(got[0].lease, retry)]).await.unwrap();
    drop(cli);
    let again = server
        .fetch(req("w", Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the retried job reached the other process");
    assert_eq!(again[0].job.id, id);
    // The same for a release, to a process that opened while the job was running.
    let third = open(&path);
    assert!(third
        .fetch(req("w", Duration::ZERO))
        .await
        .unwrap()
        .is_empty());
    server
        .settle(vec![(again[0].lease, Settlement::Release)])
        .await
        .unwrap();
    drop(server);
    let last = third.fetch(req("w", Duration::from_secs(5))).await.unwrap();
    assert_eq!(last.len(), 1);
}
