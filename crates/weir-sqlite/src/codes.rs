//! The job state codes the embedded format stores, as SQL literals: the one place the SQL
//! statements take them from. `state!(pending)` is `"0"`, for `concat!` into a statement
//! that stays a `&'static str` (so it is prepared once and cached). The codes are
//! [`weir_core::JobState::code`]; a test below holds the two together.
//!
//! Unfinished states have the lowest codes: `state < 3` (written
//! `concat!("state < ", state!(succeeded))`) means pending, running or retryable, which is
//! what the `jobs_unfinished` index covers.

/// The stored code of a job state, as a string literal.
macro_rules! state {
    (pending) => {
        "0"
    };
    (running) => {
        "1"
    };
    (retryable) => {
        "2"
    };
    (succeeded) => {
        "3"
    };
    (failed) => {
        "4"
    };
    (cancelled) => {
        "5"
    };
}
pub(crate) use state;

/// `state IN (pending, retryable)`: runnable when due.
macro_rules! runnable {
    () => {
        concat!("state IN (", state!(pending), ", ", state!(retryable), ")")
    };
}
pub(crate) use runnable;

/// `state < succeeded`: not finished.
macro_rules! unfinished {
    () => {
        concat!("state < ", state!(succeeded))
    };
}
pub(crate) use unfinished;

#[cfg(test)]
mod tests {
    use weir_core::JobState;

    #[test]
    fn the_literals_are_the_state_codes() {
        let lit = [
            (state!(pending), JobState::Pending),
            (state!(running), JobState::Running),
            (state!(retryable), JobState::Retryable),
            (state!(succeeded), JobState::Succeeded),
            (state!(failed), JobState::Failed),
            (state!(cancelled), JobState::Cancelled),
        ];
        for (text, state) in lit {
            assert_eq!(text, state.code().to_string(), "{state}");
        }
        for s in JobState::ALL {
            assert_eq!(
                s.code() < 3,
                !s.is_finished(),
                "{s}: unfinished!() is `state < 3`"
            );
        }
        assert_eq!(runnable!(), "state IN (0, 2)");
        assert_eq!(unfinished!(), "state < 3");
    }
}
