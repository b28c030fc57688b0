//! Summaries of the event stream: per peer, per network namespace, per process, plus the
//! state census kept current between kernel re-syncs. One implementation behind three front
//! ends: the live view ([`crate::frontend::tui`] and `--summary-every`), `twtrace report` (trace files)
//! and `twtrace serve` (Prometheus). Pure: no I/O, no wall clock: time comes from the events'
//! monotonic timestamps (and [`Aggregator::advance`] when nothing happens), so a replay of a
//! trace file gives the same numbers as the live session did.
//!
//! # API
//! ```text
//! let mut agg = Aggregator::new(Limits::default());
//! agg.set_context(netns, sysctls);  // if known; `netns` events in the stream do the same
//! for e in &events { agg.observe(e); }             // in time order
//! agg.advance(now_ns);                             // live only: time passes without events
//! agg.set_census(at_ns, &census);                  // live only: kernel counts per state
//! agg.peers() / agg.netns() / agg.processes() / agg.totals()   // read the tables
//! agg.peer_summary(peer)                           // a row with rate and port forecast
//! Report::render(&agg, 100)                        // the offline report as text
//! ```
//!
//! # Rows
//! A peer row is keyed by (netns, local address, remote address:port) for the side that
//! connected (see [`Side`]); on the accepting side every client port would be a row of its
//! own, so those rows are keyed by (netns, local address:port, remote address) instead.
//!
//! # Memory
//! Bounded by [`Limits`]: at most `max_peers` peer rows and `max_procs` process rows. When a
//! table is full the least recently active rows (preferring ones with nothing in TIME_WAIT)
//! are evicted in batches and counted ([`Totals::peers_evicted`]); their events stay in the
//! per-netns and global totals. A peer row costs about 300 bytes plus 8 bytes per distinct
//! lifetime bucket it has seen (typically a handful, at most ~1700).
//!
//! # Self-healing
//! A lost exit would leave a socket "in TIME_WAIT" for ever. Every socket's timer bounds its
//! life, so a row whose sockets are all past their deadline (timeout plus the timer wheel's
//! slack, plus 60 s for a FIN_WAIT2-substate socket that may be re-armed) is cleared and the
//! clearing counted ([`Totals::stale_cleared`]). The census is re-synced from the kernel.

use crate::analysis::forecast::{self, Forecast, ForecastInput, PortRange};
use crate::host::sysctls::Sysctls;
use crate::kernel::snapshot::NetnsCensus;
use crate::pipeline::event::{Body, Event, ExitReason, Refusal, Sock, Substate, Task};
use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

const NS: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const N_REASONS: usize = ExitReason::ALL.len();
/// Census slots (see [`NetnsCensus::counts`]).
pub const CENSUS_SLOTS: usize = twtrace_common::census::SLOTS as usize;
/// Census slot of timewait sockets in their TIME_WAIT substate.
pub const SLOT_TW: usize = twtrace_common::TCP_TIME_WAIT as usize;
/// Census slot of timewait sockets in their FIN_WAIT2 substate.
pub const SLOT_TW_FW2: usize = twtrace_common::census::TW_FIN_WAIT2 as usize;

// ---------------------------------------------------------------------------------------------
// Lifetime histogram

/// Values below this many ms get a bucket each.
const EXACT_MS: u64 = 128;
/// Sub-buckets per power of two above that: a bucket is at most 1/64 of its value wide.
const SUB_BITS: u32 = 6;

fn bucket_of(ms: u64) -> u16 {
    if ms < EXACT_MS {
        return ms as u16;
    }
    let ms = ms.min(u64::from(u32::MAX));
    let e = 63 - ms.leading_zeros(); // ≥ 7
    let sub = (ms >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (EXACT_MS + u64::from(e - 7) * (1 << SUB_BITS) + sub) as u16
}

/// (lowest value, width) of a bucket, in ms.
fn bucket_range(b: u16) -> (u64, u64) {
    let b = u64::from(b);
    if b < EXACT_MS {
        return (b, 1);
    }
    let i = b - EXACT_MS;
    let e = 7 + (i >> SUB_BITS) as u32;
    let sub = i & ((1 << SUB_BITS) - 1);
    let width = 1u64 << (e - SUB_BITS);
    (((1 << SUB_BITS) + sub) * width, width)
}

/// Lifetimes in ms: exact count, sum, min and max, and quantiles good to within 1 %.
/// Sparse (only the buckets seen), because lifetimes cluster: a row costs a few entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LifetimeHist {
    buckets: Vec<(u16, u32)>,
    count: u64,
    sum_ms: u64,
    min_ms: u64,
    max_ms: u64,
}

impl LifetimeHist {
    pub fn record(&mut self, ms: u64) {
        let b = bucket_of(ms);
        match self.buckets.binary_search_by_key(&b, |e| e.0) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(1),
            Err(i) => self.buckets.insert(i, (b, 1)),
        }
        if self.count == 0 || ms < self.min_ms {
            self.min_ms = ms;
        }
        self.max_ms = self.max_ms.max(ms);
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min_ms)
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max_ms)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms as f64 / self.count as f64)
    }

    /// The value below or at which a fraction `q` of the lifetimes lie (bucket midpoint,
    /// clamped to the exact min and max). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_finite() {
            q.clamp(0.0, 1.0)
        } else {
            0.5
        };
        if q == 0.0 {
            return Some(self.min_ms);
        }
        if q == 1.0 {
            return Some(self.max_ms);
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for &(b, n) in &self.buckets {
            seen += u64::from(n);
            if seen >= rank {
                let (lo, w) = bucket_range(b);
                return Some((lo + w / 2).clamp(self.min_ms, self.max_ms));
            }
        }
        Some(self.max_ms)
    }

    pub fn median(&self) -> Option<u64> {
        self.quantile(0.5)
    }

    /// Adds another histogram's contents.
    pub fn merge(&mut self, o: &LifetimeHist) {
        if o.count == 0 {
            return;
        }
        for &(b, n) in &o.buckets {
            match self.buckets.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(n),
                Err(i) => self.buckets.insert(i, (b, n)),
            }
        }
        self.min_ms = if self.count == 0 {
            o.min_ms
        } else {
            self.min_ms.min(o.min_ms)
        };
        self.max_ms = self.max_ms.max(o.max_ms);
        self.count += o.count;
        self.sum_ms = self.sum_ms.saturating_add(o.sum_ms);
    }
}

// ---------------------------------------------------------------------------------------------
// Display bins (the histogram people look at)

/// Lifetime bins for display: (upper bound in ms, exclusive; long label; label of ≤ 4
/// characters for narrow bars). Fine around 60 s, where expiries land (60 s to ~62 s with the
/// timer wheel's slack at HZ=250), coarse elsewhere.
pub const BINS: [(u64, &str, &str); 14] = [
    (10, "<10ms", "10ms"),
    (100, "10-100ms", ".1s"),
    (1_000, "0.1-1s", "1s"),
    (5_000, "1-5s", "5s"),
    (15_000, "5-15s", "15s"),
    (30_000, "15-30s", "30s"),
    (45_000, "30-45s", "45s"),
    (59_000, "45-59s", "59s"),
    (60_000, "59-60s", "60s"),
    (61_000, "60-61s", "61s"),
    (62_000, "61-62s", "62s"),
    (63_000, "62-63s", "63s"),
    (120_000, "63s-2m", "2m"),
    (u64::MAX, ">=2m", ">2m"),
];
pub const N_BINS: usize = BINS.len();

pub fn bin_of(ms: u64) -> usize {
    BINS.iter().position(|b| ms < b.0).unwrap_or(N_BINS - 1)
}

/// Exits per display bin over the last [`RECENT_S`] seconds (one slot per second).
pub const RECENT_S: usize = 60;

#[derive(Clone, Debug)]
pub struct RecentExits {
    head: u64,
    slots: Box<[[u32; N_BINS]; RECENT_S]>,
}

impl Default for RecentExits {
    fn default() -> Self {
        RecentExits {
            head: 0,
            slots: Box::new([[0; N_BINS]; RECENT_S]),
        }
    }
}

impl RecentExits {
    fn record(&mut self, ts_ns: u64, ms: u64) {
        let sec = ts_ns / NS;
        if sec > self.head {
            let gap = sec - self.head;
            if gap >= RECENT_S as u64 {
                self.slots.iter_mut().for_each(|s| *s = [0; N_BINS]);
            } else {
                for s in self.head + 1..=sec {
                    self.slots[(s % RECENT_S as u64) as usize] = [0; N_BINS];
                }
            }
            self.head = sec;
        } else if self.head - sec >= RECENT_S as u64 {
            return;
        }
        let slot = &mut self.slots[(sec % RECENT_S as u64) as usize][bin_of(ms)];
        *slot = slot.saturating_add(1);
    }

