//! `segwatch suggest --format segmentation-policy`: the observed edges as a
//! learned baseline, a SegmentationPolicy under which any edge not seen in
//! the window is a violation (CNI-free "network baseline").
//!
//! ```text
//!  Observed.edges (workload ─ port ─► peer)
//!    pod ─► pod, same namespace      ─► withinNamespace[ns].allow   (every namespace listed)
//!    pod ─► pod, other namespace     ─► crossNamespace.allow        (always present)
//!    pod ─► cluster DNS              ─► crossNamespace.allow (kept for every namespace)
//!    pod ─► node address             ─► hostAccess.allow            (always present)
//!    pod ─► metadata API             ─► metadataApi.allow
//!    pod ─► outside address          ─► external.allow (/32, /128)  (always present)
//! ```
//!
//! Peers are named as the NetworkPolicy suggestion names them: a workload
//! by its stable pod labels (`podSelector.matchLabels`) in its namespace.
//! Ports are the observed numbers (`PORT/PROTO`). What a SegmentationPolicy
//! cannot state exactly is left out with a note, never widened: protocols
//! without ports (ICMP: a rule without ports would allow every port),
//! named ports without a number, sources that are not pods.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::catalog::{Catalog, Labels, WorkloadKey};
use super::observe::{AddrKind, Edge, Evidence, Observed, PeerKey, PortKey};
use crate::segpolicy::crd::{
    CrossNamespace, External, ExternalPeer, ExternalRule, HostAccess, MetadataApi, PodPeer,
    PodRule, SourceRule, WithinNamespace,
};
use crate::segpolicy::{SegmentationPolicy, SegmentationPolicySpec};

/// The default `metadata.name` of the learned policy.
pub const DEFAULT_NAME: &str = "learned-baseline";

/// What the baseline holds, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaselineStats {
    pub cross_namespace: usize,
    pub within_namespace: usize,
    /// Namespaces listed in `withinNamespace` (all of the inventory's and
    /// the observed ones).
    pub namespaces: usize,
    pub host_access: usize,
    pub metadata_api: usize,
    pub external: usize,
    /// Observed edges the rules stand for.
    pub edges: usize,
}

/// The learned baseline and what could not go into it.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub policy: SegmentationPolicy,
    pub stats: BaselineStats,
    pub notes: BTreeSet<String>,
}

/// Where a rule goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Within(String),
    Cross,
    Host,
    Metadata,
    External(String),
}

/// One side of a pod rule: a namespace and the pod labels.
type Side = (String, Labels);

fn selector(labels: &Labels) -> Option<LabelSelector> {
    (!labels.is_empty()).then(|| LabelSelector {
        match_labels: Some(labels.clone()),
        ..Default::default()
    })
}

fn port_text(p: &PortKey) -> Option<String> {
    match p {
        PortKey::Port(l4, n) => Some(format!("{n}/{l4}")),
        PortKey::Named(..) | PortKey::Any => None,
    }
}

