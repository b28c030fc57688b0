//! The one text-table renderer of the report, the periodic summary and other plain-text
//! tables: fixed-width columns, one space apart, that drop by priority when the line is short.

use crate::sink::format::fit;
use std::fmt::Write as _;

/// A text column: title, width, right-aligned, and priority (lower stays longer when the
/// width is short).
#[derive(Clone, Copy, Debug)]
pub struct Col {
    pub title: &'static str,
    pub width: usize,
    pub right: bool,
    pub prio: u8,
}

impl Col {
    pub const fn new(title: &'static str, width: usize, right: bool, prio: u8) -> Col {
        Col {
            title,
            width,
            right,
            prio,
        }
    }
}

/// Which columns fit in `width` (one space between columns), by priority.
pub fn fit_columns(cols: &[Col], width: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..cols.len()).collect();
    order.sort_by_key(|&i| cols[i].prio);
    let mut keep = vec![false; cols.len()];
    let mut used = 0usize;
    for i in order {
        let need = cols[i].width + usize::from(used > 0);
        if used + need <= width {
            keep[i] = true;
            used += need;
        }
    }
    keep
}

/// Columns fitted to a line width, each line starting with `indent`.
pub struct Table<'a> {
    cols: &'a [Col],
    keep: Vec<bool>,
    indent: &'a str,
}

impl<'a> Table<'a> {
    /// The columns that fit in `width` characters, `indent` included.
    pub fn new(cols: &'a [Col], width: usize, indent: &'a str) -> Table<'a> {
        let keep = fit_columns(cols, width.saturating_sub(indent.chars().count()));
        Table { cols, keep, indent }
    }

    /// The titles line.
    pub fn header(&self, out: &mut String) {
        let titles: Vec<String> = self.cols.iter().map(|c| c.title.to_string()).collect();
        self.row(out, &titles);
    }

    /// One line of cells (cut to their column's width), trailing spaces trimmed.
    pub fn row(&self, out: &mut String, cells: &[String]) {
        out.push_str(self.indent);
        let mut first = true;
        for ((c, k), v) in self.cols.iter().zip(&self.keep).zip(cells) {
            if !k {
                continue;
            }
            if !first {
                out.push(' ');
            }
            first = false;
            let v = fit(v, c.width);
            if c.right {
                let _ = write!(out, "{v:>w$}", w = c.width);
            } else {
                let _ = write!(out, "{v:<w$}", w = c.width);
            }
        }
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_drop_by_priority() {
        let cols = [
            Col::new("A", 10, false, 0),
            Col::new("B", 10, false, 2),
            Col::new("C", 10, false, 1),
        ];
        assert_eq!(fit_columns(&cols, 21), vec![true, false, true]);
        assert_eq!(fit_columns(&cols, 32), vec![true, true, true]);
    }

    #[test]
    fn rows_align_cut_and_trim() {
        let cols = [Col::new("NAME", 6, false, 0), Col::new("N", 4, true, 0)];
        let t = Table::new(&cols, 2 + 9, "  ");
        let mut out = String::new();
        t.header(&mut out);
        t.row(&mut out, &["abcdefgh".into(), "7".into()]);
        t.row(&mut out, &["x".into(), String::new()]);
        assert_eq!(out, "  NAME\n  ab…fgh\n  x\n", "N does not fit in 9");
        let t = Table::new(&cols, 2 + 11, "  ");
        out.clear();
        t.row(&mut out, &["abcdefgh".into(), "7".into()]);
        t.row(&mut out, &["x".into(), String::new()]);
        assert_eq!(out, "  ab…fgh    7\n  x\n");
    }
}
