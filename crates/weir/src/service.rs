//! [`Service`]: a [`Worker`] run from a configuration file, the way `weir serve` runs one. It
//! builds the worker from `weir.toml` (queues, pool sizes, autoscaling, limits, retry
//! policies, limit keys of kinds), follows the file while it runs (a change or SIGHUP is
//! validated and applied live), and runs the worker's maintenance (rescue of interrupted
//! workflow submissions, retention). A library user who embeds weir in their own service gets
//! all of that with one builder, instead of copying the binary.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_runtime::{AutoscaleConfig, Registry, Tuning, Worker, WorkerError, WorkerReport};
use weir_sync::ElasticPool;

use crate::config::{Config, ConfigError};
use crate::reload::LiveConfig;
use crate::{Broker, StateStore, Workflows};

/// A [`Service`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The configuration file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The worker's settings are invalid.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The built-in kinds could not be set up.
    #[error(transparent)]
    Builtins(#[from] crate::builtins::BuiltinsError),
}

/// Called with a new log filter when a reloaded file changes `log`.
type LogFilterHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Builds a [`Service`]. See each setter for its default.
pub struct ServiceBuilder {
    broker: Arc<dyn Broker>,
    registry: Registry,
    builtins: bool,
    store: Option<Arc<dyn StateStore>>,
    live: Option<Arc<LiveConfig>>,
    queues: Option<Vec<String>>,
    workers: usize,
    max_workers: Option<(usize, Duration)>,
    tick: Duration,
    lease: Duration,
    grace: Duration,
    retention: Option<Duration>,
    on_log_filter: Option<LogFilterHook>,
}

impl ServiceBuilder {
    /// The handlers to run. By default, an empty registry (add [`builtins`](Self::builtins)
    /// or your own).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Also runs weir's built-in kinds (`noop`, `echo`, `sleep`, `fail`, `shell`, and `http`
    /// with the `http-kind` feature), configured by the file. By default, off: `shell` runs
    /// commands for anyone who can enqueue, so it is opt-in.
    pub fn builtins(mut self) -> Self {
        self.builtins = true;
        self
    }

    /// Advances durable workflows with this state store. By default, none.
    pub fn store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Reads the configuration from this file and follows it while the service runs. By
    /// default, none: every setting at its default.
    pub fn config(mut self, live: Arc<LiveConfig>) -> Self {
        self.live = Some(live);
        self
    }

    /// The queues to serve, overriding the file's. By default, the queues of the file, or
    /// `default`.
    pub fn queues(mut self, queues: Vec<String>) -> Self {
        self.queues = Some(queues);
        self
    }

    /// The pool size of a queue the file does not configure. By default, 16.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Autoscales each queue the file does not configure between [`workers`](Self::workers)
    /// and `max`, shrinking after `cooldown` under the low mark. By default, fixed pools.
    pub fn max_workers(mut self, max: usize, cooldown: Duration) -> Self {
        self.max_workers = Some((max, cooldown));
        self
    }

    /// How often the autoscaler looks at each queue and the worker reports its pools. By
    /// default, 5 s.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// The lease time (see [`WorkerBuilder::lease`](crate::WorkerBuilder::lease)). By
    /// default, 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The shutdown grace period. By default, 30 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Deletes finished work older than `keep` (see
    /// [`WorkerBuilder::retention`](crate::WorkerBuilder::retention)). By default, none.
    pub fn retention(mut self, keep: Duration) -> Self {
        self.retention = Some(keep);
        self
    }

    /// Called with the new filter when a reloaded file changes `log`. By default, none.
    pub fn on_log_filter(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_log_filter = Some(Arc::new(hook));
        self
    }

