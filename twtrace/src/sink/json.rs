//! The NDJSON format of `--json`, `export --format ndjson` and the trace-file tests.

use crate::host::workload::Workload;
use crate::kernel::sysinfo::Clock;
use crate::pipeline::event::{Body, Event, Task};
use crate::sink::format::{errno_name, rfc3339_micros_fmt};
use std::fmt::Write as _;

/// One NDJSON object (without the newline): the `--json` contract. Keys are stable; new
/// keys may be added, none renamed.
pub fn write_json(e: &Event, clock: &Clock, out: &mut String) {
    out.push_str("{\"time\":\"");
    let _ = write!(out, "{}", rfc3339_micros_fmt(clock.wall_ns(e.ts_ns)));
    let _ = write!(out, "\",\"kind\":\"{}\"", e.kind());
    if let Some(s) = e.sock() {
        let _ = write!(
            out,
            ",\"netns\":{},\"family\":{},\"laddr\":\"{}\",\"lport\":{},\"raddr\":\"{}\",\"rport\":{}",
            s.netns,
            s.family(),
            s.laddr,
            s.lport,
            s.raddr,
            s.rport
        );
    }
    write_body(&e.body, out);
    if let Some(w) = &e.workload {
        write_workload(w, out);
    }
    out.push('}');
}

/// `cgroup_id`, and what it resolved to: `cgroup` (the path; null when the id is unknown),
/// `container_id`, `runtime`, `pod_uid`, `qos`, `pod` and `pod_source` where known.
fn write_workload(w: &Workload, out: &mut String) {
    let _ = write!(out, ",\"cgroup_id\":{},\"cgroup\":", w.cgroup_id);
    push_str_or_null(out, w.path.as_deref());
    let text = [
        ("container_id", w.container_id.as_deref()),
        ("runtime", w.runtime),
        ("pod_uid", w.pod_uid.as_deref()),
        ("qos", w.qos),
        ("pod", w.pod.as_deref()),
        ("pod_source", w.pod_source()),
    ];
    for (k, v) in text {
        if let Some(v) = v {
            let _ = write!(out, ",\"{k}\":");
            push_str_or_null(out, Some(v));
        }
    }
}

/// A JSON string (escaped), or `null`.
fn push_str_or_null(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => out.push_str(&serde_json::to_string(v).unwrap_or_else(|_| "null".into())),
        None => out.push_str("null"),
    }
}

/// The keys of each kind after the common ones.
fn write_body(body: &Body, out: &mut String) {
    match body {
        Body::Enter {
            substate,
            timeout_ms,
            task: t,
            snapshot,
            age_ms,
            ..
        } => {
            let _ = write!(
                out,
                ",\"substate\":\"{}\",\"timeout_ms\":{}",
                substate.as_str(),
                timeout_ms
            );
            write_task(out, t);
            if *snapshot {
                out.push_str(",\"snapshot\":true");
            }
            if let Some(a) = age_ms {
                let _ = write!(out, ",\"age_ms\":{a}");
            }
        }
        Body::Promote {
            timeout_ms, age_ms, ..
        } => {
            let _ = write!(
                out,
                ",\"substate\":\"TIME_WAIT\",\"timeout_ms\":{timeout_ms}"
            );
            if let Some(a) = age_ms {
                let _ = write!(out, ",\"age_ms\":{a}");
            }
        }
        Body::Exit {
            substate,
            reason,
            lifetime_ms,
            task: t,
            ..
        } => {
            let _ = write!(
                out,
                ",\"substate\":\"{}\",\"reason\":\"{}\"",
                substate.as_str(),
                reason.as_str()
            );
            if let Some(l) = lifetime_ms {
                let _ = write!(out, ",\"lifetime_ms\":{l}");
            }
            write_task(out, t);
        }
        Body::Overflow { .. } | Body::PawsReject { .. } => {}
        Body::Abort { task: t, .. } => write_task(out, t),
        Body::ConnectFail {
            errno,
            refusal,
            timewait,
            candidates,
            task: t,
            ..
        } => {
            let _ = write!(
                out,
                ",\"errno\":{errno},\"errno_name\":\"{}\",\"refusal\":\"{}\",\"timewait\":{timewait}",
                errno_name(*errno),
                refusal.as_str()
            );
            if let Some(n) = candidates {
                let _ = write!(out, ",\"candidates\":{n}");
            }
            write_task(out, t);
        }
        Body::Netns { netns, sysctls } => {
            let _ = write!(out, ",\"netns\":{netns}");
            sysctls.write_json(out);
        }
        Body::Lost { count } => {
            let _ = write!(out, ",\"count\":{count}");
        }
        Body::BindFail {
            netns,
            family,
            errno,
            timewait,
            ports,
            task: t,
        } => {
            let _ = write!(
                out,
                ",\"netns\":{netns},\"family\":{family},\"errno\":{errno},\"errno_name\":\"{}\",\"timewait\":{timewait}",
                errno_name(*errno)
            );
            if let Some(p) = ports {
                let _ = write!(out, ",\"ports\":{p}");
            }
            write_task(out, t);
        }
        Body::BoundConnect { task: t, .. } => write_task(out, t),
    }
}

/// `pid` and `comm` when the task is known.
fn write_task(out: &mut String, t: &Option<Task>) {
    if let Some(t) = t {
        let _ = write!(out, ",\"pid\":{},\"comm\":", t.pid);
        push_json_str(out, &t.comm);
    }
}

/// `s` as a JSON string, escaped exactly as `serde_json` does (`"`, `\\`, and control
/// characters; nothing else), without the `String` `serde_json::to_string` allocates.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Event {
    /// One NDJSON object (see [`write_json`]).
    pub fn write_json(&self, clock: &Clock, out: &mut String) {
        write_json(self, clock, out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        let all: String = (0u8..0x80)
            .map(char::from)
            .chain(['é', '\u{FFFD}'])
            .collect();
        let mut out = String::new();
        super::push_json_str(&mut out, &all);
        assert_eq!(out, serde_json::to_string(&all).unwrap());
    }
}
