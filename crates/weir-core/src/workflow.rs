//! Durable workflows: `chain`, `group` and `chord`, their specification, and the pure logic
//! that advances them. Stores (see [`StateStore`]) keep the state; the runtime's engine calls
//! [`complete`] inside a store transaction when a member job finishes, then carries out the
//! returned [`Advance`] (enqueue the next job, cancel siblings).
//!
//! Advancing is *level-triggered*: the decision is made from the state after the member's
//! outcome is recorded, not from the event alone, so a member that runs twice (at-least-once
//! delivery) replays its decision instead of losing or repeating it. A job enqueued by an
//! advance is marked with [`StateStore::mark_enqueued`] only after the broker confirmed it; a
//! crash in between replays the enqueue when the member runs again, so the next step can be
//! enqueued twice in that case, never lost.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::batch::{BatchConn, Batcher};
use crate::{BrokerError, JobId, JobState, NewJob, Timestamp};

/// A workflow's id: a UUIDv7 like a job's.
pub type WorkflowId = JobId;

/// The most members one workflow may have.
pub const MAX_MEMBERS: usize = 100_000;

/// A job's place in a workflow: the workflow and the member's index (a chain's step, a group's
/// child; a chord's callback comes after its children). Written `"<workflow>/<index>"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// The workflow.
    pub workflow: WorkflowId,
    /// The member's index.
    pub index: u32,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.workflow, self.index)
    }
}

impl FromStr for Member {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (w, i) = s
            .split_once('/')
            .ok_or_else(|| format!("workflow member `{s}` is not `<workflow id>/<index>`"))?;
        Ok(Member {
            workflow: w
                .parse()
                .map_err(|e| format!("workflow member `{s}`: {e}"))?,
            index: i
                .parse()
                .map_err(|e| format!("workflow member `{s}`: index: {e}"))?,
        })
    }
}

impl Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The shape of a workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// A → B → C: each step's result is the next step's payload.
    Chain,
    /// N jobs in parallel. The workflow's result is the array of their results, in order.
    Group,
    /// A group, then a callback whose payload is the array of the children's results, in the
    /// group's order (`null` for a child that returned none).
    Chord,
}

impl Shape {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Chain => "chain",
            Shape::Group => "group",
            Shape::Chord => "chord",
        }
    }

    /// The storage code, stable across versions.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// How many members a submission of this shape with `children` steps or children
    /// enqueues: a chain's first step, every child of a group or chord. They are members
    /// `0..starts`.
    pub fn starts(self, children: u32) -> u32 {
        match self {
            Shape::Chain => children.min(1),
            Shape::Group | Shape::Chord => children,
        }
    }

    /// The shape for a storage code.
    pub fn from_code(c: i64) -> Option<Shape> {
        [Shape::Chain, Shape::Group, Shape::Chord]
            .get(usize::try_from(c).ok()?)
            .copied()
    }
}

/// What a permanent failure of a member does to its siblings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// The default, as in an error group: the first permanent failure fails the workflow,
    /// cancels the pending siblings and fires the cancellation token of running ones.
    #[default]
    FailFast,
    /// Every member runs; once all have finished, the workflow fails with every error. (A
    /// chain cannot go on past a failed step, so a chain always stops at its first failure.)
    CollectAll,
}

impl FailureMode {
    /// The storage code, stable across versions.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The mode for a storage code.
    pub fn from_code(c: i64) -> Option<FailureMode> {
        [FailureMode::FailFast, FailureMode::CollectAll]
            .get(usize::try_from(c).ok()?)
            .copied()
    }
}

/// Where a workflow is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowState {
    /// Members are still to run.
    Running = 0,
    /// Every member succeeded.
    Succeeded = 1,
    /// A member failed for good (fail-fast), or every member finished and some failed
    /// (collect-all).
    Failed = 2,
}

impl WorkflowState {
    /// The storage code, stable across versions.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The state for a storage code.
    pub fn from_code(c: i64) -> Option<WorkflowState> {
        [
            WorkflowState::Running,
            WorkflowState::Succeeded,
            WorkflowState::Failed,
        ]
        .get(usize::try_from(c).ok()?)
        .copied()
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Running => "running",
            WorkflowState::Succeeded => "succeeded",
            WorkflowState::Failed => "failed",
        }
    }
}

