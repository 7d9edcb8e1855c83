//! The lab's cluster as plain data, and everything written from it: the
//! inventory (exactly what `kubectl get ns,pods,svc,sa,nodes,networkpolicies
//! -A -o json` prints, plus the owning ReplicaSets/Deployments/StatefulSet),
//! the SegmentationPolicy, and kube-proxy's nftables ruleset for the Services.
//!
//! Addresses are private ranges of the lab's own, inside its namespaces only:
//! pods 10.98.0.0/24 + fd98::/64, Services 10.97.0.0/16 + fd97::/108, the
//! node 10.99.0.1 + fd99::1, the cloud's metadata API 169.254.169.254 +
//! fd00:ec2::254 (the addresses EC2 uses).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{json, Value};

pub const NODE_IP4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1);
/// The cloud side of the node's uplink (the "hypervisor").
pub const CLOUD_IP4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 254);
pub const CLOUD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 0xfe);
pub const METADATA_IP4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const METADATA_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// The pods' IPv6 default gateway: a link-local address on every host-side
/// veth, as Calico does (fe80::/64 is scoped to each link).
pub const POD_GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
pub const POD_CIDR4: &str = "10.98.0.0/24";
pub const POD_CIDR6: &str = "fd98::/64";
/// The second node: its address on the underlay link to the first (which
/// has 10.99.1.1 / fd99:1::1 there), and its pods' networks.
pub const NODE2_IP4: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 2);
pub const NODE2_IP6: Ipv6Addr = Ipv6Addr::new(0xfd99, 1, 0, 0, 0, 0, 0, 2);
pub const UNDERLAY1_IP4: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
pub const UNDERLAY1_IP6: Ipv6Addr = Ipv6Addr::new(0xfd99, 1, 0, 0, 0, 0, 0, 1);
pub const POD2_CIDR4: &str = "10.98.1.0/24";
pub const POD2_CIDR6: &str = "fd98:1::/64";
/// Labels of segwatch's DaemonSet pods (what `--agent-selector` matches).
pub const AGENT_LABEL: (&str, &str) = ("app.kubernetes.io/name", "segwatch");
/// The namespace of the lab's `segwatch probe` pods.
pub const PROBE_NAMESPACE: &str = "segwatch-probe";
/// The label that tags a pod's connections as probe traffic.
pub const PROBE_LABEL: &str = "segwatch.dev/probe";
/// Ports the node listens on, as a real node does: kubelet, etcd, sshd.
pub const NODE_PORTS: [(u16, &str); 3] = [(10250, "kubelet"), (2379, "etcd"), (22, "sshd")];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// What owns a pod, as the API server would show it.
#[derive(Clone, Debug)]
pub enum Owner {
    /// Deployment `name` through ReplicaSet `name-<hash>`.
    Deployment {
        name: &'static str,
        hash: &'static str,
    },
    StatefulSet {
        name: &'static str,
    },
}

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: &'static str,
    pub name: &'static str,
    pub labels: Vec<(&'static str, &'static str)>,
    pub service_account: &'static str,
    pub owner: Owner,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// Container ports (name, port, protocol); the lab listens on them.
    pub ports: Vec<(&'static str, u16, Proto)>,
    /// Host-side veth name (Cilium calls its pod veths lxc*).
    pub host_if: &'static str,
    /// The node it runs on: 1 or 2.
    pub node: u8,
}

impl PodSpec {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.ip6)
        } else {
            IpAddr::V4(self.ip4)
        }
    }

    /// `Kind/name` of the workload (what segwatch reports).
    pub fn workload(&self) -> String {
        match &self.owner {
            Owner::Deployment { name, .. } => format!("Deployment/{name}"),
            Owner::StatefulSet { name } => format!("StatefulSet/{name}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub namespace: &'static str,
    pub name: &'static str,
    pub selector: Vec<(&'static str, &'static str)>,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// (port name, port, target port, protocol)
    pub ports: Vec<(&'static str, u16, u16, Proto)>,
}

impl ServiceSpec {
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.ip6)
        } else {
            IpAddr::V4(self.ip4)
        }
    }
}

