//! What the inventory says about workloads, Services, nodes and DNS, reduced
//! to what a suggestion needs: which pods make up a workload, which labels
//! select them stably, which pods a Service sends to and on which port.
//!
//! ```text
//!  Pod ──owner chain──► WorkloadKey (ns, Deployment, web) ◄── Deployment (selector, template)
//!  Service ──selector──► backing workloads, port ► targetPort
//!  Node ──addresses──►   node addresses
//! ```
//!
//! A pod's workload follows its controller owner reference the way the
//! controllers build them (ReplicaSet -> Deployment, Job -> CronJob), also
//! when the intermediate object is not listed (a ReplicaSet `web-<hash>`
//! whose pods carry `pod-template-hash: <hash>` belongs to Deployment
//! `web`), so the result names the same workload as the daemon's flow
//! reports (`"workload": "Deployment/web"`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels;
use super::L4;
use crate::inventory::Object;

pub type Labels = BTreeMap<String, String>;

/// The namespace-name label every namespace carries (Kubernetes >= 1.22,
/// "Well-Known Labels": `kubernetes.io/metadata.name`, immutable, set to
/// the namespace's name), so a policy can select a namespace by name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where cluster DNS lives when the inventory does not say otherwise: the
/// `kube-dns` Service in `kube-system` selecting `k8s-app: kube-dns` (the
/// names kubeadm and CoreDNS's chart use, kept for compatibility).
pub const DNS_NAMESPACE: &str = "kube-system";
pub const DNS_SERVICE: &str = "kube-dns";

/// The default metadata API addresses (CONTRACT.md, SegmentationPolicy
/// `metadataApi.addresses`).
pub const METADATA_ADDRESSES: [&str; 2] = ["169.254.169.254", "fd00:ec2::254"];

/// A workload: `Deployment/web` in `shop`. A pod without a controller is
/// its own workload of kind `Pod`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

impl WorkloadKey {
    pub fn new(namespace: &str, kind: &str, name: &str) -> Self {
        WorkloadKey {
            namespace: namespace.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }

    /// Parses the flow report's / metric's `Kind/name` form.
    pub fn parse(namespace: &str, workload: &str) -> Option<Self> {
        let (kind, name) = workload.split_once('/')?;
        if kind.is_empty() || name.is_empty() || name.contains('/') {
            return None;
        }
        Some(WorkloadKey::new(namespace, kind, name))
    }

    /// `Kind/name`.
    pub fn workload(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// A container port with a name (the target of a named `targetPort`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: L4,
    pub port: u16,
}

/// What the inventory knows about one workload.
#[derive(Clone, Debug, Default)]
pub struct WorkloadInfo {
    /// Stable labels selecting the workload's pods, if any are known.
    pub selector: Option<Labels>,
    /// Labels all its pods carry (for matching Service selectors).
    pub pod_labels: Option<Labels>,
    /// Names of its listed pods.
    pub pods: BTreeSet<String>,
    pub named_ports: Vec<NamedPort>,
    /// Every listed pod of it runs in the node's network namespace.
    pub host_network: bool,
}

/// One port of a Service.
#[derive(Clone, Debug)]
pub struct ServicePort {
    pub port: u16,
    pub protocol: L4,
    /// `targetPort`: a number or a container port name; defaults to `port`.
    pub target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// `None` for a Service without selector (endpoints managed by hand,
    /// ExternalName): its backends are unknown.
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
}

impl ServiceInfo {
    /// The Service port a connection to `port`/`protocol` used.
    pub fn port(&self, port: u16, protocol: L4) -> Option<&ServicePort> {
        self.ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
    }
}

/// The inventory, indexed for suggestions.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub workloads: BTreeMap<WorkloadKey, WorkloadInfo>,
    pub pod_workload: HashMap<(String, String), WorkloadKey>,
    pub pod_ip: HashMap<IpAddr, WorkloadKey>,
    pub services: BTreeMap<(String, String), ServiceInfo>,
    pub service_ip: HashMap<IpAddr, (String, String)>,
    /// Node name -> its addresses (`status.addresses`, IPs only).
    pub nodes: BTreeMap<String, BTreeSet<IpAddr>>,
    pub node_ip: HashMap<IpAddr, String>,
    pub namespaces: BTreeSet<String>,
    /// Cluster DNS: its namespace and the labels of its pods.
    pub dns: DnsTarget,
    pub metadata_addresses: BTreeSet<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsTarget {
    pub namespace: String,
    pub selector: Labels,
}

impl Default for DnsTarget {
    fn default() -> Self {
        DnsTarget {
            namespace: DNS_NAMESPACE.to_string(),
            selector: Labels::from([("k8s-app".to_string(), "kube-dns".to_string())]),
        }
    }
}

fn ns_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

/// A selector made only of `matchLabels` (what the suggestion can copy
/// into a podSelector); `None` with expressions.
fn match_labels(sel: &LabelSelector) -> Option<Labels> {
    if sel
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        return None;
    }
    sel.match_labels.clone()
}

fn named_ports(spec: Option<&PodSpec>) -> Vec<NamedPort> {
    crate::l4::named_container_ports(spec)
        .map(|p| NamedPort {
            name: p.name.to_string(),
            protocol: p.protocol,
            port: p.port,
        })
        .collect()
}

/// A workload object: its key, pod selector and pod template.
struct WorkloadObj<'a> {
    key: WorkloadKey,
    selector: Option<Labels>,
    template: Option<&'a PodTemplateSpec>,
    owner: Option<&'a OwnerReference>,
}

