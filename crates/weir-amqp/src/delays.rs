//! Delay tiers moved by the workers ([`DelayMode::Worker`]): at-least-once delays, retries and
//! deferrals on any RabbitMQ.
//!
//! Every message published to a tier says when it leaves it (`x-weir-hop`: the publish time
//! plus the tier's wait). Each worker serving queue `q` watches every tier of `q` on a channel
//! of its own: it takes the head while it is due (a tier is FIFO in leaving order, so what is
//! due is always a prefix), publishes those onwards (the work queue, or a shorter tier) with
//! publisher confirms, then acks them with one multiple ack, and sleeps until the next head is
//! due. A worker that dies, a lost connection or a broker restart before the ack leaves the
//! messages in the tier to be moved again: a message can be moved twice (a duplicate), never
//! lost. RabbitMQ's own TTL dead-lettering (the `Ttl` mode) is at-most-once on 3.10.
//!
//! Written here rather than with the delayed-message plugin: the plugin keeps delayed messages
//! on one node outside any queue (lost with that node) and is not on every RabbitMQ.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::BasicProperties;
use weir_core::{BrokerError, Job, Timestamp};

use crate::codec;
use crate::conn::{keep_running, unavailable, Outgoing};
use crate::topology::{DelayMode, Target, Topology};
use crate::Shared;

/// The most due messages one round moves (and holds in memory until RabbitMQ confirms their
/// copies).
const BATCH: usize = 512;

/// The message carrying `job` (payload `body`) to `target`. A message for a worker-moved tier
/// also says when it leaves it.
pub(crate) fn message(
    topo: &Topology,
    job: &Job,
    body: Vec<u8>,
    target: &Target,
    now: Timestamp,
) -> Outgoing {
    let mut props = codec::encode(job);
    if let (Target::Tier(ms), DelayMode::Worker) = (target, topo.delays) {
        let wait = i64::try_from(*ms).unwrap_or(i64::MAX);
        props = codec::with_hop(props, now.as_millis().saturating_add(wait));
    }
    Outgoing {
        to: topo.name(&job.queue, target),
        props,
        body,
    }
}

/// Moves tier `tier_ms` of weir queue `queue` for as long as the broker lives, starting again
/// with backoff after any failure (what it held goes back to the tier, nothing is lost).
pub(crate) async fn move_forever(shared: Arc<Shared>, queue: String, tier_ms: u64) {
    let (sh, q) = (&shared, queue.as_str());
    keep_running(sh, || move_once(sh, q, tier_ms), |outcome, pause| match outcome {
        Ok(()) => {
            tracing::warn!(%queue, tier_ms, retry_in = ?pause, "RabbitMQ ended a delay-tier consumer; consuming again")
        }
        Err(e) => {
            tracing::warn!(%queue, tier_ms, error = %e, retry_in = ?pause, "moving a delay tier failed; its messages stay in it, trying again")
        }
    })
    .await
}

/// A due message taken from a tier, not yet acked.
struct HeldMsg {
    tag: u64,
    due: i64,
    props: BasicProperties,
    body: Vec<u8>,
}

/// How long an empty tier waits before it looks again: a quarter of its wait (from 50 ms to
/// 5 s), so a message is always found before it is due to leave and an idle tier costs a few
/// polls a second.
fn idle_poll(tier_ms: u64) -> Duration {
    Duration::from_millis((tier_ms / 4).clamp(50, 5_000))
}

async fn move_once(shared: &Arc<Shared>, queue: &str, tier_ms: u64) -> Result<(), BrokerError> {
    let topo = &shared.conn.topo;
    let conn = shared.consume.conn().await?;
    shared.consume.declare(&conn, queue).await?;
    let ch = conn
        .connection
        .create_channel()
        .await
        .map_err(|e| unavailable("opening a delay-tier channel", e))?;
    let from = topo.name(queue, &Target::Tier(tier_ms));
    let result = async {
        loop {
            // Take the due head of the tier, message by message: a tier is FIFO in leaving
            // order, so the first message not yet due ends the round. It goes back at once,
            // to its place (tiers are classic queues, see `topology.rs`), so nothing is held
            // while waiting and the tier's count stays exact for `weir status`.
            let mut batch = Vec::new();
            let mut sleep = idle_poll(tier_ms);
            while batch.len() < BATCH {
                let got = ch
                    .basic_get(from.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|e| unavailable(&format!("reading delay tier `{from}`"), e))?;
                let Some(m) = got else { break };
                let d = m.delivery;
                let now = shared.clock.now().as_millis();
                let (hop_at, due) = codec::hop_and_due(&d.properties);
                // A hop later than the tier's own wait from now cannot be weir's (a clock
                // that jumped, a foreign header): moved now, it gets a fresh one, instead of
                // stalling the tier behind it.
                let wait = i64::try_from(tier_ms).unwrap_or(i64::MAX);
                if hop_at > now && hop_at <= now.saturating_add(wait) {
                    ch.basic_nack(
                        d.delivery_tag,
                        BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        },
                    )
                    .await
                    .map_err(|e| unavailable(&format!("returning a message to `{from}`"), e))?;
                    sleep = Duration::from_millis(u64::try_from(hop_at - now).unwrap_or(0));
                    break;
                }
                batch.push(HeldMsg {
                    tag: d.delivery_tag,
                    due,
                    props: d.properties,
                    body: d.data,
                });
            }
            if batch.is_empty() {
                tokio::time::sleep(sleep).await;
            } else {
                onwards(shared, &ch, queue, batch).await?;
            }
        }
    }
    .await;
    if ch.status().connected() {
        let _ = ch.close(200, "delay mover restarting".into()).await;
    }
    if !conn.healthy() {
        shared.consume.discard(&conn);
    }
    result
}

/// Publishes `batch` (a due prefix of the tier) to where each is due next, waits for the
/// confirms, then acks the whole prefix at once.
async fn onwards(
    shared: &Arc<Shared>,
    ch: &lapin::Channel,
    queue: &str,
    batch: Vec<HeldMsg>,
) -> Result<(), BrokerError> {
    let topo = &shared.conn.topo;
    let now = shared.clock.now().as_millis();
    let last = batch.last().map(|m| m.tag);
    let msgs: Vec<Outgoing> = batch
        .into_iter()
        .map(|m| {
            let target = topo.route(m.due, now);
            // The tier's own delivery count is not the job's: it would read as lost attempts.
            let props = codec::without_delivery_count(m.props);
            let props = match target {
                Target::Tier(ms) => codec::with_hop(
                    props,
                    now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
                ),
                _ => props,
            };
            Outgoing {
                to: topo.name(queue, &target),
                props,
                body: m.body,
            }
        })
        .collect();
    let conn = shared.conn.conn().await?;
    shared.conn.declare(&conn, queue).await?;
    shared.conn.publish(&conn, msgs).await?;
    if let Some(tag) = last {
        ch.basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| unavailable("acking moved delayed messages", e))?;
    }
    Ok(())
}
