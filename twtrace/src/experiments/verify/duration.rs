//! Claim 1: a TIME_WAIT socket lives 60 s.

use super::clients::{connect_close, Close};
use super::evidence::{expired_in, lives, Life};
use super::{fmt_s, spread_json, Claim, ClaimId, Spread, Verdict, Watch, Wheel, TIMEWAIT_MS};
use crate::experiments::workload::{serve, FirstCloser};
use crate::pipeline::event::Substate;
use anyhow::Result;
use serde_json::json;
use std::time::Duration;

pub(super) fn duration(w: &Watch, wheel: Wheel) -> Result<Claim> {
    // A handful of sockets, 450 ms apart, so they land at different offsets inside the wheel's
    // 2 s buckets and show the spread of the rounding, not one value.
    const N: usize = 5;
    const SPACING: Duration = Duration::from_millis(450);
    let ns = w.netns()?;
    let server = serve(
        &ns,
        "127.0.0.1:0".parse()?,
        FirstCloser::Client,
        Duration::ZERO,
    )?;
    let locals = connect_close(w, &ns, server.addr, N, SPACING, Close::Fin)?;
    let (_, hi) = wheel.window(TIMEWAIT_MS);
    let mine = |l: &Life| locals.contains(&l.local);
    let ev = w.wait_for(&[&ns], Duration::from_millis(hi + 3000), |ev| {
        lives(ev)
            .iter()
            .filter(|l| mine(l) && l.exit.is_some())
            .count()
            >= N
    })?;
    drop(server);
    let lv: Vec<Life> = lives(&ev).into_iter().filter(|l| mine(l)).collect();
    let armed: Vec<u64> = lv.iter().map(|l| l.armed_ms).collect();
    let lifetimes: Vec<u64> = lv
        .iter()
        .filter_map(|l| expired_in(l, Substate::TimeWait))
        .collect();
    let excess: Vec<u64> = lifetimes
        .iter()
        .map(|l| l.saturating_sub(TIMEWAIT_MS))
        .collect();
    let gran_j = wheel.granularity_jiffies(TIMEWAIT_MS);
    let gran_ms = wheel.granularity_ms(TIMEWAIT_MS);
    let (lo, hi) = wheel.window(TIMEWAIT_MS);
    let in_window = lifetimes.iter().filter(|l| (lo..=hi).contains(*l)).count();
    let verdict = if lifetimes.len() == N && in_window == N {
        Verdict::Confirmed
    } else {
        Verdict::Refuted
    };
    let level = wheel.level(TIMEWAIT_MS);
    let hz_note = if wheel.hz_known {
        format!("HZ={}", wheel.hz)
    } else {
        format!("HZ unknown, assumed {}", wheel.hz)
    };
    let lt = Spread::of(&lifetimes);
    let ex = Spread::of(&excess);
    let observed = match (lt, ex) {
        (Some(lt), Some(ex)) => format!(
            "{N} client TIME_WAIT sockets, armed {}: expired after {}; excess over 60 s {}",
            Spread::of(&armed)
                .map(|a| fmt_s(a.median))
                .unwrap_or_default(),
            lt.secs(),
            ex.ms()
        ),
        _ => format!(
            "none of {N} TIME_WAIT sockets expired by timer within {}",
            fmt_s(hi)
        ),
    };
    let explanation = match verdict {
        Verdict::Confirmed => format!(
            "TCP_TIMEWAIT_LEN is 60 s; at {hz_note} a 60 s timer ({} jiffies) sits in timer-wheel \
             level {level}, whose buckets are {gran_j} jiffies = {} wide and round expiry up, so \
             a socket lives 60 s + (0, {}] — all {N} did",
            TIMEWAIT_MS * wheel.hz / 1000,
            crate::pipeline::event::secs(gran_ms),
            crate::pipeline::event::secs(gran_ms)
        ),
        _ => format!(
            "only {in_window} of {N} lifetimes fell in 60 s + (0, {}] (the timer-wheel rounding \
             at {hz_note}, level {level}, {gran_j}-jiffy buckets): TIME_WAIT is not 60 s here",
            crate::pipeline::event::secs(gran_ms)
        ),
    };
    Ok(Claim {
        id: ClaimId::Duration,
        verdict,
        seed: ClaimId::Duration.seed().into(),
        measured: json!({
            "n": lifetimes.len(),
            "sockets": N,
            "armed_ms": spread_json(&armed),
            "lifetime_ms": spread_json(&lifetimes),
            "excess_ms": spread_json(&excess),
            "hz": wheel.hz,
            "hz_known": wheel.hz_known,
            "wheel_level": level,
            "wheel_granularity_jiffies": gran_j,
            "wheel_granularity_ms": gran_ms,
            "window_ms": [lo, hi],
        }),
        observed,
        explanation,
    })
}
