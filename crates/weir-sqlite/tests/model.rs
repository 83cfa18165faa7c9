//! Model-based test of the embedded broker: random operations from two handles on one file
//! (two processes, as far as the broker can tell: each has its own writer and ready order),
//! including reopening a handle (a restart), moving a shared clock past leases, and injected
//! store faults (a handle's next commit rounds fail and roll back, as a failed disk write
//! would), checked after every step against a plain model of what each job may be. An
//! operation that meets a fault must answer with a transient error and change nothing.
//!
//! Where the broker may legitimately be in one of several states (a lease has expired, and
//! the reaper of one handle or the other may or may not have run yet), the model accepts each
//! and then follows what the broker says; everything else must match exactly.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use weir_core::{
    Broker, Clock, Delivery, FetchRequest, Inspect, JobId, JobState, ManualClock, NewJob,
    SettleOutcome, Settlement, Timestamp,
};
use weir_sqlite::{SqliteBroker, SqliteOptions};

const LEASE: Duration = Duration::from_secs(10);
const MAX_ATTEMPTS: u32 = 3;

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        h: usize,
        priority: i8,
        delay: u8,
    },
    Fetch {
        h: usize,
        max: u8,
    },
    Settle {
        pick: usize,
        how: How,
    },
    Heartbeat {
        pick: usize,
    },
    Advance {
        secs: u8,
    },
    Cancel {
        pick: usize,
    },
    ManualRetry {
        pick: usize,
    },
    Reopen {
        h: usize,
    },
    /// Handle `h`'s next `n` commit rounds fail.
    Fault {
        h: usize,
        n: u8,
    },
}

#[derive(Clone, Copy, Debug)]
enum How {
    Succeed,
    Retry { secs: u8 },
    Fail,
    Release,
}

fn op() -> impl Strategy<Value = Op> {
    let how = prop_oneof![
        Just(How::Succeed),
        (0u8..5).prop_map(|secs| How::Retry { secs }),
        Just(How::Fail),
        Just(How::Release),
    ];
    prop_oneof![
        4 => (0usize..2, -2i8..3, 0u8..4).prop_map(|(h, priority, delay)| Op::Enqueue { h, priority, delay }),
        4 => (0usize..2, 1u8..4).prop_map(|(h, max)| Op::Fetch { h, max }),
        3 => (any::<usize>(), how).prop_map(|(pick, how)| Op::Settle { pick, how }),
        1 => any::<usize>().prop_map(|pick| Op::Heartbeat { pick }),
        2 => (1u8..15).prop_map(|secs| Op::Advance { secs }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::ManualRetry { pick }),
        1 => (0usize..2).prop_map(|h| Op::Reopen { h }),
        1 => (0usize..2, 1u8..3).prop_map(|(h, n)| Op::Fault { h, n }),
    ]
}

/// What the model knows of one job.
#[derive(Clone, Debug)]
struct Model {
    state: JobState,
    attempt: u32,
    max_attempts: u32,
    run_at: Timestamp,
    /// The current lease token and attempt, and when it expires, while Running.
    lease: Option<(u64, u32, Timestamp)>,
}

impl Model {
    /// Whether `lease` is the job's current lease, and whether that lease has expired.
    fn holds(&self, lease: &weir_core::Lease, now: Timestamp) -> (bool, bool) {
        let current = self.state == JobState::Running
            && self
                .lease
                .is_some_and(|(t, a, _)| t == lease.token && a == lease.attempt);
        let expired = self.lease.is_some_and(|(_, _, until)| until < now);
        (current, expired)
    }
}

fn open(path: &Path, clock: &Arc<ManualClock>, faults: &Arc<AtomicU32>) -> SqliteBroker {
    let opts = SqliteOptions::new(path)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(5))
        .inject_commit_faults(faults.clone());
    SqliteBroker::open_with(opts).unwrap()
}

