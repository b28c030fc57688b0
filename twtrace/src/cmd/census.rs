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
use twtrace::pipeline::session;

use super::args::{parse_count, parse_inode, parse_secs};

#[derive(Args, Debug, Clone)]
pub struct CensusArgs {
    /// Only this network namespace, by inode (repeatable; default: every namespace).
    #[arg(long = "netns", value_name = "INODE", allow_negative_numbers = true,
          value_parser = parse_inode)]
    pub netns: Vec<u64>,
    /// One JSON object (with --watch, one per line).
    #[arg(long)]
    pub json: bool,
    /// Repeat every SECS seconds until Ctrl-C.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = parse_secs)]
    pub watch: Option<Duration>,
    /// Destinations listed per namespace.
    #[arg(long, default_value_t = 10, value_name = "N", allow_negative_numbers = true,
          value_parser = parse_count(1, 10_000, "a number of destinations"))]
    pub top: usize,
}

pub fn run(args: CensusArgs) -> Result<()> {
    let mut ebpf = loader::load_iter()?;
    let mut mode = Array::try_from(ebpf.take_map("ITER_MODE").context("ITER_MODE map")?)?;
    let mut counts = Array::try_from(ebpf.take_map("CENSUS").context("CENSUS map")?)?;
    let prog: &mut Iter = ebpf
        .program_mut("snapshot_tcp")
        .context("iter program")?
        .try_into()?;
    let stop = session::stop_on_signals()?;
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
        let next = started + every;
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
