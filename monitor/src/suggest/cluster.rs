//! `segwatch suggest --format clusternetworkpolicy`: cluster-wide
//! guardrails as `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy,
//! each justified by the observed flows and their verdicts.
//!
//! ```text
//!  flow reports ─► per namespace: metadata API used (allowed?), node ports
//!                  used (allowed?), cross-namespace violations per pair,
//!                  allowed cross-namespace pairs
//!              ─► Admin tier:    Deny metadata API, Deny node ports,
//!                                Deny forbidden namespace pairs
//!                  Baseline tier: DNS to kube-dns, then default deny
//! ```
//!
//! What is never denied: a namespace whose traffic to the metadata API or
//! to node ports was judged allowed keeps it (the Deny's subject leaves it
//! out), and a namespace pair with any allowed flow gets no pair Deny (the
//! SegmentationPolicy allows some of it; a blanket Deny would break that).
//! The Baseline default deny sits below the namespaced NetworkPolicies, so
//! it bites only where no NetworkPolicy isolates a pod: apply it together
//! with the suggested NetworkPolicies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{json, Value};

use crate::netpol::model::NAMESPACE_NAME_LABEL;
use crate::report::{EndpointKind, FlowReport, Verdict, ViolationKind};

/// The metadata API addresses of the built-in baseline (CONTRACT,
/// SegmentationPolicy `metadataApi.addresses` default).
const METADATA: [&str; 2] = ["169.254.169.254", "fd00:ec2::254"];

/// Node ports a pod has no business reaching unless allowed: kubelet,
/// etcd (client and peer), sshd.
const NODE_PORTS: [(u16, u16, &str); 3] = [
    (10250, 10250, "kubelet"),
    (2379, 2380, "etcd"),
    (22, 22, "sshd"),
];

/// Priorities of the suggested objects (lower numbers go first).
const PRIORITY_METADATA: u32 = 100;
const PRIORITY_NODES: u32 = 110;
const PRIORITY_PAIRS: u32 = 120;

/// What the flows tell about one namespace.
#[derive(Debug, Default)]
struct Evidence {
    metadata_allowed: bool,
    metadata_denied: usize,
    nodes_allowed: bool,
    nodes_denied: usize,
    /// Destination namespaces of cross_namespace violations, with counts.
    forbidden: BTreeMap<String, usize>,
    /// Destination namespaces with an allowed flow.
    allowed_to: BTreeSet<String>,
}

/// The suggested objects and what they rest on.
#[derive(Debug, Default)]
pub struct ClusterSuggestion {
    /// ClusterNetworkPolicy objects, as JSON.
    pub objects: Vec<Value>,
    /// One line per decision (kept or left out, and why).
    pub notes: Vec<String>,
}

fn not_in(namespaces: &BTreeSet<String>) -> Value {
    if namespaces.is_empty() {
        json!({})
    } else {
        json!({"matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": namespaces}]})
    }
}

