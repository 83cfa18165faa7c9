//! Named limits on shared resources: a concurrency cap (a semaphore per key) and/or a rate
//! (GCRA, the `governor` crate), looked up by the part of a key before its first `:`. The key
//! `tenant:42` falls under the limit named `tenant`, and each tenant gets its own semaphore and
//! rate state.
//!
//! Admission is all-or-nothing and never waits: [`Limiter::try_admit`] either takes what every
//! key needs or says how long to wait. Why not wait: a waiting task would hold a worker slot
//! (and its lease) doing nothing, and one hot key could park the whole pool. The runtime instead
//! gives the job back to the broker to run after the wait, and the slot serves other work.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::keyed::{KeyPermit, KeyedSemaphore};

/// A rate: `count` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// How many.
    pub count: u32,
    /// In how long.
    pub per: Duration,
}

/// The text given to [`Rate::from_str`](std::str::FromStr) is not a rate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseRateError(String);

impl std::str::FromStr for Rate {
    type Err = ParseRateError;

    /// Parses `100/s`, `20/m`, `5/h` or `10/250ms`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ParseRateError(format!(
                "`{s}` is not a rate (expected e.g. 100/s, 20/m, 5/h)"
            ))
        };
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(ParseRateError(format!(
                "`{s}`: a rate must allow at least 1"
            )));
        }
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => humantime::parse_duration(other).map_err(|_| bad())?,
        };
        if per.is_zero() {
            return Err(bad());
        }
        Ok(Rate { count, per })
    }
}

/// One named limit. By default, neither part: unlimited.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitSpec {
    /// At most this many at once, per key.
    pub concurrency: Option<usize>,
    /// At most this rate, per key, spread evenly (no burst).
    pub rate: Option<Rate>,
}

type Rates<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct Limit<C: Clock> {
    /// Its name, shared by the admissions and refusals that name it (no allocation each).
    name: Arc<str>,
    spec: LimitSpec,
    sem: Option<KeyedSemaphore>,
    rate: Option<Arc<Rates<C>>>,
    /// Admissions now held under this limit (kept across [`Limiter::update`]).
    in_flight: Arc<AtomicUsize>,
}

/// What an admission holds: release by dropping it when the work is done.
pub struct Admission {
    _permits: Vec<KeyPermit>,
    /// One count in each limit the admission is under (by name), given back on drop.
    in_flight: Vec<(Arc<str>, Arc<AtomicUsize>)>,
}

impl Admission {
    /// The names of the limits this admission holds, each once.
    pub fn limits(&self) -> impl Iterator<Item = &Arc<str>> {
        self.in_flight.iter().map(|(name, _)| name)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for (_, n) in &self.in_flight {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("permits", &self._permits.len())
            .field("limits", &self.in_flight.len())
            .finish()
    }
}

/// [`Limiter::try_admit`] said no: which limit was full, and how long to wait before trying
/// again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The name of the limit that was full (the first one met, in key order).
    pub limit: Arc<str>,
    /// How long to wait before trying again.
    pub wait: Duration,
}

/// Named limits, shared by every worker of a process. Cheap to clone.
pub struct Limiter<C: Clock = DefaultClock> {
    limits: Arc<ArcSwap<HashMap<String, Arc<Limit<C>>>>>,
    clock: C,
}

impl<C: Clock + Clone> Clone for Limiter<C> {
    fn clone(&self) -> Self {
        Limiter {
            limits: self.limits.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(HashMap::new())
    }
}

impl Limiter {
    /// Limits by name, on the real clock.
    pub fn new(specs: HashMap<String, LimitSpec>) -> Self {
        Limiter::with_clock(specs, DefaultClock::default())
    }
}

fn quota(rate: Rate) -> Quota {
    let per_cell = (rate.per / rate.count).max(Duration::from_nanos(1));
    Quota::with_period(per_cell)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MIN)
}

