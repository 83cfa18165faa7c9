use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{JobId, TaskError};

/// A typed task: its payload is the value itself, serialized as JSON.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use weir_core::{Task, TaskContext, TaskError};
///
/// #[derive(Serialize, Deserialize)]
/// struct Resize { url: String, width: u32 }
///
/// impl Task for Resize {
///     const KIND: &'static str = "resize";
///     type Output = u64;
///     async fn run(self, cx: TaskContext) -> Result<u64, TaskError> {
///         if cx.is_cancelled() { return Err(TaskError::retryable("cancelled")); }
///         if self.width == 0 { return Err(TaskError::permanent("width must be > 0")); }
///         Ok(u64::from(self.width) * 2)
///     }
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// The stable kind name that routes a stored job to this handler. Changing it orphans
    /// jobs already enqueued under the old name.
    const KIND: &'static str;
    /// What the task returns; stored with the job as JSON (use `()` for nothing).
    type Output: Serialize + Send + 'static;
    /// Runs one attempt. Called at least once per job (at-least-once delivery): make it
    /// idempotent.
    fn run(self, cx: TaskContext) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;
}

/// What a handler knows about the attempt it is running.
#[derive(Clone, Debug)]
pub struct TaskContext {
    job_id: JobId,
    kind: String,
    queue: String,
    attempt: u32,
    max_attempts: u32,
    trace_id: String,
    cancel: CancellationToken,
}

impl TaskContext {
    /// Builds a context; runtimes call this, handlers receive it.
    pub fn new(
        job_id: JobId,
        kind: impl Into<String>,
        queue: impl Into<String>,
        attempt: u32,
        max_attempts: u32,
        trace_id: impl Into<String>,
        cancel: CancellationToken,
    ) -> Self {
        TaskContext {
            job_id,
            kind: kind.into(),
            queue: queue.into(),
            attempt,
            max_attempts,
            trace_id: trace_id.into(),
            cancel,
        }
    }

    /// The job's id.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// The job's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The queue the job came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The job's attempt limit.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The trace id shared with the job's producer and workflow.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// Fires when the attempt should stop: shutdown past its grace period, a lost lease, a
    /// timeout, or a cancellation of the job. Handlers doing long work should watch it.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// True once [`cancellation`](Self::cancellation) has fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}
