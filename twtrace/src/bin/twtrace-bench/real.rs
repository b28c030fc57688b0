//! The `real` phase: a real server instead of the load generator. Debian's `nginx` serves a
//! small static file in one private namespace, `ab` (apache2-utils) requests it from another
//! over a veth pair that joins only those two namespaces (198.18.0.0/15, the benchmarking
//! range). `ab` speaks HTTP/1.0 without keep-alive, so nginx closes every connection first and
//! every request leaves one TIME_WAIT socket on the server side, which lives its 60 s: the
//! phase first runs the load for longer than that (warm-up), so during the measured rounds as
//! many TIME_WAIT sockets end as are born (the steady state of a real server; each round
//! records births, the population before and after, and so the exits).
//!
//! Figures per round: requests/s (the server namespace's `Tcp: PassiveOpens`, one connection
//! per request) and the whole machine's CPU per request (`/proc/stat`, every CPU, everything
//! but idle and iowait: nginx, ab, the kernel's softirq work and the tracer's own userspace
//! all count). Throughput swings with whatever else the machine does; CPU per request much
//! less. `real_overhead_ratio` = CPU per request without a tracer / with twtrace (1.0: free).
//!
//! Clean-up: nginx (master + 1 worker) and the ab processes are children in the bench's
//! process group (Ctrl-C reaches them), nginx's master and each ab get SIGKILL if the bench
//! dies (`PR_SET_PDEATHSIG`), and everything is stopped and the namespaces dropped on every
//! path out of this module, error or not. The veth pair goes with the server's namespace.

use crate::children;
use crate::report::{median, opt, table};
use crate::{Env, Plan, Tool, START_TIMEOUT, STOP_TIMEOUT};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use twtrace::host::netns::NetNs;
use twtrace::testkit::loadgen;

const SERVER: &str = "198.18.0.1";
/// One `ab` per client address (`ab -B`): each address is its own set of 64 512 4-tuples on
/// the server, so a client port comes back to a server TIME_WAIT socket rarely and most of
/// them expire (as with a real server's many clients) rather than being ended by a new SYN.
/// ab picks its ports at random: over 16 addresses a tuple is hit again every ~170 s on
/// average at 6 000 requests/s (about 70 % expire, 30 % are ended by a SYN) and every ~64 s at
/// 16 000 (about 40 % expire). With 4 addresses, tried first, about a third expired at 6 000.
const CLIENTS: u8 = 16;
/// Concurrent requests per `ab`.
const CONCURRENCY: u32 = 2;
/// Longer than TIME_WAIT's fixed 60 s (plus the timer wheel's slack): the population of the
/// server's TIME_WAIT sockets is at its steady level when the rounds start.
const WARMUP: Duration = Duration::from_secs(66);
/// The response body: small, as a health check or a tiny API reply would be.
const BODY: &str = "twtrace-bench: a small static response\n";

/// nginx and the ab runs of the phase, with everything they need; all stopped on drop.
struct Rig {
    dir: PathBuf,
    server: NetNs,
    client: NetNs,
    nginx: Option<Child>,
}