impl<C: Clock + Clone> Limiter<C> {
    /// Limits by name, reading time from `clock` (a `governor::clock::FakeRelativeClock` in
    /// tests).
    pub fn with_clock(specs: HashMap<String, LimitSpec>, clock: C) -> Self {
        let limiter = Limiter {
            limits: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            clock,
        };
        limiter.update(specs);
        limiter
    }

    /// Applies new limits live. A changed concurrency resizes each key's semaphore in place
    /// (held permits are kept; a shrink takes effect as they are released). A changed rate
    /// starts its keys' rate state afresh; an unchanged one keeps it. Limits no longer named
    /// are dropped.
    pub fn update(&self, specs: HashMap<String, LimitSpec>) {
        let old = self.limits.load_full();
        let mut next = HashMap::new();
        for (name, spec) in specs {
            let prev = old.get(&name);
            let sem = match (spec.concurrency, prev.and_then(|p| p.sem.clone())) {
                (Some(n), Some(sem)) => {
                    sem.set_capacity(n);
                    Some(sem)
                }
                (Some(n), None) => Some(KeyedSemaphore::new(n)),
                (None, _) => None,
            };
            let rate = match (spec.rate, prev) {
                (Some(r), Some(p)) if p.spec.rate == Some(r) => p.rate.clone(),
                (Some(r), _) => Some(Arc::new(Rates::dashmap_with_clock(
                    quota(r),
                    self.clock.clone(),
                ))),
                (None, _) => None,
            };
            let in_flight = prev.map_or_else(Default::default, |p| p.in_flight.clone());
            next.insert(
                name.clone(),
                Arc::new(Limit {
                    name: name.into(),
                    spec,
                    sem,
                    rate,
                    in_flight,
                }),
            );
        }
        self.limits.store(Arc::new(next));
    }

    /// Takes a concurrency permit and a rate cell for every key, or none at all. `Err` names
    /// the limit that was full and how long to wait before trying again. Keys under no
    /// configured limit are unlimited.
    pub fn try_admit(&self, keys: &[String]) -> Result<Admission, Refused> {
        let limits = self.limits.load();
        let mut permits = Vec::new();
        let mut under: Vec<&Arc<Limit<C>>> = Vec::new();
        for key in keys {
            let name = key.split(':').next().unwrap_or(key);
            let Some(limit) = limits.get(name) else {
                continue;
            };
            if !under.iter().any(|l| Arc::ptr_eq(l, limit)) {
                under.push(limit);
            }
            if let Some(sem) = &limit.sem {
                match sem.try_acquire(key) {
                    Some(p) => permits.push(p),
                    // Busy: try again soon; permits taken so far are released on return.
                    None => {
                        return Err(Refused {
                            limit: limit.name.clone(),
                            wait: Duration::from_millis(100),
                        })
                    }
                }
            }
        }
        for key in keys {
            let name = key.split(':').next().unwrap_or(key);
            let Some(limit) = limits.get(name) else {
                continue;
            };
            if let Some(rate) = &limit.rate {
                if let Err(not_until) = rate.check_key(key) {
                    return Err(Refused {
                        limit: limit.name.clone(),
                        wait: not_until.wait_time_from(self.clock.now()),
                    });
                }
            }
        }
        let in_flight = under
            .into_iter()
            .map(|l| {
                l.in_flight.fetch_add(1, Ordering::Relaxed);
                (l.name.clone(), l.in_flight.clone())
            })
            .collect();
        Ok(Admission {
            _permits: permits,
            in_flight,
        })
    }

    /// Every configured limit by name, with how many admissions now hold it (a job under two
    /// keys of one limit counts once), sorted by name.
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self
            .limits
            .load()
            .iter()
            .map(|(n, l)| (n.clone(), l.in_flight.load(Ordering::Relaxed)))
            .collect();
        out.sort();
        out
    }

    /// Keys that currently have a semaphore (held or waited for), over all limits.
    pub fn tracked_keys(&self) -> usize {
        self.limits
            .load()
            .values()
            .filter_map(|l| l.sem.as_ref())
            .map(|s| s.len())
            .sum()
    }
}
