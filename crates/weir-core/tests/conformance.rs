//! The memory broker runs the shared conformance suite.

use std::sync::Arc;

use weir_core::MemoryBroker;
use weir_testkit::{manual_clock, Fixture};

async fn fixture() -> Fixture {
    let clock = manual_clock();
    Fixture::new(Arc::new(MemoryBroker::with_clock(clock.clone())), clock, ())
}

weir_testkit::conformance_suite!(fixture;
    run: [
        enqueue_fetch_settle,
        delayed_jobs_wait,
        fetch_waits_for_new_jobs,
        waiting_fetch_gets_delayed_job,
        concurrent_workers_no_double_delivery,
        clock_stepping_back_loses_no_job,
        lease_expiry_and_fencing,
        lease_expiry_exhausts_attempts,
        lost_member_comes_back_past_its_attempts,
        heartbeat_extends_lease,
        retry_scheduling,
        release_gives_job_back,
        defer_waits_without_spending_an_attempt,
        cancel_settlement_finishes_unrun,
        workflow_membership_round_trips,
        dead_lettering,
        invalid_jobs_are_refused_alike,
        capabilities_are_declared_honestly,
        ordering_by_priority_then_run_at,
        unique_keys,
        backlog_counts_due_jobs,
        results_are_kept,
        jobs_are_found_by_id_and_counted,
        manual_retry_and_purge,
        search_and_delete,
        manual_retry_fences_the_stale_lease,
        cancel,
        purge_by_age,
        worker_reports,
    ];
    ignore: [
        queue_depths_and_dead_letters => "declares no QueueDepths: Inspect counts and lists jobs instead",
    ];
);
