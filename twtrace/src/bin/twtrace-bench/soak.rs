//! `twtrace-bench soak --minutes N`: endurance. twtrace runs for N minutes at a steady
//! ~20 000 TIME_WAIT events/s with namespaces created and deleted every minute, and every
//! minute the bench records its memory, CPU, the sizes of its BPF hash maps, what it lost,
//! and whether it saw exactly the events the kernel counted in each namespace that ended.
//!
//! The load, per minute: a fresh namespace in the recycling state (50 client ports × 1 000
//! destination addresses 127.0.x.y, so ~50 000 TIME_WAIT sockets are alive and every connect
//! after the first seconds reuses one: an entry and an exit per connection), paced to half the
//! event rate in connections/s; the previous minute's namespace is deleted at the start of the
//! next (the kernel purges its sockets: one burst of ~50 000 exits a minute); and `churn`
//! small namespaces, each with a few connections whose TIME_WAIT sockets are purged when it is
//! deleted a moment later (what containers coming and going look like).
//!
//! twtrace runs as `twtrace --summary-every 60` (line output, parsed here, plus the
//! aggregator of the live summary, so its memory is part of what is measured).
//!
//! Checks, per namespace once it is deleted and purged: entries seen = exits seen = the
//! namespace's `TcpExtTW + TcpExtTWKilled` (every TIME_WAIT socket born there has ended: reused,
//! expired or purged), and reuse exits seen = `TcpExtTWRecycled`.

use crate::children::{self, Ready, Running};
use crate::report::{f0, opt, table};
use crate::{bpfmaps, READY_LINE, START_TIMEOUT, STOP_TIMEOUT};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twtrace::host::netns::NetNs;
use twtrace::testkit::loadgen::{self, LoadSpec, NsTuning};

const MINUTE: Duration = Duration::from_secs(60);
/// Client ports of each minute's namespace: × the destinations, the TIME_WAIT sockets alive.
const PORTS: u16 = 50;
/// How long a deleted namespace may take to be purged before its counts are judged.
const PURGE_GRACE: Duration = Duration::from_secs(20);
const PURGE_MAX: Duration = Duration::from_secs(120);

pub struct Spec {
    /// Differences allowed per namespace, in millionths of its kernel events (0: exact).
    pub tolerance_ppm: f64,
    pub minutes: u32,
    pub events_per_s: f64,
    pub dests: u16,
    pub churn: usize,
    pub workers: usize,
}

/// What twtrace printed, per namespace the bench made (by inode). The kernel hands a deleted
/// namespace's inode number to the next namespace created, so [`make`] never lets two of the
/// soak's namespaces share a number while the first is not yet judged (see `parked`).
#[derive(Default)]
struct Seen {
    ns: HashMap<u64, NsSeen>,
    /// Events in namespaces the bench did not make: someone else's.
    foreign: u64,
    lost: u64,
    lines: u64,
    /// The latest `# summary:` line of the live summary.
    summary: Option<String>,
}

#[derive(Clone, Copy, Default, Debug)]
struct NsSeen {
    enter: u64,
    exit: u64,
    reused: u64,
    /// Set when the bench deletes it: its TIME_WAIT sockets born. Once as many have left, the
    /// namespace is done and its inode number is no longer counted as ours (the kernel may
    /// give it to someone else's next namespace; other benches run on this machine).
    born: Option<u64>,
    done: bool,
    /// Exits whose reason is neither `reused` nor `purged` (the soak makes no other kind).
    odd: u64,
}

/// One line of `twtrace --summary-every` output (see `sink/line.rs`): `TIME NETNS EVENT
/// SUBSTATE LOCAL REMOTE DETAIL…`, an exit's detail starting with its reason.
fn parse_line(line: &str, seen: &mut Seen) {
    seen.lines += 1;
    if line.starts_with("# summary:") {
        seen.summary = Some(line.to_string());
        return;
    }
    let mut f = line.split_whitespace();
    let (_, Some(a), Some(b)) = (f.next(), f.next(), f.next()) else {
        return;
    };
    if a == "LOST" {
        seen.lost += b.parse::<u64>().unwrap_or(1);
        return;
    }
    if b != "enter" && b != "exit" {
        return;
    }
    let Ok(ino) = a.parse::<u64>() else {
        return;
    };
    let Some(s) = seen.ns.get_mut(&ino).filter(|s| !s.done) else {
        seen.foreign += 1;
        return;
    };
    match b {
        "enter" => s.enter += 1,
        _ => {
            s.exit += 1;
            // SUBSTATE LOCAL REMOTE, then the reason.
            match f.nth(3) {
                Some("reused") => s.reused += 1,
                Some("purged") => {}
                _ => s.odd += 1,
            }
            s.done = s.born.is_some_and(|b| s.exit >= b);
        }
    }
}

