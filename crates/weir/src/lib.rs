//! # weir
//!
//! High-concurrency task processing for Rust: define tasks, enqueue them durably, run them in a
//! worker pool with retries (exponential backoff with jitter), leases and heartbeats, and
//! operate it all with the `weir` binary.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use weir::{Client, Registry, Task, TaskContext, TaskError, Worker};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Greet { name: String }
//!
//! impl Task for Greet {
//!     const KIND: &'static str = "greet";
//!     type Output = String;
//!     async fn run(self, _cx: TaskContext) -> Result<String, TaskError> {
//!         Ok(format!("hello, {}", self.name))
//!     }
//! }
//!
//! # async fn run() -> anyhow::Result<()> {
//! let broker = weir::open_broker("sqlite:./weir.db")?;
//! Client::new(broker.clone()).enqueue(&Greet { name: "ada".into() }).await?;
//! let mut registry = Registry::new();
//! registry.register::<Greet>();
//! let worker = Worker::builder(broker, registry).queue("default", 8).build()?;
//! worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```
//!
//! The crates behind the facade: `weir-core` (task model, broker traits), `weir-sync`
//! (backoff), `weir-runtime` (worker), `weir-sqlite` (the embedded durable broker).

pub mod builtins;
pub mod config;
pub mod reload;

use std::sync::Arc;

pub use weir_amqp::{AmqpBroker, AmqpOptions, QueueType};
pub use weir_core::{
    redact_url, transition, Broker, BrokerError, Clock, Delivery, Enqueued, ErrorKind, Event,
    FetchRequest, IllegalTransition, Inspect, Job, JobId, JobState, Lease, ListFilter, ManualClock,
    MemoryBroker, MemoryStore, NewJob, QueueCounts, QueueDepth, QueueStats, SettleOutcome,
    Settlement, StateStore, SystemClock, Task, TaskContext, TaskError, Timestamp, WorkerStatus,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE,
};
pub use weir_postgres::{PgOptions, PgStore};
pub use weir_runtime::{
    decide, settlement_for, AutoscaleConfig, Client, Decision, EnqueueError, Handler, KindOptions,
    Observed, Observer, QueueSpec, Reason, Registry, ScalerState, Tuning, Worker, WorkerBuilder,
    WorkerError, WorkerReport, Workflows,
};
pub use weir_sqlite::{SqliteBroker, SqliteOptions, SqliteStore, Synchronous};

/// Durable workflows: `chain`, `group` and `chord` ([`WorkflowSpec`](workflow::WorkflowSpec)),
/// run by a [`Workflows`] engine over a broker and a [`StateStore`].
pub mod workflow {
    pub use weir_core::workflow::*;
    pub use weir_runtime::Workflows;
}
/// In-process pipelines with backpressure (see [`weir_sync::flow`]).
pub use weir_sync::flow;
pub use weir_sync::{
    Admission, Backoff, BackoffError, ElasticPool, GroupError, GroupMode, Jitter, LimitSpec,
    Limiter, PoolStats, Rate, Rejected, Slot, TaskFailure, TaskGroup,
};

/// The broker URL used when none is given: an embedded file in the working directory.
pub const DEFAULT_BROKER_URL: &str = "sqlite:./weir.db";

/// Opens the broker a URL names:
///
/// - `sqlite:PATH[?sync=full|normal]`: the embedded durable broker (the default);
/// - `amqp://` or `amqps://`: RabbitMQ, shared by many worker processes on many machines (see
///   [`AmqpOptions::from_url`] for weir's query parameters). It connects on first use, inside
///   a tokio runtime;
/// - `memory:`: an in-process broker, gone when the process ends (tests, benchmarks).
///
/// Opening the embedded broker does blocking file I/O.
pub fn open_broker(url: &str) -> Result<Arc<dyn Broker>, BrokerError> {
    if url.starts_with("sqlite:") {
        let opts = SqliteOptions::from_url(url).map_err(BrokerError::Invalid)?;
        return Ok(Arc::new(SqliteBroker::open_with(opts)?));
    }
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        return Ok(Arc::new(AmqpBroker::new(url)?));
    }
    if url == "memory:" || url == "memory://" {
        return Ok(Arc::new(MemoryBroker::new()));
    }
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    Err(BrokerError::Invalid(format!(
        "unsupported broker URL `{url}`: scheme `{scheme}` is not one of sqlite:, amqp:, amqps:, memory:"
    )))
}

/// Opens the workflow state store a URL names: `sqlite:PATH` (the embedded broker's file,
/// or a file of its own), `postgres://…[?schema=NAME]` (for many machines) or `memory:`.
pub async fn open_store(url: &str) -> Result<Arc<dyn StateStore>, BrokerError> {
    if url.starts_with("sqlite:") {
        let opts = SqliteOptions::from_url(url).map_err(BrokerError::Invalid)?;
        return Ok(Arc::new(SqliteStore::open(&opts)?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let opts = weir_postgres::PgOptions::from_url(url).map_err(BrokerError::Invalid)?;
        return Ok(Arc::new(weir_postgres::PgStore::connect(opts).await?));
    }
    if url == "memory:" || url == "memory://" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    Err(BrokerError::Invalid(format!(
        "unsupported store URL `{url}`: scheme `{scheme}` is not one of sqlite:, postgres:, memory:"
    )))
}

/// How long finished work is kept. Succeeded and cancelled jobs (with their results) and
/// finished workflows older than this are deleted by [`sweep`](retention::sweep); failed
/// jobs, the dead-letter set, stay until an operator purges them (`weir purge --state
/// failed`).
pub mod retention {
    use std::time::Duration;

    use crate::{Broker, BrokerError, JobState, StateStore, Timestamp};

    /// The default retention of `weir serve`: 7 days.
    pub const DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);

    /// What one sweep deleted.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Swept {
        /// Jobs deleted.
        pub jobs: u64,
        /// Workflows deleted (with their members).
        pub workflows: u64,
    }

    /// Deletes what finished more than `keep` before `now`: succeeded and cancelled jobs if
    /// the broker keeps jobs (RabbitMQ does not), and finished workflows if there is a store.
    pub async fn sweep(
        broker: &dyn Broker,
        store: Option<&dyn StateStore>,
        keep: Duration,
        now: Timestamp,
    ) -> Result<Swept, BrokerError> {
        let before = Timestamp(now.0.saturating_sub(keep.as_millis() as i64));
        let mut out = Swept::default();
        if let Some(i) = broker.inspect() {
            for state in [JobState::Succeeded, JobState::Cancelled] {
                match i.purge_finished_before(state, before).await {
                    Ok(n) => out.jobs += n,
                    Err(BrokerError::Unsupported(_)) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(s) = store {
            out.workflows = s.purge(before).await?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert!(open_broker("memory:").is_ok());
        let e = open_broker("redis://x").err().unwrap().to_string();
        assert!(e.contains("scheme `redis`"), "{e}");
        let e = open_broker("amqp://h/?queue_type=lazy")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("queue_type `lazy`"), "{e}");
        let e = open_broker("sqlite:").err().unwrap().to_string();
        assert!(e.contains("names no file"), "{e}");
    }
}
