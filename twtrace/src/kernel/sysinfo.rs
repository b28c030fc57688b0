//! Facts about the running kernel that turn raw kernel values into human units.

use anyhow::{Context, Result};
use std::io::Read;

/// CONFIG_HZ from the kernel's own config (`/proc/config.gz`, else `/boot/config-$(uname -r)`).
pub fn config_hz() -> Option<u64> {
    let text = read_kernel_config()?;
    parse_hz(&text)
}

fn read_kernel_config() -> Option<String> {
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let mut s = String::new();
        if flate2::read::GzDecoder::new(f)
            .read_to_string(&mut s)
            .is_ok()
        {
            return Some(s);
        }
    }
    let release = kernel_release().ok()?;
    std::fs::read_to_string(format!("/boot/config-{release}")).ok()
}

pub fn parse_hz(config: &str) -> Option<u64> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

/// Picks the standard HZ value nearest to a measured jiffies rate.
pub fn nearest_hz(jiffies_per_s: f64) -> u64 {
    [100u64, 250, 300, 1000]
        .into_iter()
        .min_by(|a, b| {
            let da = (*a as f64 - jiffies_per_s).abs();
            let db = (*b as f64 - jiffies_per_s).abs();
            da.total_cmp(&db)
        })
        .unwrap_or(250)
}

pub fn kernel_release() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?
        .trim()
        .to_string())
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Maps the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// realtime − monotonic, in ns.
    pub offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        // Take the tightest of a few samples so the offset is not skewed by a preemption.
        let mut best: Option<(u64, i128)> = None;
        for _ in 0..5 {
            let m1 = monotonic_ns();
            let r = clock_ns(libc::CLOCK_REALTIME);
            let m2 = monotonic_ns();
            let off = r as i128 - (m1 / 2 + m2 / 2) as i128;
            if best.is_none_or(|(w, _)| m2 - m1 < w) {
                best = Some((m2 - m1, off));
            }
        }
        Clock {
            offset_ns: best.map(|b| b.1).unwrap_or(0),
        }
    }

    /// Wall-clock nanoseconds since the Unix epoch for a monotonic timestamp.
    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.offset_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hz_from_config_text() {
        assert_eq!(parse_hz("# c\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"), Some(250));
        assert_eq!(parse_hz("CONFIG_HZ_1000=y\n"), None);
    }

    #[test]
    fn nearest_standard_hz() {
        assert_eq!(nearest_hz(247.0), 250);
        assert_eq!(nearest_hz(290.0), 300);
        assert_eq!(nearest_hz(990.0), 1000);
        assert_eq!(nearest_hz(0.0), 100);
    }

    #[test]
    fn clock_maps_now_to_now() {
        let c = Clock::now();
        let wall = c.wall_ns(monotonic_ns());
        let real = clock_ns(libc::CLOCK_REALTIME) as i128;
        assert!((real - wall).abs() < 50_000_000, "{real} vs {wall}");
    }
}
