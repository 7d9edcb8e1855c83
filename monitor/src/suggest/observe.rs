//! From what was seen to edges between peers.
//!
//! ```text
//!  flow reports ──► Conn (pod/service/address ends, protocol, port, flows, first/last)
//!  metric samples ─┘        │ resolve with the Catalog
//!                           ▼
//!                   Edge (PeerKey ─ PortKey ─► PeerKey) + Evidence
//! ```
//!
//! A `Conn` keeps the ends as they were observed (pod name, its labels and
//! address at the time) for the replay check; an `Edge` is what a policy
//! rule can express: workloads by stable labels, cluster DNS, a Service's
//! backends by selector, or a single outside address.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::catalog::{Catalog, Labels, Target, WorkloadKey};
use super::labels;
use super::{Proto, L4};
use crate::report::{EndpointKind, FlowReport, TcpState};

/// Why an address is outside the pod network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrKind {
    Node,
    Metadata,
    External,
}

impl AddrKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AddrKind::Node => "node",
            AddrKind::Metadata => "metadata",
            AddrKind::External => "external",
        }
    }
}

/// One end of an observed connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnEnd {
    /// A pod (flows: with its name, labels and address at the time), or
    /// any pod of a workload (metrics).
    Pod {
        workload: WorkloadKey,
        pod: Option<String>,
        labels: Option<Labels>,
        ip: Option<IpAddr>,
    },
    /// A Service's ClusterIP on a Service port.
    Service { namespace: String, name: String },
    /// Addresses outside the pod network (one for a flow; a node's
    /// addresses for a metric sample naming only the node).
    Addresses {
        ips: BTreeSet<IpAddr>,
        kind: AddrKind,
    },
}

impl fmt::Display for ConnEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnEnd::Pod {
                workload,
                pod: Some(p),
                ..
            } => write!(f, "{}/{p} ({})", workload.namespace, workload.workload()),
            ConnEnd::Pod { workload, .. } => write!(f, "{workload}"),
            ConnEnd::Service { namespace, name } => write!(f, "{namespace}/Service/{name}"),
            ConnEnd::Addresses { ips, kind } => {
                let list: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
                write!(f, "{} [{}]", list.join(","), kind.as_str())
            }
        }
    }
}

/// One observed connection shape, with how often it was seen.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn {
    pub src: ConnEnd,
    pub dst: ConnEnd,
    pub protocol: Proto,
    /// Destination port; `None` for protocols without ports.
    pub port: Option<u16>,
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} {}", self.src, self.dst, self.protocol)?;
        if let Some(p) = self.port {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

/// How much was seen, and when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub flows: u64,
    /// First and last packet seen (flow reports).
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    /// The query window (metrics, which carry no timestamps per flow).
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Evidence {
    pub fn merge(&mut self, o: &Evidence) {
        self.flows += o.flows;
        self.first = min_opt(self.first, o.first);
        self.last = max_opt(self.last, o.last);
        self.window = match (self.window, o.window) {
            (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
            (a, b) => a.or(b),
        };
    }

    /// The annotation value: `flows=12 first=... last=...`.
    pub fn describe(&self) -> String {
        let mut s = format!("flows={}", self.flows);
        let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if let Some(t) = self.first {
            s.push_str(&format!(" first={}", fmt(t)));
        }
        if let Some(t) = self.last {
            s.push_str(&format!(" last={}", fmt(t)));
        }
        if let Some((a, b)) = self.window {
            s.push_str(&format!(" window={}..{}", fmt(a), fmt(b)));
        }
        s
    }
}

fn min_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Who a rule speaks about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKey {
    /// Cluster DNS (always allowed, see `generate`).
    Dns,
    Workload(WorkloadKey),
    /// Pods a Service selects whose workload the inventory does not list.
    Selector {
        namespace: String,
        labels: Labels,
    },
    Address {
        ip: IpAddr,
        kind: AddrKind,
    },
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerKey::Dns => f.write_str("cluster DNS"),
            PeerKey::Workload(w) => write!(f, "{w}"),
            PeerKey::Selector { namespace, labels } => {
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "{namespace}/pods{{{}}}", l.join(","))
            }
            PeerKey::Address { ip, kind } => write!(f, "{ip} [{}]", kind.as_str()),
        }
    }
}

