//! The controls of CONTROLS.md over judged flows and inventory objects.
//!
//! Rules every control keeps (CONTROLS.md, "Notes"):
//! - PASS needs evidence: with no observed traffic in scope the verdict is
//!   NOT VERIFIED, never PASS.
//! - Attempted versus established matters: a forbidden flow that did not get
//!   through (SYN unanswered, RST, no answer) shows enforcement working and
//!   is evidence, not a failure; a forbidden flow that got through FAILs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::judge::{NetpolJudgement, Reach, SegJudgement};
use super::model::{Control, EvidenceGroup, FlowEvidence, Party, Scope, Verdict};
use crate::inventory::Object;
use crate::report::{EndpointKind, FlowReport, ViolationKind};
use crate::segpolicy::SegmentationPolicy;

/// One flow report with everything the controls need about it.
pub struct Fact<'a> {
    pub flow: &'a FlowReport,
    /// `file:line` of the report.
    pub source: &'a str,
    pub reach: Reach,
    pub seg: Option<SegJudgement>,
    pub netpol: Option<NetpolJudgement>,
    pub dst: DstClass,
}

/// Where a flow went, as the controls distinguish it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DstClass {
    /// A pod or a Service (standing for its pods) in this namespace.
    Namespace,
    Node,
    Metadata,
    External,
    Unknown,
}

impl<'a> Fact<'a> {
    pub fn src_is_pod(&self) -> bool {
        self.flow.src.kind == Some(EndpointKind::Pod)
    }

    pub fn src_ns(&self) -> Option<&'a str> {
        self.flow.src.namespace.as_deref()
    }

    pub fn dst_ns(&self) -> Option<&'a str> {
        match self.dst {
            DstClass::Namespace => self.flow.dst.namespace.as_deref(),
            _ => None,
        }
    }

    /// A violation of `kind` under the segmentation judgement.
    fn seg_violation(&self, kind: ViolationKind) -> Option<(&str, &str)> {
        self.seg
            .as_ref()
            .and_then(|s| s.violation(kind))
            .map(|v| (v.rule.as_str(), v.reason.as_str()))
    }
}

/// Classifies the destination; `metadata` addresses count even when
/// attribution did not mark them (the policy's list or the default).
pub fn dst_class(flow: &FlowReport, metadata: &[IpAddr]) -> DstClass {
    if flow.dst.kind == Some(EndpointKind::Metadata) || metadata.contains(&flow.dst.ip) {
        return DstClass::Metadata;
    }
    match flow.dst.kind {
        Some(EndpointKind::Pod | EndpointKind::Service) if flow.dst.namespace.is_some() => {
            DstClass::Namespace
        }
        Some(EndpointKind::Node) => DstClass::Node,
        Some(EndpointKind::External) => DstClass::External,
        _ => DstClass::Unknown,
    }
}

/// Everything the controls read.
pub struct Context<'a> {
    pub facts: &'a [Fact<'a>],
    pub objects: &'a [Object],
    pub policies: &'a [SegmentationPolicy],
    pub evidence_cap: usize,
}

