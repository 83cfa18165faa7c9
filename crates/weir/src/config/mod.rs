//! The `weir.toml` configuration file.
//!
//! ```toml
//! log = "info"                                 # log filter (RUST_LOG syntax)
//!
//! [shell]
//! allow = ["echo", "/usr/local/bin/resize"]   # commands the `shell` kind may run
//! env = ["AWS_REGION"]                         # variables passed on (besides PATH, HOME, LANG, LC_ALL, TZ)
//! dir = "/var/lib/weir/work"                   # working directory (default: the temp dir)
//! timeout = "10m"                              # the longest a command runs (default 10m)
//! max_output = 1048576                         # bytes kept of stdout and of stderr (default 1 MiB)
//!
//! [http]
//! timeout = "30s"                              # per-request timeout of the `http` kind
//! max_body = 10485760                          # bytes of a response read at most (default 10 MiB)
//! max_redirects = 5                            # redirects followed (default 5)
//! max_retry_after = "1h"                       # longest Retry-After honoured (default 1h)
//! deny = ["169.254.0.0/16", "fe80::/10", "10.0.0.0/8"]  # addresses never reached (default: link-local)
//!
//! [queues.default]                             # one table per queue `weir serve` runs
//! workers = 4                                  # pool size (the minimum when autoscaling)
//! max_workers = 32                             # set to autoscale between workers and this
//! cooldown = "5m"                              # autoscaler: how long low before a shrink
//! low_utilisation = 0.4                        # autoscaler: the low mark
//! high_utilisation = 0.8                       # autoscaler: the high mark
//!
//! [limits.tenant]                              # jobs declaring key `tenant:ID` share it
//! concurrency = 3                              # at most 3 at once per tenant
//! rate = "100/s"                               # at most 100 per second per tenant
//!
//! [kinds.http]                                 # limit keys of a kind (read at start)
//! limits = ["api", "host:{host}"]              # `{field}`: that field of the payload
//!
//! [retry.http]                                 # backoff of one task kind
//! base = "1s"
//! factor = 2.0
//! cap = "10m"
//! jitter = "full"                              # none | full | equal | decorrelated
//! ```
//!
//! Every key is optional. Unknown keys are errors, so a typo never silently does nothing.
//! Everything here except the set of queues is applied live when the file changes (see
//! [`crate::reload`]); an invalid file is refused whole and the running configuration stays.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod durations;
mod kinds;

use durations::opt_duration;
pub use kinds::{HttpConfig, ShellConfig};
use weir_runtime::AutoscaleConfig;
use weir_sync::{Backoff, Jitter, LimitSpec, Rate};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The broker URL (`sqlite:…`, `amqp://…`), used when neither `--broker` nor
    /// `WEIR_BROKER` gives one. Read when a command starts, not live. By default, none
    /// (`sqlite:./weir.db`).
    #[serde(default)]
    pub broker: Option<String>,
    /// The workflow state store URL (`sqlite:…`, `postgres://…`), used when neither
    /// `--store` nor `WEIR_STORE` gives one. By default, none: the embedded broker's own
    /// file, and no store with RabbitMQ.
    #[serde(default)]
    pub store: Option<String>,
    /// The log filter, e.g. `info` or `weir=debug`. By default, none (the command line's).
    #[serde(default)]
    pub log: Option<String>,
    /// The `shell` kind.
    #[serde(default)]
    pub shell: ShellConfig,
    /// The `http` kind.
    #[serde(default)]
    pub http: HttpConfig,
    /// Queues by name. By default, none (`weir serve` then serves `--queues`).
    #[serde(default)]
    pub queues: BTreeMap<String, Spanned<QueueConfig>>,
    /// Retry backoff by task kind. By default, none (each kind's registered backoff).
    #[serde(default)]
    pub retry: BTreeMap<String, Spanned<RetryConfig>>,
    /// Named limits (a job's key `tenant:42` falls under the limit `tenant`). By default,
    /// none.
    #[serde(default)]
    pub limits: BTreeMap<String, Spanned<LimitConfig>>,
    /// Settings of task kinds by name. By default, none.
    #[serde(default)]
    pub kinds: BTreeMap<String, Spanned<KindConfig>>,
}

