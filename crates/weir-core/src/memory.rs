//! An in-process broker: nothing survives the process. For tests, examples and embedding weir
//! where durability is not wanted. It follows exactly the semantics of the durable brokers and
//! passes the same conformance suite.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::WorkerStatus;

use crate::{
    check_new_jobs, transition, Broker, BrokerError, Capabilities, Capability, Clock, Delivery,
    Enqueued, Event, FetchRequest, Inspect, Job, JobId, JobLimits, JobPage, JobState, Lease,
    ListFilter, NewJob, QueueCounts, ReadyIndex, SettleOutcome, Settlement, SystemClock, Timestamp,
};

#[derive(Default)]
struct Inner {
    next_token: u64,
    jobs: HashMap<u64, Job>,
    ids: HashMap<JobId, u64>,
    unique: HashMap<String, u64>,
    running: HashMap<u64, ()>,
    index: ReadyIndex,
    workers: HashMap<(String, String), WorkerStatus>,
    /// Jobs ever finished, by queue (`QueueCounts::finished_ever`).
    finished_ever: HashMap<String, u64>,
}

impl Inner {
    fn apply(&mut self, token: u64, event: Event, now: Timestamp) -> Result<&mut Job, BrokerError> {
        let job = self
            .jobs
            .get_mut(&token)
            .ok_or_else(|| BrokerError::Other(format!("token {token} vanished")))?;
        let to = transition(job.state, event).map_err(|e| BrokerError::WrongState {
            id: job.id,
            state: job.state,
            what: e.to_string(),
        })?;
        job.state = to;
        if to != JobState::Running {
            job.lease_until = None;
            self.running.remove(&token);
        }
        if to.is_finished() {
            job.finished_at = Some(now);
            *self.finished_ever.entry(job.queue.clone()).or_default() += 1;
            if let Some(k) = &job.unique_key {
                if self.unique.get(k) == Some(&token) {
                    self.unique.remove(k);
                }
            }
        }
        if matches!(to, JobState::Pending | JobState::Retryable) {
            self.index
                .insert(&job.queue, job.priority, job.run_at, token, now);
        }
        Ok(job)
    }

    /// Expired leases run again, or fail if they have used all their attempts.
    fn reap(&mut self, now: Timestamp) {
        let expired: Vec<u64> = self
            .running
            .keys()
            .copied()
            .filter(|t| {
                self.jobs
                    .get(t)
                    .and_then(|j| j.lease_until)
                    .is_some_and(|u| u < now)
            })
            .collect();
        for token in expired {
            let Some(job) = self.jobs.get(&token) else {
                continue;
            };
            // A workflow member runs once more, past its attempts, for the worker to fail it
            // through the workflow's advance (see `SqliteBroker`'s reaper).
            let spent = job.attempt >= job.max_attempts;
            let exhausted = spent && job.member.is_none();
            let msg = format!("lease expired during attempt {} (worker lost)", job.attempt);
            let event = if exhausted {
                Event::Fail
            } else {
                Event::Expire
            };
            crate::telemetry::leases_reclaimed(&job.queue, 1);
            if exhausted {
                crate::telemetry::dead_lettered(&job.queue, 1);
            }
            if let Ok(job) = self.apply(token, event, now) {
                job.last_error = Some(if spent {
                    format!("{msg}; attempts exhausted ({})", job.max_attempts)
                } else {
                    msg
                });
                if !exhausted {
                    job.run_at = now;
                }
            }
        }
    }

    fn lookup(&self, id: JobId) -> Result<u64, BrokerError> {
        self.ids.get(&id).copied().ok_or(BrokerError::NotFound(id))
    }
}

