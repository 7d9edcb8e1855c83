//! Compiled SegmentationPolicy: validation, union of documents, the built-in
//! baseline, and the per-flow evaluation.
//!
//! "Compile, don't re-evaluate": every rule is numbered; for each pod (or
//! Service) the index asks [`CompiledPolicy::masks`] once which rules' `from`
//! and `to` select it, and keeps the bit masks. A flow then costs an AND of
//! two small masks and a port check of the few candidate rules.
//!
//! Semantics (CONTRACT.md "SegmentationPolicy"):
//! - pod -> pod (or Service) in another namespace: needs a `crossNamespace`
//!   rule whose `from` selects the source and `to` the destination, and
//!   whose ports contain the destination port;
//! - pod -> pod in the same namespace: allowed, unless the namespace is
//!   listed under `withinNamespace`, then it needs one of its rules;
//! - pod -> node address: needs a `hostAccess` rule;
//! - pod -> metadata API address: needs a `metadataApi` rule;
//! - pod -> outside: judged only when some document has `external`.
//!
//! Several documents are unioned section by section. A section that no
//! document has keeps its baseline meaning (crossNamespace: only kube-dns;
//! hostAccess and metadataApi: nothing; external: not judged), so a
//! document that only whitelists the metadata API does not turn every DNS
//! query into a violation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::crd::{ExternalRule, PodRule, SegmentationPolicy, SourceRule};
use super::ports::{PortSet, L4};
use super::selector::{FieldError, LabelMatch, Peer, PodFacts};
use crate::report::{Violation, ViolationKind};

/// Name shown as the rule when the built-in baseline decides.
pub const BASELINE: &str = "baseline";

/// The default metadata API addresses (AWS IMDS IPv4 and IPv6; GCP, Azure
/// and OpenStack use the same IPv4 link-local address).
pub const DEFAULT_METADATA_ADDRESSES: [&str; 2] = ["169.254.169.254", "fd00:ec2::254"];

#[derive(Clone, Debug, PartialEq, Eq)]
struct PodRuleC {
    name: Arc<str>,
    from: Peer,
    to: Peer,
    ports: PortSet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SourceRuleC {
    name: Arc<str>,
    from: Peer,
    ports: PortSet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ExternalRuleC {
    name: Arc<str>,
    from: Peer,
    cidr: IpNet,
    ports: PortSet,
}

/// One validated SegmentationPolicy document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledDoc {
    pub name: String,
    cross: Option<Vec<PodRuleC>>,
    within: Vec<(String, Vec<PodRuleC>)>,
    host: Option<Vec<SourceRuleC>>,
    metadata_addresses: Option<Vec<IpAddr>>,
    metadata: Option<Vec<SourceRuleC>>,
    external: Option<Vec<ExternalRuleC>>,
}

/// A document that failed validation: which one, where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SegmentationPolicy {policy}: invalid at `{path}`: {message}")]
pub struct PolicyError {
    pub policy: String,
    pub path: String,
    pub message: String,
}

fn rule_name(explicit: Option<&str>, policy: &str, path: &str) -> Arc<str> {
    match explicit {
        Some(n) if !n.is_empty() => Arc::from(n),
        _ => Arc::from(format!("{policy}/{path}")),
    }
}

fn ports(p: Option<&[String]>, path: &str) -> Result<PortSet, FieldError> {
    PortSet::parse(p).map_err(|(i, msg)| FieldError::new(format!("{path}.ports[{i}]"), msg))
}

fn pod_rule(r: &PodRule, policy: &str, path: &str) -> Result<PodRuleC, FieldError> {
    if r.from.ports.is_some() {
        return Err(FieldError::new(
            format!("{path}.from.ports"),
            "ports belong to the destination (`to.ports`)",
        ));
    }
    Ok(PodRuleC {
        name: rule_name(r.name.as_deref(), policy, path),
        from: Peer::compile(&r.from).map_err(|e| e.under(&format!("{path}.from")))?,
        to: Peer::compile(&r.to).map_err(|e| e.under(&format!("{path}.to")))?,
        ports: ports(r.to.ports.as_deref(), &format!("{path}.to"))?,
    })
}

fn source_rule(r: &SourceRule, policy: &str, path: &str) -> Result<SourceRuleC, FieldError> {
    if r.from.ports.is_some() {
        return Err(FieldError::new(
            format!("{path}.from.ports"),
            "ports of this rule are given beside `from` (`ports`)",
        ));
    }
    Ok(SourceRuleC {
        name: rule_name(r.name.as_deref(), policy, path),
        from: Peer::compile(&r.from).map_err(|e| e.under(&format!("{path}.from")))?,
        ports: ports(r.ports.as_deref(), path)?,
    })
}

fn external_rule(r: &ExternalRule, policy: &str, path: &str) -> Result<ExternalRuleC, FieldError> {
    let cidr = parse_cidr(&r.to.cidr).map_err(|m| FieldError::new(format!("{path}.to.cidr"), m))?;
    Ok(ExternalRuleC {
        name: rule_name(r.name.as_deref(), policy, path),
        from: Peer::compile(&r.from).map_err(|e| e.under(&format!("{path}.from")))?,
        cidr,
        ports: ports(r.to.ports.as_deref(), &format!("{path}.to"))?,
    })
}

/// A CIDR, or a bare address meaning that one host.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not a CIDR (e.g. 10.0.0.0/8, 2001:db8::/32) or an address"))
}

