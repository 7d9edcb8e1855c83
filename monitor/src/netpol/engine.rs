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

use std::borrow::Cow;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::cidr::{IpBlock, IpRange};
use super::cluster::{
    Action, ClusterKind, ClusterPeer, ClusterPolicyError, ClusterPolicyObject, ClusterPort,
    ClusterSpec, Subject, Tier,
};
use super::model::{
    implicit_namespace_labels, namespace_labels, pod_endpoint, represented_workloads,
    workload_endpoint, Endpoint, Group, WorkloadRef,
};
use super::policy::{
    NamespaceScope, PeerSpec, PolicyError, PolicySpec, PortSpec, PortValue, RuleSpec,
};
use super::ports::{ConnSet, PortRange, Protocol};
use super::selector::Labels;
use crate::report::{DecidedBy, NetpolInfo, TcpState, Violation, ViolationKind};

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
    /// The rule that decided this direction; `None` when no policy of any
    /// tier applies (allowed by default).
    pub decided_by: Option<DecidedBy>,
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
            decided_by: None,
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
        let decided_by = self.decided_by().cloned();
        NetpolInfo {
            allowed: self.allowed,
            ingress: self.ingress.allowed_by,
            egress: self.egress.allowed_by,
            decided_by,
        }
    }

    /// The rule that decided the whole connection: the denying direction's
    /// (egress first, as the packet meets it first), or when allowed the
    /// egress decider, else the ingress one; `None` when nothing applied
    /// (or the connection is a pod's traffic to itself).
    pub fn decided_by(&self) -> Option<&DecidedBy> {
        if self.same_endpoint {
            return None;
        }
        if !self.egress.allowed {
            return self.egress.decided_by.as_ref();
        }
        if !self.ingress.allowed {
            return self.ingress.decided_by.as_ref();
        }
        self.egress
            .decided_by
            .as_ref()
            .or(self.ingress.decided_by.as_ref())
    }
}

/// Something the engine noticed while compiling; the object is skipped or
/// the listing may be imprecise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    InvalidPolicy(PolicyError),
    DuplicatePolicy { id: String },
    InvalidClusterPolicy(ClusterPolicyError),
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::InvalidPolicy(e) => write!(f, "{e} (policy skipped)"),
            Warning::DuplicatePolicy { id } => {
                write!(f, "{id} given twice; the last one is used")
            }
            Warning::InvalidClusterPolicy(e) => write!(f, "{e} (policy skipped)"),
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
    /// Nodes, for `nodes` peers of cluster policies (labels, addresses).
    pub nodes: Vec<&'a Node>,
    /// ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy.
    pub cluster_policies: Vec<ClusterPolicyRef<'a>>,
}

/// A cluster-scoped policy object with its kind.
#[derive(Clone, Copy, Debug)]
pub struct ClusterPolicyRef<'a> {
    pub kind: ClusterKind,
    pub object: &'a ClusterPolicyObject,
}

impl<'a> ClusterPolicyRef<'a> {
    /// The cluster policy an inventory object is, if it is one.
    pub fn of(o: &'a crate::inventory::Object) -> Option<Self> {
        use crate::inventory::Object as O;
        let (kind, object) = match o {
            O::ClusterNetworkPolicy(p) => (ClusterKind::ClusterNetworkPolicy, p),
            O::AdminNetworkPolicy(p) => (ClusterKind::AdminNetworkPolicy, p),
            O::BaselineAdminNetworkPolicy(p) => (ClusterKind::BaselineAdminNetworkPolicy, p),
            _ => return None,
        };
        Some(ClusterPolicyRef { kind, object })
    }
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

impl Compiled {
    /// The resolved rules of one direction.
    fn rules(&self, egress: bool) -> &[Rule] {
        if egress {
            &self.egress
        } else {
            &self.ingress
        }
    }

