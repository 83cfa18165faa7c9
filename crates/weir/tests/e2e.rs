//! Faults found by using weir end to end, each pinned through the real binary on a real
//! file: the pool that never shrank, workflows that hung when a member ended outside a
//! worker, durations that overflowed, a stopped worker still reported, workers that could
//! not start together.

mod bin_support;

use std::time::Duration;

use bin_support::{s, text, wait_for, Weir};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn queue_counts(w: &Weir, queue: &str) -> Value {
    w.status()["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == queue)
        .cloned()
        .unwrap_or(Value::Null)
}

fn workflow(w: &Weir, id: &str) -> Value {
    w.json(&["inspect", id, "--json"])
}

fn wait_workflow_finished(w: &Weir, id: &str) -> Value {
    wait_for("the workflow to finish", LONG, || {
        let v = workflow(w, id);
        if v["workflow"]["state"] == "running" {
            Err(v)
        } else {
            Ok(v)
        }
    })
}

/// Issue 11.1: after a burst, an autoscaled pool gives its workers back; an idle pool
/// reports no busy slots (a slot waiting for work is not busy).
#[test]
fn an_idle_autoscaled_pool_shrinks_and_reports_nothing_busy() {
    let w = Weir::new();
    let cfg = w.file(
        "weir.toml",
        "[queues.default]\nworkers = 2\nmax_workers = 16\ncooldown = \"1s\"\n",
    );
    let batch: String = (0..200)
        .map(|_| "{\"kind\":\"sleep\",\"payload\":{\"ms\":20}}\n")
        .collect();
    let jobs = w.file("jobs.jsonl", &batch);
    w.ok(&["enqueue", "--batch", s(&jobs)]);
    let _serve = w.serve(&["--config", s(&cfg), "--tick", "200ms"]);
    let pool = |w: &Weir| -> Option<(u64, u64)> {
        let st = w.status();
        let p = st["workers"].as_array()?.first()?.clone();
        Some((p["size"].as_u64()?, p["busy"].as_u64()?))
    };
    wait_for("the pool to grow", LONG, || match pool(&w) {
        Some((size, _)) if size > 2 => Ok(()),
        other => Err(other),
    });
    wait_for("the backlog to drain", LONG, || {
        let q = queue_counts(&w, "default");
        if q["succeeded"] == 200 {
            Ok(())
        } else {
            Err(q)
        }
    });
    let (size, busy) = wait_for("the idle pool to shrink", LONG, || match pool(&w) {
        Some((size, busy)) if size < 16 && busy == 0 => Ok((size, busy)),
        other => Err(other),
    });
    assert!(size >= 2, "never below --workers: {size}");
    assert_eq!(busy, 0);
}

/// Issue 11.6: a worker that stops cleanly takes its report with it.
#[test]
fn a_stopped_worker_leaves_status() {
    let w = Weir::new();
    w.ok(&["enqueue", "noop"]);
    let serve = w.serve(&["--workers", "3", "--tick", "200ms"]);
    wait_for("the worker's report", LONG, || {
        let st = w.status();
        match st["workers"].as_array() {
            Some(ws) if ws.iter().any(|p| p["size"] == 3) => Ok(()),
            _ => Err(st),
        }
    });
    let status = serve.terminate(LONG);
    assert!(status.success(), "clean exit: {status}");
    let st = w.status();
    assert_eq!(st["workers"], serde_json::json!([]), "{st}");
}

/// Issue 11.2: a member whose worker is SIGKILLed on its last attempt fails, and so does
/// its workflow (it used to stay running for ever).
#[test]
fn a_member_lost_with_its_worker_fails_its_workflow() {
    let w = Weir::new();
    let spec = w.file(
        "wf.json",
        r#"{"shape":"chain","steps":[
            {"kind":"sleep","payload":{"ms":60000},"max_attempts":1},
            {"kind":"echo"}]}"#,
    );
    let id = w.ok(&["workflow", "submit", s(&spec)]).trim().to_owned();
    let serve = w.serve(&["--lease", "1s"]);
    wait_for("step 0 to run", LONG, || {
        let q = queue_counts(&w, "default");
        if q["running"] == 1 {
            Ok(())
        } else {
            Err(q)
        }
    });
    serve.kill();
    let _serve = w.serve(&["--lease", "1s"]);
    let v = wait_workflow_finished(&w, &id);
    assert_eq!(v["workflow"]["state"], "failed", "{v}");
    let m0 = &v["members"][0];
    assert_eq!(m0["state"], "failed", "{v}");
    assert!(
        m0["error"].as_str().unwrap().contains("attempts exhausted"),
        "{v}"
    );
    assert_eq!(v["members"][1]["state"], "cancelled", "{v}");
    let job = w.json(&["inspect", m0["job_id"].as_str().unwrap(), "--json"]);
    assert_eq!(job["state"], "failed", "{job}");
}

