//! The pure decision: given a workflow's counters after a member's outcome was recorded,
//! what happens next. No I/O and no clock, so every case is a unit test.

use crate::spec::{FailureMode, Shape};
use serde::{Deserialize, Serialize};
use weir_core::Timestamp;

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
}
