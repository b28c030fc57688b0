//! Ephemeral-port pressure: how full a destination's port pool is with TIME_WAIT sockets, and
//! when it runs out at the current rate (the 2022 blog's "1000 conn/s × 60 s > 28 232"
//! arithmetic, done live). Pure functions; the inputs are plain values so that the live view,
//! `report` and `serve` can all feed it.
//!
//! The pool is per (netns, local address, destination address:port): connect() may reuse a
//! local port as long as the whole 4-tuple is new (`__inet_check_established`), so two local
//! addresses toward one destination each have their own pool, and TIME_WAIT toward another
//! destination does not block a port for this one.

pub use crate::sink::format::short_duration;
use std::fmt;

/// `net.ipv4.ip_local_port_range` of a network namespace (both ends inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// The kernel's default (32768 60999): 28 232 ports.
    pub const DEFAULT: PortRange = PortRange {
        lo: 32768,
        hi: 60999,
    };

    /// Parses the sysctl's text ("32768\t60999").
    pub fn parse(s: &str) -> Option<PortRange> {
        crate::host::procnet::parse_port_range(s).map(|(lo, hi)| PortRange { lo, hi })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// Ports one connect() is guaranteed to try toward a destination. `__inet_hash_connect`
    /// scans `remaining = hi - lo + 1` ports rounded down to even (`remaining &= ~1` when it
    /// is > 1: it walks both parities with step 2), so an odd-sized range can leave one port
    /// that a given connect() never tries (measured here: range 40000-40002 takes 2
    /// connections, 40000-40000 takes 1). Port reservations (`ip_local_reserved_ports`) are
    /// not subtracted.
    pub fn usable(&self) -> u32 {
        let n = u32::from(self.hi) - u32::from(self.lo) + 1;
        if n > 1 {
            n & !1
        } else {
            n
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

/// What the kernel keeps a TIME_WAIT socket for when nothing kills it early (TCP_TIMEWAIT_LEN).
pub const DEFAULT_LIFETIME_S: f64 = 60.0;

/// Everything the forecast needs for one pool. `None` means "not known": the forecast says
/// so rather than guessing (except the lifetime, which defaults to 60 s).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ForecastInput {
    /// TIME_WAIT sockets (both substates) in this pool now.
    pub timewait: u64,
    /// New TIME_WAIT sockets per second in this pool, recently.
    pub entry_rate: f64,
    /// Measured TIME_WAIT lifetime of this pool (e.g. the median of recent exits), seconds.
    pub lifetime_s: Option<f64>,
    pub range: Option<PortRange>,
    /// `net.ipv4.tcp_tw_reuse` of the netns: 0 off, 1 on, 2 loopback only.
    pub tw_reuse: Option<u8>,
    /// `net.ipv4.tcp_tw_reuse_delay` in ms (kernels that have it; else the 1 s rule applies).
    pub reuse_delay_ms: Option<u32>,
    /// Whether the peer sends TCP timestamps (reuse needs them).
    pub peer_timestamps: Option<bool>,
    /// The pool's local or remote address is a loopback address (what tw_reuse=2 allows).
    pub loopback: bool,
    /// The process binds before connect(): the pool is the namespace's one pool of ports for
    /// every destination (`timewait` and `entry_rate` are then the namespace's client side),
    /// and bind() never takes a port a TIME_WAIT socket holds, whatever tcp_tw_reuse says.
    pub shared_pool: bool,
}

/// When the pool runs out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Exhaustion {
    /// No port range known: nothing to compare with.
    Unknown,
    /// The steady state fits: rate × lifetime < usable ports (includes rate 0).
    Never,
    /// Every usable port toward this destination is held by a TIME_WAIT socket already.
    Now,
    /// At the current rate, in this many seconds. A lower bound: it assumes none of the
    /// sockets in TIME_WAIT now leaves before then, which holds while the pool fills faster
    /// than one lifetime (the only case in which it fills at all).
    In(f64),
}

/// What tcp_tw_reuse does or could do for this pool (`tcp_twsk_unique`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReuseAdvice {
    /// tw_reuse is on for this pool and the peer sends timestamps: connect() takes over
    /// TIME_WAIT sockets older than the reuse delay.
    Active,
    /// tw_reuse is on for this pool; whether the peer sends timestamps is not known yet.
    OnTimestampsUnknown,
    /// tw_reuse is on for this pool, but the peer sends no timestamps: it cannot reuse.
    OnNoTimestamps,
    /// tw_reuse is off for this pool (0, or 2 and not loopback) and could help (the peer sends
    /// timestamps, or may).
    WouldHelp,
    /// tw_reuse is off for this pool, and the peer sends no timestamps: it would not help.
    CannotHelp,
    /// tw_reuse not known.
    Unknown,
    /// The process binds before connect(): tcp_tw_reuse cannot help (bind() never takes a
    /// TIME_WAIT socket's port); `IP_BIND_ADDRESS_NO_PORT` would make the pool per destination
    /// again (and reusable); SO_REUSEADDR does not help (measured: tests/tests/bind_pool.rs).
    BindFirst,
}

