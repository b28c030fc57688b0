//! The function-hook tier: fexit programs on the kernel functions that decide a timewait
//! socket's fate, for kernels that allow them (stock distribution kernels do; the development
//! host's does not). They give directly what the tracepoint tier infers.
//!
//! Each program reads its arguments by position, so each records the prototype it was written
//! against on a `match-proto:` line (source file and the oldest kernel checked). Userspace
//! (`twtrace::kernel::prototypes`) compares it with the running kernel's BTF before attaching and leaves the
//! hook off on a mismatch.
//!
//! Records go to the same ring buffer as the tracepoint tier's, so that each CPU's records stay
//! in order (a reuse decision precedes the timer detach it causes).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::fexit, programs::FExitContext};
use twtrace_common::{counter, flags, kind, TwRecord, NO_FIELD, UNIQUE_TWP};

use crate::{
    bump, fill_tuple, fill_tw, full_sock_port, read, set_current, wakeup_flags, CONFIG, CONNECTING,
    EVENTS,
};

/// Every reuse decision of connect(). A refusal is only counted, in the task's `CONNECTING`
/// entry (a connect() on an exhausted port range asks about every port's timewait socket: one
/// record each would flood the ring); the count reaches userspace with the outcome, the
/// `TW_UNIQUE` record of the socket taken over or the `CONNECT_FAIL` record.
// match-proto:v6.1:net/ipv4/tcp_ipv4.c:int tcp_twsk_unique(struct sock *sk, struct sock *sktw, void *twp)
#[fexit(function = "tcp_twsk_unique")]
pub fn tw_unique(ctx: FExitContext) -> u32 {
    let sktw: u64 = ctx.arg(1);
    let twp: u64 = ctx.arg(2);
    // An fexit context holds the arguments, then the return value (no helper needed).
    let taken: i32 = ctx.arg(3);
    if sktw == 0 {
        return 0;
    }
    let connecting = CONNECTING.get_ptr_mut(&bpf_get_current_pid_tgid());
    let mut refused_before = 0;
    if let Some(c) = connecting {
        // SAFETY: a map value of this task, written only from this task's own connect().
        unsafe {
            (*c).flags |= flags::CANDIDATES as u16;
            refused_before = (*c).refused;
            if taken == 0 {
                (*c).refused += 1;
                (*c).last_refused = sktw;
            }
        }
    }
    if taken == 0 {
        return 0;
    }
    let cfg = CONFIG.load();
    // SAFETY: kernel memory is read through bpf_probe_read_kernel; `r` points into a ring
    // buffer reservation of size_of::<TwRecord>() bytes, every field of which is written.
    unsafe {
        let Some(mut entry) = EVENTS.reserve::<TwRecord>(0) else {
            bump(counter::LOST);
            return 0;
        };
        let r = entry.as_mut_ptr();
        fill_tw(&cfg, sktw, kind::TW_UNIQUE, r);
        set_current(r);
        (*r).aux = 1;
        (*r).aux2 = if twp != 0 { UNIQUE_TWP } else { 0 };
        (*r).expires = refused_before as u64;
        entry.submit(wakeup_flags());
    }
    0
}

// match-proto:v6.1:net/ipv4/inet_timewait_sock.c:struct inet_timewait_sock *inet_twsk_alloc(const struct sock *sk, struct inet_timewait_death_row *dr, const int state)
#[fexit(function = "inet_twsk_alloc")]
pub fn tw_alloc(ctx: FExitContext) -> u32 {
    let tw: u64 = ctx.arg(3);
    if tw != 0 {
        return 0; // a birth: the timer tier reports it
    }
    let sk: u64 = ctx.arg(0);
    let state: i32 = ctx.arg(2);
    let cfg = CONFIG.load();
    // SAFETY: as above.
    unsafe {
        let Some(mut entry) = EVENTS.reserve::<TwRecord>(0) else {
            bump(counter::LOST);
            return 0;
        };
        let r = entry.as_mut_ptr();
        if !fill_tuple(&cfg, sk, r) {
            bump(counter::READ_ERRORS);
        }
        full_sock_port(&cfg, sk, r);
        (*r).ts_ns = aya_ebpf::helpers::bpf_ktime_get_ns();
        (*r).tw = sk;
        (*r).jiffies = aya_ebpf::helpers::bpf_jiffies64();
        (*r).entry_stamp = 0;
        (*r).ts_recent_stamp = 0;
        (*r).kind = kind::TW_ALLOC_FAIL;
        (*r).substate = read(sk, cfg.skc_state).unwrap_or(0);
        (*r).flags = 0;
        (*r).cpu = aya_ebpf::helpers::bpf_get_smp_processor_id() as u16;
        (*r).aux2 = state as u16;
        (*r).aux = 0;
        (*r).expires = 0;
        if cfg.net_tw_refcount != NO_FIELD && cfg.net_max_tw_buckets != NO_FIELD {
            let net: u64 = read(sk, cfg.skc_net).unwrap_or(0);
            if net != 0 {
                // The same test inet_twsk_alloc() made: refcount - 1 >= max.
                (*r).aux = read::<u32>(net, cfg.net_tw_refcount)
                    .unwrap_or(0)
                    .wrapping_sub(1);
                (*r).expires = read::<i32>(net, cfg.net_max_tw_buckets).unwrap_or(0) as u64;
            }
        }
        set_current(r);
        entry.submit(wakeup_flags());
    }
    0
}
