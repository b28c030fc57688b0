//! `twtrace-bench`: what twtrace costs the connections it watches, how fast it goes without
//! losing events, and what it costs in userspace and in the kernel, beside peer tools.
//!
//! A benchmark, not a test: it prints tables and can write every figure as JSON. Everything
//! runs in private network namespaces on loopback, every run is bounded in connections and
//! time, and each configuration is measured several times, alternating, and reported as
//! medians. Run as root; `cargo xtask bench [--quick] [--json FILE]` builds in release and runs
//! it. Phases:
//!
//! 1. overhead: connections/s of the load generator with no tracer, with `twtrace --json`,
//!    with `twtrace record`, with `tcpstates` (libbpf-tools) and with a tcpstates-like
//!    `bpftrace` script; ratio to the no-tracer rate.
//! 2. lossless: a ladder of target rates with twtrace attached; the highest rate with no
//!    reported loss, and the loss (and the events missing from the output) beyond it.
//! 3. userspace: twtrace's CPU per million events and at 10 000 events/s; peak RSS with
//!    ~100 000 TIME_WAIT sockets alive, and what it sees when they are all purged at once.
//! 4. kernel: run time and count per BPF program from the kernel's statistics, enabled only
//!    while this process holds the `BPF_ENABLE_STATS` fd.

mod bpfmaps;
mod children;
mod genprocs;
mod kstats;
mod real;
mod report;
mod soak;

use anyhow::{bail, Context, Result};
use children::{Ready, Running};
use clap::{Parser, Subcommand, ValueEnum};
use report::{f0, median, opt, table, Summary};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use twtrace::host::netns::NetNs;
use twtrace::testkit::loadgen::{self, LoadReport, LoadSpec, NsTuning};

/// How long a tracer may take to attach (bpftrace compiles its script with LLVM first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// After a tracer says it is attached, before the measured window.
const SETTLE: Duration = Duration::from_millis(500);
/// Client ports of the recycling namespace (about half are used: connect() prefers one
/// parity), so ~5 000 TIME_WAIT sockets per worker are alive in the steady state.
const RECYCLE_PORTS: u16 = 10_000;
const READY_LINE: &str = "tracing TIME_WAIT sockets";

/// Benchmark twtrace against no tracer and peer tools (see the module docs).
#[derive(Parser, Debug)]
#[command(name = "twtrace-bench", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// The short version: fewer rounds, shorter runs, under 5 minutes.
    #[arg(long)]
    quick: bool,
    /// Write every figure to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The twtrace binary to measure (default: the `twtrace` next to this binary).
    #[arg(long, value_name = "PATH")]
    twtrace: Option<PathBuf>,
    /// A second twtrace build to measure beside the first, alternating (before/after a change).
    #[arg(long, value_name = "PATH")]
    compare: Option<PathBuf>,
    /// Rounds per configuration in the overhead phase (default 3 quick, 5 full).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per measured run (default 2 quick, 5 full).
    #[arg(long)]
    secs: Option<f64>,
    /// Parallel load-generator workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Only these phases (comma-separated; default all).
    #[arg(long, value_delimiter = ',', value_name = "PHASE")]
    only: Vec<Phase>,
    /// Do not run the peer tools (tcpstates, bpftrace).
    #[arg(long)]
    no_peers: bool,
    /// TIME_WAIT populations to build and purge at once in the userspace phase (default
    /// 20 000 quick; 25 000, 50 000, 100 000 full). A purge is the fastest source of events
    /// this machine has (~600 000–800 000 exits/s): larger populations find where twtrace
    /// starts to lose events, and how many (the loss curve).
    #[arg(long, value_delimiter = ',', value_name = "N")]
    bursts: Vec<u64>,
    /// Also run the lossless ladder with this many load-generator processes (2 or more; up to
    /// 250 000 events/s): is the ladder's limit the generator or the machine?
    #[arg(long, value_name = "N")]
    gen_procs: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run only the load generator in a private namespace and print what it did.
    Load {
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Target connections/s (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Keep every TIME_WAIT socket (no reuse) instead of recycling ports.
        #[arg(long)]
        accumulate: bool,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Attach empty programs to twtrace's tracepoints until interrupted (the "empty programs"
    /// configuration: the floor of the tracepoint design's cost).
    Floor,
    /// One load-generator process of `--gen-procs` (internal: driven over stdin/stdout).
    #[command(hide = true)]
    Gen {
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        #[arg(long, default_value_t = 9000)]
        base_port: u16,
    },
    /// Endurance: MINUTES at a steady event rate with namespaces coming and going; every minute
    /// twtrace's RSS, CPU, BPF map sizes, loss and events seen vs the kernel's counters.
    /// Exits non-zero when a criterion fails (see docs/performance.md). `--json FILE` before
    /// the subcommand writes every figure.
    Soak {
        #[arg(long, default_value_t = 60)]
        minutes: u32,
        /// TIME_WAIT events/s (entries + exits; half as many connections/s).
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Destination addresses the load goes to (127.0.x.y).
        #[arg(long, default_value_t = 1000)]
        dests: u16,
        /// Short-lived namespaces created and deleted per minute besides the load's own.
        #[arg(long, default_value_t = 32)]
        churn: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Differences between the events seen and the kernel's counts allowed per namespace,
        /// in millionths of its events (default 0: exact).
        #[arg(long, default_value_t = 0.0)]
        tolerance_ppm: f64,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Overhead,
    Lossless,
    Userspace,
    Kernel,
    /// nginx and ab over a veth pair (see `real.rs`).
    Real,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    NoTracer,
    /// Empty BPF programs on twtrace's tracepoints (`twtrace-bench floor`): the least any
    /// tracer built on these hooks can cost.
    Floor,
    Live,
    /// A second twtrace build (`--compare PATH`), measured the same way, for before/after.
    Compare,
    Record,
    Tcpstates,
    Bpftrace,
}

impl Tool {
    const ALL: [Tool; 7] = [
        Tool::NoTracer,
        Tool::Floor,
        Tool::Live,
        Tool::Compare,
        Tool::Record,
        Tool::Tcpstates,
        Tool::Bpftrace,
    ];

    fn name(self) -> &'static str {
        match self {
            Tool::NoTracer => "no tracer",
            Tool::Floor => "empty programs",
            Tool::Live => "twtrace",
            Tool::Compare => "twtrace (compare)",
            Tool::Record => "twtrace record",
            Tool::Tcpstates => "tcpstates",
            Tool::Bpftrace => "bpftrace",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Tool::NoTracer => "none",
            Tool::Floor => "empty_programs",
            Tool::Live => "twtrace",
            Tool::Compare => "twtrace_compare",
            Tool::Record => "twtrace_record",
            Tool::Tcpstates => "tcpstates",
            Tool::Bpftrace => "bpftrace",
        }
    }
}

/// A tcpstates equivalent for bpftrace: every TCP state change with the socket address,
/// process, tuple, states and the milliseconds spent in the previous state.
const BPFTRACE_SCRIPT: &str = r#"tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
  $sk = args->skaddr;
  $ms = @ts[$sk] ? (nsecs - @ts[$sk]) / 1000000 : 0;
  printf("%lx %d %s %s %d %s %d %d %d %d\n", $sk, pid, comm, ntop(args->saddr), args->sport,
         ntop(args->daddr), args->dport, args->oldstate, args->newstate, $ms);
  if (args->newstate == 7) { delete(@ts[$sk]); } else { @ts[$sk] = nsecs; }
}"#;

