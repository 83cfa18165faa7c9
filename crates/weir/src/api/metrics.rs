//! Prometheus metrics: the recorder behind `/metrics`, every metric's description, and the
//! gauges read from the broker when scraped.
//!
//! What the worker measures is recorded where it happens (`weir-runtime`'s `metrics`, through
//! the `metrics` facade); this module installs the recorder those calls reach and renders it.
//! Histograms use fixed buckets (Prometheus histograms, so quantiles can be aggregated across
//! workers).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics::{describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use weir_core::Capability;

use super::{ApiError, ApiState};

/// The installed recorder, to render `/metrics` from. Cheap to clone.
#[derive(Clone)]
pub struct MetricsHandle(PrometheusHandle);

/// Bucket bounds in seconds: 1 ms to about 17 minutes, ×~2.5 a step.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    1000.0,
];

/// The metrics recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("installing the metrics recorder: {0}")]
pub struct InstallError(String);

/// Installs the process-wide Prometheus recorder and describes every weir metric. Call it
/// once, before the worker and broker are built (handles made earlier record nowhere); must
/// be called inside a tokio runtime (a task drains histograms every 5 s).
pub fn install() -> Result<MetricsHandle, InstallError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .map_err(|e| InstallError(e.to_string()))?
        .install_recorder()
        .map_err(|e| InstallError(e.to_string()))?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(MetricsHandle(handle))
}

