//! The workflow-store conformance suite: every [`StateStore`] (memory, embedded SQLite,
//! PostgreSQL) runs these tests through [`store_suite!`](crate::store_suite).

use std::any::Any;
use std::sync::Arc;

use weir_core::{BrokerError, JobState, Member, Timestamp, WorkflowId};
use weir_workflow::store::{Advance, MemberOutcome};
use weir_workflow::{FailureMode, StateStore, StepSpec, WorkflowSpec, WorkflowState};

/// A fresh, empty store under test.
pub struct StoreFixture {
    /// The store.
    pub store: Arc<dyn StateStore>,
    _guard: Box<dyn Any + Send>,
}

impl StoreFixture {
    /// A fixture; `guard` lives as long as the store (a temporary directory, a schema to drop).
    pub fn new(store: Arc<dyn StateStore>, guard: impl Any + Send) -> Self {
        StoreFixture {
            store,
            _guard: Box::new(guard),
        }
    }
}

const T0: Timestamp = Timestamp(1_800_000_000_000);

fn m(workflow: WorkflowId, index: u32) -> Member {
    Member { workflow, index }
}

fn ok(n: i64) -> MemberOutcome {
    MemberOutcome::Succeeded(Some(n.to_string().into_bytes()))
}

async fn create(store: &dyn StateStore, spec: WorkflowSpec) -> WorkflowId {
    spec.validate().unwrap();
    let id = WorkflowId::new();
    let (wf, _) = spec.plan(id, "trace-1", T0);
    store.create(wf).await.unwrap();
    id
}

fn children(n: usize) -> Vec<StepSpec> {
    (0..n)
        .map(|i| StepSpec::new("child", (i as i64).into()))
        .collect()
}

/// A stored workflow reads back as submitted; a second create with the same id is refused.
pub async fn create_and_read_back(f: StoreFixture) {
    let s = &*f.store;
    let spec = WorkflowSpec::chord(children(3), StepSpec::kind("merge"));
    let id = WorkflowId::new();
    let (wf, _) = spec.plan(id, "trace-1", T0);
    s.create(wf.clone()).await.unwrap();
    let st = s.status(id).await.unwrap().unwrap();
    assert_eq!(st.state, WorkflowState::Running);
    assert_eq!(
        (st.children, st.succeeded, st.failed, st.cancelled),
        (3, 0, 0, 0)
    );
    assert_eq!(st.trace_id, "trace-1");
    assert_eq!(st.created_at, T0);
    let members = s.members(id).await.unwrap();
    assert_eq!(members.len(), 4);
    assert!(members[..3].iter().all(|m| m.enqueued && m.kind == "child"));
    assert!(!members[3].enqueued);
    assert_eq!(members[3].kind, "merge");
    assert_eq!(members[2].job_id, wf.members[2].job_id);
    assert!(matches!(s.create(wf).await, Err(BrokerError::Invalid(_))));
    assert!(s.status(WorkflowId::new()).await.unwrap().is_none());
}

/// A chain hands each result on; the advance is replayed until it is marked enqueued.
pub async fn chain_advances_and_replays(f: StoreFixture) {
    let s = &*f.store;
    let id = create(
        s,
        WorkflowSpec::chain(vec![
            StepSpec::new("a", 1.into()),
            StepSpec::kind("b").queue("q2"),
            StepSpec::kind("c"),
        ]),
    )
    .await;
    let adv = s.complete(m(id, 0), ok(10), T0).await.unwrap();
    let (next, job) = adv.enqueue.clone().expect("step 1 is due");
    assert_eq!(next, m(id, 1));
    assert_eq!(job.payload, b"10", "the previous result is the payload");
    assert_eq!(job.queue, "q2");
    assert_eq!(job.member, Some(next));
    assert_eq!(job.trace_id.as_deref(), Some("trace-1"));
    let members = s.members(id).await.unwrap();
    assert_eq!(job.id, members[1].job_id, "the id fixed at submission");
    // The member ran again before the enqueue was marked: the same advance comes back.
    let again = s.complete(m(id, 0), ok(99), T0).await.unwrap();
    assert_eq!(again.enqueue.map(|(_, j)| j.payload), Some(b"10".to_vec()));
    s.mark_enqueued(next).await.unwrap();
    assert_eq!(
        s.complete(m(id, 0), ok(10), T0).await.unwrap(),
        Advance::default(),
        "marked: nothing to replay"
    );
    s.mark_enqueued(
        s.complete(m(id, 1), ok(11), T0)
            .await
            .unwrap()
            .enqueue
            .unwrap()
            .0,
    )
    .await
    .unwrap();
    let done = s
        .complete(m(id, 2), ok(12), Timestamp(T0.0 + 5))
        .await
        .unwrap();
    assert_eq!(done.finished, Some(WorkflowState::Succeeded));
    let st = s.status(id).await.unwrap().unwrap();
    assert_eq!((st.state, st.succeeded), (WorkflowState::Succeeded, 3));
    assert_eq!(st.finished_at, Some(Timestamp(T0.0 + 5)));
    let results: Vec<_> = s
        .members(id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.result)
        .collect();
    assert_eq!(
        results,
        vec![Some(10.into()), Some(11.into()), Some(12.into())]
    );
}

