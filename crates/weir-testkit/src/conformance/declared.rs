//! What a broker declares about itself: that it does what it declares, refuses what it
//! does not, and refuses bad jobs the same way as every other broker.

use std::time::Duration;

use weir_core::{
    BrokerError, Capability, Clock, InvalidJob, NewJob, Timestamp, WorkerStatus, MAX_DURATION,
};

use super::{fetch, fetch_some, fetch_until, job, ok, settle};
use crate::Fixture;

/// Ready jobs come out by priority (higher first), then by `run_at` (earlier first).
pub async fn ordering_by_priority_then_run_at(f: Fixture) {
    let b = &*f.broker;
    let now = f.clock.now();
    let t = |ms: i64| Timestamp(now.0 - 10_000 + ms);
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
    // A broker that counts asynchronously (RabbitMQ) gets a moment to see the enqueues.
    let mut got = Vec::new();
    for _ in 0..100 {
        got = b.backlog(&queues).await.unwrap();
        if got == [3, 0] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, vec![3, 0]);
    let d = fetch_some(&f, "bl", 1).await;
    assert_eq!(d.len(), 1);
    for _ in 0..100 {
        got = b.backlog(&queues).await.unwrap();
        if got[0] <= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A push broker may have moved more than the one fetched to this consumer's buffer;
    // either way the backlog fell by at least the one that is running.
    assert!(got[0] <= 2, "{got:?}");
    settle(b, &d[0], ok()).await;
}

/// Depths and dead letters of queues, for brokers that cannot find single jobs.
pub async fn queue_depths_and_dead_letters(f: Fixture) {
    let b = &*f.broker;
    let stats = b.queue_stats().expect("declared QueueDepths");
    b.enqueue(job("qd").delay(Duration::from_secs(600)))
        .await
        .unwrap();
    b.enqueue(job("qd")).await.unwrap();
    let d = fetch_some(&f, "qd", 1).await.pop().unwrap();
    settle(
        b,
        &d,
        weir_core::Settlement::Failed {
            error: "gone bad".into(),
        },
    )
    .await;
    let mut depth = None;
    for _ in 0..100 {
        let got = stats.depths(&["qd".into()]).await.unwrap().remove(0);
        if got.dead == 1 && got.delayed == 1 {
            depth = Some(got);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let depth = depth.expect("one delayed, one dead");
    assert_eq!((depth.queue.as_str(), depth.ready), ("qd", 0));
    let dead = stats.dead_letters("qd", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, d.job.id);
    assert_eq!(dead[0].last_error.as_deref(), Some("gone bad"));
    assert_eq!(
        stats.dead_letters("qd", 10).await.unwrap().len(),
        1,
        "looking does not remove"
    );
    let none = stats.depths(&["no-such-queue".into()]).await.unwrap();
    assert_eq!((none[0].ready, none[0].dead), (0, 0));
}

/// Worker reports are kept, one per worker and queue, newest first; a retired worker's go.
pub async fn worker_reports(f: Fixture) {
    let b = &*f.broker;
    let i = b
        .inspect()
        .expect("worker reports are read through Inspect");
    let report = |size: u64, at: i64| WorkerStatus {
        worker: "host:1".into(),
        queue: "wq".into(),
        size,
        busy: 1,
        last_decision: Some("grew".into()),
        updated_at: Timestamp(at),
    };
    b.report(report(2, 1_000)).await.unwrap();
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
    b.retire("host:2").await.unwrap();
    let w = i.workers().await.unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].worker, "host:1");
}

/// What a broker declares, it offers, and what it does not, it refuses instead of faking:
/// a unique key without [`Capability::UniqueKeys`] and a priority without
/// [`Capability::Priorities`] are errors, and nothing is stored.
pub async fn capabilities_are_declared_honestly(f: Fixture) {
    let b = &*f.broker;
    let caps = b.capabilities();
    assert_eq!(
        b.inspect().is_some(),
        caps.has(Capability::Inspect),
        "inspect() is offered exactly when Inspect is declared ({caps:?})"
    );
    assert_eq!(
        b.queue_stats().is_some(),
        caps.has(Capability::QueueDepths),
        "queue_stats() is offered exactly when QueueDepths is declared ({caps:?})"
    );
    fn refused<T: std::fmt::Debug>(r: Result<T, BrokerError>, what: &str) {
        match r {
            Err(BrokerError::Unsupported(_)) => {}
            other => panic!("{what} without the capability: {other:?}"),
        }
    }
    if !caps.has(Capability::UniqueKeys) {
        refused(
            b.enqueue(job("caps").unique("k")).await,
            "a unique key accepted",
        );
    }
    if !caps.has(Capability::Priorities) {
        refused(
            b.enqueue(job("caps").priority(5)).await,
            "a priority accepted",
        );
        refused(
            b.enqueue_many(vec![job("caps"), job("caps").priority(-1)])
                .await,
            "a priority accepted in a batch",
        );
    }
    if !caps.has(Capability::Backlog) {
        refused(b.backlog(&["caps".into()]).await, "a backlog counted");
    }
    // Whatever was refused stored nothing: the only job delivered is this one.
    let marker = b.enqueue(job("caps")).await.unwrap().id;
    let got = fetch_some(&f, "caps", 10).await;
    assert_eq!(
        got.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        vec![marker]
    );
    settle(b, &got[0], ok()).await;
}

/// Every broker refuses the same bad jobs with the same error, naming the job's index in the
/// batch, and stores none of the batch.
pub async fn invalid_jobs_are_refused_alike(f: Fixture) {
    let b = &*f.broker;
    let max = b.job_limits().max_payload;
    let no_attempts = {
        let mut j = job("inv");
        j.max_attempts = 0;
        j
    };
    type Expected = fn(&InvalidJob) -> bool;
    let cases: Vec<(NewJob, Expected)> = vec![
        (NewJob::new("", "{}").queue("inv"), |e| {
            *e == InvalidJob::EmptyKind
        }),
        (NewJob::new("k".repeat(256), "{}").queue("inv"), |e| {
            matches!(e, InvalidJob::KindTooLong { len: 256, .. })
        }),
        (NewJob::new("€".repeat(100), "{}").queue("inv"), |e| {
            matches!(e, InvalidJob::KindTooLong { len: 300, .. })
        }),
        (job(""), |e| matches!(e, InvalidJob::Queue(_))),
        (job("amq.inv"), |e| matches!(e, InvalidJob::Queue(_))),
        (job("inv.dead"), |e| matches!(e, InvalidJob::Queue(_))),
        (job("inv").delay(MAX_DURATION * 2), |e| {
            matches!(e, InvalidJob::Duration { what: "delay", .. })
        }),
        (job("inv").timeout(Duration::ZERO), |e| {
            matches!(
                e,
                InvalidJob::Duration {
                    what: "timeout",
                    ..
                }
            )
        }),
        (no_attempts, |e| *e == InvalidJob::NoAttempts),
        (NewJob::new("test", "{").queue("inv"), |e| {
            matches!(e, InvalidJob::PayloadNotJson { .. })
        }),
        (
            NewJob::new("test", format!("\"{}\"", "x".repeat(max))).queue("inv"),
            |e| matches!(e, InvalidJob::PayloadTooLarge { .. }),
        ),
        (job("inv").trace_id("not a trace id"), |e| {
            *e == InvalidJob::TraceId
        }),
    ];
    for (bad, expected) in cases {
        let what = format!("{:?}", InvalidCase(&bad));
        match b.enqueue_many(vec![job("inv"), bad]).await {
            Err(BrokerError::InvalidJob { index: 1, error }) => {
                assert!(expected(&error), "{what}: refused with {error:?}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // None of those batches stored its good first job: only this marker is delivered.
    let marker = b.enqueue(job("inv")).await.unwrap().id;
    let got = fetch_some(&f, "inv", 10).await;
    assert_eq!(
        got.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        vec![marker]
    );
    settle(b, &got[0], ok()).await;
    assert!(fetch_until(&f, "inv", 3).await.is_empty());
}

/// A short description of a bad job for a failure message (its payload may be 16 MiB).
struct InvalidCase<'a>(&'a NewJob);

impl std::fmt::Debug for InvalidCase<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let j = self.0;
        let kind: String = j.kind.chars().take(12).collect();
        write!(
            f,
            "kind `{kind}` queue `{}` payload {} bytes",
            j.queue,
            j.payload.len()
        )
    }
}