/// Namespaced: `ip` run from a thread inside `ns` (children inherit the thread's namespace).
fn ip_in(ns: &NetNs, args: &[&str]) -> Result<()> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let shown = args.join(" ");
    let out = ns.run(move || Command::new("ip").args(&args).output())??;
    if !out.status.success() {
        bail!(
            "ip {shown}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Starts `cmd` inside `ns`, from the calling thread, set to die (SIGKILL) if that thread
/// ends first, whatever the cause. (The parent-death signal follows the *thread* that forked:
/// a child started from a short-lived thread, as `NetNs::run` makes, would be killed at once;
/// this is called from the bench's main thread.)
fn spawn_in(ns: &NetNs, cmd: &mut Command) -> Result<Child> {
    let fd = ns.file().as_raw_fd();
    // SAFETY: setns and prctl are async-signal-safe; nothing else runs between fork and exec.
    // `fd` is open in the child until exec (CLOEXEC closes it only then).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

impl Rig {
    fn new(tmp: &Path) -> Result<Rig> {
        let dir = tmp.join("nginx");
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::write(dir.join("www/index.html"), BODY)?;
        let server = NetNs::new()?;
        let client = NetNs::new()?;
        let mut rig = Rig {
            dir,
            server,
            client,
            nginx: None,
        };
        rig.link()?;
        rig.start_nginx()?;
        Ok(rig)
    }

    /// The veth pair: made in the server's namespace, one end moved to the client's (named by
    /// this process's fd of it), addresses and routes only inside the two.
    fn link(&self) -> Result<()> {
        let peer_ns = format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.client.file().as_raw_fd()
        );
        ip_in(
            &self.server,
            &[
                "link", "add", "twb-s", "type", "veth", "peer", "name", "twb-c",
            ],
        )?;
        ip_in(&self.server, &["link", "set", "twb-c", "netns", &peer_ns])?;
        ip_in(
            &self.server,
            &["addr", "add", &format!("{SERVER}/16"), "dev", "twb-s"],
        )?;
        ip_in(&self.server, &["link", "set", "twb-s", "up"])?;
        for i in 1..=CLIENTS {
            ip_in(
                &self.client,
                &["addr", "add", &format!("198.18.1.{i}/16"), "dev", "twb-c"],
            )?;
        }
        ip_in(&self.client, &["link", "set", "twb-c", "up"])?;
        // Namespace sysctls only. The server keeps every TIME_WAIT socket (the default bucket
        // limit of a new namespace is lower than 60 s of this load); each client address may
        // use the whole port range.
        self.server
            .sysctl("net.ipv4.tcp_max_tw_buckets", "2000000")?;
        self.server.sysctl("net.core.somaxconn", "4096")?;
        self.client
            .sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        Ok(())
    }

    fn start_nginx(&mut self) -> Result<()> {
        let d = self.dir.display().to_string();
        // Own pid file, logs and temp paths; no access log; one worker.
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n\
               fastcgi_temp_path {d}/tmp-fastcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n\
               default_type text/plain;\n\
               server {{\n    listen {SERVER}:80 backlog=4096;\n    root {d}/www;\n  }}\n}}\n"
        );
        std::fs::write(self.dir.join("nginx.conf"), conf)?;
        let dir = &self.dir;
        let child = spawn_in(
            &self.server,
            Command::new("nginx")
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        self.nginx = Some(child);
        // Up when a request gets an answer (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self
                .nginx
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited at start ({st}): {}", log.trim());
            }
            let ok = self
                .client
                .run(|| {
                    Command::new("ab")
                        .args(["-q", "-n", "1", &format!("http://{SERVER}/")])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
                })
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nginx did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `CLIENTS` ab processes for `secs`, in parallel; returns their combined completed and
    /// failed requests (from ab's report).
    fn ab(&self, secs: f64) -> Result<(u64, u64)> {
        let secs = secs.ceil().max(1.0) as u64;
        let mut kids = Vec::new();
        for i in 1..=CLIENTS {
            let args: Vec<String> = vec![
                "-r".into(),
                "-B".into(),
                format!("198.18.1.{i}"),
                "-c".into(),
                CONCURRENCY.to_string(),
                "-t".into(),
                secs.to_string(),
                // -t alone caps the count at 50 000; the time limit ends the run.
                "-n".into(),
                "100000000".into(),
                format!("http://{SERVER}/"),
            ];
            let child = spawn_in(
                &self.client,
                Command::new("ab")
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
            )?;
            kids.push(Guard(Some(child)));
        }
        let (mut done, mut failed) = (0, 0);
        for mut k in kids {
            // ab ends by itself at its time limit; the guard kills it if this returns early.
            let out = k.0.take().context("ab child")?.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let (d, f) = parse_ab(&text).with_context(|| {
                format!(
                    "ab ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })?;
            done += d;
            failed += f;
        }
        Ok((done, failed))
    }
}

/// Kills a child that is still running when dropped (an early return).
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut c) = self.nginx.take() {
            // SIGQUIT: graceful shutdown, the master stops its worker; SIGKILL after 5 s.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // A worker left behind would keep the server's namespace alive.
            for pid in children_of(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `Complete requests:` and `Failed requests:` of ab's report.
pub fn parse_ab(text: &str) -> Option<(u64, u64)> {
    let field = |k: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(k))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("Complete requests:")?, field("Failed requests:")?))
}

/// Busy and total jiffies of all CPUs (`/proc/stat`'s `cpu` line; busy = all but idle and
/// iowait).
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

fn cpu_jiffies() -> Result<(u64, u64)> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat")?).context("parsing /proc/stat")
}

/// Server-side counters: connections accepted, TIME_WAIT sockets born, alive.
fn server_counts(ns: &NetNs) -> Result<(u64, u64, u64)> {
    let c = loadgen::netstat(ns)?;
    let g = |k: &str| c.get(k).copied().unwrap_or(0);
    Ok((
        g("Tcp:PassiveOpens"),
        g("TcpExt:TW") + g("TcpExt:TWKilled"),
        loadgen::tw_alive(ns)?,
    ))
}

