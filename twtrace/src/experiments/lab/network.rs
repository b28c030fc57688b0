//! The lab's namespaces: two clients, a masquerading router, a server.

use super::{
    CLIENT_PORTS, CONNTRACK_CLOSE_S, CONNTRACK_TIME_WAIT_S, NAT_PORTS, PORT_SERVER_FIRST,
    ROUTER_OUT, SERVER,
};
use crate::experiments::verify::Watch;
use crate::host::netns::NetNs;
use anyhow::{bail, Result};
use std::process::{Command, Stdio};

pub(super) struct Lab {
    pub(super) c1: NetNs,
    pub(super) c2: NetNs,
    pub(super) r: NetNs,
    pub(super) s: NetNs,
    pub(super) nat_tool: String,
}

impl Lab {
    pub(super) fn ns(&self, name: &str) -> &NetNs {
        match name {
            "c1" => &self.c1,
            "c2" => &self.c2,
            "router" => &self.r,
            _ => &self.s,
        }
    }

    pub(super) fn build(w: &Watch) -> Result<Lab> {
        let [c1, c2, r, s] = w.netns_n::<4>()?;
        c1.veth_to("c1r", "198.18.1.2/24", &r, "rc1", "198.18.1.1/24")?;
        c2.veth_to("c2r", "198.18.2.2/24", &r, "rc2", "198.18.2.1/24")?;
        r.veth_to(
            "rs",
            &format!("{ROUTER_OUT}/24"),
            &s,
            "sr",
            &format!("{SERVER}/24"),
        )?;
        c1.ip(&["route", "add", "default", "via", "198.18.1.1"])?;
        c2.ip(&["route", "add", "default", "via", "198.18.2.1"])?;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        let nat_tool = masquerade(&r)?;
        r.sysctl(
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
            CONNTRACK_TIME_WAIT_S,
        )?;
        r.sysctl(
            "net.netfilter.nf_conntrack_tcp_timeout_close",
            CONNTRACK_CLOSE_S,
        )?;
        // c1 may take over its TIME_WAIT sockets toward any peer; c2 keeps the default (2:
        // loopback only). Both keep the default tcp_timestamps=1: a random timestamp offset
        // per connection (6.18 draws it per 4-tuple), so no two clients', nor two of one
        // client's connections', clocks agree.
        c1.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        c2.sysctl("net.ipv4.tcp_tw_reuse", "2")?;
        for c in [&c1, &c2] {
            c.sysctl(
                "net.ipv4.ip_local_port_range",
                &format!("{} {}", CLIENT_PORTS.0, CLIENT_PORTS.1),
            )?;
        }
        Ok(Lab {
            c1,
            c2,
            r,
            s,
            nat_tool,
        })
    }
}

/// Installs the router's masquerade rules with nft, else iptables; returns which was used.
pub(super) fn masquerade(r: &NetNs) -> Result<String> {
    let ruleset = format!(
        "table ip twtrace_lab {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"rs\" tcp dport {PORT_SERVER_FIRST} masquerade to :{}-{}\n\
         \t\toifname \"rs\" masquerade\n\
         \t}}\n\
         }}\n",
        NAT_PORTS.0, NAT_PORTS.1
    );
    let nft = r.run(move || -> std::io::Result<std::process::Output> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(ruleset.as_bytes())?;
        }
        child.wait_with_output()
    })?;
    let nft_err = match nft {
        Ok(o) if o.status.success() => return Ok("nftables".into()),
        Ok(o) => format!("nft: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("nft: {e}"),
    };
    let ports = format!("{}-{}", NAT_PORTS.0, NAT_PORTS.1);
    let dport = PORT_SERVER_FIRST.to_string();
    let ipt = r.run(move || -> std::io::Result<()> {
        let rules: [Vec<&str>; 2] = [
            vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "rs",
                "-p",
                "tcp",
                "--dport",
                &dport,
                "-j",
                "MASQUERADE",
                "--to-ports",
                &ports,
            ],
            vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "rs",
                "-j",
                "MASQUERADE",
            ],
        ];
        for args in rules {
            let o = Command::new("iptables").args(args).output()?;
            if !o.status.success() {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&o.stderr).trim().to_string(),
                ));
            }
        }
        Ok(())
    })?;
    match ipt {
        Ok(()) => Ok("iptables".into()),
        Err(e) => bail!(
            "cannot set up the router's masquerade ({nft_err}; iptables: {e}): install the \
             nftables package (or iptables)"
        ),
    }
}
