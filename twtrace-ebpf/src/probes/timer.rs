//! `timer:timer_start`, `timer_cancel`, `timer_expire_entry`: the timewait socket's own timer
//! (births, re-arms, detaches, expiries), and a request socket's timer armed right after a
//! timewait detach (a SYN accepted into TIME_WAIT).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use twtrace_common::{flags, kind, Config, TCP_FIN_WAIT2};

use crate::correlate::{
    cancel_flags, is_rearm, last_flow_is, next_seq, recent, remember, CLOSERS, FIN_WAIT2_TWS,
    LAST_BIRTH, LAST_CANCEL,
};
use crate::record::{
    fill_conf, fill_sock, fill_tw, flow_key, hot, load, net_of, noted, reserve, set_current,
    sock_key, submit, Helper,
};
use crate::CONFIG;

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> u32 {
    on_tw_timer(&ctx, kind::TIMER_START)
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> u32 {
    on_tw_timer(&ctx, kind::TIMER_CANCEL)
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> u32 {
    on_tw_timer(&ctx, kind::TIMER_EXPIRE)
}

#[inline(always)]
fn on_tw_timer(ctx: &BtfTracePointContext, k: u8) -> u32 {
    let timer: u64 = ctx.arg(0);
    // SAFETY: `timer` is the tracepoint's BTF-typed argument, so its one direct load is checked
    // by the verifier against `struct timer_list`; every other kernel memory access goes
    // through bpf_probe_read_kernel. `r` points into a ring-buffer reservation of
    // size_of::<TwRecord>() bytes.
    unsafe {
        // Every start and detach of every timer on this CPU is counted, before the filter:
        // a re-arm is the only way a timewait timer's detach and start are consecutive.
        let seq = if k == kind::TIMER_EXPIRE {
            0
        } else {
            next_seq()
        };
        // The filter reads only the config fields it needs, and `function` once, with a direct
        // load (no helper call): most runs are for other timers and end here.
        let handler: u64 = hot!(tw_timer_handler);
        let function: u64 = load(timer, hot!(timer_function));
        if function != handler || handler == 0 {
            if k == kind::TIMER_START {
                let rh: u64 = hot!(reqsk_timer_handler);
                if rh != 0 && function == rh {
                    on_reqsk_timer(&CONFIG.load(), timer);
                }
            }
            return 0;
        }
        let cfg = CONFIG.load();
        let tw = timer - cfg.tw_timer as u64;
        if let Some(mut entry) = reserve() {
            let r = entry.as_mut_ptr();
            fill_tw(&cfg, tw, k, r);
            set_current(r);
            if k == kind::TIMER_START {
                on_start(tw, seq, r);
            } else if k == kind::TIMER_CANCEL {
                let net = net_of::<Helper>(&cfg, tw);
                (*r).flags |= cancel_flags(&cfg, net, &*r);
                if (*r).flags & flags::IN_CONNECT != 0 {
                    // A reuse: the settings connect() applied to it.
                    fill_conf(&cfg, net, r);
                }
                // A purge's detach is final: never half of a re-arm (a takeover's may look
                // like one: `is_rearm`).
                let fin = (*r).flags & flags::NETNS_DYING != 0;
                remember(LAST_CANCEL, tw, &*r, if fin { 0 } else { seq });
            }
            submit(entry);
        }
    }
    0
}

/// A timer start: a re-arm, or a birth (then name the closing process if we saw it close).
#[inline(always)]
unsafe fn on_start(tw: u64, seq: u64, r: *mut twtrace_common::TwRecord) {
    let key = flow_key(r);
    match is_rearm(tw, seq, &key) {
        None => {}
        Some(false) => {
            (*r).flags |= flags::REARM;
            return;
        }
        // After a detach in a connecting task: flagged, and also kept as a birth (its
        // closer named) in case that detach was a takeover; userspace decides.
        Some(true) => (*r).flags |= flags::REARM,
    }
    if let Some(c) = CLOSERS.get(&key) {
        (*r).pid = c.pid;
        (*r).comm = c.comm;
        (*r).cgroup = c.cgroup;
        (*r).flags |= flags::CLOSER;
        let _ = CLOSERS.remove(&key);
    }
    remember(LAST_BIRTH, tw, &*r, seq);
    if (*r).substate == TCP_FIN_WAIT2 {
        noted(FIN_WAIT2_TWS.insert(&tw, &0, 0));
    }
}

/// A request socket's timer armed (a SYN became a request socket; the caller checked the
/// timer's function) right after the detach of a timewait socket of the same flow on this
/// CPU: the SYN was accepted into TIME_WAIT (TCP_TW_SYN). Compared here, not only in
/// userspace: a client that reuses a timewait socket for its connect() detaches it just
/// before its SYN reaches the (local) listener, so without the flow check every such
/// connection would cost a record.
#[inline(always)]
unsafe fn on_reqsk_timer(cfg: &Config, timer: u64) {
    let now = bpf_ktime_get_ns();
    if !recent(LAST_CANCEL, now) {
        return;
    }
    let req = timer - cfg.rsk_timer as u64;
    let (key, _) = sock_key::<Helper>(cfg, req, false);
    if !last_flow_is(LAST_CANCEL, &key, now) {
        return;
    }
    if let Some(mut entry) = reserve() {
        let r = entry.as_mut_ptr();
        fill_sock(cfg, req, kind::REQSK_START, r, false, 0, 0, 0);
        submit(entry);
    }
}
