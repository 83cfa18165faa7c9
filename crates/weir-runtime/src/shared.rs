//! What every part of a running worker shares: the broker and what it declared, the handlers,
//! the live settings, the held leases, the counters and the workflow membership. Each part
//! is a component with its own file; this struct only holds them together.

use std::sync::Arc;

use weir_core::{Broker, Capabilities, Clock};

use crate::leases::Leases;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::observer::Observer;
use crate::registry::Registry;
use crate::report::Counters;
use crate::tuning::Tuning;

pub(crate) struct Shared {
    pub(crate) broker: Arc<dyn Broker>,
    /// What the broker declared, read once.
    pub(crate) caps: Capabilities,
    pub(crate) registry: Registry,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) tuning: Arc<Tuning>,
    pub(crate) leases: Leases,
    pub(crate) counters: Counters,
    pub(crate) membership: Membership,
    pub(crate) metrics: Metrics,
}
