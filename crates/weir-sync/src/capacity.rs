//! The size accounting of a resizable pool, apart from the semaphore it steers, so that it can
//! be model-checked with loom (`RUSTFLAGS="--cfg loom" cargo test -p weir-sync --release capacity`).
//!
//! Growing adds permits at once. Shrinking forgets the permits that are free now and records
//! the rest as *debt*: each slot that comes back while debt remains is retired instead of
//! returned. That is what makes shrinking lazy. No running task is stopped, and a task is
//! never dropped or run twice.

#[cfg(loom)]
use loom::sync::{
    atomic::{AtomicUsize, Ordering},
    Mutex,
};
#[cfg(not(loom))]
use parking_lot::Mutex;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a pool's capacity is made of: permits that can be added and forgotten.
pub(crate) trait Gate {
    /// Makes `n` more permits available.
    fn add(&self, n: usize);
    /// Forgets up to `n` permits that are available now; returns how many.
    fn forget(&self, n: usize) -> usize;
}

impl Gate for tokio::sync::Semaphore {
    fn add(&self, n: usize) {
        self.add_permits(n);
    }

    fn forget(&self, n: usize) -> usize {
        self.forget_permits(n)
    }
}

pub(crate) struct Capacity<G> {
    pub(crate) gate: G,
    size: Mutex<usize>,
    debt: AtomicUsize,
}

impl<G: Gate> Capacity<G> {
    /// `gate` must start with exactly `size` permits.
    pub(crate) fn new(gate: G, size: usize) -> Self {
        Capacity {
            gate,
            size: Mutex::new(size),
            debt: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> impl std::ops::DerefMut<Target = usize> + '_ {
        #[cfg(loom)]
        return self.size.lock().unwrap();
        #[cfg(not(loom))]
        return self.size.lock();
    }

    /// The configured size (what capacity converges to once debt is paid).
    pub(crate) fn size(&self) -> usize {
        *self.lock()
    }

    /// Sets the size. Resizes are serialised; returns of slots are not blocked by them.
    pub(crate) fn resize(&self, new: usize) {
        let mut size = self.lock();
        if new > *size {
            let grow = new - *size;
            let cancelled = self.cancel_debt(grow);
            self.gate.add(grow - cancelled);
        } else if new < *size {
            let shrink = *size - new;
            let forgotten = self.gate.forget(shrink);
            self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        *size = new;
    }

    /// Reduces the debt by up to `n`; returns by how much.
    fn cancel_debt(&self, n: usize) -> usize {
        let mut cur = self.debt.load(Ordering::Acquire);
        loop {
            let c = cur.min(n);
            match self
                .debt
                .compare_exchange(cur, cur - c, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return c,
                Err(now) => cur = now,
            }
        }
    }

    /// Called when a slot comes back: true if it must be retired (forgotten) rather than
    /// returned, because the pool shrank while it was out.
    pub(crate) fn retire_one(&self) -> bool {
        self.debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok()
    }

    /// Slots still to retire.
    #[cfg(test)]
    pub(crate) fn debt(&self) -> usize {
        self.debt.load(Ordering::Acquire)
    }
}

/// The loom stand-in semaphore, as a gate (tokio's is one in `pool`).
#[cfg(loom)]
impl Gate for crate::prims::Arc<crate::prims::Semaphore> {
    fn add(&self, n: usize) {
        self.add_permits(n);
    }
    fn forget(&self, n: usize) -> usize {
        self.forget_permits(n)
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;

    /// The loom stand-in for tokio's semaphore (shared with the keyed-semaphore models).
    type Count = Arc<crate::prims::Semaphore>;

    fn count(n: usize) -> Count {
        Arc::new(crate::prims::Semaphore::new(n))
    }

    fn take(c: &Capacity<Count>) -> bool {
        c.gate.forget(1) == 1
    }

    fn give_back(c: &Capacity<Count>) {
        if !c.retire_one() {
            c.gate.add(1);
        }
    }

    /// Slots come back while the pool shrinks and grows: once all are back, exactly `size`
    /// permits are available and no debt is left over.
    #[test]
    fn resize_races_with_returns() {
        loom::model(|| {
            let c = Arc::new(Capacity::new(count(3), 3));
            assert!(take(&c) && take(&c));
            let returner = {
                let c = c.clone();
                loom::thread::spawn(move || {
                    give_back(&c);
                    give_back(&c);
                })
            };
            let resizer = {
                let c = c.clone();
                loom::thread::spawn(move || {
                    c.resize(1);
                    c.resize(2);
                })
            };
            returner.join().unwrap();
            resizer.join().unwrap();
            assert_eq!(c.size(), 2);
            assert_eq!(
                c.debt(),
                0,
                "every slot is back, so all debt was paid or cancelled"
            );
            assert_eq!(c.gate.available_permits(), 2, "capacity equals the size");
        });
    }

    /// Two resizes at once end at one of the two sizes, with capacity to match.
    #[test]
    fn concurrent_resizes() {
        loom::model(|| {
            let c = Arc::new(Capacity::new(count(2), 2));
            assert!(take(&c));
            let a = {
                let c = c.clone();
                loom::thread::spawn(move || c.resize(4))
            };
            let b = {
                let c = c.clone();
                loom::thread::spawn(move || c.resize(1))
            };
            give_back(&c);
            a.join().unwrap();
            b.join().unwrap();
            let size = c.size();
            assert!(size == 4 || size == 1);
            assert_eq!(c.gate.available_permits(), size - c.debt());
            assert_eq!(
                c.debt(),
                0,
                "every slot is back, so all debt was paid or cancelled"
            );
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    #[test]
    fn shrink_forgets_free_permits_and_owes_the_rest() {
        let c = Capacity::new(Semaphore::new(4), 4);
        let held = c.gate.try_acquire_many(3).unwrap();
        c.resize(1);
        assert_eq!(c.gate.available_permits(), 0);
        assert_eq!(c.debt(), 2);
        held.forget();
        assert!(c.retire_one() && c.retire_one() && !c.retire_one());
        c.resize(3);
        assert_eq!(c.gate.available_permits(), 2);
    }

    #[test]
    fn grow_cancels_debt_first() {
        let c = Capacity::new(Semaphore::new(2), 2);
        let held = c.gate.try_acquire_many(2).unwrap();
        c.resize(0);
        assert_eq!(c.debt(), 2);
        c.resize(3);
        assert_eq!(c.debt(), 0);
        assert_eq!(c.gate.available_permits(), 1);
        drop(held);
        assert_eq!(c.gate.available_permits(), 3);
    }
}
