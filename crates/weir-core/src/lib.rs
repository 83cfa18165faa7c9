//! weir's task model.
//!
//! This crate holds what every other weir crate agrees on: a [`Task`], the [`Job`] record a
//! broker stores for it, the [`JobState`] machine with its single [`transition`] function,
//! [`TaskError`] (retryable or permanent, never guessed), the one validation of a new job
//! ([`NewJob::validate`], [`check_new_jobs`]), and the [`Broker`] trait with its declared
//! [`Capabilities`] and the separate [`Inspect`] and [`QueueStats`] abilities. It does no I/O
//! of its own; [`MemoryBroker`] is an in-process broker for tests and embedding, built on the
//! same [`ReadyIndex`] the embedded SQLite broker uses. Workflows live in `weir-workflow`;
//! a job only carries its [`Member`] here.

mod broker;
mod clock;
mod error;
mod filter;
mod id;
mod inspect;
mod job;
mod member;
mod memory;
mod ready;
mod state;
mod task;
pub mod telemetry;
mod validate;

pub use broker::{
    redact_url, Broker, BrokerError, Capabilities, Capability, Delivery, Enqueued, FetchRequest,
    InvalidUrl, Lease, SettleOutcome, Settlement,
};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use error::{ErrorKind, TaskError};
pub use filter::{JobPage, ListFilter};
pub use id::{JobId, ParseJobIdError};
pub use inspect::{Inspect, QueueCounts, QueueDepth, QueueStats, WorkerStatus};
pub use job::{Job, NewJob, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE};
pub use member::{Member, ParseMemberError, WorkflowId};
pub use memory::MemoryBroker;
pub use ready::ReadyIndex;
pub use state::{transition, Event, IllegalTransition, JobState, ParseStateError};
pub use task::{Task, TaskContext};
pub use validate::{
    check_new_jobs, validate_duration, validate_kind, validate_queue_name, InvalidJob,
    InvalidQueueName, JobLimits, DEFAULT_MAX_PAYLOAD, MAX_DURATION, MAX_KIND_LEN, MAX_QUEUE_LEN,
    MAX_TRACE_ID_LEN, MAX_UNIQUE_KEY_LEN,
};
