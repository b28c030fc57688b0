//! How long each CPU has run, from `/proc/stat`: the evidence that a CPU has moved on.
//!
//! The lifecycle decides a timer detach by what the same CPU does next (an expiry, a re-arm, a
//! request socket for a SYN). Silence is only evidence once that CPU has run for a while
//! after the detach: a CPU that was paused right after it (a vCPU descheduled by the
//! hypervisor, or by QEMU's round-robin TCG for up to its 100 ms kick period) has not yet
//! written what comes next, however long the wall clock says it has been.
//!
//! Each CPU's time here is what `/proc/stat` counts for it while it runs or idles (user,
//! nice, system, idle, iowait, irq, softirq). Left out: `steal`, which a resumed vCPU is
//! credited with at its first tick, before it has run anything, and `guest`/`guest_nice`,
//! already in `user`. A paused CPU's time stands still.

use std::fs;

/// Units of `/proc/stat` (USER_HZ) a CPU must run after a detach before its silence counts.
/// Two units are at least 10 ms of that CPU's time, against the microseconds between a detach
/// and what follows it.
pub const MIN_RUN: u64 = 2;

/// Per CPU, its run time in `/proc/stat`'s units, read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes(Vec<Option<u64>>);

impl CpuTimes {
    /// Reads `/proc/stat`; `None` where it cannot be read (then no CPU has evidence).
    pub fn read() -> Option<Self> {
        fs::read_to_string("/proc/stat")
            .ok()
            .map(|s| Self::parse(&s))
    }

    /// Parses the `cpuN …` lines of `/proc/stat` (the `cpu` total is skipped; an offline CPU
    /// has no line and no time).
    pub fn parse(text: &str) -> Self {
        let mut v: Vec<Option<u64>> = Vec::new();
        for line in text.lines() {
            let mut w = line.split_ascii_whitespace();
            let Some(cpu) = w
                .next()
                .and_then(|n| n.strip_prefix("cpu"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            // user nice system idle iowait irq softirq: the first seven fields.
            let fields: Vec<u64> = w.take(7).map_while(|f| f.parse().ok()).collect();
            if fields.len() < 7 || cpu > u16::MAX as usize {
                continue;
            }
            if v.len() <= cpu {
                v.resize(cpu + 1, None);
            }
            v[cpu] = Some(fields.iter().fold(0u64, |a, f| a.saturating_add(*f)));
        }
        CpuTimes(v)
    }

    /// The run time of `cpu`, where known.
    pub fn of(&self, cpu: u16) -> Option<u64> {
        self.0.get(cpu as usize).copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_time_leaves_out_steal_and_guest() {
        let stat = "cpu  10 0 10 100 0 0 0 500 0 0\n\
                    cpu0 1 2 3 4 5 6 7 1000 9 9\n\
                    cpu2 10 0 0 0 0 0 1\n\
                    cpu3 1 2\n\
                    cpuX 1 2 3 4 5 6 7\n\
                    intr 12345\n";
        let t = CpuTimes::parse(stat);
        assert_eq!(t.of(0), Some(28));
        assert_eq!(t.of(1), None, "offline: no line");
        assert_eq!(t.of(2), Some(11));
        assert_eq!(t.of(3), None, "a short line is not a time");
        assert_eq!(t.of(9), None);
    }

    #[test]
    fn this_machine_has_a_time_for_cpu0() {
        let t = CpuTimes::read().expect("/proc/stat");
        assert!(t.of(0).is_some_and(|x| x > 0), "{t:?}");
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        let t = CpuTimes::parse(&format!("cpu0 {} {} 0 0 0 0 0\n", u64::MAX, u64::MAX));
        assert_eq!(t.of(0), Some(u64::MAX));
    }
}
