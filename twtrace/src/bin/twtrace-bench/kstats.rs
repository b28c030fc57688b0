//! In-kernel cost per BPF program, from the kernel's own run-time statistics.
//!
//! Statistics are enabled with `bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)`, which counts only
//! while the returned fd is open: nothing global is left switched on (the host sysctl
//! `kernel.bpf_stats_enabled` is never touched), and a crash of the bench switches it off.

use anyhow::{Context, Result};
use aya::programs::loaded_programs;
use aya::sys::{enable_stats, Stats};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

/// Holds run-time statistics on; they go off when this is dropped.
pub struct StatsOn(#[allow(dead_code)] OwnedFd);

pub fn enable() -> Result<StatsOn> {
    Ok(StatsOn(enable_stats(Stats::RunTime).context(
        "bpf(BPF_ENABLE_STATS): kernel ≥ 5.8 and CAP_SYS_ADMIN needed",
    )?))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgStat {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Every loaded program by id (name truncated by the kernel to 15 bytes).
pub fn snapshot() -> BTreeMap<u32, ProgStat> {
    let mut out = BTreeMap::new();
    for p in loaded_programs().flatten() {
        out.insert(
            p.id(),
            ProgStat {
                name: p.name_as_str().unwrap_or("?").to_string(),
                run_cnt: p.run_count(),
                run_time_ns: p.run_time().as_nanos() as u64,
            },
        );
    }
    out
}

/// Per-program deltas between two snapshots, for the given ids.
pub fn delta(
    before: &BTreeMap<u32, ProgStat>,
    after: &BTreeMap<u32, ProgStat>,
    ids: &[u32],
) -> Vec<(u32, ProgStat)> {
    ids.iter()
        .filter_map(|id| {
            let a = after.get(id)?;
            let b = before.get(id).cloned().unwrap_or_default();
            Some((
                *id,
                ProgStat {
                    name: a.name.clone(),
                    run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
                    run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                },
            ))
        })
        .collect()
}

/// Program names twtrace and the peer tools use. Someone else's copy of one of these (a test
/// run by another user, say) slows the hot path of every measurement, so it is reported.
const WATCHED: &[&str] = &[
    "timer_start",
    "timer_cancel",
    "timer_expire_en",
    "timer_init",
    "inet_sock_set_s",
    "handle_set_stat",
];

/// Loaded programs with a watched name that are not in `own`.
pub fn foreign(own: &[u32]) -> Vec<String> {
    snapshot()
        .into_iter()
        .filter(|(id, p)| !own.contains(id) && WATCHED.contains(&p.name.as_str()))
        .map(|(id, p)| format!("{}#{id}", p.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_subtracts_and_skips_vanished() {
        let p = |n: &str, c, t| ProgStat {
            name: n.into(),
            run_cnt: c,
            run_time_ns: t,
        };
        let before = BTreeMap::from([(1, p("a", 10, 1000)), (2, p("b", 5, 50))]);
        let after = BTreeMap::from([(1, p("a", 30, 5000)), (3, p("c", 2, 20))]);
        let d = delta(&before, &after, &[1, 2, 3]);
        assert_eq!(d, vec![(1, p("a", 20, 4000)), (3, p("c", 2, 20))]);
    }
}
