//! Types shared by the kernel programs (`twtrace-ebpf`) and userspace (`twtrace`).
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel writes these bytes into the
//! ring buffer (or the iterator's seq_file) and userspace decodes them with explicit size
//! checks. Changing a layout changes both sides at once because both compile this file.
#![no_std]

/// Kinds of [`TwRecord`]. The timer kinds mirror the kernel's `timer:*` tracepoints, filtered to
/// timers whose function is `tw_timer_handler` (a timewait socket's own timer).
pub mod kind {
    /// `timer:timer_start`: a timewait socket's timer was armed (birth) or re-armed.
    pub const TIMER_START: u8 = 1;
    /// `timer:timer_cancel`: the timer was detached. First step of an expiry, of a re-arm into
    /// another wheel bucket, and of an early death; userspace tells them apart.
    pub const TIMER_CANCEL: u8 = 2;
    /// `timer:timer_expire_entry`: the timer ran out and `tw_timer_handler` is about to run.
    pub const TIMER_EXPIRE: u8 = 3;
    /// `timer:timer_init` on memory whose stale `function` is still `tw_timer_handler`: the slab
    /// is handing a freed timewait socket's memory to a new one.
    pub const TIMER_INIT: u8 = 4;
    /// A timewait socket found by the start-up `iter/tcp` snapshot.
    pub const SNAPSHOT: u8 = 5;
    /// Emitted once at the end of each iterator run: carries `ts_ns` and `jiffies` only.
    pub const SNAPSHOT_END: u8 = 6;
}

/// `TwRecord::flags` bits.
pub mod flags {
    /// `pid`/`comm` name the process that closed the socket (recorded at ESTABLISHED →
    /// FIN_WAIT1), not the task that happened to run when the record was made.
    pub const CLOSER: u8 = 1;
    /// `tw_entry_stamp` exists on this kernel and `entry_stamp` holds it.
    pub const ENTRY_STAMP: u8 = 2;
}

pub const TASK_COMM_LEN: usize = 16;

/// One observation of a timewait socket. Written in place into the ring buffer by the kernel
/// programs (never built on the BPF stack: LLVM copies large stack structs byte by byte).
///
/// Addresses are in network byte order; IPv4 uses the first 4 bytes. Ports are host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwRecord {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Address of the `inet_timewait_sock`: the key of a socket's life.
    pub tw: u64,
    /// `tw_timer.expires` (jiffies).
    pub expires: u64,
    /// `bpf_jiffies64()` when the record was made.
    pub jiffies: u64,
    /// Network namespace inode (`struct net`'s `ns.inum`).
    pub netns: u32,
    /// tgid: of the closing process for `TIMER_START` with `flags::CLOSER`, else of `current`.
    pub pid: u32,
    /// `tw_entry_stamp` (milliseconds of the kernel's TCP clock) where `flags::ENTRY_STAMP`.
    pub entry_stamp: u32,
    /// `tcp_timewait_sock.tw_ts_recent_stamp` (seconds; 0 when the peer sent no timestamps).
    pub ts_recent_stamp: u32,
    pub kind: u8,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u8,
    /// `tw_substate`: `TCP_TIME_WAIT` (6) or `TCP_FIN_WAIT2` (5).
    pub substate: u8,
    pub flags: u8,
    pub cpu: u16,
    pub lport: u16,
    pub rport: u16,
    pub _pad: [u8; 6],
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub comm: [u8; TASK_COMM_LEN],
}

impl TwRecord {
    pub const SIZE: usize = core::mem::size_of::<TwRecord>();
}

/// Key of the "who closed this connection" map: the connection's tuple in its netns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub netns: u32,
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

/// Value of the closer map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closer {
    pub pid: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Sentinel for an offset whose field does not exist on the running kernel.
pub const NO_FIELD: u32 = u32::MAX;

/// Kernel structure offsets and symbol addresses, resolved by userspace from
/// `/sys/kernel/btf/vmlinux` and `/proc/kallsyms` and handed to the programs as a read-only
/// global. Nothing in the kernel programs hard-codes a structure layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Address of `tw_timer_handler`.
    pub tw_timer_handler: u64,
    // struct timer_list
    pub timer_expires: u32,
    pub timer_function: u32,
    // struct inet_timewait_sock / tcp_timewait_sock
    pub tw_timer: u32,
    pub tw_substate: u32,
    pub tw_entry_stamp: u32,
    pub tw_ts_recent_stamp: u32,
    // struct sock_common (start of both `struct sock` and `struct inet_timewait_sock`)
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_net: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    // struct net
    pub net_ns_inum: u32,
    // struct inet_sock: the source port, still valid when skc_num is already 0.
    pub inet_sport: u32,
}

impl Config {
    /// All-zero configuration: the kernel programs' initial value until userspace sets it.
    pub const ZERO: Config = Config {
        tw_timer_handler: 0,
        timer_expires: 0,
        timer_function: 0,
        tw_timer: 0,
        tw_substate: 0,
        tw_entry_stamp: NO_FIELD,
        tw_ts_recent_stamp: 0,
        skc_daddr: 0,
        skc_rcv_saddr: 0,
        skc_dport: 0,
        skc_num: 0,
        skc_family: 0,
        skc_state: 0,
        skc_net: 0,
        skc_v6_daddr: 0,
        skc_v6_rcv_saddr: 0,
        net_ns_inum: 0,
        inet_sport: 0,
    };
}

/// Indexes of the `COUNTERS` per-CPU array.
pub mod counter {
    /// Ring-buffer reservations that failed: events lost in the kernel.
    pub const LOST: u32 = 0;
    /// `bpf_probe_read_kernel` failures while filling a record (the record is still sent).
    pub const READ_ERRORS: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// The iterator's census mode: socket counts per TCP state in the `CENSUS` array.
pub mod census {
    /// `ITER_MODE[0]` values.
    pub const MODE_SNAPSHOT: u32 = 0;
    pub const MODE_COUNT: u32 = 1;
    /// Slots: the kernel's TCP state numbers (1..=12), plus this one for timewait sockets
    /// still in their FIN_WAIT2 substate (slot 6 then counts the TIME_WAIT substate only).
    pub const TW_FIN_WAIT2: u32 = 15;
    pub const SLOTS: u32 = 16;
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_FIN_WAIT1: i32 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integers and byte arrays, no padding the kernel could leave
    // uninitialised that matters for reading (the explicit _pad fields cover the holes).
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::TwRecord {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Closer {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_stable() {
        // Both sides compile this file, but a silent size change would still break old trace
        // files and the decoder's size checks; pin them.
        assert_eq!(core::mem::size_of::<TwRecord>(), 112);
        assert_eq!(core::mem::align_of::<TwRecord>(), 8);
        assert_eq!(core::mem::size_of::<FlowKey>(), 44);
        assert_eq!(core::mem::size_of::<Config>(), 80);
    }
}
