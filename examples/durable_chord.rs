//! A durable chord on the embedded queue: price 20 baskets in parallel, then total them in a
//! callback that receives every price in order. Then a chain (each step's result is the next
//! step's payload), and a fail-fast group whose failing member cancels its siblings.
//!
//! Everything lives in one SQLite file (a temporary one here), so a worker that crashes part
//! way picks up where it left: `cargo run --example durable_chord`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use weir::workflow::{StepSpec, WorkflowId, WorkflowSpec, WorkflowState, Workflows};
use weir::{Registry, SqliteBroker, TaskContext, TaskError, Worker};

#[derive(Deserialize)]
struct Basket {
    items: u32,
    unit_cents: u32,
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn("price", |b: Basket, _cx: TaskContext| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if b.unit_cents == 0 {
            return Err(TaskError::permanent("a basket without a price"));
        }
        Ok::<_, TaskError>(b.items * b.unit_cents)
    });
    // The callback of a chord gets the children's results as one array, in order.
    r.register_fn("total", |prices: Vec<u32>, _cx: TaskContext| async move {
        Ok::<_, TaskError>(prices.iter().sum::<u32>())
    });
    r.register_fn("with_tax", |cents: u32, _cx: TaskContext| async move {
        Ok::<_, TaskError>(cents * 120 / 100)
    });
    r.register_fn("format", |cents: u32, _cx: TaskContext| async move {
        Ok::<_, TaskError>(format!("{}.{:02} EUR", cents / 100, cents % 100))
    });
    r
}

async fn wait(workflows: &Workflows, id: WorkflowId) -> WorkflowState {
    loop {
        let s = workflows.status(id).await.unwrap().expect("stored");
        if s.state != WorkflowState::Running {
            return s.state;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(SqliteBroker::open(dir.path().join("weir.db")).unwrap());
    let store = Arc::new(broker.store().unwrap());
    let workflows = Workflows::new(broker.clone(), store);
    let worker = Worker::builder(broker, registry())
        .queue("default", 8)
        .workflows(workflows.clone())
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));

    // Fan out, fan in.
    let baskets = (1..=20)
        .map(|i| StepSpec::new("price", json!({ "items": i, "unit_cents": 250 })))
        .collect();
    let chord = workflows
        .submit(&WorkflowSpec::chord(baskets, StepSpec::kind("total")))
        .await
        .unwrap();
    assert_eq!(wait(&workflows, chord).await, WorkflowState::Succeeded);
    let members = workflows.members(chord).await.unwrap();
    let total = members.last().and_then(|m| m.result.clone()).unwrap();
    println!("chord {chord}: 20 baskets priced in parallel, total {total} cents");
    assert_eq!(total, json!(250 * (1..=20).sum::<u32>()));

    // A pipeline: each result is the next step's payload.
    let chain = workflows
        .submit(&WorkflowSpec::chain(vec![
            StepSpec::new("price", json!({ "items": 3, "unit_cents": 999 })),
            StepSpec::kind("with_tax"),
            StepSpec::kind("format"),
        ]))
        .await
        .unwrap();
    assert_eq!(wait(&workflows, chain).await, WorkflowState::Succeeded);
    let last = workflows.members(chain).await.unwrap().pop().unwrap();
    println!("chain {chain}: {}", last.result.unwrap());

    // Fail-fast: the unpriced basket fails for good, and the workflow with it.
    let mut group: Vec<_> = (0..5)
        .map(|_| StepSpec::new("price", json!({ "items": 1, "unit_cents": 100 })))
        .collect();
    group.push(StepSpec::new(
        "price",
        json!({ "items": 1, "unit_cents": 0 }),
    ));
    let failing = workflows.submit(&WorkflowSpec::group(group)).await.unwrap();
    assert_eq!(wait(&workflows, failing).await, WorkflowState::Failed);
    let s = workflows.status(failing).await.unwrap().unwrap();
    let error = workflows
        .members(failing)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| m.error)
        .unwrap();
    println!(
        "group {failing}: failed ({error}); {} succeeded before it, {} cancelled",
        s.succeeded, s.cancelled
    );

    let _ = stop.send(());
    running.await.unwrap();
}
