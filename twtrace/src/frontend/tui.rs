//! The full-screen live view: `top` for TIME_WAIT.
//!
//! Split in three so that the screen can be tested without a terminal:
//! - [`Model::build`] copies what a frame needs out of the [`Aggregator`] (numbers only; it is
//!   kept as is while the view is paused);
//! - [`draw`] lays a model out for any size, choosing columns by priority so that it reads at
//!   80×24 and uses the room at 200×50;
//! - [`Screen`] owns the real terminal (raw mode, alternate screen, keys) and restores it when
//!   dropped, also on a panic.
//!
//! Keys: `q` quit, `s` next sort column, `p` pause, `/` filter (Enter applies, Esc cancels),
//! `n` next network namespace (all → each → all).

use crate::analysis::aggregate::{
    self, describe_sysctls, fit, fit_columns, fmt_count, fmt_opt_ms, fmt_pct, fmt_rate, Aggregator,
    Col, PeerKey, Side, BINS, CENSUS_SLOTS, N_BINS, SLOT_TW, SLOT_TW_FW2,
};
use crate::analysis::forecast::{short_duration, Exhaustion, Forecast, Risk};
use crate::host::sysctls::Sysctls;
use crate::pipeline::event::ExitReason;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{
    self as ct, Event as CtEvent, KeyCode, KeyEventKind, KeyModifiers,
};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame, Terminal};
use std::cmp::Ordering;
use std::time::Duration;

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

/// Columns the peer table can be sorted by (`s` cycles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Timewait,
    Rate,
    Pressure,
    Exhaustion,
    Lifetime,
    Exits,
    Failures,
    Remote,
}

impl SortKey {
    pub const ALL: [SortKey; 8] = [
        SortKey::Timewait,
        SortKey::Rate,
        SortKey::Pressure,
        SortKey::Exhaustion,
        SortKey::Lifetime,
        SortKey::Exits,
        SortKey::Failures,
        SortKey::Remote,
    ];

    pub fn next(self) -> SortKey {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    /// The column title it sorts by.
    pub fn column(self) -> &'static str {
        match self {
            SortKey::Timewait => "TW",
            SortKey::Rate => "NEW/s",
            SortKey::Pressure => "PORTS",
            SortKey::Exhaustion => "EXHAUST",
            SortKey::Lifetime => "MEDIAN",
            SortKey::Exits => "EXITS",
            SortKey::Failures => "CFAIL",
            SortKey::Remote => "REMOTE",
        }
    }
}

/// What the user chose: sort, pause, filter, netns.
#[derive(Clone, Debug)]
pub struct ViewState {
    pub sort: SortKey,
    pub paused: bool,
    /// Rows whose netns, addresses or note contain this (case-insensitive).
    pub filter: String,
    /// The filter being typed after `/`.
    pub editing: Option<String>,
    /// `None`: every netns.
    pub netns: Option<u32>,
    pub quit: bool,
}

impl Default for ViewState {
    fn default() -> Self {
        ViewState {
            sort: SortKey::Timewait,
            paused: false,
            filter: String::new(),
            editing: None,
            netns: None,
            quit: false,
        }
    }
}

/// A key, reduced to what the view cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    CtrlC,
}

impl ViewState {
    /// Applies a key; `netns` lists the namespaces `n` cycles through. Returns whether the
    /// screen should be redrawn.
    pub fn on_key(&mut self, key: Key, netns: &[u32]) -> bool {
        if key == Key::CtrlC {
            self.quit = true;
            return true;
        }
        if let Some(text) = &mut self.editing {
            match key {
                Key::Char(c) => text.push(c),
                Key::Backspace => {
                    text.pop();
                }
                Key::Enter => {
                    self.filter = self.editing.take().unwrap_or_default();
                }
                Key::Esc => self.editing = None,
                Key::CtrlC => {}
            }
            return true;
        }
        match key {
            Key::Char('q') | Key::Esc => self.quit = true,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('p') => self.paused = !self.paused,
            Key::Char('/') => self.editing = Some(self.filter.clone()),
            Key::Char('n') => {
                self.netns = match self.netns.and_then(|c| netns.iter().position(|n| *n == c)) {
                    None if self.netns.is_none() => netns.first().copied(),
                    None => None,
                    Some(i) => netns.get(i + 1).copied(),
                }
            }
            _ => return false,
        }
        true
    }
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
}

impl RowData {
    fn timewait_total(&self) -> u64 {
        u64::from(self.timewait[0]) + u64::from(self.timewait[1])
    }

