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
    /// No longer sent (`timer:timer_init` is not hooked: re-arms are proven by
    /// `flags::REARM` instead); the number stays reserved.
    pub const TIMER_INIT: u8 = 4;
    /// A timewait socket found by the start-up `iter/tcp` snapshot.
    pub const SNAPSHOT: u8 = 5;
    /// Emitted once at the end of each iterator run: carries `ts_ns` and `jiffies` only.
    pub const SNAPSHOT_END: u8 = 6;
    /// `skb:kfree_skb` of a segment received by a timewait socket (`tw` = `rx_sk`), sent only
    /// for PAWS drops or right after that socket's timer was detached on this CPU (a segment
    /// that killed it). `aux` = drop reason, `aux2` = the segment's TCP flags byte.
    pub const TW_DROP: u8 = 7;
    /// `tcp:tcp_send_reset` from a timewait socket (it answers a segment with RST and dies).
    /// `aux` = `enum sk_rst_reason`.
    pub const TW_RST_SENT: u8 = 8;
    /// A request socket's timer armed right after a timewait timer detach on this CPU: a SYN
    /// accepted into TIME_WAIT opens the new incarnation. `tw` = the request socket, tuple its.
    pub const REQSK_START: u8 = 9;
    /// `tcp:tcp_send_reset` with no segment: the connection was reset by its owner (SO_LINGER
    /// {1,0}, unread data at close, abort). `tw` = the socket; `aux` = `enum sk_rst_reason`.
    pub const ABORT: u8 = 10;
    /// SYN_SENT → CLOSE before any segment went out: connect() found no usable local port.
    /// `tw` = the socket; tuple = what the socket had (source port 0 unless bound);
    /// `entry_stamp` = when connect() began (CLOCK_MONOTONIC ms, low 32 bits; 0: not seen).
    pub const CONNECT_FAIL: u8 = 11;
    /// FIN_WAIT2/CLOSING → CLOSE with no timewait socket born for it while the namespace's
    /// timewait count was at `tcp_max_tw_buckets`. `aux` = count, `expires` = the limit.
    pub const OVERFLOW: u8 = 12;
    /// Function tier (fexit on `tcp_twsk_unique`), returned 1: connect() takes this timewait
    /// socket over. `tw` = the timewait socket (tuple, substate, stamps read from it),
    /// pid/comm = the connecting task, `aux2` bit 0 = [`super::UNIQUE_TWP`], `expires` = how
    /// many other timewait sockets this connect() considered and refused before it. (Refusals
    /// are counted in the kernel, not sent one by one: a connect() on an exhausted port range
    /// considers every port's timewait socket.)
    pub const TW_UNIQUE: u8 = 13;
    /// Function tier (fexit on `inet_twsk_alloc`) returned NULL: the closing socket gets no
    /// timewait socket. `tw` = the full socket, tuple its; `aux2` = the substate it would have
    /// had; `aux` = the namespace's timewait count and `expires` = `tcp_max_tw_buckets` where
    /// the layout is known (count below the limit: the allocation itself failed).
    pub const TW_ALLOC_FAIL: u8 = 14;
    /// `syscalls:sys_exit_bind` returned EADDRINUSE for a bind() to port 0: the namespace's one
    /// pool of ports for bind()-before-connect() is exhausted (a port held by a timewait
    /// socket toward any destination is not free for it). `tw` = 0; tuple: family and netns
    /// only; `aux` = errno; pid/comm/cgroup = the binding task; `conf` = the namespace's
    /// settings (its port range is the pool).
    pub const BIND_FAIL: u8 = 15;
    /// connect() on a socket already bound to a port (bind() before connect()): sent once per
    /// process (the kernel keeps a set), so userspace knows which processes draw from the one
    /// shared pool. `tw` = the socket; tuple its (lport = the bound port).
    pub const BOUND_CONNECT: u8 = 16;
    /// The highest kind this build knows (decoders reject anything above).
    pub const LAST: u8 = BOUND_CONNECT;
}

