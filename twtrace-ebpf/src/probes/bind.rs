//! `syscalls:sys_enter_bind` / `sys_exit_bind` (classic tracepoints: they fire for bind() only,
//! where a raw syscall hook would run for every syscall of the machine): a bind() to port 0
//! that fails with EADDRINUSE. bind()-before-connect() takes its port from one pool shared by
//! every destination, so TIME_WAIT sockets toward any destination exhaust it; the failure is
//! bind()'s, not connect()'s.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use twtrace_common::{kind, AF_INET, AF_INET6, NO_FIELD};

use crate::record::{current_net, fill_conf, fill_task, noted, read, reserve, submit};
use crate::CONFIG;

/// bind() calls to port 0 in progress, per task (value: the address family).
#[map]
static BINDING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

const EADDRINUSE: i64 = 98;

#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn bind_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: the tracepoint record is read at the offset tracefs's format gave; the
    // sockaddr is user memory, read with bpf_probe_read_user.
    unsafe {
        let off = crate::record::hot!(tp_bind_addr);
        if off == NO_FIELD {
            return 0;
        }
        let Ok(addr) = ctx.read_at::<u64>(off as usize) else {
            return 0;
        };
        // sockaddr_in and sockaddr_in6 both start with the family, then the port.
        let Ok(head) = bpf_probe_read_user(addr as *const [u8; 4]) else {
            return 0;
        };
        let family = u16::from_ne_bytes([head[0], head[1]]);
        let port = u16::from_be_bytes([head[2], head[3]]);
        if port != 0 || (family != AF_INET as u16 && family != AF_INET6 as u16) {
            return 0;
        }
        noted(BINDING.insert(&bpf_get_current_pid_tgid(), &(family as u8), 0));
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn bind_exit(ctx: TracePointContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: as above; kernel memory through bpf_probe_read_kernel.
    unsafe {
        let Some(family) = BINDING.get(&key).copied() else {
            return 0;
        };
        let _ = BINDING.remove(&key);
        let cfg = CONFIG.load();
        let Ok(ret) = ctx.read_at::<i64>(cfg.tp_bind_ret as usize) else {
            return 0;
        };
        if ret != -EADDRINUSE {
            return 0;
        }
        let net = current_net(&cfg);
        if let Some(mut entry) = reserve() {
            let r = entry.as_mut_ptr();
            fill_task(r, kind::BIND_FAIL, family, EADDRINUSE as u32);
            if net != 0 {
                (*r).netns = read(net, cfg.net_ns_inum).unwrap_or(0);
            }
            (*r).cgroup = bpf_get_current_cgroup_id();
            fill_conf(&cfg, net, r);
            submit(entry);
        }
    }
    0
}