struct Plan {
    quick: bool,
    rounds: usize,
    secs: f64,
    workers: usize,
    /// Target connections/s of the lossless ladder (`None`: as fast as possible). In the
    /// recycling steady state each connection is two TIME_WAIT events.
    ladder: Vec<Option<f64>>,
    /// TIME_WAIT populations to build and purge.
    alive: Vec<u64>,
    phases: Vec<Phase>,
    peers: bool,
}

struct Env {
    twtrace: PathBuf,
    compare: Option<PathBuf>,
    tmp: TempDir,
    notes: Vec<String>,
    /// Why a tool cannot be measured here, by tool.
    unavailable: Vec<(Tool, String)>,
}

impl Env {
    fn note(&mut self, s: String) {
        eprintln!("bench: note: {s}");
        self.notes.push(s);
    }

    fn available(&self, t: Tool) -> bool {
        !self.unavailable.iter().any(|(u, _)| *u == t)
    }

    fn command(&self, t: Tool, stdout: Stdio) -> Option<(Command, Ready)> {
        let (mut cmd, ready) = match t {
            Tool::NoTracer => return None,
            Tool::Floor => {
                let mut c = Command::new(std::env::current_exe().ok()?);
                c.arg("floor");
                (c, Ready::StderrLine(READY_LINE))
            }
            Tool::Live => {
                let mut c = Command::new(&self.twtrace);
                c.arg("--json");
                (c, Ready::StderrLine(READY_LINE))
            }
            Tool::Compare => {
                let mut c = Command::new(self.compare.as_ref()?);
                c.arg("--json");
                (c, Ready::StderrLine(READY_LINE))
            }
            Tool::Record => {
                let mut c = Command::new(&self.twtrace);
                c.args(["record", "-o"])
                    .arg(self.tmp.0.join("bench.twtrace"));
                (c, Ready::StderrLine(READY_LINE))
            }
            Tool::Tcpstates => (Command::new("tcpstates"), Ready::PerfAttach),
            Tool::Bpftrace => {
                let mut c = Command::new("bpftrace");
                c.args(["-e", BPFTRACE_SCRIPT]);
                (c, Ready::PerfAttach)
            }
        };
        cmd.stdout(stdout);
        Some((cmd, ready))
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!("twtrace-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One measured run.
struct Sample {
    tool: Tool,
    load: LoadReport,
    /// Tracer CPU seconds during the load window.
    cpu_s: Option<f64>,
    /// Tracer voluntary context switches during the load window.
    sleeps: Option<u64>,
    hwm_kib: Option<u64>,
    summary: Option<Summary>,
    /// Per-program in-kernel cost over the window (when statistics are on).
    progs: Vec<(u32, kstats::ProgStat)>,
    /// Programs of someone else on the same hooks during the run.
    foreign: Vec<String>,
}

impl Sample {
    fn kernel_events(&self) -> u64 {
        self.load.tw_born + self.load.tw_recycled
    }

    fn sleeps_per_s(&self) -> Option<f64> {
        let secs = self.load.elapsed.as_secs_f64();
        self.sleeps.filter(|_| secs > 0.0).map(|n| n as f64 / secs)
    }

    fn cpu_pct(&self) -> Option<f64> {
        let secs = self.load.elapsed.as_secs_f64();
        self.cpu_s.filter(|_| secs > 0.0).map(|c| 100.0 * c / secs)
    }

    /// Tracer CPU seconds per million TIME_WAIT events the kernel made.
    fn cpu_per_mevents(&self) -> Option<f64> {
        let ev = self.kernel_events();
        self.cpu_s.filter(|_| ev > 0).map(|c| c * 1e6 / ev as f64)
    }

    /// Events twtrace printed over the events the kernel made.
    fn coverage(&self) -> Option<f64> {
        let ev = self.kernel_events();
        self.summary
            .as_ref()
            .filter(|_| ev > 0)
            .map(|s| s.live_events() as f64 / ev as f64)
    }

    fn lost(&self) -> Option<u64> {
        self.summary.as_ref().map(|s| s.lost())
    }
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Sub::Load {
            workers,
            secs,
            rate,
            accumulate,
            runs,
        }) => load_only(workers, secs, rate, accumulate, runs),
        Some(Sub::Floor) => floor(),
        Some(Sub::Gen {
            workers,
            rate,
            secs,
            base_port,
        }) => genprocs::gen_child(workers.clamp(1, 64), rate, secs, base_port),
        Some(Sub::Soak {
            minutes,
            rate,
            dests,
            churn,
            workers,
            tolerance_ppm,
        }) => soak_cmd(
            &cli,
            &soak::Spec {
                tolerance_ppm: tolerance_ppm.clamp(0.0, 1e6),
                minutes,
                events_per_s: rate,
                dests,
                churn,
                workers: workers.clamp(1, 64),
            },
        ),
        None => bench(&cli),
    };
    if let Err(e) = r {
        eprintln!("twtrace-bench: error: {e:#}");
        std::process::exit(1);
    }
}

/// Attaches the empty programs, says so on stderr (the bench waits for that line), then holds
/// them until SIGINT or SIGTERM.
fn floor() -> Result<()> {
    // Blocked before anything else so that an early signal waits for sigwait.
    // SAFETY: plain signal-mask calls on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let (_ebpf, attached) = twtrace::kernel::loader::load_floor()?;
    eprintln!("{READY_LINE} (empty programs on {})", attached.join(", "));
    let mut sig = 0;
    // SAFETY: `set` is initialised above.
    unsafe { libc::sigwait(&set, &mut sig) };
    Ok(())
}

fn soak_cmd(cli: &Cli, spec: &soak::Spec) -> Result<()> {
    if !is_root() {
        bail!("the soak loads eBPF programs and creates network namespaces: run it as root");
    }
    let twtrace = match &cli.twtrace {
        Some(p) => p.clone(),
        None => default_twtrace()?,
    };
    if !soak::run(&twtrace, spec, cli.json.as_deref())? {
        bail!("the soak failed its criteria (see above)");
    }
    Ok(())
}

fn load_only(
    workers: usize,
    secs: f64,
    rate: Option<f64>,
    accumulate: bool,
    runs: usize,
) -> Result<()> {
    let ns = NetNs::new()?;
    let tuning = if accumulate {
        NsTuning::accumulate(1 << 20)
    } else {
        NsTuning::recycling(RECYCLE_PORTS)
    };
    tuning.apply(&ns)?;
    for i in 0..runs.min(100) {
        let r = loadgen::run(&ns, &spec(workers, secs, rate, 1))?;
        println!(
            "run {i}: {:.0} conns/s, {:.0} TIME_WAIT events/s ({} conns, {} errors{}; {} born, {} reused, {} overflow; {} alive)",
            r.conns_per_s(),
            r.tw_events_per_s(),
            r.conns,
            r.errors,
            r.first_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default(),
            r.tw_born,
            r.tw_recycled,
            r.tw_overflow,
            loadgen::tw_alive(&ns)?
        );
    }
    Ok(())
}

fn spec(workers: usize, secs: f64, rate: Option<f64>, dst_addrs: u16) -> LoadSpec {
    LoadSpec {
        workers,
        // Far above what the time allows: the time bound ends a run, the count bound is
        // the safety net.
        max_conns: 50_000_000,
        max_time: Duration::from_secs_f64(secs),
        rate,
        dst_addrs,
        base_port: 9000,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn default_twtrace() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating this binary")?;
    Ok(me.with_file_name("twtrace"))
}

fn on_path(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn bench(cli: &Cli) -> Result<()> {
    if !is_root() {
        bail!("the bench loads eBPF programs and creates network namespaces: run it as root");
    }
    if cli.workers == 0 || cli.workers > 64 {
        bail!("--workers must be between 1 and 64");
    }
    let quick = cli.quick;
    let plan = Plan {
        quick,
        rounds: cli.rounds.unwrap_or(if quick { 3 } else { 5 }).clamp(1, 50),
        secs: cli
            .secs
            .unwrap_or(if quick { 2.0 } else { 5.0 })
            .clamp(0.5, 120.0),
        workers: cli.workers,
        ladder: if quick {
            [5_000.0, 10_000.0, 20_000.0, 30_000.0]
                .into_iter()
                .map(Some)
                .chain([None])
                .collect()
        } else {
            [
                2_500.0, 5_000.0, 10_000.0, 15_000.0, 20_000.0, 25_000.0, 30_000.0, 40_000.0,
                50_000.0,
            ]
            .into_iter()
            .map(Some)
            .chain([None])
            .collect()
        },
        alive: if !cli.bursts.is_empty() {
            cli.bursts
                .iter()
                .map(|n| (*n).clamp(1_000, 4_000_000))
                .collect()
        } else if quick {
            vec![20_000]
        } else {
            vec![25_000, 50_000, 100_000]
        },
        phases: if cli.only.is_empty() {
            vec![
                Phase::Overhead,
                Phase::Lossless,
                Phase::Userspace,
                Phase::Kernel,
                Phase::Real,
            ]
        } else {
            cli.only.clone()
        },
        peers: !cli.no_peers,
    };
    let twtrace = match &cli.twtrace {
        Some(p) => p.clone(),
        None => default_twtrace()?,
    };
    if !twtrace.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p twtrace) or pass --twtrace",
            twtrace.display()
        );
    }
    if let Some(c) = &cli.compare {
        if !c.is_file() {
            bail!("--compare {}: no such file", c.display());
        }
    }
    let mut env = Env {
        twtrace,
        compare: cli.compare.clone(),
        tmp: TempDir::new()?,
        notes: Vec::new(),
        unavailable: Vec::new(),
    };
    preflight(&mut env, &plan)?;
    let started = Instant::now();
    let mut out = json!({
        "schema": 1,
        "quick": plan.quick,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "twtrace": env.twtrace.display().to_string(),
        "machine": machine(),
        "settings": {
            "rounds": plan.rounds, "secs": plan.secs, "workers": plan.workers,
            "recycle_ports": RECYCLE_PORTS, "settle_ms": SETTLE.as_millis() as u64,
        },
    });
    println!(
        "twtrace-bench{}: {} rounds × {} s, {} workers; kernel {}",
        if quick { " --quick" } else { "" },
        plan.rounds,
        plan.secs,
        plan.workers,
        out["machine"]["kernel"].as_str().unwrap_or("?")
    );
    let mut result = Ok(());
    for phase in plan.phases.clone() {
        let r = match phase {
            Phase::Overhead => overhead(&mut env, &plan).map(|v| merge(&mut out, v)),
            Phase::Lossless => lossless(&mut env, &plan)
                .map(|v| merge(&mut out, v))
                .and_then(|_| match cli.gen_procs {
                    Some(n) if n >= 2 => genprocs::lossless_procs(&mut env, &plan, n.min(16))
                        .map(|v| merge(&mut out, v)),
                    _ => Ok(()),
                }),
            Phase::Userspace => userspace(&mut env, &plan).map(|v| merge(&mut out, v)),
            Phase::Kernel => kernel(&mut env, &plan).map(|v| merge(&mut out, v)),
            Phase::Real => real::real(&mut env, &plan).map(|v| merge(&mut out, v)),
        };
        if let Err(e) = r {
            // Keep what the other phases measured; report the failure at the end.
            eprintln!("bench: phase {phase:?} failed: {e:#}");
            env.notes.push(format!("phase {phase:?} failed: {e:#}"));
            result = Err(e.context(format!("phase {phase:?}")));
        }
        // Namespaces are torn down asynchronously by the kernel; let that finish before the
        // next phase so its purge does not land in another measurement.
        std::thread::sleep(Duration::from_secs(1));
    }
    out["elapsed_s"] = json!(started.elapsed().as_secs_f64());
    out["load_average_end"] = json!(load_average());
    out["notes"] = json!(env.notes);
    println!("\ndone in {:.0} s", started.elapsed().as_secs_f64());
    for n in &env.notes {
        println!("note: {n}");
    }
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&out)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    result
}