impl ReuseAdvice {
    /// A short note for a table cell.
    pub fn note(&self) -> &'static str {
        match self {
            ReuseAdvice::Active => "tw_reuse on",
            ReuseAdvice::OnTimestampsUnknown => "tw_reuse on (peer ts ?)",
            ReuseAdvice::OnNoTimestamps => "tw_reuse on, no peer ts",
            ReuseAdvice::WouldHelp => "tw_reuse=1 would help",
            ReuseAdvice::CannotHelp => "no peer ts: reuse can't help",
            ReuseAdvice::Unknown => "",
            ReuseAdvice::BindFirst => "binds first: IP_BIND_ADDRESS_NO_PORT would help",
        }
    }

    /// At most 13 characters, for narrow screens.
    pub fn short_note(&self) -> &'static str {
        match self {
            ReuseAdvice::Active => "reuse on",
            ReuseAdvice::OnTimestampsUnknown => "reuse on, ts?",
            ReuseAdvice::OnNoTimestamps => "reuse: no ts",
            ReuseAdvice::WouldHelp => "reuse=1 helps",
            ReuseAdvice::CannotHelp => "no peer ts",
            ReuseAdvice::Unknown => "",
            ReuseAdvice::BindFirst => "binds first",
        }
    }
}

/// How worried to be about a pool, for highlighting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Risk {
    None,
    /// The steady state does not fit, or the pool is half full.
    Watch,
    /// Exhausted, within a minute, or 90 % full.
    High,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Forecast {
    /// Usable ports ([`PortRange::usable`]), if the range is known.
    pub ports: Option<u32>,
    /// TIME_WAIT sockets / usable ports.
    pub pressure: Option<f64>,
    /// The lifetime used (measured, else 60 s; the reuse delay when reuse is active), seconds.
    pub lifetime_s: f64,
    /// rate × lifetime: the TIME_WAIT count this rate settles at.
    pub steady_state: f64,
    pub exhaustion: Exhaustion,
    pub reuse: ReuseAdvice,
    pub risk: Risk,
}

/// Within this many seconds of exhaustion a pool is [`Risk::High`].
pub const HIGH_RISK_S: f64 = 60.0;

pub fn forecast(i: &ForecastInput) -> Forecast {
    let reuse_on = i.tw_reuse.map(|r| r == 1 || (r == 2 && i.loopback));
    let reuse = match (reuse_on, i.peer_timestamps) {
        _ if i.shared_pool => ReuseAdvice::BindFirst,
        (None, _) => ReuseAdvice::Unknown,
        (Some(true), Some(true)) => ReuseAdvice::Active,
        (Some(true), None) => ReuseAdvice::OnTimestampsUnknown,
        (Some(true), Some(false)) => ReuseAdvice::OnNoTimestamps,
        (Some(false), Some(false)) => ReuseAdvice::CannotHelp,
        (Some(false), _) => ReuseAdvice::WouldHelp,
    };
    let measured = i
        .lifetime_s
        .filter(|l| l.is_finite() && *l >= 0.0)
        .unwrap_or(DEFAULT_LIFETIME_S);
    // With reuse active a port is free again once its TIME_WAIT socket is older than the
    // delay, whatever the socket's own lifetime.
    let lifetime_s = if reuse == ReuseAdvice::Active {
        let delay = f64::from(i.reuse_delay_ms.unwrap_or(1000)) / 1000.0;
        measured.min(delay)
    } else {
        measured
    };
    let rate = if i.entry_rate.is_finite() && i.entry_rate > 0.0 {
        i.entry_rate
    } else {
        0.0
    };
    let steady_state = rate * lifetime_s;
    let ports = i.range.map(|r| r.usable());
    let pressure = ports.map(|p| i.timewait as f64 / f64::from(p.max(1)));
    let exhaustion = match ports {
        None => Exhaustion::Unknown,
        Some(p) if i.timewait >= u64::from(p) => Exhaustion::Now,
        Some(_) if rate == 0.0 => Exhaustion::Never,
        Some(p) if steady_state < f64::from(p) => Exhaustion::Never,
        Some(p) => Exhaustion::In((f64::from(p) - i.timewait as f64) / rate),
    };
    let risk = match (exhaustion, pressure) {
        (Exhaustion::Now, _) => Risk::High,
        (Exhaustion::In(t), _) if t < HIGH_RISK_S => Risk::High,
        (_, Some(p)) if p >= 0.9 => Risk::High,
        (Exhaustion::In(_), _) => Risk::Watch,
        (_, Some(p)) if p >= 0.5 => Risk::Watch,
        _ => Risk::None,
    };
    Forecast {
        ports,
        pressure,
        lifetime_s,
        steady_state,
        exhaustion,
        reuse,
        risk,
    }
}

