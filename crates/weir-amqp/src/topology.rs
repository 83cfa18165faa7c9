//! Queue names, queue arguments and the delay tiers. Pure: no I/O.
//!
//! Every weir queue `q` is a set of RabbitMQ queues, all durable and of one type:
//! - `q`: the work queue. Rejected or over-delivered messages dead-letter to `q.dead`.
//! - `q.dead`: the dead-letter queue, with the error in `x-weir-error`.
//! - delay tiers, one per fixed wait. A job due in `d` goes to the longest tier not longer
//!   than `d`; when it leaves the tier early it hops again. A fixed wait per tier keeps every
//!   tier FIFO in leaving order, which a single queue with per-message waits is not. No plugin
//!   is needed. Two ways to leave a tier:
//!   - `q.wait.<ms>` ([`DelayMode::Worker`], the default): plain queues. Workers serving `q`
//!     hold each message until its `x-weir-hop` time, publish it onwards with a confirm, then
//!     ack it (`delays.rs`): at-least-once through broker restarts and node failures. Tiers
//!     stop at about 17 minutes so no message is held near RabbitMQ's 30-minute
//!     `consumer_timeout`.
//!   - `q.delay.<ms>` ([`DelayMode::Ttl`]): a fixed message TTL; an expired message
//!     dead-letters back into `q` on the broker's own. At-most-once unless dead-lettering is
//!     at-least-once (RabbitMQ ≥ 3.11), but moves without any worker running.

use lapin::types::{AMQPValue, FieldTable};

/// The TTL delay tiers, in milliseconds: 250 ms × 4ⁿ, up to about 4.5 hours. A longer delay
/// hops through the longest tier several times.
pub(crate) const TIERS_MS: [u64; 9] = [
    250, 1_000, 4_000, 16_000, 64_000, 256_000, 1_024_000, 4_096_000, 16_384_000,
];

/// The worker-moved tiers: the same steps up to about 17 minutes. A worker holds a message for
/// at most its tier's wait, so this stays well under RabbitMQ's default `consumer_timeout`
/// (30 minutes), past which the broker would close the holding channel.
pub(crate) const WORKER_TIERS_MS: [u64; 7] =
    [250, 1_000, 4_000, 16_000, 64_000, 256_000, 1_024_000];

/// How delayed messages (delays, retries, deferrals) leave their delay tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DelayMode {
    /// Workers serving the queue move due messages (publish with a confirm, then ack):
    /// at-least-once on every RabbitMQ version. Delayed jobs move only while a worker serves
    /// their queue. Tiers are named `Q.wait.<ms>`. The default.
    #[default]
    Worker,
    /// The broker moves them by message TTL and dead-lettering, with no worker running:
    /// at-most-once unless `dead_letter=at-least-once` (RabbitMQ ≥ 3.11). Tiers are named
    /// `Q.delay.<ms>`.
    Ttl,
}

/// A message due within this many milliseconds is delivered now rather than delayed again.
pub(crate) const DUE_SLACK_MS: i64 = 50;

/// The RabbitMQ queue type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated, durable, with a delivery limit: the default.
    #[default]
    Quorum,
    /// Classic queues: faster on one node, no delivery limit.
    Classic,
}

impl QueueType {
    /// Parses `quorum` or `classic`.
    pub fn parse(s: &str) -> Result<Self, UnknownQueueType> {
        match s {
            "quorum" => Ok(QueueType::Quorum),
            "classic" => Ok(QueueType::Classic),
            other => Err(UnknownQueueType(other.to_owned())),
        }
    }
}

/// The text given to [`QueueType::parse`] names no queue type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("queue_type `{0}` is not one of quorum, classic")]
pub struct UnknownQueueType(String);

/// How weir names and declares the queues behind one weir queue.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    pub(crate) prefix: String,
    pub(crate) queue_type: QueueType,
    /// For quorum work queues: deliveries without a settle before the broker dead-letters.
    pub(crate) delivery_limit: u32,
    /// Quorum queues dead-letter at-least-once (a message leaves only once its new queue has
    /// it) instead of RabbitMQ's default at-most-once.
    pub(crate) at_least_once: bool,
    /// How messages leave the delay tiers.
    pub(crate) delays: DelayMode,
}

/// Where a message is published to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The work queue: runnable now.
    Work,
    /// A delay tier of this many milliseconds.
    Tier(u64),
    /// The dead-letter queue.
    Dead,
}

