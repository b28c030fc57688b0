//! Claim 3: `tcp_tw_recycle`.

use super::evidence::{expired_in, lives, Life};
use super::{fmt_s, spread_json, Claim, ClaimId, Interrupted, Spread, Verdict, Watch, Wheel};
use crate::experiments::workload::{serve, FirstCloser};
use crate::host::netns::NetNs;
use crate::pipeline::event::Substate;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `tcpi_rto` (µs) of a connected socket.
fn tcp_info_rto_us(s: &TcpStream) -> Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(TCP_INFO)");
    }
    Ok(info.tcpi_rto)
}

/// `tcp_time_wait`'s floor: 3.5×RTO, computed in jiffies as the kernel does
/// (`(rto << 2) - (rto >> 1)`), returned in ms.
pub fn rto_floor_ms(rto_us: u64, hz: u64) -> u64 {
    let j = (rto_us * hz).div_ceil(1_000_000);
    ((j << 2) - (j >> 1)) * 1000 / hz
}

const N: usize = 3;
const RTO_MIN_MS: u64 = 1000;

/// One connection: (local address, destination, RTO in µs right after connect()).
type Conn = (SocketAddr, SocketAddr, u32);

pub(super) fn recycle(w: &Watch, wheel: Wheel) -> Result<Claim> {
    let recycle_exists = w.features().has_sysctl("net.ipv4.tcp_tw_recycle");
    let [cli, srv] = w.netns_n::<2>()?;
    let fin_s = two_servers(&cli, &srv)?;
    let floor_ms = RTO_MIN_MS * 7 / 2;
    // The server holds its end open past every floor: the client sockets expire in FIN_WAIT2.
    let server = serve(
        &srv,
        "0.0.0.0:8080".parse()?,
        FirstCloser::Client,
        Duration::from_millis(floor_ms + 3000),
    )?;
    let dests: [SocketAddr; 2] = ["198.18.0.2:8080".parse()?, "198.18.0.3:8080".parse()?];
    let conns = connect_each(w, &cli, dests)?;
    let ev = w.wait_for(
        &[&cli],
        Duration::from_millis(wheel.window(floor_ms).1 + 3000),
        |ev| lives(ev).iter().filter(|l| l.exit.is_some()).count() >= 2 * N,
    )?;
    drop(server);
    let lv = lives(&ev);
    let base = Group::of(&conns, &lv, dests[0], wheel, fin_s);
    let big = Group::of(&conns, &lv, dests[1], wheel, fin_s);
    // The floor acts if the armed timeout is 3.5× the RTO measured on that socket (±2 jiffies of
    // the RTO changing with the FIN's RTT sample) and lifetimes follow the armed timeout.
    let tol = 2 * wheel.jiffy_ms() * 4;
    let floor_acts = big.follows(wheel, tol)
        && big.armed.iter().all(|a| *a > fin_s * 1000)
        && big.armed.iter().all(|a| *a + tol >= floor_ms);
    let verdict = if recycle_exists {
        Verdict::NotApplicable
    } else if floor_acts {
        Verdict::Changed
    } else {
        Verdict::Refuted
    };
    Ok(Claim {
        id: ClaimId::Recycle,
        verdict,
        seed: ClaimId::Recycle.seed().into(),
        measured: json!({
            "tcp_tw_recycle_exists": recycle_exists,
            "tcp_fin_timeout_s": fin_s,
            "default_rto": base.json(None),
            "large_rto": big.json(Some(RTO_MIN_MS)),
            "hz": wheel.hz,
        }),
        observed: observed(recycle_exists, fin_s, &base, &big),
        explanation: explanation(verdict, &base, &big),
    })
}

/// Two server addresses over one veth, the route to the second raising the RTO floor; and
/// `tcp_fin_timeout` as low as the kernel takes (returned, s), so that the floor is what shows.
fn two_servers(cli: &NetNs, srv: &NetNs) -> Result<u64> {
    cli.veth_to("vfc", "198.18.0.1/29", srv, "vfs", "198.18.0.2/29")?;
    srv.ip(&["addr", "add", "198.18.0.3/29", "dev", "vfs"])?;
    cli.ip(&[
        "route",
        "add",
        "198.18.0.3/32",
        "dev",
        "vfc",
        "rto_min",
        &format!("{RTO_MIN_MS}ms"),
    ])?;
    Ok(if cli.sysctl("net.ipv4.tcp_fin_timeout", "0").is_ok() {
        0
    } else {
        cli.sysctl("net.ipv4.tcp_fin_timeout", "1")?;
        1
    })
}