/// Settings of one task kind.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KindConfig {
    /// Limit keys each job of the kind needs. `{field}` is replaced by that top-level field of
    /// the job's JSON payload (a missing field becomes empty), e.g. `"tenant:{tenant}"`.
    /// Read when `weir serve` starts. By default, none.
    #[serde(default)]
    pub limits: Vec<String>,
}

impl KindConfig {
    /// The keys for one payload.
    pub fn keys(&self, payload: &serde_json::Value) -> Vec<String> {
        self.limits.iter().map(|t| render(t, payload)).collect()
    }
}

/// Replaces each `{field}` in `template` with that field of `payload`.
fn render(template: &str, payload: &serde_json::Value) -> String {
    let mut out = String::with_capacity(template.len() + 8);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let field = &rest[open + 1..open + close];
        match payload.get(field) {
            Some(serde_json::Value::String(s)) => out.push_str(s),
            Some(serde_json::Value::Null) | None => {}
            Some(v) => out.push_str(&v.to_string()),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

fn check_template(t: &str) -> Result<(), String> {
    let name = t.split(':').next().unwrap_or(t);
    if name.is_empty() || name.contains('{') || name.contains('}') {
        return Err(format!(
            "limit key `{t}` must start with a limit name (e.g. `tenant:{{id}}`)"
        ));
    }
    let (mut depth, mut ok) = (0i32, true);
    for c in t.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        ok &= (0..=1).contains(&depth);
    }
    if !ok || depth != 0 {
        return Err(format!("limit key `{t}` has unbalanced braces"));
    }
    Ok(())
}

/// One named limit: a concurrency cap and/or a rate, per key.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// At most this many jobs at once, per key. By default, no cap.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// At most this rate, per key, e.g. `"100/s"`, `"20/m"`. By default, none.
    #[serde(default)]
    pub rate: Option<String>,
}

/// A setting of the file that is out of range; the message says which and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(String);

impl LimitConfig {
    /// The limit it describes.
    pub fn spec(&self) -> Result<LimitSpec, InvalidSetting> {
        if self.concurrency == Some(0) {
            return Err(InvalidSetting("concurrency must be at least 1".into()));
        }
        let rate = self
            .rate
            .as_deref()
            .map(str::parse::<Rate>)
            .transpose()
            .map_err(|e| InvalidSetting(e.to_string()))?;
        Ok(LimitSpec {
            concurrency: self.concurrency,
            rate,
        })
    }
}

/// One queue's pool and autoscaler.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Pool size; the minimum when autoscaling. By default, 16.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Autoscale between `workers` and this. By default, none: a fixed pool.
    #[serde(default)]
    pub max_workers: Option<usize>,
    /// Autoscaler cooldown. By default, 5 minutes.
    #[serde(default, with = "opt_duration")]
    pub cooldown: Option<Duration>,
    /// Autoscaler low mark. By default, 0.4.
    #[serde(default)]
    pub low_utilisation: Option<f64>,
    /// Autoscaler high mark. By default, 0.8.
    #[serde(default)]
    pub high_utilisation: Option<f64>,
}

fn default_workers() -> usize {
    16
}

impl QueueConfig {
    /// The autoscaler settings, if the queue autoscales.
    pub fn autoscale(&self) -> Option<AutoscaleConfig> {
        let max = self.max_workers?;
        let d = AutoscaleConfig::default();
        Some(AutoscaleConfig {
            min_workers: self.workers,
            max_workers: max,
            cooldown: self.cooldown.unwrap_or(d.cooldown),
            low_utilisation: self.low_utilisation.unwrap_or(d.low_utilisation),
            high_utilisation: self.high_utilisation.unwrap_or(d.high_utilisation),
            ..d
        })
    }
}

/// One task kind's retry backoff.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// The first delay. By default, 1 s.
    #[serde(default, with = "opt_duration")]
    pub base: Option<Duration>,
    /// Growth per attempt. By default, 2.
    #[serde(default)]
    pub factor: Option<f64>,
    /// The largest delay. By default, 1 h.
    #[serde(default, with = "opt_duration")]
    pub cap: Option<Duration>,
    /// `none`, `full`, `equal` or `decorrelated`. By default, `full`.
    #[serde(default)]
    pub jitter: Option<String>,
}

