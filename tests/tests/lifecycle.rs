//! The foundation's contract, against the live kernel: every TIME_WAIT entry and exit, on the
//! right side, with the right tuple, netns and timing. Each test owns its network namespace.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use twtrace::experiments::workload::{connect_many, serve, FirstCloser};
use twtrace::host::netns::NetNs;
use twtrace::pipeline::event::{ExitReason, Substate};
use twtrace_tests::*;

fn lo4() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Client closes first: exactly N enters, all on the client side, none on the server's.
#[test]
fn client_first_close_enters_on_the_client_side_only() {
    const N: usize = 20;
    let ns = NetNs::new().unwrap();
    let tracer = trace(&ns);
    let server = serve(&ns, lo4(), FirstCloser::Client, Duration::ZERO).unwrap();
    let clients = connect_many(&ns, server.addr, N, FirstCloser::Client).unwrap();
    tracer.wait_for(SOON, |ev| enters(ev).len() >= N);
    std::thread::sleep(Duration::from_millis(300)); // would-be extra events have time to show
    let (ev, summary) = tracer.stop().unwrap();
    let en = enters(&ev);
    assert_eq!(en.len(), N, "enters: {en:#?}");
    let clients: HashSet<SocketAddr> = clients.into_iter().collect();
    for e in &en {
        assert_eq!(e.sock.netns as u64, ns.inode());
        assert!(
            clients.contains(&addr(&e.sock, true)),
            "not a client tuple: {e:?}"
        );
        assert_eq!(addr(&e.sock, false), server.addr);
        assert!(!e.snapshot);
        // Born FIN_WAIT2 (orphan, our FIN acked before the server's FIN) or TIME_WAIT.
        assert!(
            matches!(e.substate, Substate::TimeWait | Substate::FinWait2),
            "{e:?}"
        );
        assert!(e.timeout_ms > 0 && e.timeout_ms <= 60_000, "{e:?}");
    }
    let distinct: HashSet<_> = en.iter().map(|e| addr(&e.sock, true)).collect();
    assert_eq!(distinct.len(), N);
    // The closing process is named: this test process closed every client socket. Only a
    // close the kernel did not show twtrace may lack it: newer kernels (7.3 here, not 6.18)
    // run tracepoint programs preemptibly, and a task preempted inside `inet_sock_set_state`
    // makes the kernel skip that program for the next task on its CPU (seen in the 7.3
    // guest: 1 close in 20, in 1 of 82 looped runs). twtrace reports those runs; they must
    // account for every miss.
    let unnamed = en.iter().filter(|e| e.comm.is_none()).count() as u64;
    let skipped = summary.skipped_in("inet_sock_set_state");
    assert!(
        unnamed <= skipped,
        "{unnamed} closers missing, {skipped} runs of inet_sock_set_state skipped (kernel map \
         updates failed: {}, lost: {}): {en:#?}",
        summary.map_errors,
        summary.lost
    );
    if unnamed > 0 {
        kernel::partial(
            "client_first_close_enters_on_the_client_side_only",
            &format!("{unnamed} closes skipped by the kernel (inet_sock_set_state preempted)"),
        );
    }
    assert_eq!(summary.lost, 0);
    assert_eq!(summary.map_errors, 0);
    // The kernel says how many runs of each program it skipped (0 before 5.12).
    assert!(
        summary.skipped_runs.is_some(),
        "recursion_misses unreadable"
    );
}

/// Server closes first: the reverse.
#[test]
fn server_first_close_enters_on_the_server_side_only() {
    const N: usize = 20;
    let ns = NetNs::new().unwrap();
    let tracer = trace(&ns);
    let server = serve(&ns, lo4(), FirstCloser::Server, Duration::ZERO).unwrap();
    let clients = connect_many(&ns, server.addr, N, FirstCloser::Server).unwrap();
    tracer.wait_for(SOON, |ev| enters(ev).len() >= N);
    std::thread::sleep(Duration::from_millis(300));
    let (ev, _) = tracer.stop().unwrap();
    let en = enters(&ev);
    assert_eq!(en.len(), N, "enters: {en:#?}");
    let clients: HashSet<SocketAddr> = clients.into_iter().collect();
    for e in &en {
        assert_eq!(addr(&e.sock, true), server.addr, "{e:?}");
        assert!(clients.contains(&addr(&e.sock, false)), "{e:?}");
        // The server saw the client's FIN before it closed? No: it closed first, so its socket
        // went FIN_WAIT1 → FIN_WAIT2/TIME_WAIT.
        assert!(
            matches!(e.substate, Substate::TimeWait | Substate::FinWait2),
            "{e:?}"
        );
    }
}