/// The whole lab cluster. Deterministic: built from the prefix alone, so a
/// second process (`--keep`'s listener keeper, `--clean`) sees the same world.
#[derive(Clone, Debug)]
pub struct World {
    /// Start of every network namespace name the lab creates.
    pub prefix: String,
    pub namespaces: Vec<(&'static str, Vec<(&'static str, &'static str)>)>,
    pub pods: Vec<PodSpec>,
    pub services: Vec<ServiceSpec>,
}

/// 10.98.<node-1>.<d>: node 1's pods in 10.98.0.0/24, node 2's in 10.98.1.0/24.
fn v4n(node: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 98, node - 1, d)
}

/// fd98:<node-1>::<d>, written with the same digits as the IPv4 host part.
fn v6n(node: u8, d: u16) -> Ipv6Addr {
    let hex = u16::from_str_radix(&d.to_string(), 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0xfd98, u16::from(node - 1), 0, 0, 0, 0, 0, hex)
}

fn v4(d: u8) -> Ipv4Addr {
    v4n(1, d)
}

fn v6(d: u16) -> Ipv6Addr {
    v6n(1, d)
}

fn svc6(d: u16) -> Ipv6Addr {
    let hex = u16::from_str_radix(&d.to_string(), 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0xfd97, 0, 0, 0, 0, 0, 0, hex)
}

