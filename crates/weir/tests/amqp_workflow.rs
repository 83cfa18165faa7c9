//! A chord of 1,000 children through the `weir` binary on RabbitMQ, with its workflow state in
//! PostgreSQL (`--store postgres://…`): two `weir serve` processes share the work, and the
//! callback gets every result in the group's order.

mod amqp_support;
mod workflow_support;

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_support::{assert_drained, stop, url_in, Serve};
use weir::workflow::{Member, StepSpec, WorkflowId, WorkflowSpec, WorkflowState};
use weir::{
    AmqpBroker, Broker, NewJob, QueueDepth, Registry, StateStore, TaskContext, TaskError,
    Timestamp, Workflows,
};
use workflow_support::{run_worker, until_finished};

/// The worker's default lease, and the short one of the heartbeat test (a heartbeat every
/// third of it asks the store about the members it runs).
const LEASE: Duration = Duration::from_secs(30);
const SHORT_LEASE: Duration = Duration::from_millis(900);

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

/// A RabbitMQ broker on queues of a namespace of the test's own, and a PostgreSQL store in a
/// schema of its own, dropped with the rig.
struct Rig {
    url: String,
    amqp: Arc<AmqpBroker>,
    broker: Arc<dyn Broker>,
    store: Arc<dyn StateStore>,
    _drop: DropSchema,
}

async fn rig() -> Rig {
    let ns = uuid::Uuid::new_v4().simple().to_string();
    let schema = format!("weir_test_{ns}");
    let store = weir::open_store(&format!("{}?schema={schema}", pg_url()))
        .await
        .unwrap();
    let url = url_in(&format!("weir-test-{ns}."));
    let amqp = Arc::new(AmqpBroker::new(&url).unwrap());
    Rig {
        url,
        broker: amqp.clone(),
        amqp,
        store,
        _drop: DropSchema(schema),
    }
}

impl Rig {
    /// A workflow engine over `broker` and the rig's store.
    fn workflows(&self, broker: &Arc<dyn Broker>) -> Workflows {
        Workflows::new(broker.clone(), self.store.clone())
    }

    /// A queue's depth at RabbitMQ.
    async fn depth(&self, queue: &str) -> QueueDepth {
        self.amqp
            .queue_stats()
            .unwrap()
            .depths(&[queue.into()])
            .await
            .unwrap()[0]
            .clone()
    }

    async fn close(self, queues: &[&str]) {
        let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
        self.amqp.delete_queues(&queues).await.unwrap();
        self.amqp.close().await;
    }
}

/// Registers `kind`, which counts its runs in `runs` and then does `f`.
fn counted<P, R, F>(registry: &mut Registry, kind: &str, runs: &Arc<AtomicUsize>, f: F)
where
    P: serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize + Send + 'static,
    F: Fn(P) -> R + Send + Sync + 'static,
{
    let runs = runs.clone();
    let f = Arc::new(f);
    registry.register_fn(kind, move |p: P, _cx: TaskContext| {
        runs.fetch_add(1, Ordering::SeqCst);
        let out = f(p);
        async move { Ok::<_, TaskError>(out) }
    });
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

/// Fail-fast on RabbitMQ, which cannot cancel a queued message by id: the siblings still in
/// the queue when a child fails are delivered, found cancelled in the store, and finished as
/// Cancelled without running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_on_rabbitmq_finishes_queued_siblings_unrun() {
    let rig = rig().await;
    let ran = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    registry.register_fn("refuse", |_: serde_json::Value, _cx: TaskContext| async {
        Err::<(), _>(TaskError::permanent("refused"))
    });
    counted(&mut registry, "count", &ran, |_: serde_json::Value| ());
    let wf = rig.workflows(&rig.broker);
    let mut children = vec![StepSpec::new("refuse", serde_json::json!(null))];
    children.extend((0..20).map(|_| StepSpec::new("count", serde_json::json!(null))));
    let id = wf.submit(&WorkflowSpec::group(children)).await.unwrap();
    let worker = run_worker(rig.broker.clone(), &wf, registry, "default", 1, LEASE);
    let s = until_finished(&wf, id, Duration::from_secs(60)).await;
    assert_eq!(s.state, WorkflowState::Failed);
    assert_eq!((s.failed, s.cancelled), (1, 20), "{s:?}");
    // The queue is worked off: the siblings still in it are delivered and finished unrun.
    let start = Instant::now();
    while rig.depth("default").await.ready > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "siblings still queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every child settled (the failure and the 20 siblings, run or finished unrun).
    worker.until_settled(21, Duration::from_secs(60)).await;
    let report = worker.finish().await;
    let ran = ran.load(Ordering::SeqCst);
    assert!(ran <= 2, "{ran} siblings ran after the failure");
    assert_eq!(
        report.cancelled as usize + ran,
        20,
        "every other sibling was finished unrun: {report:?}"
    );
    let d = rig.depth("default").await;
    assert_eq!(
        (d.ready, d.dead),
        (0, 1),
        "only the failed child is dead-lettered: {d:?}"
    );
    rig.close(&["default"]).await;
}

