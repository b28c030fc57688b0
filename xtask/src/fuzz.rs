//! `cargo xtask fuzz [--seconds N]`: a bounded libFuzzer session on the trace-file reader.
//!
//! Needs the machine's nightly toolchain (sanitizer flags) and cargo-fuzz, which this installs
//! when missing. Not part of `cargo xtask test` (a first build takes minutes); crashing inputs
//! land in `fuzz/artifacts/` and belong in `twtrace/tests/fuzz-regressions/`, which a unit
//! test replays on stable in every test run.

use anyhow::{bail, Context, Result};
use std::process::Command;

pub fn run(root: &std::path::Path, seconds: u64) -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        eprintln!("xtask: installing cargo-fuzz");
        let st = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .context("cargo install cargo-fuzz")?;
        if !st.success() {
            bail!("installing cargo-fuzz failed");
        }
    }
    let corpus = root.join("fuzz/corpus/tracefile_reader");
    std::fs::create_dir_all(&corpus).context("creating the fuzz corpus directory")?;
    let st = Command::new("cargo")
        .current_dir(root)
        .args([
            "+nightly",
            "fuzz",
            "run",
            "tracefile_reader",
            "--fuzz-dir",
            "fuzz",
        ])
        .arg(&corpus)
        .arg(root.join("twtrace/tests/fuzz-regressions"))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-timeout=10", "-rss_limit_mb=2048"])
        .status()
        .context("running cargo fuzz (is the nightly toolchain installed?)")?;
    if !st.success() {
        bail!(
            "the fuzzer stopped with {st}: a crashing input is in fuzz/artifacts/tracefile_reader/; \
             copy it into twtrace/tests/fuzz-regressions/ so the unit tests replay it"
        );
    }
    Ok(())
}
