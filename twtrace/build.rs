//! Builds the kernel programs (`twtrace-ebpf`) for `bpfel-unknown-none` and leaves the object in
//! OUT_DIR, where `loader.rs` embeds it.
//!
//! The host toolchain here is rustup's stable, which has no BPF `core`; the kernel crate is
//! built with Debian's rustc (`rustc-web`) and prebuilt BPF core (`libstd-rust-web-dev-bpf`),
//! linked by `bpf-linker` (see ../shared/notes/toolchain.md). `cargo xtask setup` installs all
//! three.

use std::path::{Path, PathBuf};
use std::process::Command;

fn find_tool(env: &str, names: &[&str], dirs: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    for d in dirs {
        for n in names {
            let p = d.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf = root.join("twtrace-ebpf");
    for p in [
        "twtrace-ebpf/src",
        "twtrace-ebpf/Cargo.toml",
        "twtrace-common/src",
        "twtrace-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=TWTRACE_BPF_CARGO");
    println!("cargo:rerun-if-env-changed=TWTRACE_BPF_RUSTC");
    println!("cargo:rerun-if-env-changed=BPF_LINKER");

    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or(home.join(".cargo"));
    let deb = [PathBuf::from("/usr/bin")];
    let cargo = find_tool("TWTRACE_BPF_CARGO", &["cargo"], &deb);
    let rustc = find_tool("TWTRACE_BPF_RUSTC", &["rustc"], &deb);
    let linker = find_tool(
        "BPF_LINKER",
        &["bpf-linker"],
        &[
            cargo_home.join("bin"),
            root.join("target/tools/bin"),
            PathBuf::from("/usr/local/bin"),
        ],
    );
    let core = Path::new("/usr/lib/rustlib/bpfel-unknown-none").exists();
    let (Some(cargo), Some(rustc), Some(linker), true) = (cargo, rustc, linker, core) else {
        panic!(
            "\n\nThe eBPF toolchain is missing (Debian's rustc-web + libstd-rust-web-dev-bpf, and \
             bpf-linker).\nRun `cargo xtask setup` once (as root), then build again.\n\n"
        );
    };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = root.join("target/ebpf");
    let mut cmd = Command::new(&cargo);
    // Start from a clean environment: the outer cargo's variables (RUSTC, RUSTFLAGS,
    // RUSTC_WORKSPACE_WRAPPER set by clippy, CARGO_* for this build script) must not leak into
    // the kernel build.
    cmd.env_clear();
    for k in ["PATH", "HOME", "CARGO_HOME", "TMPDIR", "CARGO_NET_OFFLINE"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd.current_dir(&ebpf)
        .env("RUSTC", &rustc)
        // aya-ebpf needs #![feature(asm_experimental_arch)]; scoped to that crate only.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "-C",
                "debuginfo=2",
                "-C",
                "link-arg=--btf",
                "-C",
                &format!("linker={}", linker.display()),
            ]
            .join("\x1f"),
        )
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir);
    let status = cmd
        .status()
        .expect("running Debian's cargo for the eBPF build");
    if !status.success() {
        panic!("building twtrace-ebpf failed (see the errors above)");
    }
    let obj = target_dir.join("bpfel-unknown-none/release/twtrace");
    std::fs::copy(&obj, out_dir.join("twtrace.bpf.o"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", obj.display()));
}
