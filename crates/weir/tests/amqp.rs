//! Real `weir serve` processes on a real RabbitMQ: two processes share a queue; a SIGKILLed
//! worker's unacked jobs are redelivered and complete. Each job calls a local HTTP server
//! that records its number, so "every job ran" is checked job by job.

mod amqp_support;

use std::time::Duration;

use amqp_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_share_a_queue() {
    const N: u64 = 20_000;
    let run = start_run(N, Duration::ZERO).await;
    let (url, hits) = (&run.url, &run.hits);
    let one = serve(url, "32");
    let two = serve(url, "32");
    wait_for(hits, N as usize, "all jobs").await;
    let (a, c) = (stop(one), stop(two));
    assert!(a > 0 && c > 0, "both processes worked: {a} and {c}");
    assert!(a + c >= N, "{a} + {c} settled of {N}");
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_jobs_are_redelivered() {
    const N: u64 = 5_000;
    let run = start_run(N, Duration::ZERO).await;
    let (url, hits) = (&run.url, &run.hits);
    let mut victim = serve(url, "64");
    wait_for(hits, 1_000, "some progress").await;
    let mut child = victim.0.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no settle, no ack; its deliveries go back
    child.wait().unwrap();
    let at_kill = hits.lock().unwrap().seen.len();
    assert!(
        at_kill < N as usize,
        "the kill came too late to test anything"
    );
    let rescuer = serve(url, "64");
    wait_for(hits, N as usize, "all jobs after the kill").await;
    stop(rescuer);
    let twice = hits.lock().unwrap().requests - N;
    // At-least-once: jobs the victim ran but never acked run again, at most its prefetch.
    assert!(twice <= 64, "{twice} jobs ran twice");
    run.finish().await;
}