    /// The ipBlocks the rules of one direction name.
    fn ip_blocks(&self, egress: bool) -> impl Iterator<Item = &IpBlock> {
        let rules = if egress {
            &self.spec.egress
        } else {
            &self.spec.ingress
        };
        rules
            .iter()
            .flat_map(|r| r.peers.iter().flatten())
            .filter_map(|peer| match peer {
                PeerSpec::IpBlock(b) => Some(b),
                PeerSpec::Pods { .. } => None,
            })
    }
}

/// The peers of a cluster policy rule, resolved.
#[derive(Clone, Debug, Default)]
struct ClusterPeers {
    /// A Deny/Pass rule with a peer of an unknown type matches everything.
    all: bool,
    /// Endpoints selected by namespaces/pods peers, or whose address is in
    /// one of the rule's networks.
    pods: BitSet,
    /// `networks` CIDRs, and the addresses of the Nodes `nodes` selects
    /// (as host-length networks).
    nets: Vec<IpNet>,
}

impl ClusterPeers {
    #[inline]
    fn matches(&self, other: Target<'_>) -> bool {
        self.all
            || match other {
                Target::Endpoint(i) => self.pods.contains(i),
                Target::Ip(ip) => self.nets.iter().any(|n| n.contains(&ip)),
                Target::Range(r) => self.nets.iter().any(|n| {
                    let (lo, hi) = super::cidr::net_bounds(n);
                    matches!(n, IpNet::V4(_)) == r.v4 && lo <= r.lo && r.hi <= hi
                }),
            }
    }
}

#[derive(Clone, Debug)]
struct ClusterRuleC {
    index: u32,
    name: Option<Arc<str>>,
    action: Action,
    action_word: &'static str,
    peers: ClusterPeers,
    ports: Option<Vec<ClusterPort>>,
}

#[derive(Clone, Debug)]
struct ClusterCompiled {
    spec: ClusterSpec,
    name: Arc<str>,
    ingress: Vec<ClusterRuleC>,
    egress: Vec<ClusterRuleC>,
}

impl ClusterCompiled {
    /// The resolved rules of one direction.
    fn rules(&self, egress: bool) -> &[ClusterRuleC] {
        if egress {
            &self.egress
        } else {
            &self.ingress
        }
    }

    fn decided(&self, r: &ClusterRuleC, egress: bool) -> DecidedBy {
        DecidedBy {
            kind: Cow::Borrowed(self.spec.kind.as_str()),
            name: self.name.clone(),
            tier: Cow::Borrowed(self.spec.tier.as_str()),
            rule: Some(r.index),
            rule_name: r.name.clone(),
            direction: Cow::Borrowed(if egress { "egress" } else { "ingress" }),
            action: Cow::Borrowed(r.action_word),
        }
    }
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
    by_ip: crate::ipmap::IpMap<EndpointId>,
    policies: Vec<Compiled>,
    /// Per endpoint: the policies isolating it for ingress / egress.
    ingress_of: Vec<Vec<u32>>,
    egress_of: Vec<Vec<u32>>,
    ingress_names: Vec<Arc<[Arc<str>]>>,
    egress_names: Vec<Arc<[Arc<str>]>>,
    /// Cluster-scoped policies, Admin tier first, each tier by priority
    /// (then kind and name, for a stable order among equal priorities).
    cluster: Vec<ClusterCompiled>,
    /// Per endpoint: the cluster policies whose subject selects it, in
    /// evaluation order, per tier.
    admin_of: Vec<Vec<u32>>,
    baseline_of: Vec<Vec<u32>>,
    /// The staged objects applied to the same snapshot, when there are
    /// any (built next to this engine; see [`super::staged`]).
    staged: Option<Arc<super::staged::Overlay>>,
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
        let mut by_ip = crate::ipmap::IpMap::default();
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

        let (cluster, admin_of, baseline_of) =
            compile_cluster(objects, &endpoints, &namespaces, &by_ns, &mut warnings);

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
            cluster,
            admin_of,
            baseline_of,
            staged: None,
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

    /// The address blocks that can matter to one endpoint in one
    /// direction: the ipBlocks of the NetworkPolicies isolating it, and
    /// (egress) the networks and node addresses of the cluster policies
    /// whose subject it is. Addresses cut at these edges are treated alike
    /// by every rule that applies to the endpoint.
    pub fn ip_blocks_of(&self, id: EndpointId, egress: bool) -> Vec<IpBlock> {
        let e = id.0 as usize;
        let (policies, _) = self.np_of(e, egress);
        let cluster = self.admin_of[e].iter().chain(&self.baseline_of[e]);
        ip_blocks(
            policies.iter().map(|&pi| &self.policies[pi as usize]),
            cluster.map(|&ci| &self.cluster[ci as usize]),
            egress,
        )
    }

    /// The ipBlocks of ingress rules (`egress == false`) or of egress
    /// rules, for cutting the address space into ranges that every rule of
    /// that direction treats alike.
    pub fn ip_blocks(&self, egress: bool) -> Vec<IpBlock> {
        ip_blocks(&self.policies, &self.cluster, egress)
    }

    /// The NetworkPolicies isolating endpoint `e` in one direction, and
    /// their names.
    fn np_of(&self, e: usize, egress: bool) -> (&[u32], &Arc<[Arc<str>]>) {
        if egress {
            (&self.egress_of[e], &self.egress_names[e])
        } else {
            (&self.ingress_of[e], &self.ingress_names[e])
        }
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
        // Egress of the source towards the destination, ingress of the
        // destination from the source; an address outside is not judged.
        let side = |ep: Peer, egress: bool, other: Peer| match ep {
            Peer::Endpoint(id) => {
                self.direction(id.0, egress, self.target(other), dst_ep, q.protocol, q.port)
            }
            Peer::Ip(_) => Direction::open(),
        };
        let egress = side(src, true, dst);
        let ingress = side(dst, false, src);
        Decision {
            allowed: same || (egress.allowed && ingress.allowed),
            egress,
            ingress,
            same_endpoint: same,
        }
    }