fn merge(out: &mut Value, v: Value) {
    if let (Some(o), Value::Object(v)) = (out.as_object_mut(), v) {
        o.extend(v);
    }
}

/// Mounts tracefs if needed (classic tracepoints of the peer tools), and finds which tools
/// can run here.
fn preflight(env: &mut Env, plan: &Plan) -> Result<()> {
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let st = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
        if st.map(|s| s.success()).unwrap_or(false) {
            env.note("mounted tracefs at /sys/kernel/tracing (the peer tools need it)".into());
        } else {
            env.note(
                "tracefs is not mounted and mounting it failed: peer tools may not attach".into(),
            );
        }
    }
    if env.compare.is_none() {
        env.unavailable
            .push((Tool::Compare, "no --compare build given".into()));
    }
    let record = Command::new(&env.twtrace)
        .args(["record", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !record {
        env.unavailable.push((
            Tool::Record,
            "this twtrace has no `record` subcommand".into(),
        ));
    }
    for (tool, bin, pkg) in [
        (Tool::Tcpstates, "tcpstates", "libbpf-tools"),
        (Tool::Bpftrace, "bpftrace", "bpftrace"),
    ] {
        if !plan.peers {
            env.unavailable.push((tool, "skipped (--no-peers)".into()));
        } else if !on_path(bin) {
            env.unavailable.push((
                tool,
                format!("{bin} is not installed (apt-get install {pkg})"),
            ));
        }
    }
    if plan.peers && !on_path("bpftool") {
        for t in [Tool::Tcpstates, Tool::Bpftrace] {
            env.unavailable.push((
                t,
                "bpftool is needed to see when it is attached (apt-get install bpftool)".into(),
            ));
        }
    }
    for (t, why) in env.unavailable.clone() {
        if t != Tool::Compare {
            env.note(format!("{}: {why}", t.name()));
        }
    }
    let foreign = kstats::foreign(&[]);
    if !foreign.is_empty() {
        env.note(format!(
            "other programs are attached to the same hooks (someone's tests?): {}; every \
             figure includes their cost",
            foreign.join(", ")
        ));
    }
    Ok(())
}

/// A namespace in the recycling steady state: ports already full of TIME_WAIT sockets, so
/// every connection of a measured run is one entry and one reuse exit.
fn recycling_ns(plan: &Plan) -> Result<NetNs> {
    let ns = NetNs::new()?;
    NsTuning::recycling(RECYCLE_PORTS).apply(&ns)?;
    let warm = loadgen::run(&ns, &spec(plan.workers, 1.5, None, 1))?;
    if warm.conns == 0 {
        bail!(
            "the load generator made no connection: {}",
            warm.first_error.unwrap_or_default()
        );
    }
    Ok(ns)
}

/// One run: start `tool` (if any), wait until it is attached, run the load, stop the tool.
fn measure(
    env: &mut Env,
    tool: Tool,
    ns: &NetNs,
    spec: &LoadSpec,
    stdout: Stdio,
    kernel_stats: bool,
) -> Result<Sample> {
    let running: Option<Running> = match env.command(tool, stdout) {
        None => None,
        Some((cmd, ready)) => Some(children::start(tool.name(), cmd, ready, START_TIMEOUT)?),
    };
    if running.is_some() {
        std::thread::sleep(SETTLE);
    }
    let own: Vec<u32> = running
        .as_ref()
        .map(|r| r.prog_ids.clone())
        .unwrap_or_default();
    let foreign = kstats::foreign(&own);
    let before = kernel_stats.then(kstats::snapshot);
    let cpu0 = running.as_ref().map(|r| r.cpu_s());
    let sw0 = running.as_ref().and_then(|r| r.sleeps());
    let load = loadgen::run(ns, spec)?;
    let cpu1 = running.as_ref().map(|r| r.cpu_s());
    let sw1 = running.as_ref().and_then(|r| r.sleeps());
    let progs = match before {
        Some(b) => kstats::delta(&b, &kstats::snapshot(), &own),
        None => Vec::new(),
    };
    let (summary, hwm_kib) = match running {
        Some(r) => {
            let stopped = r.stop(STOP_TIMEOUT)?;
            if !stopped.status.is_some_and(|s| s.success()) {
                env.note(format!(
                    "{} ended with {:?}: {}",
                    tool.name(),
                    stopped.status,
                    stopped.stderr.last().cloned().unwrap_or_default()
                ));
            }
            (report::find_summary(&stopped.stderr), stopped.hwm_kib)
        }
        None => (None, None),
    };
    if load.errors > 0 {
        env.note(format!(
            "{}: {} connection errors (first: {})",
            tool.name(),
            load.errors,
            load.first_error.clone().unwrap_or_default()
        ));
    }
    if load.tw_overflow > 0 {
        env.note(format!(
            "{}: {} TIME_WAIT sockets not created (tcp_max_tw_buckets reached)",
            tool.name(),
            load.tw_overflow
        ));
    }
    Ok(Sample {
        tool,
        load,
        cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
        sleeps: sw0.zip(sw1).map(|(a, b)| b.saturating_sub(a)),
        hwm_kib,
        summary,
        progs,
        foreign,
    })
}

fn overhead(env: &mut Env, plan: &Plan) -> Result<Value> {
    println!(
        "\n== 1. hot-path overhead: connections/s, {} rounds × {} s, alternating",
        plan.rounds, plan.secs
    );
    let ns = recycling_ns(plan)?;
    let mut tools: Vec<Tool> = Tool::ALL
        .into_iter()
        .filter(|t| env.available(*t))
        .collect();
    let mut samples: Vec<Sample> = Vec::new();
    for round in 0..plan.rounds {
        // A B C, C B A, …: slow drift of the machine does not favour one configuration.
        let order: Vec<Tool> = if round % 2 == 0 {
            tools.clone()
        } else {
            tools.iter().rev().copied().collect()
        };
        for t in order {
            match measure(
                env,
                t,
                &ns,
                &spec(plan.workers, plan.secs, None, 1),
                Stdio::null(),
                false,
            ) {
                Ok(s) => {
                    eprintln!(
                        "bench: round {round} {:<15} {:>8.0} conns/s{}",
                        t.name(),
                        s.load.conns_per_s(),
                        s.cpu_pct()
                            .map(|c| format!("  tracer CPU {c:.0}%"))
                            .unwrap_or_default()
                    );
                    samples.push(s);
                }
                Err(e) if matches!(t, Tool::NoTracer | Tool::Live | Tool::Compare) => {
                    return Err(e)
                }
                Err(e) => {
                    env.note(format!("{} could not be measured here: {e:#}", t.name()));
                    env.unavailable.push((t, format!("{e:#}")));
                    tools.retain(|x| *x != t);
                }
            }
        }
    }
    let rate_of = |t: Tool| -> Option<f64> {
        median(
            &samples
                .iter()
                .filter(|s| s.tool == t)
                .map(|s| s.load.conns_per_s())
                .collect::<Vec<_>>(),
        )
    };
    let base = rate_of(Tool::NoTracer).context("no baseline sample")?;
    let cpu_of = |t: Tool| -> Option<f64> {
        median(
            &samples
                .iter()
                .filter(|s| s.tool == t)
                .filter_map(|s| s.load.cpu_us_per_conn())
                .collect::<Vec<_>>(),
        )
    };
    let base_cpu = cpu_of(Tool::NoTracer);
    let mut rows = Vec::new();
    let mut configs = Vec::new();
    for t in Tool::ALL {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.tool == t).collect();
        if t == Tool::Compare && mine.is_empty() {
            continue;
        }
        if mine.is_empty() {
            let why = env
                .unavailable
                .iter()
                .find(|(u, _)| *u == t)
                .map(|(_, w)| w.clone())
                .unwrap_or_default();
            configs.push(json!({"name": t.key(), "available": false, "note": why}));
            let mut row = vec![t.name().to_string()];
            row.extend(std::iter::repeat_n("-".to_string(), 8));
            row.push(why);
            rows.push(row);
            continue;
        }
        let rates: Vec<f64> = mine.iter().map(|s| s.load.conns_per_s()).collect();
        let med = median(&rates);
        let ratio = med.map(|m| m / base);
        let cpu_conn = cpu_of(t);
        // Same sense as `ratio` (1.0: free), from CPU per connection rather than throughput,
        // so it hardly moves with the load others put on the machine.
        let cpu_ratio = base_cpu.zip(cpu_conn).map(|(b, c)| b / c);
        let cpu = median(&mine.iter().filter_map(|s| s.cpu_pct()).collect::<Vec<_>>());
        let cov = median(&mine.iter().filter_map(|s| s.coverage()).collect::<Vec<_>>());
        let lost: u64 = mine.iter().filter_map(|s| s.lost()).sum();
        let foreign = mine.iter().map(|s| s.foreign.len()).max().unwrap_or(0);
        rows.push(vec![
            t.name().to_string(),
            opt(med, 0),
            opt(ratio, 3),
            opt(cpu_conn, 1),
            opt(cpu_ratio, 3),
            rates.iter().map(|r| f0(*r)).collect::<Vec<_>>().join(" "),
            opt(cpu, 0),
            opt(
                median(
                    &mine
                        .iter()
                        .filter_map(|s| s.sleeps_per_s())
                        .collect::<Vec<_>>(),
                ),
                0,
            ),
            opt(cov.map(|c| c * 100.0), 1),
            if foreign > 0 {
                format!("{foreign} foreign programs attached")
            } else {
                String::new()
            },
        ]);
        configs.push(json!({
            "name": t.key(), "available": true,
            "conns_per_s": rates, "median_conns_per_s": med, "ratio": ratio,
            "worker_cpu_us_per_conn_median": cpu_conn, "cpu_ratio": cpu_ratio,
            "tracer_cpu_pct_median": cpu,
            "tracer_sleeps_per_s_median":
                median(&mine.iter().filter_map(|s| s.sleeps_per_s()).collect::<Vec<_>>()),
            "tracer_cpu_s_per_million_events_median":
                median(&mine.iter().filter_map(|s| s.cpu_per_mevents()).collect::<Vec<_>>()),
            "kernel_tw_events_per_s_median":
                median(&mine.iter().map(|s| s.load.tw_events_per_s()).collect::<Vec<_>>()),
            "events_seen_fraction_median": cov,
            "lost": mine.iter().any(|s| s.summary.is_some()).then_some(lost),
            "errors": mine.iter().map(|s| s.load.errors).sum::<u64>(),
            "foreign_programs_max": foreign,
        }));
    }
    print!(
        "{}",
        table(
            &[
                "config",
                "conns/s",
                "ratio",
                "µs CPU/conn",
                "CPU ratio",
                "runs",
                "tracer CPU %",
                "tracer wakeups/s",
                "events seen %",
                "notes"
            ],
            &rows
        )
    );
    let ratio = rate_of(Tool::Live).map(|r| r / base);
    Ok(json!({
        "overhead_ratio": ratio,
        "overhead_ratio_compare": rate_of(Tool::Compare).map(|r| r / base),
        // Empty programs on the same hooks: the least any tracer on them can cost.
        "floor_ratio": rate_of(Tool::Floor).map(|r| r / base),
        "overhead_ratio_cpu": base_cpu.zip(cpu_of(Tool::Live)).map(|(b, c)| b / c),
        "overhead": {"baseline_conns_per_s": base, "configs": configs},
    }))
}

