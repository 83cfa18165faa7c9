//! What brokers that keep their jobs offer ([`weir_core::Inspect`]): results, lookup by id,
//! counts, manual retry, cancel, purges, unique keys.

use std::time::Duration;

use weir_core::{BrokerError, Clock, JobId, JobState, ListFilter, SettleOutcome, Settlement};

use super::{fetch, fetch_some, fetch_until, inspect, job, ok, settle, state_of, LEASE};
use crate::Fixture;

/// A succeeded job keeps its result and the time it finished.
pub async fn results_are_kept(f: Fixture) {
    let b = &*f.broker;
    let id = b.enqueue(job("res")).await.unwrap().id;
    let d = fetch_some(&f, "res", 1).await.pop().unwrap();
    let result = Some(br#"{"sent":true}"#.to_vec());
    let s = Settlement::Succeeded {
        result: result.clone(),
    };
    assert_eq!(settle(b, &d, s).await, SettleOutcome::Applied);
    let j = inspect(&f).get(id).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Succeeded);
    assert_eq!(j.result, result);
    assert!(j.finished_at.is_some());
}

/// A job is found by id, listed by queue and state, and counted.
pub async fn jobs_are_found_by_id_and_counted(f: Fixture) {
    let b = &*f.broker;
    let i = inspect(&f);
    assert!(i.get(JobId::new()).await.unwrap().is_none());
    for _ in 0..3 {
        b.enqueue(job("ca")).await.unwrap();
    }
    let other = b.enqueue(job("cb")).await.unwrap().id;
    let d = fetch(b, "ca", 1).await.pop().unwrap();
    settle(b, &d, ok()).await;
    fetch(b, "ca", 1).await;
    let c = i.counts().await.unwrap();
    let a = c.iter().find(|q| q.queue == "ca").unwrap();
    assert_eq!((a.pending, a.running, a.succeeded), (1, 1, 1));
    assert_eq!(c.iter().find(|q| q.queue == "cb").unwrap().pending, 1);
    let listed = i
        .list(ListFilter {
            queue: Some("cb".into()),
            state: Some(JobState::Pending),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![other]);
    assert_eq!(state_of(i, d.job.id).await, JobState::Succeeded);
}

/// An operator runs a failed job again (attempts start over) and purges failed jobs; a job
/// in another state is refused with what is wrong.
pub async fn manual_retry_and_purge(f: Fixture) {
    let b = &*f.broker;
    let i = inspect(&f);
    let id = b.enqueue(job("mr")).await.unwrap().id;
    assert!(matches!(
        i.retry(id).await,
        Err(BrokerError::WrongState { .. })
    ));
    let d = fetch_some(&f, "mr", 1).await.pop().unwrap();
    let failed = Settlement::Failed { error: "no".into() };
    settle(b, &d, failed.clone()).await;
    assert!(matches!(
        i.cancel(id).await,
        Err(BrokerError::WrongState { .. })
    ));
    let j = i.retry(id).await.unwrap();
    assert_eq!((j.state, j.attempt), (JobState::Pending, 0));
    let again = fetch_until(&f, "mr", 100).await;
    assert_eq!(again.len(), 1, "a retried job runs again");
    assert_eq!(again[0].lease.attempt, 1, "attempts start over");
    settle(b, &again[0], failed).await;
    assert!(matches!(
        i.purge(JobState::Running, None).await,
        Err(BrokerError::Invalid(_))
    ));
    assert_eq!(i.purge(JobState::Failed, Some("mr")).await.unwrap(), 1);
    assert!(i.get(id).await.unwrap().is_none());
    assert!(matches!(
        i.retry(JobId::new()).await,
        Err(BrokerError::NotFound(_))
    ));
}

/// Cancelling a pending job keeps it from running; cancelling a running one fences its lease.
pub async fn cancel(f: Fixture) {
    let b = &*f.broker;
    let i = inspect(&f);
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

/// Retention: only jobs finished before the cut-off go, and only in the state asked for.
pub async fn purge_by_age(f: Fixture) {
    let i = inspect(&f);
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
