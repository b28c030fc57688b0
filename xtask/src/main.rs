//! `cargo xtask`: setup, build, run and test twtrace from a fresh machine.
//!
//! - `setup`: installs only what is missing (Debian packages, bpf-linker), saying what it does.
//! - `build`: setup, then `cargo build --release`.
//! - `run [-- ARGS]`: build, then run `target/release/twtrace ARGS` as root.
//! - `dist`: build, then package: a stripped binary and a .deb in `target/dist/` (dist.rs).
//! - `test`: setup, format check, clippy, then every test (unit and integration; the
//!   integration tests load the real programs into the running kernel, so they need root).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

mod bench;
mod dist;
mod fuzz;
mod panics;
mod vmtest;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the build dependencies that are missing (idempotent).
    Setup {
        /// Install only the headless browser the HTML report's test renders pages with
        /// (Debian's chromium): the test calls this itself, so nobody pays for it otherwise.
        #[arg(long)]
        browser: bool,
    },
    /// Set up, then build the release binary with the kernel object embedded.
    Build,
    /// Build, then run twtrace as root with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure twtrace's cost and lossless rate beside peer tools (root; see docs/performance.md).
    Bench {
        /// The short version (under 5 minutes).
        #[arg(long)]
        quick: bool,
        /// Write every figure to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// More arguments for twtrace-bench (e.g. `--only overhead --rounds 9`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A bounded fuzzing session on the trace-file reader (nightly + cargo-fuzz).
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
    /// Set up, check formatting and lints, and run every test: on this machine's kernel, then
    /// the kernel matrix (Debian 6.1, 6.12 and 7.3 under QEMU, `vm-test --kernel default`).
    Test {
        /// Only the host's kernel (skip the kernel matrix; also `TWTRACE_NO_VM=1`).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for the test harness (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the integration tests on stock Debian kernels under QEMU (nothing installed).
    VmTest(vmtest::VmArgs),
    /// Set up, build the release binary, and package it in target/dist: a stripped binary
    /// with its .sha256 and a .deb (man pages, completions, systemd unit, docs).
    Dist(dist::DistArgs),
}

/// Debian packages the build and the tests need, with why.
const PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "Debian's rustc, which has a BPF core library"),
    ("cargo-web", "Debian's cargo, to build the kernel programs"),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core/alloc for bpfel-unknown-none",
    ),
    (
        "llvm-22-dev",
        "the LLVM bpf-linker links against (matches rustc-web's LLVM 22)",
    ),
    ("libzstd-dev", "needed to link bpf-linker"),
    (
        "iproute2",
        "network namespaces and veth pairs for the tests",
    ),
    (
        "nftables",
        "the masquerading router of `twtrace lab nat` (nft)",
    ),
    (
        "prometheus",
        "the real Prometheus server (and promtool) the `twtrace serve` tests scrape with",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup { browser: false } => setup(),
        Cmd::Setup { browser: true } => setup_browser(),
        Cmd::Build => setup().and_then(|_| build()),
        Cmd::Run { args } => setup().and_then(|_| build()).and_then(|_| run(&args)),
        Cmd::Test { no_vm, args } => setup().and_then(|_| test(&args, no_vm)),
        Cmd::Fuzz { seconds } => fuzz::run(&root_dir(), seconds),
        Cmd::Bench { quick, json, args } => {
            setup().and_then(|_| bench::run(quick, json.as_deref(), &args))
        }
        Cmd::Dist(a) => dist::run(a),
        Cmd::VmTest(a) => vmtest::run(a).and_then(|c| {
            if c.ok() {
                Ok(())
            } else {
                bail!("vm-test failed")
            }
        }),
    };
    if let Err(e) = r {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let st = cmd
        .status()
        .with_context(|| format!("running {}", show(cmd)))?;
    if !st.success() {
        bail!("`{}` failed ({st})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

fn bpf_linker_ok() -> bool {
    let bin = cargo_home().join("bin/bpf-linker");
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn setup() -> Result<()> {
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "automatic setup supports Debian and Ubuntu only. Install by hand: Debian's rustc-web, \
             cargo-web and libstd-rust-web-dev-bpf (or a nightly Rust with rust-src), LLVM 22 \
             development files, then:\n  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@{BPF_LINKER_VERSION} \
             --locked --no-default-features --features llvm-22"
        );
    }
    let missing: Vec<&(&str, &str)> = PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
        for (p, why) in &missing {
            eprintln!("xtask: missing package {p}: {why}");
        }
        if !is_root() {
            bail!(
                "installing packages needs root. Run:\n  sudo apt-get update && sudo apt-get install -y {}",
                names.join(" ")
            );
        }
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&names)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !bpf_linker_ok() {
        eprintln!(
            "xtask: installing bpf-linker {BPF_LINKER_VERSION} (built against LLVM 22, ~1 min)"
        );
        sh(Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    // tp_btf programs do not need tracefs, but classic tracepoints and the peer tools
    // (bpftrace, tcpstates) do; mount it where a fresh boot left it out.
    if is_root() && !Path::new("/sys/kernel/tracing/events").exists() {
        let _ = sh(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]));
    }
    eprintln!("xtask: setup complete");
    Ok(())
}

/// Debian's chromium, for `twtrace/tests/html_report.rs` (headless: --screenshot, --dump-dom).
/// Kept out of [`PACKAGES`]: ~300 MB that only that test needs.
fn setup_browser() -> Result<()> {
    const BROWSER: &str = "chromium";
    if installed(BROWSER) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "installing {BROWSER} needs root. Run:\n  sudo apt-get update && sudo apt-get install -y \
             --no-install-recommends {BROWSER}"
        );
    }
    let t0 = std::time::Instant::now();
    eprintln!("xtask: installing {BROWSER} (the HTML report's test renders with it)");
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", BROWSER])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    eprintln!("xtask: {BROWSER} installed in {:.1?}", t0.elapsed());
    Ok(())
}

