//! The text of the aggregator for people: the offline report of `twtrace report` (and the end
//! of a live session), the `--summary-every` lines, and the short texts the front ends share
//! (exit reasons, the sysctls that decide the forecast, the tw_reuse advice).

use crate::analysis::aggregate::{
    port_range, Aggregator, NetnsStats, Peer, PeerSummary, ProcStats, Side, WorkloadStats,
    N_REASONS,
};
use crate::analysis::forecast::{self, Forecast};
use crate::analysis::hist::{BINS, N_BINS};
use crate::host::sysctls::Sysctls;
use crate::host::workload::Workload;
use crate::pipeline::event::ExitReason;
use crate::sink::format::{bar, fmt_count, fmt_opt_ms, fmt_pct, fmt_rate, short_duration};
use crate::sink::table::{Col, Table};
use std::cmp::Reverse;
use std::fmt::Write as _;

/// "expired 12 reused 3" (or "exp 12 reu 3" when `short`), non-zero reasons only.
pub fn reasons_text(exits: &[u64; N_REASONS], short: bool) -> String {
    let mut s = String::new();
    for r in ExitReason::ALL {
        let n = exits[r.index()];
        if n > 0 {
            if !s.is_empty() {
                s.push(' ');
            }
            let name = r.as_str();
            let name = if short {
                &name[..3.min(name.len())]
            } else {
                name
            };
            let _ = write!(s, "{name} {}", fmt_count(n));
        }
    }
    s
}

/// `tw_reuse=2 delay=1000ms max_tw=262144 ts=1 ports 32768-60999 (28232)`: the sysctls that
/// decide the port forecast, `?` where not known.
pub fn describe_sysctls(c: &Sysctls) -> String {
    fn o<T: std::fmt::Display>(v: &Option<T>) -> String {
        v.as_ref().map_or("?".into(), |v| v.to_string())
    }
    let mut s = format!(
        "tw_reuse={} delay={}ms max_tw={} ts={} ports ",
        o(&c.tw_reuse),
        o(&c.tw_reuse_delay_ms),
        o(&c.max_tw_buckets),
        o(&c.timestamps)
    );
    match port_range(c) {
        Some(r) => {
            let _ = write!(s, "{r} ({})", r.usable());
        }
        None => s.push('?'),
    }
    s
}

/// The tw_reuse advice for a row, where it matters: rows at risk or failing to connect, and
/// rows where reuse is at work; accepting-side rows say so. `short`: at most 13 characters.
pub fn advice_note(
    side: Side,
    f: Option<&Forecast>,
    connect_fail: u64,
    short: bool,
) -> &'static str {
    let pick = |a: forecast::ReuseAdvice| if short { a.short_note() } else { a.note() };
    match (side, f) {
        (Side::Server, _) if short => "accepting",
        (Side::Server, _) => "accepting side",
        (_, Some(f)) if f.risk > forecast::Risk::None || connect_fail > 0 => pick(f.reuse),
        (_, Some(f)) if f.reuse == forecast::ReuseAdvice::Active => pick(f.reuse),
        _ => "",
    }
}