/// A destination port as a rule states it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortKey {
    Port(L4, u16),
    /// A named container port (a Service's named `targetPort` whose
    /// number the inventory does not give).
    Named(L4, String),
    /// A protocol without ports (ICMP...): NetworkPolicy can allow it only
    /// with a rule that lists no ports at all.
    Any,
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortKey::Port(p, n) => write!(f, "{n}/{p}"),
            PortKey::Named(p, n) => write!(f, "{n}/{p}"),
            PortKey::Any => f.write_str("any"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Edge {
    pub src: PeerKey,
    pub dst: PeerKey,
    pub port: PortKey,
}

/// Something seen that the suggestion cannot express or had to leave out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Note {
    /// Never answered (TCP attempted/rejected): left out unless asked.
    Unanswered { conn: String, flows: u64 },
    /// Cannot be turned into a rule; the replay will show it denied.
    Unexpressible { what: String, reason: String },
    /// Flow reports or samples that were not between a pod and something.
    Ignored { what: String, count: u64 },
    /// Connections that broke the SegmentationPolicy (a violation kind):
    /// left out unless `--include-violations`, so a suggestion never
    /// whitelists an attack.
    Violation {
        kind: String,
        flows: u64,
        example: String,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::Unanswered { conn, flows } => write!(
                f,
                "left out (never answered, {flows} flow(s); --include-unanswered to allow): {conn}"
            ),
            Note::Unexpressible { what, reason } => write!(f, "cannot allow {what}: {reason}"),
            Note::Ignored { what, count } => write!(f, "ignored {count} {what}"),
            Note::Violation {
                kind,
                flows,
                example,
            } => write!(
                f,
                "left out (violation {kind}, {flows} flow(s); --include-violations to allow): e.g. {example}"
            ),
        }
    }
}

/// Everything observed, resolved.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Connections the suggestion must allow, with their evidence.
    pub conns: BTreeMap<Conn, Evidence>,
    /// Connections left out on purpose (never answered).
    pub unanswered: BTreeMap<Conn, Evidence>,
    pub edges: BTreeMap<Edge, Evidence>,
    /// Stable labels the flow reports agree on per workload, for workloads
    /// the inventory does not list.
    pub flow_labels: BTreeMap<WorkloadKey, Labels>,
    pub notes: BTreeSet<Note>,
}

/// One metric sample of `segwatch_workload_flows_total` (summed over
/// nodes), with the flow count over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSample {
    pub src_namespace: String,
    pub src_workload: String,
    pub dst_namespace: String,
    pub dst_workload: String,
    pub dst_port: String,
    pub protocol: String,
    pub flows: f64,
    /// The violation kind counted on this edge in the window
    /// (`segwatch_violations_total`), if any.
    pub violation: Option<String>,
}

/// Options for reading observations.
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveOptions {
    /// Also allow TCP connections that were never answered.
    pub include_unanswered: bool,
    /// Also allow connections that violated the SegmentationPolicy
    /// (metadata API, node ports, forbidden cross-namespace...).
    pub include_violations: bool,
}

