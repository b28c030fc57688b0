//! Every numeric option of every subcommand, given nonsense: a non-zero exit with a message
//! that names the option, never a panic. The values are refused while the command line is
//! parsed, before anything is loaded, so this needs neither root nor the kernel programs.
//!
//! `export` and `verify` have no numeric option (`--format`/`--only` are names), so they are
//! not in the table.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_twtrace");

/// What each bad value is: not finite, not a number, negative, zero, far too large, a word.
const BAD: &[&str] = &["inf", "nan", "-1", "0", "1e300", "abc"];

/// Runs twtrace with `args`; (exit code, stderr). A run that outlives a few seconds is killed
/// and fails the test: a bad value must never get as far as tracing.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning twtrace");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("twtrace {args:?} was still running: the value was not refused");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(args: &[&str], flag: &str, value: &str) {
    let (code, err) = run(args);
    assert!(
        !err.contains("panicked"),
        "twtrace {args:?} panicked:\n{err}"
    );
    assert!(
        code.is_some_and(|c| c != 0),
        "twtrace {args:?} exited with {code:?}:\n{err}"
    );
    assert!(
        err.contains(&format!("invalid value '{value}' for '{flag}")),
        "twtrace {args:?}: the message names neither the value nor the option:\n{err}"
    );
}

/// A path that must not be created: the output of a `record` that never starts.
fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("twtrace-cli-numeric-{tag}-{}", std::process::id()))
}

#[test]
fn every_numeric_option_refuses_nonsense_without_panicking() {
    let out = scratch("record");
    let out_s = out.to_str().unwrap();
    // (the subcommand and what it needs besides the option, the options to try)
    let table: &[(&[&str], &[&str])] = &[
        (
            &[],
            &[
                "--duration",
                "--summary-every",
                "--ring-mib",
                "--port",
                "--netns",
            ],
        ),
        (
            &["live"],
            &[
                "--duration",
                "--summary-every",
                "--ring-mib",
                "--port",
                "--netns",
            ],
        ),
        (
            &["record", "-o", out_s],
            &[
                "--duration",
                "--ring-mib",
                "--port",
                "--netns",
                "--flush-interval",
                "--max-size",
            ],
        ),
        (
            &["report", "no-such-file"],
            &["--width", "--port", "--netns"],
        ),
        (&["lab", "nat"], &["--connections"]),
        (&["census"], &["--watch", "--netns", "--top"]),
        (
            &["serve"],
            &["--duration", "--ring-mib", "--port", "--netns", "--listen"],
        ),
    ];
    let mut runs = 0;
    for (base, flags) in table {
        for flag in *flags {
            for value in BAD {
                let mut args: Vec<&str> = base.to_vec();
                args.extend([*flag, *value]);
                assert_refused(&args, flag, value);
                runs += 1;
            }
        }
    }
    // 0 is a meaningful --peer-labels (no port-pressure series): accepted, and this run goes
    // on to bind a port that is taken, which fails with its own message before the kernel.
    for value in BAD.iter().filter(|v| **v != "0") {
        assert_refused(&["serve", "--peer-labels", value], "--peer-labels", value);
        runs += 1;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(&["serve", "--listen", &addr, "--peer-labels", "0"]);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("binding {addr}")), "{err}");
    assert!(
        !err.contains("invalid value"),
        "--peer-labels 0 is valid:\n{err}"
    );

    assert!(!out.exists(), "a refused record created {}", out.display());
    // Every row above ran (the table is not silently empty).
    assert_eq!(
        runs,
        (5 + 5 + 6 + 3 + 1 + 3 + 5) * BAD.len() + BAD.len() - 1
    );
}

#[test]
fn the_numbers_allowed_are_said() {
    let (_, err) = run(&["live", "--duration", "inf"]);
    assert!(err.contains("above 0 and at most"), "{err}");
    let (_, err) = run(&["live", "--ring-mib", "3"]);
    assert!(err.contains("power of two"), "{err}");
    let (_, err) = run(&["record", "-o", "x", "--flush-interval", "7200"]);
    assert!(err.contains("at most 3600"), "{err}");
    let (_, err) = run(&["lab", "nat", "--connections", "51"]);
    assert!(err.contains("1 to 50"), "{err}");
    let (_, err) = run(&["report", "f", "--width", "20"]);
    assert!(err.contains("40 to 10000"), "{err}");
}

#[test]
fn live_options_before_a_subcommand_are_refused_but_verbose_is_global() {
    let (code, err) = run(&["--json", "record", "-o", "x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the subcommand 'record' cannot be used with --json"),
        "{err}"
    );
    // -v is taken before and after the subcommand: these fail on the bad value, not on -v.
    for args in [
        &["-v", "live", "--port", "0"][..],
        &["live", "-vv", "--port", "0"],
    ] {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("invalid value '0' for '--port"), "{err}");
    }
}