impl CompiledDoc {
    /// Validates one document into rules; the error names the field path.
    pub fn compile(p: &SegmentationPolicy) -> Result<Self, PolicyError> {
        let policy = p.metadata.name.clone().unwrap_or_default();
        let err = |e: FieldError| PolicyError {
            policy: policy.clone(),
            path: e.path,
            message: e.message,
        };
        if policy.is_empty() {
            return Err(err(FieldError::new(
                "metadata.name",
                "a policy needs a name",
            )));
        }
        let s = &p.spec;
        let cross = s
            .cross_namespace
            .as_ref()
            .map(|c| {
                c.allow
                    .iter()
                    .enumerate()
                    .map(|(i, r)| pod_rule(r, &policy, &format!("spec.crossNamespace.allow[{i}]")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(err)?;
        let mut within = Vec::new();
        for (i, w) in s.within_namespace.iter().enumerate() {
            let base = format!("spec.withinNamespace[{i}]");
            if w.namespace.is_empty() || w.namespace == "*" {
                return Err(err(FieldError::new(
                    format!("{base}.namespace"),
                    "name one namespace (not empty, not \"*\")",
                )));
            }
            let mut rules = Vec::new();
            for (j, r) in w.allow.iter().enumerate() {
                let path = format!("{base}.allow[{j}]");
                for (side, peer) in [("from", &r.from), ("to", &r.to)] {
                    if peer.is_namespace_restricted_raw() {
                        return Err(err(FieldError::new(
                            format!("{path}.{side}"),
                            "namespace/namespaceSelector do not apply inside withinNamespace",
                        )));
                    }
                }
                rules.push(pod_rule(r, &policy, &path).map_err(err)?);
            }
            within.push((w.namespace.clone(), rules));
        }
        let host = s
            .host_access
            .as_ref()
            .map(|h| {
                h.allow
                    .iter()
                    .enumerate()
                    .map(|(i, r)| source_rule(r, &policy, &format!("spec.hostAccess.allow[{i}]")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(err)?;
        let (metadata_addresses, metadata) = match &s.metadata_api {
            None => (None, None),
            Some(m) => {
                let addrs = m
                    .addresses
                    .as_ref()
                    .map(|a| {
                        a.iter()
                            .enumerate()
                            .map(|(i, s)| {
                                s.parse::<IpAddr>().map_err(|_| {
                                    FieldError::new(
                                        format!("spec.metadataApi.addresses[{i}]"),
                                        format!("`{s}` is not an IP address"),
                                    )
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()
                    .map_err(err)?;
                let rules = m
                    .allow
                    .iter()
                    .enumerate()
                    .map(|(i, r)| source_rule(r, &policy, &format!("spec.metadataApi.allow[{i}]")))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                (addrs, Some(rules))
            }
        };
        let external = s
            .external
            .as_ref()
            .map(|x| {
                x.allow
                    .iter()
                    .enumerate()
                    .map(|(i, r)| external_rule(r, &policy, &format!("spec.external.allow[{i}]")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(err)?;
        Ok(CompiledDoc {
            name: policy,
            cross,
            within,
            host,
            metadata_addresses,
            metadata,
            external,
        })
    }
}

impl super::crd::PodPeer {
    fn is_namespace_restricted_raw(&self) -> bool {
        self.namespace.is_some() || self.namespace_selector.is_some()
    }
}

/// A fixed-size bit set over rule numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mask(Box<[u64]>);

impl Mask {
    fn new(bits: usize) -> Self {
        Mask(vec![0; bits.div_ceil(64)].into_boxed_slice())
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Rule numbers set in all three masks, lowest first.
    fn and3<'a>(a: &'a Mask, b: &'a Mask, c: &'a Mask) -> impl Iterator<Item = usize> + 'a {
        a.0.iter()
            .zip(b.0.iter())
            .zip(c.0.iter())
            .enumerate()
            .flat_map(|(w, ((x, y), z))| {
                let mut bits = x & y & z;
                std::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let t = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    Some(w * 64 + t)
                })
            })
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        Mask::and3(self, self, self)
    }
}

/// Which rules select one pod (or Service), per section. Valid for the
/// [`CompiledPolicy`] that made it only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMasks {
    from_pod: Mask,
    to_pod: Mask,
    host: Mask,
    metadata: Mask,
    external: Mask,
}

/// The union of all documents (or the baseline), ready to judge flows.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    /// Cross-namespace rules first, then withinNamespace rules.
    pod_rules: Vec<PodRuleC>,
    cross_scope: Mask,
    cross_owner: Arc<str>,
    within: HashMap<String, (Mask, Arc<str>)>,
    host_rules: Vec<SourceRuleC>,
    host_owner: Arc<str>,
    metadata_rules: Vec<SourceRuleC>,
    metadata_owner: Arc<str>,
    metadata_addresses: Vec<IpAddr>,
    external: Option<(Vec<ExternalRuleC>, Arc<str>)>,
    documents: Vec<String>,
}

impl Default for CompiledPolicy {
    /// The baseline.
    fn default() -> Self {
        CompiledPolicy::baseline()
    }
}

fn owners(names: &[&str]) -> Arc<str> {
    if names.is_empty() {
        Arc::from(BASELINE)
    } else {
        Arc::from(names.join(","))
    }
}

impl CompiledPolicy {
    /// The built-in baseline (CONTRACT.md): cross-namespace only to kube-dns
    /// (kube-system pods labelled `k8s-app: kube-dns`, port 53 UDP/TCP);
    /// host and metadata API access are violations; outside traffic is not
    /// judged.
    pub fn baseline() -> Self {
        CompiledPolicy::union(&[])
    }

    /// The kube-dns rule of the baseline.
    fn kube_dns_rule() -> PodRuleC {
        PodRuleC {
            name: Arc::from("baseline/kube-dns"),
            from: Peer::any(),
            to: Peer {
                namespace: Some("kube-system".into()),
                pod_selector: Some(LabelMatch::labels([("k8s-app", "kube-dns")])),
                ..Peer::default()
            },
            ports: PortSet(Some(vec![
                super::ports::PortRange {
                    proto: L4::Udp,
                    first: 53,
                    last: 53,
                },
                super::ports::PortRange {
                    proto: L4::Tcp,
                    first: 53,
                    last: 53,
                },
            ])),
        }
    }

    /// Unions the documents section by section; with none, the baseline.
    pub fn union(docs: &[Arc<CompiledDoc>]) -> Self {
        let mut pod_rules = Vec::new();
        let cross_docs: Vec<&CompiledDoc> = docs
            .iter()
            .filter(|d| d.cross.is_some())
            .map(|d| &**d)
            .collect();
        if cross_docs.is_empty() {
            pod_rules.push(CompiledPolicy::kube_dns_rule());
        } else {
            for d in &cross_docs {
                pod_rules.extend(d.cross.iter().flatten().cloned());
            }
        }
        let n_cross = pod_rules.len();
        let cross_owner = owners(
            &cross_docs
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
        );
        // withinNamespace: rules of every document listing the namespace.
        let mut within_rules: BTreeMap<&str, (Vec<usize>, Vec<&str>)> = BTreeMap::new();
        for d in docs {
            for (ns, rules) in &d.within {
                let entry = within_rules.entry(ns.as_str()).or_default();
                if !entry.1.contains(&d.name.as_str()) {
                    entry.1.push(d.name.as_str());
                }
                for r in rules {
                    entry.0.push(pod_rules.len());
                    pod_rules.push(r.clone());
                }
            }
        }
        let total = pod_rules.len();
        let mut cross_scope = Mask::new(total);
        (0..n_cross).for_each(|i| cross_scope.set(i));
        let within = within_rules
            .into_iter()
            .map(|(ns, (idx, names))| {
                let mut m = Mask::new(total);
                idx.into_iter().for_each(|i| m.set(i));
                (ns.to_owned(), (m, owners(&names)))
            })
            .collect();
        let host_docs: Vec<&CompiledDoc> = docs
            .iter()
            .filter(|d| d.host.is_some())
            .map(|d| &**d)
            .collect();
        let host_rules = host_docs
            .iter()
            .flat_map(|d| d.host.iter().flatten().cloned())
            .collect();
        let meta_docs: Vec<&CompiledDoc> = docs
            .iter()
            .filter(|d| d.metadata.is_some())
            .map(|d| &**d)
            .collect();
        let metadata_rules = meta_docs
            .iter()
            .flat_map(|d| d.metadata.iter().flatten().cloned())
            .collect();
        let mut metadata_addresses: Vec<IpAddr> = docs
            .iter()
            .flat_map(|d| d.metadata_addresses.iter().flatten().copied())
            .collect();
        if !docs.iter().any(|d| d.metadata_addresses.is_some()) {
            metadata_addresses = DEFAULT_METADATA_ADDRESSES
                .iter()
                .map(|a| a.parse().expect("static address is valid"))
                .collect();
        }
        metadata_addresses.sort();
        metadata_addresses.dedup();
        let ext_docs: Vec<&CompiledDoc> = docs
            .iter()
            .filter(|d| d.external.is_some())
            .map(|d| &**d)
            .collect();
        let external = (!ext_docs.is_empty()).then(|| {
            (
                ext_docs
                    .iter()
                    .flat_map(|d| d.external.iter().flatten().cloned())
                    .collect(),
                owners(&ext_docs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>()),
            )
        });
        CompiledPolicy {
            pod_rules,
            cross_scope,
            cross_owner,
            within,
            host_owner: owners(
                &host_docs
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>(),
            ),
            host_rules,
            metadata_owner: owners(
                &meta_docs
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>(),
            ),
            metadata_rules,
            metadata_addresses,
            external,
            documents: docs.iter().map(|d| d.name.clone()).collect(),
        }
    }

    /// Names of the unioned documents (empty: the baseline holds).
    pub fn documents(&self) -> &[String] {
        &self.documents
    }

    /// Addresses of the cloud metadata API (`kind: metadata`).
    /// The documents that own the hostAccess rules (the rule named by a
    /// host_access violation).
    /// Single node ports the hostAccess rules name (`"10250/TCP"`; ranges
    /// and "any port" name none): they keep their number in the metrics'
    /// port budget (crate::observe).
    pub fn host_ports_named(&self) -> impl Iterator<Item = (u16, &'static str)> + '_ {
        self.host_rules
            .iter()
            .filter_map(|r| r.ports.0.as_ref())
            .flatten()
            .filter(|p| p.first == p.last)
            .map(|p| (p.first, p.proto.as_str()))
    }

    pub fn host_owner_name(&self) -> String {
        self.host_owner.to_string()
    }

    /// The documents that own the metadataApi rules.
    pub fn metadata_owner_name(&self) -> String {
        self.metadata_owner.to_string()
    }

    pub fn metadata_addresses(&self) -> &[IpAddr] {
        &self.metadata_addresses
    }

    /// Number of rules of all sections (for logs and benchmarks).
    pub fn rule_count(&self) -> usize {
        self.pod_rules.len()
            + self.host_rules.len()
            + self.metadata_rules.len()
            + self.external.as_ref().map_or(0, |(r, _)| r.len())
    }

    /// Which rules select this pod, as source and as destination.
    pub fn masks(&self, pod: &PodFacts<'_>) -> PeerMasks {
        let n = self.pod_rules.len();
        let mut from_pod = Mask::new(n);
        let mut to_pod = Mask::new(n);
        for (i, r) in self.pod_rules.iter().enumerate() {
            if r.from.matches(pod) {
                from_pod.set(i);
            }
            if r.to.matches(pod) {
                to_pod.set(i);
            }
        }
        let from_mask = |rules: &mut dyn Iterator<Item = &Peer>, len: usize| {
            let mut m = Mask::new(len);
            for (i, p) in rules.enumerate() {
                if p.matches(pod) {
                    m.set(i);
                }
            }
            m
        };
        let host = from_mask(
            &mut self.host_rules.iter().map(|r| &r.from),
            self.host_rules.len(),
        );
        let metadata = from_mask(
            &mut self.metadata_rules.iter().map(|r| &r.from),
            self.metadata_rules.len(),
        );
        let ext = self
            .external
            .as_ref()
            .map_or(&[][..], |(r, _)| r.as_slice());
        let external = from_mask(&mut ext.iter().map(|r| &r.from), ext.len());
        PeerMasks {
            from_pod,
            to_pod,
            host,
            metadata,
            external,
        }
    }

    /// Judges one flow.
    pub fn evaluate(&self, flow: &FlowView<'_>) -> Decision {
        let End::Pod {
            namespace: src_ns,
            masks: src,
        } = flow.src
        else {
            // The whitelist restricts what pods open; traffic opened by a
            // node or from outside is not judged here (NetworkPolicy is).
            return Decision::NotJudged;
        };
        let port = PortDesc {
            proto: flow.proto,
            port: flow.dst_port,
            protocol: flow.protocol.to_owned(),
        };
        match flow.dst {
            End::Pod {
                namespace: dst_ns,
                masks: dst,
            }
            | End::Service {
                namespace: dst_ns,
                masks: dst,
            } => {
                if src_ns == dst_ns {
                    let Some((scope, owner)) = self.within.get(src_ns) else {
                        return Decision::Allowed { rule: None };
                    };
                    match self.first_pod_rule(src, dst, scope, flow) {
                        Some(rule) => Decision::Allowed { rule: Some(rule) },
                        None => Decision::Violation(ViolationReason::WithinNamespace {
                            rule: owner.clone(),
                            namespace: src_ns.to_owned(),
                            port,
                        }),
                    }
                } else {
                    match self.first_pod_rule(src, dst, &self.cross_scope, flow) {
                        Some(rule) => Decision::Allowed { rule: Some(rule) },
                        None => Decision::Violation(ViolationReason::CrossNamespace {
                            rule: self.cross_owner.clone(),
                            src_namespace: src_ns.to_owned(),
                            dst_namespace: dst_ns.to_owned(),
                            port,
                        }),
                    }
                }
            }
            End::Node { name } => match first_source_rule(&self.host_rules, &src.host, flow) {
                Some(rule) => Decision::Allowed { rule: Some(rule) },
                None => Decision::Violation(ViolationReason::HostAccess {
                    rule: self.host_owner.clone(),
                    src_namespace: src_ns.to_owned(),
                    node: name.to_owned(),
                    port,
                }),
            },
            End::Metadata => match first_source_rule(&self.metadata_rules, &src.metadata, flow) {
                Some(rule) => Decision::Allowed { rule: Some(rule) },
                None => Decision::Violation(ViolationReason::MetadataApi {
                    rule: self.metadata_owner.clone(),
                    src_namespace: src_ns.to_owned(),
                    address: flow.dst_ip,
                    port,
                }),
            },
            End::External => {
                let Some((rules, owner)) = &self.external else {
                    return Decision::NotJudged;
                };
                let hit = src.external.iter().find(|&i| {
                    let r = &rules[i];
                    r.cidr.contains(&flow.dst_ip) && r.ports.matches(flow.proto, flow.dst_port)
                });
                match hit {
                    Some(i) => Decision::Allowed {
                        rule: Some(rules[i].name.clone()),
                    },
                    None => Decision::Violation(ViolationReason::External {
                        rule: owner.clone(),
                        src_namespace: src_ns.to_owned(),
                        address: flow.dst_ip,
                        port,
                    }),
                }
            }
            End::Unknown => Decision::NotJudged,
        }
    }

    fn first_pod_rule(
        &self,
        src: &PeerMasks,
        dst: &PeerMasks,
        scope: &Mask,
        flow: &FlowView<'_>,
    ) -> Option<Arc<str>> {
        Mask::and3(&src.from_pod, &dst.to_pod, scope)
            .find(|&i| self.pod_rules[i].ports.matches(flow.proto, flow.dst_port))
            .map(|i| self.pod_rules[i].name.clone())
    }
}

fn first_source_rule(rules: &[SourceRuleC], mask: &Mask, flow: &FlowView<'_>) -> Option<Arc<str>> {
    mask.iter()
        .find(|&i| rules[i].ports.matches(flow.proto, flow.dst_port))
        .map(|i| rules[i].name.clone())
}

/// One end of a flow as the evaluator sees it.
#[derive(Clone, Copy, Debug)]
pub enum End<'a> {
    Pod {
        namespace: &'a str,
        masks: &'a PeerMasks,
    },
    /// A Service ClusterIP, standing for its pods (masks computed from the
    /// Service's selector labels).
    Service {
        namespace: &'a str,
        masks: &'a PeerMasks,
    },
    Node {
        name: &'a str,
    },
    Metadata,
    External,
    /// An address inside the cluster no object accounts for.
    Unknown,
}

/// What the evaluator needs of a flow.
#[derive(Clone, Copy, Debug)]
pub struct FlowView<'a> {
    pub src: End<'a>,
    pub dst: End<'a>,
    pub dst_ip: IpAddr,
    pub dst_port: Option<u16>,
    pub proto: Option<L4>,
    /// The report's protocol name, for messages.
    pub protocol: &'a str,
}

/// The outcome for one flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `rule` names the allow rule, `None` when no rule was needed
    /// (same namespace, not micro-segmented).
    Allowed {
        rule: Option<Arc<str>>,
    },
    Violation(ViolationReason),
    /// The policy says nothing about this flow (opened by a node or from
    /// outside, outside traffic without an `external` section, or an end
    /// nothing accounts for).
    NotJudged,
}

/// Destination port and protocol, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDesc {
    pub proto: Option<L4>,
    pub port: Option<u16>,
    pub protocol: String,
}

impl fmt::Display for PortDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{p}/{}", self.protocol),
            None => f.write_str(&self.protocol),
        }
    }
}

/// Why a flow breaks the policy: one typed reason that feeds the flow log
/// (`violations[]`) and the metric label (`kind`) alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViolationReason {
    CrossNamespace {
        rule: Arc<str>,
        src_namespace: String,
        dst_namespace: String,
        port: PortDesc,
    },
    WithinNamespace {
        rule: Arc<str>,
        namespace: String,
        port: PortDesc,
    },
    HostAccess {
        rule: Arc<str>,
        src_namespace: String,
        node: String,
        port: PortDesc,
    },
    MetadataApi {
        rule: Arc<str>,
        src_namespace: String,
        address: IpAddr,
        port: PortDesc,
    },
    External {
        rule: Arc<str>,
        src_namespace: String,
        address: IpAddr,
        port: PortDesc,
    },
    /// Traffic went through although the NetworkPolicies deny it.
    NetpolBypass {
        /// `ns/name` of the policies isolating the ends without allowing it.
        rule: String,
        state: &'static str,
    },
}

impl ViolationReason {
    pub fn kind(&self) -> ViolationKind {
        match self {
            ViolationReason::CrossNamespace { .. } => ViolationKind::CrossNamespace,
            ViolationReason::WithinNamespace { .. } => ViolationKind::WithinNamespace,
            ViolationReason::HostAccess { .. } => ViolationKind::HostAccess,
            ViolationReason::MetadataApi { .. } => ViolationKind::MetadataApi,
            ViolationReason::External { .. } => ViolationKind::External,
            ViolationReason::NetpolBypass { .. } => ViolationKind::NetpolBypass,
        }
    }

    /// The policy (documents) concerned.
    pub fn rule(&self) -> &str {
        match self {
            ViolationReason::CrossNamespace { rule, .. }
            | ViolationReason::WithinNamespace { rule, .. }
            | ViolationReason::HostAccess { rule, .. }
            | ViolationReason::MetadataApi { rule, .. }
            | ViolationReason::External { rule, .. } => rule,
            ViolationReason::NetpolBypass { rule, .. } => rule,
        }
    }

    /// One line a human can act on.
    pub fn reason(&self) -> String {
        match self {
            ViolationReason::CrossNamespace { rule, src_namespace, dst_namespace, port } => format!(
                "{src_namespace} -> {dst_namespace} on {port}: no crossNamespace rule of SegmentationPolicy {rule} allows it; add an allow rule or stop the traffic"
            ),
            ViolationReason::WithinNamespace { rule, namespace, port } => format!(
                "inside {namespace} on {port}: namespace is micro-segmented by SegmentationPolicy {rule} and no withinNamespace rule allows this pair"
            ),
            ViolationReason::HostAccess { rule, src_namespace, node, port } => format!(
                "pod in {src_namespace} -> node {node} on {port}: host access is not in hostAccess of SegmentationPolicy {rule}"
            ),
            ViolationReason::MetadataApi { rule, src_namespace, address, port } => format!(
                "pod in {src_namespace} -> metadata API {address} on {port}: not in metadataApi of SegmentationPolicy {rule}; it can read node credentials"
            ),
            ViolationReason::External { rule, src_namespace, address, port } => format!(
                "pod in {src_namespace} -> outside address {address} on {port}: no external rule of SegmentationPolicy {rule} allows it"
            ),
            ViolationReason::NetpolBypass { rule, state } => format!(
                "connection {state} although NetworkPolicy {rule} denies it; check the CNI enforces NetworkPolicy on this node"
            ),
        }
    }

    /// The flow log entry.
    pub fn to_violation(&self) -> Violation {
        Violation {
            kind: self.kind(),
            rule: self.rule().to_owned(),
            reason: self.reason(),
        }
    }
}

#[cfg(test)]
mod tests;
