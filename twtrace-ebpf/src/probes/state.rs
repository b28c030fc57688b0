//! `sock:inet_sock_set_state`: the TCP state changes that matter to TIME_WAIT.
//! - ESTABLISHED → FIN_WAIT1: who closed (runs in the closing task; the timewait socket is
//!   born later in softirq context);
//! - CLOSE → SYN_SENT: a connect() in progress (its reuse of a timewait socket follows);
//! - SYN_SENT → CLOSE before any segment left: connect() found no local port;
//! - FIN_WAIT2/CLOSING → CLOSE with no timewait birth just before on this CPU, while the
//!   namespace's timewait count is at tcp_max_tw_buckets: the overflow drop.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::LruHashMap,
    programs::BtfTracePointContext,
};
use twtrace_common::{
    counter, flags, kind, Closer, Config, Connecting, NO_FIELD, TCP_CLOSE, TCP_CLOSING,
    TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_SYN_SENT,
};

use crate::correlate::{last_flow_is, CLOSERS, CONNECTING, LAST_BIRTH};
use crate::record::{
    bump, fill_conf, fill_sock, net_of, noted, read, reserve, sock_cgroup, sock_key, submit,
    Access, Direct, Helper,
};
use crate::CONFIG;

const FIN_WAIT2: i32 = TCP_FIN_WAIT2 as i32;

/// Processes (tgid) already reported as binding before connect() (LRU: a process that goes
/// away ages out; one that comes back is reported again).
#[map]
static BOUND_SEEN: LruHashMap<u32, u8> = LruHashMap::with_max_entries(8192, 0);