fn lossless(env: &mut Env, plan: &Plan) -> Result<Value> {
    println!(
        "\n== 2. lossless rate: twtrace at rising rates, {} s each",
        plan.secs
    );
    let ns = recycling_ns(plan)?;
    let mut rows = Vec::new();
    let mut steps = Vec::new();
    let mut pairs = Vec::new();
    for target in &plan.ladder {
        let s = measure(
            env,
            Tool::Live,
            &ns,
            &spec(plan.workers, plan.secs, *target, 1),
            Stdio::null(),
            false,
        )?;
        let offered = s.load.tw_events_per_s();
        let lost = s.lost();
        let seen = s.summary.as_ref().map(|x| x.live_events());
        let missing = seen.map(|v| s.kernel_events().saturating_sub(v));
        eprintln!(
            "bench: target {:>7} conns/s → {:>7.0} events/s, lost {:?}, seen {:?} of {}",
            target.map_or("max".into(), f0),
            offered,
            lost,
            seen,
            s.kernel_events()
        );
        // Without a summary nothing is known about loss: count it as lossy.
        pairs.push((offered, lost.unwrap_or(u64::MAX)));
        rows.push(vec![
            target.map_or("max".into(), |t| f0(2.0 * t)),
            f0(offered),
            f0(s.load.conns_per_s()),
            lost.map_or("?".into(), |l| l.to_string()),
            missing.map_or("?".into(), |m| m.to_string()),
            opt(s.coverage().map(|c| c * 100.0), 1),
            opt(s.cpu_pct(), 0),
            opt(s.sleeps_per_s(), 0),
        ]);
        steps.push(json!({
            "target_events_per_s": target.map(|t| 2.0 * t),
            "offered_events_per_s": offered,
            "conns_per_s": s.load.conns_per_s(),
            "kernel_events": s.kernel_events(),
            "events_seen": seen,
            "lost": lost,
            "missing": missing,
            "events_seen_fraction": s.coverage(),
            "tracer_cpu_pct": s.cpu_pct(),
            "tracer_sleeps_per_s": s.sleeps_per_s(),
            "errors": s.load.errors,
        }));
    }
    print!(
        "{}",
        table(
            &[
                "target ev/s",
                "offered ev/s",
                "conns/s",
                "lost",
                "missing",
                "seen %",
                "CPU %",
                "wakeups/s"
            ],
            &rows
        )
    );
    let (best, any_loss) = report::lossless_rate(&pairs);
    match (best, any_loss) {
        (Some(b), false) => println!(
            "no loss reported at any rate up to {b:.0} events/s (the load generator's limit here)"
        ),
        (Some(b), true) => println!("highest rate with no reported loss: {b:.0} events/s"),
        (None, _) => println!("events were lost at every rate tried"),
    }
    let complete: Vec<(f64, u64)> = steps
        .iter()
        .map(|s| {
            let off = s["offered_events_per_s"].as_f64().unwrap_or(0.0);
            let ok = s["events_seen_fraction"]
                .as_f64()
                .is_some_and(|f| f >= 0.999)
                && s["lost"].as_u64() == Some(0);
            (off, u64::from(!ok))
        })
        .collect();
    let (complete_best, _) = report::lossless_rate(&complete);
    if complete_best != best {
        println!(
            "highest rate at which twtrace printed ≥ 99.9 % of the kernel's events: {}",
            complete_best.map_or("none".into(), |c| format!("{c:.0} events/s"))
        );
    }
    Ok(json!({
        "lossless_events_per_s": best,
        "lossless": {
            "definition": "highest offered TIME_WAIT event rate (entries + exits, from the namespace's TcpExtTW + TcpExtTWRecycled) below the first rate at which twtrace reported lost events",
            "limited_by_generator": !any_loss,
            "complete_events_per_s": complete_best,
            "steps": steps,
        },
    }))
}