/// One job of a workflow, as submitted: what [`NewJob`] holds, less the id, trace and (for
/// every chain step after the first, and a chord's callback) the payload, which the workflow
/// supplies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The task kind.
    pub kind: String,
    /// The JSON payload. Only for a chain's first step and a group's or chord's children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The queue (default: the workflow's queue, else `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Higher runs first where the broker supports priorities (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Attempts before the job fails for good (default: [`crate::DEFAULT_MAX_ATTEMPTS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// A per-attempt time limit, in milliseconds (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl StepSpec {
    /// A step of this kind with this payload.
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        StepSpec {
            payload: Some(payload),
            ..StepSpec::kind(kind)
        }
    }

    /// A step of this kind whose payload the workflow supplies (a later chain step, a
    /// callback).
    pub fn kind(kind: impl Into<String>) -> Self {
        StepSpec {
            kind: kind.into(),
            payload: None,
            queue: None,
            priority: None,
            max_attempts: None,
            timeout_ms: None,
        }
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// The job a step that runs at submission becomes, with its own payload (`null` if none).
    pub fn to_start_job(&self, id: JobId, member: Member, trace_id: &str) -> NewJob {
        let payload = self
            .payload
            .as_ref()
            .unwrap_or(&serde_json::Value::Null)
            .to_string();
        self.to_job(id, member, trace_id, payload.into_bytes())
    }

    /// The job this step becomes, with its payload.
    pub fn to_job(&self, id: JobId, member: Member, trace_id: &str, payload: Vec<u8>) -> NewJob {
        let mut job = NewJob::new(self.kind.clone(), payload)
            .id(id)
            .trace_id(trace_id)
            .member(member);
        if let Some(q) = &self.queue {
            job = job.queue(q.clone());
        }
        if let Some(p) = self.priority {
            job = job.priority(p);
        }
        if let Some(n) = self.max_attempts {
            job = job.max_attempts(n);
        }
        if let Some(ms) = self.timeout_ms {
            job = job.timeout(Duration::from_millis(ms));
        }
        job
    }
}

/// A workflow as submitted, in the JSON form `weir workflow submit FILE` reads:
///
/// ```json
/// {"shape": "chord", "mode": "fail_fast",
///  "steps": [{"kind": "fetch", "payload": {"url": "…"}}, {"kind": "fetch", "payload": {"url": "…"}}],
///  "callback": {"kind": "merge"}}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Chain, group or chord.
    pub shape: Shape,
    /// The chain's steps, or the group's or chord's children, in order.
    pub steps: Vec<StepSpec>,
    /// A chord's callback (only for a chord).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<StepSpec>,
    /// Fail-fast (default) or collect-all.
    #[serde(default)]
    pub mode: FailureMode,
    /// The queue of every step that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

impl WorkflowSpec {
    /// A chain: each step's result is the next one's payload.
    pub fn chain(steps: Vec<StepSpec>) -> Self {
        Self::new(Shape::Chain, steps, None)
    }

    /// A group of parallel jobs.
    pub fn group(children: Vec<StepSpec>) -> Self {
        Self::new(Shape::Group, children, None)
    }

    /// A group plus a callback that receives the children's results in order.
    pub fn chord(children: Vec<StepSpec>, callback: StepSpec) -> Self {
        Self::new(Shape::Chord, children, Some(callback))
    }

    fn new(shape: Shape, steps: Vec<StepSpec>, callback: Option<StepSpec>) -> Self {
        WorkflowSpec {
            shape,
            steps,
            callback,
            mode: FailureMode::FailFast,
            queue: None,
        }
    }

