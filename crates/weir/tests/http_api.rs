//! The HTTP API and `/metrics` as an operator meets them: `weir serve --http` on a real file
//! and `weir http` on a real RabbitMQ, driven over real sockets. Tokens (a read-only token
//! changes nothing), an open API refused on a public address, bad requests answered with the
//! reason and nothing changed, a job and a workflow driven to their end, and `/metrics`
//! checked by `promtool check metrics`.

mod bin_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bin_support::{text, wait_for, Serving, Weir};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

/// One HTTP/1.1 exchange over a fresh connection: (status, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("the API accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = text(&raw);
    let (head, rest) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The address a `weir serve --http 127.0.0.1:0` (or `weir http`) bound, from its log.
fn bound(log: &Arc<Mutex<String>>) -> String {
    wait_for("the API to listen", LONG, || {
        let l = log.lock().unwrap();
        l.lines()
            .find(|l| l.contains("HTTP API listening"))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
            .ok_or_else(|| l.clone())
    })
}

fn serve_http(w: &Weir, env: &[(&str, &str)]) -> (Serving, String) {
    let mut c = w.cmd(&[]);
    c.args([
        "--log",
        "info",
        "serve",
        "--tick",
        "1s",
        "--http",
        "127.0.0.1:0",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let (serving, log) = spawn_logged(c);
    let addr = bound(&log);
    (serving, addr)
}

fn spawn_logged(mut c: Command) -> (Serving, Arc<Mutex<String>>) {
    let mut child = c.spawn().expect("weir starts");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    (Serving::guard(child), log)
}

#[test]
fn jobs_and_workflows_through_the_api_with_health_and_metrics() {
    let w = Weir::new();
    let (_serving, addr) = serve_http(&w, &[]);
    assert_eq!(
        http(&addr, "GET", "/healthz", None, None),
        (200, "ok\n".into())
    );
    let (code, body) = http(&addr, "GET", "/readyz", None, None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_of(&body), json!({ "broker": "ok", "store": "ok" }));

    // One job, enqueued over HTTP, runs, and reads back with its result.
    let (code, body) = http(
        &addr,
        "POST",
        "/api/v1/jobs",
        None,
        Some(r#"{"kind":"echo","payload":{"n":7}}"#),
    );
    assert_eq!(code, 201, "{body}");
    let id = json_of(&body)["id"].as_str().unwrap().to_owned();
    let job = wait_for("the job to succeed", LONG, || {
        let (_, body) = http(&addr, "GET", &format!("/api/v1/jobs/{id}"), None, None);
        let j = json_of(&body);
        if j["state"] == "succeeded" {
            Ok(j)
        } else {
            Err(j)
        }
    });
    assert_eq!(job["result"], json!({ "n": 7 }));
    // The CLI sees the same job.
    assert_eq!(w.json(&["inspect", &id, "--json"])["state"], "succeeded");

    // Many at once, then a failure the API lists as failed.
    let (code, body) = http(
        &addr,
        "POST",
        "/api/v1/jobs",
        None,
        Some(r#"[{"kind":"noop"},{"kind":"fail","payload":{"times":9},"max_attempts":1}]"#),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(json_of(&body)["jobs"].as_array().unwrap().len(), 2);
    let failed = wait_for("the failing job to be listed", LONG, || {
        let (_, body) = http(&addr, "GET", "/api/v1/jobs?state=failed", None, None);
        let jobs = json_of(&body)["jobs"].clone();
        if jobs.as_array().is_some_and(|a| a.len() == 1) {
            Ok(jobs[0].clone())
        } else {
            Err(jobs)
        }
    });
    assert_eq!(failed["kind"], "fail");
    // Retry it by id: it runs again (and fails again: it fails 9 times).
    let fid = failed["id"].as_str().unwrap();
    let (code, body) = http(
        &addr,
        "POST",
        &format!("/api/v1/jobs/{fid}/retry"),
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");

    // A workflow, submitted and followed to its result.
    let (code, body) = http(
        &addr,
        "POST",
        "/api/v1/workflows",
        None,
        Some(r#"{"shape":"chain","steps":[{"kind":"echo","payload":[1,2]},{"kind":"echo"}]}"#),
    );
    assert_eq!(code, 201, "{body}");
    let wf = json_of(&body)["id"].as_str().unwrap().to_owned();
    let done = wait_for("the workflow to finish", LONG, || {
        let (_, body) = http(&addr, "GET", &format!("/api/v1/workflows/{wf}"), None, None);
        let v = json_of(&body);
        if v["workflow"]["state"] == "succeeded" {
            Ok(v)
        } else {
            Err(v)
        }
    });
    assert_eq!(done["result"], json!([1, 2]));
    let members = done["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    // One workflow is one trace: every step's job carries the same trace id.
    let traces: Vec<String> = members
        .iter()
        .map(|m| {
            let (_, body) = http(
                &addr,
                "GET",
                &format!("/api/v1/jobs/{}", m["job_id"].as_str().unwrap()),
                None,
                None,
            );
            json_of(&body)["trace_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(
        !traces[0].is_empty() && traces[0] == traces[1],
        "{traces:?}"
    );

    // Queues and workers: what `weir status` shows.
    let (_, body) = http(&addr, "GET", "/api/v1/queues", None, None);
    let q = &json_of(&body)["queues"][0];
    assert_eq!(q["queue"], "default");
    assert!(q["succeeded"].as_u64().unwrap() >= 4, "{q}");
    let workers = wait_for("a worker report", LONG, || {
        let (_, body) = http(&addr, "GET", "/api/v1/workers", None, None);
        let v = json_of(&body)["workers"].clone();
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            Ok(v)
        } else {
            Err(v)
        }
    });
    assert_eq!(workers[0]["size"], 16);

    // The OpenAPI document names every route.
    let (code, body) = http(&addr, "GET", "/openapi.json", None, None);
    assert_eq!(code, 200);
    let doc = json_of(&body);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/jobs/{id}/cancel"]["post"].is_object());

    // /metrics: what the worker did, in a format promtool accepts.
    let (code, metrics) = http(&addr, "GET", "/metrics", None, None);
    assert_eq!(code, 200);
    for line in [
        r#"weir_attempts_total{queue="default",kind="echo",outcome="success"}"#,
        r#"weir_attempts_total{queue="default",kind="fail",outcome="failed"}"#,
        r#"weir_jobs{queue="default",state="succeeded"}"#,
        r#"weir_pool_size{queue="default"} 16"#,
        "weir_job_run_seconds_bucket{",
        "weir_broker_op_seconds_bucket{op=\"settle\"",
        "weir_build_info{",
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }
    // Every metric the Grafana dashboard in deploy/ queries is one weir exports.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/weir.json"
    ))
    .unwrap();
    for name in dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("weir_"))
    {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; scripts/services installs it)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn tokens_guard_the_api_and_bad_requests_change_nothing() {
    let w = Weir::new();
    let (_serving, addr) = serve_http(
        &w,
        &[
            ("WEIR_API_READ_TOKEN", "reader"),
            ("WEIR_API_ADMIN_TOKEN", "boss"),
        ],
    );
    let job = r#"{"kind":"noop"}"#;
    // No token, an unknown one: 401. Health needs none.
    assert_eq!(http(&addr, "GET", "/api/v1/queues", None, None).0, 401);
    assert_eq!(http(&addr, "GET", "/metrics", Some("guess"), None).0, 401);
    assert_eq!(http(&addr, "GET", "/healthz", None, None).0, 200);
    // The read-only token reads, and cannot enqueue: nothing is stored.
    assert_eq!(
        http(&addr, "GET", "/api/v1/queues", Some("reader"), None).0,
        200
    );
    let (code, body) = http(&addr, "POST", "/api/v1/jobs", Some("reader"), Some(job));
    assert_eq!(code, 403, "{body}");
    assert!(json_of(&body)["error"]
        .as_str()
        .unwrap()
        .contains("read-only"));
    let (_, body) = http(&addr, "GET", "/api/v1/jobs", Some("reader"), None);
    assert_eq!(json_of(&body)["jobs"], json!([]));

    // Bad requests: a clear 400 that names the problem, and nothing stored.
    for (body, why) in [
        (r#"{"kind":"#, "JSON"),
        (
            r#"{"kind":"noop","colour":"red"}"#,
            "unknown field `colour`",
        ),
        (r#"{"kind":"noop","queue":"amq.x"}"#, "reserved"),
        (r#"{"kind":"noop","delay":"soon"}"#, "`delay`"),
        (r#"{"kind":"noop","timeout":"0s"}"#, "timeout"),
        (r#"[]"#, "empty"),
        (r#"[{"kind":"noop"},{"payload":1}]"#, "job 1"),
    ] {
        let (code, answer) = http(&addr, "POST", "/api/v1/jobs", Some("boss"), Some(body));
        assert_eq!(code, 400, "{body}: {answer}");
        let error = json_of(&answer)["error"].as_str().unwrap().to_owned();
        assert!(error.contains(why), "{body}: {error}");
    }
    // A body over the limit is a 413, and nothing is stored.
    let huge = format!(r#"{{"kind":"noop","payload":"{}"}}"#, "x".repeat(9 << 20));
    let (code, body) = http(&addr, "POST", "/api/v1/jobs", Some("boss"), Some(&huge));
    assert_eq!(code, 413, "{body}");
    for (path, code) in [
        ("/api/v1/jobs/not-an-id", 400),
        ("/api/v1/jobs?limit=0", 400),
        ("/api/v1/jobs?state=lost", 400),
        ("/api/v1/jobs/0190e0a0-0000-7000-8000-000000000000", 404),
        ("/api/v1/nothing", 404),
    ] {
        let (got, body) = http(&addr, "GET", path, Some("reader"), None);
        assert_eq!(got, code, "{path}: {body}");
        assert!(json_of(&body)["error"].is_string(), "{path}: {body}");
    }
    let (_, body) = http(&addr, "GET", "/api/v1/jobs", Some("reader"), None);
    assert_eq!(
        json_of(&body)["jobs"],
        json!([]),
        "a bad request stored something"
    );

    // The admin token changes state, and the change is in the audit log.
    let (code, body) = http(&addr, "POST", "/api/v1/jobs", Some("boss"), Some(job));
    assert_eq!(code, 201, "{body}");
    let (_, body) = http(&addr, "GET", "/api/v1/audit", Some("reader"), None);
    let entries = json_of(&body)["entries"].clone();
    assert_eq!(entries[0]["who"], "admin");
    assert_eq!(entries[0]["what"], "POST /api/v1/jobs");
    assert_eq!(entries[0]["status"], 201);
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["status"] == 403),
        "the refused change is audited too: {entries}"
    );
}

#[test]
fn an_open_api_on_a_public_address_is_refused() {
    let w = Weir::new();
    let out = w.run(&["serve", "--http", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("without a token") && err.contains("WEIR_API_ADMIN_TOKEN"),
        "{err}"
    );
    assert!(!w.db.exists(), "nothing was started");
    // With a token it is allowed.
    let mut c = w.cmd(&["--log", "info", "http", "0.0.0.0:0"]);
    c.env("WEIR_API_ADMIN_TOKEN", "boss")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let (_serving, log) = spawn_logged(c);
    let addr = bound(&log).replace("0.0.0.0", "127.0.0.1");
    assert_eq!(
        http(&addr, "GET", "/api/v1/queues", Some("boss"), None).0,
        200
    );
}

/// RabbitMQ through `weir http`: what it can do works; what it cannot is a 501 with the
/// reason, never an empty success.
#[test]
fn rabbitmq_answers_501_for_what_it_cannot_do() {
    let w = Weir::new();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?prefix=weir-http-{}.",
        uuid::Uuid::new_v4().simple()
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.current_dir(w.dir.path())
        .env_remove("WEIR_CONFIG")
        .args([
            "--broker",
            &url,
            "--log",
            "info",
            "http",
            "127.0.0.1:0",
            "--queues",
            "web",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (_serving, log) = spawn_logged(c);
    let addr = bound(&log);
    let (code, body) = http(&addr, "GET", "/readyz", None, None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(
        &addr,
        "POST",
        "/api/v1/jobs",
        None,
        Some(r#"{"kind":"noop","queue":"web"}"#),
    );
    assert_eq!(code, 201, "{body}");
    let id = json_of(&body)["id"].as_str().unwrap().to_owned();
    let (_, body) = http(&addr, "GET", "/api/v1/queues", None, None);
    let q = &json_of(&body)["queues"][0];
    assert_eq!(
        (q["queue"].as_str(), q["ready"].as_u64()),
        (Some("web"), Some(1)),
        "{q}"
    );
    for (method, path) in [
        ("GET", format!("/api/v1/jobs/{id}")),
        ("POST", format!("/api/v1/jobs/{id}/cancel")),
        ("GET", "/api/v1/jobs".to_owned()),
    ] {
        let (code, body) = http(&addr, method, &path, None, None);
        assert_eq!(code, 501, "{method} {path}: {body}");
        assert!(
            json_of(&body)["error"]
                .as_str()
                .unwrap()
                .contains("RabbitMQ"),
            "{body}"
        );
    }
    let (_, metrics) = http(&addr, "GET", "/metrics", None, None);
    assert!(
        metrics.contains(r#"weir_jobs{queue="web",state="ready"} 1"#),
        "{metrics}"
    );
    // Clean up the queues this test declared.
    let _ = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "--broker", &url, "purge", "--state", "failed", "--queue", "web",
        ])
        .output();
}

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
