//! `GET /api/v1/queues` and `/api/v1/workers`: what `weir status` shows, plus how far
//! behind each queue is (the age of its longest-waiting runnable job) and its throughput.
//!
//! Throughput is measured here, from the broker's count of jobs ever finished
//! (`QueueCounts::finished_ever`: every worker's jobs, not only this process's, and not
//! lowered by retention): each read of the counts (this route, a `/metrics` scrape) keeps a
//! sample for a minute, and a queue's throughput is the finished jobs per second between the
//! oldest kept sample and now. The first read has nothing to compare with and answers
//! `null`; a dashboard polling every few seconds has a figure from its second call on.
//! Prometheus users should prefer `rate(weir_attempts_total[1m])`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use weir_core::{Capability, QueueCounts, Timestamp};

use super::{ApiError, ApiState};

/// How long samples are kept: throughput is over the last minute.
const WINDOW: Duration = Duration::from_secs(60);

/// Samples closer than this to the newest are not kept (a burst of reads keeps few).
const MIN_GAP: Duration = Duration::from_secs(1);

/// Finished-job totals by queue, sampled when the counts are read.
#[derive(Default)]
pub(crate) struct Throughput {
    samples: parking_lot::Mutex<VecDeque<(Instant, HashMap<String, u64>)>>,
}

/// Jobs ever finished: not lowered when finished jobs are deleted (retention, purge), so a
/// sweep between two samples does not read as a stall.
fn finished(q: &QueueCounts) -> u64 {
    q.finished_ever
}

impl Throughput {
    /// Records `counts` taken at `at`; returns each queue's finished jobs per second since
    /// the oldest sample within the window (and how many seconds that covers), if one is at
    /// least a second old.
    pub(crate) fn observe(
        &self,
        at: Instant,
        counts: &[QueueCounts],
    ) -> HashMap<String, (f64, f64)> {
        let mut samples = self.samples.lock();
        while samples
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > WINDOW)
        {
            samples.pop_front();
        }
        let mut out = HashMap::new();
        if let Some((t0, then)) = samples.front() {
            let secs = at.saturating_duration_since(*t0).as_secs_f64();
            if secs >= MIN_GAP.as_secs_f64() {
                for q in counts {
                    // A queue purged since (its count fell) reads as 0, not negative.
                    let before = then.get(&q.queue).copied().unwrap_or(0);
                    let n = finished(q).saturating_sub(before);
                    out.insert(q.queue.clone(), (n as f64 / secs, secs));
                }
            }
        }
        if samples
            .back()
            .is_none_or(|(t, _)| at.saturating_duration_since(*t) >= MIN_GAP)
        {
            samples.push_back((
                at,
                counts
                    .iter()
                    .map(|q| (q.queue.clone(), finished(q)))
                    .collect(),
            ));
        }
        out
    }
}

/// How long ago `due` was, in seconds (0 if not yet).
pub(crate) fn age_secs(due: Timestamp, now: Timestamp) -> f64 {
    (now.0.saturating_sub(due.0)).max(0) as f64 / 1000.0
}

/// `GET /api/v1/queues`: counts by state where the broker keeps jobs, each with
/// `oldest_age_seconds` and `throughput` (`{per_second, over_seconds}` or `null`); else
/// the broker's depths (RabbitMQ: ready, delayed, dead; no age or throughput).
pub(crate) async fn queues(State(st): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    if let Some(i) = st
        .broker
        .inspect()
        .filter(|_| st.broker.capabilities().has(Capability::Inspect))
    {
        let counts = i.counts().await?;
        let now = Timestamp::now();
        let rates = st.throughput.observe(Instant::now(), &counts);
        let queues: Vec<Value> = counts
            .iter()
            .map(|q| {
                let mut v = json!(q);
                v["oldest_age_seconds"] = json!(q.oldest_due.map_or(0.0, |d| age_secs(d, now)));
                v["throughput"] = rates.get(&q.queue).map_or(
                    Value::Null,
                    |(per, over)| json!({ "per_second": per, "over_seconds": over }),
                );
                v
            })
            .collect();
        return Ok(Json(json!({ "queues": queues })));
    }
    let stats = st.broker.queue_stats().ok_or_else(|| {
        ApiError::not_implemented("this broker can count neither jobs nor queues")
    })?;
    Ok(Json(
        json!({ "queues": stats.depths(&st.served_queues()).await? }),
    ))
}

/// `GET /api/v1/workers`.
pub(crate) async fn workers(State(st): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let i = st
        .broker
        .inspect()
        .filter(|_| st.broker.capabilities().has(Capability::WorkerReports))
        .ok_or_else(|| ApiError::not_implemented("this broker keeps no worker reports"))?;
    Ok(Json(json!({ "workers": i.workers().await? })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(queue: &str, finished_ever: u64) -> QueueCounts {
        QueueCounts {
            queue: queue.into(),
            finished_ever,
            ..Default::default()
        }
    }

    #[test]
    fn throughput_is_finished_jobs_per_second_over_the_last_minute() {
        let t = Throughput::default();
        let t0 = Instant::now();
        assert!(
            t.observe(t0, &[counts("a", 100)]).is_empty(),
            "nothing to compare"
        );
        assert!(
            t.observe(t0 + Duration::from_millis(500), &[counts("a", 150)])
                .is_empty(),
            "under a second: no figure yet"
        );
        let r = t.observe(
            t0 + Duration::from_secs(10),
            &[counts("a", 600), counts("b", 7)],
        );
        assert_eq!(r["a"], (50.0, 10.0));
        assert_eq!(r["b"], (0.7, 10.0), "a new queue counts from zero");
        // Samples older than the window are dropped: the rate is over the last minute.
        let r = t.observe(t0 + Duration::from_secs(65), &[counts("a", 600)]);
        assert_eq!(r["a"], (0.0, 55.0));
        // A count that fell (a file replaced under the API) reads as nothing finished, not
        // a negative rate.
        let r = t.observe(t0 + Duration::from_secs(70), &[counts("a", 0)]);
        assert_eq!(r["a"].0, 0.0);
    }
}
