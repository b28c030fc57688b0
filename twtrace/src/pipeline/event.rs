//! The typed events every sink consumes: the one enum of the pipeline
//! (kernel records → [`crate::pipeline::lifecycle`] → `Event` → printer / files / aggregator).

use crate::host::workload::Workload;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A timewait socket's identity: kernel address plus tuple and network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sock {
    /// `inet_timewait_sock` address (unique among live sockets, reused after death).
    pub tw: u64,
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
}

impl Sock {
    pub fn family(&self) -> u8 {
        match self.laddr {
            IpAddr::V4(_) => 4,
            IpAddr::V6(_) => 6,
        }
    }

    /// An IPv4 socket from four-byte addresses (tests and synthetic traces).
    pub fn v4(tw: u64, netns: u32, l: [u8; 4], lport: u16, r: [u8; 4], rport: u16) -> Sock {
        let ip = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
        Sock {
            tw,
            netns,
            laddr: ip(l),
            lport,
            raddr: ip(r),
            rport,
        }
    }

    pub fn from_raw(
        tw: u64,
        netns: u32,
        family: u8,
        l: [u8; 16],
        lport: u16,
        r: [u8; 16],
        rport: u16,
    ) -> Sock {
        let addr = |a: [u8; 16]| -> IpAddr {
            if family == twtrace_common::AF_INET6 {
                IpAddr::V6(Ipv6Addr::from(a))
            } else {
                IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
            }
        };
        Sock {
            tw,
            netns,
            laddr: addr(l),
            lport,
            raddr: addr(r),
            rport,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Substate {
    TimeWait,
    FinWait2,
    /// Any other value read from `tw_substate` (should not happen; shown, not hidden).
    Other(u8),
}

impl Substate {
    pub fn from_raw(v: u8) -> Self {
        match v {
            twtrace_common::TCP_TIME_WAIT => Substate::TimeWait,
            twtrace_common::TCP_FIN_WAIT2 => Substate::FinWait2,
            o => Substate::Other(o),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Substate::TimeWait => "TIME_WAIT",
            Substate::FinWait2 => "FIN_WAIT2",
            Substate::Other(_) => "UNKNOWN",
        }
    }
}

/// Why a timewait socket stopped existing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// Its timer ran out (`timer_expire_entry` after the detach on the same CPU).
    Expired,
    /// connect() took over the 4-tuple (tcp_tw_reuse, or bind()+connect()).
    Reused,
    /// A new SYN was accepted into the timewait socket.
    Syn,
    /// An RST killed it (RFC 1337 assassination), or it answered with RST.
    Rst,
    /// Its network namespace went away.
    Purged,
    /// Killed before its timer with no evidence of the cause, or its death was not observed
    /// (lost events, or memory reused without a visible death).
    Unknown,
}

/// Why connect() could not reuse any timewait socket toward a destination (the rule of
/// `tcp_twsk_unique`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `tcp_tw_reuse` = 0.
    ReuseOff,
    /// `tcp_tw_reuse` = 2 (loopback only) and the peer is not loopback.
    LoopbackOnly,
    /// The peer sent no timestamps (`tw_ts_recent_stamp` = 0).
    NoTimestamps,
    /// The youngest candidate was younger than `tcp_tw_reuse_delay`.
    TooYoung,
    /// The candidate was still in its FIN_WAIT2 substate.
    FinWait2,
    /// No timewait socket toward that destination: the ports are held by live connections.
    NoTimewait,
    Unknown,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::ReuseOff,
        Refusal::LoopbackOnly,
        Refusal::NoTimestamps,
        Refusal::TooYoung,
        Refusal::FinWait2,
        Refusal::NoTimewait,
        Refusal::Unknown,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::ReuseOff => "reuse off",
            Refusal::LoopbackOnly => "loopback only",
            Refusal::NoTimestamps => "no timestamps",
            Refusal::TooYoung => "too young",
            Refusal::FinWait2 => "fin_wait2",
            Refusal::NoTimewait => "no timewait",
            Refusal::Unknown => "unknown",
        }
    }
}

impl ExitReason {
    pub const ALL: [ExitReason; 6] = [
        ExitReason::Expired,
        ExitReason::Reused,
        ExitReason::Syn,
        ExitReason::Rst,
        ExitReason::Purged,
        ExitReason::Unknown,
    ];

