//! Loading the kernel programs: pre-flight checks with actionable messages, BTF offsets and
//! kallsyms into the programs' `CONFIG`, and the hook table attached by what the kernel offers.

use crate::kernel::btf::{KernelBtf, VMLINUX};
use crate::kernel::features::{find_hz, BtfFacts, Features};
use crate::kernel::fn_tier::{self, FnHooks};
use crate::kernel::kallsyms;
use anyhow::{bail, Context, Result};
use aya::programs::{BtfTracePoint, FExit, Iter, KProbe};
use aya::{Btf, Ebpf, EbpfLoader};
use std::path::Path;
use twtrace_common::{Config, NO_FIELD};

/// The kernel object, built by build.rs from `twtrace-ebpf` and embedded in the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/twtrace.bpf.o"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// BTF-enabled tracepoint (`tp_btf`): no tracefs needed.
    TpBtf(&'static str),
    /// BPF iterator (`iter/…`), run on demand rather than attached to an event.
    Iter(&'static str),
    /// Classic tracepoint (`tracepoint/CATEGORY/NAME`): needs tracefs mounted.
    TracePoint(&'static str, &'static str),
    /// Function hook (`fexit/…`) of the optional tier ([`crate::kernel::prototypes::FN_HOOKS`]), attached
    /// only if the kernel's prototype matches the one the program was written against.
    FExit(&'static str),
    /// The same hook as kprobes ([`crate::kernel::fn_tier::KPROBE_PAIRS`]): the program is a
    /// kretprobe on `function`; `entry_program`, a kprobe on `entry_function`, saves the
    /// arguments it needs.
    KProbe {
        function: &'static str,
        entry_program: &'static str,
        entry_function: &'static str,
    },
}

/// One row of the hook table.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Program name in the kernel object.
    pub program: &'static str,
    pub attach: Attach,
    /// Without a required hook twtrace cannot report the lifecycle at all.
    pub required: bool,
    /// A program for an older signature of the same tracepoint, tried when `program` is
    /// refused (tracepoints gain arguments across kernel versions).
    pub fallback: Option<&'static str>,
    /// What the hook contributes, printed in the start-up report.
    pub purpose: &'static str,
}

/// The baseline tier: tracepoints every BTF kernel has; it must always work alone. The
/// function-hook tier ([`crate::kernel::prototypes::FN_HOOKS`]) joins it where a kernel allows fexit.
pub const HOOKS: &[Hook] = &[
    Hook {
        program: "timer_start",
        attach: Attach::TpBtf("timer_start"),
        required: true,
        fallback: None,
        purpose: "timewait births and re-arms",
    },
    Hook {
        program: "timer_cancel",
        attach: Attach::TpBtf("timer_cancel"),
        required: true,
        fallback: None,
        purpose: "timewait timer detaches (expiry, re-arm or early death)",
    },
    Hook {
        program: "timer_expire_entry",
        attach: Attach::TpBtf("timer_expire_entry"),
        required: true,
        fallback: None,
        purpose: "timewait expiries",
    },
    Hook {
        program: "inet_sock_set_state",
        attach: Attach::TpBtf("inet_sock_set_state"),
        required: false,
        fallback: None,
        purpose: "the process that closed each connection",
    },
    Hook {
        program: "kfree_skb",
        attach: Attach::TpBtf("kfree_skb"),
        required: false,
        fallback: None,
        purpose: "PAWS rejects, and the segment that kills a timewait socket (rst)",
    },
    Hook {
        program: "tcp_send_reset",
        attach: Attach::TpBtf("tcp_send_reset"),
        required: false,
        // Before 6.10 the tracepoint has no `reason`: the same program without it.
        fallback: Some("tcp_send_reset_2"),
        purpose: "aborts (SO_LINGER 0) and timewait sockets answering with RST",
    },
    Hook {
        program: "bind_enter",
        attach: Attach::TracePoint("syscalls", "sys_enter_bind"),
        required: false,
        fallback: None,
        purpose: "bind() to port 0 (the pool of bind-before-connect)",
    },
    Hook {
        program: "bind_exit",
        attach: Attach::TracePoint("syscalls", "sys_exit_bind"),
        required: false,
        fallback: None,
        purpose: "bind() failures with EADDRINUSE (bind_fail)",
    },
    Hook {
        program: "snapshot_tcp",
        attach: Attach::Iter("tcp"),
        required: false,
        fallback: None,
        purpose: "timewait sockets that existed before start-up",
    },
];

#[derive(Clone, Debug)]
pub struct HookStatus {
    pub hook: Hook,
    /// `Err(message)` when the hook could not be loaded or attached.
    pub result: std::result::Result<(), String>,
    /// The hook's fallback program (for an older tracepoint signature) is what runs.
    pub fallback_used: bool,
}

impl HookStatus {
    pub fn label(&self) -> String {
        match self.hook.attach {
            Attach::TpBtf(tp) => format!("tp_btf/{tp}"),
            Attach::Iter(i) => format!("iter/{i}"),
            Attach::TracePoint(c, n) => format!("tracepoint/{c}/{n}"),
            Attach::FExit(f) => format!("fexit/{f}"),
            Attach::KProbe { function, .. } => format!("kretprobe/{function}"),
        }
    }

    /// Whether this hook belongs to the optional function-hook tier.
    pub fn is_fn_tier(&self) -> bool {
        matches!(self.hook.attach, Attach::FExit(_) | Attach::KProbe { .. })
    }

    /// The function hooked, for a function-tier hook.
    pub fn fn_name(&self) -> Option<&'static str> {
        match self.hook.attach {
            Attach::FExit(f) | Attach::KProbe { function: f, .. } => Some(f),
            _ => None,
        }
    }

    /// One line for stderr.
    pub fn report_line(&self) -> String {
        match &self.result {
            Ok(()) if self.fallback_used => format!(
                "hook {:<34} attached     ({}; older tracepoint without its newer arguments: \
                 {})",
                self.label(),
                self.hook.purpose,
                self.hook.fallback.unwrap_or_default()
            ),
            Ok(()) => match self.hook.attach {
                Attach::KProbe { entry_function, .. } => format!(
                    "hook {:<34} attached     ({}; with kprobe/{entry_function} for the \
                     arguments)",
                    self.label(),
                    self.hook.purpose
                ),
                _ => format!(
                    "hook {:<34} attached     ({})",
                    self.label(),
                    self.hook.purpose
                ),
            },
            // The function tier is optional by design: off is a tier choice, not a fault.
            Err(e) if self.is_fn_tier() => format!(
                "hook {:<34} off          ({}): {e}",
                self.label(),
                self.hook.purpose
            ),
            Err(e) => format!(
                "hook {:<34} UNAVAILABLE  ({}): {e}",
                self.label(),
                self.hook.purpose
            ),
        }
    }
}

