//! [`PgOptions`]: where the store connects, parsed from a URL.

use std::path::PathBuf;

use tokio_postgres_rustls::MakeRustlsConnect;
use weir_core::InvalidUrl;

use crate::tls::{client_config, Verify};

/// Where to connect: a libpq-style URL (`postgres://user@host:port/db`), plus weir's own
/// optional `schema=NAME` query parameter, which puts the tables in that schema (created if
/// missing) instead of the connection's default one.
///
/// TLS follows libpq: `sslmode=disable|prefer|require|verify-ca|verify-full` (default
/// `prefer`: encrypted when the server offers it) and `sslrootcert=PATH` (PEM roots, needed
/// by `verify-ca` and `verify-full`; with `require`, the chain is then verified too). See
/// the `tls` module's table for what each mode checks.
#[derive(Clone)]
pub struct PgOptions {
    /// The URL `postgres` is given: weir's parameters taken out, `verify-*` as `require`.
    pub(crate) url: String,
    pub(crate) schema: Option<String>,
    /// `None` for `sslmode=disable`.
    pub(crate) tls: Option<MakeRustlsConnect>,
    /// What the server certificate is checked against (for `Debug`).
    verify: Option<Verify>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &weir_core::redact_url(&self.url))
            .field("schema", &self.schema)
            .field("verify", &self.verify)
            .finish()
    }
}

impl PgOptions {
    /// Parses `postgres://…` or `postgresql://…`; `schema=` may be one of the query parameters.
    ///
    /// ```
    /// let o = weir_postgres::PgOptions::from_url("postgres://u@h/db?schema=jobs").unwrap();
    /// assert_eq!(o.schema(), Some("jobs"));
    /// assert!(weir_postgres::PgOptions::from_url("mysql://h").is_err());
    /// assert!(weir_postgres::PgOptions::from_url("postgres://h/db?schema=a;b").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, InvalidUrl> {
        let bad = |why: String| InvalidUrl::new(url, why);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad(
                "not a PostgreSQL URL (expected postgres://user@host/db)".into(),
            ));
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut schema = None;
        let mut mode = "prefer".to_owned();
        let mut root: Option<PathBuf> = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "schema" => {
                    if value.is_empty()
                        || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(bad(format!(
                            "schema `{value}` must be letters, digits and `_`"
                        )));
                    }
                    schema = Some(value.to_owned());
                }
                "sslmode" => mode = value.to_owned(),
                "sslrootcert" => root = Some(PathBuf::from(percent_decode(value))),
                _ => rest.push(pair.to_owned()),
            }
        }
        let verify = match (mode.as_str(), root) {
            ("disable", _) => None,
            ("prefer" | "require", None) => Some(Verify::Nothing),
            ("prefer" | "require", Some(r)) | ("verify-ca", Some(r)) => Some(Verify::Chain(r)),
            ("verify-full", Some(r)) => Some(Verify::Full(r)),
            ("verify-ca" | "verify-full", None) => {
                return Err(bad(format!(
                    "sslmode={mode} verifies the server against roots: give sslrootcert=PATH (a PEM file)"
                )))
            }
            (other, _) => {
                return Err(bad(format!(
                    "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                )))
            }
        };
        // `postgres` knows disable, prefer and require; what is verified is the connector's.
        let pg_mode = match mode.as_str() {
            "verify-ca" | "verify-full" => "require",
            m => m,
        };
        rest.push(format!("sslmode={pg_mode}"));
        let url = format!("{base}?{}", rest.join("&"));
        url.parse::<postgres::Config>()
            .map_err(|e| bad(e.to_string()))?;
        let tls = match &verify {
            None => None,
            Some(v) => Some(MakeRustlsConnect::new(client_config(v).map_err(bad)?)),
        };
        Ok(PgOptions {
            url,
            schema,
            tls,
            verify,
        })
    }

    /// The schema the tables live in, if not the default.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }
}

/// `%XX` escapes decoded (a path in a URL query may carry them); anything else kept.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_as_libpq_reads_it() {
        let o = |u: &str| PgOptions::from_url(u);
        assert_eq!(o("postgres://h/db").unwrap().verify, Some(Verify::Nothing));
        assert!(o("postgres://h/db?sslmode=disable").unwrap().tls.is_none());
        assert_eq!(
            o("postgres://h/db?sslmode=require").unwrap().verify,
            Some(Verify::Nothing)
        );
        let e = o("postgres://h/db?sslmode=verify-full")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslrootcert"), "{e}");
        let e = o("postgres://h/db?sslmode=strict").unwrap_err().to_string();
        assert!(e.contains("`strict`") && e.contains("verify-full"), "{e}");
        let e = o("postgres://h/db?sslmode=verify-ca&sslrootcert=/no/such.pem")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such.pem"), "{e}");
        // `postgres` is given a mode it knows; weir's own parameters are taken out.
        let u = o("postgres://u:pw@h/db?schema=s&sslmode=require&application_name=w").unwrap();
        assert_eq!(
            u.url,
            "postgres://u:pw@h/db?application_name=w&sslmode=require"
        );
        assert!(!format!("{u:?}").contains("pw"), "{u:?}");
        assert_eq!(percent_decode("%2Fetc%2fa b"), "/etc/a b");
    }
}
