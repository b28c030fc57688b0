//! Shared helpers for the integration tests: a tracer watching one test's namespace, and
//! selectors over the events it collected.

use std::net::SocketAddr;
use std::time::Duration;
use twtrace::host::netns::NetNs;
use twtrace::pipeline::event::{Body, Event, ExitReason, Sock, Substate};
use twtrace::pipeline::tracer::{Background, TracerOptions};

/// A tracer that keeps only the events of `ns`.
pub fn trace(ns: &NetNs) -> Background {
    trace_opts(ns, TracerOptions::default())
}

pub fn trace_opts(ns: &NetNs, opts: TracerOptions) -> Background {
    let ino = ns.inode();
    let filter = twtrace::pipeline::filter::Filter {
        netns: vec![ino],
        ..Default::default()
    };
    Background::start(opts, move |e| filter.matches(e))
        .expect("starting the tracer (are you root, on a kernel with BTF?)")
}

pub fn addr(s: &Sock, local: bool) -> SocketAddr {
    if local {
        SocketAddr::new(s.laddr, s.lport)
    } else {
        SocketAddr::new(s.raddr, s.rport)
    }
}

#[derive(Clone, Debug)]
pub struct Enter {
    pub sock: Sock,
    pub substate: Substate,
    pub timeout_ms: u64,
    pub snapshot: bool,
    pub age_ms: Option<u64>,
    pub comm: Option<String>,
    pub ts_ns: u64,
}

#[derive(Clone, Debug)]
pub struct Exit {
    pub sock: Sock,
    pub reason: ExitReason,
    pub lifetime_ms: Option<u64>,
    pub ts_ns: u64,
}

pub fn enters(ev: &[Event]) -> Vec<Enter> {
    ev.iter()
        .filter_map(|e| match &e.body {
            Body::Enter {
                sock,
                substate,
                timeout_ms,
                snapshot,
                age_ms,
                task,
            } => Some(Enter {
                sock: sock.clone(),
                substate: *substate,
                timeout_ms: *timeout_ms,
                snapshot: *snapshot,
                age_ms: *age_ms,
                comm: task.as_ref().map(|t| t.comm.to_string()),
                ts_ns: e.ts_ns,
            }),
            _ => None,
        })
        .collect()
}

pub fn exits(ev: &[Event]) -> Vec<Exit> {
    ev.iter()
        .filter_map(|e| match &e.body {
            Body::Exit {
                sock,
                reason,
                lifetime_ms,
                ..
            } => Some(Exit {
                sock: sock.clone(),
                reason: *reason,
                lifetime_ms: *lifetime_ms,
                ts_ns: e.ts_ns,
            }),
            _ => None,
        })
        .collect()
}

pub fn count_kind(ev: &[Event], kind: &str) -> usize {
    ev.iter().filter(|e| e.kind() == kind).count()
}

/// The timewait sockets alive in `ns` now, as the kernel counts them (`/proc/net/sockstat`,
/// both substates). A socket reset at its birth (seen now and then under emulation) is not
/// among them: tests that make N sockets before a tracer can see them compare with this.
pub fn timewait_in(ns: &NetNs) -> u64 {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/sockstat"))
        .unwrap()
        .unwrap();
    twtrace::host::procnet::parse_sockstat_tw(&text).expect("a TCP tw count in sockstat")
}

/// Fills `n` ports of `ns` with TIME_WAIT sockets toward `dst` (the client closes first) and
/// waits until the kernel counts `n` held. A socket reset at its birth (seen under emulation,
/// and now and then on loopback) gives its port back: one connection more takes each such
/// port, a bounded number of times. Panics if the ports never all hold.
pub fn hold_ports(ns: &NetNs, dst: SocketAddr, n: u64) {
    use twtrace::experiments::workload::{connect_many, FirstCloser};
    connect_many(ns, dst, n as usize, FirstCloser::Client).unwrap();
    for _ in 0..10 {
        // The last closes finish as the server reads EOF: count once they have (bounded).
        let mut held = timewait_in(ns);
        for _ in 0..20 {
            if held >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
            held = timewait_in(ns);
        }
        // (A close slower than the wait makes one of these fail: the final count decides.)
        let _ = connect_many(ns, dst, (n - held) as usize, FirstCloser::Client);
    }
    assert_eq!(
        timewait_in(ns),
        n,
        "the {n} ports held by TIME_WAIT sockets"
    );
}

/// Generous bound for things the kernel does within milliseconds.
pub const SOON: Duration = Duration::from_secs(10);

/// What the running kernel offers, probed rather than inferred from its version: the tests
/// assert the same results on every kernel and check kernel-specific details only where the
/// kernel has them.
pub mod kernel {
    use std::io::Write;
    use std::sync::OnceLock;
    use twtrace::kernel::features::Features;

    /// What the running kernel offers, for a decision before any tracer runs: twtrace's own
    /// [`Features::probe`] (BTF, `/proc`), once per test binary. With a tracer running, ask
    /// its `features()` instead (the hooks it really attached).
    pub fn features() -> &'static Features {
        static F: OnceLock<Features> = OnceLock::new();
        F.get_or_init(|| Features::probe().expect("probing the kernel (BTF, /proc)"))
    }

    /// Says on stderr, past libtest's capture so that it shows in every run, that (part of)
    /// `test` does not apply to this kernel and why. `cargo xtask vm-test` collects these lines.
    pub fn skip(test: &str, why: &str) {
        let _ = writeln!(std::io::stderr(), "twtrace-tests: SKIP {test}: {why}");
    }

    /// Says on stderr that one check of `test` does not apply to this kernel (the rest ran).
    pub fn partial(test: &str, why: &str) {
        let _ = writeln!(std::io::stderr(), "twtrace-tests: PARTIAL {test}: {why}");
    }

    /// CLOCK_MONOTONIC as (seconds, nanoseconds): the clock of `ktime_get_seconds()`, which
    /// kernels before 6.13 use for the reuse rule.
    pub fn monotonic() -> (u64, u32) {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// CLOCK_MONOTONIC in nanoseconds: the clock of the events' `ts_ns`.
    pub fn monotonic_ns() -> u64 {
        let (s, ns) = monotonic();
        s * 1_000_000_000 + u64::from(ns)
    }
}
