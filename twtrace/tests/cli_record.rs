//! `twtrace record` and `twtrace export`, end to end: the real binary with the real kernel
//! programs, recording real TCP in a private network namespace; then the files read back
//! offline. Needs root, like the live tracer.

mod common;
use common::{Recorder, TempDir};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use twtrace::experiments::workload::{connect_many, serve, FirstCloser};
use twtrace::host::netns::NetNs;
use twtrace::pipeline::event::{Body, Event};
use twtrace::sink::tracefile::{self, Reader, SysctlsByNetns};

const BIN: &str = env!("CARGO_BIN_EXE_twtrace");

/// The kernel-driven tests here run one at a time: with several recorders and workloads at
/// once on two cores, the tests would mostly measure each other.
static KERNEL: Mutex<()> = Mutex::new(());

fn kernel_lock() -> std::sync::MutexGuard<'static, ()> {
    KERNEL.lock().unwrap_or_else(|p| p.into_inner())
}
/// Generous bound for anything that should take milliseconds to a couple of seconds.
const SOON: Duration = Duration::from_secs(20);

/// One line per event, for assertion messages.
fn dump(ev: &[Event]) -> String {
    let clock = twtrace::kernel::sysinfo::Clock { offset_ns: 0 };
    let mut out = String::new();
    for e in ev {
        e.write_line(&clock, &mut out);
        out.push('\n');
    }
    out
}

