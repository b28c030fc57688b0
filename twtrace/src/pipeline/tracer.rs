//! The live pipeline's source: kernel programs → ring buffer → decoder → lifecycle → events.
//!
//! [`Tracer`] is single-threaded and blocking (`poll(2)` on the ring buffer's fd). A
//! [`Session`] drives it and fans its `Event`s out to sinks; [`Background`] is a session on a
//! thread of its own that collects them (for the tests, `verify` and `lab`).

use crate::host::cpustat::CpuTimes;
use crate::host::sysctls::SysctlWatch;
use crate::host::workload::{Workload, Workloads};
use crate::kernel::features::Features;
use crate::kernel::fn_tier::FnHooks;
use crate::kernel::loader;
use crate::kernel::prog_stats;
use crate::kernel::snapshot;
use crate::kernel::sysinfo::{self, Clock};
use crate::pipeline::decode::{decode, DecodeError};
use crate::pipeline::event::{Body, Event};
use crate::pipeline::lifecycle::{Lifecycle, Stats, SETTLE_CEILING_NS, SETTLE_NS};
use crate::pipeline::session::{Flow, Session, SessionOptions, Sink};
use anyhow::{Context, Result};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::Iter;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twtrace_common::{counter, TwRecord};

/// How often the cgroup tree is walked again besides on a miss: a short-lived cgroup that
/// existed at one walk still resolves after it is gone.
const WORKLOAD_WALK_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct TracerOptions {
    /// Ring buffer size in bytes (power of two, page multiple).
    pub ring_bytes: u32,
    /// Walk existing timewait sockets at start-up.
    pub snapshot: bool,
    /// How long a timer detach may stay unexplained before it counts as an early death.
    pub settle_ns: u64,
    /// The function tier's mechanism (default: `TWTRACE_FN_HOOKS`, else auto).
    pub fn_hooks: FnHooks,
}

impl Default for TracerOptions {
    fn default() -> Self {
        TracerOptions {
            ring_bytes: 8 << 20,
            snapshot: true,
            settle_ns: SETTLE_NS,
            fn_hooks: FnHooks::from_env().unwrap_or_default(),
        }
    }
}

/// Records taken from the ring per batch (see `Tracer::poll`): enough for the CPU to overlap
/// the lookups' cache misses, small enough to stay in L1 (~6 KiB of records).
const BATCH: usize = 32;

pub struct Tracer {
    // Field order matters for Drop: maps and the ring go before the object that owns them.
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    iter_mode: Array<MapData, u32>,
    census_counts: Array<MapData, u64>,
    ebpf: aya::Ebpf,
    lifecycle: Lifecycle,
    /// `/proc/stat` gives per-CPU run times here (the evidence for settling a detach).
    cpu_times: bool,
    pub clock: Clock,
    /// What the kernel offers (hooks attached, tier, HZ, reuse rule…), found once at load.
    features: Features,
    /// Problems worth telling the user that did not stop the start (snapshot failures, …).
    pub warnings: Vec<String>,
    initial: Vec<Event>,
    lost_reported: u64,
    last_counter_read: Instant,
    pub records: u64,
    pub decode_errors: u64,
    sysctls: SysctlWatch,
    /// Cgroup ids → workloads (cached for the session, so removed cgroups still resolve).
    workloads: Workloads,
    last_workload_walk: Instant,
    notices: Vec<String>,
    /// Records taken from the ring and not yet handled (see `poll`; kept to reuse its memory).
    batch: Vec<Result<TwRecord, DecodeError>>,
    overflow_suspect: Option<(u32, u64, u64)>,
}