struct Round {
    tool: Tool,
    secs: f64,
    requests: u64,
    failed: u64,
    /// Whole-machine busy CPU seconds over the window.
    cpu_s: f64,
    tracer_cpu_s: Option<f64>,
    born: u64,
    alive_before: u64,
    alive_after: u64,
}

impl Round {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs.max(1e-9)
    }
    fn us_per_req(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.cpu_s * 1e6 / self.requests as f64)
    }
}

pub fn real(env: &mut Env, plan: &Plan) -> Result<Value> {
    let secs: f64 = if plan.quick { 6.0 } else { 15.0 };
    println!(
        "\n== 5. a real server: nginx ← ab over a veth pair, HTTP/1.0, {} rounds × {secs} s after {} s of warm-up",
        plan.rounds,
        WARMUP.as_secs()
    );
    for (bin, pkg) in [("nginx", "nginx"), ("ab", "apache2-utils")] {
        if !Path::new("/usr/sbin").join(bin).exists() && !Path::new("/usr/bin").join(bin).exists() {
            bail!("{bin} is not installed (apt-get install {pkg}; `cargo xtask bench` does)");
        }
    }
    let rig = Rig::new(&env.tmp.0)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (_, _, a0) = server_counts(&rig.server)?;
    let t0 = Instant::now();
    let (warm_req, warm_failed) = rig.ab(WARMUP.as_secs_f64())?;
    let (_, born_w, alive_w) = server_counts(&rig.server)?;
    eprintln!(
        "bench: real: warm-up {warm_req} requests ({warm_failed} failed) in {:.0} s; TIME_WAIT alive {a0} → {alive_w}, {born_w} born",
        t0.elapsed().as_secs_f64()
    );
    let mut tools: Vec<Tool> = [
        Tool::NoTracer,
        Tool::Live,
        Tool::Record,
        Tool::Tcpstates,
        Tool::Bpftrace,
    ]
    .into_iter()
    .filter(|t| env.available(*t))
    .collect();
    let mut rounds: Vec<Round> = Vec::new();
    for round in 0..plan.rounds {
        let order: Vec<Tool> = if round % 2 == 0 {
            tools.clone()
        } else {
            tools.iter().rev().copied().collect()
        };
        for t in order {
            let running = match env.command(t, Stdio::null()) {
                None => None,
                Some((cmd, ready)) => match children::start(t.name(), cmd, ready, START_TIMEOUT) {
                    Ok(r) => Some(r),
                    Err(e) if !matches!(t, Tool::Live) => {
                        env.note(format!("real: {} could not be started: {e:#}", t.name()));
                        tools.retain(|x| *x != t);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            if running.is_some() {
                std::thread::sleep(crate::SETTLE);
            }
            let (open0, born0, alive0) = server_counts(&rig.server)?;
            let (busy0, _) = cpu_jiffies()?;
            let tcpu0 = running.as_ref().map(|r| r.cpu_s());
            let w0 = Instant::now();
            let (_, failed) = rig.ab(secs)?;
            let el = w0.elapsed().as_secs_f64();
            let (busy1, _) = cpu_jiffies()?;
            let tcpu1 = running.as_ref().map(|r| r.cpu_s());
            let (open1, born1, alive1) = server_counts(&rig.server)?;
            if let Some(r) = running {
                r.stop(STOP_TIMEOUT)?;
            }
            let r = Round {
                tool: t,
                secs: el,
                requests: open1 - open0,
                failed,
                cpu_s: (busy1 - busy0) as f64 / hz,
                tracer_cpu_s: tcpu0.zip(tcpu1).map(|(a, b)| b - a),
                born: born1 - born0,
                alive_before: alive0,
                alive_after: alive1,
            };
            eprintln!(
                "bench: real round {round} {:<15} {:>7.0} req/s {:>6} µs CPU/req, TIME_WAIT {} → {} ({} born)",
                t.name(),
                r.rps(),
                opt(r.us_per_req(), 1),
                r.alive_before,
                r.alive_after,
                r.born
            );
            rounds.push(r);
        }
    }
    drop(rig);
    let of = |t: Tool| rounds.iter().filter(move |r| r.tool == t);
    let base_cpu = median(
        &of(Tool::NoTracer)
            .filter_map(|r| r.us_per_req())
            .collect::<Vec<_>>(),
    );
    let base_rps = median(&of(Tool::NoTracer).map(|r| r.rps()).collect::<Vec<_>>());
    let mut rows = Vec::new();
    let mut configs = Vec::new();
    for t in [
        Tool::NoTracer,
        Tool::Live,
        Tool::Record,
        Tool::Tcpstates,
        Tool::Bpftrace,
    ] {
        let mine: Vec<&Round> = of(t).collect();
        if mine.is_empty() {
            configs.push(json!({"name": t.key(), "available": false}));
            continue;
        }
        let rps = median(&mine.iter().map(|r| r.rps()).collect::<Vec<_>>());
        let cpu = median(
            &mine
                .iter()
                .filter_map(|r| r.us_per_req())
                .collect::<Vec<_>>(),
        );
        let tracer = median(
            &mine
                .iter()
                .filter_map(|r| r.tracer_cpu_s.map(|c| 100.0 * c / r.secs))
                .collect::<Vec<_>>(),
        );
        let cpu_ratio = base_cpu.zip(cpu).map(|(b, c)| b / c);
        let rps_ratio = base_rps.zip(rps).map(|(b, r)| r / b);
        // Steady state: births over the window against the change in the population.
        let born: u64 = mine.iter().map(|r| r.born).sum();
        let exits: i64 = mine
            .iter()
            .map(|r| r.born as i64 - (r.alive_after as i64 - r.alive_before as i64))
            .sum();
        rows.push(vec![
            t.name().to_string(),
            opt(rps, 0),
            opt(rps_ratio, 3),
            opt(cpu, 1),
            opt(cpu_ratio, 3),
            mine.iter()
                .map(|r| opt(r.us_per_req(), 0))
                .collect::<Vec<_>>()
                .join(" "),
            opt(tracer, 1),
            format!("{born}/{exits}"),
            mine.iter().map(|r| r.failed).sum::<u64>().to_string(),
        ]);
        configs.push(json!({
            "name": t.key(), "available": true,
            "requests_per_s": mine.iter().map(|r| r.rps()).collect::<Vec<_>>(),
            "median_requests_per_s": rps, "throughput_ratio": rps_ratio,
            "cpu_us_per_request": mine.iter().map(|r| r.us_per_req()).collect::<Vec<_>>(),
            "median_cpu_us_per_request": cpu,
            // no tracer / this configuration: 1.0 is free.
            "cpu_ratio": cpu_ratio,
            "tracer_cpu_pct_median": tracer,
            "tw_born": born, "tw_exits": exits,
            "tw_alive": mine.iter().map(|r| [r.alive_before, r.alive_after]).collect::<Vec<_>>(),
            "failed_requests": mine.iter().map(|r| r.failed).sum::<u64>(),
        }));
    }
    print!(
        "{}",
        table(
            &[
                "config",
                "req/s",
                "ratio",
                "µs CPU/req",
                "CPU ratio",
                "runs µs/req",
                "tracer CPU %",
                "TW born/exits",
                "failed",
            ],
            &rows
        )
    );
    let real_ratio = base_cpu
        .zip(median(
            &of(Tool::Live)
                .filter_map(|r| r.us_per_req())
                .collect::<Vec<_>>(),
        ))
        .map(|(b, c)| b / c);
    println!(
        "real_overhead_ratio (CPU per request, no tracer / twtrace): {}",
        opt(real_ratio, 3)
    );
    Ok(json!({
        "real_overhead_ratio": real_ratio,
        "real": {
            "definition": "nginx (1 worker, static file, access_log off) in one namespace, CLIENTS × ab -c CONCURRENCY (HTTP/1.0, each bound to its own client address) in another, over a veth pair; requests from the server namespace's Tcp:PassiveOpens; CPU = the whole machine's busy time from /proc/stat over the window; ratio = median CPU per request without a tracer / with twtrace",
            "clients": CLIENTS, "concurrency_per_client": CONCURRENCY,
            "warmup_s": WARMUP.as_secs(), "warmup_requests": warm_req,
            "warmup_tw_alive_end": alive_w,
            "secs_per_round": secs, "rounds": plan.rounds,
            "configs": configs,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ab_report() {
        let t = "Concurrency Level:      8\nTime taken for tests:   5.000 seconds\nComplete requests:      41234\nFailed requests:        3\n   (Connect: 0, Receive: 0, Length: 3, Exceptions: 0)\n";
        assert_eq!(parse_ab(t), Some((41234, 3)));
        assert_eq!(parse_ab("nothing"), None);
    }

    #[test]
    fn proc_stat_busy() {
        let t = "cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 50 2 25 500 10 1 3 0 0 0\n";
        // busy = 100+5+50+3+7+0 (+ guest fields not read), total = all eight.
        assert_eq!(parse_proc_stat(t), Some((165, 1185)));
    }
}
