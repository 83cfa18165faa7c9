//! The ready order of runnable jobs, kept in memory.
//!
//! Why in memory: storing the ready order as a `(queue, state, priority, run_at)` index costs an
//! index delete and insert on every lease and settle; keeping it here and indexing only
//! unfinished rows on disk is what lets the embedded broker reach its throughput (see
//! docs/embedded-format.md). Entries are only hints: a broker confirms each popped token
//! against its store (state and `run_at`) before leasing, so a stale or duplicate entry costs a
//! lookup, never a wrong delivery.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use crate::Timestamp;

#[derive(PartialEq, Eq, Debug)]
struct ReadyKey {
    priority: i32,
    run_at: i64,
    token: u64,
}

impl Ord for ReadyKey {
    /// Max-heap order: higher priority, then earlier `run_at`, then earlier token.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then(other.run_at.cmp(&self.run_at))
            .then(other.token.cmp(&self.token))
    }
}

impl PartialOrd for ReadyKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Default, Debug)]
struct QueueIndex {
    ready: BinaryHeap<ReadyKey>,
    /// (run_at, token, priority), earliest first.
    delayed: BinaryHeap<Reverse<(i64, u64, i32)>>,
}

impl QueueIndex {
    fn promote(&mut self, now: Timestamp) -> bool {
        let mut moved = false;
        while let Some(Reverse((run_at, token, priority))) = self.delayed.peek().copied() {
            if run_at > now.0 {
                break;
            }
            self.delayed.pop();
            self.ready.push(ReadyKey {
                priority,
                run_at,
                token,
            });
            moved = true;
        }
        moved
    }
}

/// Per-queue ready heaps (priority, then `run_at`) and delay heaps (`run_at`), holding broker
/// tokens. A building block for brokers; it does no I/O.
#[derive(Default, Debug)]
pub struct ReadyIndex {
    queues: HashMap<String, QueueIndex>,
    cursor: usize,
}

