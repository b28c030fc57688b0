//! twtrace: the TCP TIME_WAIT lifecycle, traced with eBPF.
//!
//! The folders are the stages, and data flows one way through them:
//!
//! ```text
//! kernel programs ─▶ ring buffer ─▶ pipeline::decode ─▶ pipeline::lifecycle ─▶ pipeline::event
//!   (kernel/: loader, BTF, features)                                              │
//!                                   pipeline::session fans every event out to sinks:
//!            sink/ (lines, NDJSON, trace files) · analysis/ (one aggregator) ─▶ frontend/ (TUI, metrics)
//! ```
//!
//! - [`kernel`]: what the running kernel offers, computed once at load (BTF offsets, kallsyms,
//!   prototypes, the hook table, HZ, the reuse rule) and asked everywhere else.
//! - [`pipeline`]: records → typed events (one enum), filters, and the session driver.
//! - [`host`]: network namespaces and their sysctls, as `/proc` shows them (for display and
//!   for the experiments; decisions use the values the kernel programs read at the moment).
//! - [`sink`]: the line/NDJSON printer and its formatting (values, text tables), and the
//!   trace-file format.
//! - [`analysis`]: the aggregator (per peer, namespace, process; census; forecast).
//! - [`frontend`]: the full-screen view and the Prometheus exposition.
//! - [`experiments`]: `verify` (the blog's claims) and `lab nat`, with their workloads.
//! - `testkit` (feature `testkit`): the load generator shared by the benchmarks and tests.

pub mod analysis;
pub mod experiments;
pub mod frontend;
pub mod host;
pub mod kernel;
pub mod pipeline;
pub mod sink;
#[cfg(feature = "testkit")]
pub mod testkit;
