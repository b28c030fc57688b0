//! What the running kernel offers twtrace, computed once: when the programs load
//! ([`crate::kernel::loader::load`], exposed by `Tracer::features()` and
//! `Background::features()`), or — for code that needs a fact before any tracer runs — by
//! [`Features::probe`], which reads the same sources (BTF, `/proc`) through the same functions
//! and only lacks the hook statuses (what would attach is then predicted from BTF).
//!
//! Everything else (the tracer, `verify`, `lab`, the metrics, the tests) asks this object
//! instead of deriving the facts again.

use crate::host::netns::{parse_netstat, NetNs};
use crate::kernel::btf::{KernelBtf, VMLINUX};
use crate::kernel::loader::{self, HookStatus};
use crate::kernel::reuse_rule::{ReuseRule, DEFAULT_DELAY_MS};
use crate::kernel::{prototypes, snapshot, sysinfo};
use anyhow::{Context, Result};
use aya::programs::Iter;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// The sysctls twtrace reads or the experiments set; [`Features::has_sysctl`] knows these.
pub const SYSCTLS: &[&str] = &[
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_tw_reuse_delay",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_rfc1337",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_recycle",
];

/// The drop reason of a segment refused by a TIME_WAIT socket's PAWS check.
pub const TW_PAWS_DROP_REASON: &str = "SKB_DROP_REASON_TCP_RFC7323_TW_PAWS";

/// Where the kernel's HZ came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HzSource {
    /// `CONFIG_HZ` of the kernel's config (`/proc/config.gz`, else `/boot/config-$(uname -r)`).
    Config,
    /// Measured with the loaded `iter/tcp` program (ktime and jiffies read together, 200 ms).
    Iterator,
    /// Measured from `/proc/timer_list` (root; about 1 s).
    TimerList,
    /// Nothing answered: 250 assumed.
    Assumed,
}

/// The kernel's HZ and how it was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hz {
    pub value: u64,
    pub source: HzSource,
}

impl Hz {
    /// Read or measured (not assumed).
    pub fn known(&self) -> bool {
        self.source != HzSource::Assumed
    }
}

/// HZ, found one way, in this order: the kernel config; else measured with the loaded
/// iterator (`iter`, when the programs are loaded: cheap and exact); else measured from
/// `/proc/timer_list`; else 250 is assumed. A measurement is rounded to the nearest standard
/// value (100, 250, 300, 1000).
pub fn find_hz(iter: Option<&mut Iter>) -> Hz {
    let found = |value, source| Hz { value, source };
    if let Some(hz) = sysinfo::config_hz() {
        return found(hz, HzSource::Config);
    }
    if let Some(prog) = iter {
        if let Ok(rate) = snapshot::measure_hz(prog, Duration::from_millis(200)) {
            return found(sysinfo::nearest_hz(rate), HzSource::Iterator);
        }
    }
    if let Some(hz) = measure_hz_timer_list() {
        return found(hz, HzSource::TimerList);
    }
    found(250, HzSource::Assumed)
}

/// (`now at` in ns, `jiffies`) from one dump of /proc/timer_list: both read by the kernel
/// within the same dump, so how long the read takes (tens of ms on a loaded machine) does not
/// skew a rate computed from two dumps.
fn timer_list_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/timer_list").ok()?;
    parse_timer_list_jiffies(&text)
}

pub fn parse_timer_list_jiffies(text: &str) -> Option<(u64, u64)> {
    let now = text
        .lines()
        .find_map(|l| l.strip_prefix("now at "))
        .and_then(|v| v.trim().strip_suffix("nsecs"))
        .and_then(|v| v.trim().parse().ok())?;
    let jiffies = text
        .lines()
        .find_map(|l| l.strip_prefix("jiffies: "))
        .and_then(|v| v.trim().parse().ok())?;
    Some((now, jiffies))
}

/// HZ measured: jiffies counted against the kernel's own clock over about a second, to the
/// nearest standard value (a NOHZ kernel catches jiffies up on wake-up, so a sleep does not
/// skew it).
fn measure_hz_timer_list() -> Option<u64> {
    let (t0, j0) = timer_list_jiffies()?;
    std::thread::sleep(Duration::from_millis(1000));
    let (t1, j1) = timer_list_jiffies()?;
    let secs = t1.saturating_sub(t0) as f64 / 1e9;
    (j1 > j0 && secs > 0.0).then(|| sysinfo::nearest_hz((j1 - j0) as f64 / secs))
}

