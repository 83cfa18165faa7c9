//! In-process pipelines with backpressure: bounded stages joined by channels, each stage with
//! its own concurrency, ordered or unordered output, a per-item timeout with a shed policy,
//! batching by size or time, branching and merging, and counters.
//!
//! Every stage is one tokio task. Between two stages is a bounded channel of `capacity` items.
//! A stage takes an item only when it has a free slot (`concurrency`) and sends a result only
//! into room it has reserved downstream first, so a slow stage holds its upstream back rather
//! than buffering without bound: at any time a stage holds at most `capacity` queued items plus
//! `concurrency` items in work. Dropping the consumer end stops the pipeline: stages see their
//! downstream closed and end.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use weir_sync::flow::{Flow, StageOptions};
//! let out = Flow::source(1..=5)
//!     .map("double", StageOptions::default().concurrency(4), |x: u32| async move { x * 2 })
//!     .batch("pairs", 2, std::time::Duration::from_secs(1))
//!     .collect()
//!     .await;
//! assert_eq!(out, vec![vec![2, 4], vec![6, 8], vec![10]]);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

mod options;

pub use options::{FlowStats, Shed, StageCounters, StageOptions, StageStats};

/// The sending side of a stage's input queue: counts what it queues.
struct Inlet<T> {
    tx: mpsc::Sender<T>,
    counters: Arc<StageCounters>,
}

impl<T> Clone for Inlet<T> {
    fn clone(&self) -> Self {
        Inlet {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<T> Inlet<T> {
    /// Waits for room, then queues `item`. False if the stage is gone.
    ///
    /// Cancel safe: an item is sent only if this returns `Ok`; dropped before, it is not sent.
    async fn send(&self, item: T) -> bool {
        match self.tx.reserve().await {
            Ok(permit) => {
                permit.send(item);
                self.counters
                    .enqueued(self.tx.max_capacity() - self.tx.capacity());
                true
            }
            Err(_) => false,
        }
    }
}

/// A stream of items flowing through stages. Built from a source, extended stage by stage,
/// consumed by [`collect`](Flow::collect), [`next`](Flow::next) or [`for_each`](Flow::for_each).
pub struct Flow<T> {
    rx: mpsc::Receiver<T>,
    stats: FlowStats,
}

impl<T> std::fmt::Debug for Flow<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("stages", &self.stats.stages())
            .finish()
    }
}

fn queue<T: Send + 'static>(name: &str, capacity: usize, stats: &FlowStats) -> (Inlet<T>, Flow<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    let weak = tx.downgrade();
    let counters = Arc::new(StageCounters {
        name: name.to_owned(),
        capacity,
        fill: Some(Box::new(move || {
            weak.upgrade()
                .map_or(0, |tx| tx.max_capacity() - tx.capacity())
        })),
        ..Default::default()
    });
    stats.0.lock().push(counters.clone());
    (
        Inlet {
            tx,
            counters: counters.clone(),
        },
        Flow {
            rx,
            stats: stats.clone(),
        },
    )
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<T: Send + 'static> Flow<T> {
    /// A flow of `items`, fed as fast as the first stage takes them.
    pub fn source<I>(items: I) -> Self
    where
        I: IntoIterator<Item = T> + Send + 'static,
        I::IntoIter: Send,
    {
        let stats = FlowStats::default();
        let (inlet, flow) = queue("source", 64, &stats);
        tokio::spawn(async move {
            for item in items {
                if !emit(&inlet, item).await {
                    return;
                }
            }
        });
        flow
    }

    /// A flow fed through the returned sender (bounded by `capacity`).
    pub fn channel(capacity: usize) -> (FlowSender<T>, Self) {
        let stats = FlowStats::default();
        let (inlet, flow) = queue("source", capacity.max(1), &stats);
        (FlowSender(inlet), flow)
    }

    /// The counters of every stage so far (and later ones: it is a live handle).
    pub fn stats(&self) -> FlowStats {
        self.stats.clone()
    }

    /// The next item, or `None` once the flow has ended.
    ///
    /// Cancel safe: an item is taken only when this returns it.
    pub async fn next(&mut self) -> Option<T> {
        let item = self.rx.recv().await?;
        Some(item)
    }

