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
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = weir::open_broker("sqlite:./weir.db")?;
//! Client::new(broker.clone()).enqueue(&Greet { name: "ada".into() }).await?;
//! let mut registry = Registry::new();
//! registry.register::<Greet>();
//! let worker = Worker::builder(broker, registry).queue("default", 8).build()?;
//! worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```
//!
//! ## The crates behind the facade
//!
//! | crate | what it holds |
//! |---|---|
//! | `weir-core` | the job model: [`Task`], [`Job`], [`NewJob`] and its one validation, [`JobState`] and [`transition`], [`TaskError`], the [`Broker`] trait with its declared [`Capabilities`], [`Inspect`], [`QueueStats`], the in-memory [`MemoryBroker`] |
//! | `weir-sync` | concurrency building blocks without I/O: [`Backoff`], [`ElasticPool`], [`Limiter`], [`TaskGroup`], [`flow`] pipelines |
//! | `weir-workflow` | durable workflows ([`workflow`]): the spec, the pure decision, the [`StateStore`] trait and its protocol, the [`Workflows`] engine |
//! | `weir-runtime` | the [`Worker`]: dispatch, one attempt, settling, leases, the autoscaler, workflow membership, [`retention`] and rescue |
//! | `weir-sqlite` | the embedded broker ([`SqliteBroker`]) and its workflow store ([`SqliteStore`]) |
//! | `weir-amqp` | the RabbitMQ broker (feature `amqp`) |
//! | `weir-postgres` | the PostgreSQL workflow store (feature `postgres`) |
//! | `weir-testkit` | the conformance suites every broker and store runs (not published) |
//!
//! ## Cargo features
//!
//! The embedded broker is always there. By default every feature is on, which is what the
//! `weir` binary needs; a library user can take only what they use with
//! `default-features = false`.
//!
//! - `amqp`: RabbitMQ ([`AmqpBroker`], `amqp://` in [`open_broker`]).
//! - `postgres`: the PostgreSQL workflow store ([`PgStore`], `postgres://` in [`open_store`]).
//! - `config`: `weir.toml` ([`config`]), its live reload ([`reload`]), the built-in task
//!   kinds ([`builtins`]) and [`Service`], a worker run from a configuration file.
//! - `http-kind`: the built-in `http` task kind (with `config`).
//! - `http-api`: the HTTP API and Prometheus `/metrics` ([`api`]), an axum `Router` to serve
//!   or mount in your own service.
//! - `cli`: the `weir` binary, which speaks every backend (so it turns on all of the above)
//!   and adds its own dependencies (clap, indicatif, hdrhistogram).

#[cfg(feature = "http-api")]
pub mod api;
#[cfg(feature = "config")]
pub mod builtins;
#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "config")]
pub mod reload;
#[cfg(feature = "config")]
mod service;

use std::sync::Arc;

#[cfg(feature = "config")]
pub use service::{Service, ServiceBuilder, ServiceError};
#[cfg(feature = "amqp")]
pub use weir_amqp::{AmqpBroker, AmqpOptions, QueueType};
pub use weir_core::{
    check_new_jobs, redact_url, transition, validate_duration, validate_queue_name, Broker,
    BrokerError, Capabilities, Capability, Clock, Delivery, Enqueued, ErrorKind, Event,
    FetchRequest, IllegalTransition, Inspect, InvalidJob, InvalidQueueName, InvalidUrl, Job, JobId,
    JobLimits, JobState, Lease, ListFilter, ManualClock, MemoryBroker, NewJob, QueueCounts,
    QueueDepth, QueueStats, SettleOutcome, Settlement, SystemClock, Task, TaskContext, TaskError,
    Timestamp, WorkerStatus, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_PAYLOAD, DEFAULT_QUEUE,
    MAX_DURATION,
};
#[cfg(feature = "postgres")]
pub use weir_postgres::{PgOptions, PgStore};
pub use weir_runtime::{
    decide, retention, settlement_for, AutoscaleConfig, Client, Decision, EnqueueError, Handler,
    InvalidAutoscale, InvalidTuning, KindOptions, MeteredBroker, MeteredStore, Observed, Observer,
    QueueSpec, Reason, Registry, ScalerState, Tuning, Worker, WorkerBuilder, WorkerError,
    WorkerReport,
};
pub use weir_sqlite::{SqliteBroker, SqliteOptions, SqliteStore, Synchronous};
pub use weir_workflow::{MemoryStore, StateStore, Workflows};

/// Durable workflows: `chain`, `group` and `chord` ([`WorkflowSpec`](workflow::WorkflowSpec)),
/// run by a [`Workflows`] engine over a broker and a [`StateStore`]. What a store author
/// needs is in [`workflow::store`].
pub mod workflow {
    pub use weir_workflow::{
        result_value, workflow_result, FailureMode, InvalidWorkflow, Member, MemberStatus,
        MemoryStore, Shape, StateStore, StepSpec, SubmitError, WorkflowId, WorkflowSpec,
        WorkflowState, WorkflowStatus, Workflows, MAX_MEMBERS,
    };

