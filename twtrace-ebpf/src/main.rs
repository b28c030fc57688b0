//! twtrace's kernel programs.
//!
//! One program per hook, each short: filter first (a timer is only interesting when its
//! `function` is `tw_timer_handler`), then write one fixed-size record in place into the ring
//! buffer. Deciding what a record means (birth, re-arm, expiry, early death) is userspace's
//! job (`twtrace::lifecycle`), where it can be unit-tested.
//!
//! No structure layout is compiled in: every offset comes from `CONFIG`, which userspace fills
//! from the running kernel's BTF before loading.
#![no_std]
#![no_main]

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
    census, counter, flags, kind, Closer, Config, FlowKey, TwRecord, AF_INET6, NO_FIELD,
    TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_TIME_WAIT,
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

/// The timewait socket owning `timer`, if `timer` is a timewait timer.
#[inline(always)]
unsafe fn tw_of_timer(cfg: &Config, timer: u64) -> Option<u64> {
    let function: u64 = read(timer, cfg.timer_function).ok()?;
    if function != cfg.tw_timer_handler || cfg.tw_timer_handler == 0 {
        return None;
    }
    Some(timer - cfg.tw_timer as u64)
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
    (*r).netns = if net != 0 { read(net, cfg.net_ns_inum).unwrap_or(0) } else { 0 };
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
    (*r)._pad = [0; 6];
    if !ok {
        bump(counter::READ_ERRORS);
    }
}

#[inline(always)]
unsafe fn set_current(r: *mut TwRecord) {
    (*r).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (*r).comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

#[inline(always)]
fn flow_key(r: &TwRecord) -> FlowKey {
    FlowKey {
        netns: r.netns,
        family: r.family as u16,
        lport: r.lport,
        rport: r.rport,
        _pad: 0,
        laddr: r.laddr,
        raddr: r.raddr,
    }
}

#[inline(always)]
fn on_tw_timer(ctx: &BtfTracePointContext, k: u8) -> u32 {
    let cfg = CONFIG.load();
    let timer: u64 = ctx.arg(0);
    // SAFETY: every kernel memory access goes through bpf_probe_read_kernel; `r` points into a
    // ring-buffer reservation of size_of::<TwRecord>() bytes.
    unsafe {
        let Some(tw) = tw_of_timer(&cfg, timer) else {
            return 0;
        };
        let Some(mut entry) = EVENTS.reserve::<TwRecord>(0) else {
            bump(counter::LOST);
            return 0;
        };
        let r = entry.as_mut_ptr();
        fill_tw(&cfg, tw, k, r);
        set_current(r);
        if k == kind::TIMER_START {
            // A birth: name the closing process if we saw it close. Re-arms find nothing.
            let key = flow_key(&*r);
            if let Some(c) = CLOSERS.get(&key) {
                (*r).pid = c.pid;
                (*r).comm = c.comm;
                (*r).flags |= flags::CLOSER;
                let _ = CLOSERS.remove(&key);
            }
        }
        entry.submit(0);
    }
    0
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

/// `timer_init` fires before `timer_setup` stores the new function, so `function` still holds
/// what the memory held before. The timewait slab is SLAB_TYPESAFE_BY_RCU (its free pointer
/// lives outside the object), so a stale `tw_timer_handler` here means a freed timewait socket's
/// memory is being reused for a new one: proof that the old one died.
#[btf_tracepoint(function = "timer_init")]
pub fn timer_init(ctx: BtfTracePointContext) -> u32 {
    on_tw_timer(&ctx, kind::TIMER_INIT)
}

/// Remembers who closed each connection: ESTABLISHED → FIN_WAIT1 runs in the closing task
/// (close() or shutdown()), while the timewait socket is born later in softirq context.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    if oldstate != TCP_ESTABLISHED || newstate != TCP_FIN_WAIT1 {
        return 0;
    }
    let cfg = CONFIG.load();
    let sk: u64 = ctx.arg(0);
    // SAFETY: kernel reads go through bpf_probe_read_kernel.
    unsafe {
        let mut r: TwRecord = core::mem::zeroed();
        if !fill_tuple(&cfg, sk, &mut r) {
            bump(counter::READ_ERRORS);
            return 0;
        }
        let closer = Closer {
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        let _ = CLOSERS.insert(&flow_key(&r), &closer, 0);
    }
    0
}

#[repr(C)]
struct BpfIterMeta {
    seq: *mut seq_file,
    session_id: u64,
    seq_num: u64,
}

#[repr(C)]
struct BpfIterTcp {
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
        bpf_seq_write(seq, &r as *const TwRecord as *const _, TwRecord::SIZE as u32);
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