/// `TwRecord::flags` bits.
pub mod flags {
    /// `pid`/`comm` name the process that closed the socket (recorded at ESTABLISHED →
    /// FIN_WAIT1), not the task that happened to run when the record was made.
    pub const CLOSER: u8 = 1;
    /// `tw_entry_stamp` exists on this kernel and `entry_stamp` holds it.
    pub const ENTRY_STAMP: u8 = 2;
    /// TIMER_CANCEL: `current` is inside connect() toward this socket's remote address and
    /// port, in its namespace (CLOSE → SYN_SENT seen moments ago): a reuse.
    pub const IN_CONNECT: u8 = 4;
    /// TIMER_CANCEL: the socket's network namespace has no references left: it is being
    /// dismantled (purge).
    pub const NETNS_DYING: u8 = 8;
    /// TW_DROP: the drop reason is the timewait PAWS check (SKB_DROP_REASON_TCP_RFC7323_TW_PAWS).
    pub const PAWS: u8 = 16;
    /// CONNECT_FAIL: the function tier ran during this connect(): `aux` = the timewait sockets
    /// `tcp_twsk_unique` refused, `expires` = the address of the last one (0: none).
    pub const CANDIDATES: u8 = 32;
    /// TIMER_START: a re-arm, not a birth: this CPU's previous timer event of any timer was
    /// the detach of this same timewait timer (one `__mod_timer` call).
    pub const REARM: u8 = 64;
    /// CONNECT_FAIL: the function tier refused at least one socket, and the record carries the
    /// last one's state as `tcp_twsk_unique` found it: `substate`, `ts_recent_stamp`, and in
    /// `aux2` its age in ms at connect()'s start (`entry_stamp`) from its `tw_entry_stamp`
    /// (0 if it entered TIME_WAIT later; at most `u16::MAX`), where the kernel has one.
    pub const REFUSED_STATE: u8 = 128;
}

/// `aux2` bit of `kind::TW_UNIQUE`: connect() was searching for an ephemeral port (`twp` set);
/// clear for bind() + connect(), where only the timestamps count.
pub const UNIQUE_TWP: u16 = 1;

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
    /// Kind-specific (see [`kind`]).
    pub aux2: u16,
    pub aux: u32,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub comm: [u8; TASK_COMM_LEN],
    /// The namespace's settings as the kernel held them when the record was made, read from
    /// the socket's own `struct net`: filled for the records whose meaning depends on them
    /// (`CONNECT_FAIL`, `OVERFLOW`, `TW_ALLOC_FAIL`, `TW_UNIQUE`, and a `TIMER_CANCEL` flagged
    /// `IN_CONNECT`); `valid == 0` elsewhere.
    pub conf: NetConf,
    /// The cgroup (v2) id of the socket's owner: the full socket's `sk_cgrp_data` (for a
    /// timewait socket's birth, read when its connection closed), or the current task's for
    /// `BIND_FAIL`. 0: unknown (a socket that existed before start-up, a request socket).
    pub cgroup: u64,
}

/// `NetConf::valid` bits: which fields this kernel has and the program read.
pub mod netconf {
    pub const TW_REUSE: u8 = 1;
    /// `tcp_tw_reuse_delay` (Linux 6.13+).
    pub const TW_REUSE_DELAY: u8 = 2;
    pub const TIMESTAMPS: u8 = 4;
    pub const PORT_RANGE: u8 = 8;
    /// `max_tw_buckets` and `tw_count` (`tcp_death_row`).
    pub const TW_BUCKETS: u8 = 16;
}

/// A network namespace's TIME_WAIT settings at one moment, read by a kernel program from the
/// socket's `struct net` (`net->ipv4`), so that a verdict never rests on a copy polled earlier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConf {
    /// [`netconf`] bits.
    pub valid: u8,
    /// `net.ipv4.tcp_tw_reuse`.
    pub tw_reuse: u8,
    /// `net.ipv4.tcp_timestamps`.
    pub timestamps: u8,
    pub _pad: u8,
    /// `net.ipv4.tcp_tw_reuse_delay` (ms).
    pub tw_reuse_delay_ms: u32,
    /// `net.ipv4.ip_local_port_range`, inclusive.
    pub port_lo: u16,
    pub port_hi: u16,
    /// `net.ipv4.tcp_max_tw_buckets`.
    pub max_tw_buckets: i32,
    /// The namespace's timewait sockets (`tcp_death_row.tw_refcount` - 1).
    pub tw_count: u32,
    pub _pad2: u32,
}

