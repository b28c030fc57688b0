//! `cargo xtask vm-test`: the integration tests on stock Debian kernels, booted under QEMU.
//!
//! The development host's kernel has neither kprobes nor fentry; distribution kernels have
//! both, and their structure layouts differ. This boots each kernel of the matrix with a small
//! initramfs (busybox, `ip`, the `veth` module and the statically linked test binaries), runs
//! every integration test binary inside, and reads the results from the serial console.
//!
//! Nothing is installed on the host: the kernel packages, busybox-static and (when the host has
//! no QEMU) QEMU itself are fetched with `apt-get download` into `target/vm/` and unpacked
//! there. (Installing Debian's qemu-system-x86 would replace a newer preinstalled qemu-utils.)
//! No root is needed on the host: the tests run as root inside the guest.
//!
//! Guest protocol (one line each, whatever else the console shows around them):
//! `TWVM-FACT key value`, `TWVM-TEST bin name ok|FAILED|ignored`, `TWVM-SKIP bin name: why`
//! (the test did not apply to this kernel), `TWVM-PARTIAL bin name: why` (one of its checks did
//! not), `TWVM-BIN bin rc=N secs=N`, and `TWVM-DONE` last. QEMU exits 0 on power-off whatever
//! happened, so a run without `TWVM-DONE` is a failure (crash, panic or timeout).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::panics::Panics;

#[derive(clap::Args)]
pub struct VmArgs {
    /// Which kernel: 6.1, 6.12, 7.3, 7.3-rt, all (every one) or default (those `cargo xtask
    /// test` runs).
    #[arg(long, default_value = "all")]
    kernel: String,
    /// Run only tests whose name contains this (libtest filter, passed to every binary).
    #[arg(long)]
    filter: Option<String>,
    /// Test threads per binary inside the guest (2 vCPUs; most tests wait on the kernel).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// QEMU TCG threading. `single` by default: as fast here (6.12 matrix 275 s vs 240–285 s
    /// with `multi`: the tests mostly wait on the kernel), and it cannot have the emulation race
    /// seen once in ~20 boots with `multi` (guest oops, int3 in __run_timers, while a
    /// tracepoint's code was being patched by an attach on the other vCPU).
    #[arg(long, default_value = "single", value_parser = ["multi", "single"])]
    tcg: String,
}

/// One kernel of the matrix: a Debian package name pattern and a time budget.
struct Kernel {
    label: &'static str,
    /// `apt-cache search --names-only` regex; the newest match (by version sort) is used,
    /// unless `pinned` is among the matches.
    package_regex: &'static str,
    /// Prefix and suffix of matching package names, to pick a cached .deb when apt has none.
    prefix: &'static str,
    suffix: &'static str,
    /// The package the matrix's results were measured with; when the archive no longer has it
    /// the newest match runs instead (the report names the package that ran).
    pinned: Option<&'static str>,
    /// A suite of Debian's archive that the host's apt sources may lack (trixie-backports):
    /// searched and downloaded through a private apt configuration under `target/vm/apt/`,
    /// never through the host's sources.
    suite: Option<&'static str>,
    /// Split packaging (trixie-backports from 7.1 on): the kernel is in `linux-binary-<v>`
    /// (`usr/lib/modules/<v>/vmlinuz`), the modules in `linux-modules-<v>`; there is no config.
    split: bool,
    /// Part of `cargo xtask test`'s default run (the others run by name).
    default: bool,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        label: "6.1",
        package_regex: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64",
        pinned: None,
        suite: None,
        split: false,
        default: true,
    },
    Kernel {
        label: "6.12",
        package_regex: r"^linux-image-6\.12\.[0-9]+\+deb[0-9]+-cloud-amd64$",
        prefix: "linux-image-6.12.",
        suffix: "-cloud-amd64",
        pinned: None,
        suite: None,
        split: false,
        default: true,
    },
    Kernel {
        label: "7.3",
        package_regex: r"^linux-binary-7\.3\.[0-9]+\+deb[0-9]+-cloud-amd64$",
        prefix: "linux-binary-7.3.",
        suffix: "-cloud-amd64",
        pinned: Some("linux-binary-7.3.4+deb13-cloud-amd64"),
        suite: Some("trixie-backports"),
        split: true,
        default: true,
    },
    Kernel {
        label: "7.3-rt",
        package_regex: r"^linux-binary-7\.3\.[0-9]+\+deb[0-9]+-rt-amd64$",
        prefix: "linux-binary-7.3.",
        suffix: "-rt-amd64",
        pinned: Some("linux-binary-7.3.4+deb13-rt-amd64"),
        suite: Some("trixie-backports"),
        split: true,
        default: false,
    },
];

/// Modules the tests need; their dependencies are found in each module's `.modinfo` and loaded
/// first (the guest has no modules.dep: insmod in order, not modprobe). veth: namespaces joined
/// by a veth pair (reuse mode 2 refuses non-loopback); nft_masq + nft_chain_nat: the NAT lab's
/// masquerading router (`twtrace lab nat`, verify).
const MODULES: &[&str] = &["veth", "nft_chain_nat", "nft_masq"];
/// Where in a kernel package those modules and their dependencies live.
const MODULE_DIRS: &[&str] = &[
    "*/kernel/net/*",
    "*/kernel/lib/*",
    "*/kernel/drivers/net/veth.ko*",
];
/// The load order written next to the modules (one name per line).
const MODULE_ORDER: &str = "modules.order";

/// Wall-time budget of one kernel's run (boot, every test binary, power-off), enforced from the
/// host with `timeout`. Measured: 190–240 s per kernel on 2 busy cores; this leaves room for a
/// slower machine and for one binary hanging until its own budget.
const KERNEL_BUDGET: Duration = Duration::from_secs(1200);
/// Test binaries (and, unless `--filter` is given, the tests in them that use the function
/// tier) run a second time with it forced onto kprobes (`TWTRACE_FN_HOOKS=kprobe`) where the
/// guest kernel has kprobes.
const KPROBE_RERUN: &[(&str, &str)] = &[("hooks", ""), ("fn_hooks", ""), ("reasons", "reuse")];
/// Budget of one test binary inside the guest. The slowest (lifecycle, with a real 62 s expiry)
/// takes 80–110 s under TCG.
const BINARY_BUDGET_SECS: u64 = 300;

