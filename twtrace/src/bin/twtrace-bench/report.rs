//! Pure helpers of the bench: reading what tracers print, statistics, and the text table.

use std::collections::BTreeMap;

/// The counts of twtrace's one-line stderr summary, e.g.
/// `twtrace: 43500 events shown; 21737 enter (0 from snapshot), 26 promote, 21737 exit
/// (21737 early); 0 lost`. Labels are kept generically so new event kinds parse too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// label → count, e.g. "enter" → 21737, "events shown" → 43500, "lost" → 0.
    pub counts: BTreeMap<String, u64>,
    /// Entries found by the start-up snapshot (not events of the measured window).
    pub snapshot: u64,
}

impl Summary {
    pub fn get(&self, label: &str) -> u64 {
        self.counts.get(label).copied().unwrap_or(0)
    }

    pub fn lost(&self) -> u64 {
        self.get("lost")
    }

    /// TIME_WAIT entries and exits seen live (snapshot entries excluded).
    pub fn live_events(&self) -> u64 {
        (self.get("enter") + self.get("exit")).saturating_sub(self.snapshot)
    }
}

/// Finds and parses the summary line among a tracer's stderr lines (the last one wins).
pub fn find_summary(lines: &[String]) -> Option<Summary> {
    lines
        .iter()
        .rev()
        .filter(|l| l.starts_with("twtrace:") && l.contains(" lost"))
        .find_map(|l| parse_summary(l))
}

pub fn parse_summary(line: &str) -> Option<Summary> {
    let body = line.strip_prefix("twtrace:")?;
    let mut s = Summary::default();
    for piece in split_top_level(body) {
        let piece = piece.trim();
        let (num, rest) = piece.split_once(' ')?;
        let Ok(n) = num.parse::<u64>() else {
            continue;
        };
        let (label, inner) = match rest.split_once('(') {
            Some((l, i)) => (l.trim(), Some(i.trim_end_matches(')'))),
            None => (rest.trim(), None),
        };
        if label == "enter" {
            if let Some(snap) = inner.and_then(|i| i.strip_suffix(" from snapshot")) {
                s.snapshot = snap.trim().parse().unwrap_or(0);
            }
        }
        s.counts.insert(label.to_string(), n);
    }
    s.counts.contains_key("lost").then_some(s)
}

/// Splits on ';' and ',' outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ';' | ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The highest offered rate with no reported loss, below the lowest rate that lost events:
/// a rate above a lossy one that happened to lose nothing does not count.
/// Returns (rate, whether any step lost events).
pub fn lossless_rate(steps: &[(f64, u64)]) -> (Option<f64>, bool) {
    let first_lossy = steps
        .iter()
        .filter(|(_, lost)| *lost > 0)
        .map(|(r, _)| *r)
        .fold(f64::INFINITY, f64::min);
    let best = steps
        .iter()
        .filter(|(r, lost)| *lost == 0 && *r < first_lossy)
        .map(|(r, _)| *r)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    (best, first_lossy.is_finite())
}

/// Seconds since the epoch of an RFC 3339 UTC time as twtrace writes it
/// (`2026-11-25T09:31:03.123456Z`).
pub fn parse_rfc3339_utc(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// What an NDJSON stream says about one network namespace: exit times and reasons, and the
/// lost-event records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NdjsonScan {
    pub exits: u64,
    /// Exits at or after `since` (the purge), with their time span.
    pub exits_since: u64,
    pub enters: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub first_exit: Option<f64>,
    pub last_exit: Option<f64>,
    /// Times of the exits since `since`, in input order.
    pub exit_times: Vec<f64>,
    pub lost: u64,
    pub bad_lines: u64,
}

/// Scans NDJSON for events of `netns`; exits at or after `since` (seconds since the epoch) are
/// also counted apart, with their first and last time.
pub fn scan_ndjson(text: &str, netns: u64, since: f64) -> NdjsonScan {
    let mut s = NdjsonScan::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            s.bad_lines += 1;
            continue;
        };
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind == "lost" {
            s.lost += v.get("count").and_then(|c| c.as_u64()).unwrap_or(0);
            continue;
        }
        if v.get("netns").and_then(|n| n.as_u64()) != Some(netns) {
            continue;
        }
        match kind {
            "enter" => s.enters += 1,
            "exit" => {
                s.exits += 1;
                let reason = v.get("reason").and_then(|r| r.as_str()).unwrap_or("?");
                *s.by_reason.entry(reason.to_string()).or_default() += 1;
                if let Some(t) = v
                    .get("time")
                    .and_then(|t| t.as_str())
                    .and_then(parse_rfc3339_utc)
                    .filter(|t| *t >= since)
                {
                    s.exits_since += 1;
                    s.exit_times.push(t);
                    s.first_exit = Some(s.first_exit.map_or(t, |f: f64| f.min(t)));
                    s.last_exit = Some(s.last_exit.map_or(t, |l: f64| l.max(t)));
                }
            }
            _ => {}
        }
    }
    s
}

