//! A broker that fails on purpose, for testing how callers survive store outages.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use weir_core::{
    Broker, BrokerError, Capabilities, Delivery, Enqueued, FetchRequest, Inspect, JobLimits, Lease,
    NewJob, QueueStats, SettleOutcome, Settlement, WorkerStatus,
};

/// Wraps a broker; the next `n` fetches, settles or heartbeats fail with
/// [`BrokerError::Unavailable`] (a transient error) as set with the `fail_*` methods.
pub struct FaultyBroker {
    inner: Arc<dyn Broker>,
    fetches: AtomicU32,
    settles: AtomicU32,
    heartbeats: AtomicU32,
}

impl FaultyBroker {
    /// Wraps `inner`, failing nothing until told.
    pub fn new(inner: Arc<dyn Broker>) -> Self {
        FaultyBroker {
            inner,
            fetches: AtomicU32::new(0),
            settles: AtomicU32::new(0),
            heartbeats: AtomicU32::new(0),
        }
    }

    /// The next `n` fetches fail.
    pub fn fail_fetches(&self, n: u32) {
        self.fetches.store(n, Ordering::SeqCst);
    }

    /// The next `n` settles fail (before reaching the inner broker).
    pub fn fail_settles(&self, n: u32) {
        self.settles.store(n, Ordering::SeqCst);
    }

    /// The next `n` heartbeats fail.
    pub fn fail_heartbeats(&self, n: u32) {
        self.heartbeats.store(n, Ordering::SeqCst);
    }

    fn trip(counter: &AtomicU32, what: &str) -> Result<(), BrokerError> {
        let tripped = counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if tripped {
            Err(BrokerError::Unavailable(format!("injected {what} failure")))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Broker for FaultyBroker {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn job_limits(&self) -> JobLimits {
        self.inner.job_limits()
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, BrokerError> {
        self.inner.enqueue_many(jobs).await
    }

    async fn fetch(&self, req: FetchRequest) -> Result<Vec<Delivery>, BrokerError> {
        Self::trip(&self.fetches, "fetch")?;
        self.inner.fetch(req).await
    }

    async fn settle(
        &self,
        settlements: Vec<(Lease, Settlement)>,
    ) -> Result<Vec<SettleOutcome>, BrokerError> {
        Self::trip(&self.settles, "settle")?;
        self.inner.settle(settlements).await
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        Self::trip(&self.heartbeats, "heartbeat")?;
        self.inner.heartbeat(leases, extend).await
    }

    async fn backlog(&self, queues: &[String]) -> Result<Vec<u64>, BrokerError> {
        self.inner.backlog(queues).await
    }

    async fn report(&self, status: WorkerStatus) -> Result<(), BrokerError> {
        self.inner.report(status).await
    }

    async fn retire(&self, worker: &str) -> Result<(), BrokerError> {
        self.inner.retire(worker).await
    }

    async fn set_capacity(&self, queue: &str, slots: usize) -> Result<(), BrokerError> {
        self.inner.set_capacity(queue, slots).await
    }

    fn inspect(&self) -> Option<&dyn Inspect> {
        self.inner.inspect()
    }

    fn queue_stats(&self) -> Option<&dyn QueueStats> {
        self.inner.queue_stats()
    }
}
