//! The findings (one-line answers) and the text report.

use super::{Attempt, KernelSupport, NatReport, Offsets, PhaseReport, PORT_SERVER_FIRST, SERVER};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A counter's delta over phase `p` in namespace `ns`; `None` where the kernel lacks it.
pub fn counter(p: &PhaseReport, ns: &str, name: &str) -> Option<u64> {
    p.counters
        .get(ns)
        .and_then(|m| m.get(name))
        .copied()
        .flatten()
}

/// A counter delta for text: the number, or "n/a" where the kernel lacks the counter.
pub(super) fn shown(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into())
}

pub(super) fn shown_usize(v: Option<usize>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into())
}

pub(super) fn findings(
    phases: &[PhaseReport],
    offsets: &Offsets,
    kernel: &KernelSupport,
    lost: u64,
) -> Vec<String> {
    let mut out = Vec::new();
    for p in phases {
        let where_tw: Vec<String> = p.timewait.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push(format!(
            "{}: TIME_WAIT sockets were born on {}",
            p.name,
            where_tw.join(", ")
        ));
        if p.first_closer == "clients" {
            client_findings(p, &mut out);
        } else {
            server_findings(p, kernel, &mut out);
        }
    }
    out.push(format!(
        "timestamps: {} connections over {} 4-tuples showed {} distinct TCP timestamp offsets: \
         one random offset per 4-tuple, so a client behind NAT presents no single clock and a \
         server TIME_WAIT on a reused translated tuple sees older timestamps at random",
        offsets.connections, offsets.tuples, offsets.distinct
    ));
    out.push(format!(
        "kernel: connect() reuses by {}",
        kernel.reuse_rule_text
    ));
    if !kernel.counters_unavailable.is_empty() {
        out.push(format!(
            "kernel: not available on this kernel: {} (shown as n/a)",
            kernel.counters_unavailable.join(", ")
        ));
    }
    if lost > 0 {
        out.push(format!(
            "{lost} events were lost by the kernel: counts may be low"
        ));
    }
    out
}

/// Clients close first: what each client's `tcp_tw_reuse` did with its TIME_WAIT sockets.
fn client_findings(p: &PhaseReport, out: &mut Vec<String>) {
    for (c, s) in &p.clients {
        let ages = s
            .reuse_age_ms
            .map(|a| format!(" at ages {}", a.ms()))
            .unwrap_or_default();
        let early = if s.reused > 0 {
            format!(
                ", {} of them earlier than this kernel's reuse rule allows",
                s.reuse_early
            )
        } else {
            String::new()
        };
        out.push(format!(
            "{}: {c} (tcp_tw_reuse={}) took over {} of its TIME_WAIT sockets behind the \
             NAT{ages} (TWRecycled +{}){early}; {} of {} connects failed{}",
            p.name,
            s.tcp_tw_reuse,
            s.reused,
            shown(counter(p, c, "TWRecycled")),
            s.failed,
            s.attempts,
            refusal_text(&s.refusals)
        ));
    }
}

/// Server closes first: the fates of SYNs that met a server TIME_WAIT socket.
fn server_findings(p: &PhaseReport, kernel: &KernelSupport, out: &mut Vec<String>) {
    let met = p.attempts.iter().filter(|a| !a.met.is_empty()).count();
    // PAWS drops: per packet where the kernel reports them; otherwise only the counters
    // speak, and a missing event proves nothing.
    let paws_text = match (p.paws_rejected, &kernel.paws_events_unavailable) {
        (Some(n), _) => format!(
            "{n} dropped by PAWS (paws_reject events; server PAWSTimewait +{})",
            shown(counter(p, "server", "PAWSTimewait"))
        ),
        (None, why) => format!(
            "PAWS drops not reported per packet ({}; server {})",
            why.as_deref().unwrap_or("not available on this kernel"),
            match counter(p, "server", "PAWSTimewait") {
                Some(n) => format!("PAWSTimewait +{n}"),
                None => format!(
                    "PAWSEstab +{}: without PAWSTimewait this kernel counts a TIME_WAIT \
                     socket's PAWS drops there, with established sockets' ones",
                    shown(counter(p, "server", "PAWSEstab"))
                ),
            }
        ),
    };
    let other = match (p.other_killed, &kernel.rst_reason_unavailable) {
        (0, _) => String::new(),
        (n, Some(why)) => format!(", {n} ended with exit reason unknown ({why})"),
        (n, None) => format!(", {n} ended for a reason the tracer could not tell (unknown)"),
    };
    out.push(format!(
        "{}: {met} of {} connections' SYNs met a server TIME_WAIT socket on the same \
         translated 4-tuple ({} meetings): {} accepted as a new incarnation (syn exits), \
         {paws_text}, {} of those TIME_WAIT sockets then killed by RST (the client's answer \
         to the old connection's ACK; client OutRsts +{}){other}, {} connects failed",
        p.name,
        p.attempts.len(),
        p.outcomes.iter().map(|o| o.n).sum::<usize>(),
        p.syn_accepted,
        p.rst_killed,
        counter(p, "c1", "OutRsts").unwrap_or(0) + counter(p, "c2", "OutRsts").unwrap_or(0),
        p.outcomes.iter().map(|o| o.connect_failed).sum::<usize>()
    ));
    for o in &p.outcomes {
        out.push(format!(
            "{}: SYN timestamp {} than the TIME_WAIT's last: n={} → {} accepted, {} PAWS \
             drops, {} RST kills{}, {} failed; connect {}",
            p.name,
            o.timestamp,
            o.n,
            o.accepted,
            shown_usize(o.paws_rejected),
            o.rst_killed,
            if o.other_killed > 0 {
                format!(", {} unknown kills", o.other_killed)
            } else {
                String::new()
            },
            o.connect_failed,
            o.connect_ms.map(|s| s.ms()).unwrap_or("-".into())
        ));
    }
}