impl Observed {
    /// Reads flow reports. A connection seen by two nodes (or reported again
    /// at an active timeout) counts once: reports of one 5-tuple that
    /// overlap in time are one flow.
    pub fn from_flows(reports: &[FlowReport], cat: &Catalog, opts: ObserveOptions) -> Observed {
        let mut obs = Observed::default();
        let mut order: Vec<&FlowReport> = reports.iter().collect();
        order.sort_by_key(|r| (r.start, r.end));
        // 5-tuple -> (end of the latest report, whether it ended the flow)
        type Tuple = (IpAddr, Option<u16>, IpAddr, Option<u16>, String);
        let mut open: HashMap<Tuple, (DateTime<Utc>, bool)> = HashMap::new();
        let mut seen: std::collections::HashSet<(Option<&str>, &str)> =
            std::collections::HashSet::new();
        let mut ignored = 0u64;
        let mut link_local = 0u64;
        let mut probes = 0u64;
        let mut violations: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for r in order {
            if is_link_signalling(r, cat) {
                link_local += 1;
                continue;
            }
            // `segwatch probe` tries what should be blocked on purpose; a
            // policy allowing it would defeat the probe.
            if r.probe {
                probes += 1;
                continue;
            }
            if !opts.include_violations && r.verdict == Some(crate::report::Verdict::Violation) {
                let kind = r
                    .violations
                    .first()
                    .map_or("unknown".to_string(), |v| v.kind.as_str().to_string());
                let e = violations.entry(kind).or_insert_with(|| {
                    (
                        0,
                        format!(
                            "{} -> {}:{} {}",
                            r.src.ip,
                            r.dst.ip,
                            r.dst.port.unwrap_or(0),
                            r.protocol
                        ),
                    )
                });
                e.0 += 1;
                continue;
            }
            let tuple = (
                r.src.ip,
                r.src.port,
                r.dst.ip,
                r.dst.port,
                r.protocol.clone(),
            );
            // A connection counts once: by its identity where the flow log
            // has one, else a tuple that ended and came back is a new one.
            let new_flow = match &r.connection {
                Some(id) => seen.insert((r.observer.as_deref(), id.as_str())),
                None => match open.get(&tuple) {
                    None => true,
                    Some((end, ended)) => *ended && r.start > *end,
                },
            };
            let prev_end = open.get(&tuple).map(|(e, _)| *e);
            open.insert(
                tuple,
                (max_opt(prev_end, Some(r.end)).unwrap_or(r.end), r.ended),
            );

            let src = obs.end_of(&r.src, cat, false);
            let dst = obs.end_of(&r.dst, cat, true);
            let (Some(src), Some(dst)) = (src, dst) else {
                ignored += 1;
                continue;
            };
            if !matches!(src, ConnEnd::Pod { .. })
                && !matches!(dst, ConnEnd::Pod { .. } | ConnEnd::Service { .. })
            {
                // Node or outside traffic that no pod takes part in.
                ignored += 1;
                continue;
            }
            let protocol = Proto::parse(&r.protocol);
            let conn = Conn {
                src,
                dst,
                port: if protocol.has_ports() {
                    r.dst.port
                } else {
                    None
                },
                protocol,
            };
            let ev = Evidence {
                flows: u64::from(new_flow),
                first: Some(r.start),
                last: Some(r.end),
                window: None,
            };
            let unanswered = matches!(
                r.tcp.as_ref().map(|t| t.state),
                Some(TcpState::Attempted | TcpState::Rejected)
            );
            let map = if unanswered && !opts.include_unanswered {
                &mut obs.unanswered
            } else {
                &mut obs.conns
            };
            map.entry(conn).or_default().merge(&ev);
        }
        // A 5-tuple answered in one report but not another (a retried SYN
        // that later got through) is answered.
        let answered: BTreeSet<Conn> = obs.conns.keys().cloned().collect();
        obs.unanswered.retain(|c, _| !answered.contains(c));
        if ignored > 0 {
            obs.notes.insert(Note::Ignored {
                what: "flow report(s) with no pod on either side".to_string(),
                count: ignored,
            });
        }
        if link_local > 0 {
            obs.notes.insert(Note::Ignored {
                what: LINK_SIGNALLING.to_string(),
                count: link_local,
            });
        }
        for (kind, (flows, example)) in violations {
            obs.notes.insert(Note::Violation {
                kind,
                flows,
                example,
            });
        }
        if probes > 0 {
            obs.notes.insert(Note::Ignored {
                what: "flow report(s) of segwatch probe pods (probe: true)".to_string(),
                count: probes,
            });
        }
        obs.resolve(cat);
        obs
    }

