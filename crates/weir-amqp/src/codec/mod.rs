//! A job as an AMQP message, and back. Pure: no I/O, unit-tested here.
//!
//! The body is the payload, untouched. The message id is the job id, the AMQP `type` is the
//! kind, and everything else travels in `x-weir-*` headers. `x-weir-attempts` counts the
//! attempts already spent when the message was published; the broker adds the ones it lost
//! (redeliveries) on the way back in.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use weir_core::{Job, JobId, JobState, Member, Timestamp, DEFAULT_MAX_ATTEMPTS};

/// All of weir's metadata in one header: `a=SPENT,m=MAX,r=RUN_AT_MS,c=CREATED_MS` plus
/// `p=PRIORITY`, `t=TIMEOUT_MS` and `w=WORKFLOW/INDEX` when set. One short string rather than six typed headers:
/// parsing field tables was a tenth of a worker's CPU, and RabbitMQ stores less.
const META: &str = "x-weir";
const ERROR: &str = "x-weir-error";
/// Added by quorum queues to a redelivered message: how many times it came back unsettled.
const DELIVERY_COUNT: &str = "x-delivery-count";
/// Added by RabbitMQ when it dead-letters a message itself (e.g. the delivery limit).
const DEATH: &str = "x-death";
/// On a message in a worker-moved delay tier: when (ms since the epoch) it leaves the tier.
const HOP: &str = "x-weir-hop";
/// W3C trace context, so tracing tools that read AMQP headers join a job to its trace.
const TRACEPARENT: &str = "traceparent";

/// The W3C `traceparent` for a job whose trace id is 32 hex digits (weir's own are): version
/// 00, the trace id, a parent id from the job id, sampled.
fn traceparent(trace_id: &str, id: JobId) -> Option<String> {
    let hex = trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| {
        let parent = &id.as_uuid().simple().to_string()[16..];
        format!("00-{}-{parent}-01", trace_id.to_ascii_lowercase())
    })
}

/// The trace id of a W3C `traceparent` (`00-TRACE-PARENT-FLAGS`), if well formed.
fn trace_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then(|| trace.to_owned())
}

/// `props` for a message that leaves a worker-moved delay tier at `hop_at_ms`.
pub(crate) fn with_hop(props: BasicProperties, hop_at_ms: i64) -> BasicProperties {
    let mut h = props.headers().clone().unwrap_or_default();
    h.insert(HOP.into(), AMQPValue::LongLongInt(hop_at_ms));
    props.with_headers(h)
}

/// `props` without the delivery count a quorum queue added (a delay tier's count is not the
/// job's lost attempts).
pub(crate) fn without_delivery_count(props: BasicProperties) -> BasicProperties {
    match props.headers() {
        Some(h) if h.inner().contains_key(DELIVERY_COUNT) => {
            let mut map = h.inner().clone();
            map.remove(DELIVERY_COUNT);
            props.with_headers(FieldTable::from(map))
        }
        _ => props,
    }
}

/// When a message in a worker-moved delay tier leaves it, and when its job is due (both ms
/// since the epoch). A message without the headers (not weir's, or unreadable) leaves at once
/// and is due at once: the work queue's consumer dead-letters what it cannot run.
pub(crate) fn hop_and_due(props: &BasicProperties) -> (i64, i64) {
    let Some(h) = props.headers().as_ref() else {
        return (0, 0);
    };
    let hop = h.inner().get(HOP).and_then(as_int).unwrap_or(0);
    let due = string(h, META)
        .and_then(|m| parse_meta(&m).ok())
        .and_then(|m| m.run_at)
        .unwrap_or(0);
    (hop, due)
}