impl World {
    pub fn new(prefix: &str) -> Self {
        use Proto::{Tcp, Udp};
        let deploy = |name, hash| Owner::Deployment { name, hash };
        let pods = vec![
            PodSpec {
                namespace: "storefront",
                name: "web-5c8f7d9b6-2xkqp",
                labels: vec![("app", "web"), ("pod-template-hash", "5c8f7d9b6")],
                service_account: "web",
                owner: deploy("web", "5c8f7d9b6"),
                ip4: v4(10),
                ip6: v6(10),
                ports: vec![("http", 8080, Tcp)],
                host_if: "lxcweb1",
                node: 1,
            },
            PodSpec {
                namespace: "storefront",
                name: "web-5c8f7d9b6-m8w4z",
                labels: vec![("app", "web"), ("pod-template-hash", "5c8f7d9b6")],
                service_account: "web",
                owner: deploy("web", "5c8f7d9b6"),
                ip4: v4n(2, 11),
                ip6: v6n(2, 11),
                ports: vec![("http", 8080, Tcp)],
                host_if: "lxcweb2",
                node: 2,
            },
            PodSpec {
                namespace: "payments",
                name: "payments-api-7b9c5d4f8-qz7lt",
                labels: vec![("app", "payments-api"), ("pod-template-hash", "7b9c5d4f8")],
                service_account: "payments-api",
                owner: deploy("payments-api", "7b9c5d4f8"),
                ip4: v4n(2, 20),
                ip6: v6n(2, 20),
                ports: vec![("https", 8443, Tcp)],
                host_if: "lxcpayapi",
                node: 2,
            },
            PodSpec {
                namespace: "payments",
                name: "ledger-db-0",
                labels: vec![
                    ("app", "ledger-db"),
                    ("statefulset.kubernetes.io/pod-name", "ledger-db-0"),
                ],
                service_account: "ledger-db",
                owner: Owner::StatefulSet { name: "ledger-db" },
                ip4: v4n(2, 21),
                ip6: v6n(2, 21),
                ports: vec![("postgres", 5432, Tcp)],
                host_if: "lxcledger",
                node: 2,
            },
            PodSpec {
                namespace: "analytics",
                name: "reporter-6f7d8c9b5-v2hnt",
                labels: vec![("app", "reporter"), ("pod-template-hash", "6f7d8c9b5")],
                // Nobody gave it an identity of its own.
                service_account: "default",
                owner: deploy("reporter", "6f7d8c9b5"),
                ip4: v4(30),
                ip6: v6(30),
                ports: vec![],
                host_if: "lxcreporter",
                node: 1,
            },
            PodSpec {
                namespace: "kube-system",
                name: "coredns-5d78c9869d-4xk2b",
                labels: vec![("k8s-app", "kube-dns"), ("pod-template-hash", "5d78c9869d")],
                service_account: "coredns",
                owner: deploy("coredns", "5d78c9869d"),
                ip4: v4(40),
                ip6: v6(40),
                ports: vec![("dns", 53, Udp), ("dns-tcp", 53, Tcp)],
                host_if: "lxccoredns",
                node: 1,
            },
            PodSpec {
                namespace: "kube-system",
                name: "ebs-csi-controller-7c9d5f6b8-j4mzt",
                labels: vec![
                    ("app", "ebs-csi-controller"),
                    ("pod-template-hash", "7c9d5f6b8"),
                ],
                service_account: "ebs-csi-controller",
                owner: deploy("ebs-csi-controller", "7c9d5f6b8"),
                ip4: v4(41),
                ip6: v6(41),
                ports: vec![],
                host_if: "lxcebscsi",
                node: 1,
            },
            PodSpec {
                namespace: "kube-system",
                name: "metrics-server-6d94bc8694-kp9rx",
                labels: vec![
                    ("k8s-app", "metrics-server"),
                    ("pod-template-hash", "6d94bc8694"),
                ],
                service_account: "metrics-server",
                owner: deploy("metrics-server", "6d94bc8694"),
                ip4: v4(42),
                ip6: v6(42),
                ports: vec![],
                host_if: "lxcmetrics",
                node: 1,
            },
            // `segwatch probe` from two pods of node 1 (see crate::probes):
            // probe-open reaches what the node lets it, probe-filtered sits
            // behind the node's nftables filter.
            PodSpec {
                namespace: PROBE_NAMESPACE,
                name: "probe-open-5f6c7d8b9-q2wz4",
                labels: vec![
                    ("app", "probe-open"),
                    (PROBE_LABEL, "true"),
                    ("pod-template-hash", "5f6c7d8b9"),
                ],
                service_account: "default",
                owner: deploy("probe-open", "5f6c7d8b9"),
                ip4: v4(50),
                ip6: v6(50),
                ports: vec![],
                host_if: "lxcprobeopen",
                node: 1,
            },
            PodSpec {
                namespace: PROBE_NAMESPACE,
                name: "probe-filtered-6b7c8d9f5-k7xv2",
                labels: vec![
                    ("app", "probe-filtered"),
                    (PROBE_LABEL, "true"),
                    ("pod-template-hash", "6b7c8d9f5"),
                ],
                service_account: "default",
                owner: deploy("probe-filtered", "6b7c8d9f5"),
                ip4: v4(51),
                ip6: v6(51),
                ports: vec![],
                host_if: "lxcprobefilt",
                node: 1,
            },
        ];
        let services = vec![
            ServiceSpec {
                namespace: "kube-system",
                name: "kube-dns",
                selector: vec![("k8s-app", "kube-dns")],
                ip4: Ipv4Addr::new(10, 97, 0, 10),
                ip6: svc6(10),
                ports: vec![("dns", 53, 53, Udp), ("dns-tcp", 53, 53, Tcp)],
            },
            ServiceSpec {
                namespace: "payments",
                name: "payments-api",
                selector: vec![("app", "payments-api")],
                ip4: Ipv4Addr::new(10, 97, 0, 20),
                ip6: svc6(20),
                ports: vec![("https", 8443, 8443, Tcp)],
            },
            ServiceSpec {
                namespace: "storefront",
                name: "web",
                selector: vec![("app", "web")],
                ip4: Ipv4Addr::new(10, 97, 0, 30),
                ip6: svc6(30),
                ports: vec![("http", 80, 8080, Tcp)],
            },
        ];
        World {
            prefix: prefix.to_string(),
            namespaces: vec![
                ("storefront", vec![("tier", "front")]),
                ("payments", vec![("tier", "back"), ("pci", "true")]),
                ("analytics", vec![("tier", "back")]),
                ("kube-system", vec![]),
                ("default", vec![]),
                (PROBE_NAMESPACE, vec![]),
            ],
            pods,
            services,
        }
    }

    pub fn node_name(&self) -> String {
        format!("{}-node", self.prefix)
    }

    /// The first node's network namespace (the "host").
    pub fn node_ns(&self) -> String {
        format!("{}-node", self.prefix)
    }

    /// Name of node `n` (1 or 2).
    pub fn node_name_of(&self, n: u8) -> String {
        if n == 1 {
            self.node_name()
        } else {
            format!("{}-node{n}", self.prefix)
        }
    }

    /// Network namespace of node `n` (1 or 2).
    pub fn node_ns_of(&self, n: u8) -> String {
        self.node_name_of(n)
    }

    /// The address node `n`'s pods use as their gateway (and the Node's
    /// InternalIP).
    pub fn node_ip(&self, n: u8, v6: bool) -> IpAddr {
        match (n, v6) {
            (1, false) => IpAddr::V4(NODE_IP4),
            (1, true) => IpAddr::V6(NODE_IP6),
            (_, false) => IpAddr::V4(NODE2_IP4),
            (_, true) => IpAddr::V6(NODE2_IP6),
        }
    }

