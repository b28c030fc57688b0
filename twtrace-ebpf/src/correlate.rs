//! What the kernel side remembers between events, to correlate what must be seen in the
//! moment: per CPU the last timewait birth and detach and a count of timer events, per task
//! the connect() in progress, per flow who closed it, per timewait socket whether it still
//! waits for the peer's FIN.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use twtrace_common::{flags, Closer, Config, Connecting, FlowKey, LastTw, TwRecord, NO_FIELD};

use crate::record::{flow_key, read};

/// Who closed a connection (ESTABLISHED → FIN_WAIT1 happens in the closing task), keyed by
/// tuple + netns, so the timewait socket born later in softirq context can name its process.
/// LRU: connections that never reach TIME_WAIT (the peer closed first) age out by themselves.
#[map]
pub static CLOSERS: LruHashMap<FlowKey, Closer> = LruHashMap::with_max_entries(65536, 0);

/// connect() in progress per task (pid_tgid): CLOSE → SYN_SENT runs in connect() before the
/// local port is chosen, and a timewait socket reused for it is detached moments later in the
/// same task.
#[map]
pub static CONNECTING: LruHashMap<u64, Connecting> = LruHashMap::with_max_entries(16384, 0);

/// Timewait sockets born in their FIN_WAIT2 substate and not yet seen promoted (LRU: a
/// socket that dies unpromoted ages out).
#[map]
pub static FIN_WAIT2_TWS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Per CPU: the last timewait birth (slot 0) and the last timewait timer detach (slot 1), so
/// records that follow on the same CPU can be correlated in the kernel (and only the useful
/// ones sent).
#[map]
static LAST_TW: PerCpuArray<LastTw> = PerCpuArray::with_max_entries(2, 0);
pub const LAST_BIRTH: u32 = 0;
pub const LAST_CANCEL: u32 = 1;

/// How close in time correlated events on one CPU must be. The kernel paths involved run back
/// to back (microseconds natively; up to milliseconds on an emulated CPU such as QEMU's TCG).
/// Identity is always checked as well (the same flow, the same socket), so the window only
/// guards against stale memory and can be generous.
pub const SAME_FLOW_NS: u64 = 100_000_000;

/// The same for correlations by flow (4-tuple and namespace): a tw detach and the SYN's
/// request socket, a close and the timewait birth it did (not) make. A flow's earlier life on
/// the same CPU is the only stale match, and it needs seconds (a TIME_WAIT socket taken over
/// by connect()), so the window can be wide enough for a CPU paused between the two: a vCPU
/// descheduled for QEMU TCG's 100 ms kick period lost SYN-into-TIME_WAIT judgements at 100 ms.
pub const FLOW_WINDOW_NS: u64 = 1_000_000_000;

/// Per CPU: how many timer starts and detaches (of any timer) this CPU has run.
#[map]
static TIMER_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn next_seq() -> u64 {
    match TIMER_SEQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, exclusive while we run.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}

#[inline(always)]
pub fn remember(slot: u32, tw: u64, r: &TwRecord, seq: u64) {
    if let Some(p) = LAST_TW.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, exclusive while we run.
        unsafe {
            (*p).ts_ns = r.ts_ns;
            (*p).tw = tw;
            (*p).seq = seq;
            (*p).key = flow_key(r);
            (*p).in_connect = (r.flags & flags::IN_CONNECT != 0) as u32;
        }
    }
}

/// Whether the start numbered `seq` of `tw`'s timer re-arms it: `__mod_timer` detaches a
/// pending timer and enqueues it again under the timer base lock with interrupts off, so the
/// two are consecutive on this CPU with no other timer event between. A new timewait socket on
/// the memory of one that just died (the slab reuses it at once) almost always has timer
/// events between (its connection's own timers), and is usually another flow; but nothing
/// forbids the same flow's next socket after a takeover by connect() from having none (the
/// soak's rare missing births point there). So: `None`, not a re-arm; `Some(false)`, a
/// re-arm; `Some(true)`, consecutive with a detach in a connecting task (`IN_CONNECT`), which
/// is a takeover or a re-arm that the task's softirq work ran (the peer's FIN promoting a
/// FIN_WAIT2-substate socket, seen in the 7.3 guest): only userspace can tell, by the function
/// tier's confirmed takeovers. A purge's detach is remembered with sequence 0: never a re-arm.
#[inline(always)]
pub fn is_rearm(tw: u64, seq: u64, key: &FlowKey) -> Option<bool> {
    let p = LAST_TW.get_ptr(LAST_CANCEL)?;
    // SAFETY: per-CPU slot pointer from the map.
    unsafe {
        let consecutive = (*p).tw == tw
            && seq != 0
            && (*p).seq != 0
            && (*p).seq.wrapping_add(1) == seq
            && (*p).key == *key;
        consecutive.then_some((*p).in_connect != 0)
    }
}

/// Whether the per-CPU memory of `slot` is recent (`FLOW_WINDOW_NS`): the cheap test before
/// [`last_flow_is`].
#[inline(always)]
pub fn recent(slot: u32, now: u64) -> bool {
    match LAST_TW.get_ptr(slot) {
        // SAFETY: per-CPU slot pointer from the map.
        Some(p) => unsafe { (*p).ts_ns != 0 && now.wrapping_sub((*p).ts_ns) < FLOW_WINDOW_NS },
        None => false,
    }
}

/// Whether the per-CPU memory of `slot` is the flow `key`, recently (`FLOW_WINDOW_NS`).
#[inline(always)]
pub fn last_flow_is(slot: u32, key: &FlowKey, now: u64) -> bool {
    match LAST_TW.get_ptr(slot) {
        // SAFETY: per-CPU slot pointer from the map.
        Some(p) => unsafe {
            (*p).ts_ns != 0 && now.wrapping_sub((*p).ts_ns) < FLOW_WINDOW_NS && (*p).key == *key
        },
        None => false,
    }
}

/// Whether the per-CPU memory of `slot` is socket `tw`, recently (`SAME_FLOW_NS`). (Kept free
/// of `Option`s of large structs: LLVM can leave a register uninitialised on the `None` path,
/// which the verifier rejects.)
#[inline(always)]
pub fn last_is(slot: u32, tw: u64, now: u64) -> bool {
    match LAST_TW.get_ptr(slot) {
        // SAFETY: per-CPU slot pointer from the map.
        Some(p) => unsafe {
            (*p).tw == tw && (*p).ts_ns != 0 && now.wrapping_sub((*p).ts_ns) < SAME_FLOW_NS
        },
        None => false,
    }
}

/// Flags for a detach: is `current` connecting to this socket's peer (a reuse), or is the
/// socket's namespace being dismantled (a purge)?
#[inline(always)]
pub unsafe fn cancel_flags(cfg: &Config, net: u64, r: &TwRecord) -> u8 {
    let mut f = 0;
    if let Some(c) = CONNECTING.get(&bpf_get_current_pid_tgid()) {
        if r.ts_ns.wrapping_sub(c.ts_ns) < SAME_FLOW_NS
            && c.netns == r.netns
            && c.rport == r.rport
            && c.raddr == r.raddr
        {
            f |= flags::IN_CONNECT;
        }
    }
    if cfg.net_ns_ref != NO_FIELD && net != 0 && read::<u32>(net, cfg.net_ns_ref).unwrap_or(1) == 0
    {
        f |= flags::NETNS_DYING;
    }
    f
}
