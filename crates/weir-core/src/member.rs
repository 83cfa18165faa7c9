//! A job's place in a durable workflow. The workflows themselves live in `weir-workflow`; a
//! [`Job`](crate::Job) only carries its [`Member`], and every broker stores it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::JobId;

/// A workflow's id: a UUIDv7 like a job's.
pub type WorkflowId = JobId;

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

/// The text given to [`Member::from_str`] is not `<workflow id>/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workflow member `{input}`: {why}")]
pub struct ParseMemberError {
    input: String,
    why: String,
}

impl FromStr for Member {
    type Err = ParseMemberError;
    fn from_str(s: &str) -> Result<Self, ParseMemberError> {
        let err = |why: String| ParseMemberError {
            input: s.to_owned(),
            why,
        };
        let (w, i) = s
            .split_once('/')
            .ok_or_else(|| err("not `<workflow id>/<index>`".into()))?;
        Ok(Member {
            workflow: w.parse().map_err(|e| err(format!("{e}")))?,
            index: i.parse().map_err(|e| err(format!("index: {e}")))?,
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

#[cfg(test)]
mod tests {
    use super::*;

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
            .to_string()
            .contains("<workflow id>/<index>"));
    }
}
