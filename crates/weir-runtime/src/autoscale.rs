//! The autoscaler's decision: a pure function of settings, what was observed and the time, so
//! that its behaviour (grow fast, shrink slowly, no flapping) is tested with a fake clock.
//!
//! - **Grow fast.** When jobs are waiting and either the backlog per worker is above
//!   [`AutoscaleConfig::backlog_per_worker`] or utilisation is at or above the high mark, the
//!   target goes straight to what the backlog needs (`busy + backlog / backlog_per_worker`),
//!   capped at the maximum.
//! - **Shrink slowly.** Only after utilisation has stayed under the low mark for a whole
//!   cooldown window, by [`AutoscaleConfig::shrink_factor`] (×0.8), never below the minimum. The
//!   next shrink waits for another full window.
//! - Anything in between holds, and any sample at or above the low mark restarts the cooldown.
//!   A load that dips for less than a cooldown therefore never shrinks the pool. This is the
//!   hysteresis that keeps a pool from flapping.

use std::fmt;
use std::time::Duration;

use weir_core::Timestamp;

/// Autoscaler settings of one queue, validated by [`AutoscaleConfig::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct AutoscaleConfig {
    /// Never fewer workers. By default, 1.
    pub min_workers: usize,
    /// Never more workers. By default, 64.
    pub max_workers: usize,
    /// Grow when more jobs than this wait per worker. By default, 1.0.
    pub backlog_per_worker: f64,
    /// Grow when utilisation is at or above this (with jobs waiting). By default, 0.8.
    pub high_utilisation: f64,
    /// Shrink only after utilisation stayed under this for `cooldown`. By default, 0.4.
    pub low_utilisation: f64,
    /// How long utilisation must stay low before each shrink. By default, 5 minutes.
    pub cooldown: Duration,
    /// Each shrink multiplies the size by this. By default, 0.8.
    pub shrink_factor: f64,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            min_workers: 1,
            max_workers: 64,
            backlog_per_worker: 1.0,
            high_utilisation: 0.8,
            low_utilisation: 0.4,
            cooldown: Duration::from_secs(300),
            shrink_factor: 0.8,
        }
    }
}

impl AutoscaleConfig {
    /// Checks that the settings make sense together; the error names the setting.
    pub fn validate(&self) -> Result<(), InvalidAutoscale> {
        let bad = |setting, message: String| Err(InvalidAutoscale { setting, message });
        if self.min_workers > self.max_workers {
            return bad(
                "min_workers",
                format!(
                    "min_workers ({}) must not exceed max_workers ({})",
                    self.min_workers, self.max_workers
                ),
            );
        }
        if self.max_workers == 0 {
            return bad("max_workers", "max_workers must be at least 1".into());
        }
        if !(self.backlog_per_worker.is_finite() && self.backlog_per_worker > 0.0) {
            return bad(
                "backlog_per_worker",
                format!(
                    "backlog_per_worker must be a positive number, got {}",
                    self.backlog_per_worker
                ),
            );
        }
        for (setting, v) in [
            ("low_utilisation", self.low_utilisation),
            ("high_utilisation", self.high_utilisation),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(
                    setting,
                    format!("{setting} must be between 0 and 1, got {v}"),
                );
            }
        }
        if self.low_utilisation >= self.high_utilisation {
            return bad(
                "low_utilisation",
                format!(
                    "low_utilisation ({}) must be below high_utilisation ({})",
                    self.low_utilisation, self.high_utilisation
                ),
            );
        }
        if !(self.shrink_factor > 0.0 && self.shrink_factor < 1.0) {
            return bad(
                "shrink_factor",
                format!(
                    "shrink_factor must be between 0 and 1 (exclusive), got {}",
                    self.shrink_factor
                ),
            );
        }
        if self.cooldown.is_zero() {
            return bad("cooldown", "cooldown must be more than 0".into());
        }
        Ok(())
    }
}

/// Autoscaler settings that do not make sense together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidAutoscale {
    setting: &'static str,
    message: String,
}

impl InvalidAutoscale {
    /// The setting at fault, as [`AutoscaleConfig`] names it (`min_workers`, …).
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

/// What the autoscaler sees at one tick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observed {
    /// Jobs ready to run and waiting in the broker.
    pub backlog: u64,
    /// Workers busy now.
    pub busy: usize,
    /// The pool's size now.
    pub size: usize,
    /// Smoothed utilisation (busy / size over a window), 0..=1.
    pub utilisation: f64,
}

/// What the autoscaler remembers between ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScalerState {
    /// Since when utilisation has been under the low mark (reset by a shrink).
    pub low_since: Option<Timestamp>,
}