impl RetryConfig {
    /// The backoff it describes.
    pub fn backoff(&self) -> Result<Backoff, InvalidSetting> {
        let d = Backoff::default();
        let jitter = match self.jitter.as_deref() {
            None | Some("full") => Jitter::Full,
            Some("none") => Jitter::None,
            Some("equal") => Jitter::Equal,
            Some("decorrelated") => Jitter::Decorrelated,
            Some(other) => {
                return Err(InvalidSetting(format!(
                    "unknown jitter `{other}` (expected none, full, equal or decorrelated)"
                )))
            }
        };
        Backoff::new(
            self.base.unwrap_or(d.base()),
            self.factor.unwrap_or(2.0),
            self.cap.unwrap_or(d.cap()),
        )
        .map(|b| b.jitter(jitter))
        .map_err(|e| InvalidSetting(e.to_string()))
    }
}

/// The file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// It could not be read.
    // The reason is in the message, not also a `source`: printed as a chain, it would show
    // twice.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// It is not valid: the message gives line, column and what is wrong.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Parses and validates `text` as read from `path` (used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let config: Config = toml::from_str(text)
            .map_err(|e| invalid(e.span().map_or(0, |s| s.start), e.message().to_owned()))?;
        for (name, q) in &config.queues {
            let at = q.span().start;
            if name.is_empty() {
                return Err(invalid(at, "queue names must not be empty".into()));
            }
            if q.get_ref().workers == 0 {
                return Err(invalid(
                    at,
                    format!("queues.{name}: workers must be at least 1"),
                ));
            }
            if let Some(a) = q.get_ref().autoscale() {
                a.validate()
                    .map_err(|e| invalid(at, format!("queues.{name}: {e}")))?;
            }
        }
        for (kind, r) in &config.retry {
            r.get_ref()
                .backoff()
                .map_err(|e| invalid(r.span().start, format!("retry.{kind}: {e}")))?;
        }
        for (name, l) in &config.limits {
            if name.is_empty() || name.contains(':') {
                return Err(invalid(
                    l.span().start,
                    format!("limits.{name}: a limit name must be non-empty and without `:`"),
                ));
            }
            l.get_ref()
                .spec()
                .map_err(|e| invalid(l.span().start, format!("limits.{name}: {e}")))?;
        }
        for (kind, k) in &config.kinds {
            for t in &k.get_ref().limits {
                check_template(t)
                    .map_err(|e| invalid(k.span().start, format!("kinds.{kind}: {e}")))?;
            }
        }
        if let Some(log) = &config.log {
            tracing_subscriber::EnvFilter::try_new(log)
                .map_err(|e| invalid(0, format!("log: `{log}` is not a log filter: {e}")))?;
        }
        Ok(config)
    }

    /// Backoffs by task kind (validated by [`Config::parse`]).
    pub fn backoffs(&self) -> HashMap<String, Backoff> {
        self.retry
            .iter()
            .filter_map(|(k, r)| r.get_ref().backoff().ok().map(|b| (k.clone(), b)))
            .collect()
    }

    /// Named limits (validated by [`Config::parse`]).
    pub fn limits(&self) -> HashMap<String, LimitSpec> {
        self.limits
            .iter()
            .filter_map(|(k, l)| l.get_ref().spec().ok().map(|s| (k.clone(), s)))
            .collect()
    }

    /// Autoscaler settings by queue, for the queues that autoscale.
    pub fn autoscale(&self) -> HashMap<String, AutoscaleConfig> {
        self.queues
            .iter()
            .filter_map(|(q, c)| c.get_ref().autoscale().map(|a| (q.clone(), a)))
            .collect()
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        Self::parse(path, &text)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let c = Config::parse(Path::new("w.toml"), "[shell]\nallow = [\"echo\"]\n").unwrap();
        assert_eq!(c.shell.allow, vec!["echo"]);
        assert_eq!(c.http.timeout, Duration::from_secs(30));
        let c = Config::parse(Path::new("w.toml"), "[http]\ntimeout = \"2s\"\n").unwrap();
        assert_eq!(c.http.timeout, Duration::from_secs(2));
        assert_eq!(
            Config::parse(Path::new("w.toml"), "").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn queues_and_retry_policies() {
        let text = "[queues.default]\nworkers = 2\nmax_workers = 10\ncooldown = \"1m\"\n\n[queues.mail]\nworkers = 3\n\n[retry.http]\nbase = \"100ms\"\ncap = \"5s\"\njitter = \"equal\"\n";
        let c = Config::parse(Path::new("w.toml"), text).unwrap();
        let a = c.autoscale();
        assert_eq!(a["default"].min_workers, 2);
        assert_eq!(a["default"].max_workers, 10);
        assert_eq!(a["default"].cooldown, Duration::from_secs(60));
        assert!(!a.contains_key("mail"));
        let b = c.backoffs()["http"];
        assert_eq!(
            (b.base(), b.cap()),
            (Duration::from_millis(100), Duration::from_secs(5))
        );
    }

    #[test]
    fn kind_limit_templates() {
        let text = "[kinds.http]\nlimits = [\"api\", \"host:{host}\", \"tenant:{t}\"]\n";
        let c = Config::parse(Path::new("w.toml"), text).unwrap();
        let k = c.kinds["http"].get_ref();
        let keys = k.keys(&serde_json::json!({"host": "example.com", "t": 42}));
        assert_eq!(keys, vec!["api", "host:example.com", "tenant:42"]);
        assert_eq!(k.keys(&serde_json::json!({}))[1], "host:");
        let e = Config::parse(Path::new("w.toml"), "[kinds.x]\nlimits = [\"{id}\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kinds.x: limit key `{id}` must start with a limit name"),
            "{e}"
        );
        let e = Config::parse(Path::new("w.toml"), "[kinds.x]\nlimits = [\"t:{id\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unbalanced braces"), "{e}");
    }

    #[test]
    fn limits() {
        let text =
            "[limits.tenant]\nconcurrency = 3\nrate = \"100/s\"\n\n[limits.db]\nconcurrency = 5\n";
        let c = Config::parse(Path::new("w.toml"), text).unwrap();
        let l = c.limits();
        assert_eq!(l["tenant"].concurrency, Some(3));
        assert_eq!(l["tenant"].rate.unwrap().count, 100);
        assert_eq!(l["db"].rate, None);
        let e = Config::parse(Path::new("w.toml"), "[limits.api]\nrate = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("w.toml:1:1: limits.api: `lots` is not a rate"),
            "{e}"
        );
        let e = Config::parse(Path::new("w.toml"), "[limits.db]\nconcurrency = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("concurrency must be at least 1"), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_their_table() {
        let text = "log = \"info\"\n\n[queues.default]\nworkers = 8\nmax_workers = 2\n";
        let e = Config::parse(Path::new("w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("w.toml:3:1: queues.default: min_workers (8) must not exceed"),
            "{e}"
        );
        let text = "[retry.http]\nbase = \"0s\"\n";
        let e = Config::parse(Path::new("w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("w.toml:1:1: retry.http: backoff base must be greater than zero"),
            "{e}"
        );
        let text = "[retry.http]\njitter = \"lots\"\n";
        let e = Config::parse(Path::new("w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown jitter `lots`"), "{e}");
        let text = "[queues.q]\nworkers = 0\n";
        assert!(Config::parse(Path::new("w.toml"), text)
            .unwrap_err()
            .to_string()
            .contains("workers must be at least 1"));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = Config::parse(
            Path::new("w.toml"),
            "[shell]\nallow = [\"echo\"]\nalow = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("w.toml:3:1: unknown field `alow`"), "{e}");
        let e = Config::parse(Path::new("w.toml"), "[http]\ntimeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("w.toml:2:11:"), "{e}");
        assert!(e.contains("`soon` is not a duration"), "{e}");
        let e = Config::parse(Path::new("w.toml"), "[http]\ntimeout = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`0s` is zero"), "{e}");
        let e = Config::parse(
            Path::new("w.toml"),
            "[queues.q]\nmax_workers = 4\ncooldown = \"300000000y\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("longer than 100 years"), "{e}");
    }
}