impl Tracer {
    pub fn start(opts: &TracerOptions) -> Result<Tracer> {
        let loader::Loaded {
            mut ebpf,
            hooks,
            features,
            ..
        } = loader::load_with(opts.ring_bytes, opts.fn_hooks)?;
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
        let iter_mode = Array::try_from(
            ebpf.take_map("ITER_MODE")
                .context("ITER_MODE map missing")?,
        )?;
        let census_counts =
            Array::try_from(ebpf.take_map("CENSUS").context("CENSUS map missing")?)?;
        let mut warnings = Vec::new();
        if crate::kernel::preempt::is_preempt_rt() {
            warnings.push(crate::kernel::preempt::RT_NOTICE.to_string());
        }
        let iter_ok = hooks
            .iter()
            .any(|h| h.hook.program == "snapshot_tcp" && h.result.is_ok());
        if !features.hz.known() {
            warnings.push(
                "kernel HZ unknown (no kernel config; neither the iterator nor /proc/timer_list \
                 measured it): assuming 250"
                    .into(),
            );
        }
        let hz = features.hz.value;
        let mut lifecycle = Lifecycle::with_settle(hz, opts.settle_ns);
        lifecycle.set_fn_tier(
            features.fn_hook_on("tcp_twsk_unique"),
            features.fn_hook_on("inet_twsk_alloc"),
        );
        let mut sysctls = SysctlWatch::new();
        sysctls.baseline();
        // Walked once now, so cgroups that go away before their first event still resolve.
        let workloads = Workloads::host();
        let mut initial = Vec::new();
        // The timer programs are attached already, so a socket cannot fall between the
        // snapshot and the live stream; the lifecycle drops the duplicates.
        if opts.snapshot && iter_ok {
            let prog: &mut Iter = ebpf
                .program_mut("snapshot_tcp")
                .context("iter")?
                .try_into()?;
            let snap = snapshot::take(prog);
            for f in &snap.failures {
                warnings.push(format!("snapshot: {f}"));
            }
            for r in &snap.records {
                if let Some(s) = sysctls.observe(r.netns) {
                    lifecycle.observe_sysctls(r.netns, s, r.ts_ns, &mut initial);
                }
                lifecycle.on_record(r, &mut initial);
            }
        }
        Ok(Tracer {
            ring,
            counters,
            iter_mode,
            census_counts,
            ebpf,
            lifecycle,
            cpu_times: CpuTimes::read().is_some_and(|t| t.of(0).is_some()),
            clock: Clock::now(),
            features,
            warnings,
            initial,
            lost_reported: 0,
            last_counter_read: Instant::now(),
            records: 0,
            decode_errors: 0,
            sysctls,
            workloads,
            last_workload_walk: Instant::now(),
            notices: Vec::new(),
            batch: Vec::with_capacity(BATCH),
            overflow_suspect: None,
        })
    }

    /// What the running kernel offers, as found when the programs loaded.
    pub fn features(&self) -> &Features {
        &self.features
    }

    pub fn stats(&self) -> Stats {
        self.lifecycle.stats
    }

    /// Events lost in the kernel so far (failed ring-buffer reservations, all CPUs).
    pub fn lost_total(&self) -> u64 {
        self.read_counter(counter::LOST)
    }

    pub fn read_errors(&self) -> u64 {
        self.read_counter(counter::READ_ERRORS)
    }

    /// Correlation-map updates the kernel side could not make: attributions (the closing
    /// process, a connect() or bind() in progress) that later records may lack.
    pub fn map_errors(&self) -> u64 {
        self.read_counter(counter::MAP_ERRORS)
    }

    /// Runs of twtrace's programs the kernel skipped because the program was already running
    /// on that CPU ([`prog_stats`]): events not seen, like the lost ones. None if the kernel
    /// would not say for one of the loaded programs.
    pub fn skipped_runs(&self) -> Option<u64> {
        Some(self.skipped_by_program()?.iter().map(|(_, n)| n).sum())
    }