impl Context<'_> {
    fn pod_flows(&self) -> impl Iterator<Item = &Fact<'_>> {
        self.facts.iter().filter(|f| f.src_is_pod())
    }

    fn policy_declared(&self) -> bool {
        !self.policies.is_empty()
    }

    fn netpols(&self) -> Vec<&NetworkPolicy> {
        self.objects
            .iter()
            .filter_map(|o| match o {
                Object::NetworkPolicy(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn group<'f>(
        &self,
        name: &str,
        title: &str,
        facts: impl IntoIterator<Item = (&'f Fact<'f>, Option<(String, String)>)>,
    ) -> EvidenceGroup {
        let mut total = 0u64;
        let mut flows = Vec::new();
        for (fact, finding) in facts {
            total += 1;
            if flows.len() < self.evidence_cap {
                flows.push(evidence(fact, finding));
            }
        }
        EvidenceGroup {
            name: name.to_owned(),
            title: title.to_owned(),
            total,
            flows,
        }
    }
}

pub fn party(ep: &crate::report::Endpoint) -> Party {
    let kind = ep
        .kind
        .map(|k| match k {
            EndpointKind::Pod => "pod",
            EndpointKind::Service => "service",
            EndpointKind::Node => "node",
            EndpointKind::Metadata => "metadata",
            EndpointKind::External => "external",
        })
        .unwrap_or("unknown");
    let name = match ep.kind {
        Some(EndpointKind::Pod) => match (&ep.namespace, &ep.pod, &ep.workload) {
            (Some(ns), Some(pod), _) => format!("{ns}/{pod}"),
            (Some(ns), None, Some(w)) => format!("{ns}/{w}"),
            (Some(ns), None, None) => format!("{ns}/{}", ep.ip),
            _ => ep.ip.to_string(),
        },
        Some(EndpointKind::Service) => ep
            .service
            .as_ref()
            .map(|s| s.id())
            .or_else(|| ep.namespace.as_ref().map(|ns| format!("{ns}/{}", ep.ip)))
            .unwrap_or_else(|| ep.ip.to_string()),
        Some(EndpointKind::Node) => match &ep.node {
            Some(n) => format!("node/{n}"),
            None => format!("node {}", ep.ip),
        },
        Some(EndpointKind::Metadata) => "metadata API".to_owned(),
        _ => ep.ip.to_string(),
    };
    Party {
        kind: kind.to_owned(),
        name,
        ip: ep.ip.to_string(),
        port: ep.port,
        namespace: ep.namespace.as_deref().map(str::to_owned),
        workload: ep.workload.as_deref().map(str::to_owned),
        service_account: ep.service_account.as_deref().map(str::to_owned),
        node: ep.node.as_deref().map(str::to_owned),
    }
}

fn evidence(fact: &Fact<'_>, finding: Option<(String, String)>) -> FlowEvidence {
    let f = fact.flow;
    let (rule, reason) = match finding {
        Some((r, why)) => (Some(r).filter(|r| !r.is_empty()), Some(why)),
        None => (None, None),
    };
    FlowEvidence {
        start: f.start,
        end: f.end,
        observer: f.observer.clone(),
        src: party(&f.src),
        dst: party(&f.dst),
        protocol: f.protocol.clone(),
        port: f.dst.port,
        state: Reach::state_name(f).to_owned(),
        bytes_sent: f.bytes.sent,
        bytes_received: f.bytes.received,
        rule,
        reason,
        source: fact.source.to_owned(),
    }
}

fn counts<const N: usize>(pairs: [(&str, usize); N]) -> BTreeMap<String, u64> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v as u64))
        .collect()
}

fn finding(rule: &str, reason: &str) -> Option<(String, String)> {
    Some((rule.to_owned(), reason.to_owned()))
}

/// `n thing` / `n things`.
fn n(count: usize, one: &str, many: &str) -> String {
    if count == 1 {
        format!("1 {one}")
    } else {
        format!("{count} {many}")
    }
}

/// Shows at most `max` names, then `and N more`.
fn list(names: &[String], max: usize) -> String {
    if names.len() <= max {
        names.join(", ")
    } else {
        format!(
            "{}, and {} more",
            names[..max].join(", "),
            names.len() - max
        )
    }
}

pub fn all(cx: &Context<'_>) -> Vec<Control> {
    vec![
        a1_plan(cx),
        a7_cross_namespace(cx),
        host_ports(cx),
        metadata_api(cx),
        a18_within_namespace(cx),
        cis_5_3_2(cx),
        netpol_enforcement(cx),
        a9_default_service_account(cx),
    ]
}

/// BSI APP.4.4.A1: planning. The observed matrix is the input; the verdict
/// says only whether a separation plan (a SegmentationPolicy) is declared.
fn a1_plan(cx: &Context<'_>) -> Control {
    let pairs: BTreeSet<(&str, &str)> = cx
        .pod_flows()
        .filter_map(|f| Some((f.src_ns()?, f.dst_ns()?)))
        .filter(|(a, b)| a != b)
        .collect();
    let within_ns = cx
        .policies
        .iter()
        .flat_map(|p| &p.spec.within_namespace)
        .count();
    let cross_rules = cx
        .policies
        .iter()
        .filter_map(|p| p.spec.cross_namespace.as_ref())
        .map(|c| c.allow.len())
        .sum::<usize>();
    let (verdict, reason) = if cx.policy_declared() {
        (
            Verdict::Pass,
            format!(
                "A separation plan is declared: {} with {} and {}. The observed namespace matrix ({}) is attached as input for reviewing the plan.",
                n(cx.policies.len(), "SegmentationPolicy document", "SegmentationPolicy documents"),
                n(cross_rules, "crossNamespace rule", "crossNamespace rules"),
                n(within_ns, "micro-segmented namespace", "micro-segmented namespaces"),
                n(pairs.len(), "cross-namespace pair observed", "cross-namespace pairs observed"),
            ),
        )
    } else {
        (
            Verdict::NotVerified,
            format!(
                "No SegmentationPolicy is declared (neither --policy nor in the inventory), so there is no plan to compare with. The observed namespace matrix ({}) is attached as input for writing one.",
                n(pairs.len(), "cross-namespace pair", "cross-namespace pairs")
            ),
        )
    };
    Control {
        id: "BSI APP.4.4.A1".into(),
        title: "Separation is planned".into(),
        requirement: "Plan how applications are separated (namespaces, networks); the observed matrix is compared with the declared plan.".into(),
        verdict,
        reason,
        counts: counts([
            ("policy_documents", cx.policies.len()),
            ("cross_namespace_rules", cross_rules),
            ("micro_segmented_namespaces", within_ns),
            ("cross_namespace_pairs_observed", pairs.len()),
        ]),
        scopes: Vec::new(),
        evidence: Vec::new(),
    }
}