    /// Every item, in the order the last stage emits them.
    ///
    /// Cancel safety: dropping the future drops the flow; its stages see their downstream closed and end.
    pub async fn collect(mut self) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(item) = self.next().await {
            out.push(item);
        }
        out
    }

    /// Runs `f` on every item, one at a time.
    ///
    /// Cancel safety: dropping the future drops the flow; its stages see their downstream closed and end.
    pub async fn for_each<F: FnMut(T)>(mut self, mut f: F) {
        while let Some(item) = self.next().await {
            f(item);
        }
    }

    /// A stage that runs `f` on each item, as [`StageOptions`] say.
    pub fn map<O, F, Fut>(self, name: &str, opts: StageOptions<T>, f: F) -> Flow<O>
    where
        O: Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
    {
        self.filter_map(name, opts, move |item| {
            let fut = f(item);
            async move { Some(fut.await) }
        })
    }

    /// A stage that runs `f` on each item and sends on the `Some`s.
    pub fn filter_map<O, F, Fut>(mut self, name: &str, opts: StageOptions<T>, f: F) -> Flow<O>
    where
        O: Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<O>> + Send + 'static,
    {
        let (out_q, next) = queue(name, opts.capacity, &self.stats);
        let counters = out_q.counters.clone();
        let f = Arc::new(f);
        tokio::spawn(async move {
            use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
            if opts.concurrency == 1 {
                // One at a time: no futures to juggle, nothing to box.
                while let Some(item) = self.rx.recv().await {
                    counters.took();
                    counters.peak_working.store(1, Ordering::Relaxed);
                    let out =
                        run_one(&*f, item, opts.timeout, &opts.shed, opts.keep, &counters).await;
                    if let Some(o) = out {
                        if !emit(&out_q, o).await {
                            return;
                        }
                    }
                }
                return;
            }
            let out = out_q;
            // Each item in work is a future giving what to emit (None: nothing, or shed).
            let mut ordered: FuturesOrdered<BoxFut<Option<O>>> = FuturesOrdered::new();
            let mut unordered: FuturesUnordered<BoxFut<Option<O>>> = FuturesUnordered::new();
            let mut input_open = true;
            loop {
                let working = ordered.len() + unordered.len();
                counters.working.store(working, Ordering::Relaxed);
                counters.peak_working.fetch_max(working, Ordering::Relaxed);
                if !input_open && working == 0 {
                    return;
                }
                tokio::select! {
                    biased;
                    Some(done) = ordered.next(), if !ordered.is_empty() => {
                        if let Some(o) = done {
                            if !emit(&out, o).await { return; }
                        }
                    }
                    Some(done) = unordered.next(), if !unordered.is_empty() => {
                        if let Some(o) = done {
                            if !emit(&out, o).await { return; }
                        }
                    }
                    item = self.rx.recv(), if input_open && working < opts.concurrency => {
                        let Some(item) = item else {
                            input_open = false;
                            continue;
                        };
                        counters.took();
                        let fut = work(
                            f.clone(),
                            item,
                            opts.timeout,
                            opts.shed.clone(),
                            opts.keep,
                            counters.clone(),
                        );
                        if opts.ordered {
                            ordered.push_back(fut);
                        } else {
                            unordered.push(fut);
                        }
                    }
                }
            }
        });
        next
    }

    /// A stage that groups items into batches of `size`, or fewer when `max_wait` passes
    /// after a batch's first item (or the input ends).
    pub fn batch(mut self, name: &str, size: usize, max_wait: Duration) -> Flow<Vec<T>> {
        let size = size.max(1);
        let (out, next) = queue(name, 64, &self.stats);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(size);
            let mut deadline = None;
            loop {
                let timer = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    item = self.rx.recv() => match item {
                        Some(item) => {
                            out.counters.took();
                            if batch.is_empty() {
                                deadline = Some(tokio::time::Instant::now() + max_wait);
                            }
                            batch.push(item);
                            if batch.len() < size {
                                continue;
                            }
                        }
                        None => {
                            if !batch.is_empty() {
                                emit(&out, std::mem::take(&mut batch)).await;
                            }
                            return;
                        }
                    },
                    _ = timer => {}
                }
                deadline = None;
                if !emit(
                    &out,
                    std::mem::replace(&mut batch, Vec::with_capacity(size)),
                )
                .await
                {
                    return;
                }
            }
        });
        next
    }

    /// Splits the flow: items for which `pred` holds go to the first flow, the rest to the
    /// second. Each branch is bounded; a slow branch holds both back.
    pub fn branch<P>(mut self, name: &str, pred: P) -> (Flow<T>, Flow<T>)
    where
        P: Fn(&T) -> bool + Send + 'static,
    {
        let (yes, yes_flow) = queue(&format!("{name}.yes"), 64, &self.stats);
        let (no, no_flow) = queue(&format!("{name}.no"), 64, &self.stats);
        tokio::spawn(async move {
            while let Some(item) = self.rx.recv().await {
                let to = if pred(&item) { &yes } else { &no };
                to.counters.took();
                if !to.send(item).await {
                    return;
                }
                to.counters.emitted.fetch_add(1, Ordering::Relaxed);
            }
        });
        (yes_flow, no_flow)
    }

    /// Fans in: one flow of the items of both, in arrival order.
    pub fn merge(mut self, mut other: Flow<T>) -> Flow<T> {
        let (out, next) = queue("merge", 64, &self.stats);
        // Branches of one flow share its stats; flows from elsewhere bring theirs along.
        if !Arc::ptr_eq(&self.stats.0, &other.stats.0) {
            let theirs: Vec<_> = other.stats.0.lock().clone();
            self.stats.0.lock().extend(theirs);
        }
        tokio::spawn(async move {
            let (mut a_open, mut b_open) = (true, true);
            while a_open || b_open {
                let item = tokio::select! {
                    i = self.rx.recv(), if a_open => match i {
                        Some(i) => { out.counters.took(); i }
                        None => { a_open = false; continue; }
                    },
                    i = other.rx.recv(), if b_open => match i {
                        Some(i) => { out.counters.took(); i }
                        None => { b_open = false; continue; }
                    },
                };
                if !emit(&out, item).await {
                    return;
                }
            }
        });
        next
    }

    /// A composite stage: `sub` builds a whole sub-pipeline from this flow.
    pub fn then<O, S>(self, sub: S) -> Flow<O>
    where
        S: FnOnce(Flow<T>) -> Flow<O>,
    {
        sub(self)
    }
}

