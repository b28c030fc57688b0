//! Screens at several sizes, keys, sorting and the empty cases, without a terminal.

use super::histogram::histogram_lines;
use super::*;
use crate::analysis::aggregate::{Aggregator, CENSUS_SLOTS, N_BINS};
use crate::analysis::forecast::Risk;
use crate::host::sysctls::Sysctls;
use crate::pipeline::event::{Body, Event, ExitReason, Sock, Substate};

const NSX: u32 = 4026532001;

fn sock(tw: u64, l: [u8; 4], lport: u16, r: [u8; 4], rport: u16) -> Sock {
    let mut la = [0u8; 16];
    la[..4].copy_from_slice(&l);
    let mut ra = [0u8; 16];
    ra[..4].copy_from_slice(&r);
    Sock::from_raw(tw, NSX, 2, la, lport, ra, rport)
}

fn enter(ts_ns: u64, s: Sock) -> Event {
    Event::new(
        ts_ns,
        Body::Enter {
            sock: s,
            substate: Substate::TimeWait,
            timeout_ms: 60_000,
            task: None,
            snapshot: false,
            age_ms: None,
        },
    )
}

/// Two destinations: one about to run out of its 16 ports, one quiet.
fn sample() -> (Aggregator, HostInfo) {
    let mut a = Aggregator::default();
    a.set_context(
        NSX,
        Sysctls {
            port_range: Some((40000, 40015)),
            tw_reuse: Some(0),
            tw_reuse_delay_ms: Some(1000),
            max_tw_buckets: Some(262_144),
            timestamps: Some(1),
            ..Sysctls::default()
        },
    );
    let base = 1_000_000_000_000u64;
    // The kernel's census just before the traffic: no TIME_WAIT yet.
    let mut counts = [0u64; CENSUS_SLOTS];
    counts[1] = 3;
    counts[10] = 2;
    a.set_census(
        base - 1,
        &[crate::kernel::snapshot::NetnsCensus {
            netns: u64::from(NSX),
            counts,
        }],
    );
    for i in 0..12u16 {
        a.observe(&enter(
            base + u64::from(i) * 100_000_000,
            sock(u64::from(i), [10, 0, 0, 1], 40000 + i, [10, 0, 0, 2], 443),
        ));
    }
    for i in 0..2u16 {
        a.observe(&enter(
            base + u64::from(i),
            sock(
                100 + u64::from(i),
                [10, 0, 0, 1],
                40000 + i,
                [10, 0, 0, 3],
                80,
            ),
        ));
    }
    a.observe(&Event::new(
        base + 1_500_000_000,
        Body::Exit {
            sock: sock(100, [10, 0, 0, 1], 40000, [10, 0, 0, 3], 80),
            substate: Substate::TimeWait,
            reason: ExitReason::Reused,
            lifetime_ms: Some(1_200),
            task: None,
        },
    ));
    a.advance(base + 2_000_000_000);
    let host = HostInfo {
        host: "box".into(),
        kernel: "6.18.0".into(),
        hooks: vec![
            ("tp_btf/timer_start".into(), true),
            ("iter/tcp".into(), false),
        ],
        start_ns: base - 10_000_000_000,
    };
    (a, host)
}

fn line_with<'a>(text: &'a str, needle: &str) -> (usize, &'a str) {
    text.lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
}

#[test]
fn screen_at_80x24_and_200x50() {
    let (a, host) = sample();
    let m = Model::build(&a, &host);
    let v = ViewState::default();
    for (w, h) in [(80u16, 24u16), (200, 50), (60, 16)] {
        let buf = render_buffer(&m, &v, w, h);
        let text = buffer_text(&buf);
        eprintln!("{w}x{h}:\n{text}");
        assert_eq!(text.lines().count(), usize::from(h));
        assert!(text.lines().all(|l| l.chars().count() <= usize::from(w)));
        let (y, row) = line_with(&text, "10.0.0.2:443");
        let cols: Vec<&str> = row.split_whitespace().collect();
        // LOCAL REMOTE TW … at 80 columns; NETNS first at 200.
        let i = cols.iter().position(|c| *c == "10.0.0.2:443").unwrap();
        assert_eq!(cols[i + 1], "12", "TW now: {row}");
        if w >= 80 {
            // 12 of 16 ports, at 6/s (12 in 2 s) with 60 s lifetime: 0.7 s left.
            assert!(row.contains("75%"), "{row}");
            assert_eq!(risk_at(&buf, 1, y as u16), Risk::High, "{row}");
        }
        // Sorted by TW: the busier destination first.
        let (y3, _) = line_with(&text, "10.0.0.3:80");
        assert!(y < y3);
        let census = line_with(&text, "TIME-WAIT").1;
        // Census (empty TIME-WAIT at the census) + 13 entries − 1 exit since.
        assert!(census.contains("TIME-WAIT 13 (tw 13 + fw2 0)"), "{census}");
        if w >= 80 {
            assert!(
                census.contains("ESTAB 3") && census.contains("LISTEN 2"),
                "{census}"
            );
        }
        assert!(text.contains("lost 0"), "{text}");
        assert!(text.contains("hooks 1/2"), "{text}");
        if h >= 24 {
            assert!(text.contains("ports 40000-40015 (16)"), "{text}");
        }
        if w == 80 {
            assert!(row.ends_with("reuse=1 helps"), "{row}");
        }
        if w >= 200 {
            assert!(row.contains("tw_reuse=1 would help"), "{row}");
            assert!(text.contains("missing: iter/tcp"), "{text}");
            let (_, r3) = line_with(&text, "10.0.0.3:80");
            assert!(r3.contains("1 ≥1.2s"), "{r3}");
        }
    }
}

