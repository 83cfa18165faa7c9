//! The retention sweep on the embedded broker: what one sweep costs on a file that holds many
//! finished jobs, and how long it holds up other writers while it deletes.
//!
//! `cargo bench -p weir-benches --bench retention` (rows: `WEIR_BENCH_ROWS`, default
//! 1,000,000 finished jobs, one in ten failed and kept). Prints:
//! - the time of a sweep that finds nothing to delete (what `weir serve` pays every few
//!   minutes once the file is in its steady state), best of five;
//! - the enqueue latency of a probe (one enqueue every 2 ms) alone, the baseline; during
//!   back-to-back sweeps that delete nothing; and while a sweep deletes every succeeded job,
//!   with the sweep's own time.
//!
//! Not a criterion bench: each measurement changes the file it measures.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use weir_core::{Broker, JobState, NewJob, Timestamp};
use weir_sqlite::{SqliteBroker, SqliteOptions, Synchronous};

fn main() {
    let rows: usize = std::env::var("WEIR_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(rows));
}

async fn run(rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions::new(dir.path().join("retention.db")).synchronous(Synchronous::Normal);
    let broker = std::sync::Arc::new(SqliteBroker::open_with(opts).unwrap());
    let filled = Instant::now();
    weir_testkit::finished_jobs(&*broker, rows, 10).await;
    println!(
        "filled {rows} finished jobs ({} failed) in {:.1?}",
        rows / 10,
        filled.elapsed()
    );
    let inspect = broker.inspect().unwrap();

    let week_ago = Timestamp(Timestamp::now().0 - 7 * 24 * 3_600_000);
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let n = inspect
            .purge_finished_before(JobState::Succeeded, week_ago)
            .await
            .unwrap();
        assert_eq!(n, 0);
        best = best.min(t.elapsed());
    }
    println!("sweep with nothing expired: {best:.2?} (best of 5)");

    let alone = probe::<()>(&broker, Duration::from_secs(2), None).await;
    report("probe enqueue, alone", &alone);
    let b = broker.clone();
    let idle_sweeps = tokio::spawn(async move {
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_secs(2) {
            let i = b.inspect().unwrap();
            assert_eq!(
                i.purge_finished_before(JobState::Succeeded, week_ago)
                    .await
                    .unwrap(),
                0
            );
            n += 1;
        }
        n
    });
    let idle = probe(&broker, Duration::from_secs(2), Some(&idle_sweeps)).await;
    let n = idle_sweeps.await.unwrap();
    report(
        &format!("probe enqueue, during {n} sweeps that delete nothing"),
        &idle,
    );
    let everything = Timestamp(Timestamp::now().0 + 60_000);
    let b = broker.clone();
    let sweep = tokio::spawn(async move {
        let t = Instant::now();
        let n = b
            .inspect()
            .unwrap()
            .purge_finished_before(JobState::Succeeded, everything)
            .await
            .unwrap();
        (n, t.elapsed())
    });
    let during = probe(&broker, Duration::from_secs(2), Some(&sweep)).await;
    let (n, took) = sweep.await.unwrap();
    report("probe enqueue, during the sweep", &during);
    println!("the sweep deleted {n} jobs in {took:.2?}");
}

/// Enqueues one job every 2 ms for `span`, or until `until` finishes once it is given (at
/// least 100 probes); returns their latencies in microseconds.
async fn probe<T>(
    broker: &SqliteBroker,
    span: Duration,
    until: Option<&tokio::task::JoinHandle<T>>,
) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    loop {
        tick.tick().await;
        let t = Instant::now();
        broker
            .enqueue(NewJob::new("probe", "{}").queue("probe"))
            .await
            .unwrap();
        h.record(t.elapsed().as_micros() as u64).unwrap();
        let done = match until {
            Some(u) => u.is_finished() && h.len() >= 100,
            None => start.elapsed() >= span,
        };
        if done {
            return h;
        }
    }
}

fn report(what: &str, h: &Histogram<u64>) {
    println!(
        "{what}: {} probes, p50 {} µs, p99 {} µs, max {} µs",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
}
