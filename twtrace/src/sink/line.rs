//! The human line format: one event per line, stable columns under [`LINE_HEADER`].

use crate::kernel::sysinfo::Clock;
use crate::pipeline::event::{Body, Event, Task};
use crate::sink::format::{
    errno_name, push_endpoint, push_int, push_rfc3339_micros, push_secs, workload,
};
use std::fmt::Write as _;

/// The column titles printed once above the lines.
pub const LINE_HEADER: &str = "TIME(UTC)       NETNS      EVENT        SUBSTATE  LOCAL                  REMOTE                 DETAIL                       PID COMM             WORKLOAD";

/// One human line with stable columns (see [`LINE_HEADER`]).
pub fn write_line(e: &Event, clock: &Clock, out: &mut String) {
    let mut time = String::with_capacity(27);
    push_rfc3339_micros(&mut time, clock.wall_ns(e.ts_ns));
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
    let Some((substate, t)) = socket_detail(&e.body) else {
        return;
    };
    // Written piece by piece, each column padded in place: this runs for every event.
    pad(out, 15, |o| o.push_str(hms));
    out.push(' ');
    pad(out, 10, |o| push_int(o, s.netns));
    out.push(' ');
    pad(out, 12, |o| o.push_str(e.kind()));
    out.push(' ');
    pad(out, 9, |o| o.push_str(substate));
    out.push(' ');
    pad(out, 22, |o| push_endpoint(o, &s.laddr, s.lport));
    out.push(' ');
    pad(out, 22, |o| push_endpoint(o, &s.raddr, s.rport));
    out.push(' ');
    pad(out, 24, |o| push_detail(o, &e.body));
    out.push(' ');
    let mut pid = itoa::Buffer::new();
    let (pid, comm) = match t {
        Some(t) => (pid.format(t.pid), t.comm.as_str()),
        None => ("-", "-"),
    };
    for _ in pid.len()..7 {
        out.push(' ');
    }
    out.push_str(pid);
    out.push(' ');
    pad(out, 16, |o| o.push_str(comm));
    out.push(' ');
    let _ = write!(out, "{}", workload(e));
}

/// Writes a column with `f` and pads it with spaces to `width` characters (as `{:<width}`).
fn pad(out: &mut String, width: usize, f: impl FnOnce(&mut String)) {
    let start = out.len();
    f(out);
    for _ in out[start..].chars().count()..width {
        out.push(' ');
    }
}

/// The SUBSTATE column and the task of an event about a socket (`None` for the kinds without
/// one).
fn socket_detail(body: &Body) -> Option<(&'static str, Option<&Task>)> {
    Some(match body {
        Body::Enter { substate, task, .. } => (substate.as_str(), task.as_ref()),
        Body::Promote { .. } => ("TIME_WAIT", None),
        Body::Exit { substate, task, .. } => (substate.as_str(), task.as_ref()),
        Body::Overflow { .. } => ("-", None),
        Body::Abort { task, .. } => ("-", task.as_ref()),
        Body::ConnectFail { task, .. } => ("-", task.as_ref()),
        Body::PawsReject { .. } => ("TIME_WAIT", None),
        Body::BoundConnect { task, .. } => ("-", task.as_ref()),
        Body::Netns { .. } | Body::Lost { .. } | Body::BindFail { .. } => return None,
    })
}

/// The DETAIL column of an event about a socket.
fn push_detail(out: &mut String, body: &Body) {
    match body {
        Body::Enter {
            timeout_ms,
            snapshot,
            age_ms,
            ..
        } => {
            if *snapshot {
                out.push_str("snapshot ");
            }
            out.push_str("timeout=");
            push_secs(out, *timeout_ms);
            if let (true, Some(a)) = (*snapshot, age_ms) {
                out.push_str(" age=");
                push_secs(out, *a);
            }
        }
        Body::Promote { timeout_ms, .. } => {
            out.push_str("promote timeout=");
            push_secs(out, *timeout_ms);
        }
        Body::Exit {
            reason,
            lifetime_ms,
            ..
        } => {
            out.push_str(reason.as_str());
            out.push(' ');
            match lifetime_ms {
                Some(l) => push_secs(out, *l),
                None => out.push('?'),
            }
        }
        Body::Overflow { .. } => out.push_str("no timewait: tcp_max_tw_buckets reached"),
        Body::Abort { .. } => out.push_str("reset: no TIME_WAIT"),
        Body::ConnectFail {
            errno,
            refusal,
            timewait,
            candidates,
            ..
        } => {
            out.push_str(errno_name(*errno));
            out.push(' ');
            out.push_str(refusal.as_str());
            out.push_str(" tw=");
            push_int(out, *timewait);
            if let Some(n) = candidates {
                out.push_str(" refused=");
                push_int(out, *n);
            }
        }
        Body::PawsReject { .. } => out.push_str("segment dropped by PAWS"),
        Body::BoundConnect { .. } => out.push_str("binds before connect(): one port pool"),
        Body::Netns { .. } | Body::Lost { .. } | Body::BindFail { .. } => {}
    }
}

impl Event {
    /// One human line (see [`write_line`]).
    pub fn write_line(&self, clock: &Clock, out: &mut String) {
        write_line(self, clock, out)
    }
}
