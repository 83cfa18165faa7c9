//! The store's one connection: prepared statements, reconnection, and the transaction
//! control its [`Batcher`](weir_workflow::store::Batcher) drives.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use weir_core::BrokerError;
use weir_workflow::store::{BatchConn, BatchError};

use crate::options::PgOptions;

/// The store's connection, reconnected before a batch when it was lost, with its prepared
/// statements: a query given as text costs the postgres client a prepare round trip each
/// time, which doubled the cost of advancing a workflow.
pub(crate) struct Conn {
    pub(crate) opts: PgOptions,
    pub(crate) client: Option<Client>,
    pub(crate) prepared: HashMap<&'static str, Statement>,
}

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Conn {
    pub(crate) fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("ensure() connects before every batch")
    }

    pub(crate) fn prep(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(st) = self.prepared.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client().prepare(sql)?;
        self.prepared.insert(sql, st.clone());
        Ok(st)
    }

    pub(crate) fn query(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> Result<Vec<Row>, postgres::Error> {
        let st = self.prep(sql)?;
        self.client().query(&st, p)
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        let st = self.prep(sql)?;
        self.client().query_opt(&st, p)
    }

    pub(crate) fn query_one(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> Result<Row, postgres::Error> {
        let st = self.prep(sql)?;
        self.client().query_one(&st, p)
    }

    pub(crate) fn execute(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> Result<u64, postgres::Error> {
        let st = self.prep(sql)?;
        self.client().execute(&st, p)
    }
}

impl BatchConn for Conn {
    fn control(&mut self, sql: &str) -> Result<(), BatchError> {
        let r = self
            .client()
            .batch_execute(sql)
            .map_err(|e| BatchError::new(db(e)));
        if self.client().is_closed() {
            self.client = None;
        }
        r
    }

    fn ensure(&mut self) -> Result<(), BatchError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.prepared.clear();
            self.client = Some(open(&self.opts).map_err(BatchError::new)?);
        }
        Ok(())
    }
}

/// The server's own message when there is one (`postgres::Error`'s display is only "db
/// error" then).
pub(crate) fn db(e: postgres::Error) -> BrokerError {
    match e.as_db_error() {
        Some(d) => BrokerError::Unavailable(format!(
            "postgres: {} ({}): {}",
            d.message(),
            d.code().code(),
            d.detail().unwrap_or("")
        )),
        None => {
            // The cause (a refused connection, a certificate not valid for the host) is in
            // the source chain, not in the top error's text.
            let mut msg = format!("postgres: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            BrokerError::Unavailable(msg)
        }
    }
}

/// A new connection, with TLS as `sslmode` says (see `tls.rs`).
fn connect(opts: &PgOptions) -> Result<Client, BrokerError> {
    match &opts.tls {
        Some(tls) => Client::connect(&opts.url, tls.clone()),
        None => Client::connect(&opts.url, NoTls),
    }
    .map_err(db)
}

/// A new connection, in the options' schema.
/// The schema (created by [`PgStore::connect`](crate::PgStore::connect)) is the session's.
pub(crate) fn open(opts: &PgOptions) -> Result<Client, BrokerError> {
    let mut c = connect(opts)?;
    if let Some(s) = &opts.schema {
        // The name was checked to be [A-Za-z0-9_]+ when parsed.
        c.batch_execute(&format!("SET search_path TO \"{s}\""))
            .map_err(db)?;
    }
    Ok(c)
}

/// A new connection with the store's schema and tables in place: created, under an
/// advisory lock, by the first of many workers starting at once (PostgreSQL's `IF NOT
/// EXISTS` is not safe against a concurrent creation: the loser fails on a unique index).
pub(crate) fn open_and_migrate(opts: &PgOptions, tables: &str) -> Result<Client, BrokerError> {
    let mut client = connect(opts)?;
    let mut tx = client.transaction().map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock(7746765570)", &[])
        .map_err(db)?;
    if let Some(s) = &opts.schema {
        // A session setting made in a transaction that commits stays for the session.
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{s}\"; SET search_path TO \"{s}\""
        ))
        .map_err(db)?;
    }
    tx.batch_execute(tables).map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(client)
}
