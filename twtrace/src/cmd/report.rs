//! `twtrace report FILE…`: the summaries a live session shows (per peer, per netns, per
//! process, the lifetime histogram), from trace files, offline and without root.
//!
//! Files are grouped by the host that recorded them and each host is reported on its own:
//! monotonic timestamps and namespace inodes only mean something on their own machine (every
//! host's root namespace has the same inode). Within a host, files are read in time order on
//! the wall clock (so recordings from different boots line up).
//!
//! `--html FILE` writes the same report as one page with charts instead (analysis/html/),
//! fed in the same pass.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use twtrace::analysis::aggregate::{Aggregator, Report};
use twtrace::analysis::html;
use twtrace::analysis::report::ReportModel;
use twtrace::host::sysctls::Sysctls;
use twtrace::sink::tracefile::Reader;

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Trace files (e.g. FILE FILE.1 …, or files from several hosts).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub only: super::args::FilterArgs,
    /// Width of the report in columns, 40 to 10000 (default: the terminal's, else 100).
    #[arg(long, value_name = "COLS", allow_negative_numbers = true,
          value_parser = super::args::parse_count(40, 10_000, "a width in columns"))]
    pub width: Option<usize>,
    /// Write a self-contained HTML page (charts and tables, nothing fetched) to FILE instead
    /// of printing the report.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// A header's key/value sysctls back to the typed form the aggregator takes.
fn typed(kv: &BTreeMap<String, String>) -> Sysctls {
    twtrace::sink::tracefile::sysctls_from_kv(kv)
}

fn terminal_width() -> usize {
    if !std::io::stdout().is_terminal() {
        return 100;
    }
    ratatui::crossterm::terminal::size()
        .map(|(w, _)| usize::from(w))
        .unwrap_or(100)
}

/// Whether two paths name one existing file (device and inode).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// An opened file: its header read, its events not yet.
struct Input {
    path: PathBuf,
    reader: Reader,
}

impl Input {
    /// Wall-clock start of the recording, to order a host's files.
    fn start(&self) -> i128 {
        let h = self.reader.header();
        h.clock.wall_ns(h.started_ns)
    }
}

