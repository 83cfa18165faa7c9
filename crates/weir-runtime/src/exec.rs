//! What runs inside a worker besides its dispatchers: the executor of one attempt, the
//! settler, the heartbeat loop and the autoscaler loop, and the state they share.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_core::workflow::MemberOutcome;
use weir_core::{
    Broker, BrokerError, Clock, Delivery, Job, JobState, Lease, Member, SettleOutcome, Settlement,
    TaskContext, TaskError, WorkerStatus,
};
use weir_sync::{panic_message, ElasticPool, Slot};

use crate::autoscale::{decide, Observed, ScalerState};
use crate::registry::Registry;
use crate::retry::settlement_for;
use crate::tuning::Tuning;
use crate::worker::Observer;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) started: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) deferred: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) scaled_up: AtomicU64,
    pub(crate) scaled_down: AtomicU64,
}

/// What every executor shares.
pub(crate) struct Exec {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) registry: Registry,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Leases this worker holds, with the token that stops their attempt. An entry lives
    /// from the start of the attempt until its settle is durable (so heartbeats cover the
    /// time a settle waits for its commit).
    pub(crate) inflight: Mutex<HashMap<u64, (Lease, CancellationToken)>>,
    pub(crate) tuning: Arc<Tuning>,
    /// Set when the grace period is over: attempts stopped from then on are given back.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    pub(crate) counters: Counters,
    pub(crate) workflows: Option<crate::Workflows>,
    /// Workflow members running now, by lease token, on a broker that cannot cancel them
    /// (RabbitMQ): the heartbeat loop asks the store whether their workflow cancelled them.
    pub(crate) members: Mutex<HashMap<u64, Member>>,
}

/// Keeps a running member in [`Exec::members`] until dropped.
struct Watched<'a> {
    exec: &'a Exec,
    token: u64,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.exec.members.lock().remove(&self.token);
    }
}

/// 100 ms doubling to 5 s: how long a dispatcher waits after consecutive store errors.
pub(crate) fn backoff_pause(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.min(6).saturating_sub(1));
    Duration::from_millis(ms.min(5_000))
}

