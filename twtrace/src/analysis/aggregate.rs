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

use crate::analysis::forecast::{self, ForecastInput, PortRange};
use crate::analysis::hist::RateWindow;
pub use crate::analysis::hist::{bin_of, LifetimeHist, RecentExits, BINS, N_BINS, RECENT_S};
use crate::analysis::rows::ProcKey;
pub use crate::analysis::rows::{
    port_range, side_of, CensusState, Limits, NetnsStats, Peer, PeerKey, PeerSummary, ProcStats,
    Side, Totals, WorkloadStats, CENSUS_SLOTS, N_REASONS, SLOT_TW, SLOT_TW_FW2,
};
// The text forms moved to `report` (and values and tables to the sink stage); the old paths
// still resolve.
pub use crate::analysis::report::{
    advice_note, describe_sysctls, reasons_text, summary_text, text_histogram, Report,
};
use crate::host::sysctls::Sysctls;
use crate::host::workload::Workload;
use crate::kernel::snapshot::NetnsCensus;
use crate::pipeline::event::{Body, Event, ExitReason, Refusal, Sock, Substate, Task};
pub use crate::sink::format::{fit, fmt_count, fmt_ms, fmt_opt_ms, fmt_pct, fmt_rate};
pub use crate::sink::table::{fit_columns, Col};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

const NS: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

