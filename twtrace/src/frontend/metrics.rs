//! The Prometheus exposition of `twtrace serve`: what the [`Aggregator`] knows (the one
//! implementation behind the live view, `report` and `serve`) plus the tracer's own health,
//! rendered with `prometheus-client` in both text formats (OpenMetrics 1.0 and Prometheus
//! 0.0.4).
//!
//! # API
//! ```text
//! let mut m = Metrics::new(Options { peer_labels: 20 });
//! for e in &events { agg.observe(e); m.observe(e); }   // the same events, in order
//! let r = m.render(&agg, &health, &owners);            // once per refresh, not per scrape
//! r.openmetrics / r.text                                // the bodies a scrape sends
//! ```
//!
//! # Series (all prefixed `twtrace_`)
//! | name | type | labels |
//! |---|---|---|
//! | `timewait_sockets` | gauge | netns, substate (`time_wait`, `fin_wait2`) |
//! | `timewait_entries_total` | counter | netns |
//! | `timewait_exits_total` | counter | netns, reason (every [`ExitReason`]) |
//! | `timewait_lifetime_seconds` | histogram | netns; buckets [`LIFETIME_BUCKETS_MS`] |
//! | `overflow_drops_total` | counter | netns |
//! | `kernel_timewait_overflows_total` | counter | netns (TcpExtTCPTimeWaitOverflow) |
//! | `aborts_total` | counter | netns |
//! | `connect_failures_total` | counter | netns, errno, refusal |
//! | `bind_failures_total` | counter | netns |
//! | `paws_rejects_total` | counter | netns |
//! | `port_pressure_ratio` | gauge | netns, raddr, rport (top N only) |
//! | `netns_info` | info | netns, pid, cgroup, runtime; container_id, pod_uid where the cgroup names them |
//! | `workload_timewait_sockets` | gauge | workload, pod, container_id, cgroup_id (top N) |
//! | `workload_timewait_entries_total` | counter | the same (top N) |
//! | `workload_connect_failures_total`, `workload_bind_failures_total` | counter | the same (top N) |
//! | `events_total` | counter | kind |
//! | `events_lost_total`, `decode_errors_total`, `kernel_read_errors_total`, `kernel_map_errors_total`, `kernel_skipped_runs_total` | counter | — |
//! | `hook_attached` | gauge | hook |
//!
//! # Cardinality
//! Every netns series is labelled by the namespace's inode. A namespace gets its counters and
//! histogram once it has had an event (namespaces that only show up in the kernel's census get
//! the `timewait_sockets` gauge alone), and keeps them for [`GONE_KEEP_NS`] after the census
//! stops listing it, so that the last increments are scraped; then they go. Port pressure is
//! exposed for the `peer_labels` fullest destinations only. The cgroup path is an info metric
//! of its own, joined on `netns` when wanted, never a label of every series. The workload
//! families (a cgroup the kernel named on the events: pod, container) cover the `peer_labels`
//! busiest workloads only (most in TIME_WAIT, then most entries); one that drops out of the
//! top N loses its series until it is back (its counters then restart: use `rate()`).
//!
//! # What the aggregator does not break down
//! The histogram needs exact counts at fixed bucket bounds (the aggregator's lifetime
//! histogram is log-linear: its buckets do not fall on 60 s or 62 s), and connect failures are
//! split by errno and refusal here (the aggregator keeps totals per row). [`Metrics::observe`]
//! keeps those two from the same events; everything else comes from the aggregator.

use crate::analysis::aggregate::{Aggregator, Side, SLOT_TW, SLOT_TW_FW2};
pub use crate::host::procs::{cgroup_path, netns_owners, runtime_of, NetnsOwner};
use crate::pipeline::event::{Body, Event, ExitReason, Refusal};
use crate::sink::format::errno_name;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::net::IpAddr;

/// Upper bounds (inclusive, ms) of the lifetime histogram's buckets, then +Inf. Resolves the
/// early deaths (an RST kill at 0.2 s, a reuse after the 1 s delay) and, finely, the 60–62 s
/// band where timer expiries land (60 s plus the timer wheel's slack: up to 2.048 s at
/// HZ=250), with 63 s and above for what outlives it (FIN_WAIT2 re-arms).
pub const LIFETIME_BUCKETS_MS: [u64; 18] = [
    200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 45_000, 59_000, 60_000, 60_500, 61_000,
    61_500, 62_000, 63_000, 90_000, 120_000,
];
const N_BUCKETS: usize = LIFETIME_BUCKETS_MS.len() + 1;

/// How long a namespace's series stay after the census stopped listing it (monotonic ns).
pub const GONE_KEEP_NS: u64 = 5 * 60 * 1_000_000_000;

/// At most this many distinct (netns, errno, refusal) counters; past it, new errnos are
/// counted as `errno="other"`.
const MAX_CONNECT_FAIL_KEYS: usize = 4096;
/// The errno of the `other` bucket.
const ERRNO_OTHER: i32 = i32::MIN;

/// Lifetimes counted at [`LIFETIME_BUCKETS_MS`]: exact (integer ms against integer bounds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LifetimeBuckets {
    /// Per bucket, not cumulative; the last one is +Inf.
    counts: [u64; N_BUCKETS],
    sum_ms: u64,
}

impl LifetimeBuckets {
    pub fn record(&mut self, ms: u64) {
        let i = LIFETIME_BUCKETS_MS.partition_point(|&b| b < ms);
        self.counts[i] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ms as f64 / 1000.0
    }

    /// (upper bound in seconds, count in that bucket alone), +Inf last: what
    /// `encode_histogram` takes.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        LIFETIME_BUCKETS_MS
            .iter()
            .map(|&b| b as f64 / 1000.0)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts)
            .collect()
    }
}

/// The tracer's own state, read by the serve loop at each refresh.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// (hook label, attached), as the tracer's features have them
    /// ([`crate::kernel::features::Features::hook_table`]).
    pub hooks: Vec<(String, bool)>,
    /// Events the kernel could not queue, since start.
    pub lost: u64,
    pub decode_errors: u64,
    /// Kernel reads that failed while filling records (the records were still sent).
    pub read_errors: u64,
    /// Correlation-map updates that failed in the kernel (some attributions missing).
    pub map_errors: u64,
    /// Program runs the kernel skipped (already running on that CPU): events not seen.
    pub skipped_runs: u64,
    /// (netns, kernel TCPTimeWaitOverflow since first seen, overflow events seen).
    pub overflow_check: Vec<(u32, u64, u64)>,
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Destinations with a `port_pressure_ratio` series (the fullest ones).
    pub peer_labels: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { peer_labels: 20 }
    }
}

