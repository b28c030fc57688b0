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

use crate::experiments::verify::{proc_net, reuses, Interrupted, Spread, Watch};
use crate::experiments::workload::{serve, FirstCloser};
use crate::host::netns::{parse_netstat, NetNs};
use crate::kernel::features::Features;
use crate::kernel::sysinfo::monotonic_ns;
use crate::pipeline::event::{Body, Event, ExitReason};
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Takeovers earlier than this kernel's reuse rule allows ([`ReuseRule::early`]).
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

struct Lab {
    c1: NetNs,
    c2: NetNs,
    r: NetNs,
    s: NetNs,
    nat_tool: String,
}

impl Lab {
    fn ns(&self, name: &str) -> &NetNs {
        match name {
            "c1" => &self.c1,
            "c2" => &self.c2,
            "router" => &self.r,
            _ => &self.s,
        }
    }

    fn build(w: &Watch) -> Result<Lab> {
        let [c1, c2, r, s] = w.netns_n::<4>()?;
        c1.veth_to("c1r", "198.18.1.2/24", &r, "rc1", "198.18.1.1/24")?;
        c2.veth_to("c2r", "198.18.2.2/24", &r, "rc2", "198.18.2.1/24")?;
        r.veth_to(
            "rs",
            &format!("{ROUTER_OUT}/24"),
            &s,
            "sr",
            &format!("{SERVER}/24"),
        )?;
        c1.ip(&["route", "add", "default", "via", "198.18.1.1"])?;
        c2.ip(&["route", "add", "default", "via", "198.18.2.1"])?;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        let nat_tool = masquerade(&r)?;
        r.sysctl(
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
            CONNTRACK_TIME_WAIT_S,
        )?;
        r.sysctl(
            "net.netfilter.nf_conntrack_tcp_timeout_close",
            CONNTRACK_CLOSE_S,
        )?;
        // c1 may take over its TIME_WAIT sockets toward any peer; c2 keeps the default (2:
        // loopback only). Both keep the default tcp_timestamps=1: a random timestamp offset
        // per connection (6.18 draws it per 4-tuple), so no two clients', nor two of one
        // client's connections', clocks agree.
        c1.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        c2.sysctl("net.ipv4.tcp_tw_reuse", "2")?;
        for c in [&c1, &c2] {
            c.sysctl(
                "net.ipv4.ip_local_port_range",
                &format!("{} {}", CLIENT_PORTS.0, CLIENT_PORTS.1),
            )?;
        }
        Ok(Lab {
            c1,
            c2,
            r,
            s,
            nat_tool,
        })
    }
}

/// Installs the router's masquerade rules with nft, else iptables; returns which was used.
fn masquerade(r: &NetNs) -> Result<String> {
    let ruleset = format!(
        "table ip twtrace_lab {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"rs\" tcp dport {PORT_SERVER_FIRST} masquerade to :{}-{}\n\
         \t\toifname \"rs\" masquerade\n\
         \t}}\n\
         }}\n",
        NAT_PORTS.0, NAT_PORTS.1
    );
    let nft = r.run(move || -> std::io::Result<std::process::Output> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(ruleset.as_bytes())?;
        }
        child.wait_with_output()
    })?;
    let nft_err = match nft {
        Ok(o) if o.status.success() => return Ok("nftables".into()),
        Ok(o) => format!("nft: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("nft: {e}"),
    };
    let ports = format!("{}-{}", NAT_PORTS.0, NAT_PORTS.1);
    let dport = PORT_SERVER_FIRST.to_string();
    let ipt = r.run(move || -> std::io::Result<()> {
        let rules: [Vec<&str>; 2] = [
            vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "rs",
                "-p",
                "tcp",
                "--dport",
                &dport,
                "-j",
                "MASQUERADE",
                "--to-ports",
                &ports,
            ],
            vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "rs",
                "-j",
                "MASQUERADE",
            ],
        ];
        for args in rules {
            let o = Command::new("iptables").args(args).output()?;
            if !o.status.success() {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&o.stderr).trim().to_string(),
                ));
            }
        }
        Ok(())
    })?;
    match ipt {
        Ok(()) => Ok("iptables".into()),
        Err(e) => bail!(
            "cannot set up the router's masquerade ({nft_err}; iptables: {e}): install the \
             nftables package (or iptables)"
        ),
    }
}