fn vm_dir() -> PathBuf {
    super::root_dir().join("target/vm")
}

impl VmArgs {
    /// The whole matrix with the defaults: what `cargo xtask test` runs after the host tests.
    pub fn whole_matrix() -> VmArgs {
        VmArgs {
            kernel: "default".into(),
            filter: None,
            threads: 2,
            tcg: "single".into(),
        }
    }
}

/// Test counts over every kernel run.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// A guest failed as a whole (crash, time-out, a binary that exited non-zero).
    pub broken: bool,
    /// Each kernel's panic messages (tests named `binary::test`).
    pub panics: Vec<(String, Panics)>,
}

impl Counts {
    pub fn ok(&self) -> bool {
        self.failed == 0 && !self.broken
    }
}

/// Boots each kernel and runs the tests. `Err` only when the matrix could not run at all
/// (preparation); test failures are in the counts.
pub fn run(args: VmArgs) -> Result<Counts> {
    let kernels: Vec<&Kernel> = match args.kernel.as_str() {
        "all" => KERNELS.iter().collect(),
        "default" => KERNELS.iter().filter(|k| k.default).collect(),
        k => match KERNELS.iter().find(|x| x.label == k) {
            Some(x) => vec![x],
            None => bail!(
                "unknown kernel {k:?}: choose one of {}, default or all",
                KERNELS
                    .iter()
                    .map(|k| k.label)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    if let Some(f) = &args.filter {
        if f.contains('\'') || f.contains('\n') {
            bail!("--filter may not contain quotes or newlines");
        }
    }
    let t0 = Instant::now();
    let dir = vm_dir();
    fs::create_dir_all(dir.join("debs"))?;
    let qemu = Qemu::find_or_fetch(&dir)?;
    let busybox = fetch_busybox(&dir)?;
    let tests = build_tests()?;
    let common = common_entries(&busybox, &tests, &args)?;
    eprintln!(
        "xtask: vm-test: {} test binaries, host preparation took {:.0?}",
        tests.len(),
        t0.elapsed()
    );

    let mut reports = Vec::new();
    for k in kernels {
        let kdir = fetch_kernel(&dir, k)?;
        let initrd = dir.join(format!("initrd-{}.cpio", k.label));
        let mut entries = common.clone();
        let order = fs::read_to_string(kdir.join(MODULE_ORDER))?;
        for m in order.lines() {
            entries.push(Entry::file(
                &format!("lib/modules/{m}.ko"),
                kdir.join(format!("{m}.ko")),
                0o644,
            ));
        }
        entries.push(Entry::Bytes {
            path: format!("lib/modules/{MODULE_ORDER}"),
            data: order.into_bytes(),
            mode: 0o644,
        });
        write_cpio(&initrd, &entries)?;
        let log = dir.join(format!("console-{}.log", k.label));
        let t = Instant::now();
        let outcome = qemu.boot(
            &kdir.join("vmlinuz"),
            &initrd,
            &log,
            KERNEL_BUDGET,
            &args.tcg,
        )?;
        let mut report = parse_console(&outcome.console);
        report.label = k.label.to_string();
        report.package = fs::read_to_string(kdir.join("package"))
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        report.wall = t.elapsed();
        report.timed_out = outcome.timed_out;
        report.log = log;
        reports.push(report);
    }

    let mut counts = Counts::default();
    eprintln!();
    for r in &mut reports {
        counts.broken |= r.print();
        counts.passed += r.count("ok");
        counts.failed += r.count("FAILED");
        counts.skipped += r.count("skipped");
        counts
            .panics
            .push((r.label.clone(), std::mem::take(&mut r.panics)));
    }
    eprintln!(
        "xtask: vm-test: {} passed, {} failed, {} skipped; total wall time {:.0?}{}",
        counts.passed,
        counts.failed,
        counts.skipped,
        t0.elapsed(),
        if counts.ok() {
            String::new()
        } else {
            format!(" — FAILED (console logs under {})", dir.display())
        }
    );
    Ok(counts)
}

/// Runs `cmd` and returns its stdout, failing with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", super::show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            super::show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Compares version-like strings the way `sort -V` does for package names: runs of digits
/// numerically, everything else byte by byte.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let digit = b[i].is_ascii_digit();
            let j = b[i..]
                .iter()
                .position(|c| c.is_ascii_digit() != digit)
                .map_or(b.len(), |p| i + p);
            out.push((digit, &s[i..j]));
            i = j;
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o.is_ne() {
            return o;
        }
    }
    ca.len().cmp(&cb.len())
}

/// `apt-get download` of `pkg` into `dir` (through `apt` when given); returns the .deb's path.
fn apt_download(dir: &Path, pkg: &str, apt: Option<&PrivateApt>) -> Result<PathBuf> {
    let before: Vec<PathBuf> = debs_in(dir)?;
    super::sh(
        Command::new("apt-get")
            .args(apt.map(|a| a.opts.as_slice()).unwrap_or_default())
            .args(["download", "-q", pkg])
            // As root, apt warns that its sandbox user cannot write here; nothing to fix.
            .args(["-o", "APT::Sandbox::User=root"])
            .current_dir(dir),
    )?;
    let name = format!("{pkg}_");
    debs_in(dir)?
        .into_iter()
        .filter(|p| file_name(p).starts_with(&name))
        .find(|p| !before.contains(p))
        .or_else(|| newest_cached(dir, &name, ""))
        .with_context(|| format!("apt-get download {pkg} left no .deb in {}", dir.display()))
}

fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The newest cached .deb whose package name starts with `prefix` and ends with `suffix`.
fn newest_cached(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let mut debs: Vec<PathBuf> = debs_in(dir)
        .ok()?
        .into_iter()
        .filter(|p| {
            let n = file_name(p);
            let pkg = n.split('_').next().unwrap_or("");
            pkg.starts_with(prefix.trim_end_matches('_')) && pkg.ends_with(suffix)
        })
        .collect();
    debs.sort_by(|a, b| version_cmp(&file_name(a), &file_name(b)));
    debs.pop()
}

/// The cached .deb of `pkg`, if any.
fn cached(dir: &Path, pkg: &str) -> Option<PathBuf> {
    let name = format!("{pkg}_");
    debs_in(dir)
        .ok()?
        .into_iter()
        .find(|p| file_name(p).starts_with(&name))
}

/// The cached .deb of `pkg`, downloading it if absent.
fn cached_or_download(dir: &Path, pkg: &str) -> Result<PathBuf> {
    match cached(dir, pkg) {
        Some(p) => Ok(p),
        None => apt_download(dir, pkg, None),
    }
}

/// Extracts `members` (tar wildcards) of a .deb into `into`.
fn deb_extract(deb: &Path, into: &Path, members: &[&str]) -> Result<()> {
    fs::create_dir_all(into)?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("running dpkg-deb")?;
    let st = Command::new("tar")
        .args(["-x", "--wildcards", "-C"])
        .arg(into)
        .args(members)
        .stdin(dpkg.stdout.take().unwrap())
        .status()
        .context("running tar")?;
    let dst = dpkg.wait()?;
    if !st.success() || !dst.success() {
        bail!("extracting {:?} from {}", members, deb.display());
    }
    Ok(())
}

/// A private apt configuration for `suite` of Debian's archive under `dir/apt-<suite>/`: its own
/// sources list, package lists and cache, so the host's apt sources are never changed. The
/// lists are refreshed when older than a day.
struct PrivateApt {
    opts: Vec<String>,
}

impl PrivateApt {
    fn new(dir: &Path, suite: &str) -> Result<PrivateApt> {
        let root = dir.join(format!("apt-{suite}"));
        let lists = root.join("lists");
        fs::create_dir_all(lists.join("partial"))?;
        fs::create_dir_all(root.join("cache/archives/partial"))?;
        fs::create_dir_all(root.join("sources.list.d"))?;
        let list = root.join("sources.list");
        fs::write(
            &list,
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian {suite} main\n"
            ),
        )?;
        let d = |p: &Path| p.display().to_string();
        let opts = [
            format!("Dir::Etc::sourcelist={}", d(&list)),
            format!("Dir::Etc::sourceparts={}", d(&root.join("sources.list.d"))),
            format!("Dir::State::Lists={}", d(&lists)),
            format!("Dir::Cache={}", d(&root.join("cache"))),
            "Dir::State::status=/dev/null".into(),
            // As root, apt warns that its sandbox user cannot write here; nothing to fix.
            "APT::Sandbox::User=root".into(),
            "Debug::NoLocking=1".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        let apt = PrivateApt { opts };
        // apt gives the lists the archive's own dates: our stamp says when we updated.
        let stamp = root.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m.elapsed().is_ok_and(|a| a < Duration::from_secs(86_400)));
        if !fresh {
            super::sh(
                Command::new("apt-get")
                    .args(&apt.opts)
                    .args(["update", "-q"]),
            )?;
            fs::write(&stamp, "")?;
        }
        Ok(apt)
    }
}