/// A broker in memory. Cloning shares the same store.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
    clock: Arc<dyn Clock>,
    limits: JobLimits,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// An empty broker on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty broker reading time from `clock` (for tests with a [`crate::ManualClock`]).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryBroker {
            inner: Arc::new(Mutex::new(Inner::default())),
            notify: Arc::new(Notify::new()),
            clock,
            limits: JobLimits::default(),
        }
    }

    /// Sets the limits on new jobs. By default, [`JobLimits::default`].
    pub fn with_limits(mut self, limits: JobLimits) -> Self {
        self.limits = limits;
        self
    }

    fn take(&self, req: &FetchRequest) -> Vec<Delivery> {
        let mut g = self.inner.lock();
        // Read under the lock, so no enqueue stamped later than `now` is already indexed.
        let now = self.clock.now();
        g.reap(now);
        let mut out = Vec::new();
        while out.len() < req.max {
            let tokens = g.index.take(&req.queues, req.max - out.len(), now);
            if tokens.is_empty() {
                break;
            }
            for token in tokens {
                let Some(job) = g.jobs.get(&token) else {
                    continue;
                };
                // The index holds hints: confirm the job is still runnable now.
                if !matches!(job.state, JobState::Pending | JobState::Retryable) {
                    continue;
                }
                if job.run_at > now {
                    // Not due by this clock (it stepped back): keep it, as a delayed entry.
                    let (queue, priority, run_at) = (job.queue.clone(), job.priority, job.run_at);
                    g.index.insert(&queue, priority, run_at, token, now);
                    continue;
                }
                let Ok(job) = g.apply(token, Event::Lease, now) else {
                    continue;
                };
                job.attempt += 1;
                job.lease_until = Some(now.plus(req.lease));
                let delivery = Delivery {
                    lease: Lease {
                        id: job.id,
                        token,
                        attempt: job.attempt,
                    },
                    job: job.clone(),
                };
                g.running.insert(token, ());
                out.push(delivery);
            }
        }
        out
    }
}

/// What the memory broker declares: everything but queue depths (it has [`Inspect`], which
/// says more).
const CAPABILITIES: Capabilities = Capabilities::NONE
    .with(Capability::Inspect)
    .with(Capability::CancelQueued)
    .with(Capability::UniqueKeys)
    .with(Capability::Priorities)
    .with(Capability::StoredResults)
    .with(Capability::Backlog)
    .with(Capability::WorkerReports)
    .with(Capability::RetentionByAge);

#[async_trait]
impl Broker for MemoryBroker {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn job_limits(&self) -> JobLimits {
        self.limits
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, BrokerError> {
        check_new_jobs(&jobs, CAPABILITIES, &self.limits)?;
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let mut out = Vec::with_capacity(jobs.len());
        for new in jobs {
            if let Some(key) = &new.unique_key {
                if let Some(t) = g.unique.get(key) {
                    out.push(Enqueued {
                        id: g.jobs[t].id,
                        duplicate: true,
                    });
                    continue;
                }
            }
            if g.ids.contains_key(&new.id) {
                return Err(BrokerError::Invalid(format!(
                    "job id {} already exists",
                    new.id
                )));
            }
            g.next_token += 1;
            let token = g.next_token;
            let job = new.into_job(now);
            g.index
                .insert(&job.queue, job.priority, job.run_at, token, now);
            if let Some(k) = &job.unique_key {
                g.unique.insert(k.clone(), token);
            }
            g.ids.insert(job.id, token);
            out.push(Enqueued {
                id: job.id,
                duplicate: false,
            });
            g.jobs.insert(token, job);
        }
        drop(g);
        self.notify.notify_waiters();
        Ok(out)
    }

