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
use crate::config::{Config, HttpConfig};

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

/// Resolves host names, dropping the addresses of `[http] deny`: every connection the client
/// makes (the first and each redirect) goes through it, so a name that resolves, or is
/// re-pointed, to a denied address cannot be reached.
struct DenyResolver {
    deny: Arc<Vec<ipnet::IpNet>>,
}

impl reqwest::dns::Resolve for DenyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let deny = self.deny.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<std::net::SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| !denied(&deny, a.ip()))
                .collect();
            if allowed.is_empty() && !all.is_empty() {
                return Err(Box::new(Denied(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Every address of the host is in `[http] deny`: a permanent failure, found by walking the
/// error's sources.
#[derive(Debug, thiserror::Error)]
#[error("every address of {0} is denied by [http] deny")]
struct Denied(String);

fn denied(deny: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    // An IPv4 address written as IPv6 (::ffff:169.254.169.254) is checked as IPv4 too.
    let v4 = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4),
        std::net::IpAddr::V4(_) => None,
    };
    deny.iter()
        .any(|net| net.contains(&ip) || v4.is_some_and(|v4| net.contains(&v4)))
}

/// The URL's host, if it is an address literal in `deny` (a literal skips the resolver).
fn denied_literal(deny: &[ipnet::IpNet], url: &reqwest::Url) -> Option<std::net::IpAddr> {
    let ip = match url.host()? {
        url::Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
        url::Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
        url::Host::Domain(_) => return None,
    };
    denied(deny, ip).then_some(ip)
}

pub(super) fn register(
    registry: &mut Registry,
    config: Arc<ArcSwap<Config>>,
) -> Result<(), BuiltinsError> {
    let http = config.load().http.clone();
    let deny = Arc::new(http.deny.clone());
    let max_redirects = http.max_redirects;
    let redirect_deny = deny.clone();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max_redirects {
            let n = attempt.previous().len() - 1;
            return attempt.error(format!("more than {n} redirects ([http] max_redirects)"));
        }
        if let Some(ip) = denied_literal(&redirect_deny, attempt.url()) {
            return attempt.error(format!("redirect to {ip}, denied by [http] deny"));
        }
        attempt.follow()
    });
    let client = reqwest::Client::builder()
        .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
        .redirect(policy)
        .dns_resolver(Arc::new(DenyResolver { deny: deny.clone() }))
        // Direct connections only: through a proxy (HTTP(S)_PROXY), the proxy would resolve
        // the name and the deny-list would never see the address.
        .no_proxy()
        .build()
        .map_err(|e| BuiltinsError::HttpClient(e.to_string()))?;
    registry.register_fn("http", move |p: Http, cx: TaskContext| {
        let client = client.clone();
        let limits = config.load().http.clone();
        let deny = deny.clone();
        async move {
            tokio::select! {
                r = run_http(&client, p, &limits, &deny) => r,
                _ = cx.cancellation().cancelled() => Err(TaskError::retryable("cancelled during the request")),
            }
        }
    });
    Ok(())
}

/// Reads the body, at most `max` bytes: a larger one is a permanent failure (it will not
/// shrink), a body cut off part way a retryable one (never a success with half a body).
async fn read_body(
    mut resp: reqwest::Response,
    max: usize,
    url: &str,
) -> Result<Vec<u8>, TaskError> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(TaskError::permanent(format!(
                        "{url}: the response body is over {max} bytes ([http] max_body)"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(TaskError::retryable(format!(
                    "{url}: the response body was cut off after {} bytes: {e}",
                    body.len()
                )))
            }
        }
    }
}

async fn run_http(
    client: &reqwest::Client,
    p: Http,
    limits: &HttpConfig,
    deny: &[ipnet::IpNet],
) -> Result<serde_json::Value, TaskError> {
    let method = reqwest::Method::from_bytes(p.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| TaskError::permanent(format!("`{}` is not an HTTP method", p.method)))?;
    let url = reqwest::Url::parse(&p.url)
        .map_err(|e| TaskError::permanent(format!("`{}` is not a URL: {e}", p.url)))?;
    if let Some(ip) = denied_literal(deny, &url) {
        return Err(TaskError::permanent(format!(
            "{}: {ip} is denied by [http] deny",
            p.url
        )));
    }
    let mut req = client.request(method, url).timeout(limits.timeout);
    for (k, v) in &p.headers {
        req = req.header(k, v);
    }
    if let Some(body) = &p.body {
        req = req.json(body);
    }
    let resp = req.send().await.map_err(|e| {
        // reqwest's own message leaves out the cause (which redirect, which address).
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        let mut denied = false;
        while let Some(s) = source {
            denied |= s.downcast_ref::<Denied>().is_some();
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_builder() || e.is_redirect() || denied {
            TaskError::permanent(format!("bad request to {}: {text}", p.url))
        } else {
            TaskError::retryable(format!("request to {} failed: {text}", p.url))
        }
    })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(limits.max_retry_after));
    let body = read_body(resp, limits.max_body, &p.url).await?;
    let code = status.as_u16();
    if status.is_success() {
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(tail(&body)));
        return Ok(serde_json::json!({ "status": code, "body": body }));
    }
    let msg = format!("{} answered {status}: {}", p.url, tail(&body));
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
