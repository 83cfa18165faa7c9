//! Shared by the RabbitMQ end-to-end tests: a hit-recording HTTP server, `weir serve`
//! processes, and checks on the queues.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir::{AmqpBroker, Broker, NewJob};

pub fn amqp_url() -> String {
    std::env::var("WEIR_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A broker URL in a namespace of the test's own.
pub fn url_in(prefix: &str) -> String {
    format!("{}?prefix={prefix}", amqp_url())
}

/// Job numbers the HTTP server was asked for (`GET /hit/N`), and how many requests came.
#[derive(Default)]
pub struct Hits {
    pub seen: HashSet<u64>,
    pub requests: u64,
}

/// A keep-alive HTTP/1.1 server that answers 200 to `GET /hit/N`, after `delay`, and
/// records N.
pub async fn hit_server(hits: Arc<Mutex<Hits>>, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let path = head.split_whitespace().nth(1).unwrap_or("");
                        if let Some(n) = path.strip_prefix("/hit/").and_then(|n| n.parse().ok()) {
                            let mut h = hits.lock().unwrap();
                            h.seen.insert(n);
                            h.requests += 1;
                        }
                        tokio::time::sleep(delay).await;
                        let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A `weir serve` process, killed if the test ends without stopping it.
pub struct Serve(pub Option<Child>);

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn serve(url: &str, workers: &str) -> Serve {
    Serve(Some(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args([
                "--broker",
                url,
                "--log",
                "warn",
                "serve",
                "--workers",
                workers,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("weir serve starts"),
    ))
}

/// SIGTERM, then the `succeeded` count from the process's closing summary line.
pub fn stop(mut serve: Serve) -> u64 {
    let child = serve.0.take().expect("running");
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "weir serve exited with {}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("stopped:"))
        .unwrap_or_else(|| panic!("no summary in {text:?}"));
    line.split(", ")
        .find(|p| p.ends_with(" succeeded"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no succeeded count in {line:?}"))
}

pub async fn enqueue_hits(b: &AmqpBroker, base: &str, n: u64) {
    for start in (0..n).step_by(1000) {
        let jobs = (start..(start + 1000).min(n))
            .map(|i| {
                NewJob::new(
                    "http",
                    format!(r#"{{"url":"{base}/hit/{i}","method":"GET"}}"#),
                )
            })
            .collect();
        b.enqueue_many(jobs).await.unwrap();
    }
}

pub async fn wait_for(hits: &Mutex<Hits>, n: usize, what: &str) {
    let start = Instant::now();
    while hits.lock().unwrap().seen.len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "timed out waiting for {what}: {} of {n} jobs ran",
            hits.lock().unwrap().seen.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nothing is left: no message ready, delayed or dead, once no worker holds any.
pub async fn assert_drained(b: &AmqpBroker) {
    let d = &b
        .queue_stats()
        .unwrap()
        .depths(&["default".into()])
        .await
        .unwrap()[0];
    assert_eq!((d.ready, d.delayed, d.dead), (0, 0, 0), "{d:?}");
}

/// One end-to-end run: a queue namespace of its own, a hit server answering after `delay`,
/// and `n` jobs enqueued, each calling it once.
pub struct Run {
    pub url: String,
    pub hits: Arc<Mutex<Hits>>,
    pub broker: AmqpBroker,
}

pub async fn start_run(n: u64, delay: Duration) -> Run {
    let prefix = format!("weir-test-{}.", uuid::Uuid::new_v4().simple());
    let url = url_in(&prefix);
    let hits = Arc::new(Mutex::new(Hits::default()));
    let base = hit_server(hits.clone(), delay).await;
    let broker = AmqpBroker::new(&url).unwrap();
    enqueue_hits(&broker, &base, n).await;
    Run { url, hits, broker }
}

impl Run {
    /// Checks that nothing is left in the queues, then deletes them.
    pub async fn finish(self) {
        assert_drained(&self.broker).await;
        self.broker
            .delete_queues(&["default".into()])
            .await
            .unwrap();
        self.broker.close().await;
    }
}
