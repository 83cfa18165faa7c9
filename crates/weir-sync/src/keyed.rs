//! A semaphore per key, made on first use and dropped when no one holds it, so that many
//! short-lived keys (`tenant:42`, `tenant:43`, …) do not grow memory. Written by hand because
//! the removal of idle keys must race correctly with acquires and releases of the same key;
//! loom models below check that (`RUSTFLAGS="--cfg loom" cargo test -p weir-sync --release keyed`).

use crate::capacity::Capacity;
use std::collections::HashMap;

use crate::prims::{try_take, Arc, Mutex, Permit, Semaphore};

/// A semaphore per key. Cheap to clone (a handle).
#[derive(Clone)]
pub(crate) struct KeyedSemaphore {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: Mutex<usize>,
    keys: Mutex<HashMap<String, Arc<KeyEntry>>>,
}

struct KeyEntry {
    cap: Capacity<Arc<Semaphore>>,
    /// Permits held through this entry (changed under the `keys` lock).
    users: Mutex<usize>,
}

impl KeyedSemaphore {
    pub(crate) fn new(capacity: usize) -> Self {
        KeyedSemaphore {
            inner: Arc::new(Inner {
                capacity: Mutex::new(capacity),
                keys: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A permit for `key` if one is free now. Never waits.
    pub(crate) fn try_acquire(&self, key: &str) -> Option<KeyPermit> {
        let mut keys = self.inner.keys.lock();
        let capacity = *self.inner.capacity.lock();
        let entry = keys
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(KeyEntry {
                    cap: Capacity::new(Arc::new(Semaphore::new(capacity)), capacity),
                    users: Mutex::new(0),
                })
            })
            .clone();
        match try_take(&entry.cap.gate) {
            Some(permit) => {
                *entry.users.lock() += 1;
                Some(KeyPermit {
                    permit: Some(permit),
                    entry,
                    key: key.to_owned(),
                    owner: self.clone(),
                })
            }
            None => {
                if *entry.users.lock() == 0 {
                    keys.remove(key);
                }
                None
            }
        }
    }

    /// Sets every key's capacity (held permits are kept; a shrink takes effect as they are
    /// released) and the capacity of keys made from now on.
    pub(crate) fn set_capacity(&self, n: usize) {
        *self.inner.capacity.lock() = n;
        for e in self.inner.keys.lock().values() {
            e.cap.resize(n);
        }
    }

    /// Keys that have a semaphore now.
    pub(crate) fn len(&self) -> usize {
        self.inner.keys.lock().len()
    }
}

/// A held concurrency permit of one key. Dropping it releases the permit, and the key's
/// semaphore with it when no one else holds one.
pub(crate) struct KeyPermit {
    permit: Option<Permit>,
    entry: Arc<KeyEntry>,
    key: String,
    owner: KeyedSemaphore,
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            if self.entry.cap.retire_one() {
                p.forget();
            }
        }
        let mut keys = self.owner.inner.keys.lock();
        let mut users = self.entry.users.lock();
        *users -= 1;
        if *users == 0 {
            keys.remove(&self.key);
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::atomic::{AtomicUsize, Ordering};

    /// Two users of one key under a capacity of 1 never hold it at once, and once both are
    /// done no key is left behind; the key works again afterwards.
    #[test]
    fn one_at_a_time_and_no_key_left_behind() {
        loom::model(|| {
            let sem = KeyedSemaphore::new(1);
            let holding = Arc::new(AtomicUsize::new(0));
            let users: Vec<_> = (0..2)
                .map(|_| {
                    let (sem, holding) = (sem.clone(), holding.clone());
                    loom::thread::spawn(move || {
                        if let Some(p) = sem.try_acquire("tenant:1") {
                            assert_eq!(holding.fetch_add(1, Ordering::AcqRel), 0, "two holders");
                            holding.fetch_sub(1, Ordering::AcqRel);
                            drop(p);
                        }
                    })
                })
                .collect();
            for u in users {
                u.join().unwrap();
            }
            assert_eq!(sem.len(), 0, "an idle key was kept");
            assert!(sem.try_acquire("tenant:1").is_some());
        });
    }

    /// A shrink while a permit is held and released concurrently ends with the new capacity
    /// honoured and no idle key kept.
    #[test]
    fn shrink_races_with_release() {
        loom::model(|| {
            let sem = KeyedSemaphore::new(2);
            let held = sem.try_acquire("k").unwrap();
            let releaser = loom::thread::spawn(move || drop(held));
            let resizer = {
                let sem = sem.clone();
                loom::thread::spawn(move || sem.set_capacity(1))
            };
            releaser.join().unwrap();
            resizer.join().unwrap();
            assert_eq!(sem.len(), 0);
            let first = sem.try_acquire("k");
            assert!(first.is_some());
            assert!(
                sem.try_acquire("k").is_none(),
                "capacity 1 after the shrink"
            );
        });
    }
}