/// The workspace's target directory (`CARGO_TARGET_DIR` if set, relative to the root).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_relative() {
                root_dir().join(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| root_dir().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root_dir());
    c
}

fn build() -> Result<()> {
    sh(cargo().args(["build", "--release", "-p", "twtrace"]))
}

fn run(args: &[String]) -> Result<()> {
    let bin = root_dir().join("target/release/twtrace");
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        eprintln!("xtask: twtrace loads eBPF programs: running it with sudo");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&bin);
        c
    };
    cmd.args(args);
    let st = cmd.status().context("starting twtrace")?;
    std::process::exit(st.code().unwrap_or(1));
}

fn test(args: &[String], no_vm: bool) -> Result<()> {
    if !is_root() {
        bail!(
            "the integration tests load eBPF programs and create network namespaces: run as \
             root (sudo -E cargo xtask test)"
        );
    }
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Most integration tests wait on the kernel (timers, namespace teardown) rather than on
    // the CPU, so they run with more threads than cores.
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast", "--"])
        .args(args)
        .env(
            "RUST_TEST_THREADS",
            std::env::var("RUST_TEST_THREADS").unwrap_or_else(|_| "8".into()),
        );
    let (h, host) = run_counting(&mut cmd);
    if !args.is_empty() {
        eprintln!("xtask: soak and kernel matrix skipped (a test filter)");
        return host;
    }
    if no_vm || std::env::var_os("TWTRACE_NO_VM").is_some() {
        eprintln!("xtask: kernel matrix skipped (--no-vm or TWTRACE_NO_VM)");
        return host.and(soak_build()).and(soak_ci());
    }
    // The soak is paced and mostly waits; the matrix's static build of the test binaries
    // (~2.5 min from scratch) is CPU work that needs no quiet machine: the two overlap, and
    // the guests start only once the soak is over (their tests should not share the cores
    // with it). The soak's own criteria hold under load (it checks counts, not speed).
    // Built first: two cargo runs on one target directory would wait on each other's lock.
    let soak = match soak_build() {
        Ok(()) => std::thread::spawn(soak_ci),
        Err(e) => std::thread::spawn(move || Err(e)),
    };
    let prebuilt = vmtest::build_tests().map(|_| ());
    let soak = soak
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the soak thread panicked")));
    if let Err(e) = &prebuilt {
        eprintln!(
            "xtask: static build of the test binaries failed ({e:#}); the matrix will retry it"
        );
    }
    let host = host.and(soak);
    // The matrix runs even when the host failed: both results are wanted.
    let v = vmtest::run(vmtest::VmArgs::whole_matrix())?;
    println!(
        "tests (host and kernel matrix): {} passed, {} failed, {} skipped",
        h.passed as usize + v.passed,
        h.failed as usize + v.failed,
        h.ignored as usize + v.skipped
    );
    h.panics.print("host");
    for (kernel, p) in &v.panics {
        p.print(&format!("kernel {kernel}"));
    }
    host?;
    if !v.ok() {
        bail!("the kernel matrix failed (see its report above)");
    }
    Ok(())
}

