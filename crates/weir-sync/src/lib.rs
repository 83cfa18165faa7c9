//! weir's concurrency building blocks. No I/O lives here, so every piece is tested with an
//! injected clock or RNG, and the pool's resize accounting with loom.

mod backoff;
mod capacity;
pub mod flow;
mod group;
mod keyed;
mod limits;
mod pool;
mod prims;

pub use backoff::{Backoff, BackoffError, Jitter};
pub use group::{panic_message, GroupError, GroupMode, TaskFailure, TaskGroup};
pub use limits::{Admission, LimitSpec, Limiter, ParseRateError, Rate, Refused};
pub use pool::{ElasticPool, PoolStats, Rejected, Slot};
