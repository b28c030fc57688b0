//! The processes of the host as `/proc` shows them: which task (and cgroup, and container
//! runtime) each network namespace belongs to, for the `netns_info` metric and `census`.

use std::collections::HashMap;
use std::path::Path;

/// A task known to be in a network namespace, and its cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsOwner {
    /// A task id in the namespace (the main thread of the lowest such process where there is
    /// one): what `nsenter -t PID -n` takes.
    pub pid: u32,
    pub cgroup: String,
}

/// The container runtime a cgroup path belongs to, as far as its well-known names tell;
/// `none` otherwise.
pub fn runtime_of(cgroup: &str) -> &'static str {
    const KNOWN: [(&str, &str); 8] = [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
        ("docker", "docker"),
        ("kubepods", "kubernetes"),
        ("containerd", "containerd"),
        ("lxc", "lxc"),
        ("machine.slice", "systemd-nspawn"),
    ];
    KNOWN
        .iter()
        .find(|(needle, _)| cgroup.contains(needle))
        .map_or("none", |(_, r)| r)
}

/// The cgroup path of a `/proc/PID/cgroup` text: the unified (v2) hierarchy's, else the
/// systemd one's, else the first listed, preferring paths other than the root (on a hybrid
/// v1/v2 host the unused unified hierarchy says `/` for everyone).
pub fn cgroup_path(text: &str) -> Option<String> {
    let mut unified = None;
    let mut systemd = None;
    let mut first = None;
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if path.is_empty() {
            continue;
        }
        let slot = if id == "0" && ctrl.is_empty() {
            &mut unified
        } else if ctrl == "name=systemd" {
            &mut systemd
        } else {
            &mut first
        };
        if slot.is_none_or(|p| p == "/") {
            *slot = Some(path);
        }
    }
    [unified, systemd, first]
        .into_iter()
        .flatten()
        .find(|p| *p != "/")
        .or(unified.or(systemd).or(first))
        .map(str::to_string)
}

/// At most this many tasks are looked at per scan (a bound, not an expectation).
const MAX_TASKS: usize = 1 << 20;

/// What one scan of `/proc/*/task/*/ns/net` knows of a network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NsTasks {
    /// (not a main thread, tid, pid) of the preferred task: a process's main thread, then the
    /// lowest id.
    best: (bool, u32, u32),
    /// Processes with at least one thread in it.
    processes: u32,
    /// The last pid counted (a process's threads are listed together).
    last_pid: u32,
}

/// One `stat` per task: every network namespace a task is in.
fn scan(proc_root: &Path) -> HashMap<u64, NsTasks> {
    use std::os::unix::fs::MetadataExt;
    let mut out: HashMap<u64, NsTasks> = HashMap::new();
    let mut seen = 0usize;
    let Ok(procs) = std::fs::read_dir(proc_root) else {
        return out;
    };
    'outer: for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            seen += 1;
            if seen > MAX_TASKS {
                break 'outer;
            }
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(m) = std::fs::metadata(t.path().join("ns/net")) else {
                continue;
            };
            let cand = (tid != pid, tid, pid);
            let e = out.entry(m.ino()).or_insert(NsTasks {
                best: cand,
                processes: 0,
                last_pid: 0,
            });
            if cand < e.best {
                e.best = cand;
            }
            if e.last_pid != pid {
                e.last_pid = pid;
                e.processes += 1;
            }
        }
    }
    out
}

fn task_cgroup(proc_root: &Path, pid: u32, tid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(format!("{pid}/task/{tid}/cgroup"))).ok()?;
    cgroup_path(&text)
}

/// One task per network namespace other than the host's, with its cgroup, from
/// `/proc/*/task/*/ns/net`, for namespaces whose task is in a cgroup other than the root.
/// Prefers a process's main thread, then the lowest id. Costs one `stat` per task: call it
/// every half minute or so, off the tracer's thread.
pub fn netns_owners(proc_root: &Path) -> HashMap<u64, NetnsOwner> {
    use std::os::unix::fs::MetadataExt;
    let ino_of = |p: &str| std::fs::metadata(proc_root.join(p)).map(|m| m.ino()).ok();
    // The host's namespace: pid 1's, and kthreadd's (always the initial namespace; pid 1 is
    // not in it when twtrace runs in a container with the host's pids).
    let mut host: Vec<u64> = ino_of("1/ns/net").into_iter().collect();
    if std::fs::read_to_string(proc_root.join("2/comm")).is_ok_and(|c| c.trim() == "kthreadd") {
        host.extend(ino_of("2/ns/net"));
    }
    scan(proc_root)
        .into_iter()
        .filter(|(ino, _)| !host.contains(ino))
        .filter_map(|(ino, ns)| {
            let (_, tid, pid) = ns.best;
            // The root cgroup is the host's own (kernel threads, init): not a container.
            let cgroup = task_cgroup(proc_root, pid, tid).filter(|c| c != "/")?;
            Some((ino, NetnsOwner { pid: tid, cgroup }))
        })
        .collect()
}

/// The processes of one network namespace: its workload as `/proc` tells it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// The preferred task's process (see [`netns_owners`]) and its `comm`.
    pub first: Option<(u32, String)>,
    /// Processes with a thread in the namespace (one thread is enough: twtrace's own private
    /// namespaces are held by a single thread).
    pub processes: u32,
    /// That task's cgroup path.
    pub cgroup: Option<String>,
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