    /// One direction of one endpoint through the three tiers: Admin (first
    /// matching rule by priority: Accept allows, Deny denies, Pass skips to
    /// the next tier), the NetworkPolicies (if any isolates the endpoint,
    /// allowed iff one of their rules allows), Baseline (first matching
    /// rule), else allowed.
    fn direction(
        &self,
        ep: u32,
        egress: bool,
        other: Target<'_>,
        dst: Option<&Endpoint>,
        protocol: Protocol,
        port: u16,
    ) -> Direction {
        let e = ep as usize;
        let (policies, names) = self.np_of(e, egress);
        if let Some((c, r)) =
            self.first_cluster_match(&self.admin_of[e], egress, other, dst, protocol, port)
        {
            if r.action != Action::Pass {
                return Direction {
                    isolated: !policies.is_empty(),
                    allowed: r.action == Action::Accept,
                    isolated_by: names.clone(),
                    allowed_by: Vec::new(),
                    decided_by: Some(c.decided(r, egress)),
                };
            }
        }
        if !policies.is_empty() {
            let mut allowed_by = Vec::new();
            let mut decided_by = None;
            for &pi in policies {
                let p = &self.policies[pi as usize];
                if let Some(ri) = p.rules(egress).iter().position(|r| {
                    peer_matches(&r.peers, other)
                        && ports_match(r.ports.as_deref(), dst, protocol, port)
                }) {
                    if decided_by.is_none() {
                        decided_by = Some(np_decided(&p.id, Some(ri as u32), egress, "Allow"));
                    }
                    allowed_by.push(p.id.clone());
                }
            }
            let allowed = !allowed_by.is_empty();
            return Direction {
                isolated: true,
                allowed,
                isolated_by: names.clone(),
                allowed_by,
                decided_by: decided_by.or_else(|| {
                    Some(np_decided(
                        &self.policies[policies[0] as usize].id,
                        None,
                        egress,
                        "Deny",
                    ))
                }),
            };
        }
        if let Some((c, r)) =
            self.first_cluster_match(&self.baseline_of[e], egress, other, dst, protocol, port)
        {
            // A Pass in the Baseline tier leaves the default (allowed).
            return Direction {
                allowed: r.action != Action::Deny,
                decided_by: Some(c.decided(r, egress)),
                ..Direction::open()
            };
        }
        Direction::open()
    }

    /// The first rule of the given cluster policies (in evaluation order)
    /// that matches the connection.
    #[inline]
    fn first_cluster_match(
        &self,
        list: &[u32],
        egress: bool,
        other: Target<'_>,
        dst: Option<&Endpoint>,
        protocol: Protocol,
        port: u16,
    ) -> Option<(&ClusterCompiled, &ClusterRuleC)> {
        for &ci in list {
            let c = &self.cluster[ci as usize];
            for r in c.rules(egress) {
                if r.peers.matches(other)
                    && cluster_ports_match(r.ports.as_deref(), dst, protocol, port)
                {
                    return Some((c, r));
                }
            }
        }
        None
    }

    /// The staged overlay built from the same snapshot, if any.
    pub fn staged(&self) -> Option<&super::staged::Overlay> {
        self.staged.as_deref()
    }

    /// Attaches the staged overlay built from the same snapshot.
    pub fn set_staged(&mut self, overlay: Option<super::staged::Overlay>) {
        self.staged = overlay.map(Arc::new);
    }

    /// Names of the ClusterNetworkPolicies whose subject selects `src` or
    /// `dst` (the policies that apply to a connection between them).
    pub fn cluster_subject_names(&self, src: Peer, dst: Peer) -> Vec<&str> {
        let mut out = Vec::new();
        for p in [src, dst] {
            if let Peer::Endpoint(id) = self.resolve(p) {
                let e = id.0 as usize;
                for &ci in self.admin_of[e].iter().chain(&self.baseline_of[e]) {
                    let c = &self.cluster[ci as usize];
                    if c.spec.kind == ClusterKind::ClusterNetworkPolicy && !out.contains(&&*c.name)
                    {
                        out.push(&*c.name);
                    }
                }
            }
        }
        out
    }

    /// `Kind/name` of every valid cluster-scoped policy, in evaluation order.
    pub fn cluster_policy_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.cluster.iter().map(|c| c.spec.id())
    }

    /// Does some cluster-scoped policy select this endpoint as its subject?
    pub fn has_cluster_subject(&self, id: EndpointId) -> bool {
        !self.admin_of[id.0 as usize].is_empty() || !self.baseline_of[id.0 as usize].is_empty()
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
        // As in `evaluate`: egress of the source, ingress of the destination.
        let side = |ep: ConnSide<'a>, egress: bool, other: ConnSide<'a>| match ep {
            ConnSide::Endpoint(id) => self.direction_conns(id.0, egress, as_target(other), dst_ep),
            ConnSide::Range(_) => ConnSet::all(),
        };
        let egress = side(src, true, dst);
        if egress.is_empty() {
            return egress;
        }
        let ingress = side(dst, false, src);
        egress.intersection(&ingress)
    }

