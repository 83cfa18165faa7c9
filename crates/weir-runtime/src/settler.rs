//! The settler: outcomes from every attempt, settled in batches, each batch one broker call
//! (one commit on the embedded broker). Transient errors are retried, so an outcome is not
//! lost to a brief outage; one that still fails leaves its lease to expire, and the job runs
//! again.

use std::sync::Arc;

use tokio::sync::mpsc;
use weir_core::{Lease, SettleOutcome, Settlement};

use crate::retry::store_error_pause;
use crate::shared::Shared;

/// Where attempts send their outcomes.
pub(crate) type SettleTx = mpsc::Sender<(Lease, Settlement)>;

/// The most outcomes one broker call settles.
const BATCH: usize = 1024;

/// How many times a transient settle error is retried before the batch is left to expire.
const RETRIES: u32 = 20;

/// Runs until every sender is gone and what they sent is settled.
pub(crate) async fn settler(shared: Arc<Shared>, mut rx: mpsc::Receiver<(Lease, Settlement)>) {
    let mut buf = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut buf, BATCH).await > 0 {
        let batch = std::mem::take(&mut buf);
        let mut failures = 0;
        let outcomes = loop {
            match shared.broker.settle(batch.clone()).await {
                Ok(o) => break Some(o),
                Err(e) if e.is_transient() && failures < RETRIES => {
                    failures += 1;
                    let pause = store_error_pause(failures);
                    tracing::warn!(error = %e, retry_in = ?pause, "settle failed");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, jobs = batch.len(), "settle failed for good; these leases will expire and their jobs run again");
                    break None;
                }
            }
        };
        shared.leases.release(batch.iter().map(|(l, _)| l));
        let Some(outcomes) = outcomes else { continue };
        for ((lease, settlement), out) in batch.iter().zip(outcomes) {
            shared.counters.settled(settlement, out);
            if out == SettleOutcome::Stale {
                shared.metrics.stale();
                tracing::warn!(job = %lease.id, attempt = lease.attempt, "lease lost before settle; outcome discarded");
            }
            shared.observer.settled(lease, settlement, out);
        }
    }
}
