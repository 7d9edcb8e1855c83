//! The things policies select: endpoints (pods, and workloads standing for
//! pods nobody listed) and namespaces with their labels.
//!
//! ```text
//!  Pod ──────────────────────────────► Endpoint (labels, IPs, named ports)
//!  Deployment/ReplicaSet/StatefulSet/   Endpoint from the pod template, only
//!  DaemonSet/Job/CronJob/RC ──────────► when no Pod object belongs to it
//!  Namespace ─────────────────────────► labels + kubernetes.io/metadata.name
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::policy::DEFAULT_NAMESPACE;
use super::ports::Protocol;
use super::selector::{Labels, Selector};

/// The label the control plane puts on every namespace (Kubernetes ≥ 1.22,
/// "Well-Known Labels": `kubernetes.io/metadata.name` is set to the
/// namespace's name and cannot be changed), so policies can select a
/// namespace by name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A container port with a name, the target of a named NetworkPolicy port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// What an endpoint is shown as in listings: the pod's controller (a
/// workload stands for its replicas), or the pod itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group {
    pub namespace: String,
    pub name: String,
    pub kind: String,
}

impl std::fmt::Display for Group {
    /// `ns/name[Kind]`, the conformance suite's notation.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}[{}]", self.namespace, self.name, self.kind)
    }
}

