//! The full-screen live view: `top` for TIME_WAIT.
//!
//! Split so that the screen can be tested without a terminal, with the state apart from the
//! drawing and one file per screen region:
//! - `state`: what the user chose ([`ViewState`], keys, sort order);
//! - `model`: [`Model::build`] copies what a frame needs out of the
//!   [`Aggregator`](crate::analysis::aggregate::Aggregator) (numbers only; it is kept as is
//!   while the view is paused), and [`visible_rows`] filters and sorts it;
//! - [`draw`] lays a model out for any size from the regions `header` (top line), `census`
//!   (the namespaces), `peers` (the table, columns chosen by priority so that it reads at
//!   80×24 and uses the room at 200×50), `histogram` (recent exits) and `footer` (keys help);
//! - [`Screen`] owns the real terminal (raw mode, alternate screen, keys) and restores it when
//!   dropped, also on a panic.
//!
//! Keys: `q` quit, `s` next sort column, `p` pause, `/` filter (Enter applies, Esc cancels),
//! `n` next network namespace (all → each → all).

mod census;
mod footer;
mod header;
mod histogram;
mod model;
mod peers;
mod screen;
mod state;
mod theme;

pub use model::{visible_rows, HostInfo, Model, NetnsData, RowData};
pub use screen::Screen;
pub use state::{Key, SortKey, ViewState};
pub use theme::risk_at;

use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout};
use ratatui::widgets::Paragraph;
use ratatui::{Frame, Terminal};

/// Draws one frame of `m` as `v` says, on any area.
pub fn draw(f: &mut Frame, m: &Model, v: &ViewState) {
    let area = f.area();
    let (w, h) = (area.width, area.height);
    let ns_lines = census::namespace_lines(m, v, w, h);
    // The table takes what its rows need; the histogram gets the rest (up to every bin).
    let rows = visible_rows(m, v);
    let bins = histogram::recent_bins(m, v);
    let avail = h.saturating_sub(3 + ns_lines.len() as u16);
    let table_want = (rows.len() as u16 + 1).max(3);
    let hist_h = histogram::height(&bins, avail.saturating_sub(table_want));
    let [head_a, ns_a, table_a, hist_title_a, hist_a, foot_a] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(ns_lines.len() as u16),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(hist_h),
        Constraint::Length(1),
    ])
    .areas(area);

    f.render_widget(Paragraph::new(header::line(m, v, w)), head_a);
    f.render_widget(Paragraph::new(ns_lines), ns_a);
    let shown = peers::draw(f, table_a, m, v, &rows);
    histogram::draw(f, [hist_title_a, hist_a], &bins, v);
    f.render_widget(Paragraph::new(footer::line(v, shown, rows.len())), foot_a);
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

#[cfg(test)]
mod tests;