/// Runs one attempt and hands its settlement to the settler. The pool slot is freed as soon as
/// the handler is done; the lease is held until the settle is durable.
pub(crate) async fn execute(
    exec: Arc<Exec>,
    settle_tx: mpsc::Sender<(Lease, Settlement)>,
    d: Delivery,
    slot: Slot,
) {
    let Delivery { mut job, lease } = d;
    // A token of its own (not a child of a shared one): creating and dropping children of one
    // parent contends on the parent's lock at every job. Shutdown cancels the held tokens.
    let token = CancellationToken::new();
    exec.inflight
        .lock()
        .insert(lease.token, (lease, token.clone()));
    exec.counters.started.fetch_add(1, Ordering::Relaxed);
    exec.observer.started(&job, exec.clock.now());
    if let Some(member) = job.member {
        if let Some(instead) = member_gate(&exec, &job, member).await {
            drop(slot);
            if settle_tx.send((lease, instead)).await.is_err() {
                tracing::error!(job = %job.id, "settler gone; the lease will expire");
            }
            return;
        }
    }
    let _watched = match (job.member, &exec.workflows) {
        (Some(member), Some(_)) if exec.broker.inspect().is_none() => {
            exec.members.lock().insert(lease.token, member);
            Some(Watched {
                exec: &exec,
                token: lease.token,
            })
        }
        _ => None,
    };
    let kind = exec.registry.get(&job.kind);
    // Limits: held for the whole attempt, or the job is deferred without running. Never
    // waited for here: waiting would park this pool slot (see weir_sync::Limiter).
    let admission = match kind.and_then(|k| k.limit_keys(&job.payload)) {
        None => None,
        Some(keys) => match exec.tuning.limiter().try_admit(&keys) {
            Ok(a) => Some(a),
            Err(wait) => {
                drop(slot);
                let spread = rand::rng().random_range(0..=wait.as_millis() as u64 / 2 + 1);
                let run_at = exec.clock.now().plus(wait + Duration::from_millis(spread));
                tracing::debug!(job = %job.id, ?keys, ?wait, "limits full: deferred");
                if settle_tx
                    .send((lease, Settlement::Defer { run_at }))
                    .await
                    .is_err()
                {
                    tracing::error!(job = %job.id, "settler gone; the lease will expire");
                }
                return;
            }
        },
    };
    let result: Result<Option<Vec<u8>>, TaskError> = match kind {
        None => Err(TaskError::permanent(format!(
            "unknown task kind `{}`: no handler is registered for it on this worker (known: {})",
            job.kind,
            exec.registry.kinds().join(", ")
        ))),
        Some(kind) => {
            let cx = TaskContext::new(
                job.id,
                job.kind.as_str(),
                job.queue.as_str(),
                job.attempt,
                job.max_attempts,
                job.trace_id.as_str(),
                token.clone(),
            );
            let payload = std::mem::take(&mut job.payload);
            let fut = AssertUnwindSafe((kind.handler)(payload, cx)).catch_unwind();
            let caught = match job.timeout.or(kind.timeout) {
                None => Some(fut.await),
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => Some(r),
                    Err(_) => {
                        token.cancel();
                        None
                    }
                },
            };
            match caught {
                Some(Ok(r)) => r,
                Some(Err(panic)) => Err(TaskError::retryable(format!(
                    "handler panicked: {}",
                    panic_message(panic)
                ))),
                None => Err(TaskError::retryable(format!(
                    "timed out after {:?}",
                    job.timeout.or(kind.timeout).unwrap_or_default()
                ))),
            }
        }
    };
    drop(admission);
    drop(slot);
    if let Err(e) = &result {
        tracing::debug!(job = %job.id, kind = %job.kind, attempt = job.attempt, error = %e, "attempt failed");
    }
    let backoff = exec
        .tuning
        .backoff(&job.kind)
        .or(kind.map(|k| k.backoff))
        .unwrap_or_default();
    let settlement =
        if result.is_err() && token.is_cancelled() && exec.stopping.load(Ordering::Acquire) {
            // Stopped by the end of the grace period, not by its own failure.
            Settlement::Release
        } else {
            settlement_for(
                result,
                job.attempt,
                job.max_attempts,
                &backoff,
                exec.clock.now(),
                &mut rand::rng(),
            )
        };
    let settlement = match job.member {
        Some(member) => advance(&exec, &job, member, settlement).await,
        None => settlement,
    };
    if settle_tx.send((lease, settlement)).await.is_err() {
        tracing::error!(job = %job.id, "settler gone; the lease will expire and the job run again");
    }
}

/// A deferral of 1 to 5 s (jittered, so members do not come back all at once), without
/// spending an attempt.
fn defer_member(exec: &Exec, job: &Job, member: Member, why: &str) -> Settlement {
    let pause = Duration::from_millis(rand::rng().random_range(1_000..5_000));
    tracing::warn!(job = %job.id, %member, ?pause, "{why}; the member is deferred");
    Settlement::Defer {
        run_at: exec.clock.now().plus(pause),
    }
}

/// What to settle instead of running a workflow member, if anything: a worker without a
/// state store defers it (it could not record the outcome). On a broker that cannot cancel
/// by id, the store decides: a member of a failed workflow is still delivered, so it is
/// finished as Cancelled here, unrun; and a member the store already has as finished (a
/// duplicate enqueue, or a redelivery after a crash between the record and the settle) is
/// not run again: a success replays its advance, a failure is dead-lettered as a duplicate.
async fn member_gate(exec: &Exec, job: &Job, member: Member) -> Option<Settlement> {
    let Some(wf) = &exec.workflows else {
        return Some(defer_member(
            exec,
            job,
            member,
            "this worker has no workflow state store",
        ));
    };
    if exec.broker.inspect().is_some() {
        return None;
    }
    match wf.recorded(member).await? {
        JobState::Succeeded => {
            // Its outcome is recorded: replay the advance (a no-op unless the last one was
            // interrupted) rather than run the handler again.
            tracing::debug!(job = %job.id, %member, "member already succeeded: not run again");
            Some(advance(exec, job, member, Settlement::Succeeded { result: None }).await)
        }
        JobState::Failed => Some(Settlement::Failed {
            error: format!(
                "member {member} had already failed (a duplicate delivery, not run); its error \
                 is in the workflow's record: weir inspect {}",
                member.workflow
            ),
        }),
        _ => Some(Settlement::Cancel {
            reason: format!(
                "cancelled: workflow {} failed before this member ran",
                member.workflow
            ),
        }),
    }
}