fn read(path: &Path) -> tracefile::Trace {
    tracefile::read_all(path).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Enters toward `server`. Selecting by server as well as by namespace matters: a deleted
/// namespace's inode number is soon reused by another test's new namespace.
fn enters(ev: &[Event], server: SocketAddr) -> Vec<&Event> {
    ev.iter()
        .filter(|e| matches!(e.body, Body::Enter { .. }) && toward(e, server))
        .collect()
}

fn exits(ev: &[Event], server: SocketAddr) -> Vec<&Event> {
    ev.iter()
        .filter(|e| matches!(e.body, Body::Exit { .. }) && toward(e, server))
        .collect()
}

fn toward(e: &Event, server: SocketAddr) -> bool {
    e.sock()
        .is_some_and(|s| SocketAddr::new(s.raddr, s.rport) == server)
}

/// Reads a file that is still being written until `pred` holds (bounded); returns the events.
fn poll_file(path: &Path, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + SOON;
    loop {
        let ev = match tracefile::read_all(path) {
            Ok(t) => t.events,
            Err(_) => Vec::new(),
        };
        if pred(&ev) || Instant::now() >= deadline {
            return ev;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lo4() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn report(files: &[&Path]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("report")
        .args(files)
        .args(["--width", "120"])
        .output()
        .expect("running twtrace report");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn export(files: &[&Path], format: &str) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("export")
        .args(files)
        .args(["--format", format])
        .output()
        .expect("running twtrace export");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// N connections closed by the client, then the namespace deleted: N enters and N (purge)
/// exits in the file, and NDJSON/CSV exports with one line per event.
#[test]
fn records_real_traffic_and_exports_it() {
    let _serial = kernel_lock();
    const N: usize = 20;
    let dir = TempDir::new("record");
    let file = dir.0.join("t.twt");
    let ns = NetNs::new().unwrap();
    let ino = ns.inode();
    let mut rec = Recorder::start(&[
        "-o",
        file.to_str().unwrap(),
        "--netns",
        &ino.to_string(),
        "--duration",
        "60",
    ]);
    let (server_addr, clients) = {
        let server = serve(&ns, lo4(), FirstCloser::Client, Duration::ZERO).unwrap();
        let clients: HashSet<SocketAddr> = connect_many(&ns, server.addr, N, FirstCloser::Client)
            .unwrap()
            .into_iter()
            .collect();
        (server.addr, clients)
    };
    // The file is readable while it is being written: the enters show up within the flush
    // interval.
    let ev = poll_file(&file, |ev| enters(ev, server_addr).len() >= N);
    assert_eq!(
        enters(&ev, server_addr).len(),
        N,
        "{:#?}\n{}",
        rec.stderr(),
        dump(&ev)
    );
    drop(ns);
    poll_file(&file, |ev| exits(ev, server_addr).len() >= N);
    std::thread::sleep(Duration::from_millis(300)); // would-be extra events have time to show
    rec.signal(libc::SIGINT);
    assert!(rec.wait(), "record failed: {:#?}", rec.stderr());

    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let t = read(&file);
    assert!(t.damage.is_empty(), "{:?}", t.damage);
    let en = enters(&t.events, server_addr);
    let ex = exits(&t.events, server_addr);
    assert_eq!(en.len(), N, "\n{}", dump(&t.events));
    assert_eq!(ex.len(), N, "\n{}", dump(&t.events));
    for e in en.iter().chain(&ex) {
        let s = e.sock().unwrap();
        assert_eq!(s.netns as u64, ino);
        assert!(
            clients.contains(&SocketAddr::new(s.laddr, s.lport)),
            "{e:?}"
        );
    }
    for e in &ex {
        if let Body::Exit { lifetime_ms, .. } = e.body {
            assert!(lifetime_ms.is_some_and(|l| l < 60_000), "{e:?}");
        }
    }
    // Only this namespace's events were kept (sockets of others were filtered out).
    assert!(t
        .events
        .iter()
        .all(|e| e.sock().is_none_or(|s| s.netns as u64 == ino)));

    // The header describes the recording machine and run.
    let h = &t.header;
    assert_eq!(
        h.kernel_release,
        twtrace::kernel::sysinfo::kernel_release().unwrap()
    );
    assert_eq!(h.hostname, twtrace::kernel::sysinfo::hostname());
    assert!(h.hz >= 100, "{h:?}");
    assert!(h
        .hooks
        .iter()
        .any(|k| k.program == "timer_start" && k.error.is_none()));
    assert_eq!(h.filter, format!("--netns {ino}"));
    let reuse = |s: &SysctlsByNetns, ns: u64| {
        s.get(&ns)
            .and_then(|kv| kv.get("net.ipv4.tcp_tw_reuse"))
            .cloned()
    };
    assert!(reuse(&h.sysctls, ino).is_some(), "{:?}", h.sysctls);
    let here = twtrace::host::netns::current_inode().unwrap();
    assert_eq!(
        reuse(&h.sysctls, here),
        Some(
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_tw_reuse")
                .unwrap()
                .trim()
                .to_string()
        )
    );
    // The wall clock maps the events to about now.
    let wall_s = h.clock.wall_ns(en[0].ts_ns) / 1_000_000_000;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i128;
    assert!((now_s - wall_s).abs() < 120, "{wall_s} vs {now_s}");
    let summary = t.summary.expect("a clean stop writes the summary");
    assert_eq!(summary.events, t.events.len() as u64);
    assert_eq!(summary.parts, 1);
    let lost: u64 = t
        .events
        .iter()
        .map(|e| match e.body {
            Body::Lost { count } => count,
            _ => 0,
        })
        .sum();
    assert_eq!(lost, summary.lost, "lost events in the stream = summary");

    // The report, offline: the traffic's counts.
    let (ok, out, err) = report(&[&file]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("entered TIME_WAIT: {N} ")), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with(&format!("exits: {N} "))),
        "{out}"
    );
    assert!(out.contains(&ino.to_string()), "{out}");
    assert!(out.contains(&format!("--netns {ino}")), "{out}");

    // NDJSON: the live --json contract, one line per event, in order.
    let (ok, out, err) = export(&[&file], "ndjson");
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), t.events.len());
    for (line, e) in lines.iter().zip(&t.events) {
        let mut want = String::new();
        e.write_json(&h.clock, &mut want);
        assert_eq!(*line, want);
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["kind"], e.kind());
    }
    // CSV: a header row and one row per event.
    let (ok, out, err) = export(&[&file], "csv");
    assert!(ok, "{err}");
    let mut rows = out.lines();
    let head = rows.next().unwrap();
    assert!(head.starts_with("time,ts_ns,kind,netns,"), "{head}");
    let rows: Vec<&str> = rows.collect();
    assert_eq!(rows.len(), t.events.len());
    let port = format!(",{},", server_addr.port());
    assert_eq!(
        rows.iter()
            .filter(|r| r.contains(",enter,") && r.contains(&port))
            .count(),
        N
    );
}

