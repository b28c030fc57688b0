//! The typed events every sink consumes: the one enum of the pipeline
//! (kernel records → [`crate::pipeline::lifecycle`] → `Event` → printer / files / aggregator).

use crate::kernel::sysinfo::Clock;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    pub comm: String,
}

impl Task {
    pub fn from_raw(pid: u32, comm: &[u8]) -> Task {
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        Task {
            pid,
            comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
        }
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
        /// From birth (or from `tw_entry_stamp` for sockets born before twtrace started).
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
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::Enter { .. } => "enter",
            Body::Promote { .. } => "promote",
            Body::Exit { .. } => "exit",
            Body::Overflow { .. } => "overflow",
            Body::Abort { .. } => "abort",
            Body::ConnectFail { .. } => "connect_fail",
            Body::PawsReject { .. } => "paws_reject",
            Body::Netns { .. } => "netns",
            Body::Lost { .. } => "lost",
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
            | Body::PawsReject { sock } => Some(sock),
            Body::Netns { .. } | Body::Lost { .. } => None,
        }
    }

    /// One NDJSON object (without the newline): the `--json` contract. Keys are stable; new
    /// keys may be added, none renamed.
    pub fn write_json(&self, clock: &Clock, out: &mut String) {
        out.push_str("{\"time\":\"");
        out.push_str(&rfc3339_micros(clock.wall_ns(self.ts_ns)));
        let _ = write!(out, "\",\"kind\":\"{}\"", self.kind());
        if let Some(s) = self.sock() {
            let _ = write!(
                out,
                ",\"netns\":{},\"family\":{},\"laddr\":\"{}\",\"lport\":{},\"raddr\":\"{}\",\"rport\":{}",
                s.netns,
                s.family(),
                s.laddr,
                s.lport,
                s.raddr,
                s.rport
            );
        }
        let task = |out: &mut String, t: &Option<Task>| {
            if let Some(t) = t {
                let _ = write!(out, ",\"pid\":{},\"comm\":", t.pid);
                out.push_str(&serde_json::to_string(&t.comm).unwrap_or_else(|_| "\"\"".into()));
            }
        };
        match &self.body {
            Body::Enter {
                substate,
                timeout_ms,
                task: t,
                snapshot,
                age_ms,
                ..
            } => {
                let _ = write!(
                    out,
                    ",\"substate\":\"{}\",\"timeout_ms\":{}",
                    substate.as_str(),
                    timeout_ms
                );
                task(out, t);
                if *snapshot {
                    out.push_str(",\"snapshot\":true");
                }
                if let Some(a) = age_ms {
                    let _ = write!(out, ",\"age_ms\":{a}");
                }
            }
            Body::Promote {
                timeout_ms, age_ms, ..
            } => {
                let _ = write!(
                    out,
                    ",\"substate\":\"TIME_WAIT\",\"timeout_ms\":{timeout_ms}"
                );
                if let Some(a) = age_ms {
                    let _ = write!(out, ",\"age_ms\":{a}");
                }
            }
            Body::Exit {
                substate,
                reason,
                lifetime_ms,
                task: t,
                ..
            } => {
                let _ = write!(
                    out,
                    ",\"substate\":\"{}\",\"reason\":\"{}\"",
                    substate.as_str(),
                    reason.as_str()
                );
                if let Some(l) = lifetime_ms {
                    let _ = write!(out, ",\"lifetime_ms\":{l}");
                }
                task(out, t);
            }
            Body::Overflow { .. } | Body::PawsReject { .. } => {}
            Body::Abort { task: t, .. } => task(out, t),
            Body::ConnectFail {
                errno,
                refusal,
                timewait,
                candidates,
                task: t,
                ..
            } => {
                let _ = write!(
                    out,
                    ",\"errno\":{errno},\"errno_name\":\"{}\",\"refusal\":\"{}\",\"timewait\":{timewait}",
                    errno_name(*errno),
                    refusal.as_str()
                );
                if let Some(n) = candidates {
                    let _ = write!(out, ",\"candidates\":{n}");
                }
                task(out, t);
            }
            Body::Netns { netns, sysctls } => {
                let _ = write!(out, ",\"netns\":{netns}");
                sysctls.write_json(out);
            }
            Body::Lost { count } => {
                let _ = write!(out, ",\"count\":{count}");
            }
        }
        out.push('}');
    }

    /// One human line with stable columns (see [`LINE_HEADER`]).
    pub fn write_line(&self, clock: &Clock, out: &mut String) {
        let time = rfc3339_micros(clock.wall_ns(self.ts_ns));
        // "YYYY-MM-DDTHH:MM:SS.uuuuuuZ" → "HH:MM:SS.uuuuuu"
        let hms = time.get(11..26).unwrap_or(&time);
        let Some(s) = self.sock() else {
            match &self.body {
                Body::Lost { count } => {
                    let _ = write!(
                        out,
                        "{hms:<15} LOST {count} events: the kernel's ring buffer was full"
                    );
                }
                Body::Netns { netns, sysctls } => {
                    let _ = write!(
                        out,
                        "{hms:<15} {netns:<10} netns        {}",
                        sysctls.summary()
                    );
                }
                _ => {}
            }
            return;
        };
        let (substate, detail, t) = match &self.body {
            Body::Enter {
                substate,
                timeout_ms,
                task,
                snapshot,
                age_ms,
                ..
            } => {
                let mut d = format!("timeout={}", secs(*timeout_ms));
                if *snapshot {
                    d = format!("snapshot {}", d);
                    if let Some(a) = age_ms {
                        let _ = write!(d, " age={}", secs(*a));
                    }
                }
                (substate.as_str(), d, task.as_ref())
            }
            Body::Promote { timeout_ms, .. } => (
                "TIME_WAIT",
                format!("promote timeout={}", secs(*timeout_ms)),
                None,
            ),
            Body::Exit {
                substate,
                reason,
                lifetime_ms,
                task,
                ..
            } => {
                let l = lifetime_ms.map(secs).unwrap_or_else(|| "?".into());
                (
                    substate.as_str(),
                    format!("{} {}", reason.as_str(), l),
                    task.as_ref(),
                )
            }
            Body::Overflow { .. } => (
                "-",
                "no timewait: tcp_max_tw_buckets reached".to_string(),
                None,
            ),
            Body::Abort { task, .. } => ("-", "reset: no TIME_WAIT".to_string(), task.as_ref()),
            Body::ConnectFail {
                errno,
                refusal,
                timewait,
                candidates,
                task,
                ..
            } => {
                let mut d = format!(
                    "{} {} tw={}",
                    errno_name(*errno),
                    refusal.as_str(),
                    timewait
                );
                if let Some(n) = candidates {
                    let _ = write!(d, " refused={n}");
                }
                ("-", d, task.as_ref())
            }
            Body::PawsReject { .. } => ("TIME_WAIT", "segment dropped by PAWS".to_string(), None),
            Body::Netns { .. } | Body::Lost { .. } => unreachable!("handled above"),
        };
        let (pid, comm) = match t {
            Some(t) => (t.pid.to_string(), t.comm.as_str()),
            None => ("-".to_string(), "-"),
        };
        let _ = write!(
            out,
            "{hms:<15} {:<10} {:<12} {:<9} {:<22} {:<22} {:<24} {:>7} {}",
            s.netns,
            self.kind(),
            substate,
            endpoint(&s.laddr, s.lport),
            endpoint(&s.raddr, s.rport),
            detail,
            pid,
            comm
        );
    }
}

