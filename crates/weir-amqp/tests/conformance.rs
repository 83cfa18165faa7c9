//! The shared broker conformance suite against a real RabbitMQ. The fixture connects first,
//! so a RabbitMQ that is down fails these tests rather than skipping them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use weir_amqp::AmqpBroker;
use weir_testkit::{manual_clock, Fixture};

async fn fixture() -> Fixture {
    let prefix = common::prefix();
    let broker = Arc::new(AmqpBroker::new(&common::url_in(&prefix, "")).expect("url"));
    broker
        .connect(&[])
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (scripts/services starts it)");
    Fixture::new(
        broker.clone(),
        manual_clock(),
        common::Cleanup(broker, prefix),
    )
    .real_time()
    .delivery_wait(Duration::from_secs(5))
}

weir_testkit::conformance_suite!(fixture;
    run: [
        enqueue_fetch_settle,
        delayed_jobs_wait,
        fetch_waits_for_new_jobs,
        waiting_fetch_gets_delayed_job,
        concurrent_workers_no_double_delivery,
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
        backlog_counts_due_jobs,
        queue_depths_and_dead_letters,
    ];
    ignore: [
        clock_stepping_back_loses_no_job => "RabbitMQ runs on the wall clock: no injected clock to step back",
        ordering_by_priority_then_run_at => "declares no Priorities: RabbitMQ queues are FIFO",
        unique_keys => "declares no UniqueKeys: RabbitMQ cannot look a job up by key",
        results_are_kept => "declares no Inspect: RabbitMQ keeps no job after its ack",
        jobs_are_found_by_id_and_counted => "declares no Inspect: RabbitMQ cannot find a message by id",
        manual_retry_and_purge => "declares no Inspect: RabbitMQ cannot find a message by id",
        search_and_delete => "declares no Inspect: RabbitMQ cannot find a message by id",
        manual_retry_fences_the_stale_lease => "declares no Inspect: no manual retry by id",
        cancel => "declares no CancelQueued: RabbitMQ cannot remove a queued message",
        purge_by_age => "declares no RetentionByAge: RabbitMQ keeps no finished job",
        worker_reports => "declares no WorkerReports",
    ];
);
