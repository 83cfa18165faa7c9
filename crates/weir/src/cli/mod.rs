//! Command-line parsing (stage one: raw arguments, by clap) and dispatch to the commands, which
//! validate further (stage two) and call the library.

/// `println!` for the commands' output: a closed stdout (`weir list | head -1`) is an error
/// returned with `?`, which `main` turns into a quiet exit, instead of a panic.
macro_rules! out {
    () => {
        $crate::cli::write_out(format_args!(""))?
    };
    ($($t:tt)*) => {
        $crate::cli::write_out(format_args!($($t)*))?
    };
}

mod bench;
mod demo;
mod enqueue;
mod http;
mod jobs;
mod serve;
mod signal;
mod workflow;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir::config::Config;
use weir::{Broker, StateStore};

/// The broker and store URLs of a configuration file.
type FileUrls = (Option<String>, Option<String>);

/// weir: durable, high-concurrency task processing.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, propagate_version = true)]
pub(crate) struct Args {
    /// The broker: `sqlite:PATH[?sync=full|normal]` (embedded, the default),
    /// `amqp://USER:PASS@HOST:PORT/VHOST[?queue_type=quorum|classic&prefix=…]` (RabbitMQ) or
    /// `memory:` (in one process only: for `serve`, not for one-shot commands).
    /// By default, `broker` in the configuration file, else `sqlite:./weir.db`.
    #[arg(long, global = true, env = "WEIR_BROKER")]
    broker: Option<String>,
    /// The workflow state store: `sqlite:PATH`, `postgres://USER@HOST/DB[?schema=NAME]` or
    /// `memory:`. By default, `store` in the configuration file, else the embedded broker's
    /// own file; with RabbitMQ there is no default (workflows need one).
    #[arg(long, global = true, env = "WEIR_STORE")]
    store: Option<String>,
    /// The configuration file. By default, ./weir.toml if it exists.
    #[arg(long, global = true, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `weir=debug` (RUST_LOG syntax). By default, `info` for
    /// serve and `warn` for other commands, without the RabbitMQ client's own lines (add
    /// `lapin=warn` to see them).
    #[arg(long, global = true, env = "WEIR_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
    /// The configuration file's URLs (or why it could not be read), once read.
    #[arg(skip)]
    loaded: std::sync::OnceLock<Result<FileUrls, String>>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run workers until SIGINT or SIGTERM (a second signal exits at once).
    Serve(serve::ServeArgs),
    /// Enqueue one job, or many from a JSON-lines file.
    Enqueue(enqueue::EnqueueArgs),
    /// Job counts by queue and state.
    Status(jobs::StatusArgs),
    /// Show one job, or one workflow's progress.
    Inspect(jobs::InspectArgs),
    /// Durable workflows: chain, group, chord.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// List jobs, newest first (e.g. the dead-letter set: --state failed).
    List(jobs::ListArgs),
    /// Run a failed job again.
    Retry(jobs::RetryArgs),
    /// Cancel a pending, retryable or running job.
    Cancel(jobs::IdArg),
    /// Delete finished jobs in one state.
    Purge(jobs::PurgeArgs),
    /// Run a mixed workload on a fresh embedded queue, with live progress and a summary.
    Demo(demo::DemoArgs),
    /// Measure end-to-end throughput and enqueue-to-start latency.
    Bench(bench::BenchArgs),
    /// Serve the HTTP API, /metrics and health checks, without running workers.
    Http(http::HttpArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a configuration file without running anything (exit 1 if invalid).
    Check {
        /// The file, e.g. weir.toml.
        file: PathBuf,
    },
}

/// The exit code of `workflow submit --wait` when it gives up with the workflow still running
/// (0: done and succeeded; 1: a failure, including a failed workflow; 2: a usage error).
pub(crate) const EXIT_STILL_RUNNING: u8 = 3;

/// Parses a duration such as `10s`, `250ms` or `1h 30m`, at most [`weir::MAX_DURATION`]
/// (100 years): a larger one would overflow the millisecond timestamps it is added to.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); e.g. 10s, 250ms, 1h"))?;
    if d > weir::MAX_DURATION {
        return Err(format!("`{s}` is longer than 100 years"));
    }
    Ok(d)
}

