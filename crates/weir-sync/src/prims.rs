//! The synchronisation primitives the keyed semaphore and the pool's capacity are made of:
//! parking_lot's mutex and tokio's semaphore in production, loom stand-ins under
//! `--cfg loom`, so that the models drive the real code.

#[cfg(not(loom))]
mod imp {
    pub(crate) use parking_lot::Mutex;
    pub(crate) use std::sync::Arc;
    pub(crate) use tokio::sync::{OwnedSemaphorePermit as Permit, Semaphore};

    /// A permit if one is free now.
    pub(crate) fn try_take(s: &Arc<Semaphore>) -> Option<Permit> {
        s.clone().try_acquire_owned().ok()
    }
}

#[cfg(loom)]
mod imp {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    pub(crate) use loom::sync::Arc;

    /// parking_lot's mutex API over loom's.
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(t: T) -> Self {
            Mutex(loom::sync::Mutex::new(t))
        }
        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
    }

    /// The part of tokio's semaphore used here, as a loom counter.
    pub(crate) struct Semaphore(AtomicUsize);

    impl Semaphore {
        pub(crate) fn new(n: usize) -> Self {
            Semaphore(AtomicUsize::new(n))
        }
        pub(crate) fn available_permits(&self) -> usize {
            self.0.load(Ordering::Acquire)
        }
        pub(crate) fn add_permits(&self, n: usize) {
            self.0.fetch_add(n, Ordering::AcqRel);
        }
        pub(crate) fn forget_permits(&self, n: usize) -> usize {
            let mut cur = self.0.load(Ordering::Acquire);
            loop {
                let take = cur.min(n);
                match self
                    .0
                    .compare_exchange(cur, cur - take, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return take,
                    Err(now) => cur = now,
                }
            }
        }
    }

    /// A permit if one is free now.
    pub(crate) fn try_take(s: &Arc<Semaphore>) -> Option<Permit> {
        (s.forget_permits(1) == 1).then(|| Permit(Some(s.clone())))
    }

    pub(crate) struct Permit(Option<Arc<Semaphore>>);

    impl Permit {
        pub(crate) fn forget(mut self) {
            self.0 = None;
        }
    }

    impl Drop for Permit {
        fn drop(&mut self) {
            if let Some(s) = self.0.take() {
                s.add_permits(1);
            }
        }
    }
}

pub(crate) use imp::*;
