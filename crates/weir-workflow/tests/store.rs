//! The memory workflow store runs the shared store suite.

use std::sync::Arc;

use weir_testkit::StoreFixture;
use weir_workflow::MemoryStore;

async fn fixture() -> StoreFixture {
    StoreFixture::new(Arc::new(MemoryStore::new()), ())
}

weir_testkit::store_suite!(fixture);
