//! What brokers that keep their jobs offer ([`weir_core::Inspect`]): results, lookup by id,
//! counts, manual retry, cancel, purges, unique keys.

use std::time::Duration;

use weir_core::{
    BrokerError, Clock, FetchRequest, JobId, JobState, ListFilter, SettleOutcome, Settlement,
};

use super::{fetch, fetch_some, fetch_until, inspect, job, ok, req, settle, state_of, LEASE};
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
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![other]);
    assert_eq!(state_of(i, d.job.id).await, JobState::Succeeded);
}

/// An operator runs a failed job again (with a fresh set of attempts on top of those spent:
/// the attempt count never goes back, so it keeps fencing old leases) and purges failed
/// jobs; a job in another state is refused with what is wrong.
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
    assert_eq!(
        (j.state, j.attempt, j.max_attempts),
        (JobState::Pending, 1, 1 + d.job.max_attempts),
        "a fresh set of attempts"
    );
    let again = fetch_until(&f, "mr", 100).await;
    assert_eq!(again.len(), 1, "a retried job runs again");
    assert_eq!(again[0].lease.attempt, 2, "the count goes on");
    assert_eq!(
        b.heartbeat(&[d.lease], LEASE).await.unwrap(),
        vec![false],
        "the first attempt's lease stays fenced off"
    );
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

/// A worker whose lease expired on the last attempt cannot touch the job once an operator
/// retried it and it runs again, even at the same attempt number it would have had if the
/// count started over (it does not).
pub async fn manual_retry_fences_the_stale_lease(f: Fixture) {
    let b = &*f.broker;
    let i = inspect(&f);
    let id = b.enqueue(job("mrf").max_attempts(1)).await.unwrap().id;
    let stale = b
        .fetch(FetchRequest {
            lease: Duration::from_secs(1),
            wait: f.delivery_wait,
            ..req("mrf", 1)
        })
        .await
        .unwrap()
        .pop()
        .unwrap();
    f.advance(Duration::from_secs(3)).await;
    // The reaper fails it (its only attempt lost its lease); the operator retries it.
    let mut retried = None;
    for _ in 0..200 {
        assert!(fetch(b, "mrf", 1).await.is_empty());
        if i.get(id).await.unwrap().unwrap().state == JobState::Failed {
            retried = Some(i.retry(id).await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(retried.is_some(), "the lost attempt failed the job");
    let fresh = fetch_until(&f, "mrf", 100).await.pop().unwrap();
    assert_eq!(fresh.job.id, id);
    assert_ne!(fresh.lease, stale.lease);
    assert_eq!(
        b.heartbeat(&[stale.lease, fresh.lease], LEASE)
            .await
            .unwrap(),
        vec![false, true]
    );
    assert_eq!(settle(b, &stale, ok()).await, SettleOutcome::Stale);
    assert_eq!(settle(b, &fresh, ok()).await, SettleOutcome::Applied);
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

/// Searching by every condition, paging with the cursor until `next` is `None` (each job
/// exactly once, newest first), and deleting one finished job by id.
pub async fn search_and_delete(f: Fixture) {
    let b = &*f.broker;
    let i = inspect(&f);
    let mut ids = Vec::new();
    for n in 0..7 {
        let kind = if n % 2 == 0 { "even" } else { "odd" };
        let payload = format!(r#"{{"n":{n},"tag":"needle-{n}"}}"#);
        ids.push(
            b.enqueue(weir_core::NewJob::new(kind, payload).queue("srch"))
                .await
                .unwrap()
                .id,
        );
    }
    b.enqueue(job("other")).await.unwrap();
    let all = |filter: ListFilter| async move {
        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let page = i.search(filter.clone(), cursor.as_deref()).await.unwrap();
            got.extend(page.jobs.into_iter().map(|j| j.id));
            match page.next {
                Some(n) => cursor = Some(n),
                None => return got,
            }
        }
        panic!("the search never ended");
    };
    // Pages of two: all seven of the queue, each once, newest first.
    let paged = all(ListFilter {
        queue: Some("srch".into()),
        limit: 2,
        ..Default::default()
    })
    .await;
    let newest_first: Vec<JobId> = ids.iter().rev().copied().collect();
    assert_eq!(paged, newest_first);
    let odd = all(ListFilter {
        queue: Some("srch".into()),
        kind: Some("odd".into()),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(odd, vec![ids[5], ids[3], ids[1]]);
    let text = all(ListFilter {
        text: Some("needle-4".into()),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(text, vec![ids[4]], "text in the payload");
    let none = all(ListFilter {
        until: Some(weir_core::Timestamp(0)),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert!(none.is_empty(), "nothing was created before 1970");
    let since = all(ListFilter {
        since: Some(f.clock.now().plus(Duration::from_secs(3600))),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert!(since.is_empty(), "nothing was created in the future");

    // A failed job is found by its error text, and deleted; a pending one is not deleted.
    let d = fetch_some(&f, "other", 1).await.pop().unwrap();
    let failed = Settlement::Failed {
        error: "disk quota exceeded".into(),
    };
    assert_eq!(settle(b, &d, failed).await, SettleOutcome::Applied);
    let by_error = all(ListFilter {
        text: Some("quota".into()),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(by_error, vec![d.job.id], "text in the last error");
    let gone = i.delete(d.job.id).await.unwrap();
    assert_eq!((gone.id, gone.state), (d.job.id, JobState::Failed));
    assert!(i.get(d.job.id).await.unwrap().is_none());
    assert!(matches!(
        i.delete(d.job.id).await,
        Err(BrokerError::NotFound(_))
    ));
    assert!(matches!(
        i.delete(ids[0]).await,
        Err(BrokerError::WrongState {
            state: JobState::Pending,
            ..
        })
    ));
    assert!(
        i.get(ids[0]).await.unwrap().is_some(),
        "a refused delete deletes nothing"
    );
    // A new job after the delete never reuses anything of the deleted one.
    let after = b.enqueue(job("other")).await.unwrap().id;
    assert_eq!(i.get(after).await.unwrap().unwrap().queue, "other");
}
