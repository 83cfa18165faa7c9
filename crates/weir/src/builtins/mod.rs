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

#[cfg(feature = "http-kind")]
mod http;
mod shell;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::de::IgnoredAny;
use serde::Deserialize;
use weir_core::{TaskContext, TaskError};
use weir_runtime::Registry;

use crate::config::Config;

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

/// The built-in kinds could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuiltinsError {
    /// The HTTP client of the `http` kind could not be built.
    #[error("cannot build the HTTP client of the `http` kind: {0}")]
    HttpClient(String),
}

#[cfg(feature = "http-kind")]
pub use http::Http;
pub use shell::{
    Shell, SHELL_BASE_ENV, SHELL_DEFAULT_MAX_OUTPUT, SHELL_DEFAULT_TIMEOUT, SHELL_RETRY_EXIT,
};

/// Checks that `payload` decodes as the payload of built-in kind `kind` (`sleep`, `fail`,
/// `shell`, `http`), so a job that could never run is refused when it is enqueued rather
/// than failing at its first attempt; the error says what is wrong. Any other kind (the
/// user's own, or `noop` and `echo`, which take anything) passes.
pub fn check_payload(kind: &str, payload: &[u8]) -> Result<(), String> {
    fn check<T: serde::de::DeserializeOwned>(kind: &str, payload: &[u8]) -> Result<(), String> {
        serde_json::from_slice::<T>(payload)
            .map(drop)
            .map_err(|e| format!("the payload of a `{kind}` job does not decode: {e}"))
    }
    match kind {
        "sleep" => check::<Sleep>(kind, payload),
        "fail" => check::<Fail>(kind, payload),
        "shell" => check::<Shell>(kind, payload),
        #[cfg(feature = "http-kind")]
        "http" => check::<Http>(kind, payload),
        _ => Ok(()),
    }
}

/// Registers every built-in kind on `registry`, configured by `config`.
pub fn register(registry: &mut Registry, config: &Config) -> Result<(), BuiltinsError> {
    register_live(registry, Arc::new(ArcSwap::from_pointee(config.clone())))
}

/// Registers every built-in kind, reading the shell allow-list and the HTTP timeout from
/// `config` at each job, so a reloaded configuration applies to the next job.
pub fn register_live(
    registry: &mut Registry,
    config: Arc<ArcSwap<Config>>,
) -> Result<(), BuiltinsError> {
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
    shell::register(registry, config.clone());
    #[cfg(feature = "http-kind")]
    http::register(registry, config)?;
    Ok(())
}

/// The last 500 bytes of `bytes`, as text, cut at a character boundary: what an error
/// message quotes of a command's output or a response body.
pub(crate) fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let start = s.len().saturating_sub(500);
    let start = (start..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].to_owned()
}
