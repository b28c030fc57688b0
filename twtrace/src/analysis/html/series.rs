//! The time series of the HTML report, from one pass over the events beside the aggregator:
//! per time bucket, entries, exits by reason, connect()/bind() failures, and the TIME_WAIT
//! sockets alive (in all and toward each tracked destination).
//!
//! Memory is bounded whatever the trace: at most [`MAX_BUCKETS`] buckets (one second wide
//! until the trace is longer than that; then the width doubles and neighbours merge, so a
//! bogus timestamp years away costs a few merges, not memory) and at most [`MAX_TRACKED`]
//! destinations with a series of their own (the first seen; the others are in the total).
//!
//! The "alive" numbers are the aggregator's own (`Peer::timewait_total`, and the namespaces'
//! `timewait` summed), read after each event that changes them: the chart and the report's
//! tables cannot disagree. A bucket keeps the highest value seen in it (the peak, which is
//! what runs a pool dry); buckets without an event carry the previous value forward.

use crate::analysis::aggregate::{Aggregator, PeerKey, N_REASONS};
use crate::pipeline::event::{Body, Event};

const NS: u64 = 1_000_000_000;

/// Buckets kept at most (the plot is ~1100 px wide: more would not show).
pub const MAX_BUCKETS: usize = 2048;
/// Destinations with a series of their own.
pub const MAX_TRACKED: usize = 32;

/// "No event in this bucket": the value is carried forward from the previous one.
const UNSET: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub struct Bucket {
    pub entries: u32,
    /// Indexed by [`crate::pipeline::event::ExitReason::index`].
    pub exits: [u32; N_REASONS],
    pub connect_fail: u32,
    pub bind_fail: u32,
    /// TIME_WAIT sockets alive in all namespaces (peak in the bucket).
    alive_total: u32,
    /// Per tracked destination, in [`Series::tracked`] order (peak in the bucket; shorter
    /// than `tracked` or [`UNSET`] where nothing happened).
    alive: Vec<u32>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            entries: 0,
            exits: [0; N_REASONS],
            connect_fail: 0,
            bind_fail: 0,
            alive_total: UNSET,
            alive: Vec::new(),
        }
    }
}

/// Per-bucket counts over the trace's time line (wall-clock ns since the epoch).
#[derive(Clone, Debug)]
pub struct Series {
    /// Second of the first event: bucket 0 starts there.
    origin_s: Option<u64>,
    /// Bucket width in seconds (a power of two).
    width_s: u64,
    buckets: Vec<Bucket>,
    /// The bucket of the latest event.
    current: usize,
    tracked: Vec<PeerKey>,
    /// The latest readings (not peaks): what a bucket starts from, since the sockets alive
    /// at its start count toward its peak too.
    latest_total: u32,
    latest: Vec<u32>,
    /// Events on destinations past [`MAX_TRACKED`] (they are in the total only).
    untracked_events: u64,
    /// Events earlier than the first one (out of order): booked in bucket 0.
    early: u64,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            origin_s: None,
            width_s: 1,
            buckets: Vec::new(),
            current: 0,
            tracked: Vec::new(),
            latest_total: 0,
            latest: Vec::new(),
            untracked_events: 0,
            early: 0,
        }
    }
}

/// One destination's series, filled in (no [`UNSET`] left).
#[derive(Clone, Debug)]
pub struct DestSeries {
    pub key: PeerKey,
    pub alive: Vec<u32>,
    pub peak: u32,
}

