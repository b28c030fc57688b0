//! `twtrace` / `twtrace live`: events as lines or NDJSON until Ctrl-C.

use anyhow::{Context, Result};
use clap::Args;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twtrace::event::ExitReason;
use twtrace::filter::Filter;
use twtrace::output::{Format, Printer};
use twtrace::tracer::{Tracer, TracerOptions};

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
    format!(
        "twtrace: {shown} events shown; {} enter ({} from snapshot), {} promote, {} exit ({}); {lost} lost{}",
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
        if tracer.decode_errors > 0 {
            format!("; {} undecodable records", tracer.decode_errors)
        } else {
            String::new()
        }
    )
}

pub fn run(args: LiveArgs) -> Result<()> {
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
    let mut emit = |batch: &mut Vec<twtrace::event::Event>, printer: &mut Printer<_>| -> bool {
        let kept: Vec<_> = batch.drain(..).filter(|e| filter.matches(e)).collect();
        shown += kept.len() as u64;
        printer.write_batch(kept.iter()).is_ok()
    };
    let mut broken_pipe = false;
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        tracer.wait(Duration::from_millis(if interactive { 50 } else { 100 }));
        tracer.poll(&mut batch);
        if !emit(&mut batch, &mut printer) {
            broken_pipe = true;
            break;
        }
    }
    if !broken_pipe {
        tracer.finish(&mut batch);
        let _ = emit(&mut batch, &mut printer);
    }
    if !args.trace.quiet {
        eprintln!("{}", summary_line(&tracer, shown));
    }
    Ok(())
}
