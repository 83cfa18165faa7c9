//! [`ElasticPool`]: a bounded, resizable pool of slots for async work.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::{task_tracker::TaskTrackerToken, TaskTracker};

use crate::capacity::Capacity;

/// A snapshot of a pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolStats {
    /// The configured size. Capacity converges to it as slots come back.
    pub size: usize,
    /// Slots held (tasks running, or reserved for one).
    pub busy: usize,
    /// Callers waiting for a slot.
    pub queued: usize,
    /// Mean of `busy / size` over the last window (0 when the size is 0), from samples taken
    /// at each call of [`ElasticPool::stats`]: call it regularly (the autoscaler does, every
    /// tick) for a meaningful average.
    pub utilisation: f64,
}

/// The pool cannot take the future: its wait queue is full or it is closed. The future is
/// given back.
pub struct Rejected<F> {
    /// The future that was not run.
    pub future: F,
    /// Why: the queue was full (`false`) or the pool closed (`true`).
    pub closed: bool,
}

impl<F> std::fmt::Display for Rejected<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.closed {
            f.write_str("pool is closed")
        } else {
            f.write_str("pool queue is full")
        }
    }
}

impl<F> std::fmt::Debug for Rejected<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejected")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl<F> std::error::Error for Rejected<F> {}

/// Utilisation sampled at each [`ElasticPool::stats`] call: the busy fraction seen at a call
/// stands for the time since the previous call. Nothing is measured on the hot path (reserving
/// and returning slots), so the average is as fine as the caller's sampling: the autoscaler
/// samples every tick, several times per window.
struct Sampler {
    window: Duration,
    last: Instant,
    /// Integral of busy/size over time, in seconds, since creation.
    integral: f64,
    /// (time, integral) checkpoints, oldest first.
    marks: std::collections::VecDeque<(Instant, f64)>,
}

impl Sampler {
    fn sample(&mut self, now: Instant, busy: usize, size: usize) -> f64 {
        let frac = if size == 0 {
            0.0
        } else {
            (busy as f64 / size as f64).min(1.0)
        };
        self.integral += now.saturating_duration_since(self.last).as_secs_f64() * frac;
        self.last = now;
        if self
            .marks
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= self.window / 8)
        {
            self.marks.push_back((now, self.integral));
        }
        while self.marks.len() > 2 && now.saturating_duration_since(self.marks[1].0) >= self.window
        {
            self.marks.pop_front();
        }
        let (t0, i0) = self.marks.front().copied().unwrap_or((now, self.integral));
        let span = now.saturating_duration_since(t0).as_secs_f64();
        if span <= 0.0 {
            return frac;
        }
        ((self.integral - i0) / span).clamp(0.0, 1.0)
    }
}

struct Inner {
    cap: Capacity<Arc<Semaphore>>,
    busy: AtomicUsize,
    queued: AtomicUsize,
    max_queued: usize,
    tracker: TaskTracker,
    sampler: Mutex<Sampler>,
}

impl crate::capacity::Gate for Arc<Semaphore> {
    fn add(&self, n: usize) {
        self.add_permits(n);
    }
    fn forget(&self, n: usize) -> usize {
        self.forget_permits(n)
    }
}

/// A pool of `size` slots for async work, resizable while it runs.
///
/// Capacity is taken before work is: [`reserve`](Self::reserve) waits for a free slot (this is
/// the backpressure), and the [`Slot`] is then used to [`spawn`](Slot::spawn) the work, or
/// dropped unused. [`submit`](Self::submit) does both, with a bounded wait queue.
/// [`resize`](Self::resize) grows at once and shrinks lazily: a slot that comes back while the
/// pool is over its size is retired, so no running task is stopped, dropped or run twice.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use weir_sync::ElasticPool;
/// let pool = ElasticPool::new(2);
/// let a = pool.submit(async { 1 }).await.unwrap();
/// let b = pool.reserve().await.expect("open").spawn(async { 2 });
/// assert_eq!(a.await.unwrap() + b.await.unwrap(), 3);
/// pool.resize(8);
/// assert_eq!(pool.stats().size, 8);
/// pool.close();
/// pool.wait().await;
/// # }
/// ```
#[derive(Clone)]
pub struct ElasticPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ElasticPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl ElasticPool {
    /// A pool of `size` slots. By default, the wait queue of [`submit`](Self::submit) holds
    /// up to 1024 callers, and utilisation is averaged over 10 s.
    pub fn new(size: usize) -> Self {
        Self::with_options(size, 1024, Duration::from_secs(10))
    }

