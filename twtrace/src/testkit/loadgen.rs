//! Load generator for the benchmarks: many short TCP connections on loopback inside a
//! [`NetNs`], each closed by the client first, so that every connection leaves exactly one
//! TIME_WAIT socket (on the client side).
//!
//! Each worker thread owns a listener and runs connect → accept → client close → server read
//! EOF → server close, one connection at a time. Doing both ends on one thread keeps the order
//! of the closes certain (the client's FIN always goes first) and needs no accept queue that
//! could overflow and stall a connect for a SYN retransmit second; several workers run in
//! parallel. The loop is bounded by a connection count *and* a time limit, and can run as fast
//! as possible or paced to a target rate.
//!
//! The namespace is tuned through [`NsTuning`] (namespace sysctls only, never the host's):
//! [`NsTuning::recycling`] keeps a steady state in which every connect reuses a timewait socket
//! (so each connection is one TIME_WAIT entry *and* one exit), [`NsTuning::accumulate`] keeps
//! every timewait socket alive for its 60 s.

use crate::host::netns::NetNs;
use crate::host::procnet::{parse_counters, parse_sockstat_tw};
use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Longest a single accept or read may block (SO_RCVTIMEO). Connects are bounded by the
/// namespace's `tcp_syn_retries`, which [`NsTuning::apply`] lowers.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// A worker gives up after this many errors in a row (e.g. every port busy) rather than spin
/// until the time limit.
const MAX_CONSECUTIVE_ERRORS: u64 = 200;

/// Namespace sysctls for a load run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsTuning {
    /// `net.ipv4.ip_local_port_range`: the client ports connect() picks from.
    pub port_range: (u16, u16),
    /// `net.ipv4.tcp_tw_reuse`: 0 never, 1 always, 2 loopback only (the default).
    pub tw_reuse: u8,
    /// `net.ipv4.tcp_tw_reuse_delay` in ms (kernels ≥ 6.13; skipped where absent).
    pub tw_reuse_delay_ms: Option<u32>,
    /// `net.ipv4.tcp_max_tw_buckets`: past this many, new timewait sockets are not created.
    pub max_tw_buckets: u64,
}

impl NsTuning {
    /// Every connect reuses the timewait socket of an earlier connection on the same port (as
    /// soon as it is 1 ms old), so each connection is one TIME_WAIT entry and one `reused` exit
    /// and the number alive stays at about `ports × workers`. This is the steady state of a busy
    /// client that recycles its ports, and gives the highest event rate per connection.
    pub fn recycling(ports: u16) -> NsTuning {
        let lo = 20000u16;
        NsTuning {
            port_range: (lo, lo.saturating_add(ports.max(2) - 1).min(60999)),
            tw_reuse: 1,
            tw_reuse_delay_ms: Some(1),
            max_tw_buckets: 1 << 20,
        }
    }

    /// No reuse: every timewait socket lives its 60 s, up to `max_tw` at once.
    pub fn accumulate(max_tw: u64) -> NsTuning {
        NsTuning {
            port_range: (10000, 60999),
            tw_reuse: 0,
            tw_reuse_delay_ms: None,
            max_tw_buckets: max_tw,
        }
    }

