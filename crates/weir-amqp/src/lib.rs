//! weir's RabbitMQ broker: producers and any number of worker processes on any number of
//! machines share queues.
//!
//! - **Topology.** Each weir queue is a durable quorum queue (classic on request), a dead-letter
//!   queue `<queue>.dead`, and delay tiers `<queue>.wait.<ms>` (250 ms × 4ⁿ) that the workers
//!   serving the queue empty (hold until due, publish onwards with a confirm, ack), hopping
//!   until the job is due: at-least-once ([`DelayMode`]). Messages are persistent; the job
//!   id is the message id, the kind the AMQP `type`, the trace id the correlation id, the rest
//!   one compact `x-weir` header.
//! - **Publishing** waits for publisher confirms, pipelined, at most `confirm_window` in flight.
//!   A nack, an unroutable message or a lost connection is an error to the caller, never a
//!   silent drop.
//! - **Consuming** uses manual acks and a prefetch equal to the worker's pool size
//!   ([`Broker::set_capacity`]), changed when the pool is resized. A delivery is acked only
//!   after its outcome is settled; acks are batched with `multiple` where that covers only
//!   settled tags.
//! - **Retries, delays, deferrals** are published to a delay tier, then the original is acked.
//!   Permanent failures and exhausted attempts go to `<queue>.dead` with the error in the
//!   `x-weir-error` header. `x-delivery-limit` dead-letters a message that keeps killing
//!   workers even if no worker lives long enough to decide so. Classic queues have no delivery
//!   count: a redelivered message is first published again with its lost attempt counted.
//! - **Leases** are this process's: a fetched delivery not settled or renewed within its lease
//!   is rejected back to the queue (the lost attempt counts). A lost connection reconnects with
//!   backoff and jitter, re-declares and consumes again; RabbitMQ redelivers what the old
//!   connection held, and settles for those turn stale.
//!
//! What RabbitMQ cannot do alone is declared absent, not faked: no [`weir_core::Inspect`]
//! (no get-by-id, cancel or results), no unique keys, no priorities (queues are FIFO). Depths
//! and dead letters are offered through [`QueueStats`].

mod codec;
mod conn;
mod consume;
mod dead;
mod delays;
mod options;
mod stats;
mod tags;
pub use stats::MAX_PEEK;
mod topology;

pub use options::AmqpOptions;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::QueueDeleteOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use weir_core::{
    check_new_jobs, Broker, BrokerError, Capabilities, Capability, Clock, Delivery, Enqueued,
    FetchRequest, Job, JobLimits, Lease, NewJob, QueueStats, SettleOutcome, Settlement,
};

use conn::{unavailable, Connector, Outgoing};
use consume::{ChanState, HeldState, QueueState};
use tags::{token, untoken};
use topology::Target;
pub use topology::{DelayMode, QueueType, UnknownQueueType};

/// State shared by the broker handle and its background tasks.
pub(crate) struct Shared {
    /// Publishing (enqueues, retries, dead letters), declares and counts.
    conn: Connector,
    /// Consumer channels, on a connection of their own: each connection has one I/O thread,
    /// and publishing and consuming at full speed keep one busy each.
    consume: Connector,
    clock: Arc<dyn Clock>,
    queues: parking_lot::Mutex<HashMap<String, Arc<QueueState>>>,
    /// Live consumer channels by generation (the high bits of lease tokens).
    channels: parking_lot::RwLock<HashMap<u32, Arc<ChanState>>>,
    next_gen: AtomicU32,
    /// Weir queues this broker has touched, for [`AmqpBroker::delete_queues`] and status.
    known: parking_lot::Mutex<BTreeSet<String>>,
    reaper: AtomicBool,
    /// Set by [`AmqpBroker::close`]: consumers stop taking deliveries and give back the ones
    /// no worker fetched.
    draining: CancellationToken,
    closed: CancellationToken,
}