    fn risk(&self) -> Risk {
        self.forecast.map_or(Risk::None, |f| f.risk)
    }

    fn note(&self, short: bool) -> &'static str {
        aggregate::advice_note(
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

// ---------------------------------------------------------------------------------------------
// Layout

const RED: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const YELLOW: Style = Style::new().fg(Color::Yellow);
const DIM: Style = Style::new().fg(Color::DarkGray);
const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
const TITLE: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);

fn risk_style(r: Risk) -> Style {
    match r {
        Risk::High => RED,
        Risk::Watch => YELLOW,
        Risk::None => Style::new(),
    }
}

/// The risk a rendered line was highlighted with (for tests).
pub fn risk_at(buf: &Buffer, x: u16, y: u16) -> Risk {
    let Some(c) = buf.cell((x, y)) else {
        return Risk::None;
    };
    match c.fg {
        Color::Red => Risk::High,
        Color::Yellow => Risk::Watch,
        _ => Risk::None,
    }
}

/// Peer table columns: (title, width, right-aligned, priority). Lower priority stays longer.
/// At 80 columns: REMOTE TW NEW/s PORTS EXHAUST MEDIAN CFAIL NOTE, then MAX (one netns) or
/// NS (several); at 180 and more, all, with the long notes. No FIN_WAIT2 split per row: the
/// kernel promotes without an event (see [`aggregate::Peer::timewait`]); the census line
/// has the kernel's split.
const PEER_COLS: [Col; 17] = [
    pcol("NETNS", 10, true, 14),
    pcol("NS", 5, true, 8),
    pcol("LOCAL", 15, false, 9),
    pcol("REMOTE", 21, false, 0),
    pcol("TW", 5, true, 1),
    pcol("NEW/s", 5, true, 2),
    pcol("PORTS", 5, true, 3),
    pcol("EXHAUST", 7, true, 4),
    pcol("MEDIAN", 6, true, 5),
    pcol("MAX", 6, true, 10),
    pcol("EXITS", 24, false, 11),
    pcol("REUSE", 11, false, 12),
    pcol("CFAIL", 5, true, 6),
    pcol("OVFL", 5, true, 13),
    pcol("ABORT", 5, true, 13),
    pcol("PAWS", 5, true, 15),
    pcol("NOTE", SHORT_NOTE, false, 7),
];
const COL_NETNS: usize = 0;
const COL_NS: usize = 1;
const COL_LOCAL: usize = 2;
const COL_NOTE: usize = 16;
const SHORT_NOTE: usize = 13;
const LONG_NOTE: usize = 26;

const fn pcol(title: &'static str, width: usize, right: bool, prio: u8) -> Col {
    Col {
        title,
        width,
        right,
        prio,
    }
}

/// The cells of a row. Without a LOCAL column a server row names its service in REMOTE.
fn row_cells(r: &RowData, with_local: bool, long_note: bool) -> [String; 17] {
    let ns = r.key.netns.to_string();
    let ns_short = ns[ns.len().saturating_sub(5)..].to_string();
    let (pct, eta) = match &r.forecast {
        Some(f) => (fmt_pct(f.pressure), f.exhaustion.to_string()),
        None => ("-".into(), "-".into()),
    };
    let reused = r.exits[ExitReason::Reused.index()];
    [
        ns,
        ns_short,
        r.key.local(),
        if !with_local && r.key.side == Side::Server {
            format!("{}→:{}", r.key.remote(), r.key.port)
        } else {
            r.key.remote()
        },
        fmt_count(r.timewait_total()),
        fmt_rate(r.rate),
        pct,
        eta,
        fmt_opt_ms(r.median_ms),
        fmt_opt_ms(r.max_ms),
        aggregate::reasons_text(&r.exits, true),
        if reused > 0 {
            format!("{} ≥{}", fmt_count(reused), fmt_opt_ms(r.reuse_min_age_ms))
        } else {
            "-".into()
        },
        fmt_count(r.connect_fail),
        fmt_count(r.overflow),
        fmt_count(r.aborts),
        fmt_count(r.paws),
        r.note(!long_note).to_string(),
    ]
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

const STATE_NAMES: [(usize, &str); 11] = [
    (1, "ESTAB"),
    (2, "SYN-SENT"),
    (3, "SYN-RECV"),
    (4, "FIN-WAIT-1"),
    (5, "FIN-WAIT-2"),
    (7, "CLOSE"),
    (8, "CLOSE-WAIT"),
    (9, "LAST-ACK"),
    (10, "LISTEN"),
    (11, "CLOSING"),
    (12, "NEW-SYN-RECV"),
];

/// `TIME-WAIT 1200 (tw 1166 + fw2 34)  ESTAB 12  LISTEN 5 …` (non-zero states only).
fn census_spans(n: &NetnsData) -> Vec<Span<'static>> {
    let mut spans = Vec::new();
    match &n.census {
        Some(c) => {
            spans.push(Span::styled(
                format!("TIME-WAIT {}", c[SLOT_TW] + c[SLOT_TW_FW2]),
                BOLD,
            ));
            spans.push(Span::raw(format!(
                " (tw {} + fw2 {})",
                c[SLOT_TW], c[SLOT_TW_FW2]
            )));
            for (slot, name) in STATE_NAMES {
                if c[slot] > 0 {
                    spans.push(Span::raw(format!("  {name} {}", c[slot])));
                }
            }
        }
        None => {
            let t = n.timewait_events;
            spans.push(Span::styled(format!("TIME-WAIT {}", t[0] + t[1]), BOLD));
            spans.push(Span::raw(format!(
                " (tw {} + fw2 {}, from events; no kernel census)",
                t[0], t[1]
            )));
        }
    }
    spans
}

fn header_line(m: &Model, v: &ViewState, width: u16) -> Line<'static> {
    let attached = m.host.hooks.iter().filter(|h| h.1).count();
    let mut spans = vec![
        Span::styled("twtrace", TITLE),
        Span::raw(format!(
            " {} {} up {} {} ev/s ",
            m.host.host,
            m.host.kernel,
            short_duration(m.uptime_s),
            fmt_rate(m.events_rate)
        )),
        Span::styled(
            format!("lost {}", m.lost),
            if m.lost > 0 {
                Style::new()
                    .fg(Color::White)
                    .bg(Color::Red)
                    .add_modifier(Modifier::BOLD)
            } else {
                Style::new()
            },
        ),
        // Next to the lost events, only when there are any: fields of some records are wrong.
        Span::styled(
            if m.read_errors > 0 {
                format!(" read errors {}", m.read_errors)
            } else {
                String::new()
            },
            YELLOW,
        ),
        Span::styled(
            format!(" hooks {attached}/{}", m.host.hooks.len()),
            if attached < m.host.hooks.len() {
                YELLOW
            } else {
                Style::new()
            },
        ),
    ];
    if width >= 120 {
        let missing: Vec<&str> = m
            .host
            .hooks
            .iter()
            .filter(|h| !h.1)
            .map(|h| h.0.as_str())
            .collect();
        if !missing.is_empty() {
            spans.push(Span::styled(
                format!(" (missing: {})", missing.join(", ")),
                YELLOW,
            ));
        }
        spans.push(Span::raw(format!(" {} events", fmt_count(m.events))));
    }
    if v.paused {
        spans.push(Span::styled(
            " PAUSED ",
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD),
        ));
    }
    Line::from(spans)
}

