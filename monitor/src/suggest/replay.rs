//! The built-in proof: every observed connection is judged by the
//! NetworkPolicy engine (`crate::netpol`) against the existing policies of
//! the inventory plus the suggested ones, and must be allowed; and what the
//! set allows between workloads that was never observed is counted.
//!
//! ```text
//!  inventory objects + suggested policies + pods seen only in flows
//!        ─► netpol::Engine
//!  Observed.conns ─► queries (pod / Service backends on the target port / address)
//!        ─► Allowed | Denied(reason) | Unverifiable(reason)
//!  every workload pair in the suggested namespaces ─► Engine::conns − observed ports
//!        ─► over-permission entries
//! ```
//!
//! The replay works on the connections as observed (the pod's name, and
//! the pod as the inventory has it), not on the edges the generator built,
//! so a generator mistake (a wrong label, a lost port) shows as a denial.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::catalog::{Catalog, Target, WorkloadKey};
use super::labels;
use super::observe::{Conn, ConnEnd, Observed, PeerKey, PortKey};
use super::{Proto, L4};
use crate::inventory::Object;
use crate::netpol::engine::ConnSide;
use crate::netpol::ports::{PortRange, PortSet};
use crate::netpol::{Decision, EndpointId, Engine, Objects, Peer, Protocol, Query};

/// The verdict for one observed connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied {
        reason: String,
    },
    /// The engine cannot judge it (e.g. a Service without backends in the
    /// inventory); listed, not counted as allowed.
    Unverifiable {
        reason: String,
    },
}

#[derive(Clone, Debug)]
pub struct ConnResult {
    pub conn: Conn,
    pub flows: u64,
    pub outcome: Outcome,
}

/// Allowed between two workloads, never observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverEntry {
    pub src: WorkloadKey,
    pub dst: WorkloadKey,
    /// `TCP 1-65535`, `UDP 53`, `other protocols`...
    pub unseen: Vec<(String, PortRange)>,
    /// Whether protocols without ports (ICMP...) are allowed unseen.
    pub other: bool,
    /// Number of (protocol, port) pairs allowed and not seen.
    pub ports: u64,
}

impl fmt::Display for OverEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .unseen
            .iter()
            .map(|(p, r)| format!("{p} {r}"))
            .collect();
        if self.other {
            parts.push("other protocols".to_string());
        }
        write!(f, "{} -> {}: {}", self.src, self.dst, parts.join(","))
    }
}

#[derive(Clone, Debug, Default)]
pub struct Replay {
    pub results: Vec<ConnResult>,
    /// Over-permission, largest first.
    pub over: Vec<OverEntry>,
    /// Engine warnings (invalid existing policies...), one line each.
    pub warnings: Vec<String>,
}

impl Replay {
    pub fn denied(&self) -> impl Iterator<Item = &ConnResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Denied { .. }))
    }

    pub fn unverifiable(&self) -> impl Iterator<Item = &ConnResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Unverifiable { .. }))
    }

    /// Every observed connection allowed (unverifiable ones aside).
    pub fn passed(&self) -> bool {
        self.denied().next().is_none()
    }
}

fn protocol(p: Proto) -> Protocol {
    match p {
        Proto::L4(L4::Tcp) => Protocol::Tcp,
        Proto::L4(L4::Udp) => Protocol::Udp,
        Proto::L4(L4::Sctp) => Protocol::Sctp,
        Proto::Other(n) => Protocol::Other(n),
    }
}

/// The engine's objects: the inventory's, the suggested policies, and pods
/// the flows name that the inventory lacks (with the labels the flow
/// reports carry, so the check judges the pod as it was seen).
fn build_engine(
    objects: &[Object],
    suggested: &[NetworkPolicy],
    extra_pods: &[Pod],
) -> (Engine, Vec<String>) {
    let mut o = Objects::from_inventory(objects);
    // The replay asks what the NetworkPolicies (inventory's and suggested)
    // decide; the cluster tiers are judged apart (suggest --format
    // clusternetworkpolicy).
    o.nodes.clear();
    o.cluster_policies.clear();
    o.pods.extend(extra_pods.iter());
    o.policies.extend(suggested.iter());
    let (engine, warnings) = Engine::build(&o);
    (engine, warnings.iter().map(|w| w.to_string()).collect())
}

