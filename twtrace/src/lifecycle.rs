//! Timer records → timewait socket lifecycle events.
//!
//! The kernel programs report every `timer_start`, `timer_cancel`, `timer_expire_entry` and
//! (stale-function) `timer_init` of a timewait socket's timer. What a record means depends on
//! what comes next on the same CPU (see `../shared/notes/kernel.md`):
//!
//! | sequence on one CPU                         | meaning                          |
//! |---------------------------------------------|----------------------------------|
//! | `start(A)`, A not alive                     | birth of A                       |
//! | `cancel(A)` then `expire(A)`                | A expired (`__run_timers`)       |
//! | `cancel(A)` then `start(A)`                 | A re-armed into another bucket   |
//! | `cancel(A)` then anything else, or nothing  | A died early (`timer_shutdown_sync`) |
//! | `init(A)` while A alive / cancel pending    | A's memory is reused: A is dead  |
//!
//! The detach and its expiry/re-arm run back to back on one CPU with nothing of ours in
//! between (timewait timers are only touched from softirq or process context, which cannot
//! preempt the timer softirq's expiry loop on that CPU), so a cancel still unsettled after
//! `settle_ns` is an early death, timed at the cancel. The ring buffer keeps each CPU's records
//! in the order they were made, which is all this needs.

use crate::event::{Body, Event, ExitReason, Sock, Substate, Task};
use std::collections::HashMap;
use twtrace_common::{flags, kind, TwRecord};

/// Default window after which an unsettled cancel is an early death. Expiries and re-arms
/// settle within microseconds.
pub const SETTLE_NS: u64 = 20_000_000;

#[derive(Clone, Debug)]
struct Live {
    sock: Sock,
    substate: Substate,
    /// Monotonic ns of birth, when seen.
    birth_ns: Option<u64>,
    /// Set for sockets found by the snapshot: records older than this are history.
    snapshot_ns: Option<u64>,
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
}