    /// Position in [`ExitReason::ALL`], for per-reason counters.
    pub fn index(&self) -> usize {
        *self as usize
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ExitReason::Expired => "expired",
            ExitReason::Reused => "reused",
            ExitReason::Syn => "syn",
            ExitReason::Rst => "rst",
            ExitReason::Purged => "purged",
            ExitReason::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub comm: Comm,
}

impl Task {
    pub fn from_raw(pid: u32, comm: &[u8]) -> Task {
        Task {
            pid,
            comm: Comm::from_raw(comm),
        }
    }
}

/// A process name, stored inline: an event carries one, and a heap `String` per event was a
/// good part of the pipeline's cost. Reads as `&str` (derefs to it, displays as it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comm {
    len: u8,
    buf: [u8; Comm::CAP],
}

impl Comm {
    /// The kernel's 16-byte name (15 bytes and a NUL) in UTF-8, where every invalid byte may
    /// become U+FFFD (3 bytes).
    pub const CAP: usize = 3 * twtrace_common::TASK_COMM_LEN;

    /// The kernel's NUL-padded name, decoded like `String::from_utf8_lossy`.
    pub fn from_raw(raw: &[u8]) -> Comm {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let mut c = Comm {
            len: 0,
            buf: [0; Comm::CAP],
        };
        if end <= Comm::CAP && raw[..end].is_ascii() {
            // Almost every name: no decoding to do (this runs for every event).
            c.buf[..end].copy_from_slice(&raw[..end]);
            c.len = end as u8;
            return c;
        }
        for chunk in raw[..end].utf8_chunks() {
            c.push(chunk.valid());
            if !chunk.invalid().is_empty() {
                c.push("\u{FFFD}");
            }
        }
        c
    }

    /// Appends `s`, or as much of it as fits, cut at a character boundary.
    fn push(&mut self, s: &str) {
        let room = Comm::CAP - self.len as usize;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        let at = self.len as usize;
        self.buf[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n as u8;
    }

    pub fn as_str(&self) -> &str {
        // Only whole UTF-8 characters are ever copied in (`push`).
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or_default()
    }
}

impl std::ops::Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Longer names (only from a hand-made trace file) are cut at [`Comm::CAP`] bytes.
impl From<&str> for Comm {
    fn from(s: &str) -> Comm {
        let mut c = Comm {
            len: 0,
            buf: [0; Comm::CAP],
        };
        c.push(s);
        c
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// A timewait socket was born (or found by the start-up snapshot).
    Enter {
        sock: Sock,
        substate: Substate,
        /// Time armed on its timer at birth; for snapshot sockets, the time remaining.
        timeout_ms: u64,
        /// The process that closed the connection, where it was seen closing.
        task: Option<Task>,
        snapshot: bool,
        /// Snapshot sockets only: age from the kernel's `tw_entry_stamp`.
        age_ms: Option<u64>,
    },
    /// FIN_WAIT2 → TIME_WAIT inside a timewait socket (the peer's FIN arrived).
    Promote {
        sock: Sock,
        timeout_ms: u64,
        age_ms: Option<u64>,
    },
    Exit {
        sock: Sock,
        substate: Substate,
        reason: ExitReason,
        /// From birth (or from `tw_entry_stamp` for sockets born before twtrace started); for
        /// `Reused`, the kernel's age at the takeover, from `tw_entry_stamp` where it has one.
        lifetime_ms: Option<u64>,
        /// The task in whose context the socket died.
        task: Option<Task>,
    },
    /// `tcp_max_tw_buckets` was reached in the socket's netns: it closed without a timewait
    /// socket (`sock.tw` is the full socket's address).
    Overflow { sock: Sock },
    /// The application reset the connection (SO_LINGER {1,0}, or data left unread): no
    /// TIME_WAIT (`sock.tw` is the full socket's address).
    Abort { sock: Sock, task: Option<Task> },
    /// connect() failed for want of a local port. `sock` holds the destination (raddr/rport)
    /// and whatever local address was bound (port 0 if none).
    ConnectFail {
        sock: Sock,
        errno: i32,
        refusal: Refusal,
        /// Timewait sockets toward that destination in that netns at the time.
        timewait: u32,
        /// Function tier only: the timewait sockets `tcp_twsk_unique` considered for this
        /// connect() and refused (exact, counted in the kernel). `None`: the tier is off.
        candidates: Option<u32>,
        task: Option<Task>,
    },
    /// bind() to port 0 failed with EADDRINUSE: the namespace's one pool of ports for
    /// bind()-before-connect() is used up (a port held by a TIME_WAIT socket toward any
    /// destination is not free for it).
    BindFail {
        netns: u32,
        family: u8,
        errno: i32,
        /// TIME_WAIT sockets of the namespace holding a port of the pool (any destination).
        timewait: u32,
        /// Ports in `ip_local_port_range` as the kernel read it at the failure.
        ports: Option<u32>,
        task: Option<Task>,
    },
    /// A process connect()s on a socket it bound first: it draws every connection's port
    /// from the one shared pool (reported once per process).
    BoundConnect { sock: Sock, task: Option<Task> },
    /// A segment was dropped by a timewait socket's PAWS check (typically a SYN from behind
    /// NAT carrying an older timestamp).
    PawsReject { sock: Sock },
    /// A network namespace's TIME_WAIT sysctls, when it first shows up and when they change.
    Netns {
        netns: u32,
        sysctls: crate::host::sysctls::Sysctls,
    },
    /// Events the kernel could not queue (ring buffer full): `count` more since the last one.
    Lost { count: u64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub body: Body,
    /// The cgroup (v2) id the kernel named: the socket owner's (`sk_cgrp_data`, read while
    /// the socket was full: at its close for a timewait socket's whole life), or the calling
    /// task's for a bind() failure. 0: none read.
    pub cgroup: u64,
    /// `cgroup` resolved to a workload by the tracer; `None` when `cgroup` is 0 (see [`crate::host::workload::Workloads`]).
    pub workload: Option<Arc<Workload>>,
}

impl Event {
    /// An event with no workload (the lifecycle adds the cgroup id, the tracer resolves it).
    pub fn new(ts_ns: u64, body: Body) -> Event {
        Event {
            ts_ns,
            body,
            cgroup: 0,
            workload: None,
        }
    }

    /// The same event, owned by cgroup `id`.
    pub fn in_cgroup(mut self, id: u64) -> Event {
        self.cgroup = id;
        self
    }

    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::Enter { .. } => "enter",
            Body::Promote { .. } => "promote",
            Body::Exit { .. } => "exit",
            Body::Overflow { .. } => "overflow",
            Body::Abort { .. } => "abort",
            Body::ConnectFail { .. } => "connect_fail",
            Body::PawsReject { .. } => "paws_reject",
            Body::BindFail { .. } => "bind_fail",
            Body::BoundConnect { .. } => "bind_connect",
            Body::Netns { .. } => "netns",
            Body::Lost { .. } => "lost",
        }
    }

