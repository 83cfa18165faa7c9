//! One attempt of one job, start to finish: hold the lease, pass the workflow gate, take the
//! limits, run the handler (with its timeout, its cancellation token and panic capture),
//! turn the result into a settlement, advance the workflow, and hand the settlement to the
//! settler. The pool slot is freed as soon as the handler is done; the lease is held until
//! the settle is durable.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use weir_core::{Delivery, Job, Lease, Settlement, TaskContext, TaskError};
use weir_sync::{panic_message, Admission, Slot};

use crate::registry::Kind;
use crate::retry::settlement_for;
use crate::settler::SettleTx;
use crate::shared::Shared;

/// The `attempt` span of `d`, with `target: …,` before the name if given.
macro_rules! attempt_span {
    ($d:expr $(, $target:expr)?) => {
        tracing::info_span!(
            $(target: $target,)?
            "attempt",
            job = %$d.job.id,
            kind = %$d.job.kind,
            queue = %$d.job.queue,
            attempt = $d.job.attempt,
            trace_id = %$d.job.trace_id,
        )
    };
}

/// Runs one attempt in a `tracing` span named `attempt` that carries the job id, kind,
/// queue, attempt and trace id, so every line the handler logs can be traced to its job.
/// With the `otel` feature, an attempt whose trace is sampled (see `traced`) runs in a span
/// the exporter sees, joined to its job's trace.
pub(crate) async fn run(shared: Arc<Shared>, settle_tx: SettleTx, d: Delivery, slot: Slot) {
    #[cfg(feature = "otel")]
    if let Some(trace) = crate::traced::sampled(&d.job.trace_id) {
        let span = attempt_span!(d, crate::traced::TRACED_TARGET);
        crate::traced::join(&span, trace, &d.job);
        return attempt(shared, settle_tx, d, slot).instrument(span).await;
    }
    let span = attempt_span!(d);
    attempt(shared, settle_tx, d, slot).instrument(span).await
}

async fn attempt(shared: Arc<Shared>, settle_tx: SettleTx, d: Delivery, mut slot: Slot) {
    let Delivery { mut job, lease } = d;
    slot.start();
    // A token of its own (not a child of a shared one): creating and dropping children of one
    // parent contends on the parent's lock at every job. Shutdown cancels the held tokens.
    let token = CancellationToken::new();
    shared.leases.hold(lease, token.clone());
    let _unwinding = ReleaseOnPanic {
        shared: &shared,
        lease,
    };
    shared.counters.started();
    let now = shared.clock.now();
    shared.observer.started(&job, now);
    let kind = shared.registry.get(&job.kind);
    let metered = shared.metrics.kind(&job.queue, &job.kind, kind.is_some());
    metered.started(elapsed(job.run_at, now));
    let (id, created_at) = (job.id, job.created_at);
    let send = |s: Settlement| {
        metered.ended(&s, elapsed(created_at, shared.clock.now()));
        send(&settle_tx, id, lease, s)
    };
    let m = &shared.membership;
    if let Some(member) = job.member {
        if let Some(instead) = m.gate(&*shared.clock, &shared.leases, &job, member).await {
            drop(slot);
            return send(instead).await;
        }
    }
    if job.attempt > job.max_attempts {
        // Its attempts were spent by deliveries that never settled (each worker died or lost
        // its lease). A broker fails such a job itself, except a workflow member: that one it
        // gives back once more, for its failure to go through the workflow's advance here.
        drop(slot);
        let mut error = format!(
            "attempts exhausted ({}), the last without an outcome (its worker died or its \
             lease expired)",
            job.max_attempts
        );
        if let Some(last) = &job.last_error {
            error.push_str("; last error: ");
            error.push_str(last);
        }
        tracing::warn!(max_attempts = job.max_attempts, %error, "job failed");
        let failed = Settlement::Failed { error };
        let settlement = match job.member {
            Some(member) => {
                m.advance(&*shared.clock, &shared.leases, &job, member, failed)
                    .await
            }
            None => failed,
        };
        return send(settlement).await;
    }
    let _watched = job.member.and_then(|member| m.watch(lease.token, member));
    // Limits: held for the whole attempt, or the job is deferred without running. Never
    // waited for here: waiting would park this pool slot (see weir_sync::Limiter).
    let admission = match admit(&shared, &job, kind) {
        Ok(a) => a,
        Err(deferral) => {
            drop(slot);
            return send(deferral).await;
        }
    };
    let held = admission.as_ref().map(|a| shared.metrics.hold_limits(a));
    let began = std::time::Instant::now();
    let result = handle(&shared, &mut job, kind, token.clone()).await;
    metered.ran(began.elapsed());
    drop(held);
    drop(admission);
    drop(slot);
    let settlement = outcome(&shared, &job, kind, result, &token);
    let settlement = match job.member {
        Some(member) => {
            m.advance(&*shared.clock, &shared.leases, &job, member, settlement)
                .await
        }
        None => settlement,
    };
    send(settlement).await;
}

