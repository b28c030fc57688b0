//! Workload identity: what a cgroup id the kernel programs read (`sk_cgrp_data` of a socket,
//! or the current task's cgroup) means in an operator's terms — the cgroup path, a container
//! id, a Kubernetes pod UID, QoS class and pod name.
//!
//! Everything comes from the host's own files, no container runtime or Kubernetes API:
//! - the cgroup v2 hierarchy, wherever it is mounted (`/sys/fs/cgroup`, or
//!   `/sys/fs/cgroup/unified` on a hybrid host): a cgroup's id is its directory's inode
//!   number, so one walk maps ids to paths;
//! - the path's well-known names give the container id (`docker-<64 hex>.scope`,
//!   `cri-containerd-…`, `crio-…`, `libpod-…`, or a bare 64-hex directory) and the pod UID and
//!   QoS class (`kubepods-<qos>-pod<uid>.slice`, or `kubepods/<qos>/pod<uid>` with the
//!   cgroupfs driver);
//! - `/var/log/pods/<namespace>_<name>_<uid>` gives the pod's namespace and name, where it is
//!   readable (`pod_source` says so).
//!
//! Ids are cached for the whole session, so a cgroup removed after its sockets were seen still
//! resolves; an id the walk does not find is reported as unknown, never as another's.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the kubelet keeps one log directory per pod, named `<namespace>_<name>_<uid>`.
pub const PODS_LOG_DIR: &str = "/var/log/pods";

/// The longest walk of the cgroup tree: directories visited, and depth.
const WALK_MAX_DIRS: usize = 200_000;
const WALK_MAX_DEPTH: usize = 32;

/// Cgroups remembered at most; beyond it, removed ones are forgotten at the next walk.
const MAX_KNOWN: usize = 100_000;

/// A miss re-walks the tree at most this often (a burst of unknown ids costs one walk).
const RESCAN_AFTER_MISS: Duration = Duration::from_millis(200);

/// One cgroup, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// The kernel's cgroup id (the v2 directory's inode number).
    pub cgroup_id: u64,
    /// The path under the cgroup v2 mount; `None`: the id was not found (unknown).
    pub path: Option<String>,
    /// A container's id, from the path.
    pub container_id: Option<String>,
    /// The runtime the path's names belong to (`docker`, `containerd`, `cri-o`, `podman`…).
    pub runtime: Option<&'static str>,
    /// A Kubernetes pod's UID (with dashes), from the path.
    pub pod_uid: Option<String>,
    /// The pod's QoS class: `Guaranteed`, `Burstable` or `BestEffort`, from the path.
    pub qos: Option<&'static str>,
    /// `namespace/name` of the pod, from [`PODS_LOG_DIR`].
    pub pod: Option<String>,
}

impl Workload {
    /// A workload known only by its id (the walk did not find it).
    pub fn unknown(cgroup_id: u64) -> Workload {
        Workload {
            cgroup_id,
            ..Workload::default()
        }
    }

