//! The node address tables of the index, kept up to date one Node at a
//! time: a Node event costs what that Node holds (a few addresses and pod
//! networks), not the whole cluster's nodes.
//!
//! ```text
//!  Node n (addresses, spec.podCIDRs) ─► set_node(n) ─► ip_claims: addr -> {nodes}
//!                                                  └─► net_claims: net -> {nodes}, per prefix length
//!  --node-ip, host addresses (this node) ─► set_local_ips
//!  --pod-cidr / IndexConfig::pod_cidrs ─► configured networks
//!  lookups: node_of(ip) (one hash), pod network of ip (one hash per prefix length in use)
//! ```
//!
//! Where two Nodes claim the same address or network, the greatest name
//! wins (as the full rebuild did, in name order); this node's own
//! addresses count only where no Node claims them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use super::IpMap;

/// Who claims one pod network.
#[derive(Default)]
struct NetClaims {
    nodes: BTreeSet<Arc<str>>,
    /// Listed in the configuration (`IndexConfig::pod_cidrs`).
    configured: bool,
}

/// What one Node put into the tables (to take it out again).
#[derive(Default)]
struct Held {
    ips: Vec<IpAddr>,
    nets: Vec<IpNet>,
}

#[derive(Default)]
pub(super) struct NodeTables {
    local: Arc<str>,
    local_ips: HashSet<IpAddr>,
    held: HashMap<String, Held>,
    ip_claims: HashMap<IpAddr, BTreeSet<Arc<str>>>,
    /// The address → node view `resolve` reads.
    by_ip: IpMap<Arc<str>>,
    /// Networks, truncated to their prefix.
    nets: HashMap<IpNet, NetClaims>,
    /// (is IPv6, prefix length) → how many networks of `nets` have it.
    prefixes: BTreeMap<(bool, u8), usize>,
}

impl NodeTables {
    pub(super) fn new(local: &str, configured: &[IpNet]) -> Self {
        let mut t = NodeTables {
            local: Arc::from(local),
            ..Default::default()
        };
        for n in configured {
            t.add_net(n.trunc()).configured = true;
        }
        t
    }

    /// This node's own addresses (`--node-ip` and the host's interfaces).
    /// Returns the work done (addresses touched).
    pub(super) fn set_local_ips(&mut self, ips: impl IntoIterator<Item = IpAddr>) -> u64 {
        let new: HashSet<IpAddr> = ips.into_iter().collect();
        let old = std::mem::replace(&mut self.local_ips, new);
        let touched: Vec<IpAddr> = old.union(&self.local_ips).copied().collect();
        for ip in &touched {
            self.settle_ip(*ip);
        }
        touched.len() as u64
    }

    /// Node `name` is now `node` (`None`: deleted). Returns the work done
    /// (addresses and networks taken out and put in).
    pub(super) fn set_node(&mut self, name: &str, node: Option<&Node>) -> u64 {
        let mut work = 1;
        if let Some(old) = self.held.remove(name) {
            work += (old.ips.len() + old.nets.len()) as u64;
            for ip in old.ips {
                if let Some(c) = self.ip_claims.get_mut(&ip) {
                    c.remove(name);
                    if c.is_empty() {
                        self.ip_claims.remove(&ip);
                    }
                }
                self.settle_ip(ip);
            }
            for net in old.nets {
                self.drop_net(net, name);
            }
        }
        let Some(node) = node else {
            return work;
        };
        let n: Arc<str> = Arc::from(name);
        let mut held = Held::default();
        // Hostname/InternalDNS entries are names, not addresses.
        held.ips = node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .collect();
        held.ips.sort();
        held.ips.dedup();
        if let Some(spec) = &node.spec {
            held.nets = spec
                .pod_cidrs
                .iter()
                .flatten()
                .chain(spec.pod_cidr.iter())
                .filter_map(|c| c.parse::<IpNet>().ok())
                .map(|c| c.trunc())
                .collect();
            held.nets.sort();
            held.nets.dedup();
        }
        work += (held.ips.len() + held.nets.len()) as u64;
        for ip in &held.ips {
            self.ip_claims.entry(*ip).or_default().insert(n.clone());
            self.settle_ip(*ip);
        }
        for net in &held.nets {
            self.add_net(*net).nodes.insert(n.clone());
        }
        self.held.insert(name.to_owned(), held);
        work
    }

    fn settle_ip(&mut self, ip: IpAddr) {
        match self.ip_claims.get(&ip).and_then(|c| c.last()) {
            Some(n) => {
                self.by_ip.insert(ip, n.clone());
            }
            None if self.local_ips.contains(&ip) => {
                self.by_ip.insert(ip, self.local.clone());
            }
            None => {
                self.by_ip.remove(&ip);
            }
        }
    }

    fn add_net(&mut self, net: IpNet) -> &mut NetClaims {
        let fresh = !self.nets.contains_key(&net);
        if fresh {
            *self
                .prefixes
                .entry((net.addr().is_ipv6(), net.prefix_len()))
                .or_default() += 1;
        }
        self.nets.entry(net).or_default()
    }

    fn drop_net(&mut self, net: IpNet, node: &str) {
        let Some(c) = self.nets.get_mut(&net) else {
            return;
        };
        c.nodes.remove(node);
        if c.nodes.is_empty() && !c.configured {
            self.nets.remove(&net);
            let key = (net.addr().is_ipv6(), net.prefix_len());
            if let Some(k) = self.prefixes.get_mut(&key) {
                *k -= 1;
                if *k == 0 {
                    self.prefixes.remove(&key);
                }
            }
        }
    }

    /// The pod networks holding `ip`, longest prefix first.
    fn nets_of(&self, ip: IpAddr) -> impl Iterator<Item = &NetClaims> + '_ {
        let v6 = ip.is_ipv6();
        self.prefixes
            .range((v6, 0)..=(v6, u8::MAX))
            .rev()
            .filter_map(move |(&(_, len), _)| {
                let net = IpNet::new(ip, len).ok()?.trunc();
                self.nets.get(&net)
            })
    }

    /// The node an address belongs to.
    pub(super) fn node_of(&self, ip: IpAddr) -> Option<&Arc<str>> {
        self.by_ip.get(&ip)
    }

    /// Is `ip` inside a pod network (a Node's or a configured one)?
    pub(super) fn in_pod_net(&self, ip: IpAddr) -> bool {
        self.nets_of(ip).next().is_some()
    }

    /// The Node whose pod network (longest prefix) holds `ip`.
    pub(super) fn pod_net_node(&self, ip: IpAddr) -> Option<&Arc<str>> {
        self.nets_of(ip).find_map(|c| c.nodes.last())
    }
}