/// IPv6 sockets are reported with IPv6 tuples.
#[test]
fn ipv6_entries_carry_ipv6_tuples() {
    const N: usize = 5;
    let ns = NetNs::new().unwrap();
    let tracer = trace(&ns);
    let server = serve(
        &ns,
        "[::1]:0".parse().unwrap(),
        FirstCloser::Client,
        Duration::ZERO,
    )
    .unwrap();
    let clients = connect_many(&ns, server.addr, N, FirstCloser::Client).unwrap();
    let ev = tracer.wait_for(SOON, |ev| enters(ev).len() >= N);
    let en = enters(&ev);
    assert_eq!(en.len(), N);
    for e in &en {
        assert_eq!(e.sock.family(), 6);
        assert!(clients.contains(&addr(&e.sock, true)), "{e:?}");
        assert_eq!(addr(&e.sock, false), server.addr);
    }
}

/// Killed before its timer: deleting the namespace purges its timewait sockets, each one exit
/// with a lifetime far below 60 s.
#[test]
fn namespace_deletion_is_an_early_exit_for_each_socket() {
    const N: usize = 5;
    let ns = NetNs::new().unwrap();
    let tracer = trace(&ns);
    let locals = {
        let server = serve(&ns, lo4(), FirstCloser::Client, Duration::ZERO).unwrap();
        connect_many(&ns, server.addr, N, FirstCloser::Client).unwrap()
    };
    let ev = tracer.wait_for(SOON, |ev| enters(ev).len() >= N);
    assert_eq!(enters(&ev).len(), N, "{ev:#?}");
    drop(ns);
    // Namespace teardown runs asynchronously in a kworker.
    tracer.wait_for(Duration::from_secs(30), |ev| exits(ev).len() >= N);
    std::thread::sleep(Duration::from_millis(200));
    let (ev, _) = tracer.stop().unwrap();
    let ex = exits(&ev);
    assert_eq!(ex.len(), N, "exits: {ex:#?}");
    let locals: HashSet<SocketAddr> = locals.into_iter().collect();
    for x in &ex {
        assert_ne!(x.reason, ExitReason::Expired, "{x:?}");
        assert_ne!(x.reason, ExitReason::Unknown, "{x:?}");
        assert!(locals.contains(&addr(&x.sock, true)), "{x:?}");
        let l = x.lifetime_ms.expect("lifetime known from birth");
        assert!(l < 30_000, "{x:?}");
    }
}

