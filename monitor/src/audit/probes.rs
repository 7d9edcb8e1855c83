//! `segwatch audit --probes`: active evidence from `segwatch probe` reports
//! for the three controls passive flows often leave NOT VERIFIED
//! (CONTROLS.md): "Host ports", "Metadata API" and "NetworkPolicy
//! enforcement".
//!
//! Per control, the probe results in scope are sorted into
//! - violating: expected blocked (the whitelist or a NetworkPolicy forbids
//!   it) and reachable: FAIL, whatever the flows say;
//! - blocked: expected blocked and refused or unanswered: enforcement held;
//! - allowed: expected reachable;
//! - undetermined: reachable with no expectation (the probe's pod was not in
//!   its cluster view): nothing can be concluded, NOT VERIFIED.
//!
//! PASS needs evidence (CONTROLS.md "Notes"): at least one judged probe in
//! scope, no violating or undetermined one, and no FAIL or unjudged flows.
//! The expectations are the probe's own (it judged with the policies of
//! its cluster view, named in each result).

use std::collections::BTreeMap;

use super::model::{AuditReport, Control, EvidenceGroup, FlowEvidence, Party, Summary, Verdict};
use crate::probe::model::{Expected, ProbeReport, ProbeResult, Status};
use crate::probe::targets::TargetKind;

/// A probe report and the file it was read from.
pub struct SourcedProbe {
    pub report: ProbeReport,
    pub file: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    HostPorts,
    Metadata,
    Netpol,
}

/// A result with the report it is in and its index there.
type Item<'a> = (&'a SourcedProbe, usize, &'a ProbeResult);

#[derive(Default)]
struct Buckets<'a> {
    violating: Vec<Item<'a>>,
    blocked: Vec<Item<'a>>,
    allowed: Vec<Item<'a>>,
    undetermined: Vec<Item<'a>>,
}

impl Buckets<'_> {
    fn judged(&self) -> usize {
        self.violating.len() + self.blocked.len() + self.allowed.len()
    }
}

fn sort<'a>(probes: &'a [SourcedProbe], scope: Scope) -> Buckets<'a> {
    let mut b = Buckets::default();
    for p in probes {
        for (i, r) in p.report.results.iter().enumerate() {
            let reached = r.status == Status::Reachable;
            let item = (p, i, r);
            match scope {
                Scope::HostPorts | Scope::Metadata => {
                    let kind = if scope == Scope::HostPorts {
                        TargetKind::Node
                    } else {
                        TargetKind::Metadata
                    };
                    if r.kind != kind {
                        continue;
                    }
                    match (r.expected, reached) {
                        (Expected::Blocked, true) => b.violating.push(item),
                        (Expected::Blocked, false) => b.blocked.push(item),
                        (Expected::Reachable, _) => b.allowed.push(item),
                        (Expected::Unknown, true) => b.undetermined.push(item),
                        // Not reached and no expectation: it is blocked,
                        // which breaks no isolation rule; no evidence either.
                        (Expected::Unknown, false) => {}
                    }
                }
                Scope::Netpol => match &r.netpol {
                    Some(n) if !n.allowed && reached => b.violating.push(item),
                    Some(n) if !n.allowed => b.blocked.push(item),
                    Some(n) if n.isolated => b.allowed.push(item),
                    _ => {}
                },
            }
        }
    }
    b
}

