//! The benchmark's load generator against the live kernel: it must make exactly the TIME_WAIT
//! sockets it claims (client side, one per connection), honour its bounds and its pace, and
//! twtrace must see what it makes. Each test owns its network namespace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use twtrace::host::netns::NetNs;
use twtrace::pipeline::event::ExitReason;
use twtrace::testkit::loadgen::{self, LoadSpec, NsTuning};
use twtrace_tests::*;

fn spec(workers: usize, max_conns: u64, max_time: Duration) -> LoadSpec {
    LoadSpec {
        workers,
        max_conns,
        max_time,
        ..LoadSpec::default()
    }
}

/// Without reuse, N connections leave N TIME_WAIT sockets alive, all counted by the kernel.
#[test]
fn every_connection_leaves_one_timewait_socket() {
    let ns = NetNs::new().unwrap();
    NsTuning::accumulate(100_000).apply(&ns).unwrap();
    let r = loadgen::run(&ns, &spec(3, 601, Duration::from_secs(20))).unwrap();
    assert_eq!(r.conns, 601, "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.tw_born, 601, "{r:?}");
    assert_eq!((r.tw_recycled, r.tw_overflow), (0, 0), "{r:?}");
    assert_eq!(loadgen::tw_alive(&ns).unwrap(), 601);
    // The workers' CPU is measured (a connection costs something). How much is the bench's
    // business (`cargo xtask bench`), not a test's: a busy host or an emulated CPU is slower.
    let us = r.cpu_us_per_conn().unwrap();
    assert!(us.is_finite() && us > 0.0, "{us} µs per connection: {r:?}");
}

/// Several destination addresses hold more TIME_WAIT sockets than one port range could.
#[test]
fn destination_addresses_multiply_the_tuples() {
    let ns = NetNs::new().unwrap();
    let mut t = NsTuning::accumulate(100_000);
    t.port_range = (40000, 40199); // 200 ports, of which connect() uses about half at first
    t.apply(&ns).unwrap();
    let mut s = spec(1, 600, Duration::from_secs(20));
    s.dst_addrs = 4;
    let r = loadgen::run(&ns, &s).unwrap();
    assert_eq!((r.conns, r.errors), (600, 0), "{r:?}");
    assert_eq!(loadgen::tw_alive(&ns).unwrap(), 600);
}

/// With a small port range and reuse on, connect() takes over TIME_WAIT sockets: the number
/// alive stays bounded and reuses are counted.
#[test]
fn recycling_keeps_a_steady_state() {
    if !kernel::features().has_sysctl("net.ipv4.tcp_tw_reuse_delay") {
        kernel::skip(
            "recycling_keeps_a_steady_state",
            "no tcp_tw_reuse_delay on this kernel (before 6.13): a timewait socket is reusable \
             only from the next second on, so 400 ports cannot carry 3000 connections at once",
        );
        return;
    }
    let ns = NetNs::new().unwrap();
    NsTuning::recycling(200).apply(&ns).unwrap();
    let r = loadgen::run(&ns, &spec(2, 3000, Duration::from_secs(20))).unwrap();
    assert_eq!((r.conns, r.errors), (3000, 0), "{r:?}");
    assert_eq!(r.tw_born, 3000);
    assert!(r.tw_recycled >= 3000 - 2 * 200, "{r:?}");
    assert!(loadgen::tw_alive(&ns).unwrap() <= 2 * 200);
    assert!(r.tw_events_per_s() > r.conns_per_s());
}

/// The time bound ends a run whatever the count, and the count bound whatever the time.
#[test]
fn runs_are_bounded() {
    let ns = NetNs::new().unwrap();
    NsTuning::recycling(2000).apply(&ns).unwrap();
    let t0 = Instant::now();
    let r = loadgen::run(&ns, &spec(2, u64::MAX, Duration::from_millis(300))).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(
        r.conns > 0 && r.elapsed >= Duration::from_millis(290),
        "{r:?}"
    );
    let r = loadgen::run(&ns, &spec(2, 7, Duration::from_secs(30))).unwrap();
    assert_eq!(r.conns, 7);
}

/// A paced run never exceeds its target rate. (Whether it reaches it is a matter of the
/// machine's speed: the bench measures that, tests do not.)
#[test]
fn target_rate_is_never_exceeded() {
    let ns = NetNs::new().unwrap();
    NsTuning::recycling(2000).apply(&ns).unwrap();
    let mut s = spec(2, u64::MAX, Duration::from_secs(1));
    s.rate = Some(2000.0);
    let r = loadgen::run(&ns, &s).unwrap();
    let rate = r.conns_per_s();
    assert!(r.conns > 0 && r.errors == 0, "{r:?}");
    assert!(rate <= 2000.0 * 1.05, "{rate} > target: {r:?}");
    s.rate = Some(-1.0);
    assert!(loadgen::run(&ns, &s).is_err());
}

/// twtrace sees every TIME_WAIT socket the generator makes (no reuse: one birth each).
#[test]
fn twtrace_sees_every_generated_timewait_socket() {
    let ns = NetNs::new().unwrap();
    NsTuning::accumulate(100_000).apply(&ns).unwrap();
    let tracer = trace(&ns);
    let rsts_before = out_rsts(&ns);
    let r = loadgen::run(&ns, &spec(2, 2000, Duration::from_secs(20))).unwrap();
    assert_eq!((r.conns, r.errors), (2000, 0), "{r:?}");
    tracer.wait_for(SOON, |ev| enters(ev).len() >= 2000);
    std::thread::sleep(Duration::from_millis(300));
    let (ev, summary) = tracer.stop().unwrap();
    let rsts = out_rsts(&ns) - rsts_before;
    let born = enters(&ev);
    // On a mismatch, what tells a double birth from a stray one: the tuples born twice and
    // the lifecycle's own counts (they showed a re-arm taken for a death and a birth in the
    // 7.3 guest, 391030b).
    let mut tuples: HashMap<(SocketAddr, SocketAddr), Vec<&Enter>> = HashMap::new();
    for b in &born {
        tuples
            .entry((addr(&b.sock, true), addr(&b.sock, false)))
            .or_default()
            .push(b);
    }
    let twice: Vec<_> = tuples.values().filter(|v| v.len() > 1).take(3).collect();
    assert_eq!(
        born.len(),
        2000,
        "born twice: {twice:#?}\nexits: {:#?}\n{:?}\nskipped runs: {:?}",
        &exits(&ev)[..exits(&ev).len().min(5)],
        summary.stats,
        summary.skipped_by_program
    );
    // None dies in the run (60 s timers, no reuse), except by an RST the namespace's own
    // kernel counted sending: loopback workloads see a fresh timewait socket killed by an
    // in-window RST now and then (seen in the 7.3 guest: one in 2 000, 2 ms old; the
    // reasons tests meet the same race). Any other exit is a death twtrace made up.
    let died = exits(&ev);
    let by_rst = died.iter().filter(|x| x.reason == ExitReason::Rst).count() as u64;
    assert!(
        by_rst as usize == died.len() && by_rst <= rsts,
        "{rsts} RSTs sent: {:?}",
        &died[..died.len().min(5)]
    );
    if by_rst > 0 {
        kernel::partial(
            "twtrace_sees_every_generated_timewait_socket",
            &format!("{by_rst} timewait socket(s) killed by an RST ({rsts} sent)"),
        );
    }
    assert_eq!(summary.lost, 0);
}

/// RSTs the namespace's TCP sent so far (`Tcp: OutRsts`).
fn out_rsts(ns: &NetNs) -> u64 {
    loadgen::netstat(ns).unwrap()["Tcp:OutRsts"]
}

/// With port reuse each connection is one entry and one `reused` exit, at a rate where the
/// slab hands a reused socket's memory straight to the next one on the same CPU (a naive
/// reading takes that for a timer re-arm and loses both events: HEAD 851cc74 saw 3-20 % here).
#[test]
fn twtrace_sees_every_reuse() {
    if !kernel::features().has_sysctl("net.ipv4.tcp_tw_reuse_delay") {
        kernel::skip(
            "twtrace_sees_every_reuse",
            "no tcp_tw_reuse_delay on this kernel (before 6.13): a timewait socket is reusable \
             only from the next second on, so 400 ports cannot carry 2000 connections at once",
        );
        return;
    }
    let ns = NetNs::new().unwrap();
    NsTuning::recycling(200).apply(&ns).unwrap();
    // Fill the ports first so that every measured connection reuses one.
    loadgen::run(&ns, &spec(1, 400, Duration::from_secs(20))).unwrap();
    let tracer = trace(&ns);
    let r = loadgen::run(&ns, &spec(1, 2000, Duration::from_secs(20))).unwrap();
    assert_eq!((r.conns, r.errors), (2000, 0), "{r:?}");
    assert!(r.tw_recycled > 1900, "{r:?}");
    let live =
        |ev: &[twtrace::pipeline::event::Event]| enters(ev).iter().filter(|e| !e.snapshot).count();
    tracer.wait_for(SOON, |ev| live(ev) >= 2000);
    std::thread::sleep(Duration::from_millis(300));
    let (ev, summary) = tracer.stop().unwrap();
    assert_eq!(summary.lost, 0);
    assert_eq!(live(&ev) as u64, r.tw_born);
    assert_eq!(exits(&ev).len() as u64, r.tw_recycled);
}