fn workload_objects(objects: &[Object]) -> Vec<WorkloadObj<'_>> {
    let mut out = Vec::new();
    for o in objects {
        let meta = o.metadata();
        let (selector, template) = match o {
            Object::Deployment(d) => (match_labels(&d.spec.selector), Some(&d.spec.template)),
            Object::ReplicaSet(r) => (match_labels(&r.spec.selector), r.spec.template.as_ref()),
            Object::StatefulSet(s) => (match_labels(&s.spec.selector), Some(&s.spec.template)),
            Object::DaemonSet(d) => (match_labels(&d.spec.selector), Some(&d.spec.template)),
            Object::Job(j) => (
                j.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .and_then(match_labels),
                j.spec.as_ref().map(|s| &s.template),
            ),
            Object::CronJob(c) => (None, c.spec.job_template.spec.as_ref().map(|s| &s.template)),
            Object::ReplicationController(r) => (
                r.spec.as_ref().and_then(|s| s.selector.clone()),
                r.spec.as_ref().and_then(|s| s.template.as_ref()),
            ),
            _ => continue,
        };
        out.push(WorkloadObj {
            key: WorkloadKey::new(&ns_of(meta), o.kind().as_str(), o.name()),
            selector,
            template,
            owner: controller_ref(meta),
        });
    }
    out
}

impl Catalog {
    pub fn build(objects: &[Object]) -> Catalog {
        let mut cat = Catalog {
            metadata_addresses: METADATA_ADDRESSES
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            ..Catalog::default()
        };
        let workloads = workload_objects(objects);
        let listed: BTreeMap<&WorkloadKey, &WorkloadObj<'_>> =
            workloads.iter().map(|w| (&w.key, w)).collect();

        // The top of a workload's owner chain (a Deployment owns its
        // ReplicaSets, a CronJob its Jobs).
        let top = |key: WorkloadKey| -> WorkloadKey {
            let mut key = key;
            for _ in 0..4 {
                let Some(w) = listed.get(&key) else { break };
                match w.owner {
                    Some(r) if !r.kind.is_empty() && !r.name.is_empty() && r.kind != "Node" => {
                        key = WorkloadKey::new(&key.namespace, &r.kind, &r.name);
                    }
                    _ => break,
                }
            }
            key
        };

        // Workloads with their template (pod selector and labels).
        for w in &workloads {
            let key = top(w.key.clone());
            if key != w.key {
                continue; // stands for its owner
            }
            let tmpl_labels = w
                .template
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone());
            // The pod selector of a Deployment/StatefulSet/DaemonSet is
            // immutable (apps/v1 API reference: "It must match the pod
            // template's labels"; changing it is rejected), so it keeps
            // selecting the pods across rollouts, while template labels
            // (`version: v2`) may change. Prefer it; fall back to the
            // template's stable labels (Jobs get a generated
            // `controller-uid` selector, CronJobs have none).
            let selector = w
                .selector
                .as_ref()
                .map(labels::stable)
                .filter(|s| !s.is_empty())
                .or_else(|| tmpl_labels.as_ref().map(labels::stable))
                .filter(|s| !s.is_empty());
            let spec = w.template.and_then(|t| t.spec.as_ref());
            cat.workloads.insert(
                key,
                WorkloadInfo {
                    selector,
                    pod_labels: tmpl_labels,
                    pods: BTreeSet::new(),
                    named_ports: named_ports(spec),
                    host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
                },
            );
        }
        let cronjobs: Vec<&WorkloadKey> = workloads
            .iter()
            .filter(|w| w.key.kind == "CronJob")
            .map(|w| &w.key)
            .collect();

