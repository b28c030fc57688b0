//! `twtrace lab nat`: does TIME_WAIT reuse work behind NAT on this kernel? Two client
//! namespaces behind a masquerading router namespace, one server namespace, short connections
//! from both clients to one server port, traced all at once.
//!
//! ```text
//!  c1 198.18.1.2 ─┐                                   (nftables masquerade; the server port's
//!                 ├─ r 198.18.{1,2}.1 │ 198.19.0.1 ── s 198.19.0.2   translations forced into
//!  c2 198.18.2.2 ─┘                                    NAT_PORTS so 4-tuples collide)
//! ```
//!
//! Phase 1, clients close first: TIME_WAIT lands on the clients, where `tcp_tw_reuse` decides
//! (c1 has 1, c2 the default 2). Phase 2, server closes first: TIME_WAIT lands on the server,
//! keyed by the router's translated tuple; a new SYN from the *other* client on the same
//! translated tuple meets it, and its fate depends on the timestamps (each client has its own
//! random offset): newer → accepted as a new incarnation (`syn`), older → dropped by PAWS.

mod analyse;
mod attempt;
mod network;
mod render;

use analyse::{analyse, offsets, PhaseContext};
use attempt::attempt;
use network::Lab;
use render::findings;
pub use render::{counter, render_nat};

use crate::experiments::verify::{proc_net, Interrupted, Spread, Watch};
use crate::experiments::workload::{serve, FirstCloser};
use crate::host::netns::parse_netstat;
use crate::kernel::sysinfo::monotonic_ns;
use crate::pipeline::event::Event;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
const ROUTER_OUT: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// Phase 2's server port, whose translations are forced into `NAT_PORTS`.
const PORT_SERVER_FIRST: u16 = 8080;
const PORT_CLIENTS_FIRST: u16 = 8081;
/// Translated source ports for the server-closes-first phase (an even count).
pub const NAT_PORTS: (u16, u16) = (40000, 40003);
/// The clients' own ephemeral range in the clients-close-first phase: small, so connect() has
/// to take over TIME_WAIT sockets or fail.
const CLIENT_PORTS: (u16, u16) = (41000, 41003);
/// Conntrack keeps a closed flow (and its translated port) 120 s by default; the lab lets
/// the router forget it after 1 s so the port is handed to the other client while the server
/// still holds TIME_WAIT on it.
const CONNTRACK_TIME_WAIT_S: &str = "1";
/// A flow reset by RST: kept 3 s (default 10), long enough that a SYN retransmitted 1 s
/// later keeps its translation, short enough not to starve the 4 translated ports.
const CONNTRACK_CLOSE_S: &str = "3";
/// Timestamps closer than this (ms) are not called newer or older.
const TS_MARGIN_MS: i32 = 50;

#[derive(Clone, Debug)]
pub struct NatOptions {
    /// Connections per client per phase.
    pub per_client: usize,
}

impl Default for NatOptions {
    fn default() -> Self {
        NatOptions { per_client: 6 }
    }
}

/// One client's connection attempt.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub client: &'static str,
    /// Monotonic ns when the attempt began / ended.
    pub start_ns: u64,
    pub end_ns: u64,
    pub local: Option<SocketAddr>,
    /// Time of the connect() that succeeded or finally failed (ms).
    pub connect_ms: u64,
    /// connect() calls that failed with EADDRNOTAVAIL before the last one.
    pub addrnotavail_retries: u32,
    /// errno of the final failure.
    pub errno: Option<i32>,
    /// The connection's TCP timestamp clock right after connect (`TCP_TIMESTAMP`).
    pub tsval: Option<u32>,
    /// Monotonic ns when `tsval` was read.
    pub tsval_ns: u64,
    /// Filled from the server's events: the router's translated source port of the
    /// connection that was made.
    pub nat_port: Option<u16>,
    /// The server TIME_WAIT sockets its SYNs met (a SYN retransmitted after an RST may be
    /// translated anew: conntrack drops the reset flow and maps the SYN again).
    pub met: Vec<Met>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientSummary {
    pub attempts: usize,
    pub connected: usize,
    /// Connected only after a SYN retransmission (≥ 900 ms).
    pub slow: usize,
    pub failed: usize,
    pub connect_ms: Option<Spread>,
    /// Timewait sockets connect() took over in this client (tcp_tw_reuse), with their ages.
    pub reused: usize,
    pub reuse_age_ms: Option<Spread>,
    /// Takeovers earlier than this kernel's reuse rule allows ([`crate::kernel::reuse_rule::ReuseRule::early`]).
    pub reuse_early: usize,
    /// Why connect() could not take one over (as the tracer classified it).
    pub refusals: BTreeMap<&'static str, usize>,
    pub tcp_tw_reuse: String,
}