/// The RabbitMQ broker. Cheap to share behind an `Arc`; connects on first use. Must be used
/// inside a tokio runtime.
pub struct AmqpBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("opts", self.shared.conn.opts())
            .finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// A broker for `url` (see [`AmqpOptions::from_url`]). Does not connect yet: a wrong
    /// URL fails here, an unreachable server on first use.
    pub fn new(url: &str) -> Result<Self, BrokerError> {
        Ok(Self::with_options(AmqpOptions::from_url(url)?))
    }

    /// A broker with these options.
    pub fn with_options(opts: AmqpOptions) -> Self {
        let clock = opts.clock.clone();
        AmqpBroker {
            shared: Arc::new(Shared {
                consume: Connector::new(opts.clone()),
                conn: Connector::new(opts),
                clock,
                queues: parking_lot::Mutex::new(HashMap::new()),
                channels: parking_lot::RwLock::new(HashMap::new()),
                next_gen: AtomicU32::new(1),
                known: parking_lot::Mutex::new(BTreeSet::new()),
                reaper: AtomicBool::new(false),
                draining: CancellationToken::new(),
                closed: CancellationToken::new(),
            }),
        }
    }

    /// Stops consuming and closes the connection. Deliveries prefetched but never fetched by
    /// a worker go back unspent: each consumer is cancelled, then they are published again
    /// (to the tail of their work queue, with confirms) and acked, so no attempt is counted
    /// for a job that never ran. Deliveries fetched and not yet settled go back to their
    /// queues with the attempt counted, as when a worker dies (settle them first, as a
    /// worker's shutdown does with [`Settlement::Release`]). Waits at most 10 s for the
    /// consumers; further calls fail with [`BrokerError::Closed`].
    ///
    /// Cancel safe: dropped while giving back, the connection closes and RabbitMQ requeues
    /// what was not yet given back (counted as a lost attempt).
    pub async fn close(&self) {
        if !self.shared.closed.is_cancelled() {
            self.shared.draining.cancel();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline
                && self
                    .shared
                    .channels
                    .read()
                    .values()
                    .any(|c| !c.drained.load(Ordering::Acquire))
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.shared.closed.cancel();
        self.shared.conn.close().await;
        self.shared.consume.close().await;
    }

    /// Connects now (instead of on first use) and declares the queues behind `queues`.
    ///
    /// Cancel safe.
    pub async fn connect(&self, queues: &[&str]) -> Result<(), BrokerError> {
        let conn = self.shared.conn.conn().await?;
        for q in queues {
            self.shared.known.lock().insert((*q).to_owned());
            self.shared.conn.declare(&conn, q).await?;
        }
        Ok(())
    }

    /// Deletes every RabbitMQ queue behind weir queues `queues` (work, dead, delay tiers),
    /// with their messages. For teardown and tests; returns how many messages went with them.
    ///
    /// Cancel safety: dropped part way, some queues are deleted and some not; call it again.
    pub async fn delete_queues(&self, queues: &[String]) -> Result<u64, BrokerError> {
        let conn = self.shared.conn.conn().await?;
        let ch = conn
            .connection
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))?;
        let mut gone = 0u64;
        for q in queues {
            for (name, _) in self.shared.conn.topo.queues(q) {
                gone += u64::from(
                    ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .map_err(|e| unavailable(&format!("deleting queue `{name}`"), e))?,
                );
            }
        }
        let _ = ch.close(200, "done".into()).await;
        Ok(gone)
    }

    /// The weir queues this broker has published to or consumed from.
    pub fn known_queues(&self) -> Vec<String> {
        self.shared.known.lock().iter().cloned().collect()
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        if self.shared.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        Ok(())
    }

    /// The queue's consumer state, created (and consuming) on first use.
    fn consumer(&self, queue: &str, prefetch: usize, start: bool) -> Arc<QueueState> {
        let mut queues = self.shared.queues.lock();
        if let Some(q) = queues.get(queue) {
            if start && !q.consuming.swap(true, Ordering::AcqRel) {
                self.spawn_consumer(q.clone());
            }
            return q.clone();
        }
        let q = Arc::new(QueueState::new(queue, prefetch));
        queues.insert(queue.to_owned(), q.clone());
        self.shared.known.lock().insert(queue.to_owned());
        if start {
            q.consuming.store(true, Ordering::Release);
            self.spawn_consumer(q.clone());
        }
        q
    }

    fn spawn_consumer(&self, q: Arc<QueueState>) {
        if self.shared.draining.is_cancelled() {
            // Closing: nothing new is consumed (it would only be given back).
            return;
        }
        if self.shared.conn.topo.delays == DelayMode::Worker {
            for &tier in self.shared.conn.topo.tiers() {
                tokio::spawn(delays::move_forever(
                    self.shared.clone(),
                    q.name.clone(),
                    tier,
                ));
            }
        }
        tokio::spawn(consume::consume_forever(self.shared.clone(), q));
        if !self.shared.reaper.swap(true, Ordering::AcqRel) {
            tokio::spawn(consume::reap_forever(self.shared.clone()));
        }
    }

    /// Takes up to `max` buffered deliveries of `queues`, round-robin, leasing them.
    fn take(&self, queues: &[Arc<QueueState>], max: usize, lease: Duration) -> Vec<Delivery> {
        let until = self.shared.clock.now().plus(lease);
        let mut out = Vec::new();
        let mut empty = 0;
        let mut i = 0;
        while out.len() < max && empty < queues.len() {
            let q = &queues[i % queues.len()];
            i += 1;
            let next = q.buffer.lock().pop_front();
            let Some((chan, tag)) = next else {
                empty += 1;
                continue;
            };
            empty = 0;
            let mut held = chan.held.lock();
            // Only a delivery still buffered: one being given back at close (or otherwise
            // settling) is not the worker's any more.
            let Some(h) = held
                .get_mut(&tag)
                .filter(|h| matches!(h.state, HeldState::Buffered))
            else {
                continue;
            };
            h.state = HeldState::Leased(until);
            let mut job = h.job.clone();
            job.lease_until = Some(until);
            out.push(Delivery {
                lease: Lease {
                    id: job.id,
                    token: token(chan.gen, tag),
                    attempt: job.attempt,
                },
                job,
            });
        }
        out
    }

    fn chan(&self, lease: &Lease) -> Option<(Arc<ChanState>, u64)> {
        let (gen, tag) = untoken(lease.token);
        let chan = self.shared.channels.read().get(&gen).cloned()?;
        Some((chan, tag))
    }
}

