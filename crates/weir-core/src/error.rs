use std::fmt;
use std::time::Duration;

/// Whether a failure is worth another try.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Transient: timeouts, refused connections, HTTP 429/5xx, "try later". The job is retried
    /// with backoff while attempts remain.
    Retryable,
    /// Permanent: bad input, HTTP 4xx, a payload that does not decode. The job fails at once.
    Permanent,
}

/// How a task handler says it failed. Classified by the handler, never guessed by weir.
///
/// ```
/// use std::time::Duration;
/// use weir_core::TaskError;
/// let e = TaskError::retryable("upstream busy").with_retry_after(Duration::from_secs(5));
/// assert!(e.is_retryable());
/// assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TaskError {
    kind: ErrorKind,
    message: String,
    retry_after: Option<Duration>,
}

impl TaskError {
    /// A transient failure: retried with backoff while attempts remain.
    pub fn retryable(message: impl fmt::Display) -> Self {
        TaskError {
            kind: ErrorKind::Retryable,
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// A permanent failure: the job goes straight to Failed.
    pub fn permanent(message: impl fmt::Display) -> Self {
        TaskError {
            kind: ErrorKind::Permanent,
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// Asks for the next attempt no sooner than `after` (overrides the backoff for this retry).
    /// Has no effect on a permanent error.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Retryable or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True if the job may run again.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }

    /// The message, as stored in the job's `last_error`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The delay the handler asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after.filter(|_| self.is_retryable())
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_ignores_retry_after() {
        let e = TaskError::permanent("bad").with_retry_after(Duration::from_secs(1));
        assert!(!e.is_retryable());
        assert_eq!(e.retry_after(), None);
        assert_eq!(e.to_string(), "bad");
    }
}
