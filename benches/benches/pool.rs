//! ElasticPool against `tokio::spawn` + `JoinSet` (unbounded) and against
//! `futures::stream::buffer_unordered` (bounded, one task), for three kinds of work.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::StreamExt;
use tokio::task::JoinSet;
use weir_sync::ElasticPool;

const TASKS: usize = 2_000;
const CONCURRENCY: usize = 64;

#[derive(Clone, Copy, Debug)]
enum Work {
    Noop,
    Cpu10us,
    Sleep1ms,
}

async fn work(w: Work) {
    match w {
        Work::Noop => {}
        Work::Cpu10us => {
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(10) {
                std::hint::spin_loop();
            }
        }
        Work::Sleep1ms => tokio::time::sleep(Duration::from_millis(1)).await,
    }
}

async fn joinset(w: Work) {
    let mut set = JoinSet::new();
    for _ in 0..TASKS {
        set.spawn(work(w));
    }
    while set.join_next().await.is_some() {}
}

async fn buffer_unordered(w: Work) {
    futures::stream::iter(0..TASKS)
        .map(|_| work(w))
        .buffer_unordered(CONCURRENCY)
        .for_each(|_| async {})
        .await;
}

async fn pool(pool: &ElasticPool, w: Work) {
    let mut handles = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let slot = pool.reserve().await.expect("open");
        handles.push(slot.spawn(work(w)));
    }
    for h in handles {
        h.await.expect("task");
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let p = ElasticPool::new(CONCURRENCY);
    for w in [Work::Noop, Work::Cpu10us, Work::Sleep1ms] {
        let mut g = c.benchmark_group(format!("{w:?}"));
        g.throughput(Throughput::Elements(TASKS as u64));
        if matches!(w, Work::Sleep1ms) {
            g.sample_size(10);
        }
        g.bench_function(BenchmarkId::new("joinset_spawn", TASKS), |b| {
            b.to_async(&rt).iter(|| joinset(w))
        });
        g.bench_function(BenchmarkId::new("buffer_unordered_64", TASKS), |b| {
            b.to_async(&rt).iter(|| buffer_unordered(w))
        });
        g.bench_function(BenchmarkId::new("elastic_pool_64", TASKS), |b| {
            b.to_async(&rt).iter(|| pool(&p, w))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