/// Builds `n` TIME_WAIT sockets (no reuse) with twtrace attached, measures its memory, then
/// deletes the namespace so the kernel purges them all at once, and counts what twtrace saw.
fn alive_and_purge(env: &mut Env, plan: &Plan, n: u64) -> Result<Value> {
    let ns = NetNs::new()?;
    NsTuning::accumulate(n + n / 2 + 10_000).apply(&ns)?;
    let ino = ns.inode();
    let out_path = env.tmp.0.join(format!("purge-{n}.ndjson"));
    let file = std::fs::File::create(&out_path)?;
    let (cmd, ready) = env
        .command(Tool::Live, Stdio::from(file))
        .context("twtrace command")?;
    let tracer = children::start("twtrace", cmd, ready, START_TIMEOUT)?;
    std::thread::sleep(SETTLE);
    let cpu0 = tracer.cpu_s();
    // Destination addresses × workers listeners × ~51 000 ports: room for at least twice
    // `n` 4-tuples (four addresses at least, as before).
    let per_addr = 51_000 * plan.workers.max(1) as u64;
    let addrs = (2 * n).div_ceil(per_addr).clamp(4, 250) as u16;
    let mut spec = spec(plan.workers, 120.0, None, addrs);
    spec.max_conns = n;
    let load = loadgen::run(&ns, &spec)?;
    let alive = loadgen::tw_alive(&ns)?;
    // Let the tracer catch up before reading its memory.
    std::thread::sleep(Duration::from_secs(1));
    let cpu_build = tracer.cpu_s() - cpu0;
    let rss_alive = tracer.rss_kib();
    let anon_alive = children::status_kib(tracer.pid, "RssAnon:");
    let hwm_alive = tracer.hwm_kib();
    let dropped_at = Instant::now();
    let dropped_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    drop(ns);
    // The kernel purges the namespace's timewait sockets from a worker, some time after the
    // last reference goes. Wait until the exits stop coming (bounded).
    let mut last = (0usize, Instant::now());
    while dropped_at.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(250));
        let size = std::fs::metadata(&out_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        if size != last.0 {
            last = (size, Instant::now());
        } else if last.1.elapsed() >= Duration::from_millis(1500)
            && dropped_at.elapsed() >= Duration::from_secs(2)
        {
            break;
        }
    }
    let cpu_total = tracer.cpu_s() - cpu0;
    let stopped = tracer.stop(STOP_TIMEOUT)?;
    let summary = report::find_summary(&stopped.stderr);
    let text = std::fs::read_to_string(&out_path)?;
    let _ = std::fs::remove_file(&out_path);
    // twtrace maps kernel time to wall time once at start-up; allow it some skew.
    let scan = report::scan_ndjson(&text, ino, dropped_wall - 0.05);
    let purge_secs = scan.first_exit.zip(scan.last_exit).map(|(a, b)| b - a);
    let purge_rate = scan.burst_rate();
    Ok(json!({
        "conns": load.conns, "conns_per_s": load.conns_per_s(), "errors": load.errors,
        "tw_alive": alive, "tw_overflow": load.tw_overflow,
        "enters_seen": scan.enters,
        "tracer_rss_kib_alive": rss_alive, "tracer_rss_anon_kib_alive": anon_alive, "tracer_hwm_kib_alive": hwm_alive,
        "tracer_hwm_kib_end": stopped.hwm_kib,
        "tracer_cpu_s_build": cpu_build, "tracer_cpu_s_total": cpu_total,
        "exits_seen_before_purge": scan.exits - scan.exits_since,
        "purge_exits_seen": scan.exits_since, "exit_reasons": scan.by_reason,
        "purge_missing": alive.saturating_sub(scan.exits_since),
        // The loss curve: of the sockets the kernel purged, the share twtrace did not print.
        "purge_lost_share": (alive > 0).then(|| alive.saturating_sub(scan.exits_since) as f64 / alive as f64),
        "purge_secs": purge_secs, "purge_exits_per_s": purge_rate,
        "lost": summary.as_ref().map(|s| s.lost()).unwrap_or(scan.lost),
    }))
}

