//! Trace files with events from the live kernel: what the tracer reports for real traffic in a
//! private namespace is written, read back unchanged and counted right.

use std::net::SocketAddr;
use std::time::Duration;
use twtrace::experiments::workload::{connect_many, serve, FirstCloser};
use twtrace::host::netns::NetNs;
use twtrace::pipeline::event::{Body, Event};
use twtrace::sink::tracefile::{self, Header, Summary, Writer, WriterOptions};
use twtrace_tests::*;

fn temp_file(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("twtrace-tf-{tag}-{}.twt", std::process::id()))
}

/// IPv4 and IPv6 connections, both closing sides, then the namespace deleted: every enter and
/// exit the tracer saw survives the file, and the counts are the traffic's.
#[test]
fn live_events_round_trip_through_a_file() {
    const N4: usize = 12;
    const N6: usize = 6;
    let ns = NetNs::new().unwrap();
    let tracer = trace(&ns);
    let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let v6: SocketAddr = "[::1]:0".parse().unwrap();
    {
        let s4 = serve(&ns, v4, FirstCloser::Client, Duration::ZERO).unwrap();
        connect_many(&ns, s4.addr, N4, FirstCloser::Client).unwrap();
        let s6 = serve(&ns, v6, FirstCloser::Server, Duration::ZERO).unwrap();
        connect_many(&ns, s6.addr, N6, FirstCloser::Server).unwrap();
    }
    tracer.wait_for(SOON, |ev| enters(ev).len() >= N4 + N6);
    drop(ns);
    tracer.wait_for(SOON, |ev| exits(ev).len() >= N4 + N6);
    let clock = tracer.clock;
    let (events, summary) = tracer.stop().unwrap();
    assert_eq!(enters(&events).len(), N4 + N6, "{events:#?}");
    assert_eq!(exits(&events).len(), N4 + N6, "{events:#?}");
    assert_eq!(
        enters(&events)
            .iter()
            .filter(|e| e.sock.family() == 6)
            .count(),
        N6
    );

    let path = temp_file("live");
    let header = Header::capture(clock, 250, &[]);
    let mut w = Writer::create(&path, &header, WriterOptions::default()).unwrap();
    for e in &events {
        w.write(e).unwrap();
    }
    w.finish(&Summary {
        lost: summary.lost,
        ..Summary::default()
    })
    .unwrap();
    let t = tracefile::read_all(&path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let _ = std::fs::remove_file(&path);

    assert!(t.damage.is_empty(), "{:?}", t.damage);
    assert_eq!(t.events, events);
    assert_eq!(enters(&t.events).len(), N4 + N6);
    assert_eq!(exits(&t.events).len(), N4 + N6);
    assert_eq!(t.summary.unwrap().events, events.len() as u64);
    assert_eq!(t.header.clock, clock);
    // The live --json text, from the file.
    for (a, b) in events.iter().zip(&t.events) {
        let (mut x, mut y) = (String::new(), String::new());
        a.write_json(&clock, &mut x);
        b.write_json(&t.header.clock, &mut y);
        assert_eq!(x, y);
    }
    // Real events are small on disk too (the header is most of this little file).
    let body = size - header_len(&header);
    assert!(
        body <= 40 * events.len() as u64 + 64,
        "{body} bytes for {} events",
        events.len()
    );
}

fn header_len(h: &Header) -> u64 {
    // A file with no event: the header plus an empty summary block.
    let p = temp_file("hdr");
    Writer::create(&p, h, WriterOptions::default())
        .unwrap()
        .finish(&Summary::default())
        .unwrap();
    let n = std::fs::metadata(&p).unwrap().len();
    let _ = std::fs::remove_file(&p);
    n
}

/// The namespace's sysctls arrive as a `netns` event and are readable from the file.
#[test]
fn namespace_sysctls_are_in_the_file() {
    let ns = NetNs::new().unwrap();
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1").unwrap();
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "777").unwrap();
    let tracer = trace(&ns);
    {
        let s = serve(
            &ns,
            "127.0.0.1:0".parse().unwrap(),
            FirstCloser::Client,
            Duration::ZERO,
        )
        .unwrap();
        connect_many(&ns, s.addr, 2, FirstCloser::Client).unwrap();
    }
    let ev = tracer.wait_for(SOON, |ev| enters(ev).len() >= 2);
    let netns_events = |ev: &[Event]| -> usize {
        ev.iter()
            .filter(|e| matches!(e.body, Body::Netns { .. }))
            .count()
    };
    assert!(netns_events(&ev) >= 1, "{ev:#?}");
    let clock = tracer.clock;
    let (events, _) = tracer.stop().unwrap();
    let path = temp_file("sysctl");
    let mut w =
        Writer::create(&path, &Header::capture(clock, 250, &[]), Default::default()).unwrap();
    for e in &events {
        w.write(e).unwrap();
    }
    w.finish(&Summary::default()).unwrap();
    let t = tracefile::read_all(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let kv = &t.sysctls[&ns.inode()];
    assert_eq!(kv["net.ipv4.tcp_tw_reuse"], "1");
    assert_eq!(kv["net.ipv4.tcp_max_tw_buckets"], "777");
    assert_eq!(t.events, events);
}
