//! Live configuration: `weir.toml` is watched (and re-read on SIGHUP). A change is parsed and
//! validated first, then swapped in atomically and announced to subscribers. An invalid file is
//! refused whole: the running configuration stays, the error (file, line, column, what is
//! wrong) is logged, and [`LiveConfig::failures`] counts it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, ConfigError};

/// How long file events are gathered before one reload (editors write a file in bursts).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The configuration in force, and how to follow its changes.
pub struct LiveConfig {
    path: PathBuf,
    current: Arc<ArcSwap<Config>>,
    tx: watch::Sender<Arc<Config>>,
    failures: AtomicU64,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig")
            .field("path", &self.path)
            .field("failures", &self.failures())
            .finish_non_exhaustive()
    }
}

impl LiveConfig {
    /// Loads the file; it must be valid to start with.
    pub fn load(path: impl Into<PathBuf>) -> Result<Arc<Self>, ConfigError> {
        let path = path.into();
        let config = Arc::new(Config::load(&path)?);
        let (tx, _) = watch::channel(config.clone());
        Ok(Arc::new(LiveConfig {
            path,
            current: Arc::new(ArcSwap::new(config)),
            tx,
            failures: AtomicU64::new(0),
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// The shared cell the configuration in force lives in, for readers on a hot path (one
    /// atomic load per read); for example [`crate::builtins::register_live`].
    pub fn source(&self) -> Arc<ArcSwap<Config>> {
        self.current.clone()
    }

    /// A receiver that sees every configuration swapped in from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.tx.subscribe()
    }

    /// How many reloads were refused because the file was invalid.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Reads the file again. `Ok(true)` if a different, valid configuration was swapped in;
    /// `Ok(false)` if nothing changed; `Err` if the file is invalid (the running configuration
    /// stays, and the failure is counted).
    pub fn reload(&self) -> Result<bool, ConfigError> {
        match Config::load(&self.path) {
            Ok(new) => {
                if *self.current.load_full() == new {
                    return Ok(false);
                }
                let new = Arc::new(new);
                self.current.store(new.clone());
                self.tx.send_replace(new);
                Ok(true)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn reload_and_log(&self, why: &str) {
        let result = self.reload();
        #[cfg(feature = "http-api")]
        {
            let label = match &result {
                Ok(true) => "applied",
                Ok(false) => "unchanged",
                Err(_) => "rejected",
            };
            metrics::counter!("weir_config_reloads_total", "result" => label).increment(1);
        }
        match result {
            Ok(true) => tracing::info!(path = %self.path.display(), why, "configuration reloaded"),
            Ok(false) => {
                tracing::debug!(path = %self.path.display(), why, "configuration unchanged")
            }
            Err(e) => tracing::error!(
                error = %e,
                failures = self.failures(),
                "configuration refused; the running configuration stays"
            ),
        }
    }

    /// Follows the file until `stop` completes: reloads after it changes (debounced) and on
    /// SIGHUP. The caller runs this future (for example with `tokio::spawn`); nothing is
    /// spawned behind its back except the file watcher's own thread, which ends with it.
    ///
    /// Cancel safety: dropping the future stops following the file; the configuration in force stays.
    pub async fn watch(
        self: Arc<Self>,
        stop: impl Future<Output = ()>,
    ) -> Result<(), notify::Error> {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let name = self.path.file_name().map(|n| n.to_owned());
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    let ours = ev
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_owned()) == name);
                    if ours && !ev.kind.is_access() {
                        // Full means a reload is already due: this event is covered by it.
                        let _ = tx.try_send(());
                    }
                }
            })?;
        // Watch the directory: editors often replace the file rather than write to it.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                Some(()) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    self.reload_and_log("file changed");
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.reload_and_log("SIGHUP");
                }
            }
        }
    }
}