/// One or two lines per netns: census, then sysctls (on the same line when it is wide).
fn netns_lines(n: &NetnsData, width: u16, selected: bool) -> Vec<Line<'static>> {
    let mut head = vec![Span::styled(
        format!("ns {:<10} ", n.netns),
        if selected { TITLE } else { BOLD },
    )];
    head.extend(census_spans(n));
    let sys = describe_sysctls(&n.sysctls);
    let age = n
        .census_age_s
        .map(|a| format!("  counted {} ago", short_duration(a)))
        .unwrap_or_default();
    let census_w: usize = head.iter().map(|s| s.content.chars().count()).sum();
    if usize::from(width) >= census_w + 4 + sys.len() + age.len() && width >= 140 {
        head.push(Span::styled(format!("  │ {sys}"), DIM));
        head.push(Span::styled(age, DIM));
        vec![Line::from(head)]
    } else {
        vec![
            Line::from(head),
            Line::from(vec![Span::raw("   "), Span::styled(sys, DIM)]),
        ]
    }
}

/// `999`, `12k`, `100k`, `1.2M`: at most 4 characters, for the histogram strip.
fn count4(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{}k", n / 1000),
        1_000_000..=9_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{}M", (n / 1_000_000).min(999)),
    }
}

/// Lines for the histogram out of `room`: one per bin (up to all of them) when the non-empty
/// ones fit, else a three-line strip.
fn histogram_height(bins: &[u64; N_BINS], room: u16) -> u16 {
    let range = match (
        bins.iter().position(|&n| n > 0),
        bins.iter().rposition(|&n| n > 0),
    ) {
        (Some(a), Some(b)) => (b - a + 1) as u16,
        _ => 1,
    };
    if room >= range.max(4) {
        room.min(N_BINS as u16)
    } else {
        3
    }
}

