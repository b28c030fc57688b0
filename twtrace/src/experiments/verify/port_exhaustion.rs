//! Claim 7: port exhaustion.

use super::clients::SERVICE_PORT;
use super::evidence::count;
use super::{fmt_s, Claim, ClaimId, Interrupted, Verdict, Watch, TIMEWAIT_MS};
use crate::experiments::workload::{serve, FirstCloser};
use crate::host::netns::NetNs;
use crate::kernel::reuse_rule::{predicted_successes, ReuseRule};
use crate::pipeline::event::{Body, ExitReason};
use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
struct Exhaustion {
    ok: usize,
    failed: usize,
    other_errors: usize,
    first_failure: Option<usize>,
    refusals: BTreeMap<&'static str, usize>,
    /// TIME_WAIT sockets of the run that died early (`rst` or `unknown` exits) before its last
    /// attempt: each freed its port for a later connect(). Loopback sometimes resets one at
    /// birth (a reordered ACK draws an RST), so this is measured, not assumed zero.
    reset_early: usize,
}

/// `reuse`: `None` runs with `tcp_tw_reuse=0`; `Some(rule)` with 1, and the rule's delay where
/// the kernel has `tcp_tw_reuse_delay`.
fn exhaust(
    w: &Watch,
    reuse: Option<ReuseRule>,
    ports: u16,
    rate: u64,
    attempts: usize,
) -> Result<Exhaustion> {
    let ns = w.netns()?;
    match reuse {
        Some(rule) => {
            ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
            if let ReuseRule::Delay(d) = rule {
                ns.sysctl("net.ipv4.tcp_tw_reuse_delay", &d.to_string())?;
            }
        }
        None => ns.sysctl("net.ipv4.tcp_tw_reuse", "0")?,
    }
    ns.sysctl(
        "net.ipv4.ip_local_port_range",
        &format!("40000 {}", 40000 + ports - 1),
    )?;
    let dst = SocketAddr::from(([127, 0, 0, 1], SERVICE_PORT));
    let server = serve(&ns, dst, FirstCloser::Client, Duration::ZERO)?;
    let cancel = w.cancel_flag();
    let outcomes = ns.run(move || -> Result<(Vec<Option<i32>>, u64)> {
        let t0 = Instant::now();
        let mut out = Vec::with_capacity(attempts);
        for k in 0..attempts {
            if cancel.load(Ordering::Relaxed) {
                return Err(Interrupted.into());
            }
            let at = t0 + Duration::from_millis(k as u64 * 1000 / rate);
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            match TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
                Ok(s) => {
                    drop(s);
                    out.push(None);
                }
                Err(e) => out.push(Some(e.raw_os_error().unwrap_or(0))),
            }
        }
        Ok((out, crate::kernel::sysinfo::monotonic_ns()))
    })??;
    let (outcomes, last_attempt_ns) = outcomes;
    let failed = outcomes
        .iter()
        .filter(|o| **o == Some(libc::EADDRNOTAVAIL))
        .count();
    let ev = w.wait_for(&[&ns], Duration::from_secs(3), |ev| {
        count(ev, |b| matches!(b, Body::ConnectFail { .. })) >= failed
    })?;
    drop(server);
    let mut r = Exhaustion {
        ok: outcomes.iter().filter(|o| o.is_none()).count(),
        failed,
        other_errors: outcomes.len() - failed - outcomes.iter().filter(|o| o.is_none()).count(),
        first_failure: outcomes.iter().position(|o| o.is_some()),
        ..Default::default()
    };
    for e in &ev {
        match &e.body {
            Body::ConnectFail { refusal, .. } => {
                *r.refusals.entry(refusal.as_str()).or_default() += 1;
            }
            Body::Exit {
                reason: ExitReason::Rst | ExitReason::Unknown,
                ..
            } if e.ts_ns < last_attempt_ns => r.reset_early += 1,
            _ => {}
        }
    }
    Ok(r)
}

// 20 ports at 10/s: without reuse 20 connect and 10 fail; with reuse a port is back within
// 0.5 s (tcp_tw_reuse_delay) or at the next second boundary (the fixed rule before 6.13), at
// most 11 ports are held at once either way, and all 30 connect.
const PORTS: u16 = 20;
const RATE: u64 = 10;
const ATTEMPTS: usize = 30;
const REUSE_DELAY_MS: u64 = 500;

pub(super) fn port_exhaustion(w: &Watch) -> Result<Claim> {
    let default_range = {
        let ns = NetNs::new()?;
        crate::host::procnet::parse_port_range(&ns.read_sysctl("net.ipv4.ip_local_port_range")?)
    };
    let rule = match w.features().reuse_rule {
        ReuseRule::Delay(_) => ReuseRule::Delay(REUSE_DELAY_MS),
        r => r,
    };
    let (plain, reused) = std::thread::scope(|s| {
        let a = s.spawn(|| exhaust(w, None, PORTS, RATE, ATTEMPTS));
        let b = s.spawn(|| exhaust(w, Some(rule), PORTS, RATE, ATTEMPTS));
        (
            a.join()
                .unwrap_or_else(|_| Err(anyhow!("workload panicked"))),
            b.join()
                .unwrap_or_else(|_| Err(anyhow!("workload panicked"))),
        )
    });
    let f = Figures::of(plain?, reused?, rule, default_range);
    let hold = rule.max_hold_ms();
    Ok(Claim {
        id: ClaimId::PortExhaustion,
        verdict: if f.plain_ok {
            Verdict::Confirmed
        } else {
            Verdict::Refuted
        },
        seed: ClaimId::PortExhaustion.seed().into(),
        measured: json!({
            "n": ATTEMPTS,
            "ports": PORTS,
            "rate_per_s": RATE,
            "no_reuse": side(&f.plain, f.pred_plain, f.pred_plain),
            "tw_reuse": {
                "rule": rule.as_str(),
                "tcp_tw_reuse_delay_ms": match rule {
                    ReuseRule::Delay(d) => Some(d),
                    ReuseRule::NextSecond => None,
                },
                "max_hold_ms": hold,
                "result": side(&f.reused, f.reuse_lo, f.reuse_hi),
            },
            "default_port_range": default_range.map(|(a, b)| [a, b]),
            "default_sustainable_per_s": f.default_ports.map(|d| d * 1000 / TIMEWAIT_MS),
        }),
        observed: f.observed(),
        explanation: f.explanation(),
    })
}

