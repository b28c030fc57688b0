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
    /// Keep events of workloads in one of these cgroups (paths) or below.
    pub cgroups: Vec<String>,
    /// Keep events of one of these containers (id prefix) or pods (UID or name).
    pub containers: Vec<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
            && self.netns.is_empty()
            && self.peers.is_empty()
            && self.cgroups.is_empty()
            && self.containers.is_empty()
    }

    /// The workload filters: an event without a known workload never matches one.
    fn workload_matches(&self, e: &Event) -> bool {
        if self.cgroups.is_empty() && self.containers.is_empty() {
            return true;
        }
        let Some(w) = &e.workload else { return false };
        (self.cgroups.is_empty() || self.cgroups.iter().any(|c| w.under(c)))
            && (self.containers.is_empty() || self.containers.iter().any(|c| w.is_container(c)))
    }

    /// Events without a socket (lost-event reports) always pass: they must never be hidden.
    pub fn matches(&self, e: &Event) -> bool {
        use crate::pipeline::event::Body;
        let in_netns = |n: u32| self.netns.is_empty() || self.netns.contains(&(n as u64));
        match &e.body {
            // A namespace's settings: context for whatever workload is filtered.
            Body::Netns { netns, .. } => return in_netns(*netns),
            // No socket: the namespace and the workload can be matched (a port or peer filter
            // keeps them, as it keeps every event without a socket).
            Body::BindFail { netns, .. } => return in_netns(*netns) && self.workload_matches(e),
            _ => {}
        }
        let Some(s) = e.sock() else { return true };
        self.workload_matches(e)
            && (self.ports.is_empty()
                || self.ports.contains(&s.lport)
                || self.ports.contains(&s.rport))
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
        Event::new(
            0,
            Body::Promote {
                sock: Sock::from_raw(1, netns, 2, l, lport, r, rport),
                timeout_ms: 0,
                age_ms: None,
            },
        )
    }

    #[test]
    fn filters_combine_with_and() {
        let f = Filter {
            ports: vec![80],
            netns: vec![7],
            peers: vec!["10.0.0.1".parse().unwrap()],
            ..Filter::default()
        };
        assert!(f.matches(&ev(7, 40000, 80, [10, 0, 0, 1])));
        assert!(f.matches(&ev(7, 80, 40000, [10, 0, 0, 1])));
        assert!(!f.matches(&ev(8, 40000, 80, [10, 0, 0, 1])));
        assert!(!f.matches(&ev(7, 40000, 81, [10, 0, 0, 1])));
        assert!(!f.matches(&ev(7, 40000, 80, [10, 0, 0, 2])));
        assert!(Filter::default().matches(&ev(1, 1, 1, [1, 1, 1, 1])));
        assert!(f.matches(&Event::new(0, Body::Lost { count: 3 })));
    }

    #[test]
    fn workload_filters_need_a_known_workload() {
        use crate::host::workload::Workload;
        use std::sync::Arc;
        let c = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let mut e = ev(7, 40000, 80, [10, 0, 0, 1]);
        let only_cg = Filter {
            cgroups: vec!["/system.slice".into()],
            ..Filter::default()
        };
        let only_ct = Filter {
            containers: vec![c[..12].into()],
            ..Filter::default()
        };
        assert!(!only_cg.matches(&e) && !only_ct.matches(&e), "no workload");
        e.workload = Some(Arc::new(Workload::from_path(
            5,
            &format!("/system.slice/docker-{c}.scope"),
        )));
        assert!(only_cg.matches(&e) && only_ct.matches(&e));
        e.workload = Some(Arc::new(Workload::unknown(5)));
        assert!(
            !only_cg.matches(&e) && !only_ct.matches(&e),
            "unknown workload"
        );
        let lost = Event::new(0, Body::Lost { count: 1 });
        assert!(only_cg.matches(&lost));
    }
}
