//! Builds the lab's network out of namespaces and veth pairs, the way a CNI
//! plugin wires pods to a node, and tears it down again.
//!
//! ```text
//!  pod netns ─ eth0 ══ lxc<pod> ─┐
//!   10.98.0.x/32, fd98::x/128    │  node netns "<prefix>-node" (the host)
//!   default via 10.99.0.1        ├─ routes 10.98.0.x/32 dev lxc<pod>
//!   default via fe80::1          │  nftables: table ip/ip6 kube-proxy (ClusterIP DNAT)
//!  pod netns ─ eth0 ══ lxc<pod> ─┤  listeners :10250 :2379 :22, segwatch run
//!                                └─ eth0 10.99.0.1, fd99::1 ══ eth0 "<prefix>-cloud"
//!                                                          169.254.169.254, fd00:ec2::254 :80
//! ```
//!
//! Nothing is created in the host's own network namespace: no interface,
//! route, sysctl or nft table of the real machine changes, and no packet can
//! leave (the cloud namespace has no further uplink).

use anyhow::{Context as _, Result};

use crate::sys::{cmd, cmd_in, netns_with_prefix, nft_in};
use crate::world::{
    World, CLOUD_IP4, CLOUD_IP6, METADATA_IP4, METADATA_IP6, NODE2_IP4, NODE2_IP6, NODE_IP4,
    NODE_IP6, POD2_CIDR4, POD2_CIDR6, POD_CIDR4, POD_CIDR6, POD_GW6, UNDERLAY1_IP4, UNDERLAY1_IP6,
};

fn new_netns(name: &str) -> Result<()> {
    cmd(&["ip", "netns", "add", name])?;
    cmd_in(name, &["ip", "link", "set", "lo", "up"])?;
    // IPv6 settings start from kernel defaults in a new namespace
    // (net.core.devconf_inherit_init_net); DAD would delay every address.
    for key in [
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
        // No router solicitations: pods are configured statically, as a CNI does.
        "net.ipv6.conf.all.router_solicitations=0",
        "net.ipv6.conf.default.router_solicitations=0",
    ] {
        cmd_in(name, &["sysctl", "-q", "-w", key])?;
    }
    Ok(())
}