    async fn fetch(&self, req: FetchRequest) -> Result<Vec<Delivery>, BrokerError> {
        let deadline = tokio::time::Instant::now() + req.wait;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.take(&req);
            if !got.is_empty() || req.max == 0 {
                return Ok(got);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(got);
            }
            // Wake for new jobs, or to look again for delayed ones and expired leases.
            let poll = deadline.min(now + Duration::from_millis(50));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(poll) => {}
            }
        }
    }

    async fn settle(
        &self,
        settlements: Vec<(Lease, Settlement)>,
    ) -> Result<Vec<SettleOutcome>, BrokerError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let mut out = Vec::with_capacity(settlements.len());
        let mut woke = false;
        for (lease, s) in settlements {
            let held = g.jobs.get(&lease.token).is_some_and(|j| {
                j.id == lease.id && j.state == JobState::Running && j.attempt == lease.attempt
            });
            if !held {
                out.push(SettleOutcome::Stale);
                continue;
            }
            let event = match &s {
                Settlement::Succeeded { .. } => Event::Succeed,
                Settlement::Retry { .. } => Event::Retry,
                Settlement::Failed { .. } => Event::Fail,
                Settlement::Release | Settlement::Defer { .. } => Event::Release,
                Settlement::Cancel { .. } => Event::Cancel,
            };
            if let Settlement::Retry { run_at, .. } = &s {
                // Set before the transition re-indexes the job.
                if let Some(j) = g.jobs.get_mut(&lease.token) {
                    j.run_at = *run_at;
                }
            }
            if let Settlement::Release | Settlement::Defer { .. } = &s {
                let run_at = match &s {
                    Settlement::Defer { run_at } => *run_at,
                    _ => now,
                };
                if let Some(j) = g.jobs.get_mut(&lease.token) {
                    j.attempt = j.attempt.saturating_sub(1);
                    j.run_at = run_at;
                }
            }
            let job = g.apply(lease.token, event, now)?;
            match s {
                Settlement::Succeeded { result } => job.result = result,
                Settlement::Retry { error, .. }
                | Settlement::Failed { error }
                | Settlement::Cancel { reason: error } => job.last_error = Some(error),
                Settlement::Release | Settlement::Defer { .. } => woke = true,
            }
            woke |= event == Event::Retry;
            out.push(SettleOutcome::Applied);
        }
        drop(g);
        if woke {
            self.notify.notify_waiters();
        }
        Ok(out)
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        Ok(leases
            .iter()
            .map(|l| match g.jobs.get_mut(&l.token) {
                Some(j)
                    if j.id == l.id && j.state == JobState::Running && j.attempt == l.attempt =>
                {
                    j.lease_until = Some(now.plus(extend));
                    true
                }
                _ => false,
            })
            .collect())
    }

    async fn report(&self, status: WorkerStatus) -> Result<(), BrokerError> {
        let key = (status.worker.clone(), status.queue.clone());
        self.inner.lock().workers.insert(key, status);
        Ok(())
    }

    async fn retire(&self, worker: &str) -> Result<(), BrokerError> {
        self.inner.lock().workers.retain(|(w, _), _| w != worker);
        Ok(())
    }

    async fn backlog(&self, queues: &[String]) -> Result<Vec<u64>, BrokerError> {
        let mut g = self.inner.lock();
        let now = self.clock.now();
        g.index.promote(now);
        Ok(queues.iter().map(|q| g.index.ready_len(q) as u64).collect())
    }

    fn inspect(&self) -> Option<&dyn Inspect> {
        Some(self)
    }
}

#[async_trait]
impl Inspect for MemoryBroker {
    async fn get(&self, id: JobId) -> Result<Option<Job>, BrokerError> {
        let g = self.inner.lock();
        Ok(g.ids.get(&id).map(|t| g.jobs[t].clone()))
    }

    async fn list(&self, filter: ListFilter) -> Result<Vec<Job>, BrokerError> {
        Ok(self.search(filter, None).await?.jobs)
    }

    /// Cursor: the token (enqueue order) of the last job of the previous page.
    async fn search(
        &self,
        filter: ListFilter,
        cursor: Option<&str>,
    ) -> Result<JobPage, BrokerError> {
        let below = match cursor {
            None => u64::MAX,
            Some(c) => c.parse::<u64>().map_err(|_| {
                BrokerError::Invalid(format!("`{c}` is not a cursor of this broker"))
            })?,
        };
        let g = self.inner.lock();
        let mut jobs: Vec<(u64, &Job)> = g
            .jobs
            .iter()
            .filter(|(t, j)| **t < below && filter.matches(j))
            .map(|(t, j)| (*t, j))
            .collect();
        jobs.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        let more = jobs.len() > limit;
        jobs.truncate(limit);
        Ok(JobPage {
            next: more
                .then(|| jobs.last().map(|(t, _)| t.to_string()))
                .flatten(),
            jobs: jobs.into_iter().map(|(_, j)| j.clone()).collect(),
        })
    }