/// A namespace the bench made, deleted, waiting to be checked against what twtrace saw.
struct Pending {
    ino: u64,
    main: bool,
    born: u64,
    recycled: u64,
    alive_at_delete: u64,
    deleted: Instant,
}

#[derive(Default, Clone, Copy)]
struct Checked {
    namespaces: u64,
    /// Beyond the tolerance.
    mismatched: u64,
    /// Not exactly equal (within the tolerance or not), and by how many events in all.
    inexact: u64,
    off: u64,
    kernel_events: u64,
    seen_events: u64,
    recycled: u64,
    seen_reused: u64,
}

/// Births and reuses the kernel counted in `ns` so far.
fn counters(ns: &NetNs) -> Result<(u64, u64)> {
    let c = loadgen::netstat(ns)?;
    let g = |k: &str| c.get(k).copied().unwrap_or(0);
    Ok((
        g("TcpExt:TW") + g("TcpExt:TWKilled"),
        g("TcpExt:TWRecycled"),
    ))
}

/// A namespace of the soak, registered with the reader as soon as it exists (before any
/// socket is made in it). One whose inode number is still registered (an earlier namespace
/// of ours, deleted but not judged yet) is kept empty in `parked` and another is made.
fn make(seen: &Mutex<Seen>, parked: &mut Vec<NetNs>) -> Result<NetNs> {
    for _ in 0..64 {
        let ns = NetNs::new()?;
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        if s.ns.contains_key(&ns.inode()) {
            drop(s);
            parked.push(ns);
            continue;
        }
        s.ns.insert(ns.inode(), NsSeen::default());
        return Ok(ns);
    }
    bail!("64 new namespaces in a row had inode numbers still in use by the soak")
}

/// Parked namespaces whose number is free again (its earlier holder judged) can go.
fn unpark(seen: &Mutex<Seen>, parked: &mut Vec<NetNs>) {
    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    parked.retain(|ns| s.ns.contains_key(&ns.inode()));
}

fn delete(ns: NetNs, main: bool, seen: &Mutex<Seen>) -> Result<Pending> {
    let (born, recycled) = counters(&ns)?;
    let alive = loadgen::tw_alive(&ns).unwrap_or(0);
    let ino = ns.inode();
    {
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = s.ns.get_mut(&ino) {
            n.born = Some(born);
            n.done = n.exit >= born;
        }
    }
    drop(ns);
    Ok(Pending {
        ino,
        main,
        born,
        recycled,
        alive_at_delete: alive,
        deleted: Instant::now(),
    })
}

/// Judges the pending namespaces that are old enough; returns what was judged (and keeps the
/// rest). `all`: the end, judge everything older than the grace.
fn check(
    pending: &mut Vec<Pending>,
    seen: &Mutex<Seen>,
    mismatches: &mut Vec<Value>,
    tolerance_ppm: f64,
) -> Checked {
    let mut c = Checked::default();
    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
    pending.retain(|p| {
        let age = p.deleted.elapsed();
        let got = s.ns.get(&p.ino).copied().unwrap_or_default();
        // Judged once every socket born there has left (the reader stopped counting it), or
        // after the grace.
        if age < PURGE_GRACE && !got.done {
            return true;
        }
        let exact = got.enter == p.born && got.exit == p.born && got.reused == p.recycled;
        // Exits still arriving: a purge can lag (the kernel's cleanup_net is a worker).
        if !exact && got.exit < p.born && age < PURGE_MAX {
            return true;
        }
        let allowed = (tolerance_ppm * 2.0 * p.born as f64 / 1e6).floor() as u64;
        let off = got.enter.abs_diff(p.born)
            + got.exit.abs_diff(p.born)
            + got.reused.abs_diff(p.recycled);
        let ok = off <= allowed;
        if !exact {
            c.inexact += 1;
            c.off += off;
        }
        c.namespaces += 1;
        c.kernel_events += 2 * p.born;
        c.seen_events += got.enter + got.exit;
        c.recycled += p.recycled;
        c.seen_reused += got.reused;
        if !exact {
            if !ok {
                c.mismatched += 1;
            }
            mismatches.push(json!({
                "within_tolerance": ok,
                "netns": p.ino, "main": p.main, "born": p.born, "recycled": p.recycled,
                "alive_at_delete": p.alive_at_delete,
                "seen_enter": got.enter, "seen_exit": got.exit, "seen_reused": got.reused,
                "seen_other_exits": got.odd,
            }));
        }
        s.ns.remove(&p.ino);
        false
    });
    c
}