/// Buckets of a traffic control's flows in scope.
#[derive(Default)]
struct Buckets<'f> {
    violating: Vec<(&'f Fact<'f>, Option<(String, String)>)>,
    blocked: Vec<(&'f Fact<'f>, Option<(String, String)>)>,
    allowed: Vec<(&'f Fact<'f>, Option<(String, String)>)>,
    unjudged: Vec<(&'f Fact<'f>, Option<(String, String)>)>,
}

impl<'f> Buckets<'f> {
    fn sort(facts: impl Iterator<Item = &'f Fact<'f>>, kind: ViolationKind) -> Self {
        let mut b = Buckets::default();
        for f in facts {
            if f.seg.is_none() {
                b.unjudged.push((f, None));
                continue;
            }
            match f.seg_violation(kind) {
                Some((rule, reason)) if f.reach == Reach::Reached => {
                    b.violating.push((f, finding(rule, reason)))
                }
                Some((rule, reason)) => b.blocked.push((f, finding(rule, reason))),
                None => {
                    let rule = f.seg.as_ref().and_then(|s| s.rule.clone());
                    b.allowed.push((f, rule.map(|r| (r, "allowed".to_owned()))))
                }
            }
        }
        b
    }

    fn counts(&self, in_scope: usize, population: usize) -> BTreeMap<String, u64> {
        counts([
            ("pod_flow_reports", population),
            ("in_scope", in_scope),
            ("violating", self.violating.len()),
            ("blocked", self.blocked.len()),
            ("allowed", self.allowed.len()),
            ("unjudged", self.unjudged.len()),
        ])
    }

    fn evidence(self, cx: &Context<'_>, what: &str) -> Vec<EvidenceGroup> {
        let mut out = Vec::new();
        for (name, title, items) in [
            (
                "violating",
                format!("{what}: forbidden and got through"),
                self.violating,
            ),
            (
                "blocked",
                format!("{what}: forbidden and blocked (enforcement held)"),
                self.blocked,
            ),
            ("allowed", format!("{what}: allowed"), self.allowed),
            (
                "unjudged",
                format!("{what}: no verdict available"),
                self.unjudged,
            ),
        ] {
            if !items.is_empty() {
                out.push(cx.group(name, &title, items));
            }
        }
        out
    }
}

/// BSI APP.4.4.A7, the namespace part: cross-namespace traffic only as
/// whitelisted.
fn a7_cross_namespace(cx: &Context<'_>) -> Control {
    let population = cx.pod_flows().count();
    let scope: Vec<&Fact<'_>> = cx
        .pod_flows()
        .filter(|f| matches!((f.src_ns(), f.dst_ns()), (Some(a), Some(b)) if a != b))
        .collect();
    let b = Buckets::sort(scope.iter().copied(), ViolationKind::CrossNamespace);
    let counts = b.counts(scope.len(), population);
    let (verdict, reason) = if !cx.policy_declared() {
        (
            Verdict::NotVerified,
            format!(
                "No SegmentationPolicy is declared, so there is no whitelist to verify against ({} observed; the flow log's own verdicts are shown below).",
                n(scope.len(), "cross-namespace flow report", "cross-namespace flow reports")
            ),
        )
    } else if population == 0 {
        (
            Verdict::NotVerified,
            "No flows opened by pods were observed in the window: isolation cannot be shown from silence.".to_owned(),
        )
    } else if !b.violating.is_empty() {
        (
            Verdict::Fail,
            format!(
                "{} crossed namespaces without a whitelist rule and got through.",
                n(b.violating.len(), "flow report", "flow reports")
            ),
        )
    } else if !b.unjudged.is_empty() {
        (
            Verdict::NotVerified,
            format!(
                "{} carry no verdict; re-run with --policy to judge them.",
                n(
                    b.unjudged.len(),
                    "cross-namespace flow report",
                    "cross-namespace flow reports"
                )
            ),
        )
    } else {
        (
            Verdict::Pass,
            format!(
                "Of {} opened by pods, {} crossed namespaces as whitelisted; {} forbidden attempts were blocked.",
                n(population, "flow report", "flow reports"),
                b.allowed.len(),
                b.blocked.len()
            ),
        )
    };
    Control {
        id: "BSI APP.4.4.A7".into(),
        title: "Cross-namespace traffic only as whitelisted".into(),
        requirement: "Separate networks: between namespaces forbid everything first and allow only what is required (whitelisting).".into(),
        verdict,
        reason,
        counts,
        scopes: Vec::new(),
        evidence: b.evidence(cx, "Cross-namespace"),
    }
}