        // Pods, attributed to their workload.
        let mut pod_label_sets: BTreeMap<WorkloadKey, Vec<Labels>> = BTreeMap::new();
        let mut pod_host: BTreeMap<WorkloadKey, bool> = BTreeMap::new();
        for o in objects {
            let Object::Pod(pod) = o else { continue };
            let ns = ns_of(&pod.metadata);
            let name = pod.metadata.name.clone().unwrap_or_default();
            let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
            let key = match controller_ref(&pod.metadata) {
                Some(r) if !r.kind.is_empty() && !r.name.is_empty() && r.kind != "Node" => {
                    let direct = WorkloadKey::new(&ns, &r.kind, &r.name);
                    if listed.contains_key(&direct) {
                        top(direct)
                    } else {
                        infer_owner(&direct, &pod_labels, &cronjobs)
                    }
                }
                // No controller, or a static pod (owned by its Node).
                _ => WorkloadKey::new(&ns, "Pod", &name),
            };
            let host_network = pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            let entry = cat.workloads.entry(key.clone()).or_default();
            entry.pods.insert(name.clone());
            if entry.named_ports.is_empty() {
                entry.named_ports = named_ports(pod.spec.as_ref());
            }
            pod_label_sets
                .entry(key.clone())
                .or_default()
                .push(pod_labels);
            *pod_host.entry(key.clone()).or_insert(true) &= host_network;
            if let Some(st) = &pod.status {
                let mut ips: Vec<IpAddr> = st
                    .pod_ips
                    .iter()
                    .flatten()
                    .filter_map(|p| p.ip.parse().ok())
                    .collect();
                ips.extend(st.pod_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()));
                // A hostNetwork pod uses its node's addresses: they are the
                // node's, not the pod's.
                if !host_network {
                    for ip in ips {
                        cat.pod_ip.entry(ip).or_insert_with(|| key.clone());
                    }
                }
            }
            cat.pod_workload.insert((ns, name), key);
        }
        for (key, sets) in pod_label_sets {
            let info = cat.workloads.entry(key.clone()).or_default();
            let common = labels::intersection(sets.iter()).unwrap_or_default();
            if info.pod_labels.is_none() {
                info.pod_labels = Some(common.clone());
            }
            if info.selector.is_none() {
                let s = labels::stable(&common);
                info.selector = (!s.is_empty()).then_some(s);
            }
            if pod_host.get(&key).copied().unwrap_or(false) {
                info.host_network = true;
            }
        }

        for o in objects {
            match o {
                Object::Namespace(n) => {
                    cat.namespaces
                        .insert(n.metadata.name.clone().unwrap_or_default());
                }
                Object::Service(s) => cat.add_service(s),
                Object::Node(n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    let addrs: BTreeSet<IpAddr> = n
                        .status
                        .as_ref()
                        .and_then(|s| s.addresses.as_ref())
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.address.parse().ok())
                        .collect();
                    for a in &addrs {
                        cat.node_ip.insert(*a, name.clone());
                    }
                    cat.nodes.insert(name, addrs);
                }
                _ => {}
            }
        }
        for k in cat.workloads.keys() {
            cat.namespaces.insert(k.namespace.clone());
        }
        if let Some(sel) = cat
            .services
            .get(&(DNS_NAMESPACE.to_string(), DNS_SERVICE.to_string()))
            .and_then(|s| s.selector.clone())
            .filter(|s| !s.is_empty())
        {
            cat.dns.selector = sel;
        }
        cat
    }

    fn add_service(&mut self, s: &Service) {
        let namespace = ns_of(&s.metadata);
        let name = s.metadata.name.clone().unwrap_or_default();
        let spec = s.spec.as_ref();
        let selector = spec
            .and_then(|s| s.selector.clone())
            .filter(|s| !s.is_empty());
        let mut ports = Vec::new();
        for p in spec.and_then(|s| s.ports.as_ref()).into_iter().flatten() {
            let (Ok(port), Some(protocol)) = (
                u16::try_from(p.port),
                L4::parse(p.protocol.as_deref().unwrap_or("TCP")),
            ) else {
                continue;
            };
            // ServicePort.targetPort: "Number or name of the port to access
            // on the pods targeted by the service ... If this is not
            // specified, the value of the 'port' field is used."
            let target = match &p.target_port {
                Some(IntOrString::Int(n)) => u16::try_from(*n)
                    .ok()
                    .filter(|n| *n != 0)
                    .map_or(Target::Number(port), Target::Number),
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) if n != 0 => Target::Number(n),
                    _ => Target::Name(s.clone()),
                },
                None => Target::Number(port),
            };
            ports.push(ServicePort {
                port,
                protocol,
                target,
            });
        }
        for ip in spec
            .and_then(|s| s.cluster_ips.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.and_then(|s| s.cluster_ip.clone()))
        {
            if let Ok(ip) = ip.parse() {
                self.service_ip
                    .insert(ip, (namespace.clone(), name.clone()));
            }
        }
        self.services.insert(
            (namespace.clone(), name.clone()),
            ServiceInfo {
                namespace,
                name,
                selector,
                ports,
            },
        );
    }

    /// The workloads whose pods a Service selector picks, in its namespace.
    pub fn backends(&self, svc: &ServiceInfo) -> Vec<&WorkloadKey> {
        let Some(sel) = &svc.selector else {
            return Vec::new();
        };
        self.workloads
            .iter()
            .filter(|(k, w)| {
                k.namespace == svc.namespace
                    && !w.host_network
                    && w.pod_labels
                        .as_ref()
                        .is_some_and(|l| labels::selects(sel, l))
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// Whether a workload is (part of) cluster DNS.
    pub fn is_dns(&self, key: &WorkloadKey) -> bool {
        key.namespace == self.dns.namespace
            && self
                .workloads
                .get(key)
                .and_then(|w| w.pod_labels.as_ref().or(w.selector.as_ref()))
                .is_some_and(|l| labels::selects(&self.dns.selector, l))
    }

    /// The port number a target port means on a workload's pods.
    pub fn resolve_target(&self, key: &WorkloadKey, target: &Target, protocol: L4) -> Option<u16> {
        match target {
            Target::Number(n) => Some(*n),
            Target::Name(name) => self.workloads.get(key).and_then(|w| {
                w.named_ports
                    .iter()
                    .find(|p| &p.name == name && p.protocol == protocol)
                    .map(|p| p.port)
            }),
        }
    }
}

/// The workload a pod's controller stands for when the controller itself is
/// not listed: a ReplicaSet `web-<hash>` whose pods carry
/// `pod-template-hash: <hash>` was made by Deployment `web` (the
/// Deployment controller names ReplicaSets `<deployment>-<pod-template-hash>`);
/// a Job `<cronjob>-<digits>` belongs to a listed CronJob of that name (the
/// CronJob controller names Jobs `<cronjob>-<scheduled time in minutes>`).
fn infer_owner(
    direct: &WorkloadKey,
    pod_labels: &Labels,
    cronjobs: &[&WorkloadKey],
) -> WorkloadKey {
    match direct.kind.as_str() {
        "ReplicaSet" => {
            if let Some(hash) = pod_labels.get("pod-template-hash") {
                if let Some(dep) = direct
                    .name
                    .strip_suffix(hash.as_str())
                    .and_then(|p| p.strip_suffix('-'))
                    .filter(|p| !p.is_empty())
                {
                    return WorkloadKey::new(&direct.namespace, "Deployment", dep);
                }
            }
            direct.clone()
        }
        "Job" => cronjobs
            .iter()
            .find(|c| {
                c.namespace == direct.namespace
                    && direct
                        .name
                        .strip_prefix(c.name.as_str())
                        .and_then(|r| r.strip_prefix('-'))
                        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|c| WorkloadKey::new(&c.namespace, "CronJob", &c.name))
            .or_else(|| {
                // Not listed either: the scheduled minute is a Unix minute
                // count (8+ digits today), as the daemon's index reads it.
                let (base, minute) = direct.name.rsplit_once('-')?;
                (minute.len() >= 8 && minute.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| WorkloadKey::new(&direct.namespace, "CronJob", base))
            })
            .unwrap_or_else(|| direct.clone()),
        _ => direct.clone(),
    }
}