/// The lifetime histogram in `height` lines: one bar per line when the non-empty bins fit,
/// else a three-line strip (labels, bar glyphs, counts) that fits 80 columns.
fn histogram_lines(bins: &[u64; N_BINS], width: u16, height: u16) -> Vec<Line<'static>> {
    let max = bins.iter().copied().max().unwrap_or(0);
    let (first, last) = match (
        bins.iter().position(|&n| n > 0),
        bins.iter().rposition(|&n| n > 0),
    ) {
        (Some(a), Some(b)) => (a, b),
        _ => (0, 0),
    };
    if usize::from(height) > last - first && height > 3 {
        // A window of `height` bins over the non-empty ones, widened toward longer lifetimes
        // (where expiries land) and then shorter ones.
        let n = usize::from(height).min(N_BINS);
        let last = (first + n - 1).min(N_BINS - 1);
        let first = last + 1 - n;
        let bar_w = usize::from(width).saturating_sub(10 + 2 + 8).clamp(10, 100);
        return BINS
            .iter()
            .zip(bins)
            .enumerate()
            .filter(|(i, _)| (first..=last).contains(i))
            .map(|(_, (b, &n))| {
                let eighths = if max == 0 {
                    0
                } else {
                    ((n as f64 / max as f64) * (bar_w * 8) as f64).round() as usize
                };
                let eighths = if n > 0 { eighths.max(1) } else { 0 };
                let mut bar = "█".repeat(eighths / 8);
                if eighths % 8 > 0 {
                    bar.push(['▏', '▎', '▍', '▌', '▋', '▊', '▉'][eighths % 8 - 1]);
                }
                let pad = " ".repeat(bar_w.saturating_sub(bar.chars().count()));
                Line::from(vec![
                    Span::raw(format!("{:>9} │", b.1)),
                    Span::styled(bar, Style::new().fg(Color::Green)),
                    Span::raw(format!(
                        "{pad} {:>7}",
                        if n > 0 { fmt_count(n) } else { "·".into() }
                    )),
                ])
            })
            .collect();
    }
    let cell = (usize::from(width).saturating_sub(1) / N_BINS).clamp(5, 12);
    let glyphs = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let mut labels = String::new();
    let mut bars = String::new();
    let mut counts = String::new();
    for (b, &n) in BINS.iter().zip(bins) {
        let label = if cell > 8 { b.1 } else { b.2 };
        labels.push_str(&format!("{:>w$}", label, w = cell));
        let g = if n == 0 || max == 0 {
            ' '
        } else {
            glyphs[((n as f64 / max as f64) * 7.0).round() as usize]
        };
        bars.push_str(&format!("{:>w$}", g, w = cell));
        counts.push_str(&format!(
            "{:>w$}",
            if n > 0 { count4(n) } else { "·".into() },
            w = cell
        ));
    }
    let mut out = vec![
        Line::styled(labels, DIM),
        Line::styled(bars, Style::new().fg(Color::Green)),
        Line::raw(counts),
    ];
    out.truncate(usize::from(height));
    out
}