    /// Builds the worker from the configuration in force.
    pub fn build(self) -> Result<Service, ServiceError> {
        let config = self.live.as_ref().map(|l| l.current()).unwrap_or_default();
        let mut registry = self.registry;
        if self.builtins {
            match &self.live {
                Some(l) => crate::builtins::register_live(&mut registry, l.source())?,
                None => crate::builtins::register(&mut registry, &config)?,
            }
        }
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
        let queues: Vec<String> = match self.queues {
            Some(q) => q,
            None if !config.queues.is_empty() => config.queues.keys().cloned().collect(),
            None => vec![crate::DEFAULT_QUEUE.to_owned()],
        };
        let mut builder = Worker::builder(self.broker.clone(), registry)
            .lease(self.lease)
            .shutdown_grace(self.grace)
            .autoscale_tick(self.tick);
        if let Some(keep) = self.retention {
            builder = builder.retention(keep);
        }
        let mut cli_autoscale = HashMap::new();
        for q in &queues {
            let from_file = config.queues.get(q).map(|c| c.get_ref().clone());
            let workers = from_file.as_ref().map_or(self.workers, |c| c.workers);
            builder = builder.queue(q.as_str(), workers);
            let scale = match (&from_file, self.max_workers) {
                (Some(c), _) => c.autoscale(),
                (None, Some((max, cooldown))) => {
                    let c = AutoscaleConfig {
                        min_workers: self.workers,
                        max_workers: max,
                        cooldown,
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
        match self.store {
            Some(store) => {
                builder = builder.workflows(Workflows::new(self.broker.clone(), store));
            }
            None => tracing::warn!(
                "no workflow state store (--store, WEIR_STORE or `store` in weir.toml): workflow members that reach this worker are deferred until a worker with one takes them"
            ),
        }
        let worker = builder.build()?;
        let tuning = worker.tuning();
        tuning.set_backoffs(config.backoffs());
        tuning.set_limits(config.limits());
        let pools = queues
            .iter()
            .filter_map(|q| worker.pool(q).map(|p| (q.clone(), p)))
            .collect();
        Ok(Service {
            worker,
            live: self.live,
            pools,
            cli_autoscale,
            on_log_filter: self.on_log_filter,
        })
    }
}

/// A [`Worker`] run from a configuration file, the way `weir serve` runs one: built from
/// `weir.toml` (queues, pool sizes, autoscaling, limits, retry policies, limit keys of
/// kinds), following the file while it runs, with the worker's maintenance (rescue of
/// interrupted workflow submissions, retention). A library user who embeds weir gets all of
/// that with [`Service::builder`] instead of copying the binary.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use weir::reload::LiveConfig;
/// let broker = weir::open_broker("sqlite:./weir.db")?;
/// let service = weir::Service::builder(broker.clone())
///     .builtins()
///     .config(LiveConfig::load("weir.toml")?)
///     .store(weir::open_store("sqlite:./weir.db").await?)
///     .retention(Duration::from_secs(7 * 24 * 3600))
///     .build()?;
/// service.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # Ok(()) }
/// ```
pub struct Service {
    worker: Worker,
    live: Option<Arc<LiveConfig>>,
    pools: Vec<(String, ElasticPool)>,
    cli_autoscale: HashMap<String, AutoscaleConfig>,
    on_log_filter: Option<LogFilterHook>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Starts building a service whose worker takes jobs from `broker`.
    pub fn builder(broker: Arc<dyn Broker>) -> ServiceBuilder {
        ServiceBuilder {
            broker,
            registry: Registry::new(),
            builtins: false,
            store: None,
            live: None,
            queues: None,
            workers: 16,
            max_workers: None,
            tick: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            grace: Duration::from_secs(30),
            retention: None,
            on_log_filter: None,
        }
    }

    /// The worker, to look at its pools or tuning before it runs.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Runs the worker until `shutdown` completes (see [`Worker::run`]), following the
    /// configuration file meanwhile: every valid change is applied live (pool sizes,
    /// autoscaler settings, retry policies, limits, the shell allow-list, the HTTP timeout,
    /// the log filter); an invalid one is logged and the running configuration stays. The
    /// set of queues is fixed at start.
    ///
    /// Cancel safety: as [`Worker::run`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        let Service {
            worker,
            live,
            pools,
            cli_autoscale,
            on_log_filter,
        } = self;
        let stop = CancellationToken::new();
        let mut follow = None;
        if let Some(live) = live {
            let mut changes = live.subscribe();
            let watcher = tokio::spawn(live.clone().watch(stop.clone().cancelled_owned()));
            let tuning = worker.tuning();
            let applier = tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    let c = changes.borrow_and_update().clone();
                    apply(
                        &c,
                        &pools,
                        &tuning,
                        &cli_autoscale,
                        on_log_filter.as_deref(),
                    );
                }
            });
            tracing::info!(path = %live.path().display(), "following the configuration file (and SIGHUP)");
            follow = Some((watcher, applier));
        }
        let report = worker.run(shutdown).await;
        stop.cancel();
        if let Some((watcher, applier)) = follow {
            match watcher.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "the configuration watcher failed"),
                Err(e) => tracing::warn!(error = %e, "the configuration watcher failed"),
                Ok(Ok(())) => {}
            }
            applier.abort();
            let _ = applier.await;
        }
        report
    }
}

/// Applies a (re)loaded configuration to the running worker: pool sizes of fixed queues,
/// autoscaler settings, retry backoffs, limits and the log filter. Queues themselves are set
/// at start.
fn apply(
    config: &Config,
    pools: &[(String, ElasticPool)],
    tuning: &Tuning,
    cli_autoscale: &HashMap<String, AutoscaleConfig>,
    on_log_filter: Option<&(dyn Fn(&str) + Send + Sync)>,
) {
    let mut autoscale = cli_autoscale.clone();
    for (name, pool) in pools {
        let Some(q) = config.queues.get(name) else {
            continue;
        };
        match q.get_ref().autoscale() {
            Some(a) => {
                autoscale.insert(name.clone(), a);
            }
            None => {
                autoscale.remove(name);
                if pool.size() != q.get_ref().workers {
                    tracing::info!(queue = %name, to = q.get_ref().workers, "pool resized by configuration");
                    pool.resize(q.get_ref().workers);
                }
            }
        }
    }
    if let Err(e) = tuning.set_autoscale(autoscale) {
        tracing::error!(error = %e, "autoscaler settings refused");
    }
    tuning.set_backoffs(config.backoffs());
    tuning.set_limits(config.limits());
    if let (Some(filter), Some(hook)) = (&config.log, on_log_filter) {
        hook(filter);
    }
}