/// The start-up line that says which tier runs.
pub fn tier_line(hooks: &[HookStatus]) -> String {
    let fns: Vec<&HookStatus> = hooks.iter().filter(|h| h.is_fn_tier()).collect();
    let on = fns.iter().filter(|h| h.result.is_ok()).count();
    let kp = fns
        .iter()
        .filter(|h| h.result.is_ok() && matches!(h.hook.attach, Attach::KProbe { .. }))
        .count();
    let how = match (on - kp, kp) {
        (_, 0) => "fexit",
        (0, _) => "kprobe",
        _ => "fexit and kprobe",
    };
    if on == 0 {
        "tier: tracepoints (this kernel gives no function hooks: reuses and overflows are \
         inferred)"
            .to_string()
    } else {
        format!(
            "tier: tracepoints + function hooks ({on} of {} attached, by {how})",
            fns.len()
        )
    }
}

/// Whether the function hook on `function` is attached.
pub fn fn_hook_on(hooks: &[HookStatus], function: &str) -> bool {
    hooks
        .iter()
        .any(|h| h.fn_name() == Some(function) && h.result.is_ok())
}

const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const CAP_SYS_ADMIN: u32 = 21;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Checks what the kernel programs need before trying, so that the user gets the fix rather
/// than an errno from deep inside the loader.
pub fn preflight() -> Result<()> {
    let caps = effective_caps().unwrap_or(0);
    let has = |c: u32| caps & (1u64 << c) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        bail!(
            "twtrace needs to load eBPF programs into the kernel, which takes root or the \
             capabilities CAP_BPF and CAP_PERFMON (plus CAP_SYS_ADMIN to snapshot other network \
             namespaces).\n\nRun it with sudo:  sudo twtrace\n\
             or grant the capabilities once:  sudo setcap cap_bpf,cap_perfmon,cap_sys_admin,cap_syslog+ep $(command -v twtrace)"
        );
    }
    if !Path::new(VMLINUX).exists() {
        bail!(
            "this kernel does not expose its type information ({VMLINUX} is missing).\n\n\
             twtrace reads kernel structure layouts from BTF instead of hard-coding them, so it \
             needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (the default on Debian 11+, \
             Ubuntu 20.10+, Fedora 31+, RHEL 8.2+). Boot such a kernel and run twtrace again."
        );
    }
    Ok(())
}

