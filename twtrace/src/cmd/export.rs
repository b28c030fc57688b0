//! `twtrace export FILE… --format ndjson|csv`: trace files as text for jq, pandas and
//! spreadsheets. NDJSON is the live `--json` contract, line for line; CSV has one header row
//! and stable columns ([`CSV_COLUMNS`]). Needs no privileges.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use twtrace::kernel::sysinfo::Clock;
use twtrace::pipeline::event::{Body, Event};
use twtrace::sink::format::{errno_name, rfc3339_micros};
use twtrace::sink::tracefile::Reader;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Ndjson,
    Csv,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Trace files, exported one after the other (e.g. FILE FILE.1 FILE.2).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
    pub format: ExportFormat,
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// CSV columns, in order. New columns are only ever appended.
pub const CSV_COLUMNS: &[&str] = &[
    "time",
    "ts_ns",
    "kind",
    "netns",
    "family",
    "laddr",
    "lport",
    "raddr",
    "rport",
    "substate",
    "timeout_ms",
    "snapshot",
    "age_ms",
    "reason",
    "lifetime_ms",
    "errno",
    "errno_name",
    "refusal",
    "timewait",
    "count",
    "pid",
    "comm",
    "tw",
    "sysctls",
    "host",
    "candidates",
    "ports",
    "cgroup_id",
    "cgroup",
    "container_id",
    "pod_uid",
    "pod",
];

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// One CSV row (without the newline), columns as [`CSV_COLUMNS`]; empty where a column does
/// not apply to the event's kind.
pub fn write_csv(e: &Event, clock: &Clock, host: &str, out: &mut String) {
    let mut cols: [String; 32] = Default::default();
    cols[0] = rfc3339_micros(clock.wall_ns(e.ts_ns));
    cols[1] = e.ts_ns.to_string();
    cols[2] = e.kind().to_string();
    if let Some(s) = e.sock() {
        cols[3] = s.netns.to_string();
        cols[4] = s.family().to_string();
        cols[5] = s.laddr.to_string();
        cols[6] = s.lport.to_string();
        cols[7] = s.raddr.to_string();
        cols[8] = s.rport.to_string();
        cols[22] = format!("{:#x}", s.tw);
    }
    let mut task = |t: &Option<twtrace::pipeline::event::Task>| {
        if let Some(t) = t {
            cols[20] = t.pid.to_string();
            cols[21] = t.comm.to_string();
        }
    };
    let opt = |v: &Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    match &e.body {
        Body::Enter {
            substate,
            timeout_ms,
            task: t,
            snapshot,
            age_ms,
            ..
        } => {
            task(t);
            cols[9] = substate.as_str().into();
            cols[10] = timeout_ms.to_string();
            cols[11] = snapshot.to_string();
            cols[12] = opt(age_ms);
        }
        Body::Promote {
            timeout_ms, age_ms, ..
        } => {
            cols[9] = "TIME_WAIT".into();
            cols[10] = timeout_ms.to_string();
            cols[12] = opt(age_ms);
        }
        Body::Exit {
            substate,
            reason,
            lifetime_ms,
            task: t,
            ..
        } => {
            task(t);
            cols[9] = substate.as_str().into();
            cols[13] = reason.as_str().into();
            cols[14] = opt(lifetime_ms);
        }
        Body::Overflow { .. } | Body::PawsReject { .. } => {}
        Body::Abort { task: t, .. } => task(t),
        Body::ConnectFail {
            errno,
            refusal,
            timewait,
            candidates,
            task: t,
            ..
        } => {
            task(t);
            if let Some(n) = candidates {
                cols[25] = n.to_string();
            }
            cols[15] = errno.to_string();
            cols[16] = errno_name(*errno).into();
            cols[17] = refusal.as_str().into();
            cols[18] = timewait.to_string();
        }
        Body::Netns { netns, sysctls } => {
            cols[3] = netns.to_string();
            cols[23] = sysctls.summary();
        }
        Body::Lost { count } => cols[19] = count.to_string(),
        Body::BindFail {
            netns,
            family,
            errno,
            timewait,
            ports,
            task: t,
        } => {
            task(t);
            cols[3] = netns.to_string();
            cols[4] = family.to_string();
            cols[15] = errno.to_string();
            cols[16] = errno_name(*errno).into();
            cols[18] = timewait.to_string();
            cols[26] = ports.map(|p| p.to_string()).unwrap_or_default();
        }
        Body::BoundConnect { task: t, .. } => task(t),
    }
    cols[24] = host.to_string();
    if let Some(w) = &e.workload {
        cols[27] = w.cgroup_id.to_string();
        cols[28] = w.path.clone().unwrap_or_default();
        cols[29] = w.container_id.clone().unwrap_or_default();
        cols[30] = w.pod_uid.clone().unwrap_or_default();
        cols[31] = w.pod.clone().unwrap_or_default();
    }
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, c);
    }
}

fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