fn evidence(p: &SourcedProbe, i: usize, r: &ProbeResult, netpol: bool) -> FlowEvidence {
    let s = &p.report.source;
    let src_name = format!(
        "{}/{}",
        s.namespace.as_deref().unwrap_or("?"),
        s.pod.as_deref().unwrap_or("?")
    );
    let kind = match r.kind {
        TargetKind::Node => "node",
        TargetKind::Metadata => "metadata",
        TargetKind::Pod => "pod",
        TargetKind::Service => "service",
        TargetKind::Listed => "unknown",
    };
    let src_ip = s
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == r.address.is_ipv4())
        .or(s.ips.first())
        .map(ToString::to_string)
        .unwrap_or_default();
    let (rule, reason) = if netpol {
        let n = r.netpol.as_ref();
        (
            n.map(|n| n.policies.join(", ")).filter(|s| !s.is_empty()),
            Some(match n {
                Some(n) if !n.allowed => {
                    format!("probe: denied by NetworkPolicy; {}", r.status.as_str())
                }
                _ => format!("probe: allowed by NetworkPolicy; {}", r.status.as_str()),
            }),
        )
    } else {
        (
            r.segmentation.as_ref().and_then(|s| s.rule.clone()),
            Some(format!(
                "probe: {}",
                r.finding.clone().unwrap_or_else(|| format!(
                    "expected {}, was {}: {}",
                    r.expected.as_str(),
                    r.status.as_str(),
                    r.why
                ))
            )),
        )
    };
    FlowEvidence {
        start: p.report.started,
        end: p.report.finished,
        observer: s.node.clone(),
        src: Party {
            kind: "pod".into(),
            name: src_name,
            ip: src_ip,
            port: None,
            namespace: s.namespace.clone(),
            workload: None,
            service_account: s.service_account.clone(),
            node: s.node.clone(),
        },
        dst: Party {
            kind: kind.into(),
            name: r.name.clone(),
            ip: r.address.to_string(),
            port: Some(r.port),
            namespace: None,
            workload: None,
            service_account: None,
            node: None,
        },
        protocol: r.protocol.upper().to_owned(),
        port: Some(r.port),
        state: r.status.as_str().to_owned(),
        bytes_sent: 0,
        bytes_received: 0,
        rule,
        reason,
        source: format!("{}: results[{i}]", p.file),
    }
}