    /// What [`Workload::pod`] came from, when it is set.
    pub fn pod_source(&self) -> Option<&'static str> {
        self.pod.as_ref().map(|_| PODS_LOG_DIR)
    }

    /// The path's identity, from its names alone (`pod` is left to the pods directory).
    pub fn from_path(cgroup_id: u64, path: &str) -> Workload {
        let (pod_uid, qos) = pod_of(path).unzip();
        let container_id = container_of(path);
        Workload {
            cgroup_id,
            runtime: (container_id.is_some() || pod_uid.is_some())
                .then(|| crate::host::procs::runtime_of(path)),
            path: Some(path.to_string()),
            container_id,
            pod_uid,
            qos: qos.flatten(),
            pod: None,
        }
    }

    /// The short form for a column: pod name, else the container id's first 12 characters,
    /// else the cgroup's last component; `?<id>` when the id is unknown, `-` for the root.
    pub fn short(&self) -> String {
        self.to_string()
    }

    /// Whether a `--cgroup PATH` filter keeps this workload: the path itself or below it.
    pub fn under(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_end_matches('/');
        match self.path.as_deref() {
            Some(p) => {
                prefix.is_empty()
                    || p == prefix
                    || p.strip_prefix(prefix).is_some_and(|r| r.starts_with('/'))
            }
            None => false,
        }
    }

    /// Whether a `--container ID` filter keeps this workload: a prefix of its container id (as
    /// `docker ps` shows 12 characters), or the pod's UID or name.
    pub fn is_container(&self, id: &str) -> bool {
        let id = id.trim();
        if id.is_empty() {
            return false;
        }
        self.container_id
            .as_deref()
            .is_some_and(|c| c.starts_with(id))
            || self.pod_uid.as_deref() == Some(id)
            || self
                .pod
                .as_deref()
                .is_some_and(|p| p == id || p.rsplit('/').next() == Some(id))
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id in a cgroup path: the innermost component that names one.
pub fn container_of(path: &str) -> Option<String> {
    const PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];
    path.rsplit('/').find_map(|c| {
        if is_hex64(c) {
            return Some(c.to_string());
        }
        let stem = c.strip_suffix(".scope").unwrap_or(c);
        PREFIXES
            .iter()
            .find_map(|p| stem.strip_prefix(p))
            .filter(|id| is_hex64(id))
            .map(str::to_string)
    })
}

/// The pod UID and QoS class in a kubepods cgroup path, with either cgroup driver:
/// systemd `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice`
/// (dashes of the UID written as underscores) or cgroupfs `kubepods/burstable/pod<uid>`.
/// A pod directly under `kubepods` is Guaranteed.
pub fn pod_of(path: &str) -> Option<(String, Option<&'static str>)> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let kube = comps.iter().position(|c| c.starts_with("kubepods"))?;
    let qos_of = |c: &str| {
        if c.contains("besteffort") {
            Some("BestEffort")
        } else if c.contains("burstable") {
            Some("Burstable")
        } else {
            None
        }
    };
    for c in &comps[kube..] {
        let stem = c.strip_suffix(".slice").unwrap_or(c);
        let Some(at) = stem.rfind("pod") else {
            continue;
        };
        let uid = stem[at + 3..].replace('_', "-");
        let uid_like = uid.len() >= 8 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !uid_like {
            continue;
        }
        let qos = comps[kube..]
            .iter()
            .take_while(|x| *x != c)
            .find_map(|x| qos_of(x))
            .or_else(|| qos_of(stem))
            .unwrap_or("Guaranteed");
        return Some((uid, Some(qos)));
    }
    None
}

/// The cgroup v2 mount point, from a `/proc/self/mountinfo` text (the first `cgroup2` entry).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Pod UID → `namespace/name`, from the names of the pods' log directories.
pub fn pods_from_log_dir(dir: &Path) -> HashMap<String, String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // <namespace>_<name>_<uid>: namespaces and names have no underscores.
            let mut it = name.splitn(3, '_');
            let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
            Some((uid.to_string(), format!("{ns}/{pod}")))
        })
        .collect()
}

/// Cgroup ids → workloads, cached for the session.
pub struct Workloads {
    root: Option<PathBuf>,
    pods_dir: PathBuf,
    known: HashMap<u64, Arc<Workload>>,
    pods: HashMap<String, String>,
    last_walk: Option<Instant>,
    /// Walks of the tree so far (start-up, refreshes, misses).
    pub walks: u64,
}

