//! The namespace lines: each shown namespace's census (the kernel's count by state) and the
//! sysctls that decide its port forecast.

use super::model::{Model, NetnsData};
use super::state::ViewState;
use super::theme::{BOLD, DIM, TITLE};
use crate::analysis::aggregate::{SLOT_TW, SLOT_TW_FW2};
use crate::analysis::report::describe_sysctls;
use crate::sink::format::short_duration;
use ratatui::text::{Line, Span};

/// The namespaces to describe (the selected one, or the busiest ones still there) in at most
/// 4 lines (8 on a tall screen), with a "+N more" line for the rest.
pub(super) fn namespace_lines(m: &Model, v: &ViewState, w: u16, h: u16) -> Vec<Line<'static>> {
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
    let blocks: Vec<Vec<Line<'static>>> = shown
        .iter()
        .map(|n| netns_lines(n, w, v.netns == Some(n.netns)))
        .collect();
    let mut ns_lines: Vec<Line<'static>> = Vec::new();
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
    ns_lines
}

use crate::kernel::snapshot::SS_STATE_NAMES as STATE_NAMES;

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
