//! RabbitMQ stops and starts again while `weir serve` works: nothing is lost. A test binary of
//! its own, because restarting RabbitMQ would break any test running beside it.

mod amqp_support;

use std::process::Command;
use std::time::Duration;

use amqp_support::*;

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
    // About 1,600 jobs/s with 16 workers: the run outlasts the restart.
    let run = start_run(N, Duration::from_millis(10)).await;
    let (url, hits) = (&run.url, &run.hits);
    let worker = serve(url, "16");
    wait_for(hits, 1_000, "some progress").await;
    rabbitmqctl(&["stop_app"]);
    let at_stop = hits.lock().unwrap().seen.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    assert!(
        at_stop < N as usize,
        "the restart came too late to test anything"
    );
    wait_for(hits, N as usize, "all jobs after the restart").await;
    stop(worker);
    run.finish().await;
}
