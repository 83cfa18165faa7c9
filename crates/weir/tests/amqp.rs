//! Real `weir serve` processes on a real RabbitMQ: two processes share a queue; a SIGKILLed
//! worker's unacked jobs are redelivered and complete. Each job calls a local HTTP server
//! that records its number, so "every job ran" is checked job by job.

mod amqp_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqp_support::*;
use weir::AmqpBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_share_a_queue() {
    const N: u64 = 20_000;
    let prefix = format!("weir-test-{}.", uuid::Uuid::new_v4().simple());
    let url = url_in(&prefix);
    let hits = Arc::new(Mutex::new(Hits::default()));
    let base = hit_server(hits.clone(), Duration::ZERO).await;
    let b = AmqpBroker::new(&url).unwrap();
    enqueue_hits(&b, &base, N).await;
    let one = serve(&url, "32");
    let two = serve(&url, "32");
    wait_for(&hits, N as usize, "all jobs").await;
    let (a, c) = (stop(one), stop(two));
    assert!(a > 0 && c > 0, "both processes worked: {a} and {c}");
    assert!(a + c >= N, "{a} + {c} settled of {N}");
    assert_drained(&b).await;
    b.delete_queues(&["default".into()]).await.unwrap();
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_jobs_are_redelivered() {
    const N: u64 = 5_000;
    let prefix = format!("weir-test-{}.", uuid::Uuid::new_v4().simple());
    let url = url_in(&prefix);
    let hits = Arc::new(Mutex::new(Hits::default()));
    let base = hit_server(hits.clone(), Duration::ZERO).await;
    let b = AmqpBroker::new(&url).unwrap();
    enqueue_hits(&b, &base, N).await;
    let mut victim = serve(&url, "64");
    wait_for(&hits, 1_000, "some progress").await;
    let mut child = victim.0.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no settle, no ack; its deliveries go back
    child.wait().unwrap();
    let at_kill = hits.lock().unwrap().seen.len();
    assert!(
        at_kill < N as usize,
        "the kill came too late to test anything"
    );
    let rescuer = serve(&url, "64");
    wait_for(&hits, N as usize, "all jobs after the kill").await;
    stop(rescuer);
    assert_drained(&b).await;
    let twice = hits.lock().unwrap().requests - N;
    // At-least-once: jobs the victim ran but never acked run again, at most its prefetch.
    assert!(twice <= 64, "{twice} jobs ran twice");
    b.delete_queues(&["default".into()]).await.unwrap();
    b.close().await;
}