pub struct Lifecycle {
    hz: u64,
    settle_ns: u64,
    live: HashMap<u64, Live>,
    /// Per CPU: a cancel not yet explained by the next record on that CPU.
    pending: HashMap<u16, TwRecord>,
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
            live: HashMap::new(),
            pending: HashMap::new(),
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
        let now_ms = (r.ts_ns / 1_000_000) as u32;
        Some(now_ms.wrapping_sub(r.entry_stamp) as u64)
    }

    fn sock_of(r: &TwRecord) -> Sock {
        Sock::from_raw(r.tw, r.netns, r.family, r.laddr, r.lport, r.raddr, r.rport)
    }

    /// Feeds one kernel record; appends the events it completes to `out`.
    pub fn on_record(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        match r.kind {
            kind::TIMER_START => self.on_start(r, out),
            kind::TIMER_CANCEL => {
                if let Some(p) = self.pending.remove(&r.cpu) {
                    self.die(&p, ExitReason::Early, out);
                }
                self.pending.insert(r.cpu, *r);
            }
            kind::TIMER_EXPIRE => {
                match self.pending.remove(&r.cpu) {
                    Some(p) if p.tw == r.tw => {}
                    Some(p) => self.die(&p, ExitReason::Early, out),
                    None => {}
                }
                self.die(r, ExitReason::Expired, out);
            }
            kind::TIMER_INIT => {
                // The memory of a dead timewait socket is being reused: whatever cancel of it
                // is pending was its death, and if none was seen, its death was missed.
                self.settle_other_cpus(r.tw, out);
                if let Some(p) = self.pending.remove(&r.cpu) {
                    self.die(&p, ExitReason::Early, out);
                }
                if self.live.contains_key(&r.tw) {
                    self.die(r, ExitReason::Unknown, out);
                }
            }
            kind::SNAPSHOT => self.on_snapshot(r, out),
            _ => {}
        }
    }

    fn on_start(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        match self.pending.remove(&r.cpu) {
            Some(p) if p.tw == r.tw => return self.rearm(r, out),
            Some(p) => self.die(&p, ExitReason::Early, out),
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
        let task = (r.flags & flags::CLOSER != 0).then(|| Task::from_raw(r.pid, &r.comm));
        let sock = Self::sock_of(r);
        let substate = Substate::from_raw(r.substate);
        self.live.insert(
            r.tw,
            Live {
                sock: sock.clone(),
                substate,
                birth_ns: Some(r.ts_ns),
                snapshot_ns: None,
            },
        );
        self.stats.enters += 1;
        out.push(Event {
            ts_ns: r.ts_ns,
            body: Body::Enter {
                sock,
                substate,
                timeout_ms: self.timeout_ms(r),
                task,
                snapshot: false,
                age_ms: None,
            },
        });
    }

    fn rearm(&mut self, r: &TwRecord, out: &mut Vec<Event>) {
        self.stats.rearms += 1;
        let new = Substate::from_raw(r.substate);
        let timeout_ms = self.timeout_ms(r);
        let Some(l) = self.live.get_mut(&r.tw) else {
            return;
        };
        if l.substate == Substate::FinWait2 && new == Substate::TimeWait {
            self.stats.promotes += 1;
            let age_ms = l.birth_ns.map(|b| r.ts_ns.saturating_sub(b) / 1_000_000);
            out.push(Event {
                ts_ns: r.ts_ns,
                body: Body::Promote {
                    sock: l.sock.clone(),
                    timeout_ms,
                    age_ms,
                },
            });
        }
        l.substate = new;
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
                birth_ns: None,
                snapshot_ns: Some(r.ts_ns),
            },
        );
        self.stats.snapshot += 1;
        out.push(Event {
            ts_ns: r.ts_ns,
            body: Body::Enter {
                sock,
                substate,
                timeout_ms: self.timeout_ms(r),
                task: None,
                snapshot: true,
                age_ms,
            },
        });
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
                self.die(&p, ExitReason::Early, out);
            }
        }
    }

    /// Emits the exit of the socket `r` describes (at `r`'s time) and forgets it.
    fn die(&mut self, r: &TwRecord, reason: ExitReason, out: &mut Vec<Event>) {
        let live = self.live.remove(&r.tw);
        if live.is_none() && reason == ExitReason::Unknown {
            return;
        }
        let lifetime_ms = match live.as_ref().and_then(|l| l.birth_ns) {
            Some(b) => Some(r.ts_ns.saturating_sub(b) / 1_000_000),
            None => Self::stamp_age_ms(r),
        };
        let (sock, substate) = match (live, reason) {
            // For Unknown the record is a *new* socket's: report what we knew of the old one.
            (Some(l), ExitReason::Unknown) => (l.sock, l.substate),
            (Some(l), _) => (l.sock, Substate::from_raw(r.substate)),
            (None, _) => (Self::sock_of(r), Substate::from_raw(r.substate)),
        };
        let task = match reason {
            ExitReason::Early => Some(Task::from_raw(r.pid, &r.comm)),
            _ => None,
        };
        self.stats.exits += 1;
        self.stats.by_reason[reason.index()] += 1;
        out.push(Event {
            ts_ns: r.ts_ns,
            body: Body::Exit {
                sock,
                substate,
                reason,
                lifetime_ms,
                task,
            },
        });
    }

    /// Settles cancels older than the settle window at monotonic time `now_ns`.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Event>) {
        let due: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ns.saturating_sub(p.ts_ns) >= self.settle_ns)
            .map(|(c, _)| *c)
            .collect();
        let mut recs: Vec<TwRecord> = due.iter().filter_map(|c| self.pending.remove(c)).collect();
        recs.sort_by_key(|r| r.ts_ns);
        for p in recs {
            self.die(&p, ExitReason::Early, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::blank;
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
        let s2 = rec(kind::TIMER_START, 0xA, 1, 4000);
        let mut out = run(&mut lc, &[s, c, s2]);
        lc.tick(10_000 * MS, &mut out);
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
        lc.tick(1505 * MS, &mut out);
        assert!(exits(&out).is_empty(), "settled too early");
        lc.tick(1521 * MS, &mut out);
        assert_eq!(exits(&out), vec![(0xA, ExitReason::Early, Some(500))]);
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
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Early, Some(1000))]);
        assert_eq!(lc.live_count(), 1);
    }

    #[test]
    fn reused_memory_on_the_same_cpu_is_a_death_then_a_birth() {
        // connect() reuse on CPU 0 kills A; the slab hands A's memory to the next timewait
        // socket, born on the same CPU before anything else happened there.
        let mut lc = Lifecycle::new(250);
        let ev = run(
            &mut lc,
            &[
                rec(kind::TIMER_START, 0xA, 0, 1000),
                rec(kind::TIMER_CANCEL, 0xA, 0, 2000),
                rec(kind::TIMER_INIT, 0xA, 0, 2001),
                rec(kind::TIMER_START, 0xA, 0, 2001),
            ],
        );
        assert_eq!(exits(&ev), vec![(0xA, ExitReason::Early, Some(1000))]);
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
        lc.tick(3000 * MS, &mut out);
        match &out.last().unwrap().body {
            Body::Exit { substate, .. } => assert_eq!(*substate, Substate::TimeWait),
            b => panic!("{b:?}"),
        }
    }
}