impl NdjsonScan {
    /// Exits per second over the middle 98 % of the exits since `since` (a few stragglers at
    /// either end do not stretch a burst's duration).
    pub fn burst_rate(&self) -> Option<f64> {
        let mut t = self.exit_times.clone();
        if t.len() < 100 {
            return None;
        }
        t.sort_by(|a, b| a.total_cmp(b));
        let (lo, hi) = (t.len() / 100, t.len() - 1 - t.len() / 100);
        let span = t[hi] - t[lo];
        (span > 0.0).then(|| (hi - lo) as f64 / span)
    }
}

/// A plain text table with right-aligned numeric columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    let sep: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
    out.push_str(&line(sep.iter().map(|s| s.as_str()).collect()));
    for r in rows {
        out.push_str(&line(r.iter().map(|s| s.as_str()).collect()));
    }
    out
}

pub fn f0(x: f64) -> String {
    format!("{x:.0}")
}

pub fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_todays_twtrace() {
        let l = "twtrace: 43500 events shown; 21737 enter (12 from snapshot), 26 promote, \
                 21730 exit (21700 early, 30 expired); 5 lost";
        let s = parse_summary(l).unwrap();
        assert_eq!(s.get("events shown"), 43500);
        assert_eq!(s.get("enter"), 21737);
        assert_eq!(s.snapshot, 12);
        assert_eq!(s.get("promote"), 26);
        assert_eq!(s.get("exit"), 21730);
        assert_eq!(s.lost(), 5);
        assert_eq!(s.live_events(), 21737 + 21730 - 12);
    }

    #[test]
    fn summary_with_new_kinds_and_trailer() {
        let l = "twtrace: 9 events shown; 3 enter (0 from snapshot), 0 promote, 3 exit (), \
                 2 overflow, 1 connect_fail; 0 lost; 4 undecodable records";
        let s = parse_summary(l).unwrap();
        assert_eq!(s.get("overflow"), 2);
        assert_eq!(s.get("connect_fail"), 1);
        assert_eq!(s.get("undecodable records"), 4);
        assert_eq!(s.lost(), 0);
        assert!(parse_summary("twtrace: error: no such thing").is_none());
        let lines = vec!["hook x".to_string(), l.to_string()];
        assert_eq!(find_summary(&lines).unwrap().get("enter"), 3);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn lossless_is_below_the_first_loss() {
        assert_eq!(
            lossless_rate(&[(10.0, 0), (20.0, 0), (30.0, 7), (40.0, 0)]),
            (Some(20.0), true)
        );
        assert_eq!(lossless_rate(&[(10.0, 0), (20.0, 0)]), (Some(20.0), false));
        assert_eq!(lossless_rate(&[(10.0, 1)]), (None, true));
    }

    #[test]
    fn times() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:01.500000Z"), Some(1.5));
        let a = parse_rfc3339_utc("2026-11-25T23:59:59.000000Z").unwrap();
        let b = parse_rfc3339_utc("2026-11-26T00:00:00.250000Z").unwrap();
        assert!((b - a - 1.25).abs() < 1e-6);
        // 2024-02-29 is a leap day: 1709164800 is its midnight.
        assert_eq!(
            parse_rfc3339_utc("2024-02-29T00:00:00Z"),
            Some(1709164800.0)
        );
        assert_eq!(parse_rfc3339_utc("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_utc("yesterday"), None);
    }

    #[test]
    fn ndjson_counts_one_namespace() {
        let t = r#"{"time":"2026-01-01T00:00:01.000000Z","kind":"exit","netns":7,"reason":"purged"}
{"time":"2026-01-01T00:00:01.500000Z","kind":"exit","netns":7,"reason":"purged"}
{"time":"2026-01-01T00:00:09.000000Z","kind":"exit","netns":8,"reason":"expired"}
{"time":"2026-01-01T00:00:01.000000Z","kind":"enter","netns":7}
{"time":"2026-01-01T00:00:02.000000Z","kind":"lost","count":42}
garbage
"#;
        let s = scan_ndjson(t, 7, 0.0);
        assert_eq!(s.exits, 2);
        assert_eq!(s.enters, 1);
        assert_eq!(s.lost, 42);
        assert_eq!(s.bad_lines, 1);
        assert_eq!(s.by_reason.get("purged"), Some(&2));
        assert_eq!(s.last_exit.unwrap() - s.first_exit.unwrap(), 0.5);
        let late = scan_ndjson(
            t,
            7,
            parse_rfc3339_utc("2026-01-01T00:00:01.200000Z").unwrap(),
        );
        assert_eq!((late.exits, late.exits_since), (2, 1));
        assert_eq!(late.first_exit, late.last_exit);
        assert_eq!(late.burst_rate(), None);
        let many = NdjsonScan {
            exit_times: (0..1000).map(|i| i as f64 / 1000.0).chain([50.0]).collect(),
            ..Default::default()
        };
        let r = many.burst_rate().unwrap();
        assert!((r - 1000.0).abs() < 1.0, "{r}");
    }

    #[test]
    fn table_aligns() {
        let t = table(&["a", "num"], &[vec!["xx".into(), "1".into()]]);
        assert_eq!(t, "a   num\n--  ---\nxx    1\n");
    }
}
