//! Empty programs on twtrace's tracepoints, for the benchmark only (`twtrace-bench`'s "empty
//! programs" configuration; never attached by twtrace itself). They measure the floor of the
//! tracepoint design: what it costs the traced connections merely to run *a* BPF program on
//! each of these hooks, before any filtering or record. The timer tracepoints fire for every
//! kernel timer, so no filter written in the programs can be cheaper than this.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "timer_start")]
pub fn floor_timer_start(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn floor_timer_cancel(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn floor_timer_expire(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn floor_set_state(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn floor_kfree_skb(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn floor_send_reset(_ctx: BtfTracePointContext) -> u32 {
    0
}
