//! The PostgreSQL workflow store runs the shared store suite against the real server
//! (`WEIR_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`), each test in a
//! schema of its own, dropped afterwards.

use std::sync::Arc;

use weir_postgres::{PgOptions, PgStore};
use weir_testkit::StoreFixture;

fn url() -> String {
    std::env::var("WEIR_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drops the test's schema when the fixture goes.
struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (url(), self.0.clone());
        // On its own thread: the blocking client must not run on a runtime thread.
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
            }
        })
        .join();
    }
}

async fn fixture() -> StoreFixture {
    let schema = format!("weir_test_{}", uuid::Uuid::new_v4().simple());
    let opts = PgOptions::from_url(&format!("{}?schema={schema}", url())).unwrap();
    let store = PgStore::connect(opts)
        .await
        .expect("connecting to PostgreSQL (scripts/services starts it)");
    StoreFixture::new(Arc::new(store), DropSchema(schema))
}

weir_testkit::store_suite!(fixture);