    /// Reads metric samples (workload edges).
    pub fn from_samples(
        samples: &[WorkloadSample],
        window: (DateTime<Utc>, DateTime<Utc>),
        cat: &Catalog,
        opts: ObserveOptions,
    ) -> Observed {
        let mut obs = Observed::default();
        let mut nd: Option<u64> = None;
        let mut violations: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for s in samples {
            if s.flows.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                continue;
            }
            // increase() extrapolates to the window's edges (2.4 flows);
            // any positive value means the edge was used.
            let flows = s.flows.round().max(1.0);
            // An edge the agents counted as a violation in the window is
            // left out like violating flow reports are (never whitelist an
            // attack by default).
            if let (Some(kind), false) = (&s.violation, opts.include_violations) {
                let e = violations.entry(kind.clone()).or_insert_with(|| {
                    (
                        0,
                        format!(
                            "{}/{} -> {}/{}:{} {}",
                            s.src_namespace,
                            s.src_workload,
                            s.dst_namespace,
                            s.dst_workload,
                            s.dst_port,
                            s.protocol
                        ),
                    )
                });
                e.0 += flows as u64;
                continue;
            }
            let src = match WorkloadKey::parse(&s.src_namespace, &s.src_workload) {
                Some(w) if !is_outside_label(&s.src_workload) => pod_end(w),
                _ => match outside_end(&s.src_workload, cat) {
                    Ok(e) => e,
                    Err(reason) => {
                        obs.notes.insert(Note::Unexpressible {
                            what: format!(
                                "{}/{} -> {}/{} {} {}",
                                s.src_namespace,
                                s.src_workload,
                                s.dst_namespace,
                                s.dst_workload,
                                s.protocol,
                                s.dst_port
                            ),
                            reason,
                        });
                        continue;
                    }
                },
            };
            let dst = match s.dst_workload.split_once('/') {
                Some(("Service", name)) => ConnEnd::Service {
                    namespace: s.dst_namespace.clone(),
                    name: name.to_string(),
                },
                _ => match WorkloadKey::parse(&s.dst_namespace, &s.dst_workload) {
                    Some(w) if !is_outside_label(&s.dst_workload) => pod_end(w),
                    _ => match outside_end(&s.dst_workload, cat) {
                        Ok(e) => e,
                        Err(reason) => {
                            obs.notes.insert(Note::Unexpressible {
                                what: format!(
                                    "{}/{} -> {} {} {}",
                                    s.src_namespace,
                                    s.src_workload,
                                    s.dst_workload,
                                    s.protocol,
                                    s.dst_port
                                ),
                                reason,
                            });
                            continue;
                        }
                    },
                },
            };
            let protocol = Proto::parse(&s.protocol);
            // ICMPv6 between a pod and its node or the outside is neighbour
            // discovery in all likelihood; the metric has no ICMP type to
            // tell it from ping (the flow log does).
            if protocol == Proto::Other(58)
                && (is_outside_label(&s.src_workload) || is_outside_label(&s.dst_workload))
            {
                *nd.get_or_insert(0) += 1;
                continue;
            }
            if protocol.has_ports() && s.dst_port == crate::observe::OTHER_PORT {
                // Ports past the agent's per-source budget: allowing "any
                // port" would widen the policy; the flow log has them.
                obs.notes.insert(Note::Unexpressible {
                    what: format!(
                        "{}/{} -> {}/{} {} dst_port=\"other\"",
                        s.src_namespace,
                        s.src_workload,
                        s.dst_namespace,
                        s.dst_workload,
                        s.protocol
                    ),
                    reason: "the ports were counted past the agent's port budget \
                             (--metrics-ports-per-source); suggest from the flow log instead"
                        .into(),
                });
                continue;
            }
            let port = if protocol.has_ports() {
                s.dst_port.parse::<u16>().ok().filter(|p| *p != 0)
            } else {
                None
            };
            let ev = Evidence {
                flows: flows as u64,
                first: None,
                last: None,
                window: Some(window),
            };
            obs.conns
                .entry(Conn {
                    src,
                    dst,
                    protocol,
                    port,
                })
                .or_default()
                .merge(&ev);
        }
        if let Some(count) = nd {
            obs.notes.insert(Note::Ignored {
                what: "metric edge(s) of ICMPv6 between pods and node or outside (taken for neighbour discovery)".to_string(),
                count,
            });
        }
        for (kind, (flows, example)) in violations {
            obs.notes.insert(Note::Violation {
                kind,
                flows,
                example,
            });
        }
        obs.resolve(cat);
        obs
    }

    /// Adds another set of observations (flow logs and metrics together).
    pub fn merge(&mut self, other: Observed) {
        for (k, v) in other.conns {
            self.conns.entry(k).or_default().merge(&v);
        }
        for (k, v) in other.unanswered {
            self.unanswered.entry(k).or_default().merge(&v);
        }
        for (k, v) in other.edges {
            self.edges.entry(k).or_default().merge(&v);
        }
        for (k, v) in other.flow_labels {
            self.flow_labels
                .entry(k)
                .and_modify(|acc| acc.retain(|k2, v2| v.get(k2) == Some(v2)))
                .or_insert(v);
        }
        self.notes.extend(other.notes);
    }

    /// One end of a flow report, attributed by the report or, where it
    /// carries no attribution, by the inventory.
    fn end_of(
        &mut self,
        ep: &crate::report::Endpoint,
        cat: &Catalog,
        is_dst: bool,
    ) -> Option<ConnEnd> {
        let kind = ep.kind.or_else(|| {
            if cat.pod_ip.contains_key(&ep.ip) {
                Some(EndpointKind::Pod)
            } else if is_dst && cat.service_ip.contains_key(&ep.ip) {
                Some(EndpointKind::Service)
            } else if cat.node_ip.contains_key(&ep.ip) {
                Some(EndpointKind::Node)
            } else if cat.metadata_addresses.contains(&ep.ip) {
                Some(EndpointKind::Metadata)
            } else {
                Some(EndpointKind::External)
            }
        })?;
        let addr = |kind| {
            Some(ConnEnd::Addresses {
                ips: BTreeSet::from([ep.ip]),
                kind,
            })
        };
        match kind {
            EndpointKind::Pod => {
                let ns = ep
                    .namespace
                    .as_deref()
                    .map(str::to_owned)
                    .or_else(|| cat.pod_ip.get(&ep.ip).map(|w| w.namespace.clone()))?;
                let workload = ep
                    .workload
                    .as_deref()
                    .and_then(|w| WorkloadKey::parse(&ns, w))
                    .or_else(|| {
                        ep.pod.as_ref().and_then(|p| {
                            cat.pod_workload.get(&(ns.clone(), p.to_string())).cloned()
                        })
                    })
                    .or_else(|| cat.pod_ip.get(&ep.ip).cloned())
                    .or_else(|| ep.pod.as_ref().map(|p| WorkloadKey::new(&ns, "Pod", p)))?;
                if let Some(l) = &ep.labels {
                    let s = labels::stable(l);
                    self.flow_labels
                        .entry(workload.clone())
                        .and_modify(|acc| acc.retain(|k, v| s.get(k) == Some(v)))
                        .or_insert(s);
                }
                Some(ConnEnd::Pod {
                    workload,
                    pod: ep.pod.as_deref().map(str::to_owned),
                    labels: ep.labels.as_deref().cloned(),
                    ip: Some(ep.ip),
                })
            }
            EndpointKind::Service => {
                let (namespace, name) = ep
                    .service
                    .as_ref()
                    .map(|s| (s.namespace.to_string(), s.name.to_string()))
                    .or_else(|| cat.service_ip.get(&ep.ip).cloned())?;
                Some(ConnEnd::Service { namespace, name })
            }
            EndpointKind::Node => addr(AddrKind::Node),
            EndpointKind::Metadata => addr(AddrKind::Metadata),
            EndpointKind::External => addr(AddrKind::External),
        }
    }

    /// Turns connections into edges.
    fn resolve(&mut self, cat: &Catalog) {
        let conns: Vec<(Conn, Evidence)> = self
            .conns
            .iter()
            .map(|(c, e)| (c.clone(), e.clone()))
            .collect();
        for (conn, ev) in conns {
            match edges_of(&conn, cat) {
                Ok(edges) => {
                    for e in edges {
                        self.edges.entry(e).or_default().merge(&ev);
                    }
                }
                Err(reason) => {
                    self.notes.insert(Note::Unexpressible {
                        what: conn.to_string(),
                        reason,
                    });
                }
            }
        }
        for (conn, ev) in &self.unanswered {
            self.notes.insert(Note::Unanswered {
                conn: conn.to_string(),
                flows: ev.flows.max(1),
            });
        }
    }
}

