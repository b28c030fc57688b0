//! The rule by which connect() may take over a timewait socket (`tcp_twsk_unique`), as a pure
//! function of the socket's state, the sysctls in force and the time of the decision. The
//! tracer's refusal explanations, `verify` and `lab` all ask this one model.
//!
//! The rule (6.18, `net/ipv4/tcp_ipv4.c`): reusable only if the peer sent timestamps
//! (`tw_ts_recent_stamp != 0`); and either the socket was bound before connect() (the sysctl
//! and the delay are ignored), or `tcp_tw_reuse` allows it — 0 never, 1 always, 2 (the default)
//! only for a loopback socket — and:
//! - Linux ≥ 6.13 (`tcp_tw_reuse_delay` exists): the substate is TIME_WAIT (never FIN_WAIT2)
//!   and now is strictly after `tw_entry_stamp + tcp_tw_reuse_delay` (ms of the TCP clock,
//!   which is CLOCK_MONOTONIC);
//! - before: `ktime_get_seconds()` is after `tw_ts_recent_stamp` (CLOCK_MONOTONIC seconds).
//!
//! Clock tolerances, in one place: `ktime_get_seconds()` is updated by the tick, so it lags
//! the precise clock userspace and the kernel programs read by up to a tick — on an emulated
//! CPU several (seen: a refusal 20 ms into the next second on 6.1) — and a tracer's birth record
//! follows the segment whose timestamp was stamped. [`SECONDS_TOLERANCE_NS`] is that lag; it is
//! always given in the direction that never blames the kernel (a refusal near a boundary is
//! "too young", a takeover near a boundary is not "early"). Ages in ms come from records taken
//! µs after the kernel's stamp and are truncated on both sides: [`MS_TOLERANCE`].
//!
//! A tracer explaining a failed connect() (`pipeline::lifecycle`) builds one [`Candidate`] per
//! live timewait socket toward the destination (or only the last one the function tier
//! reports) and asks
//! `refusal(&candidates, bound, Policy::from_sysctls(sysctls_of_the_netns), connect_began_ns)`;
//! `verify` and `lab` hold observed takeovers to [`ReuseRule::early`].

use crate::host::sysctls::Sysctls;
use crate::pipeline::event::{Refusal, Substate};
use std::net::IpAddr;

/// How far `ktime_get_seconds()` may lag CLOCK_MONOTONIC, or a stamp precede the record that
/// shows it, when a second boundary decides (the pre-6.13 rule): 50 ms.
pub const SECONDS_TOLERANCE_NS: u64 = 50_000_000;

/// [`SECONDS_TOLERANCE_NS`] in ms.
pub const SECONDS_TOLERANCE_MS: u64 = SECONDS_TOLERANCE_NS / 1_000_000;

/// How many ms an age measured by the tracer may fall short of the kernel's (both truncated to
/// whole ms, the tracer's a few µs later): 2 ms.
pub const MS_TOLERANCE: u64 = 2;

/// `tcp_tw_reuse_delay` of a new namespace (`tcp_sk_init`, Linux ≥ 6.13): 1000 ms.
pub const DEFAULT_DELAY_MS: u64 = 1000;

/// The rule by which connect() may take over a timewait socket (`tcp_twsk_unique`, with
/// `tcp_tw_reuse` allowing it and the peer having sent timestamps) on the running kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReuseRule {
    /// Linux ≥ 6.13: strictly more than `tcp_tw_reuse_delay` ms (per netns; this one is the
    /// value read) after the socket entered TIME_WAIT (`tw_entry_stamp`), ms granularity; and
    /// never in the FIN_WAIT2 substate.
    Delay(u64),
    /// Before 6.13 (no `tcp_tw_reuse_delay`): once `ktime_get_seconds()` (CLOCK_MONOTONIC
    /// seconds) is past the second in which the peer's last timestamp arrived
    /// (`tw_ts_recent_stamp`): after 0 to 1 s, second granularity; either substate.
    NextSecond,
}

