//! Durable workflows end to end on the embedded broker and store (a real SQLite file) and on
//! the memory pair: chain, chord of 1,000, fail-fast cancellation, collect-all.

mod workflow_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use weir::workflow::{
    FailureMode, StepSpec, WorkflowId, WorkflowSpec, WorkflowState, WorkflowStatus, Workflows,
};
use weir::{
    Broker, JobState, MemoryBroker, MemoryStore, Registry, SqliteBroker, SqliteOptions,
    SqliteStore, StateStore, TaskContext, TaskError, Worker,
};
use workflow_support::{run_worker, Running};

/// Kinds used below: `square` (n → n²), `collect` (returns its payload: the callback sees the
/// children's results), `add_one`, `fail_on` (fails for good when n is in the list), and
/// `wait_cancel` (runs until its token fires, counting how many saw it).
fn registry(saw_cancel: Arc<AtomicUsize>) -> Registry {
    let mut r = Registry::new();
    r.register_fn("square", |n: i64, _cx: TaskContext| async move {
        Ok::<_, TaskError>(n * n)
    });
    r.register_fn("collect", |v: Value, _cx: TaskContext| async move {
        Ok::<_, TaskError>(v)
    });
    r.register_fn("add_one", |n: i64, _cx: TaskContext| async move {
        Ok::<_, TaskError>(n + 1)
    });
    r.register_fn(
        "fail_on",
        |p: (i64, Vec<i64>), _cx: TaskContext| async move {
            if p.1.contains(&p.0) {
                Err(TaskError::permanent(format!("child {} refuses", p.0)))
            } else {
                Ok(p.0)
            }
        },
    );
    r.register_fn("wait_cancel", move |_: Value, cx: TaskContext| {
        let saw = saw_cancel.clone();
        async move {
            tokio::select! {
                _ = cx.cancellation().cancelled() => {
                    saw.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(TaskError::retryable("cancelled"))
                }
                _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
            }
        }
    });
    r
}

fn start(broker: Arc<dyn Broker>, wf: &Workflows, saw: Arc<AtomicUsize>, slots: usize) -> Running {
    run_worker(
        broker,
        wf,
        registry(saw),
        "default",
        slots,
        Duration::from_secs(1),
    )
}

async fn until_finished(wf: &Workflows, id: WorkflowId) -> WorkflowStatus {
    workflow_support::until_finished(wf, id, Duration::from_secs(90)).await
}

fn embedded(dir: &tempfile::TempDir) -> (Arc<dyn Broker>, Arc<dyn StateStore>) {
    let opts = SqliteOptions::new(dir.path().join("weir.db"));
    let store = SqliteStore::open(&opts).unwrap();
    (
        Arc::new(SqliteBroker::open_with(opts).unwrap()),
        Arc::new(store),
    )
}

