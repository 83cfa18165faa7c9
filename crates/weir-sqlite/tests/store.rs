//! The embedded workflow store runs the shared store suite, each test on a new file.

use std::sync::Arc;

use weir_sqlite::{SqliteOptions, SqliteStore};
use weir_testkit::StoreFixture;

async fn fixture() -> StoreFixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("weir.db"))).unwrap();
    StoreFixture::new(Arc::new(store), dir)
}

weir_testkit::store_suite!(fixture);
