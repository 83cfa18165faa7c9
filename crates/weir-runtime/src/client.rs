use std::sync::Arc;

use weir_core::{Broker, BrokerError, Enqueued, Inspect, NewJob, Task};

/// Enqueueing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The task did not serialize to JSON.
    #[error("payload of kind `{kind}` does not encode: {source}")]
    Encode {
        /// The task kind.
        kind: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The producer's handle: enqueue typed tasks or raw jobs. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    broker: Arc<dyn Broker>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `broker`.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Client { broker }
    }

    /// Enqueues a typed task with default options. Returns once it is durable.
    ///
    /// Cancel safety: as [`Broker::enqueue`]: dropped, the job may or may not be stored.
    pub async fn enqueue<T: Task>(&self, task: &T) -> Result<Enqueued, EnqueueError> {
        let job = NewJob::for_task(task).map_err(|source| EnqueueError::Encode {
            kind: T::KIND,
            source,
        })?;
        Ok(self.broker.enqueue(job).await?)
    }

    /// Enqueues a job built with [`NewJob`] (queue, delay, priority, unique key…).
    ///
    /// Cancel safety: as [`Broker::enqueue`]: dropped, the job may or may not be stored.
    pub async fn enqueue_job(&self, job: NewJob) -> Result<Enqueued, EnqueueError> {
        Ok(self.broker.enqueue(job).await?)
    }

    /// Enqueues many jobs in as few commits as the broker can; results in input order.
    ///
    /// Cancel safety: as [`Broker::enqueue_many`]: dropped, the jobs may or may not be stored.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, EnqueueError> {
        Ok(self.broker.enqueue_many(jobs).await?)
    }

    /// The broker's inspection capability, if it has one.
    pub fn inspect(&self) -> Option<&dyn Inspect> {
        self.broker.inspect()
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }
}
