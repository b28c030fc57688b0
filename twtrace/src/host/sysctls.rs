//! The TIME_WAIT-relevant sysctls of a network namespace. `/proc/sys/net` shows the namespace
//! of the thread that opens it, so reading another namespace's values means entering it on a
//! short-lived thread.

use crate::host::procnet::{parse_netstat, parse_port_range};
use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};
use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sysctls {
    /// `net.ipv4.tcp_tw_reuse`: 0 never, 1 always, 2 loopback only.
    pub tw_reuse: Option<u8>,
    /// `net.ipv4.tcp_tw_reuse_delay` in ms (absent before Linux 6.13: then 1 s, second
    /// granularity, counted from the last received timestamp).
    pub tw_reuse_delay_ms: Option<u32>,
    pub max_tw_buckets: Option<u64>,
    pub timestamps: Option<u8>,
    pub fin_timeout_s: Option<u32>,
    pub rfc1337: Option<u8>,
    /// `net.ipv4.ip_local_port_range`, inclusive.
    pub port_range: Option<(u16, u16)>,
}

impl Sysctls {
    /// The calling thread's namespace.
    pub fn read_current() -> Sysctls {
        Self::read_from(Path::new("/proc/sys/net/ipv4"))
    }

    /// From a directory laid out like `/proc/sys/net/ipv4` (tests use a temporary one).
    pub fn read_from(base: &Path) -> Sysctls {
        Sysctls::from_values(|name| std::fs::read_to_string(base.join(name)).ok())
    }

    /// From each sysctl's text as `/proc/sys/net/ipv4/NAME` shows it (`get` answers by
    /// NAME); values that are missing or do not parse stay unknown. The inverse of
    /// [`Sysctls::values`].
    pub fn from_values(get: impl Fn(&str) -> Option<String>) -> Sysctls {
        let num = |name: &str| get(name)?.trim().parse().ok();
        Sysctls {
            tw_reuse: num("tcp_tw_reuse").and_then(|v: u64| v.try_into().ok()),
            tw_reuse_delay_ms: num("tcp_tw_reuse_delay").and_then(|v| v.try_into().ok()),
            max_tw_buckets: num("tcp_max_tw_buckets"),
            timestamps: num("tcp_timestamps").and_then(|v| v.try_into().ok()),
            fin_timeout_s: num("tcp_fin_timeout").and_then(|v| v.try_into().ok()),
            rfc1337: num("tcp_rfc1337").and_then(|v| v.try_into().ok()),
            port_range: get("ip_local_port_range").and_then(|v| parse_port_range(&v)),
        }
    }

    /// The known values by sysctl name (under `net.ipv4.`), as `/proc/sys` shows them.
    pub fn values(&self) -> Vec<(&'static str, String)> {
        let n = |v: Option<u64>| v.map(|v| v.to_string());
        [
            ("tcp_tw_reuse", n(self.tw_reuse.map(u64::from))),
            (
                "tcp_tw_reuse_delay",
                n(self.tw_reuse_delay_ms.map(u64::from)),
            ),
            ("tcp_max_tw_buckets", n(self.max_tw_buckets)),
            ("tcp_timestamps", n(self.timestamps.map(u64::from))),
            ("tcp_fin_timeout", n(self.fin_timeout_s.map(u64::from))),
            ("tcp_rfc1337", n(self.rfc1337.map(u64::from))),
            (
                "ip_local_port_range",
                self.port_range.map(|(a, b)| format!("{a}\t{b}")),
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }

    /// The namespace at `ns_path` (e.g. `/proc/PID/task/TID/ns/net`).
    pub fn read_in(ns_path: &Path) -> Result<Sysctls> {
        Ok(read_ns(ns_path)?.0)
    }

    /// Ephemeral ports connect() can choose from.
    pub fn ports(&self) -> Option<u32> {
        self.port_range
            .map(|(lo, hi)| (hi as u32 + 1).saturating_sub(lo as u32))
    }

    /// `key=value` pairs for the human line, in a fixed order.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let mut kv = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = write!(s, "{}{k}={v}", if s.is_empty() { "" } else { " " });
            }
        };
        kv("tw_reuse", self.tw_reuse.map(|v| v.to_string()));
        kv(
            "reuse_delay",
            self.tw_reuse_delay_ms.map(|v| format!("{v}ms")),
        );
        kv("max_tw_buckets", self.max_tw_buckets.map(|v| v.to_string()));
        kv("timestamps", self.timestamps.map(|v| v.to_string()));
        kv("fin_timeout", self.fin_timeout_s.map(|v| format!("{v}s")));
        kv("rfc1337", self.rfc1337.map(|v| v.to_string()));
        kv(
            "port_range",
            self.port_range.map(|(a, b)| format!("{a}-{b}")),
        );
        s
    }

    /// NDJSON keys, named after the sysctls (absent ones are left out).
    pub fn write_json(&self, out: &mut String) {
        let mut kv = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = write!(out, ",\"{k}\":{v}");
            }
        };
        kv("tcp_tw_reuse", self.tw_reuse.map(|v| v.to_string()));
        kv(
            "tcp_tw_reuse_delay",
            self.tw_reuse_delay_ms.map(|v| v.to_string()),
        );
        kv(
            "tcp_max_tw_buckets",
            self.max_tw_buckets.map(|v| v.to_string()),
        );
        kv("tcp_timestamps", self.timestamps.map(|v| v.to_string()));
        kv("tcp_fin_timeout", self.fin_timeout_s.map(|v| v.to_string()));
        kv("tcp_rfc1337", self.rfc1337.map(|v| v.to_string()));
        kv(
            "ip_local_port_range",
            self.port_range.map(|(a, b)| format!("[{a},{b}]")),
        );
    }
}

