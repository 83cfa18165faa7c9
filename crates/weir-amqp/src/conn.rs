//! The connection: one at a time, reconnected with backoff and jitter when lost; a publish
//! channel with confirms, bounded in flight; topology declared once per connection; and the
//! loop that keeps every background task of the broker running through losses.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Semaphore;
use weir_core::BrokerError;
use weir_sync::{Backoff, Jitter};

use crate::topology::Topology;
use crate::AmqpOptions;

/// One live connection and what was set up on it. Replaced as a whole when lost: the broker
/// requeues whatever its channels held unacked.
pub(crate) struct Conn {
    pub(crate) connection: Connection,
    publish: Channel,
    /// Weir queues whose RabbitMQ queues are declared on this connection.
    declared: parking_lot::Mutex<HashSet<String>>,
    /// Declares run on their own channel: a refused declare (PRECONDITION_FAILED: the queue
    /// exists with other arguments) closes it, and the publish channel must not go with it.
    topo: tokio::sync::Mutex<Option<Channel>>,
}

impl Conn {
    pub(crate) fn healthy(&self) -> bool {
        self.connection.status().connected() && self.publish.status().connected()
    }
}

/// A message to publish through the default exchange straight to a RabbitMQ queue.
pub(crate) struct Outgoing {
    pub(crate) to: String,
    pub(crate) props: BasicProperties,
    pub(crate) body: Vec<u8>,
}

/// Connects on demand and hands out the current connection.
pub(crate) struct Connector {
    opts: AmqpOptions,
    pub(crate) topo: Topology,
    current: parking_lot::Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
    /// Unconfirmed publishes across all callers, at most `confirm_window`.
    window: Semaphore,
    backoff: Backoff,
}

pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("RabbitMQ: {what}: {e}"))
}

