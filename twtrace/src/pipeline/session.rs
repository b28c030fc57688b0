//! One tracing session: the [`Tracer`], the filter, the stop flag and deadline, the periodic
//! census re-sync, and the sinks every front end plugs in (the line printer, the trace writer,
//! the full-screen view, the metrics, the collector behind
//! [`Background`](crate::pipeline::tracer::Background)).
//!
//! The loop is written once, here: poll → filter → fan out to every sink → census re-sync when
//! due → let every sink do its periodic work → wait. A front end only says what it does with
//! events. The namespaces' sysctls are the tracer's one model: the census re-sync asks it about
//! namespaces that had no traffic yet, rather than keeping a second one.

use crate::kernel::snapshot::NetnsCensus;
use crate::kernel::sysinfo;
use crate::pipeline::event::{Event, ExitReason};
use crate::pipeline::filter::Filter;
use crate::pipeline::tracer::{Tracer, TracerOptions};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether the session goes on after a sink's call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// End now, without the final drain: the reader went away (a closed pipe) or the user quit
    /// the view, so nobody is left to see what a drain would bring.
    Stop,
}

/// A consumer of a session's events. Every method but `on_events` is optional.
pub trait Sink {
    /// Events that passed the session's filter, in order; called after every poll, with an
    /// empty slice when nothing came (time-based work such as a writer's flush goes here).
    /// An error ends the session (and is its result), without the final drain.
    fn on_events(&mut self, events: &[Event]) -> Result<Flow>;

    /// The kernel's socket census, filtered, taken at `at_ns` (monotonic): events polled so
    /// far are older, later ones update it. Only in sessions with a census period.
    fn on_census(&mut self, _at_ns: u64, _census: &[NetnsCensus]) {}

    /// The census cannot be taken on this kernel (no iterator); told once, never retried.
    fn on_census_unavailable(&mut self, _why: &str) {}

    /// After every poll: the sink's periodic work (redraw, render, summary block).
    fn tick(&mut self, _session: &Session) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// After the final drain, when the session ended by the stop flag or its deadline.
    fn finish(&mut self, _session: &Session) -> Result<()> {
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub tracer: TracerOptions,
    pub filter: Filter,
    /// Stop this long after the programs are attached (`None`: until the stop flag).
    pub duration: Option<Duration>,
    /// The longest wait for the ring buffer between two polls (and so between two ticks).
    pub poll_every: Duration,
    /// How often the kernel's census is taken again (`None`: never).
    pub census_every: Option<Duration>,
    /// Print the hook report on stderr once attached.
    pub report: bool,
    /// Print the tracer's notices (counter mismatches…) on stderr as they arise.
    pub print_notices: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            tracer: TracerOptions::default(),
            filter: Filter::default(),
            duration: None,
            poll_every: Duration::from_millis(100),
            census_every: None,
            report: false,
            print_notices: false,
        }
    }
}

/// How a [`Session::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The stop flag or the deadline: the final drain ran and every sink finished.
    Stopped,
    /// A sink returned [`Flow::Stop`].
    BySink,
}

pub struct Session {
    tracer: Tracer,
    filter: Filter,
    stop: Arc<AtomicBool>,
    deadline: Option<Instant>,
    poll_every: Duration,
    census_every: Option<Duration>,
    next_census: Instant,
    print_notices: bool,
    shown: u64,
    filtered: u64,
}

