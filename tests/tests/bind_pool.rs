//! The kernel's rules for the port pool of bind()-before-connect(), measured: a socket bound
//! to port 0 before connect() takes its port from one pool shared by every destination, and a
//! port held by a TIME_WAIT socket toward *any* destination is not free for it (EADDRINUSE
//! from bind(), not EADDRNOTAVAIL from connect()). `IP_BIND_ADDRESS_NO_PORT` defers the choice
//! to connect(), per 4-tuple. docs/lifecycle.md states the rules these tests establish.

use socket2::{Domain, SockAddr, Socket, Type};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use twtrace::experiments::workload::{serve, FirstCloser, Server};
use twtrace::host::netns::NetNs;
use twtrace::pipeline::event::{Body, Event};
use twtrace_tests::*;

/// `IP_BIND_ADDRESS_NO_PORT` (linux/in.h).
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bind {
    Plain,
    ReuseAddr,
    NoPort,
}

/// One client socket in `ns`: bind to 127.0.0.1:0 as `how` says, then connect to `dst`.
/// Returns the error number of the step that failed (`Err(("bind"|"connect", errno))`).
fn bind_connect(
    ns: &NetNs,
    how: Bind,
    dst: SocketAddr,
) -> Result<(Socket, SocketAddr), (&'static str, i32)> {
    ns.run(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        match how {
            Bind::Plain => {}
            Bind::ReuseAddr => s.set_reuse_address(true).unwrap(),
            Bind::NoPort => {
                let one: libc::c_int = 1;
                // SAFETY: a valid fd and a c_int option value.
                let rc = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&s),
                        libc::IPPROTO_IP,
                        IP_BIND_ADDRESS_NO_PORT,
                        &one as *const libc::c_int as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0);
            }
        }
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        s.bind(&SockAddr::from(any))
            .map_err(|e| ("bind", e.raw_os_error().unwrap_or(0)))?;
        s.connect_timeout(&SockAddr::from(dst), Duration::from_secs(2))
            .map_err(|e| ("connect", e.raw_os_error().unwrap_or(0)))?;
        let local = s.local_addr().unwrap().as_socket().unwrap();
        Ok((s, local))
    })
    .unwrap()
}

/// A namespace with `ports` ephemeral ports, TIME_WAIT sockets kept (no reuse), and two
/// servers (two destinations).
fn namespace(ports: u16) -> (NetNs, Server, Server) {
    let ns = NetNs::new().unwrap();
    ns.sysctl(
        "net.ipv4.ip_local_port_range",
        &format!("40000 {}", 40000 + ports - 1),
    )
    .unwrap();
    // Loopback TIME_WAIT sockets are reused by connect() under the default tw_reuse=2: off,
    // so that every one holds its port for the test's length.
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    let a = serve(
        &ns,
        "127.0.0.1:8001".parse().unwrap(),
        FirstCloser::Client,
        Duration::ZERO,
    )
    .unwrap();
    let b = serve(
        &ns,
        "127.0.0.1:8002".parse().unwrap(),
        FirstCloser::Client,
        Duration::ZERO,
    )
    .unwrap();
    (ns, a, b)
}

#[test]
fn timewait_toward_one_destination_blocks_bind_but_not_connect_elsewhere() {
    let (ns, a, b) = namespace(10);
    hold_ports(&ns, a.addr, 10);
    // connect() toward the same destination: no port (every 4-tuple is taken).
    let same = ns
        .run(move || TcpStream::connect_timeout(&a.addr, Duration::from_secs(2)))
        .unwrap();
    assert_eq!(
        same.map(|_| ()).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EADDRNOTAVAIL))
    );
    // connect() toward another destination: a different 4-tuple, the same port is fine.
    let other = ns
        .run(move || TcpStream::connect_timeout(&b.addr, Duration::from_secs(2)))
        .unwrap();
    let held = other.expect("plain connect() to another destination");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    // bind(0) first: one pool for every destination, and the TIME_WAIT sockets hold it all.
    for how in [Bind::Plain, Bind::ReuseAddr] {
        assert_eq!(
            bind_connect(&ns, how, b.addr).map(|_| ()),
            Err(("bind", libc::EADDRINUSE)),
            "{how:?}"
        );
    }
    // IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect(), per 4-tuple.
    let (_s, local) = bind_connect(&ns, Bind::NoPort, b.addr).expect("no-port bind");
    assert!((40000..40010).contains(&local.port()), "{local}");
}