/// `apt-cache search --names-only` of `k`'s regex: matching names, oldest first.
fn search_packages(k: &Kernel, apt: Option<&PrivateApt>) -> Vec<String> {
    let mut cmd = Command::new("apt-cache");
    if let Some(a) = apt {
        cmd.args(&a.opts);
    }
    let found = cmd
        .args(["search", "--names-only", k.package_regex])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut names: Vec<String> = found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(k.prefix) && n.ends_with(k.suffix))
        .map(str::to_string)
        .collect();
    names.sort_by(|a, b| version_cmp(a, b));
    names
}

/// The package of `k` to run: the pinned one when the archive (or the cache) has it, else the
/// newest match.
fn pick_package(names: &[String], k: &Kernel) -> Option<String> {
    match k.pinned {
        Some(p) if names.iter().any(|n| n == p) => Some(p.to_string()),
        _ => names.last().cloned(),
    }
}

/// Finds the kernel package of `k` (pinned, or the newest), downloads it (once) and unpacks
/// vmlinuz, config (where the package has one) and the test modules into
/// `target/vm/kernel-<label>/`. Never installs anything.
fn fetch_kernel(dir: &Path, k: &Kernel) -> Result<PathBuf> {
    let debs = dir.join("debs");
    let apt = match k.suite {
        Some(suite) => match PrivateApt::new(dir, suite) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("xtask: vm-test: apt for {suite}: {e:#} (trying the cache)");
                None
            }
        },
        None => None,
    };
    let mut names = if k.suite.is_some() && apt.is_none() {
        Vec::new()
    } else {
        search_packages(k, apt.as_ref())
    };
    if names.is_empty() && k.suite.is_none() && super::is_root() {
        // A fresh machine may have no package lists yet.
        super::sh(Command::new("apt-get").args(["update", "-q"]))?;
        names = search_packages(k, None);
    }
    let download = |pkg: &str| -> Result<PathBuf> {
        match cached(&debs, pkg) {
            Some(p) => Ok(p),
            None => apt_download(&debs, pkg, apt.as_ref()),
        }
    };
    let deb = match pick_package(&names, k) {
        Some(pkg) => {
            if k.pinned.is_some_and(|p| p != pkg) {
                eprintln!(
                    "xtask: vm-test: kernel {}: {} is gone from the archive; running {pkg}",
                    k.label,
                    k.pinned.unwrap_or_default()
                );
            }
            download(&pkg)?
        }
        None => {
            let pinned = k.pinned.and_then(|p| cached(&debs, p));
            pinned
                .or_else(|| newest_cached(&debs, k.prefix, k.suffix))
                .with_context(|| {
                    format!(
                        "no package matches {} (run apt-get update first) and none is cached in {}",
                        k.package_regex,
                        debs.display()
                    )
                })?
        }
    };
    let pkg = file_name(&deb).split('_').next().unwrap_or("").to_string();
    let out = dir.join(format!("kernel-{}", k.label));
    // The stamp names the package and the wanted modules: a change of either unpacks anew.
    let stamp = format!("{pkg}\n{}", MODULES.join(","));
    if fs::read_to_string(out.join("package")).is_ok_and(|p| p.trim() == stamp) {
        return Ok(out);
    }
    eprintln!("xtask: vm-test: kernel {}: unpacking {pkg}", k.label);
    let _ = fs::remove_dir_all(&out);
    let raw = out.join("raw");
    let modules: Vec<&str> = MODULE_DIRS.to_vec();
    if k.split {
        // linux-binary-<v> holds only the kernel; linux-modules-<v> the modules.
        deb_extract(&deb, &raw, &["./usr/lib/modules/*/vmlinuz"])?;
        let mods_pkg = pkg.replacen("linux-binary-", "linux-modules-", 1);
        let mods = download(&mods_pkg)?;
        deb_extract(&mods, &raw, &modules)?;
        for e in fs::read_dir(raw.join("usr/lib/modules"))?.flatten() {
            let v = e.path().join("vmlinuz");
            if v.exists() {
                fs::copy(&v, out.join("vmlinuz"))?;
            }
        }
    } else {
        let mut members = vec!["./boot/vmlinuz-*", "./boot/config-*"];
        members.extend(modules.iter().copied());
        deb_extract(&deb, &raw, &members)?;
        for e in fs::read_dir(raw.join("boot"))?.flatten() {
            let n = file_name(&e.path());
            if n.starts_with("vmlinuz-") {
                fs::copy(e.path(), out.join("vmlinuz"))?;
            } else if n.starts_with("config-") {
                fs::copy(e.path(), out.join("config"))?;
            }
        }
    }
    // Every module file by module name (file names may use '-' where names use '_').
    let mut files = BTreeMap::new();
    index_modules(&raw.join("lib/modules"), &mut files);
    index_modules(&raw.join("usr/lib/modules"), &mut files);
    let mut order = Vec::new();
    for m in MODULES {
        add_module(m, &files, &out, &mut order, 0).with_context(|| format!("in {pkg}"))?;
    }
    fs::write(out.join(MODULE_ORDER), order.join("\n") + "\n")?;
    if !out.join("vmlinuz").exists() {
        bail!("{pkg} has no vmlinuz");
    }
    let _ = fs::remove_dir_all(&raw);
    fs::write(out.join("package"), &stamp)?;
    Ok(out)
}

