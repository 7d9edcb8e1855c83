//! The compiled model and the per-connection decision.
//!
//! ```text
//!  build (when objects change)                      evaluate (per connection)
//!  ┌──────────────────────────────────────────┐    ┌──────────────────────────────┐
//!  │ endpoints, namespace labels              │    │ src policies (egress list)   │
//!  │ per policy: selected endpoints           │───►│   rule: bit test + ports     │
//!  │ per rule:   peer endpoints as a bitset,  │    │ dst policies (ingress list)  │
//!  │             ipBlocks, port specs         │    │   rule: bit test + ports     │
//!  │ per endpoint: policies isolating it      │    └──────────────────────────────┘
//!  └──────────────────────────────────────────┘
//! ```
//!
//! Semantics (API reference, NetworkPolicy / NetworkPolicySpec):
//! - A pod is isolated for a direction iff at least one policy selecting it
//!   (podSelector, in the policy's namespace) has that direction in its
//!   policyTypes; otherwise everything is allowed in that direction.
//! - Policies are additive: a connection is allowed in a direction if any
//!   rule of any policy isolating the pod for that direction allows it.
//! - A connection needs both: egress from the source and ingress to the
//!   destination ("both the egress policy on the source pod and the ingress
//!   policy on the destination pod need to allow the connection").
//! - Traffic from a pod to itself is always allowed (the contract; the
//!   Network Policies concept page lists "prevent loopback" among the things
//!   NetworkPolicy cannot do: "Pods cannot currently block localhost
//!   access"). Replicas of one workload are different pods.
//!
//! Conventions where the specification leaves it to the implementation
//! (the same as np-guard/netpol-analyzer's, the conformance suite):
//! - ipBlock peers match addresses outside the cluster only, never pods:
//!   "ipBlock ... should be cluster-external IPs, since Pod IPs are
//!   ephemeral and unpredictable". A pod's IP is that pod; an address that
//!   is no (non-hostNetwork) pod's is external.
//! - Pod selectors never match external addresses.
//! - A named port resolves on the destination pod (for egress too); towards
//!   an external address it matches nothing.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::cidr::{IpBlock, IpRange};
use super::model::{
    implicit_namespace_labels, namespace_labels, pod_endpoint, represented_workloads,
    workload_endpoint, Endpoint, Group, WorkloadRef,
};
use super::policy::{
    NamespaceScope, PeerSpec, PolicyError, PolicySpec, PortSpec, PortValue, RuleSpec,
};
use super::ports::{ConnSet, PortRange, Protocol};
use super::selector::Labels;
use crate::report::{NetpolInfo, TcpState, Violation, ViolationKind};

/// Index of an endpoint in the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u32);

/// A side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Endpoint(EndpointId),
    /// An address. If it is a pod's, the engine treats it as that pod.
    Ip(IpAddr),
}

/// One connection to judge: `src` opens it to `dst` on `port`/`protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub src: Peer,
    pub dst: Peer,
    pub protocol: Protocol,
    /// Destination port; ignored for protocols without ports.
    pub port: u16,
}

/// The verdict of one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Direction {
    /// Some policy selects the pod for this direction.
    pub isolated: bool,
    pub allowed: bool,
    /// `ns/name` of the policies isolating the pod in this direction.
    pub isolated_by: Arc<[Arc<str>]>,
    /// `ns/name` of the policies with a rule allowing this connection.
    pub allowed_by: Vec<Arc<str>>,
}

impl Direction {
    fn open() -> Self {
        // One shared empty list: an open direction is the common case and
        // must not allocate per evaluation.
        static NONE: std::sync::LazyLock<Arc<[Arc<str>]>> =
            std::sync::LazyLock::new(|| Arc::from([]));
        Direction {
            isolated: false,
            allowed: true,
            isolated_by: NONE.clone(),
            allowed_by: Vec::new(),
        }
    }
}

/// The verdict for a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Egress of the source (never isolated for an external source).
    pub egress: Direction,
    /// Ingress of the destination (never isolated for an external one).
    pub ingress: Direction,
    /// Source and destination are the same pod: always allowed.
    pub same_endpoint: bool,
}

impl Decision {
    /// The flow report's `netpol` field (moves the policy lists: this is
    /// once per flow).
    pub fn into_netpol_info(self) -> NetpolInfo {
        NetpolInfo {
            allowed: self.allowed,
            ingress: self.ingress.allowed_by,
            egress: self.egress.allowed_by,
        }
    }
}