pub const LINE_HEADER: &str = "TIME(UTC)       NETNS      EVENT        SUBSTATE  LOCAL                  REMOTE                 DETAIL                       PID COMM";

pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => "E?",
    }
}

pub fn endpoint(a: &IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Seconds with millisecond precision: `61.992s`.
pub fn secs(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-25T09:10:11.123456Z`.
pub fn rfc3339_micros(wall_ns: i128) -> String {
    let t = if wall_ns >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(wall_ns as u64)
    } else {
        std::time::UNIX_EPOCH
    };
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock() -> Sock {
        Sock::from_raw(
            0xffff1,
            4026531840,
            2,
            [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            43210,
            [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            8080,
        )
    }

    #[test]
    fn json_contract_keys() {
        let clock = Clock {
            offset_ns: 1_700_000_000_000_000_000,
        };
        let e = Event {
            ts_ns: 1_234_567_000,
            body: Body::Enter {
                sock: sock(),
                substate: Substate::TimeWait,
                timeout_ms: 60000,
                task: Some(Task {
                    pid: 42,
                    comm: "cu\"rl".into(),
                }),
                snapshot: false,
                age_ms: None,
            },
        };
        let mut s = String::new();
        e.write_json(&clock, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:21.234567Z");
        assert_eq!(v["kind"], "enter");
        assert_eq!(v["netns"], 4026531840u64);
        assert_eq!(v["family"], 4);
        assert_eq!(v["laddr"], "127.0.0.1");
        assert_eq!(v["lport"], 43210);
        assert_eq!(v["raddr"], "127.0.0.2");
        assert_eq!(v["rport"], 8080);
        assert_eq!(v["substate"], "TIME_WAIT");
        assert_eq!(v["timeout_ms"], 60000);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["comm"], "cu\"rl");
        assert!(v.get("snapshot").is_none());

        let x = Event {
            ts_ns: 1,
            body: Body::Exit {
                sock: Sock::from_raw(
                    1,
                    7,
                    10,
                    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    1,
                    [0; 16],
                    2,
                ),
                substate: Substate::FinWait2,
                reason: ExitReason::Expired,
                lifetime_ms: Some(61992),
                task: None,
            },
        };
        s.clear();
        x.write_json(&clock, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["family"], 6);
        assert_eq!(v["laddr"], "::1");
        assert_eq!(v["reason"], "expired");
        assert_eq!(v["lifetime_ms"], 61992);
        assert_eq!(v["substate"], "FIN_WAIT2");
    }

    #[test]
    fn line_has_units_and_columns() {
        let clock = Clock { offset_ns: 0 };
        let e = Event {
            ts_ns: 3_600_000_000_000 + 1_500,
            body: Body::Exit {
                sock: sock(),
                substate: Substate::TimeWait,
                reason: ExitReason::Expired,
                lifetime_ms: Some(61992),
                task: None,
            },
        };
        let mut s = String::new();
        e.write_line(&clock, &mut s);
        assert!(s.starts_with("01:00:00.000001"), "{s}");
        assert!(s.contains("127.0.0.1:43210"), "{s}");
        assert!(s.contains("expired 61.992s"), "{s}");
        assert_eq!(secs(5), "0.005s");
    }
}
