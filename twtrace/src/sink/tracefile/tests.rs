use super::codec::{put_bytes, put_varint, zigzag};
use super::*;
use crate::pipeline::event::{Body, Event, ExitReason, Refusal, Sock, Substate, Task};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "twtrace-tracefile-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn header() -> Header {
    let mut sysctls = SysctlsByNetns::new();
    sysctls.entry(4026531840).or_default().extend([
        ("net.ipv4.tcp_tw_reuse".to_string(), "2".to_string()),
        (
            "net.ipv4.ip_local_port_range".to_string(),
            "32768\t60999".to_string(),
        ),
    ]);
    Header {
        version: Version {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
        },
        kernel_release: "6.18.0-test".into(),
        hostname: "host-ä".into(),
        hz: 250,
        clock: Clock {
            offset_ns: 1_700_000_000_123_456_789,
        },
        hooks: vec![
            HookInfo {
                label: "tp_btf/timer_start".into(),
                program: "timer_start".into(),
                purpose: "births".into(),
                required: true,
                error: None,
            },
            HookInfo {
                label: "iter/tcp".into(),
                program: "snapshot_tcp".into(),
                purpose: "snapshot".into(),
                required: false,
                error: Some("EPERM".into()),
            },
        ],
        sysctls,
        started_ns: 123_456_789,
        tool: "twtrace test".into(),
        part: 0,
        filter: "--port 80".into(),
    }
}

fn sock4(tw: u64, lport: u16) -> Sock {
    Sock {
        tw,
        netns: 4026531840,
        laddr: "127.0.0.1".parse().unwrap(),
        lport,
        raddr: "10.1.2.3".parse().unwrap(),
        rport: 8080,
    }
}

fn sock6(tw: u64) -> Sock {
    Sock {
        tw,
        netns: u32::MAX,
        laddr: "::1".parse().unwrap(),
        lport: 0,
        raddr: "2001:db8::ff".parse().unwrap(),
        rport: u16::MAX,
    }
}

fn task(comm: &str) -> Option<Task> {
    Some(Task {
        pid: 4_194_304,
        comm: comm.into(),
    })
}

/// Every body variant with every optional field both ways, every substate, reason and
/// refusal, odd values and timestamps that go backwards.
fn every_variant() -> Vec<Event> {
    let mut bodies = Vec::new();
    for (i, substate) in [
        Substate::TimeWait,
        Substate::FinWait2,
        Substate::Other(0),
        Substate::Other(6),
        Substate::Other(255),
    ]
    .into_iter()
    .enumerate()
    {
        bodies.push(Body::Enter {
            sock: sock4(0xffff_8881_0000_0000 + i as u64 * 256, 40000 + i as u16),
            substate,
            timeout_ms: [60_000, 0, u64::MAX, 1, 127][i],
            task: if i % 2 == 0 { task("curl") } else { None },
            snapshot: i % 3 == 0,
            age_ms: if i % 2 == 1 {
                Some(i as u64 * 1000)
            } else {
                None
            },
        });
    }
    bodies.push(Body::Promote {
        sock: sock6(1),
        timeout_ms: 60_000,
        age_ms: None,
    });
    bodies.push(Body::Promote {
        sock: sock6(u64::MAX),
        timeout_ms: 0,
        age_ms: Some(u64::MAX),
    });
    for (i, reason) in ExitReason::ALL.into_iter().enumerate() {
        bodies.push(Body::Exit {
            sock: sock4(0xdead_beef_0000_0000 | i as u64, 1),
            substate: if i % 2 == 0 {
                Substate::TimeWait
            } else {
                Substate::FinWait2
            },
            reason,
            lifetime_ms: if i % 3 == 0 { None } else { Some(61_992) },
            task: if i % 2 == 1 {
                task("nginx: worker \"x\"")
            } else {
                None
            },
        });
    }
    bodies.push(Body::Overflow { sock: sock6(0) });
    bodies.push(Body::Abort {
        sock: sock4(5, 5),
        task: task(""),
    });
    bodies.push(Body::Abort {
        sock: sock4(5, 5),
        task: None,
    });
    for (i, refusal) in Refusal::ALL.into_iter().enumerate() {
        bodies.push(Body::ConnectFail {
            sock: sock4(0, 0),
            errno: [libc::EADDRNOTAVAIL, -1, i32::MAX, i32::MIN, 0, 99, 98][i],
            refusal,
            timewait: [0, 1, u32::MAX, 28232, 7, 8, 9][i],
            candidates: [
                None,
                Some(0),
                Some(u32::MAX),
                None,
                Some(3),
                None,
                Some(28000),
            ][i],
            task: if i % 2 == 0 { task("python3") } else { None },
        });
    }
    bodies.push(Body::PawsReject { sock: sock4(9, 9) });
    // Minor 2.
    for (i, ports) in [None, Some(0), Some(28232), Some(u32::MAX)]
        .into_iter()
        .enumerate()
    {
        bodies.push(Body::BindFail {
            netns: [0, 4026532999, u32::MAX, 7][i],
            family: [2, 10, 2, 0][i],
            errno: [libc::EADDRINUSE, -1, i32::MIN, i32::MAX][i],
            timewait: [0, 1, 28232, u32::MAX][i],
            ports,
            task: if i % 2 == 0 { task("envoy") } else { None },
        });
    }
    bodies.push(Body::BoundConnect {
        sock: sock4(40001, 8080),
        task: task("haproxy"),
    });
    bodies.push(Body::BoundConnect {
        sock: sock6(0),
        task: None,
    });
    bodies.push(Body::Netns {
        netns: 4026532999,
        sysctls: crate::host::sysctls::Sysctls {
            tw_reuse: Some(2),
            tw_reuse_delay_ms: Some(1000),
            max_tw_buckets: Some(u64::MAX),
            timestamps: Some(1),
            fin_timeout_s: Some(60),
            rfc1337: Some(0),
            port_range: Some((1024, 65535)),
        },
    });
    bodies.push(Body::Netns {
        netns: 0,
        sysctls: crate::host::sysctls::Sysctls::default(),
    });
    bodies.push(Body::Lost { count: 0 });
    bodies.push(Body::Lost { count: u64::MAX });
    let ts = [5u64, 5, 4, u64::MAX, 0, 1 << 40, 1_000_000_000];
    let workloads = workloads();
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let e = Event::new(ts[i % ts.len()].wrapping_add(i as u64), body);
            // Minor 3: most events owned by one of a few workloads, some by none.
            match e.body {
                Body::Netns { .. } | Body::Lost { .. } => e,
                _ if i % 4 == 3 => e,
                _ => with_workload(e, &workloads[i % workloads.len()]),
            }
        })
        .collect()
}

