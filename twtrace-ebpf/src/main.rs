//! twtrace's kernel programs.
//!
//! One program per hook, each short: filter first (a timer is only interesting when its
//! `function` is `tw_timer_handler`), then write one fixed-size record in place into the ring
//! buffer. The kernel side only correlates what must be seen in the moment (per-CPU last
//! birth/detach and count of timer events, per-task connect()) and flags records with it;
//! deciding what a record means (birth, re-arm, expiry, each death reason) is userspace's job
//! (`twtrace::lifecycle`), where it is unit-tested. docs/lifecycle.md lists the evidence.
//!
//! No structure layout is compiled in: every offset comes from `CONFIG`, which userspace fills
//! from the running kernel's BTF before loading.
#![no_std]
#![no_main]

mod floor;
mod fnhooks;

use aya_ebpf::{
    bindings::seq_file,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_jiffies64,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_seq_write,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
    Global,
};
use twtrace_common::{
    census, counter, flags, kind, Closer, Config, Connecting, FlowKey, LastTw, TwRecord, AF_INET6,
    NO_FIELD, TCPF_FIN, TCP_CLOSE, TCP_CLOSING, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2,
    TCP_SYN_SENT, TCP_TIME_WAIT,
};

#[no_mangle]
static CONFIG: Global<Config> = Global::new(Config::ZERO);

/// 4 MiB: ~37 000 records of 112 bytes. Userspace may resize it at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Who closed a connection (ESTABLISHED → FIN_WAIT1 happens in the closing task), keyed by
/// tuple + netns, so the timewait socket born later in softirq context can name its process.
/// LRU: connections that never reach TIME_WAIT (the peer closed first) age out by themselves.
#[map]
static CLOSERS: LruHashMap<FlowKey, Closer> = LruHashMap::with_max_entries(65536, 0);

/// Socket counts per TCP state for one iterator run (userspace zeroes it before each run).
#[map]
static CENSUS: Array<u64> = Array::with_max_entries(census::SLOTS, 0);

/// What the iterator does: `census::MODE_SNAPSHOT` or `census::MODE_COUNT` (slot 0).
#[map]
static ITER_MODE: Array<u32> = Array::with_max_entries(1, 0);

