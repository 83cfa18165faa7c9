//! A stage's options ([`StageOptions`], [`Shed`]) and the counters every stage keeps
//! ([`StageCounters`], [`FlowStats`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

/// What happens to an item whose stage ran out of time.
#[derive(Debug, Default)]
pub enum Shed<T> {
    /// Drop it and count it as shed. The default.
    #[default]
    Drop,
    /// Send it (the input, as it came) to a side output, and count it as shed.
    Divert(mpsc::Sender<T>),
}

impl<T> Clone for Shed<T> {
    fn clone(&self) -> Self {
        match self {
            Shed::Drop => Shed::Drop,
            Shed::Divert(tx) => Shed::Divert(tx.clone()),
        }
    }
}

/// Settings of one stage.
#[derive(Debug)]
pub struct StageOptions<T> {
    pub(super) concurrency: usize,
    pub(super) capacity: usize,
    pub(super) ordered: bool,
    pub(super) timeout: Option<Duration>,
    pub(super) shed: Shed<T>,
    /// Copies an input before work starts, for [`Shed::Divert`]: set by
    /// [`shed`](StageOptions::shed), so only stages that divert need `T: Clone`.
    pub(super) keep: Option<fn(&T) -> T>,
}

impl<T> Clone for StageOptions<T> {
    fn clone(&self) -> Self {
        StageOptions {
            shed: self.shed.clone(),
            ..*self
        }
    }
}

impl<T> Default for StageOptions<T> {
    /// One item at a time, 64 queued in front of the stage, ordered, no timeout.
    fn default() -> Self {
        StageOptions {
            concurrency: 1,
            capacity: 64,
            ordered: true,
            timeout: None,
            shed: Shed::Drop,
            keep: None,
        }
    }
}

impl<T> StageOptions<T> {
    /// Items worked on at once (at least 1). By default, 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Items the stage's output queue holds (at least 1). By default, 64.
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    /// Emits results in input order (the default) or, with `false`, as they finish.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Gives each item at most `t`; what then happens to it is the shed policy.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// What to do with an item that timed out. By default, drop and count it. Diverting
    /// sends the input as it came, so the stage keeps a copy of each item while it works.
    pub fn shed(mut self, shed: Shed<T>) -> Self
    where
        T: Clone,
    {
        self.keep = matches!(shed, Shed::Divert(_)).then_some(<T as Clone>::clone as fn(&T) -> T);
        self.shed = shed;
        self
    }
}

/// Live counters of one stage and of its output queue (the queue in front of the next stage).
#[derive(Default)]
pub struct StageCounters {
    pub(super) name: String,
    pub(super) taken: AtomicU64,
    pub(super) emitted: AtomicU64,
    pub(super) shed: AtomicU64,
    pub(super) working: AtomicUsize,
    pub(super) peak_working: AtomicUsize,
    pub(super) peak_queued: AtomicUsize,
    /// Items in the output queue now, read from the channel itself: no counter shared
    /// between the stage and its reader (that cache line would bounce on every item).
    pub(super) fill: Option<Box<dyn Fn() -> usize + Send + Sync>>,
    pub(super) capacity: usize,
}

/// A snapshot of [`StageCounters`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageStats {
    /// The stage's name.
    pub name: String,
    /// Items taken in.
    pub taken: u64,
    /// Items (or batches) sent on.
    pub emitted: u64,
    /// Items dropped or diverted after a timeout.
    pub shed: u64,
    /// Items in the stage's output queue now (sent on, not yet taken by the next stage).
    pub queued: usize,
    /// The most items ever in its output queue.
    pub peak_queued: usize,
    /// The output queue's bound.
    pub capacity: usize,
    /// The most items ever in work in the stage at once.
    pub peak_working: usize,
}

impl std::fmt::Debug for StageCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StageCounters")
            .field(&self.snapshot())
            .finish()
    }
}

impl StageCounters {
    pub(super) fn snapshot(&self) -> StageStats {
        StageStats {
            name: self.name.clone(),
            taken: self.taken.load(Ordering::Relaxed),
            emitted: self.emitted.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            queued: self.fill.as_ref().map_or(0, |f| f()),
            peak_queued: self.peak_queued.load(Ordering::Relaxed),
            capacity: self.capacity,
            peak_working: self.peak_working.load(Ordering::Relaxed),
        }
    }

    /// Records the output queue's fill after a send (`fill` items in it or reserved).
    pub(super) fn enqueued(&self, fill: usize) {
        if fill > self.peak_queued.load(Ordering::Relaxed) {
            self.peak_queued.fetch_max(fill, Ordering::Relaxed);
        }
    }

    /// This stage took an item in.
    pub(super) fn took(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }
}

/// The stats of every stage of a flow, in order.
#[derive(Clone, Debug, Default)]
pub struct FlowStats(pub(super) Arc<parking_lot::Mutex<Vec<Arc<StageCounters>>>>);

impl FlowStats {
    /// A snapshot of every stage's counters, upstream first.
    pub fn stages(&self) -> Vec<StageStats> {
        self.0.lock().iter().map(|c| c.snapshot()).collect()
    }
}
