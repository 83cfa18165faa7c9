//! The broker conformance suite: the semantics every weir backend promises, as tests.
//!
//! Each function takes a fresh [`Fixture`] and panics on a violation. Tests that need the
//! [`weir_core::Inspect`] capability are skipped, with a message, for brokers without it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use weir_core::{
    Broker, Clock, Delivery, FetchRequest, Inspect, JobId, JobState, ListFilter, Member, NewJob,
    SettleOutcome, Settlement,
};

use crate::Fixture;

const LEASE: Duration = Duration::from_secs(30);

fn req(queue: &str, max: usize) -> FetchRequest {
    FetchRequest {
        queues: vec![queue.to_owned()],
        max,
        lease: LEASE,
        wait: Duration::ZERO,
    }
}

fn job(queue: &str) -> NewJob {
    NewJob::new("test", b"{}".to_vec()).queue(queue)
}

async fn fetch(b: &dyn Broker, queue: &str, max: usize) -> Vec<Delivery> {
    b.fetch(req(queue, max)).await.expect("fetch")
}

/// A fetch that expects a job: it waits up to the fixture's delivery wait.
async fn fetch_some(f: &Fixture, queue: &str, max: usize) -> Vec<Delivery> {
    f.broker
        .fetch(FetchRequest {
            wait: f.delivery_wait,
            ..req(queue, max)
        })
        .await
        .expect("fetch")
}

async fn settle(b: &dyn Broker, d: &Delivery, s: Settlement) -> SettleOutcome {
    b.settle(vec![(d.lease, s)]).await.expect("settle")[0]
}

fn ok() -> Settlement {
    Settlement::Succeeded { result: None }
}

fn inspect<'a>(f: &'a Fixture, test: &str) -> Option<&'a dyn Inspect> {
    let i = f.broker.inspect();
    if i.is_none() {
        eprintln!("skipped {test}: this broker has no Inspect capability");
    }
    i
}

async fn state_of(i: &dyn Inspect, id: JobId) -> JobState {
    i.get(id).await.expect("get").expect("job exists").state
}