/// The two bodies of one refresh.
#[derive(Clone, Debug, Default)]
pub struct Rendered {
    /// `application/openmetrics-text; version=1.0.0`, ends with `# EOF`.
    pub openmetrics: String,
    /// `text/plain; version=0.0.4`.
    pub text: String,
    /// Series in it (samples, counting each histogram bucket).
    pub series: usize,
}

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Exposition state: the event-fed breakdowns and which namespaces have gone since when.
#[derive(Debug, Default)]
pub struct Metrics {
    opts: Options,
    lifetimes: HashMap<u32, LifetimeBuckets>,
    connect_fail: HashMap<(u32, i32, Refusal), u64>,
    gone_since: HashMap<u32, u64>,
}

impl Metrics {
    pub fn new(opts: Options) -> Metrics {
        Metrics {
            opts,
            ..Metrics::default()
        }
    }

    /// Feeds one event (the same ones, in the same order, as the aggregator gets).
    pub fn observe(&mut self, e: &Event) {
        match &e.body {
            Body::Exit {
                sock,
                lifetime_ms: Some(ms),
                ..
            } => self.lifetimes.entry(sock.netns).or_default().record(*ms),
            Body::ConnectFail {
                sock,
                errno,
                refusal,
                ..
            } => {
                let mut key = (sock.netns, *errno, *refusal);
                if !self.connect_fail.contains_key(&key)
                    && self.connect_fail.len() >= MAX_CONNECT_FAIL_KEYS
                {
                    key.1 = ERRNO_OTHER;
                }
                *self.connect_fail.entry(key).or_default() += 1;
            }
            _ => {}
        }
    }

