//! weir's worker runtime.
//!
//! A [`Worker`] serves one or more queues of a [`weir_core::Broker`]. For each queue a
//! dispatcher reserves pool slots *before* it fetches (so nothing is leased that cannot run),
//! fetches in batches, and runs each job through the executor: handler lookup in the
//! [`Registry`], payload decoding, timeout, cancellation token, panic capture. Outcomes are
//! turned into settlements by [`settlement_for`] (backoff with jitter as a future `run_at`; a
//! retry never sleeps in a worker) and settled in batches. Leases of running jobs are renewed
//! by one heartbeat loop. Shutdown stops fetching, lets running jobs finish up to a grace
//! period, then cancels them and gives their leases back.

mod autoscale;
mod client;
mod exec;
mod registry;
mod retry;
mod tuning;
mod worker;
mod workflow;

pub use autoscale::{decide, AutoscaleConfig, Decision, Observed, Reason, ScalerState};
pub use client::{Client, EnqueueError};
pub use registry::{Handler, KindOptions, Registry};
pub use retry::settlement_for;
pub use tuning::Tuning;
pub use worker::{Observer, QueueSpec, Worker, WorkerBuilder, WorkerError, WorkerReport};
pub use workflow::Workflows;