/// Fail-fast on RabbitMQ across workers: the failing child runs on one worker, its siblings
/// run on another (queues of their own); that worker's heartbeat finds them cancelled in the
/// store and fires their tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_on_rabbitmq_stops_siblings_running_on_another_worker() {
    let rig = rig().await;
    let fast_amqp = Arc::new(AmqpBroker::new(&rig.url).unwrap());
    let fast_broker: Arc<dyn Broker> = fast_amqp.clone();
    let started = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicUsize::new(0));
    let mut slow = Registry::new();
    let (s1, s2) = (started.clone(), stopped.clone());
    slow.register_fn("wait", move |_: serde_json::Value, cx: TaskContext| {
        let (started, stopped) = (s1.clone(), s2.clone());
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                _ = cx.cancellation().cancelled() => {
                    stopped.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(TaskError::retryable("cancelled"))
                }
                _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
            }
        }
    });
    let mut fast = Registry::new();
    fast.register_fn("refuse", |_: serde_json::Value, _cx: TaskContext| async {
        Err::<(), _>(TaskError::permanent("refused"))
    });
    // The siblings start first, on the slow worker (the rig's broker).
    let slow_worker = run_worker(
        rig.broker.clone(),
        &rig.workflows(&rig.broker),
        slow,
        "slow",
        4,
        SHORT_LEASE,
    );
    let mut children: Vec<_> = (0..3)
        .map(|_| StepSpec::new("wait", serde_json::json!(null)).queue("slow"))
        .collect();
    children.push(StepSpec::new("refuse", serde_json::json!(null)).queue("fast"));
    let wf = rig.workflows(&fast_broker);
    let id = wf.submit(&WorkflowSpec::group(children)).await.unwrap();
    let start = Instant::now();
    while started.load(Ordering::SeqCst) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "siblings did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fast_worker = run_worker(fast_broker, &wf, fast, "fast", 4, SHORT_LEASE);
    let start = Instant::now();
    while stopped.load(Ordering::SeqCst) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "running siblings not stopped: {:?}",
            wf.status(id).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = wf.status(id).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.failed, s.cancelled),
        (WorkflowState::Failed, 1, 3)
    );
    fast_worker.finish().await;
    slow_worker.finish().await;
    fast_amqp.close().await;
    rig.close(&["slow", "fast"]).await;
}

