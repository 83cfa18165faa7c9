//! Exponential backoff with jitter: `delay(n) = min(cap, base * factor^(n-1))`, then jittered as
//! in the AWS Architecture Blog's "Exponential Backoff And Jitter".

use std::time::Duration;

use rand::Rng;

/// How a computed delay is randomised so that many failing jobs do not retry in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Jitter {
    /// No randomness: exactly the exponential delay.
    None,
    /// Uniform in `[0, delay]`. Spreads load best; some retries come quickly.
    #[default]
    Full,
    /// Uniform in `[delay/2, delay]`: never less than half the delay.
    Equal,
    /// `min(cap, uniform(base, previous * 3))`: the AWS "decorrelated" variant. Needs the
    /// previous delay, which weir does not store, so it is approximated by the un-jittered
    /// delay of the previous attempt.
    Decorrelated,
}

/// A backoff policy that could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BackoffError {
    /// `base` was zero.
    #[error("backoff base must be greater than zero")]
    ZeroBase,
    /// `factor` was below 1 or not finite.
    #[error("backoff factor must be a finite number >= 1, got {0}")]
    BadFactor(f64),
    /// `cap` was below `base`.
    #[error("backoff cap ({cap:?}) must be at least the base ({base:?})")]
    CapBelowBase {
        /// The base.
        base: Duration,
        /// The cap.
        cap: Duration,
    },
}

/// An exponential backoff policy, validated when built.
///
/// ```
/// use std::time::Duration;
/// use weir_sync::{Backoff, Jitter};
/// let b = Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(60))
///     .unwrap()
///     .jitter(Jitter::None);
/// let mut rng = rand::rng();
/// assert_eq!(b.delay(1, &mut rng), Duration::from_secs(1));
/// assert_eq!(b.delay(3, &mut rng), Duration::from_secs(4));
/// assert_eq!(b.delay(30, &mut rng), Duration::from_secs(60));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    cap: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    /// By default: base 1 s, factor 2, cap 1 h, full jitter.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(3600),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// A policy growing from `base` by `factor` per attempt up to `cap`, with full jitter.
    pub fn new(base: Duration, factor: f64, cap: Duration) -> Result<Self, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if !factor.is_finite() || factor < 1.0 {
            return Err(BackoffError::BadFactor(factor));
        }
        if cap < base {
            return Err(BackoffError::CapBelowBase { base, cap });
        }
        Ok(Backoff {
            base,
            factor,
            cap,
            jitter: Jitter::Full,
        })
    }

    /// Sets the jitter. By default, [`Jitter::Full`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The first delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The un-jittered delay after failed attempt `attempt` (1-based).
    pub fn raw(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(1024) as i32;
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before the attempt after failed attempt `attempt` (1-based), jittered with
    /// `rng` (inject a seeded RNG to test).
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let d = self.raw(attempt);
        let uniform = |rng: &mut R, lo: Duration, hi: Duration| -> Duration {
            if hi <= lo {
                lo
            } else {
                Duration::from_secs_f64(rng.random_range(lo.as_secs_f64()..=hi.as_secs_f64()))
            }
        };
        match self.jitter {
            Jitter::None => d,
            Jitter::Full => uniform(rng, Duration::ZERO, d),
            Jitter::Equal => uniform(rng, d / 2, d),
            Jitter::Decorrelated => {
                let prev = if attempt <= 1 {
                    self.base
                } else {
                    self.raw(attempt - 1)
                };
                uniform(rng, self.base, (prev * 3).min(self.cap))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn exponential_schedule_is_capped() {
        let b = Backoff::new(secs(1), 2.0, secs(100))
            .unwrap()
            .jitter(Jitter::None);
        let mut rng = StdRng::seed_from_u64(1);
        let got: Vec<u64> = (1..=9).map(|n| b.delay(n, &mut rng).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 64, 100, 100]);
        assert_eq!(b.delay(u32::MAX, &mut rng), secs(100));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        let full = Backoff::new(secs(1), 2.0, secs(60)).unwrap();
        let equal = full.jitter(Jitter::Equal);
        let dec = full.jitter(Jitter::Decorrelated);
        for n in 1..20 {
            let raw = full.raw(n);
            for _ in 0..50 {
                assert!(full.delay(n, &mut rng) <= raw);
                let e = equal.delay(n, &mut rng);
                assert!(e >= raw / 2 && e <= raw);
                let d = dec.delay(n, &mut rng);
                assert!(d >= secs(1) && d <= secs(60));
            }
        }
    }

    #[test]
    fn full_jitter_spreads_out() {
        let b = Backoff::new(secs(10), 2.0, secs(60)).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let xs: Vec<Duration> = (0..100).map(|_| b.delay(1, &mut rng)).collect();
        let distinct: std::collections::HashSet<_> = xs.iter().collect();
        assert!(distinct.len() > 90);
    }

    #[test]
    fn invalid_policies_are_rejected() {
        assert_eq!(
            Backoff::new(Duration::ZERO, 2.0, secs(1)),
            Err(BackoffError::ZeroBase)
        );
        assert!(matches!(
            Backoff::new(secs(1), 0.5, secs(2)),
            Err(BackoffError::BadFactor(_))
        ));
        assert!(matches!(
            Backoff::new(secs(1), f64::NAN, secs(2)),
            Err(BackoffError::BadFactor(_))
        ));
        let e = Backoff::new(secs(5), 2.0, secs(1)).unwrap_err();
        assert!(e.to_string().contains("must be at least the base"));
    }
}
