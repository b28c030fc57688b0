//! What the running kernel offers: BTF offsets, symbols, function prototypes, the programs and
//! their hooks, the iterator, and kernel facts (HZ, clocks). Computed once at load and held
//! by [`features::Features`]; the reuse rule is [`reuse_rule`].

pub mod btf;
pub mod features;
pub mod fn_tier;
pub mod kallsyms;
pub mod loader;
pub mod preempt;
pub mod prog_stats;
pub mod prototypes;
pub mod reuse_rule;
pub mod snapshot;
pub mod sysinfo;
pub mod tracefs;
