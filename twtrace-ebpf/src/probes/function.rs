//! The function-hook tier: fexit programs on the kernel functions that decide a timewait
//! socket's fate, for kernels that allow them (stock distribution kernels do; the development
//! host's does not). They give directly what the tracepoint tier infers.
//!
//! Each program reads its arguments by position, so each records the prototype it was written
//! against on a `match-proto:` line (source file and the oldest kernel checked). Userspace
//! (`twtrace::kernel::prototypes`) compares it with the running kernel's BTF before attaching
//! and leaves the hook off on a mismatch.
//!
//! Records go to the same ring buffer as the tracepoint tier's, so that each CPU's records stay
//! in order (a reuse decision precedes the timer detach it causes).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::fexit, programs::FExitContext};
use twtrace_common::{flags, kind, NO_FIELD, UNIQUE_TWP};

use crate::correlate::CONNECTING;
use crate::record::{
    fill_conf, fill_sock, fill_tw, hot, net_of, read, reserve, set_current, submit, Helper,
};
use crate::CONFIG;

/// Every reuse decision of connect(). A refusal is only counted, in the task's `CONNECTING`
/// entry (a connect() on an exhausted port range asks about every port's timewait socket: one
/// record each would flood the ring); the count reaches userspace with the outcome, the
/// `TW_UNIQUE` record of the socket taken over or the `CONNECT_FAIL` record.
// match-proto:v6.1:net/ipv4/tcp_ipv4.c:int tcp_twsk_unique(struct sock *sk, struct sock *sktw, void *twp)
#[fexit(function = "tcp_twsk_unique")]
pub fn tw_unique(ctx: FExitContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let sktw: u64 = ctx.arg(1);
    let twp: u64 = ctx.arg(2);
    // An fexit context holds the arguments, then the return value (no helper needed).
    let taken: i32 = ctx.arg(3);
    unique_decided(sk, sktw, twp, taken != 0);
    0
}

/// What both mechanisms (fexit here, kprobe + kretprobe in `kprobe.rs`) report for one
/// `tcp_twsk_unique(sk, sktw, twp)` call that returned `taken`.
#[inline(always)]
pub fn unique_decided(sk: u64, sktw: u64, twp: u64, taken: bool) {
    if sktw == 0 {
        return;
    }
    let connecting = CONNECTING.get_ptr_mut(&bpf_get_current_pid_tgid());
    let mut refused_before = 0;
    if let Some(c) = connecting {
        // SAFETY: a map value of this task, written only from this task's own connect().
        unsafe {
            (*c).flags |= flags::CANDIDATES as u16;
            refused_before = (*c).refused;
            if !taken {
                (*c).refused += 1;
                (*c).last_refused = sktw;
                // What the kernel judged, read now: the refusal is explained from this, not
                // from the lifecycle's copy, which misses a promoting FIN whose kfree_skb run
                // the kernel skipped.
                (*c).last_substate = read(sktw, hot!(tw_substate)).unwrap_or(0);
                (*c).last_ts_recent = read(sktw, hot!(tw_ts_recent_stamp)).unwrap_or(0);
                let stamp = hot!(tw_entry_stamp);
                (*c).last_entry_stamp = if stamp != NO_FIELD {
                    read(sktw, stamp).unwrap_or(0)
                } else {
                    0
                };
            }
        }
    }
    if !taken {
        return;
    }
    let cfg = CONFIG.load();
    // SAFETY: kernel memory is read through bpf_probe_read_kernel; `r` points into a ring
    // buffer reservation of size_of::<TwRecord>() bytes, every field of which is written.
    unsafe {
        if let Some(mut entry) = reserve() {
            let r = entry.as_mut_ptr();
            fill_tw(&cfg, sktw, kind::TW_UNIQUE, r);
            set_current(r);
            (*r).aux = 1;
            (*r).aux2 = if twp != 0 { UNIQUE_TWP } else { 0 };
            (*r).expires = refused_before as u64;
            // The settings tcp_twsk_unique() just applied, from the connecting socket's net.
            fill_conf(&cfg, net_of::<Helper>(&cfg, sk), r);
            submit(entry);
        }
    }
}

// match-proto:v6.1:net/ipv4/inet_timewait_sock.c:struct inet_timewait_sock *inet_twsk_alloc(const struct sock *sk, struct inet_timewait_death_row *dr, const int state)
#[fexit(function = "inet_twsk_alloc")]
pub fn tw_alloc(ctx: FExitContext) -> u32 {
    let tw: u64 = ctx.arg(3);
    if tw != 0 {
        return 0; // a birth: the timer tier reports it
    }
    alloc_failed(ctx.arg(0), ctx.arg(2));
    0
}

/// What both mechanisms report when `inet_twsk_alloc(sk, dr, state)` returned NULL.
#[inline(always)]
pub fn alloc_failed(sk: u64, state: i32) {
    let cfg = CONFIG.load();
    // SAFETY: as above.
    unsafe {
        if let Some(mut entry) = reserve() {
            let r = entry.as_mut_ptr();
            // `aux2` = the substate it would have had.
            fill_sock(&cfg, sk, kind::TW_ALLOC_FAIL, r, true, 0, state as u16, 0);
            fill_conf(&cfg, net_of::<Helper>(&cfg, sk), r);
            // The same test inet_twsk_alloc() made (count below the limit: the allocation
            // itself failed), also kept where older readers look for it.
            let c = (*r).conf;
            if c.has(twtrace_common::netconf::TW_BUCKETS) {
                (*r).aux = c.tw_count;
                (*r).expires = c.max_tw_buckets as u64;
            }
            submit(entry);
        }
    }
}
