//! Which jobs a search asks for ([`ListFilter`]) and one page of the answer ([`JobPage`]):
//! what [`Inspect::list`](crate::Inspect::list) and [`Inspect::search`](crate::Inspect::search)
//! take and give, and the one place a job is matched against a filter in memory.

use serde::Serialize;

use crate::{Job, JobState, Timestamp};

/// Which jobs [`Inspect::list`](crate::Inspect::list) and
/// [`Inspect::search`](crate::Inspect::search) return. Every condition given must
/// hold; build it with `..Default::default()` (fields may be added).
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this queue. By default, all.
    pub queue: Option<String>,
    /// Only this state. By default, all.
    pub state: Option<JobState>,
    /// Only this kind. By default, all.
    pub kind: Option<String>,
    /// Only jobs created at or after this time. By default, any.
    pub since: Option<Timestamp>,
    /// Only jobs created before this time. By default, any.
    pub until: Option<Timestamp>,
    /// Only jobs whose payload or last error contains this text (case-sensitive). By
    /// default, any.
    pub text: Option<String>,
    /// At most this many, newest first. By default (0), 100.
    pub limit: usize,
}

impl ListFilter {
    /// True if `job` meets every condition (not the limit).
    pub fn matches(&self, job: &Job) -> bool {
        self.queue.as_ref().is_none_or(|q| *q == job.queue)
            && self.state.is_none_or(|s| s == job.state)
            && self.kind.as_ref().is_none_or(|k| *k == job.kind)
            && self.since.is_none_or(|t| job.created_at >= t)
            && self.until.is_none_or(|t| job.created_at < t)
            && self.text.as_ref().is_none_or(|t| {
                let t = t.as_bytes();
                contains(&job.payload, t)
                    || job
                        .last_error
                        .as_ref()
                        .is_some_and(|e| contains(e.as_bytes(), t))
            })
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// One page of [`Inspect::search`](crate::Inspect::search).
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobPage {
    /// The jobs found, newest first; fewer than asked for does not mean the end (see `next`).
    pub jobs: Vec<Job>,
    /// Where the next page starts (pass it back as the cursor), or `None` at the end. Opaque:
    /// each broker has its own.
    pub next: Option<String>,
}
