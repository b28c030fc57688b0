//! `twtrace verify`: the 2022 blog's TIME_WAIT claims (`shared/seed/README.md`), measured on
//! the running kernel.
//!
//! Each claim gets a bounded workload in private network namespaces ([`NetNs`]: never the
//! host's interfaces or sysctls), all running at once and watched by one tracer. A verdict is
//! derived from what was measured with the kernel's rules (timer wheel, `tcp_time_wait`,
//! `tcp_twsk_unique`, …): nothing here knows the expected answer for this kernel. What the
//! kernel offers (HZ, the reuse rule, which events the tracer can report) comes from the
//! running tracer's [`Features`].
//!
//! This file is the harness (claims, verdicts, the shared tracer, the run); each claim's
//! workload and verdict is a file of its own, the table is [`render_table`].

mod clients;
mod duration;
mod evidence;
mod fin_timeout;
mod linger0;
mod max_tw_buckets;
mod port_exhaustion;
mod recycle;
mod render;
mod reuse;
mod wheel;

pub use crate::kernel::reuse_rule::{
    predicted_successes, predicted_successes_next_second, ReuseRule,
};
use duration::duration;
pub(crate) use evidence::proc_net;
pub use evidence::{reuses, Reuse};
use fin_timeout::fin_timeout;
use linger0::linger0;
use max_tw_buckets::max_tw_buckets;
pub use max_tw_buckets::{kmsg_message, KernelLog};
use port_exhaustion::port_exhaustion;
use recycle::recycle;
pub use recycle::rto_floor_ms;
pub use render::{render_table, wrap};
use reuse::reuse;
pub use wheel::{wheel_granularity_jiffies, Wheel};

use crate::host::netns::NetNs;
use crate::kernel::features::Features;
use crate::pipeline::event::Body;
use crate::pipeline::event::Event;
use crate::pipeline::tracer::{Background, TracerOptions};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// `TCP_TIMEWAIT_LEN`.
pub const TIMEWAIT_MS: u64 = 60_000;

/// Time allowed between a timer's bucket coming due and our record of its expiry: the tick
/// edge plus the timer softirq being scheduled late on a busy machine.
pub const SOFTIRQ_SLACK_MS: u64 = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClaimId {
    Duration,
    FinTimeout,
    Recycle,
    Reuse,
    MaxTwBuckets,
    Linger0,
    PortExhaustion,
}

impl ClaimId {
    pub const ALL: [ClaimId; 7] = [
        ClaimId::Duration,
        ClaimId::FinTimeout,
        ClaimId::Recycle,
        ClaimId::Reuse,
        ClaimId::MaxTwBuckets,
        ClaimId::Linger0,
        ClaimId::PortExhaustion,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ClaimId::Duration => "duration",
            ClaimId::FinTimeout => "fin_timeout",
            ClaimId::Recycle => "recycle",
            ClaimId::Reuse => "reuse",
            ClaimId::MaxTwBuckets => "max_tw_buckets",
            ClaimId::Linger0 => "linger0",
            ClaimId::PortExhaustion => "port_exhaustion",
        }
    }

    /// What the blog says.
    pub fn seed(&self) -> &'static str {
        match self {
            ClaimId::Duration => "TIME_WAIT lasts 2×MSL: 1 minute on Linux (TCP_TIMEWAIT_LEN)",
            ClaimId::FinTimeout => "tcp_fin_timeout is a knob that shortens TIME_WAIT",
            ClaimId::Recycle => {
                "tcp_tw_recycle + timestamps cut TIME_WAIT to 3.5×RTO (≈700 ms on a LAN); \
                 it fails behind NAT"
            }
            ClaimId::Reuse => {
                "tcp_tw_reuse + timestamps: connect() may reuse a TIME_WAIT socket once more \
                 than 1 s has passed since its last received timestamp"
            }
            ClaimId::MaxTwBuckets => {
                "past tcp_max_tw_buckets new TIME_WAIT sockets are destroyed at once, the \
                 count stays at the limit, and \"TCP: time wait bucket table overflow\" is logged"
            }
            ClaimId::Linger0 => "SO_LINGER {1,0}: close() sends RST and skips TIME_WAIT",
            ClaimId::PortExhaustion => {
                "short connections exhaust the ephemeral ports once rate × 60 s exceeds the \
                 range (1000/s × 60 s = 60 000 > 28 232); tw_reuse is a remedy"
            }
        }
    }

    /// Roughly how long the workload runs (for the progress bar).
    pub fn expected(&self) -> Duration {
        match self {
            // A handful of sockets spread over ~2 s, each living 60 s plus wheel slack.
            ClaimId::Duration | ClaimId::FinTimeout => Duration::from_secs(66),
            ClaimId::Recycle => Duration::from_secs(8),
            ClaimId::Reuse => Duration::from_secs(5),
            ClaimId::MaxTwBuckets | ClaimId::Linger0 => Duration::from_secs(3),
            ClaimId::PortExhaustion => Duration::from_secs(5),
        }
    }
}

