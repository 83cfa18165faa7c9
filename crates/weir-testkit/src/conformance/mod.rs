//! The broker conformance suite: the semantics every weir backend promises, as tests.
//!
//! Each test function takes a fresh [`Fixture`] and panics on a violation. Some tests need
//! an ability a broker may lack ([`Needs`]); [`TESTS`] lists every test with what it needs. A
//! backend runs the suite with [`conformance_suite!`](crate::conformance_suite), naming the
//! tests it runs and the ones it ignores (with the reason). The suite then checks itself:
//! every test is run or ignored, and the ignored ones are exactly those needing what the
//! broker declares it lacks ([`Broker::capabilities`]). A broker cannot skip what it claims
//! to do, and an ignored test shows as ignored, never as passed.

mod declared;
mod delivery;
mod kept;
mod leases;
mod outcomes;

pub use declared::*;
pub use delivery::*;
pub use kept::*;
pub use leases::*;
pub use outcomes::*;

use std::time::Duration;

use weir_core::{
    Broker, Capability, Delivery, FetchRequest, Inspect, JobId, JobState, NewJob, SettleOutcome,
    Settlement,
};

use crate::Fixture;

/// What a conformance test needs beyond enqueue, fetch, settle and heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// A declared capability.
    Capability(Capability),
    /// A clock the test can move (the broker reads [`Fixture::clock`]), not the wall clock.
    InjectedClock,
}

use Capability as C;
use Needs::{Capability as Cap, InjectedClock};

/// Every test of the suite, with what it needs.
pub const TESTS: &[(&str, &[Needs])] = &[
    ("enqueue_fetch_settle", &[]),
    ("delayed_jobs_wait", &[]),
    ("fetch_waits_for_new_jobs", &[]),
    ("waiting_fetch_gets_delayed_job", &[]),
    ("concurrent_workers_no_double_delivery", &[]),
    ("clock_stepping_back_loses_no_job", &[InjectedClock]),
    ("lease_expiry_and_fencing", &[]),
    ("lease_expiry_exhausts_attempts", &[]),
    ("lost_member_comes_back_past_its_attempts", &[]),
    ("heartbeat_extends_lease", &[]),
    ("retry_scheduling", &[]),
    ("release_gives_job_back", &[]),
    ("defer_waits_without_spending_an_attempt", &[]),
    ("cancel_settlement_finishes_unrun", &[]),
    ("workflow_membership_round_trips", &[]),
    ("dead_lettering", &[]),
    ("invalid_jobs_are_refused_alike", &[]),
    ("capabilities_are_declared_honestly", &[]),
    ("ordering_by_priority_then_run_at", &[Cap(C::Priorities)]),
    ("unique_keys", &[Cap(C::UniqueKeys)]),
    ("backlog_counts_due_jobs", &[Cap(C::Backlog)]),
    ("queue_depths_and_dead_letters", &[Cap(C::QueueDepths)]),
    (
        "results_are_kept",
        &[Cap(C::Inspect), Cap(C::StoredResults)],
    ),
    ("jobs_are_found_by_id_and_counted", &[Cap(C::Inspect)]),
    ("manual_retry_and_purge", &[Cap(C::Inspect)]),
    ("search_and_delete", &[Cap(C::Inspect)]),
    ("manual_retry_fences_the_stale_lease", &[Cap(C::Inspect)]),
    ("cancel", &[Cap(C::CancelQueued)]),
    ("purge_by_age", &[Cap(C::RetentionByAge)]),
    ("worker_reports", &[Cap(C::WorkerReports)]),
];