/// Symbols the programs compare against.
#[derive(Clone, Copy, Debug, Default)]
pub struct Symbols {
    pub tw_timer_handler: u64,
    /// Optional: without it, SYN kills are reported as `unknown`.
    pub reqsk_timer_handler: Option<u64>,
}

/// First of several member paths that exists (fields renamed across kernel versions).
fn first_offset(btf: &KernelBtf, strukt: &str, paths: &[&str]) -> Result<u32> {
    for p in paths {
        if let Some(off) = btf.try_offset(strukt, p)? {
            return Ok(off);
        }
    }
    Ok(NO_FIELD)
}

/// Resolves every structure offset the programs read, and the symbols they compare against.
pub fn resolve_config(btf: &KernelBtf, syms: Symbols) -> Result<Config> {
    let o = |s: &str, p: &str| btf.offset(s, p);
    let v6 = |p: &str| -> Result<u32> { Ok(btf.try_offset("sock_common", p)?.unwrap_or(0)) };
    // tw_entry_stamp arrived with tcp_tw_reuse_delay (6.13); older kernels lack it.
    let entry_stamp = match btf.try_offset("inet_timewait_sock", "tw_entry_stamp")? {
        Some(off) => off,
        None => match btf.try_offset("tcp_timewait_sock", "tw_entry_stamp")? {
            Some(off) => off,
            None => NO_FIELD,
        },
    };
    Ok(Config {
        tw_timer_handler: syms.tw_timer_handler,
        reqsk_timer_handler: syms.reqsk_timer_handler.unwrap_or(0),
        rsk_timer: btf.try_offset("request_sock", "rsk_timer")?.unwrap_or(0),
        // Evidence fields: where a kernel lacks one, the reason it supports becomes `unknown`.
        net_ns_ref: first_offset(btf, "net", &["ns.__ns_ref", "ns.count", "count"])?,
        net_tw_refcount: first_offset(btf, "net", &["ipv4.tcp_death_row.tw_refcount"])?,
        net_max_tw_buckets: first_offset(
            btf,
            "net",
            &["ipv4.tcp_death_row.sysctl_max_tw_buckets"],
        )?,
        tcp_segs_out: first_offset(btf, "tcp_sock", &["segs_out"])?,
        skb_head: o("sk_buff", "head")?,
        skb_transport_header: o("sk_buff", "transport_header")?,
        drop_tw_paws: btf
            .enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_RFC7323_TW_PAWS")
            .map(|v| v as u32)
            .unwrap_or(NO_FIELD),
        timer_expires: o("timer_list", "expires")?,
        timer_function: o("timer_list", "function")?,
        tw_timer: o("inet_timewait_sock", "tw_timer")?,
        tw_substate: o("inet_timewait_sock", "tw_substate")?,
        tw_entry_stamp: entry_stamp,
        tw_ts_recent_stamp: o("tcp_timewait_sock", "tw_ts_recent_stamp")?,
        skc_daddr: o("sock_common", "skc_daddr")?,
        skc_rcv_saddr: o("sock_common", "skc_rcv_saddr")?,
        skc_dport: o("sock_common", "skc_dport")?,
        skc_num: o("sock_common", "skc_num")?,
        skc_family: o("sock_common", "skc_family")?,
        skc_state: o("sock_common", "skc_state")?,
        skc_net: o("sock_common", "skc_net.net")?,
        skc_v6_daddr: v6("skc_v6_daddr")?,
        skc_v6_rcv_saddr: v6("skc_v6_rcv_saddr")?,
        net_ns_inum: o("net", "ns.inum")?,
        inet_sport: o("inet_sock", "inet_sport")?,
        // The sysctls a decision depends on, read by the programs at the moment it applies.
        net_tw_reuse: first_offset(btf, "net", &["ipv4.sysctl_tcp_tw_reuse"])?,
        net_tw_reuse_delay: first_offset(btf, "net", &["ipv4.sysctl_tcp_tw_reuse_delay"])?,
        net_timestamps: first_offset(btf, "net", &["ipv4.sysctl_tcp_timestamps"])?,
        net_port_range: first_offset(btf, "net", &["ipv4.ip_local_ports.range"])?,
        // Before the port range became one u32 (low | high << 16) it was `int range[2]` under
        // a seqlock; the lock's presence tells the two layouts apart.
        port_range_ints: btf.try_offset("local_ports", "lock")?.is_some() as u32,
        // Workload identity: a socket's cgroup, the current task's namespace.
        sock_cgroup: first_offset(btf, "sock", &["sk_cgrp_data.cgroup"])?,
        cgroup_kn: first_offset(btf, "cgroup", &["kn"])?,
        kn_id: first_offset(btf, "kernfs_node", &["id"])?,
        task_nsproxy: first_offset(btf, "task_struct", &["nsproxy"])?,
        nsproxy_net: first_offset(btf, "nsproxy", &["net_ns"])?,
        tp_bind_addr: super::tracefs::field_offset("syscalls", "sys_enter_bind", "umyaddr")
            .unwrap_or(NO_FIELD),
        tp_bind_ret: super::tracefs::field_offset("syscalls", "sys_exit_bind", "ret")
            .unwrap_or(NO_FIELD),
    })
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub btf: Btf,
    pub config: Config,
    pub hooks: Vec<HookStatus>,
    /// What the kernel offers, with these hooks: the one object everything else asks.
    pub features: Features,
}