    /// The process the event names, where it names one.
    pub fn task(&self) -> Option<&Task> {
        match &self.body {
            Body::Enter { task, .. }
            | Body::Exit { task, .. }
            | Body::Abort { task, .. }
            | Body::ConnectFail { task, .. }
            | Body::BindFail { task, .. }
            | Body::BoundConnect { task, .. } => task.as_ref(),
            Body::Promote { .. }
            | Body::Overflow { .. }
            | Body::PawsReject { .. }
            | Body::Netns { .. }
            | Body::Lost { .. } => None,
        }
    }

    pub fn sock(&self) -> Option<&Sock> {
        match &self.body {
            Body::Enter { sock, .. }
            | Body::Promote { sock, .. }
            | Body::Exit { sock, .. }
            | Body::Overflow { sock }
            | Body::Abort { sock, .. }
            | Body::ConnectFail { sock, .. }
            | Body::PawsReject { sock }
            | Body::BoundConnect { sock, .. } => Some(sock),
            Body::Netns { .. } | Body::Lost { .. } | Body::BindFail { .. } => None,
        }
    }
}

// The text forms of events moved to the sink stage; the old paths still resolve.
pub use crate::sink::format::{endpoint, errno_name, rfc3339_micros, secs};
pub use crate::sink::line::LINE_HEADER;

#[cfg(test)]
mod tests {
    use super::Comm;

    #[test]
    fn comm_decodes_like_from_utf8_lossy() {
        let cases: [&[u8]; 6] = [
            b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            b"0123456789abcdef",
            b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0",
            b"caf\xc3\xa9\0",
            b"ab\xe2\x82\0",
            b"",
        ];
        for raw in cases {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let want = String::from_utf8_lossy(&raw[..end]);
            assert_eq!(Comm::from_raw(raw).as_str(), want, "{raw:?}");
        }
        assert_eq!(Comm::from("x".repeat(60).as_str()).len(), Comm::CAP);
        // Longer than the buffer: cut, by the decoding path as by the ASCII one.
        assert_eq!(Comm::from_raw(&[b'x'; 60]).as_str(), "x".repeat(Comm::CAP));
    }
}