impl Workloads {
    /// The host's cgroup v2 hierarchy (none mounted: every id is unknown) and pods directory.
    pub fn host() -> Workloads {
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_mount(&m));
        Workloads::at(root, Path::new(PODS_LOG_DIR))
    }

    pub fn at(root: Option<PathBuf>, pods_dir: &Path) -> Workloads {
        let mut w = Workloads {
            root,
            pods_dir: pods_dir.to_path_buf(),
            known: HashMap::new(),
            pods: HashMap::new(),
            last_walk: None,
            walks: 0,
        };
        w.refresh();
        w
    }

    /// Where the cgroup v2 hierarchy is mounted, if anywhere.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// Walks the tree again: new cgroups are learnt, removed ones kept.
    pub fn refresh(&mut self) {
        self.last_walk = Some(Instant::now());
        self.walks += 1;
        self.pods = pods_from_log_dir(&self.pods_dir);
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut stack = vec![(root.clone(), 0usize)];
        let mut visited = 0;
        let mut seen = std::collections::HashSet::new();
        while let Some((dir, depth)) = stack.pop() {
            visited += 1;
            if visited > WALK_MAX_DIRS {
                log::warn!("cgroup walk stopped after {WALK_MAX_DIRS} directories");
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue; // removed while we walked
            };
            let id = meta.ino();
            seen.insert(id);
            if self.known.get(&id).is_none_or(|w| w.path.is_none()) {
                let rel = dir.strip_prefix(&root).unwrap_or(&dir);
                let path = format!("/{}", rel.to_string_lossy());
                let mut w = Workload::from_path(id, &path);
                w.pod = w.pod_uid.as_ref().and_then(|u| self.pods.get(u).cloned());
                self.known.insert(id, Arc::new(w));
            }
            if depth >= WALK_MAX_DEPTH {
                continue;
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((e.path(), depth + 1));
                    }
                }
            }
        }
        if self.known.len() > MAX_KNOWN {
            // Bounded: past the cap, cgroups gone from the tree are forgotten.
            self.known.retain(|id, _| seen.contains(id));
        }
    }

    /// The workload of a cgroup id (0: none). A miss walks the tree again (at most every
    /// [`RESCAN_AFTER_MISS`]); an id still missing is unknown, and asked again later.
    pub fn resolve(&mut self, id: u64) -> Option<Arc<Workload>> {
        if id == 0 {
            return None;
        }
        if let Some(w) = self.known.get(&id) {
            return Some(w.clone());
        }
        let stale = self
            .last_walk
            .is_none_or(|t| t.elapsed() >= RESCAN_AFTER_MISS);
        if stale && self.root.is_some() {
            self.refresh();
            if let Some(w) = self.known.get(&id) {
                return Some(w.clone());
            }
        }
        Some(Arc::new(Workload::unknown(id)))
    }

    /// The id of the cgroup at `path` (under the mount), as the kernel names it.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let root = self.root.as_ref()?;
        let meta = std::fs::metadata(root.join(path.trim_start_matches('/'))).ok()?;
        Some(meta.ino())
    }
}

