//! RabbitMQ-specific behaviour, against a real RabbitMQ: prefetch following the pool size,
//! dead letters (peeked without removing), unreadable messages, and the delivery limit.

mod common;

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use weir_amqp::AmqpBroker;
use weir_core::{Broker, FetchRequest, JobState, NewJob, Settlement};

fn broker(extra: &str) -> (Arc<AmqpBroker>, common::Cleanup) {
    let prefix = common::prefix();
    let b = Arc::new(AmqpBroker::new(&common::url_in(&prefix, extra)).unwrap());
    (b.clone(), common::Cleanup(b, prefix))
}

fn req(queue: &str, max: usize, wait: Duration) -> FetchRequest {
    FetchRequest {
        queues: vec![queue.to_owned()],
        max,
        lease: Duration::from_secs(30),
        wait,
    }
}

/// Fetches until `n` deliveries came or 5 s passed.
async fn fetch_n(b: &AmqpBroker, queue: &str, n: usize) -> Vec<weir_core::Delivery> {
    let mut got = Vec::new();
    let start = tokio::time::Instant::now();
    while got.len() < n && start.elapsed() < Duration::from_secs(5) {
        got.extend(
            b.fetch(req(queue, n - got.len(), Duration::from_millis(200)))
                .await
                .unwrap(),
        );
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_follows_the_pool_size() {
    let (b, _c) = broker("");
    b.enqueue_many(
        (0..20)
            .map(|_| NewJob::new("k", "{}").queue("pf"))
            .collect(),
    )
    .await
    .unwrap();
    b.set_capacity("pf", 3).await.unwrap();
    let first = fetch_n(&b, "pf", 3).await;
    assert_eq!(first.len(), 3);
    // A consumer never holds more than the pool can run. First a positive signal that
    // RabbitMQ has the consumer and would push more if the prefetch allowed it: the broker's
    // own counts, one consumer and 17 messages still ready (3 out). Then nothing more
    // arrives while the 3 run.
    let stats = b.queue_stats().unwrap();
    let start = tokio::time::Instant::now();
    loop {
        let d = stats.depths(&["pf".into()]).await.unwrap().remove(0);
        if d.consumers == 1 && d.ready == 17 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let more = b
        .fetch(req("pf", 10, Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(more.is_empty(), "prefetch 3 delivered {} more", more.len());
    assert_eq!(b.backlog(&["pf".into()]).await.unwrap(), vec![17]);
    // The pool grows: the prefetch follows.
    b.set_capacity("pf", 8).await.unwrap();
    let next = fetch_n(&b, "pf", 5).await;
    assert_eq!(next.len(), 5);
    let extra = b
        .fetch(req("pf", 10, Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(
        extra.is_empty(),
        "prefetch 8 delivered {} more",
        extra.len()
    );
    // Settling frees room for more.
    let done: Vec<_> = first
        .iter()
        .chain(&next)
        .map(|d| (d.lease, Settlement::Succeeded { result: None }))
        .collect();
    b.settle(done).await.unwrap();
    assert_eq!(fetch_n(&b, "pf", 8).await.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_their_error_and_peeking_removes_nothing() {
    // A delivery limit of 2 on the work queue: the dead queue has none, so peeking it more
    // often than that (each peek returns the message, a failed delivery for a quorum queue)
    // drops nothing.
    let (b, _c) = broker("&delivery_limit=2");
    let stats = b.queue_stats().unwrap();
    let id = b
        .enqueue(NewJob::new("k", "{}").queue("dl"))
        .await
        .unwrap()
        .id;
    let d = fetch_n(&b, "dl", 1).await.pop().unwrap();
    let failed = Settlement::Failed {
        error: "payload does not decode".into(),
    };
    b.settle(vec![(d.lease, failed)]).await.unwrap();
    for _ in 0..6 {
        let dead = stats.dead_letters("dl", 10).await.unwrap();
        assert_eq!(dead.len(), 1, "peeking removes nothing");
        assert_eq!(dead[0].id, id);
        assert_eq!(dead[0].state, JobState::Failed);
        assert_eq!(dead[0].attempt, 1);
        assert_eq!(
            dead[0].last_error.as_deref(),
            Some("payload does not decode")
        );
    }
    // A peek gives the messages back as its channel closes; a quorum queue counts them again
    // once that return is committed.
    let mut depth = stats.depths(&["dl".into()]).await.unwrap().remove(0);
    for _ in 0..50 {
        if depth.dead == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        depth = stats.depths(&["dl".into()]).await.unwrap().remove(0);
    }
    assert_eq!((depth.ready, depth.delayed, depth.dead), (0, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_messages_are_dead_lettered_with_the_reason() {
    let prefix = common::prefix();
    let (b, _c) = {
        let b = Arc::new(AmqpBroker::new(&common::url_in(&prefix, "")).unwrap());
        (b.clone(), common::Cleanup(b, prefix.clone()))
    };
    b.connect(&["junk"]).await.unwrap();
    // Another producer publishes something weir did not write.
    let conn = Connection::connect(&common::amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    // Confirmed before the readable job is enqueued, so the junk is ahead of it in the queue:
    // unconfirmed, it could land behind the job, which then holds the only prefetch slot.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        format!("{prefix}junk").as_str().into(),
        BasicPublishOptions::default(),
        b"not a job",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let ok = b
        .enqueue(NewJob::new("k", "{}").queue("junk"))
        .await
        .unwrap()
        .id;
    let got = fetch_n(&b, "junk", 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.id, ok, "the readable job still runs");
    b.settle(vec![(got[0].lease, Settlement::Succeeded { result: None })])
        .await
        .unwrap();
    let stats = b.queue_stats().unwrap();
    let mut dead = Vec::new();
    for _ in 0..50 {
        dead = stats.dead_letters("junk", 10).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 1, "the unreadable message is kept, not dropped");
    assert_eq!(dead[0].payload, b"not a job");
    let why = dead[0].last_error.as_deref().unwrap();
    assert!(why.contains("no message-id"), "{why}");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_killing_workers_ends_in_the_dead_letter_queue() {
    let prefix = common::prefix();
    let url = common::url_in(&prefix, "&delivery_limit=2");
    let keeper = Arc::new(AmqpBroker::new(&url).unwrap());
    let _c = common::Cleanup(keeper.clone(), prefix);
    let id = keeper
        .enqueue(NewJob::new("k", "{}").queue("poison"))
        .await
        .unwrap()
        .id;
    // Each "worker" takes the job and dies without settling (its connection closes).
    let mut rounds = 0;
    let stats = keeper.queue_stats().unwrap();
    loop {
        let worker = AmqpBroker::new(&url).unwrap();
        let got = fetch_n(&worker, "poison", 1).await;
        worker.close().await;
        if got.is_empty() {
            break;
        }
        assert_eq!(got[0].job.id, id);
        assert_eq!(got[0].job.attempt, rounds + 1, "each lost delivery counts");
        rounds += 1;
        assert!(rounds <= 5, "the delivery limit never stopped it");
    }
    assert_eq!(rounds, 3, "delivered delivery_limit + 1 times");
    let dead = stats.dead_letters("poison", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    let why = dead[0].last_error.as_deref().unwrap();
    assert!(why.contains("delivery limit"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_keys_and_priorities_are_refused_not_ignored() {
    let (b, _c) = broker("");
    let e = b
        .enqueue(NewJob::new("k", "{}").queue("u").unique("once"))
        .await
        .unwrap_err();
    assert!(matches!(e, weir_core::BrokerError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("unique keys"), "{e}");
    let e = b
        .enqueue(NewJob::new("k", "{}").queue("u").priority(5))
        .await
        .unwrap_err();
    assert!(matches!(e, weir_core::BrokerError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("priorities"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_work_too() {
    let (b, _c) = broker("&queue_type=classic");
    let id = b
        .enqueue(NewJob::new("k", "{}").queue("cl"))
        .await
        .unwrap()
        .id;
    let d = fetch_n(&b, "cl", 1).await.pop().unwrap();
    assert_eq!(d.job.id, id);
    let retry = Settlement::Retry {
        run_at: weir_core::Timestamp::now().plus(Duration::from_millis(300)),
        error: "again".into(),
    };
    b.settle(vec![(d.lease, retry)]).await.unwrap();
    let again = fetch_n(&b, "cl", 1).await.pop().unwrap();
    assert_eq!((again.job.id, again.job.attempt), (id, 2));
    assert_eq!(again.job.last_error.as_deref(), Some("again"));
}

/// Dead letters are replayed to the work queue with a fresh set of attempts, and purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_and_purged() {
    let (b, _c) = broker("");
    let stats = b.queue_stats().unwrap();
    let id = b
        .enqueue(NewJob::new("k", r#"{"n":1}"#).queue("rp").max_attempts(1))
        .await
        .unwrap()
        .id;
    let fail = |d: &weir_core::Delivery| (d.lease, Settlement::Failed { error: "no".into() });
    let d = fetch_n(&b, "rp", 1).await.pop().unwrap();
    b.settle(vec![fail(&d)]).await.unwrap();
    assert_eq!(b.replay_dead("rp", 10).await.unwrap(), 1);
    let again = fetch_n(&b, "rp", 1)
        .await
        .pop()
        .expect("the replayed job runs");
    assert_eq!(
        (again.job.id, again.job.payload.as_slice()),
        (id, br#"{"n":1}"#.as_slice())
    );
    assert_eq!(
        (again.job.attempt, again.job.max_attempts),
        (2, 2),
        "a fresh set of attempts on top of the one spent"
    );
    b.settle(vec![fail(&again)]).await.unwrap();
    // Dead again; cleared for good.
    let mut dead = 0;
    for _ in 0..50 {
        dead = stats.depths(&["rp".into()]).await.unwrap()[0].dead;
        if dead == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead, 1);
    assert_eq!(b.purge_dead("rp").await.unwrap(), 1);
    assert_eq!(stats.depths(&["rp".into()]).await.unwrap()[0].dead, 0);
    assert_eq!(
        b.replay_dead("rp", 10).await.unwrap(),
        0,
        "nothing left to replay"
    );
}

/// Classic queues keep no delivery count: a job that kills every worker that takes it must
/// still run out of attempts and end in the dead-letter queue, not loop for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_count_attempts_lost_to_dying_workers() {
    let prefix = common::prefix();
    let url = common::url_in(&prefix, "&queue_type=classic");
    let keeper = Arc::new(AmqpBroker::new(&url).unwrap());
    let _c = common::Cleanup(keeper.clone(), prefix);
    let id = keeper
        .enqueue(NewJob::new("k", "{}").queue("crash").max_attempts(3))
        .await
        .unwrap()
        .id;
    let mut attempts = Vec::new();
    loop {
        let worker = AmqpBroker::new(&url).unwrap();
        let got = fetch_n(&worker, "crash", 1).await;
        worker.close().await;
        let Some(d) = got.into_iter().next() else {
            break;
        };
        assert_eq!(d.job.id, id);
        attempts.push(d.job.attempt);
        assert!(
            attempts.len() <= 6,
            "never ran out of attempts: {attempts:?}"
        );
    }
    assert_eq!(attempts, vec![1, 2, 3], "each lost delivery counts once");
    let dead = keeper
        .queue_stats()
        .unwrap()
        .dead_letters("crash", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let why = dead[0].last_error.as_deref().unwrap();
    assert!(why.contains("attempts exhausted"), "{why}");
}

/// Delays wait in plain `.wait.N` tiers that the workers serving the queue move: a delayed
/// job is counted as delayed while it waits (nothing holds it out of sight), arrives no
/// earlier than due, and a retry's copy carries no delivery count of the tier into the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_are_moved_by_the_workers_and_counted_while_they_wait() {
    let (b, _c) = broker("");
    let stats = b.queue_stats().unwrap();
    // Fetches (which keeps the tiers moving) until the job is back; while it is well before
    // due, it must be counted as delayed: in every sample but at most one, which may fall in
    // the instant a worker holds the head to look at it (or to move it on).
    let wait_for = |start: i64, wait_ms: i64| {
        let (b, stats) = (b.clone(), stats);
        async move {
            let mut missed = Vec::new();
            loop {
                let depth = stats.depths(&["later".into()]).await.unwrap().remove(0);
                let got = b
                    .fetch(req("later", 1, Duration::from_millis(100)))
                    .await
                    .unwrap();
                let since = weir_core::Timestamp::now().as_millis() - start;
                if let Some(d) = got.into_iter().next() {
                    assert!(since >= wait_ms - 60, "back after {since} ms of {wait_ms}");
                    return d;
                }
                if since < wait_ms - 300 && depth.delayed != 1 {
                    missed.push((since, depth));
                    assert!(missed.len() <= 1, "not counted as delayed: {missed:?}");
                }
                assert!(since < 10_000, "the delayed job never came back");
            }
        }
    };
    let start = weir_core::Timestamp::now().as_millis();
    let id = b
        .enqueue(
            NewJob::new("k", "{}")
                .queue("later")
                .delay(Duration::from_millis(1500)),
        )
        .await
        .unwrap()
        .id;
    let d = wait_for(start, 1500).await;
    assert_eq!((d.job.id, d.job.attempt), (id, 1));
    let start = weir_core::Timestamp::now();
    let retry = Settlement::Retry {
        run_at: start.plus(Duration::from_millis(1200)),
        error: "again".into(),
    };
    b.settle(vec![(d.lease, retry)]).await.unwrap();
    let again = wait_for(start.as_millis(), 1200).await;
    assert_eq!((again.job.id, again.job.attempt), (id, 2));
    assert_eq!(again.job.last_error.as_deref(), Some("again"));
}

/// The trace id crosses RabbitMQ twice over: as the correlation id weir reads back, and as a
/// W3C `traceparent` header that other tools read; a retry's copy keeps both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_id_travels_as_correlation_id_and_traceparent() {
    let prefix = common::prefix();
    let b = Arc::new(AmqpBroker::new(&common::url_in(&prefix, "")).unwrap());
    let _c = common::Cleanup(b.clone(), prefix.clone());
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    b.enqueue(NewJob::new("k", "{}").queue("traced").trace_id(trace))
        .await
        .unwrap();
    // Read the raw message as another tool would (and put it back).
    let conn = Connection::connect(&common::amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let got = ch
        .basic_get(
            format!("{prefix}traced").as_str().into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("the message is in the work queue");
    let props = &got.delivery.properties;
    assert_eq!(props.correlation_id().as_ref().unwrap().as_str(), trace);
    let tp = match props.headers().as_ref().unwrap().inner().get("traceparent") {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("no traceparent: {other:?}"),
    };
    assert!(
        tp.starts_with(&format!("00-{trace}-")) && tp.ends_with("-01"),
        "{tp}"
    );
    let _ = ch.close(200, "peeked".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    // Through a retry (a delay tier and back) the job keeps its trace.
    let d = fetch_n(&b, "traced", 1).await.pop().unwrap();
    assert_eq!(d.job.trace_id, trace);
    let retry = Settlement::Retry {
        run_at: weir_core::Timestamp::now().plus(Duration::from_millis(300)),
        error: "again".into(),
    };
    b.settle(vec![(d.lease, retry)]).await.unwrap();
    let again = fetch_n(&b, "traced", 1).await.pop().unwrap();
    // (The peek above counts as a delivery on a quorum queue, so attempts start at 2 here.)
    assert_eq!(
        (again.job.attempt, again.job.trace_id.as_str()),
        (d.job.attempt + 1, trace)
    );
}

/// A worker looks at a delay tier's head and gives it back while it is not due: the head must
/// keep its place, or a job due first waits behind later ones. (With quorum tiers RabbitMQ
/// puts a returned message at the back: here B came back 0.45 s late, behind C.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_tier_keeps_its_order_while_its_head_waits() {
    let (b, _c) = broker("");
    // A worker serves the queue (so its tiers are moved) before anything is delayed.
    assert!(b
        .fetch(req("order", 1, Duration::from_millis(50)))
        .await
        .unwrap()
        .is_empty());
    let start = tokio::time::Instant::now();
    let delayed = || {
        NewJob::new("k", "{}")
            .queue("order")
            .delay(Duration::from_millis(1_000))
    };
    // A, then B 0.5 s later, then C 0.45 s after B: all in the 1 s tier. When A leaves, B is
    // the head and not due, and C waits behind it.
    let a = b.enqueue(delayed()).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_id = b.enqueue(delayed()).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(450)).await;
    b.enqueue(delayed()).await.unwrap();
    let mut came = Vec::new();
    while came.len() < 2 {
        for d in b
            .fetch(req("order", 1, Duration::from_millis(20)))
            .await
            .unwrap()
        {
            came.push((d.job.id, start.elapsed()));
            b.settle(vec![(d.lease, Settlement::Succeeded { result: None })])
                .await
                .unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{came:?}");
    }
    assert_eq!(
        (came[0].0, came[1].0),
        (a, b_id),
        "in the order they are due"
    );
    assert!(
        came[1].1 < Duration::from_millis(1_750),
        "B, due at 1.5 s, came back at {:?}",
        came[1].1
    );
}

/// Closing a broker gives back what it prefetched and no worker fetched without spending an
/// attempt: a graceful restart must not dead-letter a `max_attempts 1` job that never ran
/// (classic queues count a redelivery as a lost attempt, quorum queues a delivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_gives_back_prefetched_jobs_unspent() {
    for queue_type in ["classic", "quorum"] {
        let prefix = common::prefix();
        let url = common::url_in(&prefix, &format!("&queue_type={queue_type}"));
        let keeper = Arc::new(AmqpBroker::new(&url).unwrap());
        let _c = common::Cleanup(keeper.clone(), prefix);
        let jobs: Vec<NewJob> = (0..6)
            .map(|i| NewJob::new("k", format!("{i}")).queue("q").max_attempts(1))
            .collect();
        keeper.enqueue_many(jobs).await.unwrap();
        let worker = AmqpBroker::new(&url).unwrap();
        worker.set_capacity("q", 6).await.unwrap();
        let first = fetch_n(&worker, "q", 1).await;
        assert_eq!(first.len(), 1, "{queue_type}");
        let d = &first[0];
        worker
            .settle(vec![(d.lease, Settlement::Succeeded { result: None })])
            .await
            .unwrap();
        // The other five arrive in the prefetch buffer, unfetched.
        tokio::time::sleep(Duration::from_millis(300)).await;
        worker.close().await;

        let next = AmqpBroker::new(&url).unwrap();
        let rest = fetch_n(&next, "q", 5).await;
        let attempts: Vec<u32> = rest.iter().map(|d| d.job.attempt).collect();
        assert_eq!(attempts, vec![1; 5], "{queue_type}: none spent, none lost");
        next.settle(
            rest.iter()
                .map(|d| (d.lease, Settlement::Succeeded { result: None }))
                .collect(),
        )
        .await
        .unwrap();
        next.close().await;
        let dead = keeper
            .queue_stats()
            .unwrap()
            .dead_letters("q", 10)
            .await
            .unwrap();
        assert!(dead.is_empty(), "{queue_type}: {dead:?}");
    }
}
