//! One queue's scaler and reporter: every tick, if the queue is autoscaled (see [`Tuning`]),
//! observe the backlog and the pool, [`decide`], resize; then report the pool's size, busy
//! slots (running a job, not reserved for a fetch that waits) and the last decision to the
//! broker, for `weir status`, if it keeps reports.
//!
//! [`Tuning`]: crate::Tuning

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_core::{BrokerError, Capability, WorkerStatus};
use weir_sync::ElasticPool;

use crate::autoscale::{decide, Observed, ScalerState};
use crate::metrics::PoolMetrics;
use crate::shared::Shared;

/// This process's name in worker reports: `host:pid`.
pub(crate) fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// One queue's loop, until `stop`.
pub(crate) async fn scale_and_report(
    shared: Arc<Shared>,
    queue: String,
    pool: ElasticPool,
    tick: Duration,
    worker: String,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = ScalerState::default();
    let queues = vec![queue.clone()];
    let mut last_decision: Option<String> = None;
    let mut reporting = shared.caps.has(Capability::WorkerReports);
    let mut scaling = shared.caps.has(Capability::Backlog);
    let mut warned = false;
    let metered = PoolMetrics::new(&queue);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let cfg = shared.tuning.autoscale.load().get(&queue).cloned();
        if cfg.is_none() {
            state = ScalerState::default();
        }
        let mut target = None;
        if let (Some(cfg), true) = (cfg, scaling) {
            match shared.broker.backlog(&queues).await {
                Ok(v) => {
                    let backlog = v.first().copied().unwrap_or(0);
                    let st = pool.stats();
                    let observed = Observed {
                        backlog,
                        busy: st.busy,
                        size: st.size,
                        utilisation: st.utilisation,
                    };
                    let now = shared.clock.now();
                    let d = decide(&cfg, &state, &observed, now);
                    state = d.state;
                    target = Some(d.target);
                    if d.target != st.size {
                        pool.resize(d.target);
                        shared.counters.scaled(d.target > st.size);
                        metered.decided(d.target > st.size);
                        tracing::info!(queue = %queue, from = st.size, to = d.target, reason = %d.reason, "autoscaler resized the pool");
                        last_decision =
                            Some(format!("{now}: {} -> {} ({})", st.size, d.target, d.reason));
                    }
                }
                Err(BrokerError::Unsupported(_)) => scaling = false,
                Err(e) => {
                    tracing::warn!(queue = %queue, error = %e, "autoscaler: backlog unavailable")
                }
            }
        } else if !scaling && !warned && shared.tuning.autoscale.load().contains_key(&queue) {
            warned = true;
            tracing::warn!(queue = %queue, "this broker reports no backlog: autoscaling off");
        }
        let st = pool.stats();
        metered.observe(st.size, st.busy, target.unwrap_or(st.size));
        if reporting {
            let status = WorkerStatus {
                worker: worker.clone(),
                queue: queue.clone(),
                size: st.size as u64,
                busy: st.busy as u64,
                last_decision: last_decision.clone(),
                updated_at: shared.clock.now(),
            };
            match shared.broker.report(status).await {
                Ok(()) => {}
                Err(BrokerError::Unsupported(_)) => reporting = false,
                Err(e) => tracing::debug!(queue = %queue, error = %e, "worker report failed"),
            }
        }
    }
}
