//! Enqueue and delivery: what comes out of a fetch, when, and to whom.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use weir_core::{Capability, Clock, FetchRequest, JobId, Member, NewJob, SettleOutcome};

use super::{fetch, fetch_some, fetch_until, job, ok, req, settle};
use crate::Fixture;

/// A job comes back as enqueued, with its attempt counted and a lease that settles it, once.
pub async fn enqueue_fetch_settle(f: Fixture) {
    let b = &*f.broker;
    let new = NewJob::new("email", br#"{"to":"x"}"#.to_vec())
        .queue("q1")
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
    assert_eq!(d.job.priority, 0);
    assert_eq!(d.job.attempt, 1);
    assert_eq!(d.lease.attempt, 1);
    assert_eq!(d.job.max_attempts, 4);
    assert_eq!(d.job.timeout, Some(Duration::from_secs(9)));
    assert_eq!(d.job.trace_id, "abc");
    // A second job proves the broker is delivering; the first must not come with it.
    let marker = b.enqueue(job("q1")).await.unwrap().id;
    let next = fetch_some(&f, "q1", 10).await;
    let ids: Vec<JobId> = next.iter().map(|d| d.job.id).collect();
    assert_eq!(ids, vec![marker], "a leased job is not delivered twice");
    assert!(
        fetch(b, "other", 10).await.is_empty(),
        "queues are separate"
    );
    let result = Some(br#"{"sent":true}"#.to_vec());
    assert_eq!(
        settle(b, d, weir_core::Settlement::Succeeded { result }).await,
        SettleOutcome::Applied
    );
    assert_eq!(
        settle(b, d, ok()).await,
        SettleOutcome::Stale,
        "settled twice"
    );
    assert_eq!(settle(b, &next[0], ok()).await, SettleOutcome::Applied);
}

/// A delayed job is invisible until its time.
pub async fn delayed_jobs_wait(f: Fixture) {
    let b = &*f.broker;
    let id = b
        .enqueue(job("delay").delay(Duration::from_secs(10)))
        .await
        .unwrap()
        .id;
    // A job due now proves the broker delivers; the delayed one must not come with it.
    let now = b.enqueue(job("delay")).await.unwrap().id;
    let got = fetch_some(&f, "delay", 10).await;
    assert_eq!(
        got.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        vec![now],
        "only the job that is due"
    );
    settle(b, &got[0], ok()).await;
    f.advance(Duration::from_secs(5)).await;
    assert!(
        fetch(b, "delay", 10).await.is_empty(),
        "not after 5 of 10 s"
    );
    f.advance(Duration::from_secs(6)).await;
    let got = fetch_until(&f, "delay", 50).await;
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

/// N workers fetching at once never get the same job inside a lease, and every job is
/// delivered exactly once.
pub async fn concurrent_workers_no_double_delivery(f: Fixture) {
    const JOBS: usize = 2000;
    const WORKERS: usize = 8;
    let b = f.broker.clone();
    let priorities = b.capabilities().has(Capability::Priorities);
    let mut ids = HashSet::new();
    for chunk in 0..(JOBS / 100) {
        let batch: Vec<NewJob> = (0..100)
            .map(|i| match priorities {
                true => job("conc").priority((chunk * i % 7) as i32),
                false => job("conc"),
            })
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