    /// Renders the exposition from the aggregator (call [`Aggregator::advance`] first so that
    /// rates and stale rows are current), the tracer's health and the namespaces' owners
    /// (keyed by netns inode; see [`netns_owners`]). Also forgets namespaces gone for longer
    /// than [`GONE_KEEP_NS`].
    pub fn render(
        &mut self,
        agg: &Aggregator,
        health: &Health,
        owners: &HashMap<u64, NetnsOwner>,
    ) -> Rendered {
        let snap = self.snapshot(agg, health, owners);
        let series = snap.series();
        let mut registry = Registry::with_prefix("twtrace");
        registry.register_collector(Box::new(snap));
        let mut openmetrics = String::new();
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a label.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut openmetrics, &registry) {
            log::error!("encoding the OpenMetrics exposition: {e}");
        }
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
            log::error!("encoding the Prometheus text exposition: {e}");
        }
        Rendered {
            openmetrics,
            text,
            series,
        }
    }

    /// The namespaces to expose (gone ones for [`GONE_KEEP_NS`]): rows for those with
    /// events, the census alone for the others, and the inodes kept. Forgets the
    /// breakdowns of the rest.
    #[allow(clippy::type_complexity)]
    fn netns_rows(
        &mut self,
        agg: &Aggregator,
    ) -> (Vec<NetnsRow>, Vec<(String, [u64; 2])>, Vec<u32>) {
        let now = agg.now_ns();
        let mut netns = Vec::new();
        let mut census_only = Vec::new();
        let mut keep = Vec::new();
        for n in agg.netns() {
            if n.gone {
                let since = *self.gone_since.entry(n.netns).or_insert(now);
                if now.saturating_sub(since) > GONE_KEEP_NS {
                    continue;
                }
            } else {
                self.gone_since.remove(&n.netns);
            }
            keep.push(n.netns);
            let timewait = match &n.census {
                Some(c) => [c.current(SLOT_TW), c.current(SLOT_TW_FW2)],
                None => n.timewait,
            };
            let lifetime = self.lifetimes.get(&n.netns).cloned().unwrap_or_default();
            let active = n.entries
                + n.snapshot
                + n.promotes
                + n.exits.iter().sum::<u64>()
                + n.overflow
                + n.aborts
                + n.connect_fail
                + n.paws
                + n.bind_fail
                > 0;
            if !active {
                census_only.push((n.netns.to_string(), timewait));
                continue;
            }
            netns.push(NetnsRow {
                label: n.netns.to_string(),
                timewait,
                entries: n.entries,
                exits: ExitReason::ALL
                    .iter()
                    .map(|r| (r.as_str(), n.exits[r.index()]))
                    .collect(),
                overflow: n.overflow,
                aborts: n.aborts,
                paws: n.paws,
                bind_fail: n.bind_fail,
                lifetime,
            });
        }
        // Forget what is no longer shown, so that the breakdowns stay bounded too.
        self.lifetimes.retain(|ns, _| keep.contains(ns));
        self.connect_fail.retain(|k, _| keep.contains(&k.0));
        self.gone_since.retain(|ns, _| keep.contains(ns));
        netns.sort_by(|a, b| a.label.cmp(&b.label));
        census_only.sort();
        (netns, census_only, keep)
    }

    fn snapshot(
        &mut self,
        agg: &Aggregator,
        health: &Health,
        owners: &HashMap<u64, NetnsOwner>,
    ) -> Snapshot {
        let (netns, census_only, keep) = self.netns_rows(agg);
        let mut connect_fail: Vec<(String, String, &'static str, u64)> = self
            .connect_fail
            .iter()
            .map(|(&(ns, errno, refusal), &n)| {
                (
                    ns.to_string(),
                    errno_label(errno),
                    refusal_label(refusal),
                    n,
                )
            })
            .collect();
        connect_fail.sort();

        let pressure = top_pressure(agg, self.opts.peer_labels);

        let mut info: Vec<(String, String, String, &'static str)> = keep
            .iter()
            .filter_map(|ns| {
                owners.get(&u64::from(*ns)).map(|o| {
                    (
                        ns.to_string(),
                        o.pid.to_string(),
                        o.cgroup.clone(),
                        runtime_of(&o.cgroup),
                    )
                })
            })
            .collect();
        info.sort();

        let mut kernel_overflows: Vec<(String, u64)> = health
            .overflow_check
            .iter()
            .filter(|(ns, _, _)| keep.contains(ns))
            .map(|(ns, kernel, _)| (ns.to_string(), *kernel))
            .collect();
        kernel_overflows.sort();

        let t = agg.totals();
        let mut kinds: Vec<(&'static str, u64)> = t.by_kind.clone();
        kinds.sort();

        Snapshot {
            netns,
            census_only,
            connect_fail,
            pressure,
            info,
            workloads: top_workloads(agg, self.opts.peer_labels),
            kernel_overflows,
            kinds,
            hooks: health.hooks.clone(),
            lost: health.lost.max(t.lost),
            decode_errors: health.decode_errors,
            read_errors: health.read_errors,
            map_errors: health.map_errors,
            skipped_runs: health.skipped_runs,
        }
    }
}

/// A workload counter family: name, help, and its value in a row.
type WorkloadCounter = (&'static str, &'static str, fn(&WorkloadRow) -> u64);

/// One workload's series: labels (workload, pod, container_id, cgroup_id) and values.
#[derive(Debug)]
struct WorkloadRow {
    labels: [String; 4],
    timewait: u64,
    entries: u64,
    connect_fail: u64,
    bind_fail: u64,
}

impl WorkloadRow {
    fn labels(&self) -> [(&'static str, &str); 4] {
        let [w, pod, container, id] = &self.labels;
        [
            ("workload", w.as_str()),
            ("pod", pod.as_str()),
            ("container_id", container.as_str()),
            ("cgroup_id", id.as_str()),
        ]
    }
}

/// The `n` busiest workloads: most sockets in TIME_WAIT, then most entries.
fn top_workloads(agg: &Aggregator, n: usize) -> Vec<WorkloadRow> {
    let mut rows: Vec<&crate::analysis::aggregate::WorkloadStats> = agg.workloads().collect();
    rows.sort_by_key(|r| {
        (
            std::cmp::Reverse(r.timewait[0] + r.timewait[1]),
            std::cmp::Reverse(r.entries + r.connect_fail + r.bind_fail),
            r.workload.cgroup_id,
        )
    });
    rows.into_iter()
        .take(n)
        .map(|r| {
            let w = &r.workload;
            WorkloadRow {
                labels: [
                    w.short(),
                    w.pod.clone().unwrap_or_default(),
                    w.container_id.clone().unwrap_or_default(),
                    w.cgroup_id.to_string(),
                ],
                timewait: r.timewait[0] + r.timewait[1],
                entries: r.entries,
                connect_fail: r.connect_fail,
                bind_fail: r.bind_fail,
            }
        })
        .collect()
}

/// The fullest destinations by port pressure: (netns, raddr, rport, ratio), at most `n`,
/// fullest first. Only client rows (the side whose ports run out) with a known port range and
/// something in TIME_WAIT. The pool is per local address too; the label set has no local
/// address, so a destination reached from several takes the fullest pool.
pub fn top_pressure(agg: &Aggregator, n: usize) -> Vec<(String, String, String, f64)> {
    if n == 0 {
        return Vec::new();
    }
    let mut by_dest: HashMap<(u32, IpAddr, u16), f64> = HashMap::new();
    for p in agg.peers() {
        if p.key.side != Side::Client || p.timewait_total() == 0 {
            continue;
        }
        let Some(ratio) = agg
            .peer_summary(p)
            .forecast
            .and_then(|f| f.pressure)
            .filter(|r| r.is_finite() && *r > 0.0)
        else {
            continue;
        };
        let e = by_dest
            .entry((p.key.netns, p.key.raddr, p.key.port))
            .or_insert(0.0);
        *e = e.max(ratio);
    }
    let mut rows: Vec<((u32, IpAddr, u16), f64)> = by_dest.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.truncate(n);
    rows.into_iter()
        .map(|((ns, raddr, port), r)| (ns.to_string(), raddr.to_string(), port.to_string(), r))
        .collect()
}

/// `EADDRNOTAVAIL`, or the number for errnos without a name here.
fn errno_label(errno: i32) -> String {
    match errno {
        ERRNO_OTHER => "other".into(),
        e => match errno_name(e) {
            "E?" => e.to_string(),
            name => name.into(),
        },
    }
}

/// [`Refusal::as_str`] with underscores: `reuse_off`, `too_young`, …
fn refusal_label(r: Refusal) -> &'static str {
    match r {
        Refusal::ReuseOff => "reuse_off",
        Refusal::LoopbackOnly => "loopback_only",
        Refusal::NoTimestamps => "no_timestamps",
        Refusal::TooYoung => "too_young",
        Refusal::FinWait2 => "fin_wait2",
        Refusal::NoTimewait => "no_timewait",
        Refusal::Unknown => "unknown",
    }
}

// ---------------------------------------------------------------------------------------------
// The snapshot a registry encodes

#[derive(Debug)]
struct NetnsRow {
    label: String,
    timewait: [u64; 2],
    entries: u64,
    exits: Vec<(&'static str, u64)>,
    overflow: u64,
    aborts: u64,
    paws: u64,
    bind_fail: u64,
    lifetime: LifetimeBuckets,
}

/// Everything one refresh exposes, as plain values.
#[derive(Debug)]
struct Snapshot {
    netns: Vec<NetnsRow>,
    /// (netns, timewait by substate) for namespaces only the census knows.
    census_only: Vec<(String, [u64; 2])>,
    /// (netns, errno, refusal, count).
    connect_fail: Vec<(String, String, &'static str, u64)>,
    /// (netns, raddr, rport, ratio).
    pressure: Vec<(String, String, String, f64)>,
    /// (netns, pid, cgroup, runtime).
    info: Vec<(String, String, String, &'static str)>,
    /// The busiest workloads.
    workloads: Vec<WorkloadRow>,
    /// (netns, kernel count).
    kernel_overflows: Vec<(String, u64)>,
    kinds: Vec<(&'static str, u64)>,
    hooks: Vec<(String, bool)>,
    lost: u64,
    decode_errors: u64,
    read_errors: u64,
    map_errors: u64,
    skipped_runs: u64,
}

const SUBSTATES: [&str; 2] = ["time_wait", "fin_wait2"];

impl Snapshot {
    fn series(&self) -> usize {
        // timewait ×2, entries, exits, the lifetime histogram, then overflow_drops, aborts,
        // paws_rejects and bind_failures.
        let per_netns = 2 + 1 + ExitReason::ALL.len() + (N_BUCKETS + 2) + 4;
        self.netns.len() * per_netns
            + self.census_only.len() * 2
            + self.connect_fail.len()
            + self.pressure.len()
            + self.info.len()
            + self.workloads.len() * 4
            + self.kernel_overflows.len()
            + self.kinds.len()
            + self.hooks.len()
            // events_lost, decode_errors, kernel_read_errors, kernel_map_errors,
            // kernel_skipped_runs
            + 5
    }
}

/// One metric family: its descriptor, then one sample per (labels, value).
fn family<'a, const N: usize, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    (name, help, unit, kind): (&str, &str, Option<&Unit>, MetricType),
    samples: impl IntoIterator<Item = ([(&'a str, &'a str); N], M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in samples {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter without labels.
fn single_counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn counter(
    name: &'static str,
    help: &'static str,
) -> (
    &'static str,
    &'static str,
    Option<&'static Unit>,
    MetricType,
) {
    (name, help, None, MetricType::Counter)
}

fn gauge(
    name: &'static str,
    help: &'static str,
) -> (
    &'static str,
    &'static str,
    Option<&'static Unit>,
    MetricType,
) {
    (name, help, None, MetricType::Gauge)
}

/// A netns row's lifetime histogram as a metric value.
struct Lifetime<'a>(&'a LifetimeBuckets);

impl EncodeMetric for Lifetime<'_> {
    fn encode(&self, mut m: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = self.0;
        m.encode_histogram::<NoLabelSet>(h.sum_seconds(), h.count(), &h.buckets(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Names without `_total` (and units without their suffix): the encoders add them.
        self.encode_netns(&mut enc)?;
        self.encode_troubles(&mut enc)?;
        self.encode_tracer(&mut enc)
    }
}

impl Snapshot {
    /// A counter per netns row.
    fn per_netns<'s>(
        &'s self,
        value: fn(&NetnsRow) -> u64,
    ) -> impl Iterator<Item = ([(&'s str, &'s str); 1], ConstCounter<u64>)> + 's {
        self.netns
            .iter()
            .map(move |n| ([("netns", n.label.as_str())], ConstCounter::new(value(n))))
    }

    /// The netns families of the lifecycle: sockets now, entries, exits, lifetimes.
    fn encode_netns(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let census = self
            .netns
            .iter()
            .map(|n| (n.label.as_str(), n.timewait))
            .chain(self.census_only.iter().map(|(l, tw)| (l.as_str(), *tw)));
        family(
            e,
            gauge(
                "timewait_sockets",
                "Timewait sockets now, by substate (the kernel's census kept current by events)",
            ),
            census.flat_map(|(netns, tw)| {
                SUBSTATES.iter().zip(tw).map(move |(s, v)| {
                    (
                        [("netns", netns), ("substate", *s)],
                        ConstGauge::new(v as i64),
                    )
                })
            }),
        )?;
        family(
            e,
            counter(
                "timewait_entries",
                "Sockets that entered TIME_WAIT while traced (not those found at start-up)",
            ),
            self.per_netns(|n| n.entries),
        )?;
        family(
            e,
            counter("timewait_exits", "Timewait sockets that ended, by reason"),
            self.netns.iter().flat_map(|n| {
                n.exits.iter().map(|(reason, v)| {
                    (
                        [("netns", n.label.as_str()), ("reason", *reason)],
                        ConstCounter::new(*v),
                    )
                })
            }),
        )?;
        family(
            e,
            (
                "timewait_lifetime",
                "How long timewait sockets lived, birth (or kernel entry stamp) to end",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            ),
            self.netns
                .iter()
                .map(|n| ([("netns", n.label.as_str())], Lifetime(&n.lifetime))),
        )?;
        Ok(())
    }

    /// The netns families of what went wrong: overflows, aborts, failed connects, PAWS
    /// drops, and the port pressure that leads there.
    fn encode_troubles(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            e,
            counter(
                "overflow_drops",
                "Connections closed without a timewait socket: tcp_max_tw_buckets was reached",
            ),
            self.per_netns(|n| n.overflow),
        )?;
        family(
            e,
            counter(
                "kernel_timewait_overflows",
                "The kernel's TcpExtTCPTimeWaitOverflow since first seen (cross-check of overflow_drops)",
            ),
            self.kernel_overflows
                .iter()
                .map(|(netns, v)| ([("netns", netns.as_str())], ConstCounter::new(*v))),
        )?;
        family(
            e,
            counter(
                "aborts",
                "Connections reset by the application instead of closed (no TIME_WAIT)",
            ),
            self.per_netns(|n| n.aborts),
        )?;
        family(
            e,
            counter(
                "connect_failures",
                "connect() failures for want of a local port, by errno and why no timewait socket could be reused",
            ),
            self.connect_fail.iter().map(|(netns, errno, refusal, v)| {
                (
                    [("netns", netns.as_str()), ("errno", errno.as_str()), ("refusal", *refusal)],
                    ConstCounter::new(*v),
                )
            }),
        )?;
        family(
            e,
            counter(
                "bind_failures",
                "bind() to port 0 refused (EADDRINUSE): the one pool of bind-before-connect used up",
            ),
            self.per_netns(|n| n.bind_fail),
        )?;
        family(
            e,
            counter(
                "paws_rejects",
                "Segments dropped by a timewait socket's PAWS check",
            ),
            self.per_netns(|n| n.paws),
        )?;
        // Unit::Ratios would make it `_ratios`; the naming rules say `_ratio`.
        let ratio = Unit::Other("ratio".into());
        family(
            e,
            (
                "port_pressure",
                "Timewait sockets toward a destination over the usable ephemeral ports (fullest destinations only)",
                Some(&ratio),
                MetricType::Gauge,
            ),
            self.pressure.iter().map(|(netns, raddr, rport, r)| {
                (
                    [("netns", netns.as_str()), ("raddr", raddr.as_str()), ("rport", rport.as_str())],
                    ConstGauge::new(*r),
                )
            }),
        )?;
        self.encode_workloads(e)
    }

    /// The busiest workloads' families (none at all before an event named a workload).
    fn encode_workloads(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.workloads.is_empty() {
            return Ok(());
        }
        family(
            e,
            gauge(
                "workload_timewait_sockets",
                "Sockets in TIME_WAIT owned by a workload (cgroup), busiest workloads only",
            ),
            self.workloads
                .iter()
                .map(|r| (r.labels(), ConstGauge::new(r.timewait as i64))),
        )?;
        let counters: [WorkloadCounter; 3] = [
            (
                "workload_timewait_entries",
                "Connections of a workload that entered TIME_WAIT, busiest workloads only",
                |r| r.entries,
            ),
            (
                "workload_connect_failures",
                "connect() failures for want of a local port, by workload, busiest workloads only",
                |r| r.connect_fail,
            ),
            (
                "workload_bind_failures",
                "bind() to port 0 refused (EADDRINUSE), by workload, busiest workloads only",
                |r| r.bind_fail,
            ),
        ];
        for (name, help, value) in counters {
            family(
                e,
                counter(name, help),
                self.workloads
                    .iter()
                    .map(|r| (r.labels(), ConstCounter::new(value(r)))),
            )?;
        }
        Ok(())
    }

    /// The netns owners, and the tracer's own health.
    fn encode_tracer(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = e.encode_descriptor(
            "netns",
            "A task in the network namespace and its cgroup",
            None,
            MetricType::Info,
        )?;
        for (netns, pid, cgroup, runtime) in &self.info {
            let mut labels = vec![
                ("netns", netns.as_str()),
                ("pid", pid.as_str()),
                ("cgroup", cgroup.as_str()),
                ("runtime", runtime),
            ];
            // The cgroup path's container and pod, where its names give them.
            let w = crate::host::workload::Workload::from_path(0, cgroup);
            if let Some(c) = &w.container_id {
                labels.push(("container_id", c.as_str()));
            }
            if let Some(p) = &w.pod_uid {
                labels.push(("pod_uid", p.as_str()));
            }
            m.encode_info(&labels)?;
        }
        family(
            e,
            counter("events", "Events the tracer produced, by kind"),
            self.kinds
                .iter()
                .map(|(kind, v)| ([("kind", *kind)], ConstCounter::new(*v))),
        )?;
        single_counter(
            e,
            "events_lost",
            "Events the kernel could not queue (ring buffer full): every number above may be short",
            self.lost,
        )?;
        single_counter(
            e,
            "decode_errors",
            "Ring-buffer records that could not be decoded",
            self.decode_errors,
        )?;
        single_counter(
            e,
            "kernel_read_errors",
            "Kernel reads that failed while filling records (sent anyway): some fields may be wrong",
            self.read_errors,
        )?;
        single_counter(
            e,
            "kernel_map_errors",
            "Correlation-map updates that failed in the kernel: some births may lack their closing process, some connect()s their reuse verdict",
            self.map_errors,
        )?;
        single_counter(
            e,
            "kernel_skipped_runs",
            "Runs of twtrace's programs the kernel skipped (already running on that CPU): events not seen, like the lost ones",
            self.skipped_runs,
        )?;
        family(
            e,
            gauge(
                "hook_attached",
                "Whether each kernel hook is attached (1) or unavailable (0)",
            ),
            self.hooks
                .iter()
                .map(|(hook, ok)| ([("hook", hook.as_str())], ConstGauge::new(i64::from(*ok)))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::aggregate::tests::ports;
    use crate::kernel::snapshot::NetnsCensus;
    use crate::pipeline::event::{Sock, Substate, Task};
    use std::collections::{BTreeMap, BTreeSet};

    const NSX: u32 = 4026532000;
    const NSY: u32 = 4026532111;
    const S: u64 = 1_000_000_000;

    fn sock(tw: u64, netns: u32, l: [u8; 4], lport: u16, r: [u8; 4], rport: u16) -> Sock {
        Sock::v4(tw, netns, l, lport, r, rport)
    }

    fn client(tw: u64, lport: u16) -> Sock {
        sock(tw, NSX, [10, 0, 0, 1], lport, [10, 0, 0, 2], 443)
    }

    fn ev(ts_s: f64, body: Body) -> Event {
        Event::new((ts_s * 1e9) as u64, body)
    }

    fn enter(ts_s: f64, s: Sock) -> Event {
        ev(
            ts_s,
            Body::Enter {
                sock: s,
                substate: Substate::TimeWait,
                timeout_ms: 60_000,
                task: Some(Task {
                    pid: 100,
                    comm: "curl".into(),
                }),
                snapshot: false,
                age_ms: None,
            },
        )
    }

    fn exit(ts_s: f64, s: Sock, reason: ExitReason, ms: u64) -> Event {
        ev(
            ts_s,
            Body::Exit {
                sock: s,
                substate: Substate::TimeWait,
                reason,
                lifetime_ms: Some(ms),
                task: None,
            },
        )
    }

    fn feed(agg: &mut Aggregator, m: &mut Metrics, events: &[Event]) {
        for e in events {
            agg.observe(e);
            m.observe(e);
        }
    }

    /// One sample of the Prometheus text format.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// (TYPE per family, samples). Enough of the format for these tests: label values
    /// without escaped quotes.
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (n, ty) = t.split_once(' ').unwrap();
                types.insert(n.to_string(), ty.to_string());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (head, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').unwrap();
                    let mut labels = BTreeMap::new();
                    for pair in body.split("\",") {
                        let (k, v) = pair.split_once("=\"").unwrap();
                        labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                    }
                    (n.to_string(), labels)
                }
                None => (head.to_string(), BTreeMap::new()),
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        (types, samples)
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    fn health() -> Health {
        Health {
            hooks: vec![
                ("tp_btf/timer_start".into(), true),
                ("iter/tcp".into(), false),
            ],
            lost: 0,
            decode_errors: 2,
            read_errors: 3,
            map_errors: 4,
            skipped_runs: 5,
            overflow_check: vec![(NSX, 1, 1)],
        }
    }

    /// A session with one of every kind of event in NSX, and a census that also lists NSY.
    fn session() -> (Aggregator, Metrics) {
        let mut agg = Aggregator::default();
        let mut m = Metrics::new(Options::default());
        agg.set_context(NSX, ports(40000, 40009, Some(0)));
        let mut ev_list = Vec::new();
        for i in 0..5u64 {
            ev_list.push(enter(1.0, client(i, 40000 + i as u16)));
        }
        ev_list.push(exit(2.0, client(0, 40000), ExitReason::Reused, 1_000));
        ev_list.push(exit(62.0, client(1, 40001), ExitReason::Expired, 60_000));
        ev_list.push(exit(62.0, client(2, 40002), ExitReason::Expired, 61_200));
        ev_list.push(ev(
            3.0,
            Body::Overflow {
                sock: client(9, 40009),
            },
        ));
        ev_list.push(ev(
            3.0,
            Body::Abort {
                sock: client(8, 40008),
                task: None,
            },
        ));
        ev_list.push(ev(
            3.0,
            Body::PawsReject {
                sock: client(3, 40003),
            },
        ));
        for refusal in [Refusal::TooYoung, Refusal::TooYoung, Refusal::ReuseOff] {
            ev_list.push(ev(
                4.0,
                Body::ConnectFail {
                    sock: client(0, 0),
                    errno: libc::EADDRNOTAVAIL,
                    refusal,
                    timewait: 3,
                    candidates: None,
                    task: None,
                },
            ));
        }
        ev_list.push(ev(5.0, Body::Lost { count: 7 }));
        feed(&mut agg, &mut m, &ev_list);
        let mut counts = [0u64; crate::analysis::aggregate::CENSUS_SLOTS];
        counts[SLOT_TW] = 4;
        agg.set_census(
            63 * S,
            &[
                NetnsCensus {
                    netns: u64::from(NSX),
                    counts,
                },
                NetnsCensus {
                    netns: u64::from(NSY),
                    counts: [0; crate::analysis::aggregate::CENSUS_SLOTS],
                },
            ],
        );
        agg.advance(63 * S);
        (agg, m)
    }

    /// The namespace owners map with one entry: NSX's.
    fn owner_of_nsx(pid: u32, cgroup: &str) -> HashMap<u64, NetnsOwner> {
        HashMap::from([(
            u64::from(NSX),
            NetnsOwner {
                pid,
                cgroup: cgroup.into(),
            },
        )])
    }

    #[test]
    fn names_types_and_label_sets() {
        let (agg, mut m) = session();
        let owners = owner_of_nsx(
            4242,
            "/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab12.scope",
        );
        let r = m.render(&agg, &health(), &owners);
        let (types, samples) = parse(&r.text);
        let expect_types = [
            ("twtrace_timewait_sockets", "gauge"),
            ("twtrace_timewait_entries_total", "counter"),
            ("twtrace_timewait_exits_total", "counter"),
            ("twtrace_timewait_lifetime_seconds", "histogram"),
            ("twtrace_overflow_drops_total", "counter"),
            ("twtrace_kernel_timewait_overflows_total", "counter"),
            ("twtrace_aborts_total", "counter"),
            ("twtrace_connect_failures_total", "counter"),
            ("twtrace_bind_failures_total", "counter"),
            ("twtrace_paws_rejects_total", "counter"),
            ("twtrace_port_pressure_ratio", "gauge"),
            // The 0.0.4 format has no info type: a gauge of value 1.
            ("twtrace_netns_info", "gauge"),
            ("twtrace_events_total", "counter"),
            ("twtrace_events_lost_total", "counter"),
            ("twtrace_decode_errors_total", "counter"),
            ("twtrace_kernel_read_errors_total", "counter"),
            ("twtrace_kernel_map_errors_total", "counter"),
            ("twtrace_kernel_skipped_runs_total", "counter"),
            ("twtrace_hook_attached", "gauge"),
        ];
        for (name, ty) in expect_types {
            assert_eq!(
                types.get(name).map(String::as_str),
                Some(ty),
                "{name}\n{}",
                r.text
            );
        }
        assert_eq!(types.len(), expect_types.len(), "{types:?}");
        // Label keys per sample name.
        let mut keys: BTreeMap<&str, BTreeSet<Vec<&str>>> = BTreeMap::new();
        for s in &samples {
            keys.entry(s.name.as_str())
                .or_default()
                .insert(s.labels.keys().map(String::as_str).collect());
        }
        let one = |k: &[&'static str]| -> BTreeSet<Vec<&str>> {
            let mut v: Vec<&str> = k.to_vec();
            v.sort();
            [v].into_iter().collect()
        };
        assert_eq!(
            keys["twtrace_timewait_sockets"],
            one(&["netns", "substate"])
        );
        assert_eq!(keys["twtrace_timewait_entries_total"], one(&["netns"]));
        assert_eq!(
            keys["twtrace_timewait_exits_total"],
            one(&["netns", "reason"])
        );
        assert_eq!(
            keys["twtrace_timewait_lifetime_seconds_bucket"],
            one(&["netns", "le"])
        );
        assert_eq!(
            keys["twtrace_timewait_lifetime_seconds_sum"],
            one(&["netns"])
        );
        assert_eq!(
            keys["twtrace_timewait_lifetime_seconds_count"],
            one(&["netns"])
        );
        assert_eq!(
            keys["twtrace_connect_failures_total"],
            one(&["netns", "errno", "refusal"])
        );
        assert_eq!(keys["twtrace_bind_failures_total"], one(&["netns"]));
        assert_eq!(
            keys["twtrace_port_pressure_ratio"],
            one(&["netns", "raddr", "rport"])
        );
        assert_eq!(
            keys["twtrace_netns_info"],
            one(&["netns", "pid", "cgroup", "runtime"])
        );
        assert_eq!(keys["twtrace_hook_attached"], one(&["hook"]));
        assert_eq!(keys["twtrace_events_lost_total"], one(&[]));
        assert_eq!(keys["twtrace_events_total"], one(&["kind"]));

        // Values.
        let ns = NSX.to_string();
        let nsl = [("netns", ns.as_str())];
        let v = |name: &str, extra: &[(&str, &str)]| {
            let mut l = nsl.to_vec();
            l.extend_from_slice(extra);
            value(&samples, name, &l)
        };
        assert_eq!(v("twtrace_timewait_entries_total", &[]), Some(5.0));
        assert_eq!(
            v("twtrace_timewait_exits_total", &[("reason", "expired")]),
            Some(2.0)
        );
        assert_eq!(
            v("twtrace_timewait_exits_total", &[("reason", "reused")]),
            Some(1.0)
        );
        // Every reason is there, zero or not, so that rate() sees the first one.
        for r in ExitReason::ALL {
            assert!(
                v("twtrace_timewait_exits_total", &[("reason", r.as_str())]).is_some(),
                "{r:?}"
            );
        }
        // The census (4 at 63 s) is what the gauge shows, not the events' own count.
        assert_eq!(
            v("twtrace_timewait_sockets", &[("substate", "time_wait")]),
            Some(4.0)
        );
        assert_eq!(
            v("twtrace_timewait_sockets", &[("substate", "fin_wait2")]),
            Some(0.0)
        );
        assert_eq!(v("twtrace_overflow_drops_total", &[]), Some(1.0));
        assert_eq!(v("twtrace_kernel_timewait_overflows_total", &[]), Some(1.0));
        assert_eq!(v("twtrace_aborts_total", &[]), Some(1.0));
        assert_eq!(v("twtrace_paws_rejects_total", &[]), Some(1.0));
        assert_eq!(
            v(
                "twtrace_connect_failures_total",
                &[("errno", "EADDRNOTAVAIL"), ("refusal", "too_young")]
            ),
            Some(2.0)
        );
        assert_eq!(
            v(
                "twtrace_connect_failures_total",
                &[("errno", "EADDRNOTAVAIL"), ("refusal", "reuse_off")]
            ),
            Some(1.0)
        );
        // 2 of 5 still in TIME_WAIT toward 10.0.0.2:443, 10 usable ports.
        assert_eq!(
            v(
                "twtrace_port_pressure_ratio",
                &[("raddr", "10.0.0.2"), ("rport", "443")]
            ),
            Some(0.2)
        );
        assert_eq!(
            v(
                "twtrace_netns_info",
                &[("runtime", "containerd"), ("pid", "4242")]
            ),
            Some(1.0)
        );
        assert_eq!(value(&samples, "twtrace_events_lost_total", &[]), Some(7.0));
        assert_eq!(
            value(&samples, "twtrace_decode_errors_total", &[]),
            Some(2.0)
        );
        assert_eq!(
            value(&samples, "twtrace_kernel_read_errors_total", &[]),
            Some(3.0)
        );
        assert_eq!(
            value(&samples, "twtrace_kernel_map_errors_total", &[]),
            Some(4.0)
        );
        assert_eq!(
            value(&samples, "twtrace_kernel_skipped_runs_total", &[]),
            Some(5.0)
        );
        assert_eq!(
            value(&samples, "twtrace_events_total", &[("kind", "enter")]),
            Some(5.0)
        );
        assert_eq!(
            value(
                &samples,
                "twtrace_hook_attached",
                &[("hook", "tp_btf/timer_start")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&samples, "twtrace_hook_attached", &[("hook", "iter/tcp")]),
            Some(0.0)
        );
        // NSY is only in the census: a gauge and nothing else.
        let y = NSY.to_string();
        let ys: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.labels.get("netns") == Some(&y))
            .collect();
        assert_eq!(ys.len(), 2, "{ys:?}");
        assert!(ys.iter().all(|s| s.name == "twtrace_timewait_sockets"));
        assert!(
            r.series >= samples.len(),
            "{} < {}",
            r.series,
            samples.len()
        );
    }

    #[test]
    fn openmetrics_body_is_complete() {
        let (agg, mut m) = session();
        let r = m.render(&agg, &health(), &HashMap::new());
        let om = &r.openmetrics;
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(
            om.contains("# TYPE twtrace_timewait_entries counter\n"),
            "{om}"
        );
        assert!(om.contains("# TYPE twtrace_timewait_lifetime_seconds histogram\n"));
        assert!(om.contains("# UNIT twtrace_timewait_lifetime_seconds seconds\n"));
        assert!(om.contains("# TYPE twtrace_port_pressure_ratio gauge\n"));
        assert!(om.contains("# TYPE twtrace_netns info\n"));
        assert!(om.contains(&format!(
            "twtrace_timewait_entries_total{{netns=\"{NSX}\"}} 5\n"
        )));
        // Metric names follow the rules: [a-zA-Z_:][a-zA-Z0-9_:]*, snake case, twtrace_.
        for line in om.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("twtrace_"), "{line}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{line}"
            );
        }
    }

    #[test]
    fn histogram_buckets_are_exact_and_cumulative() {
        // Resolves 0.2 s at the bottom and 62 s in the expiry band.
        assert_eq!(LIFETIME_BUCKETS_MS[0], 200);
        assert!(LIFETIME_BUCKETS_MS.contains(&62_000));
        assert!(LIFETIME_BUCKETS_MS.windows(2).all(|w| w[0] < w[1]));
        let band: Vec<u64> = LIFETIME_BUCKETS_MS
            .iter()
            .copied()
            .filter(|b| (60_000..=62_000).contains(b))
            .collect();
        assert!(band.len() >= 5, "0.5 s steps between 60 and 62 s: {band:?}");

        let mut agg = Aggregator::default();
        let mut m = Metrics::new(Options::default());
        // A value on a bound belongs to that bucket (le is inclusive); one past it to the next.
        let lifetimes = [
            0u64, 200, 201, 1_000, 60_000, 60_001, 61_999, 62_000, 500_000,
        ];
        let events: Vec<Event> = lifetimes
            .iter()
            .enumerate()
            .map(|(i, &ms)| exit(70.0, client(i as u64, 40000), ExitReason::Expired, ms))
            .collect();
        feed(&mut agg, &mut m, &events);
        let r = m.render(&agg, &Health::default(), &HashMap::new());
        let (_, samples) = parse(&r.text);
        let ns = NSX.to_string();
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name == "twtrace_timewait_lifetime_seconds_bucket")
            .map(|s| {
                let le = match s.labels["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap(),
                };
                (le, s.value)
            })
            .collect();
        assert_eq!(buckets.len(), LIFETIME_BUCKETS_MS.len() + 1);
        for (b, ms) in buckets.iter().zip(LIFETIME_BUCKETS_MS) {
            assert_eq!(b.0, ms as f64 / 1000.0);
        }
        let le = |x: f64| buckets.iter().find(|b| b.0 == x).unwrap().1;
        assert_eq!(le(0.2), 2.0);
        assert_eq!(le(0.5), 3.0);
        assert_eq!(le(1.0), 4.0);
        assert_eq!(le(59.0), 4.0);
        assert_eq!(le(60.0), 5.0);
        assert_eq!(le(60.5), 6.0);
        assert_eq!(le(61.5), 6.0);
        assert_eq!(le(62.0), 8.0);
        assert_eq!(le(120.0), 8.0);
        assert_eq!(le(f64::INFINITY), 9.0);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative");
        let nsl = [("netns", ns.as_str())];
        assert_eq!(
            value(&samples, "twtrace_timewait_lifetime_seconds_count", &nsl),
            Some(9.0)
        );
        let sum: u64 = lifetimes.iter().sum();
        assert_eq!(
            value(&samples, "twtrace_timewait_lifetime_seconds_sum", &nsl),
            Some(sum as f64 / 1000.0)
        );
    }

    #[test]
    fn port_pressure_is_top_n_fullest_per_destination() {
        let mut agg = Aggregator::default();
        agg.set_context(NSX, ports(40000, 40099, None));
        // Destination d gets d+1 TIME_WAIT sockets from 10.0.0.1, and destination 0 also 50
        // from 10.0.0.9 (another pool toward the same destination: the fuller one counts).
        let mut tw = 0u64;
        for d in 0..30u8 {
            for i in 0..=u16::from(d) {
                tw += 1;
                agg.observe(&enter(
                    1.0,
                    sock(tw, NSX, [10, 0, 0, 1], 40000 + i, [10, 1, 0, d], 80),
                ));
            }
        }
        for i in 0..50u16 {
            tw += 1;
            agg.observe(&enter(
                1.0,
                sock(tw, NSX, [10, 0, 0, 9], 40000 + i, [10, 1, 0, 0], 80),
            ));
        }
        // An accepting-side row (local port 80 outside the range): never a pool.
        for i in 0..99u16 {
            tw += 1;
            agg.observe(&enter(
                1.0,
                sock(tw, NSX, [10, 0, 0, 1], 80, [10, 2, 0, 1], 50000 + i),
            ));
        }
        let top = top_pressure(&agg, 5);
        let got: Vec<(&str, f64)> = top.iter().map(|r| (r.1.as_str(), r.3)).collect();
        assert_eq!(
            got,
            vec![
                ("10.1.0.0", 0.5),
                ("10.1.0.29", 0.3),
                ("10.1.0.28", 0.29),
                ("10.1.0.27", 0.28),
                ("10.1.0.26", 0.27)
            ]
        );
        assert!(top.iter().all(|r| r.0 == NSX.to_string() && r.2 == "80"));
        assert!(top_pressure(&agg, 0).is_empty());
        assert_eq!(top_pressure(&agg, 1000).len(), 30);
        // --peer-labels bounds the series.
        let mut m = Metrics::new(Options { peer_labels: 3 });
        let r = m.render(&agg, &Health::default(), &HashMap::new());
        let (_, samples) = parse(&r.text);
        assert_eq!(
            samples
                .iter()
                .filter(|s| s.name == "twtrace_port_pressure_ratio")
                .count(),
            3
        );
    }

    #[test]
    fn gone_namespaces_leave_after_a_grace_period() {
        let (mut agg, mut m) = session();
        let ns = NSX.to_string();
        let has_nsx = |r: &Rendered| r.text.contains(&format!("netns=\"{ns}\""));
        assert!(has_nsx(&m.render(
            &agg,
            &Health::default(),
            &HashMap::new()
        )));
        // The census no longer lists NSX: gone, still shown for a while.
        agg.set_census(70 * S, &[]);
        assert!(agg.netns_stats(NSX).unwrap().gone);
        assert!(has_nsx(&m.render(
            &agg,
            &Health::default(),
            &HashMap::new()
        )));
        agg.advance(70 * S + GONE_KEEP_NS);
        assert!(has_nsx(&m.render(
            &agg,
            &Health::default(),
            &HashMap::new()
        )));
        agg.advance(71 * S + GONE_KEEP_NS);
        let r = m.render(&agg, &Health::default(), &HashMap::new());
        assert!(!has_nsx(&r), "{}", r.text);
        // Its breakdowns went with it.
        assert!(m.lifetimes.is_empty() && m.connect_fail.is_empty());
    }

    #[test]
    fn connect_failure_keys_are_bounded() {
        let mut m = Metrics::default();
        for errno in 0..(MAX_CONNECT_FAIL_KEYS as i32 + 100) {
            m.observe(&ev(
                1.0,
                Body::ConnectFail {
                    sock: client(0, 0),
                    errno: 1000 + errno,
                    refusal: Refusal::Unknown,
                    timewait: 0,
                    candidates: None,
                    task: None,
                },
            ));
        }
        assert_eq!(m.connect_fail.len(), MAX_CONNECT_FAIL_KEYS + 1);
        assert_eq!(m.connect_fail[&(NSX, ERRNO_OTHER, Refusal::Unknown)], 100);
        assert_eq!(errno_label(ERRNO_OTHER), "other");
        assert_eq!(errno_label(libc::EADDRNOTAVAIL), "EADDRNOTAVAIL");
        assert_eq!(errno_label(1234), "1234");
    }

    #[test]
    fn exposition_bytes_are_unchanged() {
        // Computed before the encoder blocks became one helper: no byte of either format moved.
        use crate::analysis::report::tests::fingerprint;
        let (agg, mut m) = session();
        let owners = owner_of_nsx(42, "/system.slice/docker-x.scope");
        let a = m.render(&agg, &health(), &owners);
        let mut agg = Aggregator::default();
        let mut m = Metrics::new(Options { peer_labels: 5 });
        feed(
            &mut agg,
            &mut m,
            &crate::sink::tracefile::synthetic::events(30_000, 3),
        );
        let b = m.render(&agg, &health(), &HashMap::new());
        let all = [a.openmetrics, a.text, b.openmetrics, b.text].concat();
        let without: String = all
            .lines()
            .filter(|l| {
                !l.contains("kernel_read_errors")
                    && !l.contains("bind_failures")
                    && !l.contains("kernel_map_errors")
                    && !l.contains("kernel_skipped_runs")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        // kernel_read_errors_total, bind_failures_total (per netns), kernel_map_errors_total
        // and kernel_skipped_runs_total were added since:
        // without their lines every byte is as before.
        assert_eq!((a.series, b.series), (55, 185));
        assert_eq!(fingerprint(&without), (17885367078450505819, 40820));
        assert_eq!(fingerprint(&all), (12549385712350123465, 44668));
    }

    /// Workload families: the busiest N workloads only, labelled with pod and container;
    /// nothing at all when no event named a workload.
    #[test]
    fn workload_series_are_the_busiest_n() {
        use crate::host::workload::Workload;
        use std::sync::Arc;
        let c = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let mut pod = Workload::from_path(
            7,
            &format!("/kubepods/burstable/pod0a1b2c3d-0000-1111-2222-333344445555/{c}"),
        );
        pod.pod = Some("shop/cart".into());
        let ws = [
            Arc::new(pod),
            Arc::new(Workload::from_path(8, "/system.slice/x.service")),
        ];
        let mut agg = Aggregator::default();
        let mut m = Metrics::new(Options { peer_labels: 1 });
        let mut events = Vec::new();
        for i in 0..5u16 {
            // Four sockets of the pod, one of the service.
            let w = &ws[usize::from(i == 4)];
            let mut e =
                enter(1.0 + f64::from(i), client(u64::from(i), 40000 + i)).in_cgroup(w.cgroup_id);
            e.workload = Some(w.clone());
            events.push(e);
        }
        feed(&mut agg, &mut m, &events);
        let r = m.render(&agg, &health(), &HashMap::new());
        let (_, samples) = parse(&r.text);
        let pod_labels = [
            ("workload", "cart"),
            ("pod", "shop/cart"),
            ("container_id", c),
            ("cgroup_id", "7"),
        ];
        assert_eq!(
            value(&samples, "twtrace_workload_timewait_sockets", &pod_labels),
            Some(4.0)
        );
        assert_eq!(
            value(
                &samples,
                "twtrace_workload_timewait_entries_total",
                &pod_labels
            ),
            Some(4.0)
        );
        let names: Vec<&str> = samples
            .iter()
            .filter(|s| s.name.starts_with("twtrace_workload_"))
            .map(|s| s.labels["cgroup_id"].as_str())
            .collect();
        assert_eq!(names, ["7"; 4], "only the busiest workload (N = 1)");
        let (agg0, mut m0) = (Aggregator::default(), Metrics::new(Options::default()));
        let r0 = m0.render(&agg0, &health(), &HashMap::new());
        assert!(!r0.text.contains("workload_"), "{}", r0.text);
    }
}