/// Shared shape of "Host ports" and "Metadata API": pods to a special
/// destination, forbidden unless allowed; FAIL when one got through.
fn special_destination(
    cx: &Context<'_>,
    class: DstClass,
    kind: ViolationKind,
    what: &str,
) -> (Verdict, String, BTreeMap<String, u64>, Vec<EvidenceGroup>) {
    let population = cx.pod_flows().count();
    let scope: Vec<&Fact<'_>> = cx.pod_flows().filter(|f| f.dst == class).collect();
    let b = Buckets::sort(scope.iter().copied(), kind);
    let counts = b.counts(scope.len(), population);
    let (verdict, reason) = if population == 0 {
        (
            Verdict::NotVerified,
            "No flows opened by pods were observed in the window: isolation cannot be shown from silence.".to_owned(),
        )
    } else if !b.violating.is_empty() {
        (
            Verdict::Fail,
            format!(
                "{} from pods reached {what} without an allow rule.",
                n(b.violating.len(), "flow report", "flow reports")
            ),
        )
    } else if !b.unjudged.is_empty() {
        (
            Verdict::NotVerified,
            format!(
                "{} from pods to {what} carry no verdict; re-run with --policy to judge them.",
                n(b.unjudged.len(), "flow report", "flow reports")
            ),
        )
    } else {
        (
            Verdict::Pass,
            format!(
                "Of {} opened by pods, none reached {what} without an allow rule ({} allowed, {} forbidden attempts blocked).",
                n(population, "flow report", "flow reports"),
                b.allowed.len(),
                b.blocked.len()
            ),
        )
    };
    let label = match class {
        DstClass::Node => "Pod to node",
        _ => "Pod to metadata API",
    };
    (verdict, reason, counts, b.evidence(cx, label))
}

fn host_ports(cx: &Context<'_>) -> Control {
    let (verdict, reason, counts, evidence) =
        special_destination(cx, DstClass::Node, ViolationKind::HostAccess, "a node port");
    Control {
        id: "Host ports".into(),
        title: "No pod reaches a node port unless allowed (BSI APP.4.4.A7)".into(),
        requirement: "Node and control-plane admin ports are reachable only from the pods that need them; attempted (blocked) versus established matters.".into(),
        verdict,
        reason,
        counts,
        scopes: Vec::new(),
        evidence,
    }
}

fn metadata_api(cx: &Context<'_>) -> Control {
    let (verdict, reason, counts, evidence) = special_destination(
        cx,
        DstClass::Metadata,
        ViolationKind::MetadataApi,
        "the cloud metadata API",
    );
    Control {
        id: "Metadata API".into(),
        title: "No pod reaches the cloud metadata API unless allowed".into(),
        requirement: "Pods cannot reach the cloud metadata service (169.254.169.254, fd00:ec2::254) unless meant to (CNCF hardening advice).".into(),
        verdict,
        reason,
        counts,
        scopes: Vec::new(),
        evidence,
    }
}

