use std::process::ExitCode;
use std::time::Duration;

use clap::Args as ClapArgs;
use weir::{AutoscaleConfig, Registry, Worker};

use super::{parse_duration, Args};

#[derive(ClapArgs, Debug)]
pub(crate) struct ServeArgs {
    /// Queues to serve, comma-separated; each gets its own pool of --workers.
    #[arg(long, value_delimiter = ',', default_value = weir::DEFAULT_QUEUE)]
    queues: Vec<String>,
    /// Jobs run at once, per queue (with --max-workers: the fewest).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    workers: u32,
    /// Autoscale each queue's pool between --workers and this: grow at once to what the
    /// backlog needs, shrink by x0.8 after --cooldown under 40% utilisation.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_workers: Option<u32>,
    /// With --max-workers: how long utilisation must stay low before each shrink.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    cooldown: Duration,
    /// Lease time: a job whose worker dies runs again elsewhere after at most this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease: Duration,
    /// How long running jobs may finish after a shutdown signal before they are cancelled
    /// and given back.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace: Duration,
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits the process at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("second signal: exiting now; unfinished leases will expire and run again");
        std::process::exit(130);
    });
}

pub(crate) async fn run(args: &Args, a: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.load_config()?;
    let broker = args.open()?;
    let mut registry = Registry::new();
    weir::builtins::register(&mut registry, &config).map_err(anyhow::Error::msg)?;
    let mut builder = Worker::builder(broker, registry)
        .lease(a.lease)
        .shutdown_grace(a.grace);
    for q in a.queues.iter().map(|q| q.trim()).filter(|q| !q.is_empty()) {
        builder = builder.queue(q, a.workers as usize);
        if let Some(max) = a.max_workers {
            builder = builder.autoscale(
                q,
                AutoscaleConfig {
                    min_workers: a.workers as usize,
                    max_workers: max as usize,
                    cooldown: a.cooldown,
                    ..Default::default()
                },
            );
        }
    }
    let worker = builder.build()?;
    tracing::info!(broker = %args.broker, "serving");
    let report = worker.run(shutdown_signal()).await;
    tracing::info!(?report, "stopped");
    Ok(ExitCode::SUCCESS)
}
