//! What one frame shows, copied out of the aggregator, and the rows the view picks from it.

use super::state::{SortKey, ViewState};
use crate::analysis::aggregate::{Aggregator, PeerKey, CENSUS_SLOTS, N_BINS, SLOT_TW, SLOT_TW_FW2};
use crate::analysis::forecast::{Exhaustion, Forecast, Risk};
use crate::analysis::report::advice_note;
use crate::host::sysctls::Sysctls;
use crate::pipeline::event::ExitReason;
use std::cmp::Ordering;

/// What the header says about the machine and the tracer (fixed for a session).
#[derive(Clone, Debug, Default)]
pub struct HostInfo {
    pub host: String,
    pub kernel: String,
    /// Hook label and whether it is attached.
    pub hooks: Vec<(String, bool)>,
    /// When tracing began (monotonic ns).
    pub start_ns: u64,
}

/// One peer row's numbers.
#[derive(Clone, Debug)]
pub struct RowData {
    pub key: PeerKey,
    pub timewait: [u32; 2],
    pub rate: f64,
    pub forecast: Option<Forecast>,
    pub median_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub exits: [u64; ExitReason::ALL.len()],
    pub reuse_min_age_ms: Option<u64>,
    pub overflow: u64,
    pub aborts: u64,
    pub connect_fail: u64,
    pub paws: u64,
    /// The row's workload, short form (pod, container, cgroup leaf); `None`: none named.
    pub workload: Option<String>,
}

impl RowData {
    pub(super) fn timewait_total(&self) -> u64 {
        u64::from(self.timewait[0]) + u64::from(self.timewait[1])
    }

    pub(super) fn risk(&self) -> Risk {
        self.forecast.map_or(Risk::None, |f| f.risk)
    }

    pub(super) fn note(&self, short: bool) -> &'static str {
        advice_note(
            self.key.side,
            self.forecast.as_ref(),
            self.connect_fail,
            short,
        )
    }
}

/// One network namespace's numbers.
#[derive(Clone, Debug)]
pub struct NetnsData {
    pub netns: u32,
    pub sysctls: Sysctls,
    /// Kernel census kept current from events, if any census was taken.
    pub census: Option<[u64; CENSUS_SLOTS]>,
    /// Seconds since the kernel last counted.
    pub census_age_s: Option<f64>,
    /// In TIME_WAIT now from events alone: `[TIME_WAIT, FIN_WAIT2]`.
    pub timewait_events: [u64; 2],
    pub entry_rate: f64,
    pub recent: [u64; N_BINS],
    /// Gone (absent from the latest census).
    pub gone: bool,
}

impl NetnsData {
    /// TIME_WAIT sockets (both substates): the kernel's count when there is one.
    pub fn timewait(&self) -> u64 {
        match &self.census {
            Some(c) => c[SLOT_TW] + c[SLOT_TW_FW2],
            None => self.timewait_events[0] + self.timewait_events[1],
        }
    }
}

/// Everything one frame shows.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub host: HostInfo,
    pub uptime_s: f64,
    pub events: u64,
    pub events_rate: f64,
    pub lost: u64,
    /// Kernel reads that failed while filling records (the tracer's count; not in the
    /// aggregator, so the front end sets it after [`Model::build`]).
    pub read_errors: u64,
    /// Correlation-map updates that failed in the kernel (the tracer's count, set likewise).
    pub map_errors: u64,
    /// Program runs the kernel skipped (the tracer's count, set likewise).
    pub skipped_runs: u64,
    pub peers_total: usize,
    pub rows: Vec<RowData>,
    pub netns: Vec<NetnsData>,
}