    /// Writes the sysctls into `ns`.
    pub fn apply(&self, ns: &NetNs) -> Result<()> {
        let (lo, hi) = self.port_range;
        if lo >= hi || lo < 1024 {
            bail!("bad port range {lo}-{hi}");
        }
        ns.sysctl("net.ipv4.ip_local_port_range", &format!("{lo} {hi}"))?;
        ns.sysctl("net.ipv4.tcp_tw_reuse", &self.tw_reuse.to_string())?;
        if let Some(d) = self.tw_reuse_delay_ms {
            if ns.read_sysctl("net.ipv4.tcp_tw_reuse_delay").is_ok() {
                ns.sysctl("net.ipv4.tcp_tw_reuse_delay", &d.to_string())?;
            }
        }
        ns.sysctl(
            "net.ipv4.tcp_max_tw_buckets",
            &self.max_tw_buckets.to_string(),
        )?;
        // A lost SYN would otherwise block a connect for up to ~2 minutes of retransmits.
        ns.sysctl("net.ipv4.tcp_syn_retries", "1")?;
        Ok(())
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Parallel worker threads, each with its own listener.
    pub workers: usize,
    /// Stop after this many connections in all (split evenly over the workers).
    pub max_conns: u64,
    /// Stop after this long whatever the count.
    pub max_time: Duration,
    /// Target connections per second over all workers; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// Connect to N loopback addresses in turn ([`dst_addr`]: 127.0.0.1 … 127.0.0.250, then
    /// 127.0.1.1 …): each address is a separate set of 4-tuples, which multiplies how many
    /// timewait sockets can be alive at once.
    pub dst_addrs: u16,
    /// Worker `i` listens on `base_port + i` (keep it outside the ephemeral port range).
    pub base_port: u16,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            workers: 2,
            max_conns: 10_000,
            max_time: Duration::from_secs(10),
            rate: None,
            dst_addrs: 1,
            base_port: 9000,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Connections completed (both ends closed, the client's timewait socket made).
    pub conns: u64,
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// From the first connection of any worker to the end of the last.
    pub elapsed: Duration,
    /// CPU time the workers' threads used (user + system, including the softirq work the
    /// kernel does in their context: on loopback, nearly all of a connection's). Unlike the
    /// rate, it hardly depends on what else the machine is doing.
    pub cpu: Duration,
    /// Kernel counters of the namespace over the run (`/proc/net/netstat` deltas):
    /// timewait sockets scheduled (`TcpExtTW`), reused (`TcpExtTWRecycled`), and not created
    /// because `tcp_max_tw_buckets` was reached (`TcpExtTCPTimeWaitOverflow`).
    pub tw_born: u64,
    pub tw_recycled: u64,
    pub tw_overflow: u64,
}

impl LoadReport {
    pub fn conns_per_s(&self) -> f64 {
        per_s(self.conns, self.elapsed)
    }

    /// Microseconds of the workers' CPU per connection.
    pub fn cpu_us_per_conn(&self) -> Option<f64> {
        (self.conns > 0).then(|| self.cpu.as_secs_f64() * 1e6 / self.conns as f64)
    }

    /// TIME_WAIT events the kernel made per second: entries plus reuse exits. (Expiries are
    /// not counted; in a run shorter than 60 s from a fresh namespace there are none.)
    pub fn tw_events_per_s(&self) -> f64 {
        per_s(self.tw_born + self.tw_recycled, self.elapsed)
    }
}

fn per_s(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

#[derive(Default)]
struct WorkerResult {
    conns: u64,
    errors: u64,
    cpu: Duration,
    first_error: Option<String>,
    /// When this worker's clock started: the elapsed time runs from the first worker's start,
    /// not from the caller's (which may be scheduled later than the workers after the
    /// barrier, so that a 300 ms run measured 289.9 ms in a 2-vCPU guest).
    start: Option<Instant>,
    end: Option<Instant>,
}

/// Runs the load in `ns` and returns once every worker is done (at most `spec.max_time` plus
/// one I/O timeout after the start).
pub fn run(ns: &NetNs, spec: &LoadSpec) -> Result<LoadReport> {
    if spec.workers == 0 || spec.dst_addrs == 0 {
        bail!("a load needs at least one worker and one destination address");
    }
    if spec.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("the target rate must be a positive number");
    }
    let n = spec.workers as u64;
    let before = netstat(ns)?;
    let go = Arc::new(Barrier::new(spec.workers + 1));
    let abort = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for i in 0..spec.workers {
        let quota = spec.max_conns / n + u64::from((i as u64) < spec.max_conns % n);
        let w = Worker {
            port: spec
                .base_port
                .checked_add(i as u16)
                .context("listener port overflow")?,
            quota,
            rate: spec.rate.map(|r| r / n as f64),
            max_time: spec.max_time,
            dst_addrs: spec.dst_addrs,
        };
        let nsf = ns.file().try_clone().context("dup netns fd")?;
        let (go, abort) = (go.clone(), abort.clone());
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{i}"))
            .spawn(move || -> Result<WorkerResult> {
                // Set-up errors must still reach the barrier, or the others would wait forever.
                let setup = setns(nsf.as_fd(), CloneFlags::CLONE_NEWNET)
                    .context("setns into the load namespace")
                    .and_then(|_| w.listen());
                if setup.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                go.wait();
                let listener = setup?;
                if abort.load(Ordering::Relaxed) {
                    return Ok(WorkerResult::default());
                }
                Ok(w.work(&listener, Instant::now()))
            })
            .context("spawning a load worker")?;
        handles.push(h);
    }
    go.wait();
    let start = Instant::now();
    let mut report = LoadReport::default();
    let mut first = start;
    let mut end = start;
    let mut setup_error = None;
    for h in handles {
        match h.join().map_err(|_| anyhow!("load worker panicked"))? {
            Ok(r) => {
                report.conns += r.conns;
                report.errors += r.errors;
                report.cpu += r.cpu;
                if report.first_error.is_none() {
                    report.first_error = r.first_error;
                }
                first = first.min(r.start.unwrap_or(start));
                end = end.max(r.end.unwrap_or(start));
            }
            Err(e) => setup_error = setup_error.or(Some(e)),
        }
    }
    if let Some(e) = setup_error {
        return Err(e);
    }
    report.elapsed = end.duration_since(first);
    let after = netstat(ns)?;
    let delta = |k: &str| {
        after
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(k).copied().unwrap_or(0))
    };
    report.tw_born = delta("TcpExt:TW") + delta("TcpExt:TWKilled");
    report.tw_recycled = delta("TcpExt:TWRecycled");
    report.tw_overflow = delta("TcpExt:TCPTimeWaitOverflow");
    Ok(report)
}

struct Worker {
    port: u16,
    quota: u64,
    rate: Option<f64>,
    max_time: Duration,
    dst_addrs: u16,
}

impl Worker {
    fn listen(&self) -> Result<TcpListener> {
        let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.port))
            .with_context(|| format!("binding the load listener on port {}", self.port))?;
        // Accepted sockets inherit SO_RCVTIMEO (the kernel clones the listener's sock), which
        // bounds the server's read too without a syscall per connection.
        setsockopt(
            &l,
            sockopt::ReceiveTimeout,
            &TimeVal::from(to_timeval(IO_TIMEOUT)),
        )
        .context("SO_RCVTIMEO on the load listener")?;
        Ok(l)
    }

    fn work(&self, listener: &TcpListener, start: Instant) -> WorkerResult {
        let deadline = start + self.max_time;
        let dsts: Vec<SocketAddr> = (0..self.dst_addrs)
            .map(|i| SocketAddr::V4(SocketAddrV4::new(dst_addr(i), self.port)))
            .collect();
        let mut res = WorkerResult {
            start: Some(start),
            ..Default::default()
        };
        let cpu0 = thread_cpu();
        let mut consecutive = 0u64;
        let mut attempt = 0u64;
        let mut buf = [0u8; 64];
        while res.conns < self.quota {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if let Some(rate) = self.rate {
                // Paced by the count done so far, not by a fixed sleep per connection (sleeps
                // are far coarser than one connection); sleeping only when 1 ms or more ahead
                // keeps bursts to about a millisecond's worth of connections.
                let due = start + Duration::from_secs_f64(attempt as f64 / rate);
                if due > now + Duration::from_millis(1) {
                    std::thread::sleep((due - now).min(deadline - now));
                    continue;
                }
            }
            let dst = dsts[(attempt % dsts.len() as u64) as usize];
            attempt += 1;
            match one_connection(listener, dst, &mut buf) {
                Ok(()) => {
                    res.conns += 1;
                    consecutive = 0;
                }
                Err(e) => {
                    res.errors += 1;
                    consecutive += 1;
                    if res.first_error.is_none() {
                        res.first_error = Some(format!("{e:#}"));
                    }
                    if consecutive >= MAX_CONSECUTIVE_ERRORS {
                        break;
                    }
                }
            }
        }
        res.end = Some(Instant::now());
        res.cpu = thread_cpu().saturating_sub(cpu0);
        res
    }
}

