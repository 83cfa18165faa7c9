//! Features as a user meets them under `weir serve`, checked through the binary on a real
//! file: a manual retry that then succeeds, a delay, priorities, the retention sweep, the
//! `shell` kind with a `[retry.shell]` policy, `http` failures classified, and a
//! `collect_all` group through `workflow submit`.

mod bin_support;

use std::time::Duration;

use bin_support::{s, text, wait_for, Weir};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn job(w: &Weir, id: &str) -> Value {
    w.json(&["inspect", id, "--json"])
}

fn wait_state(w: &Weir, id: &str, state: &str) -> Value {
    wait_for(&format!("job {id} to be {state}"), LONG, || {
        let j = job(w, id);
        if j["state"] == state {
            Ok(j)
        } else {
            Err(j)
        }
    })
}

fn ms(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("a timestamp: {v}"))
}

#[test]
fn retry_delay_priorities_and_retention_under_serve() {
    let w = Weir::new();
    // Priorities: with one slot, every high-priority job finishes before any low one.
    let mut low = Vec::new();
    let mut high = Vec::new();
    for _ in 0..4 {
        low.push(
            w.ok(&[
                "enqueue",
                "sleep",
                "--payload",
                r#"{"ms":20}"#,
                "--priority",
                "-1",
            ])
            .trim()
            .to_owned(),
        );
        high.push(
            w.ok(&[
                "enqueue",
                "sleep",
                "--payload",
                r#"{"ms":20}"#,
                "--priority",
                "5",
            ])
            .trim()
            .to_owned(),
        );
    }
    // A job that fails once for good, for a manual retry.
    let flaky = w
        .ok(&[
            "enqueue",
            "fail",
            "--payload",
            r#"{"times":1}"#,
            "--max-attempts",
            "1",
        ])
        .trim()
        .to_owned();
    let serve = w.serve(&["--workers", "1", "--retention", "1h"]);
    let last_high = high
        .iter()
        .map(|id| ms(&wait_state(&w, id, "succeeded")["finished_at"]))
        .max()
        .unwrap();
    let first_low = low
        .iter()
        .map(|id| ms(&wait_state(&w, id, "succeeded")["finished_at"]))
        .min()
        .unwrap();
    assert!(
        last_high <= first_low,
        "priority 5 before -1: {last_high} > {first_low}"
    );
    // The manual retry: the second attempt succeeds.
    wait_state(&w, &flaky, "failed");
    w.ok(&["retry", &flaky]);
    let j = wait_state(&w, &flaky, "succeeded");
    assert_eq!(
        (j["attempt"].as_u64(), j["max_attempts"].as_u64()),
        (Some(2), Some(2))
    );
    // A delay: not run before it is due.
    let delayed = w
        .ok(&["enqueue", "noop", "--delay", "1500ms"])
        .trim()
        .to_owned();
    let j = wait_state(&w, &delayed, "succeeded");
    assert!(
        ms(&j["finished_at"]) >= ms(&j["created_at"]) + 1500,
        "ran before its delay: {j}"
    );
    drop(serve);
    // The retention sweep deletes succeeded jobs once they are older than --retention.
    let _serve = w.serve(&["--workers", "1", "--retention", "1s"]);
    wait_for("the sweep", LONG, || {
        let out = w.run(&["inspect", &delayed]);
        if out.status.code() == Some(1) && text(&out.stderr).contains("no job or workflow") {
            Ok(())
        } else {
            Err(text(&out.stdout))
        }
    });
}

#[test]
fn shell_with_a_retry_policy_and_http_failures_under_serve() {
    let w = Weir::new();
    let counter = w.dir.path().join("count");
    let cfg = w.file(
        "weir.toml",
        &format!(
            "[shell]\nallow = [\"sh\"]\ndir = \"{}\"\n\n[retry.shell]\nbase = \"250ms\"\nfactor = 2.0\ncap = \"10s\"\njitter = \"none\"\n",
            w.dir.path().display()
        ),
    );
    // Exits 75 (retry) twice, then succeeds: three attempts, 250 ms then 500 ms apart by
    // the policy (the default backoff, with full jitter, would wait up to 1 s then 2 s). Each
    // attempt writes when it ran.
    let times = w.dir.path().join("times");
    let script = format!(
        "date +%s%3N >> {1}; n=$(cat {0} 2>/dev/null || echo 0); echo $((n+1)) > {0}; [ $n -ge 2 ] || exit 75; echo done",
        counter.display(),
        times.display()
    );
    let payload = serde_json::json!({"cmd": "sh", "args": ["-c", script]}).to_string();
    let id = w
        .ok(&["enqueue", "shell", "--payload", &payload])
        .trim()
        .to_owned();
    // http: a 404 fails for good at once; a 503 is retried, then fails when out of attempts.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in server.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 2048];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let resp: &[u8] = if req.starts_with("GET /busy") {
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
            };
            let _ = c.write_all(resp);
        }
    });
    let get = |path: &str| {
        serde_json::json!({"url": format!("http://{addr}{path}"), "method": "GET"}).to_string()
    };
    let missing = w
        .ok(&["enqueue", "http", "--payload", &get("/missing")])
        .trim()
        .to_owned();
    let busy = w
        .ok(&[
            "enqueue",
            "http",
            "--payload",
            &get("/busy"),
            "--max-attempts",
            "2",
        ])
        .trim()
        .to_owned();
    let _serve = w.serve(&["--config", s(&cfg)]);
    let j = wait_state(&w, &id, "succeeded");
    assert_eq!(j["attempt"], 3, "{j}");
    let at: Vec<i64> = std::fs::read_to_string(&times)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(at.len(), 3, "{at:?}");
    let gaps = [at[1] - at[0], at[2] - at[1]];
    assert!(
        (250..550).contains(&gaps[0]) && (500..800).contains(&gaps[1]),
        "[retry.shell]: 250 ms, then 500 ms: {gaps:?}"
    );
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    let j = wait_state(&w, &missing, "failed");
    assert_eq!(j["attempt"], 1, "4xx is permanent: {j}");
    assert!(j["last_error"].as_str().unwrap().contains("404"), "{j}");
    let j = wait_state(&w, &busy, "failed");
    assert_eq!(j["attempt"], 2, "5xx is retried: {j}");
    assert!(j["last_error"].as_str().unwrap().contains("503"), "{j}");
    let failed = w.ok(&["list", "--state", "failed"]);
    assert!(
        failed.contains(&missing) && failed.contains(&busy),
        "{failed}"
    );
}

#[test]
fn a_collect_all_group_runs_everything_and_reports_the_failure() {
    let w = Weir::new();
    let spec = w.file(
        "wf.json",
        r#"{"shape":"group","mode":"collect_all","steps":[
            {"kind":"fail","payload":{"times":100},"max_attempts":1},
            {"kind":"echo","payload":"ok"},
            {"kind":"sleep","payload":{"ms":50}}]}"#,
    );
    let _serve = w.serve(&[]);
    let out = w.run(&[
        "workflow",
        "submit",
        s(&spec),
        "--wait",
        "--timeout",
        "60s",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed workflow: {}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["workflow"]["state"], "failed", "{v}");
    let states: Vec<&str> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["failed", "succeeded", "succeeded"],
        "every member ran: {v}"
    );
    assert!(v["members"][0]["error"]
        .as_str()
        .unwrap()
        .contains("planned failure"));
    assert_eq!(v["result"], Value::Null, "no result for a failed workflow");
}