impl ReuseRule {
    /// For JSON: `tcp_tw_reuse_delay` or `next_second`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReuseRule::Delay(_) => "tcp_tw_reuse_delay",
            ReuseRule::NextSecond => "next_second",
        }
    }

    /// What the rule is, in words (for reports).
    pub fn describe(&self) -> String {
        match self {
            ReuseRule::Delay(d) => format!(
                "tcp_tw_reuse_delay: reusable strictly more than {d} ms after TIME_WAIT entry \
                 (ms granularity, never in the FIN_WAIT2 substate; Linux ≥ 6.13)"
            ),
            ReuseRule::NextSecond => "the fixed rule of kernels before 6.13 (no \
                                      tcp_tw_reuse_delay): reusable once the CLOCK_MONOTONIC \
                                      second has passed the one of the peer's last timestamp, \
                                      i.e. after 0 to 1 s (second granularity)"
                .to_string(),
        }
    }

    /// Whether a takeover at `exit_ns` of a timewait socket born at `birth_ns` (both
    /// CLOCK_MONOTONIC, from the tracer) at the age `age_ms` (the exit's `lifetime_ms`: for a
    /// takeover, the kernel's own age from `tw_entry_stamp` where it has one, which is where
    /// `Delay` applies) came earlier than this rule allows. Tolerant at the edges:
    /// [`MS_TOLERANCE`] for `Delay`, and for `NextSecond` the stamp's second may be the one
    /// before the birth's ([`SECONDS_TOLERANCE_NS`]).
    pub fn early(&self, age_ms: u64, birth_ns: u64, exit_ns: u64) -> bool {
        match self {
            ReuseRule::Delay(d) => age_ms + MS_TOLERANCE < *d,
            ReuseRule::NextSecond => {
                let stamp_s = birth_ns.saturating_sub(SECONDS_TOLERANCE_NS) / 1_000_000_000;
                exit_ns / 1_000_000_000 <= stamp_s
            }
        }
    }

    /// Whether a smallest takeover age `min_age_ms` respects a delay of `delay_ms` (the
    /// tracer's ages may fall [`MS_TOLERANCE`] short of the kernel's).
    pub fn respects_delay(min_age_ms: u64, delay_ms: u64) -> bool {
        min_age_ms + MS_TOLERANCE >= delay_ms
    }

    /// The longest a port stays unusable after its connection closed (ms): what bounds the
    /// sustainable connection rate from a port range.
    pub fn max_hold_ms(&self) -> u64 {
        match self {
            ReuseRule::Delay(d) => *d,
            ReuseRule::NextSecond => 1000,
        }
    }

    /// Connections predicted to succeed (fewest, most) for `attempts` at `rate_per_s` from
    /// `ports` ports under this rule (see [`predicted_successes`] and
    /// [`predicted_successes_next_second`]). Under `NextSecond` the answer depends on where
    /// the run falls within the second and on when each last timestamp arrives: every phase
    /// and a stamp up to [`SECONDS_TOLERANCE_MS`] late are tried.
    pub fn predicted_range(&self, ports: u64, attempts: u64, rate_per_s: u64) -> (u64, u64) {
        match self {
            ReuseRule::Delay(d) => {
                let n = predicted_successes(ports, attempts, rate_per_s, *d);
                (n, n)
            }
            ReuseRule::NextSecond => {
                let (mut lo, mut hi) = (u64::MAX, 0);
                for phase in 0..1000 {
                    for lag in [0, SECONDS_TOLERANCE_MS / 2, SECONDS_TOLERANCE_MS] {
                        let n = predicted_successes_next_second(
                            ports, attempts, rate_per_s, phase, lag,
                        );
                        lo = lo.min(n);
                        hi = hi.max(n);
                    }
                }
                (lo, hi)
            }
        }
    }
}

/// What the arithmetic says for `attempts` connections at `rate`/s from `ports` ephemeral
/// ports whose TIME_WAIT holds each for `hold_ms` (60 s, or `tcp_tw_reuse_delay` with reuse):
/// a port comes back after `hold_ms`, so within the run at most `ports × (1 + runtime/hold)`
/// connections succeed.
pub fn predicted_successes(ports: u64, attempts: u64, rate_per_s: u64, hold_ms: u64) -> u64 {
    let mut ok = 0u64;
    // Free-again times (ms) of the ports in use, simulated attempt by attempt.
    let mut busy_until: Vec<u64> = Vec::new();
    for k in 0..attempts {
        let t = k * 1000 / rate_per_s;
        busy_until.retain(|u| *u >= t);
        if (busy_until.len() as u64) < ports {
            busy_until.push(t + hold_ms);
            ok += 1;
        }
    }
    ok
}