impl Topology {
    /// The RabbitMQ queue behind weir queue `queue` for `target`.
    pub(crate) fn name(&self, queue: &str, target: &Target) -> String {
        match target {
            Target::Work => format!("{}{queue}", self.prefix),
            Target::Dead => format!("{}{queue}.dead", self.prefix),
            Target::Tier(ms) => match self.delays {
                DelayMode::Worker => format!("{}{queue}.wait.{ms}", self.prefix),
                DelayMode::Ttl => format!("{}{queue}.delay.{ms}", self.prefix),
            },
        }
    }

    /// The delay tiers of this mode, in milliseconds, shortest first.
    pub(crate) fn tiers(&self) -> &'static [u64] {
        match self.delays {
            DelayMode::Worker => &WORKER_TIERS_MS,
            DelayMode::Ttl => &TIERS_MS,
        }
    }

    /// Where a message due at `run_at_ms` goes at `now_ms` (see [`route`]).
    pub(crate) fn route(&self, run_at_ms: i64, now_ms: i64) -> Target {
        route(run_at_ms, now_ms, self.tiers())
    }

    /// Every RabbitMQ queue behind `queue`, with its declare arguments.
    pub(crate) fn queues(&self, queue: &str) -> Vec<(String, FieldTable)> {
        let mut all = vec![
            (self.name(queue, &Target::Work), self.work_args(queue)),
            (self.name(queue, &Target::Dead), self.base_args()),
        ];
        for &ms in self.tiers() {
            let a = match self.delays {
                DelayMode::Ttl => {
                    let mut a = self.base_args();
                    a.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
                    self.dead_letter_to(&mut a, self.name(queue, &Target::Work));
                    a
                }
                // Classic whatever the work queue's type: a worker looks at a tier's head and
                // gives it back when it is not due yet. A classic queue keeps a returned
                // message at its place; a quorum queue puts it at the back (3.x, breaking the
                // tier's order, so jobs ran up to a tier's wait late) or, from 4.0, drops it
                // after 20 returns. Durable and persistent, so a restart loses nothing; in a
                // cluster a tier lives on one node (its jobs wait while that node is down).
                DelayMode::Worker => {
                    let mut a = FieldTable::default();
                    a.insert(
                        "x-queue-type".into(),
                        AMQPValue::LongString("classic".into()),
                    );
                    a
                }
            };
            all.push((self.name(queue, &Target::Tier(ms)), a));
        }
        all
    }

    fn base_args(&self) -> FieldTable {
        let mut a = FieldTable::default();
        let t = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        a.insert("x-queue-type".into(), AMQPValue::LongString(t.into()));
        a
    }

    fn work_args(&self, queue: &str) -> FieldTable {
        let mut a = self.base_args();
        self.dead_letter_to(&mut a, self.name(queue, &Target::Dead));
        if self.queue_type == QueueType::Quorum {
            a.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(self.delivery_limit.into()),
            );
        }
        a
    }

    /// Dead-letters through the default exchange straight to `to` (at-least-once on quorum
    /// queues when asked for).
    fn dead_letter_to(&self, a: &mut FieldTable, to: String) {
        a.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        a.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(to.as_str().into()),
        );
        if self.queue_type == QueueType::Quorum && self.at_least_once {
            a.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            a.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
    }
}