/// SIGKILL: no summary, but every event older than the flush interval is in the file, whole.
#[test]
fn sigkill_loses_at_most_the_flush_interval() {
    let _serial = kernel_lock();
    const N: usize = 10;
    let dir = TempDir::new("kill");
    let file = dir.0.join("t.twt");
    let ns = NetNs::new().unwrap();
    let mut rec = Recorder::start(&[
        "-o",
        file.to_str().unwrap(),
        "--netns",
        &ns.inode().to_string(),
        "--flush-interval",
        "0.2",
        "--duration",
        "60",
    ]);
    let server = serve(&ns, lo4(), FirstCloser::Client, Duration::ZERO).unwrap();
    connect_many(&ns, server.addr, N, FirstCloser::Client).unwrap();
    let done = Instant::now();
    let ev = poll_file(&file, |ev| enters(ev, server.addr).len() >= N);
    let waited = done.elapsed();
    assert_eq!(enters(&ev, server.addr).len(), N);
    // Poll period (0.1 s) + flush interval (0.2 s), with slack for a loaded machine.
    assert!(waited < Duration::from_secs(5), "took {waited:?}");
    rec.signal(libc::SIGKILL);
    assert!(!rec.wait());
    let t = read(&file);
    assert!(t.damage.is_empty(), "{:?}", t.damage);
    assert_eq!(enters(&t.events, server.addr).len(), N);
    assert!(t.summary.is_none());
}

