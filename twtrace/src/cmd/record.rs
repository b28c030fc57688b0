//! `twtrace record -o FILE`: the live tracer's events into a compact trace file (format in
//! `docs/trace-format.md`), for `report` and `export` later, elsewhere, without root.

use super::live::{start_tracer, stop_flag, summary_line, TraceArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use twtrace::host::sysctls::Sysctls;
use twtrace::kernel::sysinfo;
use twtrace::pipeline::event::Event;
use twtrace::sink::tracefile::{
    sysctls_kv, Header, Summary, SysctlsByNetns, Writer, WriterOptions, MIN_MAX_SIZE,
};

#[derive(Args, Debug, Clone)]
pub struct RecordArgs {
    /// Trace file to write (mode 0600: it holds addresses). Replaced if it exists.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Start a new file (FILE.1, FILE.2, …) before one grows past SIZE bytes (suffixes K, M,
    /// G: powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Write buffered events to the file at least this often: at most this much is lost if
    /// twtrace is killed.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub flush_interval: f64,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// `4096`, `64K`, `100M`, `2G` (also `KiB`/`MB`-style spellings; all powers of 1024).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4096, 64K, 100M, 2G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("unknown size unit '{u}' in '{s}' (use K, M or G)")),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if v < MIN_MAX_SIZE {
        return Err(format!(
            "the maximum file size must be at least {MIN_MAX_SIZE} bytes"
        ));
    }
    Ok(v)
}

/// The filters as they were given, for the header (a later reader sees what was left out).
fn describe_filter(t: &TraceArgs) -> String {
    let mut parts = Vec::new();
    parts.extend(t.ports.iter().map(|p| format!("--port {p}")));
    parts.extend(t.netns.iter().map(|n| format!("--netns {n}")));
    parts.extend(t.peers.iter().map(|p| format!("--peer {p}")));
    if t.no_snapshot {
        parts.push("--no-snapshot".into());
    }
    parts.join(" ")
}

/// The header's sysctls: this namespace's and those named by `--netns`. Namespaces showing up
/// later arrive in the stream as `netns` events from the tracer.
fn initial_sysctls(filter_netns: &[u64]) -> SysctlsByNetns {
    let mut out = SysctlsByNetns::new();
    if let Ok(here) = twtrace::host::netns::current_inode() {
        out.insert(here, sysctls_kv(&Sysctls::read_current()));
    }
    if !filter_netns.is_empty() {
        let paths = twtrace::host::netns::all_namespaces();
        for ns in filter_netns {
            if let Some(s) = paths.get(ns).and_then(|p| Sysctls::read_in(p).ok()) {
                out.insert(*ns, sysctls_kv(&s));
            }
        }
    }
    out
}

pub fn run(args: RecordArgs) -> Result<()> {
    if !(args.flush_interval > 0.0 && args.flush_interval <= 3600.0) {
        bail!("--flush-interval must be between 0 and 3600 seconds");
    }
    let filter = args.trace.filter();
    let mut tracer = start_tracer(&args.trace)?;
    let stop = stop_flag()?;

    let mut header = Header::capture(tracer.clock, tracer.hz, &tracer.hooks);
    header.filter = describe_filter(&args.trace);
    header.sysctls = initial_sysctls(&args.trace.netns);
    let opts = WriterOptions {
        flush_interval: Duration::from_secs_f64(args.flush_interval),
        max_size: args.max_size,
        ..WriterOptions::default()
    };
    let out = &args.output;
    let mut writer = Writer::create(out, &header, opts)
        .with_context(|| format!("creating {}", out.display()))?;
    if !args.trace.quiet {
        eprintln!("recording to {}", out.display());
    }

    let deadline = args.trace.deadline();
    let mut batch: Vec<Event> = Vec::new();
    let mut filtered = 0u64;
    let write_batch =
        |batch: &mut Vec<Event>, writer: &mut Writer, filtered: &mut u64| -> Result<()> {
            for e in batch.drain(..) {
                if !filter.matches(&e) {
                    *filtered += 1;
                    continue;
                }
                writer.write(&e)?;
            }
            writer.maybe_flush()?;
            Ok(())
        };
    let started = Instant::now();
    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        tracer.wait(Duration::from_millis(100));
        tracer.poll(&mut batch);
        super::live::print_notices(&mut tracer);
        result = write_batch(&mut batch, &mut writer, &mut filtered);
        if result.is_err() {
            break;
        }
    }
    if let Err(e) = result {
        // Full disk or I/O error: what is in the file stays readable (whole blocks).
        return Err(e).with_context(|| {
            format!(
                "writing {} (every block written before this is readable)",
                writer.paths().last().unwrap_or(out).display()
            )
        });
    }
    tracer.finish(&mut batch);
    write_batch(&mut batch, &mut writer, &mut filtered)?;
    let events = writer.events();
    let summary = Summary {
        lost: tracer.lost_total(),
        decode_errors: tracer.decode_errors,
        read_errors: tracer.read_errors(),
        filtered,
        end_ns: sysinfo::monotonic_ns(),
        ..Summary::default()
    };
    let bytes = writer.bytes();
    let event_bytes = writer.block_bytes();
    let paths = writer
        .finish(&summary)
        .with_context(|| format!("finishing {}", out.display()))?;
    if !args.trace.quiet {
        eprintln!("{}", summary_line(&tracer, events));
        eprintln!(
            "twtrace: recorded {events} events in {:.1} s: {bytes} bytes ({}) in {}",
            started.elapsed().as_secs_f64(),
            if events > 0 {
                format!(
                    "{:.1} bytes/event after the header",
                    event_bytes as f64 / events as f64
                )
            } else {
                "header only".to_string()
            },
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("1K").is_err(), "below the minimum");
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }
}
