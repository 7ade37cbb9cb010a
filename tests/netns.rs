//! Real network partitions for the fault tests: each node runs in its own
//! network namespace, joined to the test's bridge by a veth pair, so that
//! a node can be cut off from its peers (its packets to and from them are
//! dropped inside its namespace) while clients still reach it, and healed.
//!
//! Needs root (or CAP_NET_ADMIN) and `ip`/`iptables` from iproute2 and
//! iptables; `Net::available()` says whether this machine has them, and the
//! tests that need it print SKIPPED otherwise. Everything made is removed
//! on drop (namespaces, bridge, veths, the one FORWARD rule that lets the
//! bridge's own traffic through), by name.

use std::net::Ipv4Addr;
use std::process::Command;

const BOTH: &[(&str, &str)] = &[("INPUT", "-s"), ("OUTPUT", "-d")];

/// One test's network: a bridge (the host side, `10.<a>.<b>.1`) and a
/// namespace per node (`10.<a>.<b>.<10 + id>`).
pub struct Net {
    tag: String,
    prefix: [u8; 3],
    nodes: Vec<u64>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Whether namespaces can be made here (root, iproute2, iptables).
    pub fn available() -> Result<(), String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static PROBE: AtomicU32 = AtomicU32::new(0);
        let probe = format!(
            "glp{}-{}",
            std::process::id(),
            PROBE.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &probe])?;
        let ipt = run(&["ip", "netns", "exec", &probe, "iptables", "-L", "-n"]);
        let _ = run(&["ip", "netns", "del", &probe]);
        ipt
    }

    /// A bridge for this test; names and addresses come from the PID and a
    /// counter so that concurrent tests do not meet.
    pub fn new() -> Result<Net, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{n}", pid % 0xfffff);
        let x = pid.wrapping_mul(31).wrapping_add(n * 7919) % (200 * 250);
        let prefix = [10, 100 + (x / 250) as u8 % 150, (x % 250) as u8];
        let net = Net {
            tag,
            prefix,
            nodes: Vec::new(),
        };
        let br = net.bridge();
        run(&["ip", "link", "add", &br, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.host_ip()),
            "dev",
            &br,
        ])?;
        run(&["ip", "link", "set", &br, "up"])?;
        // Where bridged traffic passes the host's iptables (Docker turns
        // that on, with a FORWARD policy of DROP), let ours through.
        run(&[
            "iptables", "-I", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ])?;
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("glb{}", self.tag)
    }
    fn ns(&self, id: u64) -> String {
        format!("gln{}-{id}", self.tag)
    }
    fn host_veth(&self, id: u64) -> String {
        format!("glh{}{id}", self.tag)
    }

    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 1)
    }

    pub fn ip(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(
            self.prefix[0],
            self.prefix[1],
            self.prefix[2],
            10 + id as u8,
        )
    }

    /// Make node `id`'s namespace, wired to the bridge (idempotent).
    pub fn add(&mut self, id: u64) -> Result<(), String> {
        if self.nodes.contains(&id) {
            return Ok(());
        }
        let (ns, host) = (self.ns(id), self.host_veth(id));
        let inner = format!("gli{}{id}", self.tag);
        run(&["ip", "netns", "add", &ns])?;
        self.nodes.push(id);
        run(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", &inner,
        ])?;
        run(&["ip", "link", "set", &inner, "netns", &ns])?;
        run(&["ip", "link", "set", &host, "master", &self.bridge()])?;
        run(&["ip", "link", "set", &host, "up"])?;
        let ip = format!("{}/24", self.ip(id));
        for args in [
            vec!["ip", "addr", "add", ip.as_str(), "dev", inner.as_str()],
            vec!["ip", "link", "set", inner.as_str(), "up"],
            vec!["ip", "link", "set", "lo", "up"],
        ] {
            let mut full = vec!["ip", "netns", "exec", ns.as_str()];
            full.extend(args);
            run(&full)?;
        }
        Ok(())
    }

    /// The command prefix that runs a program in node `id`'s namespace.
    pub fn exec_prefix(&self, id: u64) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(id)]
    }

    /// Cut node `id` off from the other nodes, both ways; clients (the
    /// host side of the bridge) still reach it.
    pub fn cut(&self, id: u64) {
        for other in self.peers(id) {
            self.drop_between(id, other, BOTH, &[]);
        }
    }

    /// Cut only the link between nodes `id` and `other`, both ways: each
    /// still reaches the third node (a partial partition).
    pub fn cut_link(&self, id: u64, other: u64) {
        self.drop_between(id, other, BOTH, &[]);
    }

    /// Drop what node `id` sends to node `to`; the other way still works
    /// (an asymmetric partition).
    pub fn cut_one_way(&self, id: u64, to: u64) {
        self.drop_between(id, to, &[("OUTPUT", "-d")], &[]);
    }

    /// Drop `percent`% of the packets node `id` exchanges with its peers, at
    /// random (a lossy link; `tc netem` would add delay, but its kernel
    /// module is not on every machine, iptables' statistic match is).
    pub fn lossy(&self, id: u64, percent: u32) {
        let p = format!("{:.2}", percent as f64 / 100.0);
        for other in self.peers(id) {
            self.drop_between(
                id,
                other,
                BOTH,
                &["-m", "statistic", "--mode", "random", "--probability", &p],
            );
        }
    }

    fn peers(&self, id: u64) -> Vec<u64> {
        self.nodes.iter().copied().filter(|&o| o != id).collect()
    }

    /// DROP rules in node `id`'s namespace for its packets with `other`, in
    /// the chains and directions given, with `extra` matches.
    fn drop_between(&self, id: u64, other: u64, dirs: &[(&str, &str)], extra: &[&str]) {
        let (ns, ip) = (self.ns(id), self.ip(other).to_string());
        for (chain, dir) in dirs {
            let mut args = vec![
                "ip", "netns", "exec", &ns, "iptables", "-A", chain, dir, &ip,
            ];
            args.extend(extra);
            args.extend(["-j", "DROP"]);
            run(&args).expect("iptables");
        }
    }

    /// Undo whatever was done to node `id`'s links.
    pub fn heal(&self, id: u64) {
        let ns = self.ns(id);
        for chain in ["INPUT", "OUTPUT"] {
            run(&["ip", "netns", "exec", &ns, "iptables", "-F", chain]).expect("iptables");
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for id in &self.nodes {
            let _ = run(&["ip", "link", "del", &self.host_veth(*id)]);
            let _ = run(&["ip", "netns", "del", &self.ns(*id)]);
        }
        let br = self.bridge();
        let _ = run(&[
            "iptables", "-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ]);
        let _ = run(&["ip", "link", "del", &br]);
    }
}
