//! Retries and delays are at-least-once through a RabbitMQ restart: a burst of retries is
//! waiting in the delay tiers (some being moved by the worker at that moment) when the server
//! stops; once it is back, every job comes back, none lost.
//! A test binary of its own, `#[ignore]`d: it restarts the shared RabbitMQ, which would break
//! any other test running at the time. CI runs it beside the loom models with `--ignored`.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use weir_amqp::AmqpBroker;
use weir_core::{Broker, FetchRequest, NewJob, Settlement, Timestamp};

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

fn req(max: usize) -> FetchRequest {
    FetchRequest {
        queues: vec!["burst".into()],
        max,
        lease: Duration::from_secs(60),
        wait: Duration::from_millis(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared RabbitMQ; .ci/run runs it beside the loom models"]
async fn retries_waiting_in_delay_tiers_survive_a_broker_restart() {
    const N: usize = 300;
    let prefix = common::prefix();
    let url = common::url_in(&prefix, "");
    let b = Arc::new(AmqpBroker::new(&url).unwrap());
    let _cleanup = common::Cleanup(b.clone(), prefix);
    let ids: HashSet<_> = b
        .enqueue_many(
            (0..N)
                .map(|_| NewJob::new("k", "{}").queue("burst"))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    // Every job fails its first attempt; the retries are spread from 0.3 s to 3 s out, so
    // some are due (being moved) while the server goes down and the rest after it is back.
    let mut taken = 0;
    while taken < N {
        let got = b.fetch(req(N - taken)).await.unwrap();
        taken += got.len();
        let now = Timestamp::now();
        let settles = got
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let run_at = now.plus(Duration::from_millis(300 + (i as u64 % 10) * 300));
                (
                    d.lease,
                    Settlement::Retry {
                        run_at,
                        error: "first try fails".into(),
                    },
                )
            })
            .collect();
        b.settle(settles).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);

    // The same broker handle reconnects; every job comes back for its second attempt.
    let mut back = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while back.len() < N && tokio::time::Instant::now() < deadline {
        let got = match b.fetch(req(64)).await {
            Ok(got) => got,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut settles = Vec::new();
        for d in got {
            assert!(ids.contains(&d.job.id));
            if d.job.last_error.as_deref() == Some("first try fails") {
                back.insert(d.job.id);
            }
            settles.push((d.lease, Settlement::Succeeded { result: None }));
        }
        let _ = b.settle(settles).await;
    }
    assert_eq!(
        back.len(),
        N,
        "{} retries were lost through the restart",
        N - back.len()
    );
}
