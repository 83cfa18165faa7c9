//! ElasticPool: resizing under load, backpressure, stats. Time is paused where it matters.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use weir_sync::ElasticPool;

/// Spawns `n` tasks that hold their slot until `gate` is notified; returns once `n` run.
async fn hold(
    pool: &ElasticPool,
    n: usize,
    gate: &Arc<Notify>,
    running: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (gate, running) = (gate.clone(), running.clone());
        let slot = pool.reserve().await.unwrap();
        out.push(slot.spawn(async move {
            running.fetch_add(1, Ordering::SeqCst);
            gate.notified().await;
            running.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    out
}

#[tokio::test]
async fn growing_frees_slots_at_once() {
    let pool = ElasticPool::new(2);
    let a = pool.try_reserve().unwrap();
    let b = pool.try_reserve().unwrap();
    assert!(pool.try_reserve().is_none(), "full");
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.reserve().await.map(|_| ()) }
    });
    tokio::task::yield_now().await;
    pool.resize(4);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .is_ok(),
        "a waiter got a new slot"
    );
    assert!(pool.try_reserve().is_some());
    drop((a, b));
}

#[tokio::test]
async fn shrinking_is_lazy_and_stops_nothing() {
    let pool = ElasticPool::new(4);
    let gate = Arc::new(Notify::new());
    let running = Arc::new(AtomicUsize::new(0));
    let tasks = hold(&pool, 4, &gate, &running).await;
    while running.load(Ordering::SeqCst) < 4 {
        tokio::task::yield_now().await;
    }
    pool.resize(1);
    let s = pool.stats();
    assert_eq!((s.size, s.busy), (1, 4), "running tasks go on");
    // Release one at a time: slots coming back are retired until the pool is down to 1.
    for (i, t) in tasks.into_iter().enumerate() {
        gate.notify_one();
        t.await.unwrap();
        let free = pool.try_reserve();
        if i < 3 {
            assert!(free.is_none(), "slot {i} was retired");
        } else {
            assert!(free.is_some(), "the last one is the pool's one slot");
            assert!(pool.try_reserve().is_none(), "and only one");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resizing_under_load_runs_every_task_once() {
    let pool = ElasticPool::new(3);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let resizer = tokio::spawn({
        let pool = pool.clone();
        async move {
            for i in 0..200 {
                pool.resize([1, 8, 3, 16, 2][i % 5]);
                tokio::task::yield_now().await;
            }
            pool.resize(4);
        }
    });
    let mut handles = Vec::new();
    for i in 0..2000u32 {
        let seen = seen.clone();
        let h = pool
            .submit(async move {
                tokio::task::yield_now().await;
                seen.lock().push(i);
            })
            .await
            .unwrap_or_else(|r| panic!("rejected: {r}"));
        handles.push(h);
    }
    for h in handles {
        h.await.unwrap();
    }
    resizer.await.unwrap();
    let seen = seen.lock();
    let unique: HashSet<u32> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 2000, "no task dropped or run twice");
    assert_eq!(unique.len(), 2000);
    // Once everything is back, capacity equals the last size.
    let mut n = 0;
    let mut held = Vec::new();
    while let Some(s) = pool.try_reserve() {
        held.push(s);
        n += 1;
    }
    assert_eq!(n, 4);
}

#[tokio::test(start_paused = true)]
async fn utilisation_over_the_window() {
    let pool = ElasticPool::with_options(4, 16, Duration::from_secs(10));
    let gate = Arc::new(Notify::new());
    let running = Arc::new(AtomicUsize::new(0));
    let _tasks = hold(&pool, 2, &gate, &running).await;
    // Sampled every second, as an autoscaler would.
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(1)).await;
        pool.stats();
    }
    let u = pool.stats().utilisation;
    assert!((u - 0.5).abs() < 0.05, "2 of 4 busy: {u}");
    gate.notify_waiters();
    tokio::task::yield_now().await;
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        pool.stats();
    }
    let u = pool.stats().utilisation;
    assert!(u > 0.1 && u < 0.4, "half the window idle: {u}");
    for _ in 0..15 {
        tokio::time::advance(Duration::from_secs(1)).await;
        pool.stats();
    }
    let u = pool.stats().utilisation;
    assert!(u < 0.05, "idle for a whole window: {u}");
}

