//! [`Inspect`] for the embedded broker: looking jobs up, searching, counting, and the
//! operator's actions (retry, cancel, delete, purge) that go through the writer.

use async_trait::async_trait;
use rusqlite::OptionalExtension;
use weir_core::{
    BrokerError, Inspect, Job, JobId, JobPage, JobState, ListFilter, QueueCounts, Timestamp,
    WorkerStatus,
};

use crate::codes::state;
use crate::commands::Cmd;
use crate::rows::{job_from_row, JOB_COLUMNS};
use crate::{search, SqliteBroker};

#[async_trait]
impl Inspect for SqliteBroker {
    async fn get(&self, id: JobId) -> Result<Option<Job>, BrokerError> {
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
                .query_row([id.as_bytes()], job_from_row)
                .optional()
                .map(|o| o.map(|(_, j)| j))
        })
        .await
    }

    /// Pages through [`search`](Inspect::search) until `limit` jobs matched or the table
    /// ended: each read looks at a bounded window, the whole may look at every row.
    async fn list(&self, filter: ListFilter) -> Result<Vec<Job>, BrokerError> {
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        let mut jobs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .search(
                    ListFilter {
                        limit: limit - jobs.len(),
                        ..filter.clone()
                    },
                    cursor.as_deref(),
                )
                .await?;
            jobs.extend(page.jobs);
            match page.next {
                Some(next) if jobs.len() < limit => cursor = Some(next),
                _ => return Ok(jobs),
            }
        }
    }

    /// Looks at no more than 50,000 rows per call (see `search.rs`); the cursor is a row
    /// number.
    async fn search(
        &self,
        filter: ListFilter,
        cursor: Option<&str>,
    ) -> Result<JobPage, BrokerError> {
        let cursor = cursor.map(str::to_owned);
        self.read(move |c| search::search(c, &filter, cursor.as_deref()))
            .await?
    }

    async fn delete(&self, id: JobId) -> Result<Job, BrokerError> {
        self.call(|r| Cmd::Delete(id, r)).await
    }

    /// Finished jobs from the counts the file keeps by trigger (a few rows, whatever their
    /// number); unfinished ones counted through their index (as many as are open).
    async fn counts(&self) -> Result<Vec<QueueCounts>, BrokerError> {
        let now = self.shared.opts.clock.now();
        self.read(move |c| {
            let mut st = c.prepare_cached(concat!(
                "SELECT queue, state, n, NULL, done FROM finished_counts WHERE n > 0 OR done > 0
                 UNION ALL
                 SELECT queue, state, COUNT(*),
                        MIN(CASE WHEN state != ",
                state!(running),
                " AND run_at <= ?1 THEN run_at END), 0
                   FROM jobs WHERE state < 3 GROUP BY queue, state
                 ORDER BY queue"
            ))?;
            let mut rows = st.query([now.0])?;
            let mut out: Vec<QueueCounts> = Vec::new();
            while let Some(r) = rows.next()? {
                let queue: String = r.get(0)?;
                let state = JobState::from_code(r.get(1)?).unwrap_or(JobState::Failed);
                let n: i64 = r.get(2)?;
                if out.last().is_none_or(|q| q.queue != queue) {
                    out.push(QueueCounts {
                        queue,
                        ..Default::default()
                    });
                }
                if let Some(q) = out.last_mut() {
                    q.add(state, n as u64);
                    if let Some(due) = r.get::<_, Option<i64>>(3)? {
                        q.waiting_since(Timestamp(due));
                    }
                    q.finished_ever += r.get::<_, i64>(4)?.max(0) as u64;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn retry(&self, id: JobId) -> Result<Job, BrokerError> {
        self.call(|r| Cmd::Retry(id, r)).await
    }

    async fn cancel(&self, id: JobId) -> Result<Job, BrokerError> {
        self.call(|r| Cmd::Cancel(id, r)).await
    }

    async fn workers(&self) -> Result<Vec<WorkerStatus>, BrokerError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT worker, queue, size, busy, last_decision, updated_at FROM workers
                  ORDER BY updated_at DESC",
            )?;
            let rows = st.query_map([], |r| {
                Ok(WorkerStatus {
                    worker: r.get(0)?,
                    queue: r.get(1)?,
                    size: r.get::<_, i64>(2)?.max(0) as u64,
                    busy: r.get::<_, i64>(3)?.max(0) as u64,
                    last_decision: r.get(4)?,
                    updated_at: weir_core::Timestamp(r.get(5)?),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn purge(&self, state: JobState, queue: Option<&str>) -> Result<u64, BrokerError> {
        self.purge_windowed(state, queue.map(str::to_owned), None)
            .await
    }

    async fn purge_finished_before(
        &self,
        state: JobState,
        before: Timestamp,
    ) -> Result<u64, BrokerError> {
        self.purge_windowed(state, None, Some(before)).await
    }
}
