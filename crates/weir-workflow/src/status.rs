//! What a user sees of a workflow: its state, its status and its members' status.

use serde::Serialize;
use weir_core::{JobId, JobState, Timestamp, WorkflowId};

use crate::decide::{Progress, WorkflowState};
use crate::spec::{FailureMode, Shape};

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

/// A finished workflow's result, built from its members (in index order): a group's is the
/// array of its children's results, a chain's its last step's, a chord's its callback's.
/// `None` unless the workflow succeeded.
pub fn workflow_result(
    status: &WorkflowStatus,
    members: &[MemberStatus],
) -> Option<serde_json::Value> {
    if status.state != crate::WorkflowState::Succeeded {
        return None;
    }
    Some(match status.shape {
        crate::Shape::Group => serde_json::Value::Array(
            members
                .iter()
                .map(|m| m.result.clone().unwrap_or_default())
                .collect(),
        ),
        crate::Shape::Chain | crate::Shape::Chord => members
            .last()
            .and_then(|m| m.result.clone())
            .unwrap_or_default(),
    })
}

/// Parses a stored result for display: JSON as is, anything else as a string.
pub fn result_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}
