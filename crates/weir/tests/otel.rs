//! OpenTelemetry export through the real binary: `weir serve` with the standard `OTEL_*`
//! variables sends every attempt's span over OTLP/HTTP to a collector (here a small one in
//! the test that decodes what it is sent), and the steps of one workflow are one trace.

#![cfg(feature = "otel")]

mod bin_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bin_support::{s, spawn_logged, wait_for, Serving, Weir};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const LONG: Duration = Duration::from_secs(30);

/// An OTLP/HTTP collector: decodes every `POST /v1/traces` body into the spans it carries.
fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let got = spans.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let got = got.clone();
            std::thread::spawn(move || loop {
                let mut reader = BufReader::new(&mut conn);
                let (mut line, mut len, mut path) = (String::new(), 0usize, String::new());
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                path.push_str(line.split_whitespace().nth(1).unwrap_or(""));
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                if path == "/v1/traces" {
                    let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    let mut g = got.lock().unwrap();
                    for r in req.resource_spans {
                        for ss in r.scope_spans {
                            g.extend(ss.spans);
                        }
                    }
                }
                let resp = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                if conn.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            });
        }
    });
    (format!("http://{addr}"), spans)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `weir serve` exporting to the collector at `endpoint` (batches sent every 100 ms), with
/// one more variable.
fn serve_exporting(w: &Weir, endpoint: &str, (k, v): (&str, &str)) -> Serving {
    let mut c = w.cmd(&[]);
    c.args(["--log", "info", "serve", "--tick", "1s"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env(k, v)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    spawn_logged(c).0
}

#[test]
fn attempts_are_exported_and_a_workflow_is_one_trace() {
    let w = Weir::new();
    let (endpoint, spans) = collector();
    let _serving = serve_exporting(&w, &endpoint, ("OTEL_SERVICE_NAME", "weir-test"));
    let spec = w.file(
        "chain.json",
        r#"{"shape":"chain","steps":[{"kind":"echo","payload":[1,2]},{"kind":"echo"}]}"#,
    );
    let done = w.json(&["workflow", "submit", "--wait", "--json", s(&spec)]);
    let trace = done["workflow"]["trace_id"].as_str().unwrap().to_owned();
    let ours = wait_for("both steps' attempts exported", LONG, || {
        let g = spans.lock().unwrap();
        let ours: Vec<Span> = g
            .iter()
            .filter(|sp| sp.name == "attempt" && hex(&sp.trace_id) == trace)
            .cloned()
            .collect();
        if ours.len() >= 2 {
            Ok(ours)
        } else {
            Err(g
                .iter()
                .map(|sp| (sp.name.clone(), hex(&sp.trace_id)))
                .collect::<Vec<_>>())
        }
    });
    let jobs: std::collections::BTreeSet<String> =
        ours.iter().filter_map(|sp| attr(sp, "job")).collect();
    assert_eq!(jobs.len(), 2, "one span per step: {ours:?}");
    for sp in &ours {
        assert_eq!(attr(sp, "kind").as_deref(), Some("echo"));
        assert_eq!(attr(sp, "queue").as_deref(), Some("default"));
        assert_eq!(attr(sp, "trace_id").as_deref(), Some(trace.as_str()));
        assert!(
            !sp.parent_span_id.is_empty(),
            "joined to the job's trace as a child"
        );
    }
}

/// `OTEL_TRACES_SAMPLER=always_off`: the exporter is set up, and no attempt reaches it.
#[test]
fn a_trace_not_sampled_is_not_exported() {
    let w = Weir::new();
    let (endpoint, spans) = collector();
    let serving = serve_exporting(&w, &endpoint, ("OTEL_TRACES_SAMPLER", "always_off"));
    let id = w.ok(&["enqueue", "echo", "--payload", "1"]);
    wait_for("the job to run", LONG, || {
        let j = w.json(&["inspect", id.trim(), "--json"]);
        if j["state"] == "succeeded" {
            Ok(())
        } else {
            Err(j)
        }
    });
    // Stopping flushes whatever the exporter holds.
    assert!(serving.terminate(LONG).success());
    let got = spans.lock().unwrap();
    assert!(
        got.iter().all(|sp| sp.name != "attempt"),
        "an attempt of a trace not sampled was exported: {got:?}"
    );
}
