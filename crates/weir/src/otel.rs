//! OpenTelemetry export (cargo feature `otel`): every attempt's `tracing` span sent over
//! OTLP (HTTP, protobuf) to a collector, each in its job's trace, so one workflow is one
//! trace (the runtime gives each attempt span the job's trace id as its remote parent).
//!
//! Configured by the standard variables, read by the OpenTelemetry SDK itself:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns export on
//! (nothing is exported without one); `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`,
//! `…_COMPRESSION`, `OTEL_SERVICE_NAME` (default `weir`), `OTEL_RESOURCE_ATTRIBUTES` and the
//! batch settings `OTEL_BSP_*` apply as documented by OpenTelemetry. `OTEL_SDK_DISABLED=true`
//! or `OTEL_TRACES_EXPORTER=none` turns it off. Only the HTTP protocols are built in: `grpc`
//! is refused with a clear error rather than silently ignored.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
/// Makes attempt spans join their job's trace; [`Otel::from_env`] calls it. Call it yourself
/// if you install a `tracing-opentelemetry` layer of your own.
pub use weir_runtime::join_traces;

/// Export could not be set up as the variables ask.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry: {0}")]
pub struct OtelError(String);

/// A running exporter. [`shutdown`](Otel::shutdown) sends what it still holds; dropping it
/// does the same.
pub struct Otel {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

impl std::fmt::Debug for Otel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otel").finish_non_exhaustive()
    }
}

/// Whether the variables (read through `var`) ask for export; an error names a variable
/// whose value weir cannot follow.
fn wanted(var: impl Fn(&str) -> Option<String>) -> Result<bool, OtelError> {
    let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match set("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(false),
        Some(other) => {
            return Err(OtelError(format!(
                "OTEL_TRACES_EXPORTER=`{other}`: weir exports `otlp` (or `none`)"
            )))
        }
    }
    if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(false);
    }
    for k in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        match set(k).as_deref().map(str::trim) {
            None | Some("http/protobuf") => {}
            Some(other) => {
                return Err(OtelError(format!(
                    "{k}=`{other}`: weir exports OTLP over HTTP (`http/protobuf`); point \
                     OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)"
                )))
            }
        }
    }
    Ok(true)
}

impl Otel {
    /// An exporter as the `OTEL_*` variables say, or `None` when they ask for none (no OTLP
    /// endpoint set, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`). Call it outside
    /// any async runtime: the exporter's HTTP client and batch thread are its own.
    pub fn from_env() -> Result<Option<Otel>, OtelError> {
        if !wanted(|k| std::env::var(k).ok())? {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| OtelError(e.to_string()))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name("weir");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("weir");
        weir_runtime::join_traces();
        Ok(Some(Otel { provider, tracer }))
    }

    /// A `tracing` layer that hands spans to this exporter (add it to the subscriber).
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, Tracer>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer.clone())
    }

    /// Sends the spans still buffered (waiting at most the exporter's timeout) and stops.
    /// Call it outside any async runtime, after the work is done.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: OpenTelemetry: flushing spans at exit: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<bool, OtelError> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wanted(|k| map.get(k).cloned())
    }

    #[test]
    fn export_only_when_an_endpoint_asks_and_nothing_turns_it_off() {
        assert!(!with(&[]).unwrap(), "no endpoint: nothing exported");
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert!(with(&[ep]).unwrap());
        assert!(with(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )])
        .unwrap());
        assert!(!with(&[ep, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap());
        assert!(!with(&[ep, ("OTEL_TRACES_EXPORTER", "none")]).unwrap());
        assert!(with(&[ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap());
        let e = with(&[ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(e.to_string().contains("4318"), "{e}");
        let e = with(&[ep, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(e.to_string().contains("zipkin"), "{e}");
    }
}
