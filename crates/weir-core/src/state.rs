use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life. See the table in the crate README / DESIGN: every change of state
/// goes through [`transition`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting; runnable once its `run_at` has come (covers delayed and scheduled jobs).
    Pending = 0,
    /// Leased by one worker until its lease runs out (heartbeats extend it).
    Running = 1,
    /// Failed transiently; runs again at its `run_at` (now + backoff).
    Retryable = 2,
    /// Done. Its result, if it returned one, is stored with it.
    Succeeded = 3,
    /// Failed for good, or out of attempts: the dead-letter set.
    Failed = 4,
    /// Cancelled by a user or by its error group.
    Cancelled = 5,
}

impl JobState {
    /// Every state, in storage order.
    pub const ALL: [JobState; 6] = [
        JobState::Pending,
        JobState::Running,
        JobState::Retryable,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The state's storage code (0..=5), stable across versions.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The state for a storage code, if it is one.
    pub fn from_code(code: i64) -> Option<JobState> {
        JobState::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// True for states a job never leaves by itself (Succeeded, Failed, Cancelled).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// The lowercase name, as in `weir status`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text given to [`JobState::from_str`] names no state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{0}` (expected one of: pending, running, retryable, succeeded, failed, cancelled)")]
pub struct ParseStateError(String);

impl FromStr for JobState {
    type Err = ParseStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseStateError(s.to_owned()))
    }
}

/// Something that happens to a job.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Event {
    /// A worker leases the job to run it.
    Lease,
    /// The handler succeeded.
    Succeed,
    /// The handler failed transiently and attempts remain.
    Retry,
    /// The handler failed permanently, or attempts are exhausted.
    Fail,
    /// The lease ran out (the worker died or hung): the job is runnable again.
    Expire,
    /// The worker gave the job back unrun (graceful shutdown): runnable again, attempt not spent.
    Release,
    /// A user or an error group cancelled the job.
    Cancel,
    /// An operator asked for a failed job to run again.
    ManualRetry,
}

impl Event {
    /// Every event, for exhaustive tests.
    pub const ALL: [Event; 8] = [
        Event::Lease,
        Event::Succeed,
        Event::Retry,
        Event::Fail,
        Event::Expire,
        Event::Release,
        Event::Cancel,
        Event::ManualRetry,
    ];

    /// The event in a user's words, as a verb: "retry", "cancel", …
    pub fn verb(self) -> &'static str {
        match self {
            Event::Lease => "run",
            Event::Succeed => "succeed",
            Event::Retry => "schedule a retry of",
            Event::Fail => "fail",
            Event::Expire => "expire the lease of",
            Event::Release => "give back",
            Event::Cancel => "cancel",
            Event::ManualRetry => "retry",
        }
    }
}

/// The event does not apply to a job in that state.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("cannot {} a {from} job{}", event.verb(), hint(*event))]
pub struct IllegalTransition {
    /// The state the job was in.
    pub from: JobState,
    /// The event that was refused.
    pub event: Event,
}

/// What the user can do instead, for the events a user asks for.
fn hint(event: Event) -> &'static str {
    match event {
        Event::ManualRetry => " (only a failed job can be retried)",
        Event::Cancel => " (only a pending, retryable or running job can be cancelled)",
        _ => "",
    }
}

/// The one place that says which state an event leads to. Brokers call it (or encode exactly
/// the same table in their storage statements, tested against it) for every change of state.
pub fn transition(from: JobState, event: Event) -> Result<JobState, IllegalTransition> {
    use Event as E;
    use JobState as S;
    let to = match (from, event) {
        (S::Pending | S::Retryable, E::Lease) => S::Running,
        (S::Running, E::Succeed) => S::Succeeded,
        (S::Running, E::Retry) => S::Retryable,
        (S::Running, E::Fail) => S::Failed,
        (S::Running, E::Expire | E::Release) => S::Pending,
        (S::Pending | S::Running | S::Retryable, E::Cancel) => S::Cancelled,
        (S::Failed, E::ManualRetry) => S::Pending,
        _ => return Err(IllegalTransition { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use JobState as S;

    /// Every (state, event) pair, with the expected result written out by hand.
    #[test]
    fn every_state_event_pair() {
        let expected = |s: S, e: E| -> Option<S> {
            Some(match (s, e) {
                (S::Pending, E::Lease) => S::Running,
                (S::Pending, E::Cancel) => S::Cancelled,
                (S::Running, E::Succeed) => S::Succeeded,
                (S::Running, E::Retry) => S::Retryable,
                (S::Running, E::Fail) => S::Failed,
                (S::Running, E::Expire) => S::Pending,
                (S::Running, E::Release) => S::Pending,
                (S::Running, E::Cancel) => S::Cancelled,
                (S::Retryable, E::Lease) => S::Running,
                (S::Retryable, E::Cancel) => S::Cancelled,
                (S::Failed, E::ManualRetry) => S::Pending,
                _ => return None,
            })
        };
        let mut legal = 0;
        for s in S::ALL {
            for e in E::ALL {
                match (transition(s, e), expected(s, e)) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(got, want, "{s} + {e:?}");
                        legal += 1;
                    }
                    (Err(err), None) => {
                        assert_eq!(err, IllegalTransition { from: s, event: e })
                    }
                    (got, want) => panic!("{s} + {e:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(legal, 11);
    }

    #[test]
    fn finished_states_have_no_way_out_but_manual_retry() {
        for s in S::ALL.into_iter().filter(|s| s.is_finished()) {
            for e in E::ALL {
                if (s, e) != (S::Failed, E::ManualRetry) {
                    assert!(transition(s, e).is_err(), "{s} + {e:?}");
                }
            }
        }
    }

    #[test]
    fn codes_and_names_round_trip() {
        for s in S::ALL {
            assert_eq!(S::from_code(s.code() as i64), Some(s));
            assert_eq!(s.as_str().parse::<S>().unwrap(), s);
        }
        assert_eq!(S::from_code(6), None);
        assert!("dead"
            .parse::<S>()
            .unwrap_err()
            .to_string()
            .contains("unknown state `dead`"));
        let e = transition(S::Pending, E::ManualRetry).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot retry a pending job (only a failed job can be retried)"
        );
    }
}
