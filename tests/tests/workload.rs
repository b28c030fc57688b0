//! Workload identity on the real kernel (issue 15): processes in cgroup v2 directories with
//! container-like names, inside the test's network namespace, make real connections; every
//! event of theirs must carry their cgroup, container id and pod, also when the timewait socket
//! is born in softirq while another task runs, and after the cgroup is gone.

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use twtrace::experiments::workload::{serve, FirstCloser};
use twtrace::host::netns::NetNs;
use twtrace::host::workload::{Workload, Workloads};
use twtrace::pipeline::event::{Body, Event, ExitReason, Sock};
use twtrace::pipeline::filter::Filter;
use twtrace_tests::{enters, exits, kernel, trace, SOON};

const CONTAINER_A: &str = "a1a1a1a1a1a1b2b2b2b2b2b2c3c3c3c3c3c3d4d4d4d4d4d4e5e5e5e5e5e5f6f6";
const CONTAINER_B: &str = "0b0b0b0b0b0b1c1c1c1c1c1c2d2d2d2d2d2d3e3e3e3e3e3e4f4f4f4f4f4f5a5a";
const POD_UID: &str = "8d4c1f2a-1111-4222-8333-944455556666";

/// The cgroup v2 hierarchy for the test: the host's mount, or one the test mounts (a guest
/// kernel's init mounts none), unmounted when dropped.
struct Hierarchy {
    root: PathBuf,
    mounted: bool,
}

impl Hierarchy {
    fn get() -> Hierarchy {
        if let Some(root) = Workloads::host().root() {
            return Hierarchy {
                root: root.to_path_buf(),
                mounted: false,
            };
        }
        let root = std::env::temp_dir().join(format!("twtrace-cgroup2-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(&root)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "no cgroup v2 hierarchy, and mounting one failed");
        Hierarchy {
            root,
            mounted: true,
        }
    }
}

impl Drop for Hierarchy {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.root).status();
            let _ = std::fs::remove_dir(&self.root);
        }
    }
}

/// The test's cgroups under one directory of its own, removed (deepest first) when dropped,
/// also on failure.
struct Cgroups {
    top: PathBuf,
    made: Vec<PathBuf>,
}

impl Cgroups {
    fn new(h: &Hierarchy) -> Cgroups {
        let top = h
            .root
            .join(format!("twtrace-test-workload-{}", std::process::id()));
        std::fs::create_dir(&top).expect("creating a cgroup (cgroup v2, root)");
        Cgroups {
            made: vec![top.clone()],
            top,
        }
    }

    /// Creates `rel` (and its parents) under the test's directory; returns its full path.
    fn make(&mut self, rel: &str) -> PathBuf {
        let mut p = self.top.clone();
        for c in rel.split('/') {
            p.push(c);
            if !p.exists() {
                std::fs::create_dir(&p).unwrap();
                self.made.push(p.clone());
            }
        }
        p
    }

