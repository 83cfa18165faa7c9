//! Task kinds built into the `weir` binary, so it is useful without writing Rust:
//!
//! | kind | payload | behaviour |
//! |---|---|---|
//! | `noop` | anything | succeeds at once |
//! | `echo` | anything | succeeds at once with its payload as the result (a chord callback sees its children's results) |
//! | `sleep` | `{"ms": N}` | sleeps N ms (stops early, retryably, when cancelled) |
//! | `fail` | `{"times": N}` | fails transiently on attempts 1..=N, then succeeds |
//! | `shell` | `{"cmd": "..", "args": [..]}` | runs an allow-listed command without a shell: exit 0 = ok, 75 = retry, other = permanent |
//! | `http` | `{"url": "..", "method": "POST", "body": ..}` | timeout, connection error, 429 and 5xx retry; other 4xx permanent |

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::de::IgnoredAny;
use serde::Deserialize;
use weir_core::{TaskContext, TaskError};
use weir_runtime::Registry;

use crate::config::Config;

/// Exit status a `shell` command uses to ask for a retry (`EX_TEMPFAIL` from sysexits.h).
pub const SHELL_RETRY_EXIT: i32 = 75;

/// Payload of `sleep`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// Milliseconds to sleep.
    pub ms: u64,
}

/// Payload of `fail`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    /// Attempts that fail before one succeeds.
    pub times: u32,
}

/// Payload of `shell`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shell {
    /// The command, exactly as listed in `[shell] allow`.
    pub cmd: String,
    /// Its arguments. By default, none.
    #[serde(default)]
    pub args: Vec<String>,
}

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

/// Registers every built-in kind on `registry`, configured by `config`.
pub fn register(registry: &mut Registry, config: &Config) -> Result<(), String> {
    register_live(registry, Arc::new(ArcSwap::from_pointee(config.clone())))
}

/// Registers every built-in kind, reading the shell allow-list and the HTTP timeout from
/// `config` at each job, so a reloaded configuration applies to the next job.
pub fn register_live(registry: &mut Registry, config: Arc<ArcSwap<Config>>) -> Result<(), String> {
    registry.register_fn("noop", |_: IgnoredAny, _cx: TaskContext| async {
        Ok::<_, TaskError>(())
    });
    registry.register_fn("echo", |p: serde_json::Value, _cx: TaskContext| async {
        Ok::<_, TaskError>(p)
    });
    registry.register_fn("sleep", |p: Sleep, cx: TaskContext| async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(p.ms)) => Ok(()),
            _ = cx.cancellation().cancelled() => Err(TaskError::retryable("cancelled while sleeping")),
        }
    });
    registry.register_fn("fail", |p: Fail, cx: TaskContext| async move {
        if cx.attempt() <= p.times {
            Err(TaskError::retryable(format!(
                "planned failure {} of {}",
                cx.attempt(),
                p.times
            )))
        } else {
            Ok(())
        }
    });
    let shell_config = config.clone();
    registry.register_fn("shell", move |p: Shell, cx: TaskContext| {
        let config = shell_config.load_full();
        async move { run_shell(&config.shell.allow, p, cx).await }
    });
    let client = reqwest::Client::builder()
        .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
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

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let start = s.len().saturating_sub(500);
    let start = (start..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].to_owned()
}

async fn run_shell(
    allow: &[String],
    p: Shell,
    cx: TaskContext,
) -> Result<serde_json::Value, TaskError> {
    if !allow.contains(&p.cmd) {
        return Err(TaskError::permanent(format!(
            "shell command `{}` is not allowed: add it to [shell] allow in weir.toml",
            p.cmd
        )));
    }
    let child = tokio::process::Command::new(&p.cmd)
        .args(&p.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TaskError::permanent(format!("cannot start `{}`: {e}", p.cmd)))?;
    let out = tokio::select! {
        r = child.wait_with_output() => r.map_err(|e| TaskError::retryable(format!("waiting for `{}`: {e}", p.cmd)))?,
        _ = cx.cancellation().cancelled() => return Err(TaskError::retryable(format!("`{}` cancelled", p.cmd))),
    };
    match out.status.code() {
        Some(0) => Ok(serde_json::json!({ "stdout": tail(&out.stdout) })),
        Some(SHELL_RETRY_EXIT) => Err(TaskError::retryable(format!(
            "`{}` exited {SHELL_RETRY_EXIT} (retry): {}",
            p.cmd,
            tail(&out.stderr)
        ))),
        Some(code) => Err(TaskError::permanent(format!(
            "`{}` exited {code}: {}",
            p.cmd,
            tail(&out.stderr)
        ))),
        None => Err(TaskError::retryable(format!(
            "`{}` was killed by a signal",
            p.cmd
        ))),
    }
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
