//! What a newcomer meets in the first hour, through the real binary: read-only commands that
//! create nothing, filters that filter, output that says what it left out, a closed pipe,
//! and the exit codes the README gives.

mod bin_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use bin_support::{s, text, wait_for, Weir};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn reads_create_no_file_and_name_the_missing_one() {
    let w = Weir::new();
    for args in [
        &["status"][..],
        &["list"][..],
        &["inspect", "01a233dd-5251-71f5-ac34-225d71b2180a"][..],
        &["purge", "--state", "failed"][..],
    ] {
        let out = w.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("weir.db: no such file"), "{args:?}: {err}");
    }
    assert!(!w.db.exists());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(w.dir.path())
        .env_remove("WEIR_BROKER")
        .args(["--broker", "sqlite:/nonexistent/dir/x.db", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/dir/x.db: no such file"));
    assert!(!std::path::Path::new("/nonexistent/dir").exists());
    // The file is created by what writes, and private to its owner.
    w.ok(&["enqueue", "noop"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&w.db).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}

#[test]
fn status_shows_only_the_queues_asked_for() {
    let w = Weir::new();
    w.ok(&["enqueue", "noop", "--queue", "a"]);
    w.ok(&["enqueue", "noop", "--queue", "b"]);
    let v = w.json(&["status", "--json", "--queue", "a"]);
    let names: Vec<&str> = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"]);
    let out = w.run(&["status", "--queue", "nosuch"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("queue `nosuch` has no jobs"));
    assert!(!text(&out.stdout).contains("\na "), "{}", text(&out.stdout));
}

#[test]
fn list_has_a_header_aligned_columns_and_says_what_it_left_out() {
    let w = Weir::new();
    let batch: String = (0..30)
        .map(|i| {
            format!(
                "{{\"kind\":\"{}\",\"queue\":\"q{}\"}}\n",
                "k".repeat(1 + i % 7),
                i % 3
            )
        })
        .collect();
    let f = w.file("jobs.jsonl", &batch);
    w.ok(&["enqueue", "--batch", s(&f)]);
    let out = w.ok(&["list", "--limit", "5"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID "), "{out}");
    assert_eq!(lines.len(), 1 + 5 + 1, "{out}");
    let state_col = lines[0].find("STATE").unwrap();
    let queue_col = lines[0].find("QUEUE").unwrap();
    for l in &lines[1..6] {
        assert_eq!(&l[state_col..state_col + 7], "pending", "{out}");
        assert!(l[queue_col..].starts_with('q'), "{out}");
    }
    assert_eq!(lines[6], "… 25 more (use --limit)");
    let out = w.ok(&[
        "list", "--state", "pending", "--queue", "q1", "--limit", "100",
    ]);
    assert!(!out.contains("more"), "{out}");
    assert_eq!(out.lines().count(), 1 + 10, "{out}");
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let w = Weir::new();
    let batch: String = (0..5000).map(|_| "{\"kind\":\"noop\"}\n").collect();
    let f = w.file("jobs.jsonl", &batch);
    w.ok(&["enqueue", "--batch", s(&f)]);
    let mut child = w
        .cmd(&["list", "--limit", "5000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap(); // and the pipe is closed here
    let out = child.wait_with_output().unwrap();
    assert!(first.starts_with("ID"), "{first}");
    assert!(out.status.success(), "{}", out.status);
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn exit_codes_follow_the_readme() {
    let w = Weir::new();
    w.ok(&["enqueue", "noop"]);
    // 2: usage errors, before anything changes.
    let out = w.run(&["purge", "--state", "pending"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not finished"));
    let out = w.run(&["nosuchcommand"]);
    assert_eq!(out.status.code(), Some(2));
    // 1: a failure.
    let out = w.run(&["inspect", "01a233dd-5251-71f5-ac34-225d71b2180a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no job or workflow with id"));
    // 3: --wait gave up with the workflow still running (no worker runs it).
    let spec = w.file(
        "wf.json",
        r#"{"shape":"chain","steps":[{"kind":"noop"},{"kind":"noop"}]}"#,
    );
    let out = w.run(&[
        "workflow",
        "submit",
        s(&spec),
        "--wait",
        "--timeout",
        "300ms",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("still running"));
}

#[test]
fn a_workflow_shows_its_members_real_state_and_error() {
    let w = Weir::new();
    let spec = w.file(
        "wf.json",
        r#"{"shape":"group","steps":[{"kind":"fail","payload":{"times":1000}},{"kind":"noop"}]}"#,
    );
    let id = w.ok(&["workflow", "submit", s(&spec)]).trim().to_owned();
    let _serve = w.serve(&[]);
    let v = wait_for("the failing member to be retryable", LONG, || {
        let v = w.json(&["inspect", &id, "--json"]);
        if v["members"][0]["state"] == "retryable" {
            Ok(v)
        } else {
            Err(v)
        }
    });
    let err = v["members"][0]["error"].as_str().unwrap();
    assert!(err.contains("planned failure"), "{v}");
    let out = w.ok(&["inspect", &id]);
    assert!(
        out.contains("retryable") && out.contains("planned failure"),
        "{out}"
    );
}

#[test]
fn bench_prints_json_only_when_asked() {
    let w = Weir::new();
    let out = w.ok(&["bench", "--tasks", "500", "--workers", "16"]);
    assert!(out.contains("throughput"), "{out}");
    assert!(!out.contains('{'), "{out}");
}

#[test]
fn demo_never_deletes_a_file_it_did_not_make() {
    let w = Weir::new();
    let mine = w.file("precious.db", "not weir's");
    let out = w.run(&["demo", "--db", s(&mine), "--tasks", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("was not made by `weir demo`"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "not weir's");
    // Its own file it replaces, run after run.
    let demo = w.dir.path().join("demo.db");
    for _ in 0..2 {
        let out = w.run(&["demo", "--db", s(&demo), "--tasks", "50"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

/// Error messages say what was wrong in the user's words, with the way out.
#[test]
fn errors_say_what_to_do() {
    let w = Weir::new();
    // The shell ate the quotes of an unquoted payload.
    let out = w.run(&["enqueue", "noop", "--payload", "{ms:10}"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("the shell passed `{ms:10}`") && err.contains("single quotes"),
        "{err}"
    );
    // What an id looks like.
    let out = w.run(&["inspect", "123"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("an id looks like"),
        "{}",
        text(&out.stderr)
    );
    // Retry of a job that has not failed, in words.
    let id = w.ok(&["enqueue", "noop"]).trim().to_owned();
    let out = w.run(&["retry", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot retry a pending job (only a failed job can be retried)"),
        "{}",
        text(&out.stderr)
    );
    // A config file that is not there: the reason once.
    let out = w.run(&["--config", "nosuch.toml", "enqueue", "noop"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.matches("no such file").count(), 1, "{err}");
    // `memory:` would lose a one-shot command's jobs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(w.dir.path())
        .args(["--broker", "memory:", "enqueue", "noop"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("keeps jobs inside one process"));
    // `enqueue --help` lists every built-in kind.
    let help = w.ok(&["enqueue", "--help"]);
    for kind in ["noop", "echo", "sleep", "fail", "shell", "http"] {
        assert!(help.contains(kind), "{kind} in {help}");
    }
}

/// A broken weir.toml stops what acts on it, not a look at the queue.
#[test]
fn a_broken_config_does_not_stop_a_look_at_the_queue() {
    let w = Weir::new();
    w.ok(&["enqueue", "noop"]);
    w.file("weir.toml", "[queues.default]\nworkrs = 3\n");
    // No --broker: the default, ./weir.db, is the test's file, and ./weir.toml is read.
    let plain = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .current_dir(w.dir.path())
            .env_remove("WEIR_BROKER")
            .env_remove("WEIR_STORE")
            .env_remove("WEIR_CONFIG")
            .args(args)
            .output()
            .unwrap()
    };
    let out = plain(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.starts_with("warning: weir.toml:2:1"), "{err}");
    assert_eq!(err.matches("warning").count(), 1, "warned once: {err}");
    assert!(text(&out.stdout).contains("default"));
    let out = plain(&["enqueue", "noop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("weir.toml:2:1"),
        "{}",
        text(&out.stderr)
    );
}

/// Enqueueing into a queue no worker serves says so once (a typo would otherwise wait
/// silently for ever); the queue a worker serves gets no warning.
#[test]
fn enqueueing_where_no_worker_serves_warns() {
    let w = Weir::new();
    w.ok(&["enqueue", "noop"]);
    let _serve = w.serve(&["--tick", "200ms"]);
    wait_for("the worker's report", LONG, || {
        let st = w.status();
        if st["workers"].as_array().is_some_and(|a| !a.is_empty()) {
            Ok(())
        } else {
            Err(st)
        }
    });
    let out = w.run(&["enqueue", "noop"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "", "the served queue");
    let out = w.run(&["enqueue", "noop", "--queue", "defualt"]);
    assert!(out.status.success(), "the job is still enqueued");
    let err = text(&out.stderr);
    assert!(
        err.contains("no worker has served queue `defualt`") && err.lines().count() == 1,
        "{err}"
    );
    let batch = w.file(
        "b.jsonl",
        "{\"kind\":\"noop\",\"queue\":\"x\"}\n{\"kind\":\"noop\",\"queue\":\"x\"}\n",
    );
    let out = w.run(&["enqueue", "--batch", s(&batch)]);
    assert_eq!(
        text(&out.stderr).matches("queue `x`").count(),
        1,
        "once per queue"
    );
}

/// `weir retry --failed --queue Q` runs every failed job of a queue again.
#[test]
fn every_failed_job_of_a_queue_runs_again() {
    let w = Weir::new();
    let lines: String = (0..3)
        .map(|_| {
            "{\"kind\":\"fail\",\"payload\":{\"times\":100},\"queue\":\"f\",\"max_attempts\":1}\n"
        })
        .collect();
    let f = w.file("f.jsonl", &lines);
    w.ok(&["enqueue", "--batch", s(&f)]);
    w.ok(&["enqueue", "noop", "--queue", "g"]);
    let serve = w.serve(&["--queues", "f"]);
    wait_for("three failures", LONG, || {
        let q = w.status()["queues"].clone();
        let failed: u64 = q
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["failed"].as_u64().unwrap())
            .sum();
        if failed == 3 {
            Ok(())
        } else {
            Err(q)
        }
    });
    drop(serve);
    let out = w.ok(&["retry", "--failed", "--queue", "f"]);
    assert_eq!(out.trim(), "3 failed jobs of `f` are pending again");
    let v = w.json(&["status", "--json", "--queue", "f"]);
    assert_eq!(v["queues"][0]["pending"], 3, "{v}");
    assert_eq!(v["queues"][0]["failed"], 0, "{v}");
    let out = w.run(&["retry", "--queue", "f"]);
    assert_eq!(out.status.code(), Some(2), "--queue goes with --failed");
}
