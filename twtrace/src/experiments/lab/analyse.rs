//! A phase's report from its attempts, events and counters; the timestamp offsets.

use super::{
    Attempt, ClientSummary, Counters, Lab, Met, Offsets, Outcome, PhaseReport, COUNTERS, NAMES,
    TS_MARGIN_MS,
};
use crate::experiments::verify::{reuses, Spread};
use crate::experiments::workload::FirstCloser;
use crate::kernel::features::Features;
use crate::pipeline::event::{Body, Event, ExitReason};
use anyhow::Result;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Timestamp offset of a connection: its TCP_TIMESTAMP minus the TCP clock's ms (which is
/// CLOCK_MONOTONIC).
pub(super) fn offset_of(a: &Attempt) -> Option<u32> {
    a.tsval
        .map(|t| t.wrapping_sub(((a.tsval_ns / 1_000_000) & 0xffff_ffff) as u32))
}

pub(super) fn offsets(phases: &[PhaseReport]) -> Offsets {
    let mut offs: Vec<u32> = Vec::new();
    let mut tuples: Vec<(Option<SocketAddr>, String)> = Vec::new();
    let mut n = 0;
    for p in phases {
        for a in &p.attempts {
            if let Some(o) = offset_of(a) {
                n += 1;
                // The TCP clock and our read of CLOCK_MONOTONIC differ by up to a ms.
                if !offs
                    .iter()
                    .any(|x| x.wrapping_sub(o).min(o.wrapping_sub(*x)) <= 2)
                {
                    offs.push(o);
                }
                let t = (a.local, p.server.clone());
                if !tuples.contains(&t) {
                    tuples.push(t);
                }
            }
        }
    }
    Offsets {
        connections: n,
        distinct: offs.len(),
        tuples: tuples.len(),
    }
}

/// Whether the first SYN of `next` carried a newer timestamp than the last segment of
/// `prev` (the TIME_WAIT socket's `ts_recent`), estimated from their TCP_TIMESTAMP reads.
pub(super) fn timestamp_class(prev: &Attempt, next: &Attempt) -> &'static str {
    let (Some(p), Some(n)) = (prev.tsval, next.tsval) else {
        return "unknown";
    };
    // prev's last segment came at most (end - read) after its read; next's first SYN left
    // connect_ms before its read.
    // prev's last timestamp lies between its read (`p`) and that bound; only a SYN newer than
    // the upper end is surely newer, and only one older than the lower end surely older.
    let prev_last =
        p.wrapping_add((prev.end_ns.saturating_sub(prev.tsval_ns) / 1_000_000) as u32 + 1);
    let syn = n.wrapping_sub(next.connect_ms as u32 + 1);
    if syn.wrapping_sub(prev_last) as i32 > TS_MARGIN_MS {
        "newer"
    } else if (syn.wrapping_sub(p) as i32) < -TS_MARGIN_MS {
        "older"
    } else {
        "close"
    }
}

/// What one phase's analysis reads: the lab, the phase's server, and what the kernel offers.
pub(super) struct PhaseContext<'a> {
    pub(super) lab: &'a Lab,
    pub(super) inode_name: &'a BTreeMap<u32, &'static str>,
    pub(super) dst: SocketAddr,
    pub(super) features: &'a Features,
}

impl PhaseContext<'_> {
    fn ns_of(&self, netns: u32) -> &'static str {
        self.inode_name.get(&netns).copied().unwrap_or("?")
    }

    /// Where the kernel cannot report PAWS drops, their count is unknown, not zero.
    fn paws(&self, n: usize) -> Option<usize> {
        self.features.paws_events().is_ok().then_some(n)
    }
}