impl Model {
    pub fn build(agg: &Aggregator, host: &HostInfo) -> Model {
        let now = agg.now_ns();
        let rows = agg
            .peers()
            .map(|p| {
                let s = agg.peer_summary(p);
                RowData {
                    key: p.key,
                    timewait: p.timewait,
                    rate: s.entry_rate,
                    forecast: s.forecast,
                    median_ms: p.lifetime.median(),
                    max_ms: p.lifetime.max(),
                    exits: p.exits,
                    reuse_min_age_ms: p.reuse_min_age_ms,
                    overflow: p.overflow,
                    aborts: p.aborts,
                    connect_fail: p.connect_fail,
                    paws: p.paws,
                    workload: p.workload.as_ref().map(|w| w.short()),
                }
            })
            .collect();
        let mut netns: Vec<NetnsData> = agg
            .netns()
            .map(|n| NetnsData {
                netns: n.netns,
                sysctls: n.context.clone(),
                census: n.census.as_ref().map(|c| {
                    let mut out = [0u64; CENSUS_SLOTS];
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = c.current(i);
                    }
                    out
                }),
                census_age_s: n
                    .census
                    .as_ref()
                    .map(|c| now.saturating_sub(c.at_ns) as f64 / 1e9),
                timewait_events: n.timewait,
                entry_rate: agg.netns_entry_rate(n),
                recent: agg.recent_exits(Some(n.netns)),
                gone: n.gone,
            })
            .collect();
        netns.sort_by_key(|n| n.netns);
        Model {
            host: host.clone(),
            uptime_s: now.saturating_sub(host.start_ns) as f64 / 1e9,
            events: agg.totals().events,
            events_rate: agg.events_rate(),
            lost: agg.totals().lost,
            read_errors: 0,
            map_errors: 0,
            skipped_runs: 0,
            peers_total: agg.peer_count(),
            rows,
            netns,
        }
    }

    /// Namespaces still there, in inode order (what `n` cycles through).
    pub fn netns_ids(&self) -> Vec<u32> {
        self.netns
            .iter()
            .filter(|n| !n.gone)
            .map(|n| n.netns)
            .collect()
    }
}

fn exhaustion_rank(f: &Option<Forecast>) -> f64 {
    match f.map(|f| f.exhaustion) {
        Some(Exhaustion::Now) => -1.0,
        Some(Exhaustion::In(t)) => t,
        Some(Exhaustion::Never) => f64::INFINITY,
        _ => f64::MAX,
    }
}

fn compare(a: &RowData, b: &RowData, k: SortKey) -> Ordering {
    let pressure = |r: &RowData| r.forecast.and_then(|f| f.pressure).unwrap_or(-1.0);
    let primary = match k {
        SortKey::Timewait => b.timewait_total().cmp(&a.timewait_total()),
        SortKey::Rate => b.rate.total_cmp(&a.rate),
        SortKey::Pressure => pressure(b).total_cmp(&pressure(a)),
        SortKey::Exhaustion => {
            exhaustion_rank(&a.forecast).total_cmp(&exhaustion_rank(&b.forecast))
        }
        SortKey::Lifetime => b.median_ms.cmp(&a.median_ms),
        SortKey::Exits => b
            .exits
            .iter()
            .sum::<u64>()
            .cmp(&a.exits.iter().sum::<u64>()),
        SortKey::Failures => (b.connect_fail + b.overflow + b.aborts + b.paws)
            .cmp(&(a.connect_fail + a.overflow + a.aborts + a.paws)),
        SortKey::Remote => a.key.remote().cmp(&b.key.remote()),
    };
    primary
        .then(b.timewait_total().cmp(&a.timewait_total()))
        .then(b.rate.total_cmp(&a.rate))
        .then(a.key.cmp(&b.key))
}

/// The rows the view shows, in order.
pub fn visible_rows<'a>(m: &'a Model, v: &ViewState) -> Vec<&'a RowData> {
    let needle = v.filter.to_lowercase();
    let mut rows: Vec<&RowData> = m
        .rows
        .iter()
        .filter(|r| v.netns.is_none_or(|n| r.key.netns == n))
        .filter(|r| {
            needle.is_empty()
                || format!(
                    "{} {} {} {}",
                    r.key.netns,
                    r.key.local(),
                    r.key.remote(),
                    r.note(false)
                )
                .to_lowercase()
                .contains(&needle)
        })
        .collect();
    rows.sort_by(|a, b| compare(a, b, v.sort));
    rows
}
