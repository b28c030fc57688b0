//! The function tier through kprobes, for kernels that have kprobes but refuse fentry/fexit
//! (no BPF trampolines, or a policy against them). The same decisions as `function.rs`, the
//! same records (`function::unique_decided`, `function::alloc_failed`).
//!
//! A kretprobe sees only the return value: the argument registers are clobbered by then. So
//! each return hook has an entry hook that saves the arguments it needs, per task and CPU:
//! - `tcp_twsk_unique` entry saves (sk, sktw, twp); its return says whether sktw was taken;
//! - `tcp_time_wait` entry saves (the closing socket, the state and timeout it was asked for);
//!   `inet_twsk_alloc`, whose only caller it is (`tcp_minisocks.c`), returns NULL on overflow.
//!
//! Keyed by CPU and thread, not by CPU alone: on PREEMPT_RT the callers hold spinlocks that
//! are sleeping locks there, so another task may run on this CPU between entry and return
//! (migration stays disabled under them); not by thread alone: softirq work run on an idle
//! CPU has thread id 0 on every CPU. A return whose entry was not seen (kretprobe instances
//! exhausted, or a call begun before attach) reports nothing; LRU ages out entries whose
//! return was missed.
//!
//! Prototypes (checked against BTF by `twtrace::kernel::fn_tier` before attaching):
// match-proto:v6.1:net/ipv4/tcp_ipv4.c:int tcp_twsk_unique(struct sock *sk, struct sock *sktw, void *twp)
// match-proto:v6.1:net/ipv4/tcp_minisocks.c:void tcp_time_wait(struct sock *sk, int state, int timeo)
// match-proto:v6.1:net/ipv4/inet_timewait_sock.c:struct inet_timewait_sock *inet_twsk_alloc(const struct sock *sk, struct inet_timewait_death_row *dr, const int state)

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id},
    macros::{kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};

use super::function::{alloc_failed, unique_decided};
use crate::record::noted;

/// Arguments of a probed call in progress: (CPU << 32 | thread id) → up to three arguments.
#[map]
static KP_UNIQUE_ARGS: LruHashMap<u64, [u64; 3]> = LruHashMap::with_max_entries(4096, 0);
#[map]
static KP_TIME_WAIT_ARGS: LruHashMap<u64, [u64; 3]> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn call_key() -> u64 {
    // SAFETY: no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    (cpu << 32) | (bpf_get_current_pid_tgid() & 0xffff_ffff)
}

#[kprobe]
pub fn kp_unique_entry(ctx: ProbeContext) -> u32 {
    let args = [
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
        ctx.arg::<u64>(2).unwrap_or(0),
    ];
    noted(KP_UNIQUE_ARGS.insert(&call_key(), &args, 0));
    0
}

#[kretprobe]
pub fn kp_unique(ctx: RetProbeContext) -> u32 {
    let key = call_key();
    // SAFETY: a copy is taken before the entry is removed.
    let Some(&[sk, sktw, twp]) = (unsafe { KP_UNIQUE_ARGS.get(&key) }) else {
        return 0;
    };
    let _ = KP_UNIQUE_ARGS.remove(&key);
    let taken: i32 = ctx.ret();
    unique_decided(sk, sktw, twp, taken != 0);
    0
}

#[kprobe]
pub fn kp_time_wait(ctx: ProbeContext) -> u32 {
    let args = [
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<i32>(1).unwrap_or(0) as u64,
        ctx.arg::<i32>(2).unwrap_or(0) as u64,
    ];
    noted(KP_TIME_WAIT_ARGS.insert(&call_key(), &args, 0));
    0
}

#[kretprobe]
pub fn kp_tw_alloc(ctx: RetProbeContext) -> u32 {
    let key = call_key();
    // SAFETY: as above.
    let Some(&[sk, state, _timeo]) = (unsafe { KP_TIME_WAIT_ARGS.get(&key) }) else {
        return 0;
    };
    let _ = KP_TIME_WAIT_ARGS.remove(&key);
    let tw: u64 = ctx.ret();
    if tw == 0 {
        alloc_failed(sk, state as i32);
    }
    0
}