    /// The cloud provider's side of the node's uplink, holding the metadata API.
    pub fn cloud_ns(&self) -> String {
        format!("{}-cloud", self.prefix)
    }

    pub fn pod_ns(&self, pod: &PodSpec) -> String {
        format!("{}-{}-{}", self.prefix, pod.namespace, pod.name)
    }

    /// Every network namespace of the lab, node first.
    pub fn all_netns(&self) -> Vec<String> {
        let mut v = vec![self.node_ns(), self.node_ns_of(2), self.cloud_ns()];
        v.extend(self.pods.iter().map(|p| self.pod_ns(p)));
        v
    }

    /// The pod whose name starts with `name` (names carry generated suffixes).
    pub fn pod(&self, name: &str) -> &PodSpec {
        self.pods
            .iter()
            .find(|p| p.name.starts_with(name) || p.id().starts_with(name))
            .unwrap_or_else(|| panic!("the lab has no pod {name}"))
    }

    pub fn service(&self, ns: &str, name: &str) -> &ServiceSpec {
        self.services
            .iter()
            .find(|s| s.namespace == ns && s.name == name)
            .unwrap_or_else(|| panic!("the lab has no service {ns}/{name}"))
    }

    /// The pods a Service selects (its endpoints).
    pub fn endpoints(&self, svc: &ServiceSpec) -> Vec<&PodSpec> {
        self.pods
            .iter()
            .filter(|p| {
                p.namespace == svc.namespace && svc.selector.iter().all(|kv| p.labels.contains(kv))
            })
            .collect()
    }

    /// What an address is, in the lab's own words (for progress lines).
    pub fn describe(&self, ip: IpAddr) -> String {
        if let Some(p) = self
            .pods
            .iter()
            .find(|p| p.ip(false) == ip || p.ip(true) == ip)
        {
            return p.id();
        }
        if let Some(s) = self
            .services
            .iter()
            .find(|s| s.ip(false) == ip || s.ip(true) == ip)
        {
            return format!("svc {}/{}", s.namespace, s.name);
        }
        if ip == IpAddr::V4(NODE_IP4) || ip == IpAddr::V6(NODE_IP6) {
            return format!("node {}", self.node_name());
        }
        if ip == IpAddr::V4(NODE2_IP4) || ip == IpAddr::V6(NODE2_IP6) {
            return format!("node {}", self.node_name_of(2));
        }
        if ip == IpAddr::V4(METADATA_IP4) || ip == IpAddr::V6(METADATA_IP6) {
            return "metadata API".to_string();
        }
        ip.to_string()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )
}

/// A stable fake UID, so ownerReferences point at the objects they name.
fn uid(kind: &str, ns: &str, name: &str) -> String {
    // FNV-1a over the identity; only needs to be stable and distinct.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{kind}/{ns}/{name}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let h2 = h.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        h2 & 0xfff,
        h2 >> 16 & 0xffff_ffff_ffff
    )
}

const CREATED: &str = "2026-01-05T09:00:00Z";

fn meta(kind: &str, ns: Option<&str>, name: &str, lbls: &[(&str, &str)]) -> Value {
    let mut m = json!({
        "name": name,
        "uid": uid(kind, ns.unwrap_or(""), name),
        "creationTimestamp": CREATED,
        "resourceVersion": "1",
    });
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    if !lbls.is_empty() {
        m["labels"] = labels(lbls);
    }
    m
}