impl Series {
    /// Books one event; call it right after `agg.observe(e)` with the same event.
    pub fn observe(&mut self, e: &Event, agg: &Aggregator) {
        let b = self.bucket_mut(e.ts_ns);
        match &e.body {
            Body::Enter { snapshot, .. } => {
                if !snapshot {
                    b.entries = b.entries.saturating_add(1);
                }
            }
            Body::Exit { reason, .. } => {
                let n = &mut b.exits[reason.index()];
                *n = n.saturating_add(1);
            }
            Body::ConnectFail { .. } => b.connect_fail = b.connect_fail.saturating_add(1),
            Body::BindFail { .. } => b.bind_fail = b.bind_fail.saturating_add(1),
            _ => return,
        }
        if !matches!(
            e.body,
            Body::Enter { .. } | Body::Exit { .. } | Body::Promote { .. }
        ) {
            return;
        }
        let total: u64 = agg.netns().map(|n| n.timewait[0] + n.timewait[1]).sum();
        let (carried, now) = (self.latest_total, clamp32(total));
        self.latest_total = now;
        let b = self.last_mut();
        b.alive_total = peak(peak(b.alive_total, carried), now);
        let Some(sock) = e.sock() else { return };
        let key = agg.peer_key(sock);
        let i = match self.tracked.iter().position(|k| *k == key) {
            Some(i) => i,
            None if self.tracked.len() < MAX_TRACKED => {
                self.tracked.push(key);
                self.latest.push(0);
                self.tracked.len() - 1
            }
            None => {
                self.untracked_events += 1;
                return;
            }
        };
        let now = clamp32(agg.peer(&key).map_or(0, |p| p.timewait_total()));
        let carried = std::mem::replace(&mut self.latest[i], now);
        let b = self.last_mut();
        if b.alive.len() <= i {
            b.alive.resize(i + 1, UNSET);
        }
        b.alive[i] = peak(peak(b.alive[i], carried), now);
    }

    /// The bucket of `ts_ns`, created (and the series coarsened) as needed. Remembers it as
    /// the current one for [`Series::last_mut`].
    fn bucket_mut(&mut self, ts_ns: u64) -> &mut Bucket {
        let sec = ts_ns / NS;
        let origin = *self.origin_s.get_or_insert(sec);
        if sec < origin {
            self.early += 1;
        }
        let mut idx = sec.saturating_sub(origin) / self.width_s;
        while idx >= MAX_BUCKETS as u64 {
            self.coarsen();
            idx = sec.saturating_sub(origin) / self.width_s;
        }
        let idx = idx as usize;
        if self.buckets.len() <= idx {
            self.buckets.resize_with(idx + 1, Bucket::default);
        }
        self.current = idx;
        &mut self.buckets[idx]
    }

    fn last_mut(&mut self) -> &mut Bucket {
        &mut self.buckets[self.current]
    }

    /// Doubles the bucket width: neighbours merge (counts add up, peaks take the higher).
    fn coarsen(&mut self) {
        let old = std::mem::take(&mut self.buckets);
        let mut it = old.into_iter();
        while let Some(mut a) = it.next() {
            if let Some(b) = it.next() {
                a.entries = a.entries.saturating_add(b.entries);
                for (x, y) in a.exits.iter_mut().zip(b.exits) {
                    *x = x.saturating_add(y);
                }
                a.connect_fail = a.connect_fail.saturating_add(b.connect_fail);
                a.bind_fail = a.bind_fail.saturating_add(b.bind_fail);
                a.alive_total = merge_peak(a.alive_total, b.alive_total);
                if a.alive.len() < b.alive.len() {
                    a.alive.resize(b.alive.len(), UNSET);
                }
                for (x, y) in a.alive.iter_mut().zip(b.alive) {
                    *x = merge_peak(*x, y);
                }
            }
            self.buckets.push(a);
        }
        self.width_s = self.width_s.saturating_mul(2);
        self.current /= 2;
    }

    /// Seconds since the epoch where bucket 0 starts (`None`: no event).
    pub fn origin_s(&self) -> Option<u64> {
        self.origin_s
    }

    pub fn width_s(&self) -> u64 {
        self.width_s
    }

    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// Events on destinations that got no series of their own.
    pub fn untracked_events(&self) -> u64 {
        self.untracked_events
    }

    /// Events older than the first one, booked in the first bucket.
    pub fn early_events(&self) -> u64 {
        self.early
    }

    /// TIME_WAIT sockets alive in all, per bucket (carried forward where nothing happened).
    pub fn alive_total(&self) -> Vec<u32> {
        fill(self.buckets.iter().map(|b| b.alive_total))
    }

    /// The `n` tracked destinations with the highest peak (ties: first seen), peak > 0 only.
    pub fn top_destinations(&self, n: usize) -> Vec<DestSeries> {
        let mut all: Vec<DestSeries> = self
            .tracked
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let alive = fill(
                    self.buckets
                        .iter()
                        .map(|b| b.alive.get(i).copied().unwrap_or(UNSET)),
                );
                let peak = alive.iter().copied().max().unwrap_or(0);
                DestSeries {
                    key: *key,
                    alive,
                    peak,
                }
            })
            .filter(|d| d.peak > 0)
            .collect();
        // Stable: equal peaks keep the order they were first seen in.
        all.sort_by_key(|d| std::cmp::Reverse(d.peak));
        all.truncate(n);
        all
    }
}

