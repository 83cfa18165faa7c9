//! Consuming: one channel and consumer per weir queue, its prefetch set to the worker's pool
//! size, deliveries buffered until a fetch takes them, and every unsettled delivery tracked
//! by tag so acks can be batched safely.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use tokio::sync::Notify;
use weir_core::{BrokerError, Job, Settlement, Timestamp};

use crate::codec::{self, Incoming};
use crate::conn::{keep_running, unavailable, Outgoing};
use crate::delays;
use crate::tags::{multi_ack_len, SeenTags};
use crate::topology::{QueueType, Target};
use crate::Shared;

/// One weir queue this process consumes.
pub(crate) struct QueueState {
    pub(crate) name: String,
    /// Deliveries not yet fetched: (channel, delivery tag).
    pub(crate) buffer: parking_lot::Mutex<VecDeque<(Arc<ChanState>, u64)>>,
    pub(crate) ready: Notify,
    /// The prefetch the worker asked for (its pool size).
    pub(crate) prefetch: AtomicUsize,
    pub(crate) prefetch_changed: Notify,
    /// True once its consumer task runs (a queue only sized, never fetched, has none).
    pub(crate) consuming: AtomicBool,
}

impl QueueState {
    pub(crate) fn new(name: &str, prefetch: usize) -> Self {
        QueueState {
            name: name.to_owned(),
            buffer: parking_lot::Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            prefetch: AtomicUsize::new(prefetch.max(1)),
            prefetch_changed: Notify::new(),
            consuming: AtomicBool::new(false),
        }
    }
}

/// What this process holds of one delivery until it is acked or rejected.
pub(crate) struct Held {
    pub(crate) job: Job,
    pub(crate) state: HeldState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeldState {
    /// In the buffer, not yet fetched.
    Buffered,
    /// Fetched by a worker: leased until then, fenced by attempt.
    Leased(Timestamp),
    /// Being settled (a copy is being published); no longer the worker's.
    Settling,
}

/// One consumer channel. Its delivery tags are only valid on it: when it dies, whatever it
/// held goes back to the queue on the broker's side, and every lease on it turns stale.
pub(crate) struct ChanState {
    /// Unique per channel in this process; part of every lease token.
    pub(crate) gen: u32,
    pub(crate) channel: Channel,
    pub(crate) held: parking_lot::Mutex<BTreeMap<u64, Held>>,
    /// Acks and rejects go out one caller at a time: a multiple-ack must not overtake a
    /// single ack (or a reject) of a tag it covers, or RabbitMQ closes the channel with
    /// "unknown delivery tag".
    pub(crate) acking: tokio::sync::Mutex<()>,
    pub(crate) dead: AtomicBool,
    /// Which delivery tags this process has taken in: a multiple-ack must never cover a tag
    /// still on its way (with two consumers on the channel, their deliveries can be taken in
    /// out of tag order), or that delivery would be acked without having run.
    pub(crate) seen: parking_lot::Mutex<SeenTags>,
    /// Its consumers are cancelled and what they prefetched was given back (see
    /// [`AmqpBroker::close`](crate::AmqpBroker::close)).
    pub(crate) drained: AtomicBool,
}

impl ChanState {
    /// Acks `tags`, which the caller has settled: one multiple-ack for those below every tag
    /// still held (the common case: work finishes roughly in delivery order), single acks
    /// for the rest. Returns false if the channel is gone (the broker requeues them).
    pub(crate) async fn ack(&self, mut tags: Vec<u64>) -> bool {
        let _one = self.acking.lock().await;
        if self.dead.load(Ordering::Acquire) {
            return false;
        }
        tags.sort_unstable();
        let lowest_held = {
            let mut held = self.held.lock();
            for t in &tags {
                held.remove(t);
            }
            held.keys().next().copied().unwrap_or(u64::MAX)
        };
        let split = multi_ack_len(&tags, lowest_held, self.seen.lock().contiguous());
        let (multi, singles) = tags.split_at(split);
        let mut ok = true;
        if let Some(&last) = multi.last() {
            let r = if multi.len() == 1 {
                self.channel
                    .basic_ack(last, BasicAckOptions { multiple: false })
            } else {
                self.channel
                    .basic_ack(last, BasicAckOptions { multiple: true })
            };
            ok &= r.await.is_ok();
        }
        for &t in singles {
            ok &= self
                .channel
                .basic_ack(t, BasicAckOptions { multiple: false })
                .await
                .is_ok();
        }
        ok
    }

