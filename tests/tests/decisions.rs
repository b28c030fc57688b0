//! Verdicts come from the kernel's values at the moment they apply: a sysctl changed moments
//! before a connect() fails decides that failure's refusal, and its `netns` line shows with
//! it, not seconds later from a polled copy.
//!
//! Each test: a client namespace with four ephemeral ports, all held by TIME_WAIT sockets
//! toward a server across a veth (non-loopback addresses, so `tcp_tw_reuse=2` refuses), then
//! a sysctl change followed within 100 ms by a connect() that fails.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use twtrace::experiments::workload::{connect_many, serve, FirstCloser, Server};
use twtrace::host::netns::NetNs;
use twtrace::pipeline::event::{Body, Event, Refusal};
use twtrace::pipeline::tracer::Background;
use twtrace_tests::*;

const PORTS: usize = 4;
const REUSE_DELAY: &str = "net.ipv4.tcp_tw_reuse_delay";

struct Setup {
    cli: NetNs,
    // Kept alive for the test's length (dropped in reverse order: server, then namespaces).
    _srv: NetNs,
    server: Server,
    tracer: Background,
}

/// Client and server namespaces joined by a veth; `tune` sets the client's sysctls before the
/// ports are filled with TIME_WAIT sockets (client closes first).
fn setup(tune: impl FnOnce(&NetNs)) -> Setup {
    let cli = NetNs::new().unwrap();
    let srv = NetNs::new().unwrap();
    cli.veth_to("twd0", "198.18.0.1/30", &srv, "twd1", "198.18.0.2/30")
        .unwrap();
    cli.sysctl("net.ipv4.ip_local_port_range", "40000 40003")
        .unwrap();
    tune(&cli);
    let tracer = trace(&cli);
    let server = serve(
        &srv,
        "198.18.0.2:8080".parse().unwrap(),
        FirstCloser::Client,
        Duration::ZERO,
    )
    .unwrap();
    Setup {
        cli,
        _srv: srv,
        server,
        tracer,
    }
}

/// Fills every port with a TIME_WAIT socket toward the server and waits until the tracer saw
/// them all alive (and the server's FINs made them real TIME_WAIT). A socket reset right at
/// its birth (seen rarely on a loaded machine; reported as `rst`) gives its port back: then
/// one more connection takes it (at most three times). Tops up what is missing when called
/// again.
fn fill(s: &Setup) {
    for _ in 0..4 {
        let ev = s.tracer.events();
        let n = PORTS.saturating_sub(alive(&ev));
        if n == 0 {
            return;
        }
        let made = enters(&ev).len() + n;
        connect_many(&s.cli, s.server.addr, n, FirstCloser::Client).unwrap();
        let ev = s.tracer.wait_for(SOON, |ev| enters(ev).len() >= made);
        assert!(enters(&ev).len() >= made, "{ev:#?}");
        std::thread::sleep(Duration::from_millis(200));
        let ev = s.tracer.events();
        if alive(&ev) >= PORTS {
            return;
        }
        eprintln!(
            "decisions: {} TIME_WAIT socket(s) died young, connecting again: {:?}",
            PORTS - alive(&ev),
            exits(&ev)
        );
    }
    panic!("could not fill {PORTS} ports: {:#?}", s.tracer.events());
}

/// Timewait sockets the tracer has seen born and not yet die.
fn alive(ev: &[Event]) -> usize {
    enters(ev).len().saturating_sub(exits(ev).len())
}

/// One connect() from the client namespace; `Ok` with the local address if it found a port.
fn try_connect(ns: &NetNs, dst: SocketAddr) -> Result<SocketAddr, i32> {
    ns.run(
        move || match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
            Ok(s) => Ok(s.local_addr().unwrap()),
            Err(e) => Err(e.raw_os_error().unwrap_or(0)),
        },
    )
    .unwrap()
}