impl std::fmt::Display for ClaimId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ClaimId {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        ClaimId::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown claim {s:?} (one of: {})",
                    ClaimId::ALL.map(|c| c.as_str()).join(", ")
                )
            })
    }
}

impl Serialize for ClaimId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Confirmed,
    Refuted,
    /// It held once; on this kernel the mechanism differs (moved, renamed, narrowed).
    Changed,
    /// The claim's mechanism is not there to measure (or could not be measured here).
    NotApplicable,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Confirmed => "confirmed",
            Verdict::Refuted => "refuted",
            Verdict::Changed => "changed",
            Verdict::NotApplicable => "not_applicable",
        }
    }
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One claim, measured.
#[derive(Clone, Debug, Serialize)]
pub struct Claim {
    pub id: ClaimId,
    pub verdict: Verdict,
    /// What the blog says.
    pub seed: String,
    /// The figures (counts `n`, spreads with min/median/max, sysctls used, kernel counters).
    pub measured: Value,
    /// What this kernel did, in one sentence (the table's "this kernel did").
    pub observed: String,
    /// Why the verdict follows from the figures and the kernel's rules, in one line.
    pub explanation: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub claims: Vec<Claim>,
}

/// n and min/median/max of a set of measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Spread {
    pub n: usize,
    pub min: u64,
    pub median: u64,
    pub max: u64,
}

impl Spread {
    pub fn of(values: &[u64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_unstable();
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        };
        Some(Spread {
            n,
            min: v[0],
            median,
            max: v[n - 1],
        })
    }

    /// `n=5 60.31–61.95 s (median 61.02 s)`, from milliseconds.
    pub fn secs(&self) -> String {
        if self.n == 1 {
            return format!("n=1 {}", fmt_s(self.min));
        }
        format!(
            "n={} {}–{} (median {})",
            self.n,
            fmt_s(self.min),
            fmt_s(self.max),
            fmt_s(self.median)
        )
    }

    pub fn ms(&self) -> String {
        if self.n == 1 {
            return format!("n=1 {} ms", self.min);
        }
        format!(
            "n={} {}–{} ms (median {} ms)",
            self.n, self.min, self.max, self.median
        )
    }
}

pub(super) fn spread_json(values: &[u64]) -> Value {
    match Spread::of(values) {
        Some(s) => json!(s),
        None => json!({ "n": 0 }),
    }
}

/// Milliseconds as seconds with two decimals: `61.95 s`.
pub fn fmt_s(ms: u64) -> String {
    format!("{}.{:02} s", ms / 1000, (ms % 1000) / 10)
}

/// A run of `verify` was interrupted (Ctrl-C): not a result.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// How long a new namespace waits before its first traffic (see [`Watch::netns`]).
pub const NETNS_SETTLE: Duration = Duration::from_millis(1100);

