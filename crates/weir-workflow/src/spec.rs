//! What a workflow is: its [`Shape`], its steps ([`StepSpec`]), the [`WorkflowSpec`] a user
//! submits, its validation, and the plan that turns it into the rows a store keeps and the
//! jobs that run first.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::{JobId, JobLimits, Member, NewJob, Timestamp, WorkflowId};

/// The most members one workflow may have.
pub const MAX_MEMBERS: usize = 100_000;

/// A workflow spec breaks a rule; the message names the step.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidWorkflow {
    step: Option<usize>,
    message: String,
}

impl InvalidWorkflow {
    fn new(step: Option<usize>, message: impl Into<String>) -> Self {
        InvalidWorkflow {
            step,
            message: message.into(),
        }
    }

    /// The index of the step at fault (the callback comes after the steps), if one is.
    pub fn step(&self) -> Option<usize> {
        self.step
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
    /// Attempts before the job fails for good (default: [`weir_core::DEFAULT_MAX_ATTEMPTS`]).
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

    /// Checks the shape's rules, and that every step's job is one every broker accepts
    /// ([`NewJob::validate`] under the default [`JobLimits`]); the error names the step that
    /// breaks one. [`crate::Workflows::submit`] checks against its broker's own limits.
    pub fn validate(&self) -> Result<(), InvalidWorkflow> {
        self.validate_with(&JobLimits::default())
    }

    /// As [`validate`](Self::validate), with payloads limited by `limits`.
    pub fn validate_with(&self, limits: &JobLimits) -> Result<(), InvalidWorkflow> {
        let what = self.shape.as_str();
        let bad = |step, m: String| Err(InvalidWorkflow::new(step, m));
        if self.steps.is_empty() {
            return bad(None, format!("a {what} needs at least one step"));
        }
        if self.steps.len() + 1 > MAX_MEMBERS {
            return bad(
                None,
                format!(
                    "a {what} of {} steps is more than the {MAX_MEMBERS} a workflow may have",
                    self.steps.len()
                ),
            );
        }
        match (self.shape, &self.callback) {
            (Shape::Chord, None) => return bad(None, "a chord needs a `callback`".into()),
            (Shape::Chain | Shape::Group, Some(_)) => {
                return bad(
                    None,
                    format!("a {what} has no `callback` (use shape `chord` for a group with one)"),
                )
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
                return bad(Some(i), format!("{label} has an empty `kind`"));
            }
            let supplied = match self.shape {
                Shape::Chain => i > 0,
                Shape::Group => false,
                Shape::Chord => i == self.steps.len(),
            };
            if supplied && s.payload.is_some() {
                return bad(
                    Some(i),
                    format!(
                        "{label} (`{}`) has a `payload`, but its payload is {}",
                        s.kind,
                        if self.shape == Shape::Chain {
                            "the previous step's result"
                        } else {
                            "the children's results"
                        }
                    ),
                );
            }
            if s.max_attempts == Some(0) {
                return bad(
                    Some(i),
                    format!("{label}: `max_attempts` must be at least 1"),
                );
            }
            if s.timeout_ms == Some(0) {
                return bad(Some(i), format!("{label}: `timeout_ms` must be at least 1"));
            }
            // The job this step becomes, as every broker will check it (a supplied payload
            // is not known yet: its size is checked when it is enqueued).
            let member = Member {
                workflow: JobId::new(),
                index: i as u32,
            };
            let mut job = s.to_start_job(JobId::new(), member, "0");
            if s.queue.is_none() {
                if let Some(q) = &self.queue {
                    job = job.queue(q.clone());
                }
            }
            if let Err(e) = job.validate(limits) {
                return bad(Some(i), format!("{label} (`{}`): {e}", s.kind));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_what_is_wrong() {
        let err = |s: WorkflowSpec| s.validate().unwrap_err().to_string();
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
        // The jobs the steps become are checked as every broker checks them.
        let q = WorkflowSpec::chain(vec![
            StepSpec::new("echo", 1.into()),
            StepSpec::kind("echo").queue(""),
        ]);
        let e = q.validate().unwrap_err();
        assert_eq!(e.step(), Some(1));
        assert!(
            e.to_string()
                .contains("step 1 (`echo`): queue name must not be empty"),
            "{e}"
        );
        let big = WorkflowSpec::group(vec![StepSpec::new("a", "x".repeat(100).into())]);
        let e = big
            .validate_with(&JobLimits { max_payload: 50 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("102 bytes, more than the limit of 50"), "{e}");
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
}
