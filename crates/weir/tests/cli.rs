//! The `weir` binary's commands, run as a user would.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn weir(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--broker")
        .arg(format!("sqlite:{}", db.display()))
        .args(args)
        .output()
        .expect("weir runs")
}

fn weir_stdin(db: &Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--broker")
        .arg(format!("sqlite:{}", db.display()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn status(db: &Path) -> serde_json::Value {
    let out = weir(db, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn enqueue_inspect_cancel_retry_purge() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db");
    let out = weir(
        &db,
        &[
            "enqueue",
            "sleep",
            "--payload",
            r#"{"ms":5}"#,
            "--queue",
            "q",
            "--delay",
            "1h",
            "--priority",
            "-3",
            "--unique",
            "k1",
            "--max-attempts",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let again = weir(
        &db,
        &[
            "enqueue",
            "sleep",
            "--payload",
            r#"{"ms":5}"#,
            "--queue",
            "q",
            "--unique",
            "k1",
        ],
    );
    assert_eq!(
        text(&again.stdout).trim(),
        id,
        "unique key returns the same id"
    );

    let out = weir(&db, &["inspect", &id, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["state"], "pending");
    // --delay 1h: due an hour after it was created (give or take the clock's millisecond).
    let delay_ms = j["run_at"].as_i64().unwrap() - j["created_at"].as_i64().unwrap();
    assert!(
        (3_600_000..3_600_100).contains(&delay_ms),
        "run_at is created_at + 1h: {delay_ms} ms"
    );
    assert_eq!(j["priority"], -3);
    assert_eq!(j["max_attempts"], 4);
    assert_eq!(j["payload"]["ms"], 5);
    assert_eq!(status(&db)["queues"][0]["pending"], 1);

    let out = weir(&db, &["cancel", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("cancelled"));
    let out = weir(&db, &["retry", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is cancelled"),
        "{}",
        text(&out.stderr)
    );
    let out = weir(&db, &["purge", "--state", "cancelled"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "purged 1 cancelled jobs");
    let out = weir(&db, &["inspect", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no job or workflow with id"));
}

#[test]
fn bad_input_is_named_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bad.db");
    let out = weir(&db, &["enqueue", "noop", "--payload", "{not json"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        text(&out.stderr).contains("--payload") && text(&out.stderr).contains("not valid JSON"),
        "{}",
        text(&out.stderr)
    );

    let out = weir(&db, &["enqueue", "noop", "--delay", "soon"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    assert!(
        text(&out.stderr).contains("`soon` is not a duration"),
        "{}",
        text(&out.stderr)
    );
    let out = weir(&db, &["serve", "--retention", "0s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("use `off` to keep everything"),
        "{}",
        text(&out.stderr)
    );
    let out = weir(
        &db,
        &[
            "purge",
            "--state",
            "succeeded",
            "--queue",
            "q",
            "--older-than",
            "1d",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "--queue and --older-than do not combine"
    );
    let out = weir(&db, &["inspect", "not-an-id"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid job id"),
        "{}",
        text(&out.stderr)
    );
    let out = weir(&db, &["bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--broker", "kafka://x", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("scheme `kafka`"),
        "{}",
        text(&out.stderr)
    );

    let batch = "{\"kind\":\"noop\"}\n{\"kind\":\"sleep\",\"payload\":{\"ms\":1},\"delay\":\"2s\"}\n{\"kind\":\"noop\",\"prio\":1}\n";
    let out = weir_stdin(&db, &["enqueue", "--batch", "-"], batch);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("stdin:3:") && err.contains("unknown field `prio`"),
        "{err}"
    );
    assert_eq!(
        status(&db)["queues"].as_array().unwrap().len(),
        0,
        "a bad batch enqueues nothing"
    );

    let good = "{\"kind\":\"noop\"}\n\n{\"kind\":\"sleep\",\"payload\":{\"ms\":1},\"queue\":\"other\",\"delay\":250}\n";
    let out = weir_stdin(&db, &["enqueue", "--batch", "-"], good);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("enqueued 2 jobs"));

    let out = weir(&db, &["serve", "--workers", "8", "--max-workers", "2"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = text(&out.stderr);
    assert!(
        err.contains("--workers (8) must not exceed --max-workers (2)"),
        "{err}"
    );

    let cfg = dir.path().join("weir.toml");
    std::fs::write(&cfg, "[shell]\nallow = [\"echo\"]\nalow = 2\n").unwrap();
    let out = weir(&db, &["--config", cfg.to_str().unwrap(), "serve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("weir.toml:3:1: unknown field `alow`"), "{err}");
}

#[test]
fn bench_prints_json_last() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let out = weir(
        &db,
        &["bench", "--tasks", "2000", "--workers", "64", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "with --json, only the JSON: {stdout}"
    );
    assert_eq!(v["tasks"], 2000);
    assert_eq!(
        (v["workers"].as_u64(), v["broker"].as_str()),
        (Some(64), Some("sqlite"))
    );
    let f = |k: &str| v[k].as_f64().unwrap();
    // The figures agree with each other, not merely exist.
    let rate = 2000.0 / f("seconds");
    assert!(
        (f("tasks_per_sec") - rate).abs() <= rate * 0.01,
        "tasks_per_sec {} is tasks / seconds {rate}",
        f("tasks_per_sec")
    );
    assert!(
        0.0 < f("p50_ms") && f("p50_ms") <= f("p99_ms") && f("p99_ms") <= f("max_ms"),
        "{last}"
    );
    assert!(
        f("max_ms") <= f("seconds") * 1000.0,
        "no start later than the run: {last}"
    );
}

/// `weir serve --max-workers` autoscales under backlog, and `weir status` shows the pool's
/// size and the autoscaler's last decision.
#[test]
fn serve_autoscales_and_status_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scale.db");
    let batch: String = (0..200)
        .map(|_| "{\"kind\":\"sleep\",\"payload\":{\"ms\":50}}\n")
        .collect();
    let out = weir_stdin(&db, &["enqueue", "--batch", "-"], &batch);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--broker")
        .arg(format!("sqlite:{}", db.display()))
        .args([
            "--log",
            "warn",
            "serve",
            "--workers",
            "1",
            "--max-workers",
            "6",
            "--tick",
            "100ms",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let seen = loop {
        let s = status(&db);
        let w = &s["workers"];
        if w.as_array()
            .is_some_and(|a| a.iter().any(|w| w["size"].as_u64() > Some(1)))
        {
            break w.clone();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no growth reported: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let w = &seen[0];
    assert_eq!(w["queue"], "default");
    assert!(w["size"].as_u64().unwrap() <= 6, "{w}");
    let decision = w["last_decision"].as_str().unwrap_or_default();
    assert!(decision.contains("jobs waiting need"), "{w}");
    let table = text(&weir(&db, &["status"]).stdout);
    assert!(table.contains("LAST DECISION"), "{table}");
}

/// Without --broker or WEIR_BROKER, the configuration file's `broker` is used.
#[test]
fn the_config_file_names_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-config.db");
    let cfg = dir.path().join("weir.toml");
    std::fs::write(&cfg, format!("broker = \"sqlite:{}\"\n", db.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .env_remove("WEIR_BROKER")
        .arg("--config")
        .arg(&cfg)
        .args(["enqueue", "noop"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(status(&db)["queues"][0]["pending"], 1);
    // --broker still wins over the file.
    let other = dir.path().join("flag.db");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .env_remove("WEIR_BROKER")
        .arg("--config")
        .arg(&cfg)
        .arg("--broker")
        .arg(format!("sqlite:{}", other.display()))
        .args(["enqueue", "noop"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(status(&other)["queues"][0]["pending"], 1);
    assert_eq!(status(&db)["queues"][0]["pending"], 1);
}

/// `weir workflow submit FILE` stores a chord on the embedded default; `weir serve` runs it;
/// `weir inspect ID` shows its progress and result; `--wait` exits 1 for a failed workflow.
/// A bad file is refused with its name and what is wrong, and nothing is enqueued.
#[test]
fn workflows_submit_serve_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wf.db");
    let file = dir.path().join("chord.json");
    let children: Vec<String> = (0..50)
        .map(|n| format!(r#"{{"kind":"echo","payload":{n}}}"#))
        .collect();
    std::fs::write(
        &file,
        format!(
            r#"{{"shape":"chord","steps":[{}],"callback":{{"kind":"echo"}}}}"#,
            children.join(",")
        ),
    )
    .unwrap();
    let out = weir(&db, &["workflow", "submit", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let shown = text(&weir(&db, &["inspect", &id, "--limit", "60"]).stdout);
    assert!(shown.contains("state        running"), "{shown}");
    assert!(shown.contains("0/50 children finished"), "{shown}");
    assert!(
        shown.contains("(not enqueued yet)"),
        "the callback waits: {shown}"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--broker")
        .arg(format!("sqlite:{}", db.display()))
        .args(["--log", "warn", "serve", "--workers", "8"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // A failing chain, submitted while the worker runs: --wait reports it, exit 1.
    let chain = dir.path().join("chain.json");
    std::fs::write(
        &chain,
        r#"{"shape":"chain","steps":[{"kind":"echo","payload":1},{"kind":"fail","max_attempts":1},{"kind":"echo"}]}"#,
    )
    .unwrap();
    let out = weir(
        &db,
        &[
            "workflow",
            "submit",
            chain.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let failed = text(&out.stdout);
    assert!(failed.contains("state        failed"), "{failed}");
    assert!(
        failed.contains("payload for kind `fail` does not decode"),
        "step 1 got step 0's result (1), not a `fail` payload: {failed}"
    );
    assert!(
        failed.contains("(never enqueued)"),
        "step 2 was cancelled: {failed}"
    );

    let start = std::time::Instant::now();
    let done = loop {
        let out = weir(&db, &["inspect", &id, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["workflow"]["state"] != "running" {
            break v;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "{v}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(done["workflow"]["state"], "succeeded", "{done}");
    let expected: Vec<serde_json::Value> = (0..50).map(|n| n.into()).collect();
    assert_eq!(
        done["members"][50]["result"],
        serde_json::Value::Array(expected)
    );
    let shown = text(&weir(&db, &["inspect", &id]).stdout);
    assert!(shown.contains("result       [0,1,2,"), "{shown}");

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"shape":"chain","steps":[{"kind":"a"},{"kind":"b","payload":2}]}"#,
    )
    .unwrap();
    let out = weir(&db, &["workflow", "submit", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("step 1 (`b`) has a `payload`"),
        "{err}"
    );
    std::fs::write(&bad, "{\"shape\":\"chain\",\n\"steps\": 3}").unwrap();
    let err = text(&weir(&db, &["workflow", "submit", bad.to_str().unwrap()]).stderr);
    assert!(err.contains("line 2"), "{err}");
}

/// `weir status` says how long the longest-waiting job of each queue has been due (nobody
/// serves it here), and a delayed job is not waiting yet.
#[test]
fn status_shows_how_long_jobs_have_waited() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wait.db");
    assert!(weir(&db, &["enqueue", "noop", "--queue", "early"])
        .status
        .success());
    assert!(weir(
        &db,
        &["enqueue", "noop", "--queue", "later", "--delay", "1h"]
    )
    .status
    .success());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let table = text(&weir(&db, &["status"]).stdout);
    let row = |q: &str| {
        table
            .lines()
            .find(|l| l.starts_with(q))
            .unwrap_or_else(|| panic!("no {q} in {table}"))
            .to_owned()
    };
    assert!(table.contains("OLDEST WAITING"), "{table}");
    assert!(row("early").trim_end().ends_with('s'), "{table}");
    assert!(row("later").trim_end().ends_with('-'), "{table}");
    let json = status(&db);
    let early = &json["queues"][0];
    assert_eq!(early["queue"], "early");
    assert!(early["oldest_due"].as_i64().is_some(), "{json}");
}
