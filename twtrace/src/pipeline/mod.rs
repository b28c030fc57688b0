//! Records from the ring buffer → decoded [`twtrace_common::TwRecord`]s → the lifecycle state
//! machine → typed [`event::Event`]s, filtered; the tracer drives it and a [`session`] fans
//! them out to sinks.

pub mod decode;
pub mod event;
pub mod filter;
pub mod lifecycle;
pub mod session;
pub mod tracer;
