//! The lifetime histogram (log-linear, exact enough for quantiles), the display bins people
//! look at, the last minute of exits by bin, and the sliding rate window.

const NS: u64 = 1_000_000_000;

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
    pub(crate) fn record(&mut self, ts_ns: u64, ms: u64) {
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
pub(crate) struct RateWindow {
    head: u64,
    slots: [u32; RATE_SLOTS as usize],
}

impl RateWindow {
    pub(crate) fn add(&mut self, ts_ns: u64) {
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

    /// The second (of the events' clock) of the latest event added.
    pub(crate) fn last_s(&self) -> u64 {
        self.head
    }

    /// Per second over the window ending at `now_ns`; over less than the window when the
    /// trace began less than a window ago (`start_ns`), but never less than one second.
    pub(crate) fn rate(&self, now_ns: u64, start_ns: u64) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