/// The same arithmetic under the reuse rule of kernels before 6.13 ([`ReuseRule::NextSecond`]):
/// a port comes back once the monotonic second has passed the one in which its connection's
/// last timestamp arrived. The run starts `phase_ms` into a second; each connection's last
/// timestamp arrives `stamp_lag_ms` after its attempt.
pub fn predicted_successes_next_second(
    ports: u64,
    attempts: u64,
    rate_per_s: u64,
    phase_ms: u64,
    stamp_lag_ms: u64,
) -> u64 {
    let mut ok = 0u64;
    // The stamp second of each port in use.
    let mut stamps: Vec<u64> = Vec::new();
    for k in 0..attempts {
        let t = phase_ms + k * 1000 / rate_per_s;
        stamps.retain(|s| *s >= t / 1000);
        if (stamps.len() as u64) < ports {
            stamps.push((t + stamp_lag_ms) / 1000);
            ok += 1;
        }
    }
    ok
}

/// The sysctls of the connecting namespace that the rule reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `net.ipv4.tcp_tw_reuse` (0, 1, 2); `None` when not read (then neither "reuse off" nor
    /// "loopback only" is claimed).
    pub tw_reuse: Option<u8>,
    /// `Some(ms)`: `tcp_tw_reuse_delay` (Linux ≥ 6.13); `None`: a kernel without it (the
    /// pre-6.13 next-second rule).
    pub delay_ms: Option<u32>,
}

impl Policy {
    /// From the namespace's sysctls as the tracer knows them. Not read (yet): this kernel's
    /// rule is assumed to be the delay rule with its default delay, `tcp_tw_reuse` unknown.
    pub fn from_sysctls(s: Option<&Sysctls>) -> Policy {
        match s {
            Some(s) => Policy {
                tw_reuse: s.tw_reuse,
                delay_ms: s.tw_reuse_delay_ms,
            },
            None => Policy {
                tw_reuse: None,
                delay_ms: Some(DEFAULT_DELAY_MS as u32),
            },
        }
    }
}

/// One timewait socket toward the destination connect() wants, as the tracer last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub substate: Substate,
    /// `tw_ts_recent_stamp`: CLOCK_MONOTONIC seconds when the peer's last timestamp came;
    /// 0: the peer sent none.
    pub ts_recent_stamp: u32,
    /// `tw_entry_stamp` (ms of the TCP clock, which is CLOCK_MONOTONIC), where known.
    pub entry_stamp_ms: Option<u32>,
    /// CLOCK_MONOTONIC ns of the socket's birth, where seen (the age's fallback reference).
    pub birth_ns: Option<u64>,
}

impl Candidate {
    /// Bound to loopback, or with a loopback source or destination (`tcp_tw_reuse` = 2).
    pub fn is_loopback(&self) -> bool {
        is_loopback(&self.laddr) || is_loopback(&self.raddr)
    }

    /// Its age in ms at `now_ns`: from `tw_entry_stamp` where known, else from the birth.
    pub fn age_ms(&self, now_ns: u64) -> Option<u64> {
        match (self.entry_stamp_ms, self.birth_ns) {
            (Some(st), _) => Some(ms_since(st, now_ns)),
            (None, Some(b)) => Some(now_ns.saturating_sub(b) / 1_000_000),
            _ => None,
        }
    }
}

/// Milliseconds from `stamp_ms` (the TCP clock's ms truncated to 32 bits, as
/// `tw_entry_stamp`) to `now_ns` (CLOCK_MONOTONIC), across the 49-day wrap. A stamp after
/// `now_ns` is age 0, not 49 days: a socket that entered TIME_WAIT while connect() was
/// already walking the ports is judged at connect()'s start, before it existed, and is
/// as young as a socket can be.
pub fn ms_since(stamp_ms: u32, now_ns: u64) -> u64 {
    let now_ms = (now_ns / 1_000_000) as u32;
    (now_ms.wrapping_sub(stamp_ms) as i32).max(0) as u64
}

