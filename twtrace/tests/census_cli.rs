//! `twtrace census`, end to end: the real binary walking the kernel's socket tables of
//! namespaces this test fills, compared with `ss -tan` run inside the same namespaces.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;
use twtrace::experiments::workload::{connect_many, serve, FirstCloser};
use twtrace::host::netns::NetNs;

const BIN: &str = env!("CARGO_BIN_EXE_twtrace");

/// `ss -tan` inside `ns`: sockets per state, named as `ss` names them (ESTAB, TIME-WAIT, …).
fn ss_counts(ns: &NetNs) -> BTreeMap<String, u64> {
    let out = ns
        .run(|| Command::new("ss").args(["-tan"]).output())
        .unwrap()
        .expect("running ss (iproute2)");
    assert!(out.status.success());
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        if let Some(state) = line.split_whitespace().next() {
            *m.entry(state.to_string()).or_default() += 1;
        }
    }
    m
}

fn census_json(inodes: &[u64]) -> serde_json::Value {
    let mut cmd = Command::new(BIN);
    cmd.arg("census").arg("--json");
    for i in inodes {
        cmd.args(["--netns", &i.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "twtrace census: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Listener + `est` connections held open in `ns` (both ends ESTABLISHED).
fn hold_open(ns: &NetNs, est: usize) -> (TcpListener, Vec<(TcpStream, TcpStream)>) {
    ns.run(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let v = (0..est)
            .map(|_| {
                let c = TcpStream::connect(a).unwrap();
                let (s, _) = l.accept().unwrap();
                (c, s)
            })
            .collect();
        (l, v)
    })
    .unwrap()
}

#[test]
fn census_matches_ss_in_namespaces_the_test_fills() {
    // Two namespaces with different loads; a small port range in the first so that the port
    // pressure is a number the test knows.
    let a = NetNs::new().unwrap();
    let b = NetNs::new().unwrap();
    a.sysctl("net.ipv4.ip_local_port_range", "40000 40009")
        .unwrap();
    let sa = serve(
        &a,
        "127.0.0.1:8080".parse().unwrap(),
        FirstCloser::Client,
        Duration::ZERO,
    )
    .unwrap();
    let sb = serve(
        &b,
        "127.0.0.1:8081".parse().unwrap(),
        FirstCloser::Client,
        Duration::ZERO,
    )
    .unwrap();
    connect_many(&a, sa.addr, 6, FirstCloser::Client).unwrap();
    connect_many(&b, sb.addr, 3, FirstCloser::Client).unwrap();
    let _held_a = hold_open(&a, 2);
    let _held_b = hold_open(&b, 1);
    // Let the servers' FINs arrive: every client-side socket is then in the TIME_WAIT
    // substate, and nothing changes between the two reads below.
    std::thread::sleep(Duration::from_millis(300));
    let j = census_json(&[a.inode(), b.inode()]);
    let ns = j["namespaces"].as_array().unwrap();
    assert_eq!(ns.len(), 2, "{j:#}");
    for (netns, server) in [(&a, sa.addr), (&b, sb.addr)] {
        let ss = ss_counts(netns);
        let row = ns
            .iter()
            .find(|r| r["netns"] == netns.inode())
            .unwrap_or_else(|| panic!("netns {} missing: {j:#}", netns.inode()));
        let st = &row["states"];
        let n = |k: &str| st[k].as_u64().unwrap_or(0);
        let s = |k: &str| ss.get(k).copied().unwrap_or(0);
        assert_eq!(n("ESTABLISHED"), s("ESTAB"), "{row:#} vs ss {ss:?}");
        assert_eq!(n("LISTEN"), s("LISTEN"), "{row:#} vs ss {ss:?}");
        // ss lists timewait sockets in their FIN_WAIT2 substate as FIN-WAIT-2.
        assert_eq!(
            row["time_wait"]["time_wait"].as_u64().unwrap(),
            s("TIME-WAIT"),
            "{row:#} vs ss {ss:?}"
        );
        assert_eq!(
            n("FIN_WAIT2") + row["time_wait"]["fin_wait2"].as_u64().unwrap(),
            s("FIN-WAIT-2")
        );
        assert_eq!(
            row["total"].as_u64().unwrap(),
            ss.values().sum::<u64>(),
            "{row:#} vs ss {ss:?}"
        );
        let top = &row["top"][0];
        let dest: SocketAddr = format!("{}:{}", top["raddr"].as_str().unwrap(), top["rport"])
            .parse()
            .unwrap();
        assert_eq!(dest, server, "{row:#}");
        assert_eq!(top["time_wait"].as_u64().unwrap(), s("TIME-WAIT"));
    }
    let ra = ns.iter().find(|r| r["netns"] == a.inode()).unwrap();
    assert_eq!(ra["time_wait"]["time_wait"], 6);
    assert_eq!(ra["top"][0]["ports"], 10);
    assert_eq!(ra["top"][0]["pressure"], 0.6);
    // A process of the test holds each namespace (its keeper thread): the workload is ours.
    assert_eq!(ra["workload"]["pid"], std::process::id());

    // The text form names the same destination with its pressure.
    let out = Command::new(BIN)
        .args(["census", "--netns", &a.inode().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("TIME-WAIT"), "{text}");
    assert!(text.contains("127.0.0.1:8080"), "{text}");
    assert!(text.contains("6/10 60.0%"), "{text}");
}

#[test]
fn census_of_an_unknown_namespace_is_a_clear_error() {
    let out = Command::new(BIN)
        .args(["census", "--netns", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no network namespace"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
