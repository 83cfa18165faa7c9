//! Settings of the built-in kinds: `[shell]` and `[http]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::durations::{opt_positive_duration, positive_duration};

/// Settings of the `shell` built-in kind.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// Commands that `shell` jobs may run, matched exactly against the job's `cmd`. By
    /// default, none: `shell` jobs fail permanently until a command is allowed. Allowing a
    /// shell or an interpreter (`sh`, `bash`, `python3`) lets anyone who can enqueue run any
    /// code as the worker's user.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Environment variables passed to commands, besides `PATH`, `HOME`, `LANG`, `LC_ALL` and
    /// `TZ`; every other variable of the worker (its broker and store URLs, credentials) is
    /// withheld. By default, none.
    #[serde(default)]
    pub env: Vec<String>,
    /// The working directory of commands. By default, the system's temporary directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The longest a command may run, whatever its job's own timeout (a shorter job timeout
    /// stops it sooner); then its whole process group is killed and the attempt fails
    /// (retryable). By default, 10 minutes.
    #[serde(default, with = "opt_positive_duration")]
    pub timeout: Option<Duration>,
    /// The most bytes kept of each of stdout and stderr; the rest is read and dropped. By
    /// default, 1 MiB.
    #[serde(default)]
    pub max_output: Option<usize>,
}

/// Settings of the `http` built-in kind.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Per-request timeout, above zero. By default, 30 s.
    #[serde(default = "default_http_timeout", with = "positive_duration")]
    pub timeout: Duration,
    /// The most bytes of a response body read; a larger body fails the attempt
    /// (permanently). By default, 10 MiB.
    #[serde(default = "default_http_max_body")]
    pub max_body: usize,
    /// How many redirects a request follows (0: none). By default, 5. Read when `serve`
    /// starts.
    #[serde(default = "default_http_max_redirects")]
    pub max_redirects: usize,
    /// The longest `Retry-After` honoured; a longer one is cut to this. By default, 1 hour.
    #[serde(default = "default_http_max_retry_after", with = "positive_duration")]
    pub max_retry_after: Duration,
    /// Addresses requests may not reach, as CIDRs (`10.0.0.0/8`, `::1/128`), checked on every
    /// address a host name resolves to and on every redirect. By default, link-local
    /// addresses, where clouds serve instance metadata and credentials (`169.254.0.0/16`,
    /// `fe80::/10`, `fd00:ec2::254/128`). Setting it replaces the default, so keep those in.
    /// Read when `serve` starts. So that it holds, the kind connects directly: it ignores
    /// `HTTP_PROXY`/`HTTPS_PROXY` (a proxy would resolve the names itself).
    #[serde(default = "default_http_deny")]
    pub deny: Vec<ipnet::IpNet>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout: default_http_timeout(),
            max_body: default_http_max_body(),
            max_redirects: default_http_max_redirects(),
            max_retry_after: default_http_max_retry_after(),
            deny: default_http_deny(),
        }
    }
}

fn default_http_max_body() -> usize {
    10 * 1024 * 1024
}

fn default_http_max_redirects() -> usize {
    5
}

fn default_http_max_retry_after() -> Duration {
    Duration::from_secs(3600)
}

fn default_http_deny() -> Vec<ipnet::IpNet> {
    ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"]
        .iter()
        .map(|n| n.parse().expect("a valid CIDR"))
        .collect()
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(30)
}