/// Least-squares slope of `ys` per step (minute); `None` with fewer than 2 points.
pub fn slope(ys: &[f64]) -> Option<f64> {
    let n = ys.len();
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mx = (nf - 1.0) / 2.0;
    let my = ys.iter().sum::<f64>() / nf;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mx;
        num += dx * (y - my);
        den += dx * dx;
    }
    Some(num / den)
}

/// The summary's namespace count, e.g. `…; 12 peers; 1024 namespaces (3072 idle ones dropped)`.
fn summary_namespaces(line: &str) -> (Option<u64>, Option<u64>) {
    let Some((head, tail)) = line.split_once(" namespaces") else {
        return (None, None);
    };
    let rows = head.rsplit(' ').next().and_then(|n| n.parse().ok());
    let dropped = tail
        .strip_prefix(" (")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok());
    (rows, dropped)
}

pub fn run(twtrace: &Path, spec: &Spec, json_out: Option<&Path>) -> Result<bool> {
    if spec.minutes == 0 || spec.minutes > 24 * 60 {
        bail!("--minutes must be between 1 and 1440");
    }
    if !(spec.events_per_s > 0.0 && spec.events_per_s <= 1e6) {
        bail!("--rate must be between 1 and 1 000 000 events/s");
    }
    if spec.dests == 0 || spec.dests > 60_000 || spec.churn > 600 {
        bail!("--dests must be 1..=60000 and --churn at most 600");
    }
    let started = Instant::now();
    println!(
        "soak: {} min at {:.0} events/s, {} destinations, a new namespace + {} short-lived ones a minute",
        spec.minutes, spec.events_per_s, spec.dests, spec.churn
    );
    let mut cmd = Command::new(twtrace);
    cmd.args(["--summary-every", "60"]).stdout(Stdio::piped());
    let mut tracer = children::start("twtrace", cmd, Ready::StderrLine(READY_LINE), START_TIMEOUT)?;
    let stdout = tracer.take_stdout().context("twtrace's stdout")?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    // Reads until twtrace closes its stdout (it exits), so it never blocks twtrace.
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 20, stdout);
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            parse_line(
                line.trim_end(),
                &mut s2.lock().unwrap_or_else(|p| p.into_inner()),
            );
            line.clear();
        }
    });
    let result = soak_loop(&mut tracer, spec, &seen);
    let stopped = tracer.stop(STOP_TIMEOUT)?;
    let _ = reader.join();
    let (mut out, mut pass) = result?;
    let summary = crate::report::find_summary(&stopped.stderr);
    let lost_summary = summary.as_ref().map(|s| s.lost());
    let lost_stream = seen.lock().unwrap_or_else(|p| p.into_inner()).lost;
    if lost_summary.unwrap_or(1) > 0 || lost_stream > 0 {
        pass = false;
    }
    out["lost_summary"] = json!(lost_summary);
    out["lost_stream"] = json!(lost_stream);
    out["tracer_summary"] = json!(stopped
        .stderr
        .iter()
        .rev()
        .find(|l| l.starts_with("twtrace:")));
    out["elapsed_s"] = json!(started.elapsed().as_secs_f64());
    out["pass"] = json!(pass);
    println!(
        "soak: lost {} (stream {lost_stream}); {}",
        lost_summary.map_or("? (no summary line)".into(), |l| l.to_string()),
        if pass { "PASS" } else { "FAIL" }
    );
    if let Some(p) = json_out {
        let text = serde_json::to_string_pretty(&json!({"schema": 1, "soak": out}))?;
        std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(pass)
}

