//! `segwatch audit`: evidence for auditors that micro-segmentation holds, or
//! where it does not (controls and ids as in CONTROLS.md).
//!
//! ```text
//!  flow logs ──► FlowReport (report::read_flow_log) ─┐  judge::SegmentationJudge
//!  inventory ──► typed objects (inventory) ──────────┼─► (flow log | --policy)
//!  --policy  ──► SegmentationPolicy documents ───────┘  judge::NetpolJudge
//!                                                       (flow log | engine)
//!        Fact per flow (reach, verdicts) ─► controls::all ─► AuditReport
//!        + window, coverage, matrix, input SHA-256       ─► render: json | md | html
//! ```
//!
//! Everything here is pure: the caller reads files, picks the judges and
//! pins the generation time; the same inputs give byte-identical output.

pub mod controls;
pub mod judge;
pub mod model;
pub mod probes;
pub mod rejudge;
pub mod render;
pub mod staged;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::inventory::Object;
use crate::report::{EndpointKind, FlowReport};
use crate::segpolicy::SegmentationPolicy;
use controls::{dst_class, Context, DstClass, Fact};
use judge::{NetpolJudge, Reach, SegmentationJudge};
use model::*;

/// A flow report and where it was read (`file:line`).
#[derive(Clone, Debug)]
pub struct SourcedFlow {
    pub report: FlowReport,
    pub source: String,
}

/// Everything one audit reads.
pub struct AuditInput<'a> {
    pub flows: Vec<SourcedFlow>,
    pub objects: &'a [Object],
    /// Declared SegmentationPolicy documents (`--policy` and the inventory).
    pub policies: &'a [SegmentationPolicy],
    pub segmentation: &'a dyn SegmentationJudge,
    pub segmentation_source: JudgementSource,
    pub netpol: &'a dyn NetpolJudge,
    pub netpol_source: JudgementSource,
    pub inputs: Inputs,
    pub generated_at: DateTime<Utc>,
    pub evidence_cap: usize,
    pub warnings: Vec<String>,
}

/// The declared SegmentationPolicy documents: as written (for the
/// controls that read the plan) and compiled (for re-judging flows).
#[derive(Debug, Default)]
pub struct DeclaredPolicies {
    pub raw: Vec<SegmentationPolicy>,
    pub compiled: Vec<std::sync::Arc<crate::segpolicy::CompiledDoc>>,
}

/// `--policy` documents (every one must be a valid SegmentationPolicy,
/// errors name file, document and field) plus the inventory's own
/// SegmentationPolicy objects, as `segwatch run` adds them too; sorted by
/// name.
pub fn load_declared_policies(
    paths: &[std::path::PathBuf],
    objects: &[Object],
) -> anyhow::Result<DeclaredPolicies> {
    use crate::segpolicy::CompiledDoc;
    let compiled_files =
        crate::segpolicy::load_policy_paths(paths).map_err(|e| anyhow::anyhow!("{e}"))?;
    let files = crate::inventory::load_paths_strict(paths).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut pairs: Vec<(SegmentationPolicy, std::sync::Arc<CompiledDoc>)> = files
        .objects
        .into_iter()
        .filter_map(|o| match o {
            Object::SegmentationPolicy(p) => Some(p),
            _ => None,
        })
        .zip(compiled_files)
        .collect();
    for o in objects {
        if let Object::SegmentationPolicy(p) = o {
            let doc = CompiledDoc::compile(p).map_err(|e| anyhow::anyhow!("inventory: {e}"))?;
            pairs.push((p.clone(), std::sync::Arc::new(doc)));
        }
    }
    pairs.sort_by(|a, b| a.0.metadata.name.cmp(&b.0.metadata.name));
    let (raw, compiled) = pairs.into_iter().unzip();
    Ok(DeclaredPolicies { raw, compiled })
}

/// The metadata API addresses: the declared ones, else the contract's default.
pub fn metadata_addresses(policies: &[SegmentationPolicy]) -> Vec<IpAddr> {
    let declared: Vec<IpAddr> = policies
        .iter()
        .filter_map(|p| p.spec.metadata_api.as_ref())
        .filter_map(|m| m.addresses.as_ref())
        .flatten()
        .filter_map(|a| a.parse().ok())
        .collect();
    if declared.is_empty() {
        ["169.254.169.254", "fd00:ec2::254"]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    } else {
        declared
    }
}

