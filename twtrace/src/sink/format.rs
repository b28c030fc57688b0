//! How values read as text, for every sink and front end: durations, counts, rates, shares,
//! endpoints, errno names and timestamps. One implementation of each.

use std::net::IpAddr;

pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => "E?",
    }
}

/// `addr:port`, `[addr]:port` for IPv6.
pub fn endpoint(a: &IpAddr, port: u16) -> String {
    let mut s = String::with_capacity(21);
    push_endpoint(&mut s, a, port);
    s
}

/// [`endpoint`] appended to `out`.
pub fn push_endpoint(out: &mut String, a: &IpAddr, port: u16) {
    let v6 = a.is_ipv6();
    if v6 {
        out.push('[');
    }
    push_ip(out, a);
    out.push_str(if v6 { "]:" } else { ":" });
    push_int(out, port);
}

/// Seconds with millisecond precision: `61.992s`.
pub fn secs(ms: u64) -> String {
    let mut s = String::with_capacity(8);
    push_secs(&mut s, ms);
    s
}

/// [`secs`] appended to `out`.
pub fn push_secs(out: &mut String, ms: u64) {
    push_int(out, ms / 1000);
    let frac = (ms % 1000) as u16;
    out.push('.');
    for d in [frac / 100, frac / 10 % 10, frac % 10] {
        out.push(char::from(b'0' + d as u8));
    }
    out.push('s');
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-25T09:10:11.123456Z`; empty past the year
/// 9999, which humantime refuses (a damaged trace file's clock), rather than a panic.
pub fn rfc3339_micros(wall_ns: i128) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(27);
    let _ = write!(s, "{}", rfc3339_micros_fmt(wall_ns));
    s
}

/// [`rfc3339_micros`] appended to `out`, the hot path of `--json`: humantime formats the
/// date and time once per second of wall clock (cached per thread), the microseconds are
/// written here. The same bytes as [`rfc3339_micros`] (unit-tested against it).
pub fn push_rfc3339_micros(out: &mut String, wall_ns: i128) {
    use std::cell::Cell;
    thread_local! {
        /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS`.
        static SECOND: Cell<(i128, [u8; 19])> = const { Cell::new((-1, [0; 19])) };
    }
    let ns = wall_ns.max(0); // humantime's epoch for times before it, as rfc3339_micros_fmt
    let sec = ns / 1_000_000_000;
    let prefix = SECOND.with(|c| {
        let (cached, p) = c.get();
        if cached == sec {
            return Some(p);
        }
        let full = rfc3339_micros(ns);
        // `…SS.uuuuuuZ`: years 0000–9999 (humantime's range) always have this shape.
        let b = full.as_bytes();
        (b.len() == 27 && b[19] == b'.' && b[26] == b'Z').then(|| {
            let mut p = [0u8; 19];
            p.copy_from_slice(&b[..19]);
            c.set((sec, p));
            p
        })
    });
    let Some(prefix) = prefix else {
        out.push_str(&rfc3339_micros(ns));
        return;
    };
    // ASCII digits and punctuation, copied from humantime's output.
    out.push_str(std::str::from_utf8(&prefix).unwrap_or("1970-01-01T00:00:00"));
    let micros = ((ns % 1_000_000_000) / 1_000) as u32;
    let mut frac = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut m = micros;
    for d in frac[1..7].iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.push_str(std::str::from_utf8(&frac).unwrap_or(".000000Z"));
}

/// An integer appended to `out` (itoa: no `fmt` machinery, no padding support to skip).
/// The digits are pushed one by one: for 1–20 bytes a `push_str` is a libc `memcpy` call,
/// and those calls were ~6 % of `--json`'s CPU in a profile.
pub fn push_int(out: &mut String, v: impl itoa::Integer) {
    for b in itoa::Buffer::new().format(v).bytes() {
        out.push(char::from(b));
    }
}

/// An address as `Display` writes it; IPv4 (the common case) without `fmt`, whose
/// `Ipv4Addr` formatting goes through a padded buffer per address.
pub fn push_ip(out: &mut String, ip: &IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            let [a, b, c, d] = a.octets();
            push_int(out, a);
            out.push('.');
            push_int(out, b);
            out.push('.');
            push_int(out, c);
            out.push('.');
            push_int(out, d);
        }
        IpAddr::V6(a) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{a}");
        }
    }
}

/// [`rfc3339_micros`] without the `String`: for writing into a buffer.
pub fn rfc3339_micros_fmt(wall_ns: i128) -> humantime::Rfc3339Timestamp {
    use std::time::{Duration, UNIX_EPOCH};
    // Past humantime's last second (year 9999) it writes nothing; a time too far for
    // `SystemTime` is such a time too.
    const BEYOND: Duration = Duration::from_secs(253_402_300_800);
    let t = if wall_ns >= 0 {
        let secs = u64::try_from(wall_ns / 1_000_000_000).unwrap_or(u64::MAX);
        let d = Duration::new(secs.min(BEYOND.as_secs()), (wall_ns % 1_000_000_000) as u32);
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH
    };
    humantime::format_rfc3339_micros(t)
}

/// A duration for a narrow cell: `45s`, `12m30s`, `3h05m`, `>99d`.
pub fn short_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ if s < 100 * 86_400 => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
        _ => ">99d".into(),
    }
}

/// `61.2s`, `850ms`, `12m05s`.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 100_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        short_duration(ms as f64 / 1000.0)
    }
}

