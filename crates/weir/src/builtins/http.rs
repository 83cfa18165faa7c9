//! The `http` kind: one HTTP request; 2xx succeeds, 429, 5xx and transport errors retry, other
//! 4xx fail for good.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;
use weir_core::{TaskContext, TaskError};
use weir_runtime::Registry;

use super::{tail, BuiltinsError};
use crate::config::Config;

/// Payload of `http`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// The URL.
    pub url: String,
    /// The method. By default, POST.
    #[serde(default = "post")]
    pub method: String,
    /// A JSON body, sent as `application/json`. By default, none.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Extra request headers. By default, none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn post() -> String {
    "POST".to_owned()
}

pub(super) fn register(
    registry: &mut Registry,
    config: Arc<ArcSwap<Config>>,
) -> Result<(), BuiltinsError> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| BuiltinsError::HttpClient(e.to_string()))?;
    registry.register_fn("http", move |p: Http, cx: TaskContext| {
        let client = client.clone();
        let timeout = config.load().http.timeout;
        async move {
            tokio::select! {
                r = run_http(&client, p, timeout) => r,
                _ = cx.cancellation().cancelled() => Err(TaskError::retryable("cancelled during the request")),
            }
        }
    });
    Ok(())
}

async fn run_http(
    client: &reqwest::Client,
    p: Http,
    timeout: Duration,
) -> Result<serde_json::Value, TaskError> {
    let method = reqwest::Method::from_bytes(p.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| TaskError::permanent(format!("`{}` is not an HTTP method", p.method)))?;
    let url = reqwest::Url::parse(&p.url)
        .map_err(|e| TaskError::permanent(format!("`{}` is not a URL: {e}", p.url)))?;
    let mut req = client.request(method, url).timeout(timeout);
    for (k, v) in &p.headers {
        req = req.header(k, v);
    }
    if let Some(body) = &p.body {
        req = req.json(body);
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_builder() {
            TaskError::permanent(format!("bad request to {}: {e}", p.url))
        } else {
            TaskError::retryable(format!("request to {} failed: {e}", p.url))
        }
    })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    let code = status.as_u16();
    if status.is_success() {
        let body =
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(tail(body.as_bytes())));
        return Ok(serde_json::json!({ "status": code, "body": body }));
    }
    let msg = format!("{} answered {status}: {}", p.url, tail(body.as_bytes()));
    if code == 429 || status.is_server_error() {
        let e = TaskError::retryable(msg);
        Err(match retry_after {
            Some(d) => e.with_retry_after(d),
            None => e,
        })
    } else {
        Err(TaskError::permanent(msg))
    }
}