/// Draws one frame of `m` as `v` says, on any area.
pub fn draw(f: &mut Frame, m: &Model, v: &ViewState) {
    let area = f.area();
    let (w, h) = (area.width, area.height);
    // Namespaces to describe: the selected one, or the busiest ones still there.
    let mut shown: Vec<&NetnsData> = m
        .netns
        .iter()
        .filter(|n| match v.netns {
            Some(x) => x == n.netns,
            None => !n.gone,
        })
        .collect();
    shown.sort_by(|a, b| {
        b.timewait()
            .cmp(&a.timewait())
            .then(b.entry_rate.total_cmp(&a.entry_rate))
            .then(a.netns.cmp(&b.netns))
    });
    let ns_budget = if h >= 40 { 8 } else { 4 };
    let blocks: Vec<Vec<Line>> = shown
        .iter()
        .map(|n| netns_lines(n, w, v.netns == Some(n.netns)))
        .collect();
    let mut ns_lines: Vec<Line> = Vec::new();
    let mut ns_shown = 0;
    for (i, b) in blocks.iter().enumerate() {
        // Keep a line for "+N more" unless this is the last namespace.
        let reserve = usize::from(i + 1 < blocks.len());
        if ns_lines.len() + b.len() + reserve > ns_budget && ns_shown > 0 {
            break;
        }
        ns_lines.extend(b.iter().cloned());
        ns_shown += 1;
    }
    if shown.len() > ns_shown {
        ns_lines.push(Line::styled(
            format!(
                "  +{} more namespaces with {} in TIME_WAIT (n: pick one)",
                shown.len() - ns_shown,
                shown[ns_shown..].iter().map(|n| n.timewait()).sum::<u64>()
            ),
            DIM,
        ));
    }
    if ns_lines.is_empty() {
        ns_lines.push(Line::styled("no network namespace seen yet", DIM));
    }
    // The table takes what its rows need; the histogram gets the rest (up to every bin).
    let rows = visible_rows(m, v);
    let mut bins = [0u64; N_BINS];
    for n in m
        .netns
        .iter()
        .filter(|n| v.netns.is_none_or(|x| x == n.netns))
    {
        for (b, x) in bins.iter_mut().zip(n.recent) {
            *b += x;
        }
    }
    let avail = h.saturating_sub(3 + ns_lines.len() as u16);
    let table_want = (rows.len() as u16 + 1).max(3);
    let hist_h = histogram_height(&bins, avail.saturating_sub(table_want));
    let [head_a, ns_a, table_a, hist_title_a, hist_a, foot_a] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(ns_lines.len() as u16),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(hist_h),
        Constraint::Length(1),
    ])
    .areas(area);

    f.render_widget(Paragraph::new(header_line(m, v, w)), head_a);
    f.render_widget(Paragraph::new(ns_lines), ns_a);

    // Peer table.
    // The short NS column only when the rows come from several namespaces.
    let multi_ns = rows.windows(2).any(|p| p[0].key.netns != p[1].key.netns);
    let mut fit_cols = PEER_COLS;
    if !multi_ns {
        fit_cols[COL_NS].width = usize::MAX / 4;
    }
    let mut keep = fit_columns(&fit_cols, usize::from(w));
    if keep[COL_NETNS] {
        keep[COL_NS] = false;
    }
    let used: usize = PEER_COLS
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(c, _)| c.width + 1)
        .sum();
    let long_note = keep[COL_NOTE] && used + LONG_NOTE - SHORT_NOTE <= usize::from(w) + 1;
    let mut cols = PEER_COLS;
    if long_note {
        cols[COL_NOTE].width = LONG_NOTE;
    }
    let with_local = keep[COL_LOCAL];
    let sorted_col = v.sort.column();
    let header = Row::new(cols.iter().zip(&keep).filter(|(_, k)| **k).map(|(c, _)| {
        let title = if c.right {
            format!("{:>w$}", c.title, w = c.width)
        } else {
            c.title.to_string()
        };
        let st = if c.title == sorted_col {
            BOLD.add_modifier(Modifier::REVERSED)
        } else {
            BOLD
        };
        Cell::from(title).style(st)
    }));
    let body_h = usize::from(table_a.height.saturating_sub(1));
    let body = rows.iter().take(body_h).map(|r| {
        let cells = row_cells(r, with_local, long_note);
        Row::new(
            cols.iter()
                .zip(&keep)
                .zip(cells)
                .filter(|((_, k), _)| **k)
                .map(|((c, _), text)| {
                    let t = fit(&text, c.width);
                    Cell::from(if c.right {
                        format!("{t:>w$}", w = c.width)
                    } else {
                        t
                    })
                }),
        )
        .style(risk_style(r.risk()))
    });
    let widths: Vec<Constraint> = cols
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(c, _)| Constraint::Length(c.width as u16))
        .collect();
    f.render_widget(
        Table::new(body, widths).header(header).column_spacing(1),
        table_a,
    );
    if rows.is_empty() {
        let msg = if m.rows.is_empty() {
            "no TIME_WAIT activity seen yet"
        } else {
            "no peer matches the filter / netns"
        };
        let r = Rect {
            y: table_a.y + 1,
            height: 1,
            ..table_a
        };
        f.render_widget(Paragraph::new(Line::styled(format!("  {msg}"), DIM)), r);
    }

    // Histogram of recent exits.
    let total: u64 = bins.iter().sum();
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("lifetime of exits in the last 60 s", TITLE),
            Span::raw(format!(
                ": {total}{}",
                match v.netns {
                    Some(n) => format!(" in ns {n}"),
                    None => String::new(),
                }
            )),
        ])),
        hist_title_a,
    );
    f.render_widget(
        Paragraph::new(histogram_lines(&bins, w, hist_a.height)),
        hist_a,
    );

    // Footer.
    let foot = match &v.editing {
        Some(t) => Line::from(vec![
            Span::styled("filter: ", BOLD),
            Span::raw(format!("{t}▏")),
            Span::styled("  Enter apply  Esc cancel", DIM),
        ]),
        None => {
            let mut s = vec![
                Span::styled("q", BOLD),
                Span::raw(" quit  "),
                Span::styled("s", BOLD),
                Span::raw(format!(" sort:{}  ", sorted_col)),
                Span::styled("p", BOLD),
                Span::raw(if v.paused { " resume  " } else { " pause  " }),
                Span::styled("/", BOLD),
                Span::raw(if v.filter.is_empty() {
                    " filter  ".to_string()
                } else {
                    format!(" filter:{}  ", fit(&v.filter, 12))
                }),
                Span::styled("n", BOLD),
                Span::raw(format!(
                    " netns:{}  ",
                    v.netns.map_or("all".to_string(), |n| n.to_string())
                )),
            ];
            s.push(Span::styled(
                format!("peers {}/{}", rows.len().min(body_h), rows.len()),
                DIM,
            ));
            Line::from(s)
        }
    };
    f.render_widget(Paragraph::new(foot), foot_a);
}

