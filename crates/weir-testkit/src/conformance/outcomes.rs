//! How attempts end: retry, release, deferral, cancel, failure.

use std::time::Duration;

use weir_core::{Capability, Clock, Job, JobId, JobState, ListFilter, SettleOutcome, Settlement};

use super::{fetch, fetch_some, fetch_until, inspect_if_declared, job, ok, settle, LEASE};
use crate::Fixture;

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
    if let Some(i) = inspect_if_declared(&f) {
        let j = i.get(id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Retryable);
        assert_eq!(j.run_at, run_at);
        assert_eq!(j.last_error.as_deref(), Some("upstream 503"));
    }
    // A job due now proves the broker delivers; the retry must not come with it.
    let marker = b.enqueue(job("retry")).await.unwrap().id;
    let got = fetch_some(&f, "retry", 10).await;
    assert_eq!(
        got.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        vec![marker],
        "the retry is not delivered before its time"
    );
    settle(b, &got[0], ok()).await;
    f.advance(Duration::from_secs(31)).await;
    let again = fetch_until(&f, "retry", 50).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].job.id, id);
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
    let again = fetch_until(&f, "rel", 50).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.attempt, 1);
}

/// A deferred job (a limit was full) waits until its time without spending an attempt.
pub async fn defer_waits_without_spending_an_attempt(f: Fixture) {
    let b = &*f.broker;
    let id = b.enqueue(job("defer")).await.unwrap().id;
    let d = fetch_some(&f, "defer", 1).await.pop().unwrap();
    let run_at = f.clock.now().plus(Duration::from_secs(5));
    assert_eq!(
        settle(b, &d, Settlement::Defer { run_at }).await,
        SettleOutcome::Applied
    );
    let marker = b.enqueue(job("defer")).await.unwrap().id;
    let got = fetch_some(&f, "defer", 10).await;
    assert_eq!(
        got.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        vec![marker],
        "the deferred job is not delivered before its time"
    );
    settle(b, &got[0], ok()).await;
    f.advance(Duration::from_secs(6)).await;
    let again = fetch_until(&f, "defer", 100).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].job.id, id);
    assert_eq!(
        again[0].lease.attempt, 1,
        "the deferred attempt was not counted"
    );
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
    if !f.real_time {
        // (A real-time broker would make this a minute's sleep.)
        f.advance(LEASE * 2).await;
    }
    let marker = b.enqueue(job("cset")).await.unwrap().id;
    let got = fetch_some(&f, "cset", 10).await;
    assert_eq!(
        got.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        vec![marker],
        "a cancelled job is not delivered again"
    );
    settle(b, &got[0], ok()).await;
    if let Some(i) = inspect_if_declared(&f) {
        let j = i.get(id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.last_error, Some(reason));
    } else {
        assert!(
            dead_letters(&f, "cset").await.iter().all(|j| j.id != id),
            "a cancel is not a dead letter"
        );
    }
}

/// A permanent failure lands in the dead-letter set (Failed) with its reason, and does not
/// run again by itself.
pub async fn dead_lettering(f: Fixture) {
    let b = &*f.broker;
    let id = b.enqueue(job("dead")).await.unwrap().id;
    let d = fetch_some(&f, "dead", 1).await.pop().unwrap();
    let s = Settlement::Failed {
        error: "payload for kind `test` does not decode".into(),
    };
    assert_eq!(settle(b, &d, s).await, SettleOutcome::Applied);
    let marker = b.enqueue(job("dead")).await.unwrap().id;
    let got = fetch_some(&f, "dead", 10).await;
    assert_eq!(
        got.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        vec![marker],
        "a failed job does not run again by itself"
    );
    settle(b, &got[0], ok()).await;
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = dead_letters(&f, "dead").await;
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dead.iter().map(|j| j.id).collect::<Vec<JobId>>(), vec![id]);
    assert!(dead[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("does not decode"));
    assert!(fetch(b, "dead", 1).await.is_empty());
}

/// The failed jobs of `queue`, as the broker shows them: listed by state where it keeps jobs,
/// peeked at in its dead-letter queue where it counts queues.
pub(crate) async fn dead_letters(f: &Fixture, queue: &str) -> Vec<Job> {
    let b = &*f.broker;
    if let Some(i) = inspect_if_declared(f) {
        return i
            .list(ListFilter {
                state: Some(JobState::Failed),
                queue: Some(queue.into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert!(
        b.capabilities().has(Capability::QueueDepths),
        "a broker must show its dead letters one way or the other"
    );
    b.queue_stats()
        .expect("declared QueueDepths")
        .dead_letters(queue, 100)
        .await
        .unwrap()
}