/// Feeds a flow made by [`Flow::channel`]. Dropping every sender ends the flow.
pub struct FlowSender<T>(Inlet<T>);

impl<T> Clone for FlowSender<T> {
    fn clone(&self) -> Self {
        FlowSender(self.0.clone())
    }
}

impl<T> std::fmt::Debug for FlowSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowSender").finish_non_exhaustive()
    }
}

impl<T> FlowSender<T> {
    /// Waits for room, then sends `item`. `Err` gives it back if the flow is gone.
    pub async fn send(&self, item: T) -> Result<(), T> {
        match self.0.tx.reserve().await {
            Ok(permit) => {
                permit.send(item);
                let tx = &self.0.tx;
                self.0.counters.enqueued(tx.max_capacity() - tx.capacity());
                self.0.counters.emitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => Err(item),
        }
    }
}

/// Reserves room downstream, then sends. False if downstream is gone.
async fn emit<O>(out: &Inlet<O>, item: O) -> bool {
    let sent = out.send(item).await;
    if sent {
        out.counters.emitted.fetch_add(1, Ordering::Relaxed);
    }
    sent
}

/// One item's work, boxed so a stage can hold many at once.
fn work<T, O, F, Fut>(
    f: Arc<F>,
    item: T,
    timeout: Option<Duration>,
    shed: Shed<T>,
    keep: Option<fn(&T) -> T>,
    counters: Arc<StageCounters>,
) -> BoxFut<Option<O>>
where
    T: Send + 'static,
    O: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<O>> + Send + 'static,
{
    Box::pin(async move { run_one(&*f, item, timeout, &shed, keep, &counters).await })
}

/// One item's work: the function, under the timeout; a timed-out item is shed.
async fn run_one<T, O, F, Fut>(
    f: &F,
    item: T,
    timeout: Option<Duration>,
    shed: &Shed<T>,
    keep: Option<fn(&T) -> T>,
    counters: &StageCounters,
) -> Option<O>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Option<O>>,
{
    let Some(t) = timeout else {
        return f(item).await;
    };
    let keep = keep.map(|copy| copy(&item));
    match tokio::time::timeout(t, f(item)).await {
        Ok(out) => out,
        Err(_) => {
            counters.shed.fetch_add(1, Ordering::Relaxed);
            if let (Shed::Divert(side), Some(item)) = (shed, keep) {
                let _ = side.send(item).await;
            }
            None
        }
    }
}