/// What the rule says about one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Refused(Refusal),
}

/// Whether connect() may take over `c` at `now_ns` (CLOCK_MONOTONIC). `bound`: the socket was
/// bound before connect() (then `tcp_tw_reuse` and the delay do not apply).
pub fn decide(c: &Candidate, bound: bool, policy: Policy, now_ns: u64) -> Decision {
    match refusal(&[*c], bound, policy, now_ns) {
        Refusal::Unknown => Decision::Allowed,
        r => Decision::Refused(r),
    }
}

/// Why none of `candidates` (the timewait sockets toward the destination of a failed
/// connect()) could be taken over, by the rule above: [`Refusal::Unknown`] when the rule
/// would have allowed one (the failure is not explained by TIME_WAIT). `now_ns`: when the
/// kernel decided (or, to never mistake a refusal for an allowed reuse, when connect() began:
/// a socket only gets older). Near a second boundary under the pre-6.13 rule the refusal is
/// "too young" ([`SECONDS_TOLERANCE_NS`]).
pub fn refusal(candidates: &[Candidate], bound: bool, policy: Policy, now_ns: u64) -> Refusal {
    if candidates.is_empty() {
        return Refusal::NoTimewait;
    }
    if candidates.iter().all(|c| c.ts_recent_stamp == 0) {
        return Refusal::NoTimestamps;
    }
    if bound {
        // bind() + connect(): the sysctl and the delay do not apply.
        return Refusal::Unknown;
    }
    if policy.tw_reuse == Some(0) {
        return Refusal::ReuseOff;
    }
    if policy.tw_reuse == Some(2) && !candidates.iter().any(Candidate::is_loopback) {
        return Refusal::LoopbackOnly;
    }
    let eligible: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.ts_recent_stamp != 0)
        .collect();
    let Some(delay_ms) = policy.delay_ms else {
        // Before 6.13: ktime_get_seconds() must be after tw_ts_recent_stamp.
        let now_s = (now_ns.saturating_sub(SECONDS_TOLERANCE_NS) / 1_000_000_000) as u32;
        return if eligible
            .iter()
            .all(|c| (now_s.wrapping_sub(c.ts_recent_stamp) as i32) <= 0)
        {
            Refusal::TooYoung
        } else {
            Refusal::Unknown
        };
    };
    if eligible.iter().all(|c| c.substate == Substate::FinWait2) {
        return Refusal::FinWait2;
    }
    let oldest_ms = eligible
        .iter()
        .filter(|c| c.substate == Substate::TimeWait)
        .filter_map(|c| c.age_ms(now_ns))
        .max();
    match oldest_ms {
        Some(age) if age <= delay_ms as u64 => Refusal::TooYoung,
        _ => Refusal::Unknown,
    }
}