impl NetConf {
    pub const NONE: NetConf = NetConf {
        valid: 0,
        tw_reuse: 0,
        timestamps: 0,
        _pad: 0,
        tw_reuse_delay_ms: 0,
        port_lo: 0,
        port_hi: 0,
        max_tw_buckets: 0,
        tw_count: 0,
        _pad2: 0,
    };

    pub fn has(&self, bit: u8) -> bool {
        self.valid & bit != 0
    }
}

impl TwRecord {
    pub const SIZE: usize = core::mem::size_of::<TwRecord>();
}

/// Value of the "who is connecting" map (keyed by pid_tgid): the destination of the connect()
/// in progress, to recognise the timewait socket it reuses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connecting {
    pub ts_ns: u64,
    pub netns: u32,
    pub rport: u16,
    /// Set by the function tier when it ran for this connect() (`flags::CANDIDATES`).
    pub flags: u16,
    pub raddr: [u8; 16],
    /// Function tier: timewait sockets `tcp_twsk_unique` refused so far in this connect().
    pub refused: u32,
    /// Function tier: the last refused socket's `tw_ts_recent_stamp`, `tw_entry_stamp` (0
    /// where the kernel has none) and `tw_substate`, read when it was refused: what the kernel
    /// judged, not what a stream of earlier records says it was.
    pub last_ts_recent: u32,
    /// Function tier: the last timewait socket refused.
    pub last_refused: u64,
    pub last_entry_stamp: u32,
    pub last_substate: u8,
    pub _pad: [u8; 3],
}

/// Per-CPU memory of the last timewait birth or detach, to correlate the records that follow
/// on the same CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastTw {
    pub ts_ns: u64,
    pub tw: u64,
    /// This CPU's timer event count at that moment (see the kernel's `TIMER_SEQ`).
    pub seq: u64,
    pub key: FlowKey,
    /// A detach: 1 if it ran in a task inside connect() toward its flow (`IN_CONNECT`), which
    /// may be a takeover (final) or a re-arm run by that task's softirq work.
    pub in_connect: u32,
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
    pub _pad: u32,
    /// The closing socket's cgroup id (see `TwRecord::cgroup`).
    pub cgroup: u64,
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
    /// Address of `reqsk_timer_handler` (0: not found, SYN evidence off).
    pub reqsk_timer_handler: u64,
    /// `struct request_sock.rsk_timer`.
    pub rsk_timer: u32,
    /// `struct net.ns` reference count (`__ns_ref`, or `count` on older kernels).
    pub net_ns_ref: u32,
    /// `struct net.ipv4.tcp_death_row.tw_refcount` and `.sysctl_max_tw_buckets`.
    pub net_tw_refcount: u32,
    pub net_max_tw_buckets: u32,
    /// `struct tcp_sock.segs_out`.
    pub tcp_segs_out: u32,
    /// `struct sk_buff.head` and `.transport_header`.
    pub skb_head: u32,
    pub skb_transport_header: u32,
    /// `enum skb_drop_reason` value of SKB_DROP_REASON_TCP_RFC7323_TW_PAWS (NO_FIELD: none).
    pub drop_tw_paws: u32,
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
    // struct net: the sysctls that decide a timewait socket's fate (NO_FIELD: absent).
    pub net_tw_reuse: u32,
    pub net_tw_reuse_delay: u32,
    pub net_timestamps: u32,
    /// `ipv4.ip_local_ports.range`: one u32 (low | high << 16) or, where
    /// `port_range_ints` is 1, `int range[2]` (kernels before the seqlock went).
    pub net_port_range: u32,
    pub port_range_ints: u32,
    /// `struct sock.sk_cgrp_data.cgroup`, `struct cgroup.kn`, `struct kernfs_node.id`: a
    /// socket's cgroup id (NO_FIELD: unknown).
    pub sock_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// `struct task_struct.nsproxy`, `struct nsproxy.net_ns`: the current task's namespace.
    pub task_nsproxy: u32,
    pub nsproxy_net: u32,
    /// Offsets in the classic tracepoint records (from tracefs's `format` files at load):
    /// `syscalls:sys_enter_bind`'s `umyaddr` and `syscalls:sys_exit_bind`'s `ret`.
    pub tp_bind_addr: u32,
    pub tp_bind_ret: u32,
}

