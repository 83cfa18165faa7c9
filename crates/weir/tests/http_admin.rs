//! The HTTP API's operator side through the real binary: searching with filters and a
//! cursor, deleting, bulk actions by filter, and the live configuration with its secrets
//! redacted.

mod bin_support;

use std::time::Duration;

use bin_support::http::{http, json_of, serve_http, serve_http_with};
use bin_support::{wait_for, Weir};
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

/// Searching by text and kind with a cursor, deleting one job, and bulk actions by a filter
/// that reach every matching job, not only one page.
#[test]
fn search_pages_and_bulk_actions_by_filter() {
    let w = Weir::new();
    let (_serving, addr) = serve_http(&w, &[]);
    // 30 jobs that fail for good, 5 that succeed.
    let mut jobs: Vec<String> = (0..30)
        .map(|n| format!(r#"{{"kind":"fail","payload":{{"times":99,"n":{n}}},"max_attempts":1}}"#))
        .collect();
    jobs.extend((0..5).map(|n| format!(r#"{{"kind":"echo","payload":{{"tag":"keep-{n}"}}}}"#)));
    let (code, body) = http(
        &addr,
        "POST",
        "/api/v1/jobs",
        None,
        Some(&format!("[{}]", jobs.join(","))),
    );
    assert_eq!(code, 201, "{body}");
    wait_for("35 jobs to finish", LONG, || {
        let (_, body) = http(&addr, "GET", "/api/v1/queues", None, None);
        let q = json_of(&body)["queues"][0].clone();
        if q["failed"] == 30 && q["succeeded"] == 5 {
            Ok(())
        } else {
            Err(q)
        }
    });
    // Pages of 7 through the failures: every one once, then `next: null`.
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/v1/jobs?state=failed&limit=7".to_owned(),
            Some(c) => format!("/api/v1/jobs?state=failed&limit=7&cursor={c}"),
        };
        let (code, body) = http(&addr, "GET", &path, None, None);
        assert_eq!(code, 200, "{body}");
        let page = json_of(&body);
        for j in page["jobs"].as_array().unwrap() {
            assert_eq!(j["state"], "failed");
            assert!(
                seen.insert(j["id"].as_str().unwrap().to_owned()),
                "twice: {j}"
            );
        }
        match page["next"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    // Text in the payload, and kind.
    let (_, body) = http(&addr, "GET", "/api/v1/jobs?text=keep-3", None, None);
    let found = json_of(&body)["jobs"].clone();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["payload"]["tag"], "keep-3");
    let (_, body) = http(&addr, "GET", "/api/v1/jobs?kind=echo&limit=100", None, None);
    assert_eq!(json_of(&body)["jobs"].as_array().unwrap().len(), 5);
    // A creation-time range, in ms since the epoch.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let (code, body) = http(
        &addr,
        "GET",
        &format!("/api/v1/jobs?since=0&until={}&limit=100", now + 60_000),
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_of(&body)["jobs"].as_array().unwrap().len(), 35);
    let (_, body) = http(
        &addr,
        "GET",
        &format!("/api/v1/jobs?since={}", now + 60_000),
        None,
        None,
    );
    assert_eq!(json_of(&body)["jobs"], json!([]));
    // Delete one finished job; a second delete is a 404.
    let keep3 = found[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        http(
            &addr,
            "DELETE",
            &format!("/api/v1/jobs/{keep3}"),
            None,
            None
        )
        .0,
        200
    );
    assert_eq!(
        http(
            &addr,
            "DELETE",
            &format!("/api/v1/jobs/{keep3}"),
            None,
            None
        )
        .0,
        404
    );

    // Bulk retry of every failed `fail` job (more than one page), a few at a time via `max`.
    let (code, body) = http(
        &addr,
        "POST",
        "/api/v1/jobs/bulk",
        None,
        Some(r#"{"action":"retry","filter":{"state":"failed","kind":"fail"},"max":20}"#),
    );
    assert_eq!(code, 200, "{body}");
    let first = json_of(&body);
    assert_eq!(
        (first["matched"].as_u64(), first["done"].as_u64()),
        (Some(20), Some(20)),
        "{first}"
    );
    let next = first["next"]
        .as_str()
        .expect("stopped at max, with a cursor")
        .to_owned();
    let (_, body) = http(
        &addr,
        "POST",
        "/api/v1/jobs/bulk",
        None,
        Some(&format!(
            r#"{{"action":"retry","filter":{{"state":"failed","kind":"fail"}},"cursor":"{next}"}}"#
        )),
    );
    let rest = json_of(&body);
    assert_eq!(rest["done"], 10, "{rest}");
    assert!(rest["next"].is_null(), "{rest}");
    // They ran again (and failed again): each now on its second attempt.
    wait_for("the 30 retried jobs to fail again", LONG, || {
        let (_, body) = http(
            &addr,
            "GET",
            "/api/v1/jobs?state=failed&limit=100",
            None,
            None,
        );
        let jobs = json_of(&body)["jobs"].clone();
        let again = jobs
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["attempt"] == 2)
            .count();
        if again == 30 {
            Ok(())
        } else {
            Err(again)
        }
    });
    // A bulk action that does not apply says so per job, and changes nothing.
    let (_, body) = http(
        &addr,
        "POST",
        "/api/v1/jobs/bulk",
        None,
        Some(r#"{"action":"retry","filter":{"kind":"echo"}}"#),
    );
    let refused = json_of(&body);
    assert_eq!(
        (refused["matched"].as_u64(), refused["done"].as_u64()),
        (Some(4), Some(0)),
        "{refused}"
    );
    assert!(
        refused["refused"][0]["error"]
            .as_str()
            .unwrap()
            .contains("succeeded"),
        "{refused}"
    );
    // Bulk delete of every failed job; the succeeded ones stay.
    let (_, body) = http(
        &addr,
        "POST",
        "/api/v1/jobs/bulk",
        None,
        Some(r#"{"action":"delete","filter":{"state":"failed"}}"#),
    );
    assert_eq!(json_of(&body)["done"], 30, "{body}");
    let (_, body) = http(&addr, "GET", "/api/v1/queues", None, None);
    let q = &json_of(&body)["queues"][0];
    assert_eq!(
        (q["failed"].as_u64(), q["succeeded"].as_u64()),
        (Some(0), Some(4)),
        "{q}"
    );
    // A bad action or filter is a 400.
    for bad in [
        r#"{"action":"explode"}"#,
        r#"{"action":"retry","filter":{"colour":"red"}}"#,
        r#"{"action":"retry","max":0}"#,
    ] {
        assert_eq!(
            http(&addr, "POST", "/api/v1/jobs/bulk", None, Some(bad)).0,
            400,
            "{bad}"
        );
    }
}

/// The configuration in force, as the API shows it: the file's settings (secrets redacted),
/// and after a refused change, that the file on disk is not the one running.
#[test]
fn the_live_configuration_is_shown_with_secrets_redacted() {
    let w = Weir::new();
    let toml = "log = \"info\"\n# store = \"postgres://weir:hunter2@db/weir\"\n[queues.default]\nworkers = 3\n";
    w.file("weir.toml", toml);
    let (_serving, addr) = serve_http(&w, &[]);
    let (code, body) = http(&addr, "GET", "/api/v1/config", None, None);
    assert_eq!(code, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["settings"]["queues"]["default"]["workers"], 3, "{v}");
    assert_eq!(v["applied"], true, "{v}");
    // A broken change is refused by the worker; the API says the file is not what runs.
    w.file("weir.toml", "[queues.default]\nworkers = \"many\"\n");
    let v = wait_for("the refused reload to show", LONG, || {
        let (_, body) = http(&addr, "GET", "/api/v1/config", None, None);
        let v = json_of(&body);
        if v["refused_reloads"].as_u64() >= Some(1) {
            Ok(v)
        } else {
            Err(v)
        }
    });
    assert_eq!(v["applied"], false, "{v}");
    // The metrics count it too.
    let (_, metrics) = http(&addr, "GET", "/metrics", None, None);
    assert!(
        metrics.contains(r#"weir_config_reloads_total{result="rejected"}"#),
        "{metrics}"
    );
    // A store URL with a password is shown without it.
    w.file(
        "weir.toml",
        "store = \"sqlite:./weir.db?password=hunter2\"\n[queues.default]\nworkers = 3\n",
    );
    let v = wait_for("the new file to be read", LONG, || {
        let (_, body) = http(&addr, "GET", "/api/v1/config", None, None);
        let v = json_of(&body);
        if v["settings"]["store"].is_string() {
            Ok(v)
        } else {
            Err(v)
        }
    });
    assert!(!v.to_string().contains("hunter2"), "{v}");
}

/// `--audit-log FILE`: every change through the API is appended to the file, and a restarted
/// worker lists the earlier changes again.
#[test]
fn the_audit_log_file_outlives_a_restart() {
    let w = Weir::new();
    let file = w.dir.path().join("audit.jsonl");
    let args = ["--audit-log", file.to_str().unwrap()];
    let (serving, addr) = serve_http_with(&w, &args, &[]);
    let (code, body) = http(
        &addr,
        "POST",
        "/api/v1/jobs",
        None,
        Some(r#"{"kind":"noop"}"#),
    );
    assert_eq!(code, 201, "{body}");
    let status = serving.terminate(LONG);
    assert!(status.success(), "{status}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["what"], "POST /api/v1/jobs");
    assert_eq!(lines[0]["who"], "open");
    assert_eq!(lines[0]["status"], 201);

    let (_serving, addr) = serve_http_with(&w, &args, &[]);
    let (_, body) = http(&addr, "GET", "/api/v1/audit", None, None);
    assert_eq!(json_of(&body)["entries"], json!([lines[0]]));

    // Without --http there is nothing to audit: a usage error, not a silent no-op.
    let out = w.run(&["serve", "--audit-log", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

/// A list page leaves out a payload over 64 KiB (saying its size); the job by id has it.
#[test]
fn list_pages_leave_out_large_payloads() {
    let w = Weir::new();
    let (_serving, addr) = serve_http(&w, &[]);
    let big = "x".repeat(100 << 10);
    let body = json!({ "kind": "noop", "payload": { "blob": big }, "queue": "idle" }).to_string();
    let (code, out) = http(&addr, "POST", "/api/v1/jobs", None, Some(&body));
    assert_eq!(code, 201, "{out}");
    let id = json_of(&out)["id"].as_str().unwrap().to_owned();
    let (_, page) = http(&addr, "GET", "/api/v1/jobs?queue=idle", None, None);
    let listed = &json_of(&page)["jobs"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["payload"], serde_json::Value::Null);
    assert!(
        listed["payload_elided"]["bytes"].as_u64().unwrap() > 100 << 10,
        "{listed}"
    );
    assert!(
        page.len() < 10 << 10,
        "the page carries the payload: {} bytes",
        page.len()
    );
    let (_, one) = http(&addr, "GET", &format!("/api/v1/jobs/{id}"), None, None);
    assert_eq!(
        json_of(&one)["payload"]["blob"].as_str().map(str::len),
        Some(100 << 10)
    );
}