    async fn delete(&self, id: JobId) -> Result<Job, BrokerError> {
        let mut g = self.inner.lock();
        let token = *g.ids.get(&id).ok_or(BrokerError::NotFound(id))?;
        let state = g.jobs[&token].state;
        if !state.is_finished() {
            return Err(BrokerError::WrongState {
                id,
                state,
                what: "delete (cancel it first)".into(),
            });
        }
        g.ids.remove(&id);
        g.jobs.remove(&token).ok_or(BrokerError::NotFound(id))
    }

    async fn counts(&self) -> Result<Vec<QueueCounts>, BrokerError> {
        let now = self.clock.now();
        let g = self.inner.lock();
        let mut by: std::collections::BTreeMap<&str, QueueCounts> = Default::default();
        for j in g.jobs.values() {
            let q = by.entry(&j.queue).or_insert_with(|| QueueCounts {
                queue: j.queue.clone(),
                ..Default::default()
            });
            q.add(j.state, 1);
            if matches!(j.state, JobState::Pending | JobState::Retryable) && j.run_at <= now {
                q.waiting_since(j.run_at);
            }
        }
        for (queue, n) in &g.finished_ever {
            by.entry(queue)
                .or_insert_with(|| QueueCounts {
                    queue: queue.clone(),
                    ..Default::default()
                })
                .finished_ever = *n;
        }
        Ok(by.into_values().collect())
    }

    async fn retry(&self, id: JobId) -> Result<Job, BrokerError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let token = g.lookup(id)?;
        if let Some(key) = g.jobs[&token].unique_key.clone() {
            if let Some(other) = g.unique.get(&key) {
                return Err(BrokerError::Invalid(format!(
                    "unique key `{key}` is held by unfinished job {}",
                    g.jobs[other].id
                )));
            }
            if g.jobs[&token].state == JobState::Failed {
                g.unique.insert(key, token);
            }
        }
        if let Some(j) = g.jobs.get_mut(&token) {
            if j.state == JobState::Failed {
                // A fresh set of attempts on top of those spent: `attempt` never goes back,
                // so a lease of an earlier attempt stays fenced off.
                j.run_at = now;
                j.max_attempts = j.attempt.saturating_add(j.max_attempts);
                j.finished_at = None;
            }
        }
        let job = g.apply(token, Event::ManualRetry, now)?.clone();
        drop(g);
        self.notify.notify_waiters();
        Ok(job)
    }

    async fn cancel(&self, id: JobId) -> Result<Job, BrokerError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let token = g.lookup(id)?;
        Ok(g.apply(token, Event::Cancel, now)?.clone())
    }

    async fn workers(&self) -> Result<Vec<WorkerStatus>, BrokerError> {
        let mut v: Vec<WorkerStatus> = self.inner.lock().workers.values().cloned().collect();
        v.sort_by_key(|w| std::cmp::Reverse(w.updated_at));
        Ok(v)
    }

    async fn purge(&self, state: JobState, queue: Option<&str>) -> Result<u64, BrokerError> {
        self.purge_where(state, |j| queue.is_none_or(|q| q == j.queue))
    }

    async fn purge_finished_before(
        &self,
        state: JobState,
        before: Timestamp,
    ) -> Result<u64, BrokerError> {
        self.purge_where(state, |j| j.finished_at.is_some_and(|t| t < before))
    }
}

impl MemoryBroker {
    fn purge_where(
        &self,
        state: JobState,
        keep_out: impl Fn(&Job) -> bool,
    ) -> Result<u64, BrokerError> {
        if !state.is_finished() {
            return Err(BrokerError::Invalid(format!(
                "purge takes a finished state (succeeded, failed, cancelled), not {state}"
            )));
        }
        let mut g = self.inner.lock();
        let doomed: Vec<u64> = g
            .jobs
            .iter()
            .filter(|(_, j)| j.state == state && keep_out(j))
            .map(|(t, _)| *t)
            .collect();
        for t in &doomed {
            if let Some(j) = g.jobs.remove(t) {
                g.ids.remove(&j.id);
            }
        }
        Ok(doomed.len() as u64)
    }
}