/// `TCP_TIMESTAMP`: the connection's current TCP timestamp value (clock + its offset).
fn tcp_timestamp(s: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut v: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_TIMESTAMP,
            (&mut v as *mut u32).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

/// One connection from `ns` to `dst`: connect (retrying EADDRNOTAVAIL for `retry_for`), then
/// close first, or wait for the server's close first.
fn attempt(
    ns: &NetNs,
    client: &'static str,
    dst: SocketAddr,
    first: FirstCloser,
    retry_for: Duration,
) -> Result<Attempt> {
    ns.run(move || {
        let start_ns = monotonic_ns();
        let t0 = Instant::now();
        let mut a = Attempt {
            client,
            start_ns,
            end_ns: 0,
            local: None,
            connect_ms: 0,
            addrnotavail_retries: 0,
            errno: None,
            tsval: None,
            tsval_ns: 0,
            nat_port: None,
            met: Vec::new(),
        };
        loop {
            let c0 = Instant::now();
            // Long enough for three SYN retransmissions (1 s, 2 s and 4 s apart): each may be
            // translated onto another port whose TIME_WAIT drops it too (seen on 6.1: three in
            // a row, under emulation).
            match TcpStream::connect_timeout(&dst, Duration::from_secs(8)) {
                Ok(mut s) => {
                    a.connect_ms = c0.elapsed().as_millis() as u64;
                    a.local = s.local_addr().ok();
                    a.tsval = tcp_timestamp(&s);
                    a.tsval_ns = monotonic_ns();
                    if first == FirstCloser::Server {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                        let mut buf = [0u8; 64];
                        let _ = s.read(&mut buf);
                    }
                    drop(s);
                    break;
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                        && t0.elapsed() < retry_for =>
                {
                    a.addrnotavail_retries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    a.connect_ms = c0.elapsed().as_millis() as u64;
                    a.errno = Some(e.raw_os_error().unwrap_or(0));
                    break;
                }
            }
        }
        a.end_ns = monotonic_ns();
        a
    })
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
        let mut attempts = Vec::new();
        for i in 0..opts.per_client * 2 {
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
            // Server-first: long enough for the router's conntrack to forget (1 s) the flow
            // two attempts back, so its translated port is free again for the other client.
            w.sleep(Duration::from_millis(match first {
                FirstCloser::Server => 500,
                FirstCloser::Client => 150,
            }))?;
        }
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

/// Timestamp offset of a connection: its TCP_TIMESTAMP minus the TCP clock's ms (which is
/// CLOCK_MONOTONIC).
fn offset_of(a: &Attempt) -> Option<u32> {
    a.tsval
        .map(|t| t.wrapping_sub(((a.tsval_ns / 1_000_000) & 0xffff_ffff) as u32))
}

fn offsets(phases: &[PhaseReport]) -> Offsets {
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
fn timestamp_class(prev: &Attempt, next: &Attempt) -> &'static str {
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
struct PhaseContext<'a> {
    lab: &'a Lab,
    inode_name: &'a BTreeMap<u32, &'static str>,
    dst: SocketAddr,
    features: &'a Features,
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
fn analyse(
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
fn timewait_born(cx: &PhaseContext, ev: &[Event]) -> BTreeMap<&'static str, usize> {
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
fn attribute_server_events(cx: &PhaseContext, attempts: &mut [Attempt], ev: &[Event]) {
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
fn outcomes(cx: &PhaseContext, mets: &[(&Attempt, &Met)]) -> Vec<Outcome> {
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
fn client_summary(
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
        .filter(|r| rule.early(r.birth_ns, r.exit_ns))
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
fn counter_deltas(
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

/// A counter's delta over phase `p` in namespace `ns`; `None` where the kernel lacks it.
pub fn counter(p: &PhaseReport, ns: &str, name: &str) -> Option<u64> {
    p.counters
        .get(ns)
        .and_then(|m| m.get(name))
        .copied()
        .flatten()
}

/// A counter delta for text: the number, or "n/a" where the kernel lacks the counter.
fn shown(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into())
}

fn shown_usize(v: Option<usize>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into())
}

fn findings(
    phases: &[PhaseReport],
    offsets: &Offsets,
    kernel: &KernelSupport,
    lost: u64,
) -> Vec<String> {
    let mut out = Vec::new();
    for p in phases {
        let where_tw: Vec<String> = p.timewait.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push(format!(
            "{}: TIME_WAIT sockets were born on {}",
            p.name,
            where_tw.join(", ")
        ));
        if p.first_closer == "clients" {
            for (c, s) in &p.clients {
                let ages = s
                    .reuse_age_ms
                    .map(|a| format!(" at ages {}", a.ms()))
                    .unwrap_or_default();
                let early = if s.reused > 0 {
                    format!(
                        ", {} of them earlier than this kernel's reuse rule allows",
                        s.reuse_early
                    )
                } else {
                    String::new()
                };
                out.push(format!(
                    "{}: {c} (tcp_tw_reuse={}) took over {} of its TIME_WAIT sockets behind the \
                     NAT{ages} (TWRecycled +{}){early}; {} of {} connects failed{}",
                    p.name,
                    s.tcp_tw_reuse,
                    s.reused,
                    shown(counter(p, c, "TWRecycled")),
                    s.failed,
                    s.attempts,
                    refusal_text(&s.refusals)
                ));
            }
            continue;
        }
        let met = p.attempts.iter().filter(|a| !a.met.is_empty()).count();
        // PAWS drops: per packet where the kernel reports them; otherwise only the counters
        // speak, and a missing event proves nothing.
        let paws_text = match (p.paws_rejected, &kernel.paws_events_unavailable) {
            (Some(n), _) => format!(
                "{n} dropped by PAWS (paws_reject events; server PAWSTimewait +{})",
                shown(counter(p, "server", "PAWSTimewait"))
            ),
            (None, why) => format!(
                "PAWS drops not reported per packet ({}; server {})",
                why.as_deref().unwrap_or("not available on this kernel"),
                match counter(p, "server", "PAWSTimewait") {
                    Some(n) => format!("PAWSTimewait +{n}"),
                    None => format!(
                        "PAWSEstab +{}: without PAWSTimewait this kernel counts a TIME_WAIT \
                         socket's PAWS drops there, with established sockets' ones",
                        shown(counter(p, "server", "PAWSEstab"))
                    ),
                }
            ),
        };
        let other = match (p.other_killed, &kernel.rst_reason_unavailable) {
            (0, _) => String::new(),
            (n, Some(why)) => format!(", {n} ended with exit reason unknown ({why})"),
            (n, None) => format!(", {n} ended for a reason the tracer could not tell (unknown)"),
        };
        out.push(format!(
            "{}: {met} of {} connections' SYNs met a server TIME_WAIT socket on the same \
             translated 4-tuple ({} meetings): {} accepted as a new incarnation (syn exits), \
             {paws_text}, {} of those TIME_WAIT sockets then killed by RST (the client's answer \
             to the old connection's ACK; client OutRsts +{}){other}, {} connects failed",
            p.name,
            p.attempts.len(),
            p.outcomes.iter().map(|o| o.n).sum::<usize>(),
            p.syn_accepted,
            p.rst_killed,
            counter(p, "c1", "OutRsts").unwrap_or(0) + counter(p, "c2", "OutRsts").unwrap_or(0),
            p.outcomes.iter().map(|o| o.connect_failed).sum::<usize>()
        ));
        for o in &p.outcomes {
            out.push(format!(
                "{}: SYN timestamp {} than the TIME_WAIT's last: n={} → {} accepted, {} PAWS \
                 drops, {} RST kills{}, {} failed; connect {}",
                p.name,
                o.timestamp,
                o.n,
                o.accepted,
                shown_usize(o.paws_rejected),
                o.rst_killed,
                if o.other_killed > 0 {
                    format!(", {} unknown kills", o.other_killed)
                } else {
                    String::new()
                },
                o.connect_failed,
                o.connect_ms.map(|s| s.ms()).unwrap_or("-".into())
            ));
        }
    }
    out.push(format!(
        "timestamps: {} connections over {} 4-tuples showed {} distinct TCP timestamp offsets: \
         one random offset per 4-tuple, so a client behind NAT presents no single clock and a \
         server TIME_WAIT on a reused translated tuple sees older timestamps at random",
        offsets.connections, offsets.tuples, offsets.distinct
    ));
    out.push(format!(
        "kernel: connect() reuses by {}",
        kernel.reuse_rule_text
    ));
    if !kernel.counters_unavailable.is_empty() {
        out.push(format!(
            "kernel: not available on this kernel: {} (shown as n/a)",
            kernel.counters_unavailable.join(", ")
        ));
    }
    if lost > 0 {
        out.push(format!(
            "{lost} events were lost by the kernel: counts may be low"
        ));
    }
    out
}

fn refusal_text(r: &BTreeMap<&'static str, usize>) -> String {
    if r.is_empty() {
        return String::new();
    }
    format!(
        " (refused: {})",
        r.iter()
            .map(|(k, v)| format!("{v}× {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The human report.
pub fn render_nat(r: &NatReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "NAT lab: c1 198.18.1.2, c2 198.18.2.2 → router ({} masquerade; to server port \
         {PORT_SERVER_FIRST} translated into {}-{}) → server {SERVER}",
        r.nat_tool, r.nat_ports[0], r.nat_ports[1]
    );
    let _ = writeln!(
        s,
        "kernel: reuse rule {}; paws_reject events {}{}",
        r.kernel.reuse_rule,
        match &r.kernel.paws_events_unavailable {
            None => "available".to_string(),
            Some(why) => format!("not available ({why})"),
        },
        if r.kernel.counters_unavailable.is_empty() {
            String::new()
        } else {
            format!(
                "; counters not available on this kernel: {}",
                r.kernel.counters_unavailable.join(", ")
            )
        }
    );
    for p in &r.phases {
        let _ = writeln!(s, "\n== {} ({} → {}) ==", p.name, p.first_closer, p.server);
        let _ = writeln!(
            s,
            "  TIME_WAIT born: {}",
            p.timewait
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for (c, cs) in &p.clients {
            let _ = writeln!(
                s,
                "  {c} (tcp_tw_reuse={}): {} attempts, {} connected ({} after ≥0.9 s), {} \
                 failed; connect {}; took over {} TIME_WAIT{}{}",
                cs.tcp_tw_reuse,
                cs.attempts,
                cs.connected,
                cs.slow,
                cs.failed,
                cs.connect_ms.map(|x| x.ms()).unwrap_or("-".into()),
                cs.reused,
                cs.reuse_age_ms
                    .map(|a| format!(" (ages {}, {} early)", a.ms(), cs.reuse_early))
                    .unwrap_or_default(),
                refusal_text(&cs.refusals)
            );
        }
        if p.first_closer == "server" {
            let _ = writeln!(
                s,
                "  SYNs meeting a server TIME_WAIT: {} accepted (syn), {} PAWS drops, {} RST \
                 kills, {} unknown kills",
                p.syn_accepted,
                shown_usize(p.paws_rejected),
                p.rst_killed,
                p.other_killed
            );
            for o in &p.outcomes {
                let _ = writeln!(
                    s,
                    "    timestamp {:<7} n={} accepted={} paws={} rst={} unknown={} failed={} \
                     connect {}",
                    o.timestamp,
                    o.n,
                    o.accepted,
                    shown_usize(o.paws_rejected),
                    o.rst_killed,
                    o.other_killed,
                    o.connect_failed,
                    o.connect_ms.map(|x| x.ms()).unwrap_or("-".into())
                );
            }
        }
        let _ = writeln!(
            s,
            "  kernel counters (delta; n/a: not available on this kernel):"
        );
        for (n, m) in &p.counters {
            let _ = writeln!(
                s,
                "    {n:<7} {}",
                m.iter()
                    .map(|(k, v)| format!("{k}={}", shown(*v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let _ = writeln!(s, "  attempts:");
        for a in &p.attempts {
            let met: String = a
                .met
                .iter()
                .map(|m| {
                    format!(
                        "; met TIME_WAIT :{} left by {} (timestamp {}): syn={} paws={} rst={} \
                         unknown={}",
                        m.port,
                        m.previous,
                        m.timestamp,
                        m.accepted,
                        shown_usize(m.paws_rejected),
                        m.rst_killed,
                        m.other_killed
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "    {} {:<18} → :{:<5} {} {} ms{}{}",
                a.client,
                a.local.map(|l| l.to_string()).unwrap_or("-".into()),
                a.nat_port.map(|p| p.to_string()).unwrap_or("-".into()),
                match a.errno {
                    None => "ok".to_string(),
                    Some(e) => std::io::Error::from_raw_os_error(e).to_string(),
                },
                a.connect_ms,
                if a.addrnotavail_retries > 0 {
                    format!(" after {} EADDRNOTAVAIL", a.addrnotavail_retries)
                } else {
                    String::new()
                },
                met
            );
        }
    }
    let _ = writeln!(s, "\nFindings:");
    for f in &r.findings {
        let _ = writeln!(s, "  - {f}");
    }
    s
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
