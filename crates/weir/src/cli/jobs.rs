//! status, inspect, list, retry, cancel, purge.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args as ClapArgs;
use weir::{Job, JobId, JobState, ListFilter};

use super::Args;

#[derive(ClapArgs, Debug)]
pub(crate) struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Only these queues (repeatable). By default, every queue; on RabbitMQ, which cannot
    /// list its queues, `default`.
    #[arg(long = "queue", value_name = "NAME")]
    queues: Vec<String>,
}

#[derive(ClapArgs, Debug)]
pub(crate) struct InspectArgs {
    /// The job or workflow id.
    id: JobId,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// For a workflow: how many members that did not succeed to list (as text).
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

#[derive(ClapArgs, Debug)]
pub(crate) struct IdArg {
    /// The job id.
    id: JobId,
}

#[derive(ClapArgs, Debug)]
pub(crate) struct RetryArgs {
    /// The job id (a failed job).
    #[arg(required_unless_present = "failed", conflicts_with = "failed")]
    id: Option<JobId>,
    /// Instead of one job: every failed job of --queue (up to --limit). On RabbitMQ, the
    /// queue's dead letters are replayed to its work queue.
    #[arg(long)]
    failed: bool,
    /// With --failed: the queue. By default, `default`.
    #[arg(long, requires = "failed")]
    queue: Option<String>,
    /// With --failed: at most this many.
    #[arg(long, default_value_t = 1000, requires = "failed")]
    limit: usize,
}

#[derive(ClapArgs, Debug)]
pub(crate) struct ListArgs {
    /// Only jobs in this state.
    #[arg(long)]
    state: Option<JobState>,
    /// Only jobs of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(ClapArgs, Debug)]
pub(crate) struct PurgeArgs {
    /// The state to delete: succeeded, failed or cancelled.
    #[arg(long, value_parser = parse_finished_state)]
    state: JobState,
    /// Only this queue.
    #[arg(long, conflicts_with = "older_than")]
    queue: Option<String>,
    /// Only jobs that finished more than this long ago, e.g. 7d.
    #[arg(long, value_parser = super::parse_duration)]
    older_than: Option<std::time::Duration>,
}

/// `purge --state`: only a finished state; an unfinished one is a usage error (exit 2).
fn parse_finished_state(s: &str) -> Result<JobState, String> {
    let state: JobState = s.parse().map_err(|e| format!("{e}"))?;
    if !state.is_finished() {
        return Err(format!(
            "`{s}` jobs are not finished; purge takes succeeded, failed or cancelled (cancel unfinished jobs first)"
        ));
    }
    Ok(state)
}

/// Status from a broker that can count its queues but not its jobs (RabbitMQ).
async fn status_depths(stats: &dyn weir::QueueStats, a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let queues = if a.queues.is_empty() {
        vec![weir::DEFAULT_QUEUE.to_owned()]
    } else {
        a.queues.clone()
    };
    let depths = stats.depths(&queues).await?;
    for d in depths.iter().filter(|d| !d.exists) {
        eprintln!(
            "no such queue: `{}` (nothing was enqueued to it or served from it)",
            d.queue
        );
    }
    if a.json {
        out!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "queues": depths }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<20} {:>10} {:>10} {:>10} {:>10}",
        "QUEUE",
        "READY",
        "DELAYED",
        "DEAD",
        "CONSUMERS"
    );
    for d in &depths {
        out!(
            "{:<20} {:>10} {:>10} {:>10} {:>10}",
            d.queue,
            d.ready,
            d.delayed,
            d.dead,
            d.consumers
        );
    }
    out!("(running jobs are not counted: RabbitMQ does not report unacked messages over AMQP)");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn status(args: &Args, a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let broker = args.open_existing()?;
    if broker.inspect().is_none() {
        if let Some(stats) = broker.queue_stats() {
            return status_depths(stats, a).await;
        }
    }
    let i = broker.inspect().context("this broker cannot count jobs")?;
    let mut counts = i.counts().await?;
    if !a.queues.is_empty() {
        // Only the queues asked for; one without jobs is shown with zeros, and said so.
        counts.retain(|q| a.queues.contains(&q.queue));
        for name in &a.queues {
            if !counts.iter().any(|q| &q.queue == name) {
                eprintln!("queue `{name}` has no jobs");
                counts.push(weir::QueueCounts {
                    queue: name.clone(),
                    ..Default::default()
                });
            }
        }
    }
    // Workers that reported within the last minute (they report every autoscaler tick).
    let now = weir::Timestamp::now();
    let workers: Vec<weir::WorkerStatus> = match i.workers().await {
        Ok(w) => w
            .into_iter()
            .filter(|w| now.since(w.updated_at) <= std::time::Duration::from_secs(60))
            .filter(|w| a.queues.is_empty() || a.queues.contains(&w.queue))
            .collect(),
        Err(weir::BrokerError::Unsupported(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if a.json {
        out!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "queues": counts, "workers": workers }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  OLDEST WAITING",
        "QUEUE",
        "PENDING",
        "RUNNING",
        "RETRYABLE",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED"
    );
    let now = weir::Timestamp::now();
    for q in &counts {
        // How long the longest-waiting runnable job has been due: how far behind the queue is.
        let waiting = q.oldest_due.map_or_else(
            || "-".to_owned(),
            |due| {
                let secs = now.since(due).as_secs();
                humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
            },
        );
        out!(
            "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  {}",
            q.queue,
            q.pending,
            q.running,
            q.retryable,
            q.succeeded,
            q.failed,
            q.cancelled,
            waiting
        );
    }
    if counts.is_empty() {
        out!("(no jobs)");
    }
    if !workers.is_empty() {
        out!();
        out!(
            "{:<28} {:<20} {:>6} {:>6}  LAST DECISION",
            "WORKER",
            "QUEUE",
            "SIZE",
            "BUSY"
        );
        for w in &workers {
            out!(
                "{:<28} {:<20} {:>6} {:>6}  {}",
                w.worker,
                w.queue,
                w.size,
                w.busy,
                w.last_decision.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_job(j: &Job) -> Result<(), super::StdoutError> {
    out!("id           {}", j.id);
    out!("kind         {}", j.kind);
    out!("queue        {}", j.queue);
    out!("state        {}", j.state);
    out!("attempt      {} of {}", j.attempt, j.max_attempts);
    out!("priority     {}", j.priority);
    out!("created_at   {}", j.created_at);
    out!("run_at       {}", j.run_at);
    if let Some(t) = j.lease_until {
        out!("lease_until  {t}");
    }
    if let Some(t) = j.finished_at {
        out!("finished_at  {t}");
    }
    if let Some(t) = j.timeout {
        out!("timeout      {}", humantime::format_duration(t));
    }
    if let Some(k) = &j.unique_key {
        out!("unique_key   {k}");
    }
    out!("trace_id     {}", j.trace_id);
    out!("payload      {}", j.payload_str());
    if let Some(e) = &j.last_error {
        out!("last_error   {e}");
    }
    if let Some(r) = &j.result {
        out!("result       {}", String::from_utf8_lossy(r));
    }
    Ok(())
}

pub(crate) async fn inspect(args: &Args, a: &InspectArgs) -> anyhow::Result<ExitCode> {
    let broker = args.open_existing()?;
    let store = args.store().await?;
    if let Some(store) = &store {
        if let Some(s) = store.status(a.id).await? {
            super::workflow::show(&**store, &*broker, s, a.json, a.limit).await?;
            return Ok(ExitCode::SUCCESS);
        }
    }
    let Some(i) = broker.inspect() else {
        anyhow::bail!(
            "this broker cannot look up jobs by id (RabbitMQ keeps no record of a job){}",
            if store.is_none() {
                "; for a workflow id, give its state store: --store postgres://… (or WEIR_STORE)"
            } else {
                "; no workflow with this id is in the store either"
            }
        );
    };
    let Some(j) = i.get(a.id).await? else {
        anyhow::bail!("no job or workflow with id {}", a.id);
    };
    if a.json {
        out!("{}", serde_json::to_string(&j)?);
    } else {
        print_job(&j)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn list(args: &Args, a: &ListArgs) -> anyhow::Result<ExitCode> {
    let broker = args.open_existing()?;
    let (jobs, matching) = match (broker.inspect(), broker.queue_stats()) {
        (Some(i), _) => {
            let jobs = i
                .list(ListFilter {
                    queue: a.queue.clone(),
                    state: a.state,
                    limit: a.limit,
                    ..Default::default()
                })
                .await?;
            // How many match in all, from the maintained counts, to say what was left out.
            let matching: u64 = i
                .counts()
                .await?
                .iter()
                .filter(|q| a.queue.as_ref().is_none_or(|name| *name == q.queue))
                .map(|q| match a.state {
                    Some(state) => q.get(state),
                    None => JobState::ALL.iter().map(|s| q.get(*s)).sum(),
                })
                .sum();
            (jobs, Some(matching))
        }
        // RabbitMQ: only dead letters can be looked at (without removing them).
        (None, Some(stats)) if a.state == Some(JobState::Failed) => {
            let queue = a.queue.as_deref().unwrap_or(weir::DEFAULT_QUEUE);
            (stats.dead_letters(queue, a.limit).await?, None)
        }
        (None, Some(_)) => anyhow::bail!(
            "this broker can only list dead letters: use --state failed [--queue NAME]"
        ),
        (None, None) => anyhow::bail!("this broker cannot list jobs"),
    };
    if a.json {
        for j in &jobs {
            out!("{}", serde_json::to_string(j)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        out!("(no jobs)");
        return Ok(ExitCode::SUCCESS);
    }
    let width = |f: fn(&Job) -> usize, min: usize| jobs.iter().map(f).max().unwrap_or(0).max(min);
    let kind_w = width(|j| j.kind.chars().count(), 4);
    let queue_w = width(|j| j.queue.chars().count(), 5);
    out!(
        "{:<36}  {:<9}  {:<kind_w$}  {:<queue_w$}  {:>8}  LAST ERROR",
        "ID",
        "STATE",
        "KIND",
        "QUEUE",
        "ATTEMPT"
    );
    for j in &jobs {
        out!(
            "{:<36}  {:<9}  {:<kind_w$}  {:<queue_w$}  {:>8}  {}",
            j.id,
            j.state.as_str(),
            j.kind,
            j.queue,
            format!("{}/{}", j.attempt, j.max_attempts),
            j.last_error.as_deref().unwrap_or("")
        );
    }
    if let Some(more) = matching.and_then(|m| m.checked_sub(jobs.len() as u64)) {
        if more > 0 {
            out!("… {more} more (use --limit)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn retry(args: &Args, a: &RetryArgs) -> anyhow::Result<ExitCode> {
    if a.failed {
        return retry_failed(args, a).await;
    }
    let Some(id) = a.id else {
        anyhow::bail!("give a job id, or --failed --queue Q")
    };
    let broker = args.open_existing()?;
    let i = broker.inspect().context(
        "this broker cannot retry jobs by id; on RabbitMQ, `weir retry --failed --queue Q` replays the dead letters",
    )?;
    let j = i.retry(id).await?;
    out!("{} is {} again", j.id, j.state);
    Ok(ExitCode::SUCCESS)
}

/// `weir retry --failed --queue Q`: every failed job of the queue runs again (up to
/// `--limit`); on RabbitMQ, its dead letters are replayed to the work queue.
async fn retry_failed(args: &Args, a: &RetryArgs) -> anyhow::Result<ExitCode> {
    let queue = a.queue.as_deref().unwrap_or(weir::DEFAULT_QUEUE);
    if let Some(amqp) = args.amqp()? {
        let n = amqp.replay_dead(queue, a.limit).await?;
        amqp.close().await;
        out!("replayed {n} dead letters of `{queue}` to its work queue");
        return Ok(ExitCode::SUCCESS);
    }
    let broker = args.open_existing()?;
    let i = broker.inspect().context("this broker cannot retry jobs")?;
    let failed = i
        .list(ListFilter {
            queue: Some(queue.to_owned()),
            state: Some(JobState::Failed),
            limit: a.limit,
            ..Default::default()
        })
        .await?;
    let mut n = 0;
    for j in failed {
        match i.retry(j.id).await {
            Ok(_) => n += 1,
            // Retried or purged by someone else meanwhile: not ours to count.
            Err(weir::BrokerError::WrongState { .. } | weir::BrokerError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    out!("{n} failed jobs of `{queue}` are pending again");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn cancel(args: &Args, a: &IdArg) -> anyhow::Result<ExitCode> {
    let broker = args.open_existing()?;
    let i = broker
        .inspect()
        .context("this broker cannot cancel jobs by id")?;
    let Some(before) = i.get(a.id).await? else {
        anyhow::bail!("no job with id {}", a.id);
    };
    // A member cancelled by id fails its workflow (else the workflow would wait for it for
    // ever). The store is opened first, so the job is not cancelled when the workflow cannot
    // be told; and a member already cancelled (an earlier try that could not reach the store)
    // is told again: the record is idempotent.
    let workflows = match before.member {
        Some(_) => Some(weir::Workflows::new(
            broker.clone(),
            args.require_store().await?,
        )),
        None => None,
    };
    let j = match i.cancel(a.id).await {
        Ok(j) => j,
        Err(weir::BrokerError::WrongState {
            state: JobState::Cancelled,
            ..
        }) if before.member.is_some() => before.clone(),
        Err(e) => return Err(e.into()),
    };
    out!("{} is {}", j.id, j.state);
    if let (Some(member), Some(wf)) = (j.member, workflows) {
        wf.member_ended(member, "cancelled by an operator (weir cancel)")
            .await
            .with_context(|| format!("recording the cancel in workflow {}", member.workflow))?;
        out!(
            "workflow {} told (member {} failed)",
            member.workflow,
            member.index
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn purge(args: &Args, a: &PurgeArgs) -> anyhow::Result<ExitCode> {
    if let Some(amqp) = args.amqp()? {
        // RabbitMQ keeps only dead letters (failed jobs) of all finished ones.
        if a.state != JobState::Failed || a.older_than.is_some() {
            anyhow::bail!(
                "RabbitMQ keeps no finished jobs but dead letters: use `purge --state failed --queue Q`"
            );
        }
        let queue = a.queue.as_deref().unwrap_or(weir::DEFAULT_QUEUE);
        let n = amqp.purge_dead(queue).await?;
        amqp.close().await;
        out!("purged {n} dead letters of `{queue}`");
        return Ok(ExitCode::SUCCESS);
    }
    let broker = args.open_existing()?;
    let i = broker.inspect().context("this broker cannot purge jobs")?;
    let n = match a.older_than {
        None => i.purge(a.state, a.queue.as_deref()).await?,
        Some(d) => {
            let before = weir::Timestamp::now().minus(d);
            i.purge_finished_before(a.state, before).await?
        }
    };
    out!("purged {n} {} jobs", a.state);
    Ok(ExitCode::SUCCESS)
}
