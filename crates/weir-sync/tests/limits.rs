//! Named limits: concurrency per key, rates per key, idle keys freed, live updates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use weir_sync::{LimitSpec, Limiter, Rate};

fn keys(k: &[&str]) -> Vec<String> {
    k.iter().map(|s| s.to_string()).collect()
}

fn spec(concurrency: Option<usize>, rate: Option<&str>) -> LimitSpec {
    LimitSpec {
        concurrency,
        rate: rate.map(|r| r.parse().unwrap()),
    }
}

#[tokio::test(start_paused = true)]
async fn fifty_tasks_on_a_limit_of_three_never_exceed_three() {
    let limiter = Limiter::new(HashMap::from([("db".to_string(), spec(Some(3), None))]));
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (limiter, now, peak) = (limiter.clone(), now.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let admission = loop {
                match limiter.try_admit(&keys(&["db"])) {
                    Ok(a) => break a,
                    Err(refused) => tokio::time::sleep(refused.wait).await,
                }
            };
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            drop(admission);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3);
    assert_eq!(limiter.tracked_keys(), 0, "idle keys are freed");
}

#[test]
fn a_rate_of_100_per_second_admits_200_in_2_seconds() {
    let clock = FakeRelativeClock::default();
    let limiter = Limiter::with_clock(
        HashMap::from([("api".to_string(), spec(None, Some("100/s")))]),
        clock.clone(),
    );
    let mut admitted = 0;
    for _ in 0..2000 {
        while limiter.try_admit(&keys(&["api"])).is_ok() {
            admitted += 1;
        }
        clock.advance(Duration::from_millis(1));
    }
    assert!((198..=202).contains(&admitted), "admitted {admitted}");
    while limiter.try_admit(&keys(&["api"])).is_ok() {}
    let refused = limiter.try_admit(&keys(&["api"])).unwrap_err();
    assert_eq!(&*refused.limit, "api");
    assert!(refused.wait <= Duration::from_millis(10), "{refused:?}");
}

#[test]
fn keys_are_separate_and_unlimited_names_pass() {
    let limiter = Limiter::new(HashMap::from([("tenant".to_string(), spec(Some(1), None))]));
    let a = limiter.try_admit(&keys(&["tenant:1"])).unwrap();
    let b = limiter.try_admit(&keys(&["tenant:2"])).unwrap();
    assert!(limiter.try_admit(&keys(&["tenant:1"])).is_err());
    assert!(
        limiter.try_admit(&keys(&["other:1", "free"])).is_ok(),
        "no such limit: unlimited"
    );
    // All or nothing: the second key is busy, so the first is not held either.
    assert!(limiter.try_admit(&keys(&["tenant:3", "tenant:1"])).is_err());
    assert_eq!(limiter.tracked_keys(), 2);
    drop((a, b));
    assert_eq!(limiter.tracked_keys(), 0);
    let many: Vec<_> = (0..1000)
        .map(|i| limiter.try_admit(&[format!("tenant:{i}")]).unwrap())
        .collect();
    assert_eq!(limiter.tracked_keys(), 1000);
    drop(many);
    assert_eq!(
        limiter.tracked_keys(),
        0,
        "no unbounded growth with many keys"
    );
}

#[test]
fn refusals_name_the_full_limit_and_admissions_are_counted_per_limit() {
    let limiter = Limiter::new(HashMap::from([
        ("tenant".to_string(), spec(Some(1), None)),
        ("db".to_string(), spec(Some(5), None)),
    ]));
    assert_eq!(
        limiter.in_flight(),
        vec![("db".to_string(), 0), ("tenant".to_string(), 0)]
    );
    // Two keys of one limit count once for it.
    let a = limiter
        .try_admit(&keys(&["tenant:1", "tenant:2", "db"]))
        .unwrap();
    let b = limiter.try_admit(&keys(&["db", "free"])).unwrap();
    assert_eq!(
        limiter.in_flight(),
        vec![("db".to_string(), 2), ("tenant".to_string(), 1)]
    );
    let refused = limiter.try_admit(&keys(&["db", "tenant:1"])).unwrap_err();
    assert_eq!(&*refused.limit, "tenant");
    assert_eq!(
        limiter.in_flight(),
        vec![("db".to_string(), 2), ("tenant".to_string(), 1)],
        "a refusal holds nothing"
    );
    // Counts survive a live update of the limits.
    limiter.update(HashMap::from([
        ("tenant".to_string(), spec(Some(2), None)),
        ("db".to_string(), spec(Some(5), None)),
    ]));
    drop(a);
    assert_eq!(
        limiter.in_flight(),
        vec![("db".to_string(), 1), ("tenant".to_string(), 0)]
    );
    drop(b);
    assert_eq!(limiter.in_flight()[0], ("db".to_string(), 0));
}

#[test]
fn capacities_change_live() {
    let limiter = Limiter::new(HashMap::from([("db".to_string(), spec(Some(1), None))]));
    let first = limiter.try_admit(&keys(&["db"])).unwrap();
    assert!(limiter.try_admit(&keys(&["db"])).is_err());
    limiter.update(HashMap::from([("db".to_string(), spec(Some(2), None))]));
    let second = limiter.try_admit(&keys(&["db"])).unwrap();
    assert!(limiter.try_admit(&keys(&["db"])).is_err());
    limiter.update(HashMap::from([("db".to_string(), spec(Some(1), None))]));
    drop(first);
    assert!(
        limiter.try_admit(&keys(&["db"])).is_err(),
        "shrunk: the returned permit retires"
    );
    drop(second);
    assert!(limiter.try_admit(&keys(&["db"])).is_ok());
    limiter.update(HashMap::new());
    let _unlimited: Vec<_> = (0..10)
        .map(|_| limiter.try_admit(&keys(&["db"])).unwrap())
        .collect();
}

#[test]
fn rates_parse() {
    assert_eq!(
        "100/s".parse::<Rate>().unwrap(),
        Rate {
            count: 100,
            per: Duration::from_secs(1)
        }
    );
    assert_eq!("20/m".parse::<Rate>().unwrap().per, Duration::from_secs(60));
    assert_eq!(
        "5/250ms".parse::<Rate>().unwrap().per,
        Duration::from_millis(250)
    );
    assert!("0/s"
        .parse::<Rate>()
        .unwrap_err()
        .to_string()
        .contains("at least 1"));
    assert!("fast"
        .parse::<Rate>()
        .unwrap_err()
        .to_string()
        .contains("is not a rate"));
}