/// The symbols and structure offsets of the running kernel, for the programs' `CONFIG`.
fn running_config(kbtf: &KernelBtf) -> Result<Config> {
    let syms = kallsyms::lookup_running(&["tw_timer_handler", "reqsk_timer_handler"])?;
    let Some(handler) = syms[0] else {
        bail!(
            "tw_timer_handler is not in /proc/kallsyms.\n\n\
             twtrace recognises a TIME_WAIT socket's timer by its handler function. This kernel \
             either renamed it (twtrace knows the name used from Linux 2.6 to 6.18) or was built \
             without CONFIG_KALLSYMS_ALL. Please report the kernel version (uname -r)."
        );
    };
    let symbols = Symbols {
        tw_timer_handler: handler,
        reqsk_timer_handler: syms[1],
    };
    resolve_config(kbtf, symbols).context("resolving kernel structure offsets from BTF")
}

/// Loads the object with only the `iter/tcp` program usable (nothing attached to a
/// tracepoint): what `twtrace census` needs, at the cost of one walk.
pub fn load_iter() -> Result<Ebpf> {
    preflight()?;
    let config = running_config(&KernelBtf::open(Path::new(VMLINUX))?)?;
    let btf = Btf::from_sys_fs().context("loading kernel BTF")?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("CONFIG", &config, true)
        .load(OBJECT)
        .context("loading twtrace's eBPF object into the kernel")?;
    let prog: &mut Iter = ebpf
        .program_mut("snapshot_tcp")
        .context("the iter/tcp program is missing")?
        .try_into()?;
    prog.load("tcp", &btf)
        .context("loading the iter/tcp program (needs Linux 5.9+ with BTF)")?;
    Ok(ebpf)
}

/// Pre-flight, resolve, load and attach. `ring_bytes` sizes the event ring buffer (a power of
/// two, multiple of the page size). The function tier's mechanism comes from
/// `TWTRACE_FN_HOOKS` (default auto).
pub fn load(ring_bytes: u32) -> Result<Loaded> {
    load_with(ring_bytes, FnHooks::from_env()?)
}

/// [`load`] with the function tier's mechanism chosen by the caller.
pub fn load_with(ring_bytes: u32, fn_hooks: FnHooks) -> Result<Loaded> {
    preflight()?;
    let kbtf = KernelBtf::open(Path::new(VMLINUX))?;
    let config = running_config(&kbtf)?;
    // The function hooks' prototypes are checked against our parse, before it goes.
    let fn_checks: Vec<_> = crate::kernel::prototypes::FN_HOOKS
        .iter()
        .map(|h| {
            (
                *h,
                crate::kernel::prototypes::check(kbtf.raw(), h).map(|_| ()),
                // The kprobe form also reads the arguments of its entry function.
                fn_tier::pair_for(h.program)
                    .map(|p| crate::kernel::prototypes::check(kbtf.raw(), &p.entry).map(|_| ())),
            )
        })
        .collect();
    let facts = BtfFacts::read(&kbtf);
    // Free our parse of the kernel BTF before aya makes its own: both at once were most of
    // the start-up memory peak.
    drop(kbtf);
    let btf = Btf::from_sys_fs().context("loading kernel BTF for tp_btf programs")?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", ring_bytes)
        .load(OBJECT)
        .context("loading twtrace's eBPF object into the kernel")?;
    let mut hooks = Vec::new();
    for hook in HOOKS {
        let mut result = attach(&mut ebpf, &btf, hook).map_err(|e| format!("{e:#}"));
        let mut fallback_used = false;
        if let (Err(_), Some(program)) = (&result, hook.fallback) {
            let alt = Hook {
                program,
                fallback: None,
                ..*hook
            };
            if attach(&mut ebpf, &btf, &alt).is_ok() {
                result = Ok(());
                fallback_used = true;
            }
        }
        if hook.required {
            if let Err(e) = &result {
                bail!(
                    "required hook {} could not be attached: {e}\n\n\
                     twtrace needs the timer tracepoints (tp_btf) to see TIME_WAIT sockets.",
                    hook.program
                );
            }
        }
        hooks.push(HookStatus {
            hook: *hook,
            result,
            fallback_used,
        });
    }
    // The optional tier: each hook on its own (a mismatch or a refusal leaves it off).
    for (fh, check, entry_check) in fn_checks {
        hooks.push(fn_tier_hook(
            &mut ebpf,
            &btf,
            fh,
            check,
            entry_check,
            fn_hooks,
        ));
    }
    let features = features_at_load(&mut ebpf, facts, &hooks);
    Ok(Loaded {
        ebpf,
        btf,
        config,
        hooks,
        features,
    })
}

