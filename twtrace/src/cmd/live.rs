//! `twtrace` / `twtrace live`: the full-screen view on a terminal; elsewhere (or with `--plain`)
//! events as lines, or NDJSON with `--json`, until Ctrl-C.

use anyhow::{Context, Result};
use clap::Args;
use std::io::IsTerminal;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twtrace::analysis::aggregate::{self, Aggregator};
use twtrace::frontend::tui::{HostInfo, Model, Screen, ViewState};
use twtrace::host::sysctls::SysctlWatch;
use twtrace::kernel::sysinfo;
use twtrace::pipeline::event::ExitReason;
use twtrace::pipeline::filter::Filter;
use twtrace::pipeline::tracer::{Tracer, TracerOptions};
use twtrace::sink::printer::{Format, Printer};

/// What every tracing subcommand takes: filters and tracer settings.
#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// Only sockets with this local or remote port (repeatable).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Only sockets in this network namespace, by inode (`stat -L -c %i /proc/PID/ns/net`).
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<u64>,
    /// Only sockets whose remote address is ADDR (repeatable).
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<IpAddr>,
    /// Do not list TIME_WAIT sockets that existed before start-up.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Kernel ring buffer size in MiB (a power of two).
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub ring_mib: u32,
    /// Do not print the hook report and summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// How the function tier attaches: fexit, kprobe (+ kretprobe), auto (fexit, else
    /// kprobes) or off.
    #[arg(long, value_enum, value_name = "HOW")]
    pub fn_hooks: Option<twtrace::kernel::fn_tier::FnHooks>,
}

impl TraceArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            ports: self.ports.clone(),
            netns: self.netns.clone(),
            peers: self.peers.clone(),
        }
    }

    pub fn options(&self) -> Result<TracerOptions> {
        if self.ring_mib == 0 || !self.ring_mib.is_power_of_two() || self.ring_mib > 1024 {
            anyhow::bail!("--ring-mib must be a power of two between 1 and 1024");
        }
        Ok(TracerOptions {
            ring_bytes: self.ring_mib << 20,
            snapshot: !self.no_snapshot,
            fn_hooks: match self.fn_hooks {
                Some(f) => f,
                None => twtrace::kernel::fn_tier::FnHooks::from_env()?,
            },
            ..TracerOptions::default()
        })
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.duration
            .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)))
    }
}

#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    /// Print NDJSON, one object per event (the stable `--json` contract).
    #[arg(long)]
    pub json: bool,
    /// One line per event even on a terminal (where the default is the full-screen view).
    #[arg(long, conflicts_with = "json")]
    pub plain: bool,
    /// With line output, every SECS seconds a compact summary of the busiest peers (lines
    /// starting with `#`). Implies line output.
    #[arg(long, value_name = "SECS", conflicts_with = "json")]
    pub summary_every: Option<f64>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Starts the tracer and prints the hook report.
pub fn start_tracer(args: &TraceArgs) -> Result<Tracer> {
    let tracer = Tracer::start(&args.options()?)?;
    if !args.quiet {
        for h in &tracer.hooks {
            eprintln!("{}", h.report_line());
        }
        eprintln!("{}", twtrace::kernel::loader::tier_line(&tracer.hooks));
        for w in &tracer.warnings {
            eprintln!("warning: {w}");
        }
        eprintln!(
            "tracing TIME_WAIT sockets (HZ={})... Ctrl-C to stop",
            tracer.hz
        );
    }
    Ok(tracer)
}

/// A flag raised by Ctrl-C or SIGTERM.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
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

