//! One queue's dispatcher: reserve pool slots, then fetch at most that many jobs, then run
//! each in its slot ([`crate::attempt`]). Nothing is fetched that cannot run now. On
//! shutdown it stops fetching and gives its running attempts the grace period.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_core::FetchRequest;
use weir_sync::ElasticPool;

use crate::retry::store_error_pause;
use crate::settler::SettleTx;
use crate::shared::Shared;

pub(crate) struct Dispatch {
    pub(crate) shared: Arc<Shared>,
    pub(crate) pool: ElasticPool,
    pub(crate) settle_tx: SettleTx,
    pub(crate) queue: String,
    pub(crate) lease: Duration,
    pub(crate) fetch_batch: usize,
    pub(crate) grace: Duration,
}

/// Runs until `stop`, then drains.
pub(crate) async fn dispatch(d: Dispatch, stop: CancellationToken) {
    let mut running = JoinSet::new();
    let mut failures = 0u32;
    let queues = vec![d.queue.clone()];
    // The pool size the broker was last told (a push broker sizes its prefetch to it).
    let mut announced = None;
    loop {
        while running.try_join_next().is_some() {}
        let size = d.pool.size();
        if announced != Some(size) {
            match d.shared.broker.set_capacity(&d.queue, size).await {
                Ok(()) => announced = Some(size),
                // Fetching goes on with the old capacity; the next loop tries again.
                Err(e) => {
                    tracing::warn!(queue = %d.queue, size, error = %e, "telling the broker the pool size failed")
                }
            }
        }
        // Reserve first: nothing is fetched that cannot run now.
        let mut slots = tokio::select! {
            _ = stop.cancelled() => break,
            s = d.pool.reserve_up_to(d.fetch_batch) => s,
        };
        if slots.is_empty() {
            break; // the pool was closed
        }
        let req = FetchRequest {
            queues: queues.clone(),
            max: slots.len(),
            lease: d.lease,
            wait: Duration::from_secs(1),
        };
        // Cancel safe: a fetch dropped here leases nothing (the broker gives back what it took).
        let fetched = tokio::select! {
            _ = stop.cancelled() => break,
            r = d.shared.broker.fetch(req) => r,
        };
        match fetched {
            Ok(deliveries) => {
                failures = 0;
                for delivery in deliveries {
                    let Some(slot) = slots.pop() else { break };
                    let attempt =
                        crate::attempt::run(d.shared.clone(), d.settle_tx.clone(), delivery, slot);
                    running.spawn(attempt);
                }
            }
            Err(e) => {
                // A store error never ends a worker: log it, back off, go on.
                failures = failures.saturating_add(1);
                let pause = store_error_pause(failures);
                tracing::warn!(queue = %d.queue, error = %e, retry_in = ?pause, "fetch failed");
                drop(slots);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    drain(&d, running).await;
}

/// Running attempts get the grace period, then are cancelled and abandoned; their leases
/// stay held and are given back by `Worker::run`.
async fn drain(d: &Dispatch, mut running: JoinSet<()>) {
    let deadline = tokio::time::Instant::now() + d.grace;
    let drained = tokio::time::timeout_at(deadline, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            queue = %d.queue,
            running = running.len(),
            "grace period over: cancelling running jobs"
        );
        // Abort first, then fire the tokens (for work the handlers started elsewhere): an
        // attempt stopped by shutdown is given back unspent, never recorded as a failure.
        d.shared.leases.mark_stopping();
        running.abort_all();
        d.shared.leases.cancel_all();
        while running.join_next().await.is_some() {}
    }
}