/// Where a message due at `run_at` goes when the time is `now`: the work queue if due (within
/// [`DUE_SLACK_MS`]), else the longest of `tiers` not longer than the wait (the shortest tier
/// for a wait under it: up to 250 ms late).
pub(crate) fn route(run_at_ms: i64, now_ms: i64, tiers: &[u64]) -> Target {
    let wait = run_at_ms.saturating_sub(now_ms);
    if wait <= DUE_SLACK_MS {
        return Target::Work;
    }
    let wait = wait as u64;
    let tier = tiers
        .iter()
        .rev()
        .find(|t| **t <= wait)
        .copied()
        .unwrap_or(tiers[0]);
    Target::Tier(tier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(queue_type: QueueType) -> Topology {
        Topology {
            prefix: "app.".into(),
            queue_type,
            delivery_limit: 5,
            at_least_once: true,
            delays: DelayMode::Ttl,
        }
    }

    fn route_ttl(run_at: i64, now: i64) -> Target {
        route(run_at, now, &TIERS_MS)
    }

    #[test]
    fn routes_to_the_longest_tier_that_fits() {
        assert_eq!(route_ttl(1_000, 1_000), Target::Work);
        assert_eq!(route_ttl(1_040, 1_000), Target::Work);
        assert_eq!(route_ttl(900, 1_000), Target::Work, "overdue runs now");
        assert_eq!(route_ttl(1_100, 1_000), Target::Tier(250));
        assert_eq!(route_ttl(1_000 + 999, 1_000), Target::Tier(250));
        assert_eq!(route_ttl(1_000 + 1_000, 1_000), Target::Tier(1_000));
        assert_eq!(route_ttl(30_000, 0), Target::Tier(16_000));
        assert_eq!(route_ttl(i64::MAX, 0), Target::Tier(16_384_000));
        assert_eq!(
            route(i64::MAX, 0, &WORKER_TIERS_MS),
            Target::Tier(1_024_000),
            "worker-moved tiers stop at 17 minutes"
        );
    }

    #[test]
    fn hops_reach_the_due_time_within_a_tier_step() {
        // Simulate hops with exact TTLs: the job comes back no earlier than due and at most
        // 250 ms late, in a bounded number of hops.
        for (tiers, max_hops) in [(&TIERS_MS[..], 40), (&WORKER_TIERS_MS[..], 100)] {
            for wait in [
                60, 300, 999, 1_001, 10_000, 30_000, 61_000, 3_600_000, 86_400_000,
            ] {
                let (run_at, mut now, mut hops) = (wait, 0i64, 0);
                while let Target::Tier(ms) = route(run_at, now, tiers) {
                    now += ms as i64;
                    hops += 1;
                    assert!(hops < max_hops, "{wait}: too many hops");
                }
                assert!(now >= run_at - DUE_SLACK_MS, "{wait}: early at {now}");
                assert!(now <= run_at + 250, "{wait}: late at {now}");
            }
        }
    }

    #[test]
    fn names_and_arguments() {
        let t = topo(QueueType::Quorum);
        let qs = t.queues("mail");
        assert_eq!(qs.len(), 2 + TIERS_MS.len());
        assert_eq!(qs[0].0, "app.mail");
        assert_eq!(qs[1].0, "app.mail.dead");
        assert_eq!(qs[2].0, "app.mail.delay.250");
        let work = qs[0].1.inner();
        assert_eq!(
            work.get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("app.mail.dead".into()))
        );
        assert_eq!(
            work.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(5))
        );
        let dead = qs[1].1.inner();
        assert!(
            !dead.contains_key("x-delivery-limit"),
            "peeking must never drop dead letters"
        );
        assert!(!dead.contains_key("x-dead-letter-exchange"));
        let tier = qs[2].1.inner();
        assert_eq!(
            tier.get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(250))
        );
        assert_eq!(
            tier.get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("app.mail".into()))
        );
        assert_eq!(
            tier.get("x-dead-letter-strategy"),
            Some(&AMQPValue::LongString("at-least-once".into()))
        );
        let mut default = topo(QueueType::Quorum);
        default.at_least_once = false;
        assert!(!default.queues("mail")[2]
            .1
            .inner()
            .contains_key("x-dead-letter-strategy"));
        let classic = topo(QueueType::Classic).queues("mail");
        assert!(!classic[0].1.inner().contains_key("x-delivery-limit"));
        assert!(!classic[2].1.inner().contains_key("x-dead-letter-strategy"));
        // Worker-moved tiers: plain queues, nothing leaves them on the broker's own.
        let mut worker = topo(QueueType::Quorum);
        worker.delays = DelayMode::Worker;
        let qs = worker.queues("mail");
        assert_eq!(qs.len(), 2 + WORKER_TIERS_MS.len());
        assert_eq!(qs[2].0, "app.mail.wait.250");
        assert_eq!(qs.last().unwrap().0, "app.mail.wait.1024000");
        for (name, args) in &qs[2..] {
            let args = args.inner();
            assert!(!args.contains_key("x-message-ttl"), "{name}");
            assert!(!args.contains_key("x-dead-letter-exchange"), "{name}");
            assert_eq!(
                args.get("x-queue-type"),
                Some(&AMQPValue::LongString("classic".into())),
                "{name}: a returned head must keep its place"
            );
        }
    }

    #[test]
    fn queue_type_parses() {
        assert_eq!(QueueType::parse("classic"), Ok(QueueType::Classic));
        assert!(QueueType::parse("stream")
            .unwrap_err()
            .to_string()
            .contains("`stream`"));
    }
}
