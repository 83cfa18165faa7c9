//! weir's RabbitMQ broker: producers and any number of worker processes on any number of
//! machines share queues.
//!
//! - **Topology.** Each weir queue is a durable quorum queue (classic on request), a dead-letter
//!   queue `<queue>.dead`, and delay tiers `<queue>.delay.<ms>` (250 ms × 4ⁿ) of fixed TTL that
//!   dead-letter back into it, hopping until the job is due. Messages are persistent; the job
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
//!   workers even if no worker lives long enough to decide so.
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
mod topology;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use weir_core::{
    Broker, BrokerError, Clock, Delivery, Enqueued, FetchRequest, Job, Lease, NewJob, QueueDepth,
    QueueStats, SettleOutcome, Settlement, SystemClock,
};

use conn::{unavailable, Connector, Outgoing};
use consume::{token, untoken, ChanState, HeldState, QueueState};
pub use topology::QueueType;
use topology::{route, Target, TIERS_MS};

/// Settings of an [`AmqpBroker`].
#[derive(Clone)]
pub struct AmqpOptions {
    /// The AMQP URL lapin connects to (weir's own query parameters removed).
    pub url: String,
    /// The type of every queue weir declares. By default, quorum.
    pub queue_type: QueueType,
    /// Prepended to every RabbitMQ queue name (a namespace). By default, empty.
    pub prefix: String,
    /// Quorum work queues dead-letter a message delivered this many times without a settle
    /// (workers crashing on it). By default, 20.
    pub delivery_limit: u32,
    /// Quorum queues dead-letter at-least-once (`x-dead-letter-strategy`) rather than
    /// RabbitMQ's default at-most-once. Delay tiers hand messages back to the work queue by
    /// dead-lettering, so at-least-once closes the window where a node failure between the
    /// two queues loses a delayed job. Off by default: RabbitMQ 3.10 crashes its dead-letter
    /// supervisor when such queues are deleted soon after they are declared, after which no
    /// queue with the setting can be declared until the node restarts; turn it on with a
    /// RabbitMQ that has the fix (3.11+). URL: `dead_letter=at-least-once`.
    pub at_least_once_dead_letters: bool,
    /// The most unconfirmed publishes in flight. By default, 1000.
    pub confirm_window: usize,
    /// How long a call waits for a connection before failing as unavailable. By default, 30 s.
    pub connect_timeout: Duration,
    /// The clock for due times and leases. By default, the system clock. Delay tiers run on
    /// RabbitMQ's clock, so this must follow the wall clock.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for AmqpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpOptions")
            .field("url", &self.display_url())
            .field("queue_type", &self.queue_type)
            .field("prefix", &self.prefix)
            .field("delivery_limit", &self.delivery_limit)
            .field(
                "at_least_once_dead_letters",
                &self.at_least_once_dead_letters,
            )
            .field("confirm_window", &self.confirm_window)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl AmqpOptions {
    /// Options for `amqp://` or `amqps://` URL. Besides lapin's own query parameters
    /// (`heartbeat`, `connection_timeout`, …) it takes weir's: `queue_type=quorum|classic`,
    /// `prefix=NAME`, `delivery_limit=N`, `dead_letter=at-most-once|at-least-once`,
    /// `confirm_window=N`.
    ///
    /// ```
    /// let o = weir_amqp::AmqpOptions::from_url(
    ///     "amqp://guest:guest@127.0.0.1:5672/%2f?queue_type=classic&heartbeat=10",
    /// )
    /// .unwrap();
    /// assert_eq!(o.queue_type, weir_amqp::QueueType::Classic);
    /// assert_eq!(o.url, "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10");
    /// ```
    pub fn from_url(url: &str) -> Result<Self, String> {
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(format!("`{url}` is not an amqp:// or amqps:// URL"));
        }
        let mut o = AmqpOptions {
            url: String::new(),
            queue_type: QueueType::Quorum,
            prefix: String::new(),
            delivery_limit: 20,
            at_least_once_dead_letters: false,
            confirm_window: 1000,
            connect_timeout: Duration::from_secs(30),
            clock: Arc::new(SystemClock),
        };
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let num = |what: &str| -> Result<u64, String> {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("{what} must be a whole number ≥ 1, got `{v}`"))
            };
            match k {
                "queue_type" => o.queue_type = QueueType::parse(v)?,
                "prefix" => o.prefix = v.to_owned(),
                "dead_letter" => {
                    o.at_least_once_dead_letters = match v {
                        "at-least-once" => true,
                        "at-most-once" => false,
                        other => {
                            return Err(format!(
                                "dead_letter `{other}` is not one of at-most-once, at-least-once"
                            ))
                        }
                    }
                }
                "delivery_limit" => {
                    o.delivery_limit = u32::try_from(num(k)?).map_err(|e| e.to_string())?
                }
                "confirm_window" => {
                    o.confirm_window = usize::try_from(num(k)?.min(1 << 20)).unwrap_or(1 << 20)
                }
                _ => passed.push(pair),
            }
        }
        o.url = if passed.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        o.url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| format!("invalid AMQP URL `{}`: {e}", o.display_url()))?;
        Ok(o)
    }

    /// The URL with its password hidden, for logs and errors.
    pub fn display_url(&self) -> String {
        weir_core::redact_url(&self.url)
    }
}

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
        Ok(Self::with_options(
            AmqpOptions::from_url(url).map_err(BrokerError::Invalid)?,
        ))
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
                closed: CancellationToken::new(),
            }),
        }
    }

    /// Stops consuming and closes the connection. Deliveries not yet settled go back to their
    /// queues (RabbitMQ redelivers them). Further calls fail with [`BrokerError::Closed`].
    pub async fn close(&self) {
        self.shared.closed.cancel();
        self.shared.conn.close().await;
        self.shared.consume.close().await;
    }

    /// Connects now (instead of on first use) and declares the queues behind `queues`.
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
            let Some(h) = held.get_mut(&tag) else {
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

#[async_trait]
impl Broker for AmqpBroker {
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, BrokerError> {
        self.check_open()?;
        let now = self.shared.clock.now();
        let mut out = Vec::with_capacity(jobs.len());
        let mut msgs = Vec::with_capacity(jobs.len());
        let mut queues = BTreeSet::new();
        // Everything is checked before anything is published.
        for new in jobs {
            if let Some(key) = &new.unique_key {
                return Err(BrokerError::Unsupported(format!(
                    "unique key `{key}`: RabbitMQ cannot look a job up by key; use the \
                     embedded broker for unique jobs"
                )));
            }
            let job = new.into_job(now);
            codec::check(&job).map_err(BrokerError::Invalid)?;
            let target = route(job.run_at.as_millis(), now.as_millis());
            out.push(Enqueued {
                id: job.id,
                duplicate: false,
            });
            queues.insert(job.queue.clone());
            msgs.push(Outgoing {
                to: self.shared.conn.topo.name(&job.queue, &target),
                props: codec::encode(&job),
                body: job.payload,
            });
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

    fn queue_stats(&self) -> Option<&dyn QueueStats> {
        Some(self)
    }
}

/// The copy a settlement publishes before the original is acked, if any.
fn copy_for(
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
            route(run_at.as_millis(), now.as_millis())
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
            route(run_at.as_millis(), now.as_millis())
        }
    };
    Some(Outgoing {
        to: topo.name(&job.queue, &target),
        props: codec::encode(&copy),
        body: copy.payload,
    })
}

#[async_trait]
impl QueueStats for AmqpBroker {
    async fn depths(&self, queues: &[String]) -> Result<Vec<QueueDepth>, BrokerError> {
        self.check_open()?;
        let conn = self.shared.conn.conn().await?;
        let topo = &self.shared.conn.topo;
        let mut out = Vec::with_capacity(queues.len());
        for q in queues {
            let count = |target: Target| {
                let conn = &conn;
                async move {
                    let name = topo.name(q, &target);
                    self.shared
                        .conn
                        .declare_one(conn, &name, FieldTable::default(), true)
                        .await
                }
            };
            let (ready, consumers) = count(Target::Work).await?.unwrap_or((0, 0));
            let dead = count(Target::Dead).await?.map_or(0, |c| c.0);
            let mut delayed = 0;
            for ms in TIERS_MS {
                delayed += count(Target::Tier(ms)).await?.map_or(0, |c| c.0);
            }
            out.push(QueueDepth {
                queue: q.clone(),
                ready,
                delayed,
                dead,
                consumers,
            });
        }
        Ok(out)
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<Job>, BrokerError> {
        self.check_open()?;
        let conn = self.shared.conn.conn().await?;
        let name = self.shared.conn.topo.name(queue, &Target::Dead);
        // Gets without acking on a channel of its own, then closes it: RabbitMQ puts every
        // message back, in order. Looking removes nothing.
        let ch = conn
            .connection
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))?;
        let mut out = Vec::new();
        while out.len() < limit {
            match ch
                .basic_get(name.as_str().into(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(m)) => {
                    let d = m.delivery;
                    out.push(codec::decode_dead(&d.properties, d.data, queue));
                }
                Ok(None) => break,
                Err(e) if e.to_string().contains("NOT_FOUND") => break,
                Err(e) => return Err(unavailable(&format!("reading `{name}`"), e)),
            }
        }
        if ch.status().connected() {
            let _ = ch.close(200, "peeked".into()).await;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options() {
        let o = AmqpOptions::from_url(
            "amqp://u:secret@h:5672/%2f?prefix=app.&delivery_limit=3&confirm_window=64",
        )
        .unwrap();
        assert_eq!(o.prefix, "app.");
        assert_eq!(o.delivery_limit, 3);
        assert_eq!(o.confirm_window, 64);
        assert_eq!(o.queue_type, QueueType::Quorum);
        assert_eq!(o.url, "amqp://u:secret@h:5672/%2f");
        assert_eq!(o.display_url(), "amqp://u:***@h:5672/%2f");
        assert!(!format!("{o:?}").contains("secret"));
        let e = AmqpOptions::from_url("amqp://h/?delivery_limit=0").unwrap_err();
        assert!(e.contains("delivery_limit must be a whole number"), "{e}");
        let e = AmqpOptions::from_url("amqp://h/?queue_type=lazy").unwrap_err();
        assert!(e.contains("`lazy`"), "{e}");
        let e = AmqpOptions::from_url("redis://h").unwrap_err();
        assert!(e.contains("not an amqp://"), "{e}");
        let e = AmqpOptions::from_url("amqp://h:notaport/").unwrap_err();
        assert!(e.contains("invalid AMQP URL"), "{e}");
    }
}
