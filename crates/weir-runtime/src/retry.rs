use std::time::Duration;

use rand::Rng;
use weir_core::{Settlement, TaskError, Timestamp};
use weir_sync::Backoff;

/// What to record for an attempt that ended with `result`: pure, so the retry schedule is
/// tested with a fixed clock and a seeded RNG.
///
/// - `Ok` → Succeeded with the result.
/// - retryable error with attempts left → Retry at `now + retry_after` if the handler asked for
///   one, else `now + backoff.delay(attempt)`.
/// - retryable error on the last attempt → Failed, saying the attempts are exhausted.
/// - permanent error → Failed.
pub fn settlement_for<R: Rng + ?Sized>(
    result: Result<Option<Vec<u8>>, TaskError>,
    attempt: u32,
    max_attempts: u32,
    backoff: &Backoff,
    now: Timestamp,
    rng: &mut R,
) -> Settlement {
    match result {
        Ok(result) => Settlement::Succeeded { result },
        Err(e) if !e.is_retryable() => Settlement::Failed {
            error: e.message().to_owned(),
        },
        Err(e) if attempt >= max_attempts => Settlement::Failed {
            error: format!(
                "{} (attempt {attempt} of {max_attempts}: attempts exhausted)",
                e.message()
            ),
        },
        Err(e) => {
            let delay = e
                .retry_after()
                .unwrap_or_else(|| backoff.delay(attempt, rng));
            Settlement::Retry {
                run_at: now.plus(delay),
                error: e.message().to_owned(),
            }
        }
    }
}

/// 100 ms doubling to 5 s: how long a dispatcher or the settler waits after `failures`
/// consecutive store errors.
pub(crate) fn store_error_pause(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.min(6).saturating_sub(1));
    Duration::from_millis(ms.min(5_000))
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use weir_core::{Clock, ManualClock};
    use weir_sync::Jitter;

    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(10))
            .unwrap()
            .jitter(Jitter::None)
    }

    #[test]
    fn backoff_schedule_with_a_fake_clock() {
        let clock = ManualClock::new(Timestamp(1_000_000));
        let mut rng = StdRng::seed_from_u64(0);
        let mut run_ats = Vec::new();
        for attempt in 1..=5 {
            let s = settlement_for(
                Err(TaskError::retryable("busy")),
                attempt,
                10,
                &backoff(),
                clock.now(),
                &mut rng,
            );
            let Settlement::Retry { run_at, error } = s else {
                panic!("{s:?}")
            };
            assert_eq!(error, "busy");
            run_ats.push(run_at.since(clock.now()).as_secs());
            clock.advance(Duration::from_secs(100));
        }
        assert_eq!(run_ats, vec![1, 2, 4, 8, 10]);
    }

    #[test]
    fn jittered_retries_stay_within_the_backoff() {
        let b = backoff().jitter(Jitter::Full);
        let mut rng = StdRng::seed_from_u64(9);
        for attempt in 1..5 {
            let s = settlement_for(
                Err(TaskError::retryable("x")),
                attempt,
                9,
                &b,
                Timestamp(0),
                &mut rng,
            );
            let Settlement::Retry { run_at, .. } = s else {
                panic!()
            };
            assert!(run_at.since(Timestamp(0)) <= b.raw(attempt));
        }
    }

    #[test]
    fn retry_after_overrides_backoff() {
        let s = settlement_for(
            Err(TaskError::retryable("429").with_retry_after(Duration::from_secs(30))),
            1,
            5,
            &backoff(),
            Timestamp(0),
            &mut StdRng::seed_from_u64(0),
        );
        assert_eq!(
            s,
            Settlement::Retry {
                run_at: Timestamp(30_000),
                error: "429".into()
            }
        );
    }

    #[test]
    fn last_attempt_and_permanent_errors_fail() {
        let mut rng = StdRng::seed_from_u64(0);
        let s = settlement_for(
            Err(TaskError::retryable("busy")),
            3,
            3,
            &backoff(),
            Timestamp(0),
            &mut rng,
        );
        let Settlement::Failed { error } = s else {
            panic!()
        };
        assert_eq!(error, "busy (attempt 3 of 3: attempts exhausted)");
        let s = settlement_for(
            Err(TaskError::permanent("bad input")),
            1,
            3,
            &backoff(),
            Timestamp(0),
            &mut rng,
        );
        assert_eq!(
            s,
            Settlement::Failed {
                error: "bad input".into()
            }
        );
        let s = settlement_for(
            Ok(Some(b"1".to_vec())),
            1,
            3,
            &backoff(),
            Timestamp(0),
            &mut rng,
        );
        assert_eq!(
            s,
            Settlement::Succeeded {
                result: Some(b"1".to_vec())
            }
        );
    }
}