    /// Sets the failure mode.
    pub fn mode(mut self, mode: FailureMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the queue of every step that names none.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Checks the shape's rules; the error names the step that breaks one.
    pub fn validate(&self) -> Result<(), String> {
        let what = self.shape.as_str();
        if self.steps.is_empty() {
            return Err(format!("a {what} needs at least one step"));
        }
        if self.steps.len() + 1 > MAX_MEMBERS {
            return Err(format!(
                "a {what} of {} steps is more than the {MAX_MEMBERS} a workflow may have",
                self.steps.len()
            ));
        }
        match (self.shape, &self.callback) {
            (Shape::Chord, None) => return Err("a chord needs a `callback`".into()),
            (Shape::Chain | Shape::Group, Some(_)) => {
                return Err(format!(
                    "a {what} has no `callback` (use shape `chord` for a group with one)"
                ))
            }
            _ => {}
        }
        let named = self.steps.iter().chain(&self.callback);
        for (i, s) in named.enumerate() {
            let label = if i < self.steps.len() {
                format!("step {i}")
            } else {
                "the callback".to_owned()
            };
            if s.kind.trim().is_empty() {
                return Err(format!("{label} has an empty `kind`"));
            }
            let supplied = match self.shape {
                Shape::Chain => i > 0,
                Shape::Group => false,
                Shape::Chord => i == self.steps.len(),
            };
            if supplied && s.payload.is_some() {
                return Err(format!(
                    "{label} (`{}`) has a `payload`, but its payload is {}",
                    s.kind,
                    if self.shape == Shape::Chain {
                        "the previous step's result"
                    } else {
                        "the children's results"
                    }
                ));
            }
            if s.max_attempts == Some(0) {
                return Err(format!("{label}: `max_attempts` must be at least 1"));
            }
        }
        Ok(())
    }

    /// How many members the workflow has (the callback included).
    pub fn len(&self) -> usize {
        self.steps.len() + usize::from(self.callback.is_some())
    }

    /// True if it has no members (never true for a valid spec).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Turns a valid spec into the workflow to store and the jobs to enqueue at once (a
    /// chain's first step, or every child of a group or chord).
    pub fn plan(
        &self,
        id: WorkflowId,
        trace_id: &str,
        now: Timestamp,
    ) -> (NewWorkflow, Vec<NewJob>) {
        let mut members = Vec::with_capacity(self.len());
        let mut jobs = Vec::new();
        for (i, s) in self.steps.iter().chain(&self.callback).enumerate() {
            let mut step = s.clone();
            if step.queue.is_none() {
                step.queue = self.queue.clone();
            }
            let job_id = JobId::new();
            let now_runs = match self.shape {
                Shape::Chain => i == 0,
                Shape::Group => true,
                Shape::Chord => i < self.steps.len(),
            };
            if now_runs {
                // The payload stays in the stored step too, so an interrupted submission can
                // be completed (see `StateStore::unstarted`).
                let member = Member {
                    workflow: id,
                    index: i as u32,
                };
                jobs.push(step.to_start_job(job_id, member, trace_id));
            }
            members.push(NewMember {
                job_id,
                step,
                enqueued: now_runs,
            });
        }
        let wf = NewWorkflow {
            id,
            shape: self.shape,
            mode: self.mode,
            trace_id: trace_id.to_owned(),
            created_at: now,
            children: self.steps.len() as u32,
            members,
        };
        (wf, jobs)
    }
}

/// A workflow to store, from [`WorkflowSpec::plan`].
#[derive(Clone, Debug)]
pub struct NewWorkflow {
    /// Its id.
    pub id: WorkflowId,
    /// Its shape.
    pub shape: Shape,
    /// Its failure mode.
    pub mode: FailureMode,
    /// The trace id every member carries.
    pub trace_id: String,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// Steps or children (the callback not counted).
    pub children: u32,
    /// Every member, in index order.
    pub members: Vec<NewMember>,
}

/// One member to store.
#[derive(Clone, Debug)]
pub struct NewMember {
    /// The id its job has or will have.
    pub job_id: JobId,
    /// What to enqueue when its turn comes (the payload is supplied then).
    pub step: StepSpec,
    /// Enqueued at submission.
    pub enqueued: bool,
}

/// How a member's job finished, as the engine reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberOutcome {
    /// Succeeded, with its JSON result if it returned one.
    Succeeded(Option<Vec<u8>>),
    /// Failed for good (permanent error or attempts exhausted).
    Failed(String),
}

