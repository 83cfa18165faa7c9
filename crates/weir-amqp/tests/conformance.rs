//! The shared broker conformance suite against a real RabbitMQ.

mod common;

use std::sync::Arc;
use std::time::Duration;

use weir_amqp::AmqpBroker;
use weir_testkit::{manual_clock, Fixture};

async fn fixture() -> Fixture {
    let prefix = common::prefix();
    let broker = Arc::new(AmqpBroker::new(&common::url_in(&prefix, "")).expect("url"));
    Fixture::new(
        broker.clone(),
        manual_clock(),
        common::Cleanup(broker, prefix),
    )
    .real_time()
    .delivery_wait(Duration::from_secs(5))
    .skip(
        "ordering_by_priority_then_run_at",
        "RabbitMQ queues are FIFO: quorum queues have no priorities",
    )
    .skip(
        "unique_keys",
        "RabbitMQ cannot look a job up by key: unique keys need the embedded broker",
    )
}

weir_testkit::conformance_suite!(fixture);