/// Renders a frame into a buffer of `width`×`height`, without a terminal (tests, snapshots).
pub fn render_buffer(m: &Model, v: &ViewState, width: u16, height: u16) -> Buffer {
    let mut t = match Terminal::new(TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(e) => match e {},
    };
    if let Err(e) = t.draw(|f| draw(f, m, v)) {
        match e {}
    }
    t.backend().buffer().clone()
}

/// A buffer as text, one line per row, trailing blanks trimmed.
pub fn buffer_text(b: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..b.area.height {
        let mut line = String::new();
        for x in 0..b.area.width {
            if let Some(c) = b.cell((x, y)) {
                line.push_str(c.symbol());
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The real terminal

/// The terminal in full-screen mode; restored when dropped (and on a panic).
pub struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    pub fn start() -> std::io::Result<Screen> {
        Ok(Screen {
            terminal: ratatui::try_init()?,
        })
    }

    pub fn draw(&mut self, m: &Model, v: &ViewState) -> std::io::Result<()> {
        self.terminal.draw(|f| draw(f, m, v)).map(|_| ())
    }

    /// Keys typed since the last call, without waiting.
    pub fn keys(&mut self) -> std::io::Result<Vec<Key>> {
        let mut out = Vec::new();
        while ct::poll(Duration::ZERO)? {
            if let CtEvent::Key(k) = ct::read()? {
                if k.kind == KeyEventKind::Release {
                    continue;
                }
                let key = match k.code {
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
                    KeyCode::Char(c) => Key::Char(c),
                    KeyCode::Enter => Key::Enter,
                    KeyCode::Esc => Key::Esc,
                    KeyCode::Backspace => Key::Backspace,
                    _ => continue,
                };
                out.push(key);
            }
        }
        Ok(out)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::event::{Body, Event, Sock, Substate};

    const NSX: u32 = 4026532001;

    fn sock(tw: u64, l: [u8; 4], lport: u16, r: [u8; 4], rport: u16) -> Sock {
        let mut la = [0u8; 16];
        la[..4].copy_from_slice(&l);
        let mut ra = [0u8; 16];
        ra[..4].copy_from_slice(&r);
        Sock::from_raw(tw, NSX, 2, la, lport, ra, rport)
    }

    fn enter(ts_ns: u64, s: Sock) -> Event {
        Event {
            ts_ns,
            body: Body::Enter {
                sock: s,
                substate: Substate::TimeWait,
                timeout_ms: 60_000,
                task: None,
                snapshot: false,
                age_ms: None,
            },
        }
    }

    /// Two destinations: one about to run out of its 16 ports, one quiet.
    fn sample() -> (Aggregator, HostInfo) {
        let mut a = Aggregator::default();
        a.set_context(
            NSX,
            Sysctls {
                port_range: Some((40000, 40015)),
                tw_reuse: Some(0),
                tw_reuse_delay_ms: Some(1000),
                max_tw_buckets: Some(262_144),
                timestamps: Some(1),
                ..Sysctls::default()
            },
        );
        let base = 1_000_000_000_000u64;
        // The kernel's census just before the traffic: no TIME_WAIT yet.
        let mut counts = [0u64; CENSUS_SLOTS];
        counts[1] = 3;
        counts[10] = 2;
        a.set_census(
            base - 1,
            &[crate::kernel::snapshot::NetnsCensus {
                netns: u64::from(NSX),
                counts,
            }],
        );
        for i in 0..12u16 {
            a.observe(&enter(
                base + u64::from(i) * 100_000_000,
                sock(u64::from(i), [10, 0, 0, 1], 40000 + i, [10, 0, 0, 2], 443),
            ));
        }
        for i in 0..2u16 {
            a.observe(&enter(
                base + u64::from(i),
                sock(
                    100 + u64::from(i),
                    [10, 0, 0, 1],
                    40000 + i,
                    [10, 0, 0, 3],
                    80,
                ),
            ));
        }
        a.observe(&Event {
            ts_ns: base + 1_500_000_000,
            body: Body::Exit {
                sock: sock(100, [10, 0, 0, 1], 40000, [10, 0, 0, 3], 80),
                substate: Substate::TimeWait,
                reason: ExitReason::Reused,
                lifetime_ms: Some(1_200),
                task: None,
            },
        });
        a.advance(base + 2_000_000_000);
        let host = HostInfo {
            host: "box".into(),
            kernel: "6.18.0".into(),
            hooks: vec![
                ("tp_btf/timer_start".into(), true),
                ("iter/tcp".into(), false),
            ],
            start_ns: base - 10_000_000_000,
        };
        (a, host)
    }

    fn line_with<'a>(text: &'a str, needle: &str) -> (usize, &'a str) {
        text.lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
    }

    #[test]
    fn screen_at_80x24_and_200x50() {
        let (a, host) = sample();
        let m = Model::build(&a, &host);
        let v = ViewState::default();
        for (w, h) in [(80u16, 24u16), (200, 50), (60, 16)] {
            let buf = render_buffer(&m, &v, w, h);
            let text = buffer_text(&buf);
            eprintln!("{w}x{h}:\n{text}");
            assert_eq!(text.lines().count(), usize::from(h));
            assert!(text.lines().all(|l| l.chars().count() <= usize::from(w)));
            let (y, row) = line_with(&text, "10.0.0.2:443");
            let cols: Vec<&str> = row.split_whitespace().collect();
            // LOCAL REMOTE TW … at 80 columns; NETNS first at 200.
            let i = cols.iter().position(|c| *c == "10.0.0.2:443").unwrap();
            assert_eq!(cols[i + 1], "12", "TW now: {row}");
            if w >= 80 {
                // 12 of 16 ports, at 6/s (12 in 2 s) with 60 s lifetime: 0.7 s left.
                assert!(row.contains("75%"), "{row}");
                assert_eq!(risk_at(&buf, 1, y as u16), Risk::High, "{row}");
            }
            // Sorted by TW: the busier destination first.
            let (y3, _) = line_with(&text, "10.0.0.3:80");
            assert!(y < y3);
            let census = line_with(&text, "TIME-WAIT").1;
            // Census (empty TIME-WAIT at the census) + 13 entries − 1 exit since.
            assert!(census.contains("TIME-WAIT 13 (tw 13 + fw2 0)"), "{census}");
            if w >= 80 {
                assert!(
                    census.contains("ESTAB 3") && census.contains("LISTEN 2"),
                    "{census}"
                );
            }
            assert!(text.contains("lost 0"), "{text}");
            assert!(text.contains("hooks 1/2"), "{text}");
            if h >= 24 {
                assert!(text.contains("ports 40000-40015 (16)"), "{text}");
            }
            if w == 80 {
                assert!(row.ends_with("reuse=1 helps"), "{row}");
            }
            if w >= 200 {
                assert!(row.contains("tw_reuse=1 would help"), "{row}");
                assert!(text.contains("missing: iter/tcp"), "{text}");
                let (_, r3) = line_with(&text, "10.0.0.3:80");
                assert!(r3.contains("1 ≥1.2s"), "{r3}");
            }
        }
    }

    #[test]
    fn histogram_shows_recent_exits() {
        let (a, host) = sample();
        let m = Model::build(&a, &host);
        let v = ViewState::default();
        // Short screen: the strip (labels, glyphs, counts); the 1-5 s bin holds the one reuse.
        let text = buffer_text(&render_buffer(&m, &v, 60, 11));
        assert!(
            text.contains("lifetime of exits in the last 60 s: 1"),
            "{text}"
        );
        let (y, labels) = line_with(&text, "10ms");
        let counts = text.lines().nth(y + 2).unwrap();
        let col = labels.find(" 5s").unwrap() + 2; // ASCII: bytes = chars
        assert_eq!(counts.chars().nth(col), Some('1'), "{labels}\n{counts}");
        // With room: one bar per bin.
        for (w, h) in [(80, 24), (200, 50)] {
            let big = buffer_text(&render_buffer(&m, &v, w, h));
            let (_, bar) = line_with(&big, "1-5s │");
            assert!(bar.trim_end().ends_with(" 1") && bar.contains('█'), "{bar}");
            let (_, empty) = line_with(&big, "60-61s │");
            assert!(empty.trim_end().ends_with('·'), "{empty}");
        }
        // Big counts stay apart in the strip.
        let mut bins = [0u64; N_BINS];
        bins[3] = 12_345;
        bins[4] = 67_890;
        bins[5] = 2_500_000;
        let strip: Vec<String> = histogram_lines(&bins, 80, 3)
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert!(strip[2].contains("  12k  67k 2.5M"), "{strip:?}");
    }

    #[test]
    fn keys_sort_filter_pause_and_netns() {
        let (a, host) = sample();
        let m = Model::build(&a, &host);
        let ns = m.netns_ids();
        let mut v = ViewState::default();
        assert!(v.on_key(Key::Char('s'), &ns));
        assert_eq!(v.sort, SortKey::Rate);
        for _ in 0..7 {
            v.on_key(Key::Char('s'), &ns);
        }
        assert_eq!(v.sort, SortKey::Timewait);
        // Filter: typed after '/', applied by Enter.
        v.on_key(Key::Char('/'), &ns);
        for c in "0.3".chars() {
            v.on_key(Key::Char(c), &ns);
        }
        assert_eq!(v.filter, "", "not applied while typing");
        let text = buffer_text(&render_buffer(&m, &v, 80, 24));
        assert!(text.contains("filter: 0.3"), "{text}");
        v.on_key(Key::Enter, &ns);
        assert_eq!(v.filter, "0.3");
        let rows = visible_rows(&m, &v);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key.remote(), "10.0.0.3:80");
        v.on_key(Key::Char('/'), &ns);
        v.on_key(Key::Char('x'), &ns);
        v.on_key(Key::Esc, &ns);
        assert_eq!(v.filter, "0.3", "Esc keeps the old filter");
        assert!(!v.quit);
        // netns: all → the one → all.
        v.on_key(Key::Char('n'), &ns);
        assert_eq!(v.netns, Some(NSX));
        v.on_key(Key::Char('n'), &ns);
        assert_eq!(v.netns, None);
        v.on_key(Key::Char('p'), &ns);
        assert!(v.paused);
        let text = buffer_text(&render_buffer(&m, &v, 80, 24));
        assert!(text.contains("PAUSED"), "{text}");
        assert!(!v.on_key(Key::Char('z'), &ns));
        v.on_key(Key::Char('q'), &ns);
        assert!(v.quit);
    }

    #[test]
    fn sort_by_exhaustion_puts_the_soonest_first() {
        let (a, host) = sample();
        let m = Model::build(&a, &host);
        let v = ViewState {
            sort: SortKey::Exhaustion,
            ..ViewState::default()
        };
        let rows = visible_rows(&m, &v);
        assert_eq!(rows[0].key.remote(), "10.0.0.2:443");
        let v = ViewState {
            sort: SortKey::Remote,
            ..ViewState::default()
        };
        assert_eq!(visible_rows(&m, &v)[0].key.remote(), "10.0.0.2:443");
    }

    #[test]
    fn lost_events_and_empty_screens() {
        let mut a = Aggregator::default();
        let host = HostInfo::default();
        let m = Model::build(&a, &host);
        let text = buffer_text(&render_buffer(&m, &ViewState::default(), 80, 24));
        assert!(text.contains("no TIME_WAIT activity seen yet"), "{text}");
        a.observe(&Event {
            ts_ns: 5,
            body: Body::Lost { count: 42 },
        });
        let m = Model::build(&a, &host);
        let text = buffer_text(&render_buffer(&m, &ViewState::default(), 80, 24));
        assert!(text.contains("lost 42"), "{text}");
        assert!(
            !text.contains("read errors"),
            "only when there are any: {text}"
        );
        let with_errors = Model {
            read_errors: 7,
            ..m.clone()
        };
        let text = buffer_text(&render_buffer(&with_errors, &ViewState::default(), 80, 24));
        assert!(text.contains("lost 42 read errors 7"), "{text}");
        // Tiny terminals do not panic.
        for (w, h) in [(1u16, 1u16), (10, 3), (30, 8)] {
            let _ = render_buffer(&m, &ViewState::default(), w, h);
        }
    }
}