/// A SYN that met a server TIME_WAIT socket for its translated 4-tuple.
#[derive(Clone, Debug, Serialize)]
pub struct Met {
    /// The translated source port (the router's).
    pub port: u16,
    /// The client whose connection left that TIME_WAIT socket ("?" if not seen).
    pub previous: &'static str,
    /// The SYN's timestamp against the last one that connection sent, as the measured
    /// `TCP_TIMESTAMP`s predict: `newer` (accept), `older` (PAWS drop), `close` or `unknown`.
    pub timestamp: &'static str,
    /// Server events in the attempt: accepted as a new incarnation (`syn` exit), dropped by
    /// PAWS (`paws_reject`; `None` where the kernel cannot report them), TIME_WAIT killed by
    /// RST (`rst` exit), or ended early for a reason the tracer could not tell (`unknown`
    /// exit: an RST on kernels whose tracepoints do not show it).
    pub accepted: usize,
    pub paws_rejected: Option<usize>,
    pub rst_killed: usize,
    pub other_killed: usize,
}

/// Outcomes of the SYNs that met a server TIME_WAIT socket, by what the timestamps predict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub timestamp: &'static str,
    pub n: usize,
    pub accepted: usize,
    pub paws_rejected: Option<usize>,
    pub rst_killed: usize,
    pub other_killed: usize,
    pub connect_failed: usize,
    pub connect_ms: Option<Spread>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseReport {
    pub name: &'static str,
    pub first_closer: &'static str,
    pub server: String,
    /// Timewait sockets born per namespace (c1, c2, router, server).
    pub timewait: BTreeMap<&'static str, usize>,
    pub clients: BTreeMap<&'static str, ClientSummary>,
    /// Server-side fates of SYNs that met a TIME_WAIT socket (`paws_rejected`: `None` where
    /// the kernel cannot report PAWS drops).
    pub syn_accepted: usize,
    pub paws_rejected: Option<usize>,
    pub rst_killed: usize,
    pub other_killed: usize,
    pub outcomes: Vec<Outcome>,
    /// Kernel counter deltas over the phase, per namespace (`None`: not available on this
    /// kernel).
    pub counters: BTreeMap<&'static str, BTreeMap<&'static str, Option<u64>>>,
    pub attempts: Vec<Attempt>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Offsets {
    pub connections: usize,
    /// Distinct timestamp offsets (TCP_TIMESTAMP minus the TCP clock) among them.
    pub distinct: usize,
    /// Distinct 4-tuples among them.
    pub tuples: usize,
}

/// What the running kernel lets the lab observe.
#[derive(Clone, Debug, Serialize)]
pub struct KernelSupport {
    /// The rule connect() reuses by: `tcp_tw_reuse_delay` (≥ 6.13) or `next_second`.
    pub reuse_rule: &'static str,
    pub reuse_rule_text: String,
    /// Why the tracer cannot report `paws_reject` events here (`None`: it can).
    pub paws_events_unavailable: Option<String>,
    /// Why the tracer cannot tell an RST kill (`rst` exit) here (`None`: it can): such a
    /// death is an `unknown` exit.
    pub rst_reason_unavailable: Option<String>,
    /// Counters this kernel does not have (`TcpExt:PAWSTimewait` before it was split out of
    /// `PAWSEstab`).
    pub counters_unavailable: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NatReport {
    pub nat_tool: String,
    pub nat_ports: [u16; 2],
    pub kernel: KernelSupport,
    pub timestamp_offsets: Offsets,
    pub phases: Vec<PhaseReport>,
    /// One-line answers, derived from the phases.
    pub findings: Vec<String>,
}

/// `PAWSTimewait` counts the PAWS drops of TIME_WAIT sockets on kernels that have it; older
/// ones (6.1, 6.12) count them in `PAWSEstab`, together with established sockets' drops.
const COUNTERS: [(&str, &str); 6] = [
    ("TcpExt", "TW"),
    ("TcpExt", "TWRecycled"),
    ("TcpExt", "PAWSTimewait"),
    ("TcpExt", "PAWSEstab"),
    ("Tcp", "OutRsts"),
    ("Tcp", "RetransSegs"),
];
const NAMES: [&str; 4] = ["c1", "c2", "router", "server"];

type Counters = BTreeMap<&'static str, BTreeMap<&'static str, Option<u64>>>;

/// Every counter of [`COUNTERS`] in every namespace; `None` for one this kernel lacks.
fn read_counters(lab: &Lab) -> Result<Counters> {
    let mut out = BTreeMap::new();
    for n in NAMES {
        let ns = lab.ns(n);
        let netstat = proc_net(ns, "netstat")?;
        let snmp = proc_net(ns, "snmp")?;
        let mut m = BTreeMap::new();
        for (g, c) in COUNTERS {
            let text = if g == "Tcp" { &snmp } else { &netstat };
            m.insert(c, parse_netstat(text, g, c));
        }
        out.insert(n, m);
    }
    Ok(out)
}

/// The counters of [`COUNTERS`] missing from `c` (the kernel has no such counter).
fn missing_counters(c: &Counters) -> Vec<String> {
    COUNTERS
        .iter()
        .filter(|(_, name)| c.values().any(|m| m.get(name).copied().flatten().is_none()))
        .map(|(g, name)| format!("{g}:{name}"))
        .collect()
}

/// Runs the lab. `on_phase` hears what it is doing, for a spinner.
pub fn run_nat(
    opts: &NatOptions,
    cancel: Arc<AtomicBool>,
    mut on_phase: impl FnMut(&str),
) -> Result<NatReport> {
    if opts.per_client == 0 || opts.per_client > 50 {
        bail!("connections per client must be between 1 and 50");
    }
    let w = Watch::start(cancel.clone())?;
    on_phase("building c1, c2 → router (masquerade) → server");
    let lab = Lab::build(&w)?;
    let inode_name: BTreeMap<u32, &'static str> = NAMES
        .iter()
        .map(|n| (lab.ns(n).inode() as u32, *n))
        .collect();
    let all = [&lab.c1, &lab.c2, &lab.r, &lab.s];
    let rule = w.features().reuse_rule_in(&lab.c1)?;
    let paws_unavailable = w.features().paws_events().err();
    let mut counters_unavailable = Vec::new();
    let mut phases = Vec::new();
    for (name, first, port) in [
        (
            "clients close first",
            FirstCloser::Client,
            PORT_CLIENTS_FIRST,
        ),
        (
            "server closes first",
            FirstCloser::Server,
            PORT_SERVER_FIRST,
        ),
    ] {
        on_phase(name);
        let dst = SocketAddr::new(IpAddr::V4(SERVER), port);
        let server = serve(&lab.s, dst, first, Duration::ZERO)?;
        let before = read_counters(&lab)?;
        counters_unavailable = missing_counters(&before);
        let t_start = monotonic_ns();
        let attempts = run_attempts(&w, &lab, dst, first, opts.per_client)?;
        // Let the last closes and the events settle.
        w.sleep(Duration::from_millis(300))?;
        let t_end = monotonic_ns();
        let after = read_counters(&lab)?;
        drop(server);
        let ev: Vec<Event> = w
            .events(&all)
            .into_iter()
            .filter(|e| (t_start..t_end).contains(&e.ts_ns))
            .collect();
        let cx = PhaseContext {
            lab: &lab,
            inode_name: &inode_name,
            dst,
            features: w.features(),
        };
        phases.push(analyse(name, first, &cx, attempts, &ev, &before, &after)?);
    }
    let kernel = KernelSupport {
        reuse_rule: rule.as_str(),
        reuse_rule_text: rule.describe(),
        paws_events_unavailable: paws_unavailable,
        rst_reason_unavailable: w.features().rst_reason().err(),
        counters_unavailable,
    };
    let offsets = offsets(&phases);
    let lost = w.lost();
    let findings = findings(&phases, &offsets, &kernel, lost);
    let nat_tool = lab.nat_tool.clone();
    drop(lab);
    w.stop()?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    Ok(NatReport {
        nat_tool,
        nat_ports: [NAT_PORTS.0, NAT_PORTS.1],
        kernel,
        timestamp_offsets: offsets,
        phases,
        findings,
    })
}

/// `per_client` attempts from each client in turn, spaced so that each phase's mechanism
/// shows.
fn run_attempts(
    w: &Watch,
    lab: &Lab,
    dst: SocketAddr,
    first: FirstCloser,
    per_client: usize,
) -> Result<Vec<Attempt>> {
    let mut attempts = Vec::new();
    for i in 0..per_client * 2 {
        w.check()?;
        let (client, ns) = if i % 2 == 0 {
            ("c1", &lab.c1)
        } else {
            ("c2", &lab.c2)
        };
        attempts.push(attempt(
            ns,
            client,
            dst,
            first,
            Duration::from_millis(1200),
        )?);
        // Server-first: long enough for the router's conntrack to forget (1 s) the flow two
        // attempts back, so its translated port is free again for the other client.
        w.sleep(Duration::from_millis(match first {
            FirstCloser::Server => 500,
            FirstCloser::Client => 150,
        }))?;
    }
    Ok(attempts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::reuse_rule::ReuseRule;

    fn phase_with(server: BTreeMap<&'static str, Option<u64>>) -> PhaseReport {
        PhaseReport {
            name: "server closes first",
            first_closer: "server",
            counters: [("server", server)].into_iter().collect(),
            ..Default::default()
        }
    }

    fn kernel(paws: Option<&str>) -> KernelSupport {
        KernelSupport {
            reuse_rule: ReuseRule::NextSecond.as_str(),
            reuse_rule_text: ReuseRule::NextSecond.describe(),
            paws_events_unavailable: paws.map(str::to_string),
            rst_reason_unavailable: None,
            counters_unavailable: vec!["TcpExt:PAWSTimewait".into()],
        }
    }

    #[test]
    fn counters_a_kernel_lacks_are_named() {
        let netstat = "TcpExt: TW TWRecycled PAWSEstab\nTcpExt: 6 3 2\n";
        let mut m = BTreeMap::new();
        for (g, c) in COUNTERS {
            if g == "TcpExt" {
                m.insert(c, parse_netstat(netstat, g, c));
            } else {
                m.insert(c, Some(0));
            }
        }
        let c: Counters = [("server", m)].into_iter().collect();
        assert_eq!(missing_counters(&c), vec!["TcpExt:PAWSTimewait"]);
    }

    #[test]
    fn missing_paws_events_are_not_zero_drops() {
        let counters = [("PAWSTimewait", None), ("PAWSEstab", Some(2))]
            .into_iter()
            .collect();
        let mut p = phase_with(counters);
        p.paws_rejected = None;
        let f = findings(&[p], &Offsets::default(), &kernel(Some("no reason")), 0).join("\n");
        assert!(
            f.contains("PAWS drops not reported per packet (no reason"),
            "{f}"
        );
        assert!(f.contains("PAWSEstab +2"), "{f}");
        assert!(!f.contains("dropped by PAWS"), "{f}");
        assert!(
            f.contains("not available on this kernel: TcpExt:PAWSTimewait"),
            "{f}"
        );
        assert!(f.contains("0 to 1 s"), "{f}");

        // Where the kernel reports them, the events and the counter are given.
        let counters = [("PAWSTimewait", Some(3)), ("PAWSEstab", Some(0))]
            .into_iter()
            .collect();
        let mut p = phase_with(counters);
        p.paws_rejected = Some(3);
        let mut k = kernel(None);
        k.counters_unavailable.clear();
        let f = findings(&[p], &Offsets::default(), &k, 0).join("\n");
        assert!(
            f.contains("3 dropped by PAWS (paws_reject events; server PAWSTimewait +3)"),
            "{f}"
        );
        assert!(!f.contains("not available"), "{f}");
    }

    #[test]
    fn unavailable_counters_render_as_na() {
        let p = phase_with([("PAWSTimewait", None)].into_iter().collect());
        let r = NatReport {
            nat_tool: "nftables".into(),
            nat_ports: [NAT_PORTS.0, NAT_PORTS.1],
            kernel: kernel(Some("no reason")),
            timestamp_offsets: Offsets::default(),
            phases: vec![p],
            findings: vec![],
        };
        let text = render_nat(&r);
        assert!(text.contains("PAWSTimewait=n/a"), "{text}");
        assert!(
            text.contains("paws_reject events not available (no reason)"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["phases"][0]["counters"]["server"]["PAWSTimewait"].is_null());
        assert!(json["phases"][0]["paws_rejected"].is_null());
    }
}