/// --max-size: FILE, FILE.1, … each under the limit, each readable alone, nothing lost across
/// them.
#[test]
fn rotation_keeps_every_event_across_parts() {
    let _serial = kernel_lock();
    const N: usize = 200;
    let dir = TempDir::new("rotate");
    let file = dir.0.join("t.twt");
    let ns = NetNs::new().unwrap();
    let ino = ns.inode();
    let mut rec = Recorder::start(&[
        "-o",
        file.to_str().unwrap(),
        "--netns",
        &ino.to_string(),
        "--max-size",
        "4K",
        "--duration",
        "60",
    ]);
    let server_addr = {
        let server = serve(&ns, lo4(), FirstCloser::Client, Duration::ZERO).unwrap();
        connect_many(&ns, server.addr, N, FirstCloser::Client).unwrap();
        server.addr
    };
    let parts = |dir: &Path| -> Vec<PathBuf> {
        let mut v = vec![file.clone()];
        for i in 1.. {
            let p = dir.join(format!("t.twt.{i}"));
            if !p.exists() {
                break;
            }
            v.push(p);
        }
        v
    };
    let deadline = Instant::now() + SOON;
    while Instant::now() < deadline {
        let n: usize = parts(&dir.0)
            .iter()
            .map(|p| tracefile::read_all(p).map_or(0, |t| enters(&t.events, server_addr).len()))
            .sum();
        if n >= N {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    rec.signal(libc::SIGINT);
    assert!(rec.wait(), "{:#?}", rec.stderr());
    let files = parts(&dir.0);
    assert!(files.len() >= 2, "no rotation: {files:?}");
    let mut all = Vec::new();
    for (i, p) in files.iter().enumerate() {
        let meta = std::fs::metadata(p).unwrap();
        assert!(
            meta.len() <= 4096,
            "{} is {} bytes",
            p.display(),
            meta.len()
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let t = read(p);
        assert!(t.damage.is_empty());
        assert_eq!(t.header.part, i as u32);
        all.extend(t.events);
    }
    let en = enters(&all, server_addr);
    assert_eq!(en.len(), N);
    let distinct: HashSet<_> = en.iter().map(|e| e.sock().map(|s| s.lport)).collect();
    assert_eq!(distinct.len(), N);
    // Exporting the parts together gives every event once.
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (ok, out, err) = export(&refs, "ndjson");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), all.len());
}

/// No root needed: damaged and foreign files are reported with their byte offsets, and what
/// can be read is still exported.
#[test]
fn export_reports_damage_by_offset_and_keeps_the_rest() {
    let dir = TempDir::new("damage");
    let file = dir.0.join("t.twt");
    let events = tracefile::synthetic::events(2000, 7);
    let header =
        tracefile::Header::capture(twtrace::kernel::sysinfo::Clock { offset_ns: 0 }, 250, &[]);
    let mut w = tracefile::Writer::create(
        &file,
        &header,
        tracefile::WriterOptions {
            block_bytes: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    for e in &events {
        w.write(e).unwrap();
    }
    w.finish(&tracefile::Summary::default()).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let mut r = Reader::open(&file).unwrap();
    let good = r.events().filter(|i| i.is_ok()).count();
    assert!(good > 1000 && good < events.len(), "{good}");

    let (ok, out, err) = export(&[&file], "ndjson");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), good);
    assert!(err.contains("warning") && err.contains("byte "), "{err}");

    let foreign = dir.0.join("x.json");
    std::fs::write(&foreign, "{\"kind\":\"enter\"}\n").unwrap();
    let (ok, _, err) = export(&[&foreign, &file], "csv");
    assert!(!ok);
    assert!(
        err.contains("byte 0") && err.contains("not a twtrace"),
        "{err}"
    );
}

/// Several hosts' files in one report: each host gets its own section with its own counts.
#[test]
fn report_takes_several_hosts() {
    let dir = TempDir::new("hosts");
    let mut files = Vec::new();
    let mut want = Vec::new();
    for (i, host) in ["alpha", "beta"].iter().enumerate() {
        let events = tracefile::synthetic::events(3000 + 1000 * i, 11 + i as u64);
        let mut header =
            tracefile::Header::capture(twtrace::kernel::sysinfo::Clock { offset_ns: 0 }, 250, &[]);
        header.hostname = host.to_string();
        let path = dir.0.join(format!("{host}.twt"));
        let mut w =
            tracefile::Writer::create(&path, &header, tracefile::WriterOptions::default()).unwrap();
        for e in &events {
            w.write(e).unwrap();
        }
        w.finish(&tracefile::Summary::default()).unwrap();
        let entered = events
            .iter()
            .filter(|e| matches!(e.body, Body::Enter { .. }))
            .count();
        want.push((host.to_string(), entered));
        files.push(path);
    }
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (ok, out, err) = report(&refs);
    assert!(ok, "{err}");
    let beta_at = out.find("\nbeta ").expect("beta section");
    let (alpha, beta) = out.split_at(beta_at);
    assert!(alpha.starts_with("alpha "), "{out}");
    for ((host, entered), section) in want.iter().zip([alpha, beta]) {
        assert!(
            section.contains(&format!("entered TIME_WAIT: {entered} ")),
            "{host}: {section}"
        );
    }
}

/// `-v` turns the userspace log on (env_logger, nothing printed at info without it), before
/// or after the subcommand; the session logs how it ended.
#[test]
fn verbose_turns_the_log_on() {
    let _k = kernel_lock();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("running twtrace live");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let quiet = ["--plain", "--duration", "0.3", "--port", "1"];
    let err = run(&[&["live"][..], &quiet].concat());
    assert!(!err.contains(" INFO "), "{err}");
    for v in [&["-v", "live"][..], &["live", "-v"]] {
        let err = run(&[v, &quiet].concat());
        assert!(
            err.contains("INFO  twtrace::pipeline::session] session ended (Stopped)"),
            "{v:?}: {err}"
        );
        assert!(!err.contains("DEBUG"), "{err}");
    }
}