/// Children finishing at once, in any order: the callback is due exactly once, with every
/// result in the group's order.
pub async fn chord_calls_back_once_in_order(f: StoreFixture) {
    let s = f.store.clone();
    let n = 64;
    let id = create(
        &*s,
        WorkflowSpec::chord(children(n), StepSpec::kind("merge")),
    )
    .await;
    let mut tasks = Vec::new();
    for i in (0..n as u32).rev() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.complete(m(id, i), ok(i64::from(i) * 2), T0)
                .await
                .unwrap()
        }));
    }
    let mut due = Vec::new();
    for t in tasks {
        if let Some(e) = t.await.unwrap().enqueue {
            due.push(e);
        }
    }
    assert_eq!(due.len(), 1, "one callback");
    let (cb, job) = due.pop().unwrap();
    assert_eq!(cb, m(id, n as u32));
    let expected: Vec<i64> = (0..n as i64).map(|i| i * 2).collect();
    let got: Vec<i64> = serde_json_array(&job.payload);
    assert_eq!(got, expected);
    s.mark_enqueued(cb).await.unwrap();
    let done = s.complete(cb, ok(7), T0).await.unwrap();
    assert_eq!(done.finished, Some(WorkflowState::Succeeded));
    let st = s.status(id).await.unwrap().unwrap();
    assert_eq!(st.succeeded, n as u32, "the callback is not a child");
}

fn serde_json_array(bytes: &[u8]) -> Vec<i64> {
    let text = std::str::from_utf8(bytes).unwrap();
    text.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect()
}

/// Fail-fast: the first failure fails the workflow and cancels every open member; enqueued
/// ones are returned for cancelling at the broker. Later outcomes change nothing.
pub async fn fail_fast_cancels_open_members(f: StoreFixture) {
    let s = &*f.store;
    let id = create(s, WorkflowSpec::chord(children(5), StepSpec::kind("merge"))).await;
    s.complete(m(id, 0), ok(0), T0).await.unwrap();
    let adv = s
        .complete(m(id, 2), MemberOutcome::Failed("boom".into()), T0)
        .await
        .unwrap();
    assert_eq!(adv.finished, Some(WorkflowState::Failed));
    assert!(adv.enqueue.is_none());
    let members = s.members(id).await.unwrap();
    let mut expected: Vec<_> = [1, 3, 4].iter().map(|&i| members[i].job_id).collect();
    let mut got = adv.cancel.clone();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "enqueued, unfinished members; not the callback"
    );
    assert_eq!(members[5].state, JobState::Cancelled);
    assert_eq!(members[2].error.as_deref(), Some("boom"));
    assert_eq!(members[0].state, JobState::Succeeded);
    let st = s.status(id).await.unwrap().unwrap();
    assert_eq!((st.succeeded, st.failed, st.cancelled), (1, 1, 4));
    assert_eq!(
        s.member_state(m(id, 3)).await.unwrap(),
        Some(JobState::Cancelled)
    );
    assert_eq!(
        s.member_state(m(id, 0)).await.unwrap(),
        Some(JobState::Succeeded)
    );
    assert_eq!(s.member_state(m(id, 9)).await.unwrap(), None);
    let late = s.complete(m(id, 3), ok(3), T0).await.unwrap();
    assert_eq!(late, Advance::default());
    assert_eq!(s.status(id).await.unwrap().unwrap(), st, "nothing changed");
}

/// Collect-all: every child finishes; the workflow fails once the last one has, with every
/// error kept, and the callback never becomes due.
pub async fn collect_all_waits_for_every_child(f: StoreFixture) {
    let s = &*f.store;
    let id = create(
        s,
        WorkflowSpec::chord(children(3), StepSpec::kind("merge")).mode(FailureMode::CollectAll),
    )
    .await;
    let fail = |e: &str| MemberOutcome::Failed(e.into());
    assert_eq!(
        s.complete(m(id, 0), fail("e0"), T0).await.unwrap(),
        Advance::default()
    );
    assert_eq!(
        s.complete(m(id, 1), ok(1), T0).await.unwrap(),
        Advance::default()
    );
    let last = s.complete(m(id, 2), fail("e2"), T0).await.unwrap();
    assert_eq!(last.finished, Some(WorkflowState::Failed));
    assert!(last.enqueue.is_none() && last.cancel.is_empty());
    let errors: Vec<_> = s
        .members(id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.error)
        .collect();
    assert_eq!(errors, vec!["e0", "e2"]);
}

