//! Live configuration against real files: a change is picked up while serving, a broken file
//! is refused and the old configuration keeps working.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir::reload::LiveConfig;
use weir::{Broker, Inspect, NewJob, QueueCounts, SqliteBroker};

/// Kills the `weir serve` child if the test fails before it stops it.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    /// The child, no longer killed on drop.
    fn disarm(mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors do: the watcher follows the directory.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_config_swaps_valid_files_and_refuses_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    write(&path, "[queues.default]\nworkers = 1\n");
    let live = LiveConfig::load(&path).unwrap();
    let mut changes = live.subscribe();
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(live.clone().watch({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));
    // No fixed pause for the watcher to register: write until the change is announced (a
    // write before the watch began is simply not seen, and the next one is).
    let start = Instant::now();
    loop {
        write(&path, "[queues.default]\nworkers = 5\n");
        match tokio::time::timeout(Duration::from_millis(200), changes.changed()).await {
            Ok(r) => break r.unwrap(),
            Err(_) => assert!(
                start.elapsed() < Duration::from_secs(10),
                "the change was never announced"
            ),
        }
    }
    assert_eq!(changes.borrow().queues["default"].get_ref().workers, 5);
    assert_eq!(live.current().queues["default"].get_ref().workers, 5);

    write(&path, "[queues.default]\nworkers = 5\nworkrs = 6\n");
    let start = Instant::now();
    while live.failures() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the broken file was read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        live.current().queues["default"].get_ref().workers,
        5,
        "the old config stays"
    );
    let e = live.reload().unwrap_err().to_string();
    assert!(e.contains("weir.toml:3:1: unknown field `workrs`"), "{e}");
    stop.cancel();
    watcher.await.unwrap().unwrap();
}