/// Builds the baseline from the observed edges.
pub fn baseline(obs: &Observed, cat: &Catalog, name: &str) -> Baseline {
    let mut notes = BTreeSet::new();
    let selector_of = |w: &WorkloadKey| -> Option<Labels> {
        cat.workloads
            .get(w)
            .and_then(|i| i.selector.clone())
            .or_else(|| obs.flow_labels.get(w).cloned())
            .filter(|l| !l.is_empty())
    };
    // (slot, from, to) -> ports; `to` is empty for hosts and the metadata API.
    type Key = (Slot, Side, Option<Side>);
    let mut rules: BTreeMap<Key, (BTreeSet<String>, Evidence)> = BTreeMap::new();
    let mut scope: BTreeSet<String> = cat.namespaces.clone();
    let mut edges = 0usize;
    for (Edge { src, dst, port }, ev) in &obs.edges {
        let PeerKey::Workload(w) = src else {
            notes.insert(format!(
                "left out {src} -> {dst} {port}: a SegmentationPolicy judges what pods open, the source is not a pod"
            ));
            continue;
        };
        scope.insert(w.namespace.clone());
        let Some(from_labels) = selector_of(w) else {
            notes.insert(format!(
                "left out {w} -> {dst} {port}: its pods have no stable labels to select them by"
            ));
            continue;
        };
        let Some(port_text) = port_text(port) else {
            notes.insert(format!(
                "left out {w} -> {dst} {port}: a SegmentationPolicy names ports by number (TCP, UDP, SCTP); a rule without ports would allow every port"
            ));
            continue;
        };
        let from: Side = (w.namespace.clone(), from_labels);
        let to_pods = |ns: &str, labels: Labels| -> (Slot, Option<Side>) {
            if ns == w.namespace {
                (Slot::Within(ns.to_string()), Some((ns.to_string(), labels)))
            } else {
                (Slot::Cross, Some((ns.to_string(), labels)))
            }
        };
        let (slot, to) = match dst {
            PeerKey::Workload(o) => match selector_of(o) {
                Some(l) => to_pods(&o.namespace, l),
                None => {
                    notes.insert(format!(
                        "left out {w} -> {o} {port}: its pods have no stable labels to select them by"
                    ));
                    continue;
                }
            },
            PeerKey::Selector { namespace, labels } => to_pods(namespace, labels.clone()),
            PeerKey::Dns => to_pods(&cat.dns.namespace, cat.dns.selector.clone()),
            PeerKey::Address { ip, kind } => match kind {
                AddrKind::Node => (Slot::Host, None),
                AddrKind::Metadata => (Slot::Metadata, None),
                AddrKind::External => {
                    let bits = if ip.is_ipv4() { 32 } else { 128 };
                    (Slot::External(format!("{ip}/{bits}")), None)
                }
            },
        };
        edges += 1;
        let e = rules.entry((slot, from, to)).or_default();
        e.0.insert(port_text);
        e.1.merge(ev);
    }
    // Cluster DNS stays allowed for every namespace, as in the suggested
    // NetworkPolicies (a cached answer is no proof a pod never resolves).
    for ns in &scope {
        if *ns == cat.dns.namespace {
            continue;
        }
        let key = (
            Slot::Cross,
            (ns.clone(), Labels::new()),
            Some((cat.dns.namespace.clone(), cat.dns.selector.clone())),
        );
        let e = rules.entry(key).or_default();
        e.0.extend(["53/UDP".to_string(), "53/TCP".to_string()]);
    }

    let mut stats = BaselineStats {
        namespaces: scope.len(),
        edges,
        ..Default::default()
    };
    let mut cross = Vec::new();
    let mut within: BTreeMap<String, Vec<PodRule>> =
        scope.iter().map(|ns| (ns.clone(), Vec::new())).collect();
    let mut host = Vec::new();
    let mut metadata = Vec::new();
    let mut external = Vec::new();
    for ((slot, (from_ns, from_labels), to), (ports, ev)) in rules {
        let ports: Vec<String> = ports.into_iter().collect();
        let label_text = |l: &Labels| {
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let from_desc = format!("{from_ns}{{{}}}", label_text(&from_labels));
        let evidence = if ev.flows > 0 {
            String::new()
        } else {
            " (cluster DNS, always kept)".to_string()
        };
        match slot {
            Slot::Within(ns) => {
                let (_, to_labels) = to.unwrap_or_default();
                within.entry(ns.clone()).or_default().push(PodRule {
                    name: Some(format!(
                        "{from_desc} -> {{{}}}{evidence}",
                        label_text(&to_labels)
                    )),
                    from: PodPeer {
                        pod_selector: selector(&from_labels),
                        ..Default::default()
                    },
                    to: PodPeer {
                        pod_selector: selector(&to_labels),
                        ports: Some(ports),
                        ..Default::default()
                    },
                });
                stats.within_namespace += 1;
            }
            Slot::Cross => {
                let (to_ns, to_labels) = to.unwrap_or_default();
                cross.push(PodRule {
                    name: Some(format!(
                        "{from_desc} -> {to_ns}{{{}}}{evidence}",
                        label_text(&to_labels)
                    )),
                    from: PodPeer {
                        namespace: Some(from_ns),
                        pod_selector: selector(&from_labels),
                        ..Default::default()
                    },
                    to: PodPeer {
                        namespace: Some(to_ns),
                        pod_selector: selector(&to_labels),
                        ports: Some(ports),
                        ..Default::default()
                    },
                });
                stats.cross_namespace += 1;
            }
            Slot::Host | Slot::Metadata => {
                let what = if slot == Slot::Host {
                    "nodes"
                } else {
                    "metadata API"
                };
                let rule = SourceRule {
                    name: Some(format!("{from_desc} -> {what}{evidence}")),
                    from: PodPeer {
                        namespace: Some(from_ns),
                        pod_selector: selector(&from_labels),
                        ..Default::default()
                    },
                    ports: Some(ports),
                };
                if slot == Slot::Host {
                    host.push(rule);
                    stats.host_access += 1;
                } else {
                    metadata.push(rule);
                    stats.metadata_api += 1;
                }
            }
            Slot::External(cidr) => {
                external.push(ExternalRule {
                    name: Some(format!("{from_desc} -> {cidr}{evidence}")),
                    from: PodPeer {
                        namespace: Some(from_ns),
                        pod_selector: selector(&from_labels),
                        ..Default::default()
                    },
                    to: ExternalPeer {
                        cidr,
                        ports: Some(ports),
                    },
                });
                stats.external += 1;
            }
        }
    }
    let spec = SegmentationPolicySpec {
        // Present even when empty: every unlisted edge is a violation.
        cross_namespace: Some(CrossNamespace { allow: cross }),
        within_namespace: within
            .into_iter()
            .map(|(namespace, allow)| WithinNamespace { namespace, allow })
            .collect(),
        host_access: Some(HostAccess { allow: host }),
        metadata_api: Some(MetadataApi {
            addresses: None,
            allow: metadata,
        }),
        external: Some(External { allow: external }),
    };
    let mut policy = SegmentationPolicy::new(name, spec);
    policy.metadata = ObjectMeta {
        name: Some(name.to_string()),
        annotations: Some(BTreeMap::from([(
            "segwatch.dev/learned".to_string(),
            "observed edges (segwatch suggest --format segmentation-policy); any other edge is a violation".to_string(),
        )])),
        ..Default::default()
    };
    Baseline {
        policy,
        stats,
        notes,
    }
}