fn describe() {
    describe_counter!(
        "weir_attempts_total",
        "Attempts that ended, by queue, kind and outcome (success, retry, failed, panic, timeout, deferred, released, cancelled)"
    );
    describe_counter!(
        "weir_settles_stale_total",
        "Outcomes the broker refused because the attempt's lease was lost (the job ran again)"
    );
    describe_histogram!(
        "weir_job_run_seconds",
        Unit::Seconds,
        "How long handlers ran, by queue and kind"
    );
    describe_histogram!(
        "weir_job_wait_seconds",
        Unit::Seconds,
        "From a job's due time to the start of its attempt, by queue and kind"
    );
    describe_histogram!(
        "weir_job_latency_seconds",
        Unit::Seconds,
        "From enqueue to a job's final outcome (succeeded, failed or cancelled), by queue and kind"
    );
    describe_gauge!("weir_pool_size", "Worker pool size, by queue");
    describe_gauge!("weir_pool_busy", "Pool slots running a job, by queue");
    describe_gauge!(
        "weir_pool_target",
        "The size the autoscaler last chose (the pool size when not autoscaled), by queue"
    );
    describe_counter!(
        "weir_autoscaler_decisions_total",
        "Pool resizes by the autoscaler, by queue and direction (up, down)"
    );
    describe_histogram!(
        "weir_broker_op_seconds",
        Unit::Seconds,
        "Latency of broker calls, by operation (enqueue, fetch, settle, heartbeat)"
    );
    describe_counter!(
        "weir_broker_errors_total",
        "Broker calls that failed, by operation"
    );
    describe_histogram!(
        "weir_store_op_seconds",
        Unit::Seconds,
        "Latency of workflow state store calls, by operation (complete, mark_enqueued, member_state, …)"
    );
    describe_counter!(
        "weir_store_errors_total",
        "Workflow state store calls that failed, by operation"
    );
    describe_counter!(
        "weir_jobs_enqueued_total",
        "Jobs enqueued through this process (duplicates of a unique key not counted), by queue"
    );
    describe_counter!(
        "weir_config_reloads_total",
        "Configuration reloads, by result (applied, unchanged, rejected)"
    );
    describe_gauge!(
        "weir_jobs",
        "Jobs by queue and state, as the broker counts them when scraped"
    );
    describe_gauge!(
        "weir_queue_oldest_age_seconds",
        Unit::Seconds,
        "How long the longest-waiting runnable job of a queue has been due (0 when none waits), as the broker knows it when scraped"
    );
    describe_counter!(
        weir_core::telemetry::DEAD_LETTERED,
        "Jobs that failed for good (attempts spent, a permanent error, unreadable), by queue"
    );
    describe_counter!(
        weir_core::telemetry::LEASES_RECLAIMED,
        "Attempts whose lease ran out (worker died, hung or lost its connection) and whose job the broker took back, by queue"
    );
    describe_counter!(
        weir_core::telemetry::WORKFLOWS_FINISHED,
        "Workflows that ended, by shape (chain, group, chord) and state (succeeded, failed)"
    );
    describe_counter!(
        "weir_limit_deferrals_total",
        "Attempts put off because a named limit was full, by limit"
    );
    describe_gauge!(
        "weir_limit_in_flight",
        "Jobs now running under a named limit, by limit"
    );
    describe_gauge!(
        "weir_build_info",
        "Always 1; the labels say which weir is running"
    );
    gauge!("weir_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// `GET /metrics`: refreshes the job gauges from the broker, then renders everything.
pub(crate) async fn serve(State(st): State<Arc<ApiState>>) -> Response {
    let Some(handle) = &st.metrics else {
        return ApiError::not_implemented("metrics are off in this process").into_response();
    };
    if let Err(e) = job_gauges(&st).await {
        // Still serve what the worker measured; say why the counts are missing.
        tracing::warn!(error = %e, "/metrics: job counts unavailable");
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.0.render(),
    )
        .into_response()
}

/// Sets `weir_jobs{queue,state}` from the broker's counts (the embedded broker) or its queue
/// depths (RabbitMQ: ready, delayed, dead), and `weir_queue_oldest_age_seconds{queue}` where
/// the broker knows it. A gauge set at an earlier scrape whose queue is gone now (all its
/// jobs purged) is set to 0, not left at its last value.
async fn job_gauges(st: &ApiState) -> Result<(), weir_core::BrokerError> {
    use std::collections::BTreeSet;
    static SET: parking_lot::Mutex<BTreeSet<(String, &'static str)>> =
        parking_lot::Mutex::new(BTreeSet::new());
    let now = read_job_counts(st).await?;
    let mut set = SET.lock();
    for (queue, state) in set.iter() {
        if !now.iter().any(|(q, s, _)| q == queue && s == state) {
            gauge_of(queue, state).set(0.0);
        }
    }
    set.clear();
    for (queue, state, n) in now {
        gauge_of(&queue, state).set(n);
        set.insert((queue, state));
    }
    Ok(())
}

/// The gauge a (queue, state) row of [`read_job_counts`] sets: `weir_jobs{queue,state}`,
/// or for the pseudo-state [`OLDEST`] the queue's oldest-job age.
fn gauge_of(queue: &str, state: &'static str) -> metrics::Gauge {
    if state == OLDEST {
        gauge!("weir_queue_oldest_age_seconds", "queue" => queue.to_owned())
    } else {
        gauge!("weir_jobs", "queue" => queue.to_owned(), "state" => state)
    }
}

/// The pseudo-state under which [`read_job_counts`] returns a queue's oldest-job age.
const OLDEST: &str = "(oldest)";

/// (queue, state, value) as the broker counts them; the age of a queue's oldest runnable job
/// comes as state [`OLDEST`].
async fn read_job_counts(
    st: &ApiState,
) -> Result<Vec<(String, &'static str, f64)>, weir_core::BrokerError> {
    let mut out = Vec::new();
    let b = &st.broker;
    if let Some(i) = b
        .inspect()
        .filter(|_| b.capabilities().has(Capability::Inspect))
    {
        let counts = i.counts().await?;
        // A scrape is a sample for the queues route's throughput too.
        st.throughput.observe(std::time::Instant::now(), &counts);
        let now = weir_core::Timestamp::now();
        for q in counts {
            for (state, n) in [
                ("pending", q.pending),
                ("running", q.running),
                ("retryable", q.retryable),
                ("succeeded", q.succeeded),
                ("failed", q.failed),
                ("cancelled", q.cancelled),
            ] {
                out.push((q.queue.clone(), state, n as f64));
            }
            let age = q
                .oldest_due
                .map_or(0.0, |d| super::queues::age_secs(d, now));
            out.push((q.queue.clone(), OLDEST, age));
        }
        return Ok(out);
    }
    let Some(stats) = b.queue_stats() else {
        return Ok(out);
    };
    for d in stats.depths(&st.served_queues()).await? {
        for (state, n) in [("ready", d.ready), ("delayed", d.delayed), ("dead", d.dead)] {
            out.push((d.queue.clone(), state, n as f64));
        }
    }
    Ok(out)
}