/// Wake the reader only when a good part of the ring is full; otherwise it reads on its own
/// schedule (its poll timeout, ≤ 100 ms). A wake-up is an irq_work, a self-IPI (a VM exit on
/// virtual machines): measured at ~6 µs per event here, it was most of our in-kernel cost.
#[inline(always)]
fn wakeup_flags() -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    if EVENTS.query(BPF_RB_AVAIL_DATA) > (1 << 20) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn bump(idx: u32) {
    if let Some(v) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
unsafe fn read<T>(base: u64, off: u32) -> Result<T, i32> {
    bpf_probe_read_kernel((base + off as u64) as *const T)
}

/// One field of CONFIG, read alone (volatile like `Global::load`, but 4–8 bytes instead of
/// the whole struct): for the filters that run on every timer event of the machine.
macro_rules! hot {
    ($f:ident) => {{
        let p = &CONFIG as *const Global<Config> as *const Config;
        core::ptr::read_volatile(&raw const (*p).$f)
    }};
}

/// Reads the tuple and netns of a `sock_common` (a full socket or a timewait socket) into `r`.
/// Returns false if any read failed; fields that failed are zero.
#[inline(always)]
unsafe fn fill_tuple(cfg: &Config, skc: u64, r: *mut TwRecord) -> bool {
    let mut ok = true;
    let family: u16 = read(skc, cfg.skc_family).unwrap_or(0);
    let num: u16 = read(skc, cfg.skc_num).unwrap_or(0);
    let dport: u16 = read(skc, cfg.skc_dport).unwrap_or(0);
    let net: u64 = read(skc, cfg.skc_net).unwrap_or(0);
    (*r).family = family as u8;
    (*r).lport = num;
    (*r).rport = u16::from_be(dport);
    (*r).netns = if net != 0 {
        read(net, cfg.net_ns_inum).unwrap_or(0)
    } else {
        0
    };
    (*r).laddr = [0; 16];
    (*r).raddr = [0; 16];
    if family as u8 == AF_INET6 {
        ok &= bpf_probe_read_kernel_buf(
            (skc + cfg.skc_v6_rcv_saddr as u64) as *const u8,
            &mut (*r).laddr,
        )
        .is_ok();
        ok &= bpf_probe_read_kernel_buf(
            (skc + cfg.skc_v6_daddr as u64) as *const u8,
            &mut (*r).raddr,
        )
        .is_ok();
    } else {
        let l: [u8; 4] = read(skc, cfg.skc_rcv_saddr).unwrap_or([0; 4]);
        let d: [u8; 4] = read(skc, cfg.skc_daddr).unwrap_or([0; 4]);
        ((&raw mut (*r).laddr) as *mut [u8; 4]).write(l);
        ((&raw mut (*r).raddr) as *mut [u8; 4]).write(d);
    }
    ok && family != 0 && net != 0
}

/// A full socket on its way to CLOSE may already have left the bind hash (skc_num = 0, e.g.
/// after its timewait socket took the port over); its inet_sport still holds the port.
/// Only for full sockets: request and timewait sockets have no inet_sport.
#[inline(always)]
unsafe fn full_sock_port(cfg: &Config, sk: u64, r: *mut TwRecord) {
    if (*r).lport == 0 {
        (*r).lport = u16::from_be(read(sk, cfg.inet_sport).unwrap_or(0));
    }
}

/// Fills every field of `r` from the timewait socket `tw`. Every byte is written: ring buffer
/// memory is not zeroed by the kernel.
#[inline(always)]
unsafe fn fill_tw(cfg: &Config, tw: u64, k: u8, r: *mut TwRecord) {
    let mut ok = fill_tuple(cfg, tw, r);
    (*r).ts_ns = bpf_ktime_get_ns();
    (*r).tw = tw;
    (*r).kind = k;
    (*r).jiffies = bpf_jiffies64();
    (*r).cpu = bpf_get_smp_processor_id() as u16;
    let timer = tw + cfg.tw_timer as u64;
    (*r).expires = read(timer, cfg.timer_expires).unwrap_or(0);
    let sub: u8 = read(tw, cfg.tw_substate).unwrap_or(0);
    (*r).substate = sub;
    ok &= sub != 0;
    (*r).ts_recent_stamp = read(tw, cfg.tw_ts_recent_stamp).unwrap_or(0);
    (*r).flags = 0;
    (*r).entry_stamp = 0;
    if cfg.tw_entry_stamp != NO_FIELD {
        (*r).entry_stamp = read(tw, cfg.tw_entry_stamp).unwrap_or(0);
        (*r).flags = flags::ENTRY_STAMP;
    }
    (*r).aux = 0;
    (*r).aux2 = 0;
    if !ok {
        bump(counter::READ_ERRORS);
    }
}

#[inline(always)]
unsafe fn set_current(r: *mut TwRecord) {
    (*r).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (*r).comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// The tuple key of a record (reads only the fields `fill_tuple` writes).
#[inline(always)]
unsafe fn flow_key(r: *const TwRecord) -> FlowKey {
    FlowKey {
        netns: (*r).netns,
        family: (*r).family as u16,
        lport: (*r).lport,
        rport: (*r).rport,
        _pad: 0,
        laddr: (*r).laddr,
        raddr: (*r).raddr,
    }
}

/// Per CPU: the last timewait birth (slot 0) and the last timewait timer detach (slot 1), so
/// records that follow on the same CPU can be correlated in the kernel (and only the useful
/// ones sent).
#[map]
static LAST_TW: PerCpuArray<LastTw> = PerCpuArray::with_max_entries(2, 0);
const LAST_BIRTH: u32 = 0;
const LAST_CANCEL: u32 = 1;
/// How close in time correlated events on one CPU must be. The kernel paths involved run back
/// to back (microseconds natively; up to milliseconds on an emulated CPU such as QEMU's TCG).
/// Identity is always checked as well (the same flow, the same socket), so the window only
/// guards against stale memory and can be generous.
const SAME_FLOW_NS: u64 = 100_000_000;

/// connect() in progress per task (pid_tgid): CLOSE → SYN_SENT runs in connect() before the
/// local port is chosen, and a timewait socket reused for it is detached moments later in the
/// same task.
#[map]
static CONNECTING: LruHashMap<u64, Connecting> = LruHashMap::with_max_entries(16384, 0);

/// Timewait sockets born in their FIN_WAIT2 substate and not yet seen promoted (LRU: a
/// socket that dies unpromoted ages out).
#[map]
static FIN_WAIT2_TWS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

#[inline(always)]
fn remember(slot: u32, tw: u64, r: &TwRecord, seq: u64) {
    if let Some(p) = LAST_TW.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, exclusive while we run.
        unsafe {
            (*p).ts_ns = r.ts_ns;
            (*p).tw = tw;
            (*p).seq = seq;
            (*p).key = flow_key(r);
        }
    }
}

/// Per CPU: how many timer starts and detaches (of any timer) this CPU has run.
#[map]
static TIMER_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn next_seq() -> u64 {
    match TIMER_SEQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, exclusive while we run.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}

/// Whether the start numbered `seq` of `tw`'s timer re-arms it: `__mod_timer` detaches a
/// pending timer and enqueues it again under the timer base lock with interrupts off, so the
/// two are consecutive on this CPU with no other timer event between. A new timewait socket on
/// the memory of one that just died (the slab reuses it at once) always has timer events
/// between (its connection's own timers), and another flow.
#[inline(always)]
fn is_rearm(tw: u64, seq: u64, key: &FlowKey) -> bool {
    match LAST_TW.get_ptr(LAST_CANCEL) {
        // SAFETY: per-CPU slot pointer from the map.
        Some(p) => unsafe {
            (*p).tw == tw && seq != 0 && (*p).seq.wrapping_add(1) == seq && (*p).key == *key
        },
        None => false,
    }
}

/// The per-CPU memory of `slot` if it is recent (a pointer: see `last_is`).
#[inline(always)]
fn recent(slot: u32, now: u64, window: u64) -> Option<*const LastTw> {
    let p = LAST_TW.get_ptr(slot)?;
    // SAFETY: per-CPU slot pointer from the map.
    let ts = unsafe { (*p).ts_ns };
    (ts != 0 && now.wrapping_sub(ts) < window).then_some(p as *const LastTw)
}

/// Whether the per-CPU memory of `slot` is socket `tw`, recently (`SAME_FLOW_NS`). (Kept free of `Option`s of
/// large structs: LLVM can leave a register uninitialised on the `None` path, which the
/// verifier rejects.)
#[inline(always)]
fn last_is(slot: u32, tw: u64, now: u64) -> bool {
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
unsafe fn cancel_flags(cfg: &Config, tw: u64, r: &TwRecord) -> u8 {
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
    if cfg.net_ns_ref != NO_FIELD {
        let net: u64 = read(tw, cfg.skc_net).unwrap_or(0);
        if net != 0 && read::<u32>(net, cfg.net_ns_ref).unwrap_or(1) == 0 {
            f |= flags::NETNS_DYING;
        }
    }
    f
}

#[inline(always)]
fn on_tw_timer(ctx: &BtfTracePointContext, k: u8) -> u32 {
    let timer: u64 = ctx.arg(0);
    // SAFETY: every kernel memory access goes through bpf_probe_read_kernel; `r` points into a
    // ring-buffer reservation of size_of::<TwRecord>() bytes.
    unsafe {
        // Every start and detach of every timer on this CPU is counted, before the filter:
        // a re-arm is the only way a timewait timer's detach and start are consecutive.
        let seq = if k == kind::TIMER_EXPIRE {
            0
        } else {
            next_seq()
        };
        // The filter reads only the config fields it needs, and `function` once.
        let handler: u64 = hot!(tw_timer_handler);
        let function: u64 = match read(timer, hot!(timer_function)) {
            Ok(f) => f,
            Err(_) => return 0,
        };
        if function != handler || handler == 0 {
            if k == kind::TIMER_START {
                let rh: u64 = hot!(reqsk_timer_handler);
                if rh != 0 && function == rh {
                    let cfg = CONFIG.load();
                    on_reqsk_timer(&cfg, timer);
                }
            }
            return 0;
        }
        let cfg = CONFIG.load();
        let tw = timer - cfg.tw_timer as u64;
        let Some(mut entry) = EVENTS.reserve::<TwRecord>(0) else {
            bump(counter::LOST);
            return 0;
        };
        let r = entry.as_mut_ptr();
        fill_tw(&cfg, tw, k, r);
        set_current(r);
        if k == kind::TIMER_START {
            let key = flow_key(r);
            if is_rearm(tw, seq, &key) {
                (*r).flags |= flags::REARM;
            } else {
                // A birth: name the closing process if we saw it close.
                if let Some(c) = CLOSERS.get(&key) {
                    (*r).pid = c.pid;
                    (*r).comm = c.comm;
                    (*r).flags |= flags::CLOSER;
                    let _ = CLOSERS.remove(&key);
                }
                remember(LAST_BIRTH, tw, &*r, seq);
                if (*r).substate == TCP_FIN_WAIT2 {
                    let _ = FIN_WAIT2_TWS.insert(&tw, &0, 0);
                }
            }
        } else if k == kind::TIMER_CANCEL {
            (*r).flags |= cancel_flags(&cfg, tw, &*r);
            remember(LAST_CANCEL, tw, &*r, seq);
        }
        entry.submit(wakeup_flags());
    }
    0
}

/// A request socket's timer armed (a SYN became a request socket) right after the detach of a
/// timewait socket of the same flow on this CPU: the SYN was accepted into TIME_WAIT
/// (TCP_TW_SYN). Compared here, not only in userspace: a client that reuses a timewait socket
/// for its connect() detaches it just before its SYN reaches the (local) listener, so without
/// the flow check every such connection would cost a record.
#[inline(always)]
unsafe fn on_reqsk_timer(cfg: &Config, timer: u64) {
    if cfg.reqsk_timer_handler == 0 {
        return;
    }
    let function: u64 = read(timer, cfg.timer_function).unwrap_or(0);
    if function != cfg.reqsk_timer_handler {
        return;
    }
    let Some(last) = recent(LAST_CANCEL, bpf_ktime_get_ns(), SAME_FLOW_NS) else {
        return;
    };
    let req = timer - cfg.rsk_timer as u64;
    let mut slot = core::mem::MaybeUninit::<TwRecord>::uninit();
    let r = slot.as_mut_ptr();
    fill_tuple(cfg, req, r);
    if (*last).key != flow_key(r) {
        return;
    }
    emit_sock(cfg, req, kind::REQSK_START, 0, 0, 0, 0);
}

/// Writes a record for a full or request socket (not a timewait one): tuple, netns, current.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn emit_sock(cfg: &Config, sk: u64, k: u8, aux: u32, expires: u64, f: u8, stamp: u32) {
    let Some(mut entry) = EVENTS.reserve::<TwRecord>(0) else {
        bump(counter::LOST);
        return;
    };
    let r = entry.as_mut_ptr();
    if !fill_tuple(cfg, sk, r) {
        bump(counter::READ_ERRORS);
    }
    if k != kind::REQSK_START {
        full_sock_port(cfg, sk, r);
    }
    (*r).ts_ns = bpf_ktime_get_ns();
    (*r).tw = sk;
    (*r).expires = expires;
    (*r).jiffies = bpf_jiffies64();
    (*r).entry_stamp = stamp;
    (*r).ts_recent_stamp = 0;
    (*r).kind = k;
    (*r).substate = read(sk, cfg.skc_state).unwrap_or(0);
    (*r).flags = f;
    (*r).cpu = bpf_get_smp_processor_id() as u16;
    (*r).aux2 = 0;
    (*r).aux = aux;
    set_current(r);
    entry.submit(wakeup_flags());
}

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

/// TCP state changes that matter to TIME_WAIT:
/// - ESTABLISHED → FIN_WAIT1: who closed (runs in the closing task; the timewait socket is
///   born later in softirq context);
/// - CLOSE → SYN_SENT: a connect() in progress (its reuse of a timewait socket follows);
/// - SYN_SENT → CLOSE before any segment left: connect() found no local port;
/// - FIN_WAIT2/CLOSING → CLOSE with no timewait birth just before on this CPU, while the
///   namespace's timewait count is at tcp_max_tw_buckets: the overflow drop.
const FIN_WAIT2: i32 = TCP_FIN_WAIT2 as i32;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let sk: u64 = ctx.arg(0);
    // SAFETY: kernel reads go through bpf_probe_read_kernel.
    unsafe {
        // CONFIG is loaded only on the 3–4 transitions (of ~10 per connection) that use it.
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
    // Not zeroed: a 112-byte memset on the BPF stack is a byte-at-a-time loop; fill_tuple
    // writes every field flow_key reads.
    let mut slot = core::mem::MaybeUninit::<TwRecord>::uninit();
    let r = slot.as_mut_ptr();
    if !fill_tuple(cfg, sk, r) {
        bump(counter::READ_ERRORS);
        return;
    }
    let closer = Closer {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let _ = CLOSERS.insert(&flow_key(r), &closer, 0);
}

#[inline(always)]
unsafe fn on_connect(cfg: &Config, sk: u64) {
    let mut slot = core::mem::MaybeUninit::<TwRecord>::uninit();
    let r = slot.as_mut_ptr();
    fill_tuple(cfg, sk, r);
    let c = Connecting {
        ts_ns: bpf_ktime_get_ns(),
        netns: (*r).netns,
        rport: (*r).rport,
        flags: 0,
        raddr: (*r).raddr,
        refused: 0,
        _pad: 0,
        last_refused: 0,
    };
    let _ = CONNECTING.insert(&bpf_get_current_pid_tgid(), &c, 0);
}

#[inline(always)]
unsafe fn on_connect_end(cfg: &Config, sk: u64) {
    let key = bpf_get_current_pid_tgid();
    // What the function tier counted during this connect(), if it ran (copied out: the entry
    // goes now).
    let (cflags, refused, last, started) = match CONNECTING.get(&key) {
        Some(c) => (
            c.flags as u8 & flags::CANDIDATES,
            c.refused,
            c.last_refused,
            c.ts_ns,
        ),
        None => (0, 0, 0, 0),
    };
    let _ = CONNECTING.remove(&key);
    if cfg.tcp_segs_out == NO_FIELD {
        return;
    }
    // A refused or timed-out connect sent its SYN; one that never found a port sent nothing.
    if read::<u32>(sk, cfg.tcp_segs_out).unwrap_or(1) == 0 {
        // The reuse decisions were made between connect()'s start and now: its start, in
        // milliseconds like tw_entry_stamp, lets userspace judge them at the right moment.
        let started_ms = if started != 0 {
            (started / 1_000_000) as u32
        } else {
            0
        };
        emit_sock(
            cfg,
            sk,
            kind::CONNECT_FAIL,
            refused,
            last,
            cflags,
            started_ms,
        );
    }
}

#[inline(always)]
unsafe fn on_done(cfg: &Config, sk: u64) {
    if cfg.net_tw_refcount == NO_FIELD || cfg.net_max_tw_buckets == NO_FIELD {
        return;
    }
    // The same test inet_twsk_alloc() makes before refusing to allocate; cheap, so first:
    // almost every close is far from the limit.
    let net: u64 = read(sk, cfg.skc_net).unwrap_or(0);
    if net == 0 {
        return;
    }
    let count = read::<u32>(net, cfg.net_tw_refcount)
        .unwrap_or(0)
        .wrapping_sub(1);
    let max = read::<i32>(net, cfg.net_max_tw_buckets).unwrap_or(i32::MAX);
    if max < 0 || (count as i64) < max as i64 {
        return;
    }
    // At the limit: was a timewait socket born for this very connection just now?
    let mut slot = core::mem::MaybeUninit::<TwRecord>::uninit();
    let r = slot.as_mut_ptr();
    fill_tuple(cfg, sk, r);
    full_sock_port(cfg, sk, r);
    if let Some(b) = recent(LAST_BIRTH, bpf_ktime_get_ns(), SAME_FLOW_NS) {
        if (*b).key == flow_key(r) {
            return; // the normal path (the last free slot was just taken)
        }
    }
    emit_sock(cfg, sk, kind::OVERFLOW, count, max as u64, 0, 0);
}

/// `skb:kfree_skb` with a timewait receiver: a PAWS rejection (the NAT symptom), or the
/// segment that just killed the socket detached on this CPU (an RST assassination, or a
/// segment it answered with RST). Other drops by timewait sockets (old duplicates, ACKed
/// FINs) are not sent.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> u32 {
    let rx_sk: u64 = ctx.arg(3);
    if rx_sk == 0 {
        return 0;
    }
    let cfg = CONFIG.load();
    // SAFETY: kernel reads go through bpf_probe_read_kernel.
    unsafe {
        if read::<u8>(rx_sk, cfg.skc_state).unwrap_or(0) != TCP_TIME_WAIT {
            return 0;
        }
        let reason: u32 = ctx.arg(2);
        let killed = last_is(LAST_CANCEL, rx_sk, bpf_ktime_get_ns());
        let skb: u64 = ctx.arg(0);
        let head: u64 = read(skb, cfg.skb_head).unwrap_or(0);
        let th: u16 = read(skb, cfg.skb_transport_header).unwrap_or(0);
        let tcp_flags: u8 = if head != 0 {
            read(head + th as u64, 13).unwrap_or(0)
        } else {
            0
        };
        // The peer's FIN promoting a FIN_WAIT2-substate socket to TIME_WAIT: the re-arm that
        // goes with it is invisible when the new expiry lands in the same timer-wheel bucket.
        let promoted = tcp_flags as u16 & TCPF_FIN != 0
            && FIN_WAIT2_TWS.get(&rx_sk).is_some()
            && read::<u8>(rx_sk, cfg.tw_substate).unwrap_or(0) == TCP_TIME_WAIT;
        if promoted {
            let _ = FIN_WAIT2_TWS.remove(&rx_sk);
        }
        if reason != cfg.drop_tw_paws && !killed && !promoted {
            return 0;
        }
        let Some(mut entry) = EVENTS.reserve::<TwRecord>(0) else {
            bump(counter::LOST);
            return 0;
        };
        let r = entry.as_mut_ptr();
        fill_tw(&cfg, rx_sk, kind::TW_DROP, r);
        set_current(r);
        (*r).aux = reason;
        (*r).aux2 = tcp_flags as u16;
        if reason == cfg.drop_tw_paws {
            (*r).flags |= flags::PAWS;
        }
        entry.submit(wakeup_flags());
    }
    0
}

/// `tcp:tcp_send_reset`: a timewait socket answering with RST (it dies next), or an active
/// reset of a full socket with no segment to answer (SO_LINGER {1,0}, data unread at close,
/// abort): a connection that ends without TIME_WAIT.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> u32 {
    on_send_reset(ctx.arg(0), ctx.arg(1), ctx.arg(2))
}