/// A workflow's counters and state: what [`decide`] needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Its shape.
    pub shape: Shape,
    /// Its failure mode.
    pub mode: FailureMode,
    /// Its state.
    pub state: WorkflowState,
    /// Steps or children (a chord's callback not counted).
    pub children: u32,
    /// Children (or steps) that succeeded.
    pub succeeded: u32,
    /// Children that failed.
    pub failed: u32,
    /// Members cancelled by a fail-fast (a chord's callback included).
    pub cancelled: u32,
    /// The trace id.
    pub trace_id: String,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
}

/// What a recorded outcome leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing yet.
    Wait,
    /// Enqueue member `index`, with `input` as its payload.
    Enqueue {
        /// The member to enqueue.
        index: u32,
        /// Where its payload comes from.
        input: Input,
    },
    /// The workflow is done, in this state.
    Finish(WorkflowState),
    /// Fail the workflow and cancel every member not finished.
    FailFast,
}

/// Where an enqueued member's payload comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The result of this member (`null` if it returned none).
    ResultOf(u32),
    /// The children's results as a JSON array, in order.
    AllResults,
}

/// The pure decision: given the progress *after* member `index`'s outcome was recorded, and
/// whether that member succeeded, what happens next. A finished workflow takes no more steps.
pub fn decide(p: &Progress, index: u32, succeeded: bool) -> Next {
    if p.state != WorkflowState::Running {
        return Next::Wait;
    }
    let all_final = p.succeeded + p.failed + p.cancelled >= p.children;
    if !succeeded {
        return match (p.shape, p.mode) {
            (Shape::Chain, _) | (_, FailureMode::FailFast) => Next::FailFast,
            (_, FailureMode::CollectAll) if all_final => Next::Finish(WorkflowState::Failed),
            _ => Next::Wait,
        };
    }
    match p.shape {
        Shape::Chain if index + 1 < p.children => Next::Enqueue {
            index: index + 1,
            input: Input::ResultOf(index),
        },
        Shape::Chain => Next::Finish(WorkflowState::Succeeded),
        Shape::Chord if index == p.children => Next::Finish(WorkflowState::Succeeded),
        Shape::Group | Shape::Chord if p.succeeded == p.children => match p.shape {
            Shape::Chord => Next::Enqueue {
                index: p.children,
                input: Input::AllResults,
            },
            _ => Next::Finish(WorkflowState::Succeeded),
        },
        _ if all_final => Next::Finish(WorkflowState::Failed),
        _ => Next::Wait,
    }
}

/// A stored member, as a transaction reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberRow {
    /// Its job's id.
    pub job_id: JobId,
    /// Pending (not finished), Succeeded, Failed or Cancelled.
    pub state: JobState,
    /// Its job was enqueued.
    pub enqueued: bool,
    /// Its result, once succeeded.
    pub result: Option<Vec<u8>>,
    /// What to enqueue when its turn comes.
    pub step: StepSpec,
}

/// The operations [`complete`] needs, inside one store transaction that the store opens,
/// commits, or rolls back on error. Each store implements it over its own connection; the
/// decision logic stays here, written once.
pub trait WorkflowTx {
    /// The workflow's progress, locked for the rest of the transaction (`FOR UPDATE` on
    /// PostgreSQL); `None` if there is no such workflow.
    fn progress(&mut self, id: WorkflowId) -> Result<Option<Progress>, BrokerError>;
    /// Writes the progress back.
    fn set_progress(&mut self, id: WorkflowId, p: &Progress) -> Result<(), BrokerError>;
    /// One member.
    fn member(&mut self, m: Member) -> Result<Option<MemberRow>, BrokerError>;
    /// Records a member's final state, with its result or error.
    fn finish_member(
        &mut self,
        m: Member,
        state: JobState,
        result: Option<&[u8]>,
        error: Option<&str>,
    ) -> Result<(), BrokerError>;
    /// The results of members `0..children`, in order.
    fn results(
        &mut self,
        id: WorkflowId,
        children: u32,
    ) -> Result<Vec<Option<Vec<u8>>>, BrokerError>;
    /// Marks every unfinished member Cancelled; returns how many, and the job ids of those
    /// that were enqueued (their jobs are to be cancelled at the broker).
    fn cancel_open(&mut self, id: WorkflowId) -> Result<(u32, Vec<JobId>), BrokerError>;

