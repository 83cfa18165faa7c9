//! weir's worker runtime.
//!
//! A [`Worker`] serves one or more queues of a [`weir_core::Broker`]. For each queue a
//! dispatcher reserves pool slots *before* it fetches (so nothing is leased that cannot run),
//! fetches in batches, and runs each job as one attempt: workflow gate, limits, handler
//! lookup in the [`Registry`], payload decoding, timeout, cancellation token, panic capture.
//! Outcomes are turned into settlements by [`settlement_for`] (backoff with jitter as a
//! future `run_at`; a retry never sleeps in a worker) and settled in batches. Leases of
//! running jobs are renewed by one heartbeat loop. Shutdown stops fetching, lets running jobs
//! finish up to a grace period, then cancels them and gives their leases back.
//!
//! One file per part: `attempt` (one attempt of one job), `dispatch`, `settler`, `leases`
//! and `heartbeat`, `scaler` (the loop around [`decide`], the pure autoscaler),
//! `membership` (what a workflow member needs), `maintenance` (rescue and retention),
//! `metrics` (what a worker measures, for Prometheus), and `worker` (the builder and the
//! wiring).

mod attempt;
mod autoscale;
mod client;
mod dispatch;
mod heartbeat;
mod leases;
mod maintenance;
mod membership;
mod metered_store;
mod metrics;
mod observer;
mod registry;
mod report;
mod retry;
mod scaler;
mod settler;
mod shared;
#[cfg(feature = "otel")]
mod traced;
mod tuning;
mod worker;

pub use autoscale::{
    decide, AutoscaleConfig, Decision, InvalidAutoscale, Observed, Reason, ScalerState,
};
pub use client::{Client, EnqueueError};
pub use metered_store::MeteredStore;
pub use metrics::MeteredBroker;
pub use observer::Observer;
pub use registry::{Handler, KindOptions, Registry};
pub use report::WorkerReport;
pub use retry::settlement_for;
#[cfg(feature = "otel")]
pub use traced::{join_traces, TRACED_TARGET};
pub use tuning::{InvalidTuning, Tuning};
pub use worker::{QueueSpec, Worker, WorkerBuilder, WorkerError};

/// Retention: deleting finished work by age (see [`WorkerBuilder::retention`]).
pub mod retention {
    pub use crate::maintenance::{sweep, Swept, DEFAULT_RETENTION as DEFAULT, RESCUE_AFTER};
}