impl ReadyIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job: ready if `run_at <= now`, delayed otherwise.
    pub fn insert(
        &mut self,
        queue: &str,
        priority: i32,
        run_at: Timestamp,
        token: u64,
        now: Timestamp,
    ) {
        let q = match self.queues.get_mut(queue) {
            Some(q) => q,
            None => self.queues.entry(queue.to_owned()).or_default(),
        };
        if run_at <= now {
            q.ready.push(ReadyKey {
                priority,
                run_at: run_at.0,
                token,
            });
        } else {
            q.delayed.push(Reverse((run_at.0, token, priority)));
        }
    }

    /// Moves every delayed job whose time has come to its ready heap. True if any moved.
    pub fn promote(&mut self, now: Timestamp) -> bool {
        let mut moved = false;
        for q in self.queues.values_mut() {
            moved |= q.promote(now);
        }
        moved
    }

    /// The earliest `run_at` among delayed jobs.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.queues
            .values()
            .filter_map(|q| q.delayed.peek().map(|Reverse((t, _, _))| Timestamp(*t)))
            .min()
    }

    /// Takes up to `max` ready tokens from `queues`, one queue after another in turn so that no
    /// queue starves the others.
    pub fn take(&mut self, queues: &[String], max: usize, now: Timestamp) -> Vec<u64> {
        let mut out = Vec::with_capacity(max.min(1024));
        if queues.is_empty() {
            return out;
        }
        for q in queues {
            if let Some(q) = self.queues.get_mut(q.as_str()) {
                q.promote(now);
            }
        }
        let start = self.cursor;
        self.cursor = self.cursor.wrapping_add(1);
        let mut empty = 0;
        let mut i = start;
        while out.len() < max && empty < queues.len() {
            let name = &queues[i % queues.len()];
            i = i.wrapping_add(1);
            match self
                .queues
                .get_mut(name.as_str())
                .and_then(|q| q.ready.pop())
            {
                Some(k) => {
                    out.push(k.token);
                    empty = 0;
                }
                None => empty += 1,
            }
        }
        out
    }

    /// Ready entries of `queue` (including stale ones not yet discarded). Call
    /// [`promote`](Self::promote) first to count delayed jobs that have come due.
    pub fn ready_len(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.ready.len())
    }

    /// All entries, ready and delayed.
    pub fn len(&self) -> usize {
        self.queues
            .values()
            .map(|q| q.ready.len() + q.delayed.len())
            .sum()
    }

    /// True if it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (before a reload from the store).
    pub fn clear(&mut self) {
        self.queues.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn priority_then_run_at_then_token() {
        let mut ix = ReadyIndex::new();
        let now = Timestamp(100);
        ix.insert("q", 0, Timestamp(50), 1, now);
        ix.insert("q", 5, Timestamp(90), 2, now);
        ix.insert("q", 0, Timestamp(10), 3, now);
        ix.insert("q", 5, Timestamp(20), 4, now);
        ix.insert("q", 0, Timestamp(10), 5, now);
        assert_eq!(ix.take(&qs(&["q"]), 10, now), vec![4, 2, 3, 5, 1]);
    }

    #[test]
    fn delayed_jobs_wait_for_their_time() {
        let mut ix = ReadyIndex::new();
        ix.insert("q", 9, Timestamp(200), 1, Timestamp(100));
        ix.insert("q", 0, Timestamp(100), 2, Timestamp(100));
        assert_eq!(ix.next_due(), Some(Timestamp(200)));
        assert_eq!(ix.take(&qs(&["q"]), 10, Timestamp(150)), vec![2]);
        assert!(ix.take(&qs(&["q"]), 10, Timestamp(199)).is_empty());
        assert_eq!(ix.take(&qs(&["q"]), 10, Timestamp(200)), vec![1]);
        assert!(ix.is_empty());
    }

    #[test]
    fn queues_are_served_in_turn() {
        let mut ix = ReadyIndex::new();
        let now = Timestamp(0);
        for t in 0..4 {
            ix.insert("a", 0, now, t, now);
        }
        for t in 10..12 {
            ix.insert("b", 0, now, t, now);
        }
        let got = ix.take(&qs(&["a", "b"]), 4, now);
        assert_eq!(got.iter().filter(|t| **t >= 10).count(), 2, "{got:?}");
        assert_eq!(ix.take(&qs(&["a", "b", "missing"]), 10, now).len(), 2);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Insert { queue: u8, priority: i8, run_at: u8 },
            Take { queues: Vec<u8>, max: u8 },
            Tick(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0u8..3, -2i8..3, 0u8..40).prop_map(|(queue, priority, run_at)| Op::Insert { queue, priority, run_at }),
                2 => (proptest::collection::vec(0u8..4, 1..4), 1u8..6).prop_map(|(queues, max)| Op::Take { queues, max }),
                1 => (0u8..10).prop_map(Op::Tick),
            ]
        }

        proptest! {
            /// Checked against a plain list: every take returns, per queue, the best due entries
            /// in order (priority, then run_at, then token), nothing twice, and nothing is lost.
            #[test]
            fn matches_a_sorted_list(ops in proptest::collection::vec(op(), 1..200)) {
                let mut ix = ReadyIndex::new();
                // (queue, priority, run_at, token)
                let mut model: Vec<(String, i32, i64, u64)> = Vec::new();
                let mut now = 0i64;
                let mut next = 0u64;
                for op in ops {
                    match op {
                        Op::Insert { queue, priority, run_at } => {
                            next += 1;
                            let q = format!("q{queue}");
                            ix.insert(&q, priority.into(), Timestamp(i64::from(run_at)), next, Timestamp(now));
                            model.push((q, priority.into(), i64::from(run_at), next));
                        }
                        Op::Tick(d) => now += i64::from(d),
                        Op::Take { queues, max } => {
                            let names: Vec<String> = queues.iter().map(|q| format!("q{q}")).collect();
                            let mut distinct = names.clone();
                            distinct.sort();
                            distinct.dedup();
                            let got = ix.take(&distinct, usize::from(max), Timestamp(now));
                            prop_assert!(got.len() <= usize::from(max));
                            // Per queue: the taken tokens are that queue's best due ones, in order.
                            for q in &distinct {
                                let mut due: Vec<&(String, i32, i64, u64)> = model
                                    .iter()
                                    .filter(|e| &e.0 == q && e.2 <= now)
                                    .collect();
                                due.sort_by_key(|e| (std::cmp::Reverse(e.1), e.2, e.3));
                                let mine: Vec<u64> = got
                                    .iter()
                                    .copied()
                                    .filter(|t| model.iter().any(|e| e.3 == *t && &e.0 == q))
                                    .collect();
                                let want: Vec<u64> = due.iter().take(mine.len()).map(|e| e.3).collect();
                                prop_assert_eq!(&mine, &want);
                            }
                            let due_total = model
                                .iter()
                                .filter(|e| distinct.contains(&e.0) && e.2 <= now)
                                .count();
                            prop_assert_eq!(got.len(), due_total.min(usize::from(max)), "takes as many as it can");
                            model.retain(|e| !got.contains(&e.3));
                        }
                    }
                }
                // Nothing lost: everything left comes out once time has passed.
                let all: Vec<String> = (0..3).map(|q| format!("q{q}")).collect();
                let rest = ix.take(&all, usize::MAX, Timestamp(i64::MAX));
                let mut left: Vec<u64> = model.iter().map(|e| e.3).collect();
                let mut rest_sorted = rest.clone();
                left.sort_unstable();
                rest_sorted.sort_unstable();
                prop_assert_eq!(rest_sorted, left);
                prop_assert!(ix.is_empty());
            }
        }
    }
}
