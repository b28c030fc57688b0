//! The lossless ladder driven by several load-generator *processes* (`--gen-procs N`), so that
//! the offered rate is not bounded by one process: each child (`twtrace-bench gen`) warms its
//! own recycling namespace, says `ready`, runs its share of the target rate on `go`, prints
//! what it did as one JSON line and keeps its namespace until told `exit` (so that its purge
//! does not land in the tracer's window).
//!
//! Children are bounded in time at every step (start, run, exit) and killed if they overstay;
//! each is set to die with the bench (`PR_SET_PDEATHSIG`), and its namespace goes with it.

use crate::children;
use crate::report::{f0, opt, table};
use crate::{Env, Plan, Tool, SETTLE, START_TIMEOUT, STOP_TIMEOUT};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The child side: `twtrace-bench gen`.
pub fn gen_child(workers: usize, rate: Option<f64>, secs: f64, base_port: u16) -> Result<()> {
    use twtrace::testkit::loadgen::{self, LoadSpec, NsTuning};
    let ns = twtrace::host::netns::NetNs::new()?;
    NsTuning::recycling(crate::RECYCLE_PORTS).apply(&ns)?;
    let mut spec = LoadSpec {
        workers,
        max_conns: 50_000_000,
        max_time: Duration::from_secs_f64(1.5),
        rate: None,
        dst_addrs: 1,
        base_port,
    };
    loadgen::run(&ns, &spec)?;
    let stdin = std::io::stdin();
    let mut line = String::new();
    println!("ready");
    std::io::stdout().flush()?;
    stdin.lock().read_line(&mut line)?;
    if line.trim() != "go" {
        return Ok(());
    }
    spec.rate = rate;
    spec.max_time = Duration::from_secs_f64(secs.clamp(0.5, 120.0));
    let r = loadgen::run(&ns, &spec)?;
    println!(
        "{}",
        json!({
            "conns": r.conns, "errors": r.errors, "elapsed_s": r.elapsed.as_secs_f64(),
            "cpu_s": r.cpu.as_secs_f64(), "tw_born": r.tw_born, "tw_recycled": r.tw_recycled,
            "tw_overflow": r.tw_overflow,
        })
    );
    std::io::stdout().flush()?;
    line.clear();
    // Until told (or the bench goes away: EOF).
    let _ = stdin.lock().read_line(&mut line);
    Ok(())
}