/// BSI APP.4.4.A18: micro-segmentation inside the namespaces that declare it.
fn a18_within_namespace(cx: &Context<'_>) -> Control {
    let declared: BTreeSet<&str> = cx
        .policies
        .iter()
        .flat_map(|p| &p.spec.within_namespace)
        .map(|w| w.namespace.as_str())
        .collect();
    let intra: Vec<&Fact<'_>> = cx
        .pod_flows()
        .filter(|f| matches!((f.src_ns(), f.dst_ns()), (Some(a), Some(b)) if a == b))
        .collect();
    let mut per_ns: BTreeMap<&str, Vec<&Fact<'_>>> = BTreeMap::new();
    for f in &intra {
        per_ns
            .entry(f.src_ns().unwrap_or_default())
            .or_default()
            .push(f);
    }
    let mut scopes = Vec::new();
    let mut all = Buckets::default();
    let (mut failed, mut passed, mut unverified) = (0usize, 0usize, 0usize);
    for ns in &declared {
        let flows = per_ns.get(ns).cloned().unwrap_or_default();
        let b = Buckets::sort(flows.iter().copied(), ViolationKind::WithinNamespace);
        let (verdict, reason) = if flows.is_empty() {
            (
                Verdict::NotVerified,
                "micro-segmentation declared; no traffic inside the namespace observed".to_owned(),
            )
        } else if !b.violating.is_empty() {
            (
                Verdict::Fail,
                format!(
                    "{} broke the withinNamespace rules and got through",
                    n(b.violating.len(), "flow report", "flow reports")
                ),
            )
        } else if !b.unjudged.is_empty() {
            (
                Verdict::NotVerified,
                format!(
                    "{} carry no verdict",
                    n(b.unjudged.len(), "flow report", "flow reports")
                ),
            )
        } else {
            (
                Verdict::Pass,
                format!(
                    "{} allowed by withinNamespace rules, {} forbidden attempts blocked",
                    b.allowed.len(),
                    b.blocked.len()
                ),
            )
        };
        match verdict {
            Verdict::Fail => failed += 1,
            Verdict::Pass => passed += 1,
            Verdict::NotVerified => unverified += 1,
        }
        scopes.push(Scope {
            name: (*ns).to_owned(),
            verdict,
            reason,
            details: Vec::new(),
        });
        all.violating.extend(b.violating);
        all.blocked.extend(b.blocked);
        all.allowed.extend(b.allowed);
        all.unjudged.extend(b.unjudged);
    }
    let undeclared_active: Vec<&str> = per_ns
        .keys()
        .copied()
        .filter(|ns| !declared.contains(ns))
        .collect();
    for ns in &undeclared_active {
        scopes.push(Scope {
            name: (*ns).to_owned(),
            verdict: Verdict::NotVerified,
            reason: format!(
                "no withinNamespace micro-segmentation declared ({} inside the namespace observed)",
                n(per_ns[ns].len(), "flow report", "flow reports")
            ),
            details: Vec::new(),
        });
    }
    let in_scope = all.violating.len() + all.blocked.len() + all.allowed.len() + all.unjudged.len();
    let mut counts = all.counts(in_scope, cx.pod_flows().count());
    counts.insert("declared_namespaces".into(), declared.len() as u64);
    counts.insert("namespaces_pass".into(), passed as u64);
    counts.insert("namespaces_fail".into(), failed as u64);
    counts.insert("namespaces_not_verified".into(), unverified as u64);
    counts.insert(
        "undeclared_namespaces_with_internal_traffic".into(),
        undeclared_active.len() as u64,
    );
    let (verdict, reason) = if declared.is_empty() {
        (
            Verdict::NotVerified,
            format!(
                "No namespace declares withinNamespace micro-segmentation; {} had internal traffic.",
                n(undeclared_active.len(), "namespace", "namespaces")
            ),
        )
    } else if failed > 0 {
        (
            Verdict::Fail,
            format!(
                "{} of {} micro-segmented namespaces had traffic that broke their rules and got through.",
                failed,
                declared.len()
            ),
        )
    } else if unverified > 0 {
        (
            Verdict::NotVerified,
            format!(
                "Verified for {} of {} micro-segmented namespaces; the others had no judged internal traffic in the window.",
                passed,
                declared.len()
            ),
        )
    } else {
        (
            Verdict::Pass,
            format!(
                "All {} micro-segmented namespaces kept to their rules ({} allowed, {} forbidden attempts blocked).",
                declared.len(),
                all.allowed.len(),
                all.blocked.len()
            ),
        )
    };
    Control {
        id: "BSI APP.4.4.A18".into(),
        title: "Micro-segmentation inside namespaces".into(),
        requirement: "Inside a namespace only the needed ports between pods, selected by labels or service accounts (withinNamespace rules).".into(),
        verdict,
        reason,
        counts,
        scopes,
        evidence: all.evidence(cx, "Inside a namespace"),
    }
}

/// The effective policy types of a NetworkPolicy (API reference: when
/// `policyTypes` is absent, Ingress always, Egress when egress rules exist).
fn policy_types(p: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &p.spec else {
        return (true, false);
    };
    match &spec.policy_types {
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        None => (true, spec.egress.is_some()),
    }
}

/// `podSelector: {}` selects every pod of the namespace.
fn selects_all(p: &NetworkPolicy) -> bool {
    p.spec.as_ref().is_none_or(|s| {
        s.pod_selector.as_ref().is_none_or(|sel| {
            sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty())
        })
    })
}

