//! Shared helpers for the integration tests: a tracer watching one test's namespace, and
//! selectors over the events it collected.

use std::net::SocketAddr;
use std::time::Duration;
use twtrace::event::{Body, Event, ExitReason, Sock, Substate};
use twtrace::netns::NetNs;
use twtrace::tracer::{Background, TracerOptions};

/// A tracer that keeps only the events of `ns`.
pub fn trace(ns: &NetNs) -> Background {
    trace_opts(ns, TracerOptions::default())
}

pub fn trace_opts(ns: &NetNs, opts: TracerOptions) -> Background {
    let ino = ns.inode();
    let filter = twtrace::filter::Filter {
        netns: vec![ino],
        ..Default::default()
    };
    Background::start(opts, move |e| filter.matches(e))
        .expect("starting the tracer (are you root, on a kernel with BTF?)")
}

pub fn addr(s: &Sock, local: bool) -> SocketAddr {
    if local {
        SocketAddr::new(s.laddr, s.lport)
    } else {
        SocketAddr::new(s.raddr, s.rport)
    }
}

#[derive(Clone, Debug)]
pub struct Enter {
    pub sock: Sock,
    pub substate: Substate,
    pub timeout_ms: u64,
    pub snapshot: bool,
    pub age_ms: Option<u64>,
    pub comm: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Exit {
    pub sock: Sock,
    pub reason: ExitReason,
    pub lifetime_ms: Option<u64>,
    pub ts_ns: u64,
}

pub fn enters(ev: &[Event]) -> Vec<Enter> {
    ev.iter()
        .filter_map(|e| match &e.body {
            Body::Enter {
                sock,
                substate,
                timeout_ms,
                snapshot,
                age_ms,
                task,
            } => Some(Enter {
                sock: sock.clone(),
                substate: *substate,
                timeout_ms: *timeout_ms,
                snapshot: *snapshot,
                age_ms: *age_ms,
                comm: task.as_ref().map(|t| t.comm.clone()),
            }),
            _ => None,
        })
        .collect()
}

pub fn exits(ev: &[Event]) -> Vec<Exit> {
    ev.iter()
        .filter_map(|e| match &e.body {
            Body::Exit {
                sock,
                reason,
                lifetime_ms,
                ..
            } => Some(Exit {
                sock: sock.clone(),
                reason: *reason,
                lifetime_ms: *lifetime_ms,
                ts_ns: e.ts_ns,
            }),
            _ => None,
        })
        .collect()
}

pub fn count_kind(ev: &[Event], kind: &str) -> usize {
    ev.iter().filter(|e| e.kind() == kind).count()
}

/// Generous bound for things the kernel does within milliseconds.
pub const SOON: Duration = Duration::from_secs(10);
