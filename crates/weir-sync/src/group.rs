//! `TaskGroup`: Go's errgroup for tokio. Spawn related tasks, bound how many run at once, and
//! on the first failure cancel the rest; or run them all and collect every failure.
//!
//! Cancellation is the same design as the worker's: each task gets a child of the group's
//! [`CancellationToken`], fired on the first failure (in [`GroupMode::FailFast`]), on
//! [`TaskGroup::cancel`], or when the group's parent token fires. A task that ignores its token
//! is aborted at its next await once the group is dropped: a group never leaves orphans.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a group does when a task fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupMode {
    /// The first failure cancels every other task; [`TaskGroup::join`] reports it. The default.
    #[default]
    FailFast,
    /// Every task runs to its end; [`TaskGroup::join`] reports every failure.
    CollectAll,
}

/// How one task of a group failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskFailure<E> {
    /// It returned an error.
    #[error("task {index} failed: {error}")]
    Failed {
        /// Its spawn order, from 0.
        index: usize,
        /// The error.
        error: E,
    },
    /// It panicked; the panic was caught.
    #[error("task {index} panicked: {message}")]
    Panicked {
        /// Its spawn order, from 0.
        index: usize,
        /// The panic's message, if it was a string.
        message: String,
    },
}

impl<E> TaskFailure<E> {
    /// The failed task's spawn order.
    pub fn index(&self) -> usize {
        match self {
            TaskFailure::Failed { index, .. } | TaskFailure::Panicked { index, .. } => *index,
        }
    }
}

/// Why a group did not succeed: its failures in the order they happened (one in
/// [`GroupMode::FailFast`]; tasks cancelled because of it are not counted as failures).
#[derive(Debug, thiserror::Error)]
#[error("{} of the group's tasks failed; first: {}", failures.len(), failures[0])]
pub struct GroupError<E: std::fmt::Display> {
    /// The failures, first first.
    pub failures: Vec<TaskFailure<E>>,
}

/// A group of tasks returning `Result<T, E>`. Results come back in spawn order.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use weir_sync::TaskGroup;
/// let mut g = TaskGroup::<u32, String>::new().limit(2);
/// for i in 0..5 {
///     g.spawn(move |_cancel| async move { Ok(i * 10) }).await;
/// }
/// assert_eq!(g.join().await.unwrap(), vec![0, 10, 20, 30, 40]);
/// # }
/// ```
pub struct TaskGroup<T, E> {
    set: JoinSet<(usize, Result<T, E>)>,
    /// Spawn order of each tokio task, to name a panic.
    ids: std::collections::HashMap<tokio::task::Id, usize>,
    token: CancellationToken,
    limit: Option<Arc<Semaphore>>,
    mode: GroupMode,
    spawned: usize,
    /// The spawn order of the task whose error cancelled the group (`usize::MAX`: none yet).
    /// Set by the failing task before it cancels, so the cause is known even when its
    /// siblings' reactions are joined first.
    first: Arc<AtomicUsize>,
}

impl<T, E> std::fmt::Debug for TaskGroup<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskGroup")
            .field("spawned", &self.spawned)
            .field("running", &self.set.len())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<T, E> Default for TaskGroup<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<T, E> TaskGroup<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    /// An empty group: fail-fast, no concurrency limit, its own cancellation token.
    pub fn new() -> Self {
        Self::with_parent(&CancellationToken::new())
    }

    /// A group whose token is a child of `parent`: cancelling the parent cancels the group.
    pub fn with_parent(parent: &CancellationToken) -> Self {
        TaskGroup {
            set: JoinSet::new(),
            ids: std::collections::HashMap::new(),
            token: parent.child_token(),
            limit: None,
            mode: GroupMode::FailFast,
            spawned: 0,
            first: Arc::new(AtomicUsize::new(usize::MAX)),
        }
    }

    /// At most `n` tasks run at once (at least 1); [`spawn`](Self::spawn) waits for room.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(Arc::new(Semaphore::new(n.max(1))));
        self
    }

    /// Sets what a failure does. By default, [`GroupMode::FailFast`].
    pub fn mode(mut self, mode: GroupMode) -> Self {
        self.mode = mode;
        self
    }

    /// The group's token: it fires on the first failure (fail-fast) or on [`cancel`](Self::cancel).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Cancels every task of the group (their tokens fire).
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Starts `f(token)` as a task of the group. With a limit, waits until fewer than the limit
    /// run. A task spawned after the group was cancelled still starts, with its token fired,
    /// so it can end at once.
    ///
    /// Cancel safety: dropping the future while it waits for room spawns nothing.
    pub async fn spawn<F, Fut>(&mut self, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let permit = match &self.limit {
            Some(sem) => Some(sem.clone().acquire_owned().await.expect("never closed")),
            None => None,
        };
        let index = self.spawned;
        self.spawned += 1;
        let token = self.token.child_token();
        let fut = f(token);
        let group = self.token.clone();
        let fail_fast = self.mode == GroupMode::FailFast;
        let first = self.first.clone();
        let handle = self.set.spawn(async move {
            let out = fut.await;
            drop(permit);
            if out.is_err() && fail_fast {
                let _ =
                    first.compare_exchange(usize::MAX, index, Ordering::AcqRel, Ordering::Acquire);
                group.cancel();
            }
            (index, out)
        });
        self.ids.insert(handle.id(), index);
    }

    /// Tasks spawned so far.
    pub fn len(&self) -> usize {
        self.spawned
    }

    /// True if nothing was spawned.
    pub fn is_empty(&self) -> bool {
        self.spawned == 0
    }

    /// Waits for every task. `Ok` holds every result in spawn order; `Err` the failures (in
    /// fail-fast mode the first one, and the rest were cancelled). A panic counts as a failure
    /// and, in fail-fast mode, cancels the others too.
    ///
    /// Cancel safety: dropping the future drops the group, which aborts the tasks still running.
    pub async fn join(mut self) -> Result<Vec<T>, GroupError<E>>
    where
        E: std::fmt::Display,
    {
        let mut results: Vec<Option<T>> = (0..self.spawned).map(|_| None).collect();
        let mut failures = Vec::new();
        while let Some(joined) = self.set.join_next_with_id().await {
            match joined {
                Ok((_, (index, Ok(v)))) => results[index] = Some(v),
                Ok((_, (index, Err(error)))) => failures.push(TaskFailure::Failed { index, error }),
                Err(e) => {
                    let index = self.ids.get(&e.id()).copied().unwrap_or(usize::MAX);
                    if e.is_panic() {
                        let message = panic_message(e.into_panic());
                        if self.mode == GroupMode::FailFast {
                            // A panicking task cannot mark itself: the first one seen is it.
                            let _ = self.first.compare_exchange(
                                usize::MAX,
                                index,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            );
                            self.token.cancel();
                        }
                        failures.push(TaskFailure::Panicked { index, message });
                    }
                }
            }
        }
        if failures.is_empty() {
            return Ok(results.into_iter().flatten().collect());
        }
        if self.mode == GroupMode::FailFast {
            // The other failures are siblings reacting to the cancellation: report the cause.
            let cause = self.first.load(Ordering::Acquire);
            let at = failures
                .iter()
                .position(|f| f.index() == cause)
                .unwrap_or(0);
            let first = failures.swap_remove(at);
            failures = vec![first];
        }
        Err(GroupError { failures })
    }
}

/// The message of a caught panic: its text if it panicked with a string, else a placeholder.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
