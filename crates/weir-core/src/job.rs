use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{JobId, JobState, Member, Task, Timestamp};

/// The queue a job goes to when none is named.
pub const DEFAULT_QUEUE: &str = "default";

/// How many times a job may run when its producer does not say. By default, 25 (as Sidekiq and
/// River), which with the default backoff spreads retries over about a day.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// A job as a broker stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its identity.
    pub id: JobId,
    /// The task kind, which picks the handler.
    pub kind: String,
    /// The queue it waits in.
    pub queue: String,
    /// The serialized payload (JSON), exactly as enqueued.
    #[serde(with = "json_bytes")]
    pub payload: Vec<u8>,
    /// Higher runs first among ready jobs of one queue.
    pub priority: i32,
    /// Not runnable before this time.
    pub run_at: Timestamp,
    /// How many times it has been leased (1 while its first run is going on).
    pub attempt: u32,
    /// The attempt after which a retryable failure becomes Failed.
    pub max_attempts: u32,
    /// The handler's time budget for one attempt, if it has one.
    #[serde(with = "opt_millis")]
    pub timeout: Option<Duration>,
    /// While a job with this key is unfinished, enqueueing the key again returns this job.
    pub unique_key: Option<String>,
    /// Carried to the handler and its logs; children of a workflow share their parent's.
    pub trace_id: String,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// Where it is in its life.
    pub state: JobState,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The handler's result (JSON), once Succeeded, if it returned one.
    #[serde(with = "opt_json_bytes")]
    pub result: Option<Vec<u8>>,
    /// When a Running job's lease runs out.
    pub lease_until: Option<Timestamp>,
    /// When it reached Succeeded, Failed or Cancelled.
    pub finished_at: Option<Timestamp>,
    /// The workflow this job is a member of, if any (see [`Member`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Member>,
}

impl Job {
    /// The payload as text (it is JSON).
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap_or("<not utf-8>")
    }
}

/// What a producer asks a broker to store: a kind, a payload and options.
///
/// ```
/// use std::time::Duration;
/// use weir_core::NewJob;
/// let job = NewJob::new("email", br#"{"to":"a@b.c"}"#.to_vec())
///     .queue("mail")
///     .priority(5)
///     .delay(Duration::from_secs(10))
///     .unique("email:a@b.c");
/// assert_eq!(job.queue, "mail");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct NewJob {
    /// Set by the producer, or fresh by default.
    pub id: JobId,
    /// The task kind.
    pub kind: String,
    /// The queue. By default, [`DEFAULT_QUEUE`].
    pub queue: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
    /// By default, 0. Higher runs first.
    pub priority: i32,
    /// By default, `None`: runnable at once.
    pub run_at: Option<Timestamp>,
    /// Delay from enqueue time; ignored when `run_at` is set. By default, none.
    pub delay: Option<Duration>,
    /// By default, [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// By default, none: the handler's kind decides.
    pub timeout: Option<Duration>,
    /// By default, none.
    pub unique_key: Option<String>,
    /// By default, a fresh trace id.
    pub trace_id: Option<String>,
    /// The workflow this job is a member of (set by the workflow engine).
    pub member: Option<Member>,
}

impl NewJob {
    /// A job of `kind` with a JSON `payload`, other options at their defaults.
    pub fn new(kind: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        NewJob {
            id: JobId::new(),
            kind: kind.into(),
            queue: DEFAULT_QUEUE.to_owned(),
            payload: payload.into(),
            priority: 0,
            run_at: None,
            delay: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: None,
            unique_key: None,
            trace_id: None,
            member: None,
        }
    }

    /// A job for a typed task: its kind and its payload serialized as JSON.
    pub fn for_task<T: Task>(task: &T) -> Result<Self, serde_json::Error> {
        Ok(NewJob::new(T::KIND, serde_json::to_vec(task)?))
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets the priority (higher first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Runs no sooner than `at`.
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Runs no sooner than `delay` after it is enqueued.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Sets how many times it may run; values below 1 count as 1.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the time budget of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Deduplicates: while a job with `key` is unfinished, enqueueing returns that job's id.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Sets the trace id (for example the parent's).
    pub fn trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// Makes the job a member of a workflow (the engine does this; a job enqueued with a
    /// member it does not belong to advances nothing).
    pub fn member(mut self, member: Member) -> Self {
        self.member = Some(member);
        self
    }

    /// Sets the id, for producers that must know it before enqueueing.
    pub fn id(mut self, id: JobId) -> Self {
        self.id = id;
        self
    }

    /// The time it becomes runnable, given the enqueue time `now`.
    pub fn due_at(&self, now: Timestamp) -> Timestamp {
        match (self.run_at, self.delay) {
            (Some(at), _) => at,
            (None, Some(d)) => now.plus(d),
            (None, None) => now,
        }
    }

    /// The stored record this request becomes when enqueued at `now`.
    pub fn into_job(self, now: Timestamp) -> Job {
        let run_at = self.due_at(now);
        Job {
            id: self.id,
            kind: self.kind,
            queue: self.queue,
            payload: self.payload,
            priority: self.priority,
            run_at,
            attempt: 0,
            max_attempts: self.max_attempts.max(1),
            timeout: self.timeout,
            unique_key: self.unique_key,
            trace_id: self.trace_id.unwrap_or_else(new_trace_id),
            created_at: now,
            state: JobState::Pending,
            last_error: None,
            result: None,
            lease_until: None,
            finished_at: None,
            member: self.member,
        }
    }
}

/// A fresh 32-hex-digit trace id.
pub(crate) fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

mod json_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_slice::<serde_json::Value>(v) {
            Ok(json) => json.serialize(s),
            Err(_) => String::from_utf8_lossy(v).serialize(s),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        serde_json::to_vec(&v).map_err(serde::de::Error::custom)
    }
}

mod opt_json_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => super::json_bytes::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let v = Option::<serde_json::Value>::deserialize(d)?;
        v.map(|v| serde_json::to_vec(&v).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|d| d.as_millis() as u64).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_due_time() {
        let j = NewJob::new("noop", b"null".to_vec());
        assert_eq!(j.queue, DEFAULT_QUEUE);
        assert_eq!(j.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(j.due_at(Timestamp(100)), Timestamp(100));
        let d = j.clone().delay(Duration::from_millis(50));
        assert_eq!(d.due_at(Timestamp(100)), Timestamp(150));
        let a = d.run_at(Timestamp(7));
        assert_eq!(a.due_at(Timestamp(100)), Timestamp(7));
        let job = j.max_attempts(0).into_job(Timestamp(5));
        assert_eq!(job.max_attempts, 1);
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(job.trace_id.len(), 32);
    }

    #[test]
    fn job_serializes_payload_as_json() {
        let job = NewJob::new("k", br#"{"a":1}"#.to_vec()).into_job(Timestamp(0));
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["payload"]["a"], 1);
        let back: Job = serde_json::from_value(v).unwrap();
        assert_eq!(back.payload, br#"{"a":1}"#);
    }
}