/// Horizontal bars, one line per bin from the first to the last non-empty one:
/// `  60-61s |██████████▌        1234`.
pub fn text_histogram(bins: &[u64; N_BINS], width: usize, indent: &str) -> String {
    let mut out = String::new();
    let (Some(first), Some(last)) = (
        bins.iter().position(|&n| n > 0),
        bins.iter().rposition(|&n| n > 0),
    ) else {
        let _ = writeln!(out, "{indent}(no exits with a known lifetime)");
        return out;
    };
    let max = bins.iter().copied().max().unwrap_or(1).max(1);
    let bar_w = width.saturating_sub(indent.len() + 9 + 2 + 8).max(10);
    for (i, &n) in bins.iter().enumerate().take(last + 1).skip(first) {
        let bar = bar(n, max, bar_w);
        let pad = bar_w.saturating_sub(bar.chars().count());
        let _ = writeln!(
            out,
            "{indent}{:>8} |{bar}{} {:>7}",
            BINS[i].1,
            " ".repeat(pad),
            n
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The offline report

/// The text report of `twtrace report` (and the end of a live session): totals, per netns,
/// per peer, per process, and a lifetime histogram.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// Target line width (tables drop their least important columns to fit).
    pub width: usize,
    /// Peer rows shown, most entries first (the rest are summed in one line).
    pub max_peers: usize,
    pub max_procs: usize,
}

/// One table of the report: its title line, columns, rows of cells (whole, not yet cut to
/// a column's width), and the line about the rows left out.
#[derive(Clone, Debug)]
pub struct ReportTable {
    pub title: String,
    pub cols: &'static [Col],
    pub rows: Vec<Vec<String>>,
    pub more: Option<String>,
}

/// The report's content before layout: what the text report prints and the HTML page shows
/// as tables, so that both have the same numbers.
#[derive(Clone, Debug)]
pub struct ReportModel {
    /// Event and exit counts, then the warnings that qualify every number below.
    pub totals: Vec<String>,
    /// Per network namespace, per peer, per process, and per workload where events named any.
    pub tables: Vec<ReportTable>,
    /// "Lifetime of N exits: min … median … p99 … max …".
    pub lifetime: String,
    /// All exits per display bin.
    pub bins: [u64; N_BINS],
}

impl Report {
    /// The report with the default row limits (50 peers, 20 processes).
    pub fn render(agg: &Aggregator, width: usize) -> String {
        Report::default_limits(width).render_with(agg)
    }

    /// The default row limits (50 peers, 20 processes) at `width`.
    pub fn default_limits(width: usize) -> Report {
        Report {
            width,
            max_peers: 50,
            max_procs: 20,
        }
    }

    /// The report's content (row limits apply; the width does not).
    pub fn model(&self, agg: &Aggregator) -> ReportModel {
        let t = agg.totals();
        let h = &t.lifetime;
        ReportModel {
            totals: totals_lines(agg),
            tables: [
                Some(netns_table(agg)),
                Some(peer_table(agg, self.max_peers)),
                Some(process_table(agg, self.max_procs)),
                workload_table(agg, self.max_procs),
            ]
            .into_iter()
            .flatten()
            .collect(),
            lifetime: format!(
                "Lifetime of {} exits: min {} median {} p99 {} max {}",
                h.count(),
                fmt_opt_ms(h.min()),
                fmt_opt_ms(h.median()),
                fmt_opt_ms(h.quantile(0.99)),
                fmt_opt_ms(h.max())
            ),
            bins: t.bins,
        }
    }

    pub fn render_with(&self, agg: &Aggregator) -> String {
        let w = self.width.max(40);
        let m = self.model(agg);
        let mut out = String::new();
        for l in &m.totals {
            let _ = writeln!(out, "{l}");
        }
        for t in &m.tables {
            let _ = writeln!(out, "\n{}", t.title);
            let table = Table::new(t.cols, w, "  ");
            table.header(&mut out);
            for r in &t.rows {
                table.row(&mut out, r);
            }
            if let Some(more) = &t.more {
                let _ = writeln!(out, "  {more}");
            }
        }
        let _ = writeln!(out, "\n{}", m.lifetime);
        out.push_str(&text_histogram(&m.bins, w, "  "));
        out
    }
}

/// Event and exit counts, then the warnings that qualify every number below.
fn totals_lines(agg: &Aggregator) -> Vec<String> {
    let t = agg.totals();
    let entered: u64 = agg.netns().map(|n| n.entries).sum();
    let found: u64 = agg.netns().map(|n| n.snapshot).sum();
    let mut out = vec![
        format!("{} events over {}", t.events, short_duration(agg.span_s())),
        format!("entered TIME_WAIT: {entered} (+{found} there when tracing began)"),
        format!(
            "exits: {} {}",
            t.exits.iter().sum::<u64>(),
            reasons_text(&t.exits, false)
        ),
    ];
    if t.lost > 0 {
        out.push(format!(
            "WARNING: {} events lost in the kernel (ring buffer full): counts are low",
            t.lost
        ));
    }
    if t.peers_evicted > 0 || t.procs_evicted > 0 {
        out.push(format!(
            "note: {} peer and {} process rows evicted to bound memory",
            t.peers_evicted, t.procs_evicted
        ));
        out.push("      (their events are in the totals)".into());
    }
    if t.netns_evicted > 0 {
        out.push(format!(
            "note: {} idle network namespace rows dropped to bound memory (their events are in the totals)",
            t.netns_evicted
        ));
    }
    if t.workloads_evicted > 0 {
        out.push(format!(
            "note: {} workload rows evicted to bound memory (their events are in the totals)",
            t.workloads_evicted
        ));
    }
    if t.stale_cleared > 0 {
        out.push(format!(
            "note: {} sockets never seen leaving (lost events?) cleared",
            t.stale_cleared
        ));
    }
    out
}

const NETNS_COLS: [Col; 12] = [
    Col::new("NETNS", 10, true, 0),
    Col::new("ENTERED", 8, true, 0),
    Col::new("EXITS", 7, true, 1),
    Col::new("MIN", 7, true, 4),
    Col::new("MEDIAN", 7, true, 2),
    Col::new("P99", 7, true, 3),
    Col::new("MAX", 7, true, 2),
    Col::new("OVERFLOW", 8, true, 5),
    Col::new("ABORTS", 7, true, 6),
    Col::new("CONNFAIL", 8, true, 5),
    Col::new("PAWS", 6, true, 7),
    Col::new("EXITS BY REASON", 40, false, 8),
];

/// One row per network namespace, most entries first.
fn netns_table(agg: &Aggregator) -> ReportTable {
    let mut ns: Vec<&NetnsStats> = agg.netns().collect();
    ns.sort_by_key(|n| (Reverse(n.entries + n.snapshot), n.netns));
    let rows = ns
        .into_iter()
        .map(|n| {
            let h = &n.lifetime;
            vec![
                n.netns.to_string(),
                fmt_count(n.entries + n.snapshot),
                fmt_count(n.exits.iter().sum()),
                fmt_opt_ms(h.min()),
                fmt_opt_ms(h.median()),
                fmt_opt_ms(h.quantile(0.99)),
                fmt_opt_ms(h.max()),
                fmt_count(n.overflow),
                fmt_count(n.aborts),
                fmt_count(n.connect_fail),
                fmt_count(n.paws),
                reasons_text(&n.exits, false),
            ]
        })
        .collect();
    ReportTable {
        title: "Per network namespace".into(),
        cols: &NETNS_COLS,
        rows,
        more: None,
    }
}

const PEER_COLS: [Col; 15] = [
    Col::new("NETNS", 10, true, 6),
    Col::new("LOCAL", 21, false, 1),
    Col::new("REMOTE", 23, false, 0),
    Col::new("COUNT", 7, true, 0),
    Col::new("MIN", 7, true, 4),
    Col::new("MEDIAN", 7, true, 2),
    Col::new("P99", 7, true, 3),
    Col::new("MAX", 7, true, 2),
    Col::new("REUSED", 6, true, 5),
    Col::new("MINAGE", 7, true, 5),
    Col::new("OVFL", 5, true, 7),
    Col::new("ABORT", 5, true, 7),
    Col::new("CFAIL", 5, true, 7),
    Col::new("PAWS", 5, true, 8),
    Col::new("EXITS BY REASON", 34, false, 9),
];

/// [`PEER_COLS`] with WORKLOAD after NETNS, for events that named workloads.
const PEER_COLS_WL: [Col; 16] = {
    let mut c = [Col::new("WORKLOAD", 16, false, 5); 16];
    let mut i = 0;
    while i < PEER_COLS.len() {
        c[if i == 0 { 0 } else { i + 1 }] = PEER_COLS[i];
        i += 1;
    }
    c
};

/// The `max_peers` busiest peer rows, the rest summed in one line.
fn peer_table(agg: &Aggregator, max_peers: usize) -> ReportTable {
    let mut peers: Vec<&Peer> = agg.peers().collect();
    peers.sort_by_key(|p| {
        (
            Reverse(p.entries + p.snapshot),
            Reverse(p.connect_fail + p.overflow + p.aborts + p.paws),
            p.key,
        )
    });
    // The WORKLOAD column only where events named workloads (older traces have none).
    let named = agg.peers().any(|p| p.workload.is_some());
    let rows = peers
        .iter()
        .take(max_peers)
        .map(|p| {
            let h = &p.lifetime;
            let mut cells = vec![
                p.key.netns.to_string(),
                p.key.local(),
                p.key.remote(),
                fmt_count(p.entries + p.snapshot),
                fmt_opt_ms(h.min()),
                fmt_opt_ms(h.median()),
                fmt_opt_ms(h.quantile(0.99)),
                fmt_opt_ms(h.max()),
                fmt_count(p.exits_by(ExitReason::Reused)),
                fmt_opt_ms(p.reuse_min_age_ms),
                fmt_count(p.overflow),
                fmt_count(p.aborts),
                fmt_count(p.connect_fail),
                fmt_count(p.paws),
                p.exits_text(),
            ];
            if named {
                cells.insert(1, workload_cell(&p.workload));
            }
            cells
        })
        .collect();
    let more = (peers.len() > max_peers).then(|| {
        let rest = &peers[max_peers..];
        format!(
            "… {} more peers with {} entries",
            rest.len(),
            rest.iter().map(|p| p.entries + p.snapshot).sum::<u64>()
        )
    });
    ReportTable {
        title: format!(
            "Per peer ({} rows; REMOTE addr:* = clients of a LOCAL service)",
            agg.peer_count()
        ),
        cols: if named { &PEER_COLS_WL } else { &PEER_COLS },
        rows,
        more,
    }
}

const PROCESS_COLS: [Col; 7] = [
    Col::new("PID", 8, true, 0),
    Col::new("COMM", 16, false, 0),
    Col::new("CLOSED", 8, true, 0),
    Col::new("REUSED", 8, true, 1),
    Col::new("CONNFAIL", 8, true, 1),
    Col::new("ABORTS", 8, true, 2),
    Col::new("WORKLOAD", 16, false, 1),
];

/// The `max_procs` busiest processes.
fn process_table(agg: &Aggregator, max_procs: usize) -> ReportTable {
    let mut procs: Vec<&ProcStats> = agg.processes().collect();
    procs.sort_by_key(|p| {
        (
            Reverse(p.closes + p.reuses + p.connect_fail + p.aborts),
            p.pid,
        )
    });
    // The WORKLOAD column (the last) only where events named workloads.
    let named = agg.processes().any(|p| p.workload.is_some());
    let rows = procs
        .iter()
        .take(max_procs)
        .map(|p| {
            let mut cells = vec![
                p.pid.to_string(),
                p.comm.clone(),
                fmt_count(p.closes),
                fmt_count(p.reuses),
                fmt_count(p.connect_fail),
                fmt_count(p.aborts),
            ];
            if named {
                cells.push(workload_cell(&p.workload));
            }
            cells
        })
        .collect();
    let n = PROCESS_COLS.len() - usize::from(!named);
    ReportTable {
        title: "Per process".into(),
        cols: &PROCESS_COLS[..n],
        rows,
        more: (procs.len() > max_procs)
            .then(|| format!("… {} more processes", procs.len() - max_procs)),
    }
}

/// A row's workload in its short form (`-`: none named).
fn workload_cell(w: &Option<std::sync::Arc<Workload>>) -> String {
    w.as_ref().map_or_else(|| "-".to_string(), |w| w.short())
}

const WORKLOAD_COLS: [Col; 11] = [
    Col::new("WORKLOAD", 16, false, 0),
    Col::new("IN TW", 7, true, 0),
    Col::new("ENTRIES", 8, true, 0),
    Col::new("EXITS", 8, true, 1),
    Col::new("CFAIL", 6, true, 1),
    Col::new("BFAIL", 6, true, 1),
    Col::new("OVFL", 6, true, 2),
    Col::new("POD", 28, false, 2),
    Col::new("QOS", 10, false, 4),
    Col::new("CONTAINER", 12, false, 3),
    Col::new("CGROUP", 60, false, 5),
];

/// The busiest workloads (cgroups), when the events named any: what their sockets did, with
/// the pod and container each is.
fn workload_table(agg: &Aggregator, max_rows: usize) -> Option<ReportTable> {
    let mut rows: Vec<&WorkloadStats> = agg.workloads().collect();
    if rows.is_empty() {
        return None;
    }
    rows.sort_by_key(|r| {
        (
            Reverse(r.entries + r.connect_fail + r.bind_fail + r.overflow),
            r.workload.cgroup_id,
        )
    });
    let cells = rows
        .iter()
        .take(max_rows)
        .map(|r| {
            let wl = &r.workload;
            let opt = |v: Option<&str>| v.unwrap_or("-").to_string();
            vec![
                wl.short(),
                fmt_count(r.timewait[0] + r.timewait[1]),
                fmt_count(r.entries),
                fmt_count(r.exits.iter().sum()),
                fmt_count(r.connect_fail),
                fmt_count(r.bind_fail),
                fmt_count(r.overflow),
                opt(wl.pod.as_deref()),
                opt(wl.qos),
                opt(wl.container_id.as_deref().map(|c| c.get(..12).unwrap_or(c))),
                wl.path
                    .clone()
                    .unwrap_or_else(|| format!("unknown (cgroup id {})", wl.cgroup_id)),
            ]
        })
        .collect();
    Some(ReportTable {
        title: "Per workload (cgroup)".into(),
        cols: &WORKLOAD_COLS,
        rows: cells,
        more: (rows.len() > max_rows)
            .then(|| format!("… {} more workloads", rows.len() - max_rows)),
    })
}

/// The compact periodic summary of `--summary-every`: a totals line and the top `n` client
/// peers by TIME_WAIT now, each line starting with `#` so it stands out among event lines.
pub fn summary_text(agg: &Aggregator, n: usize, width: usize) -> String {
    let mut out = String::new();
    let tw: u64 = agg.netns().map(|n| n.timewait[0] + n.timewait[1]).sum();
    let fw2: u64 = agg.netns().map(|n| n.timewait[1]).sum();
    let _ = writeln!(
        out,
        "# summary: {} events ({}/s), {} lost; in TIME_WAIT now {} (FIN_WAIT2 substate {}); {} peers; {} namespaces{}",
        agg.totals().events,
        fmt_rate(agg.events_rate()),
        agg.totals().lost,
        tw,
        fw2,
        agg.peer_count(),
        agg.netns().count(),
        // What bounds the table on a host whose namespaces come and go (the soak reads it).
        match agg.totals().netns_evicted {
            0 => String::new(),
            d => format!(" ({d} idle ones dropped)"),
        }
    );
    let cols = [
        Col::new("TW", 6, true, 0),
        Col::new("NEW/s", 6, true, 0),
        Col::new("PORTS", 6, true, 1),
        Col::new("EXHAUST", 7, true, 1),
        Col::new("MEDIAN", 7, true, 3),
        Col::new("REMOTE", 23, false, 0),
        Col::new("LOCAL", 21, false, 4),
        Col::new("NETNS", 10, true, 5),
        Col::new("NOTE", 28, false, 2),
    ];
    let table = Table::new(&cols, width.max(40), "# ");
    let mut rows: Vec<PeerSummary> = agg
        .peers()
        .filter(|p| p.timewait_total() > 0 || p.connect_fail > 0)
        .map(|p| agg.peer_summary(p))
        .collect();
    if rows.is_empty() {
        return out;
    }
    rows.sort_by(|a, b| {
        b.peer
            .timewait_total()
            .cmp(&a.peer.timewait_total())
            .then(b.entry_rate.total_cmp(&a.entry_rate))
            .then(a.peer.key.cmp(&b.peer.key))
    });
    table.header(&mut out);
    for r in rows.iter().take(n) {
        let p = r.peer;
        let (pct, eta) = match &r.forecast {
            Some(f) => (fmt_pct(f.pressure), f.exhaustion.to_string()),
            None => ("-".into(), "-".into()),
        };
        let note = advice_note(p.key.side, r.forecast.as_ref(), p.connect_fail, false).to_string();
        let cells = [
            fmt_count(p.timewait_total()),
            fmt_rate(r.entry_rate),
            pct,
            eta,
            fmt_opt_ms(p.lifetime.median()),
            p.key.remote(),
            p.key.local(),
            p.key.netns.to_string(),
            note,
        ];
        table.row(&mut out, &cells);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::aggregate::tests::{client, enter, ev, exit, ports, NSX};
    use crate::pipeline::event::{Body, Substate};

    #[test]
    fn report_shows_every_section_with_numbers() {
        let mut a = Aggregator::default();
        for i in 0..10u64 {
            a.observe(&enter(1.0, client(i, 40000 + i as u16), Substate::TimeWait));
        }
        for i in 0..7u64 {
            a.observe(&exit(
                62.0,
                client(i, 40000 + i as u16),
                Substate::TimeWait,
                ExitReason::Expired,
                61_000 + i,
            ));
        }
        a.observe(&exit(
            2.5,
            client(7, 40007),
            Substate::TimeWait,
            ExitReason::Reused,
            1_500,
        ));
        a.observe(&ev(70.0, Body::Lost { count: 3 }));
        for width in [60usize, 80, 200] {
            let r = Report::render(&a, width);
            assert!(r.contains("Per network namespace"), "{r}");
            assert!(r.contains("Per peer"), "{r}");
            assert!(r.contains("Per process"), "{r}");
            assert!(r.contains("WARNING: 3 events lost"), "{r}");
            assert!(r.contains("10.0.0.2:443"), "{r}");
            assert!(r.contains("60-61s"), "{r}");
            assert!(r.contains("1-5s"), "{r}");
            for line in r.lines() {
                assert!(
                    line.chars().count() <= width.max(80),
                    "too wide at {width}: {line:?}"
                );
            }
        }
        let r = Report::render(&a, 200);
        let peer_line = r
            .lines()
            .find(|l| l.contains("10.0.0.2:443"))
            .expect("peer row");
        let cols: Vec<&str> = peer_line.split_whitespace().collect();
        // NETNS LOCAL REMOTE COUNT MIN MEDIAN P99 MAX REUSED MINAGE …
        assert_eq!(cols[3], "10", "{peer_line}");
        assert_eq!(cols[4], "1.5s", "{peer_line}");
        assert_eq!(cols[8], "1", "{peer_line}");
        assert_eq!(cols[9], "1.5s", "{peer_line}");
        assert!(peer_line.ends_with("expired 7 reused 1"), "{peer_line}");
        let curl = r.lines().find(|l| l.contains("curl")).unwrap();
        assert_eq!(curl.split_whitespace().nth(2), Some("10"), "{curl}");
    }

    #[test]
    fn summary_lists_pressure() {
        let mut a = Aggregator::default();
        a.set_context(NSX, ports(40000, 40003, Some(0)));
        for i in 0..4u64 {
            a.observe(&enter(1.0, client(i, 40000 + i as u16), Substate::TimeWait));
        }
        let s = summary_text(&a, 5, 100);
        assert!(s.lines().all(|l| l.starts_with('#')), "{s}");
        let row = s.lines().find(|l| l.contains("10.0.0.2:443")).unwrap();
        assert!(row.contains("100%") && row.contains("NOW"), "{row}");
        assert!(row.ends_with("tw_reuse=1 would help"), "{row}");
    }

    /// FNV-1a of the text and its length: pins every byte without a fixture file.
    pub(crate) fn fingerprint(s: &str) -> (u64, usize) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        (h, s.len())
    }

    /// The aggregator after a long synthetic mix (every kind, several namespaces).
    pub(crate) fn mixed() -> Aggregator {
        let mut agg = Aggregator::default();
        for e in crate::sink::tracefile::synthetic::events(60_000, 11) {
            agg.observe(&e);
        }
        agg
    }

    #[test]
    fn report_and_summary_text_are_unchanged() {
        // Computed before the report left aggregate.rs: the split changed no byte. Updated
        // once since, for the summary line's "; N namespaces" (14 bytes × 5 widths).
        let agg = mixed();
        let mut all = String::new();
        for w in [30usize, 60, 80, 120, 250] {
            all.push_str(&Report::render(&agg, w));
            all.push_str(&summary_text(&agg, 12, w));
        }
        assert!(
            all.contains("Per peer") && all.contains("# summary:"),
            "{all}"
        );
        assert_eq!(fingerprint(&all), (16902811266859219994, 42501));
    }
}
