//! The NDJSON format of `--json`, `export --format ndjson` and the trace-file tests.

use crate::kernel::sysinfo::Clock;
use crate::pipeline::event::{Body, Event, Task};
use crate::sink::format::{errno_name, rfc3339_micros};
use std::fmt::Write as _;

/// One NDJSON object (without the newline): the `--json` contract. Keys are stable; new
/// keys may be added, none renamed.
pub fn write_json(e: &Event, clock: &Clock, out: &mut String) {
    out.push_str("{\"time\":\"");
    out.push_str(&rfc3339_micros(clock.wall_ns(e.ts_ns)));
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
    let task = |out: &mut String, t: &Option<Task>| {
        if let Some(t) = t {
            let _ = write!(out, ",\"pid\":{},\"comm\":", t.pid);
            out.push_str(&serde_json::to_string(&t.comm).unwrap_or_else(|_| "\"\"".into()));
        }
    };
    match &e.body {
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
            task(out, t);
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
            task(out, t);
        }
        Body::Overflow { .. } | Body::PawsReject { .. } => {}
        Body::Abort { task: t, .. } => task(out, t),
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
            task(out, t);
        }
        Body::Netns { netns, sysctls } => {
            let _ = write!(out, ",\"netns\":{netns}");
            sysctls.write_json(out);
        }
        Body::Lost { count } => {
            let _ = write!(out, ",\"count\":{count}");
        }
    }
    out.push('}');
}

impl Event {
    /// One NDJSON object (see [`write_json`]).
    pub fn write_json(&self, clock: &Clock, out: &mut String) {
        write_json(self, clock, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::event::{ExitReason, Sock, Substate};

    fn sock() -> Sock {
        Sock::from_raw(
            0xffff1,
            4026531840,
            2,
            [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            43210,
            [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            8080,
        )
    }

    #[test]
    fn json_contract_keys() {
        let clock = Clock {
            offset_ns: 1_700_000_000_000_000_000,
        };
        let e = Event {
            ts_ns: 1_234_567_000,
            body: Body::Enter {
                sock: sock(),
                substate: Substate::TimeWait,
                timeout_ms: 60000,
                task: Some(Task {
                    pid: 42,
                    comm: "cu\"rl".into(),
                }),
                snapshot: false,
                age_ms: None,
            },
        };
        let mut s = String::new();
        write_json(&e, &clock, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:21.234567Z");
        assert_eq!(v["kind"], "enter");
        assert_eq!(v["netns"], 4026531840u64);
        assert_eq!(v["family"], 4);
        assert_eq!(v["laddr"], "127.0.0.1");
        assert_eq!(v["lport"], 43210);
        assert_eq!(v["raddr"], "127.0.0.2");
        assert_eq!(v["rport"], 8080);
        assert_eq!(v["substate"], "TIME_WAIT");
        assert_eq!(v["timeout_ms"], 60000);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["comm"], "cu\"rl");
        assert!(v.get("snapshot").is_none());

        let x = Event {
            ts_ns: 1,
            body: Body::Exit {
                sock: Sock::from_raw(
                    1,
                    7,
                    10,
                    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    1,
                    [0; 16],
                    2,
                ),
                substate: Substate::FinWait2,
                reason: ExitReason::Expired,
                lifetime_ms: Some(61992),
                task: None,
            },
        };
        s.clear();
        write_json(&x, &clock, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["family"], 6);
        assert_eq!(v["laddr"], "::1");
        assert_eq!(v["reason"], "expired");
        assert_eq!(v["lifetime_ms"], 61992);
        assert_eq!(v["substate"], "FIN_WAIT2");
    }
}