/// One pod, or one workload standing for the pods of its template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub namespace: String,
    /// Pod name, or workload name for a workload endpoint.
    pub name: String,
    /// `Pod`, or the workload kind (`Deployment`...).
    pub kind: String,
    pub group: Group,
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`); empty for workload endpoints.
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// Container ports with names, for resolving named policy ports.
    pub named_ports: Vec<NamedPort>,
}

impl Endpoint {
    /// The number a named port stands for on this endpoint, if it has a
    /// container port of that name and protocol. API reference,
    /// NetworkPolicyPort.port: "port represents the port on the given
    /// protocol. This can either be a numerical or named port on a pod."
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A workload object reduced to what stands for its pods.
#[derive(Clone, Debug)]
pub struct WorkloadRef<'a> {
    pub kind: &'static str,
    pub meta: &'a ObjectMeta,
    pub template: Option<&'a PodTemplateSpec>,
    /// The workload's pod selector (matchLabels/expressions), used to tell
    /// whether a listed pod belongs to it when no owner chain says so.
    pub selector: Option<Selector>,
}

fn ns_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

fn named_ports(spec: Option<&PodSpec>) -> Vec<NamedPort> {
    crate::l4::named_container_ports(spec)
        .filter(|p| p.port != 0)
        .map(|p| NamedPort {
            name: p.name.to_string(),
            protocol: p.protocol.into(),
            port: p.port,
        })
        .collect()
}

/// The display group of a pod: its controller, except for static pods
/// (owned by their Node), which stand for themselves.
fn pod_group(namespace: &str, pod_name: &str, meta: &ObjectMeta) -> Group {
    match controller_ref(meta) {
        Some(r) if r.kind != "Node" && !r.name.is_empty() => Group {
            namespace: namespace.to_string(),
            name: r.name.clone(),
            // An owner reference without a kind cannot name a workload; the
            // conformance suite shows such a group as `[Pod]`.
            kind: if r.kind.is_empty() {
                "Pod".to_string()
            } else {
                r.kind.clone()
            },
        },
        _ => Group {
            namespace: namespace.to_string(),
            name: pod_name.to_string(),
            kind: "Pod".to_string(),
        },
    }
}

pub fn pod_endpoint(pod: &Pod) -> Endpoint {
    let namespace = ns_of(&pod.metadata);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(st) = &pod.status {
        for p in st.pod_ips.as_deref().unwrap_or_default() {
            if let Ok(ip) = p.ip.parse() {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            if let Some(ip) = st.pod_ip.as_deref().and_then(|s| s.parse().ok()) {
                ips.push(ip);
            }
        }
    }
    Endpoint {
        group: pod_group(&namespace, &name, &pod.metadata),
        kind: "Pod".to_string(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips,
        host_network: pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false),
        named_ports: named_ports(pod.spec.as_ref()),
        namespace,
        name,
    }
}

pub fn workload_endpoint(w: &WorkloadRef<'_>) -> Endpoint {
    let namespace = ns_of(w.meta);
    let name = w.meta.name.clone().unwrap_or_default();
    let tmpl = w.template;
    Endpoint {
        group: Group {
            namespace: namespace.clone(),
            name: name.clone(),
            kind: w.kind.to_string(),
        },
        kind: w.kind.to_string(),
        // The pods get the template's labels, not the workload's own.
        labels: tmpl
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        ips: Vec::new(),
        host_network: tmpl
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.host_network)
            .unwrap_or(false),
        named_ports: named_ports(tmpl.and_then(|t| t.spec.as_ref())),
        namespace,
        name,
    }
}

/// Namespace labels, with the implicit name label added.
pub fn namespace_labels(ns: &Namespace) -> (String, Labels) {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
    (name, labels)
}

pub fn implicit_namespace_labels(name: &str) -> Labels {
    BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())])
}

/// Which workloads already have their pods listed. A workload stands for
/// its pods only when none of them is given as a Pod object.
///
/// A pod belongs to workload `W` when its controller reference names `W`,
/// or names a ReplicaSet/Job whose own controller is `W` (Deployment ->
/// ReplicaSet -> Pod, CronJob -> Job -> Pod), or — when that intermediate
/// object is not listed — names a ReplicaSet `W-<hash>` / Job `W-<n>` and
/// the pod's labels match `W`'s selector.
pub fn represented_workloads(
    pods: &[&Pod],
    workloads: &[WorkloadRef<'_>],
) -> HashSet<(String, &'static str, String)> {
    let mut owner_of: HashMap<(String, String, String), (String, String)> = HashMap::new();
    for w in workloads {
        if let Some(r) = controller_ref(w.meta) {
            owner_of.insert(
                (
                    ns_of(w.meta),
                    w.kind.to_string(),
                    w.meta.name.clone().unwrap_or_default(),
                ),
                (r.kind.clone(), r.name.clone()),
            );
        }
    }
    let mut by_ns: HashMap<String, Vec<&WorkloadRef<'_>>> = HashMap::new();
    for w in workloads {
        by_ns.entry(ns_of(w.meta)).or_default().push(w);
    }
    let mut out = HashSet::new();
    for pod in pods {
        let ns = ns_of(&pod.metadata);
        let Some(r) = controller_ref(&pod.metadata) else {
            continue;
        };
        let Some(candidates) = by_ns.get(&ns) else {
            continue;
        };
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        for w in candidates {
            let wname = w.meta.name.as_deref().unwrap_or_default();
            let direct = r.kind == w.kind && r.name == wname;
            let via_listed = owner_of
                .get(&(ns.clone(), r.kind.clone(), r.name.clone()))
                .is_some_and(|(k, n)| k == w.kind && n == wname);
            let via_name = matches!(
                (w.kind, r.kind.as_str()),
                ("Deployment", "ReplicaSet") | ("CronJob", "Job")
            ) && r
                .name
                .strip_prefix(wname)
                .is_some_and(|rest| rest.starts_with('-'))
                && w.selector
                    .as_ref()
                    .is_some_and(|s| !s.is_everything() && s.matches(&labels));
            if direct || via_listed || via_name {
                out.insert((ns.clone(), w.kind, wname.to_string()));
            }
        }
    }
    // A workload owned by another listed workload (a Deployment's
    // ReplicaSets, a CronJob's Jobs) is represented by its owner.
    for w in workloads {
        if let Some(r) = controller_ref(w.meta) {
            let owner_listed = by_ns.get(&ns_of(w.meta)).is_some_and(|ws| {
                ws.iter()
                    .any(|o| o.kind == r.kind && o.meta.name.as_deref() == Some(r.name.as_str()))
            });
            if owner_listed {
                out.insert((
                    ns_of(w.meta),
                    w.kind,
                    w.meta.name.clone().unwrap_or_default(),
                ));
            }
        }
    }
    out
}