/// One side's figures for the JSON, with the prediction (`lo`..=`hi` connected).
fn side(e: &Exhaustion, lo: u64, hi: u64) -> Value {
    json!({
        "connected": e.ok,
        "eaddrnotavail": e.failed,
        "other_errors": e.other_errors,
        "first_failure_attempt": e.first_failure.map(|i| i + 1),
        "predicted_connected": lo,
        "predicted_connected_max": hi,
        "tracer_refusals": e.refusals,
        "timewait_reset_early": e.reset_early,
    })
}

/// Both runs against the arithmetic.
struct Figures {
    plain: Exhaustion,
    reused: Exhaustion,
    rule: ReuseRule,
    pred_plain: u64,
    reuse_lo: u64,
    reuse_hi: u64,
    plain_ok: bool,
    reuse_ok: bool,
    default_ports: Option<u64>,
}

impl Figures {
    fn of(
        plain: Exhaustion,
        reused: Exhaustion,
        rule: ReuseRule,
        default_range: Option<(u16, u16)>,
    ) -> Figures {
        let n = ATTEMPTS as u64;
        let p = PORTS as u64;
        // Every TIME_WAIT socket reset before its time gave its port back once.
        let pred_plain =
            (predicted_successes(p, n, RATE, TIMEWAIT_MS) + plain.reset_early as u64).min(n);
        let (reuse_lo, reuse_hi) = rule.predicted_range(p, n, RATE);
        let plain_ok = plain.ok as u64 == pred_plain
            && plain.failed as u64 == n - pred_plain
            && plain.other_errors == 0;
        let reuse_ok =
            (reuse_lo..=reuse_hi).contains(&(reused.ok as u64)) && reused.other_errors == 0;
        Figures {
            plain,
            reused,
            rule,
            pred_plain,
            reuse_lo,
            reuse_hi,
            plain_ok,
            reuse_ok,
            default_ports: default_range.map(|(a, b)| b as u64 + 1 - a as u64),
        }
    }

    fn observed(&self) -> String {
        let n = ATTEMPTS as u64;
        let (plain, reused, pred_plain) = (&self.plain, &self.reused, self.pred_plain);
        let range_text = |lo: u64, hi: u64| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}–{hi}")
            }
        };
        let reuse_how = match self.rule {
            ReuseRule::Delay(d) => format!("delay {d} ms"),
            ReuseRule::NextSecond => "this kernel's fixed rule: the next second".to_string(),
        };
        format!(
            "{PORTS} ports, {RATE} conn/s × {ATTEMPTS}: {} connected, {} EADDRNOTAVAIL from \
             attempt #{} (predicted {pred_plain} / {}); with tw_reuse ({reuse_how}): {} \
             connected, {} failed (predicted {} / {})",
            plain.ok,
            plain.failed,
            plain.first_failure.map(|i| i + 1).unwrap_or(0),
            n - pred_plain,
            reused.ok,
            reused.failed,
            range_text(self.reuse_lo, self.reuse_hi),
            range_text(n - self.reuse_hi, n - self.reuse_lo)
        ) + &match plain.reset_early {
            0 => String::new(),
            k => format!(" ({k} TIME_WAIT reset early gave its port back)"),
        }
    }

    fn explanation(&self) -> String {
        let p = PORTS as u64;
        let hold = self.rule.max_hold_ms();
        format!(
            "{}; a port is held 60 s by TIME_WAIT, so {RATE}/s × 60 s = {} > {PORTS} ports runs \
             out after {PORTS} connections{}; {}",
            if self.plain_ok {
                "connect() failed exactly as the arithmetic predicts"
            } else {
                "connect() did not fail as the arithmetic predicts"
            },
            RATE * 60,
            self.default_ports
                .map(|d| format!(
                    " (the default {d} ports sustain {} conn/s)",
                    d * 1000 / TIMEWAIT_MS
                ))
                .unwrap_or_default(),
            match (self.reuse_ok, self.rule) {
                (true, ReuseRule::Delay(_)) => format!(
                    "tcp_tw_reuse shortens the hold to tcp_tw_reuse_delay, raising the limit to \
                     {PORTS} ports / {} = {} conn/s",
                    fmt_s(hold),
                    p * 1000 / hold
                ),
                (true, ReuseRule::NextSecond) => format!(
                    "tcp_tw_reuse shortens the hold to the next second boundary after the last \
                     timestamp (this kernel has no tcp_tw_reuse_delay), at most 1 s, raising \
                     the limit to at least {PORTS} ports / 1 s = {} conn/s",
                    p * 1000 / hold
                ),
                (false, _) => "tcp_tw_reuse did not change it as predicted".to_string(),
            }
        )
    }
}