/// The case: 20 ports, a client binding before it connects to two destinations
/// alternately, closing first. It runs out after 20 sockets in all; with
/// IP_BIND_ADDRESS_NO_PORT it makes 40 (20 per destination). twtrace reports each bind()
/// failure with the pool and the ports TIME_WAIT sockets hold in it, and the process as one
/// that binds before it connects.
#[test]
fn bind_before_connect_drains_one_pool_for_all_destinations() {
    fn run(how: Bind) -> (usize, Vec<(&'static str, i32)>, Vec<Event>) {
        let (ns, a, b) = namespace(20);
        let tracer = trace(&ns);
        let (mut made, mut failed) = (0, Vec::new());
        for i in 0..60 {
            let dst = if i % 2 == 0 { a.addr } else { b.addr };
            match bind_connect(&ns, how, dst) {
                Ok((s, _)) => {
                    made += 1;
                    drop(s); // we close first: our side keeps the TIME_WAIT socket
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => failed.push(e),
            }
        }
        let want = failed.len();
        tracer.wait_for(SOON, |ev| count_kind(ev, "bind_fail") >= want);
        std::thread::sleep(Duration::from_millis(200));
        let (ev, summary) = tracer.stop().unwrap();
        assert_eq!(summary.lost, 0);
        (made, failed, ev)
    }
    let me = std::process::id();
    let (made, failed, ev) = run(Bind::Plain);
    let early = exits(&ev).len();
    assert_eq!(made, 20 + early, "{failed:?}");
    assert!(
        failed.iter().all(|f| *f == ("bind", libc::EADDRINUSE)),
        "{failed:?}"
    );
    let binds: Vec<_> = ev
        .iter()
        .filter_map(|e| match &e.body {
            Body::BindFail {
                errno,
                timewait,
                ports,
                task,
                ..
            } => Some((*errno, *timewait, *ports, task.as_ref().map(|t| t.pid))),
            _ => None,
        })
        .collect();
    assert_eq!(binds.len(), failed.len(), "{ev:#?}");
    for b in &binds {
        assert_eq!(*b, (libc::EADDRINUSE, 20, Some(20), Some(me)), "{binds:?}");
    }
    // The failing bind() names the calling task's cgroup (ours), as the kernel has it.
    let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let v2 = ours.lines().find_map(|l| l.strip_prefix("0::"));
    let ours_id = v2.and_then(|p| twtrace::host::workload::Workloads::host().id_of(p));
    if ours_id.is_none() {
        kernel::partial(
            "bind_before_connect_drains_one_pool_for_all_destinations",
            "no cgroup v2 hierarchy mounted: the bind_fail's cgroup id is not compared",
        );
    }
    for e in ev.iter().filter(|e| e.kind() == "bind_fail") {
        assert_ne!(e.cgroup, 0, "{e:#?}");
        if let Some(id) = ours_id {
            assert_eq!(e.cgroup, id, "{e:#?}");
            assert!(
                e.workload.as_ref().is_some_and(|w| w.path.is_some()),
                "{e:#?}"
            );
        }
    }
    let bound: Vec<_> = ev
        .iter()
        .filter_map(|e| match &e.body {
            Body::BoundConnect { task, sock } => Some((task.as_ref().map(|t| t.pid), sock.lport)),
            _ => None,
        })
        .collect();
    assert_eq!(bound.len(), 1, "once per process: {bound:?}");
    assert_eq!(bound[0].0, Some(me));
    assert!((40000..40020).contains(&bound[0].1), "{bound:?}");

    let (made, failed, ev) = run(Bind::NoPort);
    // A TIME_WAIT socket reset at birth (seen rarely on a loaded machine, reported as `rst`)
    // gives its port back once: each such death is one connection more.
    let early = exits(&ev).len();
    if early > 0 {
        eprintln!(
            "bind_pool: {early} TIME_WAIT socket(s) died early: {:?}",
            exits(&ev)
        );
    }
    assert_eq!(made, 40 + early, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|f| *f == ("connect", libc::EADDRNOTAVAIL)),
        "{failed:?}"
    );
    // The port was chosen at connect(): nothing bound first, no bind failure.
    assert_eq!(count_kind(&ev, "bind_fail"), 0, "{ev:#?}");
    assert_eq!(count_kind(&ev, "bind_connect"), 0, "{ev:#?}");
    assert_eq!(count_kind(&ev, "connect_fail"), failed.len());
}