fn owner_ref(kind: &str, api: &str, ns: &str, name: &str) -> Value {
    json!([{
        "apiVersion": api,
        "kind": kind,
        "name": name,
        "uid": uid(kind, ns, name),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

impl World {
    /// The inventory: one `List`, exactly the shape `kubectl get
    /// ns,pods,svc,sa,nodes,networkpolicies,rs,deploy,sts -A -o json` prints
    /// (items carry apiVersion and kind; status.podIPs lists IPv4 then IPv6).
    pub fn inventory(&self) -> Value {
        let mut items = Vec::new();
        for (ns, lbls) in &self.namespaces {
            let mut l = vec![("kubernetes.io/metadata.name", *ns)];
            l.extend(lbls.iter().copied());
            items.push(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": meta("Namespace", None, ns, &l),
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }));
        }
        for n in [1, 2] {
            items.push(self.node_object(n));
            items.push(self.agent_pod(n));
        }
        let mut sas: Vec<(&str, &str)> = self
            .namespaces
            .iter()
            .map(|(ns, _)| (*ns, "default"))
            .collect();
        for p in &self.pods {
            if !sas.contains(&(p.namespace, p.service_account)) {
                sas.push((p.namespace, p.service_account));
            }
        }
        for (ns, sa) in sas {
            items.push(json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": meta("ServiceAccount", Some(ns), sa, &[]),
            }));
        }
        let mut workloads_done = Vec::new();
        for p in &self.pods {
            items.push(self.pod_object(p));
            if workloads_done.contains(&p.workload()) {
                continue;
            }
            workloads_done.push(p.workload());
            items.extend(self.workload_objects(p));
        }
        for s in &self.services {
            items.push(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": meta("Service", Some(s.namespace), s.name, &[]),
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": s.ip4.to_string(),
                    "clusterIPs": [s.ip4.to_string(), s.ip6.to_string()],
                    "ipFamilies": ["IPv4", "IPv6"],
                    "ipFamilyPolicy": "PreferDualStack",
                    "selector": labels(&s.selector),
                    "ports": s.ports.iter().map(|(name, port, target, proto)| json!({
                        "name": name, "port": port, "targetPort": target, "protocol": proto.as_str(),
                    })).collect::<Vec<_>>(),
                    "sessionAffinity": "None",
                    "internalTrafficPolicy": "Cluster",
                },
                "status": {"loadBalancer": {}},
            }));
        }
        items.extend(self.network_policies());
        json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": items,
            "metadata": {"resourceVersion": ""},
        })
    }

    /// segwatch's own DaemonSet pod on node `n` (hostNetwork): tells every
    /// agent that this node runs one too.
    fn agent_pod(&self, n: u8) -> Value {
        let name = format!("segwatch-{}", ["x7k2p", "m4q9d"][usize::from(n - 1)]);
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": meta("Pod", Some("segwatch"), &name, &[AGENT_LABEL]),
            "spec": {
                "serviceAccountName": "segwatch",
                "nodeName": self.node_name_of(n),
                "hostNetwork": true,
                "containers": [{"name": "segwatch", "image": "ghcr.io/segwatch/segwatch:0.1.0"}],
            },
            "status": {
                "phase": "Running",
                "hostIP": self.node_ip(n, false).to_string(),
                "podIP": self.node_ip(n, false).to_string(),
                "podIPs": [{"ip": self.node_ip(n, false).to_string()}, {"ip": self.node_ip(n, true).to_string()}],
            },
        })
    }

    fn node_object(&self, n: u8) -> Value {
        let name = self.node_name_of(n);
        let (c4, c6) = if n == 1 {
            (POD_CIDR4, POD_CIDR6)
        } else {
            (POD2_CIDR4, POD2_CIDR6)
        };
        let (a4, a6) = (
            self.node_ip(n, false).to_string(),
            self.node_ip(n, true).to_string(),
        );
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": meta("Node", None, &name, &[
                ("kubernetes.io/hostname", name.as_str()),
                ("kubernetes.io/os", "linux"),
                ("node-role.kubernetes.io/control-plane", ""),
            ]),
            "spec": {"podCIDR": c4, "podCIDRs": [c4, c6]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": a4},
                    {"type": "InternalIP", "address": a6},
                    {"type": "Hostname", "address": name},
                ],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            },
        })
    }

    fn pod_object(&self, p: &PodSpec) -> Value {
        let mut m = meta("Pod", Some(p.namespace), p.name, &p.labels);
        m["ownerReferences"] = match &p.owner {
            Owner::Deployment { name, hash } => owner_ref(
                "ReplicaSet",
                "apps/v1",
                p.namespace,
                &format!("{name}-{hash}"),
            ),
            Owner::StatefulSet { name } => owner_ref("StatefulSet", "apps/v1", p.namespace, name),
        };
        let container_name = match &p.owner {
            Owner::Deployment { name, .. } | Owner::StatefulSet { name } => *name,
        };
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": m,
            "spec": {
                "serviceAccountName": p.service_account,
                "nodeName": self.node_name_of(p.node),
                "containers": [{
                    "name": container_name,
                    "image": format!("registry.example/lab/{container_name}:1.0"),
                    "ports": p.ports.iter().map(|(name, port, proto)| json!({
                        "name": name, "containerPort": port, "protocol": proto.as_str(),
                    })).collect::<Vec<_>>(),
                }],
            },
            "status": {
                "phase": "Running",
                "hostIP": self.node_ip(p.node, false).to_string(),
                "hostIPs": [{"ip": self.node_ip(p.node, false).to_string()}, {"ip": self.node_ip(p.node, true).to_string()}],
                "podIP": p.ip4.to_string(),
                "podIPs": [{"ip": p.ip4.to_string()}, {"ip": p.ip6.to_string()}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        })
    }

    /// The ReplicaSet + Deployment (or the StatefulSet) owning `p`.
    fn workload_objects(&self, p: &PodSpec) -> Vec<Value> {
        let tmpl_labels: Vec<(&str, &str)> = p
            .labels
            .iter()
            .copied()
            .filter(|(k, _)| *k != "statefulset.kubernetes.io/pod-name")
            .collect();
        let replicas = self
            .pods
            .iter()
            .filter(|q| q.namespace == p.namespace && q.workload() == p.workload())
            .count();
        let app_labels: Vec<(&str, &str)> = tmpl_labels
            .iter()
            .copied()
            .filter(|(k, _)| *k != "pod-template-hash")
            .collect();
        let template = json!({
            "metadata": {"labels": labels(&tmpl_labels)},
            "spec": {"serviceAccountName": p.service_account, "containers": [{"name": "main", "image": "registry.example/lab/app:1.0"}]},
        });
        match &p.owner {
            Owner::Deployment { name, hash } => {
                let rs_name = format!("{name}-{hash}");
                let mut rs_meta = meta("ReplicaSet", Some(p.namespace), &rs_name, &tmpl_labels);
                rs_meta["ownerReferences"] = owner_ref("Deployment", "apps/v1", p.namespace, name);
                vec![
                    json!({
                        "apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": meta("Deployment", Some(p.namespace), name, &app_labels),
                        "spec": {
                            "replicas": replicas,
                            "selector": {"matchLabels": labels(&app_labels)},
                            "template": {"metadata": {"labels": labels(&app_labels)}, "spec": template["spec"].clone()},
                        },
                    }),
                    json!({
                        "apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "metadata": rs_meta,
                        "spec": {
                            "replicas": replicas,
                            "selector": {"matchLabels": labels(&tmpl_labels)},
                            "template": template,
                        },
                    }),
                ]
            }
            Owner::StatefulSet { name } => vec![json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": meta("StatefulSet", Some(p.namespace), name, &app_labels),
                "spec": {
                    "replicas": replicas,
                    "serviceName": name,
                    "selector": {"matchLabels": labels(&app_labels)},
                    "template": template,
                },
            })],
        }
    }

    /// NetworkPolicies: `payments` is locked down (default deny ingress, the
    /// storefront may call the API, the API may call the database); the rest
    /// of the cluster has none, as is common. The lab does not enforce them
    /// (no CNI plugin does here), which is exactly what segwatch can notice.
    pub fn network_policies(&self) -> Vec<Value> {
        let np = |name: &str, spec: Value| {
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": meta("NetworkPolicy", Some("payments"), name, &[]),
                "spec": spec,
            })
        };
        vec![
            np(
                "default-deny-ingress",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            ),
            np(
                "api-from-storefront",
                json!({
                    "podSelector": {"matchLabels": {"app": "payments-api"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{
                        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storefront"}},
                                  "podSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"protocol": "TCP", "port": "https"}],
                    }],
                }),
            ),
            np(
                "db-from-api",
                json!({
                    "podSelector": {"matchLabels": {"app": "ledger-db"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{
                        "from": [{"podSelector": {"matchLabels": {"app": "payments-api"}}}],
                        "ports": [{"protocol": "TCP", "port": 5432}],
                    }],
                }),
            ),
        ]
    }

    /// The lab's SegmentationPolicy: what may cross namespaces, the payments
    /// namespace micro-segmented, kubelet for kube-system only, the metadata
    /// API for the EBS CSI controller only.
    pub fn segmentation_policy(&self) -> Value {
        json!({
            "apiVersion": "segwatch.dev/v1alpha1",
            "kind": "SegmentationPolicy",
            "metadata": {"name": "lab-baseline"},
            "spec": {
                "crossNamespace": {"allow": [
                    {
                        "name": "storefront-to-payments-api",
                        "from": {"namespace": "storefront", "podSelector": {"matchLabels": {"app": "web"}}},
                        "to": {"namespace": "payments", "podSelector": {"matchLabels": {"app": "payments-api"}}, "ports": ["8443/TCP"]},
                    },
                    {
                        "name": "cluster-dns",
                        "from": {"namespace": "*"},
                        "to": {"namespace": "kube-system", "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}, "ports": ["53/UDP", "53/TCP"]},
                    },
                ]},
                "withinNamespace": [{
                    "namespace": "payments",
                    "allow": [{
                        "name": "api-to-ledger",
                        "from": {"podSelector": {"matchLabels": {"app": "payments-api"}}},
                        "to": {"podSelector": {"matchLabels": {"app": "ledger-db"}}, "ports": ["5432/TCP"]},
                    }],
                }],
                "hostAccess": {"allow": [
                    {"name": "kubelet-from-kube-system", "from": {"namespace": "kube-system"}, "ports": ["10250/TCP"]},
                ]},
                "metadataApi": {
                    "addresses": [METADATA_IP4.to_string(), METADATA_IP6.to_string()],
                    "allow": [
                        {"name": "ebs-csi-credentials", "from": {"namespace": "kube-system", "serviceAccount": "ebs-csi-controller"}},
                    ],
                },
            },
        })
    }

    /// kube-proxy's nftables mode, reduced to what ClusterIP Services need:
    /// per family a `kube-proxy` table whose `services` chain looks the
    /// destination up in the `service-ips` verdict map and jumps to a
    /// per-service chain that picks an endpoint chain (numgen random) which
    /// DNATs. Names follow kube-proxy's (`service-<hash>-<ns>/<name>/<proto>/<port>`,
    /// `endpoint-<hash>-...__<ip>/<port>`); see pkg/proxy/nftables/proxier.go.
    pub fn nft_ruleset(&self) -> String {
        let mut out = String::new();
        for (family, v6) in [("ip", false), ("ip6", true)] {
            let (addr_type, daddr, saddr) = if v6 {
                ("ipv6_addr", "ip6 daddr", "ip6 saddr")
            } else {
                ("ipv4_addr", "ip daddr", "ip saddr")
            };
            let mut chains = String::new();
            let mut elements = Vec::new();
            for s in &self.services {
                let eps = self.endpoints(s);
                for (pname, port, target, proto) in &s.ports {
                    let p = proto.as_str().to_lowercase();
                    let id = format!("{}/{}/{}/{}", s.namespace, s.name, p, pname);
                    let svc_chain =
                        format!("service-{}-{id}", short_hash(&format!("{family}{id}")));
                    elements.push(format!("{} . {p} . {port} : goto {svc_chain}", s.ip(v6)));
                    let mut ep_chains = Vec::new();
                    for ep in &eps {
                        let ip = ep.ip(v6);
                        // IPv6 colons are not valid in nft identifiers.
                        let ep_id = format!("{id}__{}/{target}", ip.to_string().replace(':', "."));
                        let ep_chain = format!(
                            "endpoint-{}-{ep_id}",
                            short_hash(&format!("{family}{ep_id}"))
                        );
                        let dnat = if v6 {
                            format!("[{ip}]:{target}")
                        } else {
                            format!("{ip}:{target}")
                        };
                        chains.push_str(&format!(
                            "  chain {ep_chain} {{\n    {saddr} {ip} jump mark-for-masquerade\n    meta l4proto {p} dnat to {dnat}\n  }}\n"
                        ));
                        ep_chains.push(ep_chain);
                    }
                    let pick = ep_chains
                        .iter()
                        .enumerate()
                        .map(|(i, c)| format!("{i} : goto {c}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    chains.push_str(&format!(
                        "  chain {svc_chain} {{\n    {daddr} {} {p} dport {port} {saddr} != {} jump mark-for-masquerade\n    numgen random mod {} vmap {{ {pick} }}\n  }}\n",
                        s.ip(v6),
                        if v6 {
                            format!("{{ {POD_CIDR6}, {POD2_CIDR6} }}")
                        } else {
                            format!("{{ {POD_CIDR4}, {POD2_CIDR4} }}")
                        },
                        ep_chains.len(),
                    ));
                }
            }
            out.push_str(&format!(
                "table {family} kube-proxy {{\n  comment \"rules for kube-proxy (segwatch lab)\"\n\
                 \x20 chain mark-for-masquerade {{\n    mark set mark or 0x4000\n  }}\n\
                 \x20 chain masquerading {{\n    type nat hook postrouting priority srcnat; policy accept;\n    mark and 0x4000 == 0 return\n    mark set mark xor 0x4000\n    masquerade fully-random\n  }}\n\
                 \x20 map service-ips {{\n    type {addr_type} . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}\n\
                 \x20 chain services {{\n    {daddr} . meta l4proto . th dport vmap @service-ips\n  }}\n\
                 \x20 chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}\n\
                 \x20 chain nat-output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}\n{chains}}}\n",
                elements.join(", "),
            ));
        }
        out
    }
}

/// kube-proxy prefixes chain names with a short hash of the name; any stable
/// 8 characters of base32 do here.
fn short_hash(s: &str) -> String {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (0..8)
        .map(|i| ALPHA[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pod_has_both_families_and_a_unique_interface() {
        let w = World::new("swlab");
        let mut ifs: Vec<_> = w.pods.iter().map(|p| p.host_if).collect();
        ifs.sort();
        ifs.dedup();
        assert_eq!(
            ifs.len(),
            w.pods.len(),
            "host interface names must be unique"
        );
        assert!(
            ifs.iter().all(|i| i.len() <= 15),
            "interface names are at most 15 bytes"
        );
        let inv = w.inventory();
        let pods: Vec<&Value> = inv["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|o| o["kind"] == "Pod" && o["spec"]["hostNetwork"] != true)
            .collect();
        assert_eq!(pods.len(), w.pods.len());
        let agents = inv["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|o| o["metadata"]["labels"][AGENT_LABEL.0] == AGENT_LABEL.1)
            .count();
        assert_eq!(agents, 2, "one segwatch agent pod per lab node");
        for p in pods {
            let ips = p["status"]["podIPs"].as_array().expect("podIPs");
            assert_eq!(ips.len(), 2, "IPv4 and IPv6 on every pod: {p}");
            assert!(ips[0]["ip"].as_str().expect("ip").contains('.'));
            assert!(ips[1]["ip"].as_str().expect("ip").contains(':'));
        }
    }

    #[test]
    fn owner_references_resolve_to_objects_in_the_list() {
        let inv = World::new("swlab").inventory();
        let items = inv["items"].as_array().expect("items");
        let find = |kind: &str, ns: &str, name: &str| {
            items.iter().find(|o| {
                o["kind"] == kind
                    && o["metadata"]["name"] == name
                    && o["metadata"]["namespace"] == ns
            })
        };
        for o in items {
            for r in o["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let ns = o["metadata"]["namespace"].as_str().expect("namespaced");
                let owner = find(
                    r["kind"].as_str().expect("kind"),
                    ns,
                    r["name"].as_str().expect("name"),
                )
                .unwrap_or_else(|| panic!("owner {r} of {} missing", o["metadata"]["name"]));
                assert_eq!(
                    owner["metadata"]["uid"], r["uid"],
                    "ownerReference uid must match"
                );
            }
        }
    }

    #[test]
    fn ruleset_maps_every_service_port_of_both_families() {
        let w = World::new("swlab");
        let rules = w.nft_ruleset();
        assert!(rules.contains("table ip kube-proxy") && rules.contains("table ip6 kube-proxy"));
        assert!(rules.contains("10.97.0.20 . tcp . 8443 : goto service-"));
        assert!(rules.contains("fd97::10 . udp . 53 : goto service-"));
        assert!(rules.contains("dnat to [fd98::40]:53"));
        // Two web endpoints: the service chain picks one at random.
        assert!(rules.contains("numgen random mod 2 vmap"));
    }

    #[test]
    fn one_pod_runs_on_the_default_service_account() {
        // Besides the probe pods, which run as their namespace's default
        // service account like deploy/probe's Job does.
        let w = World::new("swlab");
        assert_eq!(
            w.pods
                .iter()
                .filter(|p| p.service_account == "default" && p.namespace != PROBE_NAMESPACE)
                .count(),
            1
        );
        assert!(w
            .pods
            .iter()
            .filter(|p| p.namespace == PROBE_NAMESPACE)
            .all(|p| p.service_account == "default"));
    }
}
