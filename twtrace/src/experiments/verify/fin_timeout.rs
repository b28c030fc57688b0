//! Claim 2: `tcp_fin_timeout` and the FIN_WAIT2 substate.

use super::clients::{connect_close, Close};
use super::evidence::{expired_in, lives, Life};
use super::{fmt_s, spread_json, Claim, ClaimId, Spread, Verdict, Watch, Wheel, TIMEWAIT_MS};
use crate::experiments::workload::{serve, FirstCloser};
use crate::pipeline::event::{Event, Substate};
use anyhow::Result;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const FIN_TIMEOUT_S: u64 = 3;
const N: usize = 3;

pub(super) fn fin_timeout(w: &Watch, wheel: Wheel) -> Result<Claim> {
    let ns = w.netns()?;
    ns.sysctl("net.ipv4.tcp_fin_timeout", &FIN_TIMEOUT_S.to_string())?;
    // Closes its end at once: the client's timewait socket goes to TIME_WAIT.
    let tw_server = serve(
        &ns,
        "127.0.0.1:0".parse()?,
        FirstCloser::Client,
        Duration::ZERO,
    )?;
    // Keeps its end open well past tcp_fin_timeout: the client's timewait socket stays in its
    // FIN_WAIT2 substate until its timer runs out.
    let fw2_server = serve(
        &ns,
        "127.0.0.1:0".parse()?,
        FirstCloser::Client,
        Duration::from_secs(FIN_TIMEOUT_S + 4),
    )?;
    let tw_locals = connect_close(
        w,
        &ns,
        tw_server.addr,
        N,
        Duration::from_millis(200),
        Close::Fin,
    )?;
    let fw2_locals = connect_close(
        w,
        &ns,
        fw2_server.addr,
        N,
        Duration::from_millis(200),
        Close::Fin,
    )?;
    let (_, hi) = wheel.window(TIMEWAIT_MS);
    let all: Vec<SocketAddr> = tw_locals.iter().chain(&fw2_locals).copied().collect();
    let ev = w.wait_for(&[&ns], Duration::from_millis(hi + 3000), |ev| {
        lives(ev)
            .iter()
            .filter(|l| all.contains(&l.local) && l.exit.is_some())
            .count()
            >= 2 * N
    })?;
    drop(fw2_server);
    drop(tw_server);
    let (tw_life, fw2_life, fw2_armed) = lifetimes(&ev, &tw_locals, &fw2_locals);
    let fin_ms = FIN_TIMEOUT_S * 1000;
    let tw_unchanged = tw_life.len() == N && tw_life.iter().all(|l| wheel.within(TIMEWAIT_MS, *l));
    let tw_follows = tw_life.len() == N && tw_life.iter().all(|l| wheel.within(fin_ms, *l));
    // The FIN_WAIT2 timeout is max(tcp_fin_timeout, 3.5×RTO); on loopback 3.5×RTO ≈ 0.7 s.
    let fw2_follows = fw2_life.len() == N
        && fw2_armed.iter().all(|a| *a == fin_ms)
        && fw2_life.iter().all(|l| wheel.within(fin_ms, *l));
    let verdict = if tw_follows {
        Verdict::Confirmed
    } else {
        Verdict::Refuted
    };
    let show = |v: &[u64]| Spread::of(v).map(|s| s.secs()).unwrap_or("n=0".into());
    let observed = format!(
        "tcp_fin_timeout={FIN_TIMEOUT_S}: TIME_WAIT lived {}; FIN_WAIT2-substate timewait \
         sockets armed {} and lived {}",
        show(&tw_life),
        Spread::of(&fw2_armed)
            .map(|s| fmt_s(s.median))
            .unwrap_or("?".into()),
        show(&fw2_life)
    );
    Ok(Claim {
        id: ClaimId::FinTimeout,
        verdict,
        seed: ClaimId::FinTimeout.seed().into(),
        measured: json!({
            "tcp_fin_timeout_s": FIN_TIMEOUT_S,
            "time_wait": { "n": tw_life.len(), "lifetime_ms": spread_json(&tw_life) },
            "fin_wait2": {
                "n": fw2_life.len(),
                "armed_ms": spread_json(&fw2_armed),
                "lifetime_ms": spread_json(&fw2_life),
            },
            "hz": wheel.hz,
        }),
        observed,
        explanation: explanation(tw_unchanged, tw_follows, fw2_follows),
    })
}

/// Lifetimes of the TIME_WAIT sockets that expired in TIME_WAIT, and of the FIN_WAIT2-substate
/// ones that expired in FIN_WAIT2 with the timeouts they were armed with.
fn lifetimes(
    ev: &[Event],
    tw_locals: &[SocketAddr],
    fw2_locals: &[SocketAddr],
) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let lv = lives(ev);
    let tw: Vec<&Life> = lv.iter().filter(|l| tw_locals.contains(&l.local)).collect();
    let fw2: Vec<&Life> = lv
        .iter()
        .filter(|l| fw2_locals.contains(&l.local))
        .collect();
    let tw_life: Vec<u64> = tw
        .iter()
        .filter_map(|l| expired_in(l, Substate::TimeWait))
        .collect();
    let fw2_life: Vec<u64> = fw2
        .iter()
        .filter_map(|l| expired_in(l, Substate::FinWait2))
        .collect();
    let fw2_armed: Vec<u64> = fw2
        .iter()
        .filter(|l| l.birth_substate == Substate::FinWait2)
        .map(|l| l.armed_ms)
        .collect();
    (tw_life, fw2_life, fw2_armed)
}

/// Why the verdict follows, in one line.
fn explanation(tw_unchanged: bool, tw_follows: bool, fw2_follows: bool) -> String {
    if tw_unchanged && fw2_follows {
        format!(
            "TIME_WAIT is always armed with TCP_TIMEWAIT_LEN (60 s); tcp_fin_timeout only sets the \
             orphaned FIN_WAIT2 timeout (max(tcp_fin_timeout, 3.5×RTO)), which ended those \
             sockets after {FIN_TIMEOUT_S} s plus wheel rounding"
        )
    } else if tw_unchanged {
        "TIME_WAIT kept its 60 s with tcp_fin_timeout lowered; the FIN_WAIT2 sockets did not \
         follow tcp_fin_timeout either (see figures)"
            .into()
    } else if tw_follows {
        format!("TIME_WAIT sockets expired after tcp_fin_timeout ({FIN_TIMEOUT_S} s)")
    } else {
        "TIME_WAIT lifetimes matched neither 60 s nor tcp_fin_timeout (see figures)".into()
    }
}
