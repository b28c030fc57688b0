//! Front ends that read the aggregator: the full-screen view and the Prometheus exposition.

pub mod metrics;
pub mod tui;
