//! The human line format: one event per line, stable columns under [`LINE_HEADER`].

use crate::kernel::sysinfo::Clock;
use crate::pipeline::event::{Body, Event, Task};
use crate::sink::format::{endpoint, errno_name, rfc3339_micros, secs, workload};
use std::fmt::Write as _;

/// The column titles printed once above the lines.
pub const LINE_HEADER: &str = "TIME(UTC)       NETNS      EVENT        SUBSTATE  LOCAL                  REMOTE                 DETAIL                       PID COMM             WORKLOAD";

/// One human line with stable columns (see [`LINE_HEADER`]).
pub fn write_line(e: &Event, clock: &Clock, out: &mut String) {
    let time = rfc3339_micros(clock.wall_ns(e.ts_ns));
    // "YYYY-MM-DDTHH:MM:SS.uuuuuuZ" → "HH:MM:SS.uuuuuu"
    let hms = time.get(11..26).unwrap_or(&time);
    let Some(s) = e.sock() else {
        match &e.body {
            Body::Lost { count } => {
                let _ = write!(
                    out,
                    "{hms:<15} LOST {count} events: the kernel's ring buffer was full"
                );
            }
            Body::Netns { netns, sysctls } => {
                let _ = write!(
                    out,
                    "{hms:<15} {netns:<10} netns        {}",
                    sysctls.summary()
                );
            }
            Body::BindFail {
                netns,
                errno,
                timewait,
                ports,
                task,
                ..
            } => {
                let pool = ports.map_or("?".to_string(), |p| p.to_string());
                let detail = format!("{} pool={pool} tw={timewait}", errno_name(*errno));
                let (pid, comm) = match task {
                    Some(t) => (t.pid.to_string(), t.comm.as_str()),
                    None => ("-".to_string(), "-"),
                };
                let _ = write!(
                    out,
                    "{hms:<15} {netns:<10} {:<12} {:<9} {:<22} {:<22} {detail:<24} {pid:>7} {comm:<16} {}",
                    "bind_fail", "-", "-", "-", workload(e)
                );
            }
            _ => {}
        }
        return;
    };
    let Some((substate, detail, t)) = socket_detail(&e.body) else {
        return;
    };
    let (pid, comm) = match t {
        Some(t) => (t.pid.to_string(), t.comm.as_str()),
        None => ("-".to_string(), "-"),
    };
    let _ = write!(
        out,
        "{hms:<15} {:<10} {:<12} {:<9} {:<22} {:<22} {:<24} {:>7} {:<16} {}",
        s.netns,
        e.kind(),
        substate,
        endpoint(&s.laddr, s.lport),
        endpoint(&s.raddr, s.rport),
        detail,
        pid,
        comm,
        workload(e)
    );
}

/// The SUBSTATE and DETAIL columns and the task of an event about a socket (`None` for the
/// kinds without one).
fn socket_detail(body: &Body) -> Option<(&'static str, String, Option<&Task>)> {
    Some(match body {
        Body::Enter {
            substate,
            timeout_ms,
            task,
            snapshot,
            age_ms,
            ..
        } => {
            let mut d = format!("timeout={}", secs(*timeout_ms));
            if *snapshot {
                d = format!("snapshot {}", d);
                if let Some(a) = age_ms {
                    let _ = write!(d, " age={}", secs(*a));
                }
            }
            (substate.as_str(), d, task.as_ref())
        }
        Body::Promote { timeout_ms, .. } => (
            "TIME_WAIT",
            format!("promote timeout={}", secs(*timeout_ms)),
            None,
        ),
        Body::Exit {
            substate,
            reason,
            lifetime_ms,
            task,
            ..
        } => {
            let l = lifetime_ms.map(secs).unwrap_or_else(|| "?".into());
            (
                substate.as_str(),
                format!("{} {}", reason.as_str(), l),
                task.as_ref(),
            )
        }
        Body::Overflow { .. } => (
            "-",
            "no timewait: tcp_max_tw_buckets reached".to_string(),
            None,
        ),
        Body::Abort { task, .. } => ("-", "reset: no TIME_WAIT".to_string(), task.as_ref()),
        Body::ConnectFail {
            errno,
            refusal,
            timewait,
            candidates,
            task,
            ..
        } => {
            let mut d = format!(
                "{} {} tw={}",
                errno_name(*errno),
                refusal.as_str(),
                timewait
            );
            if let Some(n) = candidates {
                let _ = write!(d, " refused={n}");
            }
            ("-", d, task.as_ref())
        }
        Body::PawsReject { .. } => ("TIME_WAIT", "segment dropped by PAWS".to_string(), None),
        Body::BoundConnect { task, .. } => (
            "-",
            "binds before connect(): one port pool".to_string(),
            task.as_ref(),
        ),
        Body::Netns { .. } | Body::Lost { .. } | Body::BindFail { .. } => return None,
    })
}

impl Event {
    /// One human line (see [`write_line`]).
    pub fn write_line(&self, clock: &Clock, out: &mut String) {
        write_line(self, clock, out)
    }
}