    /// [`progress`](Self::progress) and [`member`](Self::member) together. A store whose
    /// statements cost a round trip each does both in one.
    fn progress_and_member(
        &mut self,
        m: Member,
    ) -> Result<Option<(Progress, Option<MemberRow>)>, BrokerError> {
        let Some(p) = self.progress(m.workflow)? else {
            return Ok(None);
        };
        Ok(Some((p, self.member(m)?)))
    }

    /// [`finish_member`](Self::finish_member) and [`set_progress`](Self::set_progress)
    /// together (the common case: a member finished and nothing else happens yet).
    fn finish_member_and_progress(
        &mut self,
        m: Member,
        state: JobState,
        result: Option<&[u8]>,
        error: Option<&str>,
        p: &Progress,
    ) -> Result<(), BrokerError> {
        self.finish_member(m, state, result, error)?;
        self.set_progress(m.workflow, p)
    }
}

/// What the engine must do after [`complete`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Advance {
    /// A job to enqueue, then to mark with [`StateStore::mark_enqueued`].
    pub enqueue: Option<(Member, NewJob)>,
    /// Jobs to cancel at the broker (fail-fast).
    pub cancel: Vec<JobId>,
    /// The workflow finished with this state.
    pub finished: Option<WorkflowState>,
}

/// Records `outcome` for member `m` and advances its workflow, inside `tx`. Idempotent: an
/// outcome for a member that already has one keeps the first, and replays the decision it led
/// to (an enqueue not yet marked is returned again).
pub fn complete<T: WorkflowTx>(
    tx: &mut T,
    m: Member,
    outcome: &MemberOutcome,
    now: Timestamp,
) -> Result<Advance, BrokerError> {
    let mut out = Advance::default();
    let Some((mut p, Some(row))) = tx.progress_and_member(m)? else {
        return Ok(out);
    };
    // The member's record, written below: with the progress in one go when nothing else
    // happens, before anything else otherwise (a fail-fast must not cancel this member).
    let mut record = None;
    let (succeeded, result) = if row.state.is_finished() {
        match row.state {
            JobState::Succeeded => (true, row.result),
            // A failure was acted on when recorded; a cancelled member is out of the game.
            _ => return Ok(out),
        }
    } else {
        let (state, result, error) = match outcome {
            MemberOutcome::Succeeded(r) => (JobState::Succeeded, r.clone(), None),
            MemberOutcome::Failed(e) => (JobState::Failed, None, Some(e.as_str())),
        };
        let callback = p.shape == Shape::Chord && m.index == p.children;
        if !callback {
            if state == JobState::Succeeded {
                p.succeeded += 1;
            } else {
                p.failed += 1;
            }
        }
        record = Some((state, error));
        (state == JobState::Succeeded, result)
    };
    let next = decide(&p, m.index, succeeded);
    match (next, record) {
        (Next::Wait, None) => return Ok(out), // a replay with nothing to do
        (Next::Wait, Some((state, error))) => {
            tx.finish_member_and_progress(m, state, result.as_deref(), error, &p)?;
            return Ok(out);
        }
        (_, Some((state, error))) => tx.finish_member(m, state, result.as_deref(), error)?,
        (_, None) => {}
    }
    match next {
        Next::Wait => {}
        Next::Enqueue { index, input } => {
            let next = Member {
                workflow: m.workflow,
                index,
            };
            if let Some(n) = tx.member(next)? {
                if !n.enqueued && !n.state.is_finished() {
                    let payload = match input {
                        Input::ResultOf(i) if i == m.index => result.unwrap_or_else(null),
                        Input::ResultOf(i) => tx
                            .member(Member {
                                workflow: m.workflow,
                                index: i,
                            })?
                            .and_then(|r| r.result)
                            .unwrap_or_else(null),
                        Input::AllResults => results_array(tx.results(m.workflow, p.children)?),
                    };
                    let job = n.step.to_job(n.job_id, next, &p.trace_id, payload);
                    out.enqueue = Some((next, job));
                }
            }
        }
        Next::Finish(state) => {
            p.state = state;
            p.finished_at = Some(now);
            out.finished = Some(state);
        }
        Next::FailFast => {
            let (n, cancel) = tx.cancel_open(m.workflow)?;
            p.cancelled += n;
            p.state = WorkflowState::Failed;
            p.finished_at = Some(now);
            out.finished = Some(WorkflowState::Failed);
            out.cancel = cancel;
        }
    }
    tx.set_progress(m.workflow, &p)?;
    Ok(out)
}

