//! Output: the human table.

use super::Report;
use std::fmt::Write as _;

/// The human table: claim · blog says · this kernel did · verdict · explanation, wrapped to
/// `width` columns.
pub fn render_table(r: &Report, width: usize) -> String {
    let width = width.max(100);
    let fixed = [16usize, 0, 0, 15, 0];
    let flexible = width - fixed[0] - fixed[3] - 4 * 3;
    let cols = [
        fixed[0],
        flexible * 25 / 100,
        flexible * 40 / 100,
        fixed[3],
        flexible - flexible * 25 / 100 - flexible * 40 / 100,
    ];
    let mut out = String::new();
    let header = [
        "CLAIM",
        "BLOG SAYS",
        "THIS KERNEL DID",
        "VERDICT",
        "EXPLANATION",
    ];
    let row = |cells: [&str; 5], out: &mut String| {
        let wrapped: Vec<Vec<String>> = cells.iter().zip(cols).map(|(c, w)| wrap(c, w)).collect();
        let lines = wrapped.iter().map(|w| w.len()).max().unwrap_or(1);
        for i in 0..lines {
            let mut line = String::new();
            for (j, w) in wrapped.iter().enumerate() {
                let cell = w.get(i).map(String::as_str).unwrap_or("");
                if j + 1 == wrapped.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$} │ ", width = cols[j]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    };
    row(header, &mut out);
    let rule: String = cols
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut s = "─".repeat(*w + if i == 0 { 1 } else { 2 });
            if i + 1 < cols.len() {
                s.push('┼');
            }
            s
        })
        .collect();
    for c in &r.claims {
        out.push_str(&rule);
        out.push('\n');
        row(
            [
                c.id.as_str(),
                &c.seed,
                &c.observed,
                c.verdict.as_str(),
                &c.explanation,
            ],
            &mut out,
        );
    }
    out
}

/// Greedy word wrap to `width` characters (long words are split).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let cur_len = cur.chars().count();
            let need = if cur.is_empty() {
                word.len()
            } else {
                cur_len + 1 + word.len()
            };
            if need <= width {
                if !cur.is_empty() {
                    cur.push(' ');
                }
                cur.extend(word.iter());
                break;
            }
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
                continue;
            }
            let rest = word.split_off(width);
            lines.push(word.iter().collect());
            word = rest;
        }
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::verify::{Claim, ClaimId, Verdict};
    use serde_json::json;

    #[test]
    fn wrapping() {
        assert_eq!(wrap("a bb ccc", 4), vec!["a bb", "ccc"]);
        assert_eq!(wrap("abcdefgh", 3), vec!["abc", "def", "gh"]);
        assert_eq!(wrap("", 3), vec![""]);
    }

    #[test]
    fn table_has_every_claim() {
        let r = Report {
            claims: vec![Claim {
                id: ClaimId::Linger0,
                verdict: Verdict::Confirmed,
                seed: "s".into(),
                measured: json!({"n": 1}),
                observed: "o".into(),
                explanation: "e".into(),
            }],
        };
        let t = render_table(&r, 120);
        assert!(t.starts_with("CLAIM"));
        assert!(t.contains("linger0") && t.contains("confirmed"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["claims"][0]["id"], "linger0");
        assert_eq!(v["claims"][0]["verdict"], "confirmed");
    }
}
