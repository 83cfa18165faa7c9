//! Test helpers shared by weir's crates, the broker conformance suite, and the workflow-store
//! conformance suite ([`store_suite!`]).
//!
//! Every broker runs the same suite: call [`conformance_suite!`] in a test file with a function
//! that makes a fresh [`Fixture`], the tests to run and the tests to ignore (each needs an
//! ability the broker declares it lacks; the suite checks that):
//!
//! ```text
//! async fn fixture() -> weir_testkit::Fixture { /* a new, empty broker on a ManualClock */ }
//! weir_testkit::conformance_suite!(fixture;
//!     run: [enqueue_fetch_settle, /* … */];
//!     ignore: [unique_keys => "declares no UniqueKeys"]);
//! ```

pub mod conformance;
mod faulty;
pub mod store;

pub use faulty::FaultyBroker;
pub use store::StoreFixture;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use weir_core::{Broker, FetchRequest, ManualClock, NewJob, Settlement, Timestamp};

/// A fresh, empty broker under test and the clock it reads.
pub struct Fixture {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// Its clock. Brokers that cannot use an injected clock (a real RabbitMQ) set
    /// `real_time`, and the suite sleeps instead of advancing it.
    pub clock: Arc<ManualClock>,
    /// True if the broker follows wall-clock time rather than `clock`.
    pub real_time: bool,
    /// How long a fetch that expects a job waits for it: zero for brokers that lease on fetch,
    /// more for brokers that push jobs to a consumer asynchronously (RabbitMQ).
    pub delivery_wait: Duration,
    _guard: Box<dyn Any + Send>,
}

impl Fixture {
    /// A fixture; `guard` is kept alive as long as the broker (a temporary directory, say).
    pub fn new(broker: Arc<dyn Broker>, clock: Arc<ManualClock>, guard: impl Any + Send) -> Self {
        Fixture {
            broker,
            clock,
            real_time: false,
            delivery_wait: Duration::ZERO,
            _guard: Box::new(guard),
        }
    }

    /// Marks the broker as following the wall clock: [`advance`](Self::advance) sleeps.
    pub fn real_time(mut self) -> Self {
        self.real_time = true;
        self
    }

    /// Sets [`delivery_wait`](Self::delivery_wait).
    pub fn delivery_wait(mut self, wait: Duration) -> Self {
        self.delivery_wait = wait;
        self
    }

    /// Moves time forward by `d` as the broker sees it.
    pub async fn advance(&self, d: Duration) {
        if self.real_time {
            tokio::time::sleep(d).await;
            // Keep `clock` near the wall clock, for the run_at values tests compute from it.
            self.clock.advance(d);
        } else {
            self.clock.advance(d);
        }
    }
}

/// A manual clock standing at the current wall-clock time.
pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Timestamp::now()))
}

/// Fills `broker` with `n` finished jobs of queue `default`: enqueued, fetched and settled in
/// batches of 10,000, every `failed_every`-th failed (`n.div_ceil(failed_every)` of them),
/// the rest succeeded. For tests and benches of what works on finished jobs (purges, the
/// retention sweep).
pub async fn finished_jobs(broker: &dyn Broker, n: usize, failed_every: usize) {
    const BATCH: usize = 10_000;
    let mut settled = 0;
    while settled < n {
        let batch = BATCH.min(n - settled);
        broker
            .enqueue_many((0..batch).map(|_| NewJob::new("k", "{}")).collect())
            .await
            .unwrap();
        let end = settled + batch;
        while settled < end {
            let got = broker
                .fetch(FetchRequest {
                    queues: vec!["default".into()],
                    max: end - settled,
                    lease: Duration::from_secs(600),
                    wait: Duration::from_secs(1),
                })
                .await
                .unwrap();
            let settles = got
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let s = if (settled + i) % failed_every == 0 {
                        Settlement::Failed {
                            error: "kept".into(),
                        }
                    } else {
                        Settlement::Succeeded { result: None }
                    };
                    (d.lease, s)
                })
                .collect();
            settled += got.len();
            broker.settle(settles).await.unwrap();
        }
    }
}