/// The `i`-th destination address (from 0): 250 per /24 so that no .0 or .255 is used. All of
/// 127.0.0.0/8 is local on a namespace's `lo`, so none needs to be added.
pub fn dst_addr(i: u16) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250) as u8 + 1)
}

/// One connection whose client closes first: the client's socket ends in TIME_WAIT.
fn one_connection(listener: &TcpListener, dst: SocketAddr, buf: &mut [u8]) -> Result<()> {
    let client = TcpStream::connect(dst).with_context(|| format!("connect to {dst}"))?;
    let (mut server, _) = listener.accept().context("accept")?;
    drop(client);
    // The client's FIN is usually queued already; reading EOF before closing makes sure the
    // server's close is the second one.
    match server.read(buf) {
        Ok(0) => Ok(()),
        Ok(_) => bail!("unexpected data from the client"),
        Err(e) => Err(e).context("server read to EOF"),
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

fn to_timeval(d: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    }
}

/// The namespace's `/proc/net/netstat` and `/proc/net/snmp` counters, keyed `"TcpExt:TW"`.
pub fn netstat(ns: &NetNs) -> Result<BTreeMap<String, u64>> {
    ns.run(|| -> Result<BTreeMap<String, u64>> {
        // thread-self, not self: /proc/self/net is the namespace of the process's main thread.
        let mut out = BTreeMap::new();
        for f in ["netstat", "snmp"] {
            let p = format!("/proc/thread-self/net/{f}");
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
            parse_counters(&text, &mut out);
        }
        Ok(out)
    })?
}

/// Timewait sockets alive in `ns` now (`/proc/net/sockstat`, "TCP: … tw N").
pub fn tw_alive(ns: &NetNs) -> Result<u64> {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/sockstat"))??;
    parse_sockstat_tw(&text).context("no TCP tw count in /proc/net/sockstat")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycling_range_is_clamped() {
        assert_eq!(NsTuning::recycling(1000).port_range, (20000, 20999));
        assert_eq!(NsTuning::recycling(u16::MAX).port_range.1, 60999);
    }

    #[test]
    fn destination_addresses() {
        assert_eq!(dst_addr(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(dst_addr(249), Ipv4Addr::new(127, 0, 0, 250));
        assert_eq!(dst_addr(250), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(dst_addr(999), Ipv4Addr::new(127, 0, 3, 250));
    }

    #[test]
    fn report_rates() {
        let r = LoadReport {
            conns: 500,
            tw_born: 500,
            tw_recycled: 250,
            elapsed: Duration::from_millis(500),
            cpu: Duration::from_millis(20),
            ..Default::default()
        };
        assert_eq!(r.conns_per_s(), 1000.0);
        assert_eq!(r.cpu_us_per_conn(), Some(40.0));
        assert_eq!(LoadReport::default().cpu_us_per_conn(), None);
        assert_eq!(r.tw_events_per_s(), 1500.0);
        assert_eq!(LoadReport::default().conns_per_s(), 0.0);
    }
}