impl Connector {
    pub(crate) fn new(opts: AmqpOptions) -> Self {
        let topo = Topology {
            prefix: opts.prefix.clone(),
            queue_type: opts.queue_type,
            delivery_limit: opts.delivery_limit,
            at_least_once: opts.at_least_once_dead_letters,
            delays: opts.delays,
        };
        Connector {
            window: Semaphore::new(opts.confirm_window),
            topo,
            current: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            backoff: Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(5))
                .expect("constant backoff is valid")
                .jitter(Jitter::Equal),
            opts,
        }
    }

    pub(crate) fn opts(&self) -> &AmqpOptions {
        &self.opts
    }

    /// The pause before reconnect attempt `n` (1-based): 100 ms doubling to 5 s, jittered.
    pub(crate) fn pause(&self, n: u32) -> Duration {
        self.backoff.delay(n, &mut rand::rng())
    }

    /// The current connection, connecting (with backoff, for up to `connect_timeout`) when
    /// there is none or it was lost. Concurrent callers share one attempt.
    pub(crate) async fn conn(&self) -> Result<Arc<Conn>, BrokerError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let deadline = tokio::time::Instant::now() + self.opts.connect_timeout;
        let mut n = 0;
        loop {
            match self.connect_once().await {
                Ok(c) => {
                    let c = Arc::new(c);
                    *self.current.lock() = Some(c.clone());
                    if n > 0 {
                        tracing::info!(attempts = n + 1, "reconnected to RabbitMQ");
                    }
                    return Ok(c);
                }
                Err(e) if refused(&e) => {
                    // Wrong credentials or a vhost the user may not use: trying again will
                    // not help, so say so at once.
                    return Err(BrokerError::Invalid(format!(
                        "RabbitMQ refused {}: {e}",
                        self.opts.display_url()
                    )));
                }
                Err(e) => {
                    n += 1;
                    let pause = self.pause(n);
                    if tokio::time::Instant::now() + pause > deadline {
                        return Err(unavailable(
                            &format!("cannot connect to {}", self.opts.display_url()),
                            e,
                        ));
                    }
                    // `info`: a worker's log shows its reconnects; a one-shot command (which
                    // logs warnings only) shows just the final error.
                    tracing::info!(error = %e, retry_in = ?pause, "connecting to RabbitMQ failed");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    fn live(&self) -> Option<Arc<Conn>> {
        let c = self.current.lock().clone()?;
        c.healthy().then_some(c)
    }

    /// Drops `conn` if it is still the current one (it failed in a way its status may not
    /// show yet), so the next caller reconnects.
    pub(crate) fn discard(&self, conn: &Arc<Conn>) {
        let mut cur = self.current.lock();
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *cur = None;
        }
    }

    async fn connect_once(&self) -> Result<Conn, lapin::Error> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("weir {}", std::process::id()).into());
        let connection = Connection::connect(&self.opts.url, props).await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Conn {
            connection,
            publish,
            declared: parking_lot::Mutex::new(HashSet::new()),
            topo: tokio::sync::Mutex::new(None),
        })
    }

    /// Declares the RabbitMQ queues behind weir queue `queue` on `conn`, once per connection.
    pub(crate) async fn declare(&self, conn: &Conn, queue: &str) -> Result<(), BrokerError> {
        if conn.declared.lock().contains(queue) {
            return Ok(());
        }
        for (name, args) in self.topo.queues(queue) {
            self.declare_one(conn, &name, args, false).await?;
        }
        conn.declared.lock().insert(queue.to_owned());
        Ok(())
    }

    /// Declares one queue (or checks it exists, `passive`); returns (ready messages,
    /// consumers), or `None` for a passive check of a queue that does not exist.
    pub(crate) async fn declare_one(
        &self,
        conn: &Conn,
        name: &str,
        args: FieldTable,
        passive: bool,
    ) -> Result<Option<(u64, u64)>, BrokerError> {
        let mut topo = conn.topo.lock().await;
        let chan = match topo.as_ref().filter(|c| c.status().connected()) {
            Some(c) => c.clone(),
            None => {
                let c = conn
                    .connection
                    .create_channel()
                    .await
                    .map_err(|e| unavailable("opening a channel", e))?;
                *topo = Some(c.clone());
                c
            }
        };
        let opts = QueueDeclareOptions {
            durable: true,
            passive,
            ..Default::default()
        };
        match chan.queue_declare(name.into(), opts, args).await {
            Ok(q) => Ok(Some((q.message_count().into(), q.consumer_count().into()))),
            Err(e) => {
                *topo = None;
                let text = e.to_string();
                if passive && text.contains("NOT_FOUND") {
                    return Ok(None);
                }
                if text.contains("PRECONDITION_FAILED") {
                    return Err(BrokerError::Invalid(format!(
                        "RabbitMQ queue `{name}` exists with other arguments than weir declares \
                         (queue_type={:?}, delivery_limit={}); delete it or match its settings: {text}",
                        self.topo.queue_type, self.topo.delivery_limit
                    )));
                }
                Err(unavailable(&format!("declaring queue `{name}`"), e))
            }
        }
    }

    /// Publishes `msgs` and returns once RabbitMQ confirmed every one. Publishes are pipelined,
    /// at most `confirm_window` unconfirmed at a time across all callers. A nack, an unroutable
    /// message or a lost connection is an error: the caller learns the messages may not be
    /// stored (some may be, so a retry can duplicate — at-least-once).
    pub(crate) async fn publish(
        &self,
        conn: &Arc<Conn>,
        msgs: Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let window = self.opts.confirm_window;
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let chunk: Vec<Outgoing> = msgs.by_ref().take(window).collect();
            let _permits = self
                .window
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|_| BrokerError::Closed)?;
            let sends = chunk.iter().map(|m| {
                conn.publish.basic_publish(
                    "".into(),
                    m.to.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &m.body,
                    m.props.clone(),
                )
            });
            let confirms = futures::future::join_all(sends).await;
            let mut waits = Vec::with_capacity(confirms.len());
            for c in confirms {
                match c {
                    Ok(c) => waits.push(c),
                    Err(e) => {
                        self.discard(conn);
                        return Err(unavailable("publishing", e));
                    }
                }
            }
            for (c, m) in futures::future::join_all(waits)
                .await
                .into_iter()
                .zip(&chunk)
            {
                match c {
                    Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {}
                    Ok(Confirmation::Ack(Some(_))) => {
                        return Err(BrokerError::Other(format!(
                            "RabbitMQ could not route a message to queue `{}` (was it deleted?)",
                            m.to
                        )))
                    }
                    Ok(Confirmation::Nack(_)) => {
                        return Err(BrokerError::Unavailable(format!(
                            "RabbitMQ refused a message for queue `{}` (nack)",
                            m.to
                        )))
                    }
                    Err(e) => {
                        self.discard(conn);
                        return Err(unavailable("waiting for a publisher confirm", e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Closes the current connection (unacked deliveries go back to their queues).
    pub(crate) async fn close(&self) {
        let c = self.current.lock().take();
        if let Some(c) = c {
            let _ = c.connection.close(200, "weir broker closed".into()).await;
        }
    }
}

/// True for a refusal that no retry can fix: bad credentials (`ACCESS_REFUSED`) or a vhost
/// that does not exist (`NOT_ALLOWED - vhost … not found`). `NOT_ALLOWED` also covers passing
/// states (a connection limit reached, a vhost still starting), which stay retryable. lapin
/// reports these as protocol errors whose text names the AMQP reply code, in either spelling.
fn refused(e: &lapin::Error) -> bool {
    let text = e.to_string();
    text.contains("ACCESS_REFUSED")
        || text.contains("ACCESS-REFUSED")
        || ((text.contains("NOT_ALLOWED") || text.contains("NOT-ALLOWED"))
            && text.contains("not found"))
}

/// Runs `once` again and again until the broker closes: after each end (`report`ed with the
/// pause before the next try) it waits with backoff and jitter, which starts over once a run
/// lasted 10 s. The loop of every background task of the broker (consumers, delay movers).
pub(crate) async fn keep_running<F, Fut>(
    shared: &crate::Shared,
    mut once: F,
    report: impl Fn(Result<(), BrokerError>, Duration),
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BrokerError>>,
{
    let mut failures = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            _ = shared.closed.cancelled() => return,
            r = once() => r,
        };
        if shared.closed.is_cancelled() {
            return;
        }
        if started.elapsed() > Duration::from_secs(10) {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let pause = shared.conn.pause(failures);
        report(outcome, pause);
        tokio::select! {
            _ = shared.closed.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
