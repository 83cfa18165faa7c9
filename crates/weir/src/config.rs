//! The `weir.toml` configuration file.
//!
//! ```toml
//! [shell]
//! allow = ["echo", "/usr/local/bin/resize"]   # commands the `shell` kind may run
//!
//! [http]
//! timeout = "30s"                              # per-request timeout of the `http` kind
//! ```
//!
//! Every key is optional. Unknown keys are errors, so a typo never silently does nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `shell` kind.
    #[serde(default)]
    pub shell: ShellConfig,
    /// The `http` kind.
    #[serde(default)]
    pub http: HttpConfig,
}

/// Settings of the `shell` built-in kind.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// Commands that `shell` jobs may run, matched exactly against the job's `cmd`. By
    /// default, none: `shell` jobs fail permanently until a command is allowed.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// Settings of the `http` built-in kind.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Per-request timeout. By default, 30 s.
    #[serde(default = "default_http_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout: default_http_timeout(),
        }
    }
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(30)
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a duration ({e}); e.g. \"30s\""))
        })
    }
}

/// The file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
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
    /// Parses `text` as read from `path` (used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
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
    }
}
