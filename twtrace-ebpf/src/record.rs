//! Writing records: the one reserve → fill → submit path, and the readers that fill a record
//! from a timewait socket, a full socket, the current task and the socket's namespace.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_jiffies64,
    bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
};
use twtrace_common::{
    counter, flags, netconf, Config, FlowKey, NetConf, TwRecord, AF_INET6, NO_FIELD,
};

use aya_ebpf::maps::ring_buf::RingBufEntry;

use crate::{COUNTERS, EVENTS};

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

/// Reserves one record in the ring buffer; a failed reservation is counted
/// (`counter::LOST`), never silent. The caller writes every field of it and hands it to
/// [`submit`]. (Not a function taking a closure: closures are not inlined and each becomes a
/// BPF subprogram with its own stack frame, which older kernels without private stacks add to
/// the program's: 6.1 refused timer_start at 640 bytes.)
#[inline(always)]
pub fn reserve() -> Option<RingBufEntry<TwRecord>> {
    let entry = EVENTS.reserve::<TwRecord>(0);
    if entry.is_none() {
        bump(counter::LOST);
    }
    entry
}

/// Submits a record [`reserve`] gave, waking the reader only when the ring fills up.
#[inline(always)]
pub fn submit(entry: RingBufEntry<TwRecord>) {
    entry.submit(wakeup_flags());
}

#[inline(always)]
pub fn bump(idx: u32) {
    if let Some(v) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *v += 1 };
    }
}

/// Counts a failed correlation-map update ([`counter::MAP_ERRORS`]): the tracer goes on,
/// but what the entry was to carry is known to be missing, not silently absent.
#[inline(always)]
pub fn noted<E>(update: Result<(), E>) {
    if update.is_err() {
        bump(counter::MAP_ERRORS);
    }
}

#[inline(always)]
pub unsafe fn read<T>(base: u64, off: u32) -> Result<T, i32> {
    bpf_probe_read_kernel((base + off as u64) as *const T)
}

/// A scalar field (1, 2, 4 or 8 bytes) of a BTF-typed tracepoint argument (a `tp_btf`
/// program's own pointer argument, or a pointer field loaded from one this way, which the
/// verifier types from BTF too; never one derived by arithmetic), loaded directly instead of
/// through the `bpf_probe_read_kernel` helper: a plain load the JIT guards against faults (a
/// fault reads 0), several times cheaper than a helper call. The verifier checks the field
/// against the type's BTF, so `off` must be a constant it knows: a `CONFIG` field (`.rodata`,
/// frozen by the loader, so its loads are constants).
#[inline(always)]
pub unsafe fn load<T>(arg: u64, off: u32) -> T {
    core::ptr::read_volatile((arg + off as u64) as *const T)
}

/// One field of CONFIG, read alone (volatile like `Global::load`, but 4–8 bytes instead of
/// the whole struct): for the filters that run on hooks that fire for much more than
/// timewait sockets.
macro_rules! hot {
    ($f:ident) => {{
        let p = &crate::CONFIG as *const aya_ebpf::Global<twtrace_common::Config>
            as *const twtrace_common::Config;
        core::ptr::read_volatile(&raw const (*p).$f)
    }};
}
pub(crate) use hot;

/// How a reader gets at kernel memory: [`Helper`] for any address, [`Direct`] only for a
/// `tp_btf` program's own BTF-typed argument and the pointers loaded from it (see [`load`]).
/// A type parameter rather than a flag, so each program gets the one form it can use and the
/// readers below are written once.
pub trait Access {
    /// One field at `base + off`; a failed read is an error ([`Helper`]) or 0 ([`Direct`]).
    unsafe fn get<T>(base: u64, off: u32) -> Result<T, i32>;
}

/// Reads through `bpf_probe_read_kernel`: any kernel address.
pub struct Helper;

/// Direct loads (see [`load`]).
pub struct Direct;

impl Access for Helper {
    #[inline(always)]
    unsafe fn get<T>(base: u64, off: u32) -> Result<T, i32> {
        read(base, off)
    }
}

impl Access for Direct {
    #[inline(always)]
    unsafe fn get<T>(base: u64, off: u32) -> Result<T, i32> {
        Ok(load(base, off))
    }
}

/// The `struct net` of a `sock_common` (0 if unreadable).
#[inline(always)]
pub unsafe fn net_of<A: Access>(cfg: &Config, skc: u64) -> u64 {
    A::get(skc, cfg.skc_net).unwrap_or(0)
}

