//! Bounded TCP workloads inside a [`NetNs`]: a server and a client that make connections end
//! with TIME_WAIT on the side chosen to close first. Shared by tests, `verify` and benchmarks.
//!
//! Every loop here is bounded in count and in time.

use crate::host::netns::NetNs;
use anyhow::{Context, Result};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which side closes first, and so ends in TIME_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstCloser {
    Client,
    Server,
}

/// Longest any single socket operation of a workload may block.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// Starts a server on `bind` inside `ns`. With `FirstCloser::Client` each connection is read to
/// EOF and then closed after `close_delay` (a delay leaves the client's timewait socket in its
/// FIN_WAIT2 substate that long); with `FirstCloser::Server` it is closed at once.
pub fn serve(
    ns: &NetNs,
    bind: SocketAddr,
    first: FirstCloser,
    close_delay: Duration,
) -> Result<Server> {
    let listener = ns
        .run(move || TcpListener::bind(bind))?
        .with_context(|| format!("binding {bind}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let (s, a) = (stop.clone(), accepted.clone());
    let thread = std::thread::spawn(move || {
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        // On stop, connections already queued are still served: closing the listener with
        // them in its queue would reset them (and kill the clients' timewait sockets).
        let mut draining = false;
        loop {
            if !draining && s.load(Ordering::Relaxed) {
                draining = true;
            }
            match listener.accept() {
                Ok((conn, _)) => {
                    a.fetch_add(1, Ordering::Relaxed);
                    let _ = conn.set_nonblocking(false);
                    match first {
                        FirstCloser::Server => drop(conn),
                        FirstCloser::Client if close_delay.is_zero() => {
                            drain_then_close(conn, Duration::ZERO)
                        }
                        FirstCloser::Client => workers.push(std::thread::spawn(move || {
                            drain_then_close(conn, close_delay)
                        })),
                    }
                }
                Err(_) if draining => break,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        for w in workers {
            let _ = w.join();
        }
    });
    Ok(Server {
        addr,
        stop,
        accepted,
        thread: Some(thread),
    })
}

fn drain_then_close(mut conn: TcpStream, delay: Duration) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    std::thread::sleep(delay);
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes `n` connections from inside `ns` to `server`, one after another, closing as `first`
/// says. Returns each connection's client-side local address.
pub fn connect_many(
    ns: &NetNs,
    server: SocketAddr,
    n: usize,
    first: FirstCloser,
) -> Result<Vec<SocketAddr>> {
    ns.run(move || -> Result<Vec<SocketAddr>> {
        let mut locals = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = TcpStream::connect_timeout(&server, IO_TIMEOUT)
                .with_context(|| format!("connecting to {server}"))?;
            locals.push(s.local_addr()?);
            if first == FirstCloser::Server {
                // Wait for the server's FIN so that it, not we, closed first.
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf);
            }
            drop(s);
        }
        Ok(locals)
    })?
}