    /// [`Self::skipped_runs`] per program (by its name), the programs with any.
    pub fn skipped_by_program(&self) -> Option<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for (name, p) in self.ebpf.programs() {
            let Ok(fd) = p.fd() else { continue };
            let n = prog_stats::recursion_misses(fd.as_fd()).ok()?;
            if n > 0 {
                out.push((name.to_string(), n));
            }
        }
        Some(out)
    }

    fn read_counter(&self, idx: u32) -> u64 {
        self.counters
            .get(&idx, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Blocks until the ring buffer has data or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
    }

    /// Drains the ring buffer and appends the resulting events (snapshot first, on the first
    /// call). Also settles overdue detaches and reports newly lost events.
    pub fn poll(&mut self, out: &mut Vec<Event>) {
        let first_new = out.len();
        out.append(&mut self.initial);
        // A detach left undecided past the window is settled by its CPU's run time, read
        // before the drain: what that CPU wrote before running on is then in this drain.
        let before_drain = sysinfo::monotonic_ns();
        let cpus = if self.lifecycle.overdue(before_drain) {
            CpuTimes::read()
        } else {
            None
        };
        // In batches: the lifecycle first looks up every socket of a batch at once, so the
        // CPU overlaps those lookups' cache misses (see `Lifecycle::warm`), then handles them.
        loop {
            self.batch.clear();
            while self.batch.len() < BATCH {
                match self.ring.next() {
                    Some(item) => self.batch.push(decode(&item)),
                    None => break,
                }
            }
            if self.batch.is_empty() {
                break;
            }
            self.records += self.batch.len() as u64;
            self.lifecycle
                .warm(self.batch.iter().filter_map(|d| d.as_ref().ok()));
            for decoded in &self.batch {
                match decoded {
                    Ok(r) => {
                        if let Some(s) = self.sysctls.observe(r.netns) {
                            self.lifecycle.observe_sysctls(r.netns, s, r.ts_ns, out);
                        }
                        self.lifecycle.on_record(r, out)
                    }
                    Err(_) => self.decode_errors += 1,
                }
            }
        }
        match cpus {
            Some(c) => self.lifecycle.tick(before_drain, Some(&c), out),
            // Without /proc/stat the window alone decides.
            None if !self.cpu_times => self.lifecycle.tick(before_drain, None, out),
            // Nothing was overdue before the drain: what it brought waits for the next poll.
            None => self.lifecycle.forget_stale(before_drain),
        }
        let now = sysinfo::monotonic_ns();
        let refreshed = self.sysctls.refresh_due();
        for (netns, s) in self.sysctls.refresh() {
            self.lifecycle.observe_sysctls(netns, s, now, out);
        }
        if refreshed {
            self.check_overflows();
        }
        if self.last_counter_read.elapsed() >= Duration::from_millis(200) {
            self.last_counter_read = Instant::now();
            self.report_lost(now, out);
        }
        if self.last_workload_walk.elapsed() >= WORKLOAD_WALK_EVERY {
            self.last_workload_walk = Instant::now();
            self.workloads.refresh();
        }
        for e in &mut out[first_new..] {
            e.workload = self.workloads.resolve(e.cgroup);
        }
    }

    /// The workload of a cgroup id, as the events carry it (tests and front ends).
    pub fn workload(&mut self, cgroup_id: u64) -> Option<Arc<Workload>> {
        self.workloads.resolve(cgroup_id)
    }

    /// Compares the overflow events seen per namespace with the kernel's own counter; a
    /// difference that persists across two reads becomes a notice (never hidden).
    fn check_overflows(&mut self) {
        for (netns, kernel, seen) in self.overflow_check() {
            let key = (netns, kernel, seen);
            if kernel != seen && self.overflow_suspect.replace(key) == Some(key) {
                self.notices.push(format!(
                    "netns {netns}: the kernel counted {kernel} timewait overflows \
                     (TcpExtTCPTimeWaitOverflow), twtrace saw {seen} overflow events"
                ));
            }
        }
    }

    /// (netns, kernel's TCPTimeWaitOverflow delta since first seen, overflow events seen) for
    /// every namespace with any overflow.
    pub fn overflow_check(&self) -> Vec<(u32, u64, u64)> {
        let mut v: Vec<(u32, u64, u64)> = self
            .lifecycle
            .overflows_by_netns()
            .iter()
            .map(|(n, seen)| {
                (
                    *n,
                    self.sysctls.kernel_overflows(*n).unwrap_or(*seen),
                    *seen,
                )
            })
            .collect();
        v.sort();
        v
    }

    /// The sysctls of a namespace met outside the event stream (the census lists every
    /// namespace, traffic or not), as the `netns` event its first record would bring, if the
    /// tracer has not seen it yet. From then on the tracer's one watch keeps it current, as it
    /// does the others.
    pub fn observe_netns(&mut self, netns: u32) -> Option<Event> {
        let s = self.sysctls.observe(netns)?;
        // Through the lifecycle's namespace model, like every other netns line.
        let mut out = Vec::new();
        self.lifecycle
            .observe_sysctls(netns, s, sysinfo::monotonic_ns(), &mut out);
        out.pop()
    }

    /// Messages for the user that arose while tracing (e.g. counter mismatches); drained.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    fn report_lost(&mut self, now: u64, out: &mut Vec<Event>) {
        let lost = self.lost_total();
        if lost > self.lost_reported {
            out.push(Event::new(
                now,
                Body::Lost {
                    count: lost - self.lost_reported,
                },
            ));
            self.lost_reported = lost;
        }
    }

    /// Final drain: waits out the settle window so pending detaches are decided.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        self.poll(out);
        // A last look at the kernel's counters for the overflow cross-check.
        self.sysctls.force_refresh();
        // Until every detach is decided (its CPU ran on), at most the ceiling.
        let t0 = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(10));
            self.poll(out);
            if !self.lifecycle.unsettled() || t0.elapsed() > Duration::from_nanos(SETTLE_CEILING_NS)
            {
                break;
            }
        }
        let now = sysinfo::monotonic_ns();
        self.report_lost(now, out);
    }

    /// Socket counts per TCP state in every network namespace, straight from the kernel's
    /// socket tables (the `iter/tcp` program in count mode). Costs one iterator run per
    /// namespace: call it for a periodic re-sync, not per event.
    pub fn census(&mut self) -> Result<Vec<snapshot::NetnsCensus>> {
        let prog: &mut Iter = self
            .ebpf
            .program_mut("snapshot_tcp")
            .context("iter program missing")?
            .try_into()?;
        if prog.fd().is_err() {
            anyhow::bail!("the iter/tcp program is not loaded on this kernel");
        }
        snapshot::census(prog, &mut self.iter_mode, &mut self.census_counts)
    }

    pub fn ebpf_mut(&mut self) -> &mut aya::Ebpf {
        &mut self.ebpf
    }
}

