//! The colours of the view, and the risk a rendered cell shows (for tests).

use crate::analysis::forecast::Risk;
use ratatui::buffer::Buffer;
use ratatui::style::{Color, Modifier, Style};

pub(super) const RED: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
pub(super) const YELLOW: Style = Style::new().fg(Color::Yellow);
pub(super) const DIM: Style = Style::new().fg(Color::DarkGray);
pub(super) const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
pub(super) const TITLE: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);

pub(super) fn risk_style(r: Risk) -> Style {
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
