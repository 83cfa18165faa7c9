//! One validation of a new job, used by every broker before it stores anything, by the CLI
//! before it connects, and by the workflow engine before it stores a workflow. A job that
//! passes here is one every broker can carry; a broker refuses what it cannot do on top of
//! that (a priority on a FIFO broker) through its declared [`Capabilities`].

use std::time::Duration;

use crate::{BrokerError, Capabilities, Capability, NewJob};

/// The longest task kind, in bytes (an AMQP short string, so every broker can carry it).
pub const MAX_KIND_LEN: usize = 255;

/// The longest queue name, in bytes: RabbitMQ's 255, less room for weir's suffixes
/// (`.delay.16384000`) and a namespace prefix.
pub const MAX_QUEUE_LEN: usize = 200;

/// The longest unique key, in bytes.
pub const MAX_UNIQUE_KEY_LEN: usize = 1024;

/// The longest trace id, in bytes (an AMQP short string).
pub const MAX_TRACE_ID_LEN: usize = 255;

/// The longest delay, timeout or other job duration weir accepts: 100 years. Anything longer
/// is a mistake (a unit slip), and it keeps every time weir computes inside an `i64` of
/// milliseconds.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The default largest payload: 16 MiB. Large enough for a chord callback that receives
/// thousands of results, small enough that a runaway producer is told at enqueue rather
/// than by the store.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// Limits a broker enforces on the jobs it stores, besides the fixed ones above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobLimits {
    /// The largest payload, in bytes. By default, [`DEFAULT_MAX_PAYLOAD`].
    pub max_payload: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// What is wrong with a queue name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidQueueName {
    /// The name is empty.
    #[error("queue name must not be empty")]
    Empty,
    /// The name is longer than [`MAX_QUEUE_LEN`].
    #[error("queue name `{name}` is {len} bytes, more than {MAX_QUEUE_LEN}")]
    TooLong {
        /// The start of the name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name has a character outside letters, digits, `-`, `_`, `.` and `:`.
    #[error("queue name `{name}` has `{ch}`: use letters, digits, `-`, `_`, `.` and `:`")]
    BadChar {
        /// The name.
        name: String,
        /// The first character not allowed.
        ch: char,
    },
    /// The name is reserved: RabbitMQ owns `amq.`, and weir names a queue's dead letters and
    /// delay tiers `Q.dead`, `Q.wait.N` and `Q.delay.N`.
    #[error("queue name `{name}` is reserved: {why}")]
    Reserved {
        /// The name.
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
}

/// Checks a queue name: 1 to [`MAX_QUEUE_LEN`] bytes of letters, digits, `-`, `_`, `.` and
/// `:`, not starting with `amq.` and not ending like another queue's dead-letter or delay
/// queue. The same rule holds on every broker, so a queue moves from the embedded broker to
/// RabbitMQ unchanged.
///
/// ```
/// use weir_core::validate_queue_name;
/// assert!(validate_queue_name("emails.high").is_ok());
/// assert!(validate_queue_name("").is_err());
/// assert!(validate_queue_name("amq.gen").is_err());
/// assert!(validate_queue_name("default.dead").is_err());
/// assert!(validate_queue_name("a b").is_err());
/// ```
pub fn validate_queue_name(name: &str) -> Result<(), InvalidQueueName> {
    if name.is_empty() {
        return Err(InvalidQueueName::Empty);
    }
    if name.len() > MAX_QUEUE_LEN {
        return Err(InvalidQueueName::TooLong {
            name: prefix(name, 40),
            len: name.len(),
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(InvalidQueueName::BadChar {
            name: name.to_owned(),
            ch,
        });
    }
    let reserved = |why| {
        Err(InvalidQueueName::Reserved {
            name: name.to_owned(),
            why,
        })
    };
    if name.starts_with("amq.") {
        return reserved("RabbitMQ owns names starting with `amq.`");
    }
    if name.ends_with(".dead") {
        return reserved("`Q.dead` holds the dead letters of queue `Q`");
    }
    for (infix, why) in [
        (".delay.", "`Q.delay.N` is a delay tier of queue `Q`"),
        (".wait.", "`Q.wait.N` is a delay tier of queue `Q`"),
    ] {
        if let Some((_, tier)) = name.rsplit_once(infix) {
            if !tier.is_empty() && tier.bytes().all(|b| b.is_ascii_digit()) {
                return reserved(why);
            }
        }
    }
    Ok(())
}

/// What is wrong with a new job.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidJob {
    /// The kind is empty or blank.
    #[error("the job kind must not be empty")]
    EmptyKind,
    /// The kind is longer than [`MAX_KIND_LEN`].
    #[error("the job kind `{kind}…` is {len} bytes, more than {MAX_KIND_LEN}")]
    KindTooLong {
        /// The start of the kind.
        kind: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The kind has a control character or surrounding whitespace.
    #[error("the job kind `{kind}` has control characters or surrounding spaces")]
    KindNotPrintable {
        /// The kind, escaped.
        kind: String,
    },
    /// The queue name is not valid.
    #[error(transparent)]
    Queue(#[from] InvalidQueueName),
    /// The payload is larger than the broker's limit.
    #[error("the payload of kind `{kind}` is {size} bytes, more than the limit of {limit}")]
    PayloadTooLarge {
        /// The kind.
        kind: String,
        /// The payload's size.
        size: usize,
        /// The broker's limit ([`JobLimits::max_payload`]).
        limit: usize,
    },
    /// The payload is not JSON.
    #[error("the payload of kind `{kind}` is not JSON: {error}")]
    PayloadNotJson {
        /// The kind.
        kind: String,
        /// The JSON error.
        error: String,
    },
    /// `max_attempts` is 0.
    #[error("max_attempts must be at least 1")]
    NoAttempts,
    /// A duration is out of range.
    #[error("the {what} of {value:?} is out of range ({range})")]
    Duration {
        /// Which one: `delay` or `timeout`.
        what: &'static str,
        /// The value given.
        value: Duration,
        /// The allowed range, in words.
        range: &'static str,
    },
    /// The unique key is empty or too long.
    #[error("the unique key must be 1 to {MAX_UNIQUE_KEY_LEN} bytes, not {len}")]
    UniqueKey {
        /// Its length in bytes.
        len: usize,
    },
    /// The trace id is too long or not printable ASCII.
    #[error("the trace id must be 1 to {MAX_TRACE_ID_LEN} bytes of printable ASCII")]
    TraceId,
}

/// Checks a task kind: 1 to [`MAX_KIND_LEN`] bytes, printable, no surrounding spaces.
pub fn validate_kind(kind: &str) -> Result<(), InvalidJob> {
    if kind.trim().is_empty() {
        return Err(InvalidJob::EmptyKind);
    }
    if kind.len() > MAX_KIND_LEN {
        return Err(InvalidJob::KindTooLong {
            kind: prefix(kind, 32),
            len: kind.len(),
        });
    }
    if kind.trim() != kind || kind.chars().any(char::is_control) {
        return Err(InvalidJob::KindNotPrintable {
            kind: kind.escape_debug().to_string(),
        });
    }
    Ok(())
}

/// Checks a duration given to weir (a delay, a timeout, a retention): at most
/// [`MAX_DURATION`], and, if `nonzero`, more than zero.
pub fn validate_duration(
    what: &'static str,
    value: Duration,
    nonzero: bool,
) -> Result<(), InvalidJob> {
    let (bad, range) = if nonzero {
        (
            value.is_zero() || value > MAX_DURATION,
            "more than 0 and at most 100 years",
        )
    } else {
        (value > MAX_DURATION, "at most 100 years")
    };
    if bad {
        return Err(InvalidJob::Duration { what, value, range });
    }
    Ok(())
}

impl NewJob {
    /// Checks everything about the job that does not depend on the broker's abilities:
    /// kind, queue name, payload (JSON, at most `limits.max_payload` bytes), attempts,
    /// durations, unique key and trace id.
    pub fn validate(&self, limits: &JobLimits) -> Result<(), InvalidJob> {
        validate_kind(&self.kind)?;
        validate_queue_name(&self.queue)?;
        if self.payload.len() > limits.max_payload {
            return Err(InvalidJob::PayloadTooLarge {
                kind: self.kind.clone(),
                size: self.payload.len(),
                limit: limits.max_payload,
            });
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&self.payload) {
            return Err(InvalidJob::PayloadNotJson {
                kind: self.kind.clone(),
                error: e.to_string(),
            });
        }
        if self.max_attempts == 0 {
            return Err(InvalidJob::NoAttempts);
        }
        if let Some(d) = self.delay {
            validate_duration("delay", d, false)?;
        }
        if let Some(t) = self.timeout {
            validate_duration("timeout", t, true)?;
        }
        if let Some(k) = &self.unique_key {
            if k.is_empty() || k.len() > MAX_UNIQUE_KEY_LEN {
                return Err(InvalidJob::UniqueKey { len: k.len() });
            }
        }
        if let Some(t) = &self.trace_id {
            if t.is_empty()
                || t.len() > MAX_TRACE_ID_LEN
                || !t.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(InvalidJob::TraceId);
            }
        }
        Ok(())
    }
}

/// What every broker runs first in `enqueue_many`: each job [valid](NewJob::validate) under
/// `limits`, and nothing asked of the broker that its `capabilities` do not include (a unique
/// key needs [`Capability::UniqueKeys`], a priority other than 0 needs
/// [`Capability::Priorities`]). The first bad job is reported with its index in `jobs`;
/// nothing is stored.
pub fn check_new_jobs(
    jobs: &[NewJob],
    capabilities: Capabilities,
    limits: &JobLimits,
) -> Result<(), BrokerError> {
    for (index, job) in jobs.iter().enumerate() {
        job.validate(limits)
            .map_err(|error| BrokerError::InvalidJob { index, error })?;
        if job.unique_key.is_some() && !capabilities.has(Capability::UniqueKeys) {
            return Err(BrokerError::Unsupported(
                "unique keys (this broker cannot look a job up by key)".into(),
            ));
        }
        if job.priority != 0 && !capabilities.has(Capability::Priorities) {
            return Err(BrokerError::Unsupported(
                "priorities (this broker's queues are first in, first out)".into(),
            ));
        }
    }
    Ok(())
}

/// The first `max` bytes of `s`, cut at a character boundary.
fn prefix(s: &str, max: usize) -> String {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        for ok in [
            "default",
            "a",
            "mail.high",
            "tenant:42",
            "x_y-z",
            "q.delay",
            "q.delay.x",
        ] {
            assert_eq!(validate_queue_name(ok), Ok(()), "{ok}");
        }
        let long = "q".repeat(MAX_QUEUE_LEN + 1);
        for bad in [
            "",
            "amq.x",
            "q.dead",
            "q.delay.250",
            "q.wait.1000",
            "a b",
            "é",
            "q/1",
            &long,
        ] {
            assert!(validate_queue_name(bad).is_err(), "{bad}");
        }
        let e = validate_queue_name("a b").unwrap_err().to_string();
        assert!(e.contains("has ` `"), "{e}");
    }

    #[test]
    fn a_long_multibyte_kind_is_cut_at_a_character() {
        let kind = "€".repeat(100);
        let e = validate_kind(&kind).unwrap_err().to_string();
        assert!(e.contains("300 bytes"), "{e}");
        assert!(validate_kind(" x").is_err());
        assert!(validate_kind("a\nb").is_err());
        assert!(validate_kind("http").is_ok());
    }

    #[test]
    fn new_jobs() {
        let l = JobLimits { max_payload: 10 };
        let ok = NewJob::new("k", "{}");
        assert_eq!(ok.validate(&l), Ok(()));
        let e = |j: NewJob| j.validate(&l).unwrap_err();
        assert!(matches!(
            e(NewJob::new("k", "[1,2,3,4,5,6]")),
            InvalidJob::PayloadTooLarge { size: 13, .. }
        ));
        assert!(matches!(
            e(NewJob::new("k", "{")),
            InvalidJob::PayloadNotJson { .. }
        ));
        assert!(matches!(
            e(NewJob::new("k", "1").queue("")),
            InvalidJob::Queue(_)
        ));
        let mut j = NewJob::new("k", "1");
        j.max_attempts = 0;
        assert_eq!(e(j), InvalidJob::NoAttempts);
        assert!(matches!(
            e(NewJob::new("k", "1").timeout(Duration::ZERO)),
            InvalidJob::Duration {
                what: "timeout",
                ..
            }
        ));
        assert!(matches!(
            e(NewJob::new("k", "1").delay(MAX_DURATION + Duration::from_secs(1))),
            InvalidJob::Duration { what: "delay", .. }
        ));
        assert!(NewJob::new("k", "1")
            .delay(Duration::ZERO)
            .validate(&l)
            .is_ok());
        assert!(matches!(
            e(NewJob::new("k", "1").unique("")),
            InvalidJob::UniqueKey { len: 0 }
        ));
        assert_eq!(
            e(NewJob::new("k", "1").trace_id("a b")),
            InvalidJob::TraceId
        );
    }

    #[test]
    fn brokers_refuse_what_they_cannot_do() {
        let l = JobLimits::default();
        let fifo = Capabilities::NONE;
        let jobs = [NewJob::new("k", "1"), NewJob::new("k", "1").priority(3)];
        assert!(matches!(
            check_new_jobs(&jobs, fifo, &l),
            Err(BrokerError::Unsupported(_))
        ));
        let all = fifo
            .with(Capability::Priorities)
            .with(Capability::UniqueKeys);
        assert!(check_new_jobs(&jobs, all, &l).is_ok());
        let bad = [NewJob::new("k", "1"), NewJob::new("", "1")];
        match check_new_jobs(&bad, all, &l) {
            Err(BrokerError::InvalidJob { index: 1, error }) => {
                assert_eq!(error, InvalidJob::EmptyKind)
            }
            other => panic!("{other:?}"),
        }
    }
}
