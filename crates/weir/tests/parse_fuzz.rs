//! Property tests for everything weir parses from outside: whatever the input, a parser
//! returns a value or an error that says what is wrong, and never panics. (Cheaper than
//! cargo-fuzz to run on every CI build; the generators aim at the shapes that matter:
//! near-valid TOML, URLs with odd parameters, multi-byte text, huge numbers.)

use std::path::Path;

use proptest::prelude::*;
use weir::config::Config;
use weir::{JobId, JobLimits, NewJob};

/// Text built from the pieces of a `weir.toml`, so most cases get past the TOML parser and
/// into weir's own checks.
fn toml_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("workers"),
        Just("max_workers"),
        Just("cooldown"),
        Just("timeout"),
        Just("concurrency"),
        Just("rate"),
        Just("allow"),
        Just("limits"),
        Just("base"),
        Just("factor"),
        Just("cap"),
        Just("jitter"),
        Just("deny"),
        Just("max_body"),
        Just("log"),
        Just("broker"),
        Just("low_utilisation"),
        Just("dir"),
        Just("env"),
    ];
    let value = prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("\"0s\"".to_owned()),
        Just("\"300000000y\"".to_owned()),
        Just("\"1/s\"".to_owned()),
        Just("\"0/s\"".to_owned()),
        Just("\"€€€\"".to_owned()),
        Just("[\"{x}\"]".to_owned()),
        Just("[\"tenant:{\"]".to_owned()),
        Just("[\"10.0.0.0/33\"]".to_owned()),
        Just("1e308".to_owned()),
        Just("nan".to_owned()),
        Just("true".to_owned()),
        "\"[ -~]{0,12}\"".prop_map(|s| s),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    let table = prop_oneof![
        Just(""),
        Just("[queues.q]\n"),
        Just("[limits.tenant]\n"),
        Just("[retry.k]\n"),
        Just("[kinds.k]\n"),
        Just("[shell]\n"),
        Just("[http]\n"),
        Just("[queues.\"\"]\n"),
    ];
    prop::collection::vec((table, key, value), 0..8).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(t, k, v)| format!("{t}{k} = {v}\n"))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn weir_toml_never_panics(text in toml_like()) {
        if let Err(e) = Config::parse(Path::new("w.toml"), &text) {
            prop_assert!(e.to_string().starts_with("w.toml"), "{}", e);
        }
    }

    #[test]
    fn any_text_as_weir_toml_never_panics(text in "\\PC{0,200}") {
        let _ = Config::parse(Path::new("w.toml"), &text);
    }

    #[test]
    fn broker_and_store_urls_never_panic(
        scheme in prop_oneof![Just("sqlite:"), Just("amqp://"), Just("postgres://")],
        rest in "[ ->@-~€]{0,60}",
        query in "[ -~€]{0,30}",
    ) {
        let url = format!("{scheme}{rest}?{query}");
        let _ = weir::SqliteOptions::from_url(&url);
        let _ = weir::AmqpOptions::from_url(&url);
        let _ = weir::PgOptions::from_url(&url);
        let _ = weir::redact_url(&url);
        // A redacted URL never shows a password given in the user part or as `password=`.
        for url in [
            format!("{scheme}{rest}?password=hunter2"),
            format!("{scheme}{rest}?a=1&password=hunter2"),
            format!("amqp://user:hunter2@{rest}"),
        ] {
            let redacted = weir::redact_url(&url);
            prop_assert!(!redacted.contains("hunter2"), "{} -> {}", url, redacted);
        }
    }

    #[test]
    fn job_ids_parse_or_refuse(text in "[0-9a-fA-F-]{0,40}|\\PC{0,40}") {
        if let Ok(id) = text.parse::<JobId>() {
            prop_assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        }
    }

    #[test]
    fn built_in_payloads_decode_or_refuse(
        kind in prop_oneof![Just("sleep"), Just("fail"), Just("shell"), Just("http"), Just("other")],
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let _ = weir::builtins::check_payload(kind, &payload);
    }

    #[test]
    fn new_jobs_validate_or_say_why(
        kind in "\\PC{0,300}",
        queue in "[a-z.:€-]{0,210}",
        payload in prop::collection::vec(any::<u8>(), 0..64),
        attempts in any::<u32>(),
        priority in any::<i32>(),
    ) {
        let job = NewJob::new(kind, payload).queue(queue).max_attempts(attempts).priority(priority);
        if let Err(e) = job.validate(&JobLimits::default()) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