/// Runs the replay and the over-permission count.
pub fn replay(
    objects: &[Object],
    cat: &Catalog,
    obs: &Observed,
    suggested: &[NetworkPolicy],
    scope: &BTreeSet<String>,
) -> Replay {
    // Pods seen in flows that the inventory does not list.
    let mut extra: BTreeMap<(String, String), Pod> = BTreeMap::new();
    for c in obs.conns.keys() {
        for end in [&c.src, &c.dst] {
            if let ConnEnd::Pod {
                workload,
                pod: Some(name),
                labels,
                ..
            } = end
            {
                let key = (workload.namespace.clone(), name.clone());
                if !cat.pod_workload.contains_key(&key) {
                    extra.entry(key).or_insert_with(|| Pod {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(workload.namespace.clone()),
                            labels: labels.clone(),
                            ..Default::default()
                        },
                        ..Default::default()
                    });
                }
            }
        }
    }
    let extra_pods: Vec<Pod> = extra.values().cloned().collect();
    let (engine, warnings) = build_engine(objects, suggested, &extra_pods);

    // Engine endpoint -> workload.
    let workload_of = |id: EndpointId| -> WorkloadKey {
        let ep = engine.endpoint(id);
        if ep.kind == "Pod" {
            cat.pod_workload
                .get(&(ep.namespace.clone(), ep.name.clone()))
                .cloned()
                .or_else(|| {
                    obs.conns.keys().find_map(|c| {
                        [&c.src, &c.dst].into_iter().find_map(|e| match e {
                            ConnEnd::Pod {
                                workload,
                                pod: Some(p),
                                ..
                            } if *p == ep.name && workload.namespace == ep.namespace => {
                                Some(workload.clone())
                            }
                            _ => None,
                        })
                    })
                })
                .unwrap_or_else(|| WorkloadKey::new(&ep.namespace, "Pod", &ep.name))
        } else {
            WorkloadKey::new(&ep.namespace, &ep.kind, &ep.name)
        }
    };
    let mut by_workload: BTreeMap<WorkloadKey, Vec<EndpointId>> = BTreeMap::new();
    for (i, ep) in engine.endpoints().iter().enumerate() {
        if ep.host_network {
            continue;
        }
        let id = EndpointId(i as u32);
        by_workload.entry(workload_of(id)).or_default().push(id);
    }

    let mut results = Vec::new();
    for (conn, ev) in &obs.conns {
        let outcome = judge(&engine, cat, &by_workload, conn);
        results.push(ConnResult {
            conn: conn.clone(),
            flows: ev.flows,
            outcome,
        });
    }

    let over = over_permission(&engine, cat, obs, &by_workload, scope);
    Replay {
        results,
        over,
        warnings,
    }
}

fn pod_ends(
    engine: &Engine,
    by_workload: &BTreeMap<WorkloadKey, Vec<EndpointId>>,
    workload: &WorkloadKey,
    pod: Option<&String>,
) -> Result<Vec<EndpointId>, String> {
    if let Some(p) = pod {
        if let Some(id) = engine.endpoint_by_name(&workload.namespace, p) {
            if engine.endpoint(id).name == *p {
                return Ok(vec![id]);
            }
        }
    }
    by_workload
        .get(workload)
        .filter(|v| !v.is_empty())
        .cloned()
        .ok_or_else(|| format!("{workload} has no pods in the inventory"))
}

