//! The whole hook table loads, passes the verifier and attaches on this kernel: an optional
//! hook that silently fails would quietly turn its reasons into `unknown`.

use twtrace::kernel::loader::Attach;
use twtrace_tests::kernel;

/// The argument the verifier says a program reads and this kernel's tracepoint does not pass
/// ("func 'kfree_skb' doesn't have 4-th argument"): tracepoints gain arguments over versions.
fn missing_argument(error: &str) -> Option<usize> {
    let rest = &error[error.find("doesn't have ")? + "doesn't have ".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    rest[digits.len()..]
        .starts_with("-th argument")
        .then(|| digits.parse().ok())?
}

#[test]
fn every_hook_attaches_on_this_kernel() {
    let t = twtrace::pipeline::tracer::Tracer::start(&twtrace::pipeline::tracer::TracerOptions {
        snapshot: false,
        ..Default::default()
    })
    .unwrap();
    let kbtf = twtrace::kernel::prototypes::open_kernel_btf().unwrap();
    let mut failed = Vec::new();
    for h in t.features().hooks.iter() {
        let Err(e) = &h.result else { continue };
        // The function tier: optional by design. Off is acceptable only where the kernel
        // refuses fexit altogether (EPERM, as on the development host); a prototype mismatch
        // or a verifier complaint is ours to fix.
        if h.is_fn_tier() && e.contains("Operation not permitted") {
            kernel::partial(
                "every_hook_attaches_on_this_kernel",
                &format!("{} off: this kernel refuses fexit programs", h.label()),
            );
            continue;
        }
        // kprobes forced (TWTRACE_FN_HOOKS=kprobe) on a kernel without them.
        if h.is_fn_tier() && e.contains("has no kprobes") {
            kernel::partial(
                "every_hook_attaches_on_this_kernel",
                &format!("{} off: this kernel has no kprobes", h.label()),
            );
            continue;
        }
        // An optional hook written for a newer tracepoint: acceptable only if the kernel's own
        // BTF confirms that the tracepoint has fewer arguments than the program reads.
        if let (false, Attach::TpBtf(tp), Some(n)) =
            (h.hook.required, h.hook.attach, missing_argument(e))
        {
            if twtrace::kernel::prototypes::tracepoint_arity(&kbtf, tp).is_some_and(|a| a < n) {
                kernel::partial(
                    "every_hook_attaches_on_this_kernel",
                    &format!(
                        "{} unavailable: this kernel's tracepoint has no argument {n} ({})",
                        h.label(),
                        h.hook.purpose
                    ),
                );
                continue;
            }
        }
        failed.push(h.report_line());
    }
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(
        t.features().hooks.len(),
        twtrace::kernel::loader::HOOKS.len() + twtrace::kernel::prototypes::FN_HOOKS.len()
    );
    // Evidence this kernel's layout lacks (the reasons resting on it become `unknown`): said
    // here so that a kernel matrix run lists them.
    let btf =
        twtrace::kernel::btf::KernelBtf::open(std::path::Path::new(twtrace::kernel::btf::VMLINUX))
            .unwrap();
    let syms = twtrace::kernel::loader::Symbols {
        tw_timer_handler: 1,
        reqsk_timer_handler: None,
    };
    let c = twtrace::kernel::loader::resolve_config(&btf, syms).unwrap();
    for (field, off) in [
        ("net.ns refcount (purged)", c.net_ns_ref),
        ("tcp_death_row.tw_refcount (overflow)", c.net_tw_refcount),
        (
            "tcp_death_row.sysctl_max_tw_buckets (overflow)",
            c.net_max_tw_buckets,
        ),
        ("tcp_sock.segs_out (connect_fail)", c.tcp_segs_out),
        (
            "SKB_DROP_REASON_TCP_RFC7323_TW_PAWS (paws_reject)",
            c.drop_tw_paws,
        ),
        (
            "tw_entry_stamp (snapshot age, reuse delay)",
            c.tw_entry_stamp,
        ),
    ] {
        if off == twtrace_common::NO_FIELD {
            kernel::partial(
                "every_hook_attaches_on_this_kernel",
                &format!("this kernel has no {field}"),
            );
        }
    }
}

#[test]
fn verifier_messages_name_the_missing_argument() {
    assert_eq!(
        missing_argument("reg type unsupported\nfunc 'kfree_skb' doesn't have 4-th argument\n"),
        Some(4)
    );
    assert_eq!(missing_argument("invalid bpf_context access off=16"), None);
    assert_eq!(missing_argument("doesn't have x-th argument"), None);
}

/// What the tracer found at load is what the probe reads from the same sources (BTF, /proc:
/// one implementation), and the events it says it can report follow the hooks that attached.
#[test]
fn features_at_load_agree_with_the_probe() {
    let t = twtrace::pipeline::tracer::Tracer::start(&twtrace::pipeline::tracer::TracerOptions {
        snapshot: false,
        ..Default::default()
    })
    .unwrap();
    let f = t.features();
    let p = twtrace::kernel::features::Features::probe().unwrap();
    assert!(f.loaded && !p.loaded && p.hooks.is_empty());
    assert_eq!(f.hz.value, p.hz.value);
    assert!(f.hz.known());
    assert_eq!(f.btf, p.btf);
    assert_eq!(f.reuse_rule, p.reuse_rule);
    assert_eq!(f.sysctls, p.sysctls);
    assert_eq!(f.tcpext_counters, p.tcpext_counters);
    assert_eq!(
        f.abort_events().is_ok(),
        p.abort_events().is_ok() && f.hook_on("tp_btf/tcp_send_reset")
    );
    for (loaded, probed) in [
        (f.rst_reason(), p.rst_reason()),
        (f.paws_events(), p.paws_events()),
    ] {
        assert_eq!(
            loaded.is_ok(),
            probed.is_ok() && f.hook_on("tp_btf/kfree_skb")
        );
    }
    assert_eq!(f.fn_tier(), f.fn_hook_on("tcp_twsk_unique"));
    assert_eq!(
        f.hook_table().iter().filter(|(_, on)| *on).count(),
        f.hooks.iter().filter(|h| h.result.is_ok()).count()
    );
}
