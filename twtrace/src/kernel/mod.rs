//! What the running kernel offers: BTF offsets, symbols, function prototypes, the programs and
//! their hooks, the iterator, and kernel facts (HZ, clocks). Computed once at load.

pub mod btf;
pub mod fn_tier;
pub mod kallsyms;
pub mod loader;
pub mod preempt;
pub mod prototypes;
pub mod snapshot;
pub mod sysinfo;
