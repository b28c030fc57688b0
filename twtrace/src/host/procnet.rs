//! The `/proc/net` files and `/proc/sys/net` values twtrace reads, parsed in one place:
//! `ip_local_port_range`, the header/value line pairs of `/proc/net/netstat` and
//! `/proc/net/snmp`, and the `TCP:` line of `/proc/net/sockstat`.

use std::collections::BTreeMap;

/// `net.ipv4.ip_local_port_range` text ("32768\t60999") as an inclusive pair: exactly two
/// ports, the first not above the second.
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// The counters of `/proc/net/netstat` or `/proc/net/snmp` text (pairs of a header line and a
/// value line with the same `Group:` prefix) as `(group, name, value)`; pairs whose prefixes
/// differ and values that are not numbers are skipped.
pub fn counters(text: &str) -> impl Iterator<Item = (&str, &str, u64)> {
    let mut lines = text.lines();
    std::iter::from_fn(move || Some((lines.next()?, lines.next()?)))
        .filter_map(|(h, v)| {
            let ((hp, hk), (vp, vv)) = (h.split_once(':')?, v.split_once(':')?);
            (hp == vp).then_some((hp, hk, vv))
        })
        .flat_map(|(group, names, values)| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .filter_map(move |(k, v)| Some((group, k, v.parse::<u64>().ok()?)))
        })
}

/// Finds `group`'s counter `name` in `/proc/net/netstat` (or `/proc/net/snmp`) text.
pub fn parse_netstat(text: &str, group: &str, name: &str) -> Option<u64> {
    counters(text).find_map(|(g, n, v)| (g == group && n == name).then_some(v))
}

/// Every counter of `/proc/net/netstat` (or `/proc/net/snmp`) text into `out`, keyed
/// `"TcpExt:TW"`.
pub fn parse_counters(text: &str, out: &mut BTreeMap<String, u64>) {
    for (g, n, v) in counters(text) {
        out.insert(format!("{g}:{n}"), v);
    }
}

/// The timewait sockets alive (`/proc/net/sockstat`, "TCP: … tw N").
pub fn parse_sockstat_tw(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(k) = it.next() {
        if k == "tw" {
            return it.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("5 5"), Some((5, 5)));
        assert_eq!(parse_port_range("6 5"), None);
        assert_eq!(parse_port_range("x"), None);
        assert_eq!(parse_port_range("x 2"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range("70000 70001"), None);
    }

    #[test]
    fn netstat_counters() {
        let t =
            "TcpExt: SyncookiesSent TW TCPTimeWaitOverflow\nTcpExt: 0 12 45\nIpExt: A\nIpExt: 1\n";
        assert_eq!(parse_netstat(t, "TcpExt", "TCPTimeWaitOverflow"), Some(45));
        assert_eq!(parse_netstat(t, "TcpExt", "TW"), Some(12));
        assert_eq!(parse_netstat(t, "TcpExt", "Nope"), None);
        assert_eq!(parse_netstat(t, "Nope", "TW"), None);
        assert_eq!(parse_netstat(t, "IpExt", "A"), Some(1));
    }

    #[test]
    fn counters_parse_pairs_and_skip_garbage() {
        let text = "TcpExt: SyncookiesSent TW TWRecycled\nTcpExt: 0 12 3\n\
                    IpExt: InOctets\nIpExt: 99\nBroken line\n";
        let mut m = BTreeMap::new();
        parse_counters(text, &mut m);
        assert_eq!(m.get("TcpExt:TW"), Some(&12));
        assert_eq!(m.get("TcpExt:TWRecycled"), Some(&3));
        assert_eq!(m.get("IpExt:InOctets"), Some(&99));
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn sockstat_tw() {
        let s = "sockets: used 5\nTCP: inuse 1 orphan 0 tw 100123 alloc 3 mem 0\nUDP: inuse 0\n";
        assert_eq!(parse_sockstat_tw(s), Some(100123));
        assert_eq!(parse_sockstat_tw("TCP: inuse 1\n"), None);
    }
}