fn clamp32(n: u64) -> u32 {
    n.min(u64::from(UNSET - 1)) as u32
}

/// The higher of a bucket's value so far (maybe unset) and a new reading.
fn peak(old: u32, new: u32) -> u32 {
    if old == UNSET {
        new
    } else {
        old.max(new)
    }
}

fn merge_peak(a: u32, b: u32) -> u32 {
    match (a, b) {
        (UNSET, x) | (x, UNSET) => x,
        (a, b) => a.max(b),
    }
}

/// Unset values take the previous value (0 before the first one).
fn fill(values: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut last = 0;
    values
        .map(|v| {
            if v != UNSET {
                last = v;
            }
            last
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::aggregate::tests::{client, enter, exit};
    use crate::pipeline::event::{ExitReason, Substate};

    fn feed(events: &[Event]) -> (Aggregator, Series) {
        let mut agg = Aggregator::default();
        let mut s = Series::default();
        for e in events {
            agg.observe(e);
            s.observe(e, &agg);
        }
        (agg, s)
    }

    #[test]
    fn counts_per_second_and_alive_from_the_aggregator() {
        let mut ev = Vec::new();
        for i in 0..5u64 {
            ev.push(enter(
                10.0 + i as f64 * 0.1,
                client(i, 40000 + i as u16),
                Substate::TimeWait,
            ));
        }
        for i in 0..3u64 {
            ev.push(exit(
                13.5,
                client(i, 40000 + i as u16),
                Substate::TimeWait,
                ExitReason::Reused,
                3_000,
            ));
        }
        let (agg, s) = feed(&ev);
        assert_eq!(s.width_s(), 1);
        let b = s.buckets();
        assert_eq!(b.len(), 4, "10 s … 13 s");
        assert_eq!(b[0].entries, 5);
        assert_eq!(b[3].exits[ExitReason::Reused.index()], 3);
        // Peak 5 while they were born, carried over the empty seconds and into the last
        // one (5 alive at its start, 2 at its end).
        assert_eq!(s.alive_total(), vec![5, 5, 5, 5]);
        let top = s.top_destinations(8);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].peak, 5);
        let p = agg.peer(&top[0].key).unwrap();
        assert_eq!(p.timewait_total(), 2, "the aggregator's row");
        assert_eq!(*top[0].alive.last().unwrap(), 5, "peak of the last second");
    }

    #[test]
    fn far_apart_times_coarsen_instead_of_growing() {
        let a = enter(1.0, client(0, 40000), Substate::TimeWait);
        let mut b = enter(2.0, client(1, 40001), Substate::TimeWait);
        b.ts_ns = u64::MAX; // centuries later
        let mut early = enter(0.0, client(2, 40002), Substate::TimeWait);
        early.ts_ns = 0;
        let (_, s) = feed(&[a, b, early]);
        assert!(s.buckets().len() <= MAX_BUCKETS);
        assert!(s.width_s() > 1);
        let entries: u32 = s.buckets().iter().map(|b| b.entries).sum();
        assert_eq!(entries, 3);
        assert_eq!(s.early_events(), 1);
    }

    #[test]
    fn empty_and_single() {
        let s = Series::default();
        assert!(s.buckets().is_empty() && s.origin_s().is_none());
        assert!(s.top_destinations(8).is_empty());
        let (_, s) = feed(&[enter(5.0, client(0, 40000), Substate::TimeWait)]);
        assert_eq!(s.buckets().len(), 1);
        assert_eq!(s.alive_total(), vec![1]);
    }

    #[test]
    fn destinations_past_the_cap_are_counted_not_kept() {
        let ev: Vec<Event> = (0..(MAX_TRACKED as u64 + 5))
            .map(|i| {
                let mut s = client(i, 40000);
                s.raddr = std::net::IpAddr::from([10, 9, (i >> 8) as u8, i as u8]);
                enter(1.0, s, Substate::TimeWait)
            })
            .collect();
        let (_, s) = feed(&ev);
        assert_eq!(s.top_destinations(100).len(), MAX_TRACKED);
        assert_eq!(s.untracked_events(), 5);
        assert_eq!(s.alive_total(), vec![MAX_TRACKED as u32 + 5]);
    }
}