/// The same for kernels whose `tcp_send_reset` has no `reason` argument yet (before 6.10):
/// the loader's fallback when the program above is refused.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_2(ctx: BtfTracePointContext) -> u32 {
    on_send_reset(ctx.arg(0), ctx.arg(1), 0)
}

#[inline(always)]
fn on_send_reset(sk: u64, skb: u64, reason: u32) -> u32 {
    if sk == 0 {
        return 0;
    }
    let cfg = CONFIG.load();
    // SAFETY: kernel reads go through bpf_probe_read_kernel.
    unsafe {
        let state: u8 = read(sk, cfg.skc_state).unwrap_or(0);
        if state == TCP_TIME_WAIT {
            let Some(mut entry) = EVENTS.reserve::<TwRecord>(0) else {
                bump(counter::LOST);
                return 0;
            };
            let r = entry.as_mut_ptr();
            fill_tw(&cfg, sk, kind::TW_RST_SENT, r);
            set_current(r);
            (*r).aux = reason;
            entry.submit(wakeup_flags());
        } else if skb == 0 {
            emit_sock(&cfg, sk, kind::ABORT, reason, 0, 0, 0);
        }
    }
    0
}

#[repr(C)]
pub struct BpfIterMeta {
    seq: *mut seq_file,
    session_id: u64,
    seq_num: u64,
}