/// Advances the workflow of a member that finished for good, before its settle: if that
/// fails, the member is deferred (its attempt not spent), runs again, and its outcome is
/// recorded then. Members that will run again (retry, release) advance nothing.
async fn advance(exec: &Exec, job: &Job, member: Member, settlement: Settlement) -> Settlement {
    let outcome = match &settlement {
        Settlement::Succeeded { result } => MemberOutcome::Succeeded(result.clone()),
        Settlement::Failed { error } => MemberOutcome::Failed(error.clone()),
        _ => return settlement,
    };
    let Some(workflows) = &exec.workflows else {
        // member_gate deferred it before it ran.
        return settlement;
    };
    match workflows.finished(member, outcome).await {
        Ok(cancelled) => {
            if !cancelled.is_empty() {
                // Siblings running here stop now rather than at the next heartbeat.
                let cancelled: std::collections::HashSet<_> = cancelled.into_iter().collect();
                for (lease, token) in exec.inflight.lock().values() {
                    if cancelled.contains(&lease.id) {
                        token.cancel();
                    }
                }
            }
            settlement
        }
        Err(e) => defer_member(
            exec,
            job,
            member,
            &format!("advancing the workflow failed: {e}"),
        ),
    }
}

/// Settles outcomes in batches; each batch is one broker call (one commit on the embedded
/// broker). Transient errors are retried, so an outcome is not lost to a brief outage.
pub(crate) async fn settler(exec: Arc<Exec>, mut rx: mpsc::Receiver<(Lease, Settlement)>) {
    let mut buf = Vec::with_capacity(1024);
    while rx.recv_many(&mut buf, 1024).await > 0 {
        let batch = std::mem::take(&mut buf);
        let mut failures = 0;
        let outcomes = loop {
            match exec.broker.settle(batch.clone()).await {
                Ok(o) => break Some(o),
                Err(e) if e.is_transient() && failures < 20 => {
                    failures += 1;
                    let pause = backoff_pause(failures);
                    tracing::warn!(error = %e, retry_in = ?pause, "settle failed");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, jobs = batch.len(), "settle failed for good; these leases will expire and their jobs run again");
                    break None;
                }
            }
        };
        let mut map = exec.inflight.lock();
        for (i, (lease, settlement)) in batch.iter().enumerate() {
            map.remove(&lease.token);
            let Some(out) = outcomes.as_ref().and_then(|o| o.get(i)).copied() else {
                continue;
            };
            let c = &exec.counters;
            match (out, settlement) {
                (SettleOutcome::Stale, _) => {
                    c.stale.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(job = %lease.id, attempt = lease.attempt, "lease lost before settle; outcome discarded");
                }
                (_, Settlement::Succeeded { .. }) => {
                    c.succeeded.fetch_add(1, Ordering::Relaxed);
                }
                (_, Settlement::Retry { .. }) => {
                    c.retried.fetch_add(1, Ordering::Relaxed);
                }
                (_, Settlement::Failed { .. }) => {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                }
                (_, Settlement::Defer { .. }) => {
                    c.deferred.fetch_add(1, Ordering::Relaxed);
                }
                (_, Settlement::Release) => {
                    c.released.fetch_add(1, Ordering::Relaxed);
                }
                (_, Settlement::Cancel { .. }) => {
                    c.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
            exec.observer.settled(lease, settlement, out);
        }
    }
}

/// Renews every held lease each third of the lease time; a lease the broker no longer
/// honours (expired and reclaimed, or the job cancelled) has its attempt cancelled.
pub(crate) async fn heartbeat(exec: Arc<Exec>, lease: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let held: Vec<Lease> = exec.inflight.lock().values().map(|(l, _)| *l).collect();
        if held.is_empty() {
            continue;
        }
        match exec.broker.heartbeat(&held, lease).await {
            Ok(alive) => {
                let map = exec.inflight.lock();
                for (l, ok) in held.iter().zip(alive) {
                    if !ok {
                        if let Some((_, token)) = map.get(&l.token) {
                            tracing::warn!(job = %l.id, attempt = l.attempt, "lease lost: cancelling the attempt");
                            token.cancel();
                        }
                    }
                }
            }
            Err(e) => report_heartbeat_error(&e),
        }
        stop_cancelled_members(&exec).await;
    }
}