/// Abort fails a workflow and returns its open jobs; purge deletes finished workflows older
/// than the cut-off, and only those.
pub async fn abort_and_purge(f: StoreFixture) {
    let s = &*f.store;
    let old = create(s, WorkflowSpec::group(children(2))).await;
    let open = s.abort(old, Timestamp(T0.0 + 10)).await.unwrap();
    assert_eq!(open.len(), 2);
    let st = s.status(old).await.unwrap().unwrap();
    assert_eq!((st.state, st.cancelled), (WorkflowState::Failed, 2));
    let running = create(s, WorkflowSpec::group(children(1))).await;
    assert_eq!(
        s.purge(Timestamp(T0.0 + 10)).await.unwrap(),
        0,
        "not older than"
    );
    assert_eq!(s.purge(Timestamp(T0.0 + 11)).await.unwrap(), 1);
    assert!(s.status(old).await.unwrap().is_none());
    assert!(s.members(old).await.unwrap().is_empty());
    assert!(s.status(running).await.unwrap().is_some(), "running: kept");
}

/// A running workflow whose submission was not recorded as complete, old enough, is listed
/// with the jobs it starts with that were not recorded (ids, payloads and membership as
/// submitted); a member finishing does not change that, and once the submission is recorded
/// as complete, or if the workflow is not old enough, it is not listed.
pub async fn unstarted_lists_what_a_rescue_needs(f: StoreFixture) {
    let s = &*f.store;
    let id = create(s, WorkflowSpec::chord(children(3), StepSpec::kind("merge"))).await;
    let chain = create(
        s,
        WorkflowSpec::chain(vec![StepSpec::new("a", 7.into()), StepSpec::kind("b")]),
    )
    .await;
    assert!(
        s.unstarted(T0, 10).await.unwrap().is_empty(),
        "not older than T0"
    );
    let later = Timestamp(T0.0 + 1);
    let found = s.unstarted(later, 10).await.unwrap();
    let mut expected = vec![id, chain];
    expected.sort();
    assert_eq!(
        found.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
        expected,
        "in id order"
    );
    let jobs = &found.iter().find(|(w, _)| *w == id).unwrap().1;
    let members = s.members(id).await.unwrap();
    assert_eq!(jobs.len(), 3, "the children, not the callback");
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j.id, members[i].job_id);
        assert_eq!(j.member, Some(m(id, i as u32)));
        assert_eq!(j.payload, i.to_string().into_bytes());
        assert_eq!(j.trace_id.as_deref(), Some("trace-1"));
    }
    let chain_jobs = &found.iter().find(|(w, _)| *w == chain).unwrap().1;
    assert_eq!(chain_jobs.len(), 1, "a chain starts with its first step");
    assert_eq!(chain_jobs[0].payload, b"7");
    assert_eq!(
        s.unstarted(later, 1).await.unwrap().len(),
        1,
        "the limit holds"
    );

    // The first batch of the chord was confirmed; a member finished; the chain is submitted.
    s.mark_started(id, 2).await.unwrap();
    s.mark_started(id, 1).await.unwrap(); // never lowers it
    s.mark_started(chain, 1).await.unwrap();
    s.complete(m(id, 0), ok(1), T0).await.unwrap();
    let left = s.unstarted(later, 10).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, id);
    assert_eq!(
        left[0].1.iter().map(|j| j.member).collect::<Vec<_>>(),
        vec![Some(m(id, 2))],
        "only what was not confirmed"
    );
    s.mark_started(id, 3).await.unwrap();
    assert!(s.unstarted(later, 10).await.unwrap().is_empty());
    s.mark_started(WorkflowId::new(), 1).await.unwrap(); // unknown: nothing to record
}

/// An outcome for a workflow or member the store does not know is ignored.
pub async fn unknown_members_are_ignored(f: StoreFixture) {
    let s = &*f.store;
    let a = s
        .complete(m(WorkflowId::new(), 0), ok(1), T0)
        .await
        .unwrap();
    assert_eq!(a, Advance::default());
    let id = create(s, WorkflowSpec::group(children(1))).await;
    let b = s.complete(m(id, 9), ok(1), T0).await.unwrap();
    assert_eq!(b, Advance::default());
}

/// Runs the whole store suite against stores made by `$make` (an `async fn() -> StoreFixture`).
#[macro_export]
macro_rules! store_suite {
    ($make:path) => {
        mod store_conformance {
            use super::*;
            $crate::store_suite!(@tests $make;
                create_and_read_back,
                chain_advances_and_replays,
                chord_calls_back_once_in_order,
                fail_fast_cancels_open_members,
                collect_all_waits_for_every_child,
                abort_and_purge,
                unknown_members_are_ignored,
                unstarted_lists_what_a_rescue_needs,
            );
        }
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::store::$name($make().await).await;
            }
        )*
    };
}