fn group(
    name: &str,
    title: &str,
    items: &[Item<'_>],
    cap: usize,
    netpol: bool,
) -> Option<EvidenceGroup> {
    (!items.is_empty()).then(|| EvidenceGroup {
        name: name.to_owned(),
        title: title.to_owned(),
        total: items.len() as u64,
        flows: items
            .iter()
            .take(cap)
            .map(|(p, i, r)| evidence(p, *i, r, netpol))
            .collect(),
    })
}

fn n(count: usize, one: &str, many: &str) -> String {
    if count == 1 {
        format!("1 {one}")
    } else {
        format!("{count} {many}")
    }
}

fn apply_one(c: &mut Control, probes: &[SourcedProbe], scope: Scope, cap: usize) {
    let b = sort(probes, scope);
    let netpol = scope == Scope::Netpol;
    let (what, bad) = match scope {
        Scope::HostPorts => ("node ports", "expected blocked and reachable"),
        Scope::Metadata => ("metadata endpoints", "expected blocked and reachable"),
        Scope::Netpol => (
            "targets NetworkPolicies deny or select",
            "denied by NetworkPolicy and reachable",
        ),
    };
    let unjudged_flows = c.counts.get("unjudged").copied().unwrap_or(0) > 0;
    let before = c.verdict;
    let (verdict, sentence) = if !b.violating.is_empty() {
        (
            Verdict::Fail,
            format!(
                "Probes: {} {bad} (e.g. {} from {}).",
                n(b.violating.len(), "target was", "targets were"),
                b.violating[0].2.target,
                b.violating[0].0.file
            ),
        )
    } else if !b.undetermined.is_empty() {
        (
            if before == Verdict::Fail { Verdict::Fail } else { Verdict::NotVerified },
            format!(
                "Probes: {} reachable without an expectation (the probe's pod was not in its cluster view).",
                n(b.undetermined.len(), "target was", "targets were")
            ),
        )
    } else if b.judged() == 0 {
        (
            before,
            format!("Probes: none of the probe results concern {what}."),
        )
    } else if before == Verdict::Fail || (before == Verdict::NotVerified && unjudged_flows) {
        (
            before,
            format!(
                "Probes: {} blocked as expected, {} reachable as allowed.",
                n(b.blocked.len(), "forbidden target", "forbidden targets"),
                b.allowed.len()
            ),
        )
    } else {
        (
            Verdict::Pass,
            format!(
                "Probes: {} blocked as expected (refused or unanswered), {} reachable as allowed; none reachable that should not be.",
                n(b.blocked.len(), "forbidden target", "forbidden targets"),
                b.allowed.len()
            ),
        )
    };
    c.verdict = verdict;
    if before == Verdict::NotVerified && verdict != Verdict::NotVerified {
        // The flows' NOT VERIFIED reason is superseded; keep it as context.
        c.reason = format!("{sentence} Flows: {}", c.reason);
    } else {
        c.reason = format!("{} {sentence}", c.reason);
    }
    for (k, v) in [
        ("probe_violating", b.violating.len()),
        ("probe_blocked", b.blocked.len()),
        ("probe_allowed", b.allowed.len()),
        ("probe_undetermined", b.undetermined.len()),
    ] {
        c.counts.insert(k.to_owned(), v as u64);
    }
    let titles: [(&str, &str, &[Item<'_>]); 4] = [
        (
            "probe_violating",
            "Probe: expected blocked, was reachable",
            &b.violating,
        ),
        (
            "probe_blocked",
            "Probe: expected blocked, was blocked (enforcement held)",
            &b.blocked,
        ),
        ("probe_allowed", "Probe: expected reachable", &b.allowed),
        (
            "probe_undetermined",
            "Probe: reachable, no expectation",
            &b.undetermined,
        ),
    ];
    for (name, title, items) in titles {
        if let Some(g) = group(name, title, items, cap, netpol) {
            c.evidence.push(g);
        }
    }
}

/// Applies the probe reports to the controls they give evidence for, adds a
/// warning per incomplete report, and recounts the summary.
pub fn apply(report: &mut AuditReport, probes: &[SourcedProbe], cap: usize) {
    for c in &mut report.controls {
        let scope = match c.id.as_str() {
            "Host ports" => Scope::HostPorts,
            "Metadata API" => Scope::Metadata,
            "NetworkPolicy enforcement" => Scope::Netpol,
            _ => continue,
        };
        apply_one(c, probes, scope, cap);
    }
    for p in probes {
        if !p.report.complete {
            report.warnings.push(format!(
                "probe report {} is incomplete ({} not tried, {} errors){}",
                p.file,
                p.report.not_tried.len(),
                p.report.errors.len(),
                p.report
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    let mut s = Summary::default();
    for c in &report.controls {
        match c.verdict {
            Verdict::Pass => s.pass += 1,
            Verdict::Fail => s.fail += 1,
            Verdict::NotVerified => s.not_verified += 1,
        }
    }
    report.summary = s;
}

/// Reads one probe report; errors name the file and the field.
pub fn parse_probe_report(file: &str, text: &str) -> anyhow::Result<ProbeReport> {
    let mut de = serde_json::Deserializer::from_str(text);
    let r: ProbeReport = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path.is_empty() || path == "." {
            anyhow::anyhow!("{file}: not a segwatch probe report: {}", e.inner())
        } else {
            anyhow::anyhow!(
                "{file}: not a segwatch probe report: at `{path}`: {}",
                e.inner()
            )
        }
    })?;
    de.end()
        .map_err(|e| anyhow::anyhow!("{file}: not a segwatch probe report: {e}"))?;
    Ok(r)
}

/// Counts per control id, for tests and logs.
pub fn probe_counts(report: &AuditReport) -> BTreeMap<String, BTreeMap<String, u64>> {
    report
        .controls
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                c.counts
                    .iter()
                    .filter(|(k, _)| k.starts_with("probe_"))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
            )
        })
        .collect()
}