/// Sets `key` to `value` in the client namespace and at once makes a connect() that must fail,
/// both from one thread already inside the namespace (no thread is started between them);
/// returns the failure's event (waited for) and when the sysctl was written. The two must
/// come within 100 ms: on a machine so loaded that they do not, the step is made again (the
/// old value back, then the new one), at most three times.
fn change_then_fail(s: &Setup, key: &str, value: &str) -> (Event, u64) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let before = s.cli.read_sysctl(key).unwrap();
    let dst = s.server.addr;
    for attempt in 1..=3 {
        if attempt > 1 {
            s.cli.sysctl(key, &before).unwrap();
        }
        let (path, value_owned) = (path.clone(), value.to_string());
        let (changed, took, r) = s
            .cli
            .run(move || {
                let changed = kernel::monotonic_ns();
                let t0 = Instant::now();
                std::fs::write(&path, &value_owned).unwrap();
                let r = match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
                    Ok(s) => Ok(s.local_addr().unwrap()),
                    Err(e) => Err(e.raw_os_error().unwrap_or(0)),
                };
                (changed, t0.elapsed(), r)
            })
            .unwrap();
        if took >= Duration::from_millis(100) {
            eprintln!("decisions: {key}={value} and the connect() took {took:?}: again");
            continue;
        }
        assert_eq!(
            r,
            Err(libc::EADDRNOTAVAIL),
            "{key}={value}: connect() should find no port: {:#?}",
            s.tracer.events()
        );
        let seen = |ev: &[Event]| {
            ev.iter()
                .find(|e| e.ts_ns >= changed && matches!(e.body, Body::ConnectFail { .. }))
                .cloned()
        };
        let ev = s.tracer.wait_for(SOON, |ev| seen(ev).is_some());
        let fail = seen(&ev).unwrap_or_else(|| panic!("no connect_fail after {key}={value}"));
        return (fail, changed);
    }
    panic!("{key}={value}: the change and the connect() never came within 100 ms of each other");
}

fn refusal(e: &Event) -> Refusal {
    match &e.body {
        Body::ConnectFail { refusal, .. } => *refusal,
        b => panic!("not a connect_fail: {b:?}"),
    }
}

/// Whether the namespace's state as its `netns` lines tell it at the failure `to` (the last
/// line at or before it) satisfies `pred`, and that line came no earlier than `from` unless
/// the value was already in force before the change.
fn netns_line_between(
    s: &Setup,
    from: u64,
    to: u64,
    pred: impl Fn(&twtrace::host::sysctls::Sysctls) -> bool,
) -> bool {
    let lines: Vec<(u64, twtrace::host::sysctls::Sysctls)> = s
        .tracer
        .events()
        .iter()
        .filter_map(|e| match &e.body {
            Body::Netns { sysctls, .. } if e.ts_ns <= to => Some((e.ts_ns, sysctls.clone())),
            _ => None,
        })
        .collect();
    let Some((at, last)) = lines.last() else {
        return false;
    };
    if !pred(last) {
        return false;
    }
    // Already shown before the change: only if the line before the change said so too.
    *at >= from
        || lines
            .iter()
            .rev()
            .find(|(t, _)| *t < from)
            .is_some_and(|(_, c)| pred(c))
}

#[test]
fn tw_reuse_changes_decide_the_next_refusal() {
    let has_delay = kernel::features().has_sysctl(REUSE_DELAY);
    let s = setup(|ns| {
        ns.sysctl("net.ipv4.tcp_tw_reuse", "2").unwrap();
        if has_delay {
            // Long enough that tw_reuse=1 refuses these sockets as too young.
            ns.sysctl(REUSE_DELAY, "60000").unwrap();
        }
    });
    fill(&s);
    // Before 6.13 a socket is reusable with tw_reuse=1 a second after its last timestamp: the
    // "1" step would succeed there, so it runs only where the delay is a sysctl.
    let mut steps = vec![("2", Refusal::LoopbackOnly)];
    if has_delay {
        steps.push(("1", Refusal::TooYoung));
    } else {
        kernel::partial(
            "tw_reuse_changes_decide_the_next_refusal",
            "no tcp_tw_reuse_delay: the tw_reuse=1 step is left out",
        );
    }
    steps.extend([
        ("0", Refusal::ReuseOff),
        ("2", Refusal::LoopbackOnly),
        ("0", Refusal::ReuseOff),
    ]);
    for (value, want) in steps {
        let (fail, changed) = change_then_fail(&s, "net.ipv4.tcp_tw_reuse", value);
        assert_eq!(
            refusal(&fail),
            want,
            "tcp_tw_reuse={value}: {:#?}",
            s.tracer.events()
        );
        let v: u8 = value.parse().unwrap();
        assert!(
            netns_line_between(&s, changed, fail.ts_ns, |c| c.tw_reuse == Some(v)),
            "tcp_tw_reuse={value}: no netns line with it by the failure: {:#?}",
            s.tracer.events()
        );
    }
}

