//! From edges to `networking.k8s.io/v1` NetworkPolicy objects.
//!
//! ```text
//!  edges ─► per workload: ingress peers (src) / egress peers (dst), each with its ports
//!        ─► peers sharing the same ports merged into one rule
//!        ─► NetworkPolicy segwatch-<workload> (+ per namespace segwatch-default-deny,
//!           segwatch-allow-dns), sorted by namespace and name
//! ```
//!
//! Semantics relied on (API reference, NetworkPolicySpec / NetworkPolicyPeer):
//! - policies are additive, so one policy per workload plus a namespace-wide
//!   default-deny (`podSelector: {}` with both policyTypes and no rules)
//!   gives exactly the union of the workload's rules;
//! - a peer with `namespaceSelector` and `podSelector` selects those pods in
//!   those namespaces; with `podSelector` only, pods of the policy's
//!   namespace;
//! - `ipBlock` is for addresses outside the cluster ("should be
//!   cluster-external IPs, since Pod IPs are ephemeral"), so pods are always
//!   selected by labels and only node, metadata and outside addresses get
//!   ipBlocks;
//! - a rule with ports allows only TCP/UDP/SCTP on them; ICMP and other
//!   protocols are allowed only by a rule without `ports`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::catalog::{Catalog, Labels, WorkloadKey, NAMESPACE_NAME_LABEL};
use super::observe::{AddrKind, Edge, Evidence, Observed, PeerKey, PortKey};
use super::L4;

/// Name of the per-namespace default-deny policy.
pub const DEFAULT_DENY: &str = "segwatch-default-deny";
/// Name of the per-namespace DNS egress policy (with default-deny on).
pub const ALLOW_DNS: &str = "segwatch-allow-dns";
/// Label on every generated policy, so `kubectl delete -l` finds them.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "segwatch");
/// Annotation prefix for the evidence of each rule.
pub const EVIDENCE_PREFIX: &str = "segwatch.dev/";

/// How outside addresses become ipBlocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aggregate {
    /// Prefix length IPv4 addresses are widened to (32 = exact).
    pub v4: u8,
    /// Prefix length IPv6 addresses are widened to (128 = exact).
    pub v6: u8,
}

impl std::str::FromStr for Aggregate {
    type Err = String;

    /// `v4=24,v6=64`, either part optional (an omitted family stays exact).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut agg = Aggregate { v4: 32, v6: 128 };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (fam, len) = part
                .split_once('=')
                .ok_or_else(|| format!("expected v4=LEN or v6=LEN, got {part:?}"))?;
            let len: u8 = len
                .trim_start_matches('/')
                .parse()
                .map_err(|_| format!("{part:?}: prefix length is not a number"))?;
            match fam {
                "v4" if (8..=32).contains(&len) => agg.v4 = len,
                "v6" if (16..=128).contains(&len) => agg.v6 = len,
                "v4" => return Err(format!("{part:?}: IPv4 prefix length must be 8..=32")),
                "v6" => return Err(format!("{part:?}: IPv6 prefix length must be 16..=128")),
                _ => return Err(format!("{part:?}: family must be v4 or v6")),
            }
        }
        Ok(agg)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Per namespace a default-deny for ingress and egress (plus DNS).
    pub default_deny: bool,
    pub aggregate: Option<Aggregate>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            default_deny: true,
            aggregate: None,
        }
    }
}

/// The rules of one generated policy, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyStats {
    pub namespace: String,
    pub name: String,
    pub ingress_rules: usize,
    pub egress_rules: usize,
    pub peers: usize,
}

/// An ipBlock wider than the addresses seen in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Widened {
    pub policy: String,
    pub cidr: IpNet,
    pub observed: usize,
}

/// The generated set.
#[derive(Clone, Debug, Default)]
pub struct Suggestion {
    /// Sorted by namespace, then name.
    pub policies: Vec<NetworkPolicy>,
    pub stats: Vec<PolicyStats>,
    /// Namespaces that got policies.
    pub namespaces: BTreeSet<String>,
    /// Workloads of those namespaces without observed traffic (isolated by
    /// the default-deny when it is on, untouched when off).
    pub quiet: Vec<WorkloadKey>,
    pub widened: Vec<Widened>,
    /// What could not be expressed, and what deserves a look.
    pub notes: BTreeSet<String>,
}