/// An error an operation may answer with only because a fault was injected: transient, and
/// saying the round was rolled back.
fn injected(e: &weir_core::BrokerError) -> bool {
    e.is_transient() && e.to_string().contains("injected fault")
}

fn fetch_req(max: u8) -> FetchRequest {
    FetchRequest {
        queues: vec!["m".into()],
        max: usize::from(max),
        lease: LEASE,
        wait: Duration::ZERO,
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.db");
    let clock = Arc::new(ManualClock::new(Timestamp(1_000_000)));
    let faults = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))];
    let mut handles = vec![
        open(&path, &clock, &faults[0]),
        open(&path, &clock, &faults[1]),
    ];
    let mut jobs: HashMap<JobId, Model> = HashMap::new();
    let mut order: Vec<JobId> = Vec::new();
    let mut out: Vec<Delivery> = Vec::new(); // deliveries not settled yet
    let mut done_seen: HashMap<(String, i64), i64> = HashMap::new();
    for op in ops {
        let now = clock.now();
        // An operation that met an injected fault leaves the step (`break 'step`): the
        // checks below then show that it changed nothing.
        'step: {
            match op {
                Op::Enqueue { h, priority, delay } => {
                    let job = NewJob::new("k", "{}")
                        .queue("m")
                        .priority(i32::from(priority))
                        .max_attempts(MAX_ATTEMPTS)
                        .delay(Duration::from_secs(u64::from(delay)));
                    let id = match handles[h].enqueue(job).await {
                        Ok(e) => e.id,
                        Err(e) => {
                            prop_assert!(injected(&e), "enqueue failed: {e}");
                            break 'step;
                        }
                    };
                    jobs.insert(
                        id,
                        Model {
                            state: JobState::Pending,
                            attempt: 0,
                            max_attempts: MAX_ATTEMPTS,
                            run_at: now.plus(Duration::from_secs(u64::from(delay))),
                            lease: None,
                        },
                    );
                    order.push(id);
                }
                Op::Fetch { h, max } => {
                    let got = match handles[h].fetch(fetch_req(max)).await {
                        Ok(got) => got,
                        Err(e) => {
                            prop_assert!(injected(&e), "fetch failed: {e}");
                            Vec::new()
                        }
                    };
                    for d in got {
                        let m = jobs.get_mut(&d.job.id).expect("a job the model knows");
                        let due = matches!(m.state, JobState::Pending | JobState::Retryable)
                            && m.run_at <= now;
                        let expired = m.state == JobState::Running
                            && m.lease.is_some_and(|(_, _, until)| until < now);
                        prop_assert!(
                            due || expired,
                            "delivered a job that was not runnable: {m:?} at {now}"
                        );
                        prop_assert_eq!(d.job.attempt, m.attempt + 1, "the attempt counts on");
                        prop_assert!(
                            d.job.attempt <= m.max_attempts,
                            "delivered past its attempts: {:?}",
                            m
                        );
                        m.state = JobState::Running;
                        m.attempt = d.job.attempt;
                        m.lease = Some((d.lease.token, d.lease.attempt, now.plus(LEASE)));
                        out.push(d);
                    }
                }
                Op::Settle { pick, how } if !out.is_empty() => {
                    let d = out.swap_remove(pick % out.len());
                    let s = match how {
                        How::Succeed => Settlement::Succeeded { result: None },
                        // As the runtime does: the last attempt fails instead of retrying.
                        How::Retry { .. } if d.job.attempt >= d.job.max_attempts => {
                            Settlement::Failed {
                                error: "out of attempts".into(),
                            }
                        }
                        How::Retry { secs } => Settlement::Retry {
                            run_at: now.plus(Duration::from_secs(u64::from(secs))),
                            error: "again".into(),
                        },
                        How::Fail => Settlement::Failed { error: "no".into() },
                        How::Release => Settlement::Release,
                    };
                    let got = match handles[0].settle(vec![(d.lease, s.clone())]).await {
                        Ok(got) => got[0],
                        Err(e) => {
                            prop_assert!(injected(&e), "settle failed: {e}");
                            out.push(d); // not settled: still held
                            break 'step;
                        }
                    };
                    let m = jobs.get_mut(&d.job.id).unwrap();
                    let (current, expired) = m.holds(&d.lease, now);
                    if !current {
                        prop_assert_eq!(got, SettleOutcome::Stale, "a superseded lease settled");
                    } else if !expired {
                        prop_assert_eq!(got, SettleOutcome::Applied, "a live lease was refused");
                    }
                    if got == SettleOutcome::Applied {
                        m.lease = None;
                        match s {
                            Settlement::Succeeded { .. } => m.state = JobState::Succeeded,
                            Settlement::Retry { run_at, .. } => {
                                m.state = JobState::Retryable;
                                m.run_at = run_at;
                            }
                            Settlement::Failed { .. } => m.state = JobState::Failed,
                            Settlement::Release => {
                                m.state = JobState::Pending;
                                m.attempt -= 1; // given back unspent
                                m.run_at = now;
                            }
                            _ => unreachable!(),
                        }
                    }
                }
                Op::Heartbeat { pick } if !out.is_empty() => {
                    let d = &out[pick % out.len()];
                    let alive = match handles[1].heartbeat(&[d.lease], LEASE).await {
                        Ok(a) => a[0],
                        Err(e) => {
                            // Nothing extended; the check after the step holds the rest.
                            prop_assert!(injected(&e), "heartbeat failed: {e}");
                            break 'step;
                        }
                    };
                    let m = jobs.get_mut(&d.job.id).unwrap();
                    let (current, expired) = m.holds(&d.lease, now);
                    if !current {
                        prop_assert!(!alive, "a superseded lease was extended");
                    } else if !expired {
                        prop_assert!(alive, "a live lease was not extended");
                    }
                    if alive {
                        m.lease = m.lease.map(|(t, a, _)| (t, a, now.plus(LEASE)));
                    }
                }
                Op::Advance { secs } => clock.advance(Duration::from_secs(u64::from(secs))),
                Op::Cancel { pick } if !order.is_empty() => {
                    let id = order[pick % order.len()];
                    let before = jobs[&id].state;
                    let r = handles[1].cancel(id).await;
                    let m = jobs.get_mut(&id).unwrap();
                    match r {
                        Ok(j) => {
                            prop_assert_eq!(j.state, JobState::Cancelled);
                            prop_assert!(!before.is_finished() || before == JobState::Running);
                            m.state = JobState::Cancelled;
                            m.lease = None;
                        }
                        Err(e) if injected(&e) => {}
                        Err(_) => prop_assert!(
                            before.is_finished()
                                || (before == JobState::Running
                                    && m.lease.is_some_and(|(_, _, u)| u < now)),
                            "cancel refused for a {before:?} job"
                        ),
                    }
                }
                Op::ManualRetry { pick } if !order.is_empty() => {
                    let id = order[pick % order.len()];
                    let r = handles[0].retry(id).await;
                    let m = jobs.get_mut(&id).unwrap();
                    match r {
                        Ok(j) => {
                            prop_assert!(
                                m.state == JobState::Failed
                                    || (m.state == JobState::Running
                                        && m.lease.is_some_and(|(_, _, u)| u < now)),
                                "retried a {:?} job",
                                m.state
                            );
                            prop_assert_eq!(j.attempt, m.attempt, "the count never goes back");
                            m.state = JobState::Pending;
                            m.max_attempts = j.max_attempts;
                            m.run_at = now;
                            m.lease = None;
                        }
                        Err(e) if injected(&e) => {}
                        Err(_) => {
                            prop_assert!(m.state != JobState::Failed, "a failed job not retried")
                        }
                    }
                }
                Op::Reopen { h } => {
                    let old = std::mem::replace(&mut handles[h], open(&path, &clock, &faults[h]));
                    drop(old);
                }
                Op::Fault { h, n } => {
                    faults[h].store(u32::from(n), Ordering::Release);
                }
                _ => {}
            }
        }
        // The broker's record agrees with the model, or, where a lease expired, with one of
        // the outcomes a reaper may have produced; the model then follows the broker.
        let now = clock.now();
        for (id, m) in jobs.iter_mut() {
            let j = handles[0].get(*id).await.unwrap().expect("no job is lost");
            let expired =
                m.state == JobState::Running && m.lease.is_some_and(|(_, _, until)| until < now);
            if expired && j.state != JobState::Running {
                prop_assert!(
                    matches!(j.state, JobState::Pending | JobState::Failed),
                    "an expired lease became {:?}",
                    j.state
                );
                prop_assert!(
                    j.state == JobState::Pending || m.attempt >= m.max_attempts,
                    "reaped to Failed with attempts left"
                );
                m.state = j.state;
                m.run_at = j.run_at;
                m.lease = None;
            }
            prop_assert_eq!(
                j.state,
                m.state,
                "job {} in the broker vs the model {:?}",
                id,
                m
            );
            prop_assert_eq!(j.attempt, m.attempt);
        }
        // The maintained counts (kept by triggers, read by `weir status` and /metrics) are
        // the table's, in one snapshot (a reaper may change rows at any moment).
        {
            let mut c = rusqlite::Connection::open(&path).unwrap();
            let tx = c.transaction().unwrap();
            let read = |sql: &str| -> Vec<(String, i64, i64)> {
                let mut st = tx.prepare(sql).unwrap();
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .unwrap();
                rows.map(Result::unwrap).collect()
            };
            let kept =
                read("SELECT queue, state, n FROM finished_counts WHERE n != 0 ORDER BY 1, 2");
            let counted = read(
                "SELECT queue, state, COUNT(*) FROM jobs WHERE state >= 3 GROUP BY 1, 2 ORDER BY 1, 2",
            );
            prop_assert_eq!(kept, counted, "maintained counts drifted from the table");
            // `done` (jobs ever finished) never goes down, and never below `n`.
            for (queue, state, n) in read("SELECT queue, state, done FROM finished_counts") {
                let before = done_seen.insert((queue.clone(), state), n).unwrap_or(0);
                prop_assert!(
                    n >= before,
                    "done went down for {queue}/{state}: {before} -> {n}"
                );
            }
            prop_assert!(
                read("SELECT queue, state, 0 FROM finished_counts WHERE done < n").is_empty(),
                "done below n"
            );
        }
        continue_check(&path, jobs.len())?;
    }
    // The end runs without faults.
    for f in &faults {
        f.store(0, Ordering::Release);
    }
    // The end: every unfinished job runs to success from either handle; none is lost.
    clock.advance(Duration::from_secs(3600));
    let mut rounds = 0;
    loop {
        let mut unfinished = 0;
        for id in &order {
            if !handles[0]
                .get(*id)
                .await
                .unwrap()
                .unwrap()
                .state
                .is_finished()
            {
                unfinished += 1;
            }
        }
        if unfinished == 0 {
            break;
        }
        rounds += 1;
        prop_assert!(rounds < 200, "{unfinished} jobs never finished");
        for h in &handles {
            let got = h
                .fetch(FetchRequest {
                    wait: Duration::from_millis(20),
                    ..fetch_req(50)
                })
                .await
                .unwrap();
            let settle = got
                .iter()
                .map(|d| (d.lease, Settlement::Succeeded { result: None }))
                .collect();
            h.settle(settle).await.unwrap();
        }
    }
    Ok(())
}

/// The file holds exactly the jobs the model knows: an enqueue that failed wrote nothing.
fn continue_check(path: &Path, known: usize) -> Result<(), TestCaseError> {
    let c = rusqlite::Connection::open(path).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    prop_assert_eq!(n as usize, known, "jobs on file vs jobs the model knows");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn two_handles_on_one_file_follow_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops))?;
    }
}