    /// Every connection one direction of endpoint `ep` allows towards (or
    /// from) `other`: the per-connection logic of [`Engine::direction`]
    /// applied to whole sets. Each tier takes from what is still undecided:
    /// a rule decides the part of its ports not decided by an earlier rule.
    fn direction_conns(
        &self,
        ep: u32,
        egress: bool,
        other: Target<'_>,
        dst: Option<&Endpoint>,
    ) -> ConnSet {
        let e = ep as usize;
        let mut allowed = ConnSet::empty();
        let mut undecided = ConnSet::all();
        let mut passed = ConnSet::empty();
        self.cluster_conns(
            &self.admin_of[e],
            egress,
            other,
            dst,
            &mut undecided,
            &mut allowed,
            &mut passed,
        );
        undecided.union(&passed);
        if undecided.is_empty() {
            return allowed;
        }
        let (policies, _) = self.np_of(e, egress);
        if !policies.is_empty() {
            let np = self.np_conns(policies, egress, other, dst);
            allowed.union(&undecided.intersection(&np));
            return allowed;
        }
        let mut passed = ConnSet::empty();
        self.cluster_conns(
            &self.baseline_of[e],
            egress,
            other,
            dst,
            &mut undecided,
            &mut allowed,
            &mut passed,
        );
        // Baseline Pass and no rule at all: the default, allowed.
        allowed.union(&passed);
        allowed.union(&undecided);
        allowed
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "three accumulators updated together; a struct would only rename them"
    )]
    fn cluster_conns(
        &self,
        list: &[u32],
        egress: bool,
        other: Target<'_>,
        dst: Option<&Endpoint>,
        undecided: &mut ConnSet,
        allowed: &mut ConnSet,
        passed: &mut ConnSet,
    ) {
        for &ci in list {
            let c = &self.cluster[ci as usize];
            for r in c.rules(egress) {
                if undecided.is_empty() {
                    return;
                }
                if !r.peers.matches(other) {
                    continue;
                }
                let hit = undecided.intersection(&cluster_rule_conns(r.ports.as_deref(), dst));
                if hit.is_empty() {
                    continue;
                }
                *undecided = undecided.difference(&hit);
                match r.action {
                    Action::Accept => allowed.union(&hit),
                    Action::Deny => {}
                    Action::Pass => passed.union(&hit),
                }
            }
        }
    }

    /// What the NetworkPolicies isolating an endpoint allow (the union of
    /// their matching rules).
    fn np_conns(
        &self,
        policies: &[u32],
        egress: bool,
        other: Target<'_>,
        dst: Option<&Endpoint>,
    ) -> ConnSet {
        let mut out = ConnSet::empty();
        for &pi in policies {
            let p = &self.policies[pi as usize];
            for r in p.rules(egress) {
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

/// The ipBlocks of `policies` and (egress: cluster policies name addresses
/// in egress rules only, `networks` and `nodes` as the nodes' addresses)
/// the networks of `cluster`, each once, in that order.
fn ip_blocks<'a>(
    policies: impl IntoIterator<Item = &'a Compiled>,
    cluster: impl IntoIterator<Item = &'a ClusterCompiled>,
    egress: bool,
) -> Vec<IpBlock> {
    let mut out: Vec<IpBlock> = Vec::new();
    let mut add = |b: IpBlock| {
        if !out.contains(&b) {
            out.push(b);
        }
    };
    for p in policies {
        p.ip_blocks(egress).cloned().for_each(&mut add);
    }
    if egress {
        for c in cluster {
            for r in &c.egress {
                r.peers.nets.iter().for_each(|net| {
                    add(IpBlock {
                        cidr: *net,
                        except: Vec::new(),
                    })
                });
            }
        }
    }
    out
}

fn np_decided(id: &Arc<str>, rule: Option<u32>, egress: bool, action: &'static str) -> DecidedBy {
    DecidedBy {
        kind: Cow::Borrowed("NetworkPolicy"),
        name: id.clone(),
        tier: Cow::Borrowed("NetworkPolicy"),
        rule,
        rule_name: None,
        direction: Cow::Borrowed(if egress { "egress" } else { "ingress" }),
        action: Cow::Borrowed(action),
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
            let (rule, reason) = match &dir.decided_by {
                Some(d) if d.kind != "NetworkPolicy" => {
                    let rule_name = d
                        .rule_name
                        .as_deref()
                        .map(|n| format!(" ({n:?})"))
                        .unwrap_or_default();
                    (
                        format!("{}/{}", d.kind, d.name),
                        format!(
                            "connection established although {} {} ({} tier) denies it: {side} rule {}{rule_name}, action {}: the network plugin is not enforcing cluster network policies",
                            d.kind,
                            d.name,
                            d.tier,
                            d.rule.map_or_else(|| "?".to_string(), |r| r.to_string()),
                            d.action
                        ),
                    )
                }
                _ => {
                    let by = dir
                        .isolated_by
                        .iter()
                        .map(|s| &**s)
                        .collect::<Vec<_>>()
                        .join(", ");
                    (
                        dir.isolated_by.first().map(|s| s.to_string()).unwrap_or_default(),
                        format!(
                            "connection established although NetworkPolicy denies it ({side} isolated by {by}, no rule allows it): the network plugin is not enforcing NetworkPolicy"
                        ),
                    )
                }
            };
            Some(Enforcement::Bypass(Violation {
                kind: ViolationKind::NetpolBypass,
                rule,
                reason,
            }))
        }
    }
}

type ClusterParts = (Vec<ClusterCompiled>, Vec<Vec<u32>>, Vec<Vec<u32>>);

/// Validates and resolves the cluster-scoped policies: per rule the
/// selected endpoints as a bitset, per endpoint the policies whose subject
/// selects it, in evaluation order.
fn compile_cluster(
    objects: &Objects<'_>,
    endpoints: &[Endpoint],
    namespaces: &HashMap<String, Labels>,
    by_ns: &HashMap<&str, Vec<u32>>,
    warnings: &mut Vec<Warning>,
) -> ClusterParts {
    let n = endpoints.len();
    let mut specs: Vec<ClusterSpec> = Vec::new();
    let mut seen: HashMap<(ClusterKind, String), usize> = HashMap::new();
    for p in &objects.cluster_policies {
        match ClusterSpec::parse(p.kind, p.object) {
            Ok(spec) => {
                let key = (spec.kind, spec.name.clone());
                if let Some(&i) = seen.get(&key) {
                    warnings.push(Warning::DuplicatePolicy { id: spec.id() });
                    specs[i] = spec;
                } else {
                    seen.insert(key, specs.len());
                    specs.push(spec);
                }
            }
            Err(e) => {
                tracing::info!(kind = %e.kind, name = %e.name, field = %e.field, "{e}; policy skipped");
                warnings.push(Warning::InvalidClusterPolicy(e));
            }
        }
    }
    // Evaluation order: Admin before Baseline; lower priority numbers
    // first ("the lower the number the higher the precedence"); equal
    // priorities are undefined upstream, ordered here by kind and name so
    // that the result does not depend on the order of the input.
    specs.sort_by(|a, b| {
        (a.tier, a.priority, a.kind, &a.name).cmp(&(b.tier, b.priority, b.kind, &b.name))
    });

    // Node addresses by node, for `nodes` peers.
    let node_addrs: Vec<(Labels, Vec<IpNet>)> = objects
        .nodes
        .iter()
        .map(|node| {
            let labels = node.metadata.labels.clone().unwrap_or_default();
            let addrs = node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .map(|a| {
                    a.iter()
                        .filter_map(|a| a.address.parse::<IpAddr>().ok())
                        .map(IpNet::from)
                        .collect()
                })
                .unwrap_or_default();
            (labels, addrs)
        })
        .collect();

    let select =
        |nsel: &super::selector::Selector, psel: &super::selector::Selector, set: &mut BitSet| {
            for (ns, labels) in namespaces {
                if !nsel.matches(labels) {
                    continue;
                }
                for &i in by_ns
                    .get(ns.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    if psel.matches(&endpoints[i as usize].labels) {
                        set.insert(i);
                    }
                }
            }
        };
    let everything = super::selector::Selector::everything();
    let resolve_rule = |index: usize, r: &super::cluster::ClusterRule| -> ClusterRuleC {
        let mut peers = ClusterPeers {
            all: false,
            pods: BitSet::new(n),
            nets: Vec::new(),
        };
        for p in &r.peers {
            match p {
                ClusterPeer::Namespaces(nsel) => select(nsel, &everything, &mut peers.pods),
                ClusterPeer::Pods { namespaces, pods } => select(namespaces, pods, &mut peers.pods),
                ClusterPeer::Nodes(sel) => {
                    for (labels, addrs) in &node_addrs {
                        if sel.matches(labels) {
                            peers.nets.extend(addrs.iter().copied());
                        }
                    }
                }
                ClusterPeer::Networks(nets) => {
                    for (i, ep) in endpoints.iter().enumerate() {
                        if ep.ips.iter().any(|ip| nets.iter().any(|n| n.contains(ip))) {
                            peers.pods.insert(i as u32);
                        }
                    }
                    peers.nets.extend(nets.iter().copied());
                }
                ClusterPeer::Unknown(field) => {
                    // Fail closed: an allowing rule loses this peer, a
                    // denying or passing one applies to every peer.
                    tracing::debug!(%field, "cluster policy peer of an unknown type");
                    if r.action != Action::Accept {
                        peers.all = true;
                    }
                }
            }
        }
        ClusterRuleC {
            index: index as u32,
            name: (!r.name.is_empty()).then(|| Arc::from(r.name.as_str())),
            action: r.action,
            action_word: r.action_word,
            peers,
            ports: r.ports.clone(),
        }
    };

    let mut admin_of = vec![Vec::new(); n];
    let mut baseline_of = vec![Vec::new(); n];
    let mut out = Vec::with_capacity(specs.len());
    for (ci, spec) in specs.into_iter().enumerate() {
        let mut subject = BitSet::new(n);
        match &spec.subject {
            Subject::Namespaces(nsel) => select(nsel, &everything, &mut subject),
            Subject::Pods { namespaces, pods } => select(namespaces, pods, &mut subject),
        }
        let lists = match spec.tier {
            Tier::Admin => &mut admin_of,
            Tier::Baseline => &mut baseline_of,
        };
        for (i, list) in lists.iter_mut().enumerate() {
            if subject.contains(i as u32) {
                list.push(ci as u32);
            }
        }
        let ingress = spec
            .ingress
            .iter()
            .enumerate()
            .map(|(i, r)| resolve_rule(i, r))
            .collect();
        let egress = spec
            .egress
            .iter()
            .enumerate()
            .map(|(i, r)| resolve_rule(i, r))
            .collect();
        out.push(ClusterCompiled {
            name: Arc::from(spec.name.as_str()),
            spec,
            ingress,
            egress,
        });
    }
    (out, admin_of, baseline_of)
}

/// Does a cluster rule's port list match one connection? A named port is
/// the destination pod's container port of that name (with its protocol);
/// towards an address that is no pod's it matches nothing.
#[inline]
fn cluster_ports_match(
    ports: Option<&[ClusterPort]>,
    dst: Option<&Endpoint>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let Some(ports) = ports else { return true };
    ports.iter().any(|p| match p {
        ClusterPort::Ports(proto, range) => *proto == protocol && range.contains(port),
        ClusterPort::Named(name) => dst.is_some_and(|d| {
            d.named_ports
                .iter()
                .any(|np| np.name == *name && np.protocol == protocol && np.port == port)
        }),
    })
}

/// Every connection a cluster rule's port list covers towards `dst`.
fn cluster_rule_conns(ports: Option<&[ClusterPort]>, dst: Option<&Endpoint>) -> ConnSet {
    let Some(ports) = ports else {
        return ConnSet::all();
    };
    let mut out = ConnSet::empty();
    for p in ports {
        match p {
            ClusterPort::Ports(proto, range) => out.insert(*proto, *range),
            ClusterPort::Named(name) => {
                for np in dst.map(|d| d.named_ports.as_slice()).unwrap_or_default() {
                    if np.name == *name {
                        out.insert(np.protocol, PortRange::single(np.port));
                    }
                }
            }
        }
    }
    out
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
        cluster: Vec<(ClusterKind, ClusterPolicyObject)>,
        nodes: Vec<Node>,
    }

    impl World {
        fn engine(&self) -> (Engine, Vec<Warning>) {
            Engine::build(&Objects {
                namespaces: self.ns.iter().collect(),
                pods: self.pods.iter().collect(),
                workloads: self.deps.iter().map(|d| d.workload_ref()).collect(),
                policies: self.nps.iter().collect(),
                nodes: self.nodes.iter().collect(),
                cluster_policies: self
                    .cluster
                    .iter()
                    .map(|(kind, object)| ClusterPolicyRef {
                        kind: *kind,
                        object,
                    })
                    .collect(),
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
            cluster: vec![],
            nodes: vec![],
        }
    }

    /// `world` plus cluster-scoped policies (`kind` from each document).
    fn tiered(policies: &[&str], cluster: &[&str]) -> World {
        let mut w = world(policies);
        w.cluster = cluster
            .iter()
            .map(|y| {
                let v: serde_json::Value =
                    serde_yaml_ng::from_str(y).expect("cluster policy parses");
                let kind = match v["kind"].as_str() {
                    Some("AdminNetworkPolicy") => ClusterKind::AdminNetworkPolicy,
                    Some("BaselineAdminNetworkPolicy") => ClusterKind::BaselineAdminNetworkPolicy,
                    _ => ClusterKind::ClusterNetworkPolicy,
                };
                (
                    kind,
                    serde_json::from_value(v).expect("cluster policy object"),
                )
            })
            .collect();
        w
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

    const ADMIN_DENY_OTHER_TO_SHOP: &str = "
kind: ClusterNetworkPolicy
metadata: {name: tenants}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - name: dns-ok
    action: Accept
    from: [{namespaces: {matchLabels: {team: b}}}]
    protocols: [{udp: {destinationPort: {number: 5353}}}]
  - name: no-other-tenant
    action: Deny
    from: [{namespaces: {matchLabels: {team: b}}}]
  - name: hand-down-inside
    action: Pass
    from: [{namespaces: {matchLabels: {team: a}}}]";

    const BASELINE_DENY_ALL: &str = "
kind: ClusterNetworkPolicy
metadata: {name: baseline}
spec:
  tier: Baseline
  priority: 0
  subject: {namespaces: {}}
  ingress:
  - {name: default-deny, action: Deny, from: [{namespaces: {}}]}";

    #[test]
    fn admin_tier_beats_network_policies_and_names_the_rule() {
        let allow_all = "
kind: NetworkPolicy
metadata: {name: allow-all, namespace: shop}
spec: {podSelector: {}, ingress: [{}]}";
        let (e, w) = tiered(&[allow_all], &[ADMIN_DENY_OTHER_TO_SHOP]).engine();
        assert!(w.is_empty(), "{w:?}");
        let d = ask(&e, "other/client", "shop/web", TCP, 80);
        assert!(
            !d.allowed,
            "Admin Deny wins over a NetworkPolicy allowing everything"
        );
        let by = d.decided_by().expect("a rule decided");
        assert_eq!(
            (
                &*by.kind,
                &*by.name,
                &*by.tier,
                by.rule,
                by.rule_name.as_deref(),
                &*by.action,
                &*by.direction
            ),
            (
                "ClusterNetworkPolicy",
                "tenants",
                "Admin",
                Some(1),
                Some("no-other-tenant"),
                "Deny",
                "ingress"
            )
        );
        let ok = ask(&e, "other/client", "shop/web", Protocol::Udp, 5353);
        assert!(ok.allowed, "the earlier Accept rule matches first");
        assert_eq!(
            ok.decided_by().map(|b| (b.rule, &*b.action)),
            Some((Some(0), "Accept"))
        );
        // Pass hands shop -> shop down to the NetworkPolicy, which allows.
        let p = ask(&e, "shop/api", "shop/web", TCP, 80);
        assert!(p.allowed);
        let by = p
            .ingress
            .decided_by
            .as_ref()
            .expect("NetworkPolicy decided");
        assert_eq!(
            (&*by.kind, &*by.name, by.rule, &*by.action),
            ("NetworkPolicy", "shop/allow-all", Some(0), "Allow")
        );
        // The bypass names the deciding Admin rule.
        let f = enforcement_finding(&d, TcpState::Established).expect("finding");
        let Enforcement::Bypass(v) = f else {
            panic!("bypass expected")
        };
        assert_eq!(v.rule, "ClusterNetworkPolicy/tenants");
        assert!(
            v.reason.contains("ClusterNetworkPolicy tenants (Admin tier) denies it: ingress rule 1 (\"no-other-tenant\"), action Deny"),
            "{}",
            v.reason
        );
        let info = d.into_netpol_info();
        assert_eq!(info.decided_by.map(|b| b.rule), Some(Some(1)));
    }

    #[test]
    fn baseline_applies_only_where_no_network_policy_isolates() {
        let (e, _) = tiered(&[DB_FROM_API], &[BASELINE_DENY_ALL]).engine();
        let d = ask(&e, "shop/web", "shop/api", TCP, 80);
        assert!(
            !d.allowed,
            "api has no NetworkPolicy: the Baseline deny applies"
        );
        assert_eq!(d.decided_by().map(|b| &*b.tier), Some("Baseline"));
        let d = ask(&e, "shop/api", "shop/db", TCP, 5432);
        assert!(
            d.allowed,
            "db is isolated by a NetworkPolicy that allows api: Baseline is not consulted"
        );
        assert_eq!(d.decided_by().map(|b| &*b.kind), Some("NetworkPolicy"));
        assert!(
            !ask(&e, "shop/web", "shop/db", TCP, 5432).allowed,
            "NetworkPolicy denial"
        );
        assert!(
            ask(&e, "10.9.9.9", "shop/api", TCP, 80).allowed,
            "namespaces peers never match an external source"
        );
        // A pod may still reach itself.
        assert!(ask(&e, "shop/api", "shop/api", TCP, 80).allowed);
        // Admin Pass -> no NetworkPolicy -> Baseline decides.
        let (e, _) = tiered(&[], &[ADMIN_DENY_OTHER_TO_SHOP, BASELINE_DENY_ALL]).engine();
        let d = ask(&e, "shop/api", "shop/web", TCP, 80);
        assert!(!d.allowed);
        assert_eq!(
            d.decided_by().map(|b| (&*b.name, &*b.action)),
            Some(("baseline", "Deny"))
        );
    }

    #[test]
    fn priorities_order_the_admin_tier_and_v1alpha1_kinds_mix_in() {
        let low = "
kind: ClusterNetworkPolicy
metadata: {name: a-accept}
spec:
  tier: Admin
  priority: 50
  subject: {namespaces: {}}
  egress: [{action: Accept, to: [{namespaces: {}}]}]";
        let high = "
kind: AdminNetworkPolicy
apiVersion: policy.networking.k8s.io/v1alpha1
metadata: {name: z-deny}
spec:
  priority: 5
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}
  egress:
  - {name: no-db, action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}],
     ports: [{portRange: {protocol: TCP, start: 5000, end: 6000}}, {namedPort: http}]}";
        let (e, w) = tiered(&[], &[low, high]).engine();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            e.cluster_policy_ids().collect::<Vec<_>>(),
            ["AdminNetworkPolicy/z-deny", "ClusterNetworkPolicy/a-accept"]
        );
        assert!(
            !ask(&e, "shop/web", "shop/db", TCP, 5432).allowed,
            "priority 5 denies first"
        );
        assert!(
            !ask(&e, "shop/web", "shop/db", TCP, 8080).allowed,
            "named port http = 8080 on db"
        );
        assert!(
            ask(&e, "shop/web", "shop/db", TCP, 7000).allowed,
            "outside the ports: the Accept at 50"
        );
        assert!(
            ask(&e, "shop/api", "shop/db", TCP, 5432).allowed,
            "api is not a subject of z-deny"
        );
        // Listing: the same logic on whole sets.
        let web = e.endpoint_by_name("shop", "web").unwrap();
        let db = e.endpoint_by_name("shop", "db").unwrap();
        let c = e.connections(Peer::Endpoint(web), Peer::Endpoint(db));
        assert_eq!(c.tcp.to_string(), "1-4999,6001-8079,8081-65535");
        assert!(c.udp.is_all() && c.other, "{c}");
    }

    #[test]
    fn networks_and_nodes_match_addresses_in_both_families() {
        let guard = "
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {name: no-metadata, action: Deny, to: [{networks: [169.254.169.254/32, 'fd00:ec2::254/128']}]}
  - {name: no-kubelet, action: Deny, to: [{nodes: {matchLabels: {role: worker}}}], protocols: [{tcp: {destinationPort: {number: 10250}}}]}
  - {name: pods-by-cidr, action: Deny, to: [{networks: [10.0.1.0/24]}]}";
        let mut w = tiered(&[], &[guard]);
        w.nodes = vec![serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"role": "worker"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}, {"type": "InternalIP", "address": "2001:db8::10"}]}
        })).unwrap()];
        let (e, warnings) = w.engine();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(!ask(&e, "shop/web", "169.254.169.254", TCP, 80).allowed);
        assert!(
            !ask(&e, "shop/web", "fd00:ec2::254", TCP, 80).allowed,
            "IPv6 networks apply"
        );
        assert!(ask(&e, "shop/web", "169.254.169.253", TCP, 80).allowed);
        assert!(!ask(&e, "shop/web", "192.0.2.10", TCP, 10250).allowed);
        assert!(
            !ask(&e, "shop/web", "2001:db8::10", TCP, 10250).allowed,
            "node IPv6 address"
        );
        assert!(
            ask(&e, "shop/web", "192.0.2.10", TCP, 22).allowed,
            "other port"
        );
        assert!(
            !ask(&e, "shop/web", "other/client", TCP, 80).allowed,
            "networks match pod addresses too"
        );
        assert!(ask(&e, "shop/web", "shop/api", TCP, 80).allowed);
    }

    #[test]
    fn unknown_peer_fields_fail_closed() {
        let accept = "
kind: ClusterNetworkPolicy
metadata: {name: future-accept}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress: [{action: Accept, to: [{domainNames: ['*.example.com']}]}]";
        let deny = "
kind: ClusterNetworkPolicy
metadata: {name: future-deny}
spec:
  tier: Admin
  priority: 2
  subject: {namespaces: {matchLabels: {team: b}}}
  egress: [{action: Deny, to: [{domainNames: ['*.example.com']}]}]";
        let (e, w) = tiered(&[], &[accept, deny]).engine();
        assert!(w.is_empty(), "{w:?}");
        let d = ask(&e, "shop/web", "8.8.8.8", TCP, 443);
        assert!(
            d.allowed && d.decided_by().is_none(),
            "an Accept with an unknown peer matches nothing: {d:?}"
        );
        let d = ask(&e, "other/client", "shop/web", TCP, 80);
        assert!(!d.allowed, "a Deny with an unknown peer denies all");
        assert_eq!(d.decided_by().map(|b| &*b.name), Some("future-deny"));
    }

    #[test]
    fn invalid_cluster_policy_is_skipped_with_its_field() {
        let bad = "
kind: ClusterNetworkPolicy
metadata: {name: bad}
spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Allow, to: [{namespaces: {}}]}]}";
        let (e, w) = tiered(&[], &[bad, BASELINE_DENY_ALL]).engine();
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0].to_string(),
            "ClusterNetworkPolicy bad: spec.egress[0].action: unknown action \"Allow\" (expected Accept, Deny or Pass) (policy skipped)"
        );
        assert_eq!(e.cluster_policy_ids().count(), 1);
    }
}
