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

fn weir(args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let start = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .env_remove("WEIR_BROKER")
        .env_remove("WEIR_CONFIG")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

/// One-shot commands on RabbitMQ fail fast with one line: a refused login or vhost at once
/// (no retry can fix it), an unreachable server within seconds; a queue that does not exist
/// is named once; a priority RabbitMQ cannot honour is refused.
#[test]
fn one_shot_commands_on_rabbitmq_fail_fast_and_say_why() {
    let good = amqp_url();
    let bad_password = good.replacen("guest:guest", "guest:wrong", 1);
    let (code, _, err, took) = weir(&["--broker", &bad_password, "status"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("ACCESS_REFUSED") && !err.contains("wrong"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let no_vhost = format!("{}/weir-no-such-vhost", good.rsplit_once('/').unwrap().0);
    let (code, _, err, took) = weir(&["--broker", &no_vhost, "status"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("NOT_ALLOWED"), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let (code, _, err, took) = weir(&["--broker", "amqp://guest:guest@127.0.0.1:1/%2f", "status"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(took < Duration::from_secs(8), "{took:?}");

    let url = url_in(&format!("oneshot{}", std::process::id()));
    let (code, out, err, _) = weir(&["--broker", &url, "status", "--queue", "nosuch"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("nosuch"), "{out}");
    assert_eq!(
        err.trim(),
        "no such queue: `nosuch` (nothing was enqueued to it or served from it)"
    );

    let (code, _, err, _) = weir(&["--broker", &url, "enqueue", "noop", "--priority", "5"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("priorit"), "{err}");

    let (code, _, err, _) = weir(&[
        "--broker",
        &url,
        "inspect",
        "01a233dd-5251-71f5-ac34-225d71b2180a",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--store"), "a workflow needs its store: {err}");
}
