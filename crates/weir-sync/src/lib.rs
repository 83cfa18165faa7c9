//! weir's concurrency building blocks. No I/O lives here, so every piece is tested with an
//! injected clock or RNG.

mod backoff;

pub use backoff::{Backoff, BackoffError, Jitter};