/// One tracer watching every namespace the workloads make, and the run's cancel flag.
pub struct Watch {
    tracer: Background,
    netns: Arc<RwLock<HashSet<u32>>>,
    cancel: Arc<AtomicBool>,
}

impl Watch {
    pub fn start(cancel: Arc<AtomicBool>) -> Result<Watch> {
        let netns: Arc<RwLock<HashSet<u32>>> = Arc::default();
        let ours = netns.clone();
        let tracer = Background::start(
            TracerOptions {
                // Sockets that existed before are not ours.
                snapshot: false,
                ..TracerOptions::default()
            },
            move |e| {
                let id = match &e.body {
                    Body::Netns { netns, .. } => Some(*netns),
                    _ => e.sock().map(|s| s.netns),
                };
                // Lost-event reports have no namespace: always kept.
                id.is_none_or(|id| ours.read().unwrap_or_else(|p| p.into_inner()).contains(&id))
            },
        )
        .context("starting the tracer (needs root and a kernel with BTF)")?;
        Ok(Watch {
            tracer,
            netns,
            cancel,
        })
    }

    /// A new private namespace whose events the tracer keeps.
    ///
    /// Returns after [`NETNS_SETTLE`]: the tracer learns a namespace's sysctls (which decide
    /// how it explains connect() refusals) by finding it in /proc when its first event comes,
    /// and walks /proc at most once a second; a namespace whose first event came sooner after
    /// its birth could stay without sysctls.
    pub fn netns(&self) -> Result<NetNs> {
        Ok(self.netns_n::<1>()?.into_iter().next().expect("one"))
    }

