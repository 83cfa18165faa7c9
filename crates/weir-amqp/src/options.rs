//! [`AmqpOptions`]: the settings of an [`AmqpBroker`](crate::AmqpBroker), parsed from a URL.

use std::sync::Arc;
use std::time::Duration;

use weir_core::{Clock, InvalidUrl, JobLimits, SystemClock};

use crate::topology::{DelayMode, QueueType};

/// Settings of an [`AmqpBroker`](crate::AmqpBroker).
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
    /// How delayed jobs (delays, retries, deferrals) leave their delay tier. By default,
    /// [`DelayMode::Worker`]: at-least-once, moved by the workers serving the queue.
    /// URL: `delays=worker|ttl`.
    pub delays: DelayMode,
    /// The most unconfirmed publishes in flight. By default, 1000.
    pub confirm_window: usize,
    /// How long a call waits for a connection before failing as unavailable. By default, 30 s.
    pub connect_timeout: Duration,
    /// The clock for due times and leases. By default, the system clock. Delay tiers run on
    /// RabbitMQ's clock, so this must follow the wall clock.
    pub clock: Arc<dyn Clock>,
    /// Limits on new jobs. By default, [`JobLimits::default`]. URL: `max_payload=BYTES`.
    pub limits: JobLimits,
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
            .field("delays", &self.delays)
            .field("confirm_window", &self.confirm_window)
            .field("connect_timeout", &self.connect_timeout)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl AmqpOptions {
    /// Options for `amqp://` or `amqps://` URL. Besides lapin's own query parameters
    /// (`heartbeat`, `connection_timeout`, …) it takes weir's: `queue_type=quorum|classic`,
    /// `prefix=NAME`, `delivery_limit=N`, `dead_letter=at-most-once|at-least-once`,
    /// `delays=worker|ttl`, `confirm_window=N`, `max_payload=BYTES`. Any other parameter is an error (a typo never
    /// silently does nothing).
    ///
    /// ```
    /// let o = weir_amqp::AmqpOptions::from_url(
    ///     "amqp://guest:guest@127.0.0.1:5672/%2f?queue_type=classic&heartbeat=10",
    /// )
    /// .unwrap();
    /// assert_eq!(o.queue_type, weir_amqp::QueueType::Classic);
    /// assert_eq!(o.url, "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10");
    /// ```
    pub fn from_url(url: &str) -> Result<Self, InvalidUrl> {
        let bad = |why: String| InvalidUrl::new(url, why);
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(bad("not an amqp:// or amqps:// URL".into()));
        }
        let mut o = AmqpOptions {
            url: String::new(),
            queue_type: QueueType::Quorum,
            prefix: String::new(),
            delivery_limit: 20,
            at_least_once_dead_letters: false,
            delays: DelayMode::Worker,
            confirm_window: 1000,
            connect_timeout: Duration::from_secs(30),
            clock: Arc::new(SystemClock),
            limits: JobLimits::default(),
        };
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let num = |what: &str| -> Result<u64, InvalidUrl> {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad(format!("{what} must be a whole number ≥ 1, got `{v}`")))
            };
            match k {
                "queue_type" => {
                    o.queue_type = QueueType::parse(v).map_err(|e| bad(e.to_string()))?
                }
                "prefix" => o.prefix = v.to_owned(),
                "dead_letter" => {
                    o.at_least_once_dead_letters = match v {
                        "at-least-once" => true,
                        "at-most-once" => false,
                        other => {
                            return Err(bad(format!(
                                "dead_letter `{other}` is not one of at-most-once, at-least-once"
                            )))
                        }
                    }
                }
                "delays" => {
                    o.delays = match v {
                        "worker" => DelayMode::Worker,
                        "ttl" => DelayMode::Ttl,
                        other => {
                            return Err(bad(format!("delays `{other}` is not one of worker, ttl")))
                        }
                    }
                }
                "delivery_limit" => {
                    o.delivery_limit = u32::try_from(num(k)?).map_err(|e| bad(e.to_string()))?
                }
                "confirm_window" => {
                    o.confirm_window = usize::try_from(num(k)?.min(1 << 20)).unwrap_or(1 << 20)
                }
                "max_payload" => {
                    o.limits.max_payload = usize::try_from(num(k)?).unwrap_or(usize::MAX)
                }
                // lapin's own (amq-protocol-uri).
                "heartbeat" | "connection_timeout" | "channel_max" | "frame_max"
                | "auth_mechanism" => passed.push(pair),
                _ => {
                    return Err(bad(format!(
                        "unknown parameter `{k}` (weir's: queue_type, prefix, delivery_limit, \
                         dead_letter, delays, confirm_window, max_payload; lapin's: heartbeat, \
                         connection_timeout, channel_max, frame_max, auth_mechanism)"
                    )))
                }
            }
        }
        o.url = if passed.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        o.url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| bad(e.to_string()))?;
        Ok(o)
    }

    /// The URL with its password hidden, for logs and errors.
    pub fn display_url(&self) -> String {
        weir_core::redact_url(&self.url)
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
        assert_eq!(o.delays, DelayMode::Worker);
        assert_eq!(
            AmqpOptions::from_url("amqp://h/?delays=ttl")
                .unwrap()
                .delays,
            DelayMode::Ttl
        );
        assert_eq!(o.url, "amqp://u:secret@h:5672/%2f");
        assert_eq!(o.display_url(), "amqp://u:***@h:5672/%2f");
        assert!(!format!("{o:?}").contains("secret"));
        let e = |url| AmqpOptions::from_url(url).unwrap_err().to_string();
        let m = e("amqp://h/?delivery_limit=0");
        assert!(m.contains("delivery_limit must be a whole number"), "{m}");
        assert!(e("amqp://h/?queue_type=lazy").contains("`lazy`"));
        assert!(e("amqp://h/?delays=plugin").contains("`plugin` is not one of worker, ttl"));
        assert!(e("redis://h").contains("not an amqp://"));
        let m = e("amqp://u:secret@h:notaport/");
        assert!(m.starts_with("`amqp://u:***@h:notaport/`: "), "{m}");
        let m = e("amqp://u:secret@h/?queue_typ=classic&heartbeat=5");
        assert!(m.contains("unknown parameter `queue_typ`"), "{m}");
        assert!(!m.contains("secret"), "{m}");
        let o = AmqpOptions::from_url("amqp://h/?heartbeat=5&max_payload=1024").unwrap();
        assert_eq!(
            (o.url.as_str(), o.limits.max_payload),
            ("amqp://h/?heartbeat=5", 1024)
        );
    }
}