fn host_net(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Builds the guardrails from flow reports. Only pod-opened flows count.
pub fn suggest(reports: &[FlowReport]) -> ClusterSuggestion {
    let mut by_ns: BTreeMap<String, Evidence> = BTreeMap::new();
    let mut metadata_addrs: BTreeSet<IpAddr> =
        METADATA.iter().filter_map(|a| a.parse().ok()).collect();
    for r in reports {
        let (Some(EndpointKind::Pod), Some(ns)) = (r.src.kind, r.src.namespace.as_deref()) else {
            continue;
        };
        let allowed = r.verdict == Some(Verdict::Allowed);
        let ev = by_ns.entry(ns.to_string()).or_default();
        match r.dst.kind {
            Some(EndpointKind::Metadata) => {
                metadata_addrs.insert(r.dst.ip);
                if allowed {
                    ev.metadata_allowed = true;
                } else {
                    ev.metadata_denied += 1;
                }
            }
            Some(EndpointKind::Node) => {
                if allowed {
                    ev.nodes_allowed = true;
                } else {
                    ev.nodes_denied += 1;
                }
            }
            Some(EndpointKind::Pod | EndpointKind::Service) => {
                let Some(dns) = r.dst.namespace.as_deref().filter(|d| *d != ns) else {
                    continue;
                };
                if allowed {
                    ev.allowed_to.insert(dns.to_string());
                } else if r
                    .violations
                    .iter()
                    .any(|v| v.kind == ViolationKind::CrossNamespace)
                {
                    *ev.forbidden.entry(dns.to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let mut out = ClusterSuggestion::default();
    let meta = |name: &str, why: String| -> Value {
        json!({"name": name, "annotations": {"segwatch.dev/evidence": why}})
    };

    // Metadata API.
    let keep: BTreeSet<String> = by_ns
        .iter()
        .filter(|(_, e)| e.metadata_allowed)
        .map(|(n, _)| n.clone())
        .collect();
    let denied: usize = by_ns.values().map(|e| e.metadata_denied).sum();
    out.notes.push(format!(
        "metadata API: Deny for every namespace{}; {denied} observed flow(s) to it were violations",
        if keep.is_empty() {
            String::new()
        } else {
            format!(
                " except {} (judged allowed)",
                keep.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        }
    ));
    out.objects.push(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": meta("segwatch-deny-metadata-api", format!("{denied} flow(s) to the metadata API judged violations; allowed users kept out of the subject")),
        "spec": {
            "tier": "Admin",
            "priority": PRIORITY_METADATA,
            "subject": {"namespaces": not_in(&keep)},
            "egress": [{
                "name": "deny-metadata-api",
                "action": "Deny",
                "to": [{"networks": metadata_addrs.iter().map(|a| host_net(*a)).collect::<Vec<_>>()}]
            }]
        }
    }));

    // Node ports.
    let keep: BTreeSet<String> = by_ns
        .iter()
        .filter(|(_, e)| e.nodes_allowed)
        .map(|(n, _)| n.clone())
        .collect();
    let denied: usize = by_ns.values().map(|e| e.nodes_denied).sum();
    out.notes.push(format!(
        "node ports {}: Deny for every namespace{}; {denied} observed flow(s) to nodes were violations",
        NODE_PORTS.iter().map(|(_, _, n)| *n).collect::<Vec<_>>().join(", "),
        if keep.is_empty() { String::new() } else { format!(" except {} (judged allowed)", keep.iter().cloned().collect::<Vec<_>>().join(", ")) }
    ));
    let protocols: Vec<Value> = NODE_PORTS
        .iter()
        .map(|&(lo, hi, _)| {
            if lo == hi {
                json!({"tcp": {"destinationPort": {"number": lo}}})
            } else {
                json!({"tcp": {"destinationPort": {"range": {"start": lo, "end": hi}}}})
            }
        })
        .collect();
    out.objects.push(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": meta("segwatch-deny-node-ports", format!("{denied} flow(s) to node addresses judged violations; allowed users kept out of the subject")),
        "spec": {
            "tier": "Admin",
            "priority": PRIORITY_NODES,
            "subject": {"namespaces": not_in(&keep)},
            "egress": [{"name": "deny-node-ports", "action": "Deny", "to": [{"nodes": {}}], "protocols": protocols}]
        }
    }));

    // Forbidden namespace pairs: one policy per source namespace, at most
    // 25 rules (the API's limit); pairs with any allowed flow are skipped.
    for (src, ev) in &by_ns {
        let mut rules = Vec::new();
        let mut evidence = Vec::new();
        for (dst, n) in &ev.forbidden {
            if ev.allowed_to.contains(dst) {
                out.notes.push(format!(
                    "{src} -> {dst}: {n} violation(s), but some flows between them are allowed: no Deny (NetworkPolicies cover it)"
                ));
                continue;
            }
            if rules.len() == 25 {
                out.notes.push(format!(
                    "{src} -> {dst}: over 25 forbidden destinations, not written"
                ));
                continue;
            }
            rules.push(json!({
                "name": format!("deny-to-{dst}"),
                "action": "Deny",
                "to": [{"namespaces": {"matchLabels": {NAMESPACE_NAME_LABEL: dst}}}]
            }));
            evidence.push(format!("{dst}: {n}"));
        }
        if rules.is_empty() {
            continue;
        }
        out.notes
            .push(format!("{src}: Deny to {}", evidence.join(", ")));
        out.objects.push(json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": meta(&format!("segwatch-deny-from-{src}"), format!("cross_namespace violations per destination: {}", evidence.join(", "))),
            "spec": {
                "tier": "Admin",
                "priority": PRIORITY_PAIRS,
                "subject": {"namespaces": {"matchLabels": {NAMESPACE_NAME_LABEL: src}}},
                "egress": rules
            }
        }));
    }

    // Baseline: cluster DNS, then deny everything else.
    out.notes.push(
        "baseline: DNS to kube-dns, everything else denied where no NetworkPolicy isolates a pod"
            .to_string(),
    );
    out.objects.push(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": meta("segwatch-baseline-default-deny", "default deny below the namespaced NetworkPolicies; cluster DNS stays reachable".to_string()),
        "spec": {
            "tier": "Baseline",
            "priority": 0,
            "subject": {"namespaces": {}},
            "ingress": [{"name": "default-deny", "action": "Deny", "from": [{"namespaces": {}}]}],
            "egress": [
                {"name": "dns", "action": "Accept",
                 "to": [{"pods": {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "kube-system"}},
                                  "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}}],
                 "protocols": [{"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"number": 53}}}]},
                {"name": "default-deny", "action": "Deny",
                 "to": [{"namespaces": {}}, {"networks": ["0.0.0.0/0", "::/0"]}]}
            ]
        }
    }));
    out
}

/// The objects as `---`-separated YAML or one JSON `List`.
pub fn render(objects: &[Value], format: super::Format) -> String {
    match format {
        super::Format::Yaml => {
            let mut s = String::new();
            for o in objects {
                s.push_str("---\n");
                s.push_str(&serde_yaml_ng::to_string(o).unwrap_or_default());
            }
            s
        }
        super::Format::Json => {
            let mut s = serde_json::to_string_pretty(
                &json!({"apiVersion": "v1", "kind": "List", "items": objects}),
            )
            .unwrap_or_default();
            s.push('\n');
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Object;
    use crate::netpol::cluster::ClusterPolicyObject;
    use crate::netpol::{Engine, Objects, Peer, Protocol, Query};
    use crate::report::{Endpoint, Violation};

    fn ep(ip: &str, kind: EndpointKind, ns: Option<&str>) -> Endpoint {
        Endpoint {
            kind: Some(kind),
            namespace: ns.map(Into::into),
            ..Endpoint::bare(ip.parse().unwrap(), Some(80))
        }
    }

    fn flow(src_ns: &str, dst: Endpoint, allowed: bool) -> FlowReport {
        FlowReport {
            src: ep("10.0.0.1", EndpointKind::Pod, Some(src_ns)),
            dst,
            verdict: Some(if allowed {
                Verdict::Allowed
            } else {
                Verdict::Violation
            }),
            violations: if allowed {
                vec![]
            } else {
                vec![Violation {
                    kind: ViolationKind::CrossNamespace,
                    rule: String::new(),
                    reason: String::new(),
                }]
            },
            ..FlowReport::default()
        }
    }

    #[test]
    fn guardrails_keep_what_was_allowed_and_deny_what_was_not() {
        let reports = vec![
            flow(
                "kube-system",
                ep("169.254.169.254", EndpointKind::Metadata, None),
                true,
            ),
            flow(
                "shop",
                ep("169.254.169.254", EndpointKind::Metadata, None),
                false,
            ),
            flow(
                "shop",
                ep("10.1.0.1", EndpointKind::Pod, Some("pay")),
                false,
            ),
            flow(
                "shop",
                ep("10.2.0.1", EndpointKind::Pod, Some("api")),
                false,
            ),
            flow("shop", ep("10.2.0.2", EndpointKind::Pod, Some("api")), true),
        ];
        let s = suggest(&reports);
        let names: Vec<&str> = s
            .objects
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "segwatch-deny-metadata-api",
                "segwatch-deny-node-ports",
                "segwatch-deny-from-shop",
                "segwatch-baseline-default-deny"
            ]
        );
        assert_eq!(
            s.objects[0]["spec"]["subject"]["namespaces"]["matchExpressions"][0]["values"],
            json!(["kube-system"])
        );
        assert_eq!(
            s.objects[2]["spec"]["egress"].as_array().unwrap().len(),
            1,
            "only pay: api has an allowed flow"
        );

        // The objects are valid and do what they say.
        let objs: Vec<Object> = s
            .objects
            .iter()
            .map(|o| {
                Object::ClusterNetworkPolicy(
                    serde_json::from_value::<ClusterPolicyObject>(o.clone()).unwrap(),
                )
            })
            .chain(
                ["kube-system", "shop", "pay"]
                    .iter()
                    .enumerate()
                    .map(|(i, ns)| {
                        Object::Pod(
                            serde_json::from_value(
                                json!({"metadata": {"name": "p", "namespace": ns},
                        "status": {"podIPs": [{"ip": format!("10.9.0.{}", i + 1)}]}}),
                            )
                            .unwrap(),
                        )
                    }),
            )
            .collect();
        let (e, w) = Engine::build(&Objects::from_inventory(&objs));
        assert!(w.is_empty(), "{w:?}");
        let q = |src: &str, dst: &str, port: u16| {
            e.evaluate(&Query {
                src: Peer::Ip(src.parse().unwrap()),
                dst: Peer::Ip(dst.parse().unwrap()),
                protocol: Protocol::Tcp,
                port,
            })
        };
        assert!(
            !q("10.9.0.2", "169.254.169.254", 80).allowed,
            "shop: metadata denied"
        );
        let d = q("10.9.0.1", "169.254.169.254", 80);
        assert_eq!(
            d.decided_by().map(|b| b.name.to_string()),
            Some("segwatch-baseline-default-deny".to_string()),
            "kube-system is not a subject of the Admin deny; only the baseline (below NetworkPolicies) applies"
        );
        assert!(!q("10.9.0.2", "10.9.0.3", 80).allowed, "shop -> pay denied");
        assert_eq!(
            q("10.9.0.2", "10.9.0.3", 80)
                .decided_by()
                .map(|b| (b.tier.to_string(), b.name.to_string())),
            Some(("Admin".to_string(), "segwatch-deny-from-shop".to_string()))
        );
    }
}