/// Message properties for `job`. `job.attempt` is the number of attempts already spent. The
/// job id is the message id, the kind the type, the trace id the correlation id.
pub(crate) fn encode(job: &Job) -> BasicProperties {
    use std::fmt::Write;
    let mut meta = format!(
        "a={},m={},r={},c={}",
        job.attempt,
        job.max_attempts,
        job.run_at.as_millis(),
        job.created_at.as_millis()
    );
    if job.priority != 0 {
        let _ = write!(meta, ",p={}", job.priority);
    }
    if let Some(t) = job.timeout {
        let _ = write!(meta, ",t={}", t.as_millis());
    }
    if let Some(m) = &job.member {
        let _ = write!(meta, ",w={m}");
    }
    let mut h = FieldTable::default();
    h.insert(META.into(), AMQPValue::LongString(meta.into()));
    if let Some(e) = &job.last_error {
        h.insert(ERROR.into(), AMQPValue::LongString(e.as_str().into()));
    }
    if let Some(tp) = traceparent(&job.trace_id, job.id) {
        h.insert(TRACEPARENT.into(), AMQPValue::LongString(tp.into()));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(job.id.to_string().into())
        .with_type(short(&job.kind))
        .with_correlation_id(short(&job.trace_id))
        .with_timestamp(u64::try_from(job.created_at.as_millis() / 1000).unwrap_or(0))
        .with_headers(h)
}

/// The fields of the `x-weir` header.
#[derive(Default)]
struct Meta {
    spent: Option<i64>,
    max: Option<i64>,
    run_at: Option<i64>,
    created: Option<i64>,
    priority: Option<i64>,
    timeout_ms: Option<i64>,
    member: Option<Member>,
}

fn parse_meta(text: &str) -> Result<Meta, String> {
    let mut m = Meta::default();
    for field in text.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("header {META}: `{field}` is not key=value"))?;
        if k == "w" {
            m.member = Some(v.parse().map_err(|e| format!("header {META}: {e}"))?);
            continue;
        }
        let n: i64 = v
            .parse()
            .map_err(|_| format!("header {META}: `{field}` is not a number"))?;
        match k {
            "a" => m.spent = Some(n),
            "m" => m.max = Some(n),
            "r" => m.run_at = Some(n),
            "c" => m.created = Some(n),
            "p" => m.priority = Some(n),
            "t" => m.timeout_ms = Some(n),
            _ => {} // a newer weir's field: ignored
        }
    }
    Ok(m)
}

/// An AMQP short string (at most 255 bytes): weir_core's job validation keeps kinds and
/// trace ids within it before anything is published.
fn short(s: &str) -> ShortString {
    ShortString::from(s)
}

/// How a message came in, besides its properties and body.
pub(crate) struct Incoming<'a> {
    /// The weir queue it belongs to.
    pub(crate) queue: &'a str,
    /// The broker's redelivered flag.
    pub(crate) redelivered: bool,
}

/// The job a message carries, with `attempt` counting this delivery. `Err` names what is
/// wrong with a message weir cannot run (it is dead-lettered with that reason).
pub(crate) fn decode(
    props: &BasicProperties,
    body: Vec<u8>,
    how: Incoming<'_>,
) -> Result<Job, String> {
    let id_str = props
        .message_id()
        .as_ref()
        .ok_or("message has no message-id (weir puts the job id there)")?;
    let id: JobId = id_str
        .as_str()
        .parse()
        .map_err(|e| format!("message-id `{id_str}` is not a job id: {e}"))?;
    let kind = props
        .kind()
        .as_ref()
        .ok_or("message has no type (weir puts the task kind there)")?
        .to_string();
    let empty = FieldTable::default();
    let h = props.headers().as_ref().unwrap_or(&empty);
    let meta = match string(h, META) {
        Some(text) => parse_meta(&text)?,
        None => Meta::default(), // another producer's message: defaults
    };
    let spent = u32::try_from(meta.spent.unwrap_or(0))
        .map_err(|_| format!("header {META}: attempts out of range"))?;
    // Quorum queues count redeliveries; classic queues only flag them.
    let lost = match h.inner().get(DELIVERY_COUNT).and_then(as_int) {
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        None => u32::from(how.redelivered),
    };
    let max_attempts = match meta.max {
        None => DEFAULT_MAX_ATTEMPTS,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("header {META}: max attempts must be at least 1, got {n}"))?,
    };
    let priority = i32::try_from(meta.priority.unwrap_or(0))
        .map_err(|_| format!("header {META}: priority out of range"))?;
    let created_at = match meta.created {
        Some(ms) => Timestamp(ms),
        None => props
            .timestamp()
            .map(|s| Timestamp(i64::try_from(s).unwrap_or(0).saturating_mul(1000)))
            .unwrap_or(Timestamp(0)),
    };
    let timeout = match meta.timeout_ms {
        None => None,
        Some(ms) => Some(Duration::from_millis(
            u64::try_from(ms).map_err(|_| format!("header {META}: negative timeout"))?,
        )),
    };
    Ok(Job {
        id,
        kind,
        queue: how.queue.to_owned(),
        payload: body,
        priority,
        run_at: meta.run_at.map(Timestamp).unwrap_or(created_at),
        attempt: spent.saturating_add(lost).saturating_add(1),
        max_attempts,
        timeout,
        unique_key: None,
        // weir's correlation id; else a foreign producer's W3C trace context; else its own.
        trace_id: props
            .correlation_id()
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| string(h, TRACEPARENT).and_then(|tp| trace_of(&tp)))
            .unwrap_or_else(|| id.to_string()),
        created_at,
        state: JobState::Running,
        last_error: string(h, ERROR).or_else(|| death_reason(h)),
        result: None,
        lease_until: None,
        finished_at: None,
        member: meta.member,
    })
}

