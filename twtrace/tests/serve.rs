//! `twtrace serve` end to end: the real binary with the real kernel programs, real TCP in
//! private network namespaces, and a real Prometheus server (Debian's `prometheus` package)
//! scraping it every second. Needs root, like the live tracer.
//!
//! Everything started here (twtrace, Prometheus, namespaces, temporary directories) is
//! stopped or removed by a guard, also when an assertion fails; every wait has a deadline.

mod common;
use common::TempDir;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twtrace::experiments::workload::{connect_many, serve, FirstCloser};
use twtrace::host::netns::NetNs;
use twtrace::pipeline::event::{Body, Event, ExitReason};
use twtrace::pipeline::filter::Filter;
use twtrace::pipeline::tracer::{Background, TracerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_twtrace");
/// Generous bound for anything that should take milliseconds to a couple of seconds.
const SOON: Duration = Duration::from_secs(20);
/// Every child gets killed after this even if the test and its guards were killed first.
const CHILD_LIFETIME_S: &str = "180";

/// The kernel-driven tests here run one at a time: on two cores two tracers, a Prometheus and
/// two workloads would mostly measure each other.
static KERNEL: Mutex<()> = Mutex::new(());

fn kernel_lock() -> std::sync::MutexGuard<'static, ()> {
    KERNEL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Children

/// A child process killed (and reaped) when dropped, with its stderr collected.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` with stderr piped into a log; returns once a stderr line satisfies `ready`
/// (that line is returned), or fails with the log.
fn spawn_until(
    mut cmd: Command,
    what: &str,
    timeout: Duration,
    ready: impl Fn(&str) -> bool + Send + 'static,
) -> (Proc, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if ready(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                log.lock().unwrap().push(line);
            }
        });
    }
    let proc = Proc { child, log };
    match rx.recv_timeout(timeout) {
        Ok(line) => (proc, line),
        Err(_) => panic!("{what} did not get ready in {timeout:?}:\n{}", proc.log()),
    }
}

/// `twtrace serve --listen 127.0.0.1:0 ARGS`, and the address it listens on.
fn start_serve(args: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--duration",
        CHILD_LIFETIME_S,
    ])
    .args(args);
    let (p, line) = spawn_until(cmd, "twtrace serve", SOON, |l| {
        l.contains("listening on http://")
    });
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (p, addr)
}

/// A Prometheus server on loopback scraping `target` every second, with its data in a
/// temporary directory. Field order: the server stops before its directory goes.
struct Prometheus {
    proc: Proc,
    addr: SocketAddr,
    _dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect(
                "no prometheus binary: install Debian's `prometheus` package (`cargo xtask setup` does)",
            );
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        // The shipped alert rules, evaluated every second against the real series.
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: twtrace\n    static_configs:\n      - targets: ['{target}']\n",
                deploy("alerts.yaml").display()
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // Nothing to keep: the directory goes at the end.
            .arg("--storage.tsdb.retention.time=1h")
            .current_dir(&dir.0);
        let (proc, _) = spawn_until(cmd, "prometheus", SOON, |l| {
            l.contains("Server is ready to receive web requests")
        });
        Prometheus {
            proc,
            addr,
            _dir: dir,
        }
    }

    /// An instant query: (labels, value) per series.
    fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", urlencode(q)),
            None,
        )
        .unwrap_or_else(|e| panic!("querying prometheus: {e}\n{}", self.proc.log()));
        assert_eq!(status, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// The one value of a query that must have exactly one series, `None` while it has none.
    fn scalar(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        assert!(r.len() <= 1, "{q}: {r:?}");
        r.first().map(|x| x.1)
    }
}

/// A file of the repository's `deploy/`.
fn deploy(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

fn promtool() -> &'static str {
    let p = "/usr/bin/promtool";
    assert!(
        std::path::Path::new(p).exists(),
        "no promtool: install Debian's `prometheus` package (`cargo xtask setup` does)"
    );
    p
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP/1.0 GET (the server closes after it): (status, body).
fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_string()))
}

/// The value of the first sample of `/metrics` text whose line starts with `prefix` (metric
/// name and the start of its labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Polls `f` every 200 ms until it returns `Some` or `timeout` passes.
fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

/// A fixed service port outside the narrowed ephemeral range (a server on port 0 would take
/// one of the few ephemeral ports itself).
const SERVICE: SocketAddr = SocketAddr::V4(SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8080));

