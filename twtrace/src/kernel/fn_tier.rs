//! How the function tier attaches: fexit (BPF trampolines) or kprobe + kretprobe, chosen with
//! `--fn-hooks auto|fexit|kprobe|off`.
//!
//! Both mechanisms run the same record-writing code (`twtrace-ebpf/src/probes/function.rs`,
//! `kprobe.rs`) and give the same records. `auto` prefers fexit (no per-call trap, and the
//! arguments come with the return value); a hook whose fexit program the kernel refuses is
//! tried as kprobes (kernels with kprobes but no trampolines, or a policy against them). Every
//! function a program reads arguments of is first checked against the kernel's BTF
//! ([`crate::kernel::prototypes::check`]), whatever the mechanism: a kprobe reads the same
//! argument registers an fexit program does.

use crate::kernel::prototypes::FnHook;
use anyhow::{bail, Result};

/// The function tier's mechanism.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FnHooks {
    /// fexit where the kernel allows it, else kprobes, else off.
    #[default]
    Auto,
    /// fexit only.
    Fexit,
    /// kprobe + kretprobe only.
    Kprobe,
    /// No function tier: the tracepoint tier alone.
    Off,
}

impl FnHooks {
    /// `TWTRACE_FN_HOOKS` (auto, fexit, kprobe or off), for the callers that have no command
    /// line: the integration tests run the function-tier tests once per mechanism with it.
    pub fn from_env() -> Result<FnHooks> {
        match std::env::var("TWTRACE_FN_HOOKS") {
            Ok(v) => FnHooks::parse(&v),
            Err(_) => Ok(FnHooks::Auto),
        }
    }

    pub fn parse(s: &str) -> Result<FnHooks> {
        Ok(match s.trim() {
            "" | "auto" => FnHooks::Auto,
            "fexit" => FnHooks::Fexit,
            "kprobe" => FnHooks::Kprobe,
            "off" => FnHooks::Off,
            other => bail!("function hooks {other:?}: choose auto, fexit, kprobe or off"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FnHooks::Auto => "auto",
            FnHooks::Fexit => "fexit",
            FnHooks::Kprobe => "kprobe",
            FnHooks::Off => "off",
        }
    }
}

/// The kprobe form of one function hook: a kretprobe program on the function whose return
/// value matters, and a kprobe program on the entry that saves the arguments it needs.
#[derive(Clone, Copy, Debug)]
pub struct KprobePair {
    /// The fexit hook this replaces (same records, same purpose).
    pub fexit_program: &'static str,
    /// kretprobe program and the function it returns from.
    pub ret_program: &'static str,
    pub ret_function: &'static str,
    /// kprobe program saving the arguments, and the function it enters.
    pub entry_program: &'static str,
    pub entry: FnHook,
}

/// `tcp_twsk_unique`: its own entry saves (sk, sktw, twp). `inet_twsk_alloc`: its only
/// caller's entry, `tcp_time_wait(sk, state, timeo)`, saves the closing socket and the state.
pub const KPROBE_PAIRS: &[KprobePair] = &[
    KprobePair {
        fexit_program: "tw_unique",
        ret_program: "kp_unique",
        ret_function: "tcp_twsk_unique",
        entry_program: "kp_unique_entry",
        entry: FnHook {
            program: "kp_unique_entry",
            function: "tcp_twsk_unique",
            proto: "int tcp_twsk_unique(struct sock *sk, struct sock *sktw, void *twp)",
            purpose: "",
        },
    },
    KprobePair {
        fexit_program: "tw_alloc",
        ret_program: "kp_tw_alloc",
        ret_function: "inet_twsk_alloc",
        entry_program: "kp_time_wait",
        entry: FnHook {
            program: "kp_time_wait",
            function: "tcp_time_wait",
            proto: "void tcp_time_wait(struct sock *sk, int state, int timeo)",
            purpose: "",
        },
    },
];

/// The kprobe pair replacing fexit program `program`.
pub fn pair_for(program: &str) -> Option<&'static KprobePair> {
    KPROBE_PAIRS.iter().find(|p| p.fexit_program == program)
}

/// Whether this kernel can attach kprobes at all (the kprobe PMU, or the legacy tracefs
/// interface); the message says what is missing.
pub fn kprobes_available() -> std::result::Result<(), String> {
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
        || std::path::Path::new("/sys/kernel/debug/tracing/kprobe_events").exists()
    {
        Ok(())
    } else {
        Err(
            "this kernel has no kprobes (no kprobe PMU, no kprobe_events: CONFIG_KPROBES off?)"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        for c in [FnHooks::Auto, FnHooks::Fexit, FnHooks::Kprobe, FnHooks::Off] {
            assert_eq!(FnHooks::parse(c.name()).unwrap(), c);
        }
        assert!(FnHooks::parse("kretprobe").is_err());
    }

    /// Every kprobe pair replaces a hook of the fexit tier, and its entry prototype parses.
    #[test]
    fn pairs_match_the_fexit_tier() {
        for p in KPROBE_PAIRS {
            let f = crate::kernel::prototypes::FN_HOOKS
                .iter()
                .find(|h| h.program == p.fexit_program)
                .unwrap_or_else(|| panic!("{} has no fexit hook", p.fexit_program));
            assert_eq!(f.function, p.ret_function);
            crate::kernel::prototypes::parse_proto(p.entry.proto).unwrap();
        }
    }

    /// The running kernel (any with BTF) has the entry functions with the recorded prototypes.
    #[test]
    fn running_kernel_matches_the_entry_prototypes() {
        let btf = crate::kernel::prototypes::open_kernel_btf().unwrap();
        for p in KPROBE_PAIRS {
            crate::kernel::prototypes::check(&btf, &p.entry)
                .unwrap_or_else(|e| panic!("{}: {e}", p.entry.function));
        }
    }
}
