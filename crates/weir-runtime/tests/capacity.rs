//! The runtime tells a push broker its pool size (`Broker::set_capacity`) before the first
//! fetch and after every resize, so a RabbitMQ prefetch follows the pool.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use weir_core::{
    Broker, BrokerError, Capabilities, Delivery, Enqueued, FetchRequest, Lease, MemoryBroker,
    NewJob, SettleOutcome, Settlement,
};
use weir_runtime::{Registry, Worker};

/// A memory broker that records every capacity it is told.
struct Recording {
    inner: MemoryBroker,
    told: Mutex<Vec<(String, usize)>>,
}

#[async_trait]
impl Broker for Recording {
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, BrokerError> {
        self.inner.enqueue_many(jobs).await
    }
    async fn fetch(&self, req: FetchRequest) -> Result<Vec<Delivery>, BrokerError> {
        self.inner.fetch(req).await
    }
    async fn settle(&self, s: Vec<(Lease, Settlement)>) -> Result<Vec<SettleOutcome>, BrokerError> {
        self.inner.settle(s).await
    }
    async fn heartbeat(&self, l: &[Lease], d: Duration) -> Result<Vec<bool>, BrokerError> {
        self.inner.heartbeat(l, d).await
    }
    async fn set_capacity(&self, queue: &str, slots: usize) -> Result<(), BrokerError> {
        self.told.lock().push((queue.to_owned(), slots));
        Ok(())
    }
}

async fn until(b: &Recording, what: &[(&str, usize)]) {
    for _ in 0..500 {
        let told = b.told.lock().clone();
        let want: Vec<(String, usize)> = what.iter().map(|(q, n)| ((*q).to_owned(), *n)).collect();
        if told == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("told {:?}, expected {what:?}", b.told.lock());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_hears_the_pool_size_and_every_resize() {
    let b = Arc::new(Recording {
        inner: MemoryBroker::new(),
        told: Mutex::new(Vec::new()),
    });
    let dyn_b: Arc<dyn Broker> = b.clone();
    let worker = Worker::builder(dyn_b, Registry::new())
        .queue("q", 3)
        .build()
        .unwrap();
    let pool = worker.pool("q").unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    until(&b, &[("q", 3)]).await;
    // The dispatcher notices at its next loop: after a fetch returns (it waits up to 1 s).
    pool.resize(7);
    b.enqueue(NewJob::new("none", "{}").queue("q"))
        .await
        .unwrap();
    until(&b, &[("q", 3), ("q", 7)]).await;
    pool.resize(2);
    b.enqueue(NewJob::new("none", "{}").queue("q"))
        .await
        .unwrap();
    until(&b, &[("q", 3), ("q", 7), ("q", 2)]).await;
    let _ = stop.send(());
    run.await.unwrap();
}
