//! Property tests of the codec: any message another producer (or a corruption) can send
//! decodes or names a reason, and every job weir writes reads back the same.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use weir_core::{JobId, NewJob, Timestamp};

use super::{decode, decode_dead, encode, hop_and_due, Incoming, META};

fn incoming(redelivered: bool) -> Incoming<'static> {
    Incoming {
        queue: "mail",
        redelivered,
    }
}

use proptest::prelude::*;

/// A header value of any AMQP type weir might meet.
fn any_value() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        "\\PC{0,40}".prop_map(|s| AMQPValue::LongString(s.as_str().into())),
        "[a-z=,0-9/-]{0,40}".prop_map(|s| AMQPValue::LongString(s.as_str().into())),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<u64>().prop_map(AMQPValue::Timestamp),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Any headers and properties another producer (or a corrupted message) can send
    /// decode to a job or to a reason; never a panic inside a consumer.
    #[test]
    fn any_message_decodes_or_says_why(
        id in proptest::option::of(prop_oneof![
            Just(JobId::new().to_string()),
            "\\PC{0,40}",
        ]),
        kind in proptest::option::of("\\PC{0,40}"),
        meta in proptest::option::of(prop_oneof![
            "(a|m|r|c|p|t|w|zz)=[-0-9/a-f]{0,24}(,(a|m|r|c|p|t|w)=[-0-9]{0,20}){0,6}",
            "\\PC{0,60}",
        ]),
        extra in proptest::collection::vec(
            (prop_oneof![
                Just("x-delivery-count"), Just("x-weir-error"), Just("traceparent"),
                Just("x-weir-hop"), Just("x-death"), Just("x-weir"),
            ], any_value()),
            0..4,
        ),
        redelivered: bool,
        timestamp in proptest::option::of(any::<u64>()),
    ) {
        let mut h = FieldTable::default();
        if let Some(m) = &meta {
            h.insert(META.into(), AMQPValue::LongString(m.as_str().into()));
        }
        for (k, v) in extra {
            h.insert(k.into(), v);
        }
        let mut props = BasicProperties::default().with_headers(h);
        if let Some(id) = id {
            props = props.with_message_id(id.as_str().into());
        }
        if let Some(k) = kind {
            props = props.with_type(k.as_str().into());
        }
        if let Some(t) = timestamp {
            props = props.with_timestamp(t);
        }
        let _ = hop_and_due(&props);
        match decode(&props, b"{}".to_vec(), incoming(redelivered)) {
            Ok(job) => prop_assert!(job.attempt >= 1 && job.max_attempts >= 1),
            Err(why) => prop_assert!(!why.is_empty()),
        }
        let _ = decode_dead(&props, b"{}".to_vec(), "q");
    }

    /// Every job weir writes reads back the same (its own metadata survives).
    #[test]
    fn encoded_jobs_decode_the_same(
        kind in "[!-~]{1,40}",
        attempt in 0u32..1000,
        max in 1u32..1000,
        priority in any::<i32>(),
        timeout_ms in proptest::option::of(0u64..1u64 << 40),
        trace in prop_oneof!["[0-9a-f]{32}", "[!-~]{1,60}"],
        run_at in 0i64..1i64 << 45,
    ) {
        let mut job = NewJob::new(kind.as_str(), b"{}".to_vec())
            .max_attempts(max)
            .priority(priority)
            .trace_id(trace.as_str())
            .into_job(Timestamp(run_at));
        job.attempt = attempt;
        job.timeout = timeout_ms.map(Duration::from_millis);
        let back = decode(&encode(&job), b"{}".to_vec(), incoming(false)).unwrap();
        prop_assert_eq!(back.attempt, attempt + 1);
        prop_assert_eq!((back.kind, back.max_attempts, back.priority), (kind, max, priority));
        prop_assert_eq!(back.timeout, job.timeout);
        prop_assert_eq!(back.trace_id, trace);
        prop_assert_eq!(back.run_at, job.run_at);
    }
}