/// `twtrace-bench soak` for 2 minutes (docs/performance.md, "Endurance"): nothing lost,
/// every namespace's events seen against its kernel counters, memory and map sizes printed.
/// The debug build (what the tests just built; a release build would cost CI minutes), so at a
/// quarter of the bench's rate and with fewer destinations (a namespace's purge burst must fit
/// twtrace's 4 MiB ring while the slower debug reader drains it). A tolerance of 20 ppm per
/// namespace: the known rare difference (1–2 entries in ~500 000, docs/performance.md) must
/// not make CI flaky; anything more fails.
fn soak_build() -> Result<()> {
    sh(cargo().args(["build", "-p", "twtrace", "--bins", "--features", "testkit"]))
}

fn soak_ci() -> Result<()> {
    let t0 = std::time::Instant::now();
    let bin = target_dir().join("debug/twtrace-bench");
    let r = sh(Command::new(&bin)
        .arg("--json")
        .arg(target_dir().join("soak-ci.json"))
        .args([
            "soak",
            "--minutes",
            "2",
            "--rate",
            "5000",
            "--dests",
            "200",
            "--churn",
            "16",
        ])
        .args(["--tolerance-ppm", "20"]));
    eprintln!("xtask: soak took {:.0} s", t0.elapsed().as_secs_f64());
    r
}

/// Runs `cargo test`, passing its output through, and ends with one line totalling every
/// test binary (`tests: N passed, N failed, N skipped`): cargo's own last line belongs to
/// whichever binary ran last, often one with no tests at all.
/// The totals are returned whatever happened (for the overall line); the `Result` says
/// whether the run succeeded.
fn run_counting(cmd: &mut Command) -> (Totals, Result<()>) {
    let mut totals = Totals::default();
    let r = count_into(cmd, &mut totals);
    (totals, r)
}

fn count_into(cmd: &mut Command, totals: &mut Totals) -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("xtask: $ {}", show(cmd));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", show(cmd)))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            totals.add(&line);
            totals.panics.feed(&line);
        }
    }
    let st = child.wait()?;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !st.success() {
        bail!("`{}` failed ({st})", show(cmd));
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[derive(Clone, Default, Debug, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// The failed tests' panic messages, repeated at the end of the run.
    panics: panics::Panics,
}

impl Totals {
    /// Adds a libtest summary line: `test result: ok. 7 passed; 0 failed; 1 ignored; ...`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut w = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (w.next(), w.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn totals_sum_libtest_lines() {
        let mut t = Totals::default();
        t.add("test result: ok. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s");
        t.add("test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 9,
                failed: 3,
                ignored: 1,
                panics: Default::default(),
            }
        );
    }
}
