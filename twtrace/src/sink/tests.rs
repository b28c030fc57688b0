//! The line and NDJSON formats: the JSON contract's keys, the line's units and columns, and
//! golden bytes of both: every kind (and every exit reason, both families, the snapshot and
//! missing-value cases) pinned exactly, and a checksum over a long synthetic mix so that no
//! byte of either format changes unnoticed.

use crate::kernel::sysinfo::Clock;
use crate::pipeline::event::*;

const CLOCK: Clock = Clock {
    offset_ns: 1_700_000_000_000_000_000,
};

fn sock() -> Sock {
    Sock::v4(
        0xffff1,
        4026531840,
        [127, 0, 0, 1],
        43210,
        [127, 0, 0, 2],
        8080,
    )
}

fn both(e: &Event) -> (String, String) {
    let (mut l, mut j) = (String::new(), String::new());
    super::line::write_line(e, &CLOCK, &mut l);
    super::json::write_json(e, &CLOCK, &mut j);
    (l, j)
}
fn handmade() -> Vec<crate::pipeline::event::Event> {
    let v6 = Sock::from_raw(
        0xffff2,
        4026531840,
        10,
        [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        443,
        [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        51000,
    );
    let v4 = Sock::v4(
        0xffff3,
        4026532000,
        [10, 0, 0, 1],
        40000,
        [10, 0, 0, 2],
        8080,
    );
    let task = Some(Task {
        pid: 7,
        comm: "a \"b\"\\c".into(),
    });
    let ev = |ts_ns, body| Event::new(ts_ns, body);
    vec![
        ev(
            1,
            Body::Enter {
                sock: v4.clone(),
                substate: Substate::FinWait2,
                timeout_ms: 1234,
                task: None,
                snapshot: true,
                age_ms: Some(5678),
            },
        ),
        ev(
            2,
            Body::Promote {
                sock: v6.clone(),
                timeout_ms: 60000,
                age_ms: Some(3),
            },
        ),
        ev(
            3,
            Body::Exit {
                sock: v6.clone(),
                substate: Substate::FinWait2,
                reason: ExitReason::Syn,
                lifetime_ms: None,
                task: task.clone(),
            },
        ),
        ev(
            4,
            Body::Exit {
                sock: v4.clone(),
                substate: Substate::TimeWait,
                reason: ExitReason::Rst,
                lifetime_ms: Some(0),
                task: None,
            },
        ),
        ev(
            5,
            Body::Exit {
                sock: v4.clone(),
                substate: Substate::TimeWait,
                reason: ExitReason::Purged,
                lifetime_ms: Some(999_999),
                task: None,
            },
        ),
        ev(
            6,
            Body::Exit {
                sock: v4.clone(),
                substate: Substate::TimeWait,
                reason: ExitReason::Unknown,
                lifetime_ms: Some(12),
                task: None,
            },
        ),
        ev(
            7,
            Body::ConnectFail {
                sock: v6.clone(),
                errno: 1234,
                refusal: Refusal::TooYoung,
                timewait: 0,
                candidates: None,
                task: None,
            },
        ),
        ev(
            8,
            Body::Netns {
                netns: 9,
                sysctls: Default::default(),
            },
        ),
        ev(
            9,
            Body::Abort {
                sock: v6,
                task: None,
            },
        ),
    ]
}

/// The first event of each kind (and exit reason) in the synthetic mix.
const MIX_FIRSTS: &[(&str, &str)] = &[
    (
        "22:30:00.000000 4026531840 netns        tw_reuse=2 reuse_delay=1000ms max_tw_buckets=262144 timestamps=1 fin_timeout=60s rfc1337=0 port_range=32768-60999",
        "{\"time\":\"2023-11-14T22:30:00.000000Z\",\"kind\":\"netns\",\"netns\":4026531840,\"tcp_tw_reuse\":2,\"tcp_tw_reuse_delay\":1000,\"tcp_max_tw_buckets\":262144,\"tcp_timestamps\":1,\"tcp_fin_timeout\":60,\"tcp_rfc1337\":0,\"ip_local_port_range\":[32768,60999]}",
    ),
    (
        "22:30:00.000004 4026532301 enter        TIME_WAIT 192.0.2.10:443         10.1.82.7:33925        timeout=60.000s                - -                -",
        "{\"time\":\"2023-11-14T22:30:00.000004Z\",\"kind\":\"enter\",\"netns\":4026532301,\"family\":4,\"laddr\":\"192.0.2.10\",\"lport\":443,\"raddr\":\"10.1.82.7\",\"rport\":33925,\"substate\":\"TIME_WAIT\",\"timeout_ms\":60000}",
    ),
    (
        "22:30:00.000420 4026532590 overflow     -         192.0.2.10:45737       10.0.59.7:80           no timewait: tcp_max_tw_buckets reached       - -                -",
        "{\"time\":\"2023-11-14T22:30:00.000420Z\",\"kind\":\"overflow\",\"netns\":4026532590,\"family\":4,\"laddr\":\"192.0.2.10\",\"lport\":45737,\"raddr\":\"10.0.59.7\",\"rport\":80}",
    ),
    (
        "22:30:00.001324 4026532301 exit         TIME_WAIT 192.0.2.10:443         10.1.82.7:33925        expired 60.220s                - -                -",
        "{\"time\":\"2023-11-14T22:30:00.001324Z\",\"kind\":\"exit\",\"netns\":4026532301,\"family\":4,\"laddr\":\"192.0.2.10\",\"lport\":443,\"raddr\":\"10.1.82.7\",\"rport\":33925,\"substate\":\"TIME_WAIT\",\"reason\":\"expired\",\"lifetime_ms\":60220}",
    ),
    (
        "22:30:00.002252 4026531840 promote      TIME_WAIT 192.0.2.10:60624       10.1.81.7:6379         promote timeout=60.000s        - -                -",
        "{\"time\":\"2023-11-14T22:30:00.002252Z\",\"kind\":\"promote\",\"netns\":4026531840,\"family\":4,\"laddr\":\"192.0.2.10\",\"lport\":60624,\"raddr\":\"10.1.81.7\",\"rport\":6379,\"substate\":\"TIME_WAIT\",\"timeout_ms\":60000}",
    ),
    (
        "22:30:00.002387 4026531840 abort        -         127.0.0.1:34324        10.1.52.7:443          reset: no TIME_WAIT         2379 curl             -",
        "{\"time\":\"2023-11-14T22:30:00.002387Z\",\"kind\":\"abort\",\"netns\":4026531840,\"family\":4,\"laddr\":\"127.0.0.1\",\"lport\":34324,\"raddr\":\"10.1.52.7\",\"rport\":443,\"pid\":2379,\"comm\":\"curl\"}",
    ),
    (
        "22:30:00.002391 4026532417 connect_fail -         127.0.0.1:41715        10.0.193.7:5432        EADDRNOTAVAIL loopback only tw=8180 refused=17038    3758 python3          -",
        "{\"time\":\"2023-11-14T22:30:00.002391Z\",\"kind\":\"connect_fail\",\"netns\":4026532417,\"family\":4,\"laddr\":\"127.0.0.1\",\"lport\":41715,\"raddr\":\"10.0.193.7\",\"rport\":5432,\"errno\":99,\"errno_name\":\"EADDRNOTAVAIL\",\"refusal\":\"loopback only\",\"timewait\":8180,\"candidates\":17038,\"pid\":3758,\"comm\":\"python3\"}",
    ),
    (
        "22:30:00.005786 4026531840 exit         TIME_WAIT 192.0.2.10:52949       10.0.163.7:5432        reused 5.852s               9274 postgres         -",
        "{\"time\":\"2023-11-14T22:30:00.005786Z\",\"kind\":\"exit\",\"netns\":4026531840,\"family\":4,\"laddr\":\"192.0.2.10\",\"lport\":52949,\"raddr\":\"10.0.163.7\",\"rport\":5432,\"substate\":\"TIME_WAIT\",\"reason\":\"reused\",\"lifetime_ms\":5852,\"pid\":9274,\"comm\":\"postgres\"}",
    ),
    (
        "22:30:00.007150 4026532301 paws_reject  TIME_WAIT 192.0.2.10:443         10.0.59.7:39468        segment dropped by PAWS        - -                -",
        "{\"time\":\"2023-11-14T22:30:00.007150Z\",\"kind\":\"paws_reject\",\"netns\":4026532301,\"family\":4,\"laddr\":\"192.0.2.10\",\"lport\":443,\"raddr\":\"10.0.59.7\",\"rport\":39468}",
    ),
    (
        "22:30:00.015452 LOST 5 events: the kernel's ring buffer was full",
        "{\"time\":\"2023-11-14T22:30:00.015452Z\",\"kind\":\"lost\",\"count\":5}",
    ),
];

const HANDMADE: &[(&str, &str)] = &[
    (
        "22:13:20.000000 4026532000 enter        FIN_WAIT2 10.0.0.1:40000         10.0.0.2:8080          snapshot timeout=1.234s age=5.678s       - -                -",
        "{\"time\":\"2023-11-14T22:13:20.000000Z\",\"kind\":\"enter\",\"netns\":4026532000,\"family\":4,\"laddr\":\"10.0.0.1\",\"lport\":40000,\"raddr\":\"10.0.0.2\",\"rport\":8080,\"substate\":\"FIN_WAIT2\",\"timeout_ms\":1234,\"snapshot\":true,\"age_ms\":5678}",
    ),
    (
        "22:13:20.000000 4026531840 promote      TIME_WAIT [2001:db8::1]:443      [2001:db8::2]:51000    promote timeout=60.000s        - -                -",
        "{\"time\":\"2023-11-14T22:13:20.000000Z\",\"kind\":\"promote\",\"netns\":4026531840,\"family\":6,\"laddr\":\"2001:db8::1\",\"lport\":443,\"raddr\":\"2001:db8::2\",\"rport\":51000,\"substate\":\"TIME_WAIT\",\"timeout_ms\":60000,\"age_ms\":3}",
    ),
    (
        "22:13:20.000000 4026531840 exit         FIN_WAIT2 [2001:db8::1]:443      [2001:db8::2]:51000    syn ?                          7 a \"b\"\\c          -",
        "{\"time\":\"2023-11-14T22:13:20.000000Z\",\"kind\":\"exit\",\"netns\":4026531840,\"family\":6,\"laddr\":\"2001:db8::1\",\"lport\":443,\"raddr\":\"2001:db8::2\",\"rport\":51000,\"substate\":\"FIN_WAIT2\",\"reason\":\"syn\",\"pid\":7,\"comm\":\"a \\\"b\\\"\\\\c\"}",
    ),
    (
        "22:13:20.000000 4026532000 exit         TIME_WAIT 10.0.0.1:40000         10.0.0.2:8080          rst 0.000s                     - -                -",
        "{\"time\":\"2023-11-14T22:13:20.000000Z\",\"kind\":\"exit\",\"netns\":4026532000,\"family\":4,\"laddr\":\"10.0.0.1\",\"lport\":40000,\"raddr\":\"10.0.0.2\",\"rport\":8080,\"substate\":\"TIME_WAIT\",\"reason\":\"rst\",\"lifetime_ms\":0}",
    ),
    (
        "22:13:20.000000 4026532000 exit         TIME_WAIT 10.0.0.1:40000         10.0.0.2:8080          purged 999.999s                - -                -",
        "{\"time\":\"2023-11-14T22:13:20.000000Z\",\"kind\":\"exit\",\"netns\":4026532000,\"family\":4,\"laddr\":\"10.0.0.1\",\"lport\":40000,\"raddr\":\"10.0.0.2\",\"rport\":8080,\"substate\":\"TIME_WAIT\",\"reason\":\"purged\",\"lifetime_ms\":999999}",
    ),
    (
        "22:13:20.000000 4026532000 exit         TIME_WAIT 10.0.0.1:40000         10.0.0.2:8080          unknown 0.012s                 - -                -",
        "{\"time\":\"2023-11-14T22:13:20.000000Z\",\"kind\":\"exit\",\"netns\":4026532000,\"family\":4,\"laddr\":\"10.0.0.1\",\"lport\":40000,\"raddr\":\"10.0.0.2\",\"rport\":8080,\"substate\":\"TIME_WAIT\",\"reason\":\"unknown\",\"lifetime_ms\":12}",
    ),
    (
        "22:13:20.000000 4026531840 connect_fail -         [2001:db8::1]:443      [2001:db8::2]:51000    E? too young tw=0              - -                -",
        "{\"time\":\"2023-11-14T22:13:20.000000Z\",\"kind\":\"connect_fail\",\"netns\":4026531840,\"family\":6,\"laddr\":\"2001:db8::1\",\"lport\":443,\"raddr\":\"2001:db8::2\",\"rport\":51000,\"errno\":1234,\"errno_name\":\"E?\",\"refusal\":\"too young\",\"timewait\":0}",
    ),
    (
        "22:13:20.000000 9          netns        ",
        "{\"time\":\"2023-11-14T22:13:20.000000Z\",\"kind\":\"netns\",\"netns\":9}",
    ),
    (
        "22:13:20.000000 4026531840 abort        -         [2001:db8::1]:443      [2001:db8::2]:51000    reset: no TIME_WAIT            - -                -",
        "{\"time\":\"2023-11-14T22:13:20.000000Z\",\"kind\":\"abort\",\"netns\":4026531840,\"family\":6,\"laddr\":\"2001:db8::1\",\"lport\":443,\"raddr\":\"2001:db8::2\",\"rport\":51000}",
    ),
];

#[test]
fn handmade_events_are_byte_exact() {
    let events = handmade();
    assert_eq!(events.len(), HANDMADE.len());
    for (e, (l, j)) in events.iter().zip(HANDMADE) {
        assert_eq!(both(e), (l.to_string(), j.to_string()));
    }
}

#[test]
fn synthetic_mix_is_byte_exact() {
    let mut firsts = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len = 0usize;
    for e in &crate::sink::tracefile::synthetic::events(20_000, 7) {
        let (l, j) = both(e);
        let reason = match &e.body {
            Body::Exit { reason, .. } => reason.as_str(),
            _ => "",
        };
        if seen.insert((e.kind(), reason)) {
            firsts.push((l.clone(), j.clone()));
        }
        for b in [l, j].iter().flat_map(|s| s.bytes().chain([b'\n'])) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            len += 1;
        }
    }
    let want: Vec<(String, String)> = MIX_FIRSTS
        .iter()
        .map(|(l, j)| (l.to_string(), j.to_string()))
        .collect();
    assert_eq!(firsts, want);
    assert_eq!((h, len), (0xc814ae73e5d2f97a, 7296934));
}

#[test]
fn json_contract_keys() {
    let clock = Clock {
        offset_ns: 1_700_000_000_000_000_000,
    };
    let e = Event::new(
        1_234_567_000,
        Body::Enter {
            sock: sock(),
            substate: Substate::TimeWait,
            timeout_ms: 60000,
            task: Some(Task {
                pid: 42,
                comm: "cu\"rl".into(),
            }),
            snapshot: false,
            age_ms: None,
        },
    );
    let mut s = String::new();
    super::json::write_json(&e, &clock, &mut s);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["time"], "2023-11-14T22:13:21.234567Z");
    assert_eq!(v["kind"], "enter");
    assert_eq!(v["netns"], 4026531840u64);
    assert_eq!(v["family"], 4);
    assert_eq!(v["laddr"], "127.0.0.1");
    assert_eq!(v["lport"], 43210);
    assert_eq!(v["raddr"], "127.0.0.2");
    assert_eq!(v["rport"], 8080);
    assert_eq!(v["substate"], "TIME_WAIT");
    assert_eq!(v["timeout_ms"], 60000);
    assert_eq!(v["pid"], 42);
    assert_eq!(v["comm"], "cu\"rl");
    assert!(v.get("snapshot").is_none());

    let x = Event::new(
        1,
        Body::Exit {
            sock: Sock::from_raw(
                1,
                7,
                10,
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                1,
                [0; 16],
                2,
            ),
            substate: Substate::FinWait2,
            reason: ExitReason::Expired,
            lifetime_ms: Some(61992),
            task: None,
        },
    );
    s.clear();
    super::json::write_json(&x, &clock, &mut s);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["family"], 6);
    assert_eq!(v["laddr"], "::1");
    assert_eq!(v["reason"], "expired");
    assert_eq!(v["lifetime_ms"], 61992);
    assert_eq!(v["substate"], "FIN_WAIT2");
}