    /// Counts per bin over the seconds (now − 60 s, now].
    pub fn counts(&self, now_ns: u64) -> [u64; N_BINS] {
        let mut out = [0u64; N_BINS];
        let now = now_ns / NS;
        for k in 0..RECENT_S as u64 {
            let Some(s) = now.checked_sub(k) else { break };
            if s > self.head || self.head - s >= RECENT_S as u64 {
                continue;
            }
            for (o, v) in out
                .iter_mut()
                .zip(self.slots[(s % RECENT_S as u64) as usize])
            {
                *o += u64::from(v);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Rates

const RATE_SLOTS: u64 = 10;

/// Events per second over the last 10 s (1 s slots), from event timestamps.
#[derive(Clone, Copy, Debug, Default)]
struct RateWindow {
    head: u64,
    slots: [u32; RATE_SLOTS as usize],
}

impl RateWindow {
    fn add(&mut self, ts_ns: u64) {
        let sec = ts_ns / NS;
        if sec > self.head {
            if sec - self.head >= RATE_SLOTS {
                self.slots = [0; RATE_SLOTS as usize];
            } else {
                for s in self.head + 1..=sec {
                    self.slots[(s % RATE_SLOTS) as usize] = 0;
                }
            }
            self.head = sec;
        } else if self.head - sec >= RATE_SLOTS {
            return;
        }
        let s = &mut self.slots[(sec % RATE_SLOTS) as usize];
        *s = s.saturating_add(1);
    }

    /// Per second over the window ending at `now_ns`; over less than the window when the
    /// trace began less than a window ago (`start_ns`), but never less than one second.
    fn rate(&self, now_ns: u64, start_ns: u64) -> f64 {
        let now = now_ns / NS;
        let mut sum = 0u64;
        for k in 0..RATE_SLOTS {
            let Some(s) = now.checked_sub(k) else { break };
            if s > self.head || self.head - s >= RATE_SLOTS {
                continue;
            }
            sum += u64::from(self.slots[(s % RATE_SLOTS) as usize]);
        }
        let span = ((RATE_SLOTS - 1) * NS + now_ns % NS)
            .min(now_ns.saturating_sub(start_ns))
            .max(NS);
        sum as f64 / (span as f64 / NS as f64)
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and rows

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
    pub first_ns: u64,
    pub last_ns: u64,
    rate: RateWindow,
    /// After this, every socket counted in `timewait` must be dead.
    deadline_ns: u64,
}

impl Peer {
    fn new(key: PeerKey, ts: u64) -> Peer {
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

/// "expired 12 reused 3" (or "exp 12 reu 3" when `short`), non-zero reasons only.
pub fn reasons_text(exits: &[u64; N_REASONS], short: bool) -> String {
    let mut s = String::new();
    for r in ExitReason::ALL {
        let n = exits[r.index()];
        if n > 0 {
            if !s.is_empty() {
                s.push(' ');
            }
            let name = r.as_str();
            let name = if short {
                &name[..3.min(name.len())]
            } else {
                name
            };
            let _ = write!(s, "{name} {}", fmt_count(n));
        }
    }
    s
}

/// `tw_reuse=2 delay=1000ms max_tw=262144 ts=1 ports 32768-60999 (28232)`: the sysctls that
/// decide the port forecast, `?` where not known.
pub fn describe_sysctls(c: &Sysctls) -> String {
    fn o<T: std::fmt::Display>(v: &Option<T>) -> String {
        v.as_ref().map_or("?".into(), |v| v.to_string())
    }
    let mut s = format!(
        "tw_reuse={} delay={}ms max_tw={} ts={} ports ",
        o(&c.tw_reuse),
        o(&c.tw_reuse_delay_ms),
        o(&c.max_tw_buckets),
        o(&c.timestamps)
    );
    match port_range(c) {
        Some(r) => {
            let _ = write!(s, "{r} ({})", r.usable());
        }
        None => s.push('?'),
    }
    s
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
    delta: [i64; 2],
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
    rate: RateWindow,
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
    pub last_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ProcKey {
    pid: u32,
    comm: [u8; 16],
}

impl ProcKey {
    fn of(t: &Task) -> ProcKey {
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_peers: 10_000,
            max_procs: 2_000,
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

/// The tw_reuse advice for a row, where it matters: rows at risk or failing to connect, and
/// rows where reuse is at work; accepting-side rows say so. `short`: at most 13 characters.
pub fn advice_note(
    side: Side,
    f: Option<&Forecast>,
    connect_fail: u64,
    short: bool,
) -> &'static str {
    let pick = |a: forecast::ReuseAdvice| if short { a.short_note() } else { a.note() };
    match (side, f) {
        (Side::Server, _) if short => "accepting",
        (Side::Server, _) => "accepting side",
        (_, Some(f)) if f.risk > forecast::Risk::None || connect_fail > 0 => pick(f.reuse),
        (_, Some(f)) if f.reuse == forecast::ReuseAdvice::Active => pick(f.reuse),
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------------
// The aggregator

/// A row's measured lifetime is used for its forecast once the row has been watched this long
/// (60 s plus the timer wheel's slack): before, only the sockets that died early have exited.
pub const TRUST_LIFETIME_NS: u64 = 65 * NS;

pub struct Aggregator {
    limits: Limits,
    peers: HashMap<PeerKey, Peer>,
    /// Where a destination was last connected from, per netns: a failed connect() often has
    /// no local address yet and is booked on that row.
    last_laddr: HashMap<(u32, IpAddr, u16), IpAddr>,
    netns: HashMap<u32, NetnsStats>,
    procs: HashMap<ProcKey, ProcStats>,
    totals: Totals,
    events_rate: RateWindow,
    now_ns: u64,
    last_sweep_ns: u64,
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator::new(Limits::default())
    }
}

impl Aggregator {
    pub fn new(limits: Limits) -> Aggregator {
        Aggregator {
            limits: Limits {
                max_peers: limits.max_peers.max(1),
                max_procs: limits.max_procs.max(1),
            },
            peers: HashMap::new(),
            last_laddr: HashMap::new(),
            netns: HashMap::new(),
            procs: HashMap::new(),
            totals: Totals::default(),
            events_rate: RateWindow::default(),
            now_ns: 0,
            last_sweep_ns: 0,
        }
    }

    /// The latest time seen (event or [`Aggregator::advance`]), monotonic ns.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Seconds from the first event to now.
    pub fn span_s(&self) -> f64 {
        self.totals
            .first_ns
            .map_or(0.0, |f| self.now_ns.saturating_sub(f) as f64 / NS as f64)
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    pub fn peer(&self, key: &PeerKey) -> Option<&Peer> {
        self.peers.get(key)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Network namespaces seen (in events, contexts or censuses), by inode.
    pub fn netns(&self) -> impl Iterator<Item = &NetnsStats> {
        self.netns.values()
    }

    pub fn netns_stats(&self, netns: u32) -> Option<&NetnsStats> {
        self.netns.get(&netns)
    }

    pub fn processes(&self) -> impl Iterator<Item = &ProcStats> {
        self.procs.values()
    }

    /// Events per second, recently.
    pub fn events_rate(&self) -> f64 {
        self.events_rate.rate(self.now_ns, self.start_ns())
    }

    fn start_ns(&self) -> u64 {
        self.totals.first_ns.unwrap_or(self.now_ns)
    }

    /// New TIME_WAIT sockets per second toward a peer, recently.
    pub fn entry_rate(&self, p: &Peer) -> f64 {
        p.rate.rate(self.now_ns, self.start_ns())
    }

    /// New TIME_WAIT sockets per second in a netns, recently.
    pub fn netns_entry_rate(&self, n: &NetnsStats) -> f64 {
        n.rate.rate(self.now_ns, self.start_ns())
    }

    /// Lifetimes of exits in the last minute per display bin, in one netns or all.
    pub fn recent_exits(&self, netns: Option<u32>) -> [u64; N_BINS] {
        let mut out = [0; N_BINS];
        for n in self.netns.values() {
            if netns.is_none_or(|x| x == n.netns) {
                for (o, v) in out.iter_mut().zip(n.recent.counts(self.now_ns)) {
                    *o += v;
                }
            }
        }
        out
    }

    /// Sets a netns's sysctls (replaces what was there). `netns` events do the same.
    pub fn set_context(&mut self, netns: u32, ctx: Sysctls) {
        self.netns_entry(netns).context = ctx;
    }

    pub fn context(&self, netns: u32) -> Option<&Sysctls> {
        self.netns.get(&netns).map(|n| &n.context)
    }

    /// Takes the kernel's census taken at `at_ns` (monotonic). Events up to `at_ns` are
    /// assumed counted in it; later ones keep its timewait slots current. A namespace that
    /// had a census before and is absent now has gone away: its census is dropped and it is
    /// marked [`NetnsStats::gone`] (its totals stay for the report).
    pub fn set_census(&mut self, at_ns: u64, census: &[NetnsCensus]) {
        for n in self.netns.values_mut() {
            if n.census.is_some() && !census.iter().any(|c| c.netns == u64::from(n.netns)) {
                n.census = None;
                n.gone = true;
            }
        }
        for c in census {
            let Ok(ino) = u32::try_from(c.netns) else {
                continue;
            };
            let n = self.netns_entry(ino);
            let drift = n.census.as_ref().map(|old| {
                [
                    old.current(SLOT_TW) as i64 - c.counts[SLOT_TW] as i64,
                    old.current(SLOT_TW_FW2) as i64 - c.counts[SLOT_TW_FW2] as i64,
                ]
            });
            n.gone = false;
            n.census = Some(CensusState {
                at_ns,
                counts: c.counts,
                delta: [0; 2],
                last_drift: drift,
            });
        }
        self.now_ns = self.now_ns.max(at_ns);
    }

    /// Moves time forward without an event (live mode, once per refresh): rates decay and
    /// stale rows are swept.
    pub fn advance(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        self.sweep();
    }

    fn netns_entry(&mut self, netns: u32) -> &mut NetnsStats {
        self.netns.entry(netns).or_insert_with(|| NetnsStats {
            netns,
            ..NetnsStats::default()
        })
    }

    fn range_of(&self, netns: u32) -> PortRange {
        self.netns
            .get(&netns)
            .and_then(|n| port_range(&n.context))
            .unwrap_or(PortRange::DEFAULT)
    }

    /// Feeds one event.
    pub fn observe(&mut self, e: &Event) {
        let ts = e.ts_ns;
        self.now_ns = self.now_ns.max(ts);
        let t = &mut self.totals;
        t.events += 1;
        if t.first_ns.is_none_or(|f| ts < f) {
            t.first_ns = Some(ts);
        }
        let kind = e.kind();
        match t.by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => t.by_kind.push((kind, 1)),
        }
        self.events_rate.add(ts);
        match &e.body {
            Body::Enter {
                sock,
                substate,
                timeout_ms,
                task,
                snapshot,
                ..
            } => {
                let s = sub_index(*substate);
                let deadline = deadline(ts, *timeout_ms, *substate);
                let key = self.client_or_server(sock);
                if key.side == Side::Client {
                    self.remember_laddr(sock);
                }
                let p = self.peer_mut(key, ts);
                p.timewait[s] = p.timewait[s].saturating_add(1);
                p.deadline_ns = p.deadline_ns.max(deadline);
                if *snapshot {
                    p.snapshot += 1;
                } else {
                    p.entries += 1;
                    p.rate.add(ts);
                }
                let n = self.netns_entry(sock.netns);
                n.timewait[s] += 1;
                if *snapshot {
                    n.snapshot += 1;
                } else {
                    n.entries += 1;
                    n.rate.add(ts);
                }
                census_delta(n, ts, s, 1);
                if let Some(task) = task {
                    self.proc_mut(task, ts).closes += 1;
                }
            }
            Body::Promote {
                sock, timeout_ms, ..
            } => {
                let key = self.client_or_server(sock);
                let p = self.peer_mut(key, ts);
                p.promotes += 1;
                // The FIN_WAIT2-substate socket is a TIME_WAIT one now (if we counted it).
                if p.timewait[1] > 0 {
                    p.timewait[1] -= 1;
                    p.timewait[0] += 1;
                }
                p.deadline_ns = p
                    .deadline_ns
                    .max(deadline(ts, *timeout_ms, Substate::TimeWait));
                let n = self.netns_entry(sock.netns);
                n.promotes += 1;
                if n.timewait[1] > 0 {
                    n.timewait[1] -= 1;
                    n.timewait[0] += 1;
                }
                census_delta(n, ts, 1, -1);
                census_delta(n, ts, 0, 1);
            }
            Body::Exit {
                sock,
                substate,
                reason,
                lifetime_ms,
                task,
            } => {
                let s = sub_index(*substate);
                let key = self.client_or_server(sock);
                let p = self.peer_mut(key, ts);
                take_one(&mut p.timewait, s);
                p.exits[reason.index()] += 1;
                if let Some(l) = lifetime_ms {
                    p.lifetime.record(*l);
                }
                if *reason == ExitReason::Reused {
                    // tcp_twsk_unique only lets connect() take a socket whose peer sent
                    // timestamps.
                    p.peer_timestamps = Some(true);
                    if let Some(l) = lifetime_ms {
                        p.reuse_min_age_ms = Some(p.reuse_min_age_ms.map_or(*l, |m| m.min(*l)));
                    }
                }
                let n = self.netns_entry(sock.netns);
                take_one_u64(&mut n.timewait, s);
                n.exits[reason.index()] += 1;
                if let Some(l) = lifetime_ms {
                    n.lifetime.record(*l);
                    n.bins[bin_of(*l)] += 1;
                    n.recent.record(ts, *l);
                }
                census_delta(n, ts, s, -1);
                let t = &mut self.totals;
                t.exits[reason.index()] += 1;
                if let Some(l) = lifetime_ms {
                    t.lifetime.record(*l);
                    t.bins[bin_of(*l)] += 1;
                }
                if *reason == ExitReason::Reused {
                    if let Some(task) = task {
                        self.proc_mut(task, ts).reuses += 1;
                    }
                }
            }
            Body::Overflow { sock } => {
                let key = self.client_or_server(sock);
                self.peer_mut(key, ts).overflow += 1;
                self.netns_entry(sock.netns).overflow += 1;
            }
            Body::Abort { sock, task } => {
                let key = self.client_or_server(sock);
                self.peer_mut(key, ts).aborts += 1;
                self.netns_entry(sock.netns).aborts += 1;
                if let Some(task) = task {
                    self.proc_mut(task, ts).aborts += 1;
                }
            }
            Body::ConnectFail {
                sock,
                refusal,
                task,
                ..
            } => {
                // Always our connect(): a client row. Without a bound local address, book it
                // where that destination was last reached from.
                let mut key = PeerKey::of(sock, Side::Client);
                if key.laddr.is_unspecified() {
                    if let Some(l) = self.last_laddr.get(&(sock.netns, sock.raddr, sock.rport)) {
                        key.laddr = *l;
                    }
                }
                let p = self.peer_mut(key, ts);
                p.connect_fail += 1;
                p.last_refusal = Some(*refusal);
                if *refusal == Refusal::NoTimestamps {
                    p.peer_timestamps = Some(false);
                }
                self.netns_entry(sock.netns).connect_fail += 1;
                if let Some(task) = task {
                    self.proc_mut(task, ts).connect_fail += 1;
                }
            }
            Body::PawsReject { sock } => {
                let key = self.client_or_server(sock);
                self.peer_mut(key, ts).paws += 1;
                self.netns_entry(sock.netns).paws += 1;
            }
            Body::Netns { netns, sysctls } => self.set_context(*netns, sysctls.clone()),
            Body::Lost { count } => self.totals.lost += count,
        }
        if self.now_ns.saturating_sub(self.last_sweep_ns) >= NS {
            self.sweep();
        }
    }

    fn client_or_server(&self, sock: &Sock) -> PeerKey {
        PeerKey::of(sock, side_of(sock, self.range_of(sock.netns)))
    }

    fn remember_laddr(&mut self, sock: &Sock) {
        let k = (sock.netns, sock.raddr, sock.rport);
        if self.last_laddr.get(&k) == Some(&sock.laddr) {
            return;
        }
        if self.last_laddr.len() >= self.limits.max_peers.saturating_mul(2) {
            // Only a hint: start over rather than track recency.
            self.last_laddr.clear();
        }
        self.last_laddr.insert(k, sock.laddr);
    }

    fn peer_mut(&mut self, key: PeerKey, ts: u64) -> &mut Peer {
        if !self.peers.contains_key(&key) && self.peers.len() >= self.limits.max_peers {
            self.evict_peers();
        }
        let p = self.peers.entry(key).or_insert_with(|| Peer::new(key, ts));
        p.last_ns = p.last_ns.max(ts);
        p
    }

    /// Evicts the least recently active eighth of the rows, idle ones first. Batches (and a
    /// selection instead of a sort) keep the cost per new row O(1) amortised when a stream of
    /// new peers keeps the table full.
    fn evict_peers(&mut self) {
        let mut order: Vec<(bool, u64, PeerKey)> = self
            .peers
            .values()
            .map(|p| (p.timewait_total() > 0, p.last_ns, p.key))
            .collect();
        let n = (self.limits.max_peers / 8).max(1).min(order.len());
        // Only the n oldest are needed, not a full sort.
        if n < order.len() {
            order.select_nth_unstable(n);
        }
        for (busy, _, k) in order.into_iter().take(n) {
            self.peers.remove(&k);
            self.totals.peers_evicted += 1;
            if busy {
                self.totals.peers_evicted_busy += 1;
            }
        }
    }

    fn proc_mut(&mut self, t: &Task, ts: u64) -> &mut ProcStats {
        let key = ProcKey::of(t);
        if !self.procs.contains_key(&key) && self.procs.len() >= self.limits.max_procs {
            let mut order: Vec<(u64, ProcKey)> =
                self.procs.iter().map(|(k, p)| (p.last_ns, *k)).collect();
            let n = (self.limits.max_procs / 8).max(1).min(order.len());
            if n < order.len() {
                order.select_nth_unstable_by_key(n, |o| o.0);
            }
            for (_, k) in order.into_iter().take(n) {
                self.procs.remove(&k);
                self.totals.procs_evicted += 1;
            }
        }
        let p = self.procs.entry(key).or_insert_with(|| ProcStats {
            pid: t.pid,
            comm: t.comm.clone(),
            closes: 0,
            reuses: 0,
            connect_fail: 0,
            aborts: 0,
            last_ns: ts,
        });
        p.last_ns = p.last_ns.max(ts);
        p
    }

    /// Clears rows whose sockets must all be dead by now (see the module doc).
    fn sweep(&mut self) {
        self.last_sweep_ns = self.now_ns;
        let now = self.now_ns;
        let mut cleared: Vec<(u32, [u32; 2])> = Vec::new();
        for p in self.peers.values_mut() {
            if p.timewait_total() > 0 && p.deadline_ns > 0 && now > p.deadline_ns {
                cleared.push((p.key.netns, p.timewait));
                p.timewait = [0; 2];
            }
        }
        for (ns, tw) in cleared {
            self.totals.stale_cleared += u64::from(tw[0]) + u64::from(tw[1]);
            if let Some(n) = self.netns.get_mut(&ns) {
                for (count, t) in n.timewait.iter_mut().zip(tw) {
                    *count = count.saturating_sub(u64::from(t));
                }
            }
        }
    }

    /// A row with its rate and, for client rows, its port forecast (netns sysctls from
    /// [`Aggregator::set_context`]; the lifetime is the row's median exit once the row is
    /// older than [`TRUST_LIFETIME_NS`], else 60 s).
    pub fn peer_summary<'a>(&self, p: &'a Peer) -> PeerSummary<'a> {
        let entry_rate = self.entry_rate(p);
        let forecast = (p.key.side == Side::Client).then(|| {
            let n = self.netns.get(&p.key.netns);
            let ctx = n.map(|n| &n.context);
            // Exits seen before a whole lifetime has passed are the early deaths only (the
            // expiries are still to come): until then the forecast assumes 60 s.
            let lifetime_ms = p
                .lifetime
                .median()
                .filter(|_| self.now_ns.saturating_sub(p.first_ns) >= TRUST_LIFETIME_NS);
            let local_ts = ctx.and_then(|c| c.timestamps);
            forecast::forecast(&ForecastInput {
                timewait: p.timewait_total(),
                entry_rate,
                lifetime_s: lifetime_ms.map(|ms| ms as f64 / 1000.0),
                range: ctx.and_then(port_range),
                tw_reuse: ctx.and_then(|c| c.tw_reuse),
                reuse_delay_ms: ctx.and_then(|c| c.tw_reuse_delay_ms),
                // With timestamps off here, none are negotiated whatever the peer does.
                peer_timestamps: if local_ts == Some(0) {
                    Some(false)
                } else {
                    p.peer_timestamps
                },
                loopback: p.key.loopback(),
            })
        });
        PeerSummary {
            peer: p,
            entry_rate,
            forecast,
        }
    }
}

fn sub_index(s: Substate) -> usize {
    match s {
        Substate::FinWait2 => 1,
        // An unknown substate is shown as TIME_WAIT: it is a timewait socket either way.
        Substate::TimeWait | Substate::Other(_) => 0,
    }
}

/// Decrements the substate the exit names, or the other one when that is empty (a promotion
/// the kernel made without an event: `mod_timer_pending` within the same wheel bucket).
fn take_one(tw: &mut [u32; 2], s: usize) {
    if tw[s] > 0 {
        tw[s] -= 1;
    } else if tw[1 - s] > 0 {
        tw[1 - s] -= 1;
    }
}

fn take_one_u64(tw: &mut [u64; 2], s: usize) {
    if tw[s] > 0 {
        tw[s] -= 1;
    } else if tw[1 - s] > 0 {
        tw[1 - s] -= 1;
    }
}

fn census_delta(n: &mut NetnsStats, ts: u64, s: usize, d: i64) {
    if let Some(c) = &mut n.census {
        if ts > c.at_ns {
            c.delta[s] += d;
        }
    }
}

/// When a socket born (or re-armed) at `ts` with `timeout_ms` must be dead: the timer wheel
/// rounds long timers up by up to 1/8, the lifecycle settles deaths within milliseconds, and a
/// FIN_WAIT2-substate socket may be re-armed for 60 s by the peer's FIN without an event.
fn deadline(ts: u64, timeout_ms: u64, s: Substate) -> u64 {
    let extra = if s == Substate::FinWait2 { 60_000 } else { 0 };
    let ms = (timeout_ms.saturating_add(extra)).saturating_mul(5) / 4 + 10_000;
    ts.saturating_add(ms.saturating_mul(MS))
}

// ---------------------------------------------------------------------------------------------
// Formatting shared by the front ends (moved to the sink stage; the old paths still resolve)

pub use crate::sink::format::{fit, fmt_count, fmt_ms, fmt_opt_ms, fmt_pct, fmt_rate};
pub use crate::sink::table::{fit_columns, Col};

fn text_row(out: &mut String, cols: &[Col], keep: &[bool], cells: &[String], indent: &str) {
    out.push_str(indent);
    let mut first = true;
    for ((c, k), v) in cols.iter().zip(keep).zip(cells) {
        if !k {
            continue;
        }
        if !first {
            out.push(' ');
        }
        first = false;
        let v = fit(v, c.width);
        if c.right {
            let _ = write!(out, "{v:>w$}", w = c.width);
        } else {
            let _ = write!(out, "{v:<w$}", w = c.width);
        }
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out.push('\n');
}

/// Horizontal bars, one line per bin from the first to the last non-empty one:
/// `  60-61s |██████████▌        1234`.
pub fn text_histogram(bins: &[u64; N_BINS], width: usize, indent: &str) -> String {
    let mut out = String::new();
    let (Some(first), Some(last)) = (
        bins.iter().position(|&n| n > 0),
        bins.iter().rposition(|&n| n > 0),
    ) else {
        let _ = writeln!(out, "{indent}(no exits with a known lifetime)");
        return out;
    };
    let max = bins.iter().copied().max().unwrap_or(1).max(1);
    let bar_w = width.saturating_sub(indent.len() + 9 + 2 + 8).max(10);
    for (i, &n) in bins.iter().enumerate().take(last + 1).skip(first) {
        let eighths = ((n as f64 / max as f64) * (bar_w * 8) as f64).round() as usize;
        let eighths = if n > 0 { eighths.max(1) } else { 0 };
        let mut bar = "█".repeat(eighths / 8);
        if eighths % 8 > 0 {
            bar.push(['▏', '▎', '▍', '▌', '▋', '▊', '▉'][eighths % 8 - 1]);
        }
        let pad = bar_w.saturating_sub(bar.chars().count());
        let _ = writeln!(
            out,
            "{indent}{:>8} |{bar}{} {:>7}",
            BINS[i].1,
            " ".repeat(pad),
            n
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The offline report

/// The text report of `twtrace report` (and the end of a live session): totals, per netns,
/// per peer, per process, and a lifetime histogram.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// Target line width (tables drop their least important columns to fit).
    pub width: usize,
    /// Peer rows shown, most entries first (the rest are summed in one line).
    pub max_peers: usize,
    pub max_procs: usize,
}

impl Report {
    /// The report with the default row limits (50 peers, 20 processes).
    pub fn render(agg: &Aggregator, width: usize) -> String {
        Report {
            width,
            max_peers: 50,
            max_procs: 20,
        }
        .render_with(agg)
    }

    pub fn render_with(&self, agg: &Aggregator) -> String {
        let w = self.width.max(40);
        let mut out = String::new();
        let t = agg.totals();
        let entered: u64 = agg.netns().map(|n| n.entries).sum();
        let found: u64 = agg.netns().map(|n| n.snapshot).sum();
        let _ = writeln!(
            out,
            "{} events over {}",
            t.events,
            forecast::short_duration(agg.span_s())
        );
        let _ = writeln!(
            out,
            "entered TIME_WAIT: {entered} (+{found} there when tracing began)"
        );
        let _ = writeln!(
            out,
            "exits: {} {}",
            t.exits.iter().sum::<u64>(),
            reasons_text(&t.exits, false)
        );
        if t.lost > 0 {
            let _ = writeln!(
                out,
                "WARNING: {} events lost in the kernel (ring buffer full): counts are low",
                t.lost
            );
        }
        if t.peers_evicted > 0 || t.procs_evicted > 0 {
            let _ = writeln!(
                out,
                "note: {} peer and {} process rows evicted to bound memory",
                t.peers_evicted, t.procs_evicted
            );
            out.push_str("      (their events are in the totals)\n");
        }
        if t.stale_cleared > 0 {
            let _ = writeln!(
                out,
                "note: {} sockets never seen leaving (lost events?) cleared",
                t.stale_cleared
            );
        }

        // Per netns.
        out.push_str("\nPer network namespace\n");
        let cols = [
            col("NETNS", 10, true, 0),
            col("ENTERED", 8, true, 0),
            col("EXITS", 7, true, 1),
            col("MIN", 7, true, 4),
            col("MEDIAN", 7, true, 2),
            col("P99", 7, true, 3),
            col("MAX", 7, true, 2),
            col("OVERFLOW", 8, true, 5),
            col("ABORTS", 7, true, 6),
            col("CONNFAIL", 8, true, 5),
            col("PAWS", 6, true, 7),
            col("EXITS BY REASON", 40, false, 8),
        ];
        let keep = fit_columns(&cols, w - 2);
        let titles: Vec<String> = cols.iter().map(|c| c.title.to_string()).collect();
        text_row(&mut out, &cols, &keep, &titles, "  ");
        let mut ns: Vec<&NetnsStats> = agg.netns().collect();
        ns.sort_by_key(|n| (Reverse(n.entries + n.snapshot), n.netns));
        for n in ns {
            let h = &n.lifetime;
            let cells = [
                n.netns.to_string(),
                fmt_count(n.entries + n.snapshot),
                fmt_count(n.exits.iter().sum()),
                fmt_opt_ms(h.min()),
                fmt_opt_ms(h.median()),
                fmt_opt_ms(h.quantile(0.99)),
                fmt_opt_ms(h.max()),
                fmt_count(n.overflow),
                fmt_count(n.aborts),
                fmt_count(n.connect_fail),
                fmt_count(n.paws),
                reasons_text(&n.exits, false),
            ];
            text_row(&mut out, &cols, &keep, &cells, "  ");
        }

        // Per peer.
        let _ = writeln!(
            out,
            "\nPer peer ({} rows; REMOTE addr:* = clients of a LOCAL service)",
            agg.peer_count()
        );
        let cols = [
            col("NETNS", 10, true, 6),
            col("LOCAL", 21, false, 1),
            col("REMOTE", 23, false, 0),
            col("COUNT", 7, true, 0),
            col("MIN", 7, true, 4),
            col("MEDIAN", 7, true, 2),
            col("P99", 7, true, 3),
            col("MAX", 7, true, 2),
            col("REUSED", 6, true, 5),
            col("MINAGE", 7, true, 5),
            col("OVFL", 5, true, 7),
            col("ABORT", 5, true, 7),
            col("CFAIL", 5, true, 7),
            col("PAWS", 5, true, 8),
            col("EXITS BY REASON", 34, false, 9),
        ];
        let keep = fit_columns(&cols, w - 2);
        let titles: Vec<String> = cols.iter().map(|c| c.title.to_string()).collect();
        text_row(&mut out, &cols, &keep, &titles, "  ");
        let mut peers: Vec<&Peer> = agg.peers().collect();
        peers.sort_by_key(|p| {
            (
                Reverse(p.entries + p.snapshot),
                Reverse(p.connect_fail + p.overflow + p.aborts + p.paws),
                p.key,
            )
        });
        for p in peers.iter().take(self.max_peers) {
            let h = &p.lifetime;
            let cells = [
                p.key.netns.to_string(),
                p.key.local(),
                p.key.remote(),
                fmt_count(p.entries + p.snapshot),
                fmt_opt_ms(h.min()),
                fmt_opt_ms(h.median()),
                fmt_opt_ms(h.quantile(0.99)),
                fmt_opt_ms(h.max()),
                fmt_count(p.exits_by(ExitReason::Reused)),
                fmt_opt_ms(p.reuse_min_age_ms),
                fmt_count(p.overflow),
                fmt_count(p.aborts),
                fmt_count(p.connect_fail),
                fmt_count(p.paws),
                p.exits_text(),
            ];
            text_row(&mut out, &cols, &keep, &cells, "  ");
        }
        if peers.len() > self.max_peers {
            let rest = &peers[self.max_peers..];
            let _ = writeln!(
                out,
                "  … {} more peers with {} entries",
                rest.len(),
                rest.iter().map(|p| p.entries + p.snapshot).sum::<u64>()
            );
        }

        // Per process.
        out.push_str("\nPer process\n");
        let cols = [
            col("PID", 8, true, 0),
            col("COMM", 16, false, 0),
            col("CLOSED", 8, true, 0),
            col("REUSED", 8, true, 1),
            col("CONNFAIL", 8, true, 1),
            col("ABORTS", 8, true, 2),
        ];
        let keep = fit_columns(&cols, w - 2);
        let titles: Vec<String> = cols.iter().map(|c| c.title.to_string()).collect();
        text_row(&mut out, &cols, &keep, &titles, "  ");
        let mut procs: Vec<&ProcStats> = agg.processes().collect();
        procs.sort_by_key(|p| {
            (
                Reverse(p.closes + p.reuses + p.connect_fail + p.aborts),
                p.pid,
            )
        });
        for p in procs.iter().take(self.max_procs) {
            let cells = [
                p.pid.to_string(),
                p.comm.clone(),
                fmt_count(p.closes),
                fmt_count(p.reuses),
                fmt_count(p.connect_fail),
                fmt_count(p.aborts),
            ];
            text_row(&mut out, &cols, &keep, &cells, "  ");
        }
        if procs.len() > self.max_procs {
            let _ = writeln!(out, "  … {} more processes", procs.len() - self.max_procs);
        }

        // Histogram.
        let h = &t.lifetime;
        let _ = writeln!(
            out,
            "\nLifetime of {} exits: min {} median {} p99 {} max {}",
            h.count(),
            fmt_opt_ms(h.min()),
            fmt_opt_ms(h.median()),
            fmt_opt_ms(h.quantile(0.99)),
            fmt_opt_ms(h.max())
        );
        out.push_str(&text_histogram(&t.bins, w, "  "));
        out
    }
}

fn col(title: &'static str, width: usize, right: bool, prio: u8) -> Col {
    Col {
        title,
        width,
        right,
        prio,
    }
}

/// The compact periodic summary of `--summary-every`: a totals line and the top `n` client
/// peers by TIME_WAIT now, each line starting with `#` so it stands out among event lines.
pub fn summary_text(agg: &Aggregator, n: usize, width: usize) -> String {
    let mut out = String::new();
    let tw: u64 = agg.netns().map(|n| n.timewait[0] + n.timewait[1]).sum();
    let fw2: u64 = agg.netns().map(|n| n.timewait[1]).sum();
    let _ = writeln!(
        out,
        "# summary: {} events ({}/s), {} lost; in TIME_WAIT now {} (FIN_WAIT2 substate {}); {} peers",
        agg.totals().events,
        fmt_rate(agg.events_rate()),
        agg.totals().lost,
        tw,
        fw2,
        agg.peer_count()
    );
    let cols = [
        col("TW", 6, true, 0),
        col("NEW/s", 6, true, 0),
        col("PORTS", 6, true, 1),
        col("EXHAUST", 7, true, 1),
        col("MEDIAN", 7, true, 3),
        col("REMOTE", 23, false, 0),
        col("LOCAL", 21, false, 4),
        col("NETNS", 10, true, 5),
        col("NOTE", 28, false, 2),
    ];
    let keep = fit_columns(&cols, width.max(40) - 2);
    let mut rows: Vec<PeerSummary> = agg
        .peers()
        .filter(|p| p.timewait_total() > 0 || p.connect_fail > 0)
        .map(|p| agg.peer_summary(p))
        .collect();
    if rows.is_empty() {
        return out;
    }
    rows.sort_by(|a, b| {
        b.peer
            .timewait_total()
            .cmp(&a.peer.timewait_total())
            .then(b.entry_rate.total_cmp(&a.entry_rate))
            .then(a.peer.key.cmp(&b.peer.key))
    });
    let titles: Vec<String> = cols.iter().map(|c| c.title.to_string()).collect();
    text_row(&mut out, &cols, &keep, &titles, "# ");
    for r in rows.iter().take(n) {
        let p = r.peer;
        let (pct, eta) = match &r.forecast {
            Some(f) => (fmt_pct(f.pressure), f.exhaustion.to_string()),
            None => ("-".into(), "-".into()),
        };
        let note = advice_note(p.key.side, r.forecast.as_ref(), p.connect_fail, false).to_string();
        let cells = [
            fmt_count(p.timewait_total()),
            fmt_rate(r.entry_rate),
            pct,
            eta,
            fmt_opt_ms(p.lifetime.median()),
            p.key.remote(),
            p.key.local(),
            p.key.netns.to_string(),
            note,
        ];
        text_row(&mut out, &cols, &keep, &cells, "# ");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::forecast::Exhaustion;
    use crate::pipeline::event::Task;

    const NSX: u32 = 4026532000;

    fn sock(tw: u64, netns: u32, l: [u8; 4], lport: u16, r: [u8; 4], rport: u16) -> Sock {
        Sock::v4(tw, netns, l, lport, r, rport)
    }

    fn client(tw: u64, lport: u16) -> Sock {
        sock(tw, NSX, [10, 0, 0, 1], lport, [10, 0, 0, 2], 443)
    }

    fn task(pid: u32, comm: &str) -> Option<Task> {
        Some(Task {
            pid,
            comm: comm.into(),
        })
    }

    fn enter(ts_s: f64, s: Sock, sub: Substate) -> Event {
        Event {
            ts_ns: (ts_s * 1e9) as u64,
            body: Body::Enter {
                sock: s,
                substate: sub,
                timeout_ms: 60_000,
                task: task(100, "curl"),
                snapshot: false,
                age_ms: None,
            },
        }
    }

    fn exit(ts_s: f64, s: Sock, sub: Substate, reason: ExitReason, life_ms: u64) -> Event {
        Event {
            ts_ns: (ts_s * 1e9) as u64,
            body: Body::Exit {
                sock: s,
                substate: sub,
                reason,
                lifetime_ms: Some(life_ms),
                task: task(200, "wget"),
            },
        }
    }

    fn ev(ts_s: f64, body: Body) -> Event {
        Event {
            ts_ns: (ts_s * 1e9) as u64,
            body,
        }
    }

    #[test]
    fn histogram_buckets_are_tight_and_ordered() {
        let mut prev = 0u16;
        for ms in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            59_999,
            60_000,
            61_992,
            1 << 40,
        ] {
            let b = bucket_of(ms);
            assert!(b >= prev, "{ms}");
            prev = b;
            let (lo, w) = bucket_range(b);
            let ms = ms.min(u64::from(u32::MAX));
            assert!(lo <= ms && ms < lo + w, "{ms} in [{lo}, +{w})");
            assert!(w * 64 <= lo.max(64), "bucket {b} too wide: {w} at {lo}");
        }
    }

    #[test]
    fn quantiles_within_one_percent() {
        let mut h = LifetimeHist::default();
        assert_eq!(h.median(), None);
        for ms in 1..=1000u64 {
            h.record(ms * 100); // 0.1 s … 100 s
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.min(), Some(100));
        assert_eq!(h.max(), Some(100_000));
        let med = h.median().unwrap() as f64;
        assert!((med - 50_000.0).abs() / 50_000.0 < 0.01, "{med}");
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.01, "{p99}");
        assert_eq!(h.quantile(1.0), Some(100_000));
        assert_eq!(h.quantile(0.0), Some(100));
        // A single value is exact.
        let mut one = LifetimeHist::default();
        one.record(61_992);
        assert_eq!(one.median(), Some(61_992));
        // Merging equals recording into one.
        let mut a = LifetimeHist::default();
        let mut b = LifetimeHist::default();
        let mut all = LifetimeHist::default();
        for ms in [5u64, 70_000, 3, 61_000, 61_100] {
            (if ms % 2 == 0 { &mut a } else { &mut b }).record(ms);
            all.record(ms);
        }
        a.merge(&b);
        assert_eq!(a, all);
    }

    #[test]
    fn display_bins() {
        assert_eq!(BINS[bin_of(0)].1, "<10ms");
        assert_eq!(BINS[bin_of(59_999)].1, "59-60s");
        assert_eq!(BINS[bin_of(60_000)].1, "60-61s");
        assert_eq!(BINS[bin_of(61_992)].1, "61-62s");
        assert_eq!(BINS[bin_of(u64::MAX)].1, ">=2m");
        assert!(BINS.iter().all(|b| b.2.chars().count() <= 4));
    }

    #[test]
    fn rate_window_counts_recent_seconds() {
        let mut r = RateWindow::default();
        // 10 per second for 20 s, from t = 100 s.
        for i in 0..200u64 {
            r.add(100 * NS + i * NS / 10);
        }
        let now = 120 * NS;
        let rate = r.rate(now, 100 * NS);
        assert!((rate - 10.0).abs() < 1.1, "{rate}");
        // Nothing new: decays to zero after the window.
        assert_eq!(r.rate(200 * NS, 100 * NS), 0.0);
        // Early in a trace the rate is over the time elapsed, at least one second.
        let mut r = RateWindow::default();
        for i in 0..30u64 {
            r.add(50 * NS + i * NS / 10); // 3 s at 10/s
        }
        let rate = r.rate(53 * NS, 50 * NS);
        assert!((rate - 10.0).abs() < 0.01, "{rate}");
        // Out-of-order and ancient timestamps: no panic, no effect on the window.
        r.add(0);
        r.add(52 * NS);
        assert!(r.rate(53 * NS, 50 * NS) > 10.0);
    }

    #[test]
    fn peer_rows_track_timewait_substates_and_exits() {
        let mut a = Aggregator::default();
        a.observe(&enter(1.0, client(1, 40001), Substate::TimeWait));
        a.observe(&enter(1.1, client(2, 40002), Substate::FinWait2));
        a.observe(&enter(1.2, client(3, 40003), Substate::FinWait2));
        a.observe(&ev(
            1.3,
            Body::Promote {
                sock: client(2, 40002),
                timeout_ms: 60_000,
                age_ms: Some(200),
            },
        ));
        assert_eq!(a.peer_count(), 1);
        let p = a.peers().next().unwrap();
        assert_eq!(p.key.side, Side::Client);
        assert_eq!(p.key.remote(), "10.0.0.2:443");
        assert_eq!(p.key.local(), "10.0.0.1");
        assert_eq!(p.timewait, [2, 1]);
        assert_eq!(p.entries, 3);
        a.observe(&exit(
            62.0,
            client(1, 40001),
            Substate::TimeWait,
            ExitReason::Expired,
            61_000,
        ));
        a.observe(&exit(
            3.0,
            client(3, 40003),
            Substate::FinWait2,
            ExitReason::Reused,
            1_800,
        ));
        let p = a.peers().next().unwrap();
        assert_eq!(p.timewait, [1, 0]);
        assert_eq!(p.exits_by(ExitReason::Expired), 1);
        assert_eq!(p.exits_by(ExitReason::Reused), 1);
        assert_eq!(p.reuse_min_age_ms, Some(1_800));
        assert_eq!(p.peer_timestamps, Some(true), "a reuse proves timestamps");
        assert_eq!(p.lifetime.count(), 2);
        assert_eq!(p.lifetime.max(), Some(61_000));
        assert_eq!(p.exits_text(), "expired 1 reused 1");
        let n = a.netns_stats(NSX).unwrap();
        assert_eq!(n.timewait, [1, 0]);
        assert_eq!(n.entries, 3);
        assert_eq!(n.bins[bin_of(61_000)], 1);
        // Per process: the closer on enter, the connecting process on reuse.
        let curl = a.processes().find(|p| p.comm == "curl").unwrap();
        assert_eq!((curl.pid, curl.closes), (100, 3));
        let wget = a.processes().find(|p| p.comm == "wget").unwrap();
        assert_eq!((wget.closes, wget.reuses), (0, 1));
        assert_eq!(a.totals().kind("enter"), 3);
        assert_eq!(a.totals().kind("exit"), 2);
        assert_eq!(a.totals().kind("promote"), 1);
    }

    #[test]
    fn exit_without_a_matching_substate_takes_the_other() {
        // The kernel can promote without an event; the exit then names TIME_WAIT.
        let mut a = Aggregator::default();
        a.observe(&enter(1.0, client(1, 40001), Substate::FinWait2));
        a.observe(&exit(
            61.0,
            client(1, 40001),
            Substate::TimeWait,
            ExitReason::Expired,
            60_000,
        ));
        assert_eq!(a.peers().next().unwrap().timewait, [0, 0]);
        // An exit for a socket never seen entering does not go negative.
        a.observe(&exit(
            62.0,
            client(9, 40009),
            Substate::TimeWait,
            ExitReason::Expired,
            60_000,
        ));
        assert_eq!(a.peers().next().unwrap().timewait, [0, 0]);
        assert_eq!(a.netns_stats(NSX).unwrap().timewait, [0, 0]);
    }

    #[test]
    fn server_side_sockets_group_by_service() {
        let mut a = Aggregator::default();
        for i in 0..50u16 {
            // We accepted on :8080; clients come from their ephemeral ports.
            let s = sock(
                u64::from(i),
                NSX,
                [10, 0, 0, 1],
                8080,
                [10, 0, 0, 9],
                50_000 + i,
            );
            a.observe(&enter(1.0, s, Substate::TimeWait));
        }
        assert_eq!(a.peer_count(), 1);
        let p = a.peers().next().unwrap();
        assert_eq!(p.key.side, Side::Server);
        assert_eq!(p.key.local(), "10.0.0.1:8080");
        assert_eq!(p.key.remote(), "10.0.0.9:*");
        assert_eq!(p.timewait_total(), 50);
        assert!(
            a.peer_summary(p).forecast.is_none(),
            "no port forecast for the accepting side"
        );
        // Both ports ephemeral (a loopback test server): a client row per destination.
        let s = sock(99, NSX, [127, 0, 0, 1], 40_000, [127, 0, 0, 1], 45_000);
        assert_eq!(side_of(&s, PortRange::DEFAULT), Side::Client);
        // A client with a bound low port toward 443.
        let s = sock(99, NSX, [10, 0, 0, 1], 20_000, [10, 0, 0, 2], 443);
        assert_eq!(side_of(&s, PortRange::DEFAULT), Side::Client);
    }

    #[test]
    fn several_local_addresses_have_separate_pools() {
        let mut a = Aggregator::default();
        a.set_context(
            NSX,
            Sysctls {
                port_range: Some((40000, 40009)),
                tw_reuse: Some(0),
                ..Sysctls::default()
            },
        );
        for i in 0..8u16 {
            let s = sock(
                u64::from(i),
                NSX,
                [10, 0, 0, 1],
                40000 + i,
                [10, 0, 0, 2],
                443,
            );
            a.observe(&enter(1.0 + f64::from(i) * 0.1, s, Substate::TimeWait));
        }
        for i in 0..3u16 {
            let s = sock(
                100 + u64::from(i),
                NSX,
                [10, 0, 0, 3],
                40000 + i,
                [10, 0, 0, 2],
                443,
            );
            a.observe(&enter(1.0, s, Substate::TimeWait));
        }
        a.advance(2 * NS);
        assert_eq!(a.peer_count(), 2);
        let mut rows: Vec<_> = a.peers().map(|p| a.peer_summary(p)).collect();
        rows.sort_by_key(|r| r.peer.key.laddr);
        let f1 = rows[0].forecast.unwrap();
        let f3 = rows[1].forecast.unwrap();
        // Each local address has all 10 ports toward 10.0.0.2:443: 8/10 and 3/10, not 11/10.
        assert_eq!(f1.ports, Some(10));
        assert_eq!(f1.pressure, Some(0.8));
        assert_eq!(f3.pressure, Some(0.3));
        assert_ne!(f3.exhaustion, Exhaustion::Now);
        assert!(matches!(f1.exhaustion, Exhaustion::In(_)), "{f1:?}");
        assert_eq!(f1.reuse, forecast::ReuseAdvice::WouldHelp);
    }

    #[test]
    fn forecast_uses_rate_range_and_measured_lifetime() {
        let mut a = Aggregator::default();
        a.set_context(
            NSX,
            Sysctls {
                port_range: Some((40000, 40999)), // 1000 ports
                tw_reuse: Some(2),
                timestamps: Some(1),
                ..Sysctls::default()
            },
        );
        // 50 connections per second for 10 s.
        for i in 0..500u64 {
            let t = 10.0 + i as f64 / 50.0;
            a.observe(&enter(t, client(i, 40000 + i as u16), Substate::TimeWait));
        }
        a.advance(20 * NS);
        let p = a.peers().next().unwrap();
        let s = a.peer_summary(p);
        assert!((s.entry_rate - 50.0).abs() < 5.0, "{}", s.entry_rate);
        let f = s.forecast.unwrap();
        // 50/s × 60 s = 3000 > 1000 ports, 500 held: about 10 s left.
        assert_eq!(f.lifetime_s, 60.0);
        match f.exhaustion {
            Exhaustion::In(t) => assert!((8.0..12.0).contains(&t), "{t}"),
            e => panic!("{e:?}"),
        }
        // 10.0.0.x is not loopback: tw_reuse=2 does not apply.
        assert_eq!(f.reuse, forecast::ReuseAdvice::WouldHelp);
        // Local timestamps off: reuse could not help whatever the peer does.
        // …as a `netns` event would say it.
        a.observe(&ev(
            21.0,
            Body::Netns {
                netns: NSX,
                sysctls: Sysctls {
                    port_range: Some((40000, 40999)),
                    tw_reuse: Some(2),
                    timestamps: Some(0),
                    ..Sysctls::default()
                },
            },
        ));
        let p = a.peers().next().unwrap();
        assert_eq!(
            a.peer_summary(p).forecast.unwrap().reuse,
            forecast::ReuseAdvice::CannotHelp
        );
        // Exits with a 5 s lifetime (e.g. RST-killed) count once the row is a lifetime old:
        // 50/s × 5 s = 250 < 1000 → fits.
        for i in 0..500u64 {
            a.observe(&exit(
                21.0 + i as f64 / 1000.0,
                client(i, 40000 + i as u16),
                Substate::TimeWait,
                ExitReason::Rst,
                5_000,
            ));
        }
        for i in 0..50u64 {
            a.observe(&enter(
                80.0 + i as f64 / 50.0,
                client(i, 40000),
                Substate::TimeWait,
            ));
        }
        a.advance(81 * NS);
        let p = a.peers().next().unwrap();
        let f = a.peer_summary(p).forecast.unwrap();
        assert_eq!(f.lifetime_s, 5.0);
        assert_eq!(f.exhaustion, Exhaustion::Never);
        // Without any context the range is unknown: no verdict.
        let mut b = Aggregator::default();
        b.observe(&enter(1.0, client(1, 40001), Substate::TimeWait));
        let p = b.peers().next().unwrap();
        assert_eq!(
            b.peer_summary(p).forecast.unwrap().exhaustion,
            Exhaustion::Unknown
        );
    }

    #[test]
    fn census_is_kept_current_between_resyncs() {
        let mut a = Aggregator::default();
        let mut counts = [0u64; CENSUS_SLOTS];
        counts[1] = 7; // ESTABLISHED
        counts[SLOT_TW] = 100;
        counts[SLOT_TW_FW2] = 5;
        a.set_census(
            10 * NS,
            &[NetnsCensus {
                netns: u64::from(NSX),
                counts,
            }],
        );
        // An event from before the census is in its counts already.
        a.observe(&enter(9.0, client(1, 40001), Substate::TimeWait));
        a.observe(&enter(11.0, client(2, 40002), Substate::TimeWait));
        a.observe(&enter(11.0, client(3, 40003), Substate::FinWait2));
        a.observe(&ev(
            12.0,
            Body::Promote {
                sock: client(3, 40003),
                timeout_ms: 60_000,
                age_ms: None,
            },
        ));
        a.observe(&exit(
            13.0,
            client(9, 40009),
            Substate::TimeWait,
            ExitReason::Expired,
            61_000,
        ));
        let c = a.netns_stats(NSX).unwrap().census.clone().unwrap();
        assert_eq!(c.current(1), 7);
        assert_eq!(c.current(SLOT_TW), 100 + 1 + 1 - 1);
        assert_eq!(c.current(SLOT_TW_FW2), 5);
        assert_eq!(c.timewait(), 106);
        assert_eq!(c.last_drift, None);
        // Re-sync: the kernel says 103 / 5, the events said 101 / 5.
        counts[SLOT_TW] = 103;
        a.set_census(
            20 * NS,
            &[NetnsCensus {
                netns: u64::from(NSX),
                counts,
            }],
        );
        let c = a.netns_stats(NSX).unwrap().census.clone().unwrap();
        assert_eq!(c.current(SLOT_TW), 103);
        assert_eq!(c.last_drift, Some([-2, 0]));
        // Never below zero, whatever the events say.
        for i in 0..200 {
            a.observe(&exit(
                21.0,
                client(1000 + i, 40000),
                Substate::FinWait2,
                ExitReason::Expired,
                60_000,
            ));
        }
        let c = a.netns_stats(NSX).unwrap().census.clone().unwrap();
        assert_eq!(c.current(SLOT_TW_FW2), 0);
        assert_eq!(c.timewait(), 0);
        // A promotion the kernel made before it counted, reported after: total unchanged.
        let mut counts = [0u64; CENSUS_SLOTS];
        counts[SLOT_TW] = 10;
        a.set_census(
            40 * NS,
            &[NetnsCensus {
                netns: u64::from(NSX),
                counts,
            }],
        );
        a.observe(&ev(
            41.0,
            Body::Promote {
                sock: client(1, 40001),
                timeout_ms: 60_000,
                age_ms: None,
            },
        ));
        let c = a.netns_stats(NSX).unwrap().census.clone().unwrap();
        assert_eq!((c.current(SLOT_TW), c.current(SLOT_TW_FW2)), (10, 0));
        // The namespace is missing from the next census: gone, no stale counts.
        a.set_census(50 * NS, &[]);
        let n = a.netns_stats(NSX).unwrap();
        assert!(n.gone && n.census.is_none());
        assert_eq!(n.entries, 3, "its totals stay");
    }

    #[test]
    fn other_kinds_are_booked_on_the_right_rows() {
        let mut a = Aggregator::default();
        a.observe(&enter(1.0, client(1, 40001), Substate::TimeWait));
        a.observe(&ev(
            2.0,
            Body::Overflow {
                sock: client(7, 40007),
            },
        ));
        a.observe(&ev(
            2.0,
            Body::Abort {
                sock: client(8, 40008),
                task: task(300, "proxy"),
            },
        ));
        a.observe(&ev(
            2.0,
            Body::PawsReject {
                sock: client(1, 40001),
            },
        ));
        // A failed connect() without a local address: booked where 10.0.0.2:443 was reached
        // from.
        let mut unbound = client(0, 0);
        unbound.laddr = "0.0.0.0".parse().unwrap();
        a.observe(&ev(
            3.0,
            Body::ConnectFail {
                sock: unbound.clone(),
                errno: libc::EADDRNOTAVAIL,
                refusal: Refusal::NoTimestamps,
                timewait: 1,
                candidates: None,
                task: task(300, "proxy"),
            },
        ));
        a.observe(&ev(4.0, Body::Lost { count: 17 }));
        assert_eq!(a.peer_count(), 1, "{:?}", a.peers().collect::<Vec<_>>());
        let p = a.peers().next().unwrap();
        assert_eq!((p.overflow, p.aborts, p.paws, p.connect_fail), (1, 1, 1, 1));
        assert_eq!(p.peer_timestamps, Some(false));
        assert_eq!(p.last_refusal, Some(Refusal::NoTimestamps));
        let proxy = a.processes().find(|p| p.comm == "proxy").unwrap();
        assert_eq!((proxy.aborts, proxy.connect_fail), (1, 1));
        assert_eq!(a.totals().lost, 17);
        let n = a.netns_stats(NSX).unwrap();
        assert_eq!((n.overflow, n.aborts, n.paws, n.connect_fail), (1, 1, 1, 1));
        // A destination never reached: its own row, local address "*".
        unbound.raddr = "10.9.9.9".parse().unwrap();
        a.observe(&ev(
            5.0,
            Body::ConnectFail {
                sock: unbound,
                errno: libc::EADDRNOTAVAIL,
                refusal: Refusal::NoTimewait,
                timewait: 0,
                candidates: None,
                task: None,
            },
        ));
        assert_eq!(a.peer_count(), 2);
        assert!(a.peers().any(|p| p.key.local() == "*"));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_peers() {
        let limits = Limits {
            max_peers: 1000,
            max_procs: 50,
        };
        let mut a = Aggregator::new(limits);
        let n = 100_000u64;
        for i in 0..n {
            let r = (i as u32).to_be_bytes();
            let s = sock(i, NSX, [10, 0, 0, 1], 40000, [11, r[1], r[2], r[3]], 443);
            let mut e = enter(1.0 + i as f64 * 1e-3, s.clone(), Substate::TimeWait);
            if let Body::Enter { task, .. } = &mut e.body {
                *task = Some(Task {
                    pid: i as u32,
                    comm: "x".into(),
                });
            }
            a.observe(&e);
            // Half of them leave at once: those rows are idle and go first.
            if i % 2 == 0 {
                a.observe(&exit(
                    1.0 + i as f64 * 1e-3,
                    s,
                    Substate::TimeWait,
                    ExitReason::Reused,
                    1000,
                ));
            }
        }
        assert!(a.peer_count() <= 1000);
        assert!(a.processes().count() <= 50);
        let t = a.totals();
        assert_eq!(t.peers_evicted + a.peer_count() as u64, n);
        assert_eq!(t.kind("enter"), n, "totals keep every event");
        assert_eq!(a.netns_stats(NSX).unwrap().entries, n);
        // The newest peer is always there.
        assert!(a.peers().any(|p| p.key.raddr.to_string() == "11.1.134.159"));
    }

    #[test]
    fn rows_past_their_deadline_are_cleared() {
        let mut a = Aggregator::default();
        a.observe(&enter(1.0, client(1, 40001), Substate::TimeWait));
        a.observe(&enter(1.0, client(2, 40002), Substate::FinWait2));
        // 60 s × 1.25 + 10 s = 85 s for the TIME_WAIT one; the FIN_WAIT2 one may be re-armed.
        // The FIN_WAIT2 one: (60 s + 60 s) × 1.25 + 10 s = 160 s after birth.
        a.advance(150 * NS);
        assert_eq!(a.peers().next().unwrap().timewait_total(), 2);
        a.advance(100 * NS); // time never goes back: still 150 s
        assert_eq!(a.now_ns(), 150 * NS);
        a.advance(162 * NS);
        assert_eq!(a.peers().next().unwrap().timewait_total(), 0);
        assert_eq!(a.totals().stale_cleared, 2);
        assert_eq!(a.netns_stats(NSX).unwrap().timewait, [0, 0]);
    }

    #[test]
    fn recent_exits_window() {
        let mut a = Aggregator::default();
        a.observe(&exit(
            100.0,
            client(1, 1),
            Substate::TimeWait,
            ExitReason::Expired,
            61_500,
        ));
        a.observe(&exit(
            150.0,
            client(2, 2),
            Substate::TimeWait,
            ExitReason::Reused,
            1_200,
        ));
        let r = a.recent_exits(None);
        assert_eq!(r[bin_of(61_500)], 1);
        assert_eq!(r[bin_of(1_200)], 1);
        a.advance(165 * NS);
        let r = a.recent_exits(Some(NSX));
        assert_eq!(r[bin_of(61_500)], 0, "older than a minute");
        assert_eq!(r[bin_of(1_200)], 1);
        assert_eq!(a.recent_exits(Some(1)).iter().sum::<u64>(), 0);
    }

    #[test]
    fn report_shows_every_section_with_numbers() {
        let mut a = Aggregator::default();
        for i in 0..10u64 {
            a.observe(&enter(1.0, client(i, 40000 + i as u16), Substate::TimeWait));
        }
        for i in 0..7u64 {
            a.observe(&exit(
                62.0,
                client(i, 40000 + i as u16),
                Substate::TimeWait,
                ExitReason::Expired,
                61_000 + i,
            ));
        }
        a.observe(&exit(
            2.5,
            client(7, 40007),
            Substate::TimeWait,
            ExitReason::Reused,
            1_500,
        ));
        a.observe(&ev(70.0, Body::Lost { count: 3 }));
        for width in [60usize, 80, 200] {
            let r = Report::render(&a, width);
            assert!(r.contains("Per network namespace"), "{r}");
            assert!(r.contains("Per peer"), "{r}");
            assert!(r.contains("Per process"), "{r}");
            assert!(r.contains("WARNING: 3 events lost"), "{r}");
            assert!(r.contains("10.0.0.2:443"), "{r}");
            assert!(r.contains("60-61s"), "{r}");
            assert!(r.contains("1-5s"), "{r}");
            for line in r.lines() {
                assert!(
                    line.chars().count() <= width.max(80),
                    "too wide at {width}: {line:?}"
                );
            }
        }
        let r = Report::render(&a, 200);
        let peer_line = r
            .lines()
            .find(|l| l.contains("10.0.0.2:443"))
            .expect("peer row");
        let cols: Vec<&str> = peer_line.split_whitespace().collect();
        // NETNS LOCAL REMOTE COUNT MIN MEDIAN P99 MAX REUSED MINAGE …
        assert_eq!(cols[3], "10", "{peer_line}");
        assert_eq!(cols[4], "1.5s", "{peer_line}");
        assert_eq!(cols[8], "1", "{peer_line}");
        assert_eq!(cols[9], "1.5s", "{peer_line}");
        assert!(peer_line.ends_with("expired 7 reused 1"), "{peer_line}");
        let curl = r.lines().find(|l| l.contains("curl")).unwrap();
        assert_eq!(curl.split_whitespace().nth(2), Some("10"), "{curl}");
    }

    #[test]
    fn summary_lists_pressure() {
        let mut a = Aggregator::default();
        a.set_context(
            NSX,
            Sysctls {
                port_range: Some((40000, 40003)),
                tw_reuse: Some(0),
                ..Sysctls::default()
            },
        );
        for i in 0..4u64 {
            a.observe(&enter(1.0, client(i, 40000 + i as u16), Substate::TimeWait));
        }
        let s = summary_text(&a, 5, 100);
        assert!(s.lines().all(|l| l.starts_with('#')), "{s}");
        let row = s.lines().find(|l| l.contains("10.0.0.2:443")).unwrap();
        assert!(row.contains("100%") && row.contains("NOW"), "{row}");
        assert!(row.ends_with("tw_reuse=1 would help"), "{row}");
    }

    #[test]
    fn fit_and_formatting() {
        assert_eq!(fit("abcdef", 6), "abcdef");
        assert_eq!(fit("abcdefgh", 5), "ab…gh");
        assert_eq!(fit("abc", 0), "");
        assert_eq!(fmt_ms(61_992), "62.0s");
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_count(12_345), "12.3k");
        assert_eq!(fmt_rate(0.31), "0.3");
        assert_eq!(fmt_pct(Some(0.5)), "50%");
        assert_eq!(fmt_pct(Some(0.0001)), "0.0%");
        let cols = [
            col("A", 10, false, 0),
            col("B", 10, false, 2),
            col("C", 10, false, 1),
        ];
        assert_eq!(fit_columns(&cols, 21), vec![true, false, true]);
        assert_eq!(fit_columns(&cols, 32), vec![true, true, true]);
    }
}
