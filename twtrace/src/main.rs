//! `twtrace`: the command line.

use anyhow::{Context, Result};
use clap::{Args, Parser};
use std::io::IsTerminal;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twtrace::filter::Filter;
use twtrace::output::{Format, Printer};
use twtrace::tracer::{Tracer, TracerOptions};

/// Trace TCP TIME_WAIT sockets being born and dying, live, with eBPF.
///
/// Each line is one event: `enter` (a socket entered TIME_WAIT, with its substate and armed
/// timeout and the process that closed it), `promote` (FIN_WAIT2 → TIME_WAIT inside a timewait
/// socket) or `exit` (it died: `expired`, or `early` when killed before its timer), with its
/// lifetime. Needs root (or CAP_BPF + CAP_PERFMON) and a kernel with BTF.
#[derive(Parser, Debug)]
#[command(name = "twtrace", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    live: LiveArgs,
}

#[derive(Args, Debug, Clone)]
struct LiveArgs {
    /// Print NDJSON, one object per event (the stable `--json` contract).
    #[arg(long)]
    json: bool,
    /// Only sockets with this local or remote port (repeatable).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// Only sockets in this network namespace, by inode (`stat -L -c %i /proc/PID/ns/net`).
    #[arg(long = "netns", value_name = "INODE")]
    netns: Vec<u64>,
    /// Only sockets whose remote address is ADDR (repeatable).
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<IpAddr>,
    /// Do not list TIME_WAIT sockets that existed before start-up.
    #[arg(long)]
    no_snapshot: bool,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Kernel ring buffer size in MiB (a power of two).
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    ring_mib: u32,
    /// Do not print the hook report and summary on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_live(cli.live) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twtrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_live(args: LiveArgs) -> Result<()> {
    if !args.ring_mib.is_power_of_two() || args.ring_mib == 0 || args.ring_mib > 1024 {
        anyhow::bail!("--ring-mib must be a power of two between 1 and 1024");
    }
    let filter = Filter {
        ports: args.ports.clone(),
        netns: args.netns.clone(),
        peers: args.peers.clone(),
    };
    let opts = TracerOptions {
        ring_bytes: args.ring_mib << 20,
        snapshot: !args.no_snapshot,
        ..TracerOptions::default()
    };
    let mut tracer = Tracer::start(&opts)?;
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

    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            rt.block_on(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
            });
            stop.store(true, Ordering::Relaxed);
        });
    }

    let format = if args.json {
        Format::Json
    } else {
        Format::Lines
    };
    let stdout = std::io::stdout();
    let interactive = stdout.is_terminal();
    let mut printer = Printer::new(stdout.lock(), format, tracer.clock);
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut batch = Vec::new();
    let mut printed = 0u64;
    let mut broken_pipe = false;
    let mut emit = |batch: &mut Vec<twtrace::event::Event>, printer: &mut Printer<_>| -> bool {
        let kept: Vec<_> = batch.drain(..).filter(|e| filter.matches(e)).collect();
        printed += kept.len() as u64;
        printer.write_batch(kept.iter()).is_ok()
    };
    loop {
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
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
    if !args.quiet {
        let s = tracer.stats();
        let lost = tracer.lost_total();
        eprintln!(
            "twtrace: {printed} events shown; {} enter ({} from snapshot), {} promote, {} exit \
             ({} expired, {} early, {} unknown); {lost} lost{}",
            s.enters + s.snapshot,
            s.snapshot,
            s.promotes,
            s.exits,
            s.expired,
            s.early,
            s.unknown,
            if tracer.decode_errors > 0 {
                format!("; {} undecodable records", tracer.decode_errors)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