/// A phase's report from its attempts, the events of its window and the counters around it.
pub(super) fn analyse(
    name: &'static str,
    first: FirstCloser,
    cx: &PhaseContext,
    mut attempts: Vec<Attempt>,
    ev: &[Event],
    before: &Counters,
    after: &Counters,
) -> Result<PhaseReport> {
    let mut p = PhaseReport {
        name,
        first_closer: match first {
            FirstCloser::Client => "clients",
            FirstCloser::Server => "server",
        },
        server: cx.dst.to_string(),
        paws_rejected: cx.paws(0),
        timewait: timewait_born(cx, ev),
        ..Default::default()
    };
    attribute_server_events(cx, &mut attempts, ev);
    let mets: Vec<(&Attempt, &Met)> = attempts
        .iter()
        .flat_map(|a| a.met.iter().map(move |m| (a, m)))
        .collect();
    for (_, m) in &mets {
        p.syn_accepted += m.accepted;
        p.paws_rejected = p.paws_rejected.zip(m.paws_rejected).map(|(a, b)| a + b);
        p.rst_killed += m.rst_killed;
        p.other_killed += m.other_killed;
    }
    p.outcomes = outcomes(cx, &mets);
    for client in ["c1", "c2"] {
        p.clients
            .insert(client, client_summary(cx, client, &attempts, ev)?);
    }
    p.counters = counter_deltas(before, after);
    p.attempts = attempts;
    Ok(p)
}

/// Timewait sockets born per namespace, of connections to or from the phase's port.
pub(super) fn timewait_born(cx: &PhaseContext, ev: &[Event]) -> BTreeMap<&'static str, usize> {
    let mut born: BTreeMap<&'static str, usize> = NAMES.iter().map(|n| (*n, 0)).collect();
    for e in ev {
        if let Body::Enter { sock, .. } = &e.body {
            if sock.lport == cx.dst.port() || sock.rport == cx.dst.port() {
                *born.entry(cx.ns_of(sock.netns)).or_default() += 1;
            }
        }
    }
    born
}

/// Gives each attempt the server TIME_WAIT sockets its SYNs met ([`Attempt::met`]) and the
/// translated port of its own connection ([`Attempt::nat_port`]). Each attempt owns the
/// server's events from its start to the next attempt's start (attempts run one at a time).
pub(super) fn attribute_server_events(cx: &PhaseContext, attempts: &mut [Attempt], ev: &[Event]) {
    let starts: Vec<u64> = attempts.iter().map(|a| a.start_ns).collect();
    let window = |i: usize| starts[i]..starts.get(i + 1).copied().unwrap_or(u64::MAX);
    let server_ns = cx.lab.s.inode() as u32;
    let on_server = |e: &Event| {
        e.sock()
            .is_some_and(|s| s.netns == server_ns && s.lport == cx.dst.port())
    };
    // Translated port → the attempt whose connection left a server TIME_WAIT socket there.
    let mut owner: BTreeMap<u16, usize> = BTreeMap::new();
    for i in 0..attempts.len() {
        let win = window(i);
        let mut met: Vec<Met> = Vec::new();
        let mut own_port = None;
        for e in ev.iter().filter(|e| win.contains(&e.ts_ns) && on_server(e)) {
            let (port, kind) = match &e.body {
                Body::Exit {
                    sock,
                    reason: ExitReason::Syn,
                    ..
                } => (sock.rport, 0),
                Body::PawsReject { sock } => (sock.rport, 1),
                Body::Exit {
                    sock,
                    reason: ExitReason::Rst,
                    ..
                } => (sock.rport, 2),
                Body::Exit {
                    sock,
                    reason: ExitReason::Unknown,
                    ..
                } => (sock.rport, 3),
                // The server's TIME_WAIT socket of this attempt's own connection.
                Body::Enter { sock, .. } => {
                    own_port = Some(sock.rport);
                    continue;
                }
                _ => continue,
            };
            let k = match met.iter().position(|m| m.port == port) {
                Some(k) => k,
                None => {
                    let prev = owner.get(&port).map(|&j| &attempts[j]);
                    met.push(Met {
                        port,
                        previous: prev.map(|a| a.client).unwrap_or("?"),
                        timestamp: prev
                            .map(|a| timestamp_class(a, &attempts[i]))
                            .unwrap_or("unknown"),
                        accepted: 0,
                        paws_rejected: cx.paws(0),
                        rst_killed: 0,
                        other_killed: 0,
                    });
                    met.len() - 1
                }
            };
            match kind {
                0 => met[k].accepted += 1,
                1 => {
                    if let Some(n) = &mut met[k].paws_rejected {
                        *n += 1
                    }
                }
                2 => met[k].rst_killed += 1,
                _ => met[k].other_killed += 1,
            }
        }
        attempts[i].met = met;
        attempts[i].nat_port = own_port;
        if let Some(port) = own_port {
            owner.insert(port, i);
        }
    }
}

