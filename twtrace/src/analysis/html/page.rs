//! The HTML page: a section per host with its charts and the text report's tables, styled
//! for a 1280 px browser window and for paper.

use crate::analysis::aggregate::{Aggregator, BINS};
use crate::analysis::html::{charts, series::Series};
use crate::analysis::report::{ReportModel, ReportTable};
use crate::experiments::verify::Wheel;
use crate::sink::format::rfc3339_micros;
use anyhow::Result;
use std::fmt::Write as _;

/// Destinations drawn one by one (the others are in the "all destinations" line).
pub const TOP_DESTINATIONS: usize = 6;
/// Charts in each host's section (a test counts them in the browser).
pub const CHARTS_PER_HOST: usize = 5;

/// What the page shows of one host: its aggregator and series after the whole pass.
pub struct HostSection<'a> {
    /// The lines the text report prints above the tables (title, notes).
    pub head: String,
    /// The report's content (what `twtrace report` prints, before layout).
    pub report: ReportModel,
    pub agg: &'a Aggregator,
    pub series: &'a Series,
    /// The kernel's HZ as the trace's header says (for the timer-wheel band).
    pub hz: u64,
}

/// HZ values the kernel can be configured with lie in this range; outside it (a damaged
/// header) the band is drawn for 250 and says so.
const HZ_RANGE: std::ops::RangeInclusive<u64> = 24..=10_000;
const HZ_ASSUMED: u64 = 250;