struct Gen {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Drop for Gen {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gen {
    fn start(i: usize, workers: usize, rate: Option<f64>, secs: f64) -> Result<Gen> {
        let me = std::env::current_exe()?;
        let mut cmd = Command::new(me);
        cmd.arg("gen")
            .args(["--workers", &workers.to_string()])
            .args(["--secs", &secs.to_string()])
            .args(["--base-port", &(9000 + 16 * i as u16).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(r) = rate {
            cmd.args(["--rate", &r.to_string()]);
        }
        // SAFETY: prctl is async-signal-safe. This runs on the bench's main thread, which
        // lives as long as the bench (the signal follows the forking thread).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting a generator process")?;
        let out = child.stdout.take().context("generator stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Gen {
            stdin: child.stdin.take(),
            child,
            lines: rx,
        })
    }

    fn say(&mut self, s: &str) -> Result<()> {
        let w = self.stdin.as_mut().context("generator stdin closed")?;
        writeln!(w, "{s}")?;
        w.flush()?;
        Ok(())
    }

    fn line(&self, timeout: Duration) -> Result<String> {
        self.lines
            .recv_timeout(timeout)
            .map_err(|_| anyhow::anyhow!("a generator process said nothing within {timeout:?}"))
    }
}

pub fn lossless_procs(env: &mut Env, plan: &Plan, procs: usize) -> Result<Value> {
    let secs = plan.secs;
    // Events/s (entries + reuse exits); `None`: every process as fast as it can.
    let targets: Vec<Option<f64>> = [
        20_000.0, 50_000.0, 100_000.0, 150_000.0, 200_000.0, 250_000.0,
    ]
    .into_iter()
    .map(Some)
    .chain([None])
    .collect();
    println!(
        "\n== 2b. lossless rate with {procs} generator processes × {} workers, {secs} s per step",
        plan.workers
    );
    let mut rows = Vec::new();
    let mut steps = Vec::new();
    for target in targets {
        let per = target.map(|t| t / 2.0 / procs as f64);
        let mut gens = Vec::new();
        for i in 0..procs {
            gens.push(Gen::start(i, plan.workers, per, secs)?);
        }
        for g in &gens {
            let l = g.line(Duration::from_secs(30))?;
            if l != "ready" {
                bail!("a generator process said {l:?} instead of ready");
            }
        }
        let (cmd, ready) = env
            .command(Tool::Live, Stdio::null())
            .context("twtrace command")?;
        let tracer = children::start("twtrace", cmd, ready, START_TIMEOUT)?;
        std::thread::sleep(SETTLE);
        let cpu0 = tracer.cpu_s();
        for g in &mut gens {
            g.say("go")?;
        }
        let mut reports = Vec::new();
        for g in &gens {
            let l = g.line(Duration::from_secs_f64(secs + 30.0))?;
            reports.push(serde_json::from_str::<Value>(&l).with_context(|| format!("{l:?}"))?);
        }
        let cpu = tracer.cpu_s() - cpu0;
        let stopped = tracer.stop(STOP_TIMEOUT)?;
        for g in &mut gens {
            let _ = g.say("exit");
        }
        drop(gens);
        let sum = |k: &str| reports.iter().filter_map(|r| r[k].as_u64()).sum::<u64>();
        let elapsed = reports
            .iter()
            .filter_map(|r| r["elapsed_s"].as_f64())
            .fold(0.0, f64::max);
        let kernel = sum("tw_born") + sum("tw_recycled");
        let offered = kernel as f64 / elapsed.max(1e-9);
        let summary = crate::report::find_summary(&stopped.stderr);
        let lost = summary.as_ref().map(|s| s.lost());
        let seen = summary.as_ref().map(|s| s.live_events());
        // Lost share: of the events offered, those twtrace reported lost.
        let lost_share = lost.map(|l| l as f64 / (kernel.max(1)) as f64);
        eprintln!(
            "bench: {procs} procs target {} → {offered:.0} events/s, lost {lost:?}, seen {seen:?} of {kernel}",
            target.map_or("max".into(), f0)
        );
        rows.push(vec![
            target.map_or("max".into(), f0),
            f0(offered),
            lost.map_or("?".into(), |l| l.to_string()),
            opt(lost_share.map(|x| x * 100.0), 3),
            seen.map_or("?".into(), |s| s.to_string()),
            kernel.to_string(),
            format!("{:.0}", 100.0 * cpu / elapsed.max(1e-9)),
            sum("errors").to_string(),
        ]);
        steps.push(json!({
            "target_events_per_s": target, "offered_events_per_s": offered,
            "kernel_events": kernel, "events_seen": seen, "lost": lost, "lost_share": lost_share,
            "tracer_cpu_pct": 100.0 * cpu / elapsed.max(1e-9),
            "generator_cpu_s": reports.iter().filter_map(|r| r["cpu_s"].as_f64()).sum::<f64>(),
            "errors": sum("errors"), "processes": procs,
        }));
        std::thread::sleep(Duration::from_secs(1));
    }
    print!(
        "{}",
        table(
            &[
                "target ev/s",
                "offered ev/s",
                "lost",
                "lost %",
                "seen",
                "kernel",
                "tracer CPU %",
                "errors"
            ],
            &rows
        )
    );
    Ok(json!({"lossless_procs": {
        "processes": procs, "workers_per_process": plan.workers, "secs": secs,
        "note": "events seen counts every TIME_WAIT event on the machine while twtrace ran (others' tests too)",
        "steps": steps,
    }}))
}
