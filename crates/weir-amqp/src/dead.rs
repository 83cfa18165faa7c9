//! What an operator does with dead letters on RabbitMQ, where a job cannot be found by id:
//! run them again (replay to the work queue) or clear them.

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicRejectOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use weir_core::{BrokerError, JobState};

use crate::codec;
use crate::conn::{unavailable, Outgoing};
use crate::topology::Target;
use crate::AmqpBroker;

impl AmqpBroker {
    /// Moves up to `limit` dead letters of weir queue `queue` back to its work queue, oldest
    /// first, each with a fresh set of attempts on top of those spent (as `weir retry` does on
    /// the embedded broker). Each is republished with a publisher confirm before it is removed
    /// from the dead queue, so a failure part way duplicates at most one job and loses none.
    /// A message that cannot be read stays where it is, and stops the replay (it is at the
    /// head of the queue). Returns how many were replayed.
    ///
    /// Cancel safety: dropped part way, what was replayed is in the work queue and the rest in
    /// the dead queue (the message in hand goes back to the dead queue, or, if its copy was
    /// already confirmed, is in both).
    pub async fn replay_dead(&self, queue: &str, limit: usize) -> Result<u64, BrokerError> {
        self.check_open()?;
        let shared = &self.shared;
        let conn = shared.conn.conn().await?;
        let dead = shared.conn.topo.name(queue, &Target::Dead);
        let work = shared.conn.topo.name(queue, &Target::Work);
        // Only what is there now: a replayed job that fails again while this runs goes to
        // the back of the dead queue, and must not be replayed round and round. A queue that
        // does not exist is not created (a typo would leave a set of empty queues behind).
        let Some((there, _)) = shared
            .conn
            .declare_one(&conn, &dead, FieldTable::default(), true)
            .await?
        else {
            return Err(BrokerError::Invalid(format!(
                "no such queue: `{queue}` (nothing was ever dead-lettered or served there)"
            )));
        };
        let limit = limit.min(usize::try_from(there).unwrap_or(usize::MAX));
        let ch = conn
            .connection
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))?;
        let result = replay_from(self, &ch, &conn, queue, &dead, &work, limit).await;
        // Closing gives back a message held when an error cut the replay short.
        let _ = ch.close(200, "replayed".into()).await;
        result
    }

    /// Deletes every dead letter of weir queue `queue`; returns how many.
    ///
    /// Cancel safety: the purge is one server operation; dropped, it happened or it did not.
    pub async fn purge_dead(&self, queue: &str) -> Result<u64, BrokerError> {
        self.check_open()?;
        let conn = self.shared.conn.conn().await?;
        let dead = self.shared.conn.topo.name(queue, &Target::Dead);
        if self
            .shared
            .conn
            .declare_one(&conn, &dead, FieldTable::default(), true)
            .await?
            .is_none()
        {
            return Err(BrokerError::Invalid(format!(
                "no such queue: `{queue}` (nothing was ever dead-lettered or served there)"
            )));
        }
        let ch = conn
            .connection
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))?;
        let n = ch
            .queue_purge(dead.as_str().into(), QueuePurgeOptions::default())
            .await
            .map_err(|e| unavailable(&format!("purging `{dead}`"), e))?;
        let _ = ch.close(200, "purged".into()).await;
        Ok(u64::from(n))
    }
}

/// The replay loop of [`AmqpBroker::replay_dead`], on its own channel `ch`.
async fn replay_from(
    broker: &AmqpBroker,
    ch: &lapin::Channel,
    conn: &std::sync::Arc<crate::conn::Conn>,
    queue: &str,
    dead: &str,
    work: &str,
    limit: usize,
) -> Result<u64, BrokerError> {
    let shared = &broker.shared;
    let mut replayed = 0u64;
    while (replayed as usize) < limit {
        let got = ch
            .basic_get(dead.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| unavailable(&format!("reading `{dead}`"), e))?;
        let Some(m) = got else { break };
        let d = m.delivery;
        let Ok(mut job) = codec::decode_dead_checked(&d.properties, d.data, queue) else {
            tracing::warn!(queue = %dead, "an unreadable dead letter stops the replay; it stays");
            let _ = ch
                .basic_reject(d.delivery_tag, BasicRejectOptions { requeue: true })
                .await;
            break;
        };
        job.state = JobState::Pending;
        job.max_attempts = job.attempt.saturating_add(job.max_attempts);
        job.last_error = None;
        job.run_at = shared.clock.now();
        let out = Outgoing {
            to: work.to_owned(),
            props: codec::encode(&job),
            body: std::mem::take(&mut job.payload),
        };
        shared.conn.publish(conn, vec![out]).await?;
        ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: false })
            .await
            .map_err(|e| unavailable(&format!("removing a replayed job from `{dead}`"), e))?;
        replayed += 1;
    }
    Ok(replayed)
}