/// Builds the report. Flows are put in a canonical order first so the
/// output does not depend on the order of `--flows` files.
pub fn build(mut input: AuditInput<'_>) -> AuditReport {
    input.flows.sort_by(|a, b| {
        let (x, y) = (&a.report, &b.report);
        (x.start, x.end, x.src.ip, x.src.port, x.dst.ip, x.dst.port)
            .cmp(&(y.start, y.end, y.src.ip, y.src.port, y.dst.ip, y.dst.port))
            .then_with(|| x.protocol.cmp(&y.protocol))
            .then_with(|| x.observer.cmp(&y.observer))
            .then_with(|| a.source.cmp(&b.source))
    });
    // Controls count connections, not reports: the active-timeout reports
    // of a long connection are one piece of evidence.
    let reports_read = input.flows.len() as u64;
    input.flows = crate::report::by_connection(std::mem::take(&mut input.flows), |f| &mut f.report);
    let metadata = metadata_addresses(input.policies);
    let facts: Vec<Fact<'_>> = input
        .flows
        .iter()
        .map(|sf| Fact {
            flow: &sf.report,
            source: &sf.source,
            reach: Reach::of(&sf.report),
            seg: input.segmentation.judge(&sf.report),
            netpol: input.netpol.judge(&sf.report),
            dst: dst_class(&sf.report, &metadata),
        })
        .collect();
    let cx = Context {
        facts: &facts,
        objects: input.objects,
        policies: input.policies,
        evidence_cap: input.evidence_cap,
    };
    let controls = controls::all(&cx);
    let mut summary = Summary::default();
    for c in &controls {
        match c.verdict {
            Verdict::Pass => summary.pass += 1,
            Verdict::Fail => summary.fail += 1,
            Verdict::NotVerified => summary.not_verified += 1,
        }
    }
    let mut policies: Vec<String> = input
        .policies
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    policies.sort();
    let note = match (input.segmentation_source, input.netpol_source) {
        (JudgementSource::Policy, np) => format!(
            "Every flow was re-judged against the declared SegmentationPolicy ({}); NetworkPolicy verdicts come from {}.",
            policies.join(", "),
            netpol_note(np)
        ),
        (_, np) => format!(
            "Segmentation verdicts are the ones the daemon wrote into the flow log with the policy it ran with (pass --policy to re-judge against a declared policy); NetworkPolicy verdicts come from {}.",
            netpol_note(np)
        ),
    };
    AuditReport {
        schema: SCHEMA.to_owned(),
        generated_at: input.generated_at,
        tool: Tool {
            name: "segwatch".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        inputs: input.inputs,
        judgement: Judgement {
            segmentation: input.segmentation_source,
            networkpolicy: input.netpol_source,
            policies,
            note,
        },
        window: Window {
            flow_reports: reports_read,
            ..window(&facts)
        },
        coverage: coverage(&facts, input.objects),
        summary,
        controls,
        matrix: matrix(&facts),
        warnings: input.warnings,
        staged: Vec::new(),
    }
}

fn netpol_note(src: JudgementSource) -> &'static str {
    match src {
        JudgementSource::Engine => {
            "segwatch's NetworkPolicy engine over the inventory's NetworkPolicies"
        }
        _ => "the flow log's netpol field",
    }
}

