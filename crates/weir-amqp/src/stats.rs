//! Counting and peeking at queues ([`QueueStats`]): what RabbitMQ can say without finding a
//! message by id.

use async_trait::async_trait;
use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use weir_core::{BrokerError, Job, QueueDepth, QueueStats};

use crate::codec;
use crate::conn::unavailable;
use crate::topology::Target;
use crate::AmqpBroker;

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
            let work = count(Target::Work).await?;
            let exists = work.is_some();
            let (ready, consumers) = work.unwrap_or((0, 0));
            let dead = count(Target::Dead).await?.map_or(0, |c| c.0);
            let mut delayed = 0;
            for &ms in topo.tiers() {
                delayed += count(Target::Tier(ms)).await?.map_or(0, |c| c.0);
            }
            out.push(QueueDepth {
                queue: q.clone(),
                ready,
                delayed,
                dead,
                consumers,
                exists,
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
        // Every message peeked is held in memory until the channel closes: at most
        // MAX_PEEK, whatever was asked.
        let limit = limit.min(MAX_PEEK);
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

/// The most dead letters one peek returns (each is held in memory, and by the channel, until
/// the peek ends).
pub const MAX_PEEK: usize = 1000;