fn null() -> Vec<u8> {
    b"null".to_vec()
}

/// The children's results as one JSON array; a result that is not JSON becomes a string.
fn results_array(results: Vec<Option<Vec<u8>>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        results
            .iter()
            .map(|r| r.as_ref().map_or(4, Vec::len) + 1)
            .sum::<usize>()
            + 2,
    );
    out.push(b'[');
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match r {
            None => out.extend_from_slice(b"null"),
            Some(b) if serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok() => {
                out.extend_from_slice(b)
            }
            Some(b) => out.extend_from_slice(
                serde_json::to_string(&String::from_utf8_lossy(b))
                    .unwrap_or_default()
                    .as_bytes(),
            ),
        }
    }
    out.push(b']');
    out
}

/// Fails a running workflow whose submission could not be completed, inside `tx`: every open
/// member is cancelled. Returns the job ids of those that were enqueued. `NotFound` if there
/// is no such workflow.
pub fn abort<T: WorkflowTx>(
    tx: &mut T,
    id: WorkflowId,
    now: Timestamp,
) -> Result<Vec<JobId>, BrokerError> {
    let Some(mut p) = tx.progress(id)? else {
        return Err(BrokerError::NotFound(id));
    };
    let (n, jobs) = tx.cancel_open(id)?;
    p.cancelled += n;
    p.state = WorkflowState::Failed;
    p.finished_at.get_or_insert(now);
    tx.set_progress(id, &p)?;
    Ok(jobs)
}

impl Progress {
    /// The status `weir inspect` shows for the workflow with this progress.
    pub fn into_status(self, id: WorkflowId, created_at: Timestamp) -> WorkflowStatus {
        WorkflowStatus {
            id,
            shape: self.shape,
            mode: self.mode,
            state: self.state,
            children: self.children,
            succeeded: self.succeeded,
            failed: self.failed,
            cancelled: self.cancelled,
            trace_id: self.trace_id,
            created_at,
            finished_at: self.finished_at,
        }
    }
}

/// A workflow as `weir inspect` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkflowStatus {
    /// Its id.
    pub id: WorkflowId,
    /// Its shape.
    pub shape: Shape,
    /// Its failure mode.
    pub mode: FailureMode,
    /// Its state.
    pub state: WorkflowState,
    /// Steps or children (a chord's callback not counted).
    pub children: u32,
    /// Children (or steps) that succeeded.
    pub succeeded: u32,
    /// Children that failed.
    pub failed: u32,
    /// Members cancelled by a fail-fast (a chord's callback included).
    pub cancelled: u32,
    /// The trace id every member carries.
    pub trace_id: String,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
}

/// One member as `weir inspect` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberStatus {
    /// Its index.
    pub index: u32,
    /// Its job's id.
    pub job_id: JobId,
    /// Its kind.
    pub kind: String,
    /// Pending, Succeeded, Failed or Cancelled.
    pub state: JobState,
    /// Its job was enqueued.
    pub enqueued: bool,
    /// Its JSON result, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Its error, once failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where workflow state lives: the embedded SQLite file, memory, or PostgreSQL for many