/// The first connect() of a process on a socket bound first: one record per process.
#[inline(always)]
unsafe fn bound_connect(cfg: &Config, sk: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if BOUND_SEEN.get(&tgid).is_some() {
        return;
    }
    noted(BOUND_SEEN.insert(&tgid, &0, 0));
    if let Some(mut entry) = reserve() {
        let r = entry.as_mut_ptr();
        fill_sock(cfg, sk, kind::BOUND_CONNECT, r, true, 0, 0, 0);
        submit(entry);
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let sk: u64 = ctx.arg(0);
    // SAFETY: kernel reads go through bpf_probe_read_kernel, or are direct loads of `sk`'s
    // fields that the verifier checks against its BTF type (`record::Direct`).
    unsafe {
        // CONFIG is loaded only on the 3–4 transitions (of ~10 per connection) that use it.
        // `sk` is BTF-typed: the common path (close, connect, the overflow test) loads its
        // fields directly, several times cheaper than a helper call each.
        match (oldstate, newstate) {
            (TCP_ESTABLISHED, TCP_FIN_WAIT1) => on_close(&CONFIG.load(), sk),
            (TCP_CLOSE, TCP_SYN_SENT) => on_connect(&CONFIG.load(), sk),
            (TCP_SYN_SENT, TCP_CLOSE) => on_connect_end(&CONFIG.load(), sk),
            (FIN_WAIT2, TCP_CLOSE) | (TCP_CLOSING, TCP_CLOSE) => on_done(&CONFIG.load(), sk),
            _ => {}
        }
    }
    0
}

#[inline(always)]
unsafe fn on_close(cfg: &Config, sk: u64) {
    let (key, ok) = sock_key::<Direct>(cfg, sk, false);
    if !ok {
        bump(counter::READ_ERRORS);
        return;
    }
    let closer = Closer {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        _pad: 0,
        cgroup: sock_cgroup::<Direct>(cfg, sk),
    };
    noted(CLOSERS.insert(&key, &closer, 0));
}

#[inline(always)]
unsafe fn on_connect(cfg: &Config, sk: u64) {
    let (key, _) = sock_key::<Direct>(cfg, sk, false);
    if key.lport != 0 {
        // Bound before connect(): this process draws from the namespace's one shared pool.
        bound_connect(cfg, sk);
    }
    let c = Connecting {
        ts_ns: bpf_ktime_get_ns(),
        netns: key.netns,
        rport: key.rport,
        flags: 0,
        raddr: key.raddr,
        refused: 0,
        last_ts_recent: 0,
        last_refused: 0,
        last_entry_stamp: 0,
        last_substate: 0,
        _pad: [0; 3],
    };
    noted(CONNECTING.insert(&bpf_get_current_pid_tgid(), &c, 0));
}

#[inline(always)]
unsafe fn on_connect_end(cfg: &Config, sk: u64) {
    let key = bpf_get_current_pid_tgid();
    // What the function tier found during this connect(), if it ran (read in place, not
    // copied: this program is at the BPF stack limit; the entry goes at the end).
    let c = CONNECTING.get_ptr(&key);
    // A refused or timed-out connect sent its SYN; one that never found a port sent nothing.
    if cfg.tcp_segs_out != NO_FIELD && read::<u32>(sk, cfg.tcp_segs_out).unwrap_or(1) == 0 {
        connect_failed(cfg, sk, c);
    }
    if c.is_some() {
        let _ = CONNECTING.remove(&key);
    }
}

/// The `CONNECT_FAIL` record of a connect() that found no local port; `c`: its `CONNECTING`
/// entry.
#[inline(always)]
unsafe fn connect_failed(cfg: &Config, sk: u64, c: Option<*const Connecting>) {
    let Some(mut entry) = reserve() else {
        return;
    };
    let r = entry.as_mut_ptr();
    match c {
        Some(c) => {
            fill_sock(
                cfg,
                sk,
                kind::CONNECT_FAIL,
                r,
                true,
                (*c).refused,
                0,
                (*c).last_refused,
            );
            (*r).flags = (*c).flags as u8 & flags::CANDIDATES;
            // The reuse decisions were made between connect()'s start and now: its start, in
            // milliseconds like tw_entry_stamp, lets userspace judge them at the right moment.
            let started_ms = ((*c).ts_ns / 1_000_000) as u32;
            (*r).entry_stamp = started_ms;
            if (*c).last_refused != 0 {
                // The last refused socket as the kernel judged it.
                (*r).flags |= flags::REFUSED_STATE;
                (*r).substate = (*c).last_substate;
                (*r).ts_recent_stamp = (*c).last_ts_recent;
                if (*c).last_entry_stamp != 0 {
                    let age = started_ms.wrapping_sub((*c).last_entry_stamp) as i32;
                    (*r).aux2 = age.clamp(0, u16::MAX as i32) as u16;
                }
            }
        }
        None => fill_sock(cfg, sk, kind::CONNECT_FAIL, r, true, 0, 0, 0),
    }
    // The settings the port search just applied (microseconds ago, in this task).
    fill_conf(cfg, net_of::<Helper>(cfg, sk), r);
    submit(entry);
}

#[inline(always)]
unsafe fn on_done(cfg: &Config, sk: u64) {
    if cfg.net_tw_refcount == NO_FIELD || cfg.net_max_tw_buckets == NO_FIELD {
        return;
    }
    // The same test inet_twsk_alloc() makes before refusing to allocate; cheap, so first:
    // almost every close is far from the limit.
    let net = net_of::<Direct>(cfg, sk);
    if net == 0 {
        return;
    }
    let count = Direct::get::<u32>(net, cfg.net_tw_refcount)
        .unwrap_or(0)
        .wrapping_sub(1);
    let max = Direct::get::<i32>(net, cfg.net_max_tw_buckets).unwrap_or(i32::MAX);
    if max < 0 || (count as i64) < max as i64 {
        return;
    }
    // At the limit: was a timewait socket born for this very connection just now?
    let (key, _) = sock_key::<Direct>(cfg, sk, true);
    if last_flow_is(LAST_BIRTH, &key, bpf_ktime_get_ns()) {
        return; // the normal path (the last free slot was just taken)
    }
    if let Some(mut entry) = reserve() {
        let r = entry.as_mut_ptr();
        fill_sock(cfg, sk, kind::OVERFLOW, r, true, count, 0, max as u64);
        fill_conf(cfg, net, r);
        submit(entry);
    }
}
