//! What the HTTP API asks of the embedded broker, on a big file: a page of a search, the
//! pages after it, a search that matches nothing (the worst case: a whole window looked at),
//! a job by id, and the counts by queue and state.
//!
//! `cargo bench -p weir-benches --bench search` (rows: `WEIR_BENCH_ROWS`, default 10,000,000
//! finished jobs, one in ten failed; `WEIR_BENCH_FILE` keeps the filled file for the next
//! run, which then skips the fill). Prints p50, p99 and max of each over repeated calls.
//!
//! Not a criterion bench: filling the file takes minutes, and the figures wanted are
//! percentiles of single calls, as an API client sees them.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use weir_core::{Broker, JobState, ListFilter};
use weir_sqlite::{SqliteBroker, SqliteOptions, Synchronous};

fn main() {
    let rows: usize = std::env::var("WEIR_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(rows));
}

async fn run(rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("WEIR_BENCH_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("search.db"));
    let fresh = !path.exists();
    let opts = SqliteOptions::new(&path).synchronous(Synchronous::Normal);
    let broker = SqliteBroker::open_with(opts).unwrap();
    if fresh {
        let t = Instant::now();
        weir_testkit::finished_jobs(&broker, rows, 10).await;
        println!(
            "filled {rows} finished jobs ({} failed) in {:.1?}",
            rows / 10,
            t.elapsed()
        );
    }
    let i = broker.inspect().unwrap();
    let failed = |limit| ListFilter {
        state: Some(JobState::Failed),
        limit,
        ..Default::default()
    };
    let first = i.search(failed(50), None).await.unwrap();
    let some_id = first.jobs[0].id;

    time(
        "GET /api/v1/jobs?state=failed&limit=50 (first page)",
        200,
        || async {
            assert_eq!(i.search(failed(50), None).await.unwrap().jobs.len(), 50);
        },
    )
    .await;
    // Page after page, one call each, as a dashboard scrolling on.
    let cursor = std::sync::Mutex::new(first.next.clone());
    let (cursor, restart) = (&cursor, &first.next);
    time("the next page (cursor), 200 pages on", 200, || async move {
        let c = cursor.lock().unwrap().take();
        let page = i.search(failed(50), c.as_deref()).await.unwrap();
        *cursor.lock().unwrap() = page.next.or_else(|| restart.clone());
    })
    .await;
    time(
        "GET /api/v1/jobs?text=no-such-text (nothing matches)",
        50,
        || async {
            let f = ListFilter {
                text: Some("no-such-text".into()),
                limit: 50,
                ..Default::default()
            };
            let page = i.search(f, None).await.unwrap();
            assert!(page.jobs.is_empty());
        },
    )
    .await;
    time("GET /api/v1/jobs/{id}", 500, || async {
        assert!(i.get(some_id).await.unwrap().is_some());
    })
    .await;
    time(
        "GET /api/v1/queues (counts by queue and state)",
        5,
        || async {
            assert!(!i.counts().await.unwrap().is_empty());
        },
    )
    .await;
}

/// Times `n` calls of `f`; prints p50, p99 and max.
async fn time<Fut: std::future::Future<Output = ()>>(
    what: &str,
    n: usize,
    mut f: impl FnMut() -> Fut,
) {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    let ms = |v: u64| Duration::from_micros(v).as_secs_f64() * 1e3;
    println!(
        "{what:<58} n={n:<4} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    );
}
