//! Which attempts OpenTelemetry sees (feature `otel`), and how each joins its job's trace.
//!
//! An exporter layer pays for every span it sees, sampled or not (building its record costs
//! more than the attempt itself in a no-op benchmark). So weir samples *before* the span is
//! made: a sampled attempt's span gets the target [`TRACED_TARGET`], the exporter's layer
//! sees only those (and what runs inside them), and the others cost it nothing. The decision
//! is a function of the trace id, so every attempt of every member of a workflow is sampled
//! alike, and one workflow stays one whole trace.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use weir_core::Job;

/// The target of the span of an attempt that is exported.
pub const TRACED_TARGET: &str = "weir::traced";

/// Attempts whose trace id's low 64 bits are below this are exported: 0 is none (no exporter
/// installed), `u64::MAX` every one.
static THRESHOLD: AtomicU64 = AtomicU64::new(0);

/// From now on, a share `ratio` (0 to 1) of traces is exported: each attempt of a sampled
/// trace runs in a span with target [`TRACED_TARGET`] joined to its job's trace. `weir`'s
/// `otel::Otel::from_env` calls it with `OTEL_TRACES_SAMPLER`'s ratio; call it yourself if you
/// install a `tracing-opentelemetry` layer of your own (and let that layer see the target).
pub fn join_traces(ratio: f64) {
    let t = if ratio >= 1.0 {
        u64::MAX
    } else if ratio > 0.0 {
        (ratio * u64::MAX as f64) as u64
    } else {
        0
    };
    THRESHOLD.store(t, Ordering::Relaxed);
}

/// The trace an attempt with this trace id joins, if it is exported.
pub(crate) fn sampled(trace_id: &str) -> Option<TraceId> {
    let threshold = THRESHOLD.load(Ordering::Relaxed);
    if threshold == 0 {
        return None;
    }
    let trace = TraceId::from_hex(trace_id)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let low = u64::from_be_bytes(trace.to_bytes()[8..].try_into().ok()?);
    (threshold == u64::MAX || low < threshold).then_some(trace)
}

/// Puts `span` in `trace` for OpenTelemetry, as the child of a remote parent whose span id
/// comes from the job id (as the `traceparent` header on RabbitMQ says).
pub(crate) fn join(span: &tracing::Span, trace: TraceId, job: &Job) {
    let parent = job.id.as_uuid().as_u64_pair().1.max(1);
    let cx = SpanContext::new(
        trace,
        SpanId::from_bytes(parent.to_be_bytes()),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    // Only fails for a span no OpenTelemetry layer records: nothing to join.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(cx));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_by_trace_id_and_off_until_asked() {
        let low = "4bf92f3577b34da60000000000000001";
        let high = "4bf92f3577b34da6ffffffffffffff00";
        join_traces(0.0);
        assert_eq!(sampled(low), None, "no exporter: nothing");
        join_traces(0.5);
        assert!(sampled(low).is_some());
        assert!(sampled(high).is_none());
        assert!(sampled("not-hex").is_none());
        join_traces(1.0);
        assert!(sampled(high).is_some());
        join_traces(0.0);
    }
}
