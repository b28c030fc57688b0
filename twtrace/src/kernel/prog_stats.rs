//! The kernel's own count of runs of twtrace's programs that it skipped.
//!
//! A tracing program is never re-entered on a CPU where it is already running
//! (`prog->active` in `__bpf_trace_run`): the nested run is skipped and only counted, in the
//! program's `recursion_misses`. A skipped run is an event twtrace did not see (a state
//! change, a timer start), so the count is read and shown next to the lost events.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};

/// `recursion_misses` of the program `fd` (0 on kernels before 5.12, which do not count).
pub fn recursion_misses(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: both are plain C structs of integers, for which all-zero is valid (and what the
    // syscall expects in the fields not set).
    let mut info: bpf_prog_info = unsafe { zeroed() };
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most `info_len` bytes into `info`, which lives
    // until the call returns; `attr` is a valid bpf_attr of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_int,
            std::ptr::from_mut(&mut attr),
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}