fn run_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", super::show(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed", super::show(cmd));
    }
    Ok(out.stdout)
}

/// Module name → file, for every `.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz` under `dir`.
fn index_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            index_modules(&p, out);
            continue;
        }
        let n = file_name(&p);
        if let Some(i) = n.find(".ko") {
            out.insert(n[..i].replace('-', "_"), p);
        }
    }
}

/// The `depends=` list of a module's `.modinfo`.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(i) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[i + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// Decompresses module `name` into `out/<name>.ko`, its dependencies first, appending each to
/// `order` once (dependencies before dependents).
fn add_module(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    out: &Path,
    order: &mut Vec<String>,
    depth: u32,
) -> Result<()> {
    if order.iter().any(|m| m == name) {
        return Ok(());
    }
    if depth > 16 {
        bail!("module dependencies of {name} nest too deep");
    }
    let path = files
        .get(name)
        .with_context(|| format!("module {name} is not in the kernel package"))?;
    let n = file_name(path);
    // The guest's busybox insmod reads plain .ko files: decompress on the host.
    let data = if n.ends_with(".xz") {
        run_bytes(Command::new("xz").arg("-dc").arg(path))?
    } else if n.ends_with(".zst") {
        run_bytes(Command::new("zstd").arg("-dc").arg(path))?
    } else if n.ends_with(".gz") {
        run_bytes(Command::new("gzip").arg("-dc").arg(path))?
    } else {
        fs::read(path)?
    };
    for d in module_depends(&data) {
        add_module(&d, files, out, order, depth + 1)?;
    }
    fs::write(out.join(format!("{name}.ko")), data)?;
    order.push(name.to_string());
    Ok(())
}

/// busybox from Debian's busybox-static, unpacked under target/vm (not installed).
fn fetch_busybox(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("busybox/bin/busybox");
    if bin.exists() {
        return Ok(bin);
    }
    let deb = cached_or_download(&dir.join("debs"), "busybox-static")?;
    deb_extract(&deb, &dir.join("busybox"), &["./bin/busybox"])?;
    Ok(bin)
}

/// The QEMU to boot with: the host's if installed, else Debian's qemu-system-x86 and the
/// libraries the host lacks, unpacked under target/vm/qemu (never installed).
struct Qemu {
    bin: PathBuf,
    /// LD_LIBRARY_PATH and firmware directories of an unpacked QEMU.
    lib_path: Option<String>,
    firmware: Vec<PathBuf>,
}