/// A tracer on its own thread, collecting every event: what the integration tests, `verify`
/// and the benchmarks use.
pub struct Background {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Event>>>,
    thread: Option<std::thread::JoinHandle<Result<TracerSummary>>>,
    pub clock: Clock,
    features: Features,
}

impl Background {
    /// Whether the hook with this label (e.g. `tp_btf/kfree_skb`) is attached.
    pub fn hook_on(&self, label: &str) -> bool {
        self.features.hook_on(label)
    }

    /// What the running kernel offers, as the tracer found it when its programs loaded.
    pub fn features(&self) -> &Features {
        &self.features
    }
}

#[derive(Clone, Debug, Default)]
pub struct TracerSummary {
    /// (netns, kernel TCPTimeWaitOverflow since first seen, overflow events seen).
    pub overflow_check: Vec<(u32, u64, u64)>,
    pub notices: Vec<String>,
    pub stats: Stats,
    pub lost: u64,
    pub decode_errors: u64,
    pub read_errors: u64,
    pub map_errors: u64,
    pub skipped_runs: Option<u64>,
    /// The same per program, those with any.
    pub skipped_by_program: Vec<(String, u64)>,
}

impl TracerSummary {
    /// Runs of the program named `program` the kernel skipped.
    pub fn skipped_in(&self, program: &str) -> u64 {
        self.skipped_by_program
            .iter()
            .find(|(p, _)| p == program)
            .map_or(0, |(_, n)| *n)
    }
}

impl Background {
    /// Starts a tracer and returns once it is attached and its snapshot is taken.
    pub fn start(
        opts: TracerOptions,
        keep: impl Fn(&Event) -> bool + Send + 'static,
    ) -> Result<Background> {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(Clock, Features)>>();
        let (s, ev) = (stop.clone(), events.clone());
        let thread = std::thread::spawn(move || -> Result<TracerSummary> {
            let opts = SessionOptions {
                tracer: opts,
                // Tests wait on events: poll often.
                poll_every: Duration::from_millis(5),
                ..SessionOptions::default()
            };
            let mut session = match Session::start(opts, s) {
                Ok(session) => {
                    let t = session.tracer();
                    let _ = ready_tx.send(Ok((t.clock, t.features.clone())));
                    session
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let _ = ready_tx.send(Err(e));
                    anyhow::bail!(msg);
                }
            };
            let mut collect = Collect { events: ev, keep };
            session.run(&mut [&mut collect])?;
            let t = session.tracer_mut();
            Ok(TracerSummary {
                overflow_check: t.overflow_check(),
                notices: t.take_notices(),
                stats: t.stats(),
                lost: t.lost_total(),
                decode_errors: t.decode_errors,
                read_errors: t.read_errors(),
                map_errors: t.map_errors(),
                skipped_runs: t.skipped_runs(),
                skipped_by_program: t.skipped_by_program().unwrap_or_default(),
            })
        });
        let (clock, features) = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("tracer thread died before it was ready"))??;
        Ok(Background {
            stop,
            events,
            thread: Some(thread),
            clock,
            features,
        })
    }

    /// A copy of the events collected so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Polls until `pred` holds over the collected events or `timeout` passes; returns the
    /// events either way.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.events();
            if pred(&ev) || Instant::now() >= deadline {
                return ev;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the tracer (after a final drain) and returns all events and its summary.
    pub fn stop(mut self) -> Result<(Vec<Event>, TracerSummary)> {
        self.stop.store(true, Ordering::Relaxed);
        let summary = match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("tracer thread panicked"))??,
            None => TracerSummary::default(),
        };
        Ok((self.events(), summary))
    }
}

/// Background's sink: every kept event into the shared list.
struct Collect<F> {
    events: Arc<Mutex<Vec<Event>>>,
    keep: F,
}

impl<F: Fn(&Event) -> bool> Sink for Collect<F> {
    fn on_events(&mut self, events: &[Event]) -> Result<Flow> {
        // Most polls bring nothing: no need to contend with a test reading the list then.
        if events.is_empty() {
            return Ok(Flow::Continue);
        }
        let mut g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        g.extend(events.iter().filter(|e| (self.keep)(e)).cloned());
        Ok(Flow::Continue)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