#[tokio::test]
async fn a_full_queue_or_a_closed_pool_gives_the_future_back() {
    let pool = ElasticPool::with_options(1, 1, Duration::from_secs(1));
    let busy = pool.try_reserve().unwrap();
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.submit(async { 7 }).await.map_err(|_| ()) }
    });
    while pool.stats().queued < 1 {
        tokio::task::yield_now().await;
    }
    let rejected = pool.submit(async { 8 }).await.unwrap_err();
    assert!(!rejected.closed);
    assert_eq!(rejected.future.await, 8, "the future came back unrun");
    drop(busy);
    assert_eq!(waiting.await.unwrap().unwrap().await.unwrap(), 7);
    pool.close();
    let rejected = pool.submit(async { 9 }).await.unwrap_err();
    assert!(rejected.closed);
    assert!(pool.reserve().await.is_none());
    pool.wait().await;
}

/// Shutdown: a slot reserved before `close` and spawned after it is still waited for, and
/// nothing new is reserved once closed. Regression: `wait` used to count only spawned tasks,
/// so it could return while a reserved slot was about to spawn.
#[tokio::test(start_paused = true)]
async fn wait_covers_slots_reserved_before_close() {
    let pool = ElasticPool::new(2);
    let slot = pool.reserve().await.expect("open");
    pool.close();
    assert!(pool.reserve().await.is_none(), "closed: nothing new");
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.wait().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    assert!(!waiter.is_finished(), "a reserved slot is outstanding work");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    slot.spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    waiter.await.unwrap();
    assert!(
        done.load(std::sync::atomic::Ordering::SeqCst),
        "wait returned before the work ended"
    );
}

/// A cancelled `reserve` (its future dropped while waiting) leaves no phantom waiter behind:
/// `queued` drops back, and `submit`'s queue bound counts only real waiters. Regression: the
/// counter was decremented only when the wait ended, never when it was cancelled.
#[tokio::test(start_paused = true)]
async fn a_cancelled_reserve_is_not_counted_as_waiting() {
    let pool = ElasticPool::with_options(1, 1, Duration::from_secs(1));
    let busy = pool.try_reserve().unwrap();
    let timed_out = tokio::time::timeout(Duration::from_millis(10), pool.reserve()).await;
    assert!(timed_out.is_err(), "the pool is full");
    assert_eq!(pool.stats().queued, 0, "the cancelled wait is gone");
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.submit(async { 1 }).await.map_err(|_| ()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(pool.stats().queued, 1);
    drop(busy);
    assert_eq!(waiting.await.unwrap().unwrap().await.unwrap(), 1);
}

/// A slot reserved for work that has not arrived (a dispatcher parked on an empty queue) is
/// out of the pool but not busy: an idle pool reads 0% utilisation, so an autoscaler can
/// shrink it.
#[tokio::test(start_paused = true)]
async fn reserved_slots_waiting_for_work_are_not_busy() {
    let pool = ElasticPool::with_options(4, 16, Duration::from_secs(10));
    let mut parked = pool.reserve_up_to(4).await;
    assert_eq!(parked.len(), 4);
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(1)).await;
        pool.stats();
    }
    let s = pool.stats();
    assert_eq!((s.size, s.busy, s.reserved), (4, 0, 4));
    assert!(s.utilisation < 0.01, "nothing ran: {}", s.utilisation);
    // Work arrives for one slot.
    parked[0].start();
    parked[0].start();
    let s = pool.stats();
    assert_eq!((s.busy, s.reserved), (1, 4), "started once, counted once");
    parked.truncate(1);
    assert_eq!((pool.stats().busy, pool.stats().reserved), (1, 1));
    drop(parked);
    assert_eq!((pool.stats().busy, pool.stats().reserved), (0, 0));
}
