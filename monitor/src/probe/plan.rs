//! Which targets the probe tries, from what it knows of the cluster.
//!
//! In order (the deadline cuts from the end, so the most telling come first):
//! 1. the probe's own node (`status.hostIP`, the Node object's addresses)
//!    on the admin ports and every NodePort, then up to `sample` other
//!    nodes likewise;
//! 2. the cloud metadata endpoints;
//! 3. the `--targets` lines;
//! 4. up to `sample` pods of other namespaces on their declared container
//!    ports (one pod per namespace first), and up to `sample` Services of
//!    other namespaces on their ports.
//!
//! Duplicates (same address, port and transport) are tried once, under
//! the first name.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::inventory::Object;

use super::targets::{dedup, metadata_targets, Target, TargetKind, Transport, NODE_ADMIN_PORTS};

/// What the plan starts from.
pub struct PlanInput<'a> {
    pub objects: &'a [Object],
    /// The probe's namespace (its own namespace's pods are not sampled).
    pub namespace: Option<&'a str>,
    /// The probe's node name.
    pub node: Option<&'a str>,
    /// The node's addresses from the downward API (`status.hostIPs`).
    pub host_ips: &'a [IpAddr],
    /// `--targets` lines.
    pub listed: Vec<Target>,
    /// How many other nodes, pods and Services to sample.
    pub sample: usize,
}

fn transport(p: Option<&str>) -> Option<Transport> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Transport::Tcp),
        "UDP" => Some(Transport::Udp),
        // SCTP: no unprivileged way to tell an answer here.
        _ => None,
    }
}

fn node_targets(
    name: &str,
    addrs: &[IpAddr],
    node_ports: &[(u16, Transport, String)],
) -> Vec<Target> {
    let mut out = Vec::new();
    for &a in addrs {
        for &(port, what) in NODE_ADMIN_PORTS {
            out.push(Target {
                address: a,
                port,
                transport: Transport::Tcp,
                kind: TargetKind::Node,
                name: format!("node/{name} {what}"),
            });
        }
        for (port, t, svc) in node_ports {
            out.push(Target {
                address: a,
                port: *port,
                transport: *t,
                kind: TargetKind::Node,
                name: format!("node/{name} NodePort of {svc}"),
            });
        }
    }
    out
}

pub fn plan(input: PlanInput<'_>) -> Vec<Target> {
    let mut nodes: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut node_ports = Vec::new();
    let mut pods = Vec::new();
    let mut services = Vec::new();
    for o in input.objects {
        match o {
            Object::Node(n) => {
                let addrs: Vec<IpAddr> = n
                    .status
                    .iter()
                    .flat_map(|s| s.addresses.iter().flatten())
                    .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                    .filter_map(|a| a.address.parse().ok())
                    .collect();
                nodes.insert(n.metadata.name.clone().unwrap_or_default(), addrs);
            }
            Object::Service(s) => {
                let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                let name = s.metadata.name.as_deref().unwrap_or("");
                let Some(spec) = &s.spec else { continue };
                for p in spec.ports.iter().flatten() {
                    let Some(t) = transport(p.protocol.as_deref()) else {
                        continue;
                    };
                    if let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
                        node_ports.push((np, t, format!("{ns}/{name}")));
                    }
                }
                if Some(ns) == input.namespace {
                    continue;
                }
                let ip = spec
                    .cluster_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok());
                if let Some(ip) = ip {
                    let ports: Vec<(u16, Transport)> = spec
                        .ports
                        .iter()
                        .flatten()
                        .filter_map(|p| {
                            Some((
                                u16::try_from(p.port).ok()?,
                                transport(p.protocol.as_deref())?,
                            ))
                        })
                        .collect();
                    services.push((format!("{ns}/{name}"), ip, ports));
                }
            }
            Object::Pod(p) => {
                let ns = p.metadata.namespace.as_deref().unwrap_or("default");
                if Some(ns) == input.namespace {
                    continue;
                }
                let spec = p.spec.as_ref();
                if spec.and_then(|s| s.host_network).unwrap_or(false) {
                    continue;
                }
                let status = p.status.as_ref();
                if matches!(
                    status.and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                ) {
                    continue;
                }
                let Some(ip) = status
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                else {
                    continue;
                };
                let ports: Vec<(u16, Transport)> = spec
                    .into_iter()
                    .flat_map(|s| s.containers.iter())
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter_map(|cp| {
                        Some((
                            u16::try_from(cp.container_port).ok()?,
                            transport(cp.protocol.as_deref())?,
                        ))
                    })
                    .collect();
                if ports.is_empty() {
                    continue;
                }
                let name = p.metadata.name.clone().unwrap_or_default();
                pods.push((ns.to_owned(), name, ip, ports));
            }
            _ => {}
        }
    }
    node_ports.sort();
    node_ports.dedup();

    let mut out = Vec::new();
    // 1. Own node first: the downward API's hostIP, then its Node object.
    let own = input.node.unwrap_or("");
    let own_label = if own.is_empty() { "(own node)" } else { own };
    let mut own_addrs: Vec<IpAddr> = input.host_ips.to_vec();
    own_addrs.extend(nodes.get(own).into_iter().flatten().copied());
    out.extend(node_targets(own_label, &own_addrs, &node_ports));
    for (name, addrs) in nodes
        .iter()
        .filter(|(n, _)| n.as_str() != own)
        .take(input.sample)
    {
        out.extend(node_targets(name, addrs, &node_ports));
    }
    // 2. Metadata endpoints.
    out.extend(metadata_targets());
    // 3. The --targets lines.
    out.extend(input.listed);
    // 4. Pods, one per namespace first (so many namespaces are covered),
    //    in name order; then Services.
    pods.sort();
    let mut chosen = Vec::new();
    let mut seen_ns = std::collections::BTreeSet::new();
    for (i, p) in pods.iter().enumerate() {
        if seen_ns.insert(p.0.clone()) {
            chosen.push(i);
        }
    }
    for i in 0..pods.len() {
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    for i in chosen.into_iter().take(input.sample) {
        let (ns, name, ip, ports) = &pods[i];
        for &(port, t) in ports {
            out.push(Target {
                address: *ip,
                port,
                transport: t,
                kind: TargetKind::Pod,
                name: format!("{ns}/{name}"),
            });
        }
    }
    services.sort();
    for (name, ip, ports) in services.into_iter().take(input.sample) {
        for (port, t) in ports {
            out.push(Target {
                address: ip,
                port,
                transport: t,
                kind: TargetKind::Service,
                name: format!("Service {name}"),
            });
        }
    }
    dedup(out)
}
