//! The `shell` kind: runs an allow-listed command without a shell, in its own process group,
//! with a scrubbed environment, a set working directory, a time limit and capped output.
//! Whoever can enqueue chooses the arguments, so each of these limits is part of the kind's
//! contract, not a nicety.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use weir_core::{TaskContext, TaskError};
use weir_runtime::Registry;

use super::tail;
use crate::config::{Config, ShellConfig};

/// Exit status a `shell` command uses to ask for a retry (`EX_TEMPFAIL` from sysexits.h).
pub const SHELL_RETRY_EXIT: i32 = 75;

/// Variables a command always gets from the worker's environment (when set there).
pub const SHELL_BASE_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// The longest a command may run, by default (a ceiling over the job's own timeout).
pub const SHELL_DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How many bytes of each of stdout and stderr are kept, by default.
pub const SHELL_DEFAULT_MAX_OUTPUT: usize = 1024 * 1024;

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
        async move { run_shell(&config.shell, p, cx).await }
    });
}

/// Kills the command's whole process group when dropped, unless it exited by itself: a
/// timeout, a cancellation, or the attempt's future dropped part way leave no process
/// behind, grandchildren included.
struct GroupGuard {
    pgid: Option<nix::unistd::Pid>,
}

impl GroupGuard {
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // ESRCH (already gone) is the common case after a clean exit of the leader.
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Reads all of `r`, keeping at most `cap` bytes; returns them and how many were dropped.
/// Reading on (rather than closing the pipe) keeps a chatty command from blocking on a
/// full pipe or dying of SIGPIPE.
async fn read_capped(r: Option<impl AsyncRead + Unpin + Send>, cap: usize) -> (Vec<u8>, u64) {
    let Some(mut r) = r else {
        return (Vec::new(), 0);
    };
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, dropped),
            Ok(n) => {
                let room = cap.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
                dropped += (n - room) as u64;
            }
        }
    }
}

async fn run_shell(
    cfg: &ShellConfig,
    p: Shell,
    cx: TaskContext,
) -> Result<serde_json::Value, TaskError> {
    if !cfg.allow.contains(&p.cmd) {
        return Err(TaskError::permanent(format!(
            "shell command `{}` is not allowed: add it to [shell] allow in weir.toml",
            p.cmd
        )));
    }
    let dir = cfg.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut cmd = tokio::process::Command::new(&p.cmd);
    cmd.args(&p.args)
        .env_clear()
        .envs(
            SHELL_BASE_ENV
                .iter()
                .map(|v| v.to_string())
                .chain(cfg.env.iter().cloned())
                .filter_map(|name| std::env::var_os(&name).map(|v| (name, v))),
        )
        .current_dir(&dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        TaskError::permanent(format!(
            "cannot start `{}` in {}: {e}",
            p.cmd,
            dir.display()
        ))
    })?;
    let mut guard = GroupGuard {
        pgid: child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(nix::unistd::Pid::from_raw),
    };
    let cap = cfg.max_output.unwrap_or(SHELL_DEFAULT_MAX_OUTPUT);
    let limit = cfg.timeout.unwrap_or(SHELL_DEFAULT_TIMEOUT);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    // The readers run apart from the wait: the command is done when it exits, even if a
    // background process it started still holds its output open.
    let mut out_task = tokio::spawn(read_capped(stdout, cap));
    let mut err_task = tokio::spawn(read_capped(stderr, cap));
    let status = tokio::select! {
        r = tokio::time::timeout(limit, child.wait()) => match r {
            Ok(r) => r,
            Err(_) => return Err(TaskError::retryable(format!(
                "`{}` ran longer than {} ([shell] timeout); its process group was killed",
                p.cmd,
                humantime::format_duration(limit)
            ))),
        },
        _ = cx.cancellation().cancelled() => {
            return Err(TaskError::retryable(format!("`{}` cancelled; its process group was killed", p.cmd)))
        }
    };
    let status =
        status.map_err(|e| TaskError::retryable(format!("waiting for `{}`: {e}", p.cmd)))?;
    guard.disarm();
    // What is left in the pipes, for a moment; then what was read is what there is.
    let grace = Duration::from_secs(1);
    let (out, out_dropped) = match tokio::time::timeout(grace, &mut out_task).await {
        Ok(Ok(r)) => r,
        _ => {
            out_task.abort();
            (Vec::new(), 0)
        }
    };
    let (err, _) = match tokio::time::timeout(grace, &mut err_task).await {
        Ok(Ok(r)) => r,
        _ => {
            err_task.abort();
            (Vec::new(), 0)
        }
    };
    match status.code() {
        Some(0) => Ok(serde_json::json!({
            "stdout": tail(&out),
            "stdout_truncated_bytes": out_dropped,
        })),
        Some(SHELL_RETRY_EXIT) => Err(TaskError::retryable(format!(
            "`{}` exited {SHELL_RETRY_EXIT} (retry): {}",
            p.cmd,
            tail(&err)
        ))),
        Some(code) => Err(TaskError::permanent(format!(
            "`{}` exited {code}: {}",
            p.cmd,
            tail(&err)
        ))),
        None => Err(TaskError::retryable(format!(
            "`{}` was killed by a signal",
            p.cmd
        ))),
    }
}
