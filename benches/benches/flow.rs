//! A 3-stage in-process pipeline: `weir_sync::flow` against a hand-written chain of tokio
//! tasks joined by bounded mpsc channels doing the same work (parse, transform, encode on each
//! item, one item at a time per stage, 64 queued between stages).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::sync::mpsc;
use weir_sync::flow::{Flow, StageOptions};

const ITEMS: u64 = 20_000;
const CAP: usize = 64;

fn parse(x: u64) -> u64 {
    x.wrapping_mul(2_654_435_761)
}
fn transform(x: u64) -> u64 {
    x.rotate_left(7) ^ 0x9e37_79b9
}
fn encode(x: u64) -> u64 {
    x % 1_000_003
}

async fn hand_written() -> u64 {
    let (tx0, mut rx0) = mpsc::channel::<u64>(CAP);
    let (tx1, mut rx1) = mpsc::channel::<u64>(CAP);
    let (tx2, mut rx2) = mpsc::channel::<u64>(CAP);
    let (tx3, mut rx3) = mpsc::channel::<u64>(CAP);
    tokio::spawn(async move {
        for i in 0..ITEMS {
            if tx0.send(i).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(x) = rx0.recv().await {
            if tx1.send(parse(x)).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(x) = rx1.recv().await {
            if tx2.send(transform(x)).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(x) = rx2.recv().await {
            if tx3.send(encode(x)).await.is_err() {
                return;
            }
        }
    });
    let mut sum = 0u64;
    while let Some(x) = rx3.recv().await {
        sum = sum.wrapping_add(x);
    }
    sum
}

async fn with_flow() -> u64 {
    let opts = || StageOptions::default().capacity(CAP);
    let mut flow = Flow::source(0..ITEMS)
        .map("parse", opts(), |x| async move { parse(x) })
        .map("transform", opts(), |x| async move { transform(x) })
        .map("encode", opts(), |x| async move { encode(x) });
    let mut sum = 0u64;
    while let Some(x) = flow.next().await {
        sum = sum.wrapping_add(x);
    }
    sum
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(hand_written()), rt.block_on(with_flow()));
    let mut g = c.benchmark_group("pipeline_3_stages");
    g.throughput(Throughput::Elements(ITEMS));
    g.bench_function("hand_written_mpsc", |b| b.to_async(&rt).iter(hand_written));
    g.bench_function("weir_flow", |b| b.to_async(&rt).iter(with_flow));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
