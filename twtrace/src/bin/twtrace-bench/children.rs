//! Tracers under test as child processes: start one, know when it is attached, read what it
//! costs from `/proc`, stop it with SIGINT (as a user would with Ctrl-C) and keep its stderr.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a tool says it is attached.
#[derive(Clone, Debug)]
pub enum Ready {
    /// A line on stderr containing this text (twtrace prints one once its hooks are attached).
    StderrLine(&'static str),
    /// A program of this process attached to a perf event / tracepoint, as `bpftool perf`
    /// lists (tools that print nothing when ready, or print it to a buffered stdout).
    PerfAttach,
}

pub struct Running {
    pub name: String,
    child: Option<Child>,
    pub pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    /// The BPF programs the process holds (from `/proc/PID/fdinfo`), once attached.
    pub prog_ids: Vec<u32>,
}

pub struct Stopped {
    pub status: Option<ExitStatus>,
    pub stderr: Vec<String>,
    /// Peak RSS, read just before the stop signal.
    pub hwm_kib: Option<u64>,
}

/// Starts `cmd` (stdin closed, stderr captured; the caller sets stdout) and waits until it is
/// attached, at most `timeout`.
pub fn start(name: &str, mut cmd: Command, ready: Ready, timeout: Duration) -> Result<Running> {
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({cmd:?})"))?;
    let pid = child.id();
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<()>();
    let marker = match &ready {
        Ready::StderrLine(m) => Some(*m),
        Ready::PerfAttach => None,
    };
    let l = lines.clone();
    let reader = std::thread::spawn(move || {
        // Reads until the child closes stderr (it exits), so it never blocks the child.
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if marker.is_some_and(|m| line.contains(m)) {
                let _ = tx.send(());
            }
            l.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
    let mut r = Running {
        name: name.to_string(),
        child: Some(child),
        pid,
        lines,
        reader: Some(reader),
        prog_ids: Vec::new(),
    };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            let err = r.stderr_tail(8);
            bail!("{name} exited during start-up ({st}): {err}");
        }
        let attached = match ready {
            Ready::StderrLine(_) => rx.recv_timeout(Duration::from_millis(100)).is_ok(),
            Ready::PerfAttach => {
                let ok = perf_attached(pid)?;
                if !ok {
                    std::thread::sleep(Duration::from_millis(200));
                }
                ok
            }
        };
        if attached {
            break;
        }
        if Instant::now() >= deadline {
            let err = r.stderr_tail(8);
            bail!("{name} was not attached after {timeout:?}: {err}");
        }
    }
    r.prog_ids = prog_ids_of(pid);
    Ok(r)
}

impl Running {
    /// CPU seconds used so far (user + system, all threads).
    pub fn cpu_s(&self) -> f64 {
        cpu_s(self.pid).unwrap_or(0.0)
    }

    /// Voluntary context switches of all its threads so far: how often it went to sleep,
    /// i.e. about how often it was woken for data.
    pub fn sleeps(&self) -> Option<u64> {
        voluntary_switches(self.pid)
    }

    /// Its stdout, when the command was given `Stdio::piped()` (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    pub fn hwm_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmHWM:")
    }

    pub fn rss_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmRSS:")
    }

    fn stderr_tail(&self, n: usize) -> String {
        let g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let start = g.len().saturating_sub(n);
        g[start..].join(" | ")
    }

    /// SIGINT, then waits up to `timeout` (SIGKILL after that).
    pub fn stop(mut self, timeout: Duration) -> Result<Stopped> {
        let hwm_kib = self.hwm_kib();
        let status = self.terminate(timeout)?;
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
        let stderr = std::mem::take(&mut *self.lines.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(Stopped {
            status,
            stderr,
            hwm_kib,
        })
    }

    fn terminate(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGINT);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "bench: {} did not stop within {timeout:?} of SIGINT: killing it",
                    self.name
                );
                let _ = child.kill();
                return Ok(child.wait().ok());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    /// A bench that fails half-way must not leave a tracer attached to the kernel.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CPU time of a process (all its live threads), in seconds: the scheduler's nanoseconds
/// (`/proc/PID/task/*/schedstat`), else utime + stime in clock ticks. Ticks are 10 ms: a
/// tracer using 1 % of a core for 3 s is 3 ticks, so the per-event figures of a short run
/// were ±30 % from rounding alone. (A thread that exits during a measured window would take
/// its time with it; twtrace's threads live as long as the process.)
pub fn cpu_s(pid: u32) -> Option<f64> {
    sched_cpu_s(pid).or_else(|| tick_cpu_s(pid))
}

fn sched_cpu_s(pid: u32) -> Option<f64> {
    let mut ns: u64 = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

fn tick_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (ut, st) = parse_stat_times(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((ut + st) as f64 / hz)
}

/// Fields 14 and 15 (utime, stime, in clock ticks) of `/proc/PID/stat`. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted after its last ')'.
pub fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// Sum of `voluntary_ctxt_switches` over a process's threads (`/proc/PID/status` has only the
/// main thread's).
pub fn voluntary_switches(pid: u32) -> Option<u64> {
    let rd = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for t in rd.flatten() {
        let s = std::fs::read_to_string(t.path().join("status")).ok()?;
        total += parse_status_kib(&s, "voluntary_ctxt_switches:")?;
    }
    Some(total)
}

pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&s, key)
}

pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// BPF program ids referenced by a process's file descriptors (program and link fds both
/// show `prog_id:` in fdinfo).
pub fn prog_ids_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in rd.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            ids.extend(parse_fdinfo_prog_id(&text));
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

pub fn parse_fdinfo_prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether `bpftool perf show` lists a program attached by `pid`.
fn perf_attached(pid: u32) -> Result<bool> {
    let out = Command::new("bpftool")
        .args(["perf", "show", "-j"])
        .output()
        .context("running `bpftool perf show` (apt-get install bpftool)")?;
    if !out.status.success() {
        bail!(
            "bpftool perf show failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(perf_json_has_pid(&out.stdout, pid))
}

pub fn perf_json_has_pid(json: &[u8], pid: u32) -> bool {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice::<serde_json::Value>(json)
    else {
        return false;
    };
    items
        .iter()
        .any(|i| i.get("pid").and_then(|p| p.as_u64()) == Some(pid as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_survive_odd_command_names() {
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0";
        assert_eq!(parse_stat_times(stat), Some((250, 37)));
        assert_eq!(parse_stat_times("1 (x) S 1"), None);
    }

    #[test]
    fn status_and_fdinfo_fields() {
        let st =
            "Name:\ttwtrace\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\nvoluntary_ctxt_switches:\t77\n";
        assert_eq!(parse_status_kib(st, "voluntary_ctxt_switches:"), Some(77));
        assert_eq!(parse_status_kib(st, "VmHWM:"), Some(12345));
        assert_eq!(parse_status_kib(st, "VmSwap:"), None);
        let fi =
            "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1053\nprog_type:\t26\nprog_id:\t292\n";
        assert_eq!(parse_fdinfo_prog_id(fi), Some(292));
        assert_eq!(parse_fdinfo_prog_id("pos:\t0\n"), None);
    }

    #[test]
    fn perf_json() {
        let j = br#"[{"pid":2323,"fd":11,"prog_id":513,"fd_type":"tracepoint"}]"#;
        assert!(perf_json_has_pid(j, 2323));
        assert!(!perf_json_has_pid(j, 1));
        assert!(!perf_json_has_pid(b"not json", 2323));
    }
}
