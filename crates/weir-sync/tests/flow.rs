//! In-process pipelines: bounds hold (checked with the counters), timeouts shed and count,
//! ordered stages keep input order (property-tested), batching, branching and merging.

use std::time::Duration;

use proptest::prelude::*;
use weir_sync::flow::{Flow, Shed, StageOptions};

#[tokio::test(start_paused = true)]
async fn a_pipeline_never_holds_more_than_its_bounds() {
    let mut flow = Flow::source(0..200u32)
        .map(
            "parse",
            StageOptions::default().concurrency(3).capacity(4),
            |x| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                x
            },
        )
        .map(
            "enrich",
            StageOptions::default().concurrency(2).capacity(5),
            |x| async move {
                tokio::time::sleep(Duration::from_millis(3)).await;
                x + 1
            },
        );
    let stats = flow.stats();
    let mut got = Vec::new();
    // A slow consumer: the stages fill up and must hold back, not grow.
    while let Some(x) = flow.next().await {
        got.push(x);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(got, (1..=200).collect::<Vec<_>>());
    let stages = stats.stages();
    let parse = stages.iter().find(|s| s.name == "parse").unwrap();
    let enrich = stages.iter().find(|s| s.name == "enrich").unwrap();
    assert_eq!((parse.taken, parse.emitted), (200, 200));
    assert_eq!((enrich.taken, enrich.emitted), (200, 200));
    assert!(parse.peak_queued <= 4, "{parse:?}");
    assert!(enrich.peak_queued <= 5, "{enrich:?}");
    assert_eq!(
        enrich.peak_queued, 5,
        "the slow consumer filled the queue to its bound"
    );
    assert!(
        parse.peak_working <= 3 && enrich.peak_working <= 2,
        "{stages:?}"
    );
    assert_eq!(enrich.queued, 0);
}

#[tokio::test(start_paused = true)]
async fn timeouts_shed_and_count_or_divert() {
    let slow = |x: u32| async move {
        let ms = if x.is_multiple_of(3) { 100 } else { 1 };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        x
    };
    let flow = Flow::source(0..30u32).map(
        "call",
        StageOptions::default()
            .concurrency(4)
            .timeout(Duration::from_millis(50)),
        slow,
    );
    let stats = flow.stats();
    let got = flow.collect().await;
    assert_eq!(
        got,
        (0..30u32)
            .filter(|x| !x.is_multiple_of(3))
            .collect::<Vec<_>>()
    );
    let call = &stats.stages()[1];
    assert_eq!((call.taken, call.emitted, call.shed), (30, 20, 10));

    let (side_tx, mut side_rx) = tokio::sync::mpsc::channel(100);
    let got = Flow::source(0..30u32)
        .map(
            "call",
            StageOptions::default()
                .concurrency(4)
                .timeout(Duration::from_millis(50))
                .shed(Shed::Divert(side_tx)),
            slow,
        )
        .collect()
        .await;
    assert_eq!(got.len(), 20);
    let mut diverted = Vec::new();
    while let Ok(x) = side_rx.try_recv() {
        diverted.push(x);
    }
    diverted.sort_unstable();
    assert_eq!(
        diverted,
        (0..30u32)
            .filter(|x| x.is_multiple_of(3))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn unordered_stages_emit_as_work_finishes() {
    let got = Flow::source(0..8u64)
        .map(
            "reverse",
            StageOptions::default().concurrency(8).ordered(false),
            |x| async move {
                tokio::time::sleep(Duration::from_millis(10 * (8 - x))).await;
                x
            },
        )
        .collect()
        .await;
    assert_eq!(got, (0..8).rev().collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn batches_by_size_or_by_time() {
    let (tx, flow) = Flow::channel(16);
    let mut batches = flow.batch("batch", 3, Duration::from_millis(100));
    for i in 0..4 {
        tx.send(i).await.unwrap();
    }
    assert_eq!(
        batches.next().await,
        Some(vec![0, 1, 2]),
        "full batch at once"
    );
    // The fourth waits for company until the time is up.
    assert_eq!(batches.next().await, Some(vec![3]));
    drop(tx);
    assert_eq!(batches.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn branch_merge_and_sub_pipelines() {
    let (evens, odds) = Flow::source(0..100u32).branch("parity", |x| x.is_multiple_of(2));
    let evens = evens.map("halve", StageOptions::default(), |x| async move { x / 2 });
    let odds = odds.then(|f| {
        f.map("neg", StageOptions::default(), |x| async move { 1000 + x })
            .map(
                "id",
                StageOptions::default().concurrency(4),
                |x| async move { x },
            )
    });
    let mut all = evens.merge(odds).collect().await;
    all.sort_unstable();
    let mut want: Vec<u32> = (0..50)
        .chain(
            (0..100u32)
                .filter(|x| !x.is_multiple_of(2))
                .map(|x| 1000 + x),
        )
        .collect();
    want.sort_unstable();
    assert_eq!(all, want);
}

fn ordered_run(delays: Vec<u8>, concurrency: usize) -> Vec<usize> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let items: Vec<(usize, u8)> = delays.into_iter().enumerate().collect();
        Flow::source(items)
            .map(
                "work",
                StageOptions::default().concurrency(concurrency).capacity(3),
                |(i, d)| async move {
                    tokio::time::sleep(Duration::from_millis(u64::from(d))).await;
                    i
                },
            )
            .collect()
            .await
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// An ordered stage emits in input order whatever its concurrency and however long each
    /// item takes.
    #[test]
    fn ordered_stages_keep_input_order(
        delays in proptest::collection::vec(0u8..30, 0..60),
        concurrency in 1usize..8,
    ) {
        let n = delays.len();
        prop_assert_eq!(ordered_run(delays, concurrency), (0..n).collect::<Vec<_>>());
    }
}