pub fn run(args: ReportArgs) -> Result<()> {
    let filter = args.only.filter();
    let width = args.width.unwrap_or_else(terminal_width).max(40);
    // Opened first: an unwritable path fails before a long read, not after. Creating it
    // truncates it, so it must not be one of the traces.
    let mut html_out = match &args.html {
        Some(p) => {
            if args.files.iter().any(|f| same_file(f, p)) {
                bail!(
                    "{} is one of the trace files: not overwriting it",
                    p.display()
                );
            }
            let file = std::fs::File::create(p)
                .with_context(|| format!("cannot write {}", p.display()))?;
            Some((p, file))
        }
        None => None,
    };
    // Per host, what the page needs once every host has been read.
    let mut pages: Vec<(String, ReportModel, Aggregator, html::Series, u64)> = Vec::new();
    let mut failed = Vec::new();
    // Host → its files, headers read. Events are streamed into the aggregator later, so a
    // report of a large recording needs the aggregator's memory, not the file's.
    let mut hosts: BTreeMap<String, Vec<Input>> = BTreeMap::new();
    for path in &args.files {
        match Reader::open(path) {
            Ok(reader) => hosts
                .entry(reader.header().hostname.clone())
                .or_default()
                .push(Input {
                    path: path.clone(),
                    reader,
                }),
            Err(e) => {
                eprintln!("twtrace: error: {e:#}");
                failed.push(path.display().to_string());
            }
        }
    }
    let several = hosts.len() > 1;
    for (i, (host, mut inputs)) in hosts.into_iter().enumerate() {
        inputs.sort_by_key(|f| (f.start(), f.reader.header().part));
        let mut agg = Aggregator::default();
        let mut series = html::Series::default();
        for f in &inputs {
            for (ns, kv) in &f.reader.header().sysctls {
                if let Ok(ns) = u32::try_from(*ns) {
                    agg.set_context(ns, typed(kv));
                }
            }
        }
        let (mut events, mut damaged) = (0u64, 0);
        // Recordings (by start time) that ended with a summary in one of their parts.
        let mut finished = std::collections::HashSet::new();
        let mut recordings = std::collections::HashSet::new();
        for f in &mut inputs {
            let clock = f.reader.header().clock;
            for item in f.reader.events() {
                match item {
                    Ok(mut e) if filter.matches(&e) => {
                        // On the wall-clock time line (ns since the epoch): files from
                        // different boots of one host line up in one aggregator.
                        e.ts_ns = clock.wall_ns(e.ts_ns).clamp(0, u64::MAX as i128) as u64;
                        agg.observe(&e);
                        if html_out.is_some() {
                            series.observe(&e, &agg);
                        }
                        events += 1;
                    }
                    Ok(_) => {}
                    Err(d) => {
                        damaged += 1;
                        eprintln!("twtrace: warning: {}: {d}", f.path.display());
                    }
                }
            }
            if f.reader.skipped_records() > 0 {
                eprintln!(
                    "twtrace: note: {}: {} records of kinds newer than this twtrace were skipped",
                    f.path.display(),
                    f.reader.skipped_records()
                );
            }
            recordings.insert(f.start());
            if f.reader.summary().is_some() {
                finished.insert(f.start());
            }
        }
        let cut_short = recordings.difference(&finished).count();
        let h = inputs[0].reader.header();
        // The lines above the tables (the same in the text and in the page).
        let mut head = String::new();
        let title = format!(
            "{} (kernel {}, HZ {}): {} file{}, {events} events",
            if host.is_empty() {
                "unnamed host"
            } else {
                &host
            },
            h.kernel_release,
            h.hz,
            inputs.len(),
            if inputs.len() == 1 { "" } else { "s" },
        );
        if several {
            let _ = writeln!(
                head,
                "{title}\n{}",
                "=".repeat(title.chars().count().min(width))
            );
        } else {
            let _ = writeln!(head, "{title}");
        }
        if !h.filter.is_empty() {
            let _ = writeln!(head, "recorded with filters: {}", h.filter);
        }
        for k in h.hooks.iter().filter(|k| k.error.is_some()) {
            let _ = writeln!(
                head,
                "note: hook {} was unavailable when recording ({}): {}",
                k.label,
                k.purpose,
                k.error.as_deref().unwrap_or("")
            );
        }
        if damaged > 0 {
            let _ = writeln!(
                head,
                "note: {damaged} damaged regions skipped (see the warnings)"
            );
        }
        if cut_short > 0 {
            let _ = writeln!(
                head,
                "note: {cut_short} recording{} ended without a summary (killed or cut short)",
                if cut_short == 1 { "" } else { "s" }
            );
        }
        if html_out.is_some() {
            // Every column (a page scrolls or wraps); the same rows as the text.
            let report = Report::default_limits(width).model(&agg);
            pages.push((head, report, agg, series, h.hz));
            continue;
        }
        if i > 0 {
            println!();
        }
        print!("{head}{}", Report::render(&agg, width));
    }
    if let Some((path, file)) = html_out.as_mut() {
        let sections: Vec<html::HostSection> = pages
            .iter()
            .map(|(head, report, agg, series, hz)| html::HostSection {
                head: head.clone(),
                report: report.clone(),
                agg,
                series,
                hz: *hz,
            })
            .collect();
        let sources: Vec<String> = args.files.iter().map(|p| p.display().to_string()).collect();
        let page = html::render(&sources, &sections)?;
        use std::io::Write as _;
        file.write_all(page.as_bytes())
            .and_then(|_| file.flush())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "twtrace: wrote {} ({} bytes, {} host{})",
            path.display(),
            page.len(),
            sections.len(),
            if sections.len() == 1 { "" } else { "s" }
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

    #[test]
    fn header_sysctls_parse_back_to_typed() {
        let s = Sysctls {
            tw_reuse: Some(2),
            tw_reuse_delay_ms: Some(1000),
            max_tw_buckets: Some(262_144),
            timestamps: Some(1),
            fin_timeout_s: Some(60),
            rfc1337: Some(0),
            port_range: Some((32768, 60999)),
        };
        assert_eq!(typed(&twtrace::sink::tracefile::sysctls_kv(&s)), s);
        let mut kv = BTreeMap::new();
        kv.insert("net.ipv4.tcp_tw_reuse".to_string(), "x".to_string());
        kv.insert(
            "net.ipv4.ip_local_port_range".to_string(),
            "9 1".to_string(),
        );
        assert_eq!(typed(&kv), Sysctls::default());
    }
}