/// Workloads of every form a file stores: a pod's container, a plain service, an unknown id.
fn workloads() -> Vec<crate::host::workload::Workload> {
    use crate::host::workload::Workload;
    let c = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut pod = Workload::from_path(
        u64::MAX,
        &format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_0000_1111_2222_333344445555.slice/cri-containerd-{c}.scope"),
    );
    pod.pod = Some("shop/cart-7d9".into());
    vec![
        pod,
        Workload::from_path(4242, "/system.slice/nginx.service"),
        Workload::unknown(1 << 40),
    ]
}

fn with_workload(mut e: Event, w: &crate::host::workload::Workload) -> Event {
    e.cgroup = w.cgroup_id;
    e.workload = Some(std::sync::Arc::new(w.clone()));
    e
}

fn write_file(path: &Path, events: &[Event], opts: WriterOptions) -> Vec<PathBuf> {
    let mut w = Writer::create(path, &header(), opts).unwrap();
    for e in events {
        w.write(e).unwrap();
    }
    w.finish(&Summary {
        lost: 3,
        map_errors: 5,
        skipped_runs: 6,
        filtered: 4,
        end_ns: 99,
        ..Summary::default()
    })
    .unwrap()
}

fn read_bytes(bytes: &[u8]) -> anyhow::Result<(Vec<Event>, Vec<Damage>)> {
    let mut r = Reader::new(bytes)?;
    let mut ev = Vec::new();
    let mut dmg = Vec::new();
    for item in r.events() {
        match item {
            Ok(e) => ev.push(e),
            Err(d) => dmg.push(d),
        }
    }
    Ok((ev, dmg))
}

