//! The charts of the HTML report, each an SVG string drawn with plotters' SVG backend (its
//! text is SVG `<text>`, laid out by the browser: no font files are read).

use crate::analysis::aggregate::{port_range, Aggregator, Side, BINS, N_BINS};
use crate::analysis::html::series::{DestSeries, Series};
use crate::pipeline::event::ExitReason;
use crate::sink::format::short_duration;
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Drawn at this size; the page scales it to its column (the SVG has a viewBox).
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 380;

const FONT: &str = "sans-serif";

/// Okabe–Ito: told apart with the common colour-vision deficiencies and in greyscale print.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(170, 150, 0),
];

fn reason_color(r: ExitReason) -> RGBColor {
    PALETTE[r.index() % PALETTE.len()]
}

/// A named line of (seconds since the trace's start, value) points.
struct Line {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// A horizontal reference line (e.g. the exhaustion line) with its legend text.
struct HLine {
    y: f64,
    label: String,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

/// Bucket `i`'s midpoint, seconds since the trace's first event.
fn x_of(i: usize, width_s: u64) -> f64 {
    (i as f64 + 0.5) * width_s as f64
}

fn x_max(s: &Series) -> f64 {
    (s.buckets().len() as f64 * s.width_s() as f64).max(1.0)
}

/// A chart with time (since the trace's start) across; `empty` is said in the middle when
/// there is nothing to draw.
fn time_chart(
    title: &str,
    y_desc: &str,
    x_max: f64,
    lines: &[Line],
    hline: Option<&HLine>,
    empty: &str,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let y_top = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .chain(hline.map(|h| h.y))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let y_max = if y_top > 0.0 { y_top * 1.12 } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .max_light_lines(2)
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215))
            .x_desc("time since the first event")
            .y_desc(y_desc)
            .x_label_formatter(&|x| short_duration(*x))
            .y_label_formatter(&|y| format_y(*y))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(err)?;
        let mut labelled = false;
        if let Some(h) = hline {
            let red = RGBColor(200, 0, 0);
            chart
                .draw_series(LineSeries::new(
                    [(0.0, h.y), (x_max, h.y)],
                    red.stroke_width(2),
                ))
                .map_err(err)?
                .label(h.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], red.stroke_width(2)));
            labelled = true;
        }
        for l in lines {
            let c = l.color;
            chart
                .draw_series(LineSeries::new(l.points.iter().copied(), c.stroke_width(2)))
                .map_err(err)?
                .label(l.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
            labelled = true;
        }
        if lines.iter().all(|l| l.points.is_empty()) {
            say_empty(&root, empty)?;
        }
        if labelled {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(160, 160, 160))
                .label_font((FONT, 13))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn say_empty(root: &DrawingArea<SVGBackend, Shift>, text: &str) -> Result<()> {
    let style = TextStyle::from((FONT, 18).into_font())
        .color(&RGBColor(110, 110, 110))
        .pos(Pos::new(HPos::Center, VPos::Center));
    root.draw(&Text::new(
        text.to_string(),
        (WIDTH as i32 / 2, HEIGHT as i32 / 2),
        style,
    ))
    .map_err(err)
}

/// `12`, `1.5`, `12k`: axis labels without a wall of digits.
fn format_y(y: f64) -> String {
    let a = y.abs();
    if a >= 1e6 {
        format!("{:.1}M", y / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", y / 1e3)
    } else if a >= 10.0 || y == y.trunc() {
        format!("{y:.0}")
    } else {
        format!("{y:.1}")
    }
}

/// How a destination reads in a legend: the report's REMOTE (and LOCAL) columns.
pub fn dest_label(d: &DestSeries, several_netns: bool) -> String {
    let k = &d.key;
    let mut s = match k.side {
        Side::Client => format!("→ {} from {}", k.remote(), k.local()),
        Side::Server => format!("{} ← clients {}", k.local(), k.remote()),
    };
    if several_netns {
        s.push_str(&format!(" (netns {})", k.netns));
    }
    s
}

/// TIME_WAIT sockets alive over time: all, and the top destinations.
pub fn alive(s: &Series, top: &[DestSeries], several_netns: bool) -> Result<String> {
    let w = s.width_s();
    let mut lines = vec![Line {
        label: "all destinations".into(),
        color: BLACK,
        points: pts(&s.alive_total(), w, 1.0),
    }];
    for (i, d) in top.iter().enumerate() {
        lines.push(Line {
            label: dest_label(d, several_netns),
            color: PALETTE[i % PALETTE.len()],
            points: pts(&d.alive, w, 1.0),
        });
    }
    let title = format!(
        "TIME_WAIT sockets alive (peak per {}), top {} destinations",
        bucket_name(w),
        top.len()
    );
    time_chart(
        &title,
        "sockets",
        x_max(s),
        &lines,
        None,
        "no TIME_WAIT socket in this trace",
    )
}

/// Entries and exits per second, exits by reason.
pub fn rates(s: &Series) -> Result<String> {
    let w = s.width_s();
    let per_s = 1.0 / w as f64;
    let entries: Vec<u32> = s.buckets().iter().map(|b| b.entries).collect();
    let mut lines = vec![Line {
        label: "entered TIME_WAIT".into(),
        color: BLACK,
        points: pts(&entries, w, per_s),
    }];
    for r in ExitReason::ALL {
        let v: Vec<u32> = s.buckets().iter().map(|b| b.exits[r.index()]).collect();
        if v.iter().any(|&n| n > 0) {
            lines.push(Line {
                label: format!("exit: {}", r.as_str()),
                color: reason_color(r),
                points: pts(&v, w, per_s),
            });
        }
    }
    if entries.iter().all(|&n| n == 0) && lines.len() == 1 {
        lines.clear();
    }
    time_chart(
        &if w == 1 {
            "Entries and exits per second".to_string()
        } else {
            format!(
                "Entries and exits per second (mean over {})",
                bucket_name(w)
            )
        },
        "per second",
        x_max(s),
        &lines,
        None,
        "no entry or exit in this trace",
    )
}

/// connect() (EADDRNOTAVAIL) and bind() (EADDRINUSE) failures per second.
pub fn failures(s: &Series) -> Result<String> {
    let w = s.width_s();
    let per_s = 1.0 / w as f64;
    let mut lines = Vec::new();
    let cf: Vec<u32> = s.buckets().iter().map(|b| b.connect_fail).collect();
    let bf: Vec<u32> = s.buckets().iter().map(|b| b.bind_fail).collect();
    for (label, v, c) in [
        ("connect() failed (connect_fail)", cf, PALETTE[1]),
        ("bind() failed (bind_fail)", bf, PALETTE[4]),
    ] {
        let n: u64 = v.iter().map(|&n| u64::from(n)).sum();
        if n > 0 {
            lines.push(Line {
                label: format!("{label}: {n}"),
                color: c,
                points: pts(&v, w, per_s),
            });
        }
    }
    time_chart(
        "connect() and bind() failures for want of a port, per second",
        "per second",
        x_max(s),
        &lines,
        None,
        "no connect() or bind() failure in this trace",
    )
}

/// Port pressure of the top client destinations: TIME_WAIT sockets toward each as a share
/// of its namespace's usable ephemeral ports (the forecast's `pressure`), with the
/// exhaustion line at 100 %.
pub fn pressure(
    s: &Series,
    top: &[DestSeries],
    agg: &Aggregator,
    several_netns: bool,
) -> Result<String> {
    let w = s.width_s();
    let mut lines = Vec::new();
    let mut pools = Vec::new();
    for (i, d) in top.iter().enumerate() {
        if d.key.side != Side::Client {
            continue;
        }
        let Some(range) = agg.context(d.key.netns).and_then(port_range) else {
            continue;
        };
        let usable = f64::from(range.usable().max(1));
        let mut label = dest_label(d, several_netns);
        if agg.peer(&d.key).is_some_and(|p| p.binds_first) {
            // The forecast then takes the namespace's whole client side as the pool.
            label.push_str(" (binds first: the shared pool is fuller)");
        }
        let pool = format!("{range} ({} ports)", range.usable());
        if !pools.contains(&pool) {
            pools.push(pool);
        }
        lines.push(Line {
            label,
            // The same colour as in the alive chart.
            color: PALETTE[i % PALETTE.len()],
            points: pts(&d.alive, w, 100.0 / usable),
        });
    }
    let exhaustion = HLine {
        y: 100.0,
        label: format!("exhaustion: every usable port held ({})", pools.join(", ")),
    };
    time_chart(
        "Port pressure: TIME_WAIT sockets toward a destination / usable ephemeral ports",
        "% of the pool",
        x_max(s),
        &lines,
        (!lines.is_empty()).then_some(&exhaustion),
        "no connecting-side destination with a known port range",
    )
}

fn pts(v: &[u32], width_s: u64, scale: f64) -> Vec<(f64, f64)> {
    v.iter()
        .enumerate()
        .map(|(i, &n)| (x_of(i, width_s), f64::from(n) * scale))
        .collect()
}

fn bucket_name(w: u64) -> String {
    if w == 1 {
        "second".into()
    } else {
        format!("{} interval", short_duration(w as f64))
    }
}

/// Where a lifetime (ms) falls on the histogram's axis: bin `i` spans `[i, i + 1)`, linear
/// inside (the bins around 60 s are 1 s wide, so the 60 s line and the wheel band land
/// exactly).
pub fn bin_x(ms: u64) -> f64 {
    let mut lo = 0u64;
    for (i, (hi, _, _)) in BINS.iter().enumerate() {
        if *hi == u64::MAX {
            // The open-ended last bin: its left edge.
            return i as f64;
        }
        if ms < *hi {
            return i as f64 + (ms - lo) as f64 / (hi - lo) as f64;
        }
        lo = *hi;
    }
    N_BINS as f64
}

/// The report's lifetime histogram (its display bins) with the 60 s line and the band
/// where timer expiries land (`band_ms`, from the timer wheel at the trace's HZ).
pub fn lifetimes(bins: &[u64; N_BINS], band_ms: (u64, u64), hz: u64) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let top = bins.iter().copied().max().unwrap_or(0);
        let y_max = if top > 0 { top as f64 * 1.15 } else { 1.0 };
        let total: u64 = bins.iter().sum();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Lifetime of {total} exits (the report's bins)"),
                (FONT, 20),
            )
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..N_BINS as f64, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(2)
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215))
            // Key points every half bin: the bins' names sit under their bars.
            .x_labels(2 * N_BINS + 1)
            .x_label_formatter(&|x| {
                let h = (x * 2.0).round() as usize;
                if h % 2 == 1 && h / 2 < N_BINS {
                    BINS[h / 2].1.to_string()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format_y(*y))
            .y_desc("exits")
            .x_desc("lifetime")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(err)?;
        let band_color = RGBColor(230, 159, 0);
        let (lo, hi) = (bin_x(band_ms.0), bin_x(band_ms.1));
        chart
            .draw_series([Rectangle::new(
                [(lo, 0.0), (hi, y_max)],
                band_color.mix(0.25).filled(),
            )])
            .map_err(err)?
            .label(format!(
                "timer-wheel band at HZ={hz}: {:.3}–{:.3} s (where 60 s timers fire)",
                band_ms.0 as f64 / 1000.0,
                band_ms.1 as f64 / 1000.0
            ))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], band_color.mix(0.5).filled())
            });
        let bar = PALETTE[0];
        chart
            .draw_series(
                bins.iter()
                    .enumerate()
                    .filter(|(_, &n)| n > 0)
                    .map(|(i, &n)| {
                        Rectangle::new(
                            [(i as f64 + 0.12, 0.0), (i as f64 + 0.88, n as f64)],
                            bar.filled(),
                        )
                    }),
            )
            .map_err(err)?;
        chart
            .draw_series(
                bins.iter()
                    .enumerate()
                    .filter(|(_, &n)| n > 0)
                    .map(|(i, &n)| {
                        Text::new(
                            n.to_string(),
                            (i as f64 + 0.5, n as f64),
                            TextStyle::from((FONT, 12).into_font())
                                .pos(Pos::new(HPos::Center, VPos::Bottom)),
                        )
                    }),
            )
            .map_err(err)?;
        let red = RGBColor(200, 0, 0);
        let x60 = bin_x(60_000);
        chart
            .draw_series(LineSeries::new(
                [(x60, 0.0), (x60, y_max)],
                red.stroke_width(2),
            ))
            .map_err(err)?
            .label("60 s (TCP_TIMEWAIT_LEN)")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], red.stroke_width(2)));
        if total == 0 {
            say_empty(&root, "no exit with a known lifetime")?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FONT, 13))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_60s_line_and_band_land_on_the_bins() {
        // 60 s is the boundary between "59-60s" (bin 8) and "60-61s" (bin 9).
        assert_eq!(BINS[8].1, "59-60s");
        assert_eq!(bin_x(60_000), 9.0);
        assert_eq!(bin_x(60_500), 9.5);
        assert_eq!(bin_x(0), 0.0);
        assert_eq!(bin_x(u64::MAX), (N_BINS - 1) as f64);
        assert!(bin_x(130_000) >= (N_BINS - 1) as f64);
    }

    #[test]
    fn charts_draw_with_nothing_in_them() {
        let s = Series::default();
        let agg = Aggregator::default();
        for svg in [
            alive(&s, &[], false).unwrap(),
            rates(&s).unwrap(),
            failures(&s).unwrap(),
            pressure(&s, &[], &agg, false).unwrap(),
            lifetimes(&[0; N_BINS], (59_996, 62_252), 250).unwrap(),
        ] {
            assert!(svg.starts_with("<svg"), "{svg}");
            assert_eq!(svg.matches("<svg").count(), 1);
            assert!(svg.contains("no "), "an empty chart says so");
        }
    }

    #[test]
    fn axis_labels() {
        assert_eq!(format_y(3.0), "3");
        assert_eq!(format_y(2.5), "2.5");
        assert_eq!(format_y(25_000.0), "25k");
        assert_eq!(format_y(2.5e6), "2.5M");
    }
}
