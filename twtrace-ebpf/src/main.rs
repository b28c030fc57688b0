//! twtrace's kernel programs.
//!
//! One program per hook, each short: filter first (a timer is only interesting when its
//! `function` is `tw_timer_handler`), then write one fixed-size record in place into the ring
//! buffer. The kernel side only correlates what must be seen in the moment (per-CPU last
//! birth/detach and count of timer events, per-task connect()) and flags records with it, and
//! reads the namespace's settings where a record's meaning depends on them (`record::fill_conf`);
//! deciding what a record means (birth, re-arm, expiry, each death reason, each refusal) is
//! userspace's job (`twtrace::pipeline::lifecycle`), where it is unit-tested.
//! docs/lifecycle.md lists the evidence.
//!
//! Layout: `record` writes records (the one reserve → fill → submit path (`reserve`, `submit`)), `correlate` holds the
//! per-CPU and per-task memory, `probes/` one file per hook group.
//!
//! No structure layout is compiled in: every offset comes from `CONFIG`, which userspace fills
//! from the running kernel's BTF before loading.
#![no_std]
#![no_main]

mod correlate;
mod floor;
mod probes;
mod record;

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
    Global,
};
use twtrace_common::Config;

#[no_mangle]
static CONFIG: Global<Config> = Global::new(Config::ZERO);

/// 4 MiB: ~30 000 records of 136 bytes. Userspace may resize it at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// `twtrace_common::counter` slots, per CPU.
#[map]
static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(twtrace_common::counter::COUNT, 0);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
