//! Live configuration against real files: a change is picked up while serving, a broken file
//! is refused and the old configuration keeps working.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir::reload::LiveConfig;
use weir::{Broker, Inspect, NewJob, QueueCounts, SqliteBroker};

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
    tokio::time::sleep(Duration::from_millis(100)).await;
    write(&path, "[queues.default]\nworkers = 5\n");
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the change was announced")
        .unwrap();
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
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--broker")
        .arg(format!("sqlite:{}", db.display()))
        .arg("--config")
        .arg(&cfg)
        .args(["--log", "info", "serve"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    tokio::time::sleep(Duration::from_millis(400)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
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

/// Limits and kind limit keys from weir.toml apply to the built-in kinds of `weir serve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_limits_hold_for_built_in_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let cfg = dir.path().join("weir.toml");
    write(
        &cfg,
        "[limits.slow]\nconcurrency = 2\n\n[kinds.sleep]\nlimits = [\"slow\"]\n",
    );
    let b = SqliteBroker::open(&db).unwrap();
    let jobs = (0..20)
        .map(|_| NewJob::new("sleep", r#"{"ms":100}"#))
        .collect();
    b.enqueue_many(jobs).await.unwrap();
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--broker")
        .arg(format!("sqlite:{}", db.display()))
        .arg("--config")
        .arg(&cfg)
        .args(["--log", "warn", "serve", "--workers", "8"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    while running(&b).await.succeeded < 20 {
        assert!(start.elapsed() < Duration::from_secs(60), "all jobs finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    // 20 jobs of 100 ms, 2 at a time, take at least a second; 8 at a time would take 0.3 s.
    assert!(
        took >= Duration::from_millis(950),
        "the limit held: {took:?}"
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
