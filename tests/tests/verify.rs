//! `twtrace verify` and `twtrace lab nat`, run for real: every claim's workload in its own
//! namespaces under the real tracer. The assertions are the kernel's rules applied to what was
//! measured (timer-wheel windows, 3.5×RTO, the reuse delay, the port arithmetic, PAWS), not
//! figures from one run; and no namespace outlives a run, finished or interrupted.
//!
//! The tests here run one at a time: they compare the namespaces before and after.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use twtrace::experiments::lab::{self, NatOptions};
use twtrace::experiments::verify::{self, ClaimId, Interrupted, ReuseRule, Wheel, TIMEWAIT_MS};
use twtrace::host::netns::{all_namespaces, NetNs};
use twtrace_tests::kernel;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Namespaces held by this process (only ours can leak from here: no bind mounts are made).
fn ours(all: &BTreeMap<u64, PathBuf>) -> BTreeMap<u64, PathBuf> {
    let me = format!("/proc/{}/", std::process::id());
    all.iter()
        .filter(|(_, p)| p.to_string_lossy().starts_with(&me))
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

/// Waits (teardown is asynchronous: keeper threads exit after the drop) until every namespace
/// this process holds was there before.
fn assert_no_namespace_left(before: &BTreeMap<u64, PathBuf>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<(u64, PathBuf)> = ours(&all_namespaces())
            .into_iter()
            .filter(|(k, _)| !before.contains_key(k))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "namespaces left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    assert!(!cur.is_null(), "missing {path} in {v:#}");
    cur
}

fn num(v: &Value, path: &str) -> u64 {
    get(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

#[test]
fn verify_measures_every_claim() {
    let _g = serial();
    let before = ours(&all_namespaces());
    let t0 = Instant::now();
    let report = verify::run(&[], Arc::new(AtomicBool::new(false)), |_| {}).expect("verify");
    // How long it takes is reported, not asserted: speed is the bench's business, and an
    // emulated CPU or a busy host is slower.
    eprintln!("verify: the whole run took {:?}", t0.elapsed());
    assert_no_namespace_left(&before);

    // The --json contract.
    let json = serde_json::to_value(&report).unwrap();
    let obj = json.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), vec!["claims"]);
    let claims = json["claims"].as_array().unwrap();
    let ids: Vec<&str> = claims.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ClaimId::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>()
    );
    let mut by_id = BTreeMap::new();
    for c in claims {
        for k in ["id", "verdict", "seed", "measured", "explanation"] {
            assert!(c.get(k).is_some(), "claim without {k}: {c:#}");
        }
        assert!(
            ["confirmed", "refuted", "changed", "not_applicable"]
                .contains(&c["verdict"].as_str().unwrap()),
            "{c:#}"
        );
        assert!(c["measured"].is_object());
        let e = c["explanation"].as_str().unwrap();
        assert!(!e.is_empty() && !e.contains('\n'), "one line: {e:?}");
        by_id.insert(c["id"].as_str().unwrap().to_string(), c.clone());
    }
    let table = verify::render_table(&report, 160);
    for id in &ids {
        assert!(table.contains(id), "{table}");
    }
    // Past libtest's capture: the kernel matrix's console logs show what verify measured there.
    let _ = writeln!(std::io::stderr(), "twtrace verify:\n{table}");

    let wheel = Wheel::from(kernel::features().hz);
    let verdict = |id: &str| by_id[id]["verdict"].as_str().unwrap().to_string();

    // duration: every lifetime inside the timer wheel's window around 60 s; the explanation
    // names the granularity at this HZ.
    let d = &by_id["duration"]["measured"];
    assert_eq!(num(d, "n"), num(d, "sockets"), "{d:#}");
    // The armed time is expires - jiffies as the program reads them: on a slow (emulated) CPU
    // jiffies can tick between the kernel's arming and the program (seen: 2 ticks on 6.12
    // under QEMU), never the other way.
    let armed = TIMEWAIT_MS - 4 * (1000 / wheel.hz)..=TIMEWAIT_MS;
    assert!(armed.contains(&num(d, "armed_ms.min")), "{d:#}");
    assert!(armed.contains(&num(d, "armed_ms.max")), "{d:#}");
    let (lo, hi) = wheel.window(TIMEWAIT_MS);
    assert!(num(d, "lifetime_ms.min") >= lo, "{d:#}");
    assert!(num(d, "lifetime_ms.max") <= hi, "{d:#}");
    assert_eq!(
        num(d, "wheel_granularity_ms"),
        wheel.granularity_ms(TIMEWAIT_MS)
    );
    assert_eq!(verdict("duration"), "confirmed");
    let expl = by_id["duration"]["explanation"].as_str().unwrap();
    assert!(expl.contains(&format!("HZ={}", wheel.hz)), "{expl}");
    assert!(
        expl.contains(&format!(
            "{} jiffies",
            wheel.granularity_jiffies(TIMEWAIT_MS)
        )),
        "{expl}"
    );

    // fin_timeout: TIME_WAIT keeps 60 s; the FIN_WAIT2 substate follows tcp_fin_timeout
    // (3 s > 3.5×RTO on loopback).
    let f = &by_id["fin_timeout"]["measured"];
    let fin_ms = num(f, "tcp_fin_timeout_s") * 1000;
    // As for the 60 s above: jiffies may tick between the arming and the program (seen: one
    // tick, 2 996 ms for 3 000, on 6.1 under QEMU), never the other way.
    let fin_armed = fin_ms - 4 * (1000 / wheel.hz)..=fin_ms;
    assert!(
        fin_armed.contains(&num(f, "fin_wait2.armed_ms.min")),
        "{f:#}"
    );
    assert!(
        fin_armed.contains(&num(f, "fin_wait2.armed_ms.max")),
        "{f:#}"
    );
    assert!(
        wheel.within(fin_ms, num(f, "fin_wait2.lifetime_ms.min")),
        "{f:#}"
    );
    assert!(
        wheel.within(fin_ms, num(f, "fin_wait2.lifetime_ms.max")),
        "{f:#}"
    );
    assert!(
        wheel.within(TIMEWAIT_MS, num(f, "time_wait.lifetime_ms.min")),
        "{f:#}"
    );
    assert!(
        wheel.within(TIMEWAIT_MS, num(f, "time_wait.lifetime_ms.max")),
        "{f:#}"
    );
    assert_eq!(verdict("fin_timeout"), "refuted");

    // recycle: the sysctl's presence is what the kernel says; FIN_WAIT2 armed at 3.5×RTO
    // (the RTO each socket reported), lifetimes within that timer's window.
    let r = &by_id["recycle"]["measured"];
    let exists = NetNs::new()
        .unwrap()
        .run(|| std::path::Path::new("/proc/sys/net/ipv4/tcp_tw_recycle").exists())
        .unwrap();
    assert_eq!(get(r, "tcp_tw_recycle_exists").as_bool(), Some(exists));
    for g in ["default_rto", "large_rto"] {
        let floor = verify::rto_floor_ms(num(r, &format!("{g}.rto_us.median")), wheel.hz);
        let armed = num(r, &format!("{g}.armed_ms.median"));
        assert!(
            armed.abs_diff(floor) <= 8 * wheel.jiffy_ms(),
            "{g}: armed {armed} vs 3.5×RTO {floor}: {r:#}"
        );
        assert!(
            wheel.within(armed, num(r, &format!("{g}.lifetime_ms.max"))),
            "{g}: {r:#}"
        );
    }
    assert!(num(r, "large_rto.rto_us.min") >= num(r, "large_rto.route_rto_min_ms") * 1000);
    assert_eq!(
        verdict("recycle"),
        if exists { "not_applicable" } else { "changed" }
    );

    // reuse: never without timestamps; never earlier than the kernel's rule (after
    // tcp_tw_reuse_delay from TIME_WAIT entry where the sysctl exists, else in a later monotonic
    // second than the last timestamp); mode 2 only on loopback; the tracer explains the
    // refusals the same way.
    let u = &by_id["reuse"]["measured"];
    let delay_exists = kernel::features().has_sysctl("net.ipv4.tcp_tw_reuse_delay");
    assert_eq!(
        get(u, "tcp_tw_reuse_delay_exists").as_bool(),
        Some(delay_exists)
    );
    assert_eq!(
        get(u, "reuse_rule").as_str(),
        Some(if delay_exists {
            "tcp_tw_reuse_delay"
        } else {
            "next_second"
        })
    );
    let t = |n: &str| get(u, &format!("trials.{n}")).clone();
    assert_eq!(num(&t("timestamps_off"), "reused"), 0);
    let refusals = |n: &str| -> Vec<String> {
        t(n)["refusals"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(refusals("timestamps_off"), vec!["no timestamps"]);
    assert_eq!(num(&t("mode2_veth"), "reused"), 0);
    assert_eq!(refusals("mode2_veth"), vec!["loopback only"]);
    assert!(num(&t("mode2_loopback"), "reused") > 0);
    assert_eq!(num(u, "early"), 0, "{u:#}");
    if delay_exists {
        assert!(num(&t("mode2_loopback"), "age_ms.min") + 2 >= 1000, "{u:#}");
        for (n, delay) in [("delay_200ms", 200), ("delay_1000ms", 1000)] {
            assert!(num(&t(n), "reused") > 0, "{n}: {u:#}");
            assert!(num(&t(n), "age_ms.min") + 2 >= delay, "{n}: {u:#}");
            // Tried every 10 ms: the first reuse comes soon after the delay.
            assert!(num(&t(n), "age_ms.min") < delay + 500, "{n}: {u:#}");
        }
    } else {
        kernel::partial(
            "verify_measures_every_claim",
            "no tcp_tw_reuse_delay (before 6.13): its delay trials do not apply; reuse checked \
             against the kernel's fixed next-second rule",
        );
        for n in ["timestamps_on", "mode2_loopback"] {
            assert!(num(&t(n), "reused") > 0, "{n}: {u:#}");
            assert_eq!(num(&t(n), "early"), 0, "{n}: {u:#}");
            // A socket goes at the first second boundary after its last timestamp (the peer's
            // FIN, milliseconds after the birth here), and connect() is retried every 10 ms
            // from the first try on: no takeover waits half a second more than the later of
            // the rule and that try. (The first try waits for every port to be held; under
            // emulation that took 2.3 s once, on 6.12; the sockets were made up to ~0.5 s
            // before the try is timed from.)
            let rule_or_try = (num(&t(n), "first_try_ms") + 500).max(1000);
            assert!(num(&t(n), "age_ms.max") < rule_or_try + 500, "{n}: {u:#}");
        }
    }
    // Mode 2 was loopback-only: the blog's rule changed whatever the delay rule.
    assert_eq!(verdict("reuse"), "changed");

    // max_tw_buckets: capped at the limit in its namespace, one overflow (event and kernel
    // counter) per extra close; the other namespace unaffected.
    let m = &by_id["max_tw_buckets"]["measured"];
    let (limit, n) = (num(m, "limit"), num(m, "n"));
    // The kernel's limit test is not atomic with the allocation: two CPUs closing at once
    // may both pass it (seen on the 6.12 guest: 6 with a limit of 5), and a timewait socket
    // killed young by an RST (seen on the 6.1 guest: 7, two of them dead) gives its bucket to
    // one more. Whatever the kernel let in, every drop it counted is an event.
    let tw = num(m, "capped_netns.timewait");
    let early = num(m, "capped_netns.early_exits");
    assert!((limit..=limit + 1 + early).contains(&tw), "{m:#}");
    assert_eq!(num(m, "capped_netns.overflow_events"), n - tw);
    assert_eq!(num(m, "capped_netns.TCPTimeWaitOverflow"), n - tw);
    assert!(num(m, "capped_netns.sockstat_tw") <= limit);
    assert_eq!(num(m, "other_netns.timewait"), n);
    assert_eq!(num(m, "other_netns.overflow_events"), 0);
    assert_ne!(verdict("max_tw_buckets"), "refuted");

    // linger0: one RST and no TIME_WAIT per close; the control closes leave TIME_WAIT.
    let l = &by_id["linger0"]["measured"];
    let n = num(l, "n");
    match kernel::features().abort_events() {
        Ok(()) => assert_eq!(num(l, "abort_events"), n),
        Err(why) => {
            kernel::partial("verify_measures_every_claim", &why);
            assert!(l["abort_events"].is_null(), "{l:#}");
            assert_eq!(num(l, "TCPAbortOnData"), n, "{l:#}");
        }
    }
    assert_eq!(num(l, "timewait_linger0"), 0);
    assert!(num(l, "OutRsts") >= n);
    assert_eq!(num(l, "control_timewait"), n);
    assert_eq!(verdict("linger0"), "confirmed");

    // port_exhaustion: connect() fails exactly when the arithmetic says.
    let p = &by_id["port_exhaustion"]["measured"];
    let (n, ports, rate) = (num(p, "n"), num(p, "ports"), num(p, "rate_per_s"));
    let plain = verify::predicted_successes(ports, n, rate, TIMEWAIT_MS);
    assert_eq!(plain, ports.min(n));
    // A TIME_WAIT socket reset at birth (loopback, rarely) gives its port back once.
    let early = num(p, "no_reuse.timewait_reset_early");
    assert!(early <= 2, "{p:#}");
    let expect = (plain + early).min(n);
    assert_eq!(num(p, "no_reuse.connected"), expect, "{p:#}");
    assert_eq!(num(p, "no_reuse.eaddrnotavail"), n - expect, "{p:#}");
    let first = num(p, "no_reuse.first_failure_attempt");
    assert!((plain + 1..=expect + 1).contains(&first), "{p:#}");
    let plain = expect;
    // With reuse, the prediction follows the kernel's rule: exact for tcp_tw_reuse_delay; for
    // the fixed next-second rule, over every phase of the run within the second.
    let rule = match p["tw_reuse"]["tcp_tw_reuse_delay_ms"].as_u64() {
        Some(d) => ReuseRule::Delay(d),
        None => ReuseRule::NextSecond,
    };
    assert_eq!(matches!(rule, ReuseRule::Delay(_)), delay_exists);
    assert_eq!(get(p, "tw_reuse.rule").as_str(), Some(rule.as_str()));
    let (lo, hi) = rule.predicted_range(ports, n, rate);
    // The workload is sized so that reuse makes a difference whatever the phase.
    assert!(lo > plain, "{lo} vs {plain}");
    let connected = num(p, "tw_reuse.result.connected");
    assert!((lo..=hi).contains(&connected), "{lo}..={hi}: {p:#}");
    assert_eq!(verdict("port_exhaustion"), "confirmed");
}

#[test]
fn verify_interrupted_leaves_no_namespace() {
    let _g = serial();
    let before = ours(&all_namespaces());
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let run = std::thread::spawn(move || {
        verify::run(
            &[ClaimId::Duration, ClaimId::FinTimeout, ClaimId::Reuse],
            c,
            |_| {},
        )
    });
    // Mid-run: namespaces exist, workloads are waiting. How soon they exist depends on the
    // machine (seconds under emulation): wait for them, bounded, then a little more so that
    // workloads are under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ours(&all_namespaces()).len() <= before.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ours(&all_namespaces()).len() > before.len(),
        "the run made no namespaces in 30 s"
    );
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    cancel.store(true, Ordering::Relaxed);
    let r = run.join().unwrap();
    let err = r.expect_err("an interrupted run is an error");
    assert!(err.is::<Interrupted>(), "{err:#}");
    // A FIN_WAIT2 server holding its end open is the slowest thing to unwind (7 s).
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert_no_namespace_left(&before);
}

#[test]
fn nat_lab_follows_the_timestamps() {
    let _g = serial();
    let before = ours(&all_namespaces());
    let r = lab::run_nat(
        &NatOptions::default(),
        Arc::new(AtomicBool::new(false)),
        |_| {},
    )
    .expect("lab nat");
    assert_no_namespace_left(&before);
    assert!(r.nat_tool == "nftables" || r.nat_tool == "iptables");
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["phases"].as_array().is_some_and(|p| p.len() == 2));
    let text = lab::render_nat(&r);
    assert!(text.contains("Findings:"), "{text}");
    let _ = writeln!(std::io::stderr(), "twtrace lab nat:\n{text}");
    // What the kernel lacks is said, never an error: the counters as /proc/net/netstat has them.
    let has_counter = |name: &str| kernel::features().has_tcpext(name);
    assert_eq!(
        r.kernel
            .counters_unavailable
            .contains(&"TcpExt:PAWSTimewait".to_string()),
        !has_counter("PAWSTimewait"),
        "{text}"
    );
    let delay_exists = kernel::features().has_sysctl("net.ipv4.tcp_tw_reuse_delay");
    assert_eq!(
        r.kernel.reuse_rule,
        if delay_exists {
            "tcp_tw_reuse_delay"
        } else {
            "next_second"
        }
    );
    let paws_events = kernel::features().paws_events();
    assert_eq!(r.kernel.paws_events_unavailable, paws_events.clone().err());
    let rst_reason = kernel::features().rst_reason();
    assert_eq!(r.kernel.rst_reason_unavailable, rst_reason.clone().err());
    let (cf, sf) = (&r.phases[0], &r.phases[1]);

    // Clients close first: TIME_WAIT on the clients only (one per connection).
    assert_eq!(cf.first_closer, "clients");
    assert_eq!(cf.timewait["server"], 0, "{text}");
    assert_eq!(cf.timewait["router"], 0, "{text}");
    let (c1, c2) = (&cf.clients["c1"], &cf.clients["c2"]);
    assert_eq!(cf.timewait["c1"], c1.connected, "{text}");
    assert_eq!(cf.timewait["c2"], c2.connected, "{text}");
    // c1 (tcp_tw_reuse=1) takes over its TIME_WAIT sockets behind the NAT, never earlier than
    // the kernel's rule (the default 1 s delay, or before 6.13 a later second than the last
    // timestamp), and the kernel counts each; c2 (the default 2) never does for a non-loopback
    // peer, and runs out of its 4 ports.
    assert_eq!(c1.tcp_tw_reuse, "1");
    assert_eq!(c1.failed, 0, "{text}");
    assert!(c1.reused > 0, "{text}");
    assert_eq!(c1.reuse_early, 0, "{text}");
    if delay_exists {
        assert!(c1.reuse_age_ms.unwrap().min + 2 >= 1000, "{text}");
    }
    let recycled = |c: &str| cf.counters[c]["TWRecycled"].expect("TWRecycled") as usize;
    assert_eq!(recycled("c1"), c1.reused, "{text}");
    assert_eq!(c2.tcp_tw_reuse, "2");
    assert_eq!(c2.reused, 0);
    assert_eq!(recycled("c2"), 0);
    // Four translated ports held by TIME_WAIT: four connect, unless one of those sockets died
    // early (a reset at birth, seen once on 6.12 under QEMU) and gave its port back.
    assert!(
        (4.min(c2.attempts)..=c2.attempts).contains(&c2.connected),
        "{text}"
    );
    assert!(c2.refusals.keys().all(|k| *k == "loopback only"), "{text}");

    // Server closes first: TIME_WAIT on the server, one per connection.
    assert_eq!(sf.first_closer, "server");
    let connected = sf.clients.values().map(|c| c.connected).sum::<usize>();
    assert_eq!(sf.timewait["server"], connected, "{text}");
    assert_eq!(sf.timewait["c1"] + sf.timewait["c2"], 0, "{text}");
    // With 4 translated ports and 12 connections, SYNs met the server's TIME_WAIT sockets.
    let meetings: Vec<&lab::Met> = sf.attempts.iter().flat_map(|a| &a.met).collect();
    assert!(!meetings.is_empty(), "{text}");
    // Each meeting went as the measured timestamps say: newer → accepted as a new incarnation;
    // older → dropped by PAWS, and the TIME_WAIT killed by the client's RST. Where the kernel
    // cannot report PAWS drops per packet, the count is unknown (not zero), and where its
    // tracepoints cannot show the RST (6.1) the kill is `unknown`.
    for why in [&paws_events, &rst_reason]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
    {
        kernel::partial("nat_lab_follows_the_timestamps", why);
    }
    let with_attempt = sf
        .attempts
        .iter()
        .flat_map(|a| a.met.iter().map(move |m| (a, m)));
    for (a, m) in with_attempt {
        assert_eq!(m.paws_rejected.is_some(), paws_events.is_ok(), "{m:?}");
        match m.timestamp {
            "newer" => assert!(
                m.accepted == 1 && m.paws_rejected.unwrap_or(0) == 0,
                "{m:?}\n{text}"
            ),
            // The older SYN was dropped, but the TIME_WAIT socket outlived it (the client's
            // RST did not kill it) and the SYN retransmitted a second later, its timestamp
            // now the newer, was accepted (seen once on 6.1 under QEMU).
            // Where the kernel reports PAWS drops per packet (6.18) the prediction is checked
            // strictly; without them (6.1, 6.12) an older SYN accepted at once was also seen
            // on 6.1 under QEMU (twice, unexplained: the timestamps are read from userspace,
            // and nothing per packet says what the kernel compared), so only told there.
            "older" if m.accepted == 1 => {
                assert!(
                    paws_events.is_err()
                        || (a.connect_ms >= 900 && m.rst_killed + m.other_killed == 0),
                    "{m:?} after {} ms\n{text}",
                    a.connect_ms
                );
                kernel::partial(
                    "nat_lab_follows_the_timestamps",
                    "a SYN predicted older (or its retransmission) was accepted into the TIME_WAIT socket",
                );
            }
            "older" => {
                assert!(m.accepted == 0, "{m:?}\n{text}");
                if let Some(n) = m.paws_rejected {
                    assert!(n >= 1, "{m:?}\n{text}");
                }
                // Killed by the client's RST: told as such where the tracer can.
                let (told, untold) = if rst_reason.is_ok() { (1, 0) } else { (0, 1) };
                assert_eq!(
                    (m.rst_killed, m.other_killed),
                    (told, untold),
                    "{m:?}\n{text}"
                );
            }
            _ => {}
        }
    }
    let older = meetings.iter().filter(|m| m.timestamp == "older").count() as u64;
    let server = &sf.counters["server"];
    match (server["PAWSTimewait"], sf.paws_rejected) {
        (Some(c), Some(n)) => assert_eq!(c, n as u64, "{text}"),
        (Some(c), None) => assert!(c >= older, "{text}"),
        // Before PAWSTimewait, a TIME_WAIT socket's PAWS drops count in PAWSEstab.
        (None, _) => assert!(server["PAWSEstab"].expect("PAWSEstab") >= older, "{text}"),
    }
    // Every connection got through in the end (a PAWS drop costs a SYN retransmission).
    assert_eq!(connected, sf.attempts.len(), "{text}");
}