const CSS: &str = r#"
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #111;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 16px 20px 40px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 28px 0 6px; border-bottom: 2px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 17px; margin: 22px 0 6px; }
.meta { color: #555; margin: 0 0 8px; }
.notes { color: #333; margin: 4px 0 12px; white-space: pre-wrap; }
figure.chart { margin: 14px 0; border: 1px solid #e3e3e3; border-radius: 4px; }
figure.chart svg { display: block; width: 100%; height: auto; }
figcaption { font-size: 13px; color: #555; padding: 4px 10px 8px; }
ul.totals { list-style: none; padding: 0; margin: 6px 0; }
ul.totals li.warn { color: #a00; font-weight: 600; }
.table { overflow-x: auto; margin: 4px 0 10px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e6e6e6; text-align: left;
  white-space: nowrap; }
th { background: #f2f2f2; font-weight: 600; }
th.r, td.r { text-align: right; }
tbody tr:nth-child(even) { background: #fafafa; }
p.more { color: #555; margin: 2px 0 10px; font-size: 13px; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  /* Two charts to a landscape page (a chart at full width is a little over half its height). */
  figure.chart { break-inside: avoid; page-break-inside: avoid; border: none; width: 82%;
    margin: 2mm auto; }
  section.host + section.host { break-before: page; page-break-before: always; }
  h2, h3 { break-after: avoid; page-break-after: avoid; }
  .table { overflow: visible; }
  table { font-size: 7.5pt; }
  th, td { padding: 1px 4px; white-space: normal; }
  tr { break-inside: avoid; page-break-inside: avoid; }
}
"#;

/// Text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page. `sources`: the trace files, as named on the command line.
pub fn render(sources: &[String], hosts: &[HostSection]) -> Result<String> {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(
        out,
        "<title>twtrace report: {}</title>",
        escape(&sources.join(", "))
    );
    let _ = writeln!(out, "<style>{CSS}</style>\n</head>\n<body>\n<main>");
    out.push_str("<h1>TIME_WAIT report</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"meta\">twtrace {} · {} trace file{}: {}</p>",
        env!("CARGO_PKG_VERSION"),
        sources.len(),
        if sources.len() == 1 { "" } else { "s" },
        escape(&sources.join(", "))
    );
    for h in hosts {
        host_section(&mut out, h)?;
    }
    out.push_str("</main>\n</body>\n</html>\n");
    Ok(out)
}

fn host_section(out: &mut String, h: &HostSection) -> Result<()> {
    let mut lines = h.head.lines();
    let title = lines.next().unwrap_or("");
    let _ = writeln!(out, "<section class=\"host\">\n<h2>{}</h2>", escape(title));
    let notes: Vec<&str> = lines.filter(|l| !l.chars().all(|c| c == '=')).collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "<p class=\"notes\">{}</p>", escape(&notes.join("\n")));
    }
    let s = h.series;
    if let Some(o) = s.origin_s() {
        let _ = writeln!(
            out,
            "<p class=\"meta\">Time axis: from {} (UTC), {} per point.</p>",
            escape(&rfc3339_micros(i128::from(o) * 1_000_000_000)),
            if s.width_s() == 1 {
                "one second".to_string()
            } else {
                format!("{} s", s.width_s())
            }
        );
    }
    let several_netns = h.agg.netns().filter(|n| n.entries + n.snapshot > 0).count() > 1;
    let top = s.top_destinations(TOP_DESTINATIONS);
    let (hz, hz_note) = if HZ_RANGE.contains(&h.hz) {
        (h.hz, String::new())
    } else {
        (
            HZ_ASSUMED,
            format!(
                " HZ {} in the trace is not a kernel's: {HZ_ASSUMED} assumed.",
                h.hz
            ),
        )
    };
    // The same window `twtrace verify` checks expiries against: the timeout minus a jiffy,
    // up to one wheel granule, a jiffy and softirq latency late.
    let band = Wheel { hz, hz_known: true }.window(60_000);
    let mut untracked = String::new();
    if s.untracked_events() > 0 {
        untracked = format!(
            " {} events were on destinations past the first {} seen: they are in the \
             \"all destinations\" line only.",
            s.untracked_events(),
            super::series::MAX_TRACKED
        );
    }
    let figures = [
        (
            charts::alive(s, &top, several_netns)?,
            format!(
                "TIME_WAIT sockets alive, as the report counts them (born minus gone, per \
                 row), highest value in each interval.{untracked}"
            ),
        ),
        (
            charts::rates(s)?,
            "New TIME_WAIT sockets and exits per second, exits by reason (expired: the 60 s \
             timer; reused: connect() took the port; syn, rst: killed by a segment; purged: \
             namespace gone)."
                .to_string(),
        ),
        (
            charts::lifetimes(&h.agg.totals().bins, band, hz)?,
            format!(
                "Lifetimes of all exits in the report's bins. Expired sockets land in the \
                 band: 60 s rounded up by the kernel's timer wheel.{hz_note}"
            ),
        ),
        (
            charts::pressure(s, &top, h.agg, several_netns)?,
            "Ports held by TIME_WAIT sockets toward each destination, as a share of the \
             namespace's usable ip_local_port_range (from the trace's sysctls); at 100 % \
             connect() fails with EADDRNOTAVAIL unless tcp_tw_reuse takes a socket over."
                .to_string(),
        ),
        (
            charts::failures(s)?,
            "connect() refused for want of a local port (EADDRNOTAVAIL) and bind() to port 0 \
             refused (EADDRINUSE), on the same time axis."
                .to_string(),
        ),
    ];
    debug_assert_eq!(figures.len(), CHARTS_PER_HOST);
    for (svg, caption) in figures {
        let _ = writeln!(
            out,
            "<figure class=\"chart\">\n{svg}\n<figcaption>{}</figcaption>\n</figure>",
            escape(&caption)
        );
    }
    report_tables(out, &h.report);
    out.push_str("</section>\n");
    Ok(())
}

/// The report's totals and tables (the same cells `twtrace report` prints, uncut).
fn report_tables(out: &mut String, m: &ReportModel) {
    out.push_str("<h3>Totals</h3>\n<ul class=\"totals\">\n");
    for l in &m.totals {
        let class = if l.starts_with("WARNING") {
            " class=\"warn\""
        } else {
            ""
        };
        let _ = writeln!(out, "<li{class}>{}</li>", escape(l));
    }
    out.push_str("</ul>\n");
    for t in &m.tables {
        html_table(out, t);
    }
    let _ = writeln!(out, "<h3>{}</h3>", escape(&m.lifetime));
    let (Some(first), Some(last)) = (
        m.bins.iter().position(|&n| n > 0),
        m.bins.iter().rposition(|&n| n > 0),
    ) else {
        out.push_str("<p class=\"more\">(no exits with a known lifetime)</p>\n");
        return;
    };
    out.push_str("<div class=\"table\"><table class=\"bins\">\n<thead><tr><th>LIFETIME</th>");
    for b in &BINS[first..=last] {
        let _ = write!(out, "<th class=\"r\">{}</th>", escape(b.1));
    }
    out.push_str("</tr></thead>\n<tbody><tr><td>exits</td>");
    for n in &m.bins[first..=last] {
        let _ = write!(out, "<td class=\"r\">{n}</td>");
    }
    out.push_str("</tr></tbody>\n</table></div>\n");
}

fn html_table(out: &mut String, t: &ReportTable) {
    let _ = writeln!(out, "<h3>{}</h3>", escape(&t.title));
    out.push_str("<div class=\"table\"><table>\n<thead><tr>");
    for c in t.cols {
        let _ = write!(out, "<th{}>{}</th>", align(c.right), escape(c.title));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for r in &t.rows {
        out.push_str("<tr>");
        for (c, v) in t.cols.iter().zip(r) {
            let _ = write!(out, "<td{}>{}</td>", align(c.right), escape(v));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table></div>\n");
    if let Some(more) = &t.more {
        let _ = writeln!(out, "<p class=\"more\">{}</p>", escape(more));
    }
}

/// The class of a right-aligned (numeric) column's cells.
fn align(right: bool) -> &'static str {
    if right {
        " class=\"r\""
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::report::Report;

    fn section<'a>(agg: &'a Aggregator, series: &'a Series, hz: u64) -> HostSection<'a> {
        HostSection {
            head: "host <x> (kernel 6.1, HZ 250): 1 file, 0 events\nnote: a & b".into(),
            report: Report::default_limits(150).model(agg),
            agg,
            series,
            hz,
        }
    }

    #[test]
    fn an_empty_trace_makes_a_whole_page() {
        let agg = Aggregator::default();
        let s = Series::default();
        for hz in [250, 0, u64::MAX] {
            let p = render(&["a<b>.twt".into()], &[section(&agg, &s, hz)]).unwrap();
            assert!(p.starts_with("<!DOCTYPE html>") && p.ends_with("</html>\n"));
            assert_eq!(p.matches("<svg").count(), CHARTS_PER_HOST);
            assert!(p.contains("host &lt;x&gt;") && p.contains("note: a &amp; b"));
            assert!(p.contains("a&lt;b&gt;.twt") && !p.contains("a<b>"));
            // Self-contained: nothing is fetched.
            for bad in ["<script", "<link", "src=", "@import", "url("] {
                assert!(!p.contains(bad), "{bad}");
            }
        }
    }

    #[test]
    fn each_host_has_its_own_section() {
        let agg = crate::analysis::report::tests::mixed();
        let s = Series::default();
        let hosts = [section(&agg, &s, 250), section(&agg, &s, 1000)];
        let p = render(&["a.twt".into(), "b.twt".into()], &hosts).unwrap();
        assert_eq!(p.matches("<svg").count(), 2 * CHARTS_PER_HOST);
        assert_eq!(p.matches("<section class=\"host\">").count(), 2);
        // HZ=1000: 60 s is on level 4 of the wheel (4096-jiffy granules), + a jiffy + 200 ms.
        assert!(
            p.contains("HZ=1000: 59.999–64.297 s"),
            "the band at HZ=1000"
        );
    }

    #[test]
    fn a_mixed_trace_has_every_chart_and_the_report() {
        let agg0 = crate::analysis::report::tests::mixed();
        let mut agg = Aggregator::default();
        let mut s = Series::default();
        for e in crate::sink::tracefile::synthetic::events(60_000, 11) {
            agg.observe(&e);
            s.observe(&e, &agg);
        }
        let text = Report::render(&agg, 150);
        assert_eq!(
            text,
            Report::render(&agg0, 150),
            "the series changes nothing"
        );
        let p = render(&["t.twt".into()], &[section(&agg, &s, 250)]).unwrap();
        assert_eq!(p.matches("<svg").count(), CHARTS_PER_HOST);
        let first = text.lines().next().unwrap();
        assert!(p.contains(&escape(first)), "{first}");
        // Every row of the text's tables is a row of the page's (cells uncut, whole).
        let m = Report::default_limits(150).model(&agg);
        assert_eq!(m.tables.len(), 3);
        for t in &m.tables {
            assert!(p.contains(&escape(&t.title)), "{}", t.title);
            assert!(!t.rows.is_empty(), "{}", t.title);
            for r in &t.rows {
                let cells: String = r
                    .iter()
                    .zip(t.cols)
                    .map(|(v, c)| format!("<td{}>{}</td>", align(c.right), escape(v)))
                    .collect();
                assert!(p.contains(&format!("<tr>{cells}</tr>")), "{cells}");
            }
        }
        assert!(p.contains(&escape(&m.lifetime)));
        assert!(p.contains("exit: expired"));
        assert!(
            p.contains("timer-wheel band at HZ=250: 59.996–62.252 s"),
            "the band"
        );
    }
}