    /// Gives `tag` back to the queue (counted as a delivery by quorum queues) if `still`
    /// holds for it, checked under the ack lock (a settle may have claimed it meanwhile).
    pub(crate) async fn requeue(&self, tag: u64, still: impl FnOnce(&Held) -> bool) {
        let _one = self.acking.lock().await;
        if self.dead.load(Ordering::Acquire) {
            return;
        }
        {
            let mut held = self.held.lock();
            if !held.get(&tag).is_some_and(still) {
                return;
            }
            held.remove(&tag);
        }
        let _ = self
            .channel
            .basic_reject(tag, BasicRejectOptions { requeue: true })
            .await;
    }
}

/// Keeps one queue consumed for as long as the broker lives: on any loss (connection, channel,
/// a consumer cancelled by the server) it reconnects with backoff and consumes again. It never
/// stops silently: every failure is logged with when it tries again.
pub(crate) async fn consume_forever(shared: Arc<Shared>, q: Arc<QueueState>) {
    let (sh, qs) = (&shared, &q);
    keep_running(sh, || consume_once(sh, qs), |outcome, pause| match outcome {
        Ok(()) => {
            tracing::warn!(queue = %q.name, retry_in = ?pause, "RabbitMQ consumer ended; consuming again")
        }
        Err(e) if consumer_timed_out(&e.to_string()) => {
            tracing::error!(
                queue = %q.name,
                error = %e,
                retry_in = ?pause,
                "RabbitMQ closed the consumer channel: a job ran longer than the server's \
                 `consumer_timeout` (30 min by default) without an ack. Every job held on \
                 that channel goes back to the queue and runs again; the attempts here lost \
                 their leases and are stopped. Raise `consumer_timeout` in rabbitmq.conf \
                 above the longest job timeout (RabbitMQ checks it about once a minute)"
            )
        }
        Err(e) => {
            tracing::warn!(queue = %q.name, error = %e, retry_in = ?pause, "RabbitMQ consumer failed; consuming again")
        }
    })
    .await
}

/// True if a channel error is RabbitMQ's consumer timeout (a delivery left unacked longer
/// than `consumer_timeout`): `PRECONDITION_FAILED - delivery acknowledgement on channel N
/// timed out`.
pub(crate) fn consumer_timed_out(error: &str) -> bool {
    error.contains("delivery acknowledgement") && error.contains("timed out")
}

static CONSUMER_SEQ: AtomicU32 = AtomicU32::new(0);

async fn consume_once(shared: &Arc<Shared>, q: &Arc<QueueState>) -> Result<(), BrokerError> {
    if shared.draining.is_cancelled() {
        // Closing (a channel that died mid-drain lands here): consume nothing more.
        shared.closed.cancelled().await;
        return Ok(());
    }
    let conn = shared.consume.conn().await?;
    shared.consume.declare(&conn, &q.name).await?;
    let channel = conn
        .connection
        .create_channel()
        .await
        .map_err(|e| unavailable("opening a consumer channel", e))?;
    let chan = Arc::new(ChanState {
        gen: shared.next_gen.fetch_add(1, Ordering::Relaxed),
        channel: channel.clone(),
        held: parking_lot::Mutex::new(BTreeMap::new()),
        acking: tokio::sync::Mutex::new(()),
        dead: AtomicBool::new(false),
        seen: parking_lot::Mutex::new(SeenTags::default()),
        drained: AtomicBool::new(false),
    });
    shared.channels.write().insert(chan.gen, chan.clone());
    let result = run_consumer(shared, q, &chan).await;
    // Whatever this channel held is the broker's again once the channel closes; leases on it
    // turn stale and buffered deliveries are dropped.
    {
        let _one = chan.acking.lock().await;
        chan.dead.store(true, Ordering::Release);
        chan.held.lock().clear();
    }
    shared.channels.write().remove(&chan.gen);
    q.buffer.lock().retain(|(c, _)| !Arc::ptr_eq(c, &chan));
    if channel.status().connected() {
        let _ = channel.close(200, "consumer restarting".into()).await;
    }
    if result.is_err() && !conn.healthy() {
        shared.consume.discard(&conn);
    }
    result
}

/// What the merged consumer streams of one channel yield.
// Nearly every event is a delivery: boxing it would cost an allocation per message to save
// bytes on the rare `Ended`.
#[allow(clippy::large_enum_variant)]
enum Event {
    Delivery(Result<lapin::message::Delivery, lapin::Error>),
    /// The consumer with this tag ended (cancelled by us, or by the server).
    Ended(String),
}

/// Runs the channel's consumers until the channel or a consumer fails. The prefetch of a
/// consumer is fixed when it starts, so the total follows the pool size by adding a consumer
/// for the difference when the pool grows (exact), and by cancelling all and starting one of
/// the new size when it shrinks. Deliveries of cancelled consumers stay on the channel and run
/// (like a shrinking pool's busy slots, the surplus drains away); nothing is redelivered.
async fn run_consumer(
    shared: &Arc<Shared>,
    q: &Arc<QueueState>,
    chan: &Arc<ChanState>,
) -> Result<(), BrokerError> {
    let work = shared.conn.topo.name(&q.name, &Target::Work);
    let mut streams = futures::stream::SelectAll::new();
    let mut active: Vec<String> = Vec::new();
    let mut total = 0;
    let mut draining = false;
    loop {
        let want = q.prefetch.load(Ordering::Acquire);
        if want != total && !draining {
            if want < total {
                for tag in active.drain(..) {
                    chan.channel
                        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                        .await
                        .map_err(|e| unavailable("cancelling a consumer to resize", e))?;
                }
                total = 0;
            }
            let consumer = start(&chan.channel, &work, want - total).await?;
            let tag = consumer.tag().to_string();
            active.push(tag.clone());
            streams.push(
                consumer
                    .map(Event::Delivery)
                    .chain(futures::stream::once(async move { Event::Ended(tag) }))
                    .boxed(),
            );
            tracing::debug!(queue = %q.name, from = total, to = want, "prefetch follows the pool size");
            total = want;
        }
        tokio::select! {
            e = streams.next() => match e {
                Some(Event::Delivery(Ok(d))) => on_delivery(shared, q, chan, d),
                Some(Event::Delivery(Err(e))) => return Err(unavailable("consuming", e)),
                Some(Event::Ended(tag)) => {
                    if active.contains(&tag) {
                        return Err(BrokerError::Unavailable(format!(
                            "RabbitMQ cancelled consumer {tag} of `{work}` (queue deleted?)"
                        )));
                    }
                }
                None if draining => {
                    // Every cancelled consumer's stream has ended: all it was sent is here.
                    give_back_buffered(shared, q, chan).await;
                    chan.drained.store(true, Ordering::Release);
                    shared.closed.cancelled().await;
                    return Ok(());
                }
                None => return Ok(()),
            },
            _ = q.prefetch_changed.notified(), if !draining => {}
            _ = shared.draining.cancelled(), if !draining => {
                draining = true;
                for tag in active.drain(..) {
                    chan.channel
                        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                        .await
                        .map_err(|e| unavailable("cancelling a consumer to close", e))?;
                }
            }
        }
    }
}

/// Publishes a copy of each delivery this channel buffered but no worker fetched (attempt
/// unspent, due now) and acks the originals, so closing costs them no attempt. On failure
/// they stay unacked and go back when the channel closes, their attempt counted.
async fn give_back_buffered(shared: &Arc<Shared>, q: &Arc<QueueState>, chan: &Arc<ChanState>) {
    let now = shared.clock.now();
    let (tags, copies): (Vec<u64>, Vec<_>) = {
        let mut held = chan.held.lock();
        held.iter_mut()
            .filter(|(_, h)| matches!(h.state, HeldState::Buffered))
            .filter_map(|(tag, h)| {
                h.state = HeldState::Settling;
                crate::copy_for(shared, &h.job, Settlement::Release, now).map(|c| (*tag, c))
            })
            .unzip()
    };
    q.buffer.lock().retain(|(c, _)| !Arc::ptr_eq(c, chan));
    if tags.is_empty() {
        return;
    }
    let sent = match shared.conn.conn().await {
        Ok(conn) => shared.conn.publish(&conn, copies).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(()) => {
            let n = tags.len();
            if chan.ack(tags).await {
                tracing::info!(queue = %q.name, jobs = n, "gave back prefetched jobs unspent");
            } else {
                // The copies are in the queue and the originals go back with the channel:
                // each of these jobs may run twice (at-least-once).
                tracing::warn!(queue = %q.name, jobs = n, "gave back prefetched jobs, but the acks failed: they may run twice");
            }
        }
        Err(e) => tracing::warn!(
            queue = %q.name,
            error = %e,
            "giving back prefetched jobs failed; they return with an attempt counted"
        ),
    }
}

async fn start(
    channel: &Channel,
    work: &str,
    prefetch: usize,
) -> Result<lapin::Consumer, BrokerError> {
    let n = u16::try_from(prefetch).unwrap_or(u16::MAX);
    channel
        .basic_qos(n, BasicQosOptions::default())
        .await
        .map_err(|e| unavailable("setting prefetch", e))?;
    let tag = format!(
        "weir-{}-{}",
        std::process::id(),
        CONSUMER_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    channel
        .basic_consume(
            work.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| unavailable(&format!("consuming queue `{work}`"), e))
}

/// A delivery arrives: runnable ones are buffered for fetch; unreadable ones, ones whose
/// attempts were all lost, and ones that are not due yet are moved (dead queue, delay tier)
/// by a publish, then acked.
fn on_delivery(
    shared: &Arc<Shared>,
    q: &Arc<QueueState>,
    chan: &Arc<ChanState>,
    d: lapin::message::Delivery,
) {
    let tag = d.delivery_tag;
    chan.seen.lock().mark(tag);
    let redelivered = d.redelivered;
    if redelivered {
        // Delivered before and never settled: its worker died, lost its channel or let the
        // lease run out.
        weir_core::telemetry::leases_reclaimed(&q.name, 1);
    }
    let how = Incoming {
        queue: &q.name,
        redelivered,
    };
    let props = d.properties;
    let now = shared.clock.now();
    // The body moves into the job; only an unreadable message needs it elsewhere.
    let mut body = Some(d.data);
    let decoded = codec::decode(&props, Vec::new(), how).map(|mut job| {
        job.payload = body.take().unwrap_or_default();
        job
    });
    let moved = match decoded {
        Err(why) => {
            let data = body.take().unwrap_or_default();
            tracing::warn!(queue = %q.name, error = %why, "unreadable message dead-lettered");
            let mut h = props.headers().clone().unwrap_or_default();
            h.insert(
                "x-weir-error".into(),
                AMQPValue::LongString(format!("unreadable message: {why}").into()),
            );
            let to = shared.conn.topo.name(&q.name, &Target::Dead);
            let placeholder = codec::decode_dead(&props, data.clone(), &q.name);
            Some((
                placeholder,
                Outgoing {
                    to,
                    props: props.with_headers(h),
                    body: data,
                },
                true,
            ))
        }
        // A workflow member past its attempts goes to the worker, which fails it through the
        // workflow's advance (and so dead-letters it); any other job is dead-lettered here.
        Ok(mut job) if job.attempt > job.max_attempts && job.member.is_none() => {
            job.attempt -= 1;
            let lost = job.attempt;
            job.last_error = Some(format!(
                "attempts exhausted: {lost} of {} attempts spent, the last ones lost (a worker \
                 died or its lease expired); last error: {}",
                job.max_attempts,
                job.last_error.as_deref().unwrap_or("none")
            ));
            tracing::warn!(queue = %q.name, id = %job.id, "job dead-lettered: attempts lost");
            let out = Outgoing {
                to: shared.conn.topo.name(&q.name, &Target::Dead),
                props: codec::encode(&job),
                body: job.payload.clone(),
            };
            Some((job, out, true))
        }
        // Classic queues keep no delivery count, only a redelivered flag: a job that kills its
        // worker would come back as attempt `spent + 2` for ever. So a redelivered message goes
        // round once more with the lost attempt written into it before it runs.
        Ok(mut job) if redelivered && shared.conn.topo.queue_type == QueueType::Classic => {
            job.attempt -= 1;
            let body = job.payload.clone();
            let out = delays::message(&shared.conn.topo, &job, body, &Target::Work, now);
            Some((job, out, false))
        }
        Ok(job) => match shared
            .conn
            .topo
            .route(job.run_at.as_millis(), now.as_millis())
        {
            Target::Work => {
                chan.held.lock().insert(
                    tag,
                    Held {
                        job,
                        state: HeldState::Buffered,
                    },
                );
                q.buffer.lock().push_back((chan.clone(), tag));
                q.ready.notify_waiters();
                None
            }
            tier => {
                // Early (a hop through a delay tier): on its way again, nothing spent.
                let mut job = job;
                job.attempt -= 1;
                let body = job.payload.clone();
                let out = delays::message(&shared.conn.topo, &job, body, &tier, now);
                Some((job, out, false))
            }
        },
    };
    if let Some((job, out, dead)) = moved {
        chan.held.lock().insert(
            tag,
            Held {
                job,
                state: HeldState::Settling,
            },
        );
        let shared = shared.clone();
        let q_name = q.name.clone();
        let chan = chan.clone();
        tokio::spawn(async move {
            let sent = match shared.conn.conn().await {
                Ok(conn) => shared.conn.publish(&conn, vec![out]).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => {
                    if dead {
                        // Counted once it is in the dead-letter queue (a failed move is
                        // delivered and counted again).
                        weir_core::telemetry::dead_lettered(&q_name, 1);
                    }
                    chan.ack(vec![tag]).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "moving a message failed; it goes back to its queue");
                    chan.requeue(tag, |_| true).await;
                }
            }
        });
    }
}

/// Gives back deliveries whose lease ran out without a heartbeat or settle (the worker lost
/// track of them): the broker redelivers them and the lost attempt counts.
pub(crate) async fn reap_forever(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.closed.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = shared.clock.now();
        let chans: Vec<Arc<ChanState>> = shared.channels.read().values().cloned().collect();
        for chan in chans {
            let expired: Vec<u64> = chan
                .held
                .lock()
                .iter()
                .filter(|(_, h)| matches!(h.state, HeldState::Leased(until) if until <= now))
                .map(|(t, _)| *t)
                .collect();
            for tag in expired {
                tracing::debug!(tag, "lease expired: giving the delivery back");
                chan.requeue(
                    tag,
                    |h| matches!(h.state, HeldState::Leased(until) if until <= now),
                )
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_timeout_is_recognised() {
        assert!(consumer_timed_out(
            "protocol error: AMQP soft error: PRECONDITION-FAILED: PRECONDITION_FAILED - \
             delivery acknowledgement on channel 1 timed out. Timeout value used: 3000 ms."
        ));
        assert!(!consumer_timed_out("IO error: Connection reset by peer"));
    }
}
