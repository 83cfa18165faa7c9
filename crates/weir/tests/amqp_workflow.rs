//! A chord of 1,000 children through the `weir` binary on RabbitMQ, with its workflow state in
//! PostgreSQL (`--store postgres://…`): two `weir serve` processes share the work, and the
//! callback gets every result in the group's order.

mod amqp_support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use amqp_support::{assert_drained, stop, url_in, Serve};
use weir::AmqpBroker;

fn pg_url() -> String {
    std::env::var("WEIR_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn weir(broker: &str, store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--broker", broker, "--store", store])
        .args(args)
        .output()
        .expect("weir runs")
}

fn serve_with_store(broker: &str, store: &str) -> Serve {
    Serve(Some(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["--broker", broker, "--store", store, "--log", "warn"])
            .args(["serve", "--workers", "16"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("weir serve starts"),
    ))
}

/// Drops the test's schema.
struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (pg_url(), self.0.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chord_of_1000_children_on_rabbitmq_with_a_postgres_store() {
    let ns = uuid::Uuid::new_v4().simple().to_string();
    let broker_url = url_in(&format!("weir-test-{ns}."));
    let schema = format!("weir_test_{ns}");
    let _drop = DropSchema(schema.clone());
    let store_url = format!("{}?schema={schema}", pg_url());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chord.json");
    let children: Vec<String> = (0..1000)
        .map(|n| format!(r#"{{"kind":"echo","payload":{{"n":{n}}}}}"#))
        .collect();
    std::fs::write(
        &file,
        format!(
            r#"{{"shape":"chord","steps":[{}],"callback":{{"kind":"echo"}}}}"#,
            children.join(",")
        ),
    )
    .unwrap();
    let out = weir(
        &broker_url,
        &store_url,
        &["workflow", "submit", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let a = serve_with_store(&broker_url, &store_url);
    let b = serve_with_store(&broker_url, &store_url);
    let start = Instant::now();
    let done = loop {
        let out = weir(&broker_url, &store_url, &["inspect", &id, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["workflow"]["state"] != "running" {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "still running: {}",
            v["workflow"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ran = stop(a) + stop(b);
    assert_eq!(
        done["workflow"]["state"], "succeeded",
        "{}",
        done["workflow"]
    );
    assert_eq!(done["workflow"]["succeeded"], 1000);
    let expected: Vec<serde_json::Value> =
        (0..1000).map(|n| serde_json::json!({ "n": n })).collect();
    assert_eq!(
        done["members"][1000]["result"],
        serde_json::Value::Array(expected),
        "the callback got every child's result, in order"
    );
    assert!(ran >= 1001, "every member ran ({ran} successes reported)");

    let broker = AmqpBroker::new(&broker_url).unwrap();
    assert_drained(&broker).await;
    broker.delete_queues(&["default".into()]).await.unwrap();
    broker.close().await;
}
