//! Network namespaces: the node, its pods and the veths between them.

use super::*;

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh_in(&name, &["ip", "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: a valid namespace fd; CLONE_NEWNET affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {} failed: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A pod: its namespace, the host-side interface name, and its addresses.
pub struct Pod {
    pub ns: Netns,
    pub host_if: String,
    pub ip4: IpAddr,
    pub ip6: IpAddr,
    pub gw4: IpAddr,
    pub gw6: IpAddr,
}

/// A node namespace with pods routed through it.
pub struct Topo {
    /// Start of every name this topology made (`sw` unless chosen).
    pub prefix: String,
    pub tag: String,
    pub pods: Vec<Pod>,
    pub node: Netns,
}

impl Topo {
    /// A node with `n` pods; pod `i` has 10.77.i.2/30 and fd77:0:0:i::2/64,
    /// the node side .1 / ::1. `offload` false turns TSO/GSO/GRO off on
    /// both veth ends, so every skb is one wire packet (what tshark counts).
    pub fn new(n: usize, offload: bool) -> Self {
        Self::with_prefix("sw", n, offload)
    }

    /// [`Topo::new`] with names starting with `prefix` instead of `sw`
    /// (namespaces `<prefix>-node-<tag>`, `<prefix>-pod-<tag>-<i>`,
    /// interfaces `<prefix><tag>p<i>`), for tests that must not share a
    /// name space with others running at the same time.
    pub fn with_prefix(prefix: &str, n: usize, offload: bool) -> Self {
        require_root();
        let tag = unique_tag();
        let node = Netns::new(format!("{prefix}-node-{tag}"));
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            sh_in(&node.name, &["sysctl", "-q", "-w", key]);
        }
        let mut pods = Vec::new();
        for i in 0..n {
            let ns = Netns::new(format!("{prefix}-pod-{tag}-{i}"));
            let host_if = format!("{prefix}{tag}p{i}");
            let tmp = format!("{prefix}{tag}t{i}");
            sh_in(
                &node.name,
                &[
                    "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &tmp,
                ],
            );
            sh_in(&node.name, &["ip", "link", "set", &tmp, "netns", &ns.name]);
            sh_in(&ns.name, &["ip", "link", "set", &tmp, "name", "eth0"]);
            let (ip4, gw4) = (format!("10.77.{i}.2"), format!("10.77.{i}.1"));
            let (ip6, gw6) = (format!("fd77:0:0:{i:x}::2"), format!("fd77:0:0:{i:x}::1"));
            sh_in(
                &node.name,
                &["ip", "addr", "add", &format!("{gw4}/30"), "dev", &host_if],
            );
            sh_in(
                &node.name,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{gw6}/64"),
                    "dev",
                    &host_if,
                    "nodad",
                ],
            );
            sh_in(&node.name, &["ip", "link", "set", &host_if, "up"]);
            sh_in(
                &ns.name,
                &["ip", "addr", "add", &format!("{ip4}/30"), "dev", "eth0"],
            );
            sh_in(
                &ns.name,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            sh_in(&ns.name, &["ip", "link", "set", "eth0", "up"]);
            sh_in(&ns.name, &["ip", "route", "add", "default", "via", &gw4]);
            sh_in(
                &ns.name,
                &["ip", "-6", "route", "add", "default", "via", &gw6],
            );
            if !offload {
                for (netns, dev) in [(&node.name, host_if.as_str()), (&ns.name, "eth0")] {
                    sh_in(
                        netns,
                        &[
                            "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
                        ],
                    );
                }
            }
            pods.push(Pod {
                ns,
                host_if,
                ip4: ip4.parse().expect("valid"),
                ip6: ip6.parse().expect("valid"),
                gw4: gw4.parse().expect("valid"),
                gw6: gw6.parse().expect("valid"),
            });
        }
        Topo {
            prefix: prefix.to_owned(),
            tag,
            pods,
            node,
        }
    }

    /// Adds an address to the node (on a node-side veth whose peer end is
    /// a dead-end namespace), e.g. a node IP or the metadata address, so
    /// that `ip route get` in the node says `local`.
    pub fn add_node_address(&self, cidr: &str) {
        let dev = format!("{}{}l", self.prefix, self.tag);
        let exists = Command::new("ip")
            .args(["netns", "exec", &self.node.name, "ip", "link", "show", &dev])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !exists {
            sh_in(
                &self.node.name,
                &[
                    "ip",
                    "link",
                    "add",
                    &dev,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("{dev}x"),
                ],
            );
            sh_in(&self.node.name, &["ip", "link", "set", &dev, "up"]);
        }
        sh_in(
            &self.node.name,
            &["ip", "addr", "add", cidr, "dev", &dev, "nodad"],
        );
    }
}

/// Names of the tcx programs attached to `iface` in `netns`, ingress then
/// egress (queried from the kernel; bpftool 7.1 does not list tcx links).
pub fn tcx_programs(netns: &str, iface: &str) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let path = Path::new("/var/run/netns").join(netns);
    let iface = iface.to_string();
    std::thread::spawn(move || {
        enter(&path);
        let mut names = Vec::new();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(&iface, t)
                .unwrap_or_else(|e| panic!("query tcx on {iface}: {e}"));
            names.extend(
                progs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_string()),
            );
        }
        names
    })
    .join()
    .expect("tcx query thread")
}
