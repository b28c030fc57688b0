//! Which processes live in each network namespace: the workload a namespace belongs to, as
//! `/proc` tells it (the first process found, by pid, and how many there are).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

/// The processes of one network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// The lowest pid in the namespace, and its `comm`.
    pub first: Option<(u32, String)>,
    pub processes: u32,
}

impl Members {
    /// `nginx (pid 812, 4 processes)`, or `-` for a namespace no process holds (one kept by
    /// a bind mount, or being torn down).
    pub fn describe(&self) -> String {
        match &self.first {
            Some((pid, comm)) if self.processes > 1 => {
                format!("{comm} (pid {pid}, {} processes)", self.processes)
            }
            Some((pid, comm)) => format!("{comm} (pid {pid})"),
            None => "-".into(),
        }
    }
}

/// Every network namespace's members, by namespace inode (one `/proc` walk). A process counts
/// in every namespace one of its threads is in (a namespace can be held by a single thread,
/// as twtrace's own private namespaces are).
pub fn by_netns() -> BTreeMap<u64, Members> {
    let mut out: BTreeMap<u64, Members> = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let mut pids: Vec<u32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue; // gone
        };
        let mut inodes: Vec<u64> = tasks
            .flatten()
            .filter_map(|t| Some(std::fs::metadata(t.path().join("ns/net")).ok()?.ino()))
            .collect();
        inodes.sort_unstable();
        inodes.dedup();
        for ino in inodes {
            let entry = out.entry(ino).or_default();
            entry.processes += 1;
            if entry.first.is_none() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                entry.first = Some((pid, comm.trim().to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_namespace_has_us() {
        let here = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let m = by_netns();
        let ours = &m[&here];
        assert!(ours.processes >= 1);
        assert!(ours.first.is_some());
    }

    #[test]
    fn describe_says_how_many() {
        let m = Members {
            first: Some((812, "nginx".into())),
            processes: 4,
        };
        assert_eq!(m.describe(), "nginx (pid 812, 4 processes)");
        assert_eq!(Members::default().describe(), "-");
    }
}
