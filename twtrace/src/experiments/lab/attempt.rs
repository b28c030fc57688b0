//! One client's connection attempt, timed, with its TCP timestamp.

use super::Attempt;
use crate::experiments::workload::FirstCloser;
use crate::host::netns::NetNs;
use crate::kernel::sysinfo::monotonic_ns;
use anyhow::Result;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// `TCP_TIMESTAMP`: the connection's current TCP timestamp value (clock + its offset).
pub(super) fn tcp_timestamp(s: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut v: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_TIMESTAMP,
            (&mut v as *mut u32).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

/// One connection from `ns` to `dst`: connect (retrying EADDRNOTAVAIL for `retry_for`), then
/// close first, or wait for the server's close first.
pub(super) fn attempt(
    ns: &NetNs,
    client: &'static str,
    dst: SocketAddr,
    first: FirstCloser,
    retry_for: Duration,
) -> Result<Attempt> {
    ns.run(move || {
        let start_ns = monotonic_ns();
        let t0 = Instant::now();
        let mut a = Attempt {
            client,
            start_ns,
            end_ns: 0,
            local: None,
            connect_ms: 0,
            addrnotavail_retries: 0,
            errno: None,
            tsval: None,
            tsval_ns: 0,
            nat_port: None,
            met: Vec::new(),
        };
        loop {
            let c0 = Instant::now();
            // Long enough for three SYN retransmissions (1 s, 2 s and 4 s apart): each may be
            // translated onto another port whose TIME_WAIT drops it too (seen on 6.1: three in
            // a row, under emulation).
            match TcpStream::connect_timeout(&dst, Duration::from_secs(8)) {
                Ok(mut s) => {
                    a.connect_ms = c0.elapsed().as_millis() as u64;
                    a.local = s.local_addr().ok();
                    a.tsval = tcp_timestamp(&s);
                    a.tsval_ns = monotonic_ns();
                    if first == FirstCloser::Server {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                        let mut buf = [0u8; 64];
                        let _ = s.read(&mut buf);
                    }
                    drop(s);
                    break;
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                        && t0.elapsed() < retry_for =>
                {
                    a.addrnotavail_retries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    a.connect_ms = c0.elapsed().as_millis() as u64;
                    a.errno = Some(e.raw_os_error().unwrap_or(0));
                    break;
                }
            }
        }
        a.end_ns = monotonic_ns();
        a
    })
}