fn judge(
    engine: &Engine,
    cat: &Catalog,
    by_workload: &BTreeMap<WorkloadKey, Vec<EndpointId>>,
    conn: &Conn,
) -> Outcome {
    let proto = protocol(conn.protocol);
    let port = conn.port.unwrap_or(0);
    let srcs: Vec<Peer> = match &conn.src {
        ConnEnd::Pod { workload, pod, .. } => {
            match pod_ends(engine, by_workload, workload, pod.as_ref()) {
                Ok(v) => v.into_iter().map(Peer::Endpoint).collect(),
                Err(reason) => return Outcome::Unverifiable { reason },
            }
        }
        ConnEnd::Addresses { ips, .. } => ips.iter().map(|ip| Peer::Ip(*ip)).collect(),
        ConnEnd::Service { .. } => {
            return Outcome::Unverifiable {
                reason: "a Service address opened the connection".to_string(),
            }
        }
    };
    // (destination, port on it)
    let dsts: Vec<(Peer, u16)> = match &conn.dst {
        ConnEnd::Pod { workload, pod, .. } => {
            match pod_ends(engine, by_workload, workload, pod.as_ref()) {
                Ok(v) => v.into_iter().map(|id| (Peer::Endpoint(id), port)).collect(),
                Err(reason) => return Outcome::Unverifiable { reason },
            }
        }
        ConnEnd::Addresses { ips, .. } => ips.iter().map(|ip| (Peer::Ip(*ip), port)).collect(),
        ConnEnd::Service { namespace, name } => {
            let Some(svc) = cat.services.get(&(namespace.clone(), name.clone())) else {
                return Outcome::Unverifiable {
                    reason: format!("Service {namespace}/{name} is not in the inventory"),
                };
            };
            let Some(sel) = &svc.selector else {
                return Outcome::Unverifiable {
                    reason: format!("Service {namespace}/{name} has no selector"),
                };
            };
            let target = match (conn.protocol, conn.port) {
                (Proto::L4(l4), Some(p)) => match svc.port(p, l4) {
                    Some(sp) => Some(sp.target.clone()),
                    None => {
                        return Outcome::Unverifiable {
                            reason: format!("Service {namespace}/{name} has no port {p}/{l4}"),
                        }
                    }
                },
                _ => None,
            };
            // kube-proxy may pick any ready backend: each must be allowed.
            let mut v = Vec::new();
            for (i, ep) in engine.endpoints().iter().enumerate() {
                if ep.namespace != svc.namespace
                    || ep.host_network
                    || !labels::selects(sel, &ep.labels)
                {
                    continue;
                }
                let p = match &target {
                    None => port,
                    Some(Target::Number(n)) => *n,
                    Some(Target::Name(n)) => match ep.named_port(n, proto) {
                        Some(p) => p,
                        // The backend has no such port: kube-proxy would
                        // not send there either (EndpointSlice lists only
                        // pods with the named port).
                        None => continue,
                    },
                };
                v.push((Peer::Endpoint(EndpointId(i as u32)), p));
            }
            if v.is_empty() {
                return Outcome::Unverifiable {
                    reason: format!(
                        "Service {namespace}/{name} has no backend pods in the inventory"
                    ),
                };
            }
            v
        }
    };
    for s in &srcs {
        for (d, p) in &dsts {
            let q = Query {
                src: *s,
                dst: *d,
                protocol: proto,
                port: *p,
            };
            let decision = engine.evaluate(&q);
            if !decision.allowed {
                return Outcome::Denied {
                    reason: explain(engine, &q, &decision),
                };
            }
        }
    }
    Outcome::Allowed
}

fn peer_name(engine: &Engine, p: Peer) -> String {
    match p {
        Peer::Endpoint(id) => engine.endpoint(id).id(),
        Peer::Ip(ip) => ip.to_string(),
    }
}

fn explain(engine: &Engine, q: &Query, d: &Decision) -> String {
    let (side, who, dir) = if !d.egress.allowed {
        ("egress", q.src, &d.egress)
    } else {
        ("ingress", q.dst, &d.ingress)
    };
    let by: Vec<&str> = dir.isolated_by.iter().map(|s| &**s).collect();
    format!(
        "{} -> {} {}/{}: {side} of {} is isolated by {} and no rule allows it",
        peer_name(engine, q.src),
        peer_name(engine, q.dst),
        q.port,
        q.protocol,
        peer_name(engine, who),
        by.join(", ")
    )
}

