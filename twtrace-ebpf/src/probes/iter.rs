//! `iter/tcp`: the start-up snapshot of timewait sockets, and the state census.

use aya_ebpf::{
    bindings::seq_file,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_seq_write},
    macros::map,
    maps::Array,
};
use twtrace_common::{census, kind, TwRecord, TCP_FIN_WAIT2, TCP_TIME_WAIT};

use crate::record::{fill_tw, read};
use crate::CONFIG;

/// Socket counts per TCP state for one iterator run (userspace zeroes it before each run).
#[map]
static CENSUS: Array<u64> = Array::with_max_entries(census::SLOTS, 0);

/// What the iterator does: `census::MODE_SNAPSHOT` or `census::MODE_COUNT` (slot 0).
#[map]
static ITER_MODE: Array<u32> = Array::with_max_entries(1, 0);

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
            let mode = ITER_MODE.get(0).copied().unwrap_or(0);
            if mode != census::MODE_SNAPSHOT {
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
                if mode == census::MODE_COUNT {
                    return 0;
                }
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