impl fmt::Display for Exhaustion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exhaustion::Unknown => f.write_str("?"),
            Exhaustion::Never => f.write_str("never"),
            Exhaustion::Now => f.write_str("NOW"),
            Exhaustion::In(s) => f.write_str(&short_duration(*s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(timewait: u64, rate: f64, range: (u16, u16)) -> ForecastInput {
        ForecastInput {
            timewait,
            entry_rate: rate,
            range: Some(PortRange {
                lo: range.0,
                hi: range.1,
            }),
            tw_reuse: Some(0),
            ..ForecastInput::default()
        }
    }

    #[test]
    fn usable_ports_follow_the_kernels_scan() {
        assert_eq!(PortRange::DEFAULT.usable(), 28_232);
        assert_eq!(PortRange { lo: 5, hi: 5 }.usable(), 1);
        assert_eq!(PortRange { lo: 5, hi: 6 }.usable(), 2);
        assert_eq!(PortRange { lo: 5, hi: 7 }.usable(), 2);
        assert_eq!(PortRange { lo: 0, hi: 65535 }.usable(), 65536);
        assert_eq!(PortRange::parse("32768\t60999"), Some(PortRange::DEFAULT));
        assert_eq!(PortRange::parse("9 8"), None);
        assert_eq!(PortRange::parse("1 2 3"), None);
        assert_eq!(PortRange::parse("x 2"), None);
    }

    /// The blog's arithmetic: 1000 conn/s × 60 s = 60 000 > 28 232 ports.
    #[test]
    fn blog_arithmetic() {
        let f = forecast(&input(0, 1000.0, (32768, 60999)));
        assert_eq!(f.steady_state, 60_000.0);
        assert_eq!(f.exhaustion, Exhaustion::In(28.232));
        assert_eq!(f.risk, Risk::High);
        // 400/s × 60 s = 24 000 < 28 232: fits.
        let f = forecast(&input(20_000, 400.0, (32768, 60999)));
        assert_eq!(f.exhaustion, Exhaustion::Never);
        assert_eq!(f.risk, Risk::Watch, "70 % full is worth watching");
        // Halfway there at 1000/s: 14 116 ports left.
        let f = forecast(&input(14_116, 1000.0, (32768, 60999)));
        assert_eq!(f.exhaustion, Exhaustion::In(14.116));
        assert!((f.pressure.unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn rate_zero_never_runs_out_unless_full() {
        let f = forecast(&input(100, 0.0, (32768, 60999)));
        assert_eq!(f.exhaustion, Exhaustion::Never);
        assert_eq!(f.steady_state, 0.0);
        assert_eq!(f.risk, Risk::None);
        // Negative or NaN rates (bad input) count as zero, not as a panic.
        assert_eq!(
            forecast(&input(1, f64::NAN, (1, 100))).exhaustion,
            Exhaustion::Never
        );
        assert_eq!(
            forecast(&input(1, -3.0, (1, 100))).exhaustion,
            Exhaustion::Never
        );
        // Full already, even with nothing new coming.
        assert_eq!(
            forecast(&input(28_232, 0.0, (32768, 60999))).exhaustion,
            Exhaustion::Now
        );
    }

    #[test]
    fn port_range_of_one() {
        let f = forecast(&input(0, 0.5, (40000, 40000)));
        assert_eq!(f.ports, Some(1));
        // 0.5/s × 60 s = 30 ≥ 1: the single port goes in 2 s.
        assert_eq!(f.exhaustion, Exhaustion::In(2.0));
        let f = forecast(&input(1, 0.5, (40000, 40000)));
        assert_eq!(f.exhaustion, Exhaustion::Now);
        assert_eq!(f.pressure, Some(1.0));
        assert_eq!(f.risk, Risk::High);
        // One connection every two minutes fits a single port.
        let f = forecast(&input(0, 1.0 / 120.0, (40000, 40000)));
        assert_eq!(f.exhaustion, Exhaustion::Never);
    }

    #[test]
    fn steady_state_boundary_is_exhaustion() {
        // rate × lifetime == ports: the pool is exactly full in steady state → runs out.
        let f = forecast(&input(0, 1.0, (1, 60)));
        assert_eq!(f.exhaustion, Exhaustion::In(60.0));
        let f = forecast(&input(0, 0.99, (1, 60)));
        assert_eq!(f.exhaustion, Exhaustion::Never);
    }

    #[test]
    fn measured_lifetime_replaces_sixty_seconds() {
        let mut i = input(0, 100.0, (1, 1000));
        assert_eq!(forecast(&i).exhaustion, Exhaustion::In(10.0));
        i.lifetime_s = Some(5.0); // e.g. killed early by RST or SYN: 500 in steady state
        let f = forecast(&i);
        assert_eq!(f.lifetime_s, 5.0);
        assert_eq!(f.exhaustion, Exhaustion::Never);
        i.lifetime_s = Some(f64::NAN);
        assert_eq!(forecast(&i).lifetime_s, 60.0);
    }

    #[test]
    fn reuse_advice() {
        let mut i = input(10_000, 1000.0, (32768, 60999));
        // tw_reuse = 0: could help unless the peer sends no timestamps.
        assert_eq!(forecast(&i).reuse, ReuseAdvice::WouldHelp);
        i.peer_timestamps = Some(false);
        assert_eq!(forecast(&i).reuse, ReuseAdvice::CannotHelp);
        // tw_reuse = 2 (the default) only covers loopback pools.
        i.tw_reuse = Some(2);
        i.peer_timestamps = Some(true);
        assert_eq!(forecast(&i).reuse, ReuseAdvice::WouldHelp);
        i.loopback = true;
        let f = forecast(&i);
        assert_eq!(f.reuse, ReuseAdvice::Active);
        // Active reuse frees a port after the delay (default 1 s): 1000/s × 1 s fits.
        assert_eq!(f.lifetime_s, 1.0);
        assert_eq!(f.exhaustion, Exhaustion::Never);
        i.reuse_delay_ms = Some(30_000);
        assert_eq!(forecast(&i).exhaustion, Exhaustion::In(18.232));
        i.peer_timestamps = None;
        let f = forecast(&i);
        assert_eq!(f.reuse, ReuseAdvice::OnTimestampsUnknown);
        assert_eq!(f.lifetime_s, 60.0, "no reuse credit without timestamps");
        i.peer_timestamps = Some(false);
        assert_eq!(forecast(&i).reuse, ReuseAdvice::OnNoTimestamps);
        i.tw_reuse = Some(1);
        i.loopback = false;
        assert_eq!(forecast(&i).reuse, ReuseAdvice::OnNoTimestamps);
        i.tw_reuse = None;
        assert_eq!(forecast(&i).reuse, ReuseAdvice::Unknown);
    }

    #[test]
    fn unknown_range_gives_no_verdict() {
        let mut i = input(5, 1000.0, (1, 1));
        i.range = None;
        let f = forecast(&i);
        assert_eq!(f.exhaustion, Exhaustion::Unknown);
        assert_eq!(f.pressure, None);
        assert_eq!(f.risk, Risk::None);
    }

    #[test]
    fn exhaustion_reads_as_a_cell() {
        assert_eq!(Exhaustion::In(28.232).to_string(), "28s");
        assert_eq!(Exhaustion::Now.to_string(), "NOW");
    }
}