impl Drop for AmqpBroker {
    /// Stops the background tasks and, inside a runtime, closes the connection in the
    /// background (RabbitMQ requeues what it held). Call [`AmqpBroker::close`] to wait for it.
    fn drop(&mut self) {
        self.shared.closed.cancel();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            rt.spawn(async move {
                shared.conn.close().await;
                shared.consume.close().await;
            });
        }
    }
}

/// A claimed settle: the delivery, and the copy to publish before the ack.
struct Claim {
    index: usize,
    chan: Arc<ChanState>,
    tag: u64,
    until: weir_core::Timestamp,
    publish: Option<Outgoing>,
}

/// What RabbitMQ can do: count its queues and report a backlog. No job is found by id, so
/// nothing is cancelled, retried or read back; no unique keys, no priorities (FIFO queues).
const CAPABILITIES: Capabilities = Capabilities::NONE
    .with(Capability::QueueDepths)
    .with(Capability::Backlog);

#[async_trait]
impl Broker for AmqpBroker {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn job_limits(&self) -> JobLimits {
        self.shared.conn.opts().limits
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, BrokerError> {
        check_new_jobs(&jobs, CAPABILITIES, &self.shared.conn.opts().limits)?;
        self.check_open()?;
        let now = self.shared.clock.now();
        let mut out = Vec::with_capacity(jobs.len());
        let mut msgs = Vec::with_capacity(jobs.len());
        let mut queues = BTreeSet::new();
        // Everything is checked before anything is published.
        for new in jobs {
            let job = new.into_job(now);
            let topo = &self.shared.conn.topo;
            let target = topo.route(job.run_at.as_millis(), now.as_millis());
            out.push(Enqueued {
                id: job.id,
                duplicate: false,
            });
            queues.insert(job.queue.clone());
            let mut job = job;
            let body = std::mem::take(&mut job.payload);
            msgs.push(delays::message(topo, &job, body, &target, now));
        }
        let conn = self.shared.conn.conn().await?;
        for q in &queues {
            self.shared.conn.declare(&conn, q).await?;
        }
        self.shared.known.lock().extend(queues);
        self.shared.conn.publish(&conn, msgs).await?;
        Ok(out)
    }

    async fn fetch(&self, req: FetchRequest) -> Result<Vec<Delivery>, BrokerError> {
        self.check_open()?;
        if req.queues.is_empty() || req.max == 0 {
            return Ok(Vec::new());
        }
        let queues: Vec<Arc<QueueState>> = req
            .queues
            .iter()
            .map(|q| self.consumer(q, req.max, true))
            .collect();
        let deadline = tokio::time::Instant::now() + req.wait;
        loop {
            // Register for wake-ups before looking, so a delivery in between is not missed.
            let mut wakes: Vec<_> = queues
                .iter()
                .map(|q| Box::pin(q.ready.notified()))
                .collect();
            for w in &mut wakes {
                w.as_mut().enable();
            }
            // Cancel safe: deliveries leave the buffer only here, after the last await.
            let got = self.take(&queues, req.max, req.lease);
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::select! {
                _ = futures::future::select_all(wakes) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.shared.closed.cancelled() => return Err(BrokerError::Closed),
            }
        }
    }