/// Fires the token of every running member whose workflow cancelled it (on brokers that
/// cannot cancel by id; elsewhere the lost lease above does it). The checks go to the store
/// together, so a batching store answers them in one transaction.
async fn stop_cancelled_members(exec: &Exec) {
    let Some(wf) = &exec.workflows else {
        return;
    };
    let running: Vec<(u64, Member)> = exec.members.lock().iter().map(|(t, m)| (*t, *m)).collect();
    if running.is_empty() {
        return;
    }
    let checks = running.iter().map(|(_, m)| wf.recorded(*m));
    let verdicts = futures::future::join_all(checks).await;
    let map = exec.inflight.lock();
    for ((token, member), verdict) in running.iter().zip(verdicts) {
        if verdict == Some(JobState::Cancelled) {
            if let Some((lease, t)) = map.get(token) {
                tracing::info!(job = %lease.id, %member, "its workflow failed: cancelling the attempt");
                t.cancel();
            }
        }
    }
}

/// This process's name in worker reports: `host:pid`.
fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// One queue's autoscaler and reporter: every tick, if the queue is autoscaled (see
/// [`Tuning`]), observe backlog and the pool, decide, resize; then report the pool's size and
/// the last decision to the broker (for `weir status`), if it keeps reports.
pub(crate) async fn autoscale(
    exec: Arc<Exec>,
    queue: String,
    pool: ElasticPool,
    tick: Duration,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = ScalerState::default();
    let queues = vec![queue.clone()];
    let worker = worker_name();
    let mut last_decision: Option<String> = None;
    let mut reporting = true;
    let mut scaling = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let cfg = exec.tuning.autoscale.load().get(&queue).cloned();
        if cfg.is_none() {
            state = ScalerState::default();
        }
        if let (Some(cfg), true) = (cfg, scaling) {
            match exec.broker.backlog(&queues).await {
                Ok(v) => {
                    let backlog = v.first().copied().unwrap_or(0);
                    let st = pool.stats();
                    let observed = Observed {
                        backlog,
                        busy: st.busy,
                        size: st.size,
                        utilisation: st.utilisation,
                    };
                    let now = exec.clock.now();
                    let d = decide(&cfg, &state, &observed, now);
                    state = d.state;
                    if d.target != st.size {
                        pool.resize(d.target);
                        let c = if d.target > st.size {
                            &exec.counters.scaled_up
                        } else {
                            &exec.counters.scaled_down
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(queue = %queue, from = st.size, to = d.target, reason = %d.reason, "autoscaler resized the pool");
                        last_decision =
                            Some(format!("{now}: {} -> {} ({})", st.size, d.target, d.reason));
                    }
                }
                Err(BrokerError::Unsupported(_)) => {
                    tracing::warn!(queue = %queue, "this broker reports no backlog: autoscaling off");
                    scaling = false;
                }
                Err(e) => {
                    tracing::warn!(queue = %queue, error = %e, "autoscaler: backlog unavailable")
                }
            }
        }
        if reporting {
            let st = pool.stats();
            let status = WorkerStatus {
                worker: worker.clone(),
                queue: queue.clone(),
                size: st.size as u64,
                busy: st.busy as u64,
                last_decision: last_decision.clone(),
                updated_at: exec.clock.now(),
            };
            match exec.broker.report(status).await {
                Ok(()) => {}
                Err(BrokerError::Unsupported(_)) => reporting = false,
                Err(e) => tracing::debug!(queue = %queue, error = %e, "worker report failed"),
            }
        }
    }
}

fn report_heartbeat_error(e: &BrokerError) {
    tracing::warn!(error = %e, "heartbeat failed; leases may expire if this goes on");
}