/// The time from `since` to `now`, zero if `now` is earlier.
fn elapsed(since: weir_core::Timestamp, now: weir_core::Timestamp) -> Duration {
    Duration::from_millis(
        u64::try_from(now.as_millis().saturating_sub(since.as_millis())).unwrap_or(0),
    )
}

/// If an attempt panics outside the handler (whose panics are caught), its lease leaves the
/// heartbeat set, so it expires and the job runs again, instead of being renewed for ever
/// for a task that no longer exists.
struct ReleaseOnPanic<'a> {
    shared: &'a Shared,
    lease: Lease,
}

impl Drop for ReleaseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(job = %self.lease.id, "the attempt panicked; its lease is left to expire");
            self.shared.leases.release([&self.lease]);
        }
    }
}

/// Takes the job's limits, or says when to run it instead (a deferral, attempt unspent).
fn admit(shared: &Shared, job: &Job, kind: Option<&Kind>) -> Result<Option<Admission>, Settlement> {
    let Some(keys) = kind.and_then(|k| k.limit_keys(&job.payload)) else {
        return Ok(None);
    };
    match shared.tuning.limiter().try_admit(&keys) {
        Ok(a) => Ok(Some(a)),
        Err(weir_sync::Refused { limit, wait }) => {
            shared.metrics.deferred_by(&limit);
            // Spread the retries, so a full limit is not met by every deferred job at once.
            let spread = rand::rng().random_range(0..=wait.as_millis() as u64 / 2 + 1);
            let run_at = shared
                .clock
                .now()
                .plus(wait + Duration::from_millis(spread));
            tracing::debug!(?keys, %limit, ?wait, "limit full: deferred");
            Err(Settlement::Defer { run_at })
        }
    }
}

/// Runs the handler with the job's timeout (or its kind's), catching a panic. An unknown kind
/// fails permanently; a timeout or a panic is a retryable failure.
async fn handle(
    shared: &Shared,
    job: &mut Job,
    kind: Option<&Kind>,
    token: CancellationToken,
) -> Result<Option<Vec<u8>>, TaskError> {
    let Some(kind) = kind else {
        return Err(TaskError::permanent(format!(
            "unknown task kind `{}`: no handler is registered for it on this worker (known: {})",
            job.kind,
            shared.registry.kinds().join(", ")
        )));
    };
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
    let timeout = job.timeout.or(kind.timeout);
    let caught = match timeout {
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
            timeout.unwrap_or_default()
        ))),
    }
}

/// The settlement for the handler's result, and its log line: a retry is logged at `info`
/// and a failure for good at `warn`, with the job, kind, attempt and error (from the span).
fn outcome(
    shared: &Shared,
    job: &Job,
    kind: Option<&Kind>,
    result: Result<Option<Vec<u8>>, TaskError>,
    token: &CancellationToken,
) -> Settlement {
    if result.is_err() && token.is_cancelled() && shared.leases.stopping() {
        // Stopped by the end of the grace period, not by its own failure.
        return Settlement::Release;
    }
    let backoff = shared
        .tuning
        .backoff(&job.kind)
        .or(kind.map(|k| k.backoff))
        .unwrap_or_default();
    // A result is stored beside the payload: one over the broker's payload limit would be
    // refused by the store (and with it the whole settle batch), so it fails the job instead.
    let max = shared.broker.job_limits().max_payload;
    let result = match result {
        Ok(Some(r)) if r.len() > max => Err(TaskError::permanent(format!(
            "the result is {} bytes, over the broker's limit of {max} (max_payload)",
            r.len()
        ))),
        other => other,
    };
    let s = settlement_for(
        result,
        job.attempt,
        job.max_attempts,
        &backoff,
        shared.clock.now(),
        &mut rand::rng(),
    );
    match &s {
        Settlement::Retry { run_at, error } => tracing::info!(
            max_attempts = job.max_attempts,
            retry_at = %run_at,
            %error,
            "attempt failed; will retry"
        ),
        Settlement::Failed { error } => {
            tracing::warn!(max_attempts = job.max_attempts, %error, "job failed")
        }
        _ => {}
    }
    s
}

async fn send(settle_tx: &SettleTx, job: weir_core::JobId, lease: Lease, s: Settlement) {
    if settle_tx.send((lease, s)).await.is_err() {
        tracing::error!(%job, "settler gone; the lease will expire and the job run again");
    }
}