/// The facts read from the kernel's BTF (one parse, shared with the loader's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtfFacts {
    /// Timewait sockets carry `tw_entry_stamp` (the reuse delay's reference, Linux 6.13).
    pub tw_entry_stamp: bool,
    /// The drop reason [`TW_PAWS_DROP_REASON`] exists (newer than 6.12).
    pub tw_paws_drop_reason: bool,
    /// Arguments of the `tcp_send_reset` tracepoint (`None`: no such tracepoint).
    pub send_reset_arity: Option<usize>,
    /// Arguments of the `kfree_skb` tracepoint (4 from 6.10: with `rx_sk`).
    pub kfree_skb_arity: Option<usize>,
}

impl BtfFacts {
    pub fn read(btf: &KernelBtf) -> BtfFacts {
        let field = |s: &str, f: &str| btf.try_offset(s, f).is_ok_and(|o| o.is_some());
        BtfFacts {
            tw_entry_stamp: field("inet_timewait_sock", "tw_entry_stamp")
                || field("tcp_timewait_sock", "tw_entry_stamp"),
            tw_paws_drop_reason: btf
                .enum_value("skb_drop_reason", TW_PAWS_DROP_REASON)
                .is_some(),
            send_reset_arity: prototypes::tracepoint_arity(btf.raw(), "tcp_send_reset"),
            kfree_skb_arity: prototypes::tracepoint_arity(btf.raw(), "kfree_skb"),
        }
    }
}

/// What the running kernel offers twtrace. See the module documentation.
#[derive(Clone, Debug)]
pub struct Features {
    /// The hooks as the loader attached them; empty for [`Features::probe`].
    pub hooks: Vec<HookStatus>,
    /// Built at load (the hooks are real) rather than probed.
    pub loaded: bool,
    pub hz: Hz,
    /// The reuse rule a new namespace starts with: `Delay` with the kernel's default
    /// `tcp_tw_reuse_delay` where that sysctl exists (Linux ≥ 6.13), else `NextSecond`. A
    /// namespace's own rule: [`Features::reuse_rule_in`].
    pub reuse_rule: ReuseRule,
    pub btf: BtfFacts,
    /// `TcpExt` counters of `/proc/net/netstat` (the same names in every namespace).
    pub tcpext_counters: BTreeSet<String>,
    /// Those of [`SYSCTLS`] this kernel has.
    pub sysctls: BTreeSet<&'static str>,
}

impl Features {
    /// The facts from BTF and `/proc`, without loading anything: for a decision before any
    /// tracer runs. Costs one parse of the kernel's BTF (and, without a kernel config, a
    /// second of HZ measurement).
    pub fn probe() -> Result<Features> {
        let btf = KernelBtf::open(Path::new(VMLINUX)).context("reading the kernel's BTF")?;
        Ok(Features::assemble(
            BtfFacts::read(&btf),
            Vec::new(),
            false,
            find_hz(None),
        ))
    }

    /// The object built by the loader, with the hooks it attached and the HZ it found.
    pub fn assemble(btf: BtfFacts, hooks: Vec<HookStatus>, loaded: bool, hz: Hz) -> Features {
        let sysctls: BTreeSet<&'static str> = SYSCTLS
            .iter()
            .copied()
            .filter(|k| Path::new("/proc/sys").join(k.replace('.', "/")).exists())
            .collect();
        let reuse_rule = if sysctls.contains("net.ipv4.tcp_tw_reuse_delay") {
            ReuseRule::Delay(DEFAULT_DELAY_MS)
        } else {
            ReuseRule::NextSecond
        };
        Features {
            hooks,
            loaded,
            hz,
            reuse_rule,
            btf,
            tcpext_counters: std::fs::read_to_string("/proc/net/netstat")
                .map(|t| tcpext_names(&t))
                .unwrap_or_default(),
            sysctls,
        }
    }

    /// Whether the sysctl `key` (one of [`SYSCTLS`], e.g. `net.ipv4.tcp_tw_reuse_delay`) exists.
    pub fn has_sysctl(&self, key: &str) -> bool {
        debug_assert!(SYSCTLS.contains(&key), "{key} is not in SYSCTLS");
        self.sysctls.contains(key)
    }

    /// Whether the kernel has counter `TcpExt:<name>`.
    pub fn has_tcpext(&self, name: &str) -> bool {
        self.tcpext_counters.contains(name)
    }

