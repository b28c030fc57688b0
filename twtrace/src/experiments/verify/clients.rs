//! Workload pieces: clients that connect and close.

use super::{Interrupted, Watch};
use crate::host::netns::NetNs;
use anyhow::{Context, Result};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A service port outside the narrowed ephemeral ranges (a server on port 0 would take one
/// of the few ephemeral ports itself).
pub(super) const SERVICE_PORT: u16 = 8080;

/// How a client ends its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Close {
    /// close(): FIN, so the client closes first.
    Fin,
    /// SO_LINGER {1, 0} then close().
    Linger0,
}

/// Makes `n` connections from inside `ns` to `dst`, `spacing` apart, each closed at once as
/// `how` says. Returns the client-side local addresses.
pub(super) fn connect_close(
    w: &Watch,
    ns: &NetNs,
    dst: SocketAddr,
    n: usize,
    spacing: Duration,
    how: Close,
) -> Result<Vec<SocketAddr>> {
    let cancel = w.cancel_flag();
    ns.run(move || -> Result<Vec<SocketAddr>> {
        let mut locals = Vec::with_capacity(n);
        for i in 0..n {
            if cancel.load(Ordering::Relaxed) {
                return Err(Interrupted.into());
            }
            if i > 0 {
                std::thread::sleep(spacing);
            }
            let s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
                .with_context(|| format!("connecting to {dst}"))?;
            locals.push(s.local_addr()?);
            if how == Close::Linger0 {
                set_linger_zero(&s)?;
            }
            drop(s);
        }
        Ok(locals)
    })?
}

/// SO_LINGER {l_onoff = 1, l_linger = 0}: close() will reset the connection.
pub(super) fn set_linger_zero(s: &TcpStream) -> Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option buffer.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt(SO_LINGER)");
    }
    Ok(())
}
