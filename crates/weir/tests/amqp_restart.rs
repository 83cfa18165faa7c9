//! RabbitMQ stops and starts again while `weir serve` works: nothing is lost. A test binary of
//! its own, because restarting RabbitMQ would break any test running beside it.

mod amqp_support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqp_support::*;
use weir::AmqpBroker;

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RabbitMQ stops and starts again mid-run: the worker reconnects by itself and every job
/// completes. (It restarts the local RabbitMQ: set WEIR_TEST_NO_RESTART to skip on a shared
/// server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run_loses_nothing() {
    if std::env::var_os("WEIR_TEST_NO_RESTART").is_some() {
        eprintln!("skipped broker_restart_mid_run_loses_nothing: WEIR_TEST_NO_RESTART is set");
        return;
    }
    const N: u64 = 8_000;
    let prefix = format!("weir-test-{}.", uuid::Uuid::new_v4().simple());
    let url = url_in(&prefix);
    let hits = Arc::new(Mutex::new(Hits::default()));
    // About 1,600 jobs/s with 16 workers: the run outlasts the restart.
    let base = hit_server(hits.clone(), Duration::from_millis(10)).await;
    let b = AmqpBroker::new(&url).unwrap();
    enqueue_hits(&b, &base, N).await;
    let worker = serve(&url, "16");
    wait_for(&hits, 1_000, "some progress").await;
    rabbitmqctl(&["stop_app"]);
    let at_stop = hits.lock().unwrap().seen.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    assert!(
        at_stop < N as usize,
        "the restart came too late to test anything"
    );
    wait_for(&hits, N as usize, "all jobs after the restart").await;
    stop(worker);
    assert_drained(&b).await;
    b.delete_queues(&["default".into()]).await.unwrap();
    b.close().await;
}