/// Connects from inside `ns` until it succeeds or `limit` passes, retrying after each
/// EADDRNOTAVAIL; closes the connection first (so it ends in TIME_WAIT here). Whether it
/// succeeded.
fn connect_until(ns: &NetNs, dst: SocketAddr, limit: Duration) -> bool {
    ns.run(move || {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
                Ok(_) => return true,
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("connect: {e}"),
            }
        }
        false
    })
    .unwrap()
}

/// Timewait sockets in `ns` as the kernel lists them (`/proc/net/tcp{,6}` inside it): a
/// timewait socket shows its substate, 06 (TIME_WAIT) or 05 (FIN_WAIT2); the workloads here
/// leave no full socket in FIN_WAIT2 once their connections are done.
fn timewait_in(ns: &NetNs) -> usize {
    ns.run(|| {
        ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|t| {
                t.lines()
                    .skip(1)
                    .filter(|l| matches!(l.split_whitespace().nth(3), Some("06" | "05")))
                    .count()
            })
            .sum()
    })
    .unwrap()
}

/// What a reference tracer saw in one namespace.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    enters: u64,
    exits: BTreeMap<&'static str, u64>,
    with_lifetime: u64,
    overflow: u64,
    /// refusal (`too young` style names mapped to the metric's `too_young`) → count.
    connect_fail: BTreeMap<String, u64>,
}