/// CIS 5.3.2: every namespace has NetworkPolicies, with a default deny for
/// ingress and egress. "Default deny" here means every pod of the namespace
/// is isolated in that direction (a policy with `podSelector: {}` covering
/// it), so whatever no rule allows is denied; a pure deny has no rules.
fn cis_5_3_2(cx: &Context<'_>) -> Control {
    let netpols = cx.netpols();
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    for o in cx.objects {
        match o {
            Object::Namespace(_) => {
                namespaces.insert(o.name().to_owned());
            }
            Object::Node(_) | Object::SegmentationPolicy(_) => {}
            _ => {
                if let Some(ns) = o.namespace() {
                    namespaces.insert(ns.to_owned());
                }
            }
        }
    }
    // Cluster-scoped policies (ClusterNetworkPolicy, AdminNetworkPolicy,
    // BaselineAdminNetworkPolicy) are segmentation evidence too: a
    // namespace whose every pod is a subject of a cluster policy's
    // default deny is default-deny, whatever NetworkPolicies it has.
    let cluster_specs: Vec<crate::netpol::cluster::ClusterSpec> = cx
        .objects
        .iter()
        .filter_map(crate::netpol::ClusterPolicyRef::of)
        .filter_map(|r| crate::netpol::cluster::ClusterSpec::parse(r.kind, r.object).ok())
        .collect();
    let ns_labels: BTreeMap<String, crate::netpol::selector::Labels> = cx
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Namespace(n) => Some(crate::netpol::model::namespace_labels(n)),
            _ => None,
        })
        .collect();
    let cover = |ns: &str| {
        let labels = ns_labels
            .get(ns)
            .cloned()
            .unwrap_or_else(|| crate::netpol::model::implicit_namespace_labels(ns));
        crate::netpol::cluster::namespace_cover(&cluster_specs, &labels)
    };
    let mut by_ns: BTreeMap<&str, Vec<&NetworkPolicy>> = BTreeMap::new();
    for p in &netpols {
        by_ns
            .entry(p.metadata.namespace.as_deref().unwrap_or("default"))
            .or_default()
            .push(p);
    }
    let mut scopes = Vec::new();
    let (mut without, mut no_ingress, mut no_egress, mut ok) = (
        Vec::<String>::new(),
        Vec::<String>::new(),
        Vec::<String>::new(),
        0usize,
    );
    for ns in &namespaces {
        let pols = by_ns.get(ns.as_str()).cloned().unwrap_or_default();
        let name = |p: &NetworkPolicy| p.metadata.name.clone().unwrap_or_default();
        let mut details: Vec<String> = pols
            .iter()
            .map(|p| format!("NetworkPolicy {}", name(p)))
            .collect();
        details.sort();
        let cov = cover(ns);
        details.extend(cov.policies.iter().cloned());
        let mut deny_in: Vec<String> = pols
            .iter()
            .filter(|p| selects_all(p) && policy_types(p).0)
            .map(|p| name(p))
            .collect();
        deny_in.extend(cov.deny_ingress.iter().cloned());
        let mut deny_out: Vec<String> = pols
            .iter()
            .filter(|p| selects_all(p) && policy_types(p).1)
            .map(|p| name(p))
            .collect();
        deny_out.extend(cov.deny_egress.iter().cloned());
        let (verdict, reason) = if pols.is_empty() && cov.policies.is_empty() {
            without.push(ns.clone());
            (
                Verdict::Fail,
                "no NetworkPolicy in this namespace and no cluster-scoped policy covering it"
                    .to_owned(),
            )
        } else {
            let mut missing = Vec::new();
            if deny_in.is_empty() {
                no_ingress.push(ns.clone());
                missing.push("ingress");
            }
            if deny_out.is_empty() {
                no_egress.push(ns.clone());
                missing.push("egress");
            }
            if missing.is_empty() {
                ok += 1;
                (
                    Verdict::Pass,
                    format!(
                        "default deny for ingress ({}) and egress ({})",
                        deny_in.join(", "),
                        deny_out.join(", ")
                    ),
                )
            } else {
                (
                    Verdict::Fail,
                    format!(
                        "{}, but no default deny for {} (no policy with podSelector {{}} covering it)",
                        {
                            let mut have = n(pols.len(), "NetworkPolicy", "NetworkPolicies");
                            if !cov.policies.is_empty() {
                                have.push_str(&format!(
                                    " and {}",
                                    n(cov.policies.len(), "cluster-scoped policy", "cluster-scoped policies")
                                ));
                            }
                            have
                        },
                        missing.join(" and ")
                    ),
                )
            }
        };
        scopes.push(Scope {
            name: ns.clone(),
            verdict,
            reason,
            details,
        });
    }
    let counts = counts([
        ("namespaces", namespaces.len()),
        ("network_policies", netpols.len()),
        ("cluster_scoped_policies", cluster_specs.len()),
        ("namespaces_without_policies", without.len()),
        ("namespaces_without_default_deny_ingress", no_ingress.len()),
        ("namespaces_without_default_deny_egress", no_egress.len()),
        ("namespaces_pass", ok),
    ]);
    let (verdict, reason) = if netpols.is_empty() && cluster_specs.is_empty() {
        (
            Verdict::NotVerified,
            format!(
                "The inventory holds no NetworkPolicy at all ({}): it cannot tell whether policies exist. Include networkpolicies in the inventory (kubectl get ns,pods,svc,sa,nodes,networkpolicies -A -o json).",
                n(namespaces.len(), "namespace", "namespaces")
            ),
        )
    } else if namespaces.len() == ok {
        (
            Verdict::Pass,
            format!(
                "All {} namespaces have a default deny for ingress and egress (NetworkPolicies or cluster-scoped policies).",
                namespaces.len()
            ),
        )
    } else {
        let mut parts = Vec::new();
        if !without.is_empty() {
            parts.push(format!("without any NetworkPolicy: {}", list(&without, 12)));
        }
        if !no_ingress.is_empty() {
            parts.push(format!(
                "no default deny for ingress: {}",
                list(&no_ingress, 12)
            ));
        }
        if !no_egress.is_empty() {
            parts.push(format!(
                "no default deny for egress: {}",
                list(&no_egress, 12)
            ));
        }
        (
            Verdict::Fail,
            format!(
                "{} of {} namespaces fall short. {}.",
                namespaces.len() - ok,
                namespaces.len(),
                parts.join("; ")
            ),
        )
    };
    Control {
        id: "CIS 5.3.2".into(),
        title: "Every namespace has NetworkPolicies (default deny)".into(),
        requirement: "Every namespace has NetworkPolicies defined, with a default deny covering ingress and egress.".into(),
        verdict,
        reason,
        counts,
        scopes,
        evidence: Vec::new(),
    }
}