/// A peer as rendered, kept ordered for stable output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RPeer {
    /// Pods by labels, in a namespace (`None` = the policy's namespace).
    Pods {
        namespace: Option<String>,
        labels: Labels,
    },
    /// Every pod of every namespace (clients of cluster DNS).
    AllPods,
    Block(IpNet),
}

struct Rule {
    peers: Vec<RPeer>,
    ports: BTreeSet<PortKey>,
    evidence: Evidence,
}

/// Builds the policies for what was observed.
pub fn generate(obs: &Observed, cat: &Catalog, opts: &Options) -> Suggestion {
    let mut out = Suggestion::default();
    let selector_of = |w: &WorkloadKey| -> Option<Labels> {
        cat.workloads
            .get(w)
            .and_then(|i| i.selector.clone())
            .or_else(|| obs.flow_labels.get(w).cloned())
            .filter(|l| !l.is_empty())
    };

    // Who talks to whom, per workload and direction.
    type PeerPorts = BTreeMap<PeerKey, (BTreeSet<PortKey>, Evidence)>;
    let mut ingress: BTreeMap<WorkloadKey, PeerPorts> = BTreeMap::new();
    let mut egress: BTreeMap<WorkloadKey, PeerPorts> = BTreeMap::new();
    let mut dns_clients: BTreeMap<String, Evidence> = BTreeMap::new();
    let mut all_dns = Evidence::default();
    for (edge, ev) in &obs.edges {
        let Edge { src, dst, port } = edge;
        if let PeerKey::Workload(w) = src {
            let e = egress
                .entry(w.clone())
                .or_default()
                .entry(dst.clone())
                .or_default();
            e.0.insert(port.clone());
            e.1.merge(ev);
            if *dst == PeerKey::Dns {
                dns_clients
                    .entry(w.namespace.clone())
                    .or_default()
                    .merge(ev);
                all_dns.merge(ev);
            }
        }
        if let PeerKey::Workload(w) = dst {
            let e = ingress
                .entry(w.clone())
                .or_default()
                .entry(src.clone())
                .or_default();
            e.0.insert(port.clone());
            e.1.merge(ev);
        }
    }

    // Namespaces in scope: those of the workloads seen.
    let mut scope: BTreeSet<String> = BTreeSet::new();
    for w in ingress.keys().chain(egress.keys()) {
        scope.insert(w.namespace.clone());
    }
    // Cluster DNS must keep answering everyone once its namespace is
    // isolated, whether or not a query was seen from each namespace.
    let dns_workloads: Vec<WorkloadKey> = cat
        .workloads
        .keys()
        .filter(|w| scope.contains(&w.namespace) && cat.is_dns(w))
        .cloned()
        .collect();

    let mut workloads: BTreeSet<WorkloadKey> =
        ingress.keys().chain(egress.keys()).cloned().collect();
    workloads.extend(dns_workloads.iter().cloned());

    // Policy names: `segwatch-<name>`, or `segwatch-<kind>-<name>` where two
    // workloads of a namespace share a name or a name is one of ours.
    let mut names: BTreeMap<WorkloadKey, String> = BTreeMap::new();
    {
        let mut count: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for w in &workloads {
            *count.entry((&w.namespace, &w.name)).or_default() += 1;
        }
        for w in &workloads {
            let short = format!("segwatch-{}", w.name);
            let clash = count[&(w.namespace.as_str(), w.name.as_str())] > 1
                || short == DEFAULT_DENY
                || short == ALLOW_DNS;
            let name = if clash {
                format!("segwatch-{}-{}", w.kind.to_ascii_lowercase(), w.name)
            } else {
                short
            };
            names.insert(w.clone(), dns_name(&name));
        }
    }

    let mut policies: Vec<NetworkPolicy> = Vec::new();
    for ns in &scope {
        out.namespaces.insert(ns.clone());
        if opts.default_deny {
            policies.push(policy(
                ns,
                DEFAULT_DENY,
                BTreeMap::from([(
                    format!("{EVIDENCE_PREFIX}purpose"),
                    "deny all ingress and egress of the namespace's pods that no other policy allows"
                        .to_string(),
                )]),
                NetworkPolicySpec {
                    pod_selector: Some(LabelSelector::default()),
                    policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                    ..Default::default()
                },
            ));
            out.stats.push(PolicyStats {
                namespace: ns.clone(),
                name: DEFAULT_DENY.to_string(),
                ..Default::default()
            });
            // Every pod may resolve names, whether or not it was seen doing
            // so in the window (a cached answer is no proof it never will).
            let ev = dns_clients.get(ns).cloned().unwrap_or_default();
            let rule = dns_rule(ns, cat, ev);
            let mut ann = BTreeMap::new();
            ann.insert(
                format!("{EVIDENCE_PREFIX}egress-0"),
                format!("{} (cluster DNS, always kept)", rule.evidence.describe()),
            );
            policies.push(policy(
                ns,
                ALLOW_DNS,
                ann,
                NetworkPolicySpec {
                    pod_selector: Some(LabelSelector::default()),
                    policy_types: Some(vec!["Egress".into()]),
                    egress: Some(vec![egress_rule(&rule)]),
                    ..Default::default()
                },
            ));
            out.stats.push(PolicyStats {
                namespace: ns.clone(),
                name: ALLOW_DNS.to_string(),
                egress_rules: 1,
                peers: 1,
                ..Default::default()
            });
        }
    }

    for w in &workloads {
        let Some(subject) = selector_of(w) else {
            out.notes.insert(format!(
                "{w}: its pods have no stable labels to select them by; no policy for it (label its pods, e.g. app=<name>)"
            ));
            continue;
        };
        let name = &names[w];
        let mut render_peer = |p: &PeerKey| -> Option<RPeer> {
            match p {
                PeerKey::Workload(o) => match selector_of(o) {
                    Some(labels) => Some(RPeer::Pods {
                        namespace: (o.namespace != w.namespace).then(|| o.namespace.clone()),
                        labels,
                    }),
                    None => {
                        out.notes.insert(format!(
                            "{o}: its pods have no stable labels; {w} cannot name it as a peer"
                        ));
                        None
                    }
                },
                PeerKey::Selector { namespace, labels } => Some(RPeer::Pods {
                    namespace: (*namespace != w.namespace).then(|| namespace.clone()),
                    labels: labels.clone(),
                }),
                PeerKey::Dns => Some(RPeer::Pods {
                    namespace: (cat.dns.namespace != w.namespace)
                        .then(|| cat.dns.namespace.clone()),
                    labels: cat.dns.selector.clone(),
                }),
                // Addresses are turned into blocks per rule (aggregation).
                PeerKey::Address { .. } => None,
            }
        };

        // Ingress.
        let mut in_rules: Vec<Rule> = Vec::new();
        if let Some(peers) = ingress.get(w) {
            in_rules = merge_rules(peers, &mut render_peer, opts, name, &mut out.widened);
        }
        if dns_workloads.contains(w) {
            // Cluster DNS answers every pod: that is what "DNS always kept"
            // means on the server side.
            in_rules.push(Rule {
                peers: vec![RPeer::AllPods],
                ports: dns_ports(),
                evidence: all_dns.clone(),
            });
        }
        // Egress.
        let mut out_peers: PeerPorts = egress.get(w).cloned().unwrap_or_default();
        if opts.default_deny {
            // segwatch-allow-dns covers it for the whole namespace.
            out_peers.remove(&PeerKey::Dns);
        } else if !out_peers.is_empty() {
            // This policy isolates the workload's egress: keep DNS.
            out_peers.entry(PeerKey::Dns).or_default();
        }
        if let Some(dns) = out_peers.get_mut(&PeerKey::Dns) {
            dns.0.extend(dns_ports());
        }
        let out_rules = merge_rules(&out_peers, &mut render_peer, opts, name, &mut out.widened);

        if in_rules.is_empty() && out_rules.is_empty() {
            continue;
        }
        for r in in_rules.iter().chain(&out_rules) {
            if r.ports.contains(&PortKey::Any) {
                out.notes.insert(format!(
                    "{name} in {}: a protocol without ports (ICMP...) was seen, and NetworkPolicy can allow it only with a rule without ports, which allows every port to those peers",
                    w.namespace
                ));
            }
        }
        for (p, _) in out_peers.iter().chain(ingress.get(w).into_iter().flatten()) {
            if let PeerKey::Address {
                ip,
                kind: AddrKind::Metadata,
            } = p
            {
                out.notes.insert(format!(
                    "{w} is allowed to reach the metadata API at {ip} because it did: make sure it should (it exposes cloud credentials)"
                ));
            }
        }
        let mut types = Vec::new();
        let mut ann = BTreeMap::new();
        ann.insert(format!("{EVIDENCE_PREFIX}workload"), w.workload());
        for (i, r) in in_rules.iter().enumerate() {
            ann.insert(
                format!("{EVIDENCE_PREFIX}ingress-{i}"),
                r.evidence.describe(),
            );
        }
        for (i, r) in out_rules.iter().enumerate() {
            ann.insert(
                format!("{EVIDENCE_PREFIX}egress-{i}"),
                r.evidence.describe(),
            );
        }
        if !in_rules.is_empty() {
            types.push("Ingress".to_string());
        }
        if !out_rules.is_empty() {
            types.push("Egress".to_string());
        }
        out.stats.push(PolicyStats {
            namespace: w.namespace.clone(),
            name: name.clone(),
            ingress_rules: in_rules.len(),
            egress_rules: out_rules.len(),
            peers: in_rules
                .iter()
                .chain(&out_rules)
                .map(|r| r.peers.len())
                .sum(),
        });
        policies.push(policy(
            &w.namespace,
            name,
            ann,
            NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(subject),
                    match_expressions: None,
                }),
                policy_types: Some(types),
                ingress: (!in_rules.is_empty())
                    .then(|| in_rules.iter().map(ingress_rule).collect()),
                egress: (!out_rules.is_empty())
                    .then(|| out_rules.iter().map(egress_rule).collect()),
            },
        ));
    }

    // Workloads of these namespaces that nothing was seen of.
    for w in cat.workloads.keys() {
        if scope.contains(&w.namespace) && !workloads.contains(w) && !cat.workloads[w].host_network
        {
            out.quiet.push(w.clone());
        }
    }

    // Per namespace: the default-deny first, then DNS, then the workloads.
    let rank = |name: &str| match name {
        DEFAULT_DENY => 0,
        ALLOW_DNS => 1,
        _ => 2,
    };
    policies.sort_by(|a, b| {
        let key = |p: &NetworkPolicy| {
            let name = p.metadata.name.clone().unwrap_or_default();
            (p.metadata.namespace.clone(), rank(&name), name)
        };
        key(a).cmp(&key(b))
    });
    out.stats.sort_by(|a, b| {
        (&a.namespace, rank(&a.name), &a.name).cmp(&(&b.namespace, rank(&b.name), &b.name))
    });
    out.policies = policies;
    out
}

