//! A deterministic, realistic mix of events for the trace-file tests and benchmark: a host
//! with a few network namespaces and processes, talking to a few hundred peers; sockets enter
//! TIME_WAIT and leave it ~60 s later (or early, by reuse), with the rarer kinds sprinkled in.

use crate::host::sysctls::Sysctls;
use crate::pipeline::event::{Body, Event, ExitReason, Refusal, Sock, Substate, Task};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// xorshift64*: small, fast and good enough to shape a workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `n` events of the mix, about 20 000 per second of trace time.
pub fn events(n: usize, seed: u64) -> Vec<Event> {
    Mix::new(seed).take(n).collect()
}

/// An endless stream of the mix (see [`events`]).
pub struct Mix {
    rng: Rng,
    now_ns: u64,
    peers: Vec<IpAddr>,
    locals: Vec<IpAddr>,
    netns: Vec<u32>,
    comms: Vec<Task>,
    /// Sockets in TIME_WAIT, oldest first.
    live: VecDeque<(Sock, Substate)>,
    /// Namespaces whose `netns` event was sent.
    announced: usize,
}

impl Mix {
    pub fn new(seed: u64) -> Mix {
        let mut rng = Rng(seed | 1);
        let peers = (0..300)
            .map(|i| {
                if i % 10 == 0 {
                    IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0,
                        i,
                        0,
                        0,
                        0,
                        rng.below(65536) as u16,
                    ))
                } else {
                    IpAddr::V4(Ipv4Addr::new(10, (i / 200) as u8, (i % 200) as u8, 7))
                }
            })
            .collect();
        Mix {
            rng,
            now_ns: 1_000_000_000_000,
            peers,
            locals: vec![
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0xff, 0, 0, 0, 10)),
            ],
            netns: vec![4026531840, 4026532301, 4026532417, 4026532590],
            comms: [
                "nginx",
                "curl",
                "python3",
                "envoy",
                "java",
                "node",
                "postgres",
                "redis-server",
            ]
            .iter()
            .enumerate()
            .map(|(i, c)| Task {
                pid: 1000 + i as u32 * 1379,
                comm: (*c).into(),
            })
            .collect(),
            live: VecDeque::new(),
            announced: 0,
        }
    }

    fn new_sock(&mut self) -> Sock {
        let peer = self.peers[self.rng.below(self.peers.len() as u64) as usize];
        let local = match peer {
            IpAddr::V6(_) => self.locals[2],
            IpAddr::V4(_) => self.locals[self.rng.below(2) as usize],
        };
        // tw_sock_TCP slab objects: 256-byte slots spread over a few GiB of the direct map.
        let tw = 0xffff_8881_0000_0000u64 + (self.rng.below(3 << 24) << 8);
        let server_side = self.rng.below(3) == 0;
        let (lport, rport) = if server_side {
            (443, 32768 + self.rng.below(28232) as u16)
        } else {
            (
                32768 + self.rng.below(28232) as u16,
                [80, 443, 5432, 6379][self.rng.below(4) as usize],
            )
        };
        Sock {
            tw,
            netns: self.netns[self.rng.below(self.netns.len() as u64) as usize],
            laddr: local,
            lport,
            raddr: peer,
            rport,
        }
    }

    fn task(&mut self) -> Option<Task> {
        if self.rng.below(10) == 0 {
            None
        } else {
            Some(self.comms[self.rng.below(self.comms.len() as u64) as usize].clone())
        }
    }
}

impl Iterator for Mix {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        // Each namespace's sysctls first, as the tracer reports them when it shows up.
        if self.announced < self.netns.len() {
            let netns = self.netns[self.announced];
            self.announced += 1;
            return Some(Event::new(
                self.now_ns,
                Body::Netns {
                    netns,
                    sysctls: Sysctls {
                        tw_reuse: Some(2),
                        tw_reuse_delay_ms: Some(1000),
                        max_tw_buckets: Some(262_144),
                        timestamps: Some(1),
                        fin_timeout_s: Some(60),
                        rfc1337: Some(0),
                        port_range: Some((32768, 60999)),
                    },
                },
            ));
        }
        // ~50 µs apart on average, jittered.
        self.now_ns += 1 + self.rng.below(100_000);
        let ts_ns = self.now_ns;
        let roll = self.rng.below(1000);
        // Keep about 2 000 sockets in TIME_WAIT so exits balance enters.
        let body = if roll < 470 || (self.live.len() < 2000 && roll < 900) {
            let sock = self.new_sock();
            let substate = if self.rng.below(8) == 0 {
                Substate::FinWait2
            } else {
                Substate::TimeWait
            };
            self.live.push_back((sock.clone(), substate));
            Body::Enter {
                sock,
                substate,
                timeout_ms: if substate == Substate::TimeWait {
                    60_000
                } else {
                    60_000 - self.rng.below(100)
                },
                task: self.task(),
                snapshot: false,
                age_ms: None,
            }
        } else if let Some((sock, substate)) = (roll < 930).then(|| self.live.pop_front()).flatten()
        {
            let reused = self.rng.below(10) == 0;
            Body::Exit {
                sock,
                substate,
                reason: if reused {
                    ExitReason::Reused
                } else {
                    ExitReason::Expired
                },
                // Lifetimes as a real host shows them (the generator's clock runs faster).
                lifetime_ms: Some(if reused {
                    1000 + self.rng.below(5000)
                } else {
                    60_000 + self.rng.below(2048)
                }),
                task: if reused { self.task() } else { None },
            }
        } else if roll < 960 {
            Body::Promote {
                sock: self.new_sock(),
                timeout_ms: 60_000,
                age_ms: None,
            }
        } else if roll < 975 {
            Body::ConnectFail {
                sock: self.new_sock(),
                errno: libc::EADDRNOTAVAIL,
                refusal: Refusal::ALL[self.rng.below(7) as usize],
                timewait: self.rng.below(30000) as u32,
                candidates: (self.rng.below(3) == 0).then(|| self.rng.below(30000) as u32),
                task: self.task(),
            }
        } else if roll < 985 {
            Body::Abort {
                sock: self.new_sock(),
                task: self.task(),
            }
        } else if roll < 993 {
            Body::Overflow {
                sock: self.new_sock(),
            }
        } else if roll < 999 {
            Body::PawsReject {
                sock: self.new_sock(),
            }
        } else {
            Body::Lost {
                count: 1 + self.rng.below(5),
            }
        };
        Some(Event::new(ts_ns, body))
    }
}