pub(super) fn refusal_text(r: &BTreeMap<&'static str, usize>) -> String {
    if r.is_empty() {
        return String::new();
    }
    format!(
        " (refused: {})",
        r.iter()
            .map(|(k, v)| format!("{v}× {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The human report.
pub fn render_nat(r: &NatReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "NAT lab: c1 198.18.1.2, c2 198.18.2.2 → router ({} masquerade; to server port \
         {PORT_SERVER_FIRST} translated into {}-{}) → server {SERVER}",
        r.nat_tool, r.nat_ports[0], r.nat_ports[1]
    );
    let _ = writeln!(
        s,
        "kernel: reuse rule {}; paws_reject events {}{}",
        r.kernel.reuse_rule,
        match &r.kernel.paws_events_unavailable {
            None => "available".to_string(),
            Some(why) => format!("not available ({why})"),
        },
        if r.kernel.counters_unavailable.is_empty() {
            String::new()
        } else {
            format!(
                "; counters not available on this kernel: {}",
                r.kernel.counters_unavailable.join(", ")
            )
        }
    );
    for p in &r.phases {
        render_phase(&mut s, p);
    }
    let _ = writeln!(s, "\nFindings:");
    for f in &r.findings {
        let _ = writeln!(s, "  - {f}");
    }
    s
}

/// One phase of the human report.
fn render_phase(s: &mut String, p: &PhaseReport) {
    let _ = writeln!(s, "\n== {} ({} → {}) ==", p.name, p.first_closer, p.server);
    let _ = writeln!(
        s,
        "  TIME_WAIT born: {}",
        p.timewait
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (c, cs) in &p.clients {
        let _ = writeln!(
            s,
            "  {c} (tcp_tw_reuse={}): {} attempts, {} connected ({} after ≥0.9 s), {} \
             failed; connect {}; took over {} TIME_WAIT{}{}",
            cs.tcp_tw_reuse,
            cs.attempts,
            cs.connected,
            cs.slow,
            cs.failed,
            cs.connect_ms.map(|x| x.ms()).unwrap_or("-".into()),
            cs.reused,
            cs.reuse_age_ms
                .map(|a| format!(" (ages {}, {} early)", a.ms(), cs.reuse_early))
                .unwrap_or_default(),
            refusal_text(&cs.refusals)
        );
    }
    if p.first_closer == "server" {
        let _ = writeln!(
            s,
            "  SYNs meeting a server TIME_WAIT: {} accepted (syn), {} PAWS drops, {} RST \
             kills, {} unknown kills",
            p.syn_accepted,
            shown_usize(p.paws_rejected),
            p.rst_killed,
            p.other_killed
        );
        for o in &p.outcomes {
            let _ = writeln!(
                s,
                "    timestamp {:<7} n={} accepted={} paws={} rst={} unknown={} failed={} \
                 connect {}",
                o.timestamp,
                o.n,
                o.accepted,
                shown_usize(o.paws_rejected),
                o.rst_killed,
                o.other_killed,
                o.connect_failed,
                o.connect_ms.map(|x| x.ms()).unwrap_or("-".into())
            );
        }
    }
    let _ = writeln!(
        s,
        "  kernel counters (delta; n/a: not available on this kernel):"
    );
    for (n, m) in &p.counters {
        let _ = writeln!(
            s,
            "    {n:<7} {}",
            m.iter()
                .map(|(k, v)| format!("{k}={}", shown(*v)))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let _ = writeln!(s, "  attempts:");
    for a in &p.attempts {
        render_attempt(s, a);
    }
}

/// One attempt's line, with the server TIME_WAIT sockets its SYNs met.
fn render_attempt(s: &mut String, a: &Attempt) {
    let met: String = a
        .met
        .iter()
        .map(|m| {
            format!(
                "; met TIME_WAIT :{} left by {} (timestamp {}): syn={} paws={} rst={} \
                 unknown={}",
                m.port,
                m.previous,
                m.timestamp,
                m.accepted,
                shown_usize(m.paws_rejected),
                m.rst_killed,
                m.other_killed
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "    {} {:<18} → :{:<5} {} {} ms{}{}",
        a.client,
        a.local.map(|l| l.to_string()).unwrap_or("-".into()),
        a.nat_port.map(|p| p.to_string()).unwrap_or("-".into()),
        match a.errno {
            None => "ok".to_string(),
            Some(e) => std::io::Error::from_raw_os_error(e).to_string(),
        },
        a.connect_ms,
        if a.addrnotavail_retries > 0 {
            format!(" after {} EADDRNOTAVAIL", a.addrnotavail_retries)
        } else {
            String::new()
        },
        met
    );
}
