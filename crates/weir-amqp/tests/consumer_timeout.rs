//! RabbitMQ's `consumer_timeout` against a real server: a delivery left unacked past it makes
//! the server close the channel. weir must then treat the lease as lost (the heartbeat says
//! so, so the runtime stops the attempt), refuse the late settle, and deliver the job again.
//! A test binary of its own: it lowers the server-wide timeout for its run (RabbitMQ checks
//! it about once a minute, so this takes a minute or two) and puts it back afterwards. It is
//! `#[ignore]`d so the test command does not wait for it; CI runs it with `--ignored`
//! (`cargo test -p weir-amqp --test consumer_timeout -- --ignored`).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use weir_amqp::AmqpBroker;
use weir_core::{Broker, FetchRequest, NewJob, SettleOutcome, Settlement};

fn rabbitmqctl_eval(expr: &str) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["eval", expr])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl eval {expr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Puts the server's `consumer_timeout` back when dropped.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        rabbitmqctl_eval(&format!(
            "application:set_env(rabbit, consumer_timeout, {}).",
            self.0
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "waits a minute for RabbitMQ's consumer-timeout check; .ci/run runs it beside the loom models"]
async fn a_delivery_past_the_consumer_timeout_loses_its_lease_and_runs_again() {
    // `{ok,1800000}` by default.
    let before = rabbitmqctl_eval("application:get_env(rabbit, consumer_timeout).");
    let value = before
        .trim_start_matches("{ok,")
        .trim_end_matches('}')
        .to_owned();
    assert!(value.parse::<u64>().is_ok(), "consumer_timeout: {before}");
    let _restore = Restore(value);
    rabbitmqctl_eval("application:set_env(rabbit, consumer_timeout, 2000).");

    let prefix = common::prefix();
    let b = Arc::new(AmqpBroker::new(&common::url_in(&prefix, "")).unwrap());
    let _cleanup = common::Cleanup(b.clone(), prefix);
    let id = b
        .enqueue(NewJob::new("k", "{}").queue("ct"))
        .await
        .unwrap()
        .id;
    let req = |wait| FetchRequest {
        queues: vec!["ct".into()],
        max: 1,
        lease: Duration::from_secs(600),
        wait,
    };
    let first = b.fetch(req(Duration::from_secs(10))).await.unwrap();
    assert_eq!(first.len(), 1);
    let first = &first[0];
    // Keep weir's own lease alive, as a worker's heartbeat does, until the server's timeout
    // closes the channel: then the heartbeat reports the lease lost.
    let start = std::time::Instant::now();
    loop {
        let alive = b
            .heartbeat(&[first.lease], Duration::from_secs(600))
            .await
            .unwrap();
        if alive == vec![false] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the server never timed the delivery out"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The job runs again; the first attempt's settle is refused.
    let again = b.fetch(req(Duration::from_secs(30))).await.unwrap();
    assert_eq!(again.len(), 1, "the job was delivered again");
    assert_eq!(again[0].job.id, id);
    let late = b
        .settle(vec![(first.lease, Settlement::Succeeded { result: None })])
        .await
        .unwrap();
    assert_eq!(
        late,
        vec![SettleOutcome::Stale],
        "the late settle is refused"
    );
    let ok = b
        .settle(vec![(
            again[0].lease,
            Settlement::Succeeded { result: None },
        )])
        .await
        .unwrap();
    assert_eq!(ok, vec![SettleOutcome::Applied]);
}
