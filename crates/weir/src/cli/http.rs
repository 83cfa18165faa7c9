//! The HTTP API from the command line: `weir http ADDR` (the API alone, no workers) and the
//! options `weir serve --http ADDR` shares with it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args as ClapArgs;
use weir::api::{check_bind, Api, ApiConfig};
use weir::{Broker, StateStore};

use super::Args;

/// The API's tokens, from the environment (never the command line, where `ps` shows them).
#[derive(ClapArgs, Debug, Clone)]
pub(crate) struct TokenArgs {
    /// The bearer token that may read (every GET). Only from the environment.
    #[arg(
        long = "read-token",
        env = "WEIR_API_READ_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    read_token: Option<String>,
    /// The bearer token that may also change state. Only from the environment.
    #[arg(
        long = "admin-token",
        env = "WEIR_API_ADMIN_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    admin_token: Option<String>,
    /// Also append the API's audit log (every state change asked: who, what, when) to this
    /// file, one JSON line each; `GET /api/v1/audit` then lists its last entries after a
    /// restart too. By default, kept in memory and in the log lines only.
    #[arg(long = "audit-log", env = "WEIR_API_AUDIT_LOG", value_name = "FILE")]
    pub(crate) audit_log: Option<std::path::PathBuf>,
}

/// `api` with the audit log file `tokens` name, if any.
pub(crate) fn with_audit_log(api: Api, tokens: &TokenArgs) -> anyhow::Result<Api> {
    match &tokens.audit_log {
        None => Ok(api),
        Some(path) => api
            .audit_log(path)
            .map_err(|e| anyhow::anyhow!("--audit-log {}: {e}", path.display())),
    }
}

#[derive(ClapArgs, Debug)]
pub(crate) struct HttpArgs {
    /// Where to listen, e.g. 127.0.0.1:9090. Any address but loopback needs a token
    /// (WEIR_API_ADMIN_TOKEN, WEIR_API_READ_TOKEN).
    addr: SocketAddr,
    /// Queues to report on where the broker cannot list them (RabbitMQ), comma-separated.
    /// By default, the configuration's `[queues.*]` (--config, WEIR_CONFIG), else `default`.
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<String>>,
    #[command(flatten)]
    tokens: TokenArgs,
}

/// The API settings from the tokens and the queues served.
pub(crate) fn config(tokens: &TokenArgs, queues: Vec<String>) -> ApiConfig {
    let nonempty = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
    ApiConfig {
        read_token: nonempty(&tokens.read_token),
        admin_token: nonempty(&tokens.admin_token),
        queues,
        ..ApiConfig::default()
    }
}

/// Checks the address before anything starts: an open API on a public address is a usage
/// error (exit 2), said at once rather than after the worker is up.
pub(crate) fn check(addr: SocketAddr, config: &ApiConfig) -> Option<ExitCode> {
    match check_bind(addr, config) {
        Ok(()) => None,
        Err(e) => {
            eprintln!("error: {e}");
            Some(ExitCode::from(2))
        }
    }
}

/// Installs the metrics recorder and wraps `broker` so its calls are measured.
pub(crate) fn metered(
    broker: Arc<dyn Broker>,
) -> anyhow::Result<(Arc<dyn Broker>, weir::api::metrics::MetricsHandle)> {
    let handle = weir::api::metrics::install()?;
    Ok((Arc::new(weir::MeteredBroker::new(broker)), handle))
}

/// `store` with its calls measured (after [`metered`] installed the recorder).
pub(crate) fn metered_store(store: Arc<dyn StateStore>) -> Arc<dyn StateStore> {
    Arc::new(weir::MeteredStore::new(store))
}

/// `weir http ADDR`: the API until SIGINT or SIGTERM.
pub(crate) async fn run(args: &Args, a: &HttpArgs) -> anyhow::Result<ExitCode> {
    let queues = a.queues.clone().unwrap_or_default();
    let config = config(&a.tokens, queues);
    if let Some(code) = check(a.addr, &config) {
        return Ok(code);
    }
    let (broker, handle) = metered(args.open()?)?;
    let mut api = with_audit_log(Api::new(broker, config).metrics(handle), &a.tokens)?;
    if let Some(store) = args.store().await? {
        api = api.store(metered_store(store));
    }
    if let Some(path) = args.config_path() {
        api = api.live_config(weir::reload::LiveConfig::load(path)?);
    }
    api.serve(a.addr, super::signal::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
