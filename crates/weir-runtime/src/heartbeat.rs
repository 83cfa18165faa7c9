//! The heartbeat loop: every third of the lease time, renew every held lease. A lease the
//! broker no longer honours (expired and reclaimed, or the job cancelled) has its attempt
//! cancelled; on a broker that cannot cancel by id, members whose workflow failed are
//! cancelled too (the store says so).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_core::Lease;

use crate::shared::Shared;

/// Runs until `stop`.
pub(crate) async fn heartbeat(shared: Arc<Shared>, lease: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let held = shared.leases.snapshot();
        if held.is_empty() {
            continue;
        }
        match shared.broker.heartbeat(&held, lease).await {
            Ok(alive) => {
                let lost: Vec<Lease> = held
                    .iter()
                    .zip(alive)
                    .filter(|(_, ok)| !ok)
                    .map(|(l, _)| *l)
                    .collect();
                if !lost.is_empty() {
                    shared.leases.cancel_leases(&lost, "lease lost");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed; leases may expire if this goes on")
            }
        }
        shared.membership.stop_cancelled(&shared.leases).await;
    }
}
