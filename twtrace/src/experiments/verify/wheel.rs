//! The timer wheel's rounding: the window a timer-expired lifetime can fall in.

use super::SOFTIRQ_SLACK_MS;
use crate::kernel::features::{find_hz, Hz};

/// Granularity (in jiffies) of the timer-wheel level a timer `delta` jiffies ahead lands in
/// (kernel/time/timer.c: 64 buckets per level, each level 8× coarser; `calc_index` rounds the
/// expiry *up* to the level's granularity, so a timer fires 1 to `granularity` jiffies late).
pub fn wheel_granularity_jiffies(delta: u64, hz: u64) -> u64 {
    const LVL_CLK_SHIFT: u32 = 3;
    const LVL_SIZE: u64 = 64;
    let depth: u32 = if hz > 100 { 9 } else { 8 };
    for lvl in 0..depth - 1 {
        // LVL_START(lvl + 1): the first delta that no longer fits level `lvl`.
        if delta < (LVL_SIZE - 1) << (lvl * LVL_CLK_SHIFT) {
            return 1 << (lvl * LVL_CLK_SHIFT);
        }
    }
    1 << ((depth - 1) * LVL_CLK_SHIFT)
}

/// The timer facts a lifetime check needs: HZ, and the wheel's rounding for a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wheel {
    pub hz: u64,
    /// HZ came from the kernel config or was measured (false: assumed).
    pub hz_known: bool,
}

impl From<Hz> for Wheel {
    fn from(hz: Hz) -> Wheel {
        Wheel {
            hz: hz.value,
            hz_known: hz.known(),
        }
    }
}

impl Wheel {
    /// The wheel of the running kernel, HZ found as [`find_hz`] finds it (without a loaded
    /// iterator). Where a tracer runs, take `Wheel::from(features.hz)` instead.
    pub fn detect() -> Wheel {
        Wheel::from(find_hz(None))
    }

    pub fn jiffy_ms(&self) -> u64 {
        1000_u64.div_ceil(self.hz)
    }

    pub fn level(&self, timeout_ms: u64) -> u32 {
        let g = self.granularity_jiffies(timeout_ms);
        g.trailing_zeros() / 3
    }

    pub fn granularity_jiffies(&self, timeout_ms: u64) -> u64 {
        wheel_granularity_jiffies(timeout_ms * self.hz / 1000, self.hz)
    }

    pub fn granularity_ms(&self, timeout_ms: u64) -> u64 {
        (self.granularity_jiffies(timeout_ms) * 1000).div_ceil(self.hz)
    }

    /// The lifetimes a timer armed for `timeout_ms` can show: not before the timeout (minus the
    /// part of a jiffy already gone when it was armed), at most one wheel granule late, plus
    /// softirq latency.
    pub fn window(&self, timeout_ms: u64) -> (u64, u64) {
        (
            timeout_ms.saturating_sub(self.jiffy_ms()),
            timeout_ms + self.granularity_ms(timeout_ms) + self.jiffy_ms() + SOFTIRQ_SLACK_MS,
        )
    }

    pub fn within(&self, timeout_ms: u64, lifetime_ms: u64) -> bool {
        let (lo, hi) = self.window(timeout_ms);
        (lo..=hi).contains(&lifetime_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_levels() {
        // 60 s at HZ=250 is 15000 jiffies: level 3, 512-jiffy buckets (2.048 s).
        assert_eq!(wheel_granularity_jiffies(15000, 250), 512);
        // At HZ=1000 it is 60000 jiffies: level 4, 4096 jiffies.
        assert_eq!(wheel_granularity_jiffies(60000, 1000), 4096);
        assert_eq!(wheel_granularity_jiffies(62, 250), 1);
        assert_eq!(wheel_granularity_jiffies(63, 250), 8);
        assert_eq!(wheel_granularity_jiffies(750, 250), 64);
        let w = Wheel {
            hz: 250,
            hz_known: true,
        };
        assert_eq!(w.granularity_ms(60_000), 2048);
        assert_eq!(w.level(60_000), 3);
        assert!(w.within(60_000, 60_000));
        assert!(w.within(60_000, 62_048));
        assert!(!w.within(60_000, 59_000));
        assert!(!w.within(60_000, 62_500));
        assert!(w.within(60_000, 62_048 + 4 + SOFTIRQ_SLACK_MS));
    }
}