/// The [`Features`] of the loaded programs: `facts` read from BTF, the hooks as attached, and
/// HZ found with the iterator if it loaded.
fn features_at_load(ebpf: &mut Ebpf, facts: BtfFacts, hooks: &[HookStatus]) -> Features {
    let iter_ok = hooks
        .iter()
        .any(|h| h.hook.program == "snapshot_tcp" && h.result.is_ok());
    let iter: Option<&mut Iter> = match iter_ok {
        true => ebpf
            .program_mut("snapshot_tcp")
            .and_then(|p| p.try_into().ok()),
        false => None,
    };
    Features::assemble(facts, hooks.to_vec(), true, find_hz(iter))
}

/// The benchmark's floor: loads the object and attaches only its empty programs
/// (`twtrace-ebpf/src/floor.rs`) to the same tracepoints as [`HOOKS`]. Returns the object (the
/// programs stay attached while it lives) and the tracepoints attached.
pub fn load_floor() -> Result<(Ebpf, Vec<&'static str>)> {
    preflight()?;
    let btf = Btf::from_sys_fs().context("loading kernel BTF for tp_btf programs")?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .load(OBJECT)
        .context("loading twtrace's eBPF object into the kernel")?;
    let mut attached = Vec::new();
    for (program, tp) in [
        ("floor_timer_start", "timer_start"),
        ("floor_timer_cancel", "timer_cancel"),
        ("floor_timer_expire", "timer_expire_entry"),
        ("floor_set_state", "inet_sock_set_state"),
        ("floor_kfree_skb", "kfree_skb"),
        ("floor_send_reset", "tcp_send_reset"),
    ] {
        let hook = Hook {
            program,
            attach: Attach::TpBtf(tp),
            required: true,
            fallback: None,
            purpose: "",
        };
        attach(&mut ebpf, &btf, &hook).with_context(|| format!("attaching {program}"))?;
        attached.push(tp);
    }
    Ok((ebpf, attached))
}

