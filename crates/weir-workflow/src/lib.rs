//! weir's durable workflows: `chain`, `group` and `chord`.
//!
//! A workflow is a [`WorkflowSpec`]; [`Workflows`] (the engine) validates it, stores it in a
//! [`StateStore`] and enqueues what runs first. Each member is an ordinary job that carries its
//! [`Member`] through the broker. When a member finishes for good, the runtime calls the
//! engine *before* it settles the member's job; the engine records the outcome in the store
//! and carries out what follows (enqueue the next step or the callback, or cancel the open
//! siblings). If that fails, the member runs again, so an advance is never lost.
//!
//! Advancing is *level-triggered*: [`store::complete`] decides from the state after the
//! outcome is recorded ([`store::decide`], a pure function), not from the event alone, so a
//! member that runs twice (at-least-once delivery) replays its decision instead of losing or
//! repeating it.
//!
//! What a user needs is at the top: the spec types, [`Workflows`], the status views, the
//! [`StateStore`] trait object and the [`MemoryStore`]. What a store author needs (the
//! transaction protocol, the batcher) is in [`store`]. This crate does I/O only through the
//! traits it is given, and through [`store::Batcher`], which owns a store's connection on a
//! thread of its own.

mod batch;
mod decide;
mod engine;
mod memory;
mod spec;
mod state_store;
mod status;
mod tx;

pub use decide::WorkflowState;
pub use engine::{SubmitError, Workflows};
pub use memory::MemoryStore;
pub use spec::{FailureMode, InvalidWorkflow, Shape, StepSpec, WorkflowSpec, MAX_MEMBERS};
pub use state_store::StateStore;
pub use status::{result_value, workflow_result, MemberStatus, WorkflowStatus};
pub use weir_core::{Member, WorkflowId};

/// For authors of a [`StateStore`]: the transaction protocol every store implements
/// ([`WorkflowTx`](store::WorkflowTx)), the logic written once over it ([`complete`](store::complete),
/// [`abort`](store::abort), [`decide`](store::decide)), the rows it stores, and the
/// [`Batcher`](store::Batcher) that gives a SQL store group commit. The store conformance
/// suite (`weir-testkit`) checks a store against all of it.
pub mod store {
    pub use crate::batch::{BatchConn, BatchError, Batcher};
    pub use crate::decide::{decide, Input, Next, Progress};
    pub use crate::spec::{NewMember, NewWorkflow};
    pub use crate::state_store::StateStore;
    pub use crate::tx::{abort, complete, Advance, MemberOutcome, MemberRow, WorkflowTx};
}
