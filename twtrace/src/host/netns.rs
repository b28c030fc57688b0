//! Network namespaces: finding the host's, and making private ones for tests, `verify` and
//! benchmarks.
//!
//! A private namespace is created by a *keeper* thread that `unshare`s into it and then parks.
//! It is never bind-mounted: when the [`NetNs`] is dropped, or the process dies however it dies
//! (panic, Ctrl-C, SIGKILL), the last references go and the kernel tears the namespace down.
//! Nothing can be left behind. The keeper also makes the namespace visible to other tools
//! (`lsns`, and twtrace's own snapshot, which walks `/proc/*/task/*/ns/net`).

pub use crate::host::procnet::parse_netstat;
use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, unshare, CloneFlags};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Every network namespace reachable through `/proc/*/task/*/ns/net` and `/run/netns/*`,
/// keyed by inode, with one path to enter it.
pub fn all_namespaces() -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    let mut add = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p) {
            out.entry(m.ino()).or_insert(p);
        }
    };
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            add(e.path());
        }
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let name = p.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
                continue;
            };
            for t in tasks.flatten() {
                add(t.path().join("ns/net"));
            }
        }
    }
    out
}

/// Inode of the calling thread's network namespace.
pub fn current_inode() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("stat /proc/thread-self/ns/net")?
        .ino())
}

/// Runs `f` on a new thread that has entered the namespace at `ns_path`.
pub fn run_in<T: Send + 'static>(ns: &File, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let ns = ns.try_clone().context("dup netns fd")?;
    std::thread::spawn(move || -> Result<T> {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("setns into network namespace")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("thread in network namespace panicked"))?
}

/// A private network namespace with `lo` up, removed when dropped.
pub struct NetNs {
    file: File,
    inode: u64,
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl NetNs {
    pub fn new() -> Result<NetNs> {
        let (tx_ready, rx_ready) = mpsc::channel::<Result<(File, u64)>>();
        let (tx_stop, rx_stop) = mpsc::channel::<()>();
        let keeper = std::thread::Builder::new()
            .name("netns-keeper".into())
            .spawn(move || {
                let setup = || -> Result<(File, u64)> {
                    unshare(CloneFlags::CLONE_NEWNET)
                        .context("unshare(CLONE_NEWNET): are you root?")?;
                    let f = File::open("/proc/thread-self/ns/net")?;
                    let ino = f.metadata()?.ino();
                    // Children inherit this thread's namespace.
                    run_cmd(Command::new("ip").args(["link", "set", "lo", "up"]))?;
                    Ok((f, ino))
                };
                let ok = setup();
                let failed = ok.is_err();
                let _ = tx_ready.send(ok);
                if !failed {
                    // Park until the NetNs is dropped (or the sender vanishes).
                    let _ = rx_stop.recv();
                }
            })
            .context("spawning netns keeper thread")?;
        let (file, inode) = rx_ready
            .recv()
            .map_err(|_| anyhow!("netns keeper thread died"))??;
        Ok(NetNs {
            file,
            inode,
            stop: Some(tx_stop),
            keeper: Some(keeper),
        })
    }

    /// The namespace's inode: what twtrace reports as `netns`.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a thread inside the namespace; sockets it creates belong there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        run_in(&self.file, f)
    }

    /// Writes a sysctl of *this* namespace (`/proc/sys/net/...` is per namespace), e.g.
    /// `sysctl("net.ipv4.tcp_tw_reuse", "1")`. Never touches the host's.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        if !key.starts_with("net.") {
            bail!("refusing to set non-namespaced sysctl {key}");
        }
        let path = sysctl_path(key);
        let value = value.to_string();
        self.run(move || {
            std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
        })?
    }

    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        self.run(move || {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .with_context(|| format!("reading {}", path.display()))
        })?
    }

    /// A path that names this namespace to other programs (`ip … netns PATH`), valid while
    /// this `NetNs` lives.
    pub fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }

    /// Joins this namespace and `peer` with a veth pair: `here` (address `here_addr`, e.g.
    /// `198.18.0.1/30`) in this one, `there` (`there_addr`) in `peer`; both up. Nothing
    /// touches the host's own interfaces.
    pub fn veth_to(
        &self,
        here: &str,
        here_addr: &str,
        peer: &NetNs,
        there: &str,
        there_addr: &str,
    ) -> Result<()> {
        let peer_path = peer.path().to_string_lossy().into_owned();
        self.ip(&[
            "link", "add", here, "type", "veth", "peer", "name", there, "netns", &peer_path,
        ])?;
        self.ip(&["addr", "add", here_addr, "dev", here])?;
        self.ip(&["link", "set", here, "up"])?;
        peer.ip(&["addr", "add", there_addr, "dev", there])?;
        peer.ip(&["link", "set", there, "up"])?;
        Ok(())
    }

    /// A `/proc/net/netstat`-style counter of this namespace (e.g. `TcpExt` `TCPTimeWaitOverflow`).
    pub fn netstat(&self, group: &str, name: &str) -> Result<u64> {
        let text = self.run(|| std::fs::read_to_string("/proc/thread-self/net/netstat"))??;
        parse_netstat(&text, group, name)
            .ok_or_else(|| anyhow!("no counter {group}:{name} in /proc/net/netstat"))
    }

    /// Runs an `ip` command inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.run(move || run_cmd(Command::new("ip").args(&args)))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