    async fn settle(
        &self,
        settlements: Vec<(Lease, Settlement)>,
    ) -> Result<Vec<SettleOutcome>, BrokerError> {
        let now = self.shared.clock.now();
        let mut outcomes = vec![SettleOutcome::Stale; settlements.len()];
        let mut claims = Vec::with_capacity(settlements.len());
        for (index, (lease, s)) in settlements.into_iter().enumerate() {
            let Some((chan, tag)) = self.chan(&lease) else {
                continue;
            };
            let mut held = chan.held.lock();
            let Some(h) = held.get_mut(&tag) else {
                continue;
            };
            let HeldState::Leased(until) = h.state else {
                continue;
            };
            if h.job.id != lease.id || h.job.attempt != lease.attempt {
                continue;
            }
            h.state = HeldState::Settling;
            let publish = copy_for(&self.shared, &h.job, s, now);
            drop(held);
            claims.push(Claim {
                index,
                chan,
                tag,
                until,
                publish,
            });
        }
        let msgs: Vec<Outgoing> = claims.iter_mut().filter_map(|c| c.publish.take()).collect();
        if !msgs.is_empty() {
            let sent = match self.shared.conn.conn().await {
                Ok(conn) => self.shared.conn.publish(&conn, msgs).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                // Not settled: the leases stay as they were; the caller may try again.
                for c in &claims {
                    if let Some(h) = c.chan.held.lock().get_mut(&c.tag) {
                        h.state = HeldState::Leased(c.until);
                    }
                }
                return Err(e);
            }
        }
        // One ack call per channel.
        let mut by_chan: HashMap<u32, (Arc<ChanState>, Vec<(usize, u64)>)> = HashMap::new();
        for c in claims {
            by_chan
                .entry(c.chan.gen)
                .or_insert_with(|| (c.chan.clone(), Vec::new()))
                .1
                .push((c.index, c.tag));
        }
        for (_, (chan, items)) in by_chan {
            let acked = chan.ack(items.iter().map(|(_, t)| *t).collect()).await;
            if acked {
                for (i, _) in items {
                    outcomes[i] = SettleOutcome::Applied;
                }
            }
        }
        Ok(outcomes)
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        let until = self.shared.clock.now().plus(extend);
        Ok(leases
            .iter()
            .map(|lease| {
                let Some((chan, tag)) = self.chan(lease) else {
                    return false;
                };
                let mut held = chan.held.lock();
                match held.get_mut(&tag) {
                    Some(h)
                        if matches!(h.state, HeldState::Leased(_))
                            && h.job.attempt == lease.attempt
                            && h.job.id == lease.id =>
                    {
                        h.state = HeldState::Leased(until);
                        true
                    }
                    _ => false,
                }
            })
            .collect())
    }

    async fn backlog(&self, queues: &[String]) -> Result<Vec<u64>, BrokerError> {
        self.check_open()?;
        let conn = self.shared.conn.conn().await?;
        let mut out = Vec::with_capacity(queues.len());
        for q in queues {
            let name = self.shared.conn.topo.name(q, &Target::Work);
            let found = self
                .shared
                .conn
                .declare_one(&conn, &name, FieldTable::default(), true)
                .await?;
            out.push(found.map_or(0, |(ready, _)| ready));
        }
        Ok(out)
    }

    async fn set_capacity(&self, queue: &str, slots: usize) -> Result<(), BrokerError> {
        let q = self.consumer(queue, slots, false);
        if q.prefetch.swap(slots.max(1), Ordering::AcqRel) != slots.max(1) {
            q.prefetch_changed.notify_one();
        }
        Ok(())
    }

    async fn close(&self) {
        AmqpBroker::close(self).await
    }

    fn queue_stats(&self) -> Option<&dyn QueueStats> {
        Some(self)
    }
}

/// The copy a settlement publishes before the original is acked, if any.
pub(crate) fn copy_for(
    shared: &Shared,
    job: &Job,
    s: Settlement,
    now: weir_core::Timestamp,
) -> Option<Outgoing> {
    let topo = &shared.conn.topo;
    let mut copy = job.clone();
    let target = match s {
        // Acked and gone: RabbitMQ keeps no finished jobs.
        Settlement::Succeeded { .. } | Settlement::Cancel { .. } => return None,
        Settlement::Retry { run_at, error } => {
            copy.run_at = run_at;
            copy.last_error = Some(error);
            topo.route(run_at.as_millis(), now.as_millis())
        }
        Settlement::Failed { error } => {
            copy.last_error = Some(error);
            Target::Dead
        }
        Settlement::Release => {
            copy.attempt -= 1;
            copy.run_at = now;
            Target::Work
        }
        Settlement::Defer { run_at } => {
            copy.attempt -= 1;
            copy.run_at = run_at;
            topo.route(run_at.as_millis(), now.as_millis())
        }
    };
    let body = std::mem::take(&mut copy.payload);
    Some(delays::message(topo, &copy, body, &target, now))
}