/// A DNS-1123 subdomain of at most 253 characters (NetworkPolicy names).
fn dns_name(s: &str) -> String {
    let mut n: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    n.truncate(253);
    n.trim_end_matches(['-', '.']).to_string()
}

fn dns_ports() -> BTreeSet<PortKey> {
    BTreeSet::from([PortKey::Port(L4::Udp, 53), PortKey::Port(L4::Tcp, 53)])
}

fn dns_rule(ns: &str, cat: &Catalog, evidence: Evidence) -> Rule {
    Rule {
        peers: vec![RPeer::Pods {
            namespace: (cat.dns.namespace != ns).then(|| cat.dns.namespace.clone()),
            labels: cat.dns.selector.clone(),
        }],
        ports: dns_ports(),
        evidence,
    }
}

/// Peers with the same ports share a rule.
fn merge_rules(
    peers: &BTreeMap<PeerKey, (BTreeSet<PortKey>, Evidence)>,
    render: &mut dyn FnMut(&PeerKey) -> Option<RPeer>,
    opts: &Options,
    policy_name: &str,
    widened: &mut Vec<Widened>,
) -> Vec<Rule> {
    let mut by_ports: BTreeMap<BTreeSet<PortKey>, (Vec<RPeer>, Vec<IpAddr>, Evidence)> =
        BTreeMap::new();
    for (peer, (ports, ev)) in peers {
        // A port-less protocol (ICMP) needs a rule without ports, which
        // allows every port as well: that peer gets only that rule.
        let ports = if ports.contains(&PortKey::Any) {
            BTreeSet::from([PortKey::Any])
        } else {
            ports.clone()
        };
        let slot = by_ports.entry(ports).or_default();
        slot.2.merge(ev);
        match peer {
            PeerKey::Address { ip, .. } => slot.1.push(*ip),
            other => {
                if let Some(r) = render(other) {
                    slot.0.push(r);
                }
            }
        }
    }
    let mut rules = Vec::new();
    for (ports, (mut rpeers, ips, evidence)) in by_ports {
        for net in blocks(&ips, opts.aggregate) {
            let observed = ips.iter().filter(|ip| net.contains(*ip)).count();
            let host = net.prefix_len() == net.max_prefix_len();
            if !host {
                widened.push(Widened {
                    policy: policy_name.to_string(),
                    cidr: net,
                    observed,
                });
            }
            rpeers.push(RPeer::Block(net));
        }
        rpeers.sort();
        rpeers.dedup();
        if rpeers.is_empty() {
            continue;
        }
        rules.push(Rule {
            peers: rpeers,
            ports,
            evidence,
        });
    }
    rules.sort_by(|a, b| (&a.peers, &a.ports).cmp(&(&b.peers, &b.ports)));
    rules
}