async fn chord_of_1000(broker: Arc<dyn Broker>, store: Arc<dyn StateStore>) {
    let wf = Workflows::new(broker.clone(), store);
    let run = start(broker.clone(), &wf, Arc::default(), 32);
    let children = (0..1000)
        .map(|n| StepSpec::new("square", json!(n)))
        .collect();
    let id = wf
        .submit(&WorkflowSpec::chord(children, StepSpec::kind("collect")))
        .await
        .unwrap();
    let s = until_finished(&wf, id).await;
    assert_eq!(s.state, WorkflowState::Succeeded, "{s:?}");
    assert_eq!((s.succeeded, s.failed, s.cancelled), (1000, 0, 0));
    let members = wf.members(id).await.unwrap();
    assert_eq!(members.len(), 1001);
    let expected: Vec<Value> = (0..1000i64).map(|n| json!(n * n)).collect();
    assert_eq!(
        members[1000].result,
        Some(Value::Array(expected)),
        "the callback got every result, in the group's order"
    );
    if let Some(inspect) = broker.inspect() {
        let a = inspect.get(members[0].job_id).await.unwrap().unwrap();
        let b = inspect.get(members[1000].job_id).await.unwrap().unwrap();
        assert_eq!(
            a.trace_id, s.trace_id,
            "children carry the workflow's trace id"
        );
        assert_eq!(b.trace_id, s.trace_id, "so does the callback");
        assert_ne!(a.id, b.id, "each member has its own job id");
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chord_of_1000_children_on_the_embedded_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = embedded(&dir);
    chord_of_1000(broker, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chord_of_1000_children_in_memory() {
    chord_of_1000(Arc::new(MemoryBroker::new()), Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_passes_each_result_on() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = embedded(&dir);
    let wf = Workflows::new(broker.clone(), store);
    let run = start(broker, &wf, Arc::default(), 4);
    let id = wf
        .submit(&WorkflowSpec::chain(vec![
            StepSpec::new("add_one", json!(1)),
            StepSpec::kind("add_one"),
            StepSpec::kind("square"),
        ]))
        .await
        .unwrap();
    let s = until_finished(&wf, id).await;
    assert_eq!(s.state, WorkflowState::Succeeded);
    let results: Vec<_> = wf
        .members(id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.result)
        .collect();
    assert_eq!(
        results,
        vec![Some(json!(2)), Some(json!(3)), Some(json!(9))]
    );
    run.finish().await;
}

/// Fail-fast: one child fails for good; the running siblings see their token fire, the
/// pending ones become Cancelled, the callback never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_child_cancels_its_siblings() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = embedded(&dir);
    let wf = Workflows::new(broker.clone(), store);
    let saw = Arc::new(AtomicUsize::new(0));
    let run = start(broker.clone(), &wf, saw.clone(), 4);
    // 3 waiting children take 3 of the 4 slots; the fourth runs the failing child; the other
    // 16 wait in the queue.
    let mut children: Vec<_> = (0..3)
        .map(|_| StepSpec::new("wait_cancel", json!(null)))
        .collect();
    children.push(StepSpec::new("fail_on", json!([3, [3]])));
    children.extend((0..16).map(|_| StepSpec::new("wait_cancel", json!(null))));
    let id = wf
        .submit(&WorkflowSpec::chord(children, StepSpec::kind("collect")))
        .await
        .unwrap();
    let s = until_finished(&wf, id).await;
    assert_eq!(s.state, WorkflowState::Failed);
    assert_eq!(s.failed, 1);
    assert_eq!(
        s.succeeded + s.failed + s.cancelled,
        21,
        "every member accounted for, the callback cancelled too: {s:?}"
    );
    let members = wf.members(id).await.unwrap();
    assert_eq!(members[3].error.as_deref(), Some("child 3 refuses"));
    assert_eq!(members[20].state, JobState::Cancelled, "no callback");
    assert!(!members[20].enqueued);
    // The store records the failure first; the engine then cancels the siblings at the
    // broker, one by one.
    let inspect = broker.inspect().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for m in &members[..20] {
        if m.index == 3 {
            continue;
        }
        loop {
            let job = inspect.get(m.job_id).await.unwrap().unwrap();
            if job.state == JobState::Cancelled {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member {} is {} at the broker",
                m.index,
                job.state
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The running ones stop at once (this worker runs them), not after a minute.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while saw.load(Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "running siblings not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.finish().await;
}

/// Collect-all: every child runs, the workflow fails with every error, the callback does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_all_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = embedded(&dir);
    let wf = Workflows::new(broker.clone(), store);
    let run = start(broker, &wf, Arc::default(), 4);
    let failing = vec![1, 4, 7];
    let children = (0..10)
        .map(|n| StepSpec::new("fail_on", json!([n, failing])))
        .collect();
    let id = wf
        .submit(
            &WorkflowSpec::chord(children, StepSpec::kind("collect")).mode(FailureMode::CollectAll),
        )
        .await
        .unwrap();
    let s = until_finished(&wf, id).await;
    assert_eq!(s.state, WorkflowState::Failed);
    assert_eq!((s.succeeded, s.failed, s.cancelled), (7, 3, 0));
    let members = wf.members(id).await.unwrap();
    let errors: Vec<_> = members.iter().filter_map(|m| m.error.clone()).collect();
    assert_eq!(
        errors,
        vec!["child 1 refuses", "child 4 refuses", "child 7 refuses"]
    );
    assert!(!members[10].enqueued, "no callback after a failure");
    run.finish().await;
}

/// Retention deletes finished jobs (with their results) and finished workflows, and only
/// those older than the cut-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sweeps_finished_work() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = embedded(&dir);
    let wf = Workflows::new(broker.clone(), store.clone());
    let run = start(broker.clone(), &wf, Arc::default(), 4);
    let id = wf
        .submit(&WorkflowSpec::chain(vec![
            StepSpec::new("add_one", json!(1)),
            StepSpec::kind("add_one"),
        ]))
        .await
        .unwrap();
    until_finished(&wf, id).await;
    run.finish().await;
    let hour = Duration::from_secs(3600);
    let now = weir::Timestamp::now();
    let none = weir::retention::sweep(&*broker, Some(&*store), hour, now)
        .await
        .unwrap();
    assert_eq!(
        none,
        weir::retention::Swept::default(),
        "nothing is an hour old"
    );
    let later = now.plus(2 * hour);
    let swept = weir::retention::sweep(&*broker, Some(&*store), hour, later)
        .await
        .unwrap();
    assert_eq!((swept.jobs, swept.workflows), (2, 1));
    assert!(wf.status(id).await.unwrap().is_none());
    let counts = broker.inspect().unwrap().counts().await.unwrap();
    assert!(counts.iter().all(|q| q.succeeded == 0), "{counts:?}");
}

/// A submitter that died after storing a workflow and enqueueing only part of its first jobs:
/// the rescue enqueues the missing ones (only those), under the ids they were given, and the
/// workflow then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_submission_is_rescued() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = embedded(&dir);
    let wf = Workflows::new(broker.clone(), store.clone());
    let spec = WorkflowSpec::chord(
        (0..5).map(|n| StepSpec::new("square", json!(n))).collect(),
        StepSpec::kind("collect"),
    );
    let id = WorkflowId::new();
    let hour_ago = weir::Timestamp(weir::Timestamp::now().0 - 3_600_000);
    let (stored, jobs) = spec.plan(id, "trace", hour_ago);
    store.create(stored).await.unwrap();
    broker.enqueue_many(jobs[..2].to_vec()).await.unwrap(); // then the submitter died
    let ten_minutes = Duration::from_secs(600);
    assert_eq!(
        wf.rescue(ten_minutes).await.unwrap(),
        3,
        "the three missing children"
    );
    assert_eq!(
        wf.rescue(ten_minutes).await.unwrap(),
        0,
        "nothing is missing any more"
    );
    let inspect = broker.inspect().unwrap();
    for j in &jobs {
        assert!(
            inspect.get(j.id).await.unwrap().is_some(),
            "under its own id"
        );
    }
    let run = start(broker.clone(), &wf, Arc::default(), 4);
    let s = until_finished(&wf, id).await;
    assert_eq!(s.state, WorkflowState::Succeeded);
    let members = wf.members(id).await.unwrap();
    assert_eq!(members[5].result, Some(json!([0, 1, 4, 9, 16])));
    run.finish().await;
}

/// A crash between the enqueue of a chain's next step and its mark in the store: when the
/// first step's job runs again, the replayed advance finds the next job at the broker (which
/// refuses its id a second time) and marks it, instead of deferring the member for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advance_interrupted_before_its_mark_is_completed_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = embedded(&dir);
    let wf = Workflows::new(broker.clone(), store.clone());
    let id = wf
        .submit(&WorkflowSpec::chain(vec![
            StepSpec::new("add_one", json!(1)),
            StepSpec::kind("square"),
        ]))
        .await
        .unwrap();
    let first_job = wf.members(id).await.unwrap()[0].job_id;
    // What a worker that died after the broker confirmed step 2 had done: step 1 recorded,
    // step 2 enqueued (here due in an hour, so step 1 runs again first), not marked, and
    // step 1's job still unsettled.
    let first = weir::workflow::Member {
        workflow: id,
        index: 0,
    };
    let advance = store
        .complete(
            first,
            weir::workflow::store::MemberOutcome::Succeeded(Some(b"2".to_vec())),
            weir::Timestamp::now(),
        )
        .await
        .unwrap();
    let (next, job) = advance.enqueue.expect("step 2 is due");
    broker
        .enqueue(job.delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(!wf.members(id).await.unwrap()[1].enqueued);
    let run = start(broker.clone(), &wf, Arc::default(), 2);
    let inspect = broker.inspect().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = inspect.get(first_job).await.unwrap().unwrap().state;
        if state == JobState::Succeeded {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "step 1 never settled: {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let members = wf.members(id).await.unwrap();
    assert!(members[next.index as usize].enqueued, "marked on replay");
    let report = run.finish().await;
    assert_eq!(report.deferred, 0, "{report:?}");
}

/// A worker with no state store cannot record a member's outcome: it defers the member
/// unrun (no attempt spent) for a worker that can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_a_store_defers_members_unrun() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let member = weir::workflow::Member {
        workflow: WorkflowId::new(),
        index: 0,
    };
    let id = broker
        .enqueue(weir::NewJob::new("wait_cancel", "null").member(member))
        .await
        .unwrap()
        .id;
    let saw = Arc::new(AtomicUsize::new(0));
    let worker = Worker::builder(broker.clone(), registry(saw.clone()))
        .queue("default", 2)
        .build()
        .unwrap();
    // Stop once the job has been taken and given back (its run_at moved to later).
    let enqueued_at = weir::Timestamp::now();
    let watch = broker.clone();
    let report = worker
        .run(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let job = watch.inspect().unwrap().get(id).await.unwrap().unwrap();
                if job.state == JobState::Pending && job.run_at > enqueued_at {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never deferred: {job:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    assert_eq!(report.deferred, 1, "{report:?}");
    assert_eq!(report.succeeded + report.failed + report.retried, 0);
    let job = broker.inspect().unwrap().get(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.attempt, 0, "no attempt spent");
    // Deferred by 1 to 5 s from when it was taken (after it was enqueued): compared with that,
    // not with the clock now, which a slow machine may have moved past it.
    assert!(
        job.run_at >= enqueued_at.plus(Duration::from_secs(1)),
        "deferred by at least a second: {} vs {enqueued_at}",
        job.run_at
    );
}

#[tokio::test]
async fn an_invalid_workflow_is_refused_and_nothing_is_enqueued() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let wf = Workflows::new(broker.clone(), Arc::new(MemoryStore::new()));
    let e = wf
        .submit(&WorkflowSpec::chain(vec![
            StepSpec::new("a", json!(1)),
            StepSpec::new("b", json!(2)),
        ]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("step 1 (`b`) has a `payload`"), "{e}");
    assert_eq!(broker.backlog(&["default".into()]).await.unwrap(), vec![0]);
}
