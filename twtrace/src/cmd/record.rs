//! `twtrace record -o FILE`: the live tracer's events into a compact trace file (format in
//! `docs/trace-format.md`), for `report` and `export` later, elsewhere, without root.

use super::args::{parse_flush_interval, TraceArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use twtrace::host::sysctls::Sysctls;
use twtrace::kernel::sysinfo;
use twtrace::pipeline::event::Event;
use twtrace::pipeline::session::{self, Flow, Session, Sink};
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
    #[arg(long, value_name = "SIZE", allow_negative_numbers = true, value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Write buffered events to the file at least this often: at most this much is lost if
    /// twtrace is killed.
    #[arg(long, default_value = "1", value_name = "SECS", allow_negative_numbers = true,
          value_parser = parse_flush_interval)]
    pub flush_interval: Duration,
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
    parts.extend(t.only.ports.iter().map(|p| format!("--port {p}")));
    parts.extend(t.only.netns.iter().map(|n| format!("--netns {n}")));
    parts.extend(t.only.peers.iter().map(|p| format!("--peer {p}")));
    parts.extend(t.only.cgroups.iter().map(|c| format!("--cgroup {c}")));
    parts.extend(t.only.containers.iter().map(|c| format!("--container {c}")));
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
    let mut opts = args.trace.session();
    opts.poll_every = Duration::from_millis(100);
    let mut session = Session::start(opts, session::stop_on_signals()?)?;
    let tracer = session.tracer();
    let mut header = Header::capture(
        tracer.clock,
        tracer.features().hz.value,
        &tracer.features().hooks,
    );
    header.filter = describe_filter(&args.trace);
    header.sysctls = initial_sysctls(&args.trace.only.netns);
    let wopts = WriterOptions {
        flush_interval: args.flush_interval,
        max_size: args.max_size,
        ..WriterOptions::default()
    };
    let out = &args.output;
    let writer = Writer::create(out, &header, wopts)
        .with_context(|| format!("creating {}", out.display()))?;
    if !args.trace.quiet {
        eprintln!("recording to {}", out.display());
    }
    let started = Instant::now();
    let mut rec = Record {
        writer: Some(writer),
        paths: Vec::new(),
        last_path: out.clone(),
        stats: (0, 0, 0),
    };
    if let Err(e) = session.run(&mut [&mut rec]) {
        // Full disk or I/O error: what is in the file stays readable (whole blocks).
        return Err(e).with_context(|| {
            format!(
                "writing {} (every block written before this is readable)",
                rec.last_path.display()
            )
        });
    }
    let (events, bytes, event_bytes) = rec.stats;
    if !args.trace.quiet {
        eprintln!("{}", session.summary_line());
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
            rec.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The trace writer as a session sink. Every event it gets is written (the session filtered
/// them); the summary block goes in at `finish`.
struct Record {
    /// `None` once finished.
    writer: Option<Writer>,
    /// The files written, once finished.
    paths: Vec<PathBuf>,
    /// The file being written, for an error message.
    last_path: PathBuf,
    /// (events, bytes, bytes of event blocks), once finished.
    stats: (u64, u64, u64),
}

impl Sink for Record {
    fn on_events(&mut self, events: &[Event]) -> Result<Flow> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(Flow::Stop);
        };
        let mut written = events.iter().try_for_each(|e| w.write(e));
        if written.is_ok() {
            // Also with no events: the flush interval is a bound in time.
            written = w.maybe_flush();
        }
        // The file being written when it failed (a rotation may have just begun a new one).
        if let Some(p) = w.paths().last() {
            self.last_path = p.clone();
        }
        written?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self, session: &Session) -> Result<()> {
        let Some(w) = self.writer.take() else {
            return Ok(());
        };
        let tracer = session.tracer();
        let summary = Summary {
            lost: tracer.lost_total(),
            decode_errors: tracer.decode_errors,
            read_errors: tracer.read_errors(),
            map_errors: tracer.map_errors(),
            skipped_runs: tracer.skipped_runs().unwrap_or(0),
            filtered: session.filtered(),
            end_ns: sysinfo::monotonic_ns(),
            ..Summary::default()
        };
        self.stats = (w.events(), w.bytes(), w.block_bytes());
        let first = self.last_path.clone();
        self.paths = w
            .finish(&summary)
            .with_context(|| format!("finishing {}", first.display()))?;
        Ok(())
    }
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
