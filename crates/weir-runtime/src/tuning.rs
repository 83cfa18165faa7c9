//! Settings a running worker reads live.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use weir_sync::{Backoff, LimitSpec, Limiter};

use crate::autoscale::{AutoscaleConfig, InvalidAutoscale};

/// A queue's autoscaler settings were refused by [`Tuning::set_autoscale`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("autoscale of queue `{queue}`: {error}")]
pub struct InvalidTuning {
    /// The queue.
    pub queue: String,
    /// What is wrong.
    pub error: InvalidAutoscale,
}

/// Settings a running worker picks up live: retry backoffs per kind (overriding the
/// registry's), the autoscaler settings per queue and the named limits. Obtained from [`crate::Worker::tuning`]; a
/// configuration reload writes here.
#[derive(Default)]
pub struct Tuning {
    limiter: Limiter,
    pub(crate) backoffs: ArcSwap<HashMap<String, Backoff>>,
    pub(crate) autoscale: ArcSwap<HashMap<String, AutoscaleConfig>>,
}

impl std::fmt::Debug for Tuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tuning")
            .field("backoffs", &self.backoffs.load())
            .field("autoscale", &self.autoscale.load())
            .finish()
    }
}

impl Tuning {
    /// Replaces the backoff overrides, by task kind. Kinds not listed use their registered
    /// backoff. Takes effect for the next failure.
    pub fn set_backoffs(&self, backoffs: HashMap<String, Backoff>) {
        self.backoffs.store(Arc::new(backoffs));
    }

    /// Replaces the autoscaler settings, by queue (each validated first; an invalid one is
    /// refused whole, with its queue named). A queue not listed keeps its pool's size. Takes
    /// effect at the next tick.
    pub fn set_autoscale(
        &self,
        autoscale: HashMap<String, AutoscaleConfig>,
    ) -> Result<(), InvalidTuning> {
        for (q, c) in &autoscale {
            c.validate().map_err(|e| InvalidTuning {
                queue: q.clone(),
                error: e,
            })?;
        }
        self.autoscale.store(Arc::new(autoscale));
        Ok(())
    }

    /// Replaces the named limits (see [`Limiter::update`]): capacities change in place.
    pub fn set_limits(&self, limits: HashMap<String, LimitSpec>) {
        self.limiter.update(limits);
    }

    /// The limiter the worker admits limited jobs through.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    pub(crate) fn backoff(&self, kind: &str) -> Option<Backoff> {
        self.backoffs.load().get(kind).copied()
    }
}