impl Qemu {
    fn find_or_fetch(dir: &Path) -> Result<Qemu> {
        if let Some(bin) = which("qemu-system-x86_64") {
            return Ok(Qemu {
                bin,
                lib_path: None,
                firmware: Vec::new(),
            });
        }
        let root = dir.join("qemu");
        let stamp = root.join(".complete");
        if !stamp.exists() {
            eprintln!(
                "xtask: vm-test: unpacking Debian's QEMU under {}",
                root.display()
            );
            // What installing it would bring in on this host: exactly the missing pieces.
            let sim = output(
                Command::new("apt-get")
                    .args([
                        "install",
                        "-s",
                        "--no-install-recommends",
                        "qemu-system-x86",
                    ])
                    .env("LC_ALL", "C"),
            )?;
            let pkgs: Vec<&str> = sim
                .lines()
                .filter_map(|l| l.strip_prefix("Inst "))
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            if pkgs.is_empty() {
                bail!("apt-get install -s qemu-system-x86 listed nothing to fetch (run apt-get update?)");
            }
            let debs = dir.join("qemu-debs");
            fs::create_dir_all(&debs)?;
            let _ = fs::remove_dir_all(&root);
            let missing: Vec<&str> = pkgs
                .iter()
                .copied()
                .filter(|p| cached(&debs, p).is_none())
                .collect();
            if !missing.is_empty() {
                super::sh(
                    Command::new("apt-get")
                        .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
                        .args(&missing)
                        .current_dir(&debs),
                )?;
            }
            for p in &pkgs {
                let deb = cached(&debs, p)
                    .with_context(|| format!("apt-get download {p} left no .deb"))?;
                super::sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            }
            fs::write(&stamp, pkgs.join("\n"))?;
        }
        let lib_path = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
            .iter()
            .map(|d| root.join(d).to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        Ok(Qemu {
            bin: root.join("usr/bin/qemu-system-x86_64"),
            lib_path: Some(lib_path),
            firmware: ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"]
                .iter()
                .map(|d| root.join(d))
                .collect(),
        })
    }

    /// Boots `kernel` with `initrd` under TCG, streaming the console to `log` and showing the
    /// result lines as they come. Killed after `budget`.
    fn boot(
        &self,
        kernel: &Path,
        initrd: &Path,
        log: &Path,
        budget: Duration,
        tcg: &str,
    ) -> Result<Boot> {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=10", &format!("{}", budget.as_secs())])
            .arg(&self.bin);
        for f in &self.firmware {
            cmd.arg("-L").arg(f);
        }
        // KVM here is a paravirtual device that emulates instruction by instruction: TCG.
        cmd.args([
            "-accel",
            &format!("tcg,thread={tcg}"),
            "-cpu",
            "max",
            "-M",
            "pc",
        ])
        .args([
            "-smp",
            "2",
            "-m",
            "1024",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(lp) = &self.lib_path {
            cmd.env("LD_LIBRARY_PATH", lp);
        }
        eprintln!("xtask: $ {}", super::show(&cmd));
        let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
        let stderr = child.stderr.take().unwrap();
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let mut file = BufWriter::new(fs::File::create(log)?);
        let mut console = String::new();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut raw = Vec::new();
        loop {
            raw.clear();
            if reader.read_until(b'\n', &mut raw)? == 0 {
                break;
            }
            let line = clean_line(&String::from_utf8_lossy(&raw));
            writeln!(file, "{line}")?;
            // Line by line: the log is what to read while a long run is going on.
            file.flush()?;
            if let Some(m) = line.find("TWVM-") {
                let shown = &line[m..];
                if !shown.starts_with("TWVM-TEST") || !shown.ends_with(" ok") {
                    eprintln!("  guest: {shown}");
                }
            }
            console.push_str(&line);
            console.push('\n');
        }
        file.flush()?;
        let st = child.wait()?;
        let err = err_thread.join().unwrap_or_default();
        // timeout(1) exits 124 when it had to stop QEMU.
        let timed_out = st.code() == Some(124) || st.code() == Some(137);
        if !st.success() && !timed_out {
            bail!("qemu failed ({st}): {}", err.trim());
        }
        Ok(Boot { console, timed_out })
    }
}

struct Boot {
    console: String,
    timed_out: bool,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Removes `\r` and terminal escape sequences (the firmware clears the screen, the kernel may
/// colour) from one console line.
fn clean_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\r' | '\n' => {}
            '\x1b' => match it.peek() {
                // CSI: parameters and intermediates up to a final byte in @..~
                Some('[') => {
                    it.next();
                    for c in it.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // Two-character sequences (ESC c, ESC 7, …)
                Some(_) => {
                    it.next();
                }
                None => {}
            },
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// The test binaries of the integration test crate, built static for the guest.
pub(crate) fn build_tests() -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = super::cargo();
    cmd.args([
        "test",
        "-p",
        "twtrace-tests",
        "--no-run",
        "--message-format=json",
    ])
    // An explicit target keeps the static flag off build scripts and proc macros.
    .args(["--target", "x86_64-unknown-linux-gnu"])
    .env(
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "-C target-feature=+crt-static",
    )
    .stderr(Stdio::inherit());
    eprintln!("xtask: $ {} (static)", super::show(&cmd));
    let json = output(&mut cmd)?;
    let mut out = Vec::new();
    for line in json.lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"") {
            continue;
        }
        let Some(exe) = json_str(line, "executable") else {
            continue;
        };
        let name = json_str(line, "name").unwrap_or_default();
        out.push((name, PathBuf::from(exe)));
    }
    if out.is_empty() {
        bail!("cargo test --no-run built no test binary");
    }
    // Short ones first, so that a kernel-side failure shows within seconds.
    out.sort_by_key(|(n, _)| (n != "hooks", n.clone()));
    Ok(out)
}

/// The string value of the first `"key":"…"` in a JSON line (cargo's messages; paths and
/// target names carry no escapes worth decoding here).
fn json_str(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_string())
}

/// One initramfs member.
#[derive(Clone)]
enum Entry {
    Dir(String),
    File {
        path: String,
        src: PathBuf,
        mode: u32,
    },
    Bytes {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDev {
        path: String,
        major: u32,
        minor: u32,
        mode: u32,
    },
}

impl Entry {
    fn file(path: &str, src: PathBuf, mode: u32) -> Entry {
        Entry::File {
            path: path.to_string(),
            src,
            mode,
        }
    }
}

/// The kernel-independent part of the initramfs.
fn common_entries(
    busybox: &Path,
    tests: &[(String, PathBuf)],
    args: &VmArgs,
) -> Result<Vec<Entry>> {
    let mut e = Vec::new();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "run/netns",
        "lib",
        "lib/modules",
        "lib64",
        "etc",
        "tests",
    ] {
        e.push(Entry::Dir(d.to_string()));
    }
    // The kernel opens /dev/console before /init runs; the cloud kernels do not mount
    // devtmpfs by themselves.
    e.push(Entry::CharDev {
        path: "dev/console".into(),
        major: 5,
        minor: 1,
        mode: 0o600,
    });
    e.push(Entry::file("bin/busybox", busybox.to_path_buf(), 0o755));
    for applet in [
        "sh", "mount", "mkdir", "mknod", "insmod", "cat", "sed", "grep", "poweroff", "timeout",
        "uname", "date", "sleep", "ls", "dmesg", "echo", "test", "[", "sysctl",
    ] {
        e.push(Entry::Symlink {
            path: format!("bin/{applet}"),
            target: "busybox".into(),
        });
    }
    // twtrace's NetNs uses iproute2's ip (busybox ip cannot name a veth peer in another
    // namespace), the NAT lab nft: the host's, with the shared libraries they link.
    let mut dirs = std::collections::BTreeSet::new();
    let ip = host_tool("ip")
        .context("iproute2's ip is not installed on the host (cargo xtask setup)")?;
    add_host_tool(&mut e, &mut dirs, &ip, "sbin/ip")?;
    match host_tool("nft") {
        Some(nft) => add_host_tool(&mut e, &mut dirs, &nft, "sbin/nft")?,
        None => eprintln!("xtask: vm-test: no nft on the host: the NAT lab test will fail"),
    }
    for d in dirs {
        if !e.iter().any(|x| matches!(x, Entry::Dir(p) if *p == d)) {
            e.push(Entry::Dir(d));
        }
    }
    let strip = which("strip");
    let stage = vm_dir().join("stage");
    fs::create_dir_all(&stage)?;
    let mut names = Vec::new();
    for (name, exe) in tests {
        // Debug info makes each binary ~50 MB; the guest needs none of it.
        let src = match &strip {
            Some(s) => {
                let dst = stage.join(name);
                super::sh(Command::new(s).arg("-g").arg("-o").arg(&dst).arg(exe))?;
                dst
            }
            None => exe.clone(),
        };
        e.push(Entry::file(&format!("tests/{name}"), src, 0o755));
        names.push(name.clone());
    }
    // The kernel's unpacker does not create parents: every directory before its contents.
    e.sort_by_key(|x| match x {
        Entry::Dir(p) => (0, p.clone()),
        _ => (1, String::new()),
    });
    e.push(Entry::Bytes {
        path: "init".into(),
        data: init_script(&names, args).into_bytes(),
        mode: 0o755,
    });
    Ok(e)
}

/// A host program from the usual system directories.
fn host_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Adds a dynamically linked host program at `dest` and the libraries `ldd` lists for it at
/// their own paths (the dynamic loader included); `dirs` collects the directories they need.
fn add_host_tool(
    e: &mut Vec<Entry>,
    dirs: &mut std::collections::BTreeSet<String>,
    bin: &Path,
    dest: &str,
) -> Result<()> {
    e.push(Entry::file(dest, bin.to_path_buf(), 0o755));
    let ldd = output(Command::new("ldd").arg(bin))?;
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let rel = lib.trim_start_matches('/');
        if e.iter()
            .any(|x| matches!(x, Entry::File { path, .. } if path == rel))
        {
            continue;
        }
        let real = fs::canonicalize(lib).with_context(|| format!("resolving {lib}"))?;
        let mut parent = Path::new(rel).parent();
        while let Some(d) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            parent = d.parent();
        }
        e.push(Entry::file(rel, real, 0o755));
    }
    Ok(())
}