impl Config {
    /// All-zero configuration: the kernel programs' initial value until userspace sets it.
    pub const ZERO: Config = Config {
        tw_timer_handler: 0,
        reqsk_timer_handler: 0,
        rsk_timer: 0,
        net_ns_ref: NO_FIELD,
        net_tw_refcount: NO_FIELD,
        net_max_tw_buckets: NO_FIELD,
        tcp_segs_out: NO_FIELD,
        skb_head: 0,
        skb_transport_header: 0,
        drop_tw_paws: NO_FIELD,
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
        net_tw_reuse: NO_FIELD,
        net_tw_reuse_delay: NO_FIELD,
        net_timestamps: NO_FIELD,
        net_port_range: NO_FIELD,
        port_range_ints: 0,
        sock_cgroup: NO_FIELD,
        cgroup_kn: NO_FIELD,
        kn_id: NO_FIELD,
        task_nsproxy: NO_FIELD,
        nsproxy_net: NO_FIELD,
        tp_bind_addr: NO_FIELD,
        tp_bind_ret: NO_FIELD,
    };
}

/// Indexes of the `COUNTERS` per-CPU array.
pub mod counter {
    /// Ring-buffer reservations that failed: events lost in the kernel.
    pub const LOST: u32 = 0;
    /// `bpf_probe_read_kernel` failures while filling a record (the record is still sent).
    pub const READ_ERRORS: u32 = 1;
    /// Updates of the kernel side's correlation maps that failed (no free element, or the
    /// bucket's lock busy or timed out; a full LRU map evicts instead): what they were to
    /// carry to a later record (who closed a connection, a connect() or bind() in progress)
    /// may be missing from it.
    pub const MAP_ERRORS: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// The iterator's census mode: socket counts per TCP state in the `CENSUS` array.
pub mod census {
    /// `ITER_MODE[0]` values.
    pub const MODE_SNAPSHOT: u32 = 0;
    pub const MODE_COUNT: u32 = 1;
    /// Both in one walk (`twtrace census`): counts, and a record per timewait socket, so the
    /// table and the destinations come from the same instant.
    pub const MODE_BOTH: u32 = 2;
    /// Slots: the kernel's TCP state numbers (1..=12), plus this one for timewait sockets
    /// still in their FIN_WAIT2 substate (slot 6 then counts the TIME_WAIT substate only).
    pub const TW_FIN_WAIT2: u32 = 15;
    pub const SLOTS: u32 = 16;
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_FIN_WAIT1: i32 = 4;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_CLOSING: i32 = 11;
/// TCP header flag bits (byte 13).
pub const TCPF_FIN: u16 = 0x01;
pub const TCPF_SYN: u16 = 0x02;
pub const TCPF_RST: u16 = 0x04;
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
    unsafe impl aya::Pod for super::Connecting {}
    unsafe impl aya::Pod for super::LastTw {}
    unsafe impl aya::Pod for super::NetConf {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_stable() {
        // Both sides compile this file, but a silent size change would still break old trace
        // files and the decoder's size checks; pin them.
        assert_eq!(core::mem::size_of::<TwRecord>(), 144);
        assert_eq!(core::mem::size_of::<NetConf>(), 24);
        assert_eq!(core::mem::align_of::<TwRecord>(), 8);
        assert_eq!(core::mem::size_of::<FlowKey>(), 44);
        assert_eq!(core::mem::size_of::<Config>(), 168);
    }
}