/// Loopback as `tcp_tw_reuse` = 2 sees it (IPv4-mapped loopback included).
pub fn is_loopback(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn lo_tw(stamp_s: u32, entry_ms: Option<u32>) -> Candidate {
        Candidate {
            laddr: Ipv4Addr::LOCALHOST.into(),
            raddr: Ipv4Addr::LOCALHOST.into(),
            substate: Substate::TimeWait,
            ts_recent_stamp: stamp_s,
            entry_stamp_ms: entry_ms,
            birth_ns: None,
        }
    }

    fn modern(reuse: u8) -> Policy {
        Policy {
            tw_reuse: Some(reuse),
            delay_ms: Some(1000),
        }
    }

    #[test]
    fn reuse_rules() {
        // ≥ 6.13: strictly after the delay, 2 ms of rounding allowed.
        let d = ReuseRule::Delay(1000);
        assert!(d.early(900, 10 * S, 10 * S + 900 * MS));
        assert!(!d.early(999, 10 * S, 10 * S + 999 * MS));
        assert!(!d.early(1000, 10 * S, 11 * S + 1));
        // The age decides, not the tracer's birth record (which can trail the kernel's stamp).
        assert!(!d.early(1001, 10 * S + 5 * MS, 11 * S + 1));
        // Before 6.13: a later monotonic second than the last timestamp's.
        let n = ReuseRule::NextSecond;
        assert!(n.early(700, 10 * S + 200 * MS, 10 * S + 900 * MS));
        assert!(!n.early(105, 10 * S + 900 * MS, 11 * S + 5 * MS));
        // Born just after a boundary: the stamp may be the second before.
        assert!(!n.early(10, 10 * S + 10 * MS, 10 * S + 20 * MS));
        assert!(n.early(20, 10 * S + 100 * MS, 10 * S + 120 * MS));
        assert_eq!(n.as_str(), "next_second");
        assert!(n.describe().contains("0 to 1 s"));
        assert!(d.describe().contains("1000 ms"));
        assert!(ReuseRule::respects_delay(998, 1000));
        assert!(!ReuseRule::respects_delay(997, 1000));
    }

    #[test]
    fn port_arithmetic() {
        // No reuse: 10 ports, 60 s hold, 30 attempts at 10/s → 10 succeed.
        assert_eq!(predicted_successes(10, 30, 10, 60_000), 10);
        // Reuse after 500 ms: a port comes back before it is needed again.
        assert_eq!(predicted_successes(10, 30, 10, 500), 30);
        // Reuse after 2 s: 10 ports cover 1 s of attempts; a port comes back only strictly
        // after its 2 s, so t=2.0 s fails and t=2.1–2.9 s succeed.
        assert_eq!(predicted_successes(10, 30, 10, 2000), 19);
        assert_eq!(predicted_successes(10, 5, 10, 60_000), 5);
    }

    #[test]
    fn port_arithmetic_before_6_13() {
        // 2 ports, one attempt every 500 ms from the start of a second: each boundary frees
        // both ports, so every attempt connects.
        assert_eq!(predicted_successes_next_second(2, 7, 2, 0, 0), 7);
        // Every 200 ms from 700 ms into a second: t=0.7 and 0.9 take both; t=1.1 and 1.3 reuse
        // them (stamped in second 0); t=1.5–1.9 find both stamped in second 1; t=2.1 connects.
        let p: Vec<u64> = (1..=8)
            .map(|k| predicted_successes_next_second(2, k, 5, 700, 0))
            .collect();
        assert_eq!(p, vec![1, 2, 3, 4, 4, 4, 4, 5]);
        // A last timestamp arriving after the boundary holds its port a second longer.
        assert_eq!(predicted_successes_next_second(1, 2, 10, 950, 0), 2);
        assert_eq!(predicted_successes_next_second(1, 2, 10, 950, 60), 1);
        // The verify workload: 20 ports at 10/s hold at most 11 ports per second, so every
        // phase gives 30 of 30; 10 ports would depend on the phase.
        assert_eq!(ReuseRule::NextSecond.predicted_range(20, 30, 10), (30, 30));
        let (lo, hi) = ReuseRule::NextSecond.predicted_range(10, 30, 10);
        assert!(lo < hi && hi == 30, "{lo} {hi}");
        assert_eq!(ReuseRule::Delay(500).predicted_range(20, 30, 10), (30, 30));
        assert_eq!(
            ReuseRule::Delay(60_000).predicted_range(20, 30, 10),
            (20, 20)
        );
        assert_eq!(ReuseRule::NextSecond.max_hold_ms(), 1000);
    }

    #[test]
    fn refusals_in_the_order_the_kernel_checks() {
        let now = 100 * S;
        assert_eq!(refusal(&[], false, modern(1), now), Refusal::NoTimewait);
        let no_ts = lo_tw(0, Some(0));
        assert_eq!(
            refusal(&[no_ts], false, modern(1), now),
            Refusal::NoTimestamps
        );
        // Timestamps are checked even for a bound socket; the rest is not.
        assert_eq!(
            refusal(&[no_ts], true, modern(0), now),
            Refusal::NoTimestamps
        );
        let young = lo_tw(7, Some((now / MS) as u32 - 500));
        assert_eq!(refusal(&[young], true, modern(0), now), Refusal::Unknown);
        assert_eq!(decide(&young, true, modern(0), now), Decision::Allowed);
        assert_eq!(refusal(&[young], false, modern(0), now), Refusal::ReuseOff);
        assert_eq!(refusal(&[young], false, modern(1), now), Refusal::TooYoung);
        assert_eq!(
            decide(&young, false, modern(2), now),
            Decision::Refused(Refusal::TooYoung)
        );
        // The delay is strict: exactly 1000 ms old is still too young.
        let at_delay = lo_tw(7, Some((now / MS) as u32 - 1000));
        assert_eq!(
            refusal(&[at_delay], false, modern(1), now),
            Refusal::TooYoung
        );
        let old = lo_tw(7, Some((now / MS) as u32 - 1001));
        assert_eq!(decide(&old, false, modern(1), now), Decision::Allowed);
        // The oldest TIME_WAIT candidate decides.
        assert_eq!(
            refusal(&[young, old], false, modern(1), now),
            Refusal::Unknown
        );
        let fw2 = Candidate {
            substate: Substate::FinWait2,
            ..old
        };
        assert_eq!(refusal(&[fw2], false, modern(1), now), Refusal::FinWait2);
        // Sysctls unknown: the default delay, no claim about tcp_tw_reuse.
        assert_eq!(
            refusal(&[young], false, Policy::from_sysctls(None), now),
            Refusal::TooYoung
        );
        assert_eq!(
            refusal(&[old], false, Policy::from_sysctls(None), now),
            Refusal::Unknown
        );
        // Without an entry stamp, the birth seen by the tracer gives the age.
        let born = Candidate {
            entry_stamp_ms: None,
            birth_ns: Some(now - 300 * MS),
            ..old
        };
        assert_eq!(born.age_ms(now), Some(300));
        assert_eq!(refusal(&[born], false, modern(1), now), Refusal::TooYoung);
        let unaged = Candidate {
            entry_stamp_ms: None,
            ..old
        };
        assert_eq!(refusal(&[unaged], false, modern(1), now), Refusal::Unknown);
        // Entered TIME_WAIT after connect() began (judged at its start): as young as can be,
        // never 49 days old (7.3 guest: such a refusal was reported `unknown`).
        let later = lo_tw(7, Some((now / MS) as u32 + 3));
        assert_eq!(later.age_ms(now), Some(0));
        assert_eq!(refusal(&[later], false, modern(1), now), Refusal::TooYoung);
        // The clock's 32-bit wrap between the stamp and now is still an age.
        assert_eq!(ms_since(u32::MAX - 9, (1u64 << 32) * MS + 20 * MS), 30);
    }

    #[test]
    fn loopback_only_for_other_peers() {
        let now = 100 * S;
        let far = Candidate {
            laddr: Ipv4Addr::new(198, 18, 0, 1).into(),
            raddr: Ipv4Addr::new(198, 18, 0, 2).into(),
            ..lo_tw(5, Some(0))
        };
        assert_eq!(
            refusal(&[far], false, modern(2), now),
            Refusal::LoopbackOnly
        );
        assert_eq!(decide(&far, false, modern(1), now), Decision::Allowed);
        let mapped = Candidate {
            raddr: "::ffff:127.0.0.1".parse().unwrap(),
            ..far
        };
        assert!(mapped.is_loopback());
        assert!(is_loopback(&Ipv6Addr::LOCALHOST.into()));
        assert_eq!(decide(&mapped, false, modern(2), now), Decision::Allowed);
    }

    #[test]
    fn the_next_second_rule_and_its_tolerance() {
        let pre = Policy {
            tw_reuse: Some(1),
            delay_ms: None,
        };
        let c = lo_tw(10, None);
        // Same second as the last timestamp: too young; either substate.
        assert_eq!(
            refusal(&[c], false, pre, 10 * S + 900 * MS),
            Refusal::TooYoung
        );
        // Within the tolerance past the boundary, the kernel's tick-updated seconds may still
        // say 10: still too young, never "unknown".
        assert_eq!(
            refusal(&[c], false, pre, 11 * S + 20 * MS),
            Refusal::TooYoung
        );
        assert_eq!(
            refusal(&[c], false, pre, 11 * S + SECONDS_TOLERANCE_NS),
            Refusal::Unknown
        );
        let fw2 = Candidate {
            substate: Substate::FinWait2,
            ..c
        };
        assert_eq!(
            decide(&fw2, false, pre, 12 * S),
            Decision::Allowed,
            "no substate condition before 6.13"
        );
        assert_eq!(SECONDS_TOLERANCE_MS, 50);
    }

    /// The lifecycle asks this model with what its records say (each socket's substate,
    /// stamps and birth, the settings, the moment connect() began): its refusals equal the
    /// model's over many random situations (candidates in either substate, with or without
    /// timestamps and entry stamps, loopback or not; sysctls unknown, per rule and mode; bound
    /// or not; any time after the births). A mapping slip in the lifecycle fails it.
    #[test]
    fn the_model_agrees_with_the_lifecycle() {
        use crate::pipeline::decode::blank;
        use crate::pipeline::event::Body;
        use crate::pipeline::lifecycle::Lifecycle;
        use twtrace_common::{flags, kind, TCP_FIN_WAIT2, TCP_TIME_WAIT};
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4000 {
            let mut lc = Lifecycle::new(250);
            let far = rnd(2) == 0;
            let raddr = if far {
                Ipv4Addr::new(198, 18, 0, 2)
            } else {
                Ipv4Addr::LOCALHOST
            };
            let sysctls = match rnd(4) {
                0 => None,
                _ => Some(Sysctls {
                    tw_reuse: [None, Some(0), Some(1), Some(2)][rnd(4) as usize],
                    tw_reuse_delay_ms: [None, Some(1000), Some(200)][rnd(3) as usize],
                    ..Default::default()
                }),
            };
            if let Some(s) = &sysctls {
                lc.set_sysctls(0, s.clone());
            }
            let mut out = Vec::new();
            let mut candidates = Vec::new();
            let mut birth_ms = 10_000 + rnd(1000);
            for i in 0..rnd(4) {
                birth_ms += rnd(1500);
                let laddr = if far && rnd(3) > 0 {
                    Ipv4Addr::new(198, 18, 0, 1)
                } else {
                    Ipv4Addr::LOCALHOST
                };
                let mut r = blank(kind::TIMER_START);
                r.tw = 0x100 + i;
                r.ts_ns = birth_ms * MS;
                r.jiffies = birth_ms / 4;
                r.expires = r.jiffies + 15000;
                r.lport = 40000 + i as u16;
                r.rport = 80;
                r.laddr[..4].copy_from_slice(&laddr.octets());
                r.raddr[..4].copy_from_slice(&raddr.octets());
                r.substate = [TCP_TIME_WAIT, TCP_FIN_WAIT2][rnd(2) as usize];
                r.ts_recent_stamp = match rnd(3) {
                    0 => 0,
                    1 => (birth_ms / 1000) as u32,
                    _ => (birth_ms / 1000) as u32 - 1,
                };
                if rnd(3) > 0 {
                    r.flags |= flags::ENTRY_STAMP;
                    r.entry_stamp = birth_ms as u32;
                }
                lc.on_record(&r, &mut out);
                candidates.push(Candidate {
                    laddr: laddr.into(),
                    raddr: raddr.into(),
                    substate: Substate::from_raw(r.substate),
                    ts_recent_stamp: r.ts_recent_stamp,
                    entry_stamp_ms: (r.entry_stamp != 0).then_some(r.entry_stamp),
                    birth_ns: Some(r.ts_ns),
                });
            }
            let fail_ms = birth_ms + rnd(2500);
            let mut f = blank(kind::CONNECT_FAIL);
            f.tw = 0xF;
            f.cpu = 1;
            f.ts_ns = fail_ms * MS;
            f.jiffies = fail_ms / 4;
            f.rport = 80;
            f.raddr[..4].copy_from_slice(&raddr.octets());
            let bound = rnd(5) == 0;
            f.lport = if bound { 41000 } else { 0 };
            lc.on_record(&f, &mut out);
            let tracer = out
                .iter()
                .find_map(|e| match &e.body {
                    Body::ConnectFail { refusal, .. } => Some(*refusal),
                    _ => None,
                })
                .expect("a connect_fail event");
            let policy = Policy::from_sysctls(sysctls.as_ref());
            let model = refusal(&candidates, bound, policy, f.ts_ns);
            assert_eq!(
                model, tracer,
                "{candidates:#?} bound={bound} {policy:?} at {fail_ms} ms"
            );
            seen.insert(model.as_str());
        }
        // Every answer the model can give came up.
        assert_eq!(seen.len(), Refusal::ALL.len(), "{seen:?}");
    }
}
