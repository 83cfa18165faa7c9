//! Leases: expiry, fencing and heartbeats.

use std::time::Duration;

use weir_core::{Capability, FetchRequest, JobId, JobState, Member, SettleOutcome};

use super::{fetch, fetch_until, inspect_if_declared, job, ok, req, settle, LEASE};
use crate::Fixture;

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
    let second = fetch_until(&f, "lease", 100).await;
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
    if let Some(i) = inspect_if_declared(&f) {
        let j = i.get(first.job.id).await.unwrap().unwrap();
        assert_eq!((j.state, j.attempt), (JobState::Succeeded, 2));
    }
}

/// A job whose every attempt loses its lease ends Failed (a poison job cannot loop forever),
/// with the reason: in the broker's record, or in its dead letters.
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
    // Look until the broker has it as failed; it must never be delivered again meanwhile.
    let mut error = None;
    for _ in 0..200 {
        assert!(
            fetch(b, "poison", 1).await.is_empty(),
            "delivered again after its last attempt"
        );
        if let Some(i) = inspect_if_declared(&f) {
            let j = i.get(id).await.unwrap().unwrap();
            if j.state == JobState::Failed {
                error = j.last_error;
            }
        } else if b.capabilities().has(Capability::QueueDepths) {
            let stats = b.queue_stats().expect("declared QueueDepths");
            let dead = stats.dead_letters("poison", 10).await.unwrap();
            if let Some(j) = dead.into_iter().find(|j| j.id == id) {
                error = j.last_error;
            }
        } else {
            panic!("a broker that declares neither Inspect nor QueueDepths cannot show this");
        }
        if error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let error = error.expect("the job ended failed");
    assert!(error.contains("lease expired"), "{error}");
}

/// A workflow member whose last attempt loses its lease is not failed by the broker behind
/// the workflow's back: it is delivered once more, with `attempt > max_attempts`, for the
/// worker to fail it through the workflow's advance (and settling it Failed then applies).
pub async fn lost_member_comes_back_past_its_attempts(f: Fixture) {
    let b = &*f.broker;
    let m = Member {
        workflow: JobId::new(),
        index: 0,
    };
    let id = b
        .enqueue(job("lostmember").member(m).max_attempts(1))
        .await
        .unwrap()
        .id;
    let first = b
        .fetch(FetchRequest {
            lease: Duration::from_secs(1),
            wait: f.delivery_wait,
            ..req("lostmember", 1)
        })
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    f.advance(Duration::from_secs(3)).await;
    let again = fetch_until(&f, "lostmember", 100).await;
    assert_eq!(again.len(), 1, "the member is delivered past its attempts");
    let d = &again[0];
    assert_eq!((d.job.id, d.job.member), (id, Some(m)));
    assert!(
        d.job.attempt > d.job.max_attempts,
        "attempt {} of {}",
        d.job.attempt,
        d.job.max_attempts
    );
    let failed = weir_core::Settlement::Failed {
        error: "attempts exhausted".into(),
    };
    assert_eq!(settle(b, d, failed).await, SettleOutcome::Applied);
    if let Some(i) = inspect_if_declared(&f) {
        let j = i.get(id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Failed);
    }
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