fn seen(ev: &[Event], netns: u64) -> Seen {
    let mut s = Seen::default();
    for r in ExitReason::ALL {
        s.exits.insert(r.as_str(), 0);
    }
    for e in ev {
        if e.sock().is_none_or(|k| u64::from(k.netns) != netns) {
            continue;
        }
        match &e.body {
            Body::Enter {
                snapshot: false, ..
            } => s.enters += 1,
            Body::Exit {
                reason,
                lifetime_ms,
                ..
            } => {
                *s.exits.get_mut(reason.as_str()).unwrap() += 1;
                s.with_lifetime += u64::from(lifetime_ms.is_some());
            }
            Body::Overflow { .. } => s.overflow += 1,
            Body::ConnectFail { refusal, errno, .. } => {
                assert_eq!(*errno, libc::EADDRNOTAVAIL, "{e:?}");
                *s.connect_fail
                    .entry(refusal.as_str().replace(' ', "_"))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    s
}

/// The same numbers, as Prometheus has them for `netns`.
fn scraped(prom: &Prometheus, netns: u64) -> Seen {
    let ns = format!("netns=\"{netns}\"");
    let one = |name: &str| prom.scalar(&format!("{name}{{{ns}}}")).unwrap_or(-1.0) as u64;
    let mut s = Seen {
        enters: one("twtrace_timewait_entries_total"),
        with_lifetime: one("twtrace_timewait_lifetime_seconds_count"),
        overflow: one("twtrace_overflow_drops_total"),
        ..Seen::default()
    };
    for (labels, v) in prom.query(&format!("twtrace_timewait_exits_total{{{ns}}}")) {
        let reason = ExitReason::ALL
            .iter()
            .find(|r| Some(r.as_str()) == labels.get("reason").map(String::as_str))
            .unwrap_or_else(|| panic!("unknown reason in {labels:?}"));
        s.exits.insert(reason.as_str(), v as u64);
    }
    for (labels, v) in prom.query(&format!("twtrace_connect_failures_total{{{ns}}}")) {
        assert_eq!(labels["errno"], "EADDRNOTAVAIL", "{labels:?}");
        s.connect_fail.insert(labels["refusal"].clone(), v as u64);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Prometheus scrapes `twtrace serve` while connections are driven in two namespaces: entries,
/// exits by reason (reused, then purged when the namespaces go), lifetimes, overflow drops and
/// connect failures in Prometheus equal what an independent tracer saw, and the TIME_WAIT
/// gauge follows the sockets.
#[test]
fn prometheus_scrapes_what_the_tracer_saw() {
    let _k = kernel_lock();
    let t0 = Instant::now();
    // `reuse`: 4 ports, tw_reuse=1 with a short delay, so connect() takes over TIME_WAIT
    // sockets (exit "reused") after a few refusals ("too young"); `overflow`: room for 2
    // timewait sockets, so 8 of 10 closes are overflow drops.
    let reuse = NetNs::new().unwrap();
    reuse.sysctl("net.ipv4.tcp_tw_reuse", "1").unwrap();
    let delay_ms = if std::path::Path::new("/proc/sys/net/ipv4/tcp_tw_reuse_delay").exists() {
        reuse.sysctl("net.ipv4.tcp_tw_reuse_delay", "200").unwrap();
        200
    } else {
        1000
    };
    reuse
        .sysctl("net.ipv4.ip_local_port_range", "40000 40003")
        .unwrap();
    let overflow = NetNs::new().unwrap();
    overflow.sysctl("net.ipv4.tcp_max_tw_buckets", "2").unwrap();
    overflow.sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    let (ns_r, ns_o) = (reuse.inode(), overflow.inode());

    // The reference: a tracer in this process watching both namespaces.
    let filter = Filter {
        netns: vec![ns_r, ns_o],
        ..Filter::default()
    };
    let reference = Background::start(TracerOptions::default(), move |e| filter.matches(e))
        .expect("starting the reference tracer (are you root, on a kernel with BTF?)");
    let (twtrace, addr) = start_serve(&["--peer-labels", "5"]);
    let prom = Prometheus::start(addr);
    let up = eventually(SOON, || {
        prom.scalar("up{job=\"twtrace\"}").filter(|v| *v == 1.0)
    });
    assert_eq!(
        up,
        Some(1.0),
        "prometheus never scraped twtrace\n{}",
        prom.proc.log()
    );

    // Drive: 4 closes fill the 4 ports; each of 3 more connect()s takes over one of them.
    {
        let server = serve(&reuse, SERVICE, FirstCloser::Client, Duration::ZERO).unwrap();
        connect_many(&reuse, server.addr, 4, FirstCloser::Client).unwrap();
        for i in 0..3 {
            assert!(
                connect_until(&reuse, server.addr, Duration::from_millis(delay_ms + 5000)),
                "connect {i} never reused a timewait socket"
            );
        }
        let server = serve(
            &overflow,
            "127.0.0.1:0".parse().unwrap(),
            FirstCloser::Client,
            Duration::ZERO,
        )
        .unwrap();
        connect_many(&overflow, server.addr, 10, FirstCloser::Client).unwrap();
    }
    let ev = reference.wait_for(SOON, |ev| {
        let (r, o) = (seen(ev, ns_r), seen(ev, ns_o));
        r.enters >= 7 && r.exits["reused"] >= 3 && o.enters + o.overflow >= 10
    });
    let before = seen(&ev, ns_r);
    assert_eq!(before.enters, 7, "{before:?}");
    assert!(before.exits["reused"] >= 1, "{before:?}");
    assert!(
        before.connect_fail.get("too_young").copied().unwrap_or(0) >= 1,
        "no refusal before the reuse delay: {before:?}"
    );
    // In TIME_WAIT now (4 in `reuse`, 2 in `overflow`, unless one left early): the gauge
    // (census kept current by events) shows what the kernel has.
    let in_tw = |s: &Seen| s.enters - s.exits.values().sum::<u64>();
    let tw_r = in_tw(&before);
    let tw_o = in_tw(&seen(&ev, ns_o));
    assert!(tw_r >= 3 && tw_o >= 1, "{before:?} {:?}", seen(&ev, ns_o));
    for (ns, netns) in [(ns_r, &reuse), (ns_o, &overflow)] {
        let q = format!("sum(twtrace_timewait_sockets{{netns=\"{ns}\"}})");
        let got = eventually(SOON, || {
            let kernel = timewait_in(netns) as f64;
            prom.scalar(&q).filter(|v| *v == kernel)
        });
        assert_eq!(
            got,
            Some(timewait_in(netns) as f64),
            "{q}: {:?}\nthe reference saw: {:#?}",
            prom.query(&q),
            ev.iter()
                .filter(|e| e.sock().is_some_and(|k| u64::from(k.netns) == ns))
                .collect::<Vec<_>>()
        );
    }
    // The port pressure toward the full destination: 4 of 4 ports.
    let q = format!(
        "twtrace_port_pressure_ratio{{netns=\"{ns_r}\",raddr=\"127.0.0.1\",rport=\"8080\"}}"
    );
    let want = tw_r as f64 / 4.0;
    assert_eq!(
        eventually(SOON, || prom.scalar(&q).filter(|v| *v == want)),
        Some(want),
        "{q}: {:?}",
        prom.query(&q)
    );

    // What a scrape of that namespace looks like (shown with --nocapture).
    let (_, body) = http_get(addr, "/metrics", None).unwrap();
    let mine = format!("netns=\"{ns_r}\"");
    eprintln!(
        "/metrics for netns {ns_r}:\n{}",
        body.lines()
            .filter(|l| l.contains(&mine))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The namespaces go: their timewait sockets are purged.
    drop(reuse);
    drop(overflow);
    reference.wait_for(Duration::from_secs(30), |ev| {
        in_tw(&seen(ev, ns_r)) == 0 && in_tw(&seen(ev, ns_o)) == 0
    });
    // A moment for stragglers (the check below is equality with the reference, whatever it
    // saw).
    std::thread::sleep(Duration::from_millis(300));
    let (ev, summary) = reference.stop().unwrap();
    assert_eq!(summary.lost, 0, "the reference tracer lost events");
    let want_r = seen(&ev, ns_r);
    let want_o = seen(&ev, ns_o);
    assert!(want_r.exits["purged"] >= 1, "{want_r:?}");
    assert!(want_o.exits["purged"] >= 1, "{want_o:?}");
    assert_eq!(want_o.overflow + want_o.enters, 10, "{want_o:?}");
    assert!(want_o.overflow >= 7, "{want_o:?}");

    // Prometheus ends up with exactly the same numbers.
    for (ns, want) in [(ns_r, &want_r), (ns_o, &want_o)] {
        let got = eventually(SOON, || Some(scraped(&prom, ns)).filter(|g| g == want));
        assert_eq!(
            got.as_ref(),
            Some(want),
            "netns {ns}: prometheus has {:?}, the tracer saw {want:?}",
            scraped(&prom, ns)
        );
    }
    // The shipped alert rules load and evaluate cleanly against the real series.
    let (status, body) = http_get(prom.addr, "/api/v1/rules", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let rules: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rules: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 5, "{body}");
    let evaluated = eventually(SOON, || {
        let (_, body) = http_get(prom.addr, "/api/v1/rules", None).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let all_ok = v["data"]["groups"][0]["rules"]
            .as_array()?
            .iter()
            .all(|r| r["health"] == "ok");
        all_ok.then_some(())
    });
    assert!(evaluated.is_some(), "alert rules unhealthy: {body}");
    // The tracer's own health, scraped too.
    assert_eq!(prom.scalar("twtrace_events_lost_total"), Some(0.0));
    let hooks = prom.query("twtrace_hook_attached");
    assert!(
        hooks
            .iter()
            .any(|(l, v)| l["hook"] == "tp_btf/timer_start" && *v == 1.0),
        "{hooks:?}"
    );
    // The namespaces' cgroup (this test's), as an info metric.
    let ours = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| twtrace::frontend::metrics::cgroup_path(&t))
        .filter(|c| c != "/");
    if let Some(cg) = ours {
        let q = format!("twtrace_netns_info{{netns=\"{ns_r}\"}}");
        let info = prom.query(&q);
        assert_eq!(info.len(), 1, "{q}: {info:?}");
        assert_eq!(info[0].0["cgroup"], cg);
    }
    drop(prom);
    drop(twtrace);
    eprintln!("prometheus test: {:.1} s", t0.elapsed().as_secs_f64());
}

/// Resident set size of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Scrapes on one kept-alive connection: `n` requests, each response read by its
/// Content-Length. Returns the latency of each.
fn scrape_keepalive(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let connect = || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    };
    let (mut s, mut r) = connect();
    let mut lat = Vec::with_capacity(n);
    let mut reconnects = 0;
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")
            .unwrap();
        let mut len = None;
        let mut line = String::new();
        let mut status = String::new();
        let mut close = false;
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if status.is_empty() {
                status = line.clone();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
            close |= lower.starts_with("connection:") && lower.contains("close");
        }
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut body = vec![0u8; len.expect("content-length")];
        r.read_exact(&mut body).unwrap();
        assert!(body.ends_with(b"# EOF\n"));
        lat.push(t.elapsed());
        if close {
            // The server's bound on requests per connection: it said so; start another.
            reconnects += 1;
            (s, r) = connect();
        }
    }
    // 1000 requests per connection (the server's bound), then a new one.
    assert_eq!(
        reconnects,
        (n - 1) / 1000,
        "kept-alive connections closed early"
    );
    lat
}

/// A few thousand scrapes from a loop (new connections and kept-alive ones, four clients at
/// once, then a burst of clients past the connection limit) while connections are traced: no event lost, every TIME_WAIT entry counted, and the
/// server's memory flat.
#[test]
fn a_scrape_storm_loses_no_events_and_keeps_memory_flat() {
    const CONNS: usize = 1000;
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 1500;
    /// Clients connecting at once, more than the server's connection limit (64).
    const BURST: usize = 150;
    let _k = kernel_lock();
    let ns = NetNs::new().unwrap();
    // No reuse on loopback (the default 2 allows it): every socket stays in TIME_WAIT, so the
    // gauge must reach exactly CONNS.
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    let inode = ns.inode();
    let (twtrace, addr) = start_serve(&["--netns", &inode.to_string()]);
    let metrics = || http_get(addr, "/metrics", None).unwrap().1;
    // Warm up: the first few hundred scrapes may grow the allocator's pools.
    for _ in 0..300 {
        assert!(metrics().starts_with("# HELP"));
    }
    let rss0 = rss_kib(twtrace.pid());

    let ns = Arc::new(ns);
    let load = {
        let ns = ns.clone();
        std::thread::spawn(move || {
            let server = serve(
                &ns,
                "127.0.0.1:0".parse().unwrap(),
                FirstCloser::Client,
                Duration::ZERO,
            )
            .unwrap();
            for _ in 0..CONNS / 50 {
                connect_many(&ns, server.addr, 50, FirstCloser::Client).unwrap();
            }
        })
    };
    let t = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    scrape_keepalive(addr, PER_CLIENT)
                } else {
                    (0..PER_CLIENT)
                        .map(|_| {
                            let t = Instant::now();
                            let (status, body) = http_get(addr, "/metrics", None).unwrap();
                            assert_eq!(status, 200);
                            assert!(body.contains("twtrace_events_lost_total"));
                            t.elapsed()
                        })
                        .collect()
                }
            })
        })
        .collect();
    let mut lat: Vec<Duration> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let storm = t.elapsed();
    // A burst past the connection limit: the extra clients wait in the backlog, none is
    // refused or starved.
    let barrier = Arc::new(std::sync::Barrier::new(BURST));
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                http_get(addr, "/metrics", None).map(|r| r.0)
            })
        })
        .collect();
    for b in burst {
        assert_eq!(b.join().unwrap().unwrap(), 200);
    }
    load.join().unwrap();
    let rss1 = rss_kib(twtrace.pid());
    lat.sort();
    let n = lat.len();
    eprintln!(
        "scrape storm: {n} scrapes in {:.1} s ({:.0}/s); latency p50 {:?} p99 {:?} max {:?}; \
         RSS {rss0} KiB -> {rss1} KiB",
        storm.as_secs_f64(),
        n as f64 / storm.as_secs_f64(),
        lat[n / 2],
        lat[n * 99 / 100],
        lat[n - 1]
    );
    assert_eq!(n, CLIENTS * PER_CLIENT);

    // Every connection's TIME_WAIT entry was counted and nothing was lost.
    let prefix = format!("twtrace_timewait_entries_total{{netns=\"{inode}\"}}");
    let entries = eventually(SOON, || {
        sample(&metrics(), &prefix).filter(|v| *v >= CONNS as f64)
    });
    assert_eq!(entries, Some(CONNS as f64), "{}", metrics());
    let body = metrics();
    assert_eq!(
        sample(&body, "twtrace_events_lost_total"),
        Some(0.0),
        "{body}"
    );
    // The gauge (the kernel's census, kept current by events) shows what the kernel has, and
    // agrees with the events: every entry is still in TIME_WAIT but those that left early.
    let tw = format!("twtrace_timewait_sockets{{netns=\"{inode}\",substate=\"time_wait\"}}");
    let fw2 = format!("twtrace_timewait_sockets{{netns=\"{inode}\",substate=\"fin_wait2\"}}");
    let exits = format!("twtrace_timewait_exits_total{{netns=\"{inode}\",reason=");
    let consistent = eventually(SOON, || {
        let b = metrics();
        let gauge = sample(&b, &tw)? + sample(&b, &fw2)?;
        let left: f64 = b
            .lines()
            .filter(|l| l.starts_with(&exits))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        let kernel = timewait_in(&ns) as f64;
        (gauge == CONNS as f64 - left && gauge == kernel).then_some(())
    });
    assert!(
        consistent.is_some(),
        "gauge != entries - exits or != the kernel's {}:\n{}",
        timewait_in(&ns),
        metrics()
    );
    // Flat: a few thousand scrapes may not cost more than a few MiB (the snapshot is shared,
    // connections are bounded).
    assert!(
        rss1 <= rss0 + 8 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB over {n} scrapes"
    );
    // Still healthy.
    assert_eq!(http_get(addr, "/healthz", None).unwrap().0, 200);
    drop(twtrace);
}

/// The shipped alert rules are valid and pass their unit tests (promtool from the same
/// Prometheus package).
#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    for args in [
        vec!["check", "rules", "alerts.yaml"],
        vec!["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(promtool())
            .args(&args)
            .current_dir(deploy(""))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}