fn soak_loop(tracer: &mut Running, spec: &Spec, seen: &Mutex<Seen>) -> Result<(Value, bool)> {
    let mut pending: Vec<Pending> = Vec::new();
    let mut mismatches: Vec<Value> = Vec::new();
    let mut total = Checked::default();
    let mut rows = Vec::new();
    let mut minutes = Vec::new();
    let mut prev: Option<NetNs> = None;
    let mut parked: Vec<NetNs> = Vec::new();
    let mut cpu_prev = tracer.cpu_s();
    let conns_per_s = spec.events_per_s / 2.0;
    for m in 0..spec.minutes {
        let t0 = Instant::now();
        let ns = make(seen, &mut parked)?;
        NsTuning::recycling(PORTS).apply(&ns)?;
        let load_spec = LoadSpec {
            workers: spec.workers,
            max_conns: (conns_per_s * 70.0) as u64,
            // Room at the end of the minute for the samples (map walks take ~0.1–0.5 s).
            max_time: MINUTE - Duration::from_secs(2),
            rate: Some(conns_per_s),
            dst_addrs: spec.dests,
            base_port: 9000,
        };
        let (load, churned) = std::thread::scope(|sc| -> Result<_> {
            let h = sc.spawn(|| loadgen::run(&ns, &load_spec));
            // The previous minute's namespace goes now: its purge lands in this minute's load.
            if let Some(p) = prev.take() {
                pending.push(delete(p, true, seen)?);
            }
            let mut churned = 0u64;
            for j in 0..spec.churn {
                // Spread over the first 50 s of the minute.
                let due = t0 + Duration::from_secs(50) * j as u32 / spec.churn.max(1) as u32;
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let small = make(seen, &mut parked)?;
                NsTuning::accumulate(10_000).apply(&small)?;
                let r = loadgen::run(
                    &small,
                    &LoadSpec {
                        workers: 1,
                        max_conns: 20,
                        max_time: Duration::from_secs(5),
                        rate: None,
                        dst_addrs: 1,
                        base_port: 9100,
                    },
                )?;
                churned += r.conns;
                pending.push(delete(small, false, seen)?);
            }
            let load = h
                .join()
                .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
            Ok((load, churned))
        })?;
        prev = Some(ns);
        let c = check(&mut pending, seen, &mut mismatches, spec.tolerance_ppm);
        unpark(seen, &mut parked);
        for (t, x) in [
            (&mut total.namespaces, c.namespaces),
            (&mut total.mismatched, c.mismatched),
            (&mut total.inexact, c.inexact),
            (&mut total.off, c.off),
            (&mut total.kernel_events, c.kernel_events),
            (&mut total.seen_events, c.seen_events),
            (&mut total.recycled, c.recycled),
            (&mut total.seen_reused, c.seen_reused),
        ] {
            *t += x;
        }
        let maps = bpfmaps::sizes_of(tracer.pid);
        let map_entries: u64 = maps.iter().filter_map(|m| m.entries).sum();
        let cpu = tracer.cpu_s();
        let cpu_pct = 100.0 * (cpu - cpu_prev) / t0.elapsed().as_secs_f64().max(1e-9);
        cpu_prev = cpu;
        let rss = tracer.rss_kib();
        let anon = children::status_kib(tracer.pid, "RssAnon:");
        let (lost, summary) = {
            let s = seen.lock().unwrap_or_else(|p| p.into_inner());
            (s.lost, s.summary.clone())
        };
        let (agg_ns, agg_dropped) = summary
            .as_deref()
            .map(summary_namespaces)
            .unwrap_or((None, None));
        rows.push(vec![
            (m + 1).to_string(),
            f0(load.tw_events_per_s()),
            load.errors.to_string(),
            rss.map_or("?".into(), |r| r.to_string()),
            format!("{cpu_pct:.1}"),
            map_entries.to_string(),
            format!("{}/{}", c.seen_events, c.kernel_events),
            c.namespaces.to_string(),
            c.mismatched.to_string(),
            lost.to_string(),
            agg_ns.map_or("?".into(), |n| n.to_string()),
        ]);
        eprintln!(
            "soak: minute {} events/s {:.0} rss {:?} KiB cpu {cpu_pct:.1}% maps {map_entries} seen {}/{} in {} ns ({} bad) lost {lost}",
            m + 1,
            load.tw_events_per_s(),
            rss,
            c.seen_events,
            c.kernel_events,
            c.namespaces,
            c.mismatched
        );
        minutes.push(json!({
            "minute": m + 1,
            "offered_events_per_s": load.tw_events_per_s(),
            "conns": load.conns, "errors": load.errors, "tw_overflow": load.tw_overflow,
            "churn_conns": churned,
            "tracer_rss_kib": rss, "tracer_rss_anon_kib": anon, "tracer_cpu_pct": cpu_pct,
            "map_entries_total": map_entries,
            "maps": maps.iter().map(|x| json!({
                "id": x.id, "name": x.name, "max_entries": x.max_entries, "entries": x.entries,
            })).collect::<Vec<_>>(),
            "namespaces_checked": c.namespaces, "namespaces_mismatched": c.mismatched,
            "kernel_events_checked": c.kernel_events, "events_seen_checked": c.seen_events,
            "lost_so_far": lost,
            "aggregator_namespaces": agg_ns, "aggregator_namespaces_dropped": agg_dropped,
            "load_average": crate::load_average(),
        }));
        // The minute is a minute whatever the samples took.
        if let Some(w) = MINUTE.checked_sub(t0.elapsed()) {
            std::thread::sleep(w);
        }
    }
    // The last namespace, then wait (bounded) until every purge has been seen.
    if let Some(p) = prev.take() {
        pending.push(delete(p, true, seen)?);
    }
    let end = Instant::now();
    while !pending.is_empty() && end.elapsed() < PURGE_MAX + PURGE_GRACE {
        std::thread::sleep(Duration::from_secs(2));
        let c = check(&mut pending, seen, &mut mismatches, spec.tolerance_ppm);
        total.namespaces += c.namespaces;
        total.mismatched += c.mismatched;
        total.inexact += c.inexact;
        total.off += c.off;
        total.kernel_events += c.kernel_events;
        total.seen_events += c.seen_events;
        total.recycled += c.recycled;
        total.seen_reused += c.seen_reused;
    }
    let unchecked = pending.len();
    print!(
        "{}",
        table(
            &[
                "min",
                "events/s",
                "errors",
                "RSS KiB",
                "CPU %",
                "map entries",
                "seen/kernel",
                "ns checked",
                "ns bad",
                "lost",
                "agg ns",
            ],
            &rows
        )
    );
    // Flatness is judged after warm-up: the second half of the run (the first minutes fill the
    // maps and, until its bound, the aggregator's namespace table).
    let half = minutes.len() / 2;
    let col = |k: &str| -> Vec<f64> {
        minutes[half..]
            .iter()
            .filter_map(|v| v[k].as_f64())
            .collect()
    };
    let rss_slope = slope(&col("tracer_rss_kib"));
    let map_slope = slope(&col("map_entries_total"));
    let rss_mean = crate::report::median(&col("tracer_rss_kib"));
    // Per map (by name: ids stay the same within one twtrace run).
    let mut map_slopes = Vec::new();
    let names: Vec<(String, f64)> = minutes
        .last()
        .and_then(|v| v["maps"].as_array())
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("?").to_string(),
                        m["max_entries"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for (name, cap) in &names {
        let ys: Vec<f64> = minutes[half..]
            .iter()
            .filter_map(|v| {
                v["maps"]
                    .as_array()?
                    .iter()
                    .find(|m| m["name"].as_str() == Some(name))?["entries"]
                    .as_f64()
            })
            .collect();
        let sl = slope(&ys);
        let flat = sl.map(|x| x * 60.0 <= 0.05 * cap.max(1.0));
        map_slopes.push(json!({
            "name": name, "max_entries": cap, "slope_per_min": sl, "flat": flat,
            "last": ys.last(),
        }));
    }
    // Flat: less than 5 % growth per hour extrapolated (RSS: of its median; a map: of its
    // capacity). Judged only with 10 minutes or more: shorter runs have no post-warm-up
    // stretch worth a slope.
    let judged = spec.minutes >= 10;
    let rss_flat = rss_slope.zip(rss_mean).map(|(s, m)| s * 60.0 <= 0.05 * m);
    let maps_flat = (!map_slopes.is_empty())
        .then(|| map_slopes.iter().all(|m| m["flat"].as_bool() == Some(true)));
    let complete = total.mismatched == 0 && unchecked == 0 && total.namespaces > 0;
    let mut pass = complete;
    if judged {
        pass &= rss_flat == Some(true) && maps_flat == Some(true);
    }
    println!(
        "soak: {} namespaces checked, {} not exact ({} events off in all), {} beyond the tolerance of {} ppm, {unchecked} not purged in time; events seen {} of the kernel's {} (reuses {} of {})",
        total.namespaces,
        total.inexact,
        total.off,
        total.mismatched,
        spec.tolerance_ppm,
        total.seen_events,
        total.kernel_events,
        total.seen_reused,
        total.recycled
    );
    println!(
        "soak: slopes over minutes {}..{}: RSS {} KiB/min (median {} KiB), map entries {} /min ({}){}",
        half + 1,
        minutes.len(),
        opt(rss_slope, 1),
        opt(rss_mean, 0),
        opt(map_slope, 1),
        map_slopes
            .iter()
            .map(|m| format!(
                "{} {}/min of {}",
                m["name"].as_str().unwrap_or("?"),
                opt(m["slope_per_min"].as_f64(), 1),
                m["max_entries"]
            ))
            .collect::<Vec<_>>()
            .join(", "),
        if judged {
            ""
        } else {
            " — not judged (under 10 minutes)"
        }
    );
    Ok((
        json!({
            "settings": {
                "minutes": spec.minutes, "events_per_s": spec.events_per_s,
                "destinations": spec.dests, "churn_namespaces_per_minute": spec.churn,
                "workers": spec.workers, "client_ports": PORTS,
                "tracer_command": "twtrace --summary-every 60",
            },
            "criteria": "pass: nothing lost (stream and summary); in every namespace made, once deleted and purged, entries seen = exits seen = TcpExtTW + TcpExtTWKilled and reuse exits seen = TcpExtTWRecycled (within tolerance_ppm of its events; 0: exact); with ≥ 10 minutes also RSS and the BPF hash maps' entries flat over the second half (least-squares slope × 60 ≤ 5 % of the median RSS / of each hash map's max_entries)",
            "minutes": minutes,
            "namespaces_checked": total.namespaces,
            "namespaces_mismatched": total.mismatched,
            "namespaces_inexact": total.inexact,
            "events_off_in_inexact": total.off,
            "tolerance_ppm": spec.tolerance_ppm,
            "namespaces_unchecked": unchecked,
            "mismatches": mismatches,
            "foreign_events": seen.lock().unwrap_or_else(|p| p.into_inner()).foreign,
            "kernel_events": total.kernel_events,
            "events_seen": total.seen_events,
            "kernel_recycled": total.recycled,
            "seen_reused": total.seen_reused,
            "rss_slope_kib_per_min": rss_slope,
            "rss_median_kib_second_half": rss_mean,
            "map_entries_slope_per_min": map_slope,
            "map_slopes": map_slopes,
            "slopes_judged": judged,
            "rss_flat": rss_flat,
            "maps_flat": maps_flat,
        }),
        pass,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_per_namespace() {
        let mut s = Seen::default();
        s.ns.insert(4026532001, NsSeen::default());
        for l in [
            "12:00:00.000001 4026532001 enter        TIME_WAIT 127.0.0.1:20000        127.0.0.2:9000         60s                           123 twtrace-bench",
            "12:00:00.000002 4026532001 exit         TIME_WAIT 127.0.0.1:20000        127.0.0.2:9000         reused 0.002s                 123 twtrace-bench",
            "12:00:00.000003 4026532001 exit         TIME_WAIT 127.0.0.1:20002        127.0.0.2:9000         purged 3.1s                     - -",
            "12:00:00.000004 LOST 17 events: the kernel's ring buffer was full",
            "12:00:00.000005 4026532002 netns        port_range=20000-20099",
            "# summary: 3 events (1/s), 0 lost; in TIME_WAIT now 0 (FIN_WAIT2 substate 0); 1 peers; 2 namespaces",
            "#   TW  NEW/s …",
        ] {
            parse_line(l, &mut s);
        }
        let n = s.ns[&4026532001];
        assert_eq!((n.enter, n.exit, n.reused), (1, 2, 1));
        assert!(!s.ns.contains_key(&4026532002));
        assert_eq!(s.foreign, 0);
        parse_line(
            "12:00:00.000006 4026532003 enter        TIME_WAIT 127.0.0.1:20000        127.0.0.2:9000         60s                           9 curl",
            &mut s,
        );
        assert_eq!(s.foreign, 1);
        assert_eq!(s.lost, 17);
        assert!(s.summary.unwrap().ends_with("2 namespaces"));
    }

    #[test]
    fn summary_namespace_counts() {
        assert_eq!(
            summary_namespaces("# summary: 3 events (1/s), 0 lost; in TIME_WAIT now 0 (FIN_WAIT2 substate 0); 1 peers; 2 namespaces"),
            (Some(2), None)
        );
        assert_eq!(
            summary_namespaces("# summary: …; 1 peers; 1024 namespaces (3072 idle ones dropped)"),
            (Some(1024), Some(3072))
        );
    }

    #[test]
    fn slopes() {
        assert_eq!(slope(&[1.0]), None);
        assert_eq!(slope(&[5.0, 5.0, 5.0]), Some(0.0));
        assert!((slope(&[0.0, 2.0, 4.0, 6.0]).unwrap() - 2.0).abs() < 1e-9);
    }
}