/// `N` connections to each of `dests`, closed at once, each with its RTO.
fn connect_each(w: &Watch, cli: &NetNs, dests: [SocketAddr; 2]) -> Result<Vec<Conn>> {
    let cancel = w.cancel_flag();
    cli.run(move || -> Result<Vec<Conn>> {
        let mut out = Vec::new();
        for dst in dests {
            for _ in 0..N {
                if cancel.load(Ordering::Relaxed) {
                    return Err(Interrupted.into());
                }
                let s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
                    .with_context(|| format!("connecting to {dst}"))?;
                let rto = tcp_info_rto_us(&s)?;
                out.push((s.local_addr()?, dst, rto));
            }
        }
        Ok(out)
    })?
}

/// The connections to one destination: RTOs, the FIN_WAIT2 timeouts armed and predicted, and
/// the lifetimes of those that expired in FIN_WAIT2.
struct Group {
    rto_us: Vec<u64>,
    armed: Vec<u64>,
    life: Vec<u64>,
    predicted: Vec<u64>,
}

impl Group {
    fn of(conns: &[Conn], lv: &[Life], dst: SocketAddr, wheel: Wheel, fin_s: u64) -> Group {
        let mine: Vec<&Conn> = conns.iter().filter(|c| c.1 == dst).collect();
        let rto_us: Vec<u64> = mine.iter().map(|c| c.2 as u64).collect();
        let ls: Vec<&Life> = lv
            .iter()
            .filter(|l| mine.iter().any(|c| c.0 == l.local))
            .collect();
        Group {
            predicted: rto_us
                .iter()
                .map(|r| rto_floor_ms(*r, wheel.hz).max(fin_s * 1000))
                .collect(),
            rto_us,
            armed: ls
                .iter()
                .filter(|l| l.birth_substate == Substate::FinWait2)
                .map(|l| l.armed_ms)
                .collect(),
            life: ls
                .iter()
                .filter_map(|l| expired_in(l, Substate::FinWait2))
                .collect(),
        }
    }

    /// Every socket armed as predicted (within `tol` ms) and lived as armed.
    fn follows(&self, wheel: Wheel, tol: u64) -> bool {
        self.life.len() == N
            && self.armed.len() == N
            && self
                .armed
                .iter()
                .zip(&self.predicted)
                .all(|(a, p)| a.abs_diff(*p) <= tol)
            && self
                .life
                .iter()
                .zip(&self.armed)
                .all(|(l, a)| wheel.within(*a, *l))
    }

    fn json(&self, route_rto_min_ms: Option<u64>) -> Value {
        let mut v = json!({
            "n": self.life.len(),
            "rto_us": spread_json(&self.rto_us),
            "predicted_ms": spread_json(&self.predicted),
            "armed_ms": spread_json(&self.armed),
            "lifetime_ms": spread_json(&self.life),
        });
        if let Some(ms) = route_rto_min_ms {
            v["route_rto_min_ms"] = json!(ms);
        }
        v
    }
}

fn med(v: &[u64]) -> u64 {
    Spread::of(v).map(|s| s.median).unwrap_or(0)
}

fn observed(recycle_exists: bool, fin_s: u64, base: &Group, big: &Group) -> String {
    format!(
        "tcp_tw_recycle {}; FIN_WAIT2 timewait sockets (tcp_fin_timeout={fin_s}): RTO {} ms → \
         armed {}, lived {}; RTO {} ms (route rto_min {RTO_MIN_MS} ms) → armed {}, lived {}",
        if recycle_exists {
            "exists"
        } else {
            "does not exist"
        },
        med(&base.rto_us) / 1000,
        fmt_s(med(&base.armed)),
        Spread::of(&base.life)
            .map(|s| s.secs())
            .unwrap_or("n=0".into()),
        med(&big.rto_us) / 1000,
        fmt_s(med(&big.armed)),
        Spread::of(&big.life)
            .map(|s| s.secs())
            .unwrap_or("n=0".into()),
    )
}

fn explanation(verdict: Verdict, base: &Group, big: &Group) -> String {
    match verdict {
        Verdict::NotApplicable => "this kernel still has tcp_tw_recycle (before 4.12); twtrace \
                                   measures the 3.5×RTO floor only where it still acts (FIN_WAIT2)"
            .to_string(),
        Verdict::Changed => format!(
            "tcp_tw_recycle was removed in 4.12, so TIME_WAIT is never cut to 3.5×RTO; 3.5×RTO \
             survives only as the floor of the FIN_WAIT2-substate timeout (max(tcp_fin_timeout, \
             3.5×RTO)), {} here with the default RTO and {} with rto_min {RTO_MIN_MS} ms",
            fmt_s(med(&base.armed)),
            fmt_s(med(&big.armed))
        ),
        _ => "tcp_tw_recycle is gone, and the FIN_WAIT2 timeout did not follow 3.5×RTO either \
              (see figures)"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rto_floor_like_the_kernel() {
        // 200 ms at HZ=250 = 50 jiffies → 200 - 25 = 175 jiffies = 700 ms.
        assert_eq!(rto_floor_ms(200_000, 250), 700);
        assert_eq!(rto_floor_ms(1_000_000, 250), 3500);
    }
}
