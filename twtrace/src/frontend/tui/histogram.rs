//! The lifetime of the exits of the last minute: one bar per bin when there is room, else a
//! three-line strip.

use super::model::Model;
use super::state::ViewState;
use super::theme::{DIM, TITLE};
use crate::analysis::aggregate::{BINS, N_BINS};
use crate::sink::format::{bar, fmt_count};
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

/// The recent exits by bin of the namespaces the view shows.
pub(super) fn recent_bins(m: &Model, v: &ViewState) -> [u64; N_BINS] {
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
    bins
}

/// The title line in `title_a`, the bars in `area`.
pub(super) fn draw(f: &mut Frame, [title_a, area]: [Rect; 2], bins: &[u64; N_BINS], v: &ViewState) {
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
        title_a,
    );
    f.render_widget(
        Paragraph::new(histogram_lines(bins, area.width, area.height)),
        area,
    );
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
pub(super) fn height(bins: &[u64; N_BINS], room: u16) -> u16 {
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
pub(super) fn histogram_lines(bins: &[u64; N_BINS], width: u16, height: u16) -> Vec<Line<'static>> {
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
                let bar = bar(n, max, bar_w);
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