/// RabbitMQ cannot refuse a job id it has seen, so a next step can be enqueued twice (a crash
/// between the confirm and the store's mark), and a member's job can come back after its
/// outcome was recorded (a crash before the ack). A delivery of a member the store has as
/// succeeded is not run again: its advance is replayed (enqueueing nothing more) and it is
/// acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_already_recorded_is_not_run_again_on_rabbitmq() {
    let rig = rig().await;
    let ran = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    counted(&mut registry, "count", &ran, |n: u32| n + 1);
    let wf = rig.workflows(&rig.broker);
    let worker = run_worker(rig.broker.clone(), &wf, registry, "default", 2, LEASE);
    let id = wf
        .submit(&WorkflowSpec::chain(vec![
            StepSpec::new("count", serde_json::json!(1)),
            StepSpec::kind("count"),
        ]))
        .await
        .unwrap();
    until_finished(&wf, id, Duration::from_secs(30)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    worker.until_settled(2, Duration::from_secs(30)).await;
    // Both members' jobs once more, under their ids.
    let members = wf.members(id).await.unwrap();
    let again: Vec<NewJob> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            NewJob::new("count", "1").id(m.job_id).member(Member {
                workflow: id,
                index: i as u32,
            })
        })
        .collect();
    rig.broker.enqueue_many(again).await.unwrap();
    let start = Instant::now();
    loop {
        let d = rig.depth("default").await;
        if d.ready == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Delivered is not yet acked: wait for both copies to be settled (acked unrun), not for
    // a pause (a delivery still held at shutdown would be given back, and counted below).
    worker.until_settled(4, Duration::from_secs(30)).await;
    let report = worker.finish().await;
    assert_eq!(ran.load(Ordering::SeqCst), 2, "no member ran twice");
    // Acked, not given back at shutdown, nothing more enqueued, nothing dead-lettered.
    let d = rig.depth("default").await;
    assert_eq!((d.ready, d.dead), (0, 0), "{d:?}, {report:?}");
    let after = wf.members(id).await.unwrap();
    assert_eq!(after, members, "the record is unchanged");
    assert_eq!(
        wf.status(id).await.unwrap().unwrap().state,
        WorkflowState::Succeeded
    );
    rig.close(&["default"]).await;
}

/// A submission interrupted on RabbitMQ: the store has the chord, the broker two of its five
/// children, and no batch was recorded as confirmed. RabbitMQ cannot say which jobs it has,
/// so the rescue enqueues all five; the two sent twice are found finished in the store when
/// their second copies arrive and are not run again, and the callback gets every result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_submission_is_rescued_on_rabbitmq() {
    let rig = rig().await;
    let squared = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    counted(&mut registry, "square", &squared, |n: i64| n * n);
    registry.register_fn(
        "collect",
        |v: serde_json::Value, _cx: TaskContext| async move { Ok::<_, TaskError>(v) },
    );
    let wf = rig.workflows(&rig.broker);
    let spec = WorkflowSpec::chord(
        (0..5)
            .map(|n| StepSpec::new("square", serde_json::json!(n)))
            .collect(),
        StepSpec::kind("collect"),
    );
    let id = WorkflowId::new();
    let hour_ago = Timestamp(Timestamp::now().0 - 3_600_000);
    let (stored, jobs) = spec.plan(id, "trace", hour_ago);
    rig.store.create(stored).await.unwrap();
    rig.broker.enqueue_many(jobs[..2].to_vec()).await.unwrap(); // then the submitter died
    let ten_minutes = Duration::from_secs(600);
    assert_eq!(wf.rescue(ten_minutes).await.unwrap(), 5, "all of them");
    assert_eq!(wf.rescue(ten_minutes).await.unwrap(), 0, "recorded as done");
    // A submission that was not interrupted recorded its batches: nothing to rescue.
    let whole = wf
        .submit(
            &WorkflowSpec::group(
                (0..2500)
                    .map(|n| StepSpec::new("square", serde_json::json!(n)))
                    .collect(),
            )
            .queue("idle"),
        )
        .await
        .unwrap();
    let soon = Timestamp(Timestamp::now().0 + 60_000);
    let listed = rig.store.unstarted(soon, 100).await.unwrap();
    assert!(
        listed.iter().all(|(w, _)| *w != whole),
        "all three batches recorded"
    );

    // One slot (prefetch 1): the copies run one after the other.
    let worker = run_worker(rig.broker.clone(), &wf, registry, "default", 1, LEASE);
    let s = until_finished(&wf, id, Duration::from_secs(30)).await;
    worker.finish().await;
    assert_eq!(s.state, WorkflowState::Succeeded);
    let members = wf.members(id).await.unwrap();
    assert_eq!(
        members[5].result,
        Some(serde_json::json!([0, 1, 4, 9, 16])),
        "the callback got every child's result, in order"
    );
    assert_eq!(squared.load(Ordering::SeqCst), 5, "no child ran twice");
    let d = rig.depth("default").await;
    assert_eq!((d.ready, d.dead), (0, 0), "{d:?}");
    rig.close(&["default", "idle"]).await;
}

