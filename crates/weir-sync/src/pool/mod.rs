//! [`ElasticPool`]: a bounded, resizable pool of slots for async work.

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicUsize, Ordering};
use std::future::Future;
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::{task_tracker::TaskTrackerToken, TaskTracker};

use crate::capacity::{Capacity, Gate};

/// A snapshot of a pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolStats {
    /// The configured size. Capacity converges to it as slots come back.
    pub size: usize,
    /// Slots running work: spawned on ([`Slot::spawn`]) or marked started ([`Slot::start`]).
    /// A slot reserved and waiting for work to arrive (a dispatcher's fetch parked on an
    /// empty queue) is not busy.
    pub busy: usize,
    /// Slots out of the pool: busy ones and ones reserved but not started yet.
    pub reserved: usize,
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

/// The primitives a pool's reservations and shutdown are made of: tokio's semaphore and
/// tokio-util's `TaskTracker` in production, loom stand-ins in the models below. The order of
/// operations in [`Core`] is weir's own, and it is what the models check.
pub(crate) trait Sem: Gate + Send + Sync + 'static {
    /// One slot's permit; dropping it gives the slot back.
    type Permit: Send + 'static;
    /// Waits for a permit; `None` once closed.
    fn acquire(&self) -> impl Future<Output = Option<Self::Permit>> + Send;
    /// A permit if one is free now and the gate is open.
    fn try_acquire(&self) -> Option<Self::Permit>;
    /// Fails every waiting and later acquire.
    fn close(&self);
    /// Whether [`close`](Self::close) was called.
    fn is_closed(&self) -> bool;
    /// Permits free now.
    fn available(&self) -> usize;
    /// Destroys a permit instead of giving it back (a retired slot).
    fn retire(permit: Self::Permit);
}

/// Counts outstanding work; `wait` returns once closed with nothing outstanding.
pub(crate) trait Tracker: Send + Sync + 'static {
    /// One unit of outstanding work, until dropped.
    type Token: Send + 'static;
    /// Counts one more unit of work (also after `close`).
    fn token(&self) -> Self::Token;
    /// Lets `wait` return once the count reaches zero.
    fn close(&self);
    /// Waits until closed and no token is left.
    fn wait(&self) -> impl Future<Output = ()> + Send;
}

impl Gate for Arc<Semaphore> {
    fn add(&self, n: usize) {
        self.add_permits(n);
    }
    fn forget(&self, n: usize) -> usize {
        self.forget_permits(n)
    }
}

impl Sem for Arc<Semaphore> {
    type Permit = OwnedSemaphorePermit;
    fn acquire(&self) -> impl Future<Output = Option<Self::Permit>> + Send {
        let sem = self.clone();
        async move { sem.acquire_owned().await.ok() }
    }
    fn try_acquire(&self) -> Option<Self::Permit> {
        self.clone().try_acquire_owned().ok()
    }
    fn close(&self) {
        Semaphore::close(self);
    }
    fn is_closed(&self) -> bool {
        Semaphore::is_closed(self)
    }
    fn available(&self) -> usize {
        self.available_permits()
    }
    fn retire(permit: Self::Permit) {
        permit.forget();
    }
}

impl Tracker for TaskTracker {
    type Token = TaskTrackerToken;
    fn token(&self) -> Self::Token {
        TaskTracker::token(self)
    }
    fn close(&self) {
        TaskTracker::close(self);
    }
    fn wait(&self) -> impl Future<Output = ()> + Send {
        TaskTracker::wait(self)
    }
}

/// A reservation: the permit (if not yet given back) and the work token.
pub(crate) struct Held<S: Sem, T: Tracker> {
    permit: Option<S::Permit>,
    /// Counted in [`Core::active`].
    active: bool,
    /// Dropped last, after the permit is back, so `wait` never returns before the slot is.
    _token: T::Token,
}

/// Decrements a counter when dropped, so a cancelled wait is not counted as waiting forever.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The reservation and shutdown protocol of a pool, generic over its primitives.
pub(crate) struct Core<S, T> {
    cap: Capacity<S>,
    /// Slots out (reserved or running).
    busy: AtomicUsize,
    /// Slots running work: a statistic, not part of the reservation protocol.
    active: AtomicUsize,
    queued: AtomicUsize,
    tracker: T,
}

impl<S: Sem, T: Tracker> Core<S, T> {
    /// `gate` must start with exactly `size` permits.
    pub(crate) fn new(gate: S, size: usize, tracker: T) -> Self {
        Core {
            cap: Capacity::new(gate, size),
            busy: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            tracker,
        }
    }

    /// Waits for a slot; `None` once closed. Cancel safe.
    ///
    /// The work token is taken *before* the permit. The other order has a race that the loom
    /// model `wait_covers_every_reservation` finds: a permit taken just before `close`, then
    /// `wait` seeing no work and returning, then the slot handed out after it. The token and
    /// the permit live in two atomics (the tracker's and the semaphore's), and so do the two
    /// halves of `close`; without a SeqCst fence on both sides, each side may read the other's
    /// old value (a store-buffering race, also found by the model).
    pub(crate) async fn reserve(&self) -> Option<Held<S, T>> {
        let token = self.tracker.token();
        fence(Ordering::SeqCst);
        self.queued.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(&self.queued);
        let permit = self.cap.gate.acquire().await;
        drop(waiting);
        self.admit(permit?, token)
    }

    /// A slot now, if one is free and the pool is open.
    pub(crate) fn try_reserve(&self) -> Option<Held<S, T>> {
        let token = self.tracker.token();
        fence(Ordering::SeqCst);
        let permit = self.cap.gate.try_acquire()?;
        self.admit(permit, token)
    }