/// The guest's /init: mount what twtrace and the tests need, load the modules, print the
/// kernel's facts, run every test binary and print one result line per test and per binary.
fn init_script(tests: &[String], args: &VmArgs) -> String {
    let filter = args
        .filter
        .as_ref()
        .map(|f| format!("'{f}'"))
        .unwrap_or_default();
    let mut s = String::from(
        r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null || {
  mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 444 /dev/urandom c 1 9
}
mount -t tracefs nodev /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /tmp
# The cgroup v2 hierarchy, where a distribution mounts it (workload identity resolves ids in it).
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || echo "TWVM-FACT cgroup2 not mounted"
"#,
    );
    s.push_str(&format!(
        "for m in $(cat /lib/modules/{MODULE_ORDER}); do\n  \
         insmod /lib/modules/$m.ko || echo \"TWVM-FACT module_failed $m\"\n\
         done\n"
    ));
    s.push_str(&format!("FILTER={filter}\n"));
    s.push_str(
        r#"echo "TWVM-FACT kernel $(uname -r)"
echo "TWVM-FACT cpus $(grep -c ^processor /proc/cpuinfo)"
if [ -e /sys/bus/event_source/devices/kprobe ]; then echo "TWVM-FACT kprobes yes"; else echo "TWVM-FACT kprobes no"; fi
if [ -e /proc/sys/net/ipv4/tcp_tw_reuse_delay ]; then echo "TWVM-FACT tcp_tw_reuse_delay yes"; else echo "TWVM-FACT tcp_tw_reuse_delay no"; fi
T0=$(date +%s)
run_test() {
  n=$1; b=${2:-$1}; f=${3:-$FILTER}
  s=$(date +%s)
"#,
    );
    s.push_str(&format!(
        "  timeout {BINARY_BUDGET_SECS} /tests/$b --test-threads={} $f > /tmp/$n.log 2>&1\n",
        args.threads
    ));
    s.push_str(
        r#"  rc=$?
  e=$(date +%s)
  cat /tmp/$n.log
  sed -n 's/.*test \([^ ]*\) \.\.\. \(ok\|FAILED\|ignored\).*/TWVM-TEST '$n' \1 \2/p' /tmp/$n.log
  sed -n 's/.*twtrace-tests: SKIP \([^:]*\): \(.*\)/TWVM-SKIP '$n' \1: \2/p' /tmp/$n.log
  sed -n 's/.*twtrace-tests: PARTIAL \([^:]*\): \(.*\)/TWVM-PARTIAL '$n' \1: \2/p' /tmp/$n.log
  echo "TWVM-BIN $n rc=$rc secs=$((e-s))"
}
"#,
    );
    for t in tests {
        s.push_str(&format!("run_test {t}\n"));
    }
    // The function tier once more through kprobes (the first run took fexit where the kernel
    // allows it): the same tests must give the same events. Reported as `<binary>@kprobe`.
    s.push_str(
        "if [ -e /sys/bus/event_source/devices/kprobe ]; then\n  export TWTRACE_FN_HOOKS=kprobe\n",
    );
    for (t, only) in KPROBE_RERUN {
        if tests.iter().any(|x| x == t) {
            let f = if args.filter.is_some() { "" } else { only };
            s.push_str(&format!("  run_test {t}@kprobe {t} '{f}'\n"));
        }
    }
    s.push_str("  unset TWTRACE_FN_HOOKS\nfi\n");
    s.push_str(
        "echo \"TWVM-FACT tests_secs $(( $(date +%s) - T0 ))\"\necho TWVM-DONE\npoweroff -f\n",
    );
    s
}