    /// A pool of `size` slots whose `submit` rejects callers beyond `max_queued` waiting, with
    /// utilisation averaged over `window` (at least 1 ms).
    pub fn with_options(size: usize, max_queued: usize, window: Duration) -> Self {
        let now = Instant::now();
        ElasticPool {
            inner: Arc::new(Inner {
                cap: Capacity::new(Arc::new(Semaphore::new(size)), size),
                busy: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                max_queued,
                tracker: TaskTracker::new(),
                sampler: Mutex::new(Sampler {
                    window: window.max(Duration::from_millis(1)),
                    last: now,
                    integral: 0.0,
                    marks: Default::default(),
                }),
            }),
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.inner.busy.fetch_add(1, Ordering::AcqRel);
        Slot {
            permit: Some(permit),
            pool: self.clone(),
            _tracked: self.inner.tracker.token(),
        }
    }

    /// Waits for a free slot; `None` once the pool is closed. Cancel safe: dropping the future
    /// takes no slot.
    pub async fn reserve(&self) -> Option<Slot> {
        let sem = self.inner.cap.gate.clone();
        self.inner.queued.fetch_add(1, Ordering::AcqRel);
        let permit = sem.acquire_owned().await;
        self.inner.queued.fetch_sub(1, Ordering::AcqRel);
        permit.ok().map(|p| self.slot(p))
    }

    /// A free slot now, if there is one.
    pub fn try_reserve(&self) -> Option<Slot> {
        let sem = self.inner.cap.gate.clone();
        sem.try_acquire_owned().ok().map(|p| self.slot(p))
    }

    /// Waits for one slot, then takes up to `max` in all without waiting more. Cancel safe.
    /// Empty once the pool is closed.
    pub async fn reserve_up_to(&self, max: usize) -> Vec<Slot> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        let Some(first) = self.reserve().await else {
            return out;
        };
        out.push(first);
        while out.len() < max {
            match self.try_reserve() {
                Some(s) => out.push(s),
                None => break,
            }
        }
        out
    }

    /// Waits for a slot and runs `future` in it. Rejects it, giving it back, when `max_queued`
    /// callers are already waiting or the pool is closed.
    pub async fn submit<F>(&self, future: F) -> Result<JoinHandle<F::Output>, Rejected<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if self.inner.cap.gate.is_closed() {
            return Err(Rejected {
                future,
                closed: true,
            });
        }
        if self.inner.queued.load(Ordering::Acquire) >= self.inner.max_queued
            && self.inner.cap.gate.available_permits() == 0
        {
            return Err(Rejected {
                future,
                closed: false,
            });
        }
        match self.reserve().await {
            Some(slot) => Ok(slot.spawn(future)),
            None => Err(Rejected {
                future,
                closed: true,
            }),
        }
    }

    /// Sets the size. Growing frees slots at once; shrinking takes free slots away at once and
    /// retires busy ones as they come back.
    pub fn resize(&self, size: usize) {
        self.inner.cap.resize(size);
    }

    /// The current size (the number of slots once a pending shrink has retired busy ones).
    /// Unlike [`stats`](Self::stats), it does not take a utilisation sample.
    pub fn size(&self) -> usize {
        self.inner.cap.size()
    }

    /// Size, busy, queued and utilisation.
    pub fn stats(&self) -> PoolStats {
        let size = self.inner.cap.size();
        let busy = self.inner.busy.load(Ordering::Acquire);
        PoolStats {
            size,
            busy,
            queued: self.inner.queued.load(Ordering::Acquire),
            utilisation: self.inner.sampler.lock().sample(Instant::now(), busy, size),
        }
    }

    /// Stops taking work: waiting and later reservations get nothing. Running tasks go on.
    pub fn close(&self) {
        self.inner.cap.gate.close();
        self.inner.tracker.close();
    }

    /// Waits until the pool is closed, every slot reserved before has been given back, and
    /// every task spawned on one has finished. (A slot reserved before `close` may still spawn
    /// after it; `wait` waits for that task too.)
    pub async fn wait(&self) {
        self.inner.tracker.wait().await;
    }
}

/// A reserved slot of an [`ElasticPool`]. Dropping it gives the slot back (or retires it if the
/// pool has shrunk).
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    pool: ElasticPool,
    /// Counts the slot as tracked work from the moment it is reserved, so that
    /// [`ElasticPool::wait`] also waits for slots reserved but not yet spawned.
    _tracked: TaskTrackerToken,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Slot {
    /// Runs `future` on the tokio runtime, holding this slot until it completes.
    pub fn spawn<F>(self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // The slot (and its tracker token) lives in the task until the work is done.
        tokio::spawn(async move {
            let out = future.await;
            drop(self);
            out
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let inner = &self.pool.inner;
        inner.busy.fetch_sub(1, Ordering::AcqRel);
        if let Some(p) = self.permit.take() {
            if inner.cap.retire_one() {
                p.forget();
            }
        }
    }
}