    /// The rule in force in `ns`: its own `tcp_tw_reuse_delay` where the kernel has one.
    pub fn reuse_rule_in(&self, ns: &NetNs) -> Result<ReuseRule> {
        if !self.has_sysctl("net.ipv4.tcp_tw_reuse_delay") {
            return Ok(ReuseRule::NextSecond);
        }
        let v = ns.read_sysctl("net.ipv4.tcp_tw_reuse_delay")?;
        let ms = v
            .parse()
            .with_context(|| format!("parsing tcp_tw_reuse_delay {v:?}"))?;
        Ok(ReuseRule::Delay(ms))
    }

    /// Whether the hook with this label (e.g. `tp_btf/kfree_skb`) is attached.
    pub fn hook_on(&self, label: &str) -> bool {
        self.hooks
            .iter()
            .any(|h| h.label() == label && h.result.is_ok())
    }

    /// Whether the function hook on `function` is attached.
    pub fn fn_hook_on(&self, function: &str) -> bool {
        loader::fn_hook_on(&self.hooks, function)
    }

    /// The function-hook tier is attached (`tcp_twsk_unique`): refusals are counted exactly.
    pub fn fn_tier(&self) -> bool {
        self.fn_hook_on("tcp_twsk_unique")
    }

    /// The start-up line that says which tier runs.
    pub fn tier_line(&self) -> String {
        loader::tier_line(&self.hooks)
    }

    /// (hook label, attached) for every hook: the `hook_attached` gauge.
    pub fn hook_table(&self) -> Vec<(String, bool)> {
        self.hooks
            .iter()
            .map(|h| (h.label(), h.result.is_ok()))
            .collect()
    }

    /// Whether the tracepoint `tp` feeds the programs with at least `arity` arguments: at
    /// load, its hook must be attached too; probed, BTF predicts it.
    fn tracepoint(&self, tp: &str, arity: Option<usize>, min: usize) -> bool {
        arity.is_some_and(|n| n >= min) && (!self.loaded || self.hook_on(&format!("tp_btf/{tp}")))
    }

    /// Whether the tracer reports `abort` events: they need the `tcp:tcp_send_reset`
    /// tracepoint (with or without its newer `reason` argument: the loader falls back to a
    /// program that does not read it). `Err` says why not.
    pub fn abort_events(&self) -> std::result::Result<(), String> {
        if self.tracepoint("tcp_send_reset", self.btf.send_reset_arity, 2) {
            return Ok(());
        }
        Err("this kernel has no tcp_send_reset tracepoint, so the tracer sees no aborts".into())
    }

    /// Whether the tracer can tell a timewait socket killed by an incoming RST (exit reason
    /// `rst`): it needs the receiving socket of `skb:kfree_skb` (`rx_sk`, 6.10+); 6.1 has
    /// none, and such a death is reported `unknown`.
    pub fn rst_reason(&self) -> std::result::Result<(), String> {
        if self.tracepoint("kfree_skb", self.btf.kfree_skb_arity, 4) {
            return Ok(());
        }
        Err(
            "this kernel's kfree_skb tracepoint has no receiving socket (rx_sk), so a TIME_WAIT \
             socket killed by an RST is reported `unknown`"
                .into(),
        )
    }

    /// Whether the tracer reports `paws_reject` events: they need the drop reason
    /// [`TW_PAWS_DROP_REASON`] (newer than 6.12) and a `kfree_skb` tracepoint that names the
    /// receiving socket (`rx_sk`; 6.1 has none). `Err` says why not.
    pub fn paws_events(&self) -> std::result::Result<(), String> {
        let mut why = Vec::new();
        if !self.btf.tw_paws_drop_reason {
            why.push("no drop reason SKB_DROP_REASON_TCP_RFC7323_TW_PAWS");
        }
        if !self.tracepoint("kfree_skb", self.btf.kfree_skb_arity, 4) {
            why.push("a kfree_skb tracepoint without the receiving socket (rx_sk)");
        }
        if why.is_empty() {
            return Ok(());
        }
        Err(format!(
            "this kernel has {}: a TIME_WAIT socket's PAWS drops are not reported per packet",
            why.join(" and ")
        ))
    }
}

