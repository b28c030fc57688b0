//! The live view's numbers against the live kernel: real traffic in a private namespace, the
//! real tracer and census, the aggregator, and the screen rendered headless at 80×24 and
//! 200×50 — then read back as text and checked against what the workload did and what the
//! kernel counts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use twtrace::analysis::aggregate::{Aggregator, Report, SLOT_TW, SLOT_TW_FW2};
use twtrace::experiments::workload::{connect_many, serve, FirstCloser};
use twtrace::frontend::tui::{buffer_text, render_buffer, risk_at, HostInfo, Model, ViewState};
use twtrace::host::netns::NetNs;
use twtrace::host::sysctls::Sysctls;
use twtrace::kernel::sysinfo;
use twtrace::pipeline::event::Event;
use twtrace::pipeline::filter::Filter;
use twtrace::pipeline::tracer::{Tracer, TracerOptions};
use twtrace_tests::SOON;

/// Feeds the events of `ns` to `agg` (and keeps them in `seen`, for failure messages) until
/// `done` holds over the events seen (or `SOON` passes), then for a short while more so that
/// deaths right after birth are in too.
fn pump(
    tracer: &mut Tracer,
    agg: &mut Aggregator,
    seen: &mut Vec<Event>,
    ns: u32,
    done: impl Fn(&[Event]) -> bool,
) {
    let only = Filter {
        netns: vec![u64::from(ns)],
        ..Filter::default()
    };
    let mut batch: Vec<Event> = Vec::new();
    let mut deadline = Instant::now() + SOON;
    let mut settling = false;
    loop {
        tracer.wait(Duration::from_millis(20));
        tracer.poll(&mut batch);
        for e in batch.drain(..) {
            if only.matches(&e) {
                agg.observe(&e);
                seen.push(e);
            }
        }
        if Instant::now() >= deadline {
            return;
        }
        if !settling && done(seen) {
            settling = true;
            deadline = Instant::now() + Duration::from_millis(300);
        }
    }
}

/// Births seen toward `to`.
fn enters_toward(seen: &[Event], to: SocketAddr) -> usize {
    seen.iter()
        .filter(|e| e.kind() == "enter")
        .filter_map(|e| e.sock())
        .filter(|s| s.raddr == to.ip() && s.rport == to.port())
        .count()
}

fn timewait_toward(agg: &Aggregator, to: SocketAddr) -> u64 {
    agg.peers()
        .filter(|p| p.key.raddr == to.ip() && p.key.port == to.port())
        .map(|p| p.timewait_total())
        .sum()
}

/// Timewait sockets toward `to` as the kernel lists them in the namespace's `/proc/net/tcp`
/// (a timewait socket shows its substate there: 06 TIME_WAIT, 05 FIN_WAIT2; every client
/// socket of the workload is closed, so a 05 is a timewait socket too).
fn kernel_timewait_toward(ns: &NetNs, to: SocketAddr) -> u64 {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/tcp"))
        .unwrap()
        .unwrap();
    let want = match to {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => unreachable!("IPv4 only here"),
    };
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == want && (f[3] == "06" || f[3] == "05")
        })
        .count() as u64
}

/// The kernel's timewait count in `ns` (both substates), from the census.
fn kernel_timewait(tracer: &mut Tracer, ns: u64) -> (u64, twtrace::kernel::snapshot::NetnsCensus) {
    let c = tracer
        .census()
        .unwrap()
        .into_iter()
        .find(|c| c.netns == ns)
        .expect("our namespace is in the census");
    (c.counts[SLOT_TW] + c.counts[SLOT_TW_FW2], c)
}

/// The events must show what the kernel lists toward `to`; on a mismatch, say which events
/// were not births.
fn check_events(agg: &Aggregator, ns: &NetNs, seen: &[Event], to: SocketAddr) -> u64 {
    let got = timewait_toward(agg, to);
    let kernel = kernel_timewait_toward(ns, to);
    if got != kernel {
        let other: Vec<&Event> = seen
            .iter()
            .filter(|e| !matches!(e.kind(), "enter" | "promote" | "netns"))
            .collect();
        panic!(
            "events show {got} in TIME_WAIT toward {to}, the kernel lists {kernel}; events \
             other than enter/promote: {other:?}"
        );
    }
    got
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} on screen:\n{text}"))
}

