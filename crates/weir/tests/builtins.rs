//! The built-in `shell` and `http` kinds against real processes and a real HTTP server.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir::config::Config;
use weir::{Broker, Inspect, Job, JobId, NewJob, Registry, SqliteBroker, Worker};

/// Answers by path: /ok 200 with JSON, /busy 503 with Retry-After, /limited 429, else 404.
async fn http_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                if path == "/truncated" {
                    // Promises 100 bytes, sends 10, and hangs up.
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                        .await;
                    return;
                }
                let big = "y".repeat(5000);
                let (status, extra, body) = match path.as_str() {
                    "/ok" => ("200 OK", "", r#"{"x":1}"#),
                    "/big" => ("200 OK", "", big.as_str()),
                    "/loop" => ("302 Found", "Location: /loop\r\n", ""),
                    "/to-metadata" => (
                        "302 Found",
                        "Location: http://169.254.169.254/latest/meta-data/\r\n",
                        "",
                    ),
                    "/busy-long" => (
                        "503 Service Unavailable",
                        "Retry-After: 999999\r\n",
                        "later",
                    ),
                    "/busy" => ("503 Service Unavailable", "Retry-After: 1\r\n", "later"),
                    "/limited" => ("429 Too Many Requests", "", "slow down"),
                    _ => ("404 Not Found", "", "no such thing"),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

async fn run_jobs(config: Config, jobs: Vec<NewJob>) -> Vec<Job> {
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(SqliteBroker::open(dir.path().join("b.db")).unwrap());
    let ids: Vec<JobId> = broker
        .enqueue_many(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut registry = Registry::new();
    weir::builtins::register(&mut registry, &config).unwrap();
    let worker = Worker::builder(broker.clone(), registry).build().unwrap();
    let watch = broker.clone();
    let wanted = ids.clone();
    worker
        .run(async move {
            for _ in 0..1000 {
                let mut all = true;
                for id in &wanted {
                    let j = watch.get(*id).await.unwrap().unwrap();
                    all &= j.state.is_finished() || j.state == weir::JobState::Retryable;
                }
                if all {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    let mut out = Vec::new();
    for id in ids {
        out.push(broker.get(id).await.unwrap().unwrap());
    }
    out
}

fn err(j: &Job) -> &str {
    j.last_error.as_deref().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_outcomes_are_classified() {
    let base = http_server().await;
    let job = |path: &str, max: u32| {
        NewJob::new(
            "http",
            format!(r#"{{"url":"{base}{path}","body":{{"a":1}}}}"#),
        )
        .max_attempts(max)
    };
    let jobs = vec![
        job("/ok", 3),
        job("/missing", 3),
        job("/busy", 1),
        job("/limited", 3),
        NewJob::new("http", r#"{"url":"http://127.0.0.1:9/","method":"GET"}"#).max_attempts(1),
        NewJob::new("http", r#"{"url":"not a url"}"#),
    ];
    let got = run_jobs(Config::default(), jobs).await;
    use weir::JobState::*;
    assert_eq!(got[0].state, Succeeded, "{}", err(&got[0]));
    let result: serde_json::Value =
        serde_json::from_slice(got[0].result.as_ref().unwrap()).unwrap();
    assert_eq!(result["status"], 200);
    assert_eq!(result["body"]["x"], 1);
    assert_eq!(
        (got[1].state, got[1].attempt),
        (Failed, 1),
        "4xx is permanent"
    );
    assert!(err(&got[1]).contains("404"), "{}", err(&got[1]));
    assert_eq!(got[2].state, Failed);
    assert!(
        err(&got[2]).contains("503") && err(&got[2]).contains("attempts exhausted"),
        "{}",
        err(&got[2])
    );
    assert_eq!(got[3].state, Retryable, "429 is retried: {}", err(&got[3]));
    assert_eq!(got[4].state, Failed);
    assert!(
        err(&got[4]).contains("failed") && err(&got[4]).contains("attempts exhausted"),
        "connection errors are retryable: {}",
        err(&got[4])
    );
    assert_eq!((got[5].state, got[5].attempt), (Failed, 1));
    assert!(err(&got[5]).contains("is not a URL"), "{}", err(&got[5]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_runs_only_allowed_commands() {
    let mut config = Config::default();
    config.shell.allow = vec!["echo".into(), "sh".into()];
    let jobs = vec![
        NewJob::new("shell", r#"{"cmd":"echo","args":["hello","weir"]}"#),
        NewJob::new(
            "shell",
            r#"{"cmd":"sh","args":["-c","echo busy >&2; exit 75"]}"#,
        )
        .max_attempts(1),
        NewJob::new(
            "shell",
            r#"{"cmd":"sh","args":["-c","echo broken >&2; exit 3"]}"#,
        ),
        NewJob::new("shell", r#"{"cmd":"rm","args":["-rf","/tmp/nothing"]}"#),
        NewJob::new("shell", r#"{"command":"echo"}"#),
    ];
    let got = run_jobs(config, jobs).await;
    use weir::JobState::*;
    assert_eq!(got[0].state, Succeeded, "{}", err(&got[0]));
    let out: serde_json::Value = serde_json::from_slice(got[0].result.as_ref().unwrap()).unwrap();
    assert_eq!(out["stdout"], "hello weir");
    assert_eq!(got[1].state, Failed);
    assert!(
        err(&got[1]).contains("exited 75 (retry): busy")
            && err(&got[1]).contains("attempts exhausted"),
        "{}",
        err(&got[1])
    );
    assert_eq!((got[2].state, got[2].attempt), (Failed, 1));
    assert!(
        err(&got[2]).contains("exited 3: broken"),
        "{}",
        err(&got[2])
    );
    assert_eq!((got[3].state, got[3].attempt), (Failed, 1));
    assert!(
        err(&got[3]).contains("`rm` is not allowed"),
        "{}",
        err(&got[3])
    );
    assert!(
        err(&got[4]).contains("payload for kind `shell` does not decode"),
        "{}",
        err(&got[4])
    );
}

/// `shell` withholds the worker's environment (its broker URL, credentials), runs in the
/// configured directory, keeps at most `max_output` bytes, and at its time limit kills the
/// whole process group, grandchildren included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_is_confined() {
    let work = tempfile::tempdir().unwrap();
    let pidfile = work.path().join("grandchild.pid");
    // The worker's own environment: a secret, and a variable the config passes on.
    std::env::set_var("WEIR_BROKER", "amqp://user:secret@host/");
    std::env::set_var("WEIR_TEST_PASSED_ON", "yes");
    let mut config = Config::default();
    config.shell.allow = vec!["sh".into()];
    config.shell.env = vec!["WEIR_TEST_PASSED_ON".into()];
    config.shell.dir = Some(work.path().to_owned());
    config.shell.timeout = Some(Duration::from_millis(500));
    config.shell.max_output = Some(1000);
    let jobs = vec![
        NewJob::new(
            "shell",
            r#"{"cmd":"sh","args":["-c","echo \"[$WEIR_BROKER][$WEIR_TEST_PASSED_ON][$(pwd)]\""]}"#,
        ),
        NewJob::new(
            "shell",
            r#"{"cmd":"sh","args":["-c","head -c 100000 /dev/zero | tr '\\0' x"]}"#,
        ),
        NewJob::new(
            "shell",
            format!(
                r#"{{"cmd":"sh","args":["-c","sleep 30 & echo $! > {}; wait"]}}"#,
                pidfile.display()
            ),
        )
        .max_attempts(1),
        // Exits at once, leaving a background process that holds its output open: done when
        // it exits, not at the time limit.
        NewJob::new(
            "shell",
            r#"{"cmd":"sh","args":["-c","sleep 3 & echo started"]}"#,
        )
        .max_attempts(1),
    ];
    let got = run_jobs(config, jobs).await;
    use weir::JobState::*;
    assert_eq!(got[0].state, Succeeded, "{}", err(&got[0]));
    let out: serde_json::Value = serde_json::from_slice(got[0].result.as_ref().unwrap()).unwrap();
    let dir = work.path().canonicalize().unwrap();
    assert_eq!(
        out["stdout"],
        format!("[][yes][{}]", dir.display()),
        "no WEIR_BROKER; the passed-on variable; the set directory"
    );
    assert_eq!(got[1].state, Succeeded, "{}", err(&got[1]));
    let out: serde_json::Value = serde_json::from_slice(got[1].result.as_ref().unwrap()).unwrap();
    assert_eq!(out["stdout_truncated_bytes"], 99_000);
    assert_eq!(got[2].state, Failed);
    assert!(
        err(&got[2]).contains("ran longer than 500ms"),
        "{}",
        err(&got[2])
    );
    assert_eq!(got[3].state, Succeeded, "{}", err(&got[3]));
    // The grandchild (`sleep 30`) went with its group.
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let start = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the grandchild {pid} outlived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `http` keeps within its limits: a body over `max_body` and a redirect loop fail for good, a
/// body cut off part way is not a success, `Retry-After` is capped, and denied addresses
/// (cloud metadata by default; here also loopback) are never reached, directly, through a
/// redirect, or through a name that resolves to one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_is_confined() {
    let base = http_server().await;
    let get = |url: String| {
        NewJob::new("http", format!(r#"{{"url":"{url}","method":"GET"}}"#)).max_attempts(3)
    };
    let mut config = Config::default();
    config.http.max_body = 1000;
    config.http.max_redirects = 3;
    config.http.max_retry_after = Duration::from_secs(2);
    let jobs = vec![
        get(format!("{base}/big")),
        get(format!("{base}/truncated")),
        get(format!("{base}/loop")),
        get(format!("{base}/to-metadata")),
        get("http://169.254.169.254/latest/meta-data/".into()),
        get(format!("{base}/busy-long")),
        get(format!("{base}/ok")),
    ];
    let got = run_jobs(config, jobs).await;
    use weir::JobState::*;
    assert_eq!(
        (got[0].state, got[0].attempt),
        (Failed, 1),
        "{}",
        err(&got[0])
    );
    assert!(err(&got[0]).contains("over 1000 bytes"), "{}", err(&got[0]));
    assert_eq!(got[1].state, Retryable, "{}", err(&got[1]));
    assert!(err(&got[1]).contains("cut off"), "{}", err(&got[1]));
    assert_eq!(
        (got[2].state, got[2].attempt),
        (Failed, 1),
        "{}",
        err(&got[2])
    );
    assert!(err(&got[2]).contains("redirects"), "{}", err(&got[2]));
    assert_eq!(
        (got[3].state, got[3].attempt),
        (Failed, 1),
        "{}",
        err(&got[3])
    );
    assert!(err(&got[3]).contains("169.254.169.254"), "{}", err(&got[3]));
    assert_eq!(
        (got[4].state, got[4].attempt),
        (Failed, 1),
        "{}",
        err(&got[4])
    );
    assert!(err(&got[4]).contains("denied"), "{}", err(&got[4]));
    assert_eq!(got[5].state, Retryable, "{}", err(&got[5]));
    let wait = got[5]
        .run_at
        .since(got[5].finished_at.unwrap_or(got[5].created_at));
    assert!(
        got[5].run_at.since(weir::Timestamp::now()) <= Duration::from_secs(3),
        "Retry-After 999999 s was capped to 2 s: retry at {} ({wait:?})",
        got[5].run_at
    );
    assert_eq!(got[6].state, Succeeded, "{}", err(&got[6]));

    // A name that resolves to a denied address.
    let mut config = Config::default();
    config.http.deny = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let port = base.rsplit(':').next().unwrap();
    let got = run_jobs(config, vec![get(format!("http://localhost:{port}/ok"))]).await;
    assert_eq!(
        (got[0].state, got[0].attempt),
        (Failed, 1),
        "{}",
        err(&got[0])
    );
    assert!(
        err(&got[0]).contains("denied by [http] deny"),
        "{}",
        err(&got[0])
    );
}
