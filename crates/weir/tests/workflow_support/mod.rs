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
    settled: Arc<Settled>,
}

/// Counts the settles the broker applied: a readiness signal for "the worker is done with
/// what it was given", instead of a pause.
#[derive(Default)]
struct Settled(std::sync::atomic::AtomicU64);

impl weir::Observer for Settled {
    fn settled(&self, _: &weir::Lease, _: &weir::Settlement, out: weir::SettleOutcome) {
        if out == weir::SettleOutcome::Applied {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
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
    let settled = Arc::new(Settled::default());
    let worker = Worker::builder(broker, registry)
        .queue(queue, slots)
        .lease(lease)
        .workflows(wf.clone())
        .observer(settled.clone())
        .build()
        .unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    Running {
        stop,
        task,
        settled,
    }
}

impl Running {
    /// Settles the broker applied so far.
    pub fn settled(&self) -> u64 {
        self.settled.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (at most `limit`) until at least `n` settles were applied.
    pub async fn until_settled(&self, n: u64, limit: Duration) {
        let start = Instant::now();
        while self.settled() < n {
            assert!(
                start.elapsed() < limit,
                "{} of {n} settles after {limit:?}",
                self.settled()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

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
