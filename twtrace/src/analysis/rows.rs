//! The rows the aggregator keeps: per peer (keyed by the connecting side), per network
//! namespace (with the kernel's census), per process, and the totals.

use crate::analysis::forecast::{Forecast, PortRange};
use crate::analysis::hist::{LifetimeHist, RateWindow, RecentExits, N_BINS};
use crate::analysis::report::reasons_text;
use crate::host::sysctls::Sysctls;
use crate::host::workload::Workload;
use crate::pipeline::event::{ExitReason, Refusal, Sock, Task};
use std::net::IpAddr;
use std::sync::Arc;

pub const N_REASONS: usize = ExitReason::ALL.len();
/// Census slots (see [`crate::kernel::snapshot::NetnsCensus::counts`]).
pub const CENSUS_SLOTS: usize = twtrace_common::census::SLOTS as usize;
/// Census slot of timewait sockets in their TIME_WAIT substate.
pub const SLOT_TW: usize = twtrace_common::TCP_TIME_WAIT as usize;
/// Census slot of timewait sockets in their FIN_WAIT2 substate.
pub const SLOT_TW_FW2: usize = twtrace_common::census::TW_FIN_WAIT2 as usize;

/// Which end of the connection this host was, as far as the ports tell (a heuristic: the
/// kernel does not say who connected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// We connected: the local port is ephemeral and the row is a destination (raddr:rport).
    /// The side whose ports can run out.
    Client,
    /// We accepted: the local port is outside the ephemeral range and the remote port above
    /// it (and ≥ 1024). The row is a service (laddr:lport) and a client address.
    Server,
}