/// machines. Every store passes the store conformance suite (`weir-testkit`).
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Stores a new workflow and its members. Fails with `Invalid` if the id exists.
    async fn create(&self, wf: NewWorkflow) -> Result<(), BrokerError>;
    /// Records a member's outcome and advances the workflow, atomically (see [`complete`]).
    async fn complete(
        &self,
        member: Member,
        outcome: MemberOutcome,
        now: Timestamp,
    ) -> Result<Advance, BrokerError>;
    /// Records that a member's job was enqueued (after the broker confirmed it).
    async fn mark_enqueued(&self, member: Member) -> Result<(), BrokerError>;
    /// Fails a running workflow whose jobs could not be enqueued at submission; returns the
    /// job ids of its open members.
    async fn abort(&self, id: WorkflowId, now: Timestamp) -> Result<Vec<JobId>, BrokerError>;
    /// A member's state (Pending until it finishes; Cancelled once a fail-fast cancelled it);
    /// `None` if unknown. Workers on brokers that cannot cancel jobs by id ask this before
    /// running a member.
    async fn member_state(&self, member: Member) -> Result<Option<JobState>, BrokerError>;
    /// A workflow's status.
    async fn status(&self, id: WorkflowId) -> Result<Option<WorkflowStatus>, BrokerError>;
    /// Its members, in order.
    async fn members(&self, id: WorkflowId) -> Result<Vec<MemberStatus>, BrokerError>;
    /// Deletes workflows finished before `before`, with their members; returns how many.
    async fn purge(&self, before: Timestamp) -> Result<u64, BrokerError>;
    /// Records that the broker has the jobs of members `0..upto` of those a submission
    /// enqueues (see [`Shape::starts`]): recorded per confirmed batch by a submission to a
    /// broker that cannot look jobs up by id, and as complete by a rescue. Never lowers what
    /// was recorded; an unknown workflow is ignored.
    async fn mark_started(&self, id: WorkflowId, upto: u32) -> Result<(), BrokerError>;
    /// Up to `limit` running workflows created before `before` whose submission was not
    /// recorded as complete ([`mark_started`](Self::mark_started)), each with the jobs it
    /// starts with that were not recorded (ids and payloads as submitted): what a rescue of
    /// an interrupted submission enqueues (see `Workflows::rescue`). Workflows stored by a
    /// weir older than `mark_started` count as complete.
    async fn unstarted(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(WorkflowId, Vec<NewJob>)>, BrokerError>;
}

