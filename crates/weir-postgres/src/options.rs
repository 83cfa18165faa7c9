//! [`PgOptions`]: where the store connects, parsed from a URL.

use weir_core::InvalidUrl;

/// Where to connect: a libpq-style URL (`postgres://user@host:port/db`), plus weir's own
/// optional `schema=NAME` query parameter, which puts the tables in that schema (created if
/// missing) instead of the connection's default one.
#[derive(Clone, Debug)]
pub struct PgOptions {
    pub(crate) url: String,
    pub(crate) schema: Option<String>,
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
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.strip_prefix("schema=") {
                Some(s) => {
                    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(bad(format!("schema `{s}` must be letters, digits and `_`")));
                    }
                    schema = Some(s.to_owned());
                }
                None => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        url.parse::<postgres::Config>()
            .map_err(|e| bad(e.to_string()))?;
        Ok(PgOptions { url, schema })
    }

    /// The schema the tables live in, if not the default.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }
}
