use std::process::ExitCode;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use clap::Args as ClapArgs;
use tokio_util::sync::CancellationToken;
use weir::config::Config;
use weir::reload::LiveConfig;
use weir::{AutoscaleConfig, Broker, ElasticPool, Registry, StateStore, Tuning, Worker};

use super::{parse_duration, Args, LogHandle};

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
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    cooldown: Duration,
    /// How often the autoscaler looks at each queue and the worker reports to `weir status`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    tick: Duration,
    /// Lease time: a job whose worker dies runs again elsewhere after at most this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease: Duration,
    /// How long running jobs may finish after a shutdown signal before they are cancelled
    /// and given back.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace: Duration,
    /// How long succeeded and cancelled jobs (with their results) and finished workflows are
    /// kept, e.g. 7d or 12h; `off` keeps them for good. Failed jobs stay until purged.
    #[arg(long, default_value = "7d", value_parser = parse_retention)]
    retention: Retention,
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

/// How long a workflow may sit unstarted before `weir serve` checks that its submission was
/// not interrupted (longer than any submission takes).
const RESCUE_AFTER: Duration = Duration::from_secs(600);

/// Until `stop`: every minute, completes interrupted workflow submissions
/// (`Workflows::rescue`); with a retention, also deletes expired finished work every eighth
/// of it (between 1 s and 10 min). Errors are logged and the next round tries again.
async fn maintain(
    broker: Arc<dyn Broker>,
    store: Option<Arc<dyn StateStore>>,
    keep: Option<Duration>,
    stop: CancellationToken,
) {
    let rescue_every = Duration::from_secs(60);
    let sweep_every = keep.map(|k| (k / 8).clamp(Duration::from_secs(1), Duration::from_secs(600)));
    let workflows = store
        .clone()
        .map(|s| weir::Workflows::new(broker.clone(), s));
    let mut next_sweep = tokio::time::Instant::now();
    let mut next_rescue = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        if let (Some(keep), Some(every)) = (keep, sweep_every) {
            if now >= next_sweep {
                next_sweep = now + every;
                let at = weir::Timestamp::now();
                match weir::retention::sweep(&*broker, store.as_deref(), keep, at).await {
                    Ok(s) if s.jobs + s.workflows > 0 => tracing::info!(
                        jobs = s.jobs,
                        workflows = s.workflows,
                        "retention: deleted finished work"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "retention sweep failed; trying again later")
                    }
                }
            }
        }
        if let Some(w) = &workflows {
            if now >= next_rescue {
                next_rescue = now + rescue_every;
                if let Err(e) = w.rescue(RESCUE_AFTER).await {
                    tracing::warn!(error = %e, "checking for interrupted workflow submissions failed");
                }
            }
        }
        let wake = match sweep_every {
            Some(_) => next_sweep.min(next_rescue),
            None => next_rescue,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
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

/// Applies a (re)loaded configuration to the running worker: pool sizes of fixed queues,
/// autoscaler settings, retry backoffs and the log filter. Queues themselves are set at start.
fn apply(
    config: &Config,
    pools: &[(String, ElasticPool)],
    tuning: &Tuning,
    cli_autoscale: &HashMap<String, AutoscaleConfig>,
    log: Option<&LogHandle>,
) {
    let mut autoscale = cli_autoscale.clone();
    for (name, pool) in pools {
        if let Some(q) = config.queues.get(name) {
            match q.get_ref().autoscale() {
                Some(a) => {
                    autoscale.insert(name.clone(), a);
                }
                None => {
                    autoscale.remove(name);
                    if pool.stats().size != q.get_ref().workers {
                        tracing::info!(queue = %name, to = q.get_ref().workers, "pool resized by configuration");
                        pool.resize(q.get_ref().workers);
                    }
                }
            }
        }
    }
    if let Err(e) = tuning.set_autoscale(autoscale) {
        tracing::error!(error = %e, "autoscaler settings refused");
    }
    tuning.set_backoffs(config.backoffs());
    tuning.set_limits(config.limits());
    if let (Some(filter), Some(handle)) = (&config.log, log) {
        if let Ok(f) = tracing_subscriber::EnvFilter::try_new(filter) {
            let _ = handle.modify(|old| *old = f);
        }
    }
}

pub(crate) async fn run(
    args: &Args,
    a: &ServeArgs,
    log: Option<LogHandle>,
) -> anyhow::Result<ExitCode> {
    let live = match args.config_path() {
        Some(p) => Some(LiveConfig::load(p)?),
        None => None,
    };
    let config = live.as_ref().map(|l| l.current()).unwrap_or_default();
    let broker = args.open()?;
    let mut registry = Registry::new();
    match &live {
        Some(l) => weir::builtins::register_live(&mut registry, l.source()),
        None => weir::builtins::register(&mut registry, &config),
    }
    .map_err(anyhow::Error::msg)?;
    for (kind, k) in &config.kinds {
        let k = k.get_ref().clone();
        match registry.configure(kind) {
            Some(opts) if !k.limits.is_empty() => {
                opts.limit_with(move |payload| k.keys(payload));
            }
            Some(_) => {}
            None => {
                tracing::warn!(kind = %kind, "weir.toml configures a kind this worker does not run")
            }
        }
    }
    let queues: Vec<String> = match &a.queues {
        Some(q) => q
            .iter()
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
            .collect(),
        None if !config.queues.is_empty() => config.queues.keys().cloned().collect(),
        None => vec![weir::DEFAULT_QUEUE.to_owned()],
    };
    let store = args.store().await?;
    let mut builder = Worker::builder(broker.clone(), registry)
        .lease(a.lease)
        .shutdown_grace(a.grace)
        .autoscale_tick(a.tick);
    let mut cli_autoscale = HashMap::new();
    for q in &queues {
        let from_file = config.queues.get(q).map(|c| c.get_ref().clone());
        let workers = from_file.as_ref().map_or(a.workers as usize, |c| c.workers);
        builder = builder.queue(q.as_str(), workers);
        let scale = match (&from_file, a.max_workers) {
            (Some(c), _) => c.autoscale(),
            (None, Some(max)) => {
                let c = AutoscaleConfig {
                    min_workers: a.workers as usize,
                    max_workers: max as usize,
                    cooldown: a.cooldown,
                    ..Default::default()
                };
                cli_autoscale.insert(q.clone(), c.clone());
                Some(c)
            }
            (None, None) => None,
        };
        if let Some(c) = scale {
            builder = builder.autoscale(q.as_str(), c);
        }
    }
    match store.clone() {
        Some(store) => builder = builder.workflows(weir::Workflows::new(broker.clone(), store)),
        None => tracing::warn!(
            "no workflow state store (--store, WEIR_STORE or `store` in weir.toml): workflow members that reach this worker are deferred until a worker with one takes them"
        ),
    }
    let worker = builder.build()?;
    let tuning = worker.tuning();
    tuning.set_backoffs(config.backoffs());
    tuning.set_limits(config.limits());
    let pools: Vec<(String, ElasticPool)> = queues
        .iter()
        .filter_map(|q| worker.pool(q).map(|p| (q.clone(), p)))
        .collect();
    let stop = CancellationToken::new();
    let mut follow = None;
    if let Some(live) = live.clone() {
        let mut changes = live.subscribe();
        let stop2 = stop.clone();
        let watcher = tokio::spawn(live.clone().watch(async move { stop2.cancelled().await }));
        let (tuning, log) = (tuning.clone(), log.clone());
        let applier = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let c = changes.borrow_and_update().clone();
                apply(&c, &pools, &tuning, &cli_autoscale, log.as_ref());
            }
        });
        follow = Some((watcher, applier));
        tracing::info!(path = %live.path().display(), "following the configuration file (and SIGHUP)");
    }
    let maintenance = tokio::spawn(maintain(
        broker.clone(),
        store.clone(),
        a.retention.0,
        stop.clone(),
    ));
    tracing::info!(broker = %weir::redact_url(&args.broker_url()?), "serving");
    let report = worker.run(shutdown_signal()).await;
    stop.cancel();
    let _ = maintenance.await;
    if let Some((watcher, applier)) = follow {
        match watcher.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the configuration watcher failed"),
            Err(e) => tracing::warn!(error = %e, "the configuration watcher failed"),
            Ok(Ok(())) => {}
        }
        applier.abort();
        let _ = applier.await;
    }
    tracing::info!(?report, "stopped");
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