#[test]
fn line_has_units_and_columns() {
    let clock = Clock { offset_ns: 0 };
    let e = Event::new(
        3_600_000_000_000 + 1_500,
        Body::Exit {
            sock: sock(),
            substate: Substate::TimeWait,
            reason: ExitReason::Expired,
            lifetime_ms: Some(61992),
            task: None,
        },
    );
    let mut s = String::new();
    super::line::write_line(&e, &clock, &mut s);
    assert!(s.starts_with("01:00:00.000001"), "{s}");
    assert!(s.contains("127.0.0.1:43210"), "{s}");
    assert!(s.contains("expired 61.992s"), "{s}");
}

/// The workload keys and column (issue 15): byte-exact for a pod's container, a plain
/// service and an unknown cgroup; absent when the kernel named no cgroup.
#[test]
fn workload_keys_and_column_are_byte_exact() {
    use crate::host::workload::Workload;
    use std::sync::Arc;
    let c = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut pod = Workload::from_path(
        77,
        &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_0000_1111_2222_333344445555.slice/cri-containerd-{c}.scope"),
    );
    pod.pod = Some("shop/cart-7d9".into());
    let cases = [
        (
            pod,
            "cart-7d9",
            format!(",\"cgroup_id\":77,\"cgroup\":\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_0000_1111_2222_333344445555.slice/cri-containerd-{c}.scope\",\"container_id\":\"{c}\",\"runtime\":\"containerd\",\"pod_uid\":\"0a1b2c3d-0000-1111-2222-333344445555\",\"qos\":\"Burstable\",\"pod\":\"shop/cart-7d9\",\"pod_source\":\"/var/log/pods\"}}"),
        ),
        (
            Workload::from_path(78, "/system.slice/nginx.service"),
            "nginx.service",
            ",\"cgroup_id\":78,\"cgroup\":\"/system.slice/nginx.service\"}".to_string(),
        ),
        (
            Workload::unknown(79),
            "?79",
            ",\"cgroup_id\":79,\"cgroup\":null}".to_string(),
        ),
    ];
    let base = Event::new(
        1,
        Body::Abort {
            sock: sock(),
            task: None,
        },
    );
    let (l0, j0) = both(&base);
    assert!(l0.ends_with(" - -                -"), "{l0}");
    assert!(!j0.contains("cgroup"), "{j0}");
    for (w, short, keys) in cases {
        let mut e = base.clone();
        e.cgroup = w.cgroup_id;
        e.workload = Some(Arc::new(w));
        let (l, j) = both(&e);
        assert_eq!(l, format!("{} {short}", &l0[..l0.len() - 2]));
        assert_eq!(j, format!("{}{keys}", &j0[..j0.len() - 1]));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["cgroup_id"], e.cgroup);
    }
}