/// Writes a newc ("070701") cpio archive. Uncompressed: the kernel unpacks it as is and the
/// archive is built in well under a second.
fn write_cpio(path: &Path, entries: &[Entry]) -> Result<()> {
    let mut w = BufWriter::new(fs::File::create(path)?);
    let mut ino = 1u32;
    let pad = |w: &mut BufWriter<fs::File>, n: usize| -> Result<()> {
        let p = (4 - n % 4) % 4;
        w.write_all(&[0u8; 3][..p])?;
        Ok(())
    };
    let mut put = |w: &mut BufWriter<fs::File>,
                   name: &str,
                   mode: u32,
                   rdev: (u32, u32),
                   data: &[u8]|
     -> Result<()> {
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        ino += 1;
        w.write_all(hdr.as_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&[0])?;
        pad(w, hdr.len() + name.len() + 1)?;
        w.write_all(data)?;
        pad(w, data.len())?;
        Ok(())
    };
    const S_IFDIR: u32 = 0o040000;
    const S_IFREG: u32 = 0o100000;
    const S_IFLNK: u32 = 0o120000;
    const S_IFCHR: u32 = 0o020000;
    for e in entries {
        match e {
            Entry::Dir(p) => put(&mut w, p, S_IFDIR | 0o755, (0, 0), &[])?,
            Entry::File { path, src, mode } => {
                let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
                put(&mut w, path, S_IFREG | mode, (0, 0), &data)?
            }
            Entry::Bytes { path, data, mode } => put(&mut w, path, S_IFREG | mode, (0, 0), data)?,
            Entry::Symlink { path, target } => {
                put(&mut w, path, S_IFLNK | 0o777, (0, 0), target.as_bytes())?
            }
            Entry::CharDev {
                path,
                major,
                minor,
                mode,
            } => put(&mut w, path, S_IFCHR | mode, (*major, *minor), &[])?,
        }
    }
    put(&mut w, "TRAILER!!!", 0, (0, 0), &[])?;
    w.flush()?;
    Ok(())
}

#[derive(Default)]
struct Report {
    label: String,
    package: String,
    facts: BTreeMap<String, String>,
    /// (binary, test) → outcome ("ok", "FAILED", "ignored", "skipped: why").
    tests: BTreeMap<(String, String), String>,
    /// (binary::test, what was not checked on this kernel).
    partial: Vec<(String, String)>,
    /// Kernel oops/panic/BUG lines seen on the console.
    crashes: Vec<String>,
    /// The tests' panic messages (named `binary::test` once the binary's end is seen).
    panics: Panics,
    /// binary → (exit code, seconds).
    binaries: BTreeMap<String, (i32, u64)>,
    done: bool,
    timed_out: bool,
    wall: Duration,
    log: PathBuf,
}

fn parse_console(console: &str) -> Report {
    let mut r = Report::default();
    // Panics of the binary running now: libtest prints them before its TWVM- lines.
    let mut named = 0;
    for line in console.lines() {
        r.panics.feed(line);
        if ["Oops:", "BUG:", "Kernel panic", "RIP: 0010:"]
            .iter()
            .any(|k| line.contains(k))
            && r.crashes.len() < 4
        {
            r.crashes.push(line.trim().to_string());
        }
        let Some(m) = line.find("TWVM-") else {
            continue;
        };
        let line = &line[m..];
        let mut w = line.split_whitespace();
        match w.next() {
            Some("TWVM-FACT") => {
                if let (Some(k), Some(v)) = (w.next(), w.next()) {
                    r.facts.insert(k.to_string(), v.to_string());
                }
            }
            Some("TWVM-TEST") => {
                if let (Some(b), Some(t), Some(o)) = (w.next(), w.next(), w.next()) {
                    let key = (b.to_string(), t.to_string());
                    // A skip line may already have been recorded for this test.
                    r.tests
                        .entry(key)
                        .and_modify(|v| {
                            if o != "ok" {
                                *v = o.to_string()
                            }
                        })
                        .or_insert_with(|| o.to_string());
                }
            }
            Some("TWVM-SKIP") => {
                if let Some(rest) = line.strip_prefix("TWVM-SKIP ") {
                    if let Some((bt, why)) = rest.split_once(": ") {
                        if let Some((b, t)) = bt.split_once(' ') {
                            let key = (b.to_string(), t.to_string());
                            let v = r.tests.entry(key).or_default();
                            if v.is_empty() || v == "ok" {
                                *v = format!("skipped: {why}");
                            }
                        }
                    }
                }
            }
            Some("TWVM-PARTIAL") => {
                if let Some((bt, why)) = line["TWVM-PARTIAL ".len()..].split_once(": ") {
                    if let Some((b, t)) = bt.split_once(' ') {
                        r.partial.push((format!("{b}::{t}"), why.to_string()));
                    }
                }
            }
            Some("TWVM-BIN") => {
                let b = w.next().unwrap_or("").to_string();
                let mut rc = -1;
                let mut secs = 0;
                for kv in w {
                    if let Some(v) = kv.strip_prefix("rc=") {
                        rc = v.parse().unwrap_or(-1);
                    } else if let Some(v) = kv.strip_prefix("secs=") {
                        secs = v.parse().unwrap_or(0);
                    }
                }
                for p in &mut r.panics.found[named..] {
                    p.test = format!("{b}::{}", p.test);
                }
                named = r.panics.found.len();
                r.binaries.insert(b, (rc, secs));
            }
            Some("TWVM-DONE") => r.done = true,
            _ => {}
        }
    }
    r
}