impl Session {
    /// Loads and attaches the kernel programs (and prints the hook report if asked). The
    /// session ends when `stop` is raised or its duration has passed.
    pub fn start(opts: SessionOptions, stop: Arc<AtomicBool>) -> Result<Session> {
        let tracer = Tracer::start(&opts.tracer)?;
        if opts.report {
            print_report(&tracer);
        }
        log::info!(
            "session: {} of {} hooks attached; polling every {:?}, census {}, stop {}",
            tracer
                .features()
                .hooks
                .iter()
                .filter(|h| h.result.is_ok())
                .count(),
            tracer.features().hooks.len(),
            opts.poll_every,
            opts.census_every
                .map_or("never".to_string(), |d| format!("every {d:?}")),
            opts.duration
                .map_or("on Ctrl-C".to_string(), |d| format!("after {d:?}")),
        );
        Ok(Session {
            tracer,
            filter: opts.filter,
            stop,
            // Counted from now: loading the programs can take a while.
            deadline: opts.duration.map(|d| Instant::now() + d),
            poll_every: opts.poll_every,
            census_every: opts.census_every,
            next_census: Instant::now(),
            print_notices: opts.print_notices,
            shown: 0,
            filtered: 0,
        })
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    pub fn tracer_mut(&mut self) -> &mut Tracer {
        &mut self.tracer
    }

    /// Events that passed the filter so far.
    pub fn shown(&self) -> u64 {
        self.shown
    }

    /// Events the filter left out so far.
    pub fn filtered(&self) -> u64 {
        self.filtered
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Polls and fans out until the stop flag, the deadline, a sink's [`Flow::Stop`] or a
    /// sink's error. On the first two the tracer's final drain goes to the sinks too, then
    /// every sink's `finish`.
    pub fn run(&mut self, sinks: &mut [&mut dyn Sink]) -> Result<End> {
        let end = self.run_until_end(sinks);
        match &end {
            Ok(e) => log::info!(
                "session ended ({e:?}): {} events shown, {} filtered out",
                self.shown,
                self.filtered
            ),
            Err(e) => log::info!("session ended by a sink's error: {e:#}"),
        }
        end
    }

    fn run_until_end(&mut self, sinks: &mut [&mut dyn Sink]) -> Result<End> {
        let mut batch = Vec::new();
        loop {
            self.tracer.poll(&mut batch);
            self.notices();
            if self.fan_out(&mut batch, sinks)? == Flow::Stop {
                return Ok(End::BySink);
            }
            if self.resync_census(sinks)? == Flow::Stop {
                return Ok(End::BySink);
            }
            for s in sinks.iter_mut() {
                if s.tick(self)? == Flow::Stop {
                    return Ok(End::BySink);
                }
            }
            if self.stopped() {
                break;
            }
            self.tracer.wait(self.poll_every);
        }
        self.tracer.finish(&mut batch);
        // Whatever a sink says now, it gets its `finish`: the drain is the last batch anyway.
        self.fan_out(&mut batch, sinks)?;
        for s in sinks.iter_mut() {
            s.finish(self)?;
        }
        Ok(End::Stopped)
    }

    /// Filters `batch` (emptying it) and hands what is kept to every sink.
    fn fan_out(&mut self, batch: &mut Vec<Event>, sinks: &mut [&mut dyn Sink]) -> Result<Flow> {
        let before = batch.len();
        batch.retain(|e| self.filter.matches(e));
        self.shown += batch.len() as u64;
        self.filtered += (before - batch.len()) as u64;
        let mut flow = Flow::Continue;
        for s in sinks.iter_mut() {
            if s.on_events(batch)? == Flow::Stop {
                flow = Flow::Stop;
            }
        }
        batch.clear();
        Ok(flow)
    }

    fn notices(&mut self) {
        if self.print_notices {
            for n in self.tracer.take_notices() {
                eprintln!("twtrace: warning: {n}");
            }
        }
    }

    /// Every census period: the kernel's census to the sinks (namespaces outside the filter
    /// dropped), and the sysctls of namespaces it lists that had no traffic yet, as the `netns`
    /// events the tracer would send at their first record. On a kernel without the iterator
    /// the sinks are told once and the census is not asked again.
    fn resync_census(&mut self, sinks: &mut [&mut dyn Sink]) -> Result<Flow> {
        let Some(every) = self.census_every else {
            return Ok(Flow::Continue);
        };
        if Instant::now() < self.next_census {
            return Ok(Flow::Continue);
        }
        self.next_census = Instant::now() + every;
        // Events polled so far are older than this; later ones update the census.
        let at = sysinfo::monotonic_ns();
        let mut census = match self.tracer.census() {
            Ok(c) => c,
            Err(e) => {
                self.census_every = None;
                let why = format!("{e:#}");
                log::info!("no census on this kernel: {why}");
                sinks.iter_mut().for_each(|s| s.on_census_unavailable(&why));
                return Ok(Flow::Continue);
            }
        };
        let netns = &self.filter.netns;
        census.retain(|c| netns.is_empty() || netns.contains(&c.netns));
        log::debug!(
            "census re-sync: {} namespaces after the filter, taken in {:?}",
            census.len(),
            Duration::from_nanos(sysinfo::monotonic_ns().saturating_sub(at))
        );
        sinks.iter_mut().for_each(|s| s.on_census(at, &census));
        let mut fresh: Vec<Event> = census
            .iter()
            .filter_map(|c| self.tracer.observe_netns(c.netns as u32))
            .collect();
        self.fan_out(&mut fresh, sinks)
    }

    /// The one-line summary printed at the end (more lines for overflow cross-checks).
    pub fn summary_line(&self) -> String {
        summary_line(&self.tracer, self.shown)
    }
}

/// The hook report on stderr: one line per hook, the tier, warnings, the ready line.
fn print_report(tracer: &Tracer) {
    for h in &tracer.features().hooks {
        eprintln!("{}", h.report_line());
    }
    eprintln!("{}", tracer.features().tier_line());
    for w in &tracer.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "tracing TIME_WAIT sockets (HZ={})... Ctrl-C to stop",
        tracer.features().hz.value
    );
}

fn summary_line(tracer: &Tracer, shown: u64) -> String {
    let s = tracer.stats();
    let lost = tracer.lost_total();
    let mut line = format!(
        "twtrace: {shown} events shown; {} enter ({} from snapshot), {} promote, {} exit ({}); \
         {} overflow, {} abort, {} connect_fail, {} paws_reject; {lost} lost",
        s.enters + s.snapshot,
        s.snapshot,
        s.promotes,
        s.exits,
        ExitReason::ALL
            .iter()
            .filter(|r| s.exits_by(**r) > 0)
            .map(|r| format!("{} {}", s.exits_by(*r), r.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
        s.overflows,
        s.aborts,
        s.connect_fails,
        s.paws_rejects,
    );
    // Next to the lost events: records sent with fields the kernel could not read.
    let read_errors = tracer.read_errors();
    if read_errors > 0 {
        line.push_str(&format!(", {read_errors} kernel read errors"));
    }
    let map_errors = tracer.map_errors();
    if map_errors > 0 {
        line.push_str(&format!(
            ", {map_errors} kernel map updates failed (some closers or connect()s unnamed)"
        ));
    }
    // Runs the kernel skipped are events not seen, like the lost ones.
    let skipped = tracer.skipped_by_program().unwrap_or_default();
    if !skipped.is_empty() {
        let total: u64 = skipped.iter().map(|(_, n)| n).sum();
        let each: Vec<String> = skipped.iter().map(|(p, n)| format!("{p} {n}")).collect();
        line.push_str(&format!(
            ", {total} program runs skipped by the kernel (already running on that CPU: {})",
            each.join(", ")
        ));
    }
    // bind()-before-connect(): said only where it happened (the line stays as it was).
    if s.bind_fails + s.bound_connects > 0 {
        line.push_str(&format!(
            "; {} bind_fail, {} processes binding before connect",
            s.bind_fails, s.bound_connects
        ));
    }
    // The function tier's own count, where it runs (the reused exits include these).
    if tracer.features().fn_tier() {
        line.push_str(&format!(
            "; {} reuses confirmed by tcp_twsk_unique, {} timewait sockets it refused",
            s.reuses_confirmed, s.reuse_refusals
        ));
    }
    if tracer.decode_errors > 0 {
        line.push_str(&format!("; {} undecodable records", tracer.decode_errors));
    }
    // The overflow cross-check, per namespace that had any: events seen vs the kernel's count.
    for (netns, kernel, seen) in tracer.overflow_check() {
        line.push_str(&format!(
            "\ntwtrace: netns {netns}: {seen} overflow events, kernel TCPTimeWaitOverflow +{kernel}{}",
            if kernel == seen { "" } else { " (MISMATCH)" }
        ));
    }
    line
}

/// A flag raised by Ctrl-C or SIGTERM (a thread of its own waits for either).
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    let flag = stop.clone();
    std::thread::spawn(move || {
        rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        });
        flag.store(true, Ordering::Relaxed);
    });
    Ok(stop)
}
