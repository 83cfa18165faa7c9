//! Mapping between stored rows and [`Job`].

use std::time::Duration;

use rusqlite::Row;
use weir_core::{Delivery, Job, JobId, JobState, Lease, Member, Timestamp};

/// The columns [`job_from_row`] reads, in order.
pub(crate) const JOB_COLUMNS: &str = "seq, id, kind, queue, payload, priority, run_at, attempt, \
     max_attempts, timeout_ms, unique_key, trace_id, created_at, state, lease_until, last_error, \
     result, finished_at, member";

/// The columns a worker needs to run a job, read by [`delivery_from_row`]. Leaner than
/// [`JOB_COLUMNS`]: the lease statement is on the hot path.
pub(crate) const RUN_COLUMNS: &str = "seq, id, kind, queue, payload, priority, run_at, attempt, \
     max_attempts, timeout_ms, trace_id, created_at, member";

/// Reads a row leased with [`RUN_COLUMNS`] as a delivery. `unique_key`, `last_error`,
/// `result` and `finished_at` are not loaded.
pub(crate) fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    let seq = r.get::<_, i64>(0)? as u64;
    let id = JobId::from_bytes(r.get(1)?);
    let attempt: u32 = r.get(7)?;
    let job = Job {
        id,
        kind: r.get(2)?,
        queue: r.get(3)?,
        payload: r.get(4)?,
        priority: r.get(5)?,
        run_at: Timestamp(r.get(6)?),
        attempt,
        max_attempts: r.get(8)?,
        timeout: r
            .get::<_, Option<i64>>(9)?
            .map(|ms| Duration::from_millis(ms.max(0) as u64)),
        unique_key: None,
        trace_id: r.get(10)?,
        created_at: Timestamp(r.get(11)?),
        state: JobState::Running,
        last_error: None,
        result: None,
        lease_until: None,
        finished_at: None,
        member: member(r, 12)?,
    };
    Ok(Delivery {
        lease: Lease {
            id,
            token: seq,
            attempt,
        },
        job,
    })
}

/// Reads a row selected with [`JOB_COLUMNS`]; returns its seq too.
pub(crate) fn job_from_row(r: &Row<'_>) -> rusqlite::Result<(u64, Job)> {
    let seq: i64 = r.get(0)?;
    let id: [u8; 16] = r.get(1)?;
    let state_code: i64 = r.get(13)?;
    let state = JobState::from_code(state_code).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            13,
            rusqlite::types::Type::Integer,
            format!("unknown state code {state_code}").into(),
        )
    })?;
    let job = Job {
        id: JobId::from_bytes(id),
        kind: r.get(2)?,
        queue: r.get(3)?,
        payload: r.get(4)?,
        priority: r.get(5)?,
        run_at: Timestamp(r.get(6)?),
        attempt: r.get(7)?,
        max_attempts: r.get(8)?,
        timeout: r
            .get::<_, Option<i64>>(9)?
            .map(|ms| Duration::from_millis(ms.max(0) as u64)),
        unique_key: r.get(10)?,
        trace_id: r.get(11)?,
        created_at: Timestamp(r.get(12)?),
        state,
        lease_until: r.get::<_, Option<i64>>(14)?.map(Timestamp),
        last_error: r.get(15)?,
        result: r.get(16)?,
        finished_at: r.get::<_, Option<i64>>(17)?.map(Timestamp),
        member: member(r, 18)?,
    };
    Ok((seq as u64, job))
}

/// A job's workflow membership, stored as `"<workflow>/<index>"`.
fn member(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<Member>> {
    r.get::<_, Option<String>>(i)?
        .map(|s| {
            s.parse::<Member>().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            })
        })
        .transpose()
}