fn window(facts: &[Fact<'_>]) -> Window {
    let mut w = Window {
        flow_reports: facts.len() as u64,
        ..Window::default()
    };
    let mut per: BTreeMap<String, ObserverWindow> = BTreeMap::new();
    for f in facts {
        let (s, e) = (f.flow.start, f.flow.end.max(f.flow.start));
        w.first = Some(w.first.map_or(s, |x| x.min(s)));
        w.last = Some(w.last.map_or(e, |x| x.max(e)));
        let node = f
            .flow
            .observer
            .clone()
            .unwrap_or_else(|| "(unknown)".into());
        let o = per.entry(node.clone()).or_insert(ObserverWindow {
            node,
            first: s,
            last: e,
            flow_reports: 0,
        });
        o.first = o.first.min(s);
        o.last = o.last.max(e);
        o.flow_reports += 1;
    }
    w.observers = per.into_values().collect();
    w
}

fn coverage(facts: &[Fact<'_>], objects: &[Object]) -> Coverage {
    let nodes_observed: BTreeSet<String> = facts
        .iter()
        .filter_map(|f| f.flow.observer.clone())
        .collect();
    let mut ns_observed = BTreeSet::new();
    let mut unattributed = 0u64;
    for f in facts {
        for ep in [&f.flow.src, &f.flow.dst] {
            if let Some(ns) = &ep.namespace {
                ns_observed.insert(ns.to_string());
            }
        }
        if f.flow.src.kind.is_none() || f.flow.dst.kind.is_none() {
            unattributed += 1;
        }
    }
    let mut inv_ns = BTreeSet::new();
    let mut inv_nodes = BTreeSet::new();
    for o in objects {
        match o {
            Object::Namespace(_) => {
                inv_ns.insert(o.name().to_owned());
            }
            Object::Node(_) => {
                inv_nodes.insert(o.name().to_owned());
            }
            _ => {
                if let Some(ns) = o.namespace() {
                    inv_ns.insert(ns.to_owned());
                }
            }
        }
    }
    Coverage {
        nodes_not_observed: inv_nodes.difference(&nodes_observed).cloned().collect(),
        nodes_observed: nodes_observed.into_iter().collect(),
        namespaces_not_observed: inv_ns.difference(&ns_observed).cloned().collect(),
        namespaces_observed: ns_observed.into_iter().collect(),
        unattributed_flow_reports: unattributed,
    }
}

pub const NODES: &str = "(nodes)";
pub const METADATA: &str = "(metadata API)";
pub const EXTERNAL: &str = "(external)";
pub const UNKNOWN: &str = "(unknown)";

fn src_label(f: &FlowReport) -> String {
    match (f.src.kind, &f.src.namespace) {
        (Some(EndpointKind::Pod | EndpointKind::Service), Some(ns)) => ns.to_string(),
        (Some(EndpointKind::Node), _) => NODES.into(),
        (Some(EndpointKind::External), _) => EXTERNAL.into(),
        (Some(EndpointKind::Metadata), _) => METADATA.into(),
        _ => UNKNOWN.into(),
    }
}

fn dst_label(fact: &Fact<'_>) -> String {
    match fact.dst {
        DstClass::Namespace => fact
            .flow
            .dst
            .namespace
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
        DstClass::Node => NODES.into(),
        DstClass::Metadata => METADATA.into(),
        DstClass::External => EXTERNAL.into(),
        DstClass::Unknown => UNKNOWN.into(),
    }
}

/// Orders matrix labels: namespaces by name, then the pseudo-ends.
fn label_order(l: &str) -> (u8, &str) {
    match l {
        NODES => (1, l),
        METADATA => (2, l),
        EXTERNAL => (3, l),
        UNKNOWN => (4, l),
        _ => (0, l),
    }
}

const MAX_EDGE_PORTS: usize = 12;

fn matrix(facts: &[Fact<'_>]) -> Matrix {
    #[derive(Default)]
    struct Acc {
        reports: u64,
        violating: u64,
        blocked: u64,
        allowed: u64,
        bytes: u64,
        ports: BTreeSet<(String, u16)>,
        portless: BTreeSet<String>,
    }
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for f in facts {
        let a = acc.entry((src_label(f.flow), dst_label(f))).or_default();
        a.reports += 1;
        a.bytes += f.flow.bytes.sent + f.flow.bytes.received;
        match f.flow.dst.port {
            Some(p) => a.ports.insert((f.flow.protocol.clone(), p)),
            None => a.portless.insert(f.flow.protocol.clone()),
        };
        let seg_forbidden = f.seg.as_ref().is_some_and(|s| !s.violations.is_empty());
        let np = f.netpol.as_ref();
        let bypass = np.is_some_and(|n| n.bypass.is_some());
        let np_denied = np.is_some_and(|n| !n.allowed);
        if bypass || (seg_forbidden && f.reach == Reach::Reached) {
            a.violating += 1;
        } else if seg_forbidden || np_denied {
            a.blocked += 1;
        } else if f.seg.is_some() {
            a.allowed += 1;
        }
    }
    let mut sources = BTreeSet::new();
    let mut dests = BTreeSet::new();
    let mut edges = Vec::new();
    for ((src, dst), a) in acc {
        let class = if a.violating > 0 {
            EdgeClass::Violating
        } else if a.blocked > 0 {
            EdgeClass::Blocked
        } else if a.allowed > 0 {
            EdgeClass::Allowed
        } else {
            EdgeClass::Unjudged
        };
        let mut ports: Vec<String> = a
            .ports
            .iter()
            .map(|(proto, p)| format!("{p}/{proto}"))
            .chain(a.portless.iter().cloned())
            .collect();
        ports.sort_by(|x, y| port_key(x).cmp(&port_key(y)));
        if ports.len() > MAX_EDGE_PORTS {
            let more = ports.len() - MAX_EDGE_PORTS;
            ports.truncate(MAX_EDGE_PORTS);
            ports.push(format!("+{more} more"));
        }
        sources.insert(src.clone());
        dests.insert(dst.clone());
        edges.push(Edge {
            src,
            dst,
            class,
            flow_reports: a.reports,
            violating: a.violating,
            blocked: a.blocked,
            bytes: a.bytes,
            ports,
        });
    }
    let mut sources: Vec<String> = sources.into_iter().collect();
    let mut destinations: Vec<String> = dests.into_iter().collect();
    sources.sort_by(|a, b| label_order(a).cmp(&label_order(b)));
    destinations.sort_by(|a, b| label_order(a).cmp(&label_order(b)));
    edges.sort_by(|a, b| {
        (label_order(&a.src), label_order(&a.dst)).cmp(&(label_order(&b.src), label_order(&b.dst)))
    });
    Matrix {
        sources,
        destinations,
        edges,
    }
}

/// Numeric port order (`53/UDP` before `443/TCP`).
fn port_key(s: &str) -> (u32, &str) {
    let num = s
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(u32::MAX);
    (num, s)
}

#[cfg(test)]
mod tests;