/// Something the engine noticed while compiling; the object is skipped or
/// the listing may be imprecise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    InvalidPolicy(PolicyError),
    DuplicatePolicy { id: String },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::InvalidPolicy(e) => write!(f, "{e} (policy skipped)"),
            Warning::DuplicatePolicy { id } => {
                write!(f, "NetworkPolicy {id} given twice; the last one is used")
            }
        }
    }
}

/// The typed objects the engine is built from.
#[derive(Default, Clone)]
pub struct Objects<'a> {
    pub namespaces: Vec<&'a Namespace>,
    pub pods: Vec<&'a Pod>,
    pub workloads: Vec<WorkloadRef<'a>>,
    pub policies: Vec<&'a NetworkPolicy>,
}

/// A fixed-size set of endpoint ids.
#[derive(Clone, Debug, Default)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(n: usize) -> Self {
        BitSet(vec![0; n.div_ceil(64)])
    }
    fn insert(&mut self, i: u32) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
    #[inline]
    fn contains(&self, i: u32) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

#[derive(Clone, Debug)]
enum PeerMatch {
    /// `from`/`to` empty: every pod and every address.
    All,
    Some {
        pods: BitSet,
        blocks: Vec<IpBlock>,
    },
}

#[derive(Clone, Debug)]
struct Rule {
    peers: PeerMatch,
    ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Debug)]
struct Compiled {
    id: Arc<str>,
    spec: PolicySpec,
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
}

/// The other side of a direction check, resolved.
#[derive(Clone, Copy, Debug)]
enum Target<'a> {
    Endpoint(u32),
    Ip(IpAddr),
    /// A whole external range (connectivity listing); uniform for every
    /// ipBlock by construction.
    Range(&'a IpRange),
}

/// The compiled NetworkPolicy model of a cluster snapshot. Rebuild it when
/// objects change (`Engine::build`); queries are then bit tests.
#[derive(Clone, Debug, Default)]
pub struct Engine {
    endpoints: Vec<Endpoint>,
    namespaces: HashMap<String, Labels>,
    by_name: HashMap<String, EndpointId>,
    by_ip: crate::index::IpMap<EndpointId>,
    policies: Vec<Compiled>,
    /// Per endpoint: the policies isolating it for ingress / egress.
    ingress_of: Vec<Vec<u32>>,
    egress_of: Vec<Vec<u32>>,
    ingress_names: Vec<Arc<[Arc<str>]>>,
    egress_names: Vec<Arc<[Arc<str>]>>,
}

impl Engine {
    pub fn build(objects: &Objects<'_>) -> (Engine, Vec<Warning>) {
        let mut warnings = Vec::new();

        // Endpoints: every pod, then every workload none of whose pods is listed.
        let represented = represented_workloads(&objects.pods, &objects.workloads);
        let mut endpoints: Vec<Endpoint> = objects.pods.iter().map(|p| pod_endpoint(p)).collect();
        for w in &objects.workloads {
            let ep = workload_endpoint(w);
            if !represented.contains(&(ep.namespace.clone(), w.kind, ep.name.clone())) {
                endpoints.push(ep);
            }
        }
        // A stable order (namespace, group, name) makes ids and listings
        // independent of the order of the input files.
        endpoints.sort_by(|a, b| (&a.group, &a.name).cmp(&(&b.group, &b.name)));
        endpoints
            .dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name && a.kind == b.kind);

        // Namespaces: listed ones with their labels; those only referenced
        // by endpoints exist implicitly with just the name label.
        let mut namespaces: HashMap<String, Labels> = objects
            .namespaces
            .iter()
            .map(|n| namespace_labels(n))
            .collect();
        for ep in &endpoints {
            namespaces
                .entry(ep.namespace.clone())
                .or_insert_with(|| implicit_namespace_labels(&ep.namespace));
        }

        let mut by_ns: HashMap<&str, Vec<u32>> = HashMap::new();
        for (i, ep) in endpoints.iter().enumerate() {
            by_ns
                .entry(ep.namespace.as_str())
                .or_default()
                .push(i as u32);
        }