/// A real expiry: exactly one `expired` exit and nothing else, after 60 s plus at most the
/// timer wheel's rounding at that range.
#[test]
fn one_real_expiry_after_sixty_seconds() {
    let ns = NetNs::new().unwrap();
    let tracer = trace(&ns);
    let server = serve(&ns, lo4(), FirstCloser::Client, Duration::ZERO).unwrap();
    let local = connect_many(&ns, server.addr, 1, FirstCloser::Client).unwrap()[0];
    let hz = tracer.features().hz.value;
    tracer.wait_for(Duration::from_secs(75), |ev| !exits(ev).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let (ev, _) = tracer.stop().unwrap();
    let ex = exits(&ev);
    assert_eq!(ex.len(), 1, "{ex:#?}");
    let x = &ex[0];
    assert_eq!(x.reason, ExitReason::Expired);
    assert_eq!(addr(&x.sock, true), local);
    // TCP_TIMEWAIT_LEN is 60 s = 60*HZ jiffies, which the timer wheel files in level 3, whose
    // buckets are 512 jiffies wide; the expiry is rounded up to a bucket boundary, so the
    // socket lives 60 s to 60 s + 511 jiffies (2.044 s at HZ=250). Allow 500 ms on top for
    // the FIN_WAIT2 → TIME_WAIT promotion (the 60 s are re-armed when the server's FIN lands,
    // milliseconds after birth here) and timer softirq latency.
    let slack_ms = 511 * 1000 / hz;
    let l = x.lifetime_ms.unwrap();
    assert!(l >= 60_000, "lifetime {l} ms < 60 s");
    assert!(
        l <= 60_000 + slack_ms + 500,
        "lifetime {l} ms > 60 s + {slack_ms} ms wheel slack + 500 ms"
    );
}

/// A FIN_WAIT2-substate timewait socket whose peer sends its FIN seconds later is re-armed
/// (detach + start on another wheel bucket): no exit then, a promote instead, and later one
/// death for the one socket.
#[test]
fn fin_wait2_rearm_is_not_a_death() {
    let ns = NetNs::new().unwrap();
    // A short FIN_WAIT2 timeout makes the 60 s re-arm land in a different wheel bucket for sure.
    ns.sysctl("net.ipv4.tcp_fin_timeout", "10").unwrap();
    let tracer = trace(&ns);
    let server = serve(&ns, lo4(), FirstCloser::Client, Duration::from_secs(3)).unwrap();
    let local = connect_many(&ns, server.addr, 1, FirstCloser::Client).unwrap()[0];
    let ev = tracer.wait_for(SOON, |ev| count_kind(ev, "promote") >= 1);
    let en = enters(&ev);
    assert_eq!(en.len(), 1, "{ev:#?}");
    assert_eq!(en[0].substate, Substate::FinWait2);
    // expires - jiffies as the program reads them: on an emulated CPU jiffies can catch up
    // a few ticks between the arming and the program (seen: 3 on 6.1 under QEMU).
    assert!(
        (9_960..=10_000).contains(&en[0].timeout_ms),
        "tcp_fin_timeout=10 arms 10 s: {}",
        en[0].timeout_ms
    );
    assert_eq!(addr(&en[0].sock, true), local);
    assert_eq!(count_kind(&ev, "promote"), 1, "{ev:#?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        exits(&tracer.events()).is_empty(),
        "the re-arm was taken for a death"
    );
    drop(server);
    drop(ns);
    tracer.wait_for(Duration::from_secs(30), |ev| !exits(ev).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let (ev, _) = tracer.stop().unwrap();
    let ex = exits(&ev);
    assert_eq!(ex.len(), 1, "{ex:#?}");
    assert_eq!(enters(&ev).len(), 1, "{ev:#?}");
    assert_eq!(ex[0].sock.tw, en[0].sock.tw);
    assert!(ex[0].lifetime_ms.unwrap() >= 3_000);
}

/// Timewait sockets that existed before start-up are listed by the snapshot, with their age
/// and remaining time.
#[test]
fn snapshot_lists_preexisting_sockets() {
    const N: usize = 5;
    let ns = NetNs::new().unwrap();
    let server = serve(&ns, lo4(), FirstCloser::Client, Duration::ZERO).unwrap();
    let first_connect = Instant::now();
    let locals: HashSet<SocketAddr> = connect_many(&ns, server.addr, N, FirstCloser::Client)
        .unwrap()
        .into_iter()
        .collect();
    let last_close = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    // The snapshot runs inside trace(): loading and attaching take well under a second on a
    // real CPU but 5-15 s in an emulated guest, so the ages are bounded by what this test's
    // own clock measured, not by a fixed window.
    // Made N, alive as many as the kernel says (one reset at birth is in neither).
    let alive = timewait_in(&ns) as usize;
    assert!((1..=N).contains(&alive), "{alive} of {N} alive");
    let before_trace = Instant::now();
    let tracer = trace(&ns);
    let after_trace = Instant::now();
    // tw_entry_stamp and the snapshot's clock are both CLOCK_MONOTONIC in ms (truncated).
    let min_age = (before_trace - last_close).as_millis() as u64;
    let max_age = (after_trace - first_connect).as_millis() as u64 + 1;
    let ev = tracer.wait_for(SOON, |ev| enters(ev).len() >= alive);
    let en = enters(&ev);
    assert_eq!(en.len(), alive, "{en:#?}");
    let has_stamp = tracer.features().btf.tw_entry_stamp;
    if !has_stamp {
        kernel::partial(
            "snapshot_lists_preexisting_sockets",
            "no age check: timewait sockets have no tw_entry_stamp on this kernel (before 6.13)",
        );
    }
    for e in &en {
        assert!(e.snapshot, "{e:?}");
        assert!(locals.contains(&addr(&e.sock, true)), "{e:?}");
        if !has_stamp {
            // Nothing in the socket says when it was born: no age rather than a made-up one.
            assert_eq!(e.age_ms, None, "{e:?}");
        } else {
            let age = e.age_ms.expect("tw_entry_stamp age");
            assert!(
                (min_age..=max_age).contains(&age),
                "age {age} ms, measured here {min_age}..={max_age} ms: {e:?}"
            );
        }
        // What remains of the 60 s, at least one second gone (the sleep above).
        assert!(
            e.timeout_ms <= 60_000 - 1000 && e.timeout_ms + max_age >= 60_000 - 1000,
            "{e:?} (at most {max_age} ms old)"
        );
    }
}