/// A dead-lettered message as a Failed job: attempts as spent, the error as recorded.
pub(crate) fn decode_dead(props: &BasicProperties, body: Vec<u8>, queue: &str) -> Job {
    decode_dead_checked(props, body, queue).unwrap_or_else(|shown| *shown)
}

/// [`decode_dead`], saying whether the message could be read: `Err` carries the placeholder
/// shown for one that could not (it cannot be run again).
pub(crate) fn decode_dead_checked(
    props: &BasicProperties,
    body: Vec<u8>,
    queue: &str,
) -> Result<Job, Box<Job>> {
    let how = Incoming {
        queue,
        redelivered: false,
    };
    let mut bare = props.clone();
    // Peeking requeues the message; that redelivery is not an attempt.
    if let Some(h) = props.headers() {
        let mut h = h.inner().clone();
        h.remove(DELIVERY_COUNT);
        bare = bare.with_headers(h.into());
    }
    match decode(&bare, body.clone(), how) {
        Ok(mut job) => {
            job.attempt = job.attempt.saturating_sub(1);
            job.state = JobState::Failed;
            Ok(job)
        }
        // Dead-lettered because it could not be read: show it as it is.
        Err(why) => Err(Box::new(Job {
            id: props
                .message_id()
                .as_ref()
                .and_then(|m| m.as_str().parse().ok())
                .unwrap_or_else(|| JobId::from_bytes([0; 16])),
            kind: props
                .kind()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            queue: queue.to_owned(),
            payload: body,
            priority: 0,
            run_at: Timestamp(0),
            attempt: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: None,
            unique_key: None,
            trace_id: String::new(),
            created_at: Timestamp(0),
            state: JobState::Failed,
            last_error: props
                .headers()
                .as_ref()
                .and_then(|h| string(h, ERROR))
                .or(Some(why)),
            result: None,
            lease_until: None,
            finished_at: None,
            member: None,
        })),
    }
}