        // Names for lookups: pod/workload names first, then group names
        // (a workload name stands for its first pod).
        let mut by_name = HashMap::new();
        for (i, ep) in endpoints.iter().enumerate() {
            by_name.entry(ep.id()).or_insert(EndpointId(i as u32));
        }
        for (i, ep) in endpoints.iter().enumerate() {
            by_name
                .entry(format!("{}/{}", ep.group.namespace, ep.group.name))
                .or_insert(EndpointId(i as u32));
        }
        let mut by_ip = crate::index::IpMap::default();
        for (i, ep) in endpoints.iter().enumerate() {
            // A hostNetwork pod uses its node's address, shared with the node
            // and other hostNetwork pods: that address is not the pod's.
            if !ep.host_network {
                for ip in &ep.ips {
                    by_ip.entry(*ip).or_insert(EndpointId(i as u32));
                }
            }
        }

        // Policies: validated, then resolved against endpoints.
        let mut specs: Vec<PolicySpec> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for np in &objects.policies {
            match PolicySpec::try_from(*np) {
                Ok(spec) => {
                    let id = spec.id();
                    if let Some(&i) = seen.get(&id) {
                        warnings.push(Warning::DuplicatePolicy { id });
                        specs[i] = spec;
                    } else {
                        seen.insert(id, specs.len());
                        specs.push(spec);
                    }
                }
                Err(e) => {
                    tracing::info!(namespace = %e.namespace, name = %e.name, field = %e.field, "{e}; policy skipped");
                    warnings.push(Warning::InvalidPolicy(e));
                }
            }
        }
        specs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let n = endpoints.len();
        let mut ingress_of = vec![Vec::new(); n];
        let mut egress_of = vec![Vec::new(); n];
        let mut policies = Vec::with_capacity(specs.len());
        let resolve = |spec: &PolicySpec, rule: &RuleSpec| -> Rule {
            let peers = match &rule.peers {
                None => PeerMatch::All,
                Some(list) => {
                    let mut pods = BitSet::new(n);
                    let mut blocks = Vec::new();
                    for p in list {
                        match p {
                            PeerSpec::IpBlock(b) => blocks.push(b.clone()),
                            PeerSpec::Pods {
                                namespaces: scope,
                                pods: sel,
                            } => {
                                let nss: Vec<&str> = match scope {
                                    NamespaceScope::PolicyNamespace => {
                                        vec![spec.namespace.as_str()]
                                    }
                                    NamespaceScope::Matching(nsel) => namespaces
                                        .iter()
                                        .filter(|(_, l)| nsel.matches(l))
                                        .map(|(k, _)| k.as_str())
                                        .collect(),
                                };
                                for ns in nss {
                                    for &i in by_ns.get(ns).map(Vec::as_slice).unwrap_or_default() {
                                        if sel.matches(&endpoints[i as usize].labels) {
                                            pods.insert(i);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    PeerMatch::Some { pods, blocks }
                }
            };
            Rule {
                peers,
                ports: rule.ports.clone(),
            }
        };
        for (pi, spec) in specs.into_iter().enumerate() {
            for &i in by_ns
                .get(spec.namespace.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if spec.pod_selector.matches(&endpoints[i as usize].labels) {
                    if spec.types.ingress {
                        ingress_of[i as usize].push(pi as u32);
                    }
                    if spec.types.egress {
                        egress_of[i as usize].push(pi as u32);
                    }
                }
            }
            let ingress = spec.ingress.iter().map(|r| resolve(&spec, r)).collect();
            let egress = spec.egress.iter().map(|r| resolve(&spec, r)).collect();
            policies.push(Compiled {
                id: Arc::from(spec.id()),
                spec,
                ingress,
                egress,
            });
        }
        let names = |lists: &[Vec<u32>]| -> Vec<Arc<[Arc<str>]>> {
            lists
                .iter()
                .map(|l| l.iter().map(|&p| policies[p as usize].id.clone()).collect())
                .collect()
        };
        let ingress_names = names(&ingress_of);
        let egress_names = names(&egress_of);

        let engine = Engine {
            endpoints,
            namespaces,
            by_name,
            by_ip,
            policies,
            ingress_of,
            egress_of,
            ingress_names,
            egress_names,
        };
        (engine, warnings)
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn endpoint(&self, id: EndpointId) -> &Endpoint {
        &self.endpoints[id.0 as usize]
    }

    /// `ns/name` of a Pod, a workload endpoint, or a workload/owner name
    /// (then its first pod).
    pub fn endpoint_by_name(&self, namespace: &str, name: &str) -> Option<EndpointId> {
        self.by_name.get(&format!("{namespace}/{name}")).copied()
    }

    /// The pod owning an address (`status.podIPs`), hostNetwork pods excluded.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<EndpointId> {
        self.by_ip.get(&ip).copied()
    }

    /// `ns/name` of every valid policy, sorted.
    pub fn policy_ids(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|p| &*p.id)
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns)
    }

    /// The ipBlocks of ingress rules (`egress == false`) or of egress
    /// rules, for cutting the address space into ranges that every rule of
    /// that direction treats alike.
    pub fn ip_blocks(&self, egress: bool) -> Vec<IpBlock> {
        let mut out: Vec<IpBlock> = Vec::new();
        for p in &self.policies {
            let rules = if egress {
                &p.spec.egress
            } else {
                &p.spec.ingress
            };
            for r in rules {
                for peer in r.peers.iter().flatten() {
                    if let PeerSpec::IpBlock(b) = peer {
                        if !out.contains(b) {
                            out.push(b.clone());
                        }
                    }
                }
            }
        }
        out
    }

    fn resolve(&self, p: Peer) -> Peer {
        match p {
            Peer::Ip(ip) => self.by_ip.get(&ip).map_or(p, |&id| Peer::Endpoint(id)),
            e => e,
        }
    }

    fn target(&self, p: Peer) -> Target<'_> {
        match p {
            Peer::Endpoint(id) => Target::Endpoint(id.0),
            Peer::Ip(ip) => Target::Ip(ip),
        }
    }

    /// Judges one connection.
    pub fn evaluate(&self, q: &Query) -> Decision {
        let src = self.resolve(q.src);
        let dst = self.resolve(q.dst);
        let same = matches!((src, dst), (Peer::Endpoint(a), Peer::Endpoint(b)) if a == b);
        let dst_ep = match dst {
            Peer::Endpoint(id) => Some(&self.endpoints[id.0 as usize]),
            Peer::Ip(_) => None,
        };
        let egress = match src {
            Peer::Endpoint(id) => self.direction(
                &self.egress_of[id.0 as usize],
                &self.egress_names[id.0 as usize],
                true,
                self.target(dst),
                dst_ep,
                q.protocol,
                q.port,
            ),
            Peer::Ip(_) => Direction::open(),
        };
        let ingress = match dst {
            Peer::Endpoint(id) => self.direction(
                &self.ingress_of[id.0 as usize],
                &self.ingress_names[id.0 as usize],
                false,
                self.target(src),
                dst_ep,
                q.protocol,
                q.port,
            ),
            Peer::Ip(_) => Direction::open(),
        };
        Decision {
            allowed: same || (egress.allowed && ingress.allowed),
            egress,
            ingress,
            same_endpoint: same,
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the hot path passes resolved parts, not a struct to rebuild"
    )]
    fn direction(
        &self,
        policies: &[u32],
        names: &Arc<[Arc<str>]>,
        egress: bool,
        other: Target<'_>,
        dst: Option<&Endpoint>,
        protocol: Protocol,
        port: u16,
    ) -> Direction {
        if policies.is_empty() {
            return Direction::open();
        }
        let mut allowed_by = Vec::new();
        for &pi in policies {
            let p = &self.policies[pi as usize];
            let rules = if egress { &p.egress } else { &p.ingress };
            if rules.iter().any(|r| {
                peer_matches(&r.peers, other)
                    && ports_match(r.ports.as_deref(), dst, protocol, port)
            }) {
                allowed_by.push(p.id.clone());
            }
        }
        Direction {
            isolated: true,
            allowed: !allowed_by.is_empty(),
            isolated_by: names.clone(),
            allowed_by,
        }
    }

    /// Every connection (ports per protocol) the policies allow from `src`
    /// to `dst`. An address that is a pod's stands for that pod; two
    /// external addresses are not governed by any policy (all allowed).
    pub fn connections(&self, src: Peer, dst: Peer) -> ConnSet {
        let one = |ip: IpAddr| match ip {
            IpAddr::V4(a) => IpRange {
                v4: true,
                lo: u32::from(a) as u128,
                hi: u32::from(a) as u128,
            },
            IpAddr::V6(a) => IpRange {
                v4: false,
                lo: u128::from(a),
                hi: u128::from(a),
            },
        };
        match (self.resolve(src), self.resolve(dst)) {
            (Peer::Endpoint(a), Peer::Endpoint(b)) => {
                self.conns(ConnSide::Endpoint(a), ConnSide::Endpoint(b))
            }
            (Peer::Endpoint(a), Peer::Ip(ip)) => {
                self.conns(ConnSide::Endpoint(a), ConnSide::Range(&one(ip)))
            }
            (Peer::Ip(ip), Peer::Endpoint(b)) => {
                self.conns(ConnSide::Range(&one(ip)), ConnSide::Endpoint(b))
            }
            _ => ConnSet::all(),
        }
    }

    /// Every connection the policies allow from one endpoint to another, or
    /// between an endpoint and an external range (exactly one side external).
    pub(crate) fn conns<'a>(&'a self, src: ConnSide<'a>, dst: ConnSide<'a>) -> ConnSet {
        if let (ConnSide::Endpoint(a), ConnSide::Endpoint(b)) = (src, dst) {
            if a == b {
                return ConnSet::all();
            }
        }
        let as_target = |s: ConnSide<'a>| -> Target<'a> {
            match s {
                ConnSide::Endpoint(id) => Target::Endpoint(id.0),
                ConnSide::Range(r) => Target::Range(r),
            }
        };
        let dst_ep = match dst {
            ConnSide::Endpoint(id) => Some(&self.endpoints[id.0 as usize]),
            ConnSide::Range(_) => None,
        };
        let egress = match src {
            ConnSide::Endpoint(id) => {
                self.direction_conns(&self.egress_of[id.0 as usize], true, as_target(dst), dst_ep)
            }
            ConnSide::Range(_) => ConnSet::all(),
        };
        if egress.is_empty() {
            return egress;
        }
        let ingress = match dst {
            ConnSide::Endpoint(id) => self.direction_conns(
                &self.ingress_of[id.0 as usize],
                false,
                as_target(src),
                dst_ep,
            ),
            ConnSide::Range(_) => ConnSet::all(),
        };
        egress.intersection(&ingress)
    }

    fn direction_conns(
        &self,
        policies: &[u32],
        egress: bool,
        other: Target<'_>,
        dst: Option<&Endpoint>,
    ) -> ConnSet {
        if policies.is_empty() {
            return ConnSet::all();
        }
        let mut out = ConnSet::empty();
        for &pi in policies {
            let p = &self.policies[pi as usize];
            for r in if egress { &p.egress } else { &p.ingress } {
                if !peer_matches(&r.peers, other) {
                    continue;
                }
                match &r.ports {
                    None => return ConnSet::all(),
                    Some(specs) => {
                        for s in specs {
                            match &s.port {
                                PortValue::Any => out.insert(s.protocol, PortRange::ALL),
                                PortValue::Range(range) => out.insert(s.protocol, *range),
                                PortValue::Named(name) => {
                                    if let Some(n) =
                                        dst.and_then(|d| d.named_port(name, s.protocol))
                                    {
                                        out.insert(s.protocol, PortRange::single(n));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// A side for [`Engine::conns`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnSide<'a> {
    Endpoint(EndpointId),
    Range(&'a IpRange),
}

#[inline]
fn peer_matches(peers: &PeerMatch, other: Target<'_>) -> bool {
    match (peers, other) {
        (PeerMatch::All, _) => true,
        (PeerMatch::Some { pods, .. }, Target::Endpoint(i)) => pods.contains(i),
        (PeerMatch::Some { blocks, .. }, Target::Ip(ip)) => blocks.iter().any(|b| b.contains(ip)),
        (PeerMatch::Some { blocks, .. }, Target::Range(r)) => {
            blocks.iter().any(|b| b.contains_range(r))
        }
    }
}

#[inline]
fn ports_match(
    specs: Option<&[PortSpec]>,
    dst: Option<&Endpoint>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let Some(specs) = specs else { return true };
    specs.iter().any(|s| {
        s.protocol == protocol
            && match &s.port {
                PortValue::Any => true,
                PortValue::Range(r) => r.contains(port),
                PortValue::Named(name) => {
                    dst.and_then(|d| d.named_port(name, protocol)) == Some(port)
                }
            }
    })
}

impl Group {
    /// `ns/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the enforcement check concludes about a flow the policies deny.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// The connection went through although denied: the CNI does not
    /// enforce NetworkPolicy (violation `netpol_bypass`).
    Bypass(Violation),
    /// Denied and not completed: enforcement worked; report it as blocked.
    Blocked,
}

/// The enforcement check for one flow. `None` when the policies allow it.
///
/// `state` is the TCP state the datapath saw. For protocols without a
/// handshake, pass `Established` when the destination answered and
/// `Attempted` when it did not.
pub fn enforcement_finding(decision: &Decision, state: TcpState) -> Option<Enforcement> {
    if decision.allowed {
        return None;
    }
    match state {
        TcpState::Attempted | TcpState::Rejected => Some(Enforcement::Blocked),
        TcpState::Established | TcpState::Closed => {
            let (side, dir) = if !decision.egress.allowed {
                ("egress", &decision.egress)
            } else {
                ("ingress", &decision.ingress)
            };
            let by = dir
                .isolated_by
                .iter()
                .map(|s| &**s)
                .collect::<Vec<_>>()
                .join(", ");
            Some(Enforcement::Bypass(Violation {
                kind: ViolationKind::NetpolBypass,
                rule: dir.isolated_by.first().map(|s| s.to_string()).unwrap_or_default(),
                reason: format!(
                    "connection established although NetworkPolicy denies it ({side} isolated by {by}, no rule allows it): the network plugin is not enforcing NetworkPolicy"
                ),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpol::PodTemplateOwner;
    use k8s_openapi::api::apps::v1::Deployment;

    fn mk_ns(name: &str, labels: &[(&str, &str)]) -> Namespace {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Labels>()}
        }))
        .expect("namespace builds")
    }

    fn mk_pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns,
                         "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Labels>()},
            "spec": {"containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]},
            "status": {"podIPs": [{"ip": ip}]}
        }))
        .expect("pod builds")
    }

    fn mk_np(yaml: &str) -> NetworkPolicy {
        serde_yaml_ng::from_str(yaml).expect("policy parses")
    }

    struct World {
        ns: Vec<Namespace>,
        pods: Vec<Pod>,
        deps: Vec<Deployment>,
        nps: Vec<NetworkPolicy>,
    }

    impl World {
        fn engine(&self) -> (Engine, Vec<Warning>) {
            Engine::build(&Objects {
                namespaces: self.ns.iter().collect(),
                pods: self.pods.iter().collect(),
                workloads: self.deps.iter().map(|d| d.workload_ref()).collect(),
                policies: self.nps.iter().collect(),
            })
        }
    }

    /// shop: web (app=web), api (app=api), db (app=db); other: client
    /// (app=client); namespace `shop` labelled team=a, `other` team=b.
    fn world(policies: &[&str]) -> World {
        World {
            ns: vec![
                mk_ns("shop", &[("team", "a")]),
                mk_ns("other", &[("team", "b")]),
            ],
            pods: vec![
                mk_pod("shop", "web", &[("app", "web")], "10.0.0.1"),
                mk_pod("shop", "api", &[("app", "api")], "10.0.0.2"),
                mk_pod("shop", "db", &[("app", "db")], "10.0.0.3"),
                mk_pod("other", "client", &[("app", "client")], "10.0.1.1"),
            ],
            deps: vec![],
            nps: policies.iter().map(|p| mk_np(p)).collect(),
        }
    }

    fn ask(e: &Engine, src: &str, dst: &str, proto: Protocol, port: u16) -> Decision {
        let peer = |s: &str| match s.parse::<IpAddr>() {
            Ok(ip) => Peer::Ip(ip),
            Err(_) => {
                let (ns, name) = s.split_once('/').expect("ns/name");
                Peer::Endpoint(
                    e.endpoint_by_name(ns, name)
                        .unwrap_or_else(|| panic!("{s} must exist")),
                )
            }
        };
        e.evaluate(&Query {
            src: peer(src),
            dst: peer(dst),
            protocol: proto,
            port,
        })
    }

    const TCP: Protocol = Protocol::Tcp;

    #[test]
    fn no_policy_allows_everything() {
        let (e, w) = world(&[]).engine();
        assert!(w.is_empty());
        let d = ask(&e, "shop/web", "other/client", TCP, 1);
        assert!(
            d.allowed && !d.egress.isolated && !d.ingress.isolated,
            "{d:?}"
        );
        assert!(ask(&e, "8.8.8.8", "shop/db", Protocol::Other(1), 0).allowed);
    }

    const DB_FROM_API: &str = "
kind: NetworkPolicy
metadata: {name: db-from-api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 5432}]";

    #[test]
    fn ingress_isolation_and_allow() {
        let (e, _) = world(&[DB_FROM_API]).engine();
        let ok = ask(&e, "shop/api", "shop/db", TCP, 5432);
        assert!(ok.allowed, "api -> db:5432 is allowed by the rule");
        assert_eq!(
            ok.ingress
                .allowed_by
                .iter()
                .map(|s| &**s)
                .collect::<Vec<_>>(),
            ["shop/db-from-api"]
        );
        assert!(ok.ingress.isolated && !ok.egress.isolated);
        assert!(
            !ask(&e, "shop/api", "shop/db", TCP, 5433).allowed,
            "other port denied"
        );
        assert!(
            !ask(&e, "shop/api", "shop/db", Protocol::Udp, 5432).allowed,
            "protocol defaults to TCP only"
        );
        assert!(
            !ask(&e, "shop/web", "shop/db", TCP, 5432).allowed,
            "other pod denied"
        );
        assert!(
            !ask(&e, "other/client", "shop/db", TCP, 5432).allowed,
            "podSelector alone is the policy's namespace"
        );
        assert!(
            !ask(&e, "10.9.9.9", "shop/db", TCP, 5432).allowed,
            "pod selectors never match external addresses"
        );
        assert!(
            ask(&e, "shop/db", "shop/db", TCP, 9999).allowed,
            "a pod may always reach itself"
        );
        assert!(
            ask(&e, "shop/db", "shop/web", TCP, 80).allowed,
            "db is not isolated for egress"
        );
        // A pod IP stands for the pod.
        assert!(
            ask(&e, "10.0.0.2", "10.0.0.3", TCP, 5432).allowed,
            "IP of api -> IP of db"
        );
    }

    #[test]
    fn namespace_selector_and_combined_peer() {
        let p = "
kind: NetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: b}}
      podSelector: {matchLabels: {app: client}}
  - from:
    - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [shop]}]}
    ports: [{port: 80}]";
        let (e, _) = world(&[p]).engine();
        assert!(
            ask(&e, "other/client", "shop/web", TCP, 1234).allowed,
            "ns+pod selector in one peer"
        );
        assert!(
            ask(&e, "other/client", "shop/web", Protocol::Other(1), 0).allowed,
            "no ports: all protocols"
        );
        assert!(
            ask(&e, "shop/api", "shop/web", TCP, 80).allowed,
            "implicit name label selects the namespace"
        );
        assert!(!ask(&e, "shop/api", "shop/web", TCP, 81).allowed);
    }

    #[test]
    fn egress_with_ipblock_named_port_and_end_port() {
        let p = "
kind: NetworkPolicy
metadata: {name: out, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}]
    ports: [{port: 443}]
  - to: [{podSelector: {}}]
    ports: [{port: http}, {port: dns, protocol: UDP}, {port: 9000, endPort: 9100, protocol: SCTP}]
  - to: [{ipBlock: {cidr: 10.0.0.0/8}}]";
        let (e, _) = world(&[p]).engine();
        let d = ask(&e, "shop/web", "192.168.2.1", TCP, 443);
        assert!(
            d.allowed && d.egress.isolated && !d.ingress.isolated,
            "{d:?}"
        );
        assert!(
            !ask(&e, "shop/web", "192.168.1.1", TCP, 443).allowed,
            "except carved out"
        );
        assert!(!ask(&e, "shop/web", "192.168.2.1", TCP, 80).allowed);
        assert!(
            ask(&e, "shop/web", "shop/api", TCP, 8080).allowed,
            "named port http = 8080 on the destination"
        );
        assert!(!ask(&e, "shop/web", "shop/api", TCP, 80).allowed);
        assert!(
            ask(&e, "shop/web", "shop/api", Protocol::Udp, 5353).allowed,
            "named UDP port"
        );
        assert!(
            !ask(&e, "shop/web", "shop/api", TCP, 5353).allowed,
            "named port with the wrong protocol"
        );
        assert!(
            ask(&e, "shop/web", "shop/api", Protocol::Sctp, 9050).allowed,
            "endPort range"
        );
        assert!(!ask(&e, "shop/web", "shop/api", Protocol::Sctp, 9101).allowed);
        // ipBlock 10/8 contains pod IPs, but ipBlocks match only external addresses.
        assert!(
            !ask(&e, "shop/web", "other/client", TCP, 22).allowed,
            "ipBlock does not match pods"
        );
        assert!(
            ask(&e, "shop/web", "10.200.0.1", TCP, 22).allowed,
            "ipBlock matches an external address"
        );
        assert!(
            !ask(&e, "shop/web", "192.168.2.1", TCP, 8080).allowed,
            "named ports never match external addresses"
        );
    }

    #[test]
    fn additive_policies_and_policy_types() {
        let deny_all = "
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}";
        let allow_web = "
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  ingress: [{}]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}]}]";
        let (e, _) = world(&[deny_all, allow_web]).engine();
        let d = ask(&e, "shop/web", "shop/api", TCP, 80);
        assert!(d.egress.allowed, "allow-web adds egress web -> api");
        assert!(
            !d.ingress.allowed,
            "ingress to api is still denied by deny-all"
        );
        assert!(!d.allowed);
        assert_eq!(
            d.egress.isolated_by.len(),
            2,
            "both policies isolate web for egress"
        );
        assert!(
            !ask(&e, "other/client", "shop/web", TCP, 80).allowed,
            "allow-web's ingress rule has no effect (Egress only)"
        );
        let f = enforcement_finding(&d, TcpState::Established)
            .expect("denied + established is a finding");
        assert!(
            matches!(&f, Enforcement::Bypass(v) if v.kind == ViolationKind::NetpolBypass && v.rule == "shop/deny-all"),
            "{f:?}"
        );
        assert_eq!(
            enforcement_finding(&d, TcpState::Attempted),
            Some(Enforcement::Blocked)
        );
        assert_eq!(
            enforcement_finding(&d, TcpState::Rejected),
            Some(Enforcement::Blocked)
        );
        let ok = ask(&e, "shop/web", "shop/web", TCP, 80);
        assert!(ok.allowed && ok.same_endpoint);
        assert_eq!(
            enforcement_finding(&ok, TcpState::Closed),
            None,
            "allowed flows are no finding"
        );
        let info = d.clone().into_netpol_info();
        assert_eq!(
            (info.allowed, info.egress, info.ingress),
            (false, vec!["shop/allow-web".into()], vec![])
        );
    }

    #[test]
    fn invalid_policy_is_skipped_with_warning() {
        let bad = "
kind: NetworkPolicy
metadata: {name: bad, namespace: shop}
spec: {podSelector: {}, ingress: [{ports: [{port: 80, protocol: ICMP}]}]}";
        let (e, w) = world(&[bad]).engine();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].to_string().contains("shop/bad")
                && w[0]
                    .to_string()
                    .contains("spec.ingress[0].ports[0].protocol"),
            "{}",
            w[0]
        );
        assert!(
            ask(&e, "other/client", "shop/web", TCP, 80).allowed,
            "the invalid policy does not isolate"
        );
    }

    #[test]
    fn workloads_stand_for_missing_pods_only() {
        let dep = |name: &str, app: &str| -> Deployment {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"selector": {"matchLabels": {"app": app}},
                         "template": {"metadata": {"labels": {"app": app}},
                                      "spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8000}]}]}}}
            }))
            .expect("deployment builds")
        };
        let mut w = world(&[DB_FROM_API]);
        // `api` has a pod owned by ReplicaSet api-5d9f8 -> represented; `cache` has none.
        w.pods[1].metadata.owner_references = Some(vec![serde_json::from_value(serde_json::json!(
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-5d9f8", "uid": "u", "controller": true})).unwrap()]);
        w.deps = vec![dep("api", "api"), dep("cache", "api")];
        let (e, _) = w.engine();
        assert!(
            e.endpoint_by_name("shop", "cache").is_some(),
            "cache has no pods: the Deployment stands for them"
        );
        assert_eq!(
            e.endpoints()
                .iter()
                .filter(|ep| ep.kind == "Deployment")
                .count(),
            1,
            "api is represented by its pod"
        );
        assert!(
            ask(&e, "shop/cache", "shop/db", TCP, 5432).allowed,
            "template labels app=api are selected"
        );
        assert_eq!(
            e.endpoint(e.endpoint_by_name("shop", "api-5d9f8").unwrap())
                .name,
            "api",
            "the owner name finds the pod"
        );
    }
}
