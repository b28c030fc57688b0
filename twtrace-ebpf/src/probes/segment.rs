//! Segments and timewait sockets: `skb:kfree_skb` (PAWS rejects, the segment that kills a
//! timewait socket, the FIN that promotes one) and `tcp:tcp_send_reset` (a timewait socket
//! answering with RST; an owner's abort of a full socket).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use twtrace_common::{flags, kind, TCPF_FIN, TCP_TIME_WAIT};

use crate::correlate::{last_is, FIN_WAIT2_TWS, LAST_CANCEL};
use crate::record::{fill_sock, fill_tw, hot, read, reserve, set_current, submit};
use crate::CONFIG;

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
    // SAFETY: kernel reads go through bpf_probe_read_kernel.
    unsafe {
        // Every dropped packet of the machine comes here: one config field and one socket
        // byte decide, before the whole config is loaded.
        if read::<u8>(rx_sk, hot!(skc_state)).unwrap_or(0) != TCP_TIME_WAIT {
            return 0;
        }
        let cfg = CONFIG.load();
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
        if let Some(mut entry) = reserve() {
            let r = entry.as_mut_ptr();
            fill_tw(&cfg, rx_sk, kind::TW_DROP, r);
            set_current(r);
            (*r).aux = reason;
            (*r).aux2 = tcp_flags as u16;
            if reason == cfg.drop_tw_paws {
                (*r).flags |= flags::PAWS;
            }
            submit(entry);
        }
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
    // SAFETY: kernel reads go through bpf_probe_read_kernel.
    unsafe {
        let state: u8 = read(sk, hot!(skc_state)).unwrap_or(0);
        if state == TCP_TIME_WAIT {
            let cfg = CONFIG.load();
            if let Some(mut entry) = reserve() {
                let r = entry.as_mut_ptr();
                fill_tw(&cfg, sk, kind::TW_RST_SENT, r);
                set_current(r);
                (*r).aux = reason;
                submit(entry);
            }
        } else if skb == 0 {
            let cfg = CONFIG.load();
            if let Some(mut entry) = reserve() {
                let r = entry.as_mut_ptr();
                fill_sock(&cfg, sk, kind::ABORT, r, true, reason, 0, 0);
                submit(entry);
            }
        }
    }
    0
}