/// Issue 11.2: `weir cancel` of a member fails its workflow; `weir workflow cancel` cancels
/// a whole one, and a chord's callback never runs.
#[test]
fn cancelling_a_member_or_a_workflow_finishes_the_workflow() {
    let w = Weir::new();
    let chain = w.file(
        "chain.json",
        r#"{"shape":"chain","steps":[{"kind":"echo","payload":1},{"kind":"echo"}]}"#,
    );
    // No worker runs: the members stay pending, cancelled by the operator.
    let id = w.ok(&["workflow", "submit", s(&chain)]).trim().to_owned();
    let v = workflow(&w, &id);
    let m0 = v["members"][0]["job_id"].as_str().unwrap().to_owned();
    let out = w.ok(&["cancel", &m0]);
    assert!(out.contains("cancelled"), "{out}");
    let v = workflow(&w, &id);
    assert_eq!(v["workflow"]["state"], "failed", "{v}");
    assert_eq!(v["members"][0]["state"], "failed", "{v}");
    assert!(v["members"][0]["error"]
        .as_str()
        .unwrap()
        .contains("cancelled by an operator"));

    let chord = w.file(
        "chord.json",
        r#"{"shape":"chord","steps":[{"kind":"echo","payload":1},{"kind":"echo","payload":2}],
            "callback":{"kind":"echo"}}"#,
    );
    let id = w.ok(&["workflow", "submit", s(&chord)]).trim().to_owned();
    let out = w.ok(&["workflow", "cancel", &id]);
    assert!(out.contains("cancelled"), "{out}");
    let v = workflow(&w, &id);
    assert_eq!(v["workflow"]["state"], "failed", "{v}");
    for m in v["members"].as_array().unwrap() {
        assert_eq!(m["state"], "cancelled", "{v}");
    }
    for i in 0..2 {
        let job = w.json(&[
            "inspect",
            v["members"][i]["job_id"].as_str().unwrap(),
            "--json",
        ]);
        assert_eq!(job["state"], "cancelled", "{job}");
    }
    // A worker started now runs none of it.
    let _serve = w.serve(&[]);
    let out = w.run(&["workflow", "cancel", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already finished (failed)"));
    let out = w.run(&["workflow", "cancel", &m0]);
    assert!(
        text(&out.stderr).contains("no workflow with id"),
        "{}",
        text(&out.stderr)
    );
}

/// Issue 11.3: a step no broker would take is refused at submit, naming the step.
#[test]
fn a_step_the_broker_would_refuse_is_refused_at_submit() {
    let w = Weir::new();
    let spec = w.file(
        "wf.json",
        r#"{"shape":"chain","steps":[{"kind":"echo","payload":1},{"kind":"echo","queue":""}]}"#,
    );
    let out = w.run(&["workflow", "submit", s(&spec)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("step 1") && err.contains("queue"), "{err}");
    assert!(!w.db.exists(), "nothing was stored");
}

/// Issue 11.7: `submit --wait --json` carries the result the text form shows.
#[test]
fn submit_wait_json_carries_the_result() {
    let w = Weir::new();
    let spec = w.file(
        "wf.json",
        r#"{"shape":"group","steps":[{"kind":"echo","payload":"a"},{"kind":"echo","payload":"b"}]}"#,
    );
    let _serve = w.serve(&[]);
    let v = w.json(&[
        "workflow",
        "submit",
        s(&spec),
        "--wait",
        "--timeout",
        "60s",
        "--json",
    ]);
    assert_eq!(v["workflow"]["state"], "succeeded", "{v}");
    assert_eq!(v["result"], serde_json::json!(["a", "b"]), "{v}");
}

/// Issues 11.4 and 11.5: out-of-range durations and a malformed payload are usage errors
/// (exit 2) that name the value; nothing is enqueued or purged.
#[test]
fn bad_durations_and_payloads_are_usage_errors() {
    let w = Weir::new();
    w.ok(&[
        "enqueue",
        "fail",
        "--payload",
        r#"{"times":10}"#,
        "--max-attempts",
        "1",
    ]);
    let _serve = w.serve(&[]);
    wait_for("the job to fail", LONG, || {
        let q = queue_counts(&w, "default");
        if q["failed"] == 1 {
            Ok(())
        } else {
            Err(q)
        }
    });
    drop(_serve);
    for (args, says) in [
        (
            &["purge", "--state", "failed", "--older-than", "300000000y"][..],
            "longer than 100 years",
        ),
        (&["enqueue", "noop", "--timeout", "0s"][..], "is zero"),
        (
            &["enqueue", "noop", "--timeout", "300000000y"][..],
            "longer than 100 years",
        ),
        (&["serve", "--lease", "0s"][..], "is zero"),
        (
            &["serve", "--retention", "300000000y"][..],
            "longer than 100 years",
        ),
        (
            &["enqueue", "sleep", "--payload", r#"{"ms":"#][..],
            "not valid JSON",
        ),
    ] {
        let out = w.run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let q = queue_counts(&w, "default");
    assert_eq!(
        (q["failed"].as_u64(), q["pending"].as_u64()),
        (Some(1), Some(0)),
        "{q}"
    );
    let cfg = w.file("bad.toml", "[http]\ntimeout = \"0s\"\n");
    let out = w.run(&["config", "check", s(&cfg)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("`0s` is zero"),
        "{}",
        text(&out.stderr)
    );
}

/// Issue 11.8: workers started together on a fresh file all come up.
#[test]
fn workers_started_together_on_a_fresh_file_all_run() {
    let w = Weir::new();
    let mut workers: Vec<_> = (0..4).map(|_| w.serve(&["--tick", "200ms"])).collect();
    wait_for("four worker reports", LONG, || {
        for (i, p) in workers.iter_mut().enumerate() {
            if let Some(s) = p.exited() {
                panic!("worker {i} exited: {s}");
            }
        }
        let st = w.run(&["status", "--json"]);
        let n = serde_json::from_slice::<Value>(&st.stdout)
            .ok()
            .and_then(|v| v["workers"].as_array().map(Vec::len));
        if n == Some(4) {
            Ok(())
        } else {
            Err(n)
        }
    });
}

/// SIGHUP makes a running worker read its configuration file again.
#[test]
fn sighup_rereads_the_configuration() {
    let w = Weir::new();
    let cfg = w.file("weir.toml", "[queues.default]\nworkers = 2\n");
    let (serve, log) = w.serve_logged(&["--log", "weir=debug", "--config", s(&cfg)]);
    let seen = |what: &str| log.lock().unwrap().contains(what);
    wait_for("the worker to follow its file", LONG, || {
        if seen("following the configuration file") {
            Ok(())
        } else {
            Err(log.lock().unwrap().clone())
        }
    });
    serve.signal("HUP");
    wait_for("the SIGHUP re-read", LONG, || {
        let l = log.lock().unwrap().clone();
        if l.lines()
            .any(|line| line.contains("SIGHUP") && line.contains("configuration"))
        {
            Ok(())
        } else {
            Err(l)
        }
    });
}

/// Two `weir serve` processes on one embedded file share its jobs, and without a crash no
/// job runs twice: each job leaves a marker, and every marker is there exactly once.
#[test]
fn two_workers_on_one_file_run_each_job_once() {
    let w = Weir::new();
    let marks = w.dir.path().join("marks");
    let cfg = w.file(
        "weir.toml",
        &format!(
            "[shell]\nallow = [\"sh\"]\ndir = \"{}\"\n",
            w.dir.path().display()
        ),
    );
    const N: usize = 400;
    let lines: String = (0..N)
        .map(|i| {
            serde_json::json!({"kind": "shell", "payload": {"cmd": "sh", "args": ["-c", format!("echo {i} >> {}", marks.display())]}})
                .to_string()
                + "\n"
        })
        .collect();
    let batch = w.file("jobs.jsonl", &lines);
    let one = w.serve(&["--config", s(&cfg), "--workers", "8"]);
    let two = w.serve(&["--config", s(&cfg), "--workers", "8"]);
    w.ok(&["enqueue", "--batch", s(&batch)]);
    wait_for("every job", LONG, || {
        let q = queue_counts(&w, "default");
        if q["succeeded"] == N as u64 {
            Ok(())
        } else {
            Err(q)
        }
    });
    drop((one, two));
    let text = std::fs::read_to_string(&marks).unwrap();
    let mut seen = vec![0u32; N];
    for l in text.lines() {
        seen[l.trim().parse::<usize>().unwrap()] += 1;
    }
    let twice: Vec<usize> = (0..N).filter(|i| seen[*i] != 1).collect();
    assert!(twice.is_empty(), "jobs not run exactly once: {twice:?}");
}
