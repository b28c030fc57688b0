//! `twtrace census`: the socket state table per network namespace, exactly, from the kernel's
//! own tables (one `iter/tcp` walk each), with the destinations TIME_WAIT sockets hold ports
//! toward. `--watch SECS` repeats it.

use anyhow::{Context, Result};
use aya::maps::Array;
use aya::programs::Iter;
use clap::Args;
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use twtrace::analysis::census;
use twtrace::host::{procs, sysctls::Sysctls};
use twtrace::kernel::{loader, snapshot, sysinfo};

#[derive(Args, Debug, Clone)]
pub struct CensusArgs {
    /// Only this network namespace, by inode (repeatable; default: every namespace).
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<u64>,
    /// One JSON object (with --watch, one per line).
    #[arg(long)]
    pub json: bool,
    /// Repeat every SECS seconds until Ctrl-C.
    #[arg(long, value_name = "SECS", value_parser = parse_watch)]
    pub watch: Option<f64>,
    /// Destinations listed per namespace.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
}

/// A repeat period: a finite number of seconds, at least 0.1 (each walk enters every
/// namespace) and at most a day.
fn parse_watch(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(v.is_finite() && (0.1..=86_400.0).contains(&v)) {
        return Err(format!("'{s}': give a number of seconds from 0.1 to 86400"));
    }
    Ok(v)
}

pub fn run(args: CensusArgs) -> Result<()> {
    let mut ebpf = loader::load_iter()?;
    let mut mode = Array::try_from(ebpf.take_map("ITER_MODE").context("ITER_MODE map")?)?;
    let mut counts = Array::try_from(ebpf.take_map("CENSUS").context("CENSUS map")?)?;
    let prog: &mut Iter = ebpf
        .program_mut("snapshot_tcp")
        .context("iter program")?
        .try_into()?;
    let stop = super::live::stop_flag()?;
    let mut first = true;
    loop {
        let started = Instant::now();
        let walked = snapshot::census_with_sockets(prog, &mut mode, &mut counts, &args.netns)?;
        if walked.is_empty() && !args.netns.is_empty() {
            anyhow::bail!(
                "no network namespace with inode {:?} was found (list them with `lsns -t net`)",
                args.netns
            );
        }
        let ranges: HashMap<u64, (u16, u16)> = walked
            .iter()
            .filter_map(|w| {
                let s = Sysctls::read_in(&w.path).ok()?;
                Some((w.census.netns, s.port_range?))
            })
            .collect();
        let rows = census::build(
            &walked,
            &procs::members(std::path::Path::new("/proc")),
            &ranges,
            args.top,
        );
        let mut out = std::io::stdout().lock();
        let written = if args.json {
            writeln!(out, "{}", census::to_json(&rows, sysinfo::monotonic_ns()))
        } else {
            if !first {
                writeln!(out)?;
            }
            write!(out, "{}", census::render_text(&rows))
        };
        if written.and_then(|_| out.flush()).is_err() {
            return Ok(()); // stdout closed (a pager quit): not an error
        }
        first = false;
        let Some(every) = args.watch else {
            return Ok(());
        };
        let next = started + Duration::from_secs_f64(every);
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}