/// A job comes back as enqueued, with its attempt counted and a lease that settles it.
pub async fn enqueue_fetch_settle(f: Fixture) {
    let b = &*f.broker;
    let new = NewJob::new("email", br#"{"to":"x"}"#.to_vec())
        .queue("q1")
        .priority(3)
        .max_attempts(4)
        .timeout(Duration::from_secs(9))
        .trace_id("abc");
    let id = b.enqueue(new).await.unwrap();
    assert!(!id.duplicate);
    let got = fetch_some(&f, "q1", 10).await;
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.job.id, id.id);
    assert_eq!(d.lease.id, id.id);
    assert_eq!(d.job.kind, "email");
    assert_eq!(d.job.queue, "q1");
    assert_eq!(d.job.payload, br#"{"to":"x"}"#);
    assert_eq!(d.job.priority, 3);
    assert_eq!(d.job.attempt, 1);
    assert_eq!(d.lease.attempt, 1);
    assert_eq!(d.job.max_attempts, 4);
    assert_eq!(d.job.timeout, Some(Duration::from_secs(9)));
    assert_eq!(d.job.trace_id, "abc");
    assert!(
        fetch(b, "q1", 10).await.is_empty(),
        "a leased job is not delivered twice"
    );
    assert!(
        fetch(b, "other", 10).await.is_empty(),
        "queues are separate"
    );
    let result = Some(br#"{"sent":true}"#.to_vec());
    assert_eq!(
        settle(
            b,
            d,
            Settlement::Succeeded {
                result: result.clone()
            }
        )
        .await,
        SettleOutcome::Applied
    );
    assert_eq!(
        settle(b, d, ok()).await,
        SettleOutcome::Stale,
        "settled twice"
    );
    if let Some(i) = inspect(&f, "enqueue_fetch_settle/inspect") {
        let j = i.get(id.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(j.result, result);
        assert!(j.finished_at.is_some());
    }
}

/// Ready jobs come out by priority (higher first), then by `run_at` (earlier first).
pub async fn ordering_by_priority_then_run_at(f: Fixture) {
    let b = &*f.broker;
    let now = f.clock.now();
    let t = |ms: i64| weir_core::Timestamp(now.0 - 10_000 + ms);
    let specs = [
        (0, t(300)),
        (5, t(200)),
        (0, t(100)),
        (5, t(400)),
        (9, t(500)),
    ];
    let mut ids = Vec::new();
    for (p, at) in specs {
        ids.push(
            b.enqueue(job("ord").priority(p).run_at(at))
                .await
                .unwrap()
                .id,
        );
    }
    let mut order = Vec::new();
    for _ in 0..specs.len() {
        let d = fetch(b, "ord", 1).await;
        assert_eq!(d.len(), 1);
        order.push(d[0].job.id);
    }
    assert_eq!(order, vec![ids[4], ids[1], ids[3], ids[2], ids[0]]);
}

/// A delayed job is invisible until its time.
pub async fn delayed_jobs_wait(f: Fixture) {
    let b = &*f.broker;
    let id = b
        .enqueue(job("delay").delay(Duration::from_secs(10)))
        .await
        .unwrap()
        .id;
    assert!(fetch(b, "delay", 10).await.is_empty());
    f.advance(Duration::from_secs(5)).await;
    assert!(fetch(b, "delay", 10).await.is_empty());
    f.advance(Duration::from_secs(6)).await;
    let got = fetch_some(&f, "delay", 10).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.id, id);
}

/// A fetch waits for a job enqueued while it waits.
pub async fn fetch_waits_for_new_jobs(f: Fixture) {
    let b = f.broker.clone();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            b.fetch(FetchRequest {
                wait: Duration::from_secs(10),
                ..req("wait", 1)
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let id = b.enqueue(job("wait")).await.unwrap().id;
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiting fetch was woken")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.id, id);
}

/// A waiting fetch is answered when a delayed job comes due.
pub async fn waiting_fetch_gets_delayed_job(f: Fixture) {
    let b = f.broker.clone();
    let id = b
        .enqueue(job("due").delay(Duration::from_secs(3)))
        .await
        .unwrap()
        .id;
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            b.fetch(FetchRequest {
                wait: Duration::from_secs(10),
                ..req("due", 1)
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "not before its time");
    f.advance(Duration::from_secs(4)).await;
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiting fetch got the job once due")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.id, id);
}

/// A wall clock that steps back (NTP) delays jobs but never loses them. Regression: an index
/// entry popped while its job was not due by the current clock used to be dropped, and the job
/// stayed pending forever.
pub async fn clock_stepping_back_loses_no_job(f: Fixture) {
    if f.real_time {
        eprintln!("skipped clock_stepping_back_loses_no_job: the broker follows the wall clock");
        return;
    }
    let b = &*f.broker;
    let start = f.clock.now();
    let id = b.enqueue(job("skew")).await.unwrap().id;
    f.clock.set(weir_core::Timestamp(start.0 - 5_000));
    assert!(
        fetch(b, "skew", 1).await.is_empty(),
        "not due by the stepped-back clock"
    );
    f.clock.set(start);
    let mut got = Vec::new();
    for _ in 0..100 {
        got = fetch(b, "skew", 1).await;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(got.len(), 1, "the job was kept");
    assert_eq!(got[0].job.id, id);
}

/// An expired lease is reclaimed with its attempt counted; the old holder is fenced off.
pub async fn lease_expiry_and_fencing(f: Fixture) {
    let b = &*f.broker;
    b.enqueue(job("lease")).await.unwrap();
    let first = b
        .fetch(FetchRequest {
            lease: Duration::from_secs(5),
            wait: f.delivery_wait,
            ..req("lease", 1)
        })
        .await
        .unwrap()
        .pop()
        .unwrap();
    f.advance(Duration::from_secs(7)).await;
    let mut second = Vec::new();
    for _ in 0..100 {
        second = fetch_some(&f, "lease", 1).await;
        if !second.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(second.len(), 1, "the expired lease was reclaimed");
    let second = &second[0];
    assert_eq!(second.job.id, first.job.id);
    assert_eq!(second.lease.attempt, 2, "the lost attempt counts");
    assert_eq!(
        b.heartbeat(&[first.lease, second.lease], LEASE)
            .await
            .unwrap(),
        vec![false, true]
    );
    assert_eq!(
        settle(b, &first, ok()).await,
        SettleOutcome::Stale,
        "late settle is fenced"
    );
    assert_eq!(settle(b, second, ok()).await, SettleOutcome::Applied);
    if let Some(i) = inspect(&f, "lease_expiry_and_fencing/inspect") {
        let j = i.get(first.job.id).await.unwrap().unwrap();
        assert_eq!((j.state, j.attempt), (JobState::Succeeded, 2));
    }
}

/// A job whose every attempt loses its lease ends Failed (a poison job cannot loop forever).
pub async fn lease_expiry_exhausts_attempts(f: Fixture) {
    let b = &*f.broker;
    let id = b.enqueue(job("poison").max_attempts(1)).await.unwrap().id;
    assert_eq!(
        b.fetch(FetchRequest {
            lease: Duration::from_secs(1),
            wait: f.delivery_wait,
            ..req("poison", 1)
        })
        .await
        .unwrap()
        .len(),
        1
    );
    f.advance(Duration::from_secs(3)).await;
    for _ in 0..10 {
        assert!(fetch(b, "poison", 1).await.is_empty());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(i) = inspect(&f, "lease_expiry_exhausts_attempts") else {
        return;
    };
    let mut j = i.get(id).await.unwrap().unwrap();
    for _ in 0..100 {
        if j.state != JobState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = fetch(b, "poison", 1).await;
        j = i.get(id).await.unwrap().unwrap();
    }
    assert_eq!(j.state, JobState::Failed);
    let err = j.last_error.unwrap_or_default();
    assert!(err.contains("lease expired"), "{err}");
}

/// Heartbeats keep a lease alive past its first expiry.
pub async fn heartbeat_extends_lease(f: Fixture) {
    let b = &*f.broker;
    b.enqueue(job("hb")).await.unwrap();
    let d = b
        .fetch(FetchRequest {
            lease: Duration::from_secs(5),
            wait: f.delivery_wait,
            ..req("hb", 1)
        })
        .await
        .unwrap()
        .pop()
        .unwrap();
    for _ in 0..3 {
        f.advance(Duration::from_secs(3)).await;
        assert_eq!(
            b.heartbeat(&[d.lease], Duration::from_secs(5))
                .await
                .unwrap(),
            vec![true]
        );
        assert!(
            fetch(b, "hb", 1).await.is_empty(),
            "a renewed lease is not reclaimed"
        );
    }
    assert_eq!(settle(b, &d, ok()).await, SettleOutcome::Applied);
}

/// A retry is a scheduled future delivery with the next attempt number.
pub async fn retry_scheduling(f: Fixture) {
    let b = &*f.broker;
    let id = b.enqueue(job("retry")).await.unwrap().id;
    let d = fetch_some(&f, "retry", 1).await.pop().unwrap();
    let run_at = f.clock.now().plus(Duration::from_secs(30));
    let s = Settlement::Retry {
        run_at,
        error: "upstream 503".into(),
    };
    assert_eq!(settle(b, &d, s).await, SettleOutcome::Applied);
    if let Some(i) = inspect(&f, "retry_scheduling/inspect") {
        let j = i.get(id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Retryable);
        assert_eq!(j.run_at, run_at);
        assert_eq!(j.last_error.as_deref(), Some("upstream 503"));
    }
    assert!(fetch(b, "retry", 1).await.is_empty(), "not before its time");
    f.advance(Duration::from_secs(31)).await;
    let again = fetch_some(&f, "retry", 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.attempt, 2);
}

/// A released lease (graceful shutdown) makes the job runnable now without spending an attempt.
pub async fn release_gives_job_back(f: Fixture) {
    let b = &*f.broker;
    b.enqueue(job("rel")).await.unwrap();
    let d = fetch_some(&f, "rel", 1).await.pop().unwrap();
    assert_eq!(
        settle(b, &d, Settlement::Release).await,
        SettleOutcome::Applied
    );
    let again = fetch_some(&f, "rel", 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.attempt, 1);
}

/// A cancel settle finishes a job unrun: it is never delivered again, and brokers that keep
/// jobs show it Cancelled with the reason.
pub async fn cancel_settlement_finishes_unrun(f: Fixture) {
    let b = &*f.broker;
    let id = b.enqueue(job("cset")).await.unwrap().id;
    let d = fetch_some(&f, "cset", 1).await.pop().unwrap();
    let reason = "its workflow failed".to_owned();
    assert_eq!(
        settle(
            b,
            &d,
            Settlement::Cancel {
                reason: reason.clone()
            }
        )
        .await,
        SettleOutcome::Applied
    );
    assert!(fetch_some(&f, "cset", 1).await.is_empty(), "gone");
    if !f.real_time {
        // (A real-time broker would make this a minute's sleep.)
        f.advance(LEASE * 2).await;
        assert!(
            fetch_some(&f, "cset", 1).await.is_empty(),
            "not even after the lease"
        );
    }
    if let Some(i) = inspect(&f, "cancel_settlement_finishes_unrun") {
        let j = i.get(id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.last_error, Some(reason));
    }
}

/// Retention: only jobs finished before the cut-off go, and only in the state asked for.
pub async fn purge_by_age(f: Fixture) {
    let Some(i) = inspect(&f, "purge_by_age") else {
        return;
    };
    let b = &*f.broker;
    let old = b.enqueue(job("age")).await.unwrap().id;
    let d = fetch_some(&f, "age", 1).await.pop().unwrap();
    settle(b, &d, ok()).await;
    f.advance(Duration::from_secs(10)).await;
    let cut = f.clock.now();
    f.advance(Duration::from_secs(10)).await;
    let new = b.enqueue(job("age")).await.unwrap().id;
    let d = fetch_some(&f, "age", 1).await.pop().unwrap();
    settle(b, &d, ok()).await;
    assert_eq!(
        i.purge_finished_before(JobState::Failed, cut)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        i.purge_finished_before(JobState::Succeeded, cut)
            .await
            .unwrap(),
        1
    );
    assert!(i.get(old).await.unwrap().is_none(), "the old one went");
    assert!(i.get(new).await.unwrap().is_some(), "the new one stays");
}

/// A workflow member's membership travels with its job.
pub async fn workflow_membership_round_trips(f: Fixture) {
    let b = &*f.broker;
    let m = Member {
        workflow: JobId::new(),
        index: 41,
    };
    b.enqueue(job("member").member(m)).await.unwrap();
    b.enqueue(job("member")).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let more = fetch_some(&f, "member", 2).await;
        assert!(!more.is_empty(), "both jobs are delivered");
        got.extend(more);
    }
    let members: HashSet<_> = got.iter().map(|d| d.job.member).collect();
    assert_eq!(members, HashSet::from([Some(m), None]));
    for d in &got {
        settle(b, d, ok()).await;
    }
}

/// A deferred job (a limit was full) waits until its time without spending an attempt.
pub async fn defer_waits_without_spending_an_attempt(f: Fixture) {
    let b = &*f.broker;
    b.enqueue(job("defer")).await.unwrap();
    let d = fetch_some(&f, "defer", 1).await.pop().unwrap();
    let run_at = f.clock.now().plus(Duration::from_secs(5));
    assert_eq!(
        settle(b, &d, Settlement::Defer { run_at }).await,
        SettleOutcome::Applied
    );
    assert!(fetch(b, "defer", 1).await.is_empty(), "not before its time");
    f.advance(Duration::from_secs(6)).await;
    let mut again = Vec::new();
    for _ in 0..100 {
        again = fetch_some(&f, "defer", 1).await;
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].lease.attempt, 1,
        "the deferred attempt was not counted"
    );
}

/// While a job with a unique key is unfinished, the key maps to it.
pub async fn unique_keys(f: Fixture) {
    let b = &*f.broker;
    let a = b.enqueue(job("uniq").unique("k")).await.unwrap();
    let again = b.enqueue(job("uniq").unique("k")).await.unwrap();
    assert_eq!((again.id, again.duplicate), (a.id, true));
    let batch = b
        .enqueue_many(vec![job("uniq").unique("k2"), job("uniq").unique("k2")])
        .await
        .unwrap();
    assert_eq!(batch[1].id, batch[0].id);
    assert!(batch[1].duplicate && !batch[0].duplicate);
    let got = fetch(b, "uniq", 10).await;
    assert_eq!(got.len(), 2, "duplicates were not stored");
    let d = got.iter().find(|d| d.job.id == a.id).unwrap();
    // Still unfinished while running.
    assert!(b.enqueue(job("uniq").unique("k")).await.unwrap().duplicate);
    settle(b, d, ok()).await;
    let fresh = b.enqueue(job("uniq").unique("k")).await.unwrap();
    assert!(!fresh.duplicate);
    assert_ne!(fresh.id, a.id);
}

/// A permanent failure lands in the dead-letter set (Failed) with its reason; an operator can
/// run it again, and purge it.
pub async fn dead_lettering(f: Fixture) {
    let b = &*f.broker;
    let id = b.enqueue(job("dead")).await.unwrap().id;
    let d = fetch_some(&f, "dead", 1).await.pop().unwrap();
    let s = Settlement::Failed {
        error: "payload for kind `test` does not decode".into(),
    };
    assert_eq!(settle(b, &d, s).await, SettleOutcome::Applied);
    assert!(
        fetch(b, "dead", 1).await.is_empty(),
        "a failed job does not run again by itself"
    );
    let Some(i) = inspect(&f, "dead_lettering") else {
        return;
    };
    let dead = i
        .list(ListFilter {
            state: Some(JobState::Failed),
            queue: Some("dead".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("does not decode"));
    assert!(matches!(
        i.cancel(id).await,
        Err(weir_core::BrokerError::WrongState { .. })
    ));
    let j = i.retry(id).await.unwrap();
    assert_eq!(j.state, JobState::Pending);
    let mut again = Vec::new();
    for _ in 0..100 {
        again = fetch(b, "dead", 1).await;
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(again.len(), 1, "a retried job runs again");
    assert_eq!(again[0].lease.attempt, 1, "attempts start over");
    settle(
        b,
        &again[0],
        Settlement::Failed {
            error: "again".into(),
        },
    )
    .await;
    assert!(matches!(
        i.purge(JobState::Running, None).await,
        Err(weir_core::BrokerError::Invalid(_))
    ));
    assert_eq!(i.purge(JobState::Failed, Some("dead")).await.unwrap(), 1);
    assert!(i.get(id).await.unwrap().is_none());
    assert!(matches!(
        i.retry(JobId::new()).await,
        Err(weir_core::BrokerError::NotFound(_))
    ));
}

/// Cancelling a pending job keeps it from running; cancelling a running one fences its lease.
pub async fn cancel(f: Fixture) {
    let b = &*f.broker;
    let Some(i) = inspect(&f, "cancel") else {
        return;
    };
    let pending = b.enqueue(job("cx")).await.unwrap().id;
    let running = b.enqueue(job("cx")).await.unwrap().id;
    let first = fetch(b, "cx", 1).await.pop().unwrap();
    let (d, other) = if first.job.id == running {
        (first, pending)
    } else {
        (first, running)
    };
    assert_eq!(i.cancel(other).await.unwrap().state, JobState::Cancelled);
    assert_eq!(i.cancel(d.job.id).await.unwrap().state, JobState::Cancelled);
    assert!(fetch(b, "cx", 10).await.is_empty());
    assert_eq!(b.heartbeat(&[d.lease], LEASE).await.unwrap(), vec![false]);
    assert_eq!(settle(b, &d, ok()).await, SettleOutcome::Stale);
    assert_eq!(state_of(i, d.job.id).await, JobState::Cancelled);
}

/// The backlog counts due jobs only, per queue.
pub async fn backlog_counts_due_jobs(f: Fixture) {
    let b = &*f.broker;
    for _ in 0..3 {
        b.enqueue(job("bl")).await.unwrap();
    }
    b.enqueue(job("bl").delay(Duration::from_secs(60)))
        .await
        .unwrap();
    let queues = vec!["bl".to_owned(), "none".to_owned()];
    match b.backlog(&queues).await {
        Err(weir_core::BrokerError::Unsupported(_)) => {
            eprintln!("skipped backlog_counts_due_jobs: this broker reports no backlog");
        }
        r => {
            assert_eq!(r.unwrap(), vec![3, 0]);
            assert_eq!(fetch_some(&f, "bl", 1).await.len(), 1);
            assert_eq!(b.backlog(&queues).await.unwrap(), vec![2, 0]);
        }
    }
}

/// Worker reports are kept, one per worker and queue, newest first.
pub async fn worker_reports(f: Fixture) {
    let b = &*f.broker;
    let Some(i) = inspect(&f, "worker_reports") else {
        return;
    };
    let report = |size: u64, at: i64| weir_core::WorkerStatus {
        worker: "host:1".into(),
        queue: "wq".into(),
        size,
        busy: 1,
        last_decision: Some("grew".into()),
        updated_at: weir_core::Timestamp(at),
    };
    match b.report(report(2, 1_000)).await {
        Err(weir_core::BrokerError::Unsupported(_)) => {
            eprintln!("skipped worker_reports: this broker keeps no worker reports");
            return;
        }
        r => r.unwrap(),
    }
    b.report(report(5, 2_000)).await.unwrap();
    let mut other = report(1, 3_000);
    other.worker = "host:2".into();
    b.report(other).await.unwrap();
    let w = i.workers().await.unwrap();
    assert_eq!(w.len(), 2, "one row per worker and queue");
    assert_eq!(w[0].worker, "host:2", "newest first");
    assert_eq!(
        (w[1].size, w[1].last_decision.as_deref()),
        (5, Some("grew"))
    );
}

/// Counts by queue and state.
pub async fn counts(f: Fixture) {
    let b = &*f.broker;
    let Some(i) = inspect(&f, "counts") else {
        return;
    };
    for _ in 0..3 {
        b.enqueue(job("ca")).await.unwrap();
    }
    b.enqueue(job("cb")).await.unwrap();
    let d = fetch(b, "ca", 1).await.pop().unwrap();
    settle(b, &d, ok()).await;
    fetch(b, "ca", 1).await;
    let c = i.counts().await.unwrap();
    let a = c.iter().find(|q| q.queue == "ca").unwrap();
    assert_eq!((a.pending, a.running, a.succeeded), (1, 1, 1));
    assert_eq!(c.iter().find(|q| q.queue == "cb").unwrap().pending, 1);
}

/// N workers fetching at once never get the same job inside a lease, and all jobs are
/// delivered.
pub async fn concurrent_workers_no_double_delivery(f: Fixture) {
    const JOBS: usize = 2000;
    const WORKERS: usize = 8;
    let b = f.broker.clone();
    let mut ids = HashSet::new();
    for chunk in 0..(JOBS / 100) {
        let batch: Vec<NewJob> = (0..100)
            .map(|i| job("conc").priority((chunk * i % 7) as i32))
            .collect();
        for e in b.enqueue_many(batch).await.unwrap() {
            ids.insert(e.id);
        }
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let wait = f.delivery_wait;
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let b = b.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let got = b
                    .fetch(FetchRequest {
                        wait: wait.max(Duration::from_millis(200)),
                        ..req("conc", 16)
                    })
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                let settles = got.iter().map(|d| (d.lease, ok())).collect();
                seen.lock().unwrap().extend(got.iter().map(|d| d.job.id));
                let out = b.settle(settles).await.unwrap();
                assert!(out.iter().all(|o| *o == SettleOutcome::Applied));
            }
        }));
    }
    for t in futures::future::join_all(tasks).await {
        t.unwrap();
    }
    let seen = seen.lock().unwrap();
    let unique: HashSet<_> = seen.iter().copied().collect();
    assert_eq!(seen.len(), unique.len(), "a job was delivered twice");
    assert_eq!(unique, ids, "every job was delivered");
}

/// Runs the whole suite against brokers made by `$make` (an `async fn() -> Fixture`).
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        mod conformance {
            use super::*;
            $crate::conformance_suite!(@tests $make;
                enqueue_fetch_settle,
                ordering_by_priority_then_run_at,
                delayed_jobs_wait,
                fetch_waits_for_new_jobs,
                waiting_fetch_gets_delayed_job,
                clock_stepping_back_loses_no_job,
                lease_expiry_and_fencing,
                lease_expiry_exhausts_attempts,
                heartbeat_extends_lease,
                retry_scheduling,
                release_gives_job_back,
                defer_waits_without_spending_an_attempt,
                cancel_settlement_finishes_unrun,
                workflow_membership_round_trips,
                purge_by_age,
                unique_keys,
                dead_lettering,
                cancel,
                counts,
                backlog_counts_due_jobs,
                worker_reports,
                concurrent_workers_no_double_delivery,
            );
        }
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let f = $make().await;
                if let Some(why) = f.skipped(stringify!($name)) {
                    eprintln!("skipped {}: {why}", stringify!($name));
                    return;
                }
                $crate::conformance::$name(f).await;
            }
        )*
    };
}