/// Parses a stored result for display: JSON as is, anything else as a string.
pub fn result_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(shape: Shape, mode: FailureMode, children: u32) -> Progress {
        Progress {
            shape,
            mode,
            state: WorkflowState::Running,
            children,
            succeeded: 0,
            failed: 0,
            cancelled: 0,
            trace_id: "t".into(),
            finished_at: None,
        }
    }

    #[test]
    fn chain_enqueues_the_next_step_then_finishes() {
        let mut p = progress(Shape::Chain, FailureMode::FailFast, 3);
        p.succeeded = 1;
        assert_eq!(
            decide(&p, 0, true),
            Next::Enqueue {
                index: 1,
                input: Input::ResultOf(0)
            }
        );
        p.succeeded = 3;
        assert_eq!(decide(&p, 2, true), Next::Finish(WorkflowState::Succeeded));
    }

    #[test]
    fn a_chain_stops_at_its_first_failure_in_either_mode() {
        for mode in [FailureMode::FailFast, FailureMode::CollectAll] {
            let mut p = progress(Shape::Chain, mode, 3);
            p.failed = 1;
            assert_eq!(decide(&p, 0, false), Next::FailFast);
        }
    }

    #[test]
    fn a_chord_calls_back_once_every_child_succeeded() {
        let mut p = progress(Shape::Chord, FailureMode::FailFast, 3);
        p.succeeded = 2;
        assert_eq!(decide(&p, 1, true), Next::Wait);
        p.succeeded = 3;
        assert_eq!(
            decide(&p, 0, true),
            Next::Enqueue {
                index: 3,
                input: Input::AllResults
            }
        );
        assert_eq!(decide(&p, 3, true), Next::Finish(WorkflowState::Succeeded));
    }

    #[test]
    fn fail_fast_and_collect_all() {
        let mut p = progress(Shape::Group, FailureMode::FailFast, 3);
        p.failed = 1;
        assert_eq!(decide(&p, 1, false), Next::FailFast);
        let mut p = progress(Shape::Chord, FailureMode::CollectAll, 3);
        p.failed = 1;
        assert_eq!(decide(&p, 1, false), Next::Wait, "siblings still run");
        p.succeeded = 1;
        assert_eq!(decide(&p, 0, true), Next::Wait);
        p.failed = 2;
        assert_eq!(
            decide(&p, 2, false),
            Next::Finish(WorkflowState::Failed),
            "all finished, some failed: no callback"
        );
        p.failed = 1;
        p.succeeded = 2;
        assert_eq!(
            decide(&p, 2, true),
            Next::Finish(WorkflowState::Failed),
            "the last child to finish succeeded, but one failed before"
        );
    }

    #[test]
    fn a_finished_workflow_takes_no_more_steps() {
        let mut p = progress(Shape::Group, FailureMode::FailFast, 2);
        p.state = WorkflowState::Failed;
        p.succeeded = 2;
        assert_eq!(decide(&p, 1, true), Next::Wait);
        assert_eq!(decide(&p, 1, false), Next::Wait);
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let err = |s: WorkflowSpec| s.validate().unwrap_err();
        assert!(err(WorkflowSpec::chain(vec![])).contains("at least one step"));
        let mut s = WorkflowSpec::chain(vec![
            StepSpec::new("a", 1.into()),
            StepSpec::new("b", 2.into()),
        ]);
        assert!(err(s.clone()).contains("step 1 (`b`) has a `payload`"));
        s.steps[1].payload = None;
        s.validate().unwrap();
        let mut c = WorkflowSpec::chord(vec![StepSpec::new("a", 1.into())], StepSpec::kind("m"));
        c.validate().unwrap();
        c.callback = None;
        assert!(err(c).contains("needs a `callback`"));
        let g = WorkflowSpec {
            callback: Some(StepSpec::kind("m")),
            ..WorkflowSpec::group(vec![StepSpec::new("a", 1.into())])
        };
        assert!(err(g).contains("has no `callback`"));
        let z = WorkflowSpec::group(vec![StepSpec {
            max_attempts: Some(0),
            ..StepSpec::new("a", 1.into())
        }]);
        assert!(err(z).contains("step 0: `max_attempts`"));
    }

    #[test]
    fn the_json_form_parses_and_rejects_unknown_fields() {
        let s: WorkflowSpec = serde_json::from_str(
            r#"{"shape":"chord","mode":"collect_all","queue":"q",
                "steps":[{"kind":"a","payload":{"n":1}}],"callback":{"kind":"m"}}"#,
        )
        .unwrap();
        assert_eq!(s.mode, FailureMode::CollectAll);
        s.validate().unwrap();
        let e = serde_json::from_str::<WorkflowSpec>(
            r#"{"shape":"group","steps":[{"kind":"a","paylod":1}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `paylod`"), "{e}");
    }

    #[test]
    fn plan_enqueues_what_runs_first() {
        let id = JobId::new();
        let (wf, jobs) = WorkflowSpec::chord(
            vec![StepSpec::new("a", 1.into()), StepSpec::new("a", 2.into())],
            StepSpec::kind("m"),
        )
        .queue("q")
        .plan(id, "trace", Timestamp(5));
        assert_eq!(jobs.len(), 2);
        assert_eq!(wf.members.len(), 3);
        assert!(!wf.members[2].enqueued);
        assert_eq!(
            jobs[1].member,
            Some(Member {
                workflow: id,
                index: 1
            })
        );
        assert_eq!(jobs[1].payload, b"2");
        assert_eq!(jobs[1].queue, "q");
        assert_eq!(jobs[0].trace_id.as_deref(), Some("trace"));
        let (_, jobs) =
            WorkflowSpec::chain(vec![StepSpec::new("a", 1.into()), StepSpec::kind("b")]).plan(
                id,
                "t",
                Timestamp(5),
            );
        assert_eq!(jobs.len(), 1, "a chain starts with its first step");
    }

    #[test]
    fn results_array_keeps_order_and_wraps_non_json() {
        let a = results_array(vec![Some(b"1".to_vec()), None, Some(b"not json".to_vec())]);
        assert_eq!(String::from_utf8(a).unwrap(), r#"[1,null,"not json"]"#);
    }

    #[test]
    fn member_round_trips_as_text() {
        let m = Member {
            workflow: JobId::new(),
            index: 7,
        };
        assert_eq!(m.to_string().parse::<Member>().unwrap(), m);
        assert!("nope"
            .parse::<Member>()
            .unwrap_err()
            .contains("<workflow id>/<index>"));
    }
}