    /// `N` new namespaces, settled together (one wait).
    pub fn netns_n<const N: usize>(&self) -> Result<[NetNs; N]> {
        self.check()?;
        let mut v = Vec::with_capacity(N);
        for _ in 0..N {
            let ns = NetNs::new()?;
            self.netns
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ns.inode() as u32);
            v.push(ns);
        }
        self.sleep(NETNS_SETTLE)?;
        v.try_into()
            .map_err(|_| anyhow!("namespace count mismatch"))
    }

    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    pub fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Interrupted.into());
        }
        Ok(())
    }

    /// Sleeps `d`, waking early (with [`Interrupted`]) on cancel.
    pub fn sleep(&self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }

    /// Events of the namespaces `ns`.
    pub fn events(&self, ns: &[&NetNs]) -> Vec<Event> {
        let ids: Vec<u32> = ns.iter().map(|n| n.inode() as u32).collect();
        self.tracer
            .events()
            .into_iter()
            .filter(|e| match e.sock() {
                Some(s) => ids.contains(&s.netns),
                None => matches!(&e.body, Body::Netns { netns, .. } if ids.contains(netns)),
            })
            .collect()
    }

    /// Events lost by the kernel so far (any namespace).
    pub fn lost(&self) -> u64 {
        self.tracer
            .events()
            .iter()
            .map(|e| match e.body {
                Body::Lost { count } => count,
                _ => 0,
            })
            .sum()
    }

    /// Polls the events of `ns` until `pred` holds or `timeout` passes; returns them either way.
    pub fn wait_for(
        &self,
        ns: &[&NetNs],
        timeout: Duration,
        pred: impl Fn(&[Event]) -> bool,
    ) -> Result<Vec<Event>> {
        let end = Instant::now() + timeout;
        loop {
            self.check()?;
            let ev = self.events(ns);
            if pred(&ev) || Instant::now() >= end {
                return Ok(ev);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the running kernel offers, as the tracer found it at load.
    pub fn features(&self) -> &Features {
        self.tracer.features()
    }

    pub fn stop(self) -> Result<()> {
        self.tracer.stop().map(|_| ())
    }
}

/// Progress of a run, for a progress bar.
#[derive(Clone, Debug)]
pub struct Progress {
    pub elapsed: Duration,
    /// The longest selected workload's expected time.
    pub expected: Duration,
    pub done: Vec<ClaimId>,
    pub total: usize,
}

/// Measures `claims` (all at once) and returns them in the order of [`ClaimId::ALL`].
/// `on_progress` is called about five times a second. Setting `cancel` stops every workload
/// (their namespaces go with them) and returns an [`Interrupted`] error.
pub fn run(
    claims: &[ClaimId],
    cancel: Arc<AtomicBool>,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Report> {
    let mut wanted: Vec<ClaimId> = claims.to_vec();
    if wanted.is_empty() {
        wanted = ClaimId::ALL.to_vec();
    }
    wanted.sort();
    wanted.dedup();
    let expected = wanted
        .iter()
        .map(|c| c.expected())
        .max()
        .unwrap_or_default();
    let watch = Watch::start(cancel.clone())?;
    let wheel = Wheel::from(watch.features().hz);
    let t0 = Instant::now();
    let results: Vec<(ClaimId, Result<Claim>)> = std::thread::scope(|s| {
        let handles: Vec<_> = wanted
            .iter()
            .map(|&id| {
                let w = &watch;
                let h = std::thread::Builder::new()
                    .name(format!("verify-{id}"))
                    .spawn_scoped(s, move || measure(id, w, wheel));
                (id, h)
            })
            .collect();
        let mut done = Vec::new();
        loop {
            done.clear();
            for (id, h) in &handles {
                if h.as_ref().map(|h| h.is_finished()).unwrap_or(true) {
                    done.push(*id);
                }
            }
            on_progress(&Progress {
                elapsed: t0.elapsed(),
                expected,
                done: done.clone(),
                total: handles.len(),
            });
            if done.len() == handles.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        handles
            .into_iter()
            .map(|(id, h)| {
                let r = match h {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| Err(anyhow!("the {id} workload panicked"))),
                    Err(e) => Err(anyhow!("spawning the {id} workload: {e}")),
                };
                (id, r)
            })
            .collect()
    });
    let lost = watch.lost();
    watch.stop()?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (id, r) in results {
        match r {
            Ok(mut c) => {
                if lost > 0 {
                    // Missing events can only hide sockets, never invent them: say so.
                    if let Value::Object(m) = &mut c.measured {
                        m.insert("lost_events".into(), json!(lost));
                    }
                    c.explanation
                        .push_str(&format!(" ({lost} events were lost by the kernel)"));
                }
                out.push(c)
            }
            Err(e) if e.is::<Interrupted>() => return Err(e),
            Err(e) => errors.push(format!("{id}: {e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("verify failed: {}", errors.join("; "));
    }
    Ok(Report { claims: out })
}

fn measure(id: ClaimId, w: &Watch, wheel: Wheel) -> Result<Claim> {
    let r = match id {
        ClaimId::Duration => duration(w, wheel),
        ClaimId::FinTimeout => fin_timeout(w, wheel),
        ClaimId::Recycle => recycle(w, wheel),
        ClaimId::Reuse => reuse(w),
        ClaimId::MaxTwBuckets => max_tw_buckets(w),
        ClaimId::Linger0 => linger0(w),
        ClaimId::PortExhaustion => port_exhaustion(w),
    };
    if r.is_err() && w.cancel.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        let s = Spread::of(&[5, 1, 3, 2]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (4, 1, 2, 5));
        assert_eq!(Spread::of(&[7]).unwrap().median, 7);
        assert!(Spread::of(&[]).is_none());
        assert_eq!(fmt_s(61_953), "61.95 s");
    }

    #[test]
    fn claim_ids_round_trip() {
        for c in ClaimId::ALL {
            assert_eq!(c.as_str().parse::<ClaimId>().unwrap(), c);
        }
        assert!("nope".parse::<ClaimId>().is_err());
    }
}