/// Namespace rows kept beyond the busy ones (see `Aggregator::evict_netns`): far more than
/// the containers of a large node, few enough to bound the memory (a row is ~1–15 KiB).
pub const MAX_NETNS: usize = 1024;

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
    /// Per cgroup id.
    workloads: HashMap<u64, WorkloadStats>,
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
                max_workloads: limits.max_workloads.max(1),
            },
            peers: HashMap::new(),
            last_laddr: HashMap::new(),
            netns: HashMap::new(),
            procs: HashMap::new(),
            workloads: HashMap::new(),
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

    /// Workloads (cgroups) seen in events.
    pub fn workloads(&self) -> impl Iterator<Item = &WorkloadStats> {
        self.workloads.values()
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
        if self.netns.len() >= MAX_NETNS && !self.netns.contains_key(&netns) {
            self.evict_netns();
        }
        self.netns.entry(netns).or_insert_with(|| NetnsStats {
            netns,
            ..NetnsStats::default()
        })
    }

    /// Drops the rows of up to an eighth of the namespaces that have nothing in TIME_WAIT,
    /// gone ones first, then the least recently entered: on a host whose containers come and
    /// go, the rows of deleted namespaces would otherwise pile up for ever. Their events stay
    /// in the global totals; the count is [`Totals::netns_evicted`]. A namespace with sockets
    /// in TIME_WAIT (or a current census) is kept, so the table is bounded by
    /// `MAX_NETNS` plus the namespaces that are busy now.
    fn evict_netns(&mut self) {
        let mut idle: Vec<(bool, u64, u32)> = self
            .netns
            .values()
            .filter(|n| n.timewait == [0, 0] && (n.gone || n.census.is_none()))
            .map(|n| (!n.gone, n.rate.last_s(), n.netns))
            .collect();
        idle.sort_unstable();
        for (_, _, ino) in idle.into_iter().take((MAX_NETNS / 8).max(1)) {
            self.netns.remove(&ino);
            self.totals.netns_evicted += 1;
        }
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
            } => self.on_enter(ts, sock, *substate, *timeout_ms, task.as_ref(), *snapshot),
            Body::Promote {
                sock, timeout_ms, ..
            } => self.on_promote(ts, sock, *timeout_ms),
            Body::Exit {
                sock,
                substate,
                reason,
                lifetime_ms,
                task,
            } => self.on_exit(ts, sock, *substate, *reason, *lifetime_ms, task.as_ref()),
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
            } => self.on_connect_fail(ts, sock, *refusal, task.as_ref()),
            Body::PawsReject { sock } => {
                let key = self.client_or_server(sock);
                self.peer_mut(key, ts).paws += 1;
                self.netns_entry(sock.netns).paws += 1;
            }
            Body::BindFail { netns, task, .. } => {
                self.netns_entry(*netns).bind_fail += 1;
                if let Some(task) = task {
                    let p = self.proc_mut(task, ts);
                    p.bind_fail += 1;
                    p.binds_first = true;
                }
            }
            Body::BoundConnect { sock, task } => {
                self.peer_mut(PeerKey::of(sock, Side::Client), ts)
                    .binds_first = true;
                if let Some(task) = task {
                    self.proc_mut(task, ts).binds_first = true;
                }
            }
            Body::Netns { netns, sysctls } => self.set_context(*netns, sysctls.clone()),
            Body::Lost { count } => self.totals.lost += count,
        }
        if let Some(w) = &e.workload {
            self.on_workload(e, w);
        }
        if self.now_ns.saturating_sub(self.last_sweep_ns) >= NS {
            self.sweep();
        }
    }

    /// A socket entered TIME_WAIT (or was found by the start-up snapshot).
    fn on_enter(
        &mut self,
        ts: u64,
        sock: &Sock,
        substate: Substate,
        timeout_ms: u64,
        task: Option<&Task>,
        snapshot: bool,
    ) {
        let s = sub_index(substate);
        let deadline = deadline(ts, timeout_ms, substate);
        let key = self.client_or_server(sock);
        if key.side == Side::Client {
            self.remember_laddr(sock);
        }
        let p = self.peer_mut(key, ts);
        p.timewait[s] = p.timewait[s].saturating_add(1);
        p.deadline_ns = p.deadline_ns.max(deadline);
        if snapshot {
            p.snapshot += 1;
        } else {
            p.entries += 1;
            p.rate.add(ts);
        }
        let n = self.netns_entry(sock.netns);
        n.timewait[s] += 1;
        if snapshot {
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

    /// A FIN_WAIT2-substate socket got the peer's FIN: it is a TIME_WAIT one now.
    fn on_promote(&mut self, ts: u64, sock: &Sock, timeout_ms: u64) {
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
            .max(deadline(ts, timeout_ms, Substate::TimeWait));
        let n = self.netns_entry(sock.netns);
        n.promotes += 1;
        if n.timewait[1] > 0 {
            n.timewait[1] -= 1;
            n.timewait[0] += 1;
        }
        census_delta(n, ts, 1, -1);
        census_delta(n, ts, 0, 1);
    }

    /// A socket left TIME_WAIT.
    fn on_exit(
        &mut self,
        ts: u64,
        sock: &Sock,
        substate: Substate,
        reason: ExitReason,
        lifetime_ms: Option<u64>,
        task: Option<&Task>,
    ) {
        let s = sub_index(substate);
        let key = self.client_or_server(sock);
        let p = self.peer_mut(key, ts);
        take_one(&mut p.timewait, s);
        p.exits[reason.index()] += 1;
        if let Some(l) = lifetime_ms {
            p.lifetime.record(l);
        }
        if reason == ExitReason::Reused {
            // tcp_twsk_unique only lets connect() take a socket whose peer sent
            // timestamps.
            p.peer_timestamps = Some(true);
            if let Some(l) = lifetime_ms {
                p.reuse_min_age_ms = Some(p.reuse_min_age_ms.map_or(l, |m| m.min(l)));
            }
        }
        let n = self.netns_entry(sock.netns);
        take_one_u64(&mut n.timewait, s);
        n.exits[reason.index()] += 1;
        if let Some(l) = lifetime_ms {
            n.lifetime.record(l);
            n.bins[bin_of(l)] += 1;
            n.recent.record(ts, l);
        }
        census_delta(n, ts, s, -1);
        let t = &mut self.totals;
        t.exits[reason.index()] += 1;
        if let Some(l) = lifetime_ms {
            t.lifetime.record(l);
            t.bins[bin_of(l)] += 1;
        }
        if reason == ExitReason::Reused {
            if let Some(task) = task {
                self.proc_mut(task, ts).reuses += 1;
            }
        }
    }

    /// An event of a known workload: its row, and the workload named on the event's peer and
    /// process rows.
    fn on_workload(&mut self, e: &Event, w: &Arc<Workload>) {
        let ts = e.ts_ns;
        let row = self.workload_mut(w, ts);
        match &e.body {
            Body::Enter {
                substate,
                timeout_ms,
                snapshot,
                ..
            } => {
                row.timewait[sub_index(*substate)] += 1;
                row.deadline_ns = row.deadline_ns.max(deadline(ts, *timeout_ms, *substate));
                if !snapshot {
                    row.entries += 1;
                }
            }
            Body::Promote { timeout_ms, .. } => {
                if row.timewait[1] > 0 {
                    row.timewait[1] -= 1;
                    row.timewait[0] += 1;
                }
                let d = deadline(ts, *timeout_ms, Substate::TimeWait);
                row.deadline_ns = row.deadline_ns.max(d);
            }
            Body::Exit {
                substate, reason, ..
            } => {
                take_one_u64(&mut row.timewait, sub_index(*substate));
                row.exits[reason.index()] += 1;
            }
            Body::Overflow { .. } => row.overflow += 1,
            Body::Abort { .. } => row.aborts += 1,
            Body::ConnectFail { .. } => row.connect_fail += 1,
            Body::BindFail { .. } => row.bind_fail += 1,
            Body::PawsReject { .. } => row.paws += 1,
            Body::BoundConnect { .. } => row.binds_first = true,
            Body::Netns { .. } | Body::Lost { .. } => {}
        }
        let same = |x: &Option<Arc<Workload>>| x.as_ref().is_some_and(|x| Arc::ptr_eq(x, w));
        if let Some(sock) = e.sock() {
            let key = self.client_or_server(sock);
            if let Some(p) = self.peers.get_mut(&key).filter(|p| !same(&p.workload)) {
                p.workload = Some(w.clone());
            }
        }
        // An exit's task is where the socket died (a connect() that reused it, a kworker), not
        // necessarily the owner the workload names.
        let owner = e.task().filter(|_| !matches!(e.body, Body::Exit { .. }));
        if let Some(t) = owner {
            let key = ProcKey::of(t);
            if let Some(p) = self.procs.get_mut(&key).filter(|p| !same(&p.workload)) {
                p.workload = Some(w.clone());
            }
        }
    }

    fn workload_mut(&mut self, w: &Arc<Workload>, ts: u64) -> &mut WorkloadStats {
        let id = w.cgroup_id;
        if !self.workloads.contains_key(&id) && self.workloads.len() >= self.limits.max_workloads {
            let order = self
                .workloads
                .iter()
                .map(|(k, r)| (r.timewait != [0; 2], r.last_ns, *k))
                .collect();
            for (_, _, k) in eviction_batch(order, self.limits.max_workloads) {
                self.workloads.remove(&k);
                self.totals.workloads_evicted += 1;
            }
        }
        let row = self
            .workloads
            .entry(id)
            .or_insert_with(|| WorkloadStats::new(w.clone(), ts));
        row.last_ns = row.last_ns.max(ts);
        row
    }

    /// connect() found no local port.
    fn on_connect_fail(&mut self, ts: u64, sock: &Sock, refusal: Refusal, task: Option<&Task>) {
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
        p.last_refusal = Some(refusal);
        if refusal == Refusal::NoTimestamps {
            p.peer_timestamps = Some(false);
        }
        self.netns_entry(sock.netns).connect_fail += 1;
        if let Some(task) = task {
            self.proc_mut(task, ts).connect_fail += 1;
        }
    }

    /// The peer row a socket's events are booked on (what the report's per-peer table shows).
    pub fn peer_key(&self, sock: &Sock) -> PeerKey {
        self.client_or_server(sock)
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
        let order = self
            .peers
            .values()
            .map(|p| (p.timewait_total() > 0, p.last_ns, p.key))
            .collect();
        for (busy, _, k) in eviction_batch(order, self.limits.max_peers) {
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
            comm: t.comm.to_string(),
            closes: 0,
            reuses: 0,
            connect_fail: 0,
            aborts: 0,
            bind_fail: 0,
            binds_first: false,
            workload: None,
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
        for r in self.workloads.values_mut() {
            if r.timewait != [0; 2] && r.deadline_ns > 0 && now > r.deadline_ns {
                r.timewait = [0; 2];
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

    /// The namespace's client side as one pool: TIME_WAIT sockets and entry rate summed over
    /// its client rows (what bind()-before-connect() draws from).
    fn client_pool(&self, netns: u32) -> (u64, f64) {
        self.peers
            .values()
            .filter(|q| q.key.netns == netns && q.key.side == Side::Client)
            .fold((0, 0.0), |(tw, rate), q| {
                (tw + q.timewait_total(), rate + self.entry_rate(q))
            })
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
            // A process that binds first draws from one pool for every destination: the
            // namespace's client side is the pool (its rows summed).
            let (timewait, entry_rate) = if p.binds_first {
                self.client_pool(p.key.netns)
            } else {
                (p.timewait_total(), entry_rate)
            };
            forecast::forecast(&ForecastInput {
                timewait,
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
                shared_pool: p.binds_first,
            })
        });
        PeerSummary {
            peer: p,
            entry_rate,
            forecast,
        }
    }
}

/// The rows to evict from a full table of at most `max`: the least recently active eighth,
/// idle ones (`busy` false) first. Only the oldest are needed: a selection, not a sort, keeps
/// the cost per new row O(1) amortised when a stream of new keys keeps the table full.
fn eviction_batch<K: Ord>(
    mut rows: Vec<(bool, u64, K)>,
    max: usize,
) -> impl Iterator<Item = (bool, u64, K)> {
    let n = (max / 8).max(1).min(rows.len());
    if n < rows.len() {
        rows.select_nth_unstable(n);
    }
    rows.into_iter().take(n)
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

#[cfg(test)]
mod netns_bound_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::forecast::Exhaustion;
    use crate::pipeline::event::Task;

    pub(crate) const NSX: u32 = 4026532000;

    /// A namespace's sysctls with only the port range (and `tw_reuse` when given) known.
    pub(crate) fn ports(lo: u16, hi: u16, tw_reuse: Option<u8>) -> Sysctls {
        Sysctls {
            port_range: Some((lo, hi)),
            tw_reuse,
            ..Sysctls::default()
        }
    }

    pub(crate) fn sock(
        tw: u64,
        netns: u32,
        l: [u8; 4],
        lport: u16,
        r: [u8; 4],
        rport: u16,
    ) -> Sock {
        Sock::v4(tw, netns, l, lport, r, rport)
    }

    pub(crate) fn client(tw: u64, lport: u16) -> Sock {
        sock(tw, NSX, [10, 0, 0, 1], lport, [10, 0, 0, 2], 443)
    }

    pub(crate) fn task(pid: u32, comm: &str) -> Option<Task> {
        Some(Task {
            pid,
            comm: comm.into(),
        })
    }

    pub(crate) fn enter(ts_s: f64, s: Sock, sub: Substate) -> Event {
        Event::new(
            (ts_s * 1e9) as u64,
            Body::Enter {
                sock: s,
                substate: sub,
                timeout_ms: 60_000,
                task: task(100, "curl"),
                snapshot: false,
                age_ms: None,
            },
        )
    }

    pub(crate) fn exit(
        ts_s: f64,
        s: Sock,
        sub: Substate,
        reason: ExitReason,
        life_ms: u64,
    ) -> Event {
        Event::new(
            (ts_s * 1e9) as u64,
            Body::Exit {
                sock: s,
                substate: sub,
                reason,
                lifetime_ms: Some(life_ms),
                task: task(200, "wget"),
            },
        )
    }

    pub(crate) fn ev(ts_s: f64, body: Body) -> Event {
        Event::new((ts_s * 1e9) as u64, body)
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
        a.set_context(NSX, ports(40000, 40009, Some(0)));
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
    fn a_process_that_binds_first_is_forecast_on_the_shared_pool() {
        let mut a = Aggregator::default();
        a.set_context(NSX, ports(40000, 40019, Some(1))); // 20 ports, reuse on
                                                          // 8 TIME_WAIT sockets toward each of two destinations.
        let to = |tw: u64, lport: u16, rport: u16| {
            sock(tw, NSX, [10, 0, 0, 1], lport, [10, 0, 0, 2], rport)
        };
        for i in 0..8u16 {
            a.observe(&enter(1.0, to(i as u64, 40000 + i, 80), Substate::TimeWait));
            a.observe(&enter(
                1.0,
                to(100 + i as u64, 40000 + i, 443),
                Substate::TimeWait,
            ));
        }
        a.advance(2 * NS);
        let row = |a: &Aggregator, rport: u16| {
            let p = a.peers().find(|p| p.key.port == rport).unwrap();
            a.peer_summary(p).forecast.unwrap()
        };
        // connect()'s pools: one per destination, 8 of 20 each.
        assert_eq!(row(&a, 80).pressure, Some(8.0 / 20.0));
        assert_ne!(row(&a, 80).reuse, forecast::ReuseAdvice::BindFirst);
        // The process toward :80 binds before it connects: its pool is the namespace's one
        // (16 of 20), and reuse cannot help it.
        a.observe(&ev(
            2.0,
            Body::BoundConnect {
                sock: to(999, 40010, 80),
                task: task(7, "envoy"),
            },
        ));
        let f = row(&a, 80);
        assert_eq!(f.pressure, Some(16.0 / 20.0));
        assert_eq!(f.reuse, forecast::ReuseAdvice::BindFirst);
        assert!(f.reuse.note().contains("IP_BIND_ADDRESS_NO_PORT"));
        assert_eq!(row(&a, 443).pressure, Some(8.0 / 20.0));
        assert!(a.processes().any(|p| p.comm == "envoy" && p.binds_first));
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
            max_workloads: 1,
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
    fn workload_rows_and_their_report() {
        use crate::host::workload::Workload;
        let c = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let mut pod = Workload::from_path(
            9,
            &format!("/kubepods.slice/kubepods-pod0a1b2c3d_0000_1111_2222_333344445555.slice/cri-containerd-{c}.scope"),
        );
        pod.pod = Some("shop/cart-7d9".into());
        let pod = Arc::new(pod);
        let gone = Arc::new(Workload::unknown(10));
        let own = |e: Event, w: &Arc<Workload>| {
            let mut e = e.in_cgroup(w.cgroup_id);
            e.workload = Some(w.clone());
            e
        };
        let mut a = Aggregator::default();
        a.observe(&own(enter(1.0, client(1, 40001), Substate::TimeWait), &pod));
        a.observe(&own(enter(1.1, client(2, 40002), Substate::TimeWait), &pod));
        a.observe(&own(
            exit(
                2.0,
                client(1, 40001),
                Substate::TimeWait,
                ExitReason::Reused,
                900,
            ),
            &pod,
        ));
        a.observe(&own(
            enter(1.2, client(3, 40003), Substate::TimeWait),
            &gone,
        ));
        a.observe(&enter(1.3, client(4, 40004), Substate::TimeWait));
        let rows: HashMap<u64, &WorkloadStats> =
            a.workloads().map(|r| (r.workload.cgroup_id, r)).collect();
        assert_eq!(rows.len(), 2, "events without a workload make no row");
        let p = rows[&9];
        assert_eq!(
            (p.entries, p.timewait, p.exits.iter().sum::<u64>()),
            (2, [1, 0], 1)
        );
        assert_eq!(rows[&10].entries, 1);
        let peer = a.peers().next().unwrap();
        assert_eq!(peer.workload.as_ref().map(|w| w.cgroup_id), Some(10));
        let text = Report::render(&a, 200);
        assert!(text.contains("Per workload (cgroup)"), "{text}");
        assert!(
            text.contains("shop/cart-7d9") && text.contains("Guaranteed"),
            "{text}"
        );
        assert!(text.contains("unknown (cgroup id 10)"), "{text}");
        assert!(Report::render(&Aggregator::default(), 200)
            .find("Per workload")
            .is_none());
    }
}