const LINK_SIGNALLING: &str = "flow report(s) of neighbour discovery, link-local or multicast traffic (network plugins let it through whatever the NetworkPolicy; a policy cannot name it)";

/// Traffic on the link itself rather than to a peer: IPv6 neighbour
/// discovery and multicast listener messages (RFC 4861 types 133-137,
/// RFC 2710/3810 types 130-132 and 143), and anything to multicast,
/// broadcast or link-local addresses (the metadata API excepted, which
/// lives at a link-local address on purpose).
fn is_link_signalling(r: &FlowReport, cat: &Catalog) -> bool {
    if r.protocol == "ICMPv6"
        && r.icmp
            .is_some_and(|i| matches!(i.icmp_type, 130..=137 | 143))
    {
        return true;
    }
    let ip = r.dst.ip;
    if cat.metadata_addresses.contains(&ip) {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_multicast() || v6.is_unicast_link_local() || v6.is_unspecified(),
    }
}

fn pod_end(w: WorkloadKey) -> ConnEnd {
    ConnEnd::Pod {
        workload: w,
        pod: None,
        labels: None,
        ip: None,
    }
}

/// The metric's names for ends outside the pod network (CONTRACT.md,
/// `segwatch_violations_total`): `node/<name>`, `metadata-api`, `external`.
fn is_outside_label(w: &str) -> bool {
    w.starts_with("node/") || w == "metadata-api" || w == "external"
}