/// The short form of [`Workload::short`], written without allocating (the WORKLOAD column of
/// every line).
impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = &self.pod {
            return f.write_str(p.rsplit('/').next().unwrap_or(p));
        }
        if let Some(c) = &self.container_id {
            // Hex digits: 12 bytes are 12 characters.
            return f.write_str(c.get(..12).unwrap_or(c));
        }
        match self.path.as_deref() {
            None => write!(f, "?{}", self.cgroup_id),
            Some("/") | Some("") => f.write_str("-"),
            Some(p) => f.write_str(p.rsplit('/').next().unwrap_or(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_ids_from_every_runtime_naming() {
        for p in [
            format!("/system.slice/docker-{C}.scope"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{C}.scope"),
            format!("/kubepods.slice/x/crio-{C}.scope"),
            format!("/machine.slice/libpod-{C}.scope/container"),
            format!("/kubepods/burstable/pod0a1b2c3d-0000-1111-2222-333344445555/{C}"),
            format!("/docker/{C}"),
        ] {
            assert_eq!(container_of(&p).as_deref(), Some(C), "{p}");
        }
        assert_eq!(container_of("/system.slice/docker-abc.scope"), None);
        assert_eq!(container_of("/user.slice/user-0.slice"), None);
        assert_eq!(container_of(&format!("/x/docker-{C}x.scope")), None);
        assert_eq!(container_of(""), None);
    }

    #[test]
    fn pods_and_qos_with_both_drivers() {
        let uid = "0a1b2c3d-0000-1111-2222-333344445555";
        let u_ = uid.replace('-', "_");
        let cases = [
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u_}.slice/cri-containerd-{C}.scope"),
                "Burstable",
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u_}.slice"),
                "BestEffort",
            ),
            (format!("/kubepods.slice/kubepods-pod{u_}.slice"), "Guaranteed"),
            (format!("/kubepods/burstable/pod{uid}/{C}"), "Burstable"),
            (format!("/kubepods/pod{uid}"), "Guaranteed"),
        ];
        for (p, q) in cases {
            assert_eq!(pod_of(&p), Some((uid.to_string(), Some(q))), "{p}");
        }
        assert_eq!(pod_of("/kubepods.slice/kubepods-burstable.slice"), None);
        assert_eq!(pod_of("/system.slice/pod.service"), None);
        assert_eq!(pod_of("/"), None);
    }

    #[test]
    fn short_forms_and_filters() {
        let uid = "0a1b2c3d-0000-1111-2222-333344445555";
        let path = format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{C}.scope",
            uid.replace('-', "_")
        );
        let mut w = Workload::from_path(7, &path);
        assert_eq!(w.short(), &C[..12]);
        assert_eq!(w.runtime, Some("containerd"));
        assert_eq!(w.qos, Some("Guaranteed"));
        w.pod = Some("default/web-0".into());
        assert_eq!(w.short(), "web-0");
        assert!(w.is_container(&C[..12]) && w.is_container(uid) && w.is_container("web-0"));
        assert!(!w.is_container("0123x") && !w.is_container(""));
        assert!(w.under("/kubepods.slice") && w.under("/kubepods.slice/") && w.under("/"));
        assert!(!w.under("/kubepods.sl"));
        let plain = Workload::from_path(8, "/system.slice/nginx.service");
        assert_eq!(plain.short(), "nginx.service");
        assert_eq!(plain.runtime, None);
        assert_eq!(Workload::from_path(1, "/").short(), "-");
        let unknown = Workload::unknown(99);
        assert_eq!(unknown.short(), "?99");
        assert!(!unknown.under("/") && !unknown.is_container("99"));
    }

    #[test]
    fn mount_point_from_mountinfo() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("garbage\n\n - \n"), None);
    }

    #[test]
    fn walks_a_tree_and_keeps_removed_cgroups() {
        let tmp = std::env::temp_dir().join(format!("twtrace-wl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let pods = tmp.join("pods");
        let root = tmp.join("cg");
        let uid = "0a1b2c3d-0000-1111-2222-333344445555";
        let pod_dir = format!("kubepods/burstable/pod{uid}");
        let leaf = root.join(&pod_dir).join(C);
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::create_dir_all(pods.join(format!("shop_cart-7d9_{uid}"))).unwrap();
        let mut w = Workloads::at(Some(root.clone()), &pods);
        let id = std::fs::metadata(&leaf).unwrap().ino();
        let got = w.resolve(id).unwrap();
        assert_eq!(
            got.path.as_deref(),
            Some(format!("/{pod_dir}/{C}").as_str())
        );
        assert_eq!(got.pod.as_deref(), Some("shop/cart-7d9"));
        assert_eq!(got.pod_source(), Some(PODS_LOG_DIR));
        assert_eq!(w.id_of(&format!("/{pod_dir}/{C}")), Some(id));
        // Removed: still resolves from the cache after another walk.
        std::fs::remove_dir_all(&leaf).unwrap();
        w.refresh();
        assert_eq!(w.resolve(id).unwrap().container_id.as_deref(), Some(C));
        // Never seen: unknown, not another's.
        let unknown = w.resolve(u64::MAX).unwrap();
        assert_eq!(unknown.path, None);
        assert_eq!(w.resolve(0), None);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