#[repr(C)]
pub struct BpfIterTcp {
    meta: *mut BpfIterMeta,
    sk_common: u64,
    uid: u32,
}

/// Start-up snapshot: every timewait socket in the iterating task's network namespace, written
/// as binary `TwRecord`s to the iterator's seq_file, then one `SNAPSHOT_END` record (the
/// kernel calls the program once more with a NULL socket at the end).
///
/// aya-ebpf has no macro for iterators, so the section is named by hand.
#[no_mangle]
#[link_section = "iter/tcp"]
pub fn snapshot_tcp(ctx: *mut BpfIterTcp) -> i32 {
    let cfg = CONFIG.load();
    // SAFETY: `ctx` is the iterator context the verifier typed from bpf_iter__tcp; `meta` and
    // `seq` are trusted kernel pointers (direct loads are required for bpf_seq_write's
    // argument check). Socket fields go through bpf_probe_read_kernel.
    unsafe {
        let meta = (*ctx).meta;
        let seq = (*meta).seq;
        let skc = (*ctx).sk_common;
        let mut r: TwRecord = core::mem::zeroed();
        r.ts_ns = bpf_ktime_get_ns();
        r.jiffies = bpf_jiffies64();
        if skc == 0 {
            r.kind = kind::SNAPSHOT_END;
        } else {
            let state: u8 = read(skc, cfg.skc_state).unwrap_or(0);
            if ITER_MODE.get(0).copied().unwrap_or(0) == census::MODE_COUNT {
                let mut slot = state as u32;
                if state == TCP_TIME_WAIT {
                    let sub: u8 = read(skc, cfg.tw_substate).unwrap_or(0);
                    if sub == TCP_FIN_WAIT2 {
                        slot = census::TW_FIN_WAIT2;
                    }
                }
                if let Some(c) = CENSUS.get_ptr_mut(slot) {
                    *c += 1; // one iterator runs at a time: no concurrent writer
                }
                return 0;
            }
            if state != TCP_TIME_WAIT {
                return 0;
            }
            fill_tw(&cfg, skc, kind::SNAPSHOT, &mut r);
        }
        bpf_seq_write(
            seq,
            &r as *const TwRecord as *const _,
            TwRecord::SIZE as u32,
        );
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