#[test]
fn tw_reuse_delay_changes_decide_the_next_refusal() {
    if !kernel::features().has_sysctl(REUSE_DELAY) {
        kernel::skip(
            "tw_reuse_delay_changes_decide_the_next_refusal",
            "no tcp_tw_reuse_delay on this kernel (before 6.13)",
        );
        return;
    }
    let s = setup(|ns| {
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1").unwrap();
        ns.sysctl(REUSE_DELAY, "60000").unwrap();
    });
    fill(&s);
    let (fail, _) = change_then_fail(&s, REUSE_DELAY, "60000");
    assert_eq!(refusal(&fail), Refusal::TooYoung);
    // 1 ms: the kernel reuses at once (no failure to judge), and this connection leaves one
    // more TIME_WAIT socket, younger than the others.
    s.cli.sysctl(REUSE_DELAY, "1").unwrap();
    let reused = try_connect(&s.cli, s.server.addr);
    assert!(reused.is_ok(), "delay 1 ms: a port should be reused");
    let ev = s.tracer.wait_for(SOON, |ev| {
        exits(ev)
            .iter()
            .any(|x| x.reason == twtrace::pipeline::event::ExitReason::Reused)
    });
    assert!(
        exits(&ev)
            .iter()
            .any(|x| x.reason == twtrace::pipeline::event::ExitReason::Reused),
        "{ev:#?}"
    );
    // Long enough for /proc's copy to be read again with 1 ms (it is re-read every second).
    let refresh = twtrace::host::sysctls::SysctlWatch::REFRESH + Duration::from_millis(300);
    std::thread::sleep(refresh);
    if alive(&s.tracer.events()) < PORTS {
        // The new connection's timewait socket was killed young by an RST (seen in the 7.3
        // guest: 3 ms old, in ksoftirqd), so its port is free: take it again under the 60 s
        // delay, then go back to 1 ms for the polled copy.
        s.cli.sysctl(REUSE_DELAY, "60000").unwrap();
        fill(&s);
        s.cli.sysctl(REUSE_DELAY, "1").unwrap();
        std::thread::sleep(refresh);
    }
    // Back to 60 s: that polled copy (1 ms) would call every socket old enough and the refusal
    // `unknown`; the kernel's value at the failure says too young.
    let (fail, changed) = change_then_fail(&s, REUSE_DELAY, "60000");
    assert_eq!(
        refusal(&fail),
        Refusal::TooYoung,
        "{:#?}",
        s.tracer.events()
    );
    assert!(netns_line_between(&s, changed, fail.ts_ns, |c| c
        .tw_reuse_delay_ms
        == Some(60_000)));
}

#[test]
fn tcp_timestamps_changes_show_with_the_next_failure() {
    let has_delay = kernel::features().has_sysctl(REUSE_DELAY);
    let s = setup(|ns| {
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1").unwrap();
        if has_delay {
            ns.sysctl(REUSE_DELAY, "1").unwrap();
        }
    });
    // Connections made right after timestamps are turned off carry none: their TIME_WAIT
    // sockets can never be reused, whatever tw_reuse and the delay say.
    let changed = kernel::monotonic_ns();
    s.cli.sysctl("net.ipv4.tcp_timestamps", "0").unwrap();
    fill(&s);
    let r = try_connect(&s.cli, s.server.addr);
    assert_eq!(r, Err(libc::EADDRNOTAVAIL));
    let first = |ev: &[Event]| {
        ev.iter()
            .find(|e| matches!(e.body, Body::ConnectFail { .. }))
            .cloned()
    };
    let ev = s.tracer.wait_for(SOON, |ev| first(ev).is_some());
    let fail = first(&ev).expect("a connect_fail");
    assert_eq!(refusal(&fail), Refusal::NoTimestamps, "{ev:#?}");
    assert!(netns_line_between(&s, changed, fail.ts_ns, |c| c
        .timestamps
        == Some(0)));
    // On again: the sockets still hold no timestamps (still refused), and the namespace's
    // line shows the new value with this failure.
    let (fail, changed) = change_then_fail(&s, "net.ipv4.tcp_timestamps", "1");
    assert_eq!(refusal(&fail), Refusal::NoTimestamps);
    assert!(
        netns_line_between(&s, changed, fail.ts_ns, |c| c.timestamps == Some(1)),
        "{:#?}",
        s.tracer.events()
    );
}
