//! The memory broker runs the shared conformance suite.

use std::sync::Arc;

use weir_core::MemoryBroker;
use weir_testkit::{manual_clock, Fixture};

async fn fixture() -> Fixture {
    let clock = manual_clock();
    Fixture::new(Arc::new(MemoryBroker::with_clock(clock.clone())), clock, ())
}

weir_testkit::conformance_suite!(fixture);
