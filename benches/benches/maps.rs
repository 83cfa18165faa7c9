//! The original design's concurrent-map comparison, in Rust: 1000 reader tasks and 100 writer
//! tasks on a 2-thread tokio runtime share one map through each of
//!
//! - `std::sync::Mutex<HashMap>`,
//! - `std::sync::RwLock<HashMap>`,
//! - `dashmap::DashMap` (a sharded concurrent map),
//! - a single owner task fed by a channel (each operation is a message and a reply).
//!
//! Prints the mean and p99 latency per operation and the throughput. Run with
//! `cargo bench -p weir-benches --bench maps`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use dashmap::DashMap;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, oneshot};

const KEYS: u64 = 10_000;
const READERS: usize = 1000;
const WRITERS: usize = 100;
const OPS: usize = 200;

#[derive(Clone)]
enum Map {
    Mutex(Arc<Mutex<HashMap<u64, u64>>>),
    RwLock(Arc<RwLock<HashMap<u64, u64>>>),
    Dash(Arc<DashMap<u64, u64>>),
    Owner(mpsc::Sender<Op>),
}

enum Op {
    Get(u64, oneshot::Sender<Option<u64>>),
    Put(u64, u64, oneshot::Sender<()>),
}

impl Map {
    async fn get(&self, k: u64) -> Option<u64> {
        match self {
            Map::Mutex(m) => m.lock().expect("lock").get(&k).copied(),
            Map::RwLock(m) => m.read().expect("lock").get(&k).copied(),
            Map::Dash(m) => m.get(&k).map(|v| *v),
            Map::Owner(tx) => {
                let (r, rx) = oneshot::channel();
                tx.send(Op::Get(k, r)).await.ok()?;
                rx.await.ok().flatten()
            }
        }
    }

    async fn put(&self, k: u64, v: u64) {
        match self {
            Map::Mutex(m) => {
                m.lock().expect("lock").insert(k, v);
            }
            Map::RwLock(m) => {
                m.write().expect("lock").insert(k, v);
            }
            Map::Dash(m) => {
                m.insert(k, v);
            }
            Map::Owner(tx) => {
                let (r, rx) = oneshot::channel();
                if tx.send(Op::Put(k, v, r)).await.is_ok() {
                    let _ = rx.await;
                }
            }
        }
    }
}

fn owner() -> Map {
    let (tx, mut rx) = mpsc::channel::<Op>(1024);
    tokio::spawn(async move {
        let mut m: HashMap<u64, u64> = (0..KEYS).map(|k| (k, k)).collect();
        while let Some(op) = rx.recv().await {
            match op {
                Op::Get(k, r) => drop(r.send(m.get(&k).copied())),
                Op::Put(k, v, r) => {
                    m.insert(k, v);
                    let _ = r.send(());
                }
            }
        }
    });
    Map::Owner(tx)
}

async fn run(name: &str, map: Map) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..(READERS + WRITERS) {
        let map = map.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut k = (t as u64).wrapping_mul(2654435761) % KEYS;
            for i in 0..OPS {
                k = (k * 1103515245 + 12345) % KEYS;
                let t0 = Instant::now();
                if t < WRITERS {
                    map.put(k, i as u64).await;
                } else {
                    std::hint::black_box(map.get(k).await);
                }
                let _ = h.record(t0.elapsed().as_nanos() as u64);
                tokio::task::yield_now().await;
            }
            h
        }));
    }
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    for t in tasks {
        all.add(t.await.expect("task")).expect("merge");
    }
    let secs = start.elapsed().as_secs_f64();
    let ops = ((READERS + WRITERS) * OPS) as f64;
    println!(
        "{name:<24} mean {:>9.2} µs   p99 {:>9.2} µs   {:>10.0} ops/s",
        all.mean() / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        ops / secs
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!(
            "{READERS} readers + {WRITERS} writers, {OPS} operations each, {KEYS} keys, 2 worker threads"
        );
        for round in 0..2 {
            if round == 1 {
                println!("-- second round");
            }
            let base: HashMap<u64, u64> = (0..KEYS).map(|k| (k, k)).collect();
            run("Mutex<HashMap>", Map::Mutex(Arc::new(Mutex::new(base.clone())))).await;
            run("RwLock<HashMap>", Map::RwLock(Arc::new(RwLock::new(base.clone())))).await;
            run("DashMap (sharded)", Map::Dash(Arc::new(base.into_iter().collect()))).await;
            run("owner task + channel", owner()).await;
        }
    });
}
