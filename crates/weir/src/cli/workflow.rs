//! `weir workflow submit FILE`, and the workflow view of `weir inspect`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};
use weir::workflow::{MemberStatus, WorkflowSpec, WorkflowState, WorkflowStatus, Workflows};
use weir::{JobState, StateStore};

use super::Args;

#[derive(Subcommand, Debug)]
pub(crate) enum WorkflowCommand {
    /// Submit a workflow described in a JSON file (see the README's Workflows section);
    /// prints its id.
    Submit(SubmitArgs),
    /// Cancel a running workflow: its open members are cancelled (running ones stopped at
    /// their worker's next heartbeat) and it ends failed; a chord's callback never runs.
    Cancel(CancelArgs),
}

#[derive(ClapArgs, Debug)]
pub(crate) struct CancelArgs {
    /// The workflow's id (as `workflow submit` printed it).
    id: weir::workflow::WorkflowId,
}

#[derive(ClapArgs, Debug)]
pub(crate) struct SubmitArgs {
    /// The JSON file: {"shape": "chain"|"group"|"chord", "steps": [...], "callback": {...},
    /// "mode": "fail_fast"|"collect_all", "queue": "..."}.
    file: PathBuf,
    /// Wait until the workflow finishes, then print it as `weir inspect` does; exit 1 if it
    /// failed.
    #[arg(long)]
    wait: bool,
    /// With --wait, give up after this long (exit 3; the workflow goes on), e.g. 30s or 10m.
    #[arg(long, value_parser = super::parse_positive_duration, default_value = "1h")]
    timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Reads and validates a workflow file; errors name the file and, for JSON errors, the line
/// and column.
fn read_spec(path: &PathBuf) -> anyhow::Result<WorkflowSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading workflow file {}", path.display()))?;
    let spec: WorkflowSpec =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    spec.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(spec)
}

pub(crate) async fn run(args: &Args, cmd: &WorkflowCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkflowCommand::Submit(a) => submit(args, a).await,
        WorkflowCommand::Cancel(a) => cancel(args, a).await,
    }
}

async fn cancel(args: &Args, a: &CancelArgs) -> anyhow::Result<ExitCode> {
    let broker = args.open_existing()?;
    let wf = Workflows::new(broker, args.require_store().await?);
    let cancelled = wf.cancel(a.id).await.map_err(|e| match e {
        weir::BrokerError::NotFound(_) => anyhow::anyhow!("no workflow with id {}", a.id),
        e => e.into(),
    })?;
    out!(
        "workflow {} cancelled ({} queued or running jobs cancelled)",
        a.id,
        cancelled.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn submit(args: &Args, a: &SubmitArgs) -> anyhow::Result<ExitCode> {
    // Read the file before connecting: a bad file is reported without touching the broker.
    let spec = read_spec(&a.file)?;
    let broker = args.open()?;
    let store = args.require_store().await?;
    let wf = Workflows::new(broker.clone(), store.clone());
    let id = wf.submit(&spec).await?;
    if !a.wait {
        if a.json {
            out!("{}", serde_json::json!({ "id": id }));
        } else {
            out!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + a.timeout;
    loop {
        let s = store
            .status(id)
            .await?
            .context("the workflow vanished from the store")?;
        if s.state != WorkflowState::Running {
            show(&*store, &*broker, s.clone(), a.json, 20).await?;
            return Ok(if s.state == WorkflowState::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("workflow {id} still running after {:?}", a.timeout);
            show(&*store, &*broker, s, a.json, 20).await?;
            return Ok(ExitCode::from(super::EXIT_STILL_RUNNING));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints a workflow: its progress, then (as text) the members that did not succeed, at most
/// `limit` of them, and the result. The store has an open member as pending until it
/// finishes; where the broker can look jobs up, an open member shows its job's real state
/// and last error instead (e.g. retryable, attempt 9 of 25, with why).
pub(crate) async fn show(
    store: &dyn StateStore,
    broker: &dyn weir::Broker,
    s: WorkflowStatus,
    json: bool,
    limit: usize,
) -> anyhow::Result<()> {
    let mut members = store.members(s.id).await?;
    if let Some(i) = broker
        .inspect()
        .filter(|_| broker.capabilities().has(weir::Capability::Inspect))
    {
        let open = members
            .iter_mut()
            .filter(|m| m.enqueued && !m.state.is_finished())
            .take(if json { usize::MAX } else { limit });
        for m in open {
            if let Some(job) = i.get(m.job_id).await? {
                m.state = job.state;
                m.error = job.last_error;
            }
        }
    }
    let result = weir::workflow::workflow_result(&s, &members);
    if json {
        out!(
            "{}",
            serde_json::to_string(
                &serde_json::json!({ "workflow": s, "members": members, "result": result })
            )?
        );
        return Ok(());
    }
    let mode = match s.mode {
        weir::workflow::FailureMode::FailFast => "fail_fast",
        weir::workflow::FailureMode::CollectAll => "collect_all",
    };
    out!("workflow     {}", s.id);
    out!("shape        {} ({mode})", s.shape.as_str());
    out!("state        {}", s.state.as_str());
    let finished = s.succeeded + s.failed;
    out!(
        "progress     {finished}/{} {} finished: {} succeeded, {} failed, {} members cancelled",
        s.children,
        if s.shape == weir::workflow::Shape::Chain {
            "steps"
        } else {
            "children"
        },
        s.succeeded,
        s.failed,
        s.cancelled
    );
    out!("trace_id     {}", s.trace_id);
    out!("created_at   {}", s.created_at);
    if let Some(t) = s.finished_at {
        out!("finished_at  {t}");
    }
    let open: Vec<&MemberStatus> = members
        .iter()
        .filter(|m| m.state != JobState::Succeeded)
        .collect();
    if !open.is_empty() {
        out!("members not succeeded ({}):", open.len());
        for m in open.iter().take(limit) {
            out!(
                "  {:>6}  {:<10} {:<16} {}  {}",
                m.index,
                m.state.as_str(),
                m.kind,
                m.job_id,
                m.error.as_deref().unwrap_or(match (m.enqueued, m.state) {
                    (true, _) => "",
                    (false, JobState::Cancelled) => "(never enqueued)",
                    (false, _) => "(not enqueued yet)",
                })
            );
        }
        if open.len() > limit {
            out!("  … {} more (--json shows all)", open.len() - limit);
        }
    }
    if let Some(result) = result {
        let text = result.to_string();
        if text.len() > 2000 {
            out!(
                "result       {}… ({} bytes; --json shows all)",
                &text[..(0..=2000)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0)],
                text.len()
            );
        } else {
            out!("result       {text}");
        }
    }
    Ok(())
}
