//! Start-up snapshot of timewait sockets that existed before twtrace attached, through the
//! `iter/tcp` program.
//!
//! A TCP iterator walks the sockets of the network namespace of the task that *creates* it
//! (`bpf_iter_create`), so the snapshot enters every namespace it can find in turn, on a
//! short-lived thread, and creates one iterator there.

use crate::host::netns;
use crate::pipeline::decode::decode;
use anyhow::{Context, Result};
use aya::maps::{Array, MapData};
use aya::programs::Iter;
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use twtrace_common::{census, kind, TwRecord};

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

/// Runs the iterator once in the namespace at `ns_path` (or in the caller's namespace) and
/// returns what it wrote.
fn iterate(prog: &mut Iter, ns_path: Option<&Path>) -> Result<Vec<u8>> {
    let ns_file = match ns_path {
        Some(p) => Some(File::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => None,
    };
    std::thread::scope(|s| {
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
    })
}

fn run_once(prog: &mut Iter, ns_path: Option<&Path>, out: &mut Snapshot) -> Result<()> {
    let bytes = iterate(prog, ns_path)?;
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

/// Socket counts per TCP state in one network namespace (the `netstat | awk` census).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsCensus {
    pub netns: u64,
    /// Indexed by the kernel's TCP state number; slot [`census::TW_FIN_WAIT2`] holds timewait
    /// sockets in their FIN_WAIT2 substate (slot 6 then counts only the TIME_WAIT substate).
    pub counts: [u64; census::SLOTS as usize],
}

impl NetnsCensus {
    /// Display name of a slot, `None` for unused slots.
    pub fn slot_name(slot: usize) -> Option<&'static str> {
        Some(match slot {
            1 => "ESTABLISHED",
            2 => "SYN_SENT",
            3 => "SYN_RECV",
            4 => "FIN_WAIT1",
            5 => "FIN_WAIT2",
            6 => "TIME_WAIT",
            7 => "CLOSE",
            8 => "CLOSE_WAIT",
            9 => "LAST_ACK",
            10 => "LISTEN",
            11 => "CLOSING",
            12 => "NEW_SYN_RECV",
            s if s == census::TW_FIN_WAIT2 as usize => "TIME_WAIT(FIN_WAIT2)",
            _ => return None,
        })
    }
}

/// One namespace's census and its timewait sockets, from the same iterator walk.
#[derive(Clone, Debug)]
pub struct NetnsSockets {
    pub census: NetnsCensus,
    /// Every timewait socket (both substates) of the namespace.
    pub timewait: Vec<TwRecord>,
    /// A path to enter the namespace (for its sysctls).
    pub path: std::path::PathBuf,
}

/// Counts sockets per state and lists the timewait sockets, in one walk per namespace, in
/// every namespace found or only those in `only` (inodes; empty: all).
pub fn census_with_sockets(
    prog: &mut Iter,
    mode: &mut Array<MapData, u32>,
    counts: &mut Array<MapData, u64>,
    only: &[u64],
) -> Result<Vec<NetnsSockets>> {
    mode.set(0, census::MODE_BOTH, 0)
        .context("setting iterator mode")?;
    let own = netns::current_inode().ok();
    let mut out = Vec::new();
    let mut walk = || -> Result<()> {
        for (ino, path) in netns::all_namespaces() {
            if !only.is_empty() && !only.contains(&ino) {
                continue;
            }
            for i in 0..census::SLOTS {
                counts.set(i, 0, 0)?;
            }
            let enter = (Some(ino) != own).then_some(path.as_path());
            let bytes = match iterate(prog, enter) {
                Ok(b) => b,
                Err(e) => {
                    // A namespace that vanished between listing and entering is not an error.
                    log::debug!("census of netns {ino}: {e:#}");
                    continue;
                }
            };
            let mut timewait = Vec::new();
            for chunk in bytes.chunks(TwRecord::SIZE) {
                let r = decode(chunk).context("decoding an iterator record")?;
                if r.kind == kind::SNAPSHOT {
                    timewait.push(r);
                }
            }
            let mut c = NetnsCensus {
                netns: ino,
                counts: [0; census::SLOTS as usize],
            };
            for (i, slot) in c.counts.iter_mut().enumerate() {
                *slot = counts.get(&(i as u32), 0).unwrap_or(0);
            }
            out.push(NetnsSockets {
                census: c,
                timewait,
                path,
            });
        }
        Ok(())
    };
    let walked = walk();
    let reset = mode
        .set(0, census::MODE_SNAPSHOT, 0)
        .context("resetting iterator mode");
    walked?;
    reset?;
    Ok(out)
}

/// `ss`'s names for the kernel's TCP states (slot = the state's number), in the kernel's
/// order, for every state but TIME_WAIT (whose two substates each front end shows its way).
pub const SS_STATE_NAMES: [(usize, &str); 11] = [
    (1, "ESTAB"),
    (2, "SYN-SENT"),
    (3, "SYN-RECV"),
    (4, "FIN-WAIT-1"),
    (5, "FIN-WAIT-2"),
    (7, "CLOSE"),
    (8, "CLOSE-WAIT"),
    (9, "LAST-ACK"),
    (10, "LISTEN"),
    (11, "CLOSING"),
    (12, "NEW-SYN-RECV"),
];

/// Counts sockets per state in every namespace found, with the iterator in count mode.
pub fn census(
    prog: &mut Iter,
    mode: &mut Array<MapData, u32>,
    counts: &mut Array<MapData, u64>,
) -> Result<Vec<NetnsCensus>> {
    mode.set(0, census::MODE_COUNT, 0)
        .context("setting iterator mode")?;
    let own = netns::current_inode().ok();
    let mut out = Vec::new();
    let mut result = Ok(());
    for (ino, path) in netns::all_namespaces() {
        for i in 0..census::SLOTS {
            counts.set(i, 0, 0)?;
        }
        let path = (Some(ino) != own).then_some(path.as_path());
        if let Err(e) = iterate(prog, path) {
            // A namespace that vanished between listing and entering is not an error.
            log::debug!("census of netns {ino}: {e:#}");
            continue;
        }
        let mut c = NetnsCensus {
            netns: ino,
            counts: [0; census::SLOTS as usize],
        };
        for (i, slot) in c.counts.iter_mut().enumerate() {
            *slot = counts.get(&(i as u32), 0).unwrap_or(0);
        }
        out.push(c);
    }
    if let Err(e) = mode.set(0, census::MODE_SNAPSHOT, 0) {
        result = Err(anyhow::Error::from(e).context("resetting iterator mode"));
    }
    result.map(|_| out)
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
