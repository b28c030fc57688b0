//! twtrace: the TCP TIME_WAIT lifecycle, traced with eBPF.
//!
//! Flow (one way): kernel programs → ring buffer → [`decode`] → [`lifecycle`] → [`event::Event`]
//! → sinks ([`output`]). [`loader`] owns BTF offsets, kallsyms and the hook table; [`netns`] and
//! [`workload`] are shared by the tests, `verify` and the benchmarks.

pub mod aggregate;
pub mod btf;
pub mod decode;
pub mod event;
pub mod filter;
pub mod fnsig;
pub mod forecast;
pub mod kallsyms;
pub mod lab;
pub mod lifecycle;
pub mod loader;
pub mod loadgen;
pub mod metrics;
pub mod netns;
pub mod output;
pub mod snapshot;
pub mod sysctls;
pub mod sysinfo;
pub mod tracefile;
pub mod tracer;
pub mod tui;
pub mod verify;
pub mod workload;
