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

/// Tables made by a weir without `weir_workflows.started` get it on connect, their
/// workflows counted as fully submitted (no rescue enqueues their jobs again); connecting
/// again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_from_before_started_are_upgraded_on_connect() {
    use weir_core::Timestamp;
    use weir_workflow::StateStore;

    let schema = format!("weir_test_{}", uuid::Uuid::new_v4().simple());
    let _drop = DropSchema(schema.clone());
    let (u, s) = (url(), schema.clone());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&u, postgres::NoTls).unwrap();
        c.batch_execute(&format!(
            "CREATE SCHEMA \"{s}\"; SET search_path TO \"{s}\";
             CREATE TABLE weir_workflows (
                 id BYTEA PRIMARY KEY, shape SMALLINT NOT NULL, mode SMALLINT NOT NULL,
                 state SMALLINT NOT NULL, children BIGINT NOT NULL, succeeded BIGINT NOT NULL,
                 failed BIGINT NOT NULL, cancelled BIGINT NOT NULL, trace_id TEXT NOT NULL,
                 created_at BIGINT NOT NULL, finished_at BIGINT);
             INSERT INTO weir_workflows VALUES ('\\x01', 2, 0, 0, 5, 0, 0, 0, 't', 0, NULL);"
        ))
        .unwrap();
    })
    .join()
    .unwrap();
    let opts = PgOptions::from_url(&format!("{}?schema={schema}", url())).unwrap();
    for _ in 0..2 {
        let store = PgStore::connect(opts.clone()).await.unwrap();
        let listed = store.unstarted(Timestamp(i64::MAX), 10).await.unwrap();
        assert!(listed.is_empty(), "{listed:?}");
    }
}