fn string(h: &FieldTable, k: &str) -> Option<String> {
    match h.inner().get(k)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Why RabbitMQ dead-lettered a message itself, from its `x-death` header.
fn death_reason(h: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = h.inner().get(DEATH)? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let reason = string(first, "reason")?;
    Some(match reason.as_str() {
        "delivery_limit" => {
            "dead-lettered by RabbitMQ: delivery limit reached (workers kept losing it)".into()
        }
        other => format!("dead-lettered by RabbitMQ: {other}"),
    })
}

fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match *v {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        AMQPValue::Timestamp(n) => i64::try_from(n).ok()?,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::NewJob;

    fn sample() -> Job {
        NewJob::new("email", br#"{"to":"x"}"#.to_vec())
            .queue("mail")
            .priority(-3)
            .max_attempts(7)
            .timeout(Duration::from_millis(1500))
            .trace_id("t-1")
            .member(Member {
                workflow: JobId::new(),
                index: 12,
            })
            .into_job(Timestamp(1_700_000_000_123))
    }

    fn incoming(redelivered: bool) -> Incoming<'static> {
        Incoming {
            queue: "mail",
            redelivered,
        }
    }

    #[test]
    fn the_trace_travels_as_w3c_traceparent_too() {
        let mut job = sample();
        job.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".into();
        let props = encode(&job);
        let h = props.headers().as_ref().unwrap();
        let tp = string(h, TRACEPARENT).unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert_eq!(tp.len(), 55);
        assert!(tp.ends_with("-01"));
        // A foreign message with only a traceparent joins that trace.
        let mut map = h.inner().clone();
        map.remove(META);
        let foreign = BasicProperties::default()
            .with_message_id(job.id.to_string().into())
            .with_type("email".into())
            .with_headers(FieldTable::from(map));
        let back = decode(&foreign, b"{}".to_vec(), incoming(false)).unwrap();
        assert_eq!(back.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        // A trace id that is not 32 hex digits has no traceparent (and no error).
        job.trace_id = "t-1".into();
        assert!(!encode(&job)
            .headers()
            .as_ref()
            .unwrap()
            .contains_key(TRACEPARENT));
        assert_eq!(
            trace_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_of("garbage"), None);
    }

    #[test]
    fn hop_times_travel_in_a_header() {
        let job = sample();
        let props = with_hop(encode(&job), 1_234);
        assert_eq!(hop_and_due(&props), (1_234, job.run_at.as_millis()));
        // Setting it again replaces it; the job's own headers stay.
        let props = with_hop(props, 5_678);
        assert_eq!(hop_and_due(&props).0, 5_678);
        let back = decode(&props, job.payload.clone(), incoming(false)).unwrap();
        assert_eq!(back.id, job.id);
        assert_eq!(hop_and_due(&BasicProperties::default()), (0, 0));
        // A tier's delivery count is dropped before the message moves on.
        let mut h = props.headers().clone().unwrap();
        h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        let moved = without_delivery_count(props.with_headers(h));
        let back = decode(&moved, job.payload.clone(), incoming(false)).unwrap();
        assert_eq!(
            back.attempt,
            job.attempt + 1,
            "no lost attempts read from the tier"
        );
    }

    #[test]
    fn round_trip_counts_this_attempt() {
        let job = sample();
        let props = encode(&job);
        let back = decode(&props, job.payload.clone(), incoming(false)).unwrap();
        assert_eq!(back.id, job.id);
        assert_eq!(back.kind, "email");
        assert_eq!(back.queue, "mail");
        assert_eq!(back.payload, job.payload);
        assert_eq!(back.priority, -3);
        assert_eq!(back.max_attempts, 7);
        assert_eq!(back.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(back.trace_id, "t-1");
        assert_eq!(back.created_at, job.created_at);
        assert_eq!(back.run_at, job.run_at);
        assert_eq!(back.attempt, 1);
        assert_eq!(back.state, JobState::Running);
        assert_eq!(back.member, job.member);
    }

    #[test]
    fn redeliveries_count_as_attempts() {
        let mut job = sample();
        job.attempt = 2;
        let props = encode(&job);
        // Classic queues: only the flag.
        assert_eq!(decode(&props, vec![], incoming(true)).unwrap().attempt, 4);
        // Quorum queues: the count.
        let mut h = props.headers().clone().unwrap();
        h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        let props = props.with_headers(h);
        assert_eq!(decode(&props, vec![], incoming(true)).unwrap().attempt, 6);
    }

    #[test]
    fn foreign_messages_are_named_errors() {
        let none = BasicProperties::default();
        let e = decode(&none, vec![], incoming(false)).unwrap_err();
        assert!(e.contains("no message-id"), "{e}");
        let bad_id = BasicProperties::default().with_message_id("42".into());
        let e = decode(&bad_id, vec![], incoming(false)).unwrap_err();
        assert!(e.contains("`42` is not a job id"), "{e}");
        let no_kind = BasicProperties::default().with_message_id(JobId::new().to_string().into());
        let e = decode(&no_kind, vec![], incoming(false)).unwrap_err();
        assert!(e.contains("no type"), "{e}");
        let mut h = FieldTable::default();
        h.insert(META.into(), AMQPValue::LongString("a=two".into()));
        let bad_header = no_kind.with_type("k".into()).with_headers(h);
        let e = decode(&bad_header, vec![], incoming(false)).unwrap_err();
        assert!(e.contains("`a=two` is not a number"), "{e}");
    }

    #[test]
    fn minimal_foreign_message_gets_defaults() {
        let id = JobId::new();
        let props = BasicProperties::default()
            .with_message_id(id.to_string().into())
            .with_type("noop".into())
            .with_timestamp(1_700_000_000);
        let job = decode(&props, b"{}".to_vec(), incoming(false)).unwrap();
        assert_eq!(job.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(job.attempt, 1);
        assert_eq!(job.created_at, Timestamp(1_700_000_000_000));
        assert_eq!(job.run_at, job.created_at);
    }

    #[test]
    fn dead_letters_keep_their_error() {
        let mut job = sample();
        job.attempt = 3;
        job.last_error = Some("upstream 500".into());
        let dead = decode_dead(&encode(&job), vec![], "mail");
        assert_eq!(dead.state, JobState::Failed);
        assert_eq!(dead.attempt, 3);
        assert_eq!(dead.last_error.as_deref(), Some("upstream 500"));
        // Dead-lettered by RabbitMQ's delivery limit: the reason comes from x-death.
        let mut plain = sample();
        plain.attempt = 0;
        let mut h = encode(&plain).headers().clone().unwrap();
        let mut death = FieldTable::default();
        death.insert(
            "reason".into(),
            AMQPValue::LongString("delivery_limit".into()),
        );
        h.insert(
            DEATH.into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        let dead = decode_dead(&encode(&plain).with_headers(h), vec![], "mail");
        assert!(dead.last_error.unwrap().contains("delivery limit"));
        // Unreadable: shown as it is, with why.
        let junk = decode_dead(&BasicProperties::default(), b"?".to_vec(), "mail");
        assert!(junk.last_error.unwrap().contains("no message-id"));
    }
}

#[cfg(test)]
mod props;