#[test]
fn histogram_shows_recent_exits() {
    let (a, host) = sample();
    let m = Model::build(&a, &host);
    let v = ViewState::default();
    // Short screen: the strip (labels, glyphs, counts); the 1-5 s bin holds the one reuse.
    let text = buffer_text(&render_buffer(&m, &v, 60, 11));
    assert!(
        text.contains("lifetime of exits in the last 60 s: 1"),
        "{text}"
    );
    let (y, labels) = line_with(&text, "10ms");
    let counts = text.lines().nth(y + 2).unwrap();
    let col = labels.find(" 5s").unwrap() + 2; // ASCII: bytes = chars
    assert_eq!(counts.chars().nth(col), Some('1'), "{labels}\n{counts}");
    // With room: one bar per bin.
    for (w, h) in [(80, 24), (200, 50)] {
        let big = buffer_text(&render_buffer(&m, &v, w, h));
        let (_, bar) = line_with(&big, "1-5s │");
        assert!(bar.trim_end().ends_with(" 1") && bar.contains('█'), "{bar}");
        let (_, empty) = line_with(&big, "60-61s │");
        assert!(empty.trim_end().ends_with('·'), "{empty}");
    }
    // Big counts stay apart in the strip.
    let mut bins = [0u64; N_BINS];
    bins[3] = 12_345;
    bins[4] = 67_890;
    bins[5] = 2_500_000;
    let strip: Vec<String> = histogram_lines(&bins, 80, 3)
        .iter()
        .map(|l| l.to_string())
        .collect();
    assert!(strip[2].contains("  12k  67k 2.5M"), "{strip:?}");
}

#[test]
fn keys_sort_filter_pause_and_netns() {
    let (a, host) = sample();
    let m = Model::build(&a, &host);
    let ns = m.netns_ids();
    let mut v = ViewState::default();
    assert!(v.on_key(Key::Char('s'), &ns));
    assert_eq!(v.sort, SortKey::Rate);
    for _ in 0..7 {
        v.on_key(Key::Char('s'), &ns);
    }
    assert_eq!(v.sort, SortKey::Timewait);
    // Filter: typed after '/', applied by Enter.
    v.on_key(Key::Char('/'), &ns);
    for c in "0.3".chars() {
        v.on_key(Key::Char(c), &ns);
    }
    assert_eq!(v.filter, "", "not applied while typing");
    let text = buffer_text(&render_buffer(&m, &v, 80, 24));
    assert!(text.contains("filter: 0.3"), "{text}");
    v.on_key(Key::Enter, &ns);
    assert_eq!(v.filter, "0.3");
    let rows = visible_rows(&m, &v);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key.remote(), "10.0.0.3:80");
    v.on_key(Key::Char('/'), &ns);
    v.on_key(Key::Char('x'), &ns);
    v.on_key(Key::Esc, &ns);
    assert_eq!(v.filter, "0.3", "Esc keeps the old filter");
    assert!(!v.quit);
    // netns: all → the one → all.
    v.on_key(Key::Char('n'), &ns);
    assert_eq!(v.netns, Some(NSX));
    v.on_key(Key::Char('n'), &ns);
    assert_eq!(v.netns, None);
    v.on_key(Key::Char('p'), &ns);
    assert!(v.paused);
    let text = buffer_text(&render_buffer(&m, &v, 80, 24));
    assert!(text.contains("PAUSED"), "{text}");
    assert!(!v.on_key(Key::Char('z'), &ns));
    v.on_key(Key::Char('q'), &ns);
    assert!(v.quit);
}