    /// For authors of a [`StateStore`]: the transaction protocol, the logic written once over
    /// it, and the batcher (see `weir_workflow::store`).
    pub mod store {
        pub use weir_workflow::store::*;
    }
}
/// In-process pipelines with backpressure (see [`weir_sync::flow`]).
pub use weir_sync::flow;
pub use weir_sync::{
    Admission, Backoff, BackoffError, ElasticPool, GroupError, GroupMode, Jitter, LimitSpec,
    Limiter, PoolStats, Rate, Rejected, Slot, TaskFailure, TaskGroup,
};

/// The broker URL used when none is given: an embedded file in the working directory.
pub const DEFAULT_BROKER_URL: &str = "sqlite:./weir.db";

/// The schemes [`open_broker`] takes in this build.
const BROKER_SCHEMES: &str = if cfg!(feature = "amqp") {
    "sqlite:, amqp:, amqps:, memory:"
} else {
    "sqlite:, memory: (amqp: needs the `amqp` feature)"
};

/// The schemes [`open_store`] takes in this build.
const STORE_SCHEMES: &str = if cfg!(feature = "postgres") {
    "sqlite:, postgres:, memory:"
} else {
    "sqlite:, memory: (postgres: needs the `postgres` feature)"
};

/// Opens the broker a URL names:
///
/// - `sqlite:PATH[?sync=full|normal&max_payload=BYTES]`: the embedded durable broker (the
///   default), created if missing;
/// - `amqp://` or `amqps://` (feature `amqp`): RabbitMQ, shared by many worker processes on
///   many machines (see `AmqpOptions::from_url` for weir's query parameters). It connects on
///   first use, inside a tokio runtime;
/// - `memory:`: an in-process broker, gone when the process ends (tests, benchmarks).
///
/// Opening the embedded broker does blocking file I/O.
pub fn open_broker(url: &str) -> Result<Arc<dyn Broker>, BrokerError> {
    if url.starts_with("sqlite:") {
        let opts = SqliteOptions::from_url(url)?;
        return Ok(Arc::new(SqliteBroker::open_with(opts)?));
    }
    #[cfg(feature = "amqp")]
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        return Ok(Arc::new(AmqpBroker::new(url)?));
    }
    if url == "memory:" || url == "memory://" {
        return Ok(Arc::new(MemoryBroker::new()));
    }
    Err(unsupported("broker", url, BROKER_SCHEMES))
}

/// Opens the workflow state store a URL names: `sqlite:PATH` (the embedded broker's file,
/// or a file of its own), `postgres://…[?schema=NAME]` (feature `postgres`; for many
/// machines) or `memory:`.
///
/// Cancel safe: a store dropped half open is closed.
pub async fn open_store(url: &str) -> Result<Arc<dyn StateStore>, BrokerError> {
    if url.starts_with("sqlite:") {
        let opts = SqliteOptions::from_url(url)?;
        return Ok(Arc::new(SqliteStore::open(&opts)?));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let opts = PgOptions::from_url(url)?;
        return Ok(Arc::new(PgStore::connect(opts).await?));
    }
    if url == "memory:" || url == "memory://" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    Err(unsupported("store", url, STORE_SCHEMES))
}

/// The error for a URL whose scheme is not known, with a hint for a bare file name.
fn unsupported(what: &str, url: &str, schemes: &str) -> BrokerError {
    let scheme = url.split_once(':').map_or("", |(s, _)| s);
    let hint = if !url.contains(':') || url.ends_with(".db") {
        format!("; for a file, write `sqlite:{url}`")
    } else {
        String::new()
    };
    let why = if scheme.is_empty() {
        format!("has no scheme; expected one of {schemes}{hint}")
    } else {
        format!("scheme `{scheme}` is not one of {schemes}{hint}")
    };
    BrokerError::Invalid(format!(
        "unsupported {what} URL {}",
        InvalidUrl::new(url, why)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let memory = open_broker("memory:").unwrap();
        assert!(
            memory.capabilities().has(Capability::Inspect),
            "the memory broker"
        );
        let e = open_broker("redis://x").err().unwrap().to_string();
        assert!(e.contains("scheme `redis`"), "{e}");
        let e = open_broker("weir.db").err().unwrap().to_string();
        assert!(e.contains("write `sqlite:weir.db`"), "{e}");
        #[cfg(feature = "amqp")]
        {
            let e = open_broker("amqp://h/?queue_type=lazy")
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("queue_type `lazy`"), "{e}");
            let e = open_broker("amqp://u:pw@h/?queue_typ=classic")
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("unknown parameter `queue_typ`"), "{e}");
            assert!(!e.contains("pw"), "the password is hidden: {e}");
        }
        let e = open_broker("sqlite:").err().unwrap().to_string();
        assert!(e.contains("names no file"), "{e}");
    }
}