/// Outside addresses as ipBlocks: exact /32 or /128 by family, or widened
/// to the aggregation prefix and merged.
fn blocks(ips: &[IpAddr], agg: Option<Aggregate>) -> Vec<IpNet> {
    let nets: Vec<IpNet> = ips
        .iter()
        .map(|ip| {
            let len = match (ip, agg) {
                (IpAddr::V4(_), Some(a)) => a.v4,
                (IpAddr::V6(_), Some(a)) => a.v6,
                (IpAddr::V4(_), None) => 32,
                (IpAddr::V6(_), None) => 128,
            };
            IpNet::new(*ip, len)
                .expect("prefix lengths are bounded by the family")
                .trunc()
        })
        .collect();
    let mut out = if agg.is_some() {
        IpNet::aggregate(&nets)
    } else {
        nets
    };
    out.sort();
    out.dedup();
    out
}

fn match_labels(labels: &Labels) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    }
}

fn render_peers(peers: &[RPeer]) -> Vec<NetworkPolicyPeer> {
    peers
        .iter()
        .map(|p| match p {
            RPeer::Pods { namespace, labels } => NetworkPolicyPeer {
                namespace_selector: namespace.as_ref().map(|ns| {
                    match_labels(&Labels::from([(
                        NAMESPACE_NAME_LABEL.to_string(),
                        ns.clone(),
                    )]))
                }),
                pod_selector: Some(match_labels(labels)),
                ip_block: None,
            },
            RPeer::AllPods => NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                ..Default::default()
            },
            RPeer::Block(net) => NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: net.to_string(),
                    except: None,
                }),
                ..Default::default()
            },
        })
        .collect()
}

