//! `twtrace census`: the kernel's socket tables, once and exactly — the state table per network
//! namespace (TIME_WAIT split into its two substates), and the destinations the namespace's
//! TIME_WAIT sockets hold ports toward, with their port pressure. The blog's first command
//! (`netstat -ant | awk '{++S[$NF]} …'`), from one `iter/tcp` walk per namespace.

use crate::host::procs::Members;
use crate::kernel::snapshot::{NetnsCensus, NetnsSockets, SS_STATE_NAMES};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use twtrace_common::{census, TCP_FIN_WAIT2};

/// A destination that a namespace's client-side TIME_WAIT sockets hold ports toward.
#[derive(Clone, Debug, PartialEq)]
pub struct Dest {
    pub raddr: IpAddr,
    pub rport: u16,
    pub time_wait: u64,
    pub fin_wait2: u64,
    /// Ports in `ip_local_port_range` (connect() picks one per destination from these).
    pub ports: Option<u32>,
}

impl Dest {
    pub fn held(&self) -> u64 {
        self.time_wait + self.fin_wait2
    }

    /// Share of the destination's port pool held by TIME_WAIT sockets.
    pub fn pressure(&self) -> Option<f64> {
        self.ports
            .filter(|p| *p > 0)
            .map(|p| self.held() as f64 / p as f64)
    }
}

/// One namespace's census.
#[derive(Clone, Debug, PartialEq)]
pub struct NsCensus {
    pub netns: u64,
    pub members: Members,
    pub counts: [u64; census::SLOTS as usize],
    pub port_range: Option<(u16, u16)>,
    /// Destinations by TIME_WAIT sockets held toward them, most first (client side: the local
    /// port is in the ephemeral range).
    pub top: Vec<Dest>,
    /// TIME_WAIT sockets whose local port is not ephemeral (a server's side of closed
    /// connections: they hold no port that connect() needs).
    pub server_side: u64,
}

impl NsCensus {
    pub fn time_wait(&self) -> u64 {
        self.counts[twtrace_common::TCP_TIME_WAIT as usize]
    }