async fn running(b: &SqliteBroker) -> QueueCounts {
    b.counts()
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Raising a queue's workers in weir.toml under load grows the pool of a running `weir serve`
/// without losing tasks; a broken file afterwards is refused and serving goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_follows_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let cfg = dir.path().join("weir.toml");
    write(&cfg, "[queues.default]\nworkers = 1\n");
    let b = SqliteBroker::open(&db).unwrap();
    let jobs = (0..60)
        .map(|_| NewJob::new("sleep", r#"{"ms":100}"#))
        .collect();
    b.enqueue_many(jobs).await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--broker")
        .arg(format!("sqlite:{}", db.display()))
        .arg("--config")
        .arg(&cfg)
        .args(["--log", "info", "serve"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log, line by line as it comes, so the test waits for what it looks for.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };
    let guard = KillOnDrop(Some(child));
    let start = Instant::now();
    while running(&b).await.succeeded < 2 {
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running(&b).await.running <= 1, "one worker to start with");
    write(&cfg, "[queues.default]\nworkers = 8\n");
    let mut peak = 0;
    while running(&b).await.succeeded < 60 {
        peak = peak.max(running(&b).await.running);
        assert!(start.elapsed() < Duration::from_secs(60), "all jobs finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(peak > 1, "the pool grew live: peak {peak}");
    // A broken file is refused; serving goes on.
    write(&cfg, "[queues.default]\nworkers = \"many\"\n");
    b.enqueue(NewJob::new("sleep", r#"{"ms":1}"#))
        .await
        .unwrap();
    while running(&b).await.succeeded < 61 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still serving after a bad reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refusal is logged once the watcher has read the broken file.
    while !log.lock().unwrap().contains("configuration refused") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the broken file was never refused: {}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut child = guard.disarm();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(
        log.contains("weir.toml:2:11") && log.contains("configuration refused"),
        "{log}"
    );
    let c = running(&b).await;
    assert_eq!(
        (c.succeeded, c.failed, c.pending),
        (61, 0, 0),
        "nothing lost"
    );
}

#[test]
fn config_check_validates_offline() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[queues.default]\nworkers = 2\nmax_workers = 9\n[retry.http]\nbase = \"1s\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 queues, 1 retry policies)"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[queues.default]\nworkers = 2\nmax_workers = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "bad.toml:1:1: queues.default: min_workers (2) must not exceed max_workers (1)"
        ),
        "{err}"
    );
}

/// How many requests a path had in flight at most, and in all, as the server saw them.
#[derive(Default)]
struct InFlight {
    now: std::collections::HashMap<String, usize>,
    max: std::collections::HashMap<String, usize>,
    total_now: usize,
    total_max: usize,
    /// When each request arrived, by path.
    arrivals: std::collections::HashMap<String, Vec<Instant>>,
}

/// An HTTP server that holds each request 150 ms and records concurrency per path.
async fn concurrency_server(seen: std::sync::Arc<std::sync::Mutex<InFlight>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                {
                    let mut s = seen.lock().unwrap();
                    let now = s.now.entry(path.clone()).or_default();
                    *now += 1;
                    let now = *now;
                    let max = s.max.entry(path.clone()).or_default();
                    *max = (*max).max(now);
                    s.total_now += 1;
                    s.total_max = s.total_max.max(s.total_now);
                    s.arrivals
                        .entry(path.clone())
                        .or_default()
                        .push(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
                {
                    let mut s = seen.lock().unwrap();
                    *s.now.get_mut(&path).unwrap() -= 1;
                    s.total_now -= 1;
                }
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A templated limit key from weir.toml (`tenant:{url}`, one key per tenant's URL) holds for
/// the built-in `http` kind under `weir serve`, measured where it matters: the server sees
/// at most 2 requests at once per tenant, while tenants run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_limits_hold_for_built_in_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let cfg = dir.path().join("weir.toml");
    write(
        &cfg,
        "[limits.tenant]\nconcurrency = 2\n\n[kinds.http]\nlimits = [\"tenant:{url}\"]\n",
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(InFlight::default()));
    let base = concurrency_server(seen.clone()).await;
    let b = SqliteBroker::open(&db).unwrap();
    let jobs = (0..24)
        .map(|i| {
            NewJob::new(
                "http",
                format!(
                    r#"{{"url":"{base}/t/{}","method":"GET"}}"#,
                    ["a", "b", "c"][i % 3]
                ),
            )
        })
        .collect();
    b.enqueue_many(jobs).await.unwrap();
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--broker")
        .arg(format!("sqlite:{}", db.display()))
        .arg("--config")
        .arg(&cfg)
        .args(["--log", "warn", "serve", "--workers", "16"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(Some(child));
    while running(&b).await.succeeded < 24 {
        let c = running(&b).await;
        assert!(c.failed == 0, "a job failed: {c:?}");
        assert!(start.elapsed() < Duration::from_secs(60), "all jobs finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (max, total_max) = {
        let s = seen.lock().unwrap();
        (s.max.clone(), s.total_max)
    };
    for t in ["a", "b", "c"] {
        assert_eq!(
            max.get(&format!("/t/{t}")).copied(),
            Some(2),
            "tenant {t}: at most 2 at once, and the limit was reached"
        );
    }
    assert!(
        total_max > 2,
        "tenants ran side by side (at most {total_max} at once in all)"
    );
    let jobs = b
        .list(weir::ListFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        jobs.iter().all(|j| j.attempt == 1),
        "deferrals spent no attempt"
    );
}

/// A rate limit from weir.toml (`5/s`, spread evenly) holds under `weir serve`, measured by
/// the server: requests of the limited kind arrive at least ~200 ms apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_under_serve() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rate.db");
    let cfg = dir.path().join("weir.toml");
    write(
        &cfg,
        "[limits.api]\nrate = \"5/s\"\n\n[kinds.http]\nlimits = [\"api\"]\n",
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(InFlight::default()));
    let base = concurrency_server(seen.clone()).await;
    let b = SqliteBroker::open(&db).unwrap();
    let jobs = (0..8)
        .map(|_| NewJob::new("http", format!(r#"{{"url":"{base}/r","method":"GET"}}"#)))
        .collect();
    b.enqueue_many(jobs).await.unwrap();
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--broker")
        .arg(format!("sqlite:{}", db.display()))
        .arg("--config")
        .arg(&cfg)
        .args(["--log", "warn", "serve", "--workers", "8"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(Some(child));
    while running(&b).await.succeeded < 8 {
        assert!(start.elapsed() < Duration::from_secs(60), "all jobs finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut at = seen.lock().unwrap().arrivals["/r"].clone();
    at.sort();
    assert_eq!(at.len(), 8, "each job once");
    let gaps: Vec<u128> = at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    // 5 per second, evenly: 200 ms apart (less a little for when each request left).
    assert!(
        gaps.iter().all(|g| *g >= 150),
        "requests too close: {gaps:?} ms"
    );
}
