//! weir's task model.
//!
//! This crate holds what every other weir crate agrees on: a [`Task`], the [`Job`] record a
//! broker stores for it, the [`JobState`] machine with its single [`transition`] function,
//! [`TaskError`] (retryable or permanent, never guessed), and the [`Broker`] trait with its
//! separate [`Inspect`] capability. It does no I/O of its own; [`MemoryBroker`] is an
//! in-process broker for tests and embedding, built on the same [`ReadyIndex`] the embedded
//! SQLite broker uses.

mod batch;
mod broker;
mod clock;
mod error;
mod id;
mod job;
mod memory;
mod memstore;
mod ready;
mod state;
mod task;
pub mod workflow;

pub use broker::{
    redact_url, Broker, BrokerError, Delivery, Enqueued, FetchRequest, Inspect, Lease, ListFilter,
    QueueCounts, QueueDepth, QueueStats, SettleOutcome, Settlement, WorkerStatus,
};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use error::{ErrorKind, TaskError};
pub use id::{JobId, ParseJobIdError};
pub use job::{Job, NewJob, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE};
pub use memory::MemoryBroker;
pub use memstore::MemoryStore;
pub use ready::ReadyIndex;
pub use state::{transition, Event, IllegalTransition, JobState};
pub use task::{Task, TaskContext};
pub use workflow::{Member, StateStore, WorkflowId};
