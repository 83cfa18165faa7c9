//! API aggregation with a task group: one request fans out to several upstream services at
//! once, bounded, and joins their answers in order. The first permanent failure cancels the
//! other calls (they see their token fire and stop); `GroupMode::CollectAll` instead waits for
//! every call and reports every failure.
//!
//! The upstreams here are local functions with delays, so the example runs anywhere:
//! `cargo run --example api_aggregation`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir::{GroupMode, TaskGroup};

/// A pretend upstream call: answers after `ms`, or fails if `fail` is set; stops early when
/// cancelled.
async fn call(
    name: &'static str,
    ms: u64,
    fail: bool,
    cancel: CancellationToken,
) -> Result<String, String> {
    tokio::select! {
        _ = cancel.cancelled() => Err(format!("{name}: cancelled")),
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {
            if fail { Err(format!("{name}: 503 from upstream")) } else { Ok(format!("{name}: ok in {ms} ms")) }
        }
    }
}

async fn aggregate(
    mode: GroupMode,
    failing: Option<&'static str>,
) -> Result<Vec<String>, weir::GroupError<String>> {
    let upstreams = [
        ("profile", 30),
        ("orders", 80),
        ("recommendations", 120),
        ("reviews", 60),
    ];
    // At most 3 calls in flight; the fourth waits for room.
    let mut group = TaskGroup::new().limit(3).mode(mode);
    for (name, ms) in upstreams {
        let fail = failing == Some(name);
        group
            .spawn(move |cancel| call(name, ms, fail, cancel))
            .await;
    }
    group.join().await
}

#[tokio::main]
async fn main() {
    let start = std::time::Instant::now();
    let all = aggregate(GroupMode::FailFast, None)
        .await
        .expect("every upstream answered");
    println!("all answered in {:?}:", start.elapsed());
    for line in &all {
        println!("  {line}");
    }

    let start = std::time::Instant::now();
    let err = aggregate(GroupMode::FailFast, Some("profile"))
        .await
        .unwrap_err();
    println!(
        "fail-fast: {err} (after {:?}, the slower calls were cancelled)",
        start.elapsed()
    );
    assert_eq!(err.failures.len(), 1);
    assert_eq!(
        err.failures[0].index(),
        0,
        "the cause is reported, not the cancelled calls"
    );

    let err = aggregate(GroupMode::CollectAll, Some("orders"))
        .await
        .unwrap_err();
    println!(
        "collect-all: {} failure(s): {}",
        err.failures.len(),
        err.failures[0]
    );
}