/// The whitespace-separated cell right after `cell` on `line`.
fn cell_after<'a>(line: &'a str, cell: &str) -> &'a str {
    let cols: Vec<&str> = line.split_whitespace().collect();
    let i = cols
        .iter()
        .position(|c| *c == cell)
        .unwrap_or_else(|| panic!("{cell:?} not a cell of {line:?}"));
    cols.get(i + 1).copied().unwrap_or("")
}

#[test]
fn live_view_shows_what_the_kernel_did() {
    const A: usize = 20; // connections to the busy destination
    const B: usize = 5; // to the quiet one
    const MORE: usize = 7; // after the re-sync, to check the census is kept current
    const PORTS: u64 = 64;

    let ns = NetNs::new().unwrap();
    let ino = ns.inode();
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40063")
        .unwrap();
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    let mut tracer = Tracer::start(&TracerOptions {
        snapshot: false,
        ..TracerOptions::default()
    })
    .unwrap();
    let mut agg = Aggregator::default();
    agg.set_context(ino as u32, Sysctls::read_in(&ns.path()).unwrap());
    let host = HostInfo {
        host: sysinfo::hostname(),
        kernel: sysinfo::kernel_release().unwrap(),
        hooks: tracer.features().hook_table(),
        start_ns: sysinfo::monotonic_ns(),
    };

    // Census before any traffic: nothing in TIME_WAIT in a fresh namespace.
    let at = sysinfo::monotonic_ns();
    let (tw0, c0) = kernel_timewait(&mut tracer, ino);
    assert_eq!(tw0, 0, "{c0:?}");
    agg.set_census(at, &[c0]);

    let busy = serve(
        &ns,
        "127.0.0.1:0".parse().unwrap(),
        FirstCloser::Client,
        Duration::ZERO,
    )
    .unwrap();
    let quiet = serve(
        &ns,
        "127.0.0.2:0".parse().unwrap(),
        FirstCloser::Client,
        Duration::ZERO,
    )
    .unwrap();
    connect_many(&ns, busy.addr, A, FirstCloser::Client).unwrap();
    connect_many(&ns, quiet.addr, B, FirstCloser::Client).unwrap();
    let mut seen = Vec::new();
    pump(&mut tracer, &mut agg, &mut seen, ino as u32, |ev| {
        enters_toward(ev, busy.addr) >= A && enters_toward(ev, quiet.addr) >= B
    });
    assert_eq!(
        enters_toward(&seen, busy.addr),
        A,
        "one birth per connection"
    );
    assert_eq!(
        enters_toward(&seen, quiet.addr),
        B,
        "one birth per connection"
    );
    // What is in TIME_WAIT per destination, by the events and by the kernel's own table. (On
    // a loaded machine the kernel may kill some at once: the screen must show that too.)
    let busy_tw = check_events(&agg, &ns, &seen, busy.addr);
    let quiet_tw = check_events(&agg, &ns, &seen, quiet.addr);
    assert!(busy_tw > 0, "the kernel kept none: nothing to show");

    // Kept current from events since the first census: equals the kernel's count now.
    let kept = agg
        .netns_stats(ino as u32)
        .unwrap()
        .census
        .clone()
        .unwrap()
        .timewait();
    let at = sysinfo::monotonic_ns();
    let (tw1, c1) = kernel_timewait(&mut tracer, ino);
    assert_eq!(tw1, busy_tw + quiet_tw, "kernel: {c1:?}");
    assert_eq!(kept, tw1, "census kept from events vs the kernel's");
    agg.set_census(at, &[c1]);
    let drift = agg
        .netns_stats(ino as u32)
        .unwrap()
        .census
        .as_ref()
        .unwrap()
        .last_drift
        .unwrap();
    assert_eq!(drift[0] + drift[1], 0, "{drift:?}");

    // More traffic after the re-sync: shown without another census.
    connect_many(&ns, busy.addr, MORE, FirstCloser::Client).unwrap();
    pump(&mut tracer, &mut agg, &mut seen, ino as u32, |ev| {
        enters_toward(ev, busy.addr) >= A + MORE
    });
    assert_eq!(enters_toward(&seen, busy.addr), A + MORE);
    let busy_tw = check_events(&agg, &ns, &seen, busy.addr);
    agg.advance(sysinfo::monotonic_ns());
    let total = busy_tw + quiet_tw;
    let model = Model::build(&agg, &host);
    let view = ViewState::default();
    let busy_remote = busy.addr.to_string();
    let quiet_remote = quiet.addr.to_string();
    let pct = format!("{}%", (busy_tw * 100 + PORTS / 2) / PORTS);

    for (w, h) in [(80u16, 24u16), (200, 50)] {
        let buf = render_buffer(&model, &view, w, h);
        let text = buffer_text(&buf);
        eprintln!("{w}x{h}:\n{text}");
        // Peer rows: TIME_WAIT now per destination, and the port pressure out of 64.
        let row = line_with(&text, &busy_remote);
        assert_eq!(cell_after(row, &busy_remote), busy_tw.to_string(), "{row}");
        assert!(row.contains(&pct), "{pct} of the ports: {row}");
        let quiet_row = line_with(&text, &quiet_remote);
        assert_eq!(
            cell_after(quiet_row, &quiet_remote),
            quiet_tw.to_string(),
            "{quiet_row}"
        );
        // Sorted by TIME_WAIT: the busy destination above the quiet one.
        let y_busy = text.lines().position(|l| l.contains(&busy_remote)).unwrap();
        let y_quiet = text
            .lines()
            .position(|l| l.contains(&quiet_remote))
            .unwrap();
        assert_eq!(
            y_busy < y_quiet,
            busy_tw >= quiet_tw,
            "sorted by TW, then rate"
        );
        // 27 births in a second or two toward 64 ports with tw_reuse=0: at risk, and reuse would help
        // (loopback peer; timestamps not disproved).
        assert!(
            risk_at(&buf, 1, y_busy as u16) > twtrace::analysis::forecast::Risk::None,
            "busy row highlighted: {row}"
        );
        let note = if w >= 200 {
            "tw_reuse=1 would help"
        } else {
            "reuse=1 helps"
        };
        assert!(row.contains(note), "{row}");
        // Census line of our namespace: the kernel's count at the re-sync plus the events
        // since.
        let census = line_with(&text, &format!("ns {ino}"));
        assert!(census.contains(&format!("TIME-WAIT {total} ")), "{census}");
        assert!(census.contains("LISTEN 2"), "both servers listen: {census}");
        assert!(text.contains("ports 40000-40063 (64)"), "{text}");
        assert!(text.contains(&format!("lost {}", agg.totals().lost)));
    }

    // And the kernel agrees with the screen.
    let t = Instant::now();
    let (tw2, c2) = kernel_timewait(&mut tracer, ino);
    eprintln!(
        "census of {} namespaces took {:?}",
        twtrace::host::netns::all_namespaces().len(),
        t.elapsed()
    );
    assert_eq!(tw2, total, "{c2:?}");

    // The offline report from the same aggregator.
    let report = Report::render(&agg, 160);
    let row = line_with(&report, &busy_remote);
    assert_eq!(
        cell_after(row, &busy_remote),
        (A + MORE).to_string(),
        "{row}"
    );
    let row = line_with(&report, &quiet_remote);
    assert_eq!(cell_after(row, &quiet_remote), B.to_string(), "{row}");
    assert_eq!(
        tracer.lost_total(),
        0,
        "events lost: the counts above may be short"
    );
}
