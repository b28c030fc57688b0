//! The top line: host, kernel, uptime, event rate, lost events, hooks, pause.

use super::model::Model;
use super::state::ViewState;
use super::theme::{TITLE, YELLOW};
use crate::sink::format::{fmt_count, fmt_rate, short_duration};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

pub(super) fn line(m: &Model, v: &ViewState, width: u16) -> Line<'static> {
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
        // Next to the lost events, only when there are any: fields of some records are wrong;
        // some births may lack their closing process; events not seen, as the lost ones
        // (red like them).
        count_span(" read errors", m.read_errors, YELLOW),
        count_span(" map errors", m.map_errors, YELLOW),
        count_span(
            " SKIPPED",
            m.skipped_runs,
            Style::new().fg(Color::White).bg(Color::Red),
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

/// `label n` in `style` when `n` is not zero; nothing otherwise.
fn count_span(label: &str, n: u64, style: Style) -> Span<'static> {
    if n == 0 {
        return Span::raw("");
    }
    Span::styled(format!("{label} {n}"), style)
}
