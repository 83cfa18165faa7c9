//! TaskGroup: first failure cancels siblings, collect-all reports every failure, the limit
//! holds, panics are caught, and a dropped group leaves no task behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir_sync::{GroupMode, TaskFailure, TaskGroup};

#[tokio::test(start_paused = true)]
async fn the_first_failure_cancels_the_siblings() {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let mut g = TaskGroup::<u32, String>::new();
    for i in 0..5u32 {
        let cancelled = cancelled.clone();
        g.spawn(move |token| async move {
            if i == 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Err("upstream said no".to_owned());
            }
            tokio::select! {
                _ = token.cancelled() => {
                    cancelled.fetch_add(1, Ordering::SeqCst);
                    Err("cancelled".to_owned())
                }
                _ = tokio::time::sleep(Duration::from_secs(3600)) => Ok(i),
            }
        })
        .await;
    }
    let err = g.join().await.unwrap_err();
    assert_eq!(err.failures.len(), 1, "only the cause is reported");
    match &err.failures[0] {
        TaskFailure::Failed { index, error } => {
            assert_eq!((*index, error.as_str()), (2, "upstream said no"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        4,
        "every sibling saw its token fire"
    );
}

#[tokio::test(start_paused = true)]
async fn collect_all_runs_everything_and_reports_every_error() {
    let mut g = TaskGroup::<u32, String>::new().mode(GroupMode::CollectAll);
    for i in 0..6u32 {
        g.spawn(move |_| async move {
            tokio::time::sleep(Duration::from_millis(u64::from(10 * (6 - i)))).await;
            if i % 2 == 1 {
                Err(format!("odd {i}"))
            } else {
                Ok(i)
            }
        })
        .await;
    }
    let err = g.join().await.unwrap_err();
    let mut idx: Vec<usize> = err.failures.iter().map(|f| f.index()).collect();
    idx.sort_unstable();
    assert_eq!(idx, vec![1, 3, 5]);
    assert!(
        err.to_string().starts_with("3 of the group's tasks failed"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn results_come_back_in_spawn_order_within_the_limit() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut g = TaskGroup::<usize, String>::new().limit(3);
    for i in 0..20usize {
        let (running, peak) = (running.clone(), peak.clone());
        g.spawn(move |_| async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // Later tasks finish first: the order of results must not depend on it.
            tokio::time::sleep(Duration::from_millis((20 - i) as u64)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(i)
        })
        .await;
    }
    assert_eq!(g.join().await.unwrap(), (0..20).collect::<Vec<_>>());
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "never more than the limit at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_caught_and_cancels_the_rest() {
    let mut g = TaskGroup::<(), String>::new();
    g.spawn(|_| async { panic!("index out of bounds") }).await;
    g.spawn(|token| async move {
        token.cancelled().await;
        Ok(())
    })
    .await;
    let err = g.join().await.unwrap_err();
    match &err.failures[0] {
        TaskFailure::Panicked { index, message } => {
            assert_eq!(*index, 0);
            assert!(message.contains("index out of bounds"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// Dropping a group (say, its caller was cancelled) aborts its tasks: nothing keeps running.
#[tokio::test(start_paused = true)]
async fn a_dropped_group_leaves_no_orphans() {
    let alive = Arc::new(());
    let mut g = TaskGroup::<(), String>::new();
    for _ in 0..10 {
        let held = alive.clone();
        g.spawn(move |_| async move {
            let _held = held;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        })
        .await;
    }
    assert_eq!(Arc::strong_count(&alive), 11);
    drop(g);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(Arc::strong_count(&alive), 1, "every task was aborted");
}

#[tokio::test(start_paused = true)]
async fn a_parent_token_cancels_the_group() {
    let parent = tokio_util::sync::CancellationToken::new();
    let mut g = TaskGroup::<(), String>::with_parent(&parent);
    g.spawn(|token| async move {
        token.cancelled().await;
        Err("stopped".to_owned())
    })
    .await;
    parent.cancel();
    let e = g.join().await.expect_err("the group was cancelled");
    // The task saw the parent's cancellation through its own token, and its error is the one
    // reported (not a panic, not another task's).
    assert_eq!(e.failures.len(), 1, "{e}");
    match &e.failures[0] {
        TaskFailure::Failed { index, error } => {
            assert_eq!((*index, error.as_str()), (0, "stopped"))
        }
        other => panic!("expected the task's own error: {other}"),
    }
}
