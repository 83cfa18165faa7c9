//! The embedded SQLite broker runs the shared conformance suite, each test on a new file.

use std::sync::Arc;

use weir_sqlite::{SqliteBroker, SqliteOptions};
use weir_testkit::{manual_clock, Fixture};

async fn fixture() -> Fixture {
    let clock = manual_clock();
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions::new(dir.path().join("weir.db")).clock(clock.clone());
    let broker = SqliteBroker::open_with(opts).unwrap();
    Fixture::new(Arc::new(broker), clock, dir)
}

weir_testkit::conformance_suite!(fixture);
