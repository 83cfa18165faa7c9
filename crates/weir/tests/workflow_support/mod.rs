//! Shared by the workflow tests (embedded, memory, RabbitMQ): a worker that advances
//! workflows, run until the test stops it, and a wait for a workflow to finish.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::workflow::{WorkflowId, WorkflowState, WorkflowStatus, Workflows};
use weir::{Broker, Registry, Worker, WorkerReport};

/// A worker running until [`finish`](Running::finish).
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<WorkerReport>,
}

/// Starts a worker on `broker` that runs `slots` jobs of `queue` at once with leases of
/// `lease`, and advances workflows through `wf`.
pub fn run_worker(
    broker: Arc<dyn Broker>,
    wf: &Workflows,
    registry: Registry,
    queue: &str,
    slots: usize,
    lease: Duration,
) -> Running {
    let worker = Worker::builder(broker, registry)
        .queue(queue, slots)
        .lease(lease)
        .workflows(wf.clone())
        .build()
        .unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    Running { stop, task }
}

impl Running {
    /// Stops the worker (gracefully) and returns its report.
    pub async fn finish(self) -> WorkerReport {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// Waits (at most `limit`) until the workflow is no longer running.
pub async fn until_finished(wf: &Workflows, id: WorkflowId, limit: Duration) -> WorkflowStatus {
    let start = Instant::now();
    loop {
        let s = wf
            .status(id)
            .await
            .unwrap()
            .expect("the workflow is stored");
        if s.state != WorkflowState::Running {
            return s;
        }
        assert!(start.elapsed() < limit, "workflow still running: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