    fn remove_all(&mut self) {
        while let Some(p) = self.made.pop() {
            let _ = std::fs::remove_dir(&p);
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Forks a process that joins `cgroup`, enters `ns` and makes `n` connections to `to`,
/// closing each first (so each leaves a TIME_WAIT socket of its own). Only async-signal-safe
/// calls after the fork, everything prepared before it. Returns the child's pid once it has
/// exited successfully.
fn client_in(cgroup: &Path, ns: &NetNs, to: SocketAddr, n: u32) -> u32 {
    let procs = CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let SocketAddr::V4(v4) = to else {
        panic!("IPv4 only")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let ns_fd = ns.file().as_raw_fd();
    // SAFETY: the child only makes system calls on memory prepared above, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            // "0" moves the writing process.
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(10);
            }
            libc::close(fd);
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                libc::_exit(11);
            }
            for _ in 0..n {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                if s < 0 {
                    libc::_exit(12);
                }
                let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                if libc::connect(s, (&sin as *const libc::sockaddr_in).cast(), len) != 0 {
                    libc::_exit(13);
                }
                libc::close(s);
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "client in {} failed: status {status:#x}",
        cgroup.display()
    );
    pid as u32
}

fn path_under(h: &Hierarchy, full: &Path) -> String {
    format!("/{}", full.strip_prefix(&h.root).unwrap().display())
}

fn workload_of(e: &Event) -> Option<&Workload> {
    e.workload.as_deref()
}

fn closer_pid(e: &Event) -> Option<u32> {
    match &e.body {
        Body::Enter { task, .. } => task.as_ref().map(|t| t.pid),
        _ => None,
    }
}

/// Two workloads — a Kubernetes pod's container (systemd driver names) and a docker
/// container — each make connections from a process of their own in the test's namespace.
/// The server (this process, root cgroup) closes last, so each client's timewait socket is
/// born in softirq while the *server* runs: the owner must still be the client's cgroup.
/// Then both cgroups are removed and the namespace deleted: the purged exits still carry the
/// workloads, from the cache. No event is attributed to a workload it does not belong to.
#[test]
fn events_carry_the_owners_workload() {
    const N_A: usize = 5;
    const N_B: usize = 3;
    let h = Hierarchy::get();
    let mut cg = Cgroups::new(&h);
    let uid_ = POD_UID.replace('-', "_");
    let a = cg.make(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{CONTAINER_A}.scope"
    ));
    let b = cg.make(&format!("system.slice/docker-{CONTAINER_B}.scope"));
    let (path_a, path_b) = (path_under(&h, &a), path_under(&h, &b));

    let ns = NetNs::new().unwrap();
    // Every timewait socket here must live until the purge. With loopback reuse on (the
    // default, 2) a later connect() may take over an earlier one as soon as the second of its
    // last timestamp has passed, on kernels before 6.13 after a few milliseconds (seen in
    // the 6.12 guest: reused at 4 ms).
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    let tracer = trace(&ns);
    let server = serve(
        &ns,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        FirstCloser::Client,
        Duration::ZERO,
    )
    .unwrap();
    let pid_a = client_in(&a, &ns, server.addr, N_A as u32);
    let pid_b = client_in(&b, &ns, server.addr, N_B as u32);
    let ev = tracer.wait_for(SOON, |ev| enters(ev).len() >= N_A + N_B);
    let born: Vec<&Event> = ev
        .iter()
        .filter(|e| matches!(e.body, Body::Enter { .. }))
        .collect();
    assert_eq!(born.len(), N_A + N_B, "{ev:#?}");
    // A close whose state change the kernel skipped (a task preempted inside the program on
    // that CPU: 7.x, see docs/kernel-matrix.md) leaves its birth without closer or workload;
    // the kernel's count of skipped runs must account for each (checked at the end).
    let unnamed: Vec<&Sock> = born
        .iter()
        .filter(|e| closer_pid(e).is_none())
        .filter_map(|e| match &e.body {
            Body::Enter { sock, .. } => Some(sock),
            _ => None,
        })
        .collect();
    for e in born.iter().filter(|e| closer_pid(e).is_some()) {
        let w = workload_of(e).unwrap_or_else(|| panic!("no workload: {e:#?}"));
        let pid = closer_pid(e).unwrap_or_else(|| panic!("no closer: {e:#?}"));
        let (want_path, want_container) = if pid == pid_a {
            (&path_a, CONTAINER_A)
        } else if pid == pid_b {
            (&path_b, CONTAINER_B)
        } else {
            panic!("a birth closed by pid {pid}, neither client ({pid_a}, {pid_b}): {e:#?}");
        };
        assert_eq!(w.path.as_ref(), Some(want_path), "{e:#?}");
        assert_eq!(w.container_id.as_deref(), Some(want_container), "{e:#?}");
        assert_eq!(e.cgroup, w.cgroup_id);
        if pid == pid_a {
            assert_eq!(w.pod_uid.as_deref(), Some(POD_UID));
            assert_eq!(w.qos, Some("Burstable"));
            assert_eq!(w.runtime, Some("containerd"));
            assert_eq!(w.short(), &CONTAINER_A[..12]);
        } else {
            assert_eq!((w.pod_uid.as_deref(), w.qos), (None, None));
            assert_eq!(w.runtime, Some("docker"));
        }
    }
    let ids: std::collections::BTreeSet<u64> = born.iter().map(|e| e.cgroup).collect();
    assert_eq!(ids.len(), 2, "two workloads, two cgroup ids");
    // The filters of `--container` and `--cgroup` select exactly one client's events.
    let only_a = Filter {
        containers: vec![CONTAINER_A[..12].to_string()],
        ..Filter::default()
    };
    let only_b = Filter {
        cgroups: vec![path_under(&h, &cg.top) + "/system.slice"],
        ..Filter::default()
    };
    let a_named = born.iter().filter(|e| only_a.matches(e)).count();
    let b_named = born.iter().filter(|e| only_b.matches(e)).count();
    assert_eq!(a_named + b_named + unnamed.len(), N_A + N_B);
    assert!(a_named <= N_A && b_named <= N_B);

    // Gone: the cgroups, then the namespace. The purged exits name the workloads still.
    cg.remove_all();
    assert!(!a.exists() && !b.exists());
    drop(server);
    drop(ns);
    let ev = tracer.wait_for(Duration::from_secs(30), |ev| exits(ev).len() >= N_A + N_B);
    let died: Vec<&Event> = ev
        .iter()
        .filter(|e| matches!(e.body, Body::Exit { .. }))
        .collect();
    // A socket reset at its birth (seen under emulation) dies early with reason rst; every
    // other death here is the namespace's purge.
    assert_eq!(died.len(), N_A + N_B, "{ev:#?}");
    for e in &died {
        let Body::Exit { reason, sock, .. } = &e.body else {
            unreachable!()
        };
        assert!(
            matches!(reason, ExitReason::Purged | ExitReason::Rst),
            "{e:#?}"
        );
        if unnamed.contains(&sock) {
            continue;
        }
        let w = workload_of(e).unwrap_or_else(|| panic!("an exit without workload: {e:#?}"));
        assert!(
            w.path.as_ref() == Some(&path_a) || w.path.as_ref() == Some(&path_b),
            "{e:#?}"
        );
    }
    let (ev, summary) = tracer.stop().unwrap();
    // Nothing else in the namespace claims a workload that is not one of the two.
    for e in ev.iter().filter(|e| e.workload.is_some()) {
        assert!(ids.contains(&e.cgroup), "{e:#?}");
    }
    let skipped = summary.skipped_in("inet_sock_set_state");
    assert!(
        unnamed.len() as u64 <= skipped,
        "births without closer {unnamed:?}, {skipped} runs skipped"
    );
    if !unnamed.is_empty() {
        kernel::partial(
            "events_carry_the_owners_workload",
            &format!("{} closes skipped by the kernel", unnamed.len()),
        );
    }
}