/// What the set allows between workloads (at least one in a suggested
/// namespace) that no observation shows.
fn over_permission(
    engine: &Engine,
    cat: &Catalog,
    obs: &Observed,
    by_workload: &BTreeMap<WorkloadKey, Vec<EndpointId>>,
    scope: &BTreeSet<String>,
) -> Vec<OverEntry> {
    // Observed ports per workload pair, at the level policies work at
    // (Service connections already resolved to backends and target ports).
    #[derive(Default)]
    struct Seen {
        ports: BTreeSet<(Protocol, u16)>,
        any: bool,
    }
    let dns: Vec<&WorkloadKey> = cat.workloads.keys().filter(|w| cat.is_dns(w)).collect();
    let mut seen: HashMap<(WorkloadKey, WorkloadKey), Seen> = HashMap::new();
    for edge in obs.edges.keys() {
        let PeerKey::Workload(src) = &edge.src else {
            continue;
        };
        let dsts: Vec<&WorkloadKey> = match &edge.dst {
            PeerKey::Workload(w) => vec![w],
            PeerKey::Dns => dns.clone(),
            _ => continue,
        };
        for d in dsts {
            let s = seen.entry((src.clone(), d.clone())).or_default();
            match &edge.port {
                PortKey::Port(l4, n) => {
                    s.ports.insert((protocol(Proto::L4(*l4)), *n));
                }
                PortKey::Named(l4, name) => {
                    if let Some(n) = cat.resolve_target(d, &Target::Name(name.clone()), *l4) {
                        s.ports.insert((protocol(Proto::L4(*l4)), n));
                    }
                }
                PortKey::Any => s.any = true,
            }
        }
    }

    let mut out = Vec::new();
    for (ws, ms) in by_workload {
        for (wd, md) in by_workload {
            if !scope.contains(&ws.namespace) && !scope.contains(&wd.namespace) {
                continue;
            }
            let mut acc = crate::netpol::ports::ConnSet::empty();
            for &a in ms {
                for &b in md {
                    if a != b {
                        acc.union(&engine.conns(ConnSide::Endpoint(a), ConnSide::Endpoint(b)));
                    }
                }
            }
            if acc.is_empty() {
                continue;
            }
            let s = seen.get(&(ws.clone(), wd.clone()));
            let mut unseen = Vec::new();
            let mut ports = 0u64;
            for p in Protocol::PORT_PROTOCOLS {
                let Some(set) = acc.ports(p) else { continue };
                let mut rest = set.clone();
                for (sp, n) in s.map(|s| &s.ports).into_iter().flatten() {
                    if *sp == p {
                        rest = subtract(&rest, *n);
                    }
                }
                for r in rest.ranges() {
                    ports += u64::from(r.hi - r.lo) + 1;
                    unseen.push((p.to_string(), *r));
                }
            }
            // Protocols without ports seen (ICMP) cover only themselves:
            // the port-less rule they need still counts its ports as unseen.
            let other = acc.other && !s.is_some_and(|s| s.any);
            if other {
                ports += 1;
            }
            if ports == 0 {
                continue;
            }
            out.push(OverEntry {
                src: ws.clone(),
                dst: wd.clone(),
                unseen,
                other,
                ports,
            });
        }
    }
    out.sort_by(|a, b| {
        b.ports
            .cmp(&a.ports)
            .then_with(|| (&a.src, &a.dst).cmp(&(&b.src, &b.dst)))
    });
    out
}

/// A port set without one port.
fn subtract(set: &PortSet, port: u16) -> PortSet {
    let mut out = PortSet::empty();
    for r in set.ranges() {
        if !r.contains(port) {
            out.insert(*r);
            continue;
        }
        if r.lo < port {
            out.insert(PortRange::new(r.lo, port - 1).expect("lo < port"));
        }
        if port < r.hi {
            out.insert(PortRange::new(port + 1, r.hi).expect("port < hi"));
        }
    }
    out
}