/// Checks that `run` and `ignored` together name every test of [`TESTS`] once, that every
/// run test has what it needs, and that every ignored test needs something the broker lacks.
/// The [`conformance_suite!`](crate::conformance_suite) macro calls it as a test of its own.
pub fn check_coverage(f: &Fixture, run: &[&str], ignored: &[&str]) {
    let caps = f.broker.capabilities();
    let has = |n: &Needs| match n {
        Needs::Capability(c) => caps.has(*c),
        Needs::InjectedClock => !f.real_time,
    };
    for name in run.iter().chain(ignored) {
        assert!(
            TESTS.iter().any(|(t, _)| t == name),
            "`{name}` is not a conformance test"
        );
        assert_eq!(
            run.iter().chain(ignored).filter(|n| *n == name).count(),
            1,
            "`{name}` is listed twice"
        );
    }
    for (name, needs) in TESTS {
        let lacking: Vec<&Needs> = needs.iter().filter(|n| !has(n)).collect();
        if run.contains(name) {
            assert!(
                lacking.is_empty(),
                "`{name}` runs, but the broker lacks {lacking:?} (declared: {caps:?})"
            );
        } else if ignored.contains(name) {
            assert!(
                !lacking.is_empty(),
                "`{name}` is ignored, but the broker declares all it needs ({needs:?}): run it"
            );
        } else {
            panic!("`{name}` is neither run nor ignored");
        }
    }
}

/// Runs the suite against brokers made by `$make` (an `async fn() -> Fixture`): the tests
/// under `run`, and those under `ignore` as `#[ignore]`d tests with their reason. A test of
/// its own checks the lists against [`TESTS`] and the broker's declared capabilities (see
/// [`check_coverage`]).
#[macro_export]
macro_rules! conformance_suite {
    ($make:path; run: [$($run:ident),* $(,)?]; ignore: [$($ign:ident => $why:literal),* $(,)?] $(;)?) => {
        mod conformance {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $run() {
                    $crate::conformance::$run($make().await).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = $why]
                async fn $ign() {
                    $crate::conformance::$ign($make().await).await;
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_test_runs_unless_the_broker_declares_it_cannot() {
                let f = $make().await;
                $crate::conformance::check_coverage(
                    &f,
                    &[$(stringify!($run)),*],
                    &[$(stringify!($ign)),*],
                );
            }
        }
    };
}

pub(crate) const LEASE: Duration = Duration::from_secs(30);

pub(crate) fn req(queue: &str, max: usize) -> FetchRequest {
    FetchRequest {
        queues: vec![queue.to_owned()],
        max,
        lease: LEASE,
        wait: Duration::ZERO,
    }
}

pub(crate) fn job(queue: &str) -> NewJob {
    NewJob::new("test", b"{}".to_vec()).queue(queue)
}

pub(crate) async fn fetch(b: &dyn Broker, queue: &str, max: usize) -> Vec<Delivery> {
    b.fetch(req(queue, max)).await.expect("fetch")
}

/// A fetch that expects a job: it waits up to the fixture's delivery wait.
pub(crate) async fn fetch_some(f: &Fixture, queue: &str, max: usize) -> Vec<Delivery> {
    f.broker
        .fetch(FetchRequest {
            wait: f.delivery_wait,
            ..req(queue, max)
        })
        .await
        .expect("fetch")
}

/// Fetches until a job comes or `tries` fetches of the delivery wait found none.
pub(crate) async fn fetch_until(f: &Fixture, queue: &str, tries: usize) -> Vec<Delivery> {
    for _ in 0..tries {
        let got = fetch_some(f, queue, 1).await;
        if !got.is_empty() {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Vec::new()
}

pub(crate) async fn settle(b: &dyn Broker, d: &Delivery, s: Settlement) -> SettleOutcome {
    b.settle(vec![(d.lease, s)]).await.expect("settle")[0]
}

pub(crate) fn ok() -> Settlement {
    Settlement::Succeeded { result: None }
}

/// The broker's [`Inspect`], which the test needs (it declares [`Capability::Inspect`]).
pub(crate) fn inspect(f: &Fixture) -> &dyn Inspect {
    f.broker
        .inspect()
        .expect("the broker declares Inspect but has none")
}

/// The [`Inspect`] of a broker that declares it, to check more where it can; `None` for one
/// that does not (whose test then checks what it can another way).
pub(crate) fn inspect_if_declared(f: &Fixture) -> Option<&dyn Inspect> {
    if f.broker.capabilities().has(Capability::Inspect) {
        Some(inspect(f))
    } else {
        None
    }
}

pub(crate) async fn state_of(i: &dyn Inspect, id: JobId) -> JobState {
    i.get(id).await.expect("get").expect("job exists").state
}