/// Reads the tuple and netns of a `sock_common` (a full socket or a timewait socket) into `r`.
/// Returns false if any read failed; fields that failed are zero.
#[inline(always)]
pub unsafe fn fill_tuple<A: Access>(cfg: &Config, skc: u64, r: *mut TwRecord) -> bool {
    let mut ok = true;
    let family: u16 = A::get(skc, cfg.skc_family).unwrap_or(0);
    let num: u16 = A::get(skc, cfg.skc_num).unwrap_or(0);
    let dport: u16 = A::get(skc, cfg.skc_dport).unwrap_or(0);
    let net = net_of::<A>(cfg, skc);
    (*r).family = family as u8;
    (*r).lport = num;
    (*r).rport = u16::from_be(dport);
    (*r).netns = if net != 0 {
        A::get(net, cfg.net_ns_inum).unwrap_or(0)
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
        // As u32, not [u8; 4]: one 4-byte load, the size of the field the verifier checks a
        // direct load against.
        let l: u32 = A::get(skc, cfg.skc_rcv_saddr).unwrap_or(0);
        let d: u32 = A::get(skc, cfg.skc_daddr).unwrap_or(0);
        ((&raw mut (*r).laddr) as *mut [u8; 4]).write(l.to_ne_bytes());
        ((&raw mut (*r).raddr) as *mut [u8; 4]).write(d.to_ne_bytes());
    }
    ok && family != 0 && net != 0
}

/// A full socket on its way to CLOSE may already have left the bind hash (skc_num = 0, e.g.
/// after its timewait socket took the port over); its inet_sport still holds the port.
/// Only for full sockets: request and timewait sockets have no inet_sport. Always through the
/// helper: inet_sport lies past `struct sock`, beyond what the verifier lets a direct load of
/// a `struct sock *` argument reach (and this runs only when the port is gone).
#[inline(always)]
pub unsafe fn full_sock_port(cfg: &Config, sk: u64, r: *mut TwRecord) {
    if (*r).lport == 0 {
        (*r).lport = u16::from_be(read(sk, cfg.inet_sport).unwrap_or(0));
    }
}

/// The fields every record has: time, kind, CPU, and no namespace settings yet.
#[inline(always)]
unsafe fn fill_common(r: *mut TwRecord, k: u8) {
    (*r).ts_ns = bpf_ktime_get_ns();
    (*r).kind = k;
    (*r).jiffies = bpf_jiffies64();
    (*r).cpu = bpf_get_smp_processor_id() as u16;
    (*r).conf = NetConf::NONE;
    (*r).cgroup = 0;
}

/// The cgroup (v2) id of a full socket's owner (`sk_cgrp_data`; 0 if unknown). Only for full
/// sockets: timewait and request sockets have no cgroup data.
#[inline(always)]
pub unsafe fn sock_cgroup<A: Access>(cfg: &Config, sk: u64) -> u64 {
    if cfg.sock_cgroup == NO_FIELD || cfg.cgroup_kn == NO_FIELD || cfg.kn_id == NO_FIELD {
        return 0;
    }
    let cgrp: u64 = A::get(sk, cfg.sock_cgroup).unwrap_or(0);
    if cgrp == 0 {
        return 0;
    }
    let kn: u64 = A::get(cgrp, cfg.cgroup_kn).unwrap_or(0);
    if kn == 0 {
        return 0;
    }
    A::get(kn, cfg.kn_id).unwrap_or(0)
}

/// The current task's network namespace (`struct net`; 0 if unknown).
#[inline(always)]
pub unsafe fn current_net(cfg: &Config) -> u64 {
    if cfg.task_nsproxy == NO_FIELD || cfg.nsproxy_net == NO_FIELD {
        return 0;
    }
    let task = aya_ebpf::helpers::bpf_get_current_task();
    let nsproxy: u64 = read(task, cfg.task_nsproxy).unwrap_or(0);
    if nsproxy == 0 {
        return 0;
    }
    read(nsproxy, cfg.nsproxy_net).unwrap_or(0)
}

/// Fills every field of `r` from the timewait socket `tw`. Every byte is written: ring buffer
/// memory is not zeroed by the kernel.
#[inline(always)]
pub unsafe fn fill_tw(cfg: &Config, tw: u64, k: u8, r: *mut TwRecord) {
    let mut ok = fill_tuple::<Helper>(cfg, tw, r);
    fill_common(r, k);
    (*r).tw = tw;
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

/// Fills every field of `r` for a full or request socket (not a timewait one): tuple, netns,
/// its state in `substate`, the current task; `aux`, `aux2`, `expires`, `entry_stamp` and
/// `flags` as given.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn fill_sock(
    cfg: &Config,
    sk: u64,
    k: u8,
    r: *mut TwRecord,
    full: bool,
    aux: u32,
    aux2: u16,
    expires: u64,
) {
    if !fill_tuple::<Helper>(cfg, sk, r) {
        bump(counter::READ_ERRORS);
    }
    fill_common(r, k);
    if full {
        full_sock_port(cfg, sk, r);
        (*r).cgroup = sock_cgroup::<Helper>(cfg, sk);
    }
    (*r).tw = sk;
    (*r).expires = expires;
    (*r).entry_stamp = 0;
    (*r).ts_recent_stamp = 0;
    (*r).substate = read(sk, cfg.skc_state).unwrap_or(0);
    (*r).flags = 0;
    (*r).aux2 = aux2;
    (*r).aux = aux;
    set_current(r);
}

