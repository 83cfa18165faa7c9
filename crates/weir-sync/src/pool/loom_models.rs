//! loom models of the reservation and shutdown protocol (`RUSTFLAGS="--cfg loom" cargo test
//! -p weir-sync --release --lib pool`). The stand-ins spin with `yield_now` where tokio would
//! park; loom explores every interleaving of the pool's own steps around them.

use super::*;
use crate::prims::{self, try_take};
use loom::future::block_on;
use loom::sync::atomic::AtomicBool;
use loom::sync::Arc as LArc;

/// tokio's semaphore: a count of permits and a closed flag.
struct LoomSem {
    count: LArc<prims::Semaphore>,
    closed: AtomicBool,
}

impl Gate for LArc<LoomSem> {
    fn add(&self, n: usize) {
        self.count.add_permits(n);
    }
    fn forget(&self, n: usize) -> usize {
        self.count.forget_permits(n)
    }
}

impl Sem for LArc<LoomSem> {
    type Permit = prims::Permit;
    fn acquire(&self) -> impl Future<Output = Option<Self::Permit>> + Send {
        let sem = self.clone();
        async move {
            loop {
                if sem.closed.load(Ordering::Acquire) {
                    return None;
                }
                if let Some(p) = try_take(&sem.count) {
                    return Some(p);
                }
                loom::thread::yield_now();
            }
        }
    }
    fn try_acquire(&self) -> Option<Self::Permit> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        try_take(&self.count)
    }
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
    fn available(&self) -> usize {
        self.count.available_permits()
    }
    fn retire(permit: Self::Permit) {
        permit.forget();
    }
}

/// tokio-util's `TaskTracker`, with its orderings: one word holding the closed bit and
/// twice the number of tokens.
#[derive(Default)]
struct LoomTracker {
    state: AtomicUsize,
}

struct Token(LArc<LoomTracker>);

impl Drop for Token {
    fn drop(&mut self) {
        self.0.state.fetch_sub(2, Ordering::Release);
    }
}

impl Tracker for LArc<LoomTracker> {
    type Token = Token;
    fn token(&self) -> Token {
        self.state.fetch_add(2, Ordering::Relaxed);
        Token(self.clone())
    }
    fn close(&self) {
        self.state.fetch_or(1, Ordering::AcqRel);
    }
    fn wait(&self) -> impl Future<Output = ()> + Send {
        let t = self.clone();
        async move {
            while t.state.load(Ordering::Acquire) != 1 {
                loom::thread::yield_now();
            }
        }
    }
}

type LoomCore = Core<LArc<LoomSem>, LArc<LoomTracker>>;

fn core(size: usize) -> LArc<LoomCore> {
    let sem = LArc::new(LoomSem {
        count: LArc::new(prims::Semaphore::new(size)),
        closed: AtomicBool::new(false),
    });
    LArc::new(Core::new(sem, size, LArc::new(LoomTracker::default())))
}

/// `close(); wait()` racing a reservation: either the reservation gets nothing, or `wait`
/// returns only after its slot is back. Never a slot handed out after `wait` returned.
#[test]
fn wait_covers_every_reservation() {
    loom::model(|| {
        let core = core(1);
        let waited = LArc::new(AtomicBool::new(false));
        let reserver = {
            let (core, waited) = (core.clone(), waited.clone());
            loom::thread::spawn(move || {
                if let Some(mut held) = block_on(core.reserve()) {
                    assert!(
                        !waited.load(Ordering::Acquire),
                        "a slot was handed out after wait returned"
                    );
                    core.release(&mut held);
                }
            })
        };
        core.close();
        block_on(core.wait());
        waited.store(true, Ordering::Release);
        assert_eq!(core.busy(), 0, "wait returned with a slot still out");
        reserver.join().unwrap();
    });
}

/// Shutdown while the pool shrinks and a busy slot comes back: `wait` returns only after
/// the slot is back, and the books balance (no debt, capacity equal to the new size).
#[test]
fn shutdown_during_shrink() {
    loom::model(|| {
        let core = core(2);
        let mut held = core.try_reserve().expect("a free slot");
        let returner = {
            let core = core.clone();
            loom::thread::spawn(move || core.release(&mut held))
        };
        let resizer = {
            let core = core.clone();
            loom::thread::spawn(move || core.cap.resize(1))
        };
        core.close();
        block_on(core.wait());
        assert_eq!(core.busy(), 0, "wait returned with a slot still out");
        returner.join().unwrap();
        resizer.join().unwrap();
        assert_eq!(core.cap.debt(), 0);
        assert_eq!(core.cap.gate.available(), 1, "capacity equals the new size");
        assert!(
            core.try_reserve().is_none(),
            "a closed pool hands out nothing"
        );
    });
}