/// The SYNs that met a server TIME_WAIT socket, grouped by what the timestamps predict.
pub(super) fn outcomes(cx: &PhaseContext, mets: &[(&Attempt, &Met)]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for class in ["newer", "older", "close", "unknown"] {
        let these: Vec<&(&Attempt, &Met)> =
            mets.iter().filter(|(_, m)| m.timestamp == class).collect();
        if these.is_empty() {
            continue;
        }
        let sum = |f: fn(&Met) -> usize| these.iter().map(|(_, m)| f(m)).sum();
        out.push(Outcome {
            timestamp: class,
            n: these.len(),
            accepted: sum(|m| m.accepted),
            paws_rejected: cx.paws(sum(|m| m.paws_rejected.unwrap_or(0))),
            rst_killed: sum(|m| m.rst_killed),
            other_killed: sum(|m| m.other_killed),
            connect_failed: these.iter().filter(|(a, _)| a.errno.is_some()).count(),
            connect_ms: Spread::of(
                &these
                    .iter()
                    .filter(|(a, _)| a.errno.is_none())
                    .map(|(a, _)| a.connect_ms)
                    .collect::<Vec<_>>(),
            ),
        });
    }
    out
}

/// One client's attempts, and its takeovers and refusals as the tracer saw them, held to the
/// reuse rule in force in its namespace.
pub(super) fn client_summary(
    cx: &PhaseContext,
    client: &'static str,
    attempts: &[Attempt],
    ev: &[Event],
) -> Result<ClientSummary> {
    let mine: Vec<&Attempt> = attempts.iter().filter(|a| a.client == client).collect();
    let ns = cx.lab.ns(client).inode() as u32;
    let mut s = ClientSummary {
        attempts: mine.len(),
        connected: mine.iter().filter(|a| a.errno.is_none()).count(),
        slow: mine
            .iter()
            .filter(|a| a.errno.is_none() && a.connect_ms >= 900)
            .count(),
        failed: mine.iter().filter(|a| a.errno.is_some()).count(),
        connect_ms: Spread::of(
            &mine
                .iter()
                .filter(|a| a.errno.is_none())
                .map(|a| a.connect_ms)
                .collect::<Vec<_>>(),
        ),
        tcp_tw_reuse: cx
            .lab
            .ns(client)
            .read_sysctl("net.ipv4.tcp_tw_reuse")
            .unwrap_or_default(),
        ..Default::default()
    };
    let rule = cx.features.reuse_rule_in(cx.lab.ns(client))?;
    let port = cx.dst.port();
    let taken = reuses(ev, |sock| sock.netns == ns && sock.rport == port);
    s.reused = taken.len();
    s.reuse_early = taken
        .iter()
        .filter(|r| rule.early(r.age_ms, r.birth_ns, r.exit_ns))
        .count();
    s.reuse_age_ms = Spread::of(&taken.iter().map(|r| r.age_ms).collect::<Vec<_>>());
    for e in ev {
        if let Body::ConnectFail { sock, refusal, .. } = &e.body {
            if sock.netns == ns && sock.rport == port {
                *s.refusals.entry(refusal.as_str()).or_default() += 1;
            }
        }
    }
    Ok(s)
}

/// Every counter's delta over the phase, per namespace (`None` where the kernel lacks it).
pub(super) fn counter_deltas(
    before: &Counters,
    after: &Counters,
) -> BTreeMap<&'static str, BTreeMap<&'static str, Option<u64>>> {
    let mut out = BTreeMap::new();
    for n in NAMES {
        let mut m = BTreeMap::new();
        for (_, c) in COUNTERS {
            let get = |x: &Counters| x.get(n).and_then(|m| m.get(c)).copied().flatten();
            let delta = get(after)
                .zip(get(before))
                .map(|(a, b)| a.saturating_sub(b));
            m.insert(c, delta);
        }
        out.insert(n, m);
    }
    out
}