/// Every network namespace's members, the host's included (one scan).
pub fn members(proc_root: &Path) -> HashMap<u64, Members> {
    scan(proc_root)
        .into_iter()
        .map(|(ino, ns)| {
            let (_, tid, pid) = ns.best;
            let comm = std::fs::read_to_string(proc_root.join(format!("{pid}/comm")))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            let m = Members {
                first: Some((pid, comm)),
                processes: ns.processes,
                cgroup: task_cgroup(proc_root, pid, tid),
            };
            (ino, m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_and_runtimes() {
        assert_eq!(
            cgroup_path("0::/system.slice/docker-abc.scope\n").as_deref(),
            Some("/system.slice/docker-abc.scope")
        );
        // cgroup v1: the systemd hierarchy's path.
        let v1 =
            "12:pids:/kubepods/burstable/pod1/abc\n1:name=systemd:/kubepods/burstable/pod1/abc\n";
        assert_eq!(
            cgroup_path(v1).as_deref(),
            Some("/kubepods/burstable/pod1/abc")
        );
        assert_eq!(cgroup_path("3:cpu:/x\n").as_deref(), Some("/x"));
        // Hybrid: the unified hierarchy unused ("/"), a v1 controller has the real place.
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/93808c\n1:cpu:/\n0::/\n";
        assert_eq!(cgroup_path(hybrid).as_deref(), Some("/process_api/93808c"));
        assert_eq!(
            cgroup_path("1:name=systemd:/\n0::/\n").as_deref(),
            Some("/")
        );
        assert_eq!(cgroup_path("garbage"), None);
        assert_eq!(cgroup_path(""), None);
        assert_eq!(
            runtime_of("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-0123.scope"),
            "containerd"
        );
        assert_eq!(runtime_of("/system.slice/docker-0123.scope"), "docker");
        assert_eq!(runtime_of("/machine.slice/libpod-0123.scope"), "podman");
        assert_eq!(runtime_of("/kubepods/besteffort/pod1/0123"), "kubernetes");
        assert_eq!(
            runtime_of("/user.slice/user-0.slice/session-1.scope"),
            "none"
        );
    }

    #[test]
    fn owners_from_a_proc_tree() {
        // A fake /proc: namespaces are files, the same namespace is a hard link (same inode).
        let root = std::env::temp_dir().join(format!("twtrace-procs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mk = |pid: u32, tid: u32, ns: &str, cgroup: &str| {
            let task = root.join(format!("{pid}/task/{tid}"));
            std::fs::create_dir_all(task.join("ns")).unwrap();
            let target = root.join(format!("ns-{ns}"));
            if !target.exists() {
                std::fs::write(&target, "").unwrap();
            }
            std::fs::hard_link(&target, task.join("ns/net")).unwrap();
            std::fs::write(task.join("cgroup"), cgroup).unwrap();
            if pid == tid {
                std::fs::create_dir_all(root.join(format!("{pid}/ns"))).unwrap();
                std::fs::hard_link(&target, root.join(format!("{pid}/ns/net"))).unwrap();
            }
        };
        mk(1, 1, "host", "0::/init.scope\n");
        // kthreadd is in the initial namespace even where pid 1 is not.
        mk(2, 2, "init", "0::/\n");
        std::fs::write(root.join("2/comm"), "kthreadd\n").unwrap();
        // A namespace whose only task is in the root cgroup: not a container's.
        mk(60, 60, "rootcg", "0::/\n");
        mk(50, 50, "host", "0::/system.slice/sshd.service\n");
        // A container: its main thread (pid 300) beats a thread of pid 200 with a lower id.
        mk(200, 200, "host", "0::/user.slice\n");
        mk(200, 201, "c1", "0::/user.slice/thread\n");
        mk(300, 300, "c1", "0::/system.slice/docker-c1.scope\n");
        mk(300, 301, "c1", "0::/system.slice/docker-c1.scope\n");
        // A namespace only a thread is in.
        mk(400, 400, "host", "0::/user.slice\n");
        mk(400, 405, "t", "0::/user.slice/test\n");
        std::fs::create_dir_all(root.join("self")).unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = |ns: &str| {
            std::fs::metadata(root.join(format!("ns-{ns}")))
                .unwrap()
                .ino()
        };
        let (host, c1, t) = (ino("host"), ino("c1"), ino("t"));
        let owners = netns_owners(&root);
        let members = members(&root);
        let _ = std::fs::remove_dir_all(&root);
        // Every namespace has members, the host's too; a process counts once however many of
        // its threads are in it.
        assert_eq!(members[&c1].processes, 2, "{members:?}");
        assert_eq!(members[&c1].first.as_ref().map(|f| f.0), Some(300));
        assert_eq!(
            members[&c1].cgroup.as_deref(),
            Some("/system.slice/docker-c1.scope")
        );
        assert_eq!(members[&host].processes, 4, "{members:?}");
        assert_eq!(members[&t].processes, 1);
        assert_eq!(owners.len(), 2, "{owners:?}");
        assert!(!owners.contains_key(&host));
        assert_eq!(
            owners[&c1],
            NetnsOwner {
                pid: 300,
                cgroup: "/system.slice/docker-c1.scope".into()
            }
        );
        assert_eq!(
            owners[&t],
            NetnsOwner {
                pid: 405,
                cgroup: "/user.slice/test".into()
            }
        );
    }
}