pub fn fmt_opt_ms(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), fmt_ms)
}

/// `999`, `12.3k`, `4.5M`.
pub fn fmt_count(n: u64) -> String {
    if n < 10_000 {
        n.to_string()
    } else if n < 1_000_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else if n < 1_000_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else {
        format!("{:.1}G", n as f64 / 1e9)
    }
}

/// `0`, `0.3`, `12.5`, `1.2k`.
pub fn fmt_rate(r: f64) -> String {
    if !r.is_finite() || r <= 0.0 {
        "0".into()
    } else if r < 100.0 {
        format!("{r:.1}")
    } else if r < 10_000.0 {
        format!("{r:.0}")
    } else {
        format!("{:.1}k", r / 1e3)
    }
}

pub fn fmt_pct(p: Option<f64>) -> String {
    match p {
        None => "?".into(),
        Some(p) if p >= 10.0 => ">999%".into(),
        Some(p) if p < 0.1 => format!("{:.1}%", p * 100.0),
        Some(p) => format!("{:.0}%", p * 100.0),
    }
}

/// Cuts `s` to `w` characters, with `…` in the middle when cut (addresses keep both ends).
pub fn fit(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    if w <= 1 {
        return "…".chars().take(w).collect();
    }
    let head = (w - 1) / 2;
    let tail = w - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// A horizontal bar for `n` out of `max` over `width` cells, drawn in eighths of a cell (at
/// least one eighth when `n > 0`); not padded.
pub fn bar(n: u64, max: u64, width: usize) -> String {
    let eighths = if max == 0 {
        0
    } else {
        ((n as f64 / max as f64) * (width * 8) as f64).round() as usize
    };
    let eighths = if n > 0 { eighths.max(1) } else { 0 };
    let mut bar = "█".repeat(eighths / 8);
    if eighths % 8 > 0 {
        bar.push(['▏', '▎', '▍', '▌', '▋', '▊', '▉'][eighths % 8 - 1]);
    }
    bar
}

/// The WORKLOAD column: the workload's short form (see
/// [`crate::host::workload::Workload::short`]), `-` when the kernel named no cgroup.
pub fn workload(e: &crate::pipeline::event::Event) -> &dyn std::fmt::Display {
    match &e.workload {
        Some(w) => w.as_ref(),
        None => &"-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_time_is_the_same_text() {
        // Within one second, across boundaries, far apart, before the epoch, at and past
        // humantime's last second (empty, never a panic), and back again.
        let base: i128 = 1_764_000_000_123_456_789;
        let mut times = vec![
            0,
            -5,
            999,
            1_000,
            base,
            base + 1,
            base + 876_000_000,
            base + 877_000_000,
            base + 1_000_000_000,
            base - 1,
            253_402_300_799_999_999_999,
            253_402_300_800_000_000_000,
            i128::MAX,
            base,
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            times.push(base + (x % 3_000_000_000_000) as i128);
        }
        for t in times {
            let mut fast = String::from("x");
            push_rfc3339_micros(&mut fast, t);
            assert_eq!(fast, format!("x{}", rfc3339_micros(t)), "{t}");
        }
        assert_eq!(rfc3339_micros(i128::MAX), "");
    }

    #[test]
    fn fast_addresses_and_integers_are_the_same_text() {
        let ips: [IpAddr; 5] = [
            "0.0.0.0".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            "198.18.255.10".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ];
        for ip in ips {
            let mut s = String::new();
            push_ip(&mut s, &ip);
            assert_eq!(s, ip.to_string());
        }
        let mut s = String::new();
        push_int(&mut s, u64::MAX);
        push_int(&mut s, -7i32);
        push_int(&mut s, 0u16);
        assert_eq!(s, format!("{}-70", u64::MAX));
    }

    #[test]
    fn durations() {
        assert_eq!(secs(5), "0.005s");
        assert_eq!(secs(61_992), "61.992s");
        assert_eq!(short_duration(0.4), "0s");
        assert_eq!(short_duration(59.4), "59s");
        assert_eq!(short_duration(750.0), "12m30s");
        assert_eq!(short_duration(3.0 * 3600.0 + 300.0), "3h05m");
        assert_eq!(short_duration(2.0 * 86400.0), "2d00h");
        assert_eq!(short_duration(1e12), ">99d");
        assert_eq!(short_duration(f64::NAN), "?");
        assert_eq!(fmt_ms(61_992), "62.0s");
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(750_000), "12m30s");
        assert_eq!(fmt_opt_ms(None), "-");
    }

    #[test]
    fn counts_rates_and_shares() {
        assert_eq!(fmt_count(12_345), "12.3k");
        assert_eq!(fmt_rate(0.31), "0.3");
        assert_eq!(fmt_pct(Some(0.5)), "50%");
        assert_eq!(fmt_pct(Some(0.0001)), "0.0%");
    }

    #[test]
    fn bars_in_eighths() {
        assert_eq!(bar(10, 10, 2), "██");
        assert_eq!(bar(5, 10, 3), "█▌");
        assert_eq!(bar(1, 1000, 2), "▏");
        assert_eq!(bar(0, 10, 5), "");
        assert_eq!(bar(3, 0, 5), "▏");
    }

    #[test]
    fn fit_keeps_both_ends() {
        assert_eq!(fit("abcdef", 6), "abcdef");
        assert_eq!(fit("abcdefgh", 5), "ab…gh");
        assert_eq!(fit("abc", 0), "");
    }
}