/// Creates every namespace, link, address, route and the nft tables.
/// On error the caller tears down whatever exists (see [`teardown`]).
pub fn build(world: &World, mut progress: impl FnMut(&str)) -> Result<()> {
    let node = world.node_ns();
    let cloud = world.cloud_ns();
    new_netns(&node)?;
    for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        cmd_in(&node, &["sysctl", "-q", "-w", key])?;
    }
    new_netns(&cloud)?;

    // The node's uplink: eth0 on both sides, the metadata API behind it.
    cmd_in(
        &node,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "uplink",
        ],
    )?;
    cmd_in(&node, &["ip", "link", "set", "uplink", "netns", &cloud])?;
    cmd_in(&cloud, &["ip", "link", "set", "uplink", "name", "eth0"])?;
    let n4 = format!("{NODE_IP4}/24");
    let n6 = format!("{NODE_IP6}/64");
    let c4 = format!("{CLOUD_IP4}/24");
    let c6 = format!("{CLOUD_IP6}/64");
    let m4 = format!("{METADATA_IP4}/32");
    let m6 = format!("{METADATA_IP6}/128");
    let (cloud4, cloud6) = (CLOUD_IP4.to_string(), CLOUD_IP6.to_string());
    let (node4, node6) = (NODE_IP4.to_string(), NODE_IP6.to_string());
    cmd_in(&node, &["ip", "addr", "add", &n4, "dev", "eth0"])?;
    cmd_in(
        &node,
        &["ip", "-6", "addr", "add", &n6, "dev", "eth0", "nodad"],
    )?;
    cmd_in(&node, &["ip", "link", "set", "eth0", "up"])?;
    cmd_in(&cloud, &["ip", "addr", "add", &c4, "dev", "eth0"])?;
    cmd_in(
        &cloud,
        &["ip", "-6", "addr", "add", &c6, "dev", "eth0", "nodad"],
    )?;
    cmd_in(&cloud, &["ip", "link", "set", "eth0", "up"])?;
    cmd_in(&cloud, &["ip", "addr", "add", &m4, "dev", "lo"])?;
    cmd_in(&cloud, &["ip", "-6", "addr", "add", &m6, "dev", "lo"])?;
    cmd_in(&cloud, &["ip", "route", "add", POD_CIDR4, "via", &node4])?;
    cmd_in(
        &cloud,
        &["ip", "-6", "route", "add", POD_CIDR6, "via", &node6],
    )?;
    cmd_in(&node, &["ip", "route", "add", &m4, "via", &cloud4])?;
    cmd_in(&node, &["ip", "-6", "route", "add", &m6, "via", &cloud6])?;
    progress(&format!(
        "node {} ({NODE_IP4}, {NODE_IP6}) with its uplink to the cloud's metadata API",
        world.node_name()
    ));

    // The second node, joined to the first by an underlay link; each routes
    // the other's pod networks over it (as a CNI's native routing does).
    let node2 = world.node_ns_of(2);
    new_netns(&node2)?;
    for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        cmd_in(&node2, &["sysctl", "-q", "-w", key])?;
    }
    cmd_in(
        &node,
        &[
            "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "under2",
        ],
    )?;
    cmd_in(&node, &["ip", "link", "set", "under2", "netns", &node2])?;
    cmd_in(&node2, &["ip", "link", "set", "under2", "name", "eth0"])?;
    let (u4, u6) = (UNDERLAY1_IP4.to_string(), UNDERLAY1_IP6.to_string());
    let (n24, n26) = (NODE2_IP4.to_string(), NODE2_IP6.to_string());
    for (ns, dev, a4, a6) in [
        (&node, "eth1", format!("{u4}/24"), format!("{u6}/64")),
        (&node2, "eth0", format!("{n24}/24"), format!("{n26}/64")),
    ] {
        cmd_in(ns, &["ip", "addr", "add", &a4, "dev", dev])?;
        cmd_in(ns, &["ip", "-6", "addr", "add", &a6, "dev", dev, "nodad"])?;
        cmd_in(ns, &["ip", "link", "set", dev, "up"])?;
    }
    cmd_in(&node, &["ip", "route", "add", POD2_CIDR4, "via", &n24])?;
    cmd_in(
        &node,
        &["ip", "-6", "route", "add", POD2_CIDR6, "via", &n26],
    )?;
    cmd_in(&node2, &["ip", "route", "add", "default", "via", &u4])?;
    cmd_in(&node2, &["ip", "-6", "route", "add", "default", "via", &u6])?;
    progress(&format!(
        "node {} ({NODE2_IP4}, {NODE2_IP6}), routed to {} over an underlay link",
        world.node_name_of(2),
        world.node_name()
    ));

    let gw6 = POD_GW6.to_string();
    for p in &world.pods {
        let ns = world.pod_ns(p);
        let node = world.node_ns_of(p.node);
        let node4 = world.node_ip(p.node, false).to_string();
        new_netns(&ns)?;
        let tmp = format!("{}-p", p.host_if);
        let tmp = &tmp[..tmp.len().min(15)];
        cmd_in(
            &node,
            &[
                "ip", "link", "add", p.host_if, "type", "veth", "peer", "name", tmp,
            ],
        )?;
        cmd_in(&node, &["ip", "link", "set", tmp, "netns", &ns])?;
        cmd_in(&ns, &["ip", "link", "set", tmp, "name", "eth0"])?;
        let a4 = format!("{}/32", p.ip4);
        let a6 = format!("{}/128", p.ip6);
        cmd_in(&ns, &["ip", "addr", "add", &a4, "dev", "eth0"])?;
        cmd_in(
            &ns,
            &["ip", "-6", "addr", "add", &a6, "dev", "eth0", "nodad"],
        )?;
        cmd_in(&ns, &["ip", "link", "set", "eth0", "up"])?;
        // The node's address is the gateway, on-link over the veth (the
        // node answers ARP for any of its addresses, arp_ignore=0).
        cmd_in(
            &ns,
            &["ip", "route", "add", &node4, "dev", "eth0", "scope", "link"],
        )?;
        cmd_in(
            &ns,
            &[
                "ip", "route", "add", "default", "via", &node4, "dev", "eth0",
            ],
        )?;
        cmd_in(
            &node,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{gw6}/64"),
                "dev",
                p.host_if,
                "nodad",
            ],
        )?;
        cmd_in(&node, &["ip", "link", "set", p.host_if, "up"])?;
        cmd_in(
            &ns,
            &[
                "ip", "-6", "route", "add", "default", "via", &gw6, "dev", "eth0",
            ],
        )?;
        cmd_in(&node, &["ip", "route", "add", &a4, "dev", p.host_if])?;
        cmd_in(&node, &["ip", "-6", "route", "add", &a6, "dev", p.host_if])?;
        // Static neighbour entries on both ends, as Cilium installs them:
        // no ARP and, above all, no ICMPv6 neighbour discovery on the pod
        // links, so every flow on them is traffic someone opened.
        let host_mac = mac(&node, p.host_if)?;
        let pod_mac = mac(&ns, "eth0")?;
        for (netns, addr, lladdr, dev) in [
            (&ns, node4.as_str(), host_mac.as_str(), "eth0"),
            (&ns, gw6.as_str(), host_mac.as_str(), "eth0"),
            (&node, &p.ip4.to_string(), pod_mac.as_str(), p.host_if),
            (&node, &p.ip6.to_string(), pod_mac.as_str(), p.host_if),
        ] {
            cmd_in(
                netns,
                &[
                    "ip",
                    "neigh",
                    "replace",
                    addr,
                    "lladdr",
                    lladdr,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ],
            )?;
        }
    }
    progress(&format!(
        "{} pods in {} namespaces, each wired to its node by a veth pair (IPv4 + IPv6)",
        world.pods.len(),
        world
            .namespaces
            .iter()
            .filter(|(ns, _)| world.pods.iter().any(|p| p.namespace == *ns))
            .count()
    ));

    for n in [&node, &node2] {
        nft_in(n, &world.nft_ruleset()).context("installing the Service rules")?;
    }
    progress(&format!(
        "{} Services as kube-proxy's nftables mode does them on both nodes (table ip/ip6 kube-proxy)",
        world.services.len()
    ));
    Ok(())
}

/// The MAC address of `dev` in `ns`.
fn mac(ns: &str, dev: &str) -> Result<String> {
    let out = cmd_in(ns, &["cat", &format!("/sys/class/net/{dev}/address")])?;
    Ok(out.trim().to_string())
}

/// Deletes every namespace of the lab (their links and nft tables go with
/// them). Returns what could not be removed.
pub fn teardown(prefix: &str) -> Vec<String> {
    let mut left = Vec::new();
    for ns in netns_with_prefix(&format!("{prefix}-")) {
        if let Err(e) = cmd(&["ip", "netns", "del", &ns]) {
            left.push(format!("{ns}: {e:#}"));
        }
    }
    left
}