/// The sysctls and the `TcpExt: TCPTimeWaitOverflow` counter of the namespace at `ns_path`.
fn read_ns(ns_path: &Path) -> Result<(Sysctls, Option<u64>)> {
    let f = File::open(ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
    std::thread::spawn(move || -> Result<(Sysctls, Option<u64>)> {
        setns(f.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
        let overflow = std::fs::read_to_string("/proc/thread-self/net/netstat")
            .ok()
            .and_then(|t| parse_netstat(&t, "TcpExt", "TCPTimeWaitOverflow"));
        Ok((Sysctls::read_current(), overflow))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sysctl reader thread panicked"))?
}

/// Knows the sysctls of every namespace that has shown up, reading a new one once and known
/// ones again every `REFRESH` (to notice changes).
pub struct SysctlWatch {
    known: std::collections::HashMap<u32, Option<Sysctls>>,
    /// Per namespace: the kernel's TCPTimeWaitOverflow counter when first seen, and lately.
    overflow: std::collections::HashMap<u32, (u64, u64)>,
    /// TCPTimeWaitOverflow of every namespace that existed when tracing started.
    start_overflow: std::collections::HashMap<u32, u64>,
    paths: std::collections::BTreeMap<u64, std::path::PathBuf>,
    last_scan: Option<std::time::Instant>,
    last_refresh: std::time::Instant,
}

impl Default for SysctlWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SysctlWatch {
    /// Re-read period for namespaces already known: a change of a sysctl the kernel programs
    /// do not carry in their records shows within this (those they carry show with the first
    /// record). Each re-read is a short thread entering the namespace (~0.1 ms each).
    pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(1);
    /// Namespaces are listed again (a /proc walk) at most this often when one is not found.
    const RESCAN: std::time::Duration = std::time::Duration::from_millis(100);

    pub fn new() -> Self {
        SysctlWatch {
            known: Default::default(),
            overflow: Default::default(),
            start_overflow: Default::default(),
            paths: Default::default(),
            last_scan: None,
            last_refresh: std::time::Instant::now(),
        }
    }

    /// Records every existing namespace's overflow counter: the baseline of the cross-check.
    pub fn baseline(&mut self) {
        self.paths = crate::host::netns::all_namespaces();
        self.last_scan = Some(std::time::Instant::now());
        for (ino, p) in &self.paths {
            if let Ok((_, Some(c))) = read_ns(p) {
                self.start_overflow.insert(*ino as u32, c);
            }
        }
    }

    fn path_of(&mut self, netns: u32) -> Option<std::path::PathBuf> {
        if let Some(p) = self.paths.get(&(netns as u64)) {
            return Some(p.clone());
        }
        if self.last_scan.is_some_and(|t| t.elapsed() < Self::RESCAN) {
            return None;
        }
        self.last_scan = Some(std::time::Instant::now());
        self.paths = crate::host::netns::all_namespaces();
        self.paths.get(&(netns as u64)).cloned()
    }

    /// The sysctls of `netns` if this is the first time it is seen (`None` otherwise, or when
    /// it cannot be entered: a namespace already gone, e.g. one being purged).
    pub fn observe(&mut self, netns: u32) -> Option<Sysctls> {
        if netns == 0 || self.known.contains_key(&netns) {
            return None;
        }
        // Not found (yet): nothing is recorded, so the next record from it tries again (a
        // namespace created moments ago may be missing from the last /proc walk).
        let read = self.path_of(netns).and_then(|p| read_ns(&p).ok())?;
        if let Some(c) = read.1 {
            // Counted from when tracing started: the namespace's value then, or 0 for one
            // created since (its events are processed a little after they happen).
            let base = self.start_overflow.get(&netns).copied().unwrap_or(0);
            self.overflow.insert(netns, (base, c));
        }
        self.known.insert(netns, Some(read.0.clone()));
        Some(read.0)
    }

    /// Overflows the kernel counted in `netns` since twtrace first saw it, as of the last
    /// read (`None` if its counters cannot be read).
    pub fn kernel_overflows(&self, netns: u32) -> Option<u64> {
        self.overflow
            .get(&netns)
            .map(|(base, now)| now.saturating_sub(*base))
    }

    /// Makes the next [`refresh`](Self::refresh) re-read now (e.g. for a final report).
    pub fn force_refresh(&mut self) {
        self.last_refresh = std::time::Instant::now() - Self::REFRESH;
    }

    /// Whether the next [`refresh`](Self::refresh) will re-read.
    pub fn refresh_due(&self) -> bool {
        self.last_refresh.elapsed() >= Self::REFRESH
    }

    /// Every `REFRESH`: namespaces whose sysctls changed, with their new values.
    pub fn refresh(&mut self) -> Vec<(u32, Sysctls)> {
        if self.last_refresh.elapsed() < Self::REFRESH {
            return Vec::new();
        }
        self.last_refresh = std::time::Instant::now();
        let mut changed = Vec::new();
        let ids: Vec<u32> = self.known.keys().copied().collect();
        for netns in ids {
            let Some(p) = self.paths.get(&(netns as u64)).cloned() else {
                continue;
            };
            match read_ns(&p) {
                Ok((s, overflow)) => {
                    if let (Some(c), Some(e)) = (overflow, self.overflow.get_mut(&netns)) {
                        e.1 = c;
                    }
                    if self
                        .known
                        .get(&netns)
                        .is_some_and(|old| old.as_ref() != Some(&s))
                    {
                        self.known.insert(netns, Some(s.clone()));
                        changed.push((netns, s));
                    }
                }
                // Gone: forget it (its inode may be reused by a new namespace).
                Err(_) => {
                    self.known.remove(&netns);
                    self.paths.remove(&(netns as u64));
                }
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_sysctl_directory() {
        let d = std::env::temp_dir().join(format!("twtrace-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("tcp_tw_reuse"), "2\n").unwrap();
        std::fs::write(d.join("ip_local_port_range"), "32768\t60999\n").unwrap();
        std::fs::write(d.join("tcp_fin_timeout"), "garbage\n").unwrap();
        let s = Sysctls::read_from(&d);
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(s.tw_reuse, Some(2));
        assert_eq!(s.port_range, Some((32768, 60999)));
        assert_eq!(s.ports(), Some(28232));
        assert_eq!(s.fin_timeout_s, None);
        assert_eq!(s.tw_reuse_delay_ms, None);
        assert_eq!(s.summary(), "tw_reuse=2 port_range=32768-60999");
        let mut j = String::new();
        s.write_json(&mut j);
        assert_eq!(
            j,
            ",\"tcp_tw_reuse\":2,\"ip_local_port_range\":[32768,60999]"
        );
    }

    #[test]
    fn port_range_edge_cases() {
        assert_eq!(parse_port_range("5 5"), Some((5, 5)));
        assert_eq!(parse_port_range("6 5"), None);
        assert_eq!(parse_port_range("x"), None);
        let one = Sysctls {
            port_range: Some((5, 5)),
            ..Default::default()
        };
        assert_eq!(one.ports(), Some(1));
    }

    #[test]
    fn this_namespace_has_the_timewait_sysctls() {
        let s = Sysctls::read_current();
        assert!(
            s.tw_reuse.is_some() && s.max_tw_buckets.is_some() && s.port_range.is_some(),
            "{s:?}"
        );
    }
}
