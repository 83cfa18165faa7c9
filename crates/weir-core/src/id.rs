use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's identity: a UUIDv7, so ids sort by creation time and index well.
///
/// Displayed and parsed in the usual hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh id (UUIDv7: time-ordered, random in its low bits).
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }

    /// Wraps an existing UUID (for example one read back from storage).
    pub fn from_uuid(uuid: Uuid) -> Self {
        JobId(uuid)
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The 16 bytes of the id, as stored on disk.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Reads an id from its 16 stored bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        JobId(Uuid::from_bytes(bytes))
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0.hyphenated())
    }
}

/// The text given to [`JobId::from_str`] is not a UUID.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid job id `{input}` ({source}); an id looks like 01a233dd-5251-71f5-ac34-225d71b2180a"
)]
pub struct ParseJobIdError {
    input: String,
    source: uuid::Error,
}

impl FromStr for JobId {
    type Err = ParseJobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(JobId)
            .map_err(|source| ParseJobIdError {
                input: s.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_and_time_ordered() {
        let a = JobId::new();
        let b = JobId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
    }

    #[test]
    fn round_trips_through_text_and_bytes() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        assert_eq!(JobId::from_bytes(*id.as_bytes()), id);
        let err = "nope".parse::<JobId>().unwrap_err().to_string();
        assert!(err.contains("invalid job id `nope`"), "{err}");
    }
}
