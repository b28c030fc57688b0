//! Event filters shared by the live printer, `record` and `report`.

use crate::pipeline::event::Event;
use std::net::IpAddr;

#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Keep sockets whose local or remote port is one of these.
    pub ports: Vec<u16>,
    /// Keep sockets in one of these network namespaces (inode numbers).
    pub netns: Vec<u64>,
    /// Keep sockets whose remote address is one of these.
    pub peers: Vec<IpAddr>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.netns.is_empty() && self.peers.is_empty()
    }

    /// Events without a socket (lost-event reports) always pass: they must never be hidden.
    pub fn matches(&self, e: &Event) -> bool {
        use crate::pipeline::event::Body;
        if let Body::Netns { netns, .. } | Body::BindFail { netns, .. } = &e.body {
            // No socket: only the namespace can be matched (a port or peer filter keeps them,
            // as it keeps every event without a socket).
            return self.netns.is_empty() || self.netns.contains(&(*netns as u64));
        }
        let Some(s) = e.sock() else { return true };
        (self.ports.is_empty() || self.ports.contains(&s.lport) || self.ports.contains(&s.rport))
            && (self.netns.is_empty() || self.netns.contains(&(s.netns as u64)))
            && (self.peers.is_empty() || self.peers.contains(&s.raddr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::event::{Body, Sock};

    fn ev(netns: u32, lport: u16, rport: u16, raddr: [u8; 4]) -> Event {
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&raddr);
        let mut l = [0u8; 16];
        l[..4].copy_from_slice(&[127, 0, 0, 1]);
        Event {
            ts_ns: 0,
            body: Body::Promote {
                sock: Sock::from_raw(1, netns, 2, l, lport, r, rport),
                timeout_ms: 0,
                age_ms: None,
            },
        }
    }

    #[test]
    fn filters_combine_with_and() {
        let f = Filter {
            ports: vec![80],
            netns: vec![7],
            peers: vec!["10.0.0.1".parse().unwrap()],
        };
        assert!(f.matches(&ev(7, 40000, 80, [10, 0, 0, 1])));
        assert!(f.matches(&ev(7, 80, 40000, [10, 0, 0, 1])));
        assert!(!f.matches(&ev(8, 40000, 80, [10, 0, 0, 1])));
        assert!(!f.matches(&ev(7, 40000, 81, [10, 0, 0, 1])));
        assert!(!f.matches(&ev(7, 40000, 80, [10, 0, 0, 2])));
        assert!(Filter::default().matches(&ev(1, 1, 1, [1, 1, 1, 1])));
        assert!(f.matches(&Event {
            ts_ns: 0,
            body: Body::Lost { count: 3 }
        }));
    }
}
