//! Reading what happened: lives and takeovers from the events, counters from /proc.

use crate::host::netns::{parse_netstat, NetNs};
use crate::pipeline::event::{Body, Event, ExitReason, Substate};
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;

pub(super) fn addr(s: &crate::pipeline::event::Sock, local: bool) -> SocketAddr {
    if local {
        SocketAddr::new(s.laddr, s.lport)
    } else {
        SocketAddr::new(s.raddr, s.rport)
    }
}

/// A timewait socket's observed life, from the events.
#[derive(Clone, Debug)]
pub(super) struct Life {
    pub(super) local: SocketAddr,
    pub(super) remote: SocketAddr,
    pub(super) armed_ms: u64,
    pub(super) birth_substate: Substate,
    pub(super) exit: Option<(ExitReason, Substate, Option<u64>)>,
}

/// A timewait socket connect() took over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reuse {
    /// CLOCK_MONOTONIC ns of its birth (its `enter` event; else derived from its age).
    pub birth_ns: u64,
    /// CLOCK_MONOTONIC ns of the takeover.
    pub exit_ns: u64,
    /// Its age at the takeover, as the tracer reported it (the kernel's, from
    /// `tw_entry_stamp`, where the kernel has one).
    pub age_ms: u64,
}

/// Every takeover (`exit` reason `reused`) in `ev` of a socket `mine` accepts, with the
/// birth of that socket.
pub fn reuses(ev: &[Event], mine: impl Fn(&crate::pipeline::event::Sock) -> bool) -> Vec<Reuse> {
    let mut born: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for e in ev {
        match &e.body {
            Body::Enter {
                sock,
                snapshot: false,
                ..
            } => {
                born.insert(sock.tw, e.ts_ns);
            }
            Body::Exit {
                sock,
                reason,
                lifetime_ms,
                ..
            } => {
                let birth = born.remove(&sock.tw);
                if *reason != ExitReason::Reused || !mine(sock) {
                    continue;
                }
                let Some(age_ms) =
                    lifetime_ms.or(birth.map(|b| e.ts_ns.saturating_sub(b) / 1_000_000))
                else {
                    continue;
                };
                out.push(Reuse {
                    birth_ns: birth.unwrap_or(e.ts_ns.saturating_sub(age_ms * 1_000_000)),
                    exit_ns: e.ts_ns,
                    age_ms,
                });
            }
            _ => {}
        }
    }
    out
}

/// Every timewait socket born in `ev`, with its exit if seen. Keyed by kernel address, which
/// is reused after death: each birth starts a new life.
pub(super) fn lives(ev: &[Event]) -> Vec<Life> {
    let mut out: Vec<Life> = Vec::new();
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    for e in ev {
        match &e.body {
            Body::Enter {
                sock,
                substate,
                timeout_ms,
                snapshot: false,
                ..
            } => {
                open.insert(sock.tw, out.len());
                out.push(Life {
                    local: addr(sock, true),
                    remote: addr(sock, false),
                    armed_ms: *timeout_ms,
                    birth_substate: *substate,
                    exit: None,
                });
            }
            Body::Exit {
                sock,
                substate,
                reason,
                lifetime_ms,
                ..
            } => {
                if let Some(i) = open.remove(&sock.tw) {
                    out[i].exit = Some((*reason, *substate, *lifetime_ms));
                }
            }
            _ => {}
        }
    }
    out
}

pub(super) fn count(ev: &[Event], pred: impl Fn(&Body) -> bool) -> usize {
    ev.iter().filter(|e| pred(&e.body)).count()
}

pub(super) fn expired_in(l: &Life, substate: Substate) -> Option<u64> {
    match l.exit {
        Some((ExitReason::Expired, s, Some(ms))) if s == substate => Some(ms),
        _ => None,
    }
}

/// Text of a `/proc/net/…` file as seen from inside `ns`.
pub(crate) fn proc_net(ns: &NetNs, file: &str) -> Result<String> {
    let path = format!("/proc/thread-self/net/{file}");
    ns.run(move || std::fs::read_to_string(&path).with_context(|| format!("reading {path}")))?
}

/// `Tcp:` counters (`/proc/net/snmp`), same layout as netstat.
pub(crate) fn snmp(ns: &NetNs, name: &str) -> Result<u64> {
    parse_netstat(&proc_net(ns, "snmp")?, "Tcp", name)
        .ok_or_else(|| anyhow!("no counter Tcp:{name} in /proc/net/snmp"))
}

/// The live timewait count of `ns` (`/proc/net/sockstat`, "TCP: … tw N").
pub(super) fn sockstat_tw(ns: &NetNs) -> Result<u64> {
    crate::host::procnet::parse_sockstat_tw(&proc_net(ns, "sockstat")?)
        .ok_or_else(|| anyhow!("no tw in sockstat"))
}