/// NetworkPolicy enforcement: what the NetworkPolicies deny does not get
/// through (`netpol_bypass`).
fn netpol_enforcement(cx: &Context<'_>) -> Control {
    let have_netpols = !cx.netpols().is_empty();
    let mut bypass = Vec::new();
    let mut blocked = Vec::new();
    let mut allowed_isolated = Vec::new();
    let mut open = 0usize;
    let mut unknown = 0usize;
    for f in cx.facts {
        let Some(np) = &f.netpol else {
            unknown += 1;
            continue;
        };
        if let Some(v) = &np.bypass {
            bypass.push((f, finding(&v.rule, &v.reason)));
        } else if !np.allowed {
            let why = if f.reach == Reach::Refused {
                "denied by NetworkPolicy; refused (RST)"
            } else {
                "denied by NetworkPolicy; not answered"
            };
            blocked.push((f, finding(&np.policies.join(", "), why)));
        } else if np.isolated == Some(true) {
            allowed_isolated.push((
                f,
                finding(&np.policies.join(", "), "allowed by NetworkPolicy"),
            ));
        } else {
            open += 1;
        }
    }
    let in_scope = bypass.len() + blocked.len() + allowed_isolated.len();
    let counts = counts([
        ("flow_reports", cx.facts.len()),
        ("network_policies", cx.netpols().len()),
        ("in_scope", in_scope),
        ("bypass", bypass.len()),
        ("blocked", blocked.len()),
        ("allowed_by_policy", allowed_isolated.len()),
        ("not_selected_by_any_policy", open),
        ("no_networkpolicy_verdict", unknown),
    ]);
    let (verdict, reason) = if !bypass.is_empty() {
        (
            Verdict::Fail,
            format!(
                "{} got through although the NetworkPolicies deny them: the network plugin does not enforce them.",
                n(bypass.len(), "flow report", "flow reports")
            ),
        )
    } else if cx.facts.is_empty() {
        (
            Verdict::NotVerified,
            "No flows were observed in the window.".to_owned(),
        )
    } else if !have_netpols {
        (
            Verdict::NotVerified,
            "The inventory holds no NetworkPolicy, so there is nothing whose enforcement could be checked.".to_owned(),
        )
    } else if in_scope == 0 {
        (
            Verdict::NotVerified,
            format!(
                "No observed flow touched a pod selected by a NetworkPolicy ({} not selected, {} without a NetworkPolicy verdict).",
                open, unknown
            ),
        )
    } else if blocked.is_empty() {
        (
            Verdict::Pass,
            format!(
                "{} passed pods selected by NetworkPolicies, all as allowed; no denied connection was observed, so blocking itself was not exercised.",
                n(allowed_isolated.len(), "flow report", "flow reports")
            ),
        )
    } else {
        (
            Verdict::Pass,
            format!(
                "{} denied by NetworkPolicies did not get through; {} passed as allowed.",
                n(blocked.len(), "flow report", "flow reports"),
                allowed_isolated.len()
            ),
        )
    };
    let mut evidence = Vec::new();
    for (name, title, items) in [
        (
            "bypass",
            "Denied by NetworkPolicy and got through (netpol_bypass)",
            bypass,
        ),
        ("blocked", "Denied by NetworkPolicy and blocked", blocked),
        (
            "allowed",
            "Selected by NetworkPolicy and allowed",
            allowed_isolated,
        ),
    ] {
        if !items.is_empty() {
            evidence.push(cx.group(name, title, items));
        }
    }
    Control {
        id: "NetworkPolicy enforcement".into(),
        title: "NetworkPolicies are enforced".into(),
        requirement:
            "What the NetworkPolicies deny does not get through: the CNI really enforces them."
                .into(),
        verdict,
        reason,
        counts,
        scopes: Vec::new(),
        evidence,
    }
}

