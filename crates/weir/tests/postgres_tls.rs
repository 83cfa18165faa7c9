//! TLS to the PostgreSQL workflow store through the real binary: a workflow runs with its
//! state in PostgreSQL over `sslmode=require`, and `verify-full` against an address the
//! server's certificate does not name is refused with the reason (Debian's PostgreSQL serves
//! its `ssl-cert-snakeoil` certificate, made for `localhost`).

mod bin_support;

use bin_support::{s, text, Weir};

fn pg_url() -> String {
    std::env::var("WEIR_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drops the test's schema.
struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&pg_url(), postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0));
        }
    }
}

#[test]
fn a_workflow_runs_with_its_store_over_tls_and_a_wrong_name_is_refused() {
    let w = Weir::new();
    let schema = format!("weir_tls_{}", uuid::Uuid::new_v4().simple());
    let _drop = DropSchema(schema.clone());
    let store = format!("{}?schema={schema}&sslmode=require", pg_url());
    let _serving = w.serve(&["--store", &store]);
    let spec = w.file(
        "chain.json",
        r#"{"shape":"chain","steps":[{"kind":"echo","payload":[1,2]},{"kind":"echo"}]}"#,
    );
    let done = w.json(&[
        "workflow",
        "submit",
        "--store",
        &store,
        "--wait",
        "--timeout",
        "60s",
        "--json",
        s(&spec),
    ]);
    assert_eq!(done["result"], serde_json::json!([1, 2]), "{done}");

    let wrong = format!(
        "{}?schema={schema}&sslmode=verify-full&sslrootcert=/etc/ssl/certs/ssl-cert-snakeoil.pem",
        pg_url()
    );
    let id = done["workflow"]["id"].as_str().unwrap();
    let out = w.run(&["inspect", id, "--store", &wrong]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
}