/// Fills every field of `r` for a record about the current task, not a socket: no tuple but
/// the family; `aux` as given; the netns is the caller's to set.
#[inline(always)]
pub unsafe fn fill_task(r: *mut TwRecord, k: u8, family: u8, aux: u32) {
    fill_common(r, k);
    (*r).tw = 0;
    (*r).expires = 0;
    (*r).netns = 0;
    (*r).entry_stamp = 0;
    (*r).ts_recent_stamp = 0;
    (*r).family = family;
    (*r).substate = 0;
    (*r).flags = 0;
    (*r).lport = 0;
    (*r).rport = 0;
    (*r).aux2 = 0;
    (*r).aux = aux;
    (*r).laddr = [0; 16];
    (*r).raddr = [0; 16];
    set_current(r);
}

#[inline(always)]
pub unsafe fn set_current(r: *mut TwRecord) {
    (*r).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (*r).comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Reads the namespace's TIME_WAIT settings from `net` (a `struct net`) into `r.conf`, as they
/// are at this moment: the values the kernel applies to the decision this record reports.
/// Only for the few records that need them (a handful of reads each).
#[inline(always)]
pub unsafe fn fill_conf(cfg: &Config, net: u64, r: *mut TwRecord) {
    let c = &raw mut (*r).conf;
    if net == 0 {
        return;
    }
    let mut valid = 0;
    if cfg.net_tw_reuse != NO_FIELD {
        if let Ok(v) = read::<u8>(net, cfg.net_tw_reuse) {
            (*c).tw_reuse = v;
            valid |= netconf::TW_REUSE;
        }
    }
    if cfg.net_tw_reuse_delay != NO_FIELD {
        if let Ok(v) = read::<u32>(net, cfg.net_tw_reuse_delay) {
            (*c).tw_reuse_delay_ms = v;
            valid |= netconf::TW_REUSE_DELAY;
        }
    }
    if cfg.net_timestamps != NO_FIELD {
        if let Ok(v) = read::<u8>(net, cfg.net_timestamps) {
            (*c).timestamps = v;
            valid |= netconf::TIMESTAMPS;
        }
    }
    if cfg.net_port_range != NO_FIELD {
        let range = if cfg.port_range_ints != 0 {
            read::<[i32; 2]>(net, cfg.net_port_range).map(|[lo, hi]| (lo as u16, hi as u16))
        } else {
            read::<u32>(net, cfg.net_port_range).map(|v| (v as u16, (v >> 16) as u16))
        };
        if let Ok((lo, hi)) = range {
            (*c).port_lo = lo;
            (*c).port_hi = hi;
            valid |= netconf::PORT_RANGE;
        }
    }
    if cfg.net_tw_refcount != NO_FIELD && cfg.net_max_tw_buckets != NO_FIELD {
        // The same quantities inet_twsk_alloc() compares: refcount - 1 >= max.
        if let (Ok(n), Ok(max)) = (
            read::<u32>(net, cfg.net_tw_refcount),
            read::<i32>(net, cfg.net_max_tw_buckets),
        ) {
            (*c).tw_count = n.wrapping_sub(1);
            (*c).max_tw_buckets = max;
            valid |= netconf::TW_BUCKETS;
        }
    }
    (*c).valid = valid;
}

/// The tuple key of a record (reads only the fields `fill_tuple` writes).
#[inline(always)]
pub unsafe fn flow_key(r: *const TwRecord) -> FlowKey {
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

/// The tuple key of a socket, read onto the stack (for map lookups, no record sent), and
/// whether every read succeeded (failed fields are zero).
#[inline(always)]
pub unsafe fn sock_key<A: Access>(cfg: &Config, skc: u64, full: bool) -> (FlowKey, bool) {
    // Not zeroed: a record-sized memset on the BPF stack is a byte-at-a-time loop; fill_tuple
    // writes every field flow_key reads.
    let mut slot = core::mem::MaybeUninit::<TwRecord>::uninit();
    let r = slot.as_mut_ptr();
    let ok = fill_tuple::<A>(cfg, skc, r);
    if full {
        full_sock_port(cfg, skc, r);
    }
    (flow_key(r), ok)
}
