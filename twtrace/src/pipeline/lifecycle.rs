//! Timer records → timewait socket lifecycle events.
//!
//! The kernel programs report every `timer_start`, `timer_cancel` and `timer_expire_entry` of
//! a timewait socket's timer. What a record means depends on
//! what comes next on the same CPU (see `../shared/notes/kernel.md`):
//!
//! | sequence on one CPU                         | meaning                          |
//! |---------------------------------------------|----------------------------------|
//! | `start(A)`, A not alive                     | birth of A                       |
//! | `cancel(A)` then `expire(A)`                | A expired (`__run_timers`)       |
//! | `cancel(A)` then `start(A)` flagged `REARM` | A re-armed into another bucket   |
//! | `cancel(A)` then anything else, or nothing  | A died early (`timer_shutdown_sync`) |
//!
//! `REARM` is the kernel's proof (no other timer event on that CPU between the two); a start
//! of A without it is a birth on A's memory, so the old A died at its detach.
//!
//! The detach and its expiry/re-arm run back to back on one CPU with nothing of ours in
//! between (timewait timers are only touched from softirq or process context, which cannot
//! preempt the timer softirq's expiry loop on that CPU), so a cancel still unsettled after
//! `settle_ns` is an early death, timed at the cancel — once that CPU is seen to have run
//! since (`host::cpustat`): a CPU paused right after the detach (a descheduled vCPU) has not
//! yet written what follows it. The ring buffer keeps each CPU's records in the order they
//! were made, which is all this needs.

use crate::host::cpustat::{CpuTimes, MIN_RUN};
use crate::host::sysctls::Sysctls;
use crate::kernel::reuse_rule::{self, Candidate, Policy};
use crate::pipeline::event::{Body, Event, ExitReason, Refusal, Sock, Substate, Task};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use twtrace_common::{flags, kind, netconf, NetConf, TwRecord};

/// Default window after which an unsettled cancel is an early death, once its CPU has run
/// since. Expiries and re-arms settle within microseconds.
pub const SETTLE_NS: u64 = 20_000_000;

/// A cancel whose CPU shows no run time since (no `/proc/stat` line, a CPU that stays
/// paused) is settled after this long all the same.
pub const SETTLE_CEILING_NS: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
struct Live {
    sock: Sock,
    substate: Substate,
    /// `tw_ts_recent_stamp` (seconds of the monotonic clock when the peer's last timestamp
    /// came; 0: the peer sent none): a condition of reuse, and its clock before 6.13.
    ts_recent_stamp: u32,
    /// Last `tw_entry_stamp` seen (ms of the TCP clock), the reuse delay's reference.
    entry_stamp: Option<u32>,
    /// Monotonic ns of birth, when seen.
    birth_ns: Option<u64>,
    /// Set for sockets found by the snapshot: records older than this are history.
    snapshot_ns: Option<u64>,
    /// The owner's cgroup id, read from the full socket at its close (0: not seen closing;
    /// a timewait socket has no cgroup of its own).
    cgroup: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub enters: u64,
    pub exits: u64,
    /// Exits per reason, indexed by [`ExitReason::index`].
    pub by_reason: [u64; ExitReason::ALL.len()],
    pub rearms: u64,
    pub promotes: u64,
    pub snapshot: u64,
    pub overflows: u64,
    pub aborts: u64,
    pub connect_fails: u64,
    pub paws_rejects: u64,
    /// Function tier: reuses `tcp_twsk_unique` itself confirmed (each also a `reused` exit).
    pub reuses_confirmed: u64,
    /// Function tier: timewait sockets `tcp_twsk_unique` refused (counted in the kernel).
    pub reuse_refusals: u64,
    pub bind_fails: u64,
    /// Processes seen connecting on sockets they bound first.
    pub bound_connects: u64,
}

/// A destination in a namespace: what connect() competes for ports toward.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dest {
    pub netns: u32,
    pub raddr: IpAddr,
    pub rport: u16,
}