    pub fn tw_fin_wait2(&self) -> u64 {
        self.counts[census::TW_FIN_WAIT2 as usize]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Builds the census of each walked namespace. `ranges`: each namespace's
/// `ip_local_port_range` where known; `top`: destinations kept per namespace.
pub fn build(
    walked: &[NetnsSockets],
    members: &HashMap<u64, Members>,
    ranges: &HashMap<u64, (u16, u16)>,
    top: usize,
) -> Vec<NsCensus> {
    let mut out: Vec<NsCensus> = walked
        .iter()
        .map(|w| ns_census(w, members, ranges.get(&w.census.netns).copied(), top))
        .collect();
    out.sort_by_key(|c| c.netns);
    out
}

fn ns_census(
    w: &NetnsSockets,
    members: &HashMap<u64, Members>,
    range: Option<(u16, u16)>,
    top: usize,
) -> NsCensus {
    let NetnsCensus { netns, counts } = w.census;
    let ports = range.map(|(lo, hi)| (hi as u32 + 1).saturating_sub(lo as u32));
    let ephemeral = |p: u16| range.is_none_or(|(lo, hi)| (lo..=hi).contains(&p));
    let mut dests: HashMap<(IpAddr, u16), Dest> = HashMap::new();
    let mut server_side = 0;
    for r in &w.timewait {
        if !ephemeral(r.lport) {
            server_side += 1;
            continue;
        }
        let raddr = crate::pipeline::event::Sock::from_raw(
            0, r.netns, r.family, r.laddr, r.lport, r.raddr, r.rport,
        )
        .raddr;
        let d = dests.entry((raddr, r.rport)).or_insert(Dest {
            raddr,
            rport: r.rport,
            time_wait: 0,
            fin_wait2: 0,
            ports,
        });
        if r.substate == TCP_FIN_WAIT2 {
            d.fin_wait2 += 1;
        } else {
            d.time_wait += 1;
        }
    }
    let mut top_dests: Vec<Dest> = dests.into_values().collect();
    top_dests.sort_by(|a, b| {
        b.held()
            .cmp(&a.held())
            .then(a.raddr.cmp(&b.raddr))
            .then(a.rport.cmp(&b.rport))
    });
    top_dests.truncate(top);
    NsCensus {
        netns,
        members: members.get(&netns).cloned().unwrap_or_default(),
        counts,
        port_range: range,
        top: top_dests,
        server_side,
    }
}

/// The table's columns: `ss`'s state names, with TIME_WAIT's two substates in their place.
fn columns() -> Vec<(usize, &'static str)> {
    let mut cols = SS_STATE_NAMES.to_vec();
    let at = cols
        .iter()
        .position(|(slot, _)| *slot > 6)
        .unwrap_or(cols.len());
    cols.splice(
        at..at,
        [
            (6, "TIME-WAIT"),
            (census::TW_FIN_WAIT2 as usize, "TW-FIN-WAIT-2"),
        ],
    );
    cols
}

/// The census as text: the state table (columns where any namespace has sockets), then the
/// top destinations of each namespace that holds TIME_WAIT sockets.
pub fn render_text(rows: &[NsCensus]) -> String {
    let mut out = String::new();
    let cols: Vec<(usize, &str)> = columns()
        .into_iter()
        .filter(|(slot, _)| rows.iter().any(|r| r.counts[*slot] > 0))
        .collect();
    let wl = rows
        .iter()
        .map(|r| r.members.describe().chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 40);
    let _ = write!(out, "{:<10}  {:<wl$}", "NETNS", "WORKLOAD");
    for (_, name) in &cols {
        let _ = write!(out, "  {name:>w$}", w = name.len().max(5));
    }
    let _ = writeln!(out, "  {:>6}", "TOTAL");
    for r in rows {
        let wname: String = r.members.describe().chars().take(wl).collect();
        let _ = write!(out, "{:<10}  {wname:<wl$}", r.netns);
        for (slot, name) in &cols {
            let _ = write!(out, "  {:>w$}", r.counts[*slot], w = name.len().max(5));
        }
        let _ = writeln!(out, "  {:>6}", r.total());
    }
    let with_tw: Vec<&NsCensus> = rows.iter().filter(|r| !r.top.is_empty()).collect();
    if with_tw.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nTIME_WAIT sockets by destination (client side: local port in ip_local_port_range)"
    );
    let _ = writeln!(
        out,
        "{:<10}  {:<40}  {:>9}  {:>13}  {:>22}",
        "NETNS", "DESTINATION", "TIME-WAIT", "TW-FIN-WAIT-2", "PORTS HELD / PRESSURE"
    );
    for r in with_tw {
        for d in &r.top {
            let pressure = match (d.ports, d.pressure()) {
                (Some(p), Some(x)) => format!("{}/{p} {:.1}%", d.held(), x * 100.0),
                _ => format!("{}/?", d.held()),
            };
            let _ = writeln!(
                out,
                "{:<10}  {:<40}  {:>9}  {:>13}  {:>22}",
                r.netns,
                crate::pipeline::event::endpoint(&d.raddr, d.rport),
                d.time_wait,
                d.fin_wait2,
                pressure
            );
        }
        if r.server_side > 0 {
            let _ = writeln!(
                out,
                "{:<10}  {:<40}  {:>9}",
                r.netns, "(server side: non-ephemeral local port)", r.server_side
            );
        }
    }
    out
}

/// The census as one JSON object (one line: `--watch` prints NDJSON).
pub fn to_json(rows: &[NsCensus], ts_ns: u64) -> serde_json::Value {
    use serde_json::json;
    let ns: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let states: serde_json::Map<String, serde_json::Value> = (1..=12)
                .filter_map(|s| Some((NetnsCensus::slot_name(s)?, r.counts[s])))
                .filter(|(_, n)| *n > 0)
                .map(|(name, n)| (name.to_string(), json!(n)))
                .collect();
            json!({
                "netns": r.netns,
                "workload": {
                    "pid": r.members.first.as_ref().map(|f| f.0),
                    "comm": r.members.first.as_ref().map(|f| f.1.clone()),
                    "processes": r.members.processes,
                    "cgroup": r.members.cgroup,
                },
                "states": states,
                "time_wait": {"time_wait": r.time_wait(), "fin_wait2": r.tw_fin_wait2()},
                "ip_local_port_range": r.port_range.map(|(a, b)| vec![a, b]),
                "total": r.total(),
                "top": r.top.iter().map(|d| json!({
                    "raddr": d.raddr.to_string(),
                    "rport": d.rport,
                    "time_wait": d.time_wait,
                    "fin_wait2": d.fin_wait2,
                    "ports": d.ports,
                    "pressure": d.pressure(),
                })).collect::<Vec<_>>(),
                "server_side_time_wait": r.server_side,
            })
        })
        .collect();
    json!({"ts_ns": ts_ns, "namespaces": ns})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::blank;
    use twtrace_common::{kind, TCP_TIME_WAIT};

    fn tw(lport: u16, raddr: [u8; 4], rport: u16, sub: u8) -> twtrace_common::TwRecord {
        let mut r = blank(kind::SNAPSHOT);
        r.netns = 7;
        r.lport = lport;
        r.raddr[..4].copy_from_slice(&raddr);
        r.rport = rport;
        r.substate = sub;
        r
    }

    #[test]
    fn destinations_split_substates_and_skip_server_sides() {
        let mut counts = [0u64; census::SLOTS as usize];
        counts[1] = 2;
        counts[6] = 3;
        counts[census::TW_FIN_WAIT2 as usize] = 1;
        counts[10] = 1;
        let walked = NetnsSockets {
            census: NetnsCensus { netns: 7, counts },
            timewait: vec![
                tw(40000, [198, 18, 0, 2], 8080, TCP_TIME_WAIT),
                tw(40001, [198, 18, 0, 2], 8080, TCP_FIN_WAIT2),
                tw(40002, [198, 18, 0, 3], 80, TCP_TIME_WAIT),
                tw(8080, [198, 18, 0, 9], 40000, TCP_TIME_WAIT),
            ],
            path: "/proc/self/ns/net".into(),
        };
        let ranges = HashMap::from([(7, (40000, 40003))]);
        let rows = build(&[walked], &HashMap::new(), &ranges, 10);
        let r = &rows[0];
        assert_eq!((r.time_wait(), r.tw_fin_wait2(), r.total()), (3, 1, 7));
        assert_eq!(r.server_side, 1);
        assert_eq!(r.top.len(), 2);
        let d = &r.top[0];
        assert_eq!(
            (d.rport, d.time_wait, d.fin_wait2, d.ports),
            (8080, 1, 1, Some(4))
        );
        assert_eq!(d.pressure(), Some(0.5));
        let text = render_text(&rows);
        assert!(text.contains("TIME-WAIT"), "{text}");
        assert!(text.contains("TW-FIN-WAIT-2"), "{text}");
        assert!(text.contains("198.18.0.2:8080"), "{text}");
        assert!(text.contains("2/4 50.0%"), "{text}");
        assert!(
            !text.contains("SYN-SENT"),
            "empty columns are left out: {text}"
        );
        let j = to_json(&rows, 1);
        assert_eq!(j["namespaces"][0]["states"]["TIME_WAIT"], 3);
        assert_eq!(j["namespaces"][0]["time_wait"]["fin_wait2"], 1);
        assert_eq!(j["namespaces"][0]["top"][0]["pressure"], 0.5);
    }
}