/// Why the target is what it is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    /// Jobs are waiting: grow to what they need.
    Backlog {
        /// Jobs waiting.
        backlog: u64,
        /// Workers the backlog needs (before the cap).
        needed: usize,
    },
    /// Utilisation stayed under the low mark for the cooldown window.
    Idle {
        /// The smoothed utilisation.
        utilisation: f64,
    },
    /// The size was outside `min..=max` (after a config change): brought back inside.
    Bounds,
    /// Nothing to do.
    Hold,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Backlog { backlog, needed } => {
                write!(f, "{backlog} jobs waiting need {needed} workers")
            }
            Reason::Idle { utilisation } => write!(
                f,
                "utilisation {:.0}% stayed under the low mark for the cooldown",
                utilisation * 100.0
            ),
            Reason::Bounds => f.write_str("size outside min..=max"),
            Reason::Hold => f.write_str("hold"),
        }
    }
}

/// The outcome of one tick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// The size the pool should have.
    pub target: usize,
    /// Why.
    pub reason: Reason,
    /// What to remember for the next tick.
    pub state: ScalerState,
}

/// Decides the pool's target size. Pure: same inputs, same decision.
pub fn decide(
    cfg: &AutoscaleConfig,
    state: &ScalerState,
    obs: &Observed,
    now: Timestamp,
) -> Decision {
    let hold = |state: ScalerState| Decision {
        target: obs.size,
        reason: Reason::Hold,
        state,
    };
    if obs.size < cfg.min_workers || obs.size > cfg.max_workers {
        return Decision {
            target: obs.size.clamp(cfg.min_workers, cfg.max_workers),
            reason: Reason::Bounds,
            state: ScalerState::default(),
        };
    }
    let per_worker = obs.backlog as f64 / obs.size.max(1) as f64;
    if obs.backlog > 0
        && (per_worker > cfg.backlog_per_worker || obs.utilisation >= cfg.high_utilisation)
    {
        let needed = obs.busy + (obs.backlog as f64 / cfg.backlog_per_worker).ceil() as usize;
        let target = needed.max(obs.size).min(cfg.max_workers);
        return Decision {
            target,
            reason: if target > obs.size {
                Reason::Backlog {
                    backlog: obs.backlog,
                    needed,
                }
            } else {
                Reason::Hold
            },
            state: ScalerState::default(),
        };
    }
    if obs.utilisation >= cfg.low_utilisation {
        return hold(ScalerState::default());
    }
    let since = state.low_since.unwrap_or(now);
    if now.since(since) < cfg.cooldown || obs.size <= cfg.min_workers {
        return hold(ScalerState {
            low_since: Some(since),
        });
    }
    let shrunk = ((obs.size as f64) * cfg.shrink_factor).floor() as usize;
    Decision {
        target: shrunk.min(obs.size - 1).max(cfg.min_workers),
        reason: Reason::Idle {
            utilisation: obs.utilisation,
        },
        // The next shrink waits for another whole window.
        state: ScalerState {
            low_since: Some(now),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::{Clock, ManualClock};

    fn cfg(min: usize, max: usize) -> AutoscaleConfig {
        AutoscaleConfig {
            min_workers: min,
            max_workers: max,
            ..Default::default()
        }
    }

    fn obs(backlog: u64, busy: usize, size: usize, utilisation: f64) -> Observed {
        Observed {
            backlog,
            busy,
            size,
            utilisation,
        }
    }

    #[test]
    fn a_burst_reaches_max_within_one_tick() {
        let c = cfg(2, 50);
        let d = decide(
            &c,
            &ScalerState::default(),
            &obs(10_000, 2, 2, 1.0),
            Timestamp(0),
        );
        assert_eq!(d.target, 50);
        assert!(matches!(
            d.reason,
            Reason::Backlog {
                backlog: 10_000,
                ..
            }
        ));
        assert!(d.reason.to_string().contains("10000 jobs waiting"));
        // A smaller burst gets what it needs, not the maximum.
        let d = decide(
            &c,
            &ScalerState::default(),
            &obs(6, 4, 4, 1.0),
            Timestamp(0),
        );
        assert_eq!(d.target, 10);
    }

    #[test]
    fn no_backlog_means_no_growth() {
        let c = cfg(1, 50);
        let d = decide(
            &c,
            &ScalerState::default(),
            &obs(0, 4, 4, 1.0),
            Timestamp(0),
        );
        assert_eq!((d.target, d.reason), (4, Reason::Hold));
    }

    #[test]
    fn an_idle_queue_returns_to_min_one_cooldown_at_a_time() {
        let c = cfg(2, 50);
        let clock = ManualClock::new(Timestamp(0));
        let mut state = ScalerState::default();
        let mut size = 50;
        let mut shrinks = Vec::new();
        for _ in 0..(6 * 3600 / 10) {
            let d = decide(&c, &state, &obs(0, 0, size, 0.0), clock.now());
            if d.target < size {
                shrinks.push((clock.now(), size, d.target));
                assert_eq!(
                    d.target,
                    ((size as f64 * 0.8) as usize).max(2).min(size - 1)
                );
            }
            size = d.target;
            state = d.state;
            clock.advance(Duration::from_secs(10));
        }
        assert_eq!(size, 2, "back at min");
        assert!(
            shrinks[0].0 >= Timestamp(300_000),
            "not before the first cooldown"
        );
        for w in shrinks.windows(2) {
            assert!(
                w[1].0.since(w[0].0) >= c.cooldown,
                "one shrink per cooldown: {w:?}"
            );
        }
    }

    #[test]
    fn a_short_dip_does_not_shrink() {
        let c = cfg(1, 50);
        let mut state = ScalerState::default();
        let mut t = Timestamp(0);
        for i in 0..100 {
            // 4 minutes low, then one busy sample: never a whole 5-minute window low.
            let u = if i % 25 == 24 { 0.9 } else { 0.1 };
            let d = decide(&c, &state, &obs(0, 9, 10, u), t);
            assert_eq!(d.target, 10, "tick {i}");
            state = d.state;
            t = t.plus(Duration::from_secs(10));
        }
    }

    /// Runs the autoscaler for three hours of 5 s ticks against a sine-shaped demand between
    /// 2 and 30 workers' worth with the given period; returns the times and directions of
    /// each change of direction, and the final size.
    fn sine_run(c: &AutoscaleConfig, period_secs: f64) -> (Vec<(Timestamp, i8)>, usize) {
        let clock = ManualClock::new(Timestamp(0));
        let mut state = ScalerState::default();
        let mut size = c.min_workers;
        let mut changes: Vec<(Timestamp, i8)> = Vec::new();
        let mut last_dir = 0i8;
        for tick in 0..(3 * 3600 / 5) {
            let t = tick as f64 * 5.0;
            let demand = 16.0 + 14.0 * (t * std::f64::consts::TAU / period_secs).sin();
            let busy = (demand.round() as usize).min(size);
            let backlog = (demand - size as f64).max(0.0).round() as u64;
            let o = obs(backlog, busy, size, busy as f64 / size as f64);
            let d = decide(c, &state, &o, clock.now());
            let dir = (d.target as i64 - size as i64).signum() as i8;
            if dir != 0 && dir != last_dir {
                if last_dir != 0 {
                    changes.push((clock.now(), dir));
                }
                last_dir = dir;
            }
            size = d.target;
            state = d.state;
            clock.advance(Duration::from_secs(5));
        }
        (changes, size)
    }

    fn at_most_one_change_per_cooldown(c: &AutoscaleConfig, changes: &[(Timestamp, i8)]) {
        for (i, (t, _)) in changes.iter().enumerate() {
            let in_window = changes[i..]
                .iter()
                .take_while(|(u, _)| u.since(*t) < c.cooldown)
                .count();
            assert!(in_window <= 1, "direction changes {changes:?}");
        }
    }

    /// A load faster than the cooldown (period 2 minutes): the pool grows to cover the peaks
    /// and stays there; it never flaps.
    #[test]
    fn sine_load_faster_than_the_cooldown_does_not_flap() {
        let c = cfg(2, 40);
        let (changes, size) = sine_run(&c, 120.0);
        at_most_one_change_per_cooldown(&c, &changes);
        assert!(size >= 30, "it grew to cover the peaks and stayed: {size}");
    }

    /// A load slower than the cooldown (period 40 minutes): the pool follows it down and up
    /// again, so the direction does change (the check above has something to check), and
    /// never more than once per cooldown.
    #[test]
    fn sine_load_slower_than_the_cooldown_is_followed_without_flapping() {
        let c = cfg(2, 40);
        assert!(c.cooldown < Duration::from_secs(40 * 60));
        let (changes, _) = sine_run(&c, 40.0 * 60.0);
        assert!(
            changes.len() >= 4,
            "the pool followed the load down and up: {changes:?}"
        );
        assert!(changes.iter().any(|(_, d)| *d < 0) && changes.iter().any(|(_, d)| *d > 0));
        at_most_one_change_per_cooldown(&c, &changes);
    }

    #[test]
    fn sizes_outside_the_bounds_come_back() {
        let c = cfg(4, 8);
        let d = decide(
            &c,
            &ScalerState::default(),
            &obs(0, 0, 20, 0.0),
            Timestamp(0),
        );
        assert_eq!((d.target, d.reason), (8, Reason::Bounds));
        let d = decide(
            &c,
            &ScalerState::default(),
            &obs(0, 0, 1, 0.0),
            Timestamp(0),
        );
        assert_eq!(d.target, 4);
    }

    #[test]
    fn settings_are_validated() {
        assert!(AutoscaleConfig::default().validate().is_ok());
        let bad = |f: fn(&mut AutoscaleConfig)| {
            let mut c = AutoscaleConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.min_workers = 100).contains("min_workers (100)"));
        assert!(bad(|c| c.low_utilisation = 0.9).contains("must be below high_utilisation"));
        assert!(bad(|c| c.shrink_factor = 1.0).contains("shrink_factor"));
        assert!(bad(|c| c.high_utilisation = 1.5).contains("high_utilisation must be between"));
        assert!(bad(|c| c.backlog_per_worker = 0.0).contains("backlog_per_worker"));
    }
}