    fn admit(&self, permit: S::Permit, token: T::Token) -> Option<Held<S, T>> {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Some(Held {
            permit: Some(permit),
            active: false,
            _token: token,
        })
    }

    /// Counts a held slot as running work, once.
    pub(crate) fn activate(&self, held: &mut Held<S, T>) {
        if !held.active && held.permit.is_some() {
            held.active = true;
            self.active.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Gives a slot back, or retires it if the pool shrank while it was out. The token goes
    /// when `held` is dropped, after this.
    pub(crate) fn release(&self, held: &mut Held<S, T>) {
        if let Some(p) = held.permit.take() {
            if std::mem::take(&mut held.active) {
                self.active.fetch_sub(1, Ordering::AcqRel);
            }
            self.busy.fetch_sub(1, Ordering::AcqRel);
            if self.cap.retire_one() {
                S::retire(p);
            }
        }
    }

    /// Closes the gate, then the tracker (see [`reserve`](Self::reserve) for the fence).
    pub(crate) fn close(&self) {
        self.cap.gate.close();
        fence(Ordering::SeqCst);
        self.tracker.close();
    }

    pub(crate) async fn wait(&self) {
        self.tracker.wait().await;
    }

    #[cfg(all(test, loom))]
    fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }
}

struct Inner {
    core: Core<Arc<Semaphore>, TaskTracker>,
    max_queued: usize,
    sampler: Mutex<Sampler>,
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
                core: Core::new(Arc::new(Semaphore::new(size)), size, TaskTracker::new()),
                max_queued,
                sampler: Mutex::new(Sampler {
                    window: window.max(Duration::from_millis(1)),
                    last: now,
                    integral: 0.0,
                    marks: Default::default(),
                }),
            }),
        }
    }

    fn slot(&self, held: Held<Arc<Semaphore>, TaskTracker>) -> Slot {
        Slot {
            held,
            pool: self.clone(),
        }
    }

    /// Waits for a free slot; `None` once the pool is closed. Cancel safe: dropping the future
    /// takes no slot.
    pub async fn reserve(&self) -> Option<Slot> {
        self.inner.core.reserve().await.map(|h| self.slot(h))
    }

    /// A free slot now, if there is one.
    pub fn try_reserve(&self) -> Option<Slot> {
        self.inner.core.try_reserve().map(|h| self.slot(h))
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
    ///
    /// Cancel safe: dropped before it returns, the future is not run and no slot is taken.
    pub async fn submit<F>(&self, future: F) -> Result<JoinHandle<F::Output>, Rejected<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let core = &self.inner.core;
        if core.cap.gate.is_closed() {
            return Err(Rejected {
                future,
                closed: true,
            });
        }
        if core.queued.load(Ordering::Acquire) >= self.inner.max_queued
            && core.cap.gate.available() == 0
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
        self.inner.core.cap.resize(size);
    }

    /// The current size (the number of slots once a pending shrink has retired busy ones).
    /// Unlike [`stats`](Self::stats), it does not take a utilisation sample.
    pub fn size(&self) -> usize {
        self.inner.core.cap.size()
    }

    /// Size, busy, reserved, queued and utilisation (see [`PoolStats`]).
    pub fn stats(&self) -> PoolStats {
        let core = &self.inner.core;
        let size = core.cap.size();
        let busy = core.active.load(Ordering::Acquire);
        PoolStats {
            size,
            busy,
            reserved: core.busy.load(Ordering::Acquire),
            queued: core.queued.load(Ordering::Acquire),
            utilisation: self.inner.sampler.lock().sample(Instant::now(), busy, size),
        }
    }

    /// Stops taking work: waiting and later reservations get nothing. Running tasks go on.
    pub fn close(&self) {
        self.inner.core.close();
    }

    /// Waits until the pool is closed, every slot reserved before has been given back, and
    /// every task spawned on one has finished. (A slot reserved before `close` may still spawn
    /// after it; `wait` waits for that task too.)
    ///
    /// Cancel safe.
    pub async fn wait(&self) {
        self.inner.core.wait().await;
    }
}

/// A reserved slot of an [`ElasticPool`]. Dropping it gives the slot back (or retires it if the
/// pool has shrunk).
pub struct Slot {
    /// The permit and a work token, held from the moment the slot is reserved, so that
    /// [`ElasticPool::wait`] also waits for slots reserved but not yet spawned.
    held: Held<Arc<Semaphore>, TaskTracker>,
    pool: ElasticPool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Slot {
    /// Marks the slot as running work from now until it is dropped: it counts as busy in
    /// [`ElasticPool::stats`] and in utilisation. [`spawn`](Self::spawn) does this itself;
    /// call it when the slot's work runs some other way. Calling it twice counts once.
    pub fn start(&mut self) {
        self.pool.inner.core.activate(&mut self.held);
    }

    /// Runs `future` on the tokio runtime, holding this slot until it completes. The slot
    /// counts as busy from now on (see [`start`](Self::start)).
    pub fn spawn<F>(mut self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.start();
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
        self.pool.inner.core.release(&mut self.held);
    }
}

/// loom models of the reservation and shutdown protocol (`RUSTFLAGS="--cfg loom" cargo test
/// -p weir-sync --release --lib pool`). The stand-ins spin with `yield_now` where tokio would
/// park; loom explores every interleaving of the pool's own steps around them.
#[cfg(all(test, loom))]
mod loom_models;