fn userspace(env: &mut Env, plan: &Plan) -> Result<Value> {
    println!("\n== 3. userspace cost");
    let ns = recycling_ns(plan)?;
    // 5 000 connections/s in the recycling steady state is 10 000 TIME_WAIT events/s.
    let secs = plan.secs.max(3.0);
    let s = measure(
        env,
        Tool::Live,
        &ns,
        &spec(plan.workers, secs, Some(5_000.0), 1),
        Stdio::null(),
        false,
    )?;
    drop(ns);
    println!(
        "at {:.0} events/s for {:.1} s: twtrace used {} % of a core ({} CPU s per million events, {} wake-ups/s), peak RSS {} KiB",
        s.load.tw_events_per_s(),
        s.load.elapsed.as_secs_f64(),
        opt(s.cpu_pct(), 1),
        opt(s.cpu_per_mevents(), 2),
        opt(s.sleeps_per_s(), 0),
        s.hwm_kib.map_or("?".into(), |k| k.to_string())
    );
    let at_10k = json!({
        "offered_events_per_s": s.load.tw_events_per_s(),
        "tracer_cpu_pct": s.cpu_pct(),
        "tracer_sleeps_per_s": s.sleeps_per_s(),
        "cpu_s_per_million_events": s.cpu_per_mevents(),
        "peak_rss_kib": s.hwm_kib,
        "events_seen_fraction": s.coverage(),
        "lost": s.lost(),
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut alive = Vec::new();
    let mut rows = Vec::new();
    let mut peak = s.hwm_kib;
    for n in plan.alive.clone() {
        let v = alive_and_purge(env, plan, n)?;
        let hwm = v["tracer_hwm_kib_end"].as_u64();
        peak = peak.max(hwm);
        rows.push(vec![
            n.to_string(),
            v["tw_alive"].to_string(),
            v["enters_seen"].to_string(),
            v["tracer_rss_kib_alive"].to_string(),
            hwm.map_or("?".into(), |h| h.to_string()),
            v["exits_seen_before_purge"].to_string(),
            v["purge_exits_seen"].to_string(),
            v["lost"].to_string(),
            opt(v["purge_exits_per_s"].as_f64(), 0),
            opt(v["purge_lost_share"].as_f64().map(|x| x * 100.0), 3),
        ]);
        alive.push(v);
        std::thread::sleep(Duration::from_secs(1));
    }
    print!(
        "{}",
        table(
            &[
                "target",
                "TIME_WAIT alive",
                "enters seen",
                "RSS alive KiB",
                "peak RSS KiB",
                "exits before purge",
                "purge exits seen",
                "lost",
                "purge exits/s",
                "not seen %",
            ],
            &rows
        )
    );
    Ok(json!({
        "userspace": {
            "cpu_pct_at_10k_events_per_s": s.cpu_pct(),
            "cpu_s_per_million_events": s.cpu_per_mevents(),
            "peak_rss_kib": peak,
            "at_10k_events_per_s": at_10k,
            "alive_and_purge": alive,
        },
    }))
}

fn kernel(env: &mut Env, plan: &Plan) -> Result<Value> {
    println!("\n== 4. in-kernel cost per program (BPF_ENABLE_STATS while this runs)");
    let ns = recycling_ns(plan)?;
    let _stats = kstats::enable()?;
    let mut tools = vec![Tool::Live, Tool::Compare];
    if !plan.quick {
        tools.extend([Tool::Floor, Tool::Record, Tool::Tcpstates, Tool::Bpftrace]);
    }
    tools.retain(|t| env.available(*t));
    // One round is enough for a picture; comparing two builds needs several, alternating.
    let rounds = if env.available(Tool::Compare) {
        plan.rounds
    } else {
        1
    };
    let mut samples: Vec<Sample> = Vec::new();
    for round in 0..rounds {
        let order: Vec<Tool> = if round % 2 == 0 {
            tools.clone()
        } else {
            tools.iter().rev().copied().collect()
        };
        for t in order {
            match measure(
                env,
                t,
                &ns,
                &spec(plan.workers, plan.secs, None, 1),
                Stdio::null(),
                true,
            ) {
                Ok(s) => samples.push(s),
                Err(e) if t != Tool::Live => {
                    env.note(format!("{}: no kernel figures: {e:#}", t.name()));
                    tools.retain(|x| *x != t);
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut per_tool = Vec::new();
    let mut rows = Vec::new();
    for t in Tool::ALL {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.tool == t).collect();
        if mine.is_empty() {
            continue;
        }
        // Program names in the order the first sample lists them (ids differ per run).
        let mut names: Vec<String> = Vec::new();
        for s in &mine {
            for (_, p) in &s.progs {
                if !names.contains(&p.name) {
                    names.push(p.name.clone());
                }
            }
        }
        let per_conn = |s: &Sample, f: &dyn Fn(&kstats::ProgStat) -> f64| -> f64 {
            s.progs.iter().map(|(_, p)| f(p)).sum::<f64>() / s.load.conns.max(1) as f64
        };
        let mut progs = Vec::new();
        for name in &names {
            let of = |s: &Sample| {
                s.progs
                    .iter()
                    .find(|(_, p)| &p.name == name)
                    .map(|(_, p)| p.clone())
            };
            let stats: Vec<(kstats::ProgStat, u64)> = mine
                .iter()
                .filter_map(|s| of(s).map(|p| (p, s.load.conns.max(1))))
                .collect();
            let ns_run = median(
                &stats
                    .iter()
                    .filter(|(p, _)| p.run_cnt > 0)
                    .map(|(p, _)| p.run_time_ns as f64 / p.run_cnt as f64)
                    .collect::<Vec<_>>(),
            );
            let runs_conn = median(
                &stats
                    .iter()
                    .map(|(p, c)| p.run_cnt as f64 / *c as f64)
                    .collect::<Vec<_>>(),
            );
            let ns_conn = median(
                &stats
                    .iter()
                    .map(|(p, c)| p.run_time_ns as f64 / *c as f64)
                    .collect::<Vec<_>>(),
            );
            let runs: u64 = stats.iter().map(|(p, _)| p.run_cnt).sum();
            rows.push(vec![
                t.name().to_string(),
                name.clone(),
                runs.to_string(),
                opt(ns_run, 0),
                opt(runs_conn, 1),
                opt(ns_conn, 0),
            ]);
            progs.push(json!({
                "name": name, "run_cnt_total": runs, "ns_per_run_median": ns_run,
                "runs_per_conn_median": runs_conn, "ns_per_conn_median": ns_conn,
                "samples": stats.iter().map(|(p, c)| json!({
                    "run_cnt": p.run_cnt, "run_time_ns": p.run_time_ns, "conns": c,
                })).collect::<Vec<_>>(),
            }));
        }
        let total = median(
            &mine
                .iter()
                .map(|s| per_conn(s, &|p| p.run_time_ns as f64))
                .collect::<Vec<_>>(),
        );
        let cpu = median(
            &mine
                .iter()
                .map(|s| {
                    let ns: u64 = s.progs.iter().map(|(_, p)| p.run_time_ns).sum();
                    100.0 * ns as f64 / 1e9 / s.load.elapsed.as_secs_f64().max(1e-9)
                })
                .collect::<Vec<_>>(),
        );
        let worker = median(
            &mine
                .iter()
                .filter_map(|s| s.load.cpu_us_per_conn())
                .collect::<Vec<_>>(),
        );
        rows.push(vec![
            t.name().to_string(),
            "(all)".into(),
            String::new(),
            String::new(),
            String::new(),
            opt(total, 0),
        ]);
        rows.push(vec![
            t.name().to_string(),
            "(connection's whole CPU)".into(),
            String::new(),
            String::new(),
            String::new(),
            opt(worker.map(|w| w * 1000.0), 0),
        ]);
        per_tool.push(json!({
            "name": t.key(),
            "rounds": mine.len(),
            "conns_per_s_median": median(&mine.iter().map(|s| s.load.conns_per_s()).collect::<Vec<_>>()),
            "total_ns_per_conn_median": total,
            "worker_cpu_us_per_conn_median":
                median(&mine.iter().filter_map(|s| s.load.cpu_us_per_conn()).collect::<Vec<_>>()),
            "kernel_cpu_pct_median": cpu,
            "programs": progs,
        }));
    }
    print!(
        "{}",
        table(
            &["tool", "program", "runs", "ns/run", "runs/conn", "ns/conn"],
            &rows
        )
    );
    Ok(json!({"kernel": {
        "note": "medians over rounds; run time as measured by the kernel's BPF statistics (which add their own clock reads to every run)",
        "tools": per_tool,
    }}))
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    json!({
        "kernel": twtrace::kernel::sysinfo::kernel_release().unwrap_or_default(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "hypervisor": cpuinfo.contains(" hypervisor"),
        "mem_total_kib": children::parse_status_kib(&meminfo, "MemTotal:"),
        "load_average_start": load_average(),
    })
}

fn load_average() -> Option<Vec<f64>> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        s.split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect(),
    )
}