#[test]
fn every_variant_round_trips() {
    let dir = TempDir::new("roundtrip");
    let path = dir.path("t.twt");
    let events = every_variant();
    // Small blocks too, so definitions are re-made in later blocks.
    for block_bytes in [64 << 10, 256] {
        let opts = WriterOptions {
            block_bytes,
            ..WriterOptions::default()
        };
        let paths = write_file(&path, &events, opts);
        assert_eq!(paths, vec![path.clone()]);
        let t = read_all(&path).unwrap();
        assert!(t.damage.is_empty(), "{:?}", t.damage);
        assert_eq!(t.events, events);
        let mut want = header();
        want.part = 0;
        assert_eq!(t.header, want);
        let mut sysctls = want.sysctls.clone();
        for e in &events {
            if let Body::Netns { netns, sysctls: s } = &e.body {
                sysctls.insert(*netns as u64, sysctls_kv(s));
            }
        }
        assert_eq!(t.sysctls, sysctls);
        let s = t.summary.expect("summary");
        assert_eq!(s.events, events.len() as u64);
        assert_eq!((s.lost, s.filtered, s.end_ns, s.parts), (3, 4, 99, 1));
        assert_eq!((s.map_errors, s.skipped_runs), (5, 6));
        assert_eq!(t.skipped_records, 0);
    }
}

#[test]
fn hook_errors_are_cut_to_their_first_line() {
    let status = |e: &str| crate::kernel::loader::HookStatus {
        hook: crate::kernel::loader::HOOKS[0],
        result: Err(e.to_string()),
        fallback_used: false,
    };
    let log = format!(
        "BPF_PROG_LOAD: Permission denied. Verifier output:\n{}",
        "x".repeat(9000)
    );
    let h = HookInfo::from(&status(&log));
    assert_eq!(
        h.error.as_deref(),
        Some("BPF_PROG_LOAD: Permission denied. Verifier output:…")
    );
    let long = "é".repeat(500);
    let cut = HookInfo::from(&status(&long)).error.unwrap();
    assert!(cut.len() <= 240 + "…".len() && cut.ends_with('…'), "{cut}");
    assert_eq!(
        HookInfo::from(&status("EPERM")).error.as_deref(),
        Some("EPERM")
    );
}

#[test]
fn ndjson_from_the_file_equals_the_live_json() {
    let dir = TempDir::new("json");
    let path = dir.path("t.twt");
    let events = every_variant();
    write_file(&path, &events, WriterOptions::default());
    let t = read_all(&path).unwrap();
    let live_clock = header().clock;
    for (a, b) in events.iter().zip(&t.events) {
        let (mut x, mut y) = (String::new(), String::new());
        a.write_json(&live_clock, &mut x);
        b.write_json(&t.header.clock, &mut y);
        assert_eq!(x, y);
    }
}