/// Does a pod spec run as the `default` service account? (An absent
/// `serviceAccountName` means `default`.)
fn runs_as_default(spec: Option<&PodSpec>) -> bool {
    let sa = spec.and_then(|s| {
        s.service_account_name
            .as_deref()
            .or(s.service_account.as_deref())
    });
    sa.is_none_or(|sa| sa.is_empty() || sa == "default")
}

/// BSI APP.4.4.A9: no workload on the `default` service account.
fn a9_default_service_account(cx: &Context<'_>) -> Control {
    let known: Vec<&Fact<'_>> = cx
        .pod_flows()
        .filter(|f| f.flow.src.service_account.is_some())
        .collect();
    let on_default: Vec<&Fact<'_>> = known
        .iter()
        .copied()
        .filter(|f| f.flow.src.service_account.as_deref() == Some("default"))
        .collect();
    let mut sources: BTreeMap<String, usize> = BTreeMap::new();
    for f in &on_default {
        let p = party(&f.flow.src);
        let key = match (&p.namespace, &p.workload) {
            (Some(ns), Some(w)) => format!("{ns}/{w}"),
            _ => p.name,
        };
        *sources.entry(key).or_default() += 1;
    }
    // The inventory's pods and workloads on `default`, as context: a
    // workload that sent nothing in the window is not evidence either way.
    let mut inventory_default: Vec<String> = cx
        .objects
        .iter()
        .filter_map(|o| {
            let spec = match o {
                Object::Pod(p) => p.spec.as_ref(),
                Object::Deployment(d) => d.spec.template.spec.as_ref(),
                Object::StatefulSet(d) => d.spec.template.spec.as_ref(),
                Object::DaemonSet(d) => d.spec.template.spec.as_ref(),
                _ => return None,
            };
            runs_as_default(spec)
                .then(|| format!("{} {}/{}", o.kind(), o.namespace().unwrap_or(""), o.name()))
        })
        .collect();
    inventory_default.sort();
    let scopes: Vec<Scope> = sources
        .iter()
        .map(|(src, count)| Scope {
            name: src.clone(),
            verdict: Verdict::Fail,
            reason: format!(
                "opened {} as service account default",
                n(*count, "flow", "flows")
            ),
            details: Vec::new(),
        })
        .collect();
    let counts = counts([
        ("pod_flow_reports", cx.pod_flows().count()),
        ("with_service_account", known.len()),
        ("on_default", on_default.len()),
        ("sources_on_default", sources.len()),
        (
            "inventory_pods_and_workloads_on_default",
            inventory_default.len(),
        ),
    ]);
    let inv_note = if inventory_default.is_empty() {
        String::new()
    } else {
        format!(
            " The inventory also shows {} on default: {}.",
            n(
                inventory_default.len(),
                "pod or workload",
                "pods and workloads"
            ),
            list(&inventory_default, 8)
        )
    };
    let (verdict, reason) = if !on_default.is_empty() {
        (
            Verdict::Fail,
            format!(
                "{} opened by pods running as the default service account, from {}.{inv_note}",
                n(on_default.len(), "flow report was", "flow reports were"),
                n(sources.len(), "source", "sources")
            ),
        )
    } else if known.is_empty() {
        (
            Verdict::NotVerified,
            format!("No flow carries the source pod's service account.{inv_note}"),
        )
    } else {
        (
            Verdict::Pass,
            format!(
                "All {} opened by pods with a known service account came from dedicated accounts.{inv_note}",
                n(known.len(), "flow report", "flow reports")
            ),
        )
    };
    let mut evidence = Vec::new();
    if !on_default.is_empty() {
        evidence.push(cx.group(
            "default_service_account",
            "Flows from pods running as the default service account",
            on_default.iter().map(|f| {
                (
                    *f,
                    finding("", "source pod runs as service account default"),
                )
            }),
        ));
    }
    Control {
        id: "BSI APP.4.4.A9".into(),
        title: "No workload on the default service account".into(),
        requirement:
            "Pods should not run as the default service account; each application has its own."
                .into(),
        verdict,
        reason,
        counts,
        scopes,
        evidence,
    }
}
