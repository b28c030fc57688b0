//! `twtrace report --html`, in a real browser: a real `twtrace record` of real TCP in a
//! private network namespace, the page written from it, then Debian's chromium (headless,
//! itself in a network namespace of its own with nothing up, so it cannot reach anything)
//! renders it to a PNG (not blank) and dumps its DOM (every chart there, and the text
//! report's key numbers). Needs root (record loads the kernel programs; chromium is
//! installed by `cargo xtask setup --browser` when missing).

mod common;
use common::{Recorder, TempDir};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use twtrace::analysis::html::CHARTS_PER_HOST;
use twtrace::experiments::workload::{connect_many, serve, FirstCloser};
use twtrace::host::netns::NetNs;
use twtrace::sink::tracefile;

const BIN: &str = env!("CARGO_BIN_EXE_twtrace");
const SOON: Duration = Duration::from_secs(20);
/// Long enough for a cold chromium start on a loaded two-core machine.
const BROWSER_BUDGET: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cmd`, killing it past `budget`; panics unless it succeeded.
fn run_bounded(cmd: &mut Command, budget: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    // Pipes are drained by threads so that a chatty child cannot block on a full pipe.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + budget;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} took longer than {budget:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Debian's chromium, installed through the project's setup step if missing. A missing
/// browser is a failure, not a skip: CI must not pass without having looked at the page.
fn chromium() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let t0 = Instant::now();
    let o = run_bounded(
        Command::new(cargo)
            .args(["xtask", "setup", "--browser"])
            .current_dir(workspace()),
        Duration::from_secs(600),
    );
    // What setup said (whether it installed, and how long that took) goes to the CI log.
    eprint!("{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("browser setup: {:.1?}", t0.elapsed());
    let p = PathBuf::from("/usr/bin/chromium");
    assert!(
        p.is_file(),
        "chromium is not installed after `cargo xtask setup --browser`"
    );
    p
}

/// chromium headless with a throw-away profile, in a new network namespace (unshare -n:
/// only a loopback that is down), so that it has no network at all.
fn browser(chromium: &Path, profile: &Path, args: &[&str], page: &Path) -> Output {
    let mut cmd = Command::new("unshare");
    cmd.arg("--net")
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()));
    run_bounded(&mut cmd, BROWSER_BUDGET)
}

fn count(path: &Path, kind: &str) -> usize {
    tracefile::read_all(path)
        .map(|t| t.events.iter().filter(|e| e.kind() == kind).count())
        .unwrap_or(0)
}

/// Waits (bounded) until the file being written holds `n` events of `kind`.
/// The TIME_WAIT sockets alive in `ns` as the kernel counts them (`/proc/net/sockstat`).
fn timewait_in(ns: &NetNs) -> usize {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/sockstat"))
        .unwrap()
        .unwrap();
    twtrace::host::procnet::parse_sockstat_tw(&text).expect("a TCP tw count in sockstat") as usize
}

fn wait_for(path: &Path, kind: &str, n: usize) {
    let deadline = Instant::now() + SOON;
    while count(path, kind) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the browser's DOM serialisation makes of a line of text.
fn in_dom(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[test]
fn the_page_renders_in_chromium_with_the_reports_numbers() {
    let t0 = Instant::now();
    let chromium = chromium();
    let installed = t0.elapsed();

    // Real traffic: a namespace with 20 ephemeral ports and no tcp_tw_reuse. 20 connections
    // toward A hold every port in TIME_WAIT, so more connect()s toward A fail; B still works
    // (another 4-tuple). Deleting the namespace ends them all (purged).
    const PORTS: usize = 20;
    const TO_B: usize = 5;
    let dir = TempDir::new("html");
    let file = dir.0.join("t.twt");
    let ns = NetNs::new().unwrap();
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40019")
        .unwrap();
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    let ino = ns.inode();
    // The ports as well as the namespace: once the namespace is deleted its inode number
    // may soon name another test's new namespace.
    let mut rec = Recorder::start(&[
        "-o",
        file.to_str().unwrap(),
        "--netns",
        &ino.to_string(),
        "--port",
        "18080",
        "--port",
        "19090",
        "--duration",
        "60",
    ]);
    // Fixed service ports outside the ephemeral range (port 0 would take two of the 20);
    // the namespace is the test's own, so nothing else holds them.
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let a = serve(&ns, at(18080), FirstCloser::Client, Duration::ZERO).unwrap();
    let b = serve(&ns, at(19090), FirstCloser::Client, Duration::ZERO).unwrap();
    connect_many(&ns, a.addr, PORTS, FirstCloser::Client).unwrap();
    // A TIME_WAIT socket reset at its birth (seen now and then on a loaded machine) gives its
    // port back: one connection more for each, until the kernel counts all 20 held (bounded).
    let mut made = PORTS;
    for _ in 0..10 {
        // The last closes finish as the server reads EOF: count once they have (bounded).
        let mut held = timewait_in(&ns);
        for _ in 0..20 {
            if held >= PORTS {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            held = timewait_in(&ns);
        }
        if held >= PORTS {
            break;
        }
        connect_many(&ns, a.addr, PORTS - held, FirstCloser::Client).unwrap();
        made += PORTS - held;
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..3 {
        assert!(
            connect_many(&ns, a.addr, 1, FirstCloser::Client).is_err(),
            "the pool toward A should be full"
        );
    }
    connect_many(&ns, b.addr, TO_B, FirstCloser::Client).unwrap();
    wait_for(&file, "enter", made + TO_B);
    drop((a, b));
    drop(ns);
    wait_for(&file, "exit", made + TO_B);
    rec.stop();

    // The text report and the page, from the same file.
    let text = run_bounded(
        // Wide enough for every column: the page shows them all.
        Command::new(BIN)
            .arg("report")
            .arg(&file)
            .args(["--width", "1000"]),
        SOON,
    );
    let text = String::from_utf8(text.stdout).unwrap();
    let page = dir.0.join("report.html");
    let o = run_bounded(
        Command::new(BIN)
            .arg("report")
            .arg(&file)
            .arg("--html")
            .arg(&page),
        SOON,
    );
    assert!(o.stdout.is_empty(), "--html prints no report");
    let html = std::fs::read_to_string(&page).unwrap();
    eprintln!("page: {} bytes; text report:\n{text}", html.len());
    assert!(
        text.contains(&format!("entered TIME_WAIT: {} ", made + TO_B)),
        "{text}"
    );

    // The DOM as the browser built it.
    let profile = TempDir::new("html-profile");
    let t1 = Instant::now();
    let dom = browser(&chromium, &profile.0, &["--dump-dom"], &page);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert_eq!(
        dom.matches("<svg").count(),
        CHARTS_PER_HOST,
        "one host, every chart"
    );
    // The key numbers of the text report: totals, exits by reason, the busiest
    // destination's row (A: its 20 sockets), and the port pool in the pressure chart.
    let key_lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("entered TIME_WAIT:")
                || l.starts_with("exits:")
                || l.contains(" events over ")
        })
        .collect();
    assert_eq!(key_lines.len(), 3, "{text}");
    for l in key_lines {
        assert!(dom.contains(&in_dom(l)), "not in the DOM: {l:?}");
    }
    let dest = format!("127.0.0.1:{}", a_port(&text));
    let row = text
        .lines()
        .find(|l| l.contains(&dest))
        .unwrap_or_else(|| panic!("no row for {dest}:\n{text}"));
    assert!(
        dom_rows(&dom).contains(&words(row)),
        "the top destination's row: {row:?}"
    );
    assert!(
        dom.contains(&format!("→ {dest} from 127.0.0.1")),
        "its legend"
    );
    assert!(
        dom.contains("40000-40019 (20 ports)"),
        "the exhaustion line's pool"
    );

    // The picture: not blank, and a fair share of it drawn.
    let shot = dir.0.join("page.png");
    browser(
        &chromium,
        &profile.0,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2200",
        ],
        &page,
    );
    let rendered = t1.elapsed();
    let (w, h, px) = decode(&shot);
    assert_eq!((w, h), (1280, 2200));
    let bg = px[0];
    let drawn = px.iter().filter(|p| **p != bg).count();
    let mut colours: Vec<[u8; 3]> = px.clone();
    colours.sort_unstable();
    colours.dedup();
    let share = drawn as f64 / px.len() as f64;
    eprintln!(
        "screenshot: {w}x{h}, {:.1} % not background, {} colours; chromium setup {installed:.1?}, \
         both renders {rendered:.1?}",
        share * 100.0,
        colours.len()
    );
    assert!(colours.len() > 16, "{} colours", colours.len());
    assert!(share > 0.05, "only {:.2} % drawn", share * 100.0);
}

/// Text split on whitespace and joined by one space.
fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text of every table row of the DOM, a space between cells (see [`words`]).
fn dom_rows(dom: &str) -> Vec<String> {
    dom.split("<tr")
        .skip(1)
        .filter_map(|r| r.split_once("</tr>").map(|(row, _)| row))
        .map(|row| {
            let row = row.replace("</td>", " ").replace("</th>", " ");
            let mut text = String::new();
            let mut in_tag = true; // the rest of the <tr …> tag itself
            for c in row.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            words(
                &text
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&"),
            )
        })
        .collect()
}

/// The port of the report's busiest destination (first row of the per-peer table).
fn a_port(text: &str) -> u16 {
    a_addr_str(text)
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no peer row:\n{text}"))
}

fn a_addr_str(text: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("Per peer"));
    lines.next();
    // The REMOTE column's place, from the header (a WORKLOAD column comes and goes).
    let at = lines
        .next()
        .and_then(|h| h.split_whitespace().position(|c| c == "REMOTE"))
        .unwrap_or(2);
    lines
        .next()
        .and_then(|row| row.split_whitespace().nth(at))
        .unwrap_or_default()
        .to_string()
}

/// A PNG's size and RGB pixels.
fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{info:?}");
    let px = buf[..info.buffer_size()]
        .chunks(ch)
        .map(|p| match ch {
            1 | 2 => [p[0]; 3],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    (info.width, info.height, px)
}

/// An unwritable path is an error that names it, before any trace is read.
#[test]
fn an_unwritable_page_is_a_clear_error() {
    let dir = TempDir::new("html-err");
    let trace = workspace().join("twtrace/tests/fuzz-regressions/valid-60-events.twt");
    let out = Command::new(BIN)
        .arg("report")
        .arg(&trace)
        .arg("--html")
        .arg(dir.0.join("no/such/dir/r.html"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write") && err.contains("no/such/dir/r.html"),
        "{err}"
    );
    // The trace itself as the page: refused, the trace left whole.
    let copy = dir.0.join("t.twt");
    std::fs::copy(&trace, &copy).unwrap();
    let out = Command::new(BIN)
        .arg("report")
        .arg(&copy)
        .arg("--html")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is one of the trace files"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&trace).unwrap()
    );
    // The same trace to a writable path: a page with every chart.
    let ok = dir.0.join("r.html");
    let out = Command::new(BIN)
        .arg("report")
        .arg(&trace)
        .arg("--html")
        .arg(&ok)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&ok).unwrap();
    assert_eq!(html.matches("<svg").count(), CHARTS_PER_HOST);
}

/// Damaged, truncated and header-only traces: a page or a clear error, never a panic.
#[test]
fn damaged_traces_make_a_page_or_an_error() {
    let dir = TempDir::new("html-damaged");
    let fixtures = workspace().join("twtrace/tests/fuzz-regressions");
    let mut n = 0;
    for e in std::fs::read_dir(&fixtures).unwrap() {
        let trace = e.unwrap().path();
        if trace.extension().is_none_or(|x| x != "twt") {
            continue;
        }
        n += 1;
        let page = dir.0.join("p.html");
        let out = Command::new(BIN)
            .arg("report")
            .arg(&trace)
            .arg("--html")
            .arg(&page)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // 0: a page; 1: an error message. A panic exits with 101.
        assert!(
            matches!(out.status.code(), Some(0 | 1)) && !err.contains("panicked"),
            "{}: {}\n{err}",
            trace.display(),
            out.status
        );
        if out.status.success() {
            let html = std::fs::read_to_string(&page).unwrap();
            assert_eq!(
                html.matches("<svg").count(),
                CHARTS_PER_HOST,
                "{}",
                trace.display()
            );
        }
    }
    assert!(n >= 3, "fixtures not found in {}", fixtures.display());
}
