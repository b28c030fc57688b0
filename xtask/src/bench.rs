//! `cargo xtask bench [--quick] [--json FILE] [-- ARGS]`: builds the release binaries and runs
//! `twtrace-bench` (a binary of the twtrace package: xtask itself must not depend on the twtrace
//! library, whose build needs the toolchain `setup` installs).
//!
//! Hook-up in main.rs:
//! ```ignore
//! mod bench;
//! /// Measure twtrace's cost and lossless rate beside peer tools (root; see docs/performance.md).
//! Bench {
//!     /// The short version (under 5 minutes).
//!     #[arg(long)]
//!     quick: bool,
//!     /// Write every figure to FILE as JSON.
//!     #[arg(long, value_name = "FILE")]
//!     json: Option<PathBuf>,
//!     /// More arguments for twtrace-bench (e.g. `--only overhead --rounds 9`).
//!     #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
//!     args: Vec<String>,
//! },
//! // …
//! Cmd::Bench { quick, json, args } => setup().and_then(|_| bench::run(quick, json.as_deref(), &args)),
//! ```

use super::{cargo, installed, is_root, sh, target_dir};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Peer tools the bench measures twtrace against, with the command each package provides.
/// Missing ones are installed if possible; the bench skips (with a note) what still is not.
const PEER_PACKAGES: &[(&str, &str)] = &[
    ("bpftrace", "bpftrace: a tcpstates-like one-liner"),
    ("libbpf-tools", "tcpstates"),
    ("bpftool", "tells when a peer tool is attached"),
    ("nginx", "the real server of the `real` phase"),
    ("apache2-utils", "ab, the real phase's HTTP/1.0 client"),
];

/// invoke-rc.d asks this program whether a package may start its service: exit 101 says no.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn run(quick: bool, json: Option<&Path>, extra: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the bench loads eBPF programs and creates network namespaces: run it as root \
             (sudo -E cargo xtask bench)"
        );
    }
    let missing: Vec<&str> = PEER_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "xtask: installing the peer tools the bench compares with: {}",
            missing.join(" ")
        );
        // Installing nginx would start the system's nginx on port 80 of the host's namespace;
        // the bench runs its own, in a private namespace. Where no policy says otherwise, one
        // is put in place for the install only.
        let policy = !std::path::Path::new(POLICY_RC_D).exists()
            && std::fs::write(POLICY_RC_D, "#!/bin/sh\n# twtrace xtask bench: no service starts during its install\nexit 101\n")
                .and_then(|_| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
                })
                .is_ok();
        let ok = sh(Command::new("apt-get").args(["update", "-q"])).and_then(|_| {
            sh(Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))
        });
        if policy {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
        if let Err(e) = ok {
            eprintln!("xtask: could not install them ({e:#}); the bench will skip those tools");
        }
    }
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "twtrace",
        "--bins",
        "--features",
        "testkit",
    ]))?;
    let bin = target_dir().join("release/twtrace-bench");
    let mut cmd = Command::new(&bin);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(j) = json {
        cmd.arg("--json").arg(j);
    }
    cmd.args(extra);
    let st = cmd
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !st.success() {
        bail!("twtrace-bench failed ({st})");
    }
    Ok(())
}