/// One hook of the function tier, by the mechanism chosen: fexit, kprobe + kretprobe, or (auto)
/// fexit and, when the kernel refuses it, kprobes.
fn fn_tier_hook(
    ebpf: &mut Ebpf,
    btf: &Btf,
    fh: crate::kernel::prototypes::FnHook,
    check: std::result::Result<(), String>,
    entry_check: Option<std::result::Result<(), String>>,
    choice: FnHooks,
) -> HookStatus {
    let fexit = Hook {
        program: fh.program,
        attach: Attach::FExit(fh.function),
        required: false,
        fallback: None,
        purpose: fh.purpose,
    };
    let kprobe = fn_tier::pair_for(fh.program).map(|p| Hook {
        program: p.ret_program,
        attach: Attach::KProbe {
            function: p.ret_function,
            entry_program: p.entry_program,
            entry_function: p.entry.function,
        },
        ..fexit
    });
    let status = |hook: Hook, result| HookStatus {
        hook,
        result,
        fallback_used: false,
    };
    let try_fexit = |ebpf: &mut Ebpf| {
        check.clone().and_then(|_| {
            attach(ebpf, btf, &fexit).map_err(|e| {
                let e = format!("{e:#}").replace('\n', " ");
                // EPERM for any fexit program: no BPF trampolines here (or a lockdown). Said
                // once, plainly; other errors keep their whole text.
                if e.contains("Operation not permitted") {
                    "this kernel refuses fexit programs (Operation not permitted)".to_string()
                } else {
                    e
                }
            })
        })
    };
    let try_kprobe = |ebpf: &mut Ebpf, hook: &Hook| {
        check
            .clone()
            .and_then(|_| entry_check.clone().unwrap_or(Ok(())))
            .and_then(|_| fn_tier::kprobes_available())
            .and_then(|_| attach(ebpf, btf, hook).map_err(|e| format!("{e:#}").replace('\n', " ")))
    };
    match (choice, kprobe) {
        (FnHooks::Off, _) => status(fexit, Err("off (--fn-hooks off)".into())),
        (FnHooks::Fexit, _) | (FnHooks::Auto, None) => {
            let r = try_fexit(ebpf);
            status(fexit, r)
        }
        (FnHooks::Kprobe, Some(kp)) => {
            let r = try_kprobe(ebpf, &kp);
            status(kp, r)
        }
        (FnHooks::Kprobe, None) => status(fexit, Err("no kprobe form of this hook".into())),
        (FnHooks::Auto, Some(kp)) => match try_fexit(ebpf) {
            Ok(()) => status(fexit, Ok(())),
            // A prototype mismatch applies to both mechanisms: no second try.
            Err(e) if check.is_err() => status(fexit, Err(e)),
            Err(fexit_err) => match try_kprobe(ebpf, &kp) {
                Ok(()) => status(kp, Ok(())),
                Err(kp_err) => status(fexit, Err(format!("{fexit_err}; kprobes: {kp_err}"))),
            },
        },
    }
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, hook: &Hook) -> Result<()> {
    let prog = ebpf
        .program_mut(hook.program)
        .with_context(|| format!("program {} missing from the object", hook.program))?;
    match hook.attach {
        Attach::TpBtf(tp) => {
            let p: &mut BtfTracePoint = prog.try_into()?;
            p.load(tp, btf)?;
            p.attach()?;
        }
        Attach::TracePoint(category, name) => {
            if super::tracefs::root().is_none() {
                bail!("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)");
            }
            let p: &mut aya::programs::TracePoint = prog.try_into()?;
            p.load()?;
            p.attach(category, name)?;
        }
        Attach::Iter(target) => {
            // Iterators are attached per run (see snapshot.rs); loading proves they work.
            let p: &mut Iter = prog.try_into()?;
            p.load(target, btf)?;
        }
        Attach::FExit(function) => {
            let p: &mut FExit = prog.try_into()?;
            p.load(function, btf)
                .context("the kernel refused the fexit program")?;
            p.attach()?;
        }
        Attach::KProbe {
            function,
            entry_program,
            entry_function,
        } => {
            // The entry first: a return seen without its entry reports nothing.
            for (program, f) in [(entry_program, entry_function), (hook.program, function)] {
                let p: &mut KProbe = ebpf
                    .program_mut(program)
                    .with_context(|| format!("program {program} missing from the object"))?
                    .try_into()?;
                p.load()
                    .with_context(|| format!("the kernel refused kprobe program {program}"))?;
                p.attach(f, 0)
                    .with_context(|| format!("attaching {program} to {f}"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_resolve_on_the_running_kernel() {
        let btf = KernelBtf::open(Path::new(VMLINUX)).unwrap();
        let c = resolve_config(
            &btf,
            Symbols {
                tw_timer_handler: 1,
                reqsk_timer_handler: None,
            },
        )
        .unwrap();
        // The timer sits inside the timewait socket, after sock_common.
        assert!(c.tw_timer > c.skc_net);
        assert!(c.tw_substate > 0 && c.tw_substate < c.tw_timer);
        assert_eq!(c.timer_function, c.timer_expires + 8);
        assert!(c.tw_ts_recent_stamp > c.tw_timer);
        assert_ne!(c.net_ns_inum, 0);
        // 6.18 has every evidence field.
        for (name, off) in [
            ("net_ns_ref", c.net_ns_ref),
            ("net_tw_refcount", c.net_tw_refcount),
            ("net_max_tw_buckets", c.net_max_tw_buckets),
            ("tcp_segs_out", c.tcp_segs_out),
            ("drop_tw_paws", c.drop_tw_paws),
        ] {
            assert_ne!(off, NO_FIELD, "{name}");
        }
        assert!(c.net_max_tw_buckets > c.net_tw_refcount);
    }
}
