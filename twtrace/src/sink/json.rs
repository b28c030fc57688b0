//! The NDJSON format of `--json`, `export --format ndjson` and the trace-file tests.

use crate::host::workload::Workload;
use crate::kernel::sysinfo::Clock;
use crate::pipeline::event::{Body, Event, Task};
use crate::sink::format::{errno_name, push_int, push_ip, push_rfc3339_micros};
use std::fmt::Write as _;

/// One NDJSON object (without the newline): the `--json` contract. Keys are stable; new
/// keys may be added, none renamed.
pub fn write_json(e: &Event, clock: &Clock, out: &mut String) {
    // Written piece by piece, not with `write!`: this runs for every event of `--json`.
    out.push_str("{\"time\":\"");
    push_rfc3339_micros(out, clock.wall_ns(e.ts_ns));
    out.push_str("\",\"kind\":\"");
    out.push_str(e.kind());
    out.push('"');
    if let Some(s) = e.sock() {
        out.push_str(",\"netns\":");
        push_int(out, s.netns);
        out.push_str(",\"family\":");
        push_int(out, s.family());
        out.push_str(",\"laddr\":\"");
        push_ip(out, &s.laddr);
        out.push_str("\",\"lport\":");
        push_int(out, s.lport);
        out.push_str(",\"raddr\":\"");
        push_ip(out, &s.raddr);
        out.push_str("\",\"rport\":");
        push_int(out, s.rport);
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
    out.push_str(",\"cgroup_id\":");
    push_int(out, w.cgroup_id);
    out.push_str(",\"cgroup\":");
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
            out.push_str(",\"");
            out.push_str(k);
            out.push_str("\":");
            push_str_or_null(out, Some(v));
        }
    }
}

/// A JSON string (escaped), or `null`.
fn push_str_or_null(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => push_json_str(out, v),
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
            out.push_str(",\"substate\":\"");
            out.push_str(substate.as_str());
            out.push_str("\",\"timeout_ms\":");
            push_int(out, *timeout_ms);
            write_task(out, t);
            if *snapshot {
                out.push_str(",\"snapshot\":true");
            }
            push_opt(out, ",\"age_ms\":", *age_ms);
        }
        Body::Promote {
            timeout_ms, age_ms, ..
        } => {
            out.push_str(",\"substate\":\"TIME_WAIT\",\"timeout_ms\":");
            push_int(out, *timeout_ms);
            push_opt(out, ",\"age_ms\":", *age_ms);
        }
        Body::Exit {
            substate,
            reason,
            lifetime_ms,
            task: t,
            ..
        } => {
            out.push_str(",\"substate\":\"");
            out.push_str(substate.as_str());
            out.push_str("\",\"reason\":\"");
            out.push_str(reason.as_str());
            out.push('"');
            push_opt(out, ",\"lifetime_ms\":", *lifetime_ms);
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
        out.push_str(",\"pid\":");
        push_int(out, t.pid);
        out.push_str(",\"comm\":");
        push_json_str(out, &t.comm);
    }
}

/// `key` and the value, when there is one.
fn push_opt(out: &mut String, key: &str, v: Option<u64>) {
    if let Some(v) = v {
        out.push_str(key);
        push_int(out, v);
    }
}

/// `s` as a JSON string, escaped exactly as `serde_json` does (`"`, `\\`, and control
/// characters; nothing else), without the `String` `serde_json::to_string` allocates.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Nothing to escape (almost every process name): one copy.
        out.push_str(s);
        out.push('"');
        return;
    }
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
        // Each alone, and names with nothing to escape (the one-copy path).
        let names = all.chars().map(String::from).chain(
            [
                "",
                "nginx",
                "kworker/u4:2",
                "café ☕",
                "/kubepods.slice/x.scope",
            ]
            .map(String::from),
        );
        for s in names {
            let mut out = String::new();
            super::push_json_str(&mut out, &s);
            assert_eq!(out, serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }
}