fn outside_end(w: &str, cat: &Catalog) -> Result<ConnEnd, String> {
    if let Some(node) = w.strip_prefix("node/") {
        let ips = cat
            .nodes
            .get(node)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| format!("node {node} has no addresses in the inventory"))?;
        return Ok(ConnEnd::Addresses {
            ips: ips.clone(),
            kind: AddrKind::Node,
        });
    }
    match w {
        "metadata-api" => Ok(ConnEnd::Addresses {
            ips: cat.metadata_addresses.clone(),
            kind: AddrKind::Metadata,
        }),
        "external" => Err(
            "the metric carries no address for outside peers; suggest from --flows to get ipBlocks"
                .to_string(),
        ),
        "" | "unknown" => Err("the daemon could not attribute this end".to_string()),
        "bare-pod" => Err(
            "a pod without controller: the metric does not name it (pod names are unbounded); suggest from --flows"
                .to_string(),
        ),
        other => Err(format!("unknown workload label value {other:?}")),
    }
}

/// The edges one connection needs.
fn edges_of(conn: &Conn, cat: &Catalog) -> Result<Vec<Edge>, String> {
    let port_key = |port: Option<u16>| match (conn.protocol, port) {
        (Proto::L4(p), Some(n)) => PortKey::Port(p, n),
        _ => PortKey::Any,
    };
    let srcs: Vec<PeerKey> = match &conn.src {
        ConnEnd::Pod { workload, .. } => vec![PeerKey::Workload(workload.clone())],
        ConnEnd::Addresses { ips, kind } => ips
            .iter()
            .map(|ip| PeerKey::Address {
                ip: *ip,
                kind: *kind,
            })
            .collect(),
        ConnEnd::Service { .. } => {
            return Err("a Service address opened a connection".to_string());
        }
    };
    let dsts: Vec<(PeerKey, PortKey)> = match &conn.dst {
        ConnEnd::Pod { workload, .. } => {
            let pk = port_key(conn.port);
            if cat.is_dns(workload) && is_dns_port(&pk) {
                vec![(PeerKey::Dns, pk)]
            } else {
                vec![(PeerKey::Workload(workload.clone()), pk)]
            }
        }
        ConnEnd::Addresses { ips, kind } => ips
            .iter()
            .map(|ip| {
                (
                    PeerKey::Address {
                        ip: *ip,
                        kind: *kind,
                    },
                    port_key(conn.port),
                )
            })
            .collect(),
        ConnEnd::Service { namespace, name } => {
            let svc = cat
                .services
                .get(&(namespace.clone(), name.clone()))
                .ok_or_else(|| format!("Service {namespace}/{name} is not in the inventory"))?;
            let selector = svc.selector.clone().ok_or_else(|| {
                format!("Service {namespace}/{name} has no selector; allow its endpoints by hand")
            })?;
            // Policies see the connection after the Service's DNAT: to a
            // backing pod on the target port (NetworkPolicy applies to pod
            // IPs and container ports, not to ClusterIPs).
            let (l4, target) = match (conn.protocol, conn.port) {
                (Proto::L4(l4), Some(port)) => match svc.port(port, l4) {
                    Some(sp) => (Some(l4), Some(sp.target.clone())),
                    None => {
                        return Err(format!(
                            "Service {namespace}/{name} has no port {port}/{l4} in the inventory"
                        ))
                    }
                },
                _ => (None, None),
            };
            let is_dns_service =
                svc.namespace == cat.dns.namespace && labels::selects(&cat.dns.selector, &selector);
            let backends = cat.backends(svc);
            let to_key = |w: Option<&WorkloadKey>| -> PortKey {
                match (l4, &target) {
                    (Some(l4), Some(t)) => match w.and_then(|w| cat.resolve_target(w, t, l4)) {
                        Some(n) => PortKey::Port(l4, n),
                        None => match t {
                            Target::Number(n) => PortKey::Port(l4, *n),
                            Target::Name(s) => PortKey::Named(l4, s.clone()),
                        },
                    },
                    _ => PortKey::Any,
                }
            };
            if backends.is_empty() {
                let pk = to_key(None);
                if is_dns_service && is_dns_port(&pk) {
                    vec![(PeerKey::Dns, pk)]
                } else {
                    vec![(
                        PeerKey::Selector {
                            namespace: namespace.clone(),
                            labels: selector,
                        },
                        pk,
                    )]
                }
            } else {
                backends
                    .into_iter()
                    .map(|w| {
                        let pk = to_key(Some(w));
                        if cat.is_dns(w) && is_dns_port(&pk) {
                            (PeerKey::Dns, pk)
                        } else {
                            (PeerKey::Workload(w.clone()), pk)
                        }
                    })
                    .collect()
            }
        }
    };
    let mut out = Vec::new();
    for s in &srcs {
        for (d, p) in &dsts {
            out.push(Edge {
                src: s.clone(),
                dst: d.clone(),
                port: p.clone(),
            });
        }
    }
    Ok(out)
}

fn is_dns_port(p: &PortKey) -> bool {
    matches!(p, PortKey::Port(L4::Udp | L4::Tcp, 53))
}