#[test]
fn file_mode_is_0600_even_over_an_existing_file() {
    let dir = TempDir::new("mode");
    let path = dir.path("t.twt");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let opts = WriterOptions {
        max_size: Some(MIN_MAX_SIZE),
        ..WriterOptions::default()
    };
    let paths = write_file(&path, &synthetic::events(2000, 1), opts);
    assert!(paths.len() > 1, "expected rotation: {paths:?}");
    for p in &paths {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

/// `-o /dev/null` and the like: written to, never chmod-ed (a FIFO stands in for the device).
#[test]
fn an_existing_special_file_keeps_its_mode() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = TempDir::new("fifo");
    let path = dir.path("fifo");
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A reader, so that opening the FIFO for writing does not block.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    create_private(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}

#[test]
fn rotation_splits_into_readable_parts_under_the_limit() {
    let dir = TempDir::new("rotate");
    let path = dir.path("t.twt");
    let events = synthetic::events(3000, 2);
    let max = 8192;
    let mut w = Writer::create(
        &path,
        &header(),
        WriterOptions {
            max_size: Some(max),
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let mut events = events;
    events.insert(
        10,
        Event::new(
            events[10].ts_ns,
            Body::Netns {
                netns: 77,
                sysctls: crate::host::sysctls::Sysctls {
                    tw_reuse: Some(1),
                    ..Default::default()
                },
            },
        ),
    );
    for e in &events {
        w.write(e).unwrap();
    }
    let paths = w.finish(&Summary::default()).unwrap();
    assert!(paths.len() >= 3, "{paths:?}");
    let mut all = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(*p, part_path(&path, i as u32));
        assert!(
            std::fs::metadata(p).unwrap().len() <= max,
            "{}",
            p.display()
        );
        let t = read_all(p).unwrap();
        assert!(t.damage.is_empty());
        assert_eq!(t.header.part, i as u32);
        // Namespaces seen mid-trace are in the headers of later parts.
        if i > 0 {
            assert_eq!(t.header.sysctls[&77]["net.ipv4.tcp_tw_reuse"], "1");
        }
        assert_eq!(t.summary.is_some(), i == paths.len() - 1);
        all.extend(t.events);
    }
    assert_eq!(all, events);
}

#[test]
fn sysctls_recorded_mid_trace_are_read() {
    let dir = TempDir::new("sysctl");
    let path = dir.path("t.twt");
    let mut w = Writer::create(&path, &header(), WriterOptions::default()).unwrap();
    let ev = vec![
        every_variant()[0].clone(),
        Event::new(
            7,
            Body::Netns {
                netns: 4026532999,
                sysctls: crate::host::sysctls::Sysctls {
                    max_tw_buckets: Some(5),
                    port_range: Some((1000, 2000)),
                    ..Default::default()
                },
            },
        ),
    ];
    for e in &ev {
        w.write(e).unwrap();
    }
    w.finish(&Summary::default()).unwrap();
    let mut r = Reader::open(&path).unwrap();
    assert!(!r.sysctls().contains_key(&4026532999));
    let got: Vec<_> = r.events().collect::<Result<_, _>>().unwrap();
    assert_eq!(got, ev);
    let ns = &r.sysctls()[&4026532999];
    assert_eq!(ns["net.ipv4.tcp_max_tw_buckets"], "5");
    assert_eq!(ns["net.ipv4.ip_local_port_range"], "1000\t2000");
    assert!(!ns.contains_key("net.ipv4.tcp_tw_reuse"));
    assert_eq!(r.sysctls()[&4026531840]["net.ipv4.tcp_tw_reuse"], "2");
}

#[test]
fn flush_interval_bounds_what_stays_in_memory() {
    let dir = TempDir::new("flush");
    let path = dir.path("t.twt");
    let ev = every_variant();
    let header_len = header().encode().len() as u64;
    let mut lazy = Writer::create(
        &path,
        &header(),
        WriterOptions {
            flush_interval: Duration::from_secs(3600),
            ..WriterOptions::default()
        },
    )
    .unwrap();
    lazy.write(&ev[0]).unwrap();
    lazy.maybe_flush().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), header_len);
    drop(lazy);

    let mut eager = Writer::create(
        &path,
        &header(),
        WriterOptions {
            flush_interval: Duration::ZERO,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    eager.write(&ev[0]).unwrap();
    eager.maybe_flush().unwrap();
    // Without finish(), as after SIGKILL: the event is in the file, whole.
    std::mem::forget(eager);
    let t = read_all(&path).unwrap();
    assert_eq!(t.events, ev[..1]);
    assert!(t.damage.is_empty());
    assert!(t.summary.is_none());
}

/// Offsets where blocks end, with the number of events before each.
fn block_ends(bytes: &[u8]) -> Vec<(usize, usize)> {
    let header_len =
        FILE_PREFIX_LEN + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let mut out = vec![(header_len, 0)];
    let mut at = header_len;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        at += BLOCK_HEADER_LEN + len;
        let (ev, dmg) = read_bytes(&bytes[..at]).unwrap();
        assert!(dmg.is_empty());
        out.push((at, ev.len()));
    }
    assert_eq!(at, bytes.len());
    out
}

#[test]
fn truncation_at_every_byte_keeps_every_whole_block() {
    let dir = TempDir::new("trunc");
    let path = dir.path("t.twt");
    let events = every_variant();
    write_file(
        &path,
        &events,
        WriterOptions {
            block_bytes: 256,
            ..WriterOptions::default()
        },
    );
    let bytes = std::fs::read(&path).unwrap();
    let ends = block_ends(&bytes);
    assert!(ends.len() >= 4, "want several blocks: {ends:?}");
    let header_len = ends[0].0;
    for cut in 0..bytes.len() {
        let part = &bytes[..cut];
        if cut < header_len {
            let err = format!("{:#}", Reader::new(part).err().expect("header must fail"));
            assert!(err.contains("byte "), "cut {cut}: {err}");
            continue;
        }
        let (ev, dmg) = read_bytes(part).unwrap();
        let &(end, n) = ends.iter().rev().find(|(e, _)| *e <= cut).unwrap();
        assert_eq!(ev, events[..n], "cut at {cut}");
        if end == cut {
            assert!(dmg.is_empty(), "cut at {cut}: {dmg:?}");
        } else {
            assert_eq!(dmg.len(), 1, "cut at {cut}: {dmg:?}");
            assert_eq!(dmg[0].offset, end as u64, "cut at {cut}: {dmg:?}");
            assert!(dmg[0].message.contains("cut short"), "{}", dmg[0]);
        }
    }
}

#[test]
fn corrupt_middle_block_loses_only_that_block() {
    let dir = TempDir::new("corrupt");
    let path = dir.path("t.twt");
    let events = synthetic::events(400, 3);
    write_file(
        &path,
        &events,
        WriterOptions {
            block_bytes: 512,
            ..WriterOptions::default()
        },
    );
    let clean = std::fs::read(&path).unwrap();
    let ends = block_ends(&clean);
    assert!(ends.len() > 6);
    // Damage the third block in three ways: a flipped payload byte, a broken marker, a
    // length pointing past the end of the file.
    let (start, before) = ends[2];
    let (end, after) = ends[3];
    for (what, at, val) in [
        ("payload", start + BLOCK_HEADER_LEN + 10, None),
        ("marker", start + 3, None),
        ("length", start + 10, Some(0x7f)),
    ] {
        let mut bytes = clean.clone();
        bytes[at] = val.unwrap_or(bytes[at] ^ 0x55);
        let (ev, dmg) = read_bytes(&bytes).unwrap();
        assert_eq!(dmg.len(), 1, "{what}: {dmg:?}");
        assert_eq!(dmg[0].offset, start as u64, "{what}: {}", dmg[0]);
        assert!(
            dmg[0]
                .message
                .contains(&format!("next whole block at byte {end}")),
            "{what}: {}",
            dmg[0]
        );
        let mut want = events[..before].to_vec();
        want.extend_from_slice(&events[after..]);
        assert_eq!(ev, want, "{what}");
    }
    // Garbage spliced in between two blocks (with a false marker in it) costs nothing.
    let mut bytes = clean[..end].to_vec();
    bytes.extend_from_slice(b"garbage");
    bytes.extend_from_slice(&SYNC);
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5]);
    bytes.extend_from_slice(&clean[end..]);
    let (ev, dmg) = read_bytes(&bytes).unwrap();
    assert_eq!(ev, events);
    assert_eq!(dmg.len(), 1, "{dmg:?}");
    assert_eq!(dmg[0].offset, end as u64);
}

