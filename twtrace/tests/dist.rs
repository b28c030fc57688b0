//! `cargo xtask dist`, end to end: the package is built (from this test's own build of the
//! binary, `--binary`, so that CI does not pay for a release build), checked by lintian (no
//! errors), unpacked into a temporary directory, and what it holds is run: `twtrace
//! --version`, `twtrace report` on a trace file, `man -l` on every page, `bash -n` on the bash
//! completion. Needs root (dist installs dpkg-dev, lintian and man-db when missing).

mod common;
use common::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;
use twtrace::sink::tracefile;

const BIN: &str = env!("CARGO_BIN_EXE_twtrace");

fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The visible subcommands `twtrace --help` (or `twtrace SUB --help`) lists, `help` aside.
fn subcommands(bin: &Path, path: &[&str]) -> Vec<String> {
    let help = text(&run(Command::new(bin).args(path).arg("--help")));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_package_installs_runs_and_passes_lintian() {
    let t0 = Instant::now();
    let out = TempDir::new("out");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .args(["xtask", "dist", "--binary", BIN, "--out"])
        .arg(&out.0)
        .current_dir(workspace()));
    let built = t0.elapsed();
    let version = env!("CARGO_PKG_VERSION");
    let deb = out.0.join(format!("twtrace_{version}-1_amd64.deb"));
    let bin = out.0.join(format!("twtrace-{version}-x86_64-linux"));
    assert!(
        deb.is_file() && bin.is_file(),
        "dist wrote no .deb or binary"
    );

    // The checksum file verifies the binary, and the binary is stripped (no symbol table).
    run(Command::new("sha256sum")
        .args(["--check", "--strict"])
        .arg(format!("twtrace-{version}-x86_64-linux.sha256"))
        .current_dir(&out.0));
    let sections = text(&run(Command::new("readelf").args(["-S", "-W"]).arg(&bin)));
    assert!(!sections.contains(".symtab") && !sections.contains(".debug_info"));
    assert!(sections.contains(".note.gnu.build-id"), "{sections}");

    // lintian: no errors (warnings and infos are printed for the record).
    let t1 = Instant::now();
    let l = Command::new("lintian")
        .args(["--pedantic", "-I"])
        .arg(&deb)
        .output()
        .expect("running lintian (dist installs it)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&l.stdout),
        String::from_utf8_lossy(&l.stderr)
    );
    eprintln!("lintian:\n{report}");
    assert!(
        !report.lines().any(|l| l.starts_with("E: ")),
        "lintian found errors:\n{report}"
    );
    assert!(
        l.status.code() == Some(0),
        "lintian failed ({}):\n{report}",
        l.status
    );
    let linted = t1.elapsed();

    // Its declared dependencies: the C library (and libgcc's unwinder), nothing else.
    let depends = text(&run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends")));
    let names: Vec<&str> = depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .collect();
    assert!(names.contains(&"libc6"), "{depends}");
    assert!(
        names.iter().all(|n| ["libc6", "libgcc-s1"].contains(n)),
        "unexpected dependency: {depends}"
    );

    // Unpacked, what it holds runs.
    let root = TempDir::new("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root.0));
    let r = |p: &str| root.0.join(p);
    let twtrace = r("usr/sbin/twtrace");
    let v = text(&run(Command::new(&twtrace).arg("--version")));
    assert_eq!(v.trim(), format!("twtrace {version}"));

    // `report` on a trace file (synthetic events, no root or kernel needed).
    let trace = out.0.join("fixture.twt");
    let events = tracefile::synthetic::events(2000, 18);
    let header =
        tracefile::Header::capture(twtrace::kernel::sysinfo::Clock { offset_ns: 0 }, 250, &[]);
    let mut w =
        tracefile::Writer::create(&trace, &header, tracefile::WriterOptions::default()).unwrap();
    for e in &events {
        w.write(e).unwrap();
    }
    w.finish(&tracefile::Summary::default()).unwrap();
    let entered = events
        .iter()
        .filter(|e| matches!(e.body, twtrace::pipeline::event::Body::Enter { .. }))
        .count();
    let rep = text(&run(Command::new(&twtrace).arg("report").arg(&trace)));
    assert!(
        rep.contains(&format!("entered TIME_WAIT: {entered} ")),
        "{rep}"
    );

    // A page per visible subcommand (nested ones too), each rendering and naming its command.
    let mut want = vec!["twtrace".to_string()];
    for sub in subcommands(&twtrace, &[]) {
        want.push(format!("twtrace-{sub}"));
        for sub2 in subcommands(&twtrace, &[&sub]) {
            want.push(format!("twtrace-{sub}-{sub2}"));
        }
    }
    assert!(want.len() >= 5, "{want:?}");
    let man8 = r("usr/share/man/man8");
    let mut have: Vec<String> = std::fs::read_dir(&man8)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    have.sort();
    let mut want_files: Vec<String> = want.iter().map(|w| format!("{w}.8.gz")).collect();
    want_files.sort();
    assert_eq!(have, want_files, "man pages");
    for name in &want {
        let page = man8.join(format!("{name}.8.gz"));
        let o = run(Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANWIDTH", "80")
            .env("PAGER", "cat"));
        let shown = text(&o);
        assert!(
            shown.contains(&format!("{name} ")) && shown.contains("SYNOPSIS"),
            "{name}: {shown}"
        );
        assert!(
            o.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // Completions, and a syntax check of the bash one; the unit, pointing at the binary and
    // at documentation the package has.
    for p in [
        "usr/share/bash-completion/completions/twtrace",
        "usr/share/zsh/vendor-completions/_twtrace",
        "usr/share/fish/vendor_completions.d/twtrace.fish",
        "usr/share/doc/twtrace/copyright",
        "usr/share/doc/twtrace/changelog.Debian.gz",
    ] {
        assert!(r(p).is_file(), "{p} missing");
    }
    run(Command::new("bash")
        .arg("-n")
        .arg(r("usr/share/bash-completion/completions/twtrace")));
    // Completions offer the visible subcommands, not the hidden `generate`.
    for p in [
        "usr/share/bash-completion/completions/twtrace",
        "usr/share/zsh/vendor-completions/_twtrace",
        "usr/share/fish/vendor_completions.d/twtrace.fish",
    ] {
        let c = std::fs::read_to_string(r(p)).unwrap();
        assert!(c.contains("serve") && !c.contains("generate"), "{p}");
    }
    let unit = std::fs::read_to_string(r("lib/systemd/system/twtrace.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/sbin/twtrace serve "),
        "{unit}"
    );
    let doc = unit
        .lines()
        .find_map(|l| l.strip_prefix("Documentation="))
        .expect("Documentation= in the unit");
    for d in doc.split_whitespace() {
        if let Some(path) = d.strip_prefix("file://") {
            assert!(
                r(path.trim_start_matches('/')).is_file(),
                "{d}: not in the package"
            );
        } else if let Some(page) = d.strip_prefix("man:") {
            let name = page.split('(').next().unwrap();
            assert!(
                man8.join(format!("{name}.8.gz")).is_file(),
                "{d}: no such page"
            );
        }
    }

    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64 / (1024.0 * 1024.0);
    eprintln!(
        "dist test: {:.1} s (dist {:.1} s, lintian {:.1} s); packaged binary {:.1} MiB (from {:.1} MiB), .deb {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        built.as_secs_f64(),
        linted.as_secs_f64(),
        size(&bin),
        size(Path::new(BIN)),
        size(&deb),
    );
}
