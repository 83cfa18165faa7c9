//! OpenTelemetry export (cargo feature `otel`): every attempt's `tracing` span sent over
//! OTLP (HTTP, protobuf) to a collector, each in its job's trace, so one workflow is one
//! trace (the runtime gives each attempt span the job's trace id as its remote parent).
//!
//! Configured by the standard variables, read by the OpenTelemetry SDK itself:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns export on
//! (nothing is exported without one); `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`,
//! `…_COMPRESSION`, `OTEL_SERVICE_NAME` (default `weir`), `OTEL_RESOURCE_ATTRIBUTES` and the
//! batch settings `OTEL_BSP_*` apply as documented by OpenTelemetry. `OTEL_SDK_DISABLED=true`
//! or `OTEL_TRACES_EXPORTER=none` turns it off. Only the HTTP protocol is built in: `grpc`
//! is refused with a clear error rather than silently ignored.
//!
//! Sampling (`OTEL_TRACES_SAMPLER`: `always_on`, the default, `always_off`, `traceidratio`
//! with `OTEL_TRACES_SAMPLER_ARG`, and their `parentbased_` forms, which mean the same here:
//! a job's trace has no parent to follow) is decided by weir before an attempt's span is made,
//! by trace id, so a workflow is exported whole or not at all, and an attempt not sampled costs
//! the exporter nothing (see `weir_runtime::TRACED_TARGET`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;
/// Makes sampled attempt spans join their job's trace; [`Otel::from_env`] calls it. Call it
/// yourself if you install a `tracing-opentelemetry` layer of your own.
pub use weir_runtime::{join_traces, TRACED_TARGET};

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

/// The share of traces `OTEL_TRACES_SAMPLER` (and `…_ARG`) asks for.
fn ratio(var: impl Fn(&str) -> Option<String>) -> Result<f64, OtelError> {
    let sampler = var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    let arg = || -> Result<f64, OtelError> {
        match var("OTEL_TRACES_SAMPLER_ARG").filter(|v| !v.trim().is_empty()) {
            None => Ok(1.0),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    OtelError(format!(
                        "OTEL_TRACES_SAMPLER_ARG=`{v}`: a ratio from 0 to 1 (e.g. 0.01)"
                    ))
                }),
        }
    };
    match sampler.trim() {
        "" | "always_on" | "parentbased_always_on" => Ok(1.0),
        "always_off" | "parentbased_always_off" => Ok(0.0),
        "traceidratio" | "parentbased_traceidratio" => arg(),
        other => Err(OtelError(format!(
            "OTEL_TRACES_SAMPLER=`{other}`: weir samples always_on, always_off or traceidratio \
             (and their parentbased_ forms)"
        ))),
    }
}

/// What the exporter's layer sees: sampled attempts (their spans have [`TRACED_TARGET`]) and
/// what runs inside them; nothing of the rest, which so costs it nothing.
struct Traced;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Filter<S> for Traced {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        meta.target() == TRACED_TARGET || cx.lookup_current().is_some()
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.target() == TRACED_TARGET {
            Interest::always()
        } else {
            // Depends on the span it is in: asked each time.
            Interest::sometimes()
        }
    }
}

impl Otel {
    /// An exporter as the `OTEL_*` variables say, or `None` when they ask for none (no OTLP
    /// endpoint set, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`). Call it outside
    /// any async runtime: the exporter's HTTP client and batch thread are its own.
    pub fn from_env() -> Result<Option<Otel>, OtelError> {
        let var = |k: &str| std::env::var(k).ok();
        if !wanted(var)? {
            return Ok(None);
        }
        let ratio = ratio(var)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| OtelError(e.to_string()))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name("weir");
        }
        let provider = SdkTracerProvider::builder()
            // weir sampled already (see the module's docs): what reaches the SDK is kept.
            .with_sampler(Sampler::AlwaysOn)
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("weir");
        join_traces(ratio);
        Ok(Some(Otel { provider, tracer }))
    }

    /// A `tracing` layer that hands the sampled attempts' spans (and the spans and events
    /// inside them) to this exporter: add it to the subscriber.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_filter(Traced)
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

    #[test]
    fn the_sampler_variables_give_the_share_of_traces() {
        let r = |vars: &[(&str, &str)]| {
            let map: std::collections::HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ratio(|k| map.get(k).cloned())
        };
        assert_eq!(r(&[]).unwrap(), 1.0);
        assert_eq!(r(&[("OTEL_TRACES_SAMPLER", "always_off")]).unwrap(), 0.0);
        let s = ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio");
        assert_eq!(r(&[s, ("OTEL_TRACES_SAMPLER_ARG", "0.01")]).unwrap(), 0.01);
        assert_eq!(r(&[s]).unwrap(), 1.0, "no argument: all");
        let e = r(&[s, ("OTEL_TRACES_SAMPLER_ARG", "2")]).unwrap_err();
        assert!(e.to_string().contains("`2`"), "{e}");
        let e = r(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).unwrap_err();
        assert!(e.to_string().contains("jaeger_remote"), "{e}");
    }
}