fn render_ports(ports: &BTreeSet<PortKey>) -> Option<Vec<NetworkPolicyPort>> {
    if ports.contains(&PortKey::Any) {
        return None;
    }
    let mut v: Vec<(L4, IntOrString)> = ports
        .iter()
        .filter_map(|p| match p {
            PortKey::Port(l4, n) => Some((*l4, IntOrString::Int(i32::from(*n)))),
            PortKey::Named(l4, s) => Some((*l4, IntOrString::String(s.clone()))),
            PortKey::Any => None,
        })
        .collect();
    v.sort_by(|a, b| {
        let key = |x: &(L4, IntOrString)| match &x.1 {
            IntOrString::Int(n) => (x.0, 0, *n, String::new()),
            IntOrString::String(s) => (x.0, 1, 0, s.clone()),
        };
        key(a).cmp(&key(b))
    });
    Some(
        v.into_iter()
            .map(|(l4, port)| NetworkPolicyPort {
                protocol: Some(l4.as_str().to_string()),
                port: Some(port),
                end_port: None,
            })
            .collect(),
    )
}

fn ingress_rule(r: &Rule) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(render_peers(&r.peers)),
        ports: render_ports(&r.ports),
    }
}

fn egress_rule(r: &Rule) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(render_peers(&r.peers)),
        ports: render_ports(&r.ports),
    }
}

fn policy(
    ns: &str,
    name: &str,
    annotations: BTreeMap<String, String>,
    spec: NetworkPolicySpec,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_string(),
                MANAGED_BY.1.to_string(),
            )])),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: Some(spec),
    }
}