#[test]
fn sort_by_exhaustion_puts_the_soonest_first() {
    let (a, host) = sample();
    let m = Model::build(&a, &host);
    let v = ViewState {
        sort: SortKey::Exhaustion,
        ..ViewState::default()
    };
    let rows = visible_rows(&m, &v);
    assert_eq!(rows[0].key.remote(), "10.0.0.2:443");
    let v = ViewState {
        sort: SortKey::Remote,
        ..ViewState::default()
    };
    assert_eq!(visible_rows(&m, &v)[0].key.remote(), "10.0.0.2:443");
}

#[test]
fn lost_events_and_empty_screens() {
    let mut a = Aggregator::default();
    let host = HostInfo::default();
    let m = Model::build(&a, &host);
    let text = buffer_text(&render_buffer(&m, &ViewState::default(), 80, 24));
    assert!(text.contains("no TIME_WAIT activity seen yet"), "{text}");
    a.observe(&Event::new(5, Body::Lost { count: 42 }));
    let m = Model::build(&a, &host);
    let text = buffer_text(&render_buffer(&m, &ViewState::default(), 80, 24));
    assert!(text.contains("lost 42"), "{text}");
    for absent in ["read errors", "map errors", "SKIPPED"] {
        assert!(!text.contains(absent), "only when there are any: {text}");
    }
    let with_errors = Model {
        read_errors: 7,
        map_errors: 2,
        skipped_runs: 3,
        ..m.clone()
    };
    let text = buffer_text(&render_buffer(&with_errors, &ViewState::default(), 100, 24));
    assert!(
        text.contains("lost 42 read errors 7 map errors 2 SKIPPED 3"),
        "{text}"
    );
    // Tiny terminals do not panic.
    for (w, h) in [(1u16, 1u16), (10, 3), (30, 8)] {
        let _ = render_buffer(&m, &ViewState::default(), w, h);
    }
}

#[test]
fn screens_are_unchanged_on_a_long_mix() {
    // Computed before the view was split into regions: the split changed no cell.
    use crate::analysis::report::tests::{fingerprint, mixed};
    let host = HostInfo {
        host: "h".into(),
        kernel: "6.18".into(),
        hooks: vec![("tp/a".into(), true), ("fexit/b".into(), false)],
        start_ns: 0,
    };
    let m = Model::build(&mixed(), &host);
    let mut views = vec![ViewState::default()];
    for k in SortKey::ALL {
        views.push(ViewState {
            sort: k,
            ..Default::default()
        });
    }
    let ns = m.netns_ids();
    views.push(ViewState {
        netns: ns.first().copied(),
        ..Default::default()
    });
    views.push(ViewState {
        netns: ns.last().copied(),
        paused: true,
        ..Default::default()
    });
    views.push(ViewState {
        filter: "10.0".into(),
        ..Default::default()
    });
    views.push(ViewState {
        editing: Some("19".into()),
        ..Default::default()
    });
    let mut t = String::new();
    for v in &views {
        for (w, h) in [(40u16, 10u16), (80, 24), (120, 40), (200, 60), (100, 8)] {
            t.push_str(&buffer_text(&render_buffer(&m, v, w, h)));
        }
    }
    let empty = Model::build(&Aggregator::default(), &host);
    t.push_str(&buffer_text(&render_buffer(
        &empty,
        &ViewState::default(),
        100,
        30,
    )));
    assert!(
        t.contains("REMOTE") && t.contains("lifetime of exits"),
        "{t}"
    );
    assert_eq!(fingerprint(&t), (1487649916804753920, 212903));
}

/// The WORKLOAD column (issue 15): shown when events named a workload, with its short form;
/// absent otherwise (see `screen_at_80x24_and_200x50`).
#[test]
fn workload_column_names_the_rows_workload() {
    use crate::host::workload::Workload;
    let (mut a, host) = sample();
    let w = std::sync::Arc::new(Workload::from_path(
        42,
        "/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
    ));
    let mut e = enter(
        1_003_000_000_000,
        sock(500, [10, 0, 0, 1], 40100, [10, 0, 0, 2], 443),
    )
    .in_cgroup(42);
    e.workload = Some(w);
    a.observe(&e);
    let m = Model::build(&a, &host);
    let v = ViewState::default();
    let text = buffer_text(&render_buffer(&m, &v, 200, 50));
    let header = line_with(&text, "REMOTE").1;
    assert!(header.contains("WORKLOAD"), "{header}");
    let (_, row) = line_with(&text, "10.0.0.2:443");
    assert!(row.contains("0123456789ab"), "{row}");
    let (_, quiet) = line_with(&text, "10.0.0.3:80");
    assert!(quiet.split_whitespace().any(|c| c == "-"), "{quiet}");
    let (plain, _) = sample();
    let text = buffer_text(&render_buffer(&Model::build(&plain, &host), &v, 200, 50));
    assert!(!text.contains("WORKLOAD"), "{text}");
}
