//! Start-up snapshot of timewait sockets that existed before twtrace attached, through the
//! `iter/tcp` program.
//!
//! A TCP iterator walks the sockets of the network namespace of the task that *creates* it
//! (`bpf_iter_create`), so the snapshot enters every namespace it can find in turn, on a
//! short-lived thread, and creates one iterator there.

use crate::decode::decode;
use crate::netns;
use anyhow::{Context, Result};
use aya::programs::Iter;
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use twtrace_common::{kind, TwRecord};

#[derive(Default, Debug)]
pub struct Snapshot {
    pub records: Vec<TwRecord>,
    /// Namespaces walked.
    pub namespaces: usize,
    /// Namespaces that could not be entered or read, with the reason.
    pub failures: Vec<String>,
    /// (ktime ns, jiffies) pairs from the iterators' end records: a clock calibration.
    pub marks: Vec<(u64, u64)>,
}

/// Runs the iterator once in the namespace at `ns_path` (or in the caller's namespace).
fn run_once(prog: &mut Iter, ns_path: Option<&Path>, out: &mut Snapshot) -> Result<()> {
    let ns_file = match ns_path {
        Some(p) => Some(File::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => None,
    };
    let bytes = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<u8>> {
            if let Some(f) = &ns_file {
                setns(f.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
            }
            let id = prog.attach().context("attaching iter/tcp")?;
            let link = prog.take_link(id)?;
            let mut file = link.into_file().context("creating the iterator")?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).context("reading the iterator")?;
            Ok(buf)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("snapshot thread panicked"))?
    })?;
    for chunk in bytes.chunks(TwRecord::SIZE) {
        let r = decode(chunk).context("decoding an iterator record")?;
        match r.kind {
            kind::SNAPSHOT => out.records.push(r),
            kind::SNAPSHOT_END => out.marks.push((r.ts_ns, r.jiffies)),
            _ => {}
        }
    }
    out.namespaces += 1;
    Ok(())
}

/// Walks every network namespace found (see [`netns::all_namespaces`]).
pub fn take(prog: &mut Iter) -> Snapshot {
    let mut snap = Snapshot::default();
    let own = netns::current_inode().ok();
    for (ino, path) in netns::all_namespaces() {
        let path = (Some(ino) != own).then_some(path.as_path());
        if let Err(e) = run_once(prog, path, &mut snap) {
            snap.failures.push(format!("netns {ino}: {e:#}"));
        }
    }
    if snap.namespaces == 0 {
        if let Err(e) = run_once(prog, None, &mut snap) {
            snap.failures.push(format!("own netns: {e:#}"));
        }
    }
    snap
}

/// Two iterator runs `gap` apart in our own namespace give a (ktime, jiffies) rate: HZ where
/// the kernel config is not readable.
pub fn measure_hz(prog: &mut Iter, gap: std::time::Duration) -> Result<f64> {
    let mut a = Snapshot::default();
    run_once(prog, None, &mut a)?;
    std::thread::sleep(gap);
    run_once(prog, None, &mut a)?;
    let (Some(first), Some(last)) = (a.marks.first(), a.marks.last()) else {
        anyhow::bail!("iterator gave no clock marks");
    };
    let dt = last.0.saturating_sub(first.0) as f64 / 1e9;
    Ok(last.1.saturating_sub(first.1) as f64 / dt.max(1e-9))
}
