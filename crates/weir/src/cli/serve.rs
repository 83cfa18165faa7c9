//! `weir serve`: parses its arguments, builds a [`Service`] and runs it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args as ClapArgs;
use weir::reload::LiveConfig;
use weir::Service;

use super::{parse_duration, parse_positive_duration, Args, LogHandle};

#[derive(ClapArgs, Debug)]
pub(crate) struct ServeArgs {
    /// Queues to serve, comma-separated; each gets its own pool of --workers. By default, the
    /// queues of the configuration file, or `default`.
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<String>>,
    /// Jobs run at once, per queue (with --max-workers: the fewest).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    workers: u32,
    /// Autoscale each queue's pool between --workers and this: grow at once to what the
    /// backlog needs, shrink by x0.8 after --cooldown under 40% utilisation.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_workers: Option<u32>,
    /// With --max-workers: how long utilisation must stay low before each shrink.
    #[arg(long, default_value = "5m", value_parser = parse_positive_duration)]
    cooldown: Duration,
    /// How often the autoscaler looks at each queue and the worker reports to `weir status`.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    tick: Duration,
    /// Lease time: a job whose worker dies runs again elsewhere after at most this long.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    lease: Duration,
    /// How long running jobs may finish after a shutdown signal before they are cancelled
    /// and given back.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    grace: Duration,
    /// How long succeeded and cancelled jobs (with their results) and finished workflows are
    /// kept, e.g. 7d or 12h; `off` keeps them for good. Failed jobs stay until purged.
    #[arg(long, default_value = "7d", value_parser = parse_retention)]
    retention: Retention,
    /// Also serve the HTTP API, /metrics and health checks on this address, e.g.
    /// 127.0.0.1:9090. Any address but loopback needs a token (WEIR_API_ADMIN_TOKEN,
    /// WEIR_API_READ_TOKEN).
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    tokens: super::http::TokenArgs,
}

/// `--retention`: a duration, or `off`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retention(Option<Duration>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    match s {
        "off" => Ok(Retention(None)),
        _ => match parse_duration(s)? {
            d if d < Duration::from_secs(1) => Err(format!(
                "retention `{s}` is under a second; use `off` to keep everything"
            )),
            d => Ok(Retention(Some(d))),
        },
    }
}

pub(crate) async fn run(
    args: &Args,
    a: &ServeArgs,
    log: Option<LogHandle>,
) -> anyhow::Result<ExitCode> {
    if let Some(max) = a.max_workers.filter(|max| *max < a.workers) {
        // Said in the flags' words (the library's error names its own fields); a usage error.
        eprintln!(
            "error: --workers ({}) must not exceed --max-workers ({max}): --workers is the pool's size, and its minimum when autoscaling",
            a.workers
        );
        return Ok(ExitCode::from(2));
    }
    if a.http.is_none() && a.tokens.audit_log.is_some() {
        eprintln!(
            "error: --audit-log records changes made through the HTTP API: give --http ADDR too"
        );
        return Ok(ExitCode::from(2));
    }
    let api_config = a.http.map(|addr| {
        (
            addr,
            super::http::config(&a.tokens, a.queues.clone().unwrap_or_default()),
        )
    });
    if let Some((addr, config)) = &api_config {
        if let Some(code) = super::http::check(*addr, config) {
            return Ok(code);
        }
    }
    let mut broker = args.open()?;
    let mut http = None;
    if let Some((addr, config)) = api_config {
        let (metered, handle) = super::http::metered(broker)?;
        broker = metered;
        let api = super::http::with_audit_log(
            weir::api::Api::new(broker.clone(), config).metrics(handle),
            &a.tokens,
        )?;
        let listener = api
            .bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        http = Some((api, listener));
    }
    let mut store = args.store().await?;
    if http.is_some() {
        // The recorder is installed: measure the store's calls too.
        store = store.map(super::http::metered_store);
    }
    let closing = broker.clone();
    let mut service = Service::builder(broker)
        .builtins()
        .workers(a.workers as usize)
        .tick(a.tick)
        .lease(a.lease)
        .grace(a.grace);
    let live = match args.config_path() {
        Some(path) => Some(LiveConfig::load(path)?),
        None => None,
    };
    if let Some(live) = &live {
        service = service.config(live.clone());
    }
    if let Some(q) = &a.queues {
        service = service.queues(
            q.iter()
                .map(|q| q.trim().to_owned())
                .filter(|q| !q.is_empty())
                .collect(),
        );
    }
    if let Some(max) = a.max_workers {
        service = service.max_workers(max as usize, a.cooldown);
    }
    if let Some(keep) = a.retention.0 {
        service = service.retention(keep);
    }
    if let Some(store) = &store {
        service = service.store(store.clone());
    }
    if let Some(handle) = log {
        service = service.on_log_filter(move |filter| {
            if let Ok(f) = tracing_subscriber::EnvFilter::try_new(filter) {
                let _ = handle.modify(|old| *old = f);
            }
        });
    }
    let service = service.build()?;
    tracing::info!(broker = %weir::redact_url(&args.broker_url()?), "serving");
    // The API outlives the worker's drain (metrics and health stay readable while running
    // jobs finish) and stops with it.
    let stop_api = tokio_util::sync::CancellationToken::new();
    let api = http.map(|(mut api, listener)| {
        if let Some(store) = store {
            api = api.store(store);
        }
        if let Some(live) = live {
            api = api.live_config(live);
        }
        let stop = stop_api.clone();
        tokio::spawn(async move {
            if let Err(e) = api.serve_on(listener, stop.cancelled_owned()).await {
                tracing::error!(error = %e, "the HTTP API stopped");
            }
        })
    });
    let report = service.run(super::signal::shutdown_signal()).await;
    // Jobs prefetched but never started go back unspent (RabbitMQ).
    closing.close().await;
    stop_api.cancel();
    if let Some(api) = api {
        let _ = api.await;
    }
    println!(
        "stopped: {} started, {} succeeded, {} retried, {} failed, {} released, {} deferred, {} stale, {} cancelled",
        report.started,
        report.succeeded,
        report.retried,
        report.failed,
        report.released,
        report.deferred,
        report.stale,
        report.cancelled
    );
    Ok(ExitCode::SUCCESS)
}