/// Classifies a socket by its ports and its netns's ephemeral range.
pub fn side_of(sock: &Sock, range: PortRange) -> Side {
    if !range.contains(sock.lport) && sock.rport >= 1024 && sock.rport > sock.lport {
        Side::Server
    } else {
        Side::Client
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub netns: u32,
    pub side: Side,
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    /// Client rows: the remote (destination) port. Server rows: the local (service) port.
    pub port: u16,
}

impl PeerKey {
    pub fn of(sock: &Sock, side: Side) -> PeerKey {
        PeerKey {
            netns: sock.netns,
            side,
            laddr: sock.laddr,
            raddr: sock.raddr,
            port: match side {
                Side::Client => sock.rport,
                Side::Server => sock.lport,
            },
        }
    }

    /// `10.0.0.1` (client rows) or `10.0.0.1:443` (server rows).
    pub fn local(&self) -> String {
        match self.side {
            Side::Client => addr_str(&self.laddr),
            Side::Server => crate::pipeline::event::endpoint(&self.laddr, self.port),
        }
    }

    /// `10.0.0.2:443` (client rows) or `10.0.0.2:*` (server rows: many client ports).
    pub fn remote(&self) -> String {
        match self.side {
            Side::Client => crate::pipeline::event::endpoint(&self.raddr, self.port),
            Side::Server => format!("{}:*", bracket(&self.raddr)),
        }
    }

    pub fn loopback(&self) -> bool {
        self.laddr.is_loopback() || self.raddr.is_loopback()
    }
}

fn addr_str(a: &IpAddr) -> String {
    if a.is_unspecified() {
        "*".into()
    } else {
        a.to_string()
    }
}

fn bracket(a: &IpAddr) -> String {
    match a {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}

/// One peer row.
#[derive(Clone, Debug)]
pub struct Peer {
    pub key: PeerKey,
    /// In TIME_WAIT now, by substate: `[TIME_WAIT, FIN_WAIT2]`. The split is as born and as
    /// promoted by `promote` events; the kernel promotes without an event when the peer's FIN
    /// re-arms the timer within the same wheel bucket, so FIN_WAIT2 may be overstated here
    /// (the census has the kernel's split per netns). The total is right.
    pub timewait: [u32; 2],
    /// TIME_WAIT sockets born while tracing.
    pub entries: u64,
    /// TIME_WAIT sockets that existed when tracing began.
    pub snapshot: u64,
    pub promotes: u64,
    /// Exits per reason, indexed by [`ExitReason::index`].
    pub exits: [u64; N_REASONS],
    pub lifetime: LifetimeHist,
    /// Youngest TIME_WAIT socket connect() took over (its age), ms.
    pub reuse_min_age_ms: Option<u64>,
    pub overflow: u64,
    pub aborts: u64,
    pub connect_fail: u64,
    pub last_refusal: Option<Refusal>,
    pub paws: u64,
    /// Whether the peer sends TCP timestamps, as far as the events prove it: a reuse needs
    /// them; a refusal for want of them proves the opposite.
    pub peer_timestamps: Option<bool>,
    /// A process connects toward this peer on sockets it bound first: its ports come from
    /// the namespace's one shared pool (see `bind_connect`).
    pub binds_first: bool,
    /// The workload of the row's latest event that named one.
    pub workload: Option<Arc<Workload>>,
    pub first_ns: u64,
    pub last_ns: u64,
    pub(crate) rate: RateWindow,
    /// After this, every socket counted in `timewait` must be dead.
    pub(crate) deadline_ns: u64,
}

impl Peer {
    pub(crate) fn new(key: PeerKey, ts: u64) -> Peer {
        Peer {
            key,
            timewait: [0; 2],
            entries: 0,
            snapshot: 0,
            promotes: 0,
            exits: [0; N_REASONS],
            lifetime: LifetimeHist::default(),
            reuse_min_age_ms: None,
            overflow: 0,
            aborts: 0,
            connect_fail: 0,
            last_refusal: None,
            paws: 0,
            peer_timestamps: None,
            binds_first: false,
            workload: None,
            first_ns: ts,
            last_ns: ts,
            rate: RateWindow::default(),
            deadline_ns: 0,
        }
    }

    pub fn timewait_total(&self) -> u64 {
        u64::from(self.timewait[0]) + u64::from(self.timewait[1])
    }

    pub fn exits_total(&self) -> u64 {
        self.exits.iter().sum()
    }

    pub fn exits_by(&self, r: ExitReason) -> u64 {
        self.exits[r.index()]
    }

    /// "expired 12 reused 3 rst 1": non-zero reasons only.
    pub fn exits_text(&self) -> String {
        reasons_text(&self.exits, false)
    }
}

/// The ephemeral port range of a netns's sysctls.
pub fn port_range(c: &Sysctls) -> Option<PortRange> {
    c.port_range
        .filter(|(lo, hi)| lo <= hi)
        .map(|(lo, hi)| PortRange { lo, hi })
}

/// The kernel's census of a netns, kept current from events until the next re-sync.
#[derive(Clone, Debug, PartialEq)]
pub struct CensusState {
    /// When the kernel counted (monotonic ns): events at or before it are in the counts.
    pub at_ns: u64,
    pub counts: [u64; CENSUS_SLOTS],
    /// Change of the TIME_WAIT / FIN_WAIT2-substate counts since, from events.
    pub(crate) delta: [i64; 2],
    /// At the last re-sync: what the events predicted minus what the kernel counted, for the
    /// two timewait slots. Non-zero means events were missed (or the kernel and the events
    /// disagree about when a socket was counted).
    pub last_drift: Option<[i64; 2]>,
}

impl CensusState {
    /// The count of a slot now (timewait slots include the events since the census).
    pub fn current(&self, slot: usize) -> u64 {
        match slot {
            SLOT_TW => self.timewait_split()[0],
            SLOT_TW_FW2 => self.timewait_split()[1],
            _ => self.counts.get(slot).copied().unwrap_or(0),
        }
    }

    /// `[TIME_WAIT, FIN_WAIT2]` substates now. A promotion the kernel had made before it
    /// counted can reach us as a `promote` event after the census: the FIN_WAIT2 slot then
    /// goes below zero while the socket was counted as TIME_WAIT already. The deficit moves
    /// to the other slot, so the total stays right.
    fn timewait_split(&self) -> [u64; 2] {
        let mut tw = self.counts[SLOT_TW] as i64 + self.delta[0];
        let mut fw2 = self.counts[SLOT_TW_FW2] as i64 + self.delta[1];
        if fw2 < 0 {
            tw += fw2;
            fw2 = 0;
        }
        if tw < 0 {
            fw2 = (fw2 + tw).max(0);
            tw = 0;
        }
        [tw as u64, fw2 as u64]
    }

    /// Both timewait substates.
    pub fn timewait(&self) -> u64 {
        self.current(SLOT_TW) + self.current(SLOT_TW_FW2)
    }
}

/// Per network namespace.
#[derive(Clone, Debug, Default)]
pub struct NetnsStats {
    pub netns: u32,
    /// Its sysctls (from `netns` events or [`Aggregator::set_context`]); all `None` until
    /// known.
    pub context: Sysctls,
    pub entries: u64,
    pub snapshot: u64,
    pub promotes: u64,
    pub exits: [u64; N_REASONS],
    pub overflow: u64,
    pub aborts: u64,
    pub connect_fail: u64,
    /// bind() to port 0 refused (EADDRINUSE): the shared pool was used up.
    pub bind_fail: u64,
    pub paws: u64,
    /// In TIME_WAIT now by substate, from events alone (the census is the kernel's view).
    pub timewait: [u64; 2],
    pub lifetime: LifetimeHist,
    /// All exits per display bin.
    pub bins: [u64; N_BINS],
    pub recent: RecentExits,
    pub census: Option<CensusState>,
    /// Counted by an earlier census and missing from the latest: the namespace is gone.
    pub gone: bool,
    pub(crate) rate: RateWindow,
}

/// Per process: the closer of a connection (its `enter`), the connecting process of a reuse
/// or a failed connect(), the process that reset a connection.
#[derive(Clone, Debug)]
pub struct ProcStats {
    pub pid: u32,
    pub comm: String,
    /// Connections it closed that went into TIME_WAIT.
    pub closes: u64,
    /// TIME_WAIT sockets its connect() took over.
    pub reuses: u64,
    pub connect_fail: u64,
    pub aborts: u64,
    pub bind_fail: u64,
    /// It binds its sockets before connect(): one pool of ports for every destination.
    pub binds_first: bool,
    /// The workload of its latest event that named one.
    pub workload: Option<Arc<Workload>>,
    pub last_ns: u64,
}

/// Per workload (cgroup): what its sockets and calls did. Keyed by the kernel's cgroup id.
#[derive(Clone, Debug)]
pub struct WorkloadStats {
    pub workload: Arc<Workload>,
    /// In TIME_WAIT now, by substate, as for peers.
    pub timewait: [u64; 2],
    pub entries: u64,
    pub exits: [u64; N_REASONS],
    pub overflow: u64,
    pub aborts: u64,
    pub connect_fail: u64,
    pub bind_fail: u64,
    pub paws: u64,
    pub binds_first: bool,
    pub last_ns: u64,
    /// After this, every socket counted in `timewait` must be dead.
    pub(crate) deadline_ns: u64,
}

impl WorkloadStats {
    pub fn new(workload: Arc<Workload>, ts: u64) -> WorkloadStats {
        WorkloadStats {
            workload,
            timewait: [0; 2],
            entries: 0,
            exits: [0; N_REASONS],
            overflow: 0,
            aborts: 0,
            connect_fail: 0,
            bind_fail: 0,
            paws: 0,
            binds_first: false,
            last_ns: ts,
            deadline_ns: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ProcKey {
    pid: u32,
    comm: [u8; 16],
}

impl ProcKey {
    pub(crate) fn of(t: &Task) -> ProcKey {
        let mut comm = [0u8; 16];
        let b = t.comm.as_bytes();
        let n = b.len().min(16);
        comm[..n].copy_from_slice(&b[..n]);
        ProcKey { pid: t.pid, comm }
    }
}

/// Whole-trace numbers.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub events: u64,
    /// Events per kind name (`enter`, `exit`, …, and any kind added later).
    pub by_kind: Vec<(&'static str, u64)>,
    pub lost: u64,
    pub exits: [u64; N_REASONS],
    /// First event's timestamp (monotonic ns).
    pub first_ns: Option<u64>,
    pub peers_evicted: u64,
    /// Evicted peer rows that still had sockets in TIME_WAIT.
    pub peers_evicted_busy: u64,
    pub procs_evicted: u64,
    pub workloads_evicted: u64,
    /// Namespace rows dropped (nothing in TIME_WAIT, gone or least recently active) to bound
    /// memory on hosts whose namespaces come and go.
    pub netns_evicted: u64,
    /// Sockets dropped from "in TIME_WAIT now" because their deadline passed unseen.
    pub stale_cleared: u64,
    pub lifetime: LifetimeHist,
    pub bins: [u64; N_BINS],
}

impl Totals {
    pub fn kind(&self, kind: &str) -> u64 {
        self.by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_peers: usize,
    pub max_procs: usize,
    pub max_workloads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_peers: 10_000,
            max_procs: 2_000,
            max_workloads: 2_000,
        }
    }
}

/// A peer row with what the front ends show next to it.
#[derive(Clone, Debug)]
pub struct PeerSummary<'a> {
    pub peer: &'a Peer,
    /// New TIME_WAIT sockets per second, recently.
    pub entry_rate: f64,
    /// Client rows only.
    pub forecast: Option<Forecast>,
}
