//! The bottom line: the keys and what they do now, or the filter being typed.

use super::state::ViewState;
use super::theme::{BOLD, DIM};
use crate::sink::format::fit;
use ratatui::text::{Line, Span};

/// `shown` of `rows` peer rows fit on the screen.
pub(super) fn line(v: &ViewState, shown: usize, rows: usize) -> Line<'static> {
    match &v.editing {
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
                Span::raw(format!(" sort:{}  ", v.sort.column())),
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
                format!("peers {}/{}", shown.min(rows), rows),
                DIM,
            ));
            Line::from(s)
        }
    }
}