/// [`parse_duration`] for a time budget or a period, where zero means nothing sensible
/// (a timeout that fires at once, a lease that is always expired).
pub(crate) fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` is zero; give a duration above 0"));
    }
    Ok(d)
}

/// Writing the command's output failed (see `out!`).
#[derive(Debug, thiserror::Error)]
#[error("writing to stdout: {0}")]
pub(crate) struct StdoutError(std::io::Error);

/// Writes one line to stdout (see `out!`).
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_fmt(args)
        .and_then(|()| o.write_all(b"\n"))
        .map_err(StdoutError)
}

/// True if `e` is our stdout's reader having gone away (not a broken pipe to a broker).
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StdoutError>()
        .is_some_and(|StdoutError(io)| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Changes the log filter of the running process (a reloaded `log = ".."`).
pub(crate) type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log lines on stderr, and with the `otel` feature the spans exported where the
/// `OTEL_*` variables say (see `weir::otel`); the exporter is returned to be shut down (and
/// flushed) at exit.
fn init_logging(filter: &str, export: bool) -> anyhow::Result<(Option<LogHandle>, Option<Otel>)> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colour only for a person at a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    #[cfg(feature = "otel")]
    let otel = if export {
        weir::otel::Otel::from_env()?
    } else {
        None
    };
    #[cfg(not(feature = "otel"))]
    let otel: Option<Otel> = {
        let _ = export;
        None
    };
    #[cfg(feature = "otel")]
    let spans = otel.as_ref().map(|o| o.layer());
    #[cfg(not(feature = "otel"))]
    let spans: Option<tracing_subscriber::layer::Identity> = None;
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        )
        .with(spans)
        .try_init()
        .is_ok();
    Ok((installed.then_some(handle), otel))
}

/// The span exporter, when built with it.
#[cfg(feature = "otel")]
type Otel = weir::otel::Otel;
#[cfg(not(feature = "otel"))]
type Otel = std::convert::Infallible;

impl Args {
    /// The configuration file to use: --config, or ./weir.toml if it exists.
    fn config_path(&self) -> Option<PathBuf> {
        match &self.config {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from("weir.toml")).filter(|p| p.exists()),
        }
    }

    /// The configuration file's broker and store URLs, read once. A file that cannot be used
    /// stops a command that acts on the configuration; a command that only looks (status,
    /// list, inspect) warns once and goes on with the defaults.
    fn file_urls(&self) -> anyhow::Result<FileUrls> {
        let Some(path) = self.config_path() else {
            return Ok((None, None));
        };
        let loaded = self.loaded.get_or_init(|| {
            Config::load(&path)
                .map(|c| (c.broker, c.store))
                .map_err(|e| e.to_string())
        });
        match loaded {
            Ok(urls) => Ok(urls.clone()),
            Err(e) if self.only_looks() => {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| {
                    eprintln!("warning: {e}; going on without it (`weir config check` shows what is wrong)")
                });
                Ok((None, None))
            }
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    }

    /// True for the commands that only look at jobs.
    fn only_looks(&self) -> bool {
        matches!(
            self.command,
            Command::Status(_) | Command::List(_) | Command::Inspect(_)
        )
    }

    /// The broker URL: --broker (or WEIR_BROKER), else `broker` in the configuration file,
    /// else the embedded default.
    fn broker_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.broker {
            return Ok(url.clone());
        }
        if let (Some(url), _) = self.file_urls()? {
            return Ok(url);
        }
        Ok(weir::DEFAULT_BROKER_URL.to_owned())
    }

    /// The store URL: --store (or WEIR_STORE), else `store` in the configuration file, else
    /// the broker's URL if the broker is embedded (its file holds the workflow tables), or a
    /// memory store beside the memory broker.
    fn store_url(&self) -> anyhow::Result<Option<String>> {
        if let Some(url) = &self.store {
            return Ok(Some(url.clone()));
        }
        if let (_, Some(url)) = self.file_urls()? {
            return Ok(Some(url));
        }
        let broker = self.broker_url()?;
        Ok(match broker.as_str() {
            b if b.starts_with("sqlite:") => Some(broker),
            // In-process only, like the broker itself.
            "memory:" | "memory://" => Some("memory:".to_owned()),
            _ => None,
        })
    }

    /// The workflow store, if one is configured or implied.
    async fn store(&self) -> anyhow::Result<Option<Arc<dyn StateStore>>> {
        let Some(url) = self.store_url()? else {
            return Ok(None);
        };
        let store = weir::open_store(&url)
            .await
            .with_context(|| format!("opening store {}", weir::redact_url(&url)))?;
        Ok(Some(store))
    }

    /// The workflow store, or an error saying how to configure one.
    async fn require_store(&self) -> anyhow::Result<Arc<dyn StateStore>> {
        self.store().await?.context(
            "workflows need a state store: give --store postgres://… (or sqlite:PATH), WEIR_STORE, or `store` in weir.toml",
        )
    }

    /// The broker, for a command that reads or changes jobs already there (status, list,
    /// inspect, retry, cancel, purge): an embedded file that does not exist is an error that
    /// names it, rather than a new empty file (only serve, enqueue and workflow submit
    /// create one).
    fn open_existing(&self) -> anyhow::Result<Arc<dyn Broker>> {
        let url = self.broker_url()?;
        if url.starts_with("sqlite:") {
            let opts = weir::SqliteOptions::from_url(&url)?;
            if !opts.path().exists() {
                anyhow::bail!(
                    "{}: no such file; `weir serve`, `weir enqueue` or `weir workflow submit` create it (check --broker or the working directory)",
                    opts.path().display()
                );
            }
        }
        self.open()
    }

    /// RabbitMQ as its own type, for what only it offers (replaying and purging dead
    /// letters); `None` for any other broker. Gives up connecting after 3 s, as every
    /// one-shot command does.
    fn amqp(&self) -> anyhow::Result<Option<weir::AmqpBroker>> {
        let url = self.broker_url()?;
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Ok(None);
        }
        let mut opts = weir::AmqpOptions::from_url(&url)
            .with_context(|| format!("opening broker {}", weir::redact_url(&url)))?;
        opts.connect_timeout = Duration::from_secs(3);
        Ok(Some(weir::AmqpBroker::with_options(opts)))
    }

    fn open(&self) -> anyhow::Result<Arc<dyn Broker>> {
        let url = self.broker_url()?;
        let one_shot = !matches!(
            self.command,
            Command::Serve(_) | Command::Bench(_) | Command::Http(_)
        );
        if one_shot && (url == "memory:" || url == "memory://") {
            anyhow::bail!(
                "`memory:` keeps jobs inside one process, so a one-shot command would lose them at exit; use it with `weir serve` (or in the library), or use `sqlite:PATH`"
            );
        }
        if one_shot && (url.starts_with("amqp://") || url.starts_with("amqps://")) {
            // A one-shot command fails fast: a worker keeps trying (30 s per attempt to
            // connect, then again), a person at a prompt wants the error in seconds.
            let mut opts = weir::AmqpOptions::from_url(&url)
                .with_context(|| format!("opening broker {}", weir::redact_url(&url)))?;
            opts.connect_timeout = Duration::from_secs(3);
            return Ok(Arc::new(weir::AmqpBroker::with_options(opts)));
        }
        weir::open_broker(&url)
            .with_context(|| format!("opening broker {}", weir::redact_url(&url)))
    }
}

pub(crate) fn main() -> ExitCode {
    let args = Args::parse();
    // lapin logs every connection error itself, and weir reports them in its own words:
    // lapin's lines reach the user only when asked for (`--log lapin=warn`).
    let default_log = match args.command {
        Command::Serve(_) | Command::Http(_) => "info,lapin=off",
        _ => "warn,lapin=off",
    };
    // Spans are exported from where jobs run (`serve`, `bench`); a one-shot command runs none,
    // and an OTEL_* setting it cannot follow must not stop it.
    let export = matches!(args.command, Command::Serve(_) | Command::Bench(_));
    let (log, otel) = match init_logging(args.log.as_deref().unwrap_or(default_log), export) {
        Ok(l) => l,
        Err(e) => {
            // A setting weir cannot follow is a usage error, said before anything runs.
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(args, log));
    drop(rt);
    #[cfg(feature = "otel")]
    if let Some(o) = otel {
        o.shutdown();
    }
    #[cfg(not(feature = "otel"))]
    let _ = otel;
    match result {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing more to say, as Unix
        // tools do.
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, log: Option<LogHandle>) -> anyhow::Result<ExitCode> {
    if let Some(path) = args.config.as_ref().filter(|p| !p.exists()) {
        // Named on purpose (--config or WEIR_CONFIG) but not there: say so, whatever the
        // command, rather than run without it.
        anyhow::bail!(
            "cannot read {}: no such file (given by --config or WEIR_CONFIG)",
            path.display()
        );
    }
    match &args.command {
        Command::Serve(a) => serve::run(&args, a, log).await,
        Command::Config(ConfigCommand::Check { file }) => {
            let c = Config::load(file)?;
            out!(
                "{}: ok ({} queues, {} retry policies)",
                file.display(),
                c.queues.len(),
                c.retry.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Enqueue(a) => enqueue::run(&args, a).await,
        Command::Status(a) => jobs::status(&args, a).await,
        Command::Inspect(a) => jobs::inspect(&args, a).await,
        Command::Workflow(c) => workflow::run(&args, c).await,
        Command::List(a) => jobs::list(&args, a).await,
        Command::Retry(a) => jobs::retry(&args, a).await,
        Command::Cancel(a) => jobs::cancel(&args, a).await,
        Command::Purge(a) => jobs::purge(&args, a).await,
        Command::Demo(a) => demo::run(&args, a).await,
        Command::Bench(a) => bench::run(&args, a).await,
        Command::Http(a) => http::run(&args, a).await,
    }
}
