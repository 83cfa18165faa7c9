//! The `shell` kind: runs an allow-listed command without a shell.

use std::process::Stdio;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;
use weir_core::{TaskContext, TaskError};
use weir_runtime::Registry;

use super::tail;
use crate::config::Config;

/// Exit status a `shell` command uses to ask for a retry (`EX_TEMPFAIL` from sysexits.h).
pub const SHELL_RETRY_EXIT: i32 = 75;

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

pub(super) fn register(registry: &mut Registry, config: Arc<ArcSwap<Config>>) {
    registry.register_fn("shell", move |p: Shell, cx: TaskContext| {
        let config = config.load_full();
        async move { run_shell(&config.shell.allow, p, cx).await }
    });
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