pub fn run(args: ExportArgs) -> Result<()> {
    let sink: Box<dyn Write> = match &args.output {
        // Mode 0600 like the trace itself: the export holds the same addresses.
        Some(p) => Box::new(
            twtrace::sink::tracefile::create_private(p)
                .with_context(|| format!("creating {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::with_capacity(256 << 10, sink);
    let mut line = String::with_capacity(512);
    if args.format == ExportFormat::Csv {
        let _ = writeln!(line, "{}", CSV_COLUMNS.join(","));
    }
    let mut failed = Vec::new();
    let (mut events, mut damaged) = (0u64, 0u64);
    'files: for path in &args.files {
        let mut reader = match Reader::open(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("twtrace: error: {e:#}");
                failed.push(path.display().to_string());
                continue;
            }
        };
        let clock = reader.header().clock;
        let host = reader.header().hostname.clone();
        for item in reader.events() {
            match item {
                Ok(e) => {
                    match args.format {
                        ExportFormat::Ndjson => e.write_json(&clock, &mut line),
                        ExportFormat::Csv => write_csv(&e, &clock, &host, &mut line),
                    }
                    line.push('\n');
                    events += 1;
                }
                Err(d) => {
                    damaged += 1;
                    eprintln!("twtrace: warning: {}: {d}", path.display());
                }
            }
            if line.len() >= 64 << 10 {
                match out.write_all(line.as_bytes()) {
                    Err(e) if is_broken_pipe(&e) => break 'files,
                    r => r.context("writing the export")?,
                }
                line.clear();
            }
        }
        if reader.skipped_records() > 0 {
            eprintln!(
                "twtrace: note: {}: {} records of kinds newer than this twtrace were skipped",
                path.display(),
                reader.skipped_records()
            );
        }
    }
    match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if is_broken_pipe(&e) => return Ok(()),
        r => r.context("writing the export")?,
    }
    if damaged > 0 {
        eprintln!(
            "twtrace: exported {events} events; {damaged} damaged regions skipped (see above)"
        );
    }
    if !failed.is_empty() {
        bail!("could not read {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use twtrace::pipeline::event::{Sock, Task};

    #[test]
    fn csv_rows_have_every_column_and_quote_what_needs_it() {
        let e = Event::new(
            1_000,
            Body::Abort {
                sock: Sock {
                    tw: 0xffff_8881_0000_0100,
                    netns: 7,
                    laddr: "127.0.0.1".parse().unwrap(),
                    lport: 1,
                    raddr: "::1".parse().unwrap(),
                    rport: 2,
                },
                task: Some(Task {
                    pid: 9,
                    comm: "a,\"b\"".into(),
                }),
            },
        );
        let mut s = String::new();
        write_csv(&e, &Clock { offset_ns: 0 }, "h", &mut s);
        assert_eq!(
            s,
            "1970-01-01T00:00:00.000001Z,1000,abort,7,4,127.0.0.1,1,::1,2,,,,,,,,,,,,9,\"a,\"\"b\"\"\",0xffff888100000100,,h,,,,,,,"
        );
        // One separator fewer than columns, plus the comma inside the quoted comm.
        assert_eq!(s.matches(',').count() - 1, CSV_COLUMNS.len() - 1);
        // The function tier's candidate count is the last column (appended in trace minor 1).
        let f = Event::new(
            1_000,
            Body::ConnectFail {
                sock: Sock::v4(1, 7, [127, 0, 0, 1], 0, [127, 0, 0, 1], 80),
                errno: libc::EADDRNOTAVAIL,
                refusal: twtrace::pipeline::event::Refusal::TooYoung,
                timewait: 4,
                candidates: Some(3),
                task: None,
            },
        );
        let mut s = String::new();
        write_csv(&f, &Clock { offset_ns: 0 }, "h", &mut s);
        assert!(s.ends_with(",too young,4,,,,0x1,,h,3,,,,,,"), "{s}");
        assert_eq!(CSV_COLUMNS[25], "candidates");
        // The pool of a bind() failure (appended in trace minor 2).
        let b = Event::new(
            1_000,
            Body::BindFail {
                netns: 7,
                family: 2,
                errno: libc::EADDRINUSE,
                timewait: 20,
                ports: Some(20),
                task: None,
            },
        );
        let mut s = String::new();
        write_csv(&b, &Clock { offset_ns: 0 }, "h", &mut s);
        assert!(
            s.starts_with("1970-01-01T00:00:00.000001Z,1000,bind_fail,7,2,"),
            "{s}"
        );
        assert!(s.ends_with(",98,EADDRINUSE,,20,,,,,,h,,20,,,,,"), "{s}");
        assert_eq!(CSV_COLUMNS[26], "ports");
        // Issue 15's columns, appended: the workload of an event that names one.
        let mut w = twtrace::host::workload::Workload::from_path(
            5,
            "/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
        );
        w.pod = Some("ns/p".into());
        let b = b.in_cgroup(5);
        let mut b = b;
        b.workload = Some(std::sync::Arc::new(w));
        let mut s = String::new();
        write_csv(&b, &Clock { offset_ns: 0 }, "h", &mut s);
        assert!(
            s.ends_with(",h,,20,5,/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope,0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef,,ns/p"),
            "{s}"
        );
        assert_eq!(CSV_COLUMNS.last(), Some(&"pod"));
    }
}