/// The counter names of the `TcpExt:` lines of a `/proc/net/netstat` text.
pub fn tcpext_names(netstat: &str) -> BTreeSet<String> {
    let Some(header) = netstat.lines().find(|l| l.starts_with("TcpExt:")) else {
        return BTreeSet::new();
    };
    header
        .split_whitespace()
        .skip(1)
        .filter(|n| parse_netstat(netstat, "TcpExt", n).is_some())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::loader::{resolve_config, Symbols};
    use twtrace_common::NO_FIELD;

    #[test]
    fn timer_list() {
        let t = "Timer List Version: v0.9\nnow at 1 nsecs\n\ncpu: 0\n .expires_next   : 5\n\
                 jiffies: 4297867720\n";
        assert_eq!(parse_timer_list_jiffies(t), Some((1, 4_297_867_720)));
        assert_eq!(
            parse_timer_list_jiffies("now at 1 nsecs\njiffies: x\n"),
            None
        );
        assert_eq!(parse_timer_list_jiffies("jiffies: 5\n"), None);
        // Measured here, it agrees with the kernel config where there is one.
        let hz = measure_hz_timer_list().expect("/proc/timer_list (root)");
        if let Some(c) = sysinfo::config_hz() {
            assert_eq!(hz, c);
            assert_eq!(
                find_hz(None),
                Hz {
                    value: c,
                    source: HzSource::Config
                }
            );
        }
    }

    #[test]
    fn netstat_counter_names() {
        let t = "TcpExt: TW TWRecycled PAWSEstab\nTcpExt: 6 3 2\nIpExt: InNoRoutes\nIpExt: 0\n";
        let names: Vec<String> = tcpext_names(t).into_iter().collect();
        assert_eq!(names, vec!["PAWSEstab", "TW", "TWRecycled"]);
        assert!(tcpext_names("IpExt: A\nIpExt: 1\n").is_empty());
    }

    #[test]
    fn probed_facts_agree_with_the_loaders_reading() {
        // The loader's reading of the same BTF (resolve_config) is the reference.
        let btf = KernelBtf::open(Path::new(VMLINUX)).expect("kernel BTF");
        let c = resolve_config(
            &btf,
            Symbols {
                tw_timer_handler: 1,
                reqsk_timer_handler: None,
            },
        )
        .unwrap();
        let f = Features::probe().unwrap();
        assert!(!f.loaded && f.hooks.is_empty());
        assert_eq!(f.btf, BtfFacts::read(&btf));
        assert_eq!(f.btf.tw_paws_drop_reason, c.drop_tw_paws != NO_FIELD);
        assert_eq!(f.btf.tw_entry_stamp, c.tw_entry_stamp != NO_FIELD);
        assert_eq!(
            f.paws_events().is_ok(),
            f.btf.tw_paws_drop_reason && f.btf.kfree_skb_arity.is_some_and(|n| n >= 4)
        );
        // The reuse rule follows the sysctl, and every kernel has tcp_tw_reuse and counts TW.
        assert_eq!(
            matches!(f.reuse_rule, ReuseRule::Delay(DEFAULT_DELAY_MS)),
            f.has_sysctl("net.ipv4.tcp_tw_reuse_delay")
        );
        assert!(f.has_sysctl("net.ipv4.tcp_tw_reuse"));
        assert!(!f.has_sysctl("net.ipv4.tcp_tw_recycle"), "removed in 4.12");
        assert!(f.has_tcpext("TW") && !f.has_tcpext("NoSuchCounter"));
        assert!(f.hz.known());
    }

    #[test]
    fn at_load_the_hooks_decide() {
        use crate::kernel::loader::HOOKS;
        let facts = BtfFacts {
            tw_entry_stamp: true,
            tw_paws_drop_reason: true,
            send_reset_arity: Some(3),
            kfree_skb_arity: Some(4),
        };
        let hz = Hz {
            value: 250,
            source: HzSource::Config,
        };
        let status = |program: &str, ok: bool| HookStatus {
            hook: *HOOKS.iter().find(|h| h.program == program).unwrap(),
            result: if ok { Ok(()) } else { Err("refused".into()) },
            fallback_used: false,
        };
        let probed = Features::assemble(facts.clone(), Vec::new(), false, hz);
        assert!(probed.abort_events().is_ok() && probed.paws_events().is_ok());
        let loaded = Features::assemble(
            facts,
            vec![status("kfree_skb", false), status("tcp_send_reset", true)],
            true,
            hz,
        );
        assert!(loaded.abort_events().is_ok());
        assert!(loaded.rst_reason().is_err());
        let why = loaded.paws_events().unwrap_err();
        assert!(
            why.contains("rx_sk") && !why.contains("drop reason"),
            "{why}"
        );
        assert!(!loaded.fn_tier());
        assert!(loaded.tier_line().starts_with("tier: tracepoints ("));
        assert_eq!(
            loaded.hook_table(),
            vec![
                ("tp_btf/kfree_skb".to_string(), false),
                ("tp_btf/tcp_send_reset".to_string(), true)
            ]
        );
    }
}