#[test]
fn wrong_magic_is_a_clear_error() {
    for (bytes, want) in [
        (
            &b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"[..],
            "ELF",
        ),
        (&b"{\"time\":\"2026-01-01T00:00:00Z\"}\n"[..], "NDJSON"),
        (
            &b"\x89TWTRACF\x01\0\0\0\0\0\0\0\0\0\0\0"[..],
            "not a twtrace",
        ),
        (&b""[..], "empty"),
    ] {
        let err = format!("{:#}", Reader::new(bytes).err().expect("must fail"));
        assert!(err.contains("byte 0"), "{err}");
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn newer_major_version_is_refused_with_its_offset() {
    let mut h = header().encode();
    h[8..10].copy_from_slice(&2u16.to_le_bytes());
    h[10..12].copy_from_slice(&3u16.to_le_bytes());
    let err = format!("{:#}", Reader::new(&h[..]).err().expect("must fail"));
    assert!(err.contains("byte 8"), "{err}");
    assert!(err.contains("2.3") && err.contains("newer"), "{err}");
    // A corrupt header is also refused with its offset.
    let mut h = header().encode();
    let n = h.len();
    h[n - 1] ^= 1;
    let err = format!("{:#}", Reader::new(&h[..]).err().expect("must fail"));
    assert!(err.contains("byte 20") && err.contains("checksum"), "{err}");
}

/// Builds one block by hand.
fn block(payload: &[u8]) -> Vec<u8> {
    let mut b = SYNC.to_vec();
    let len = payload.len() as u32;
    b.extend_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// A newer minor version: unknown header fields, unknown record kinds (timed and untimed),
/// extra trailing bytes in known records, and new enum codes are all read past.
#[test]
fn newer_minor_version_additions_are_skipped() {
    let mut h = header();
    h.hooks.clear();
    let mut fields = h.encode_fields();
    put_varint(&mut fields, 999);
    put_bytes(&mut fields, b"a field from the future");
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
    file.extend_from_slice(&(VERSION_MINOR + 7).to_le_bytes());
    file.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    file.extend_from_slice(&crc32c::crc32c(&fields).to_le_bytes());
    file.extend_from_slice(&fields);

    let mut p = Vec::new();
    let rec = |p: &mut Vec<u8>, tag: u64, body: &[u8]| {
        put_varint(p, tag);
        put_bytes(p, body);
    };
    rec(&mut p, kind::DEF_TW_HIGH << 1, &0u32.to_le_bytes());
    rec(&mut p, kind::DEF_NETNS << 1, &[7]);
    rec(&mut p, kind::DEF_ADDR << 1, &[127, 0, 0, 1]);
    // A future timed kind with its own payload: its delta counts for the next record.
    let mut fut = Vec::new();
    put_varint(&mut fut, zigzag(1000));
    fut.extend_from_slice(b"whatever it carries");
    rec(&mut p, 60 << 1 | 1, &fut);
    // A future untimed kind.
    rec(&mut p, 1000 << 1, b"metadata");
    // A known exit with a future reason code (200) and trailing bytes.
    let mut exit = Vec::new();
    put_varint(&mut exit, zigzag(5));
    exit.extend_from_slice(&[0, 0x10, 0, 0, 0, 0, 0, 0x50, 0, 0, 0x50, 0]); // sock
    exit.extend_from_slice(&[0, 200, 8]); // TIME_WAIT, reason 200, lifetime flag
    put_varint(&mut exit, 61_000);
    // A trailing field of a later minor (tagged, as minor 3 defines them).
    put_varint(&mut exit, 77);
    put_bytes(&mut exit, b"new trailing field");
    rec(&mut p, kind::EXIT << 1 | 1, &exit);
    file.extend_from_slice(&block(&p));

    let mut r = Reader::new(&file[..]).unwrap();
    assert_eq!(r.header().version.minor, VERSION_MINOR + 7);
    let ev: Vec<_> = r.events().collect::<Result<_, _>>().unwrap();
    assert_eq!(r.skipped_records(), 2);
    assert_eq!(
        ev,
        vec![Event::new(
            1005,
            Body::Exit {
                sock: Sock {
                    tw: 0x10,
                    netns: 7,
                    laddr: "127.0.0.1".parse().unwrap(),
                    lport: 0x50,
                    raddr: "127.0.0.1".parse().unwrap(),
                    rport: 0x50,
                },
                substate: Substate::TimeWait,
                reason: ExitReason::Unknown,
                lifetime_ms: Some(61_000),
                task: None,
            }
        )]
    );
}

/// A record that refers to an undefined table entry is damage for that record only.
#[test]
fn bad_reference_inside_a_good_block_skips_one_record() {
    let mut file = header().encode();
    let mut p = Vec::new();
    let mut lost = Vec::new();
    put_varint(&mut lost, zigzag(10));
    put_varint(&mut lost, 3);
    put_varint(&mut p, kind::PAWS_REJECT << 1 | 1);
    put_bytes(&mut p, &[2, 9, 0, 0, 0, 0, 0]); // ts, tw prefix #9: undefined
    put_varint(&mut p, kind::LOST << 1 | 1);
    put_bytes(&mut p, &lost);
    let at = file.len() + BLOCK_HEADER_LEN;
    file.extend_from_slice(&block(&p));
    let (ev, dmg) = read_bytes(&file).unwrap();
    assert_eq!(dmg.len(), 1);
    assert_eq!(dmg[0].offset, at as u64);
    assert!(dmg[0].message.contains("#9"), "{}", dmg[0]);
    assert_eq!(ev, vec![Event::new(11, Body::Lost { count: 3 })]);
}

#[test]
fn realistic_mix_stays_under_40_bytes_per_event() {
    let dir = TempDir::new("size");
    let path = dir.path("t.twt");
    let events = synthetic::events(200_000, 4);
    write_file(&path, &events, WriterOptions::default());
    let size = std::fs::metadata(&path).unwrap().len();
    let per = size as f64 / events.len() as f64;
    assert!(per <= 40.0, "{per:.1} bytes/event");
    let t = read_all(&path).unwrap();
    assert_eq!(t.events.len(), events.len());
    assert!(t.events == events);
}

/// Inputs the fuzzer found (and a few hand-made ones) must read without a panic.
#[test]
fn fuzz_regressions_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let (mut events, mut damage) = (0, 0);
        if let Ok(mut r) = Reader::new(&bytes[..]) {
            for item in r.events().take(1_000_000) {
                match item {
                    Ok(_) => events += 1,
                    Err(_) => damage += 1,
                }
            }
        }
        // The hand-made valid file must still read whole.
        let name = p.file_name().unwrap().to_string_lossy();
        if name.starts_with("valid-") {
            assert!(
                events > 0 && damage == 0,
                "{name}: {events} events, {damage} damaged"
            );
        }
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