/// Hasher for the maps keyed by integers the kernel chose (socket addresses, namespace
/// inodes, CPU numbers), not a remote peer: the default SipHash was ~10 % of the pipeline's
/// CPU (several lookups per event). Multiply-and-rotate, as rustc's FxHash; the rotation
/// brings the product's well-mixed high bits down (socket addresses are 64-byte aligned,
/// and the table indexes by the low bits).
#[derive(Default, Clone, Copy)]
pub struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(n as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type IntMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IntHasher>>;
type IntSet<K> = HashSet<K, std::hash::BuildHasherDefault<IntHasher>>;

pub struct Lifecycle {
    hz: u64,
    /// Per namespace: local ports held by live timewait sockets, and by how many (the pool of
    /// bind()-before-connect() is the ports, whatever the destinations).
    ports_held: IntMap<u32, IntMap<u16, u32>>,
    /// Timewait sockets that just answered a segment with RST (they die next).
    rst_sent: IntMap<u64, u64>,
    /// Function tier: timewait sockets `tcp_twsk_unique` handed to connect() (their detach,
    /// which follows in the same task, is a reuse whatever else it looks like).
    taken: IntSet<u64>,
    /// The function tier sees every failed timewait allocation (`inet_twsk_alloc`): the
    /// tracepoint tier's inferred overflows are then redundant (and can be wrong when the
    /// machine is slow enough to stretch its correlation window).
    exact_overflow: bool,
    /// The function tier is attached (connect() failures carry the candidates it counted).
    fn_tier: bool,
    sysctls: IntMap<u32, Sysctls>,
    /// Overflow drops seen per namespace (to compare with the kernel's counter).
    overflows: HashMap<u32, u64>,
    settle_ns: u64,
    live: IntMap<u64, Live>,
    /// Per CPU: a cancel not yet explained by the next record on that CPU.
    pending: IntMap<u16, TwRecord>,
    /// Per CPU with an overdue cancel: (the cancel's time, that CPU's run time when it was
    /// first found overdue). It settles once the CPU has run `MIN_RUN` more.
    marks: IntMap<u16, (u64, u64)>,
    pub stats: Stats,
}

impl Stats {
    pub fn exits_by(&self, reason: ExitReason) -> u64 {
        self.by_reason[reason.index()]
    }
}

impl Lifecycle {
    pub fn new(hz: u64) -> Self {
        Self::with_settle(hz, SETTLE_NS)
    }

    pub fn with_settle(hz: u64, settle_ns: u64) -> Self {
        Lifecycle {
            hz: hz.max(1),
            settle_ns,
            live: Default::default(),
            pending: Default::default(),
            marks: Default::default(),
            ports_held: Default::default(),
            rst_sent: Default::default(),
            taken: Default::default(),
            exact_overflow: false,
            fn_tier: false,
            sysctls: Default::default(),
            overflows: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// Timewait sockets currently alive, as far as the records tell.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    fn jiffies_to_ms(&self, j: u64) -> u64 {
        j.saturating_mul(1000) / self.hz
    }

    fn timeout_ms(&self, r: &TwRecord) -> u64 {
        self.jiffies_to_ms(r.expires.saturating_sub(r.jiffies))
    }

    /// Age from the kernel's own `tw_entry_stamp` (ms of the TCP clock, which is
    /// CLOCK_MONOTONIC truncated to 32 bits).
    fn stamp_age_ms(r: &TwRecord) -> Option<u64> {
        if r.flags & flags::ENTRY_STAMP == 0 || r.entry_stamp == 0 {
            return None;
        }
        Some(reuse_rule::ms_since(r.entry_stamp, r.ts_ns))
    }

    fn sock_of(r: &TwRecord) -> Sock {
        Sock::from_raw(r.tw, r.netns, r.family, r.laddr, r.lport, r.raddr, r.rport)
    }

    /// Looks up the live sockets a batch of records is about, before any of them is handled.
    /// The lookups do not depend on each other, so the CPU overlaps their cache misses (a
    /// random entry in a table of every live socket: most of `die`'s cost when they are taken
    /// one at a time); handling the batch then finds the entries in cache. Reads only.
    pub fn warm<'a>(&self, records: impl Iterator<Item = &'a TwRecord>) {
        let mut seen = 0u64;
        for r in records {
            if let Some(l) = self.live.get(&r.tw) {
                seen = seen.wrapping_add(l.cgroup ^ l.birth_ns.unwrap_or(0));
            }
        }
        std::hint::black_box(seen);
    }

    /// Feeds one kernel record; appends the events it completes to `out`.
    pub fn on_record(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        if r.conf.valid != 0 {
            // First: the record's meaning is judged from the settings it carries.
            self.observe_conf(r, out);
        }
        match r.kind {
            kind::TIMER_START => self.on_start(r, out),
            kind::TIMER_CANCEL => {
                if let Some(p) = self.pending.remove(&r.cpu) {
                    self.settle(&p, out);
                }
                self.pending.insert(r.cpu, *r);
            }
            kind::TIMER_EXPIRE => {
                match self.pending.remove(&r.cpu) {
                    Some(p) if p.tw == r.tw => {}
                    Some(p) => self.settle(&p, out),
                    None => {}
                }
                self.die(r, ExitReason::Expired, out);
            }
            kind::SNAPSHOT => self.on_snapshot(r, out),
            kind::TW_DROP => self.on_tw_drop(r, out),
            kind::TW_RST_SENT => {
                self.rst_sent.insert(r.tw, r.ts_ns);
            }
            kind::REQSK_START => {
                // The SYN that opened this request socket was accepted into the timewait socket
                // detached just before on this CPU, if their tuples match.
                let syn = self.pending.get(&r.cpu).is_some_and(|p| same_tuple(p, r));
                if syn {
                    if let Some(p) = self.pending.remove(&r.cpu) {
                        self.die(&p, ExitReason::Syn, out);
                    }
                }
            }
            kind::ABORT => {
                self.stats.aborts += 1;
                out.push(
                    Event::new(
                        r.ts_ns,
                        Body::Abort {
                            sock: Self::sock_of(r),
                            task: Some(Task::from_raw(r.pid, &r.comm)),
                        },
                    )
                    .in_cgroup(r.cgroup),
                );
            }
            kind::OVERFLOW if !self.exact_overflow => self.on_overflow(r, out),
            kind::TW_ALLOC_FAIL => self.on_overflow(r, out),
            kind::TW_UNIQUE => {
                self.stats.reuses_confirmed += 1;
                self.stats.reuse_refusals += r.expires;
                self.taken.insert(r.tw);
            }
            kind::CONNECT_FAIL => self.on_connect_fail(r, out),
            kind::BIND_FAIL => self.on_bind_fail(r, out),
            kind::BOUND_CONNECT => {
                self.stats.bound_connects += 1;
                out.push(
                    Event::new(
                        r.ts_ns,
                        Body::BoundConnect {
                            sock: Self::sock_of(r),
                            task: Some(Task::from_raw(r.pid, &r.comm)),
                        },
                    )
                    .in_cgroup(r.cgroup),
                );
            }
            _ => {}
        }
    }

    /// A closing socket got no timewait socket: inferred (`OVERFLOW`) or seen by the function
    /// tier (`TW_ALLOC_FAIL`).
    fn on_overflow(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        self.stats.overflows += 1;
        *self.overflows.entry(r.netns).or_default() += 1;
        out.push(
            Event::new(
                r.ts_ns,
                Body::Overflow {
                    sock: Self::sock_of(r),
                },
            )
            .in_cgroup(r.cgroup),
        );
    }

    /// Overflow drops seen per namespace.
    pub fn overflows_by_netns(&self) -> &HashMap<u32, u64> {
        &self.overflows
    }

    /// Says which hooks of the function tier are attached: `tcp_twsk_unique` (connect()
    /// failures carry the kernel's candidate count) and `inet_twsk_alloc` (overflows are
    /// seen, not inferred).
    pub fn set_fn_tier(&mut self, unique: bool, alloc: bool) {
        self.fn_tier = unique;
        self.exact_overflow = alloc;
    }

    /// Sets the sysctls of a namespace as `/proc` showed them (the fallback for records that
    /// carry no settings of their own, and the fields the kernel programs do not read).
    pub fn set_sysctls(&mut self, netns: u32, s: Sysctls) {
        self.sysctls.insert(netns, s);
    }

    /// The namespace model's entry for what `/proc` shows (the tracer's sysctl watch): merged
    /// in, and a `netns` event emitted only when something changed.
    pub fn observe_sysctls(&mut self, netns: u32, s: Sysctls, ts_ns: u64, out: &mut Vec<Event>) {
        if self.sysctls.get(&netns) == Some(&s) {
            return;
        }
        self.sysctls.insert(netns, s.clone());
        out.push(Event::new(ts_ns, Body::Netns { netns, sysctls: s }));
    }

    /// The settings a record carries (read by the kernel program from the socket's namespace at
    /// the moment of the decision) replace what was known of them; the first record that
    /// carries a different value emits the namespace's `netns` event at once.
    fn observe_conf(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        let known = self.sysctls.get(&r.netns).cloned().unwrap_or_default();
        let merged = merge_conf(&known, &r.conf);
        if merged != known {
            self.observe_sysctls(r.netns, merged, r.ts_ns, out);
        }
    }

    /// A detach that ends the socket whatever follows it: a takeover by connect() or a purge
    /// of its dying namespace.
    fn is_final(&self, p: &TwRecord) -> bool {
        p.flags & flags::NETNS_DYING != 0 || self.is_takeover(p)
    }

    /// Whether a detach is connect() taking the socket over. With the function tier attached,
    /// `tcp_twsk_unique` confirms every takeover before its detach (one ring, so its record
    /// comes first), and a detach in a connecting task that it did not confirm is a death that
    /// the task's softirq work ran: seen in the 6.1 guest's NAT lab, the server's RST killing
    /// a client timewait socket while that client's connect() to the server sent its SYN. It
    /// had been reported as a takeover 4 ms old that the kernel never counted (TWRecycled).
    /// Without the tier the task's flag is all there is.
    fn is_takeover(&self, p: &TwRecord) -> bool {
        self.taken.contains(&p.tw) || (!self.fn_tier && p.flags & flags::IN_CONNECT != 0)
    }

    /// A segment dropped by a timewait socket: a PAWS rejection, or the one that killed it.
    fn on_tw_drop(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        if r.flags & flags::PAWS != 0 {
            self.stats.paws_rejects += 1;
            let (sock, cgroup) = self
                .live
                .get(&r.tw)
                .map(|l| (l.sock.clone(), l.cgroup))
                .unwrap_or_else(|| (Self::sock_of(r), 0));
            out.push(Event::new(r.ts_ns, Body::PawsReject { sock }).in_cgroup(cgroup));
            return;
        }
        if self.pending.get(&r.cpu).is_some_and(|p| p.tw == r.tw) {
            if let Some(p) = self.pending.remove(&r.cpu) {
                if self.is_final(&p) {
                    // A takeover or a purge stays what it was: a late segment of the old
                    // connection dropped by the dying socket did not kill it.
                    self.settle(&p, out);
                } else {
                    // An in-window RST (RFC 1337 assassination), or a segment it answered
                    // with RST.
                    self.die(&p, ExitReason::Rst, out);
                }
            }
            return;
        }
        if r.aux2 & twtrace_common::TCPF_FIN != 0 {
            // The peer's FIN reached a FIN_WAIT2-substate socket (its re-arm may have been
            // invisible: same timer-wheel bucket).
            self.update_substate(r, out);
        }
    }

    fn on_connect_fail(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        self.stats.connect_fails += 1;
        let sock = Self::sock_of(r);
        let dest = Dest {
            netns: r.netns,
            raddr: sock.raddr,
            rport: sock.rport,
        };
        let all = self.toward(&dest);
        let timewait = all.len() as u32;
        // The kernel decided somewhere between connect()'s start and this record: judged at
        // the start, a refusal it made is never mistaken for an allowed reuse (a socket only
        // gets older), even across a second boundary on a slow machine.
        let started = match r.entry_stamp {
            0 => r.ts_ns,
            ms => {
                let back_ms = ((r.ts_ns / 1_000_000) as u32).wrapping_sub(ms) as u64;
                r.ts_ns.saturating_sub(back_ms * 1_000_000)
            }
        };
        // With the function tier, the kernel counted the timewait sockets it refused and
        // kept the last one's state as it judged it: the refusal is decided on that, not
        // guessed from the lifecycle's copies of every socket toward `dest` (a copy misses
        // a promoting FIN whose kfree_skb run the kernel skipped).
        let candidates = self.fn_tier.then_some(r.aux);
        let bound = sock.lport != 0;
        let refusal = match candidates {
            Some(0) => Refusal::NoTimewait,
            Some(_) if r.flags & flags::REFUSED_STATE != 0 => {
                let last = Self::refused_candidate(r, &sock);
                self.refusal(&[last], &dest, bound, started)
            }
            _ => {
                let all: Vec<Candidate> = all.iter().map(|l| Self::candidate(l)).collect();
                self.refusal(&all, &dest, bound, started)
            }
        };
        self.stats.reuse_refusals += candidates.unwrap_or(0) as u64;
        out.push(
            Event::new(
                r.ts_ns,
                Body::ConnectFail {
                    sock,
                    errno: libc::EADDRNOTAVAIL,
                    refusal,
                    timewait,
                    candidates,
                    task: Some(Task::from_raw(r.pid, &r.comm)),
                },
            )
            .in_cgroup(r.cgroup),
        );
    }

    /// bind() to port 0 failed: the pool is the namespace's port range (as the kernel read it
    /// at the failure), held by every timewait socket whose local port is in it, whatever
    /// its destination.
    fn on_bind_fail(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        self.stats.bind_fails += 1;
        let range = r
            .conf
            .has(netconf::PORT_RANGE)
            .then_some((r.conf.port_lo, r.conf.port_hi))
            .filter(|(lo, hi)| lo <= hi);
        // Ports, not sockets: a port held toward several destinations is one port of the pool.
        let timewait = self
            .ports_held
            .get(&r.netns)
            .map_or(0, |ports| match range {
                Some((lo, hi)) => ports.keys().filter(|p| (lo..=hi).contains(*p)).count(),
                None => ports.len(),
            }) as u32;
        out.push(
            Event::new(
                r.ts_ns,
                Body::BindFail {
                    netns: r.netns,
                    family: r.family,
                    errno: r.aux as i32,
                    timewait,
                    ports: range.map(|(lo, hi)| u32::from(hi) - u32::from(lo) + 1),
                    task: Some(Task::from_raw(r.pid, &r.comm)),
                },
            )
            .in_cgroup(r.cgroup),
        );
    }

    /// The live timewait sockets toward `dest`: a scan, not an index. Only a connect()
    /// failure asks, and before failing the kernel's port search walked the whole port range
    /// (thousands of hash lookups); a per-destination index cost a SipHash and a set update at
    /// every birth and death.
    fn toward(&self, dest: &Dest) -> Vec<&Live> {
        self.live
            .values()
            .filter(|l| {
                l.sock.netns == dest.netns
                    && l.sock.rport == dest.rport
                    && l.sock.raddr == dest.raddr
            })
            .collect()
    }

    /// Why none of `candidates` (timewait sockets toward `dest`) could be reused: the one
    /// model of `tcp_twsk_unique` ([`reuse_rule::refusal`]) with the namespace's settings as
    /// the kernel read them at this connect() (the record's own, merged just before) and
    /// `now_ns`, when connect() began.
    fn refusal(&self, candidates: &[Candidate], dest: &Dest, bound: bool, now_ns: u64) -> Refusal {
        let policy = Policy::from_sysctls(self.sysctls.get(&dest.netns));
        reuse_rule::refusal(candidates, bound, policy, now_ns)
    }

    /// A live timewait socket as the lifecycle last saw it.
    fn candidate(l: &Live) -> Candidate {
        Candidate {
            laddr: l.sock.laddr,
            raddr: l.sock.raddr,
            substate: l.substate,
            ts_recent_stamp: l.ts_recent_stamp,
            entry_stamp_ms: l.entry_stamp,
            birth_ns: l.birth_ns,
        }
    }

    /// The last socket the function tier refused during the connect() of `r` (flagged
    /// `REFUSED_STATE`), as `tcp_twsk_unique` found it; it has the connecting socket's
    /// addresses (`sock`). Its `tw_entry_stamp` comes as an age at connect()'s start
    /// (`r.entry_stamp`), so it is given back as a stamp relative to that start.
    fn refused_candidate(r: &TwRecord, sock: &Sock) -> Candidate {
        let entry_stamp_ms = r
            .conf
            .has(netconf::TW_REUSE_DELAY)
            .then(|| r.entry_stamp.wrapping_sub(u32::from(r.aux2)));
        Candidate {
            laddr: sock.laddr,
            raddr: sock.raddr,
            substate: Substate::from_raw(r.substate),
            ts_recent_stamp: r.ts_recent_stamp,
            entry_stamp_ms,
            birth_ns: None,
        }
    }

    /// Settles a detach that neither expired nor re-armed: an early death, for the reason
    /// its evidence gives.
    fn settle(&mut self, p: &TwRecord, out: &mut Vec<Event>) {
        let takeover = self.is_takeover(p);
        self.taken.remove(&p.tw);
        let reason = if p.flags & flags::NETNS_DYING != 0 {
            ExitReason::Purged
        } else if takeover {
            ExitReason::Reused
        } else if self.rst_sent.remove(&p.tw).is_some() {
            ExitReason::Rst
        } else {
            ExitReason::Unknown
        };
        self.die(p, reason, out);
    }

    fn on_start(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        // The kernel proves a re-arm: the detach and the start were consecutive timer events
        // on this CPU (one `__mod_timer` call). Anything else is a birth, on memory that may
        // have held a socket that just died (the slab reuses it at once).
        let rearm = r.flags & flags::REARM != 0 && !self.taken.contains(&r.tw);
        // A final detach is never half of a re-arm: the same flow's next timewait socket can
        // be born on the freed memory with no timer event between on that CPU (seen once in
        // 290 000 takeovers in the soak).
        match self.pending.remove(&r.cpu) {
            Some(p) if p.tw == r.tw && rearm && !self.is_final(&p) => return self.rearm(r, out),
            Some(p) => self.settle(&p, out),
            // A re-arm whose detach record we did not see (lost): still not a birth.
            None if rearm && self.live.contains_key(&r.tw) => return self.rearm(r, out),
            None => {}
        }
        self.settle_other_cpus(r.tw, out);
        if let Some(l) = self.live.get_mut(&r.tw) {
            if l.snapshot_ns.is_some_and(|s| r.ts_ns <= s) {
                // The birth of a socket the snapshot already listed: only learn its age.
                l.birth_ns = Some(r.ts_ns);
                return;
            }
            // A start without a detach on a live address: the old socket's death was missed.
            self.die(r, ExitReason::Unknown, out);
        }
        let closer = r.flags & flags::CLOSER != 0;
        let task = closer.then(|| Task::from_raw(r.pid, &r.comm));
        let cgroup = if closer { r.cgroup } else { 0 };
        let sock = Self::sock_of(r);
        let substate = Substate::from_raw(r.substate);
        self.live.insert(
            r.tw,
            Live {
                sock: sock.clone(),
                substate,
                ts_recent_stamp: r.ts_recent_stamp,
                entry_stamp: Self::entry_stamp(r),
                birth_ns: Some(r.ts_ns),
                snapshot_ns: None,
                cgroup,
            },
        );
        self.index(&sock);
        self.stats.enters += 1;
        out.push(
            Event::new(
                r.ts_ns,
                Body::Enter {
                    sock,
                    substate,
                    timeout_ms: self.timeout_ms(r),
                    task,
                    snapshot: false,
                    age_ms: None,
                },
            )
            .in_cgroup(cgroup),
        );
    }

    fn rearm(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        self.stats.rearms += 1;
        self.update_substate(r, out);
    }

    /// Learns a live socket's current substate and timer from `r`; reports a promotion.
    fn update_substate(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        let new = Substate::from_raw(r.substate);
        let timeout_ms = self.timeout_ms(r);
        let Some(l) = self.live.get_mut(&r.tw) else {
            return;
        };
        if l.substate == Substate::FinWait2 && new == Substate::TimeWait {
            self.stats.promotes += 1;
            let age_ms = l.birth_ns.map(|b| r.ts_ns.saturating_sub(b) / 1_000_000);
            out.push(
                Event::new(
                    r.ts_ns,
                    Body::Promote {
                        sock: l.sock.clone(),
                        timeout_ms,
                        age_ms,
                    },
                )
                .in_cgroup(l.cgroup),
            );
        }
        l.substate = new;
        if r.ts_recent_stamp != 0 {
            l.ts_recent_stamp = r.ts_recent_stamp;
        }
        if let Some(st) = Self::entry_stamp(r) {
            l.entry_stamp = Some(st);
        }
    }

    fn entry_stamp(r: &TwRecord) -> Option<u32> {
        (r.flags & flags::ENTRY_STAMP != 0 && r.entry_stamp != 0).then_some(r.entry_stamp)
    }

    fn index(&mut self, sock: &Sock) {
        *self
            .ports_held
            .entry(sock.netns)
            .or_default()
            .entry(sock.lport)
            .or_default() += 1;
    }

    fn unindex(&mut self, sock: &Sock) {
        if let Some(ports) = self.ports_held.get_mut(&sock.netns) {
            if let Some(n) = ports.get_mut(&sock.lport) {
                *n -= 1;
                if *n == 0 {
                    ports.remove(&sock.lport);
                }
            }
            if ports.is_empty() {
                self.ports_held.remove(&sock.netns);
            }
        }
    }

    fn on_snapshot(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        if self.live.contains_key(&r.tw) {
            return; // already born under our eyes
        }
        let sock = Self::sock_of(r);
        let substate = Substate::from_raw(r.substate);
        let age_ms = Self::stamp_age_ms(r);
        self.live.insert(
            r.tw,
            Live {
                sock: sock.clone(),
                substate,
                ts_recent_stamp: r.ts_recent_stamp,
                entry_stamp: Self::entry_stamp(r),
                birth_ns: None,
                snapshot_ns: Some(r.ts_ns),
                cgroup: 0,
            },
        );
        self.index(&sock);
        self.stats.snapshot += 1;
        out.push(Event::new(
            r.ts_ns,
            Body::Enter {
                sock,
                substate,
                timeout_ms: self.timeout_ms(r),
                task: None,
                snapshot: true,
                age_ms,
            },
        ));
    }

    /// A cancel of `tw` pending on another CPU is explained now: `tw` died there.
    fn settle_other_cpus(&mut self, tw: u64, out: &mut Vec<Event>) {
        let cpus: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| p.tw == tw)
            .map(|(c, _)| *c)
            .collect();
        for c in cpus {
            if let Some(p) = self.pending.remove(&c) {
                self.settle(&p, out);
            }
        }
    }

    /// Emits the exit of the socket `r` describes (at `r`'s time) and forgets it.
    fn die(&mut self, r: &TwRecord, reason: ExitReason, out: &mut Vec<Event>) {
        let live = self.live.remove(&r.tw);
        if let Some(l) = &live {
            self.unindex(&l.sock);
        }
        self.rst_sent.remove(&r.tw);
        self.taken.remove(&r.tw);
        if live.is_none() && r.kind == kind::TIMER_START {
            return; // a start on an address we did not know: nothing died that we saw born
        }
        // A start record that reveals a missed death belongs to the *new* socket on that
        // memory: report what we knew of the old one. Any other record is the dying socket's
        // own, read at its death (the substate may have changed unseen).
        let own_record = r.kind != kind::TIMER_START;
        // A takeover's age is the one the kernel judged: from `tw_entry_stamp` as the
        // dying socket's own record read it, microseconds after the decision (the stamp
        // restarts when a FIN_WAIT2-substate socket is promoted, and a birth record can
        // trail the stamp by milliseconds: a vCPU paused between the two, seen in a guest).
        let judged = match reason {
            ExitReason::Reused if own_record => Self::stamp_age_ms(r),
            _ => None,
        };
        let lifetime_ms = match (judged, live.as_ref().and_then(|l| l.birth_ns)) {
            (Some(age), _) => Some(age),
            (None, Some(b)) => Some(r.ts_ns.saturating_sub(b) / 1_000_000),
            (None, None) => Self::stamp_age_ms(r),
        };
        let (sock, substate, cgroup) = match live {
            Some(l) if !own_record => (l.sock, l.substate, l.cgroup),
            Some(l) => (l.sock, Substate::from_raw(r.substate), l.cgroup),
            None => (Self::sock_of(r), Substate::from_raw(r.substate), 0),
        };
        // The task the socket died in: the connecting process for a reuse, a kworker for a
        // purge, whatever the softirq interrupted for syn/rst. Expiries run in the timer
        // softirq (meaningless task), and an unknown death's record is a newer socket's.
        let task = match reason {
            ExitReason::Expired => None,
            ExitReason::Unknown if r.kind != kind::TIMER_CANCEL => None,
            _ => Some(Task::from_raw(r.pid, &r.comm)),
        };
        self.stats.exits += 1;
        self.stats.by_reason[reason.index()] += 1;
        out.push(
            Event::new(
                r.ts_ns,
                Body::Exit {
                    sock,
                    substate,
                    reason,
                    lifetime_ms,
                    task,
                },
            )
            .in_cgroup(cgroup),
        );
    }

    /// Whether a cancel is older than the settle window at `now_ns` (then the caller reads
    /// the CPUs' run times, before it drains the ring, for `tick`).
    pub fn overdue(&self, now_ns: u64) -> bool {
        self.pending
            .values()
            .any(|p| now_ns.saturating_sub(p.ts_ns) >= self.settle_ns)
    }

    /// Whether any cancel is still undecided.
    pub fn unsettled(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Settles cancels older than the settle window at monotonic time `now_ns` whose CPU has
    /// run `MIN_RUN` since it was first found overdue, by `cpus` (read before the ring was
    /// drained, so that whatever that CPU wrote before running on is already in). Without
    /// `cpus`, or without a time for that CPU, the window alone decides; past
    /// `SETTLE_CEILING_NS` a cancel settles whatever its CPU did.
    pub fn tick(&mut self, now_ns: u64, cpus: Option<&CpuTimes>, out: &mut Vec<Event>) {
        let mut due: Vec<u16> = Vec::new();
        for (&cpu, p) in &self.pending {
            let age = now_ns.saturating_sub(p.ts_ns);
            if age < self.settle_ns {
                continue;
            }
            let ran = match cpus.and_then(|c| c.of(cpu)) {
                None => true,
                Some(_) if age >= SETTLE_CEILING_NS => true,
                Some(t) => match self.marks.get(&cpu) {
                    Some(&(ts, mark)) if ts == p.ts_ns => t >= mark.saturating_add(MIN_RUN),
                    _ => {
                        self.marks.insert(cpu, (p.ts_ns, t));
                        false
                    }
                },
            };
            if ran {
                due.push(cpu);
            }
        }
        let pending = &self.pending;
        self.marks
            .retain(|cpu, (ts, _)| pending.get(cpu).is_some_and(|p| p.ts_ns == *ts));
        let mut recs: Vec<TwRecord> = due.iter().filter_map(|c| self.pending.remove(c)).collect();
        recs.sort_by_key(|r| r.ts_ns);
        for p in recs {
            self.settle(&p, out);
        }
        self.forget_stale(now_ns);
    }

    /// Forgets RST answers whose detach never came (the socket was not killed after all).
    pub fn forget_stale(&mut self, now_ns: u64) {
        self.rst_sent
            .retain(|_, ts| now_ns.saturating_sub(*ts) < 1_000_000_000);
    }
}

/// `known` with the fields the kernel read (`conf`) replaced by the kernel's values.
fn merge_conf(known: &Sysctls, conf: &NetConf) -> Sysctls {
    let mut s = known.clone();
    if conf.has(netconf::TW_REUSE) {
        s.tw_reuse = Some(conf.tw_reuse);
        // The programs read the delay wherever the kernel has it: absent means the pre-6.13
        // rule, whatever an older copy said.
        s.tw_reuse_delay_ms = conf
            .has(netconf::TW_REUSE_DELAY)
            .then_some(conf.tw_reuse_delay_ms);
    }
    if conf.has(netconf::TIMESTAMPS) {
        s.timestamps = Some(conf.timestamps);
    }
    if conf.has(netconf::PORT_RANGE) && conf.port_lo <= conf.port_hi {
        s.port_range = Some((conf.port_lo, conf.port_hi));
    }
    if conf.has(netconf::TW_BUCKETS) && conf.max_tw_buckets >= 0 {
        s.max_tw_buckets = Some(conf.max_tw_buckets as u64);
    }
    s
}

/// Same 4-tuple and namespace (a request socket and the timewait socket it replaces are seen
/// from the same, listening, side).
fn same_tuple(a: &TwRecord, b: &TwRecord) -> bool {
    a.netns == b.netns
        && a.family == b.family
        && a.lport == b.lport
        && a.rport == b.rport
        && a.laddr == b.laddr
        && a.raddr == b.raddr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::blank;
    use twtrace_common::{TCP_FIN_WAIT2, TCP_TIME_WAIT};

    const MS: u64 = 1_000_000;

    fn rec(k: u8, tw: u64, cpu: u16, ts_ms: u64) -> TwRecord {
        let mut r = blank(k);
        r.tw = tw;
        r.cpu = cpu;
        r.ts_ns = ts_ms * MS;
        r.jiffies = ts_ms / 4; // HZ=250
        r.expires = r.jiffies + 15000;
        r.lport = 40000;
        r.rport = 80;
        r.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r
    }

    fn run(lc: &mut Lifecycle, recs: &[TwRecord]) -> Vec<Event> {
        let mut out = Vec::new();
        for r in recs {
            lc.on_record(r, &mut out);
        }
        out
    }

    fn exits(ev: &[Event]) -> Vec<(u64, ExitReason, Option<u64>)> {
        ev.iter()
            .filter_map(|e| match &e.body {
                Body::Exit {
                    sock,
                    reason,
                    lifetime_ms,
                    ..
                } => Some((sock.tw, *reason, *lifetime_ms)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn birth_then_expiry() {
        let mut lc = Lifecycle::new(250);
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_CANCEL, 0xA, 1, 62_000),
                rec(kind::TIMER_EXPIRE, 0xA, 1, 62_000),
            ],
        );
        assert_eq!(ev.len(), 2);
        match &ev[0].body {
            Body::Enter {
                timeout_ms,
                snapshot,
                ..
            } => {
                assert_eq!(*timeout_ms, 60_000);
                assert!(!snapshot);
            }
            b => panic!("{b:?}"),
        }
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Expired, Some(61_000))]);
        assert_eq!(lc.live_count(), 0);
    }

    #[test]
    fn rearm_is_not_a_death_and_promotes() {
        let mut lc = Lifecycle::new(250);
        let mut s = rec(kind::TIMER_START, 0xA, 0, 1000);
        s.substate = TCP_FIN_WAIT2;
        let c = rec(kind::TIMER_CANCEL, 0xA, 1, 4000);
        let mut s2 = rec(kind::TIMER_START, 0xA, 1, 4000);
        s2.flags |= flags::REARM;
        let mut out = run(&mut lc, &[s, c, s2]);
        lc.tick(10_000 * MS, None, &mut out);
        assert!(exits(&out).is_empty(), "{out:?}");
        assert!(out.iter().any(|e| matches!(
            e.body,
            Body::Promote {
                age_ms: Some(3000),
                ..
            }
        )));
        assert_eq!(lc.stats.rearms, 1);
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_CANCEL, 0xA, 0, 64_000),
                rec(kind::TIMER_EXPIRE, 0xA, 0, 64_000),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Expired, Some(63_000))]);
    }

    #[test]
    fn unsettled_cancel_is_an_early_death_at_the_cancel_time() {
        let mut lc = Lifecycle::new(250);
        let mut out = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_CANCEL, 0xA, 1, 1500),
            ],
        );
        lc.tick(1505 * MS, None, &mut out);
        assert!(exits(&out).is_empty(), "settled too early");
        lc.tick(1521 * MS, None, &mut out);
        assert_eq!(exits(&out), vec![(0xA, ExitReason::Unknown, Some(500))]);
    }

    #[test]
    fn a_cancel_waits_for_its_cpu_to_run_before_its_silence_counts() {
        let cpu1 = |t: u64| CpuTimes::parse(&format!("cpu0 0 0 0 0 0 0 0\ncpu1 {t} 0 0 0 0 0 0\n"));
        let start = |lc: &mut Lifecycle| {
            run(
                lc,
                &[
                    rec(kind::TIMER_START, 0xA, 0, 1000),
                    rec(kind::TIMER_CANCEL, 0xA, 1, 1500),
                ],
            )
        };
        // CPU 1 paused after the detach: the window passes, its time does not.
        let mut lc = Lifecycle::new(250);
        let mut out = start(&mut lc);
        assert!(!lc.overdue(1519 * MS));
        assert!(lc.overdue(1521 * MS));
        lc.tick(1521 * MS, Some(&cpu1(100)), &mut out);
        lc.tick(1700 * MS, Some(&cpu1(101)), &mut out);
        assert!(exits(&out).is_empty(), "settled while its CPU stood still");
        // It resumes: the SYN's request socket follows the detach.
        lc.on_record(&rec(kind::REQSK_START, 0x98, 1, 1710), &mut out);
        assert_eq!(exits(&out), vec![(0xA, ExitReason::Syn, Some(500))]);

        // A CPU that ran on and wrote nothing: an early death, at the cancel's time.
        let mut lc = Lifecycle::new(250);
        let mut out = start(&mut lc);
        lc.tick(1521 * MS, Some(&cpu1(100)), &mut out);
        lc.tick(1530 * MS, Some(&cpu1(102)), &mut out);
        assert_eq!(exits(&out), vec![(0xA, ExitReason::Unknown, Some(500))]);

        // A CPU that stays still: settled at the ceiling all the same.
        let mut lc = Lifecycle::new(250);
        let mut out = start(&mut lc);
        lc.tick(1521 * MS, Some(&cpu1(100)), &mut out);
        lc.tick(2499 * MS, Some(&cpu1(100)), &mut out);
        assert!(exits(&out).is_empty());
        lc.tick(2500 * MS, Some(&cpu1(100)), &mut out);
        assert_eq!(exits(&out), vec![(0xA, ExitReason::Unknown, Some(500))]);
        assert!(!lc.unsettled());

        // No time for that CPU (none read, or no line for it): the window alone.
        let mut lc = Lifecycle::new(250);
        let mut out = start(&mut lc);
        lc.tick(
            1521 * MS,
            Some(&CpuTimes::parse("cpu0 1 0 0 0 0 0 0\n")),
            &mut out,
        );
        assert_eq!(exits(&out).len(), 1);
    }

    #[test]
    fn cancel_followed_by_another_sockets_record_is_early() {
        let mut lc = Lifecycle::new(250);
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_CANCEL, 0xA, 0, 2000),
                rec(kind::TIMER_START, 0xB, 0, 2001),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Unknown, Some(1000))]);
        assert_eq!(lc.live_count(), 1);
    }

    #[test]
    fn reused_memory_on_the_same_cpu_is_a_death_then_a_birth() {
        // connect() reuse on CPU 0 kills A; the slab hands A's memory to the next timewait
        // socket, born on the same CPU at once, however soon (no REARM flag: the kernel saw
        // other timer events between).
        let mut lc = Lifecycle::new(250);
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_CANCEL, 0xA, 0, 2000),
                rec(kind::TIMER_START, 0xA, 0, 2000),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Unknown, Some(1000))]);
        assert_eq!(ev.iter().filter(|e| e.kind() == "enter").count(), 2);
        assert_eq!(lc.live_count(), 1);
    }

    #[test]
    fn start_on_a_live_address_without_detach_reports_unknown() {
        let mut lc = Lifecycle::new(250);
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_START, 0xA, 1, 5000),
            ],
        );
        assert_eq!(exits(&ev).len(), 1);
        assert_eq!(exits(&ev)[0].1, ExitReason::Unknown);
        assert_eq!(lc.stats.exits_by(ExitReason::Unknown), 1);
        assert_eq!(lc.live_count(), 1);
    }

    #[test]
    fn snapshot_sockets_age_and_die() {
        let mut lc = Lifecycle::new(250);
        let mut s = rec(kind::SNAPSHOT, 0xA, 0, 100_000);
        s.flags = flags::ENTRY_STAMP;
        s.entry_stamp = 70_000;
        s.expires = s.jiffies + 250 * 30;
        let mut out = Vec::new();
        lc.on_record(&s, &mut out);
        match &out[0].body {
            Body::Enter {
                snapshot,
                age_ms,
                timeout_ms,
                ..
            } => {
                assert!(snapshot);
                assert_eq!(*age_ms, Some(30_000));
                assert_eq!(*timeout_ms, 30_000);
            }
            b => panic!("{b:?}"),
        }
        let mut e = rec(kind::TIMER_EXPIRE, 0xA, 1, 131_000);
        e.flags = flags::ENTRY_STAMP;
        e.entry_stamp = 70_000;
        let ev = run(&mut lc, &[rec(kind::TIMER_CANCEL, 0xA, 1, 131_000), e]);
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Expired, Some(61_000))]);
    }

    #[test]
    fn birth_seen_before_the_snapshot_is_not_doubled() {
        let mut lc = Lifecycle::new(250);
        let mut out = Vec::new();
        lc.on_record(&rec(kind::SNAPSHOT, 0xA, 0, 2000), &mut out);
        lc.on_record(&rec(kind::TIMER_START, 0xA, 1, 1990), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(lc.stats.exits_by(ExitReason::Unknown), 0);
    }

    #[test]
    fn substate_at_death_is_reported() {
        let mut lc = Lifecycle::new(250);
        let mut s = rec(kind::TIMER_START, 0xA, 0, 1000);
        s.substate = TCP_FIN_WAIT2;
        let mut c = rec(kind::TIMER_CANCEL, 0xA, 0, 2000);
        c.substate = TCP_TIME_WAIT;
        let mut out = run(&mut lc, &[s, c]);
        lc.tick(3000 * MS, None, &mut out);
        match &out.last().unwrap().body {
            Body::Exit { substate, .. } => assert_eq!(*substate, Substate::TimeWait),
            b => panic!("{b:?}"),
        }
    }

    #[test]
    fn detach_flags_give_the_reason() {
        let mut lc = Lifecycle::new(250);
        let mut c1 = rec(kind::TIMER_CANCEL, 0xA, 0, 2000);
        c1.flags = flags::IN_CONNECT;
        let mut c2 = rec(kind::TIMER_CANCEL, 0xB, 0, 2001);
        c2.flags = flags::NETNS_DYING;
        let mut out = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_START, 0xB, 1, 1000),
                c1,
                c2,
            ],
        );
        lc.tick(3000 * MS, None, &mut out);
        let ex = exits(&out);
        assert_eq!(
            ex,
            vec![
                (0xA, ExitReason::Reused, Some(1000)),
                (0xB, ExitReason::Purged, Some(1001))
            ]
        );
        // A reuse names the connecting task.
        assert!(out.iter().any(|e| matches!(
            &e.body,
            Body::Exit {
                reason: ExitReason::Reused,
                task: Some(_),
                ..
            }
        )));
    }

    #[test]
    fn an_in_connect_flag_on_a_real_expiry_stays_an_expiry() {
        // The timer softirq can run on the way out of an interrupt during connect().
        let mut lc = Lifecycle::new(250);
        let mut c = rec(kind::TIMER_CANCEL, 0xA, 0, 61_000);
        c.flags = flags::IN_CONNECT;
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                c,
                rec(kind::TIMER_EXPIRE, 0xA, 0, 61_000),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Expired, Some(60_000))]);
    }

    #[test]
    fn killing_segment_and_rst_answer_mean_rst() {
        let mut lc = Lifecycle::new(250);
        let mut drop = rec(kind::TW_DROP, 0xA, 0, 2000);
        drop.aux2 = twtrace_common::TCPF_RST;
        let mut out = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_START, 0xB, 1, 1000),
                rec(kind::TIMER_CANCEL, 0xA, 0, 2000),
                drop,
                rec(kind::TW_RST_SENT, 0xB, 1, 3000),
                rec(kind::TIMER_CANCEL, 0xB, 1, 3000),
            ],
        );
        lc.tick(4000 * MS, None, &mut out);
        assert_eq!(
            exits(&out),
            vec![
                (0xA, ExitReason::Rst, Some(1000)),
                (0xB, ExitReason::Rst, Some(2000))
            ]
        );
    }

    #[test]
    fn a_drop_without_a_detach_kills_nothing_and_paws_is_reported() {
        let mut lc = Lifecycle::new(250);
        let mut paws = rec(kind::TW_DROP, 0xA, 0, 1500);
        paws.flags = flags::PAWS;
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TW_DROP, 0xA, 0, 1400),
                paws,
            ],
        );
        assert!(exits(&ev).is_empty());
        assert_eq!(ev.iter().filter(|e| e.kind() == "paws_reject").count(), 1);
        assert_eq!(lc.stats.paws_rejects, 1);
    }

    #[test]
    fn syn_into_timewait_needs_the_same_tuple() {
        let mut lc = Lifecycle::new(250);
        let mut other = rec(kind::REQSK_START, 0x99, 0, 2000);
        other.rport = 81;
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_CANCEL, 0xA, 0, 2000),
                other,
            ],
        );
        assert!(
            exits(&ev).is_empty(),
            "another connection's SYN is no evidence"
        );
        let ev = run(&mut lc, &[rec(kind::REQSK_START, 0x98, 0, 2000)]);
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Syn, Some(1000))]);
    }

    #[test]
    fn connect_failure_refusals() {
        let lo = |lc: &mut Lifecycle, tw: u64, ts_ms: u64, tsr: u32, sub: u8| {
            let mut r = rec(kind::TIMER_START, tw, 0, ts_ms);
            r.ts_recent_stamp = tsr;
            r.substate = sub;
            r.lport = 40000 + tw as u16;
            let mut out = Vec::new();
            lc.on_record(&r, &mut out);
        };
        let fail = |lc: &mut Lifecycle, ts_ms: u64| -> (u32, Refusal) {
            let mut r = rec(kind::CONNECT_FAIL, 0xF, 1, ts_ms);
            r.lport = 0;
            let mut out = Vec::new();
            lc.on_record(&r, &mut out);
            match &out[0].body {
                Body::ConnectFail {
                    timewait,
                    refusal,
                    errno,
                    ..
                } => {
                    assert_eq!(*errno, libc::EADDRNOTAVAIL);
                    (*timewait, *refusal)
                }
                b => panic!("{b:?}"),
            }
        };
        let sys = |reuse: u8| Sysctls {
            tw_reuse: Some(reuse),
            tw_reuse_delay_ms: Some(1000),
            ..Default::default()
        };
        let mut lc = Lifecycle::new(250);
        assert_eq!(fail(&mut lc, 1000), (0, Refusal::NoTimewait));
        lo(&mut lc, 1, 1000, 0, TCP_TIME_WAIT);
        assert_eq!(fail(&mut lc, 1100), (1, Refusal::NoTimestamps));
        lo(&mut lc, 2, 1000, 7, TCP_FIN_WAIT2);
        lc.set_sysctls(0, sys(0));
        assert_eq!(fail(&mut lc, 1100), (2, Refusal::ReuseOff));
        lc.set_sysctls(0, sys(1));
        assert_eq!(fail(&mut lc, 1100), (2, Refusal::FinWait2));
        lo(&mut lc, 3, 1000, 7, TCP_TIME_WAIT);
        assert_eq!(fail(&mut lc, 1500), (3, Refusal::TooYoung));
        assert_eq!(fail(&mut lc, 2500), (3, Refusal::Unknown));
    }

    #[test]
    fn a_record_is_judged_by_the_settings_it_carries() {
        // /proc said tw_reuse=1 (a polled copy); the kernel read 0, then 2, at the moments of
        // the two failures: each refusal follows the record, and each change of value emits
        // one `netns` event, carried by the first record that has it.
        let mut lc = Lifecycle::new(250);
        let polled = Sysctls {
            tw_reuse: Some(1),
            tw_reuse_delay_ms: Some(1000),
            fin_timeout_s: Some(60),
            ..Default::default()
        };
        let mut out = Vec::new();
        lc.observe_sysctls(0, polled.clone(), 0, &mut out);
        lc.observe_sysctls(0, polled, 0, &mut out);
        assert_eq!(out.len(), 1, "an unchanged copy emits nothing: {out:?}");
        let mut b = rec(kind::TIMER_START, 0xA, 0, 1000);
        b.laddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        b.raddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        b.ts_recent_stamp = 1;
        run(&mut lc, &[b]);
        let fail = |lc: &mut Lifecycle, ts_ms: u64, reuse: u8| {
            let mut f = rec(kind::CONNECT_FAIL, 0xF, 0, ts_ms);
            f.raddr = b.raddr;
            f.lport = 0;
            f.conf = NetConf {
                valid: netconf::TW_REUSE | netconf::TW_REUSE_DELAY | netconf::PORT_RANGE,
                tw_reuse: reuse,
                tw_reuse_delay_ms: 60_000,
                port_lo: 40000,
                port_hi: 40003,
                ..NetConf::NONE
            };
            run(lc, &[f])
        };
        let refusals = |ev: &[Event]| -> Vec<Refusal> {
            ev.iter()
                .filter_map(|e| match &e.body {
                    Body::ConnectFail { refusal, .. } => Some(*refusal),
                    _ => None,
                })
                .collect()
        };
        let netns_events = |ev: &[Event]| -> Vec<Sysctls> {
            ev.iter()
                .filter_map(|e| match &e.body {
                    Body::Netns { sysctls, .. } => Some(sysctls.clone()),
                    _ => None,
                })
                .collect()
        };
        let ev = fail(&mut lc, 1500, 0);
        assert_eq!(refusals(&ev), vec![Refusal::ReuseOff]);
        let ns = netns_events(&ev);
        assert_eq!(ns.len(), 1, "{ev:?}");
        assert_eq!(ns[0].tw_reuse, Some(0));
        assert_eq!(ns[0].tw_reuse_delay_ms, Some(60_000));
        assert_eq!(ns[0].port_range, Some((40000, 40003)));
        assert_eq!(ns[0].fin_timeout_s, Some(60), "kept from /proc");
        // The same values again: no new netns event.
        let ev = fail(&mut lc, 1600, 0);
        assert_eq!(refusals(&ev), vec![Refusal::ReuseOff]);
        assert!(netns_events(&ev).is_empty(), "{ev:?}");
        let ev = fail(&mut lc, 1700, 2);
        assert_eq!(refusals(&ev), vec![Refusal::LoopbackOnly]);
        assert_eq!(netns_events(&ev).len(), 1);
        let ev = fail(&mut lc, 1800, 1);
        assert_eq!(
            refusals(&ev),
            vec![Refusal::TooYoung],
            "60 s delay, 0.8 s old"
        );
        // A kernel without the delay sysctl: the pre-6.13 rule, whatever /proc said before.
        let mut f = rec(kind::CONNECT_FAIL, 0xF, 0, 1900);
        f.raddr = b.raddr;
        f.conf = NetConf {
            valid: netconf::TW_REUSE,
            tw_reuse: 1,
            ..NetConf::NONE
        };
        let ev = run(&mut lc, &[f]);
        assert_eq!(netns_events(&ev)[0].tw_reuse_delay_ms, None);
    }

    #[test]
    fn loopback_only_refusal_for_other_peers() {
        let mut lc = Lifecycle::new(250);
        lc.set_sysctls(
            0,
            Sysctls {
                tw_reuse: Some(2),
                ..Default::default()
            },
        );
        let mut b = rec(kind::TIMER_START, 0xA, 0, 1000);
        b.laddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        b.raddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        b.ts_recent_stamp = 5;
        let mut f = rec(kind::CONNECT_FAIL, 0xF, 0, 5000);
        f.raddr = b.raddr;
        f.lport = 0;
        let ev = run(&mut lc, &[b, f]);
        assert!(
            ev.iter().any(|e| matches!(
                e.body,
                Body::ConnectFail {
                    refusal: Refusal::LoopbackOnly,
                    timewait: 1,
                    candidates: None,
                    ..
                }
            )),
            "{ev:?}"
        );
    }

    #[test]
    fn too_young_before_6_13_is_the_timestamps_second() {
        // No tcp_tw_reuse_delay: reusable once the monotonic second is past tw_ts_recent_stamp.
        let mut lc = Lifecycle::new(250);
        lc.set_sysctls(
            0,
            Sysctls {
                tw_reuse: Some(1),
                tw_reuse_delay_ms: None,
                ..Default::default()
            },
        );
        let mut b = rec(kind::TIMER_START, 0xA, 0, 7_100);
        b.ts_recent_stamp = 7; // the peer's last timestamp came in second 7
        b.substate = TCP_FIN_WAIT2; // no substate rule before 6.13
                                    // A failure recorded at `ts_ms`, for a connect() that began at `started_ms` (0: unknown).
        let refusal = |lc: &mut Lifecycle, ts_ms: u64, started_ms: u32| {
            let mut f = rec(kind::CONNECT_FAIL, 0xF, 0, ts_ms);
            f.lport = 0;
            f.entry_stamp = started_ms;
            match &run(lc, &[f])[0].body {
                Body::ConnectFail { refusal, .. } => *refusal,
                b => panic!("{b:?}"),
            }
        };
        run(&mut lc, &[b]);
        assert_eq!(refusal(&mut lc, 7_900, 0), Refusal::TooYoung);
        assert_eq!(refusal(&mut lc, 8_100, 0), Refusal::Unknown);
        // Judged when connect() began: the kernel refused in second 7, the record came in 8.
        assert_eq!(refusal(&mut lc, 8_002, 7_995), Refusal::TooYoung);
        // ktime_get_seconds() still said 7 just past the boundary (it lags by a tick or more).
        assert_eq!(refusal(&mut lc, 8_030, 8_020), Refusal::TooYoung);
    }

    #[test]
    fn a_segment_dropped_by_a_socket_being_taken_over_did_not_kill_it() {
        let mut lc = Lifecycle::new(250);
        let mut cancel = rec(kind::TIMER_CANCEL, 0xA, 0, 2000);
        cancel.flags |= flags::IN_CONNECT;
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                cancel,
                rec(kind::TW_DROP, 0xA, 0, 2000),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Reused, Some(1000))]);
        // Without the takeover's flag the same drop is the RST that killed it.
        let ev = run(
            &mut Lifecycle::new(250),
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_CANCEL, 0xA, 0, 2000),
                rec(kind::TW_DROP, 0xA, 0, 2000),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Rst, Some(1000))]);
    }

    #[test]
    fn with_the_function_tier_only_a_confirmed_takeover_is_a_reuse() {
        // The 6.1 guest's NAT lab: the peer's RST killed A while the same task's connect() to
        // that peer ran (the detach carries the task's flag), and tcp_twsk_unique took B.
        let mut lc = Lifecycle::new(250);
        lc.set_fn_tier(true, true);
        let mut killed = rec(kind::TIMER_CANCEL, 0xA, 0, 2000);
        killed.flags |= flags::IN_CONNECT;
        let mut taken = rec(kind::TW_UNIQUE, 0xB, 0, 3000);
        taken.aux = 1;
        let mut reused = rec(kind::TIMER_CANCEL, 0xB, 0, 3000);
        reused.flags |= flags::IN_CONNECT;
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_START, 0xB, 1, 1000),
                killed,
                taken,
                reused,
                rec(kind::TIMER_START, 0xC, 0, 4000),
            ],
        );
        assert_eq!(
            exits(&ev),
            vec![
                (0xA, ExitReason::Unknown, Some(1000)),
                (0xB, ExitReason::Reused, Some(2000)),
            ]
        );
        // Without the tier the flag is all there is: the same detach of A is a takeover.
        let ev = run(
            &mut Lifecycle::new(250),
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                killed,
                rec(kind::TIMER_START, 0xC, 0, 4000),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Reused, Some(1000))]);
    }

    #[test]
    fn a_takeover_is_not_half_of_a_rearm() {
        // connect() took A over (its detach flagged), and the same flow's next timewait
        // socket was born on A's freed memory with no timer event between: the kernel's
        // REARM test cannot tell; the takeover's flag can.
        for flag in [flags::IN_CONNECT, flags::NETNS_DYING] {
            let mut lc = Lifecycle::new(250);
            let mut cancel = rec(kind::TIMER_CANCEL, 0xA, 0, 2000);
            cancel.flags |= flag;
            let mut again = rec(kind::TIMER_START, 0xA, 0, 2100);
            again.flags |= flags::REARM;
            let ev = run(
                &mut lc,
                &[rec(kind::TIMER_START, 0xA, 0, 1000), cancel, again],
            );
            let reason = if flag == flags::IN_CONNECT {
                ExitReason::Reused
            } else {
                ExitReason::Purged
            };
            assert_eq!(exits(&ev), vec![(0xA, reason, Some(1000))]);
            assert_eq!(lc.stats.enters, 2, "the new socket is a birth");
            assert_eq!(lc.stats.rearms, 0);
            assert_eq!(lc.live_count(), 1);
        }
    }

    #[test]
    fn with_the_function_tier_a_connecting_tasks_rearm_is_a_rearm() {
        // The peer's FIN re-armed A's timer into another bucket in softirq work run by a task
        // inside connect() toward the same peer (the detach carries the task's flag; seen in
        // the 7.3 guest's loadgen test). tcp_twsk_unique did not take A: a re-arm, not a
        // death and a birth.
        let mut lc = Lifecycle::new(250);
        lc.set_fn_tier(true, true);
        let mut cancel = rec(kind::TIMER_CANCEL, 0xA, 0, 2000);
        cancel.flags |= flags::IN_CONNECT;
        let mut again = rec(kind::TIMER_START, 0xA, 0, 2001);
        again.flags |= flags::REARM;
        let ev = run(
            &mut lc,
            &[rec(kind::TIMER_START, 0xA, 0, 1000), cancel, again],
        );
        assert_eq!(exits(&ev), vec![]);
        assert_eq!((lc.stats.enters, lc.stats.rearms), (1, 1));
        assert_eq!(lc.live_count(), 1);
    }

    #[test]
    fn function_tier_reuse_overflow_and_candidates() {
        let mut lc = Lifecycle::new(250);
        lc.set_fn_tier(true, true);
        // tcp_twsk_unique took A over: its detach is a reuse even without the task's flag,
        // and even if a start on the same memory followed at once.
        let mut taken = rec(kind::TW_UNIQUE, 0xA, 0, 2000);
        taken.aux = 1;
        taken.expires = 3; // three others refused before it
        let mut again = rec(kind::TIMER_START, 0xA, 0, 2000);
        again.flags |= flags::REARM; // even a start that claims to re-arm it
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                taken,
                rec(kind::TIMER_CANCEL, 0xA, 0, 2000),
                again,
            ],
        );
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Reused, Some(1000))]);
        assert_eq!(lc.stats.reuses_confirmed, 1);
        assert_eq!(lc.stats.reuse_refusals, 3);
        assert_eq!(lc.live_count(), 1, "the new socket on A's memory");
        // inet_twsk_alloc failed, then the tracepoint tier inferred the same overflow (and one
        // more, wrongly): only the function tier's count.
        let mut fail = rec(kind::TW_ALLOC_FAIL, 0x5, 1, 3000);
        fail.lport = 41000;
        let mut inferred = rec(kind::OVERFLOW, 0x5, 1, 3000);
        inferred.lport = 41000;
        let other = rec(kind::OVERFLOW, 0x6, 1, 3001);
        let ev = run(&mut lc, &[fail, inferred, other]);
        assert_eq!(ev.iter().filter(|e| e.kind() == "overflow").count(), 1);
        assert_eq!(lc.stats.overflows, 1);
        // connect() failed: the kernel's count decides, and names the candidate to judge.
        let mut none = rec(kind::CONNECT_FAIL, 0xF, 0, 4000);
        none.lport = 0;
        none.flags = flags::CANDIDATES;
        let mut one = none;
        one.aux = 1;
        one.expires = 0xA;
        let ev = run(&mut lc, &[none, one]);
        let got: Vec<(Refusal, Option<u32>)> = ev
            .iter()
            .filter_map(|e| match &e.body {
                Body::ConnectFail {
                    refusal,
                    candidates,
                    ..
                } => Some((*refusal, *candidates)),
                _ => None,
            })
            .collect();
        // A (born at 2000 ms, no timestamps in these records) was the one refused.
        assert_eq!(
            got,
            vec![
                (Refusal::NoTimewait, Some(0)),
                (Refusal::NoTimestamps, Some(1))
            ]
        );
    }

    #[test]
    fn a_takeover_is_aged_as_the_kernel_judged_it() {
        // A's birth record trails the kernel's stamp by 4 ms (a vCPU paused between the two):
        // the takeover's age is the kernel's, from the stamp its own record read at the
        // takeover, not from the birth record.
        let mut lc = Lifecycle::new(250);
        let stamped = |mut r: TwRecord, stamp_ms: u32| {
            r.flags |= flags::ENTRY_STAMP;
            r.entry_stamp = stamp_ms;
            r
        };
        let mut cancel = stamped(rec(kind::TIMER_CANCEL, 0xA, 0, 2000), 996);
        cancel.flags |= flags::IN_CONNECT;
        let ev = run(
            &mut lc,
            &[
                stamped(rec(kind::TIMER_START, 0xA, 0, 1000), 996),
                cancel,
                rec(kind::TIMER_START, 0xC, 0, 3000),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Reused, Some(1004))]);
        // Promoted since its birth (the stamp restarted at the FIN): the age since then.
        let mut cancel = stamped(rec(kind::TIMER_CANCEL, 0xB, 0, 5000), 4200);
        cancel.flags |= flags::IN_CONNECT;
        let ev = run(
            &mut lc,
            &[
                stamped(rec(kind::TIMER_START, 0xB, 0, 4000), 4000),
                cancel,
                rec(kind::TIMER_START, 0xD, 0, 6000),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xB, ExitReason::Reused, Some(800))]);
        // Any other death keeps the lifetime from birth.
        let ev = run(
            &mut lc,
            &[
                stamped(rec(kind::TIMER_START, 0xE, 0, 7000), 6990),
                stamped(rec(kind::TIMER_CANCEL, 0xE, 0, 8000), 7500),
                rec(kind::TIMER_START, 0xF, 0, 9000),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xE, ExitReason::Unknown, Some(1000))]);
    }

    #[test]
    fn the_function_tier_refusal_is_judged_on_the_socket_the_kernel_saw() {
        // A was born in its FIN_WAIT2 substate and the record of the FIN that promoted it was
        // lost (7.x skips a kfree_skb run while another task is preempted in it): the
        // lifecycle's copy still says FIN_WAIT2. tcp_twsk_unique saw it in TIME_WAIT, 150 ms
        // old at connect()'s start, under a 200 ms delay: too young.
        let mut lc = Lifecycle::new(250);
        lc.set_fn_tier(true, true);
        let mut born = rec(kind::TIMER_START, 0xA, 0, 1000);
        born.substate = TCP_FIN_WAIT2;
        born.ts_recent_stamp = 1;
        let mut f = rec(kind::CONNECT_FAIL, 0xF, 0, 1400);
        f.lport = 0;
        f.flags = flags::CANDIDATES;
        f.aux = 4;
        f.expires = 0xA;
        f.entry_stamp = 1390; // connect() began at 1390 ms
        f.conf = NetConf {
            valid: netconf::TW_REUSE | netconf::TW_REUSE_DELAY,
            tw_reuse: 1,
            tw_reuse_delay_ms: 200,
            ..NetConf::NONE
        };
        let refusal = |lc: &mut Lifecycle, f: TwRecord| {
            run(lc, &[f]).iter().find_map(|e| match &e.body {
                Body::ConnectFail { refusal, .. } => Some(*refusal),
                _ => None,
            })
        };
        run(&mut lc, &[born]);
        // Without the kernel's view, the stale copy decides.
        assert_eq!(refusal(&mut lc, f), Some(Refusal::FinWait2));
        let mut seen = f;
        seen.flags |= flags::REFUSED_STATE;
        seen.substate = TCP_TIME_WAIT;
        seen.ts_recent_stamp = 1;
        seen.aux2 = 150;
        assert_eq!(refusal(&mut lc, seen), Some(Refusal::TooYoung));
        // 201 ms old at the start, and still refused: not explained by the rule.
        seen.aux2 = 201;
        assert_eq!(refusal(&mut lc, seen), Some(Refusal::Unknown));
        // In its FIN_WAIT2 substate when refused: that is the reason, however old.
        seen.substate = TCP_FIN_WAIT2;
        assert_eq!(refusal(&mut lc, seen), Some(Refusal::FinWait2));
        // Even with no live copy at all (born before the tracer started).
        seen.expires = 0xB;
        seen.substate = TCP_TIME_WAIT;
        seen.aux2 = 10;
        assert_eq!(refusal(&mut lc, seen), Some(Refusal::TooYoung));
    }
}
