//! The peer table: one row per destination (or accepting service), its columns chosen by
//! priority to fit the width, coloured by port-exhaustion risk.

use super::model::{Model, RowData};
use super::state::ViewState;
use super::theme::{risk_style, BOLD, DIM};
use crate::analysis::aggregate::Side;
use crate::analysis::report::reasons_text;
use crate::pipeline::event::ExitReason;
use crate::sink::format::{fit, fmt_count, fmt_opt_ms, fmt_pct, fmt_rate};
use crate::sink::table::{fit_columns, Col};
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Modifier;
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use ratatui::Frame;

/// Peer table columns: (title, width, right-aligned, priority). Lower priority stays longer.
/// At 80 columns: REMOTE TW NEW/s PORTS EXHAUST MEDIAN CFAIL NOTE, then MAX (one netns) or
/// NS (several); at 180 and more, all, with the long notes. No FIN_WAIT2 split per row: the
/// kernel promotes without an event (see [`crate::analysis::aggregate::Peer::timewait`]); the census line
/// has the kernel's split.
const PEER_COLS: [Col; 18] = [
    Col::new("NETNS", 10, true, 14),
    Col::new("NS", 5, true, 8),
    Col::new("WORKLOAD", 14, false, 8),
    Col::new("LOCAL", 15, false, 9),
    Col::new("REMOTE", 21, false, 0),
    Col::new("TW", 5, true, 1),
    Col::new("NEW/s", 5, true, 2),
    Col::new("PORTS", 5, true, 3),
    Col::new("EXHAUST", 7, true, 4),
    Col::new("MEDIAN", 6, true, 5),
    Col::new("MAX", 6, true, 10),
    Col::new("EXITS", 24, false, 11),
    Col::new("REUSE", 11, false, 12),
    Col::new("CFAIL", 5, true, 6),
    Col::new("OVFL", 5, true, 13),
    Col::new("ABORT", 5, true, 13),
    Col::new("PAWS", 5, true, 15),
    Col::new("NOTE", SHORT_NOTE, false, 7),
];
const COL_NETNS: usize = 0;
const COL_NS: usize = 1;
const COL_WORKLOAD: usize = 2;
const COL_LOCAL: usize = 3;
const COL_NOTE: usize = 17;
const SHORT_NOTE: usize = 13;
const LONG_NOTE: usize = 26;

/// The cells of a row. Without a LOCAL column a server row names its service in REMOTE.
fn row_cells(r: &RowData, with_local: bool, long_note: bool) -> [String; 18] {
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
        r.workload.clone().unwrap_or_else(|| "-".into()),
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
        reasons_text(&r.exits, true),
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

/// The columns that fit `w`: which are kept, their widths (NOTE long when there is room),
/// and whether LOCAL is one of them.
struct Fitted {
    cols: [Col; 18],
    keep: Vec<bool>,
    long_note: bool,
    with_local: bool,
}

fn fit_to(rows: &[&RowData], w: u16) -> Fitted {
    // The short NS column only when the rows come from several namespaces.
    let multi_ns = rows.windows(2).any(|p| p[0].key.netns != p[1].key.netns);
    let mut fit_cols = PEER_COLS;
    if !multi_ns {
        fit_cols[COL_NS].width = usize::MAX / 4;
    }
    // WORKLOAD only when some row has one (events from a cgroup the kernel named).
    if rows.iter().all(|r| r.workload.is_none()) {
        fit_cols[COL_WORKLOAD].width = usize::MAX / 4;
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
    Fitted {
        cols,
        keep,
        long_note,
        with_local,
    }
}

/// Draws the table of `rows` in `area`; returns how many rows it had room for.
pub(super) fn draw(
    f: &mut Frame,
    area: Rect,
    m: &Model,
    v: &ViewState,
    rows: &[&RowData],
) -> usize {
    let Fitted {
        cols,
        keep,
        long_note,
        with_local,
    } = fit_to(rows, area.width);
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
    let body_h = usize::from(area.height.saturating_sub(1));
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
        area,
    );
    if rows.is_empty() {
        let msg = if m.rows.is_empty() {
            "no TIME_WAIT activity seen yet"
        } else {
            "no peer matches the filter / netns"
        };
        let r = Rect {
            y: area.y + 1,
            height: 1,
            ..area
        };
        f.render_widget(Paragraph::new(Line::styled(format!("  {msg}"), DIM)), r);
    }

    body_h
}
