//! Searching the jobs table a window at a time ([`Inspect::search`](weir_core::Inspect)).
//!
//! Finished jobs have no index (every settle would pay for one, see `writer::PURGE`), so a
//! search with rare matches would scan the whole table. Instead each call scans at most
//! [`WINDOW`] rows, newest first by `seq` (the rowid: no index needed to walk it), and
//! returns what matched with a cursor where it stopped. The work of one call is bounded
//! whatever the size of the file; a caller pages on until `next` is `None`.

use rusqlite::{params, Connection, OptionalExtension};
use weir_core::{BrokerError, JobPage, ListFilter};

use crate::rows::{job_from_row, JOB_COLUMNS};

/// The most rows one search call looks at.
pub(crate) const WINDOW: i64 = 50_000;

/// One page: jobs with `seq < cursor` matching `filter`, newest first, looking at no more
/// than [`WINDOW`] rows. The cursor is a seq as text.
pub(crate) fn search(
    c: &Connection,
    filter: &ListFilter,
    cursor: Option<&str>,
) -> rusqlite::Result<Result<JobPage, BrokerError>> {
    let below = match cursor {
        None => i64::MAX,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Ok(Err(BrokerError::Invalid(format!(
                    "`{s}` is not a cursor of the embedded broker"
                ))))
            }
        },
    };
    // (A page never holds more than the window looks at; this also keeps `limit + 1` small.)
    let limit = if filter.limit == 0 { 100 } else { filter.limit }.min(WINDOW as usize) as i64;
    // The lowest seq this call looks at (exclusive); none: the window reaches the start.
    let floor: Option<i64> = c
        .prepare_cached("SELECT seq FROM jobs WHERE seq < ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2")?
        .query_row(params![below, WINDOW], |r| r.get(0))
        .optional()?;
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs
          WHERE seq < ?1 AND seq > ?2
            AND (?3 IS NULL OR queue = ?3) AND (?4 IS NULL OR state = ?4)
            AND (?5 IS NULL OR kind = ?5)
            AND (?6 IS NULL OR created_at >= ?6) AND (?7 IS NULL OR created_at < ?7)
            AND (?8 IS NULL OR instr(payload, ?8) > 0 OR instr(last_error, ?9) > 0)
          ORDER BY seq DESC LIMIT ?10"
    );
    let text = filter.text.as_deref();
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(
        params![
            below,
            floor.unwrap_or(0),
            filter.queue,
            filter.state.map(|s| s.code()),
            filter.kind,
            filter.since.map(|t| t.0),
            filter.until.map(|t| t.0),
            text.map(str::as_bytes),
            text,
            limit + 1
        ],
        job_from_row,
    )?;
    let mut found = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let next = if found.len() as i64 > limit {
        found.truncate(limit as usize);
        found.last().map(|(seq, _)| seq.to_string())
    } else {
        // The window was cut short of the start: go on below it.
        floor.map(|f| (f + 1).to_string())
    };
    Ok(Ok(JobPage {
        jobs: found.into_iter().map(|(_, j)| j).collect(),
        next,
    }))
}