impl Report {
    /// Prints the kernel's summary; returns whether anything failed.
    /// Tests whose outcome starts with `what` ("ok", "FAILED", "skipped", "ignored").
    fn count(&self, what: &str) -> usize {
        self.tests.values().filter(|v| v.starts_with(what)).count()
    }

    fn print(&self) -> bool {
        let count = |f: &dyn Fn(&str) -> bool| self.tests.values().filter(|v| f(v)).count();
        let passed = count(&|v| v == "ok");
        let failed = count(&|v| v == "FAILED");
        let ignored = count(&|v| v == "ignored");
        let skipped = count(&|v| v.starts_with("skipped"));
        eprintln!(
            "== kernel {} ({}, {}): {} passed, {} failed, {} skipped, {} ignored; wall {:.0?}",
            self.label,
            self.package,
            self.facts.get("kernel").map_or("?", |s| s.as_str()),
            passed,
            failed,
            skipped,
            ignored,
            self.wall
        );
        for ((b, t), v) in &self.tests {
            match v.split_once(": ") {
                Some((what, why)) => eprintln!("   {what:<8} {b}::{t}: {why}"),
                None if v != "ok" => eprintln!("   {v:<8} {b}::{t}"),
                None => {}
            }
        }
        for (t, why) in &self.partial {
            eprintln!("   partial  {t}: {why}");
        }
        let mut bad = failed > 0;
        for (b, (rc, secs)) in &self.binaries {
            let tests = self.tests.keys().filter(|(x, _)| x == b).count();
            let note = if *rc != 0 {
                bad = true;
                format!(
                    "  exit {rc}{}",
                    if *rc == 124 { " (timed out)" } else { "" }
                )
            } else {
                String::new()
            };
            eprintln!("   {b:<12} {tests:>3} tests  {secs:>4} s{note}");
        }
        for c in &self.crashes {
            eprintln!("   kernel:  {c}");
        }
        if !self.done {
            bad = true;
            eprintln!(
                "   the guest never finished{} — see {}",
                if self.timed_out {
                    " (killed at the time budget)"
                } else {
                    " (crash or panic)"
                },
                self.log.display()
            );
        }
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = [
            "linux-image-6.12.9+deb12-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
            "linux-image-6.12.100+deb12-cloud-amd64",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v[2], "linux-image-6.12.117+deb12-cloud-amd64");
        assert!(version_cmp("6.1.0-9", "6.1.0-56").is_lt());
    }

    #[test]
    fn the_pinned_kernel_runs_while_the_archive_has_it() {
        let k = KERNELS.iter().find(|k| k.label == "7.3").unwrap();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let with = names(&[
            "linux-binary-7.3.4+deb13-cloud-amd64",
            "linux-binary-7.3.9+deb13-cloud-amd64",
        ]);
        assert_eq!(pick_package(&with, k).as_deref(), k.pinned);
        let without = names(&["linux-binary-7.3.9+deb13-cloud-amd64"]);
        assert_eq!(
            pick_package(&without, k).as_deref(),
            Some("linux-binary-7.3.9+deb13-cloud-amd64")
        );
        assert_eq!(pick_package(&[], k), None);
        // The RT entry runs by name (or with `all`), not in the default run.
        assert!(KERNELS.iter().any(|k| k.label == "7.3-rt" && !k.default));
    }

    #[test]
    fn module_dependencies_are_read_from_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=nf_tables,nf-nat\0retpoline=Y\0name=nft_masq\0";
        assert_eq!(module_depends(ko), vec!["nf_tables", "nf_nat"]);
        assert!(module_depends(b"\0depends=\0name=veth\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn console_lines_are_cleaned() {
        assert_eq!(
            clean_line("\x1bc\x1b[?7l\x1b[2JTWVM-FACT kernel 6.1\r\n"),
            "TWVM-FACT kernel 6.1"
        );
    }

    #[test]
    fn results_are_parsed() {
        let c = "noise TWVM-FACT kernel 6.1.0\nTWVM-TEST hooks every_hook ok\n\
                 TWVM-SKIP reasons reuse_after_200ms_delay: no tcp_tw_reuse_delay\n\
                 TWVM-TEST reasons reuse_after_200ms_delay ok\n\
                 TWVM-TEST reasons syn FAILED\nTWVM-BIN hooks rc=0 secs=9\n\
                 thread 'syn' panicked at tests/tests/reasons.rs:9:5:\n\
                 exit judged unknown\n\n\
                 TWVM-PARTIAL lifecycle snapshot: no age check\n\
                 TWVM-BIN reasons rc=101 secs=30\nTWVM-DONE\n";
        let r = parse_console(c);
        assert!(r.done);
        assert_eq!(r.facts["kernel"], "6.1.0");
        assert_eq!(r.tests[&("hooks".into(), "every_hook".into())], "ok");
        assert_eq!(
            r.tests[&("reasons".into(), "reuse_after_200ms_delay".into())],
            "skipped: no tcp_tw_reuse_delay"
        );
        assert_eq!(r.tests[&("reasons".into(), "syn".into())], "FAILED");
        assert_eq!(r.binaries["reasons"], (101, 30));
        // The panic is named by the binary whose end follows it.
        assert_eq!(r.panics.found.len(), 1);
        assert_eq!(r.panics.found[0].test, "reasons::syn");
        assert_eq!(
            r.panics.found[0].text,
            "tests/tests/reasons.rs:9:5: exit judged unknown"
        );
        assert_eq!(
            r.partial,
            vec![(
                "lifecycle::snapshot".to_string(),
                "no age check".to_string()
            )]
        );
    }
}