/// The one-line summary printed at the end.
pub fn summary_line(tracer: &Tracer, shown: u64) -> String {
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
    // The function tier's own count, where it runs (the reused exits include these).
    if twtrace::kernel::loader::fn_hook_on(&tracer.hooks, "tcp_twsk_unique") {
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

/// Prints notices the tracer raised (counter mismatches…) to stderr, where the summary goes.
pub fn print_notices(tracer: &mut Tracer) {
    for n in tracer.take_notices() {
        eprintln!("twtrace: warning: {n}");
    }
}

pub fn run(args: LiveArgs) -> Result<()> {
    if !args.json && !args.plain && args.summary_every.is_none() && std::io::stdout().is_terminal()
    {
        return run_view(&args);
    }
    let summary_every = match args.summary_every {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            anyhow::bail!("--summary-every needs a number of seconds above 0")
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let filter = args.trace.filter();
    let mut tracer = start_tracer(&args.trace)?;
    let stop = stop_flag()?;
    let format = if args.json {
        Format::Json
    } else {
        Format::Lines
    };
    let stdout = std::io::stdout();
    let interactive = stdout.is_terminal();
    let mut printer = Printer::new(stdout.lock(), format, tracer.clock);
    let deadline = args.trace.deadline();
    let mut batch = Vec::new();
    let mut shown = 0u64;
    // Only with --summary-every: the plain path stays as cheap as it was without.
    let mut agg = summary_every.map(|_| Aggregator::default());
    let mut emit = |batch: &mut Vec<twtrace::pipeline::event::Event>,
                    printer: &mut Printer<_>,
                    agg: &mut Option<Aggregator>|
     -> bool {
        let kept: Vec<_> = batch.drain(..).filter(|e| filter.matches(e)).collect();
        shown += kept.len() as u64;
        if let Some(agg) = agg.as_mut() {
            kept.iter().for_each(|e| agg.observe(e));
        }
        printer.write_batch(kept.iter()).is_ok()
    };
    let mut broken_pipe = false;
    let mut next_summary = summary_every.map(|d| Instant::now() + d);
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        tracer.wait(Duration::from_millis(if interactive { 50 } else { 100 }));
        tracer.poll(&mut batch);
        print_notices(&mut tracer);
        if !emit(&mut batch, &mut printer, &mut agg) {
            broken_pipe = true;
            break;
        }
        if let (Some(at), Some(every)) = (next_summary, summary_every) {
            if Instant::now() >= at {
                next_summary = Some(at.max(Instant::now() - every) + every);
                if !print_summary(&mut agg) {
                    broken_pipe = true;
                    break;
                }
            }
        }
    }
    if !broken_pipe {
        tracer.finish(&mut batch);
        let _ = emit(&mut batch, &mut printer, &mut agg);
        if summary_every.is_some() {
            print_summary(&mut agg);
        }
    }
    if !args.trace.quiet {
        eprintln!("{}", summary_line(&tracer, shown));
    }
    Ok(())
}

/// Peer rows in a periodic summary.
const SUMMARY_PEERS: usize = 5;

/// Writes the `--summary-every` block; false when stdout is gone.
fn print_summary(agg: &mut Option<Aggregator>) -> bool {
    let Some(agg) = agg.as_mut() else {
        return true;
    };
    agg.advance(sysinfo::monotonic_ns());
    let width = ratatui::crossterm::terminal::size()
        .ok()
        .filter(|_| std::io::stdout().is_terminal())
        .map_or(120, |(w, _)| usize::from(w));
    let text = aggregate::summary_text(agg, SUMMARY_PEERS, width);
    // The printer holds the stdout lock; it is re-entrant on this thread and the printer
    // flushes after every batch, so this lands between two batches.
    let mut out = std::io::stdout();
    out.write_all(text.as_bytes()).is_ok() && out.flush().is_ok()
}

/// How often the live view takes the kernel's census again (it is kept current from events
/// in between; the re-sync undoes any drift from lost events).
const CENSUS_EVERY: Duration = Duration::from_secs(5);
/// How often the live view redraws when no key is pressed.
const REDRAW_EVERY: Duration = Duration::from_secs(1);

/// The full-screen view ([`twtrace::frontend::tui`]), the default on a terminal.
fn run_view(args: &LiveArgs) -> Result<()> {
    let filter = args.trace.filter();
    // No hook report on stderr: the view's header shows the hooks, and the alternate screen
    // would hide it anyway. Warnings are printed when the view closes.
    let mut tracer = Tracer::start(&args.trace.options()?)?;
    let stop = stop_flag()?;
    let deadline = args.trace.deadline();
    let host = HostInfo {
        host: sysinfo::hostname(),
        kernel: sysinfo::kernel_release().unwrap_or_default(),
        // The function tier is optional: counted when attached, not listed as missing.
        hooks: tracer
            .hooks
            .iter()
            .filter(|h| !h.is_fn_tier() || h.result.is_ok())
            .map(|h| (h.label(), h.result.is_ok()))
            .collect(),
        start_ns: sysinfo::monotonic_ns(),
    };
    let mut agg = Aggregator::default();
    let mut sysctls = SysctlWatch::new();
    let mut view = ViewState::default();
    let mut model = Model::build(&agg, &host);
    let mut batch = Vec::new();
    let mut shown = 0u64;
    let mut census_note = None;
    let mut next_census = Instant::now();
    let mut next_draw = Instant::now();
    let mut screen = Screen::start().context("starting the full-screen view (try --plain)")?;
    let result = (|| -> Result<()> {
        while !view.quit
            && !stop.load(Ordering::Relaxed)
            && deadline.is_none_or(|d| Instant::now() < d)
        {
            tracer.wait(Duration::from_millis(50));
            tracer.poll(&mut batch);
            for e in batch.drain(..) {
                if filter.matches(&e) {
                    agg.observe(&e);
                    shown += 1;
                }
            }
            if Instant::now() >= next_census {
                next_census = Instant::now() + CENSUS_EVERY;
                match super::resync_census(&mut tracer, &mut agg, &filter, &mut sysctls) {
                    Ok(()) => {}
                    Err(e) => {
                        // No iterator on this kernel: the census comes from events only.
                        census_note = Some(format!("{e:#}"));
                        next_census = Instant::now() + Duration::from_secs(3600);
                    }
                }
            }
            let ids = model.netns_ids();
            let mut redraw = false;
            for k in screen.keys()? {
                redraw |= view.on_key(k, &ids);
            }
            if redraw || Instant::now() >= next_draw {
                if !view.paused {
                    agg.advance(sysinfo::monotonic_ns());
                    model = Model::build(&agg, &host);
                }
                screen.draw(&model, &view)?;
                next_draw = Instant::now() + REDRAW_EVERY;
            }
        }
        Ok(())
    })();
    drop(screen);
    if !args.trace.quiet {
        for w in &tracer.warnings {
            eprintln!("warning: {w}");
        }
        if let Some(n) = census_note {
            eprintln!("warning: no state census ({n}); TIME_WAIT counts came from events only");
        }
        eprintln!("{}", summary_line(&tracer, shown));
    }
    result
}