/// A member that RabbitMQ dead-letters by itself (here: settled Failed behind the worker's
/// back, as `x-delivery-limit` would) still reaches its workflow: a worker finds it among the
/// dead letters and records it, and the chain fails instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_dead_lettered_by_the_broker_reaches_its_workflow() {
    let rig = rig().await;
    let wf = rig.workflows(&rig.broker);
    let id = wf
        .submit(&WorkflowSpec::chain(vec![
            StepSpec::new("noop", serde_json::json!(1)),
            StepSpec::kind("noop"),
        ]))
        .await
        .unwrap();
    let got = rig
        .broker
        .fetch(weir::FetchRequest {
            queues: vec!["default".into()],
            max: 1,
            lease: LEASE,
            wait: Duration::from_secs(10),
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let lost = weir::Settlement::Failed {
        error: "delivery limit reached".into(),
    };
    rig.broker.settle(vec![(got[0].lease, lost)]).await.unwrap();
    // The store still has the member open; a worker with the workflow store finds it.
    let mut registry = Registry::new();
    registry.register_fn("noop", |_: serde_json::Value, _cx: TaskContext| async {
        Ok::<_, TaskError>(())
    });
    let worker = run_worker(rig.broker.clone(), &wf, registry, "default", 2, LEASE);
    let s = until_finished(&wf, id, Duration::from_secs(60)).await;
    assert_eq!(s.state, WorkflowState::Failed, "{s:?}");
    let members = wf.members(id).await.unwrap();
    assert_eq!(members[0].state, weir::JobState::Failed);
    let error = members[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("dead-lettered by the broker") && error.contains("delivery limit reached"),
        "{error}"
    );
    assert_eq!(members[1].state, weir::JobState::Cancelled, "{members:?}");
    worker.finish().await;
    rig.close(&["default"]).await;
}

/// Issue 11.8 on RabbitMQ: two workers started at once on a store schema that does not exist
/// yet both come up (the schema and tables are made once, under an advisory lock), and a
/// workflow submitted through the CLI runs on them to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_started_together_on_a_new_postgres_schema_both_run() {
    let ns = uuid::Uuid::new_v4().simple().to_string();
    let schema = format!("weir_test_{ns}");
    let _drop = DropSchema(schema.clone());
    let url = url_in(&format!("weir-test-{ns}."));
    let store = format!("{}?schema={schema}", pg_url());
    let mut workers = [
        serve_with_store(&url, &store),
        serve_with_store(&url, &store),
    ];
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("chain.json");
    std::fs::write(
        &spec,
        r#"{"shape":"chain","steps":[{"kind":"echo","payload":[1,2]},{"kind":"echo"}]}"#,
    )
    .unwrap();
    let (u, st) = (url.clone(), store.clone());
    let out = tokio::task::spawn_blocking(move || {
        let spec = spec.to_str().unwrap().to_owned();
        weir(
            &u,
            &st,
            &[
                "workflow",
                "submit",
                "--wait",
                "--timeout",
                "60s",
                "--json",
                &spec,
            ],
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["result"], serde_json::json!([1, 2]), "{v}");
    for (i, w) in workers.iter_mut().enumerate() {
        let child = w.0.as_mut().unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "worker {i} exited at start"
        );
    }
    let amqp = AmqpBroker::new(&url).unwrap();
    drop(workers);
    amqp.delete_queues(&["default".to_owned()]).await.unwrap();
    amqp.close().await;
}
