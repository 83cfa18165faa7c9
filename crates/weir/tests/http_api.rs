//! The HTTP API and `/metrics` as an operator meets them: `weir serve --http` on a real file
//! and `weir http` on a real RabbitMQ, driven over real sockets. Tokens (a read-only token
//! changes nothing), an open API refused on a public address, bad requests answered with the
//! reason and nothing changed, a job and a workflow driven to their end, and `/metrics`
//! checked by `promtool check metrics`.

mod bin_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bin_support::http::{bound, http, json_of, serve_http, serve_http_with};
use bin_support::{s, spawn_logged, text, wait_for, Weir};
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

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
    assert_eq!(q["oldest_age_seconds"], 0.0, "nothing waits: {q}");
    // Throughput needs a second sample at least a second later.
    std::thread::sleep(Duration::from_millis(1100));
    let (_, body) = http(&addr, "GET", "/api/v1/queues", None, None);
    let q = &json_of(&body)["queues"][0];
    assert!(
        q["throughput"]["per_second"].as_f64().unwrap() >= 0.0,
        "{q}"
    );
    assert!(
        q["throughput"]["over_seconds"].as_f64().unwrap() >= 1.0,
        "{q}"
    );
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
        r#"weir_jobs_dead_lettered_total{queue="default"}"#,
        r#"weir_workflows_finished_total{shape="chain",state="succeeded"} 1"#,
        r#"weir_queue_oldest_age_seconds{queue="default"} 0"#,
        r#"weir_store_op_seconds_bucket{op="complete""#,
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
/// reason, never an empty success. The queues it reports depths of are the configuration's
/// (RabbitMQ cannot list them).
#[test]
fn rabbitmq_answers_501_for_what_it_cannot_do() {
    let w = Weir::new();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?prefix=weir-http-{}.",
        uuid::Uuid::new_v4().simple()
    );
    let config = w.file("weir.toml", "[queues.web]\nworkers = 1\n");
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.current_dir(w.dir.path())
        .env_remove("WEIR_CONFIG")
        .args([
            "--broker",
            &url,
            "--log",
            "info",
            "--config",
            s(&config),
            "http",
            "127.0.0.1:0",
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

/// The value of the first `/metrics` line that starts with `series` (name and labels).
fn sample(addr: &str, series: &str) -> Option<f64> {
    let (_, metrics) = http(addr, "GET", "/metrics", None, None);
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A named limit's deferrals and in-flight jobs, and a waiting queue's age, read where an
/// operator reads them: `/metrics` and `/api/v1/queues` of a running worker.
#[test]
fn limits_and_backlog_are_visible_in_metrics() {
    let w = Weir::new();
    let config = w.file(
        "weir.toml",
        "[queues.default]\nworkers = 4\n\n[limits.one]\nconcurrency = 1\n\n[kinds.sleep]\nlimits = [\"one\"]\n",
    );
    let (_serving, addr) = serve_http_with(&w, &["--config", s(&config)], &[]);
    for _ in 0..3 {
        w.ok(&["enqueue", "sleep", "--payload", r#"{"ms":1500}"#]);
    }
    wait_for(
        "one job to hold the limit while others are put off",
        LONG,
        || {
            let held = sample(&addr, r#"weir_limit_in_flight{limit="one"}"#);
            let put_off = sample(&addr, r#"weir_limit_deferrals_total{limit="one"}"#);
            match (held, put_off) {
                (Some(h), Some(d)) if h == 1.0 && d >= 1.0 => Ok(()),
                other => Err(other),
            }
        },
    );
    // The deferred jobs wait, due: the queue is behind, and says by how much.
    let (_, body) = http(&addr, "GET", "/api/v1/queues", None, None);
    let q = &json_of(&body)["queues"][0];
    assert!(
        q["pending"].as_u64().unwrap() + q["running"].as_u64().unwrap() >= 2,
        "{q}"
    );
    wait_for("all three to finish, one at a time", LONG, || match sample(
        &addr,
        r#"weir_jobs{queue="default",state="succeeded"}"#,
    ) {
        Some(3.0) => Ok(()),
        other => Err(other),
    });
    assert_eq!(
        sample(&addr, r#"weir_limit_in_flight{limit="one"}"#),
        Some(0.0)
    );
}

/// A worker killed mid-job: the next worker takes its lease back, and counts it.
#[test]
fn reclaimed_leases_are_counted() {
    let w = Weir::new();
    let first = w.serve(&["--lease", "2s"]);
    let id = w.ok(&["enqueue", "sleep", "--payload", r#"{"ms":60000}"#]);
    let id = id.trim();
    wait_for("the job to run", LONG, || {
        let j = w.json(&["inspect", id, "--json"]);
        if j["state"] == "running" {
            Ok(())
        } else {
            Err(j)
        }
    });
    first.kill();
    let (_serving, addr) = serve_http_with(&w, &["--lease", "2s"], &[]);
    wait_for("the lost lease to be reclaimed", LONG, || {
        match sample(&addr, r#"weir_leases_reclaimed_total{queue="default"}"#) {
            Some(1.0) => Ok(()),
            other => Err(other),
        }
    });
}

/// `/readyz` answers without a token (for probes), so behind tokens it says what is down but
/// not why: the reason, which can name hosts and users, goes to the log.
#[test]
fn readyz_keeps_the_reason_in_the_log_behind_tokens() {
    let w = Weir::new();
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.current_dir(w.dir.path())
        .env_remove("WEIR_BROKER")
        .env_remove("WEIR_CONFIG");
    c.args([
        "--broker",
        "amqp://weiruser:hunter2@127.0.0.1:1/",
        "--log",
        "info",
        "http",
        "127.0.0.1:0",
    ])
    .env("WEIR_API_READ_TOKEN", "r3ad")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let (_serving, log) = spawn_logged(c);
    let addr = bound(&log);
    let (code, body) = http(&addr, "GET", "/readyz", None, None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");
    for secret in ["hunter2", "weiruser", "127.0.0.1:1"] {
        assert!(!body.contains(secret), "/readyz shows {secret}: {body}");
    }
    wait_for("the reason in the log", LONG, || {
        let l = log.lock().unwrap();
        if l.contains("/readyz: the broker is unavailable") && !l.contains("hunter2") {
            Ok(())
        } else {
            Err(l.clone())
        }
    });
}
