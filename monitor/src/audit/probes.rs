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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn control(id: &str, verdict: &str, counts: serde_json::Value) -> serde_json::Value {
        json!({"id": id, "title": id, "requirement": "r", "verdict": verdict, "reason": "Flows said so.", "counts": counts})
    }

    fn audit_report(controls: Vec<serde_json::Value>) -> AuditReport {
        serde_json::from_value(json!({
            "schema": "s", "generated_at": "2026-12-01T00:00:00Z",
            "tool": {"name": "segwatch", "version": "0"},
            "inputs": {"flows": [], "inventory": [], "policy": []},
            "judgement": {"segmentation": "policy", "networkpolicy": "engine", "policies": [], "note": ""},
            "window": {"flow_reports": 0, "observers": []},
            "coverage": {"nodes_observed": [], "nodes_not_observed": [], "namespaces_observed": [],
                         "namespaces_not_observed": [], "unattributed_flow_reports": 0},
            "summary": {"pass": 0, "fail": 0, "not_verified": 3},
            "controls": controls,
            "matrix": {"sources": [], "destinations": [], "edges": []},
            "warnings": []
        }))
        .expect("audit report builds")
    }

    fn result(
        target: &str,
        kind: &str,
        status: &str,
        expected: &str,
        netpol: serde_json::Value,
    ) -> serde_json::Value {
        let (addr, port) = target
            .rsplit_once('/')
            .map(|(a, _)| a)
            .and_then(|a| a.rsplit_once(':'))
            .expect("target");
        json!({"target": target, "address": addr, "port": port.parse::<u16>().expect("port"), "protocol": "tcp",
               "kind": kind, "name": "x", "status": status, "expected": expected,
               "outcome": "as_expected", "why": "because", "netpol": netpol})
    }

    fn probe(results: Vec<serde_json::Value>, complete: bool) -> SourcedProbe {
        let report: ProbeReport = serde_json::from_value(json!({
            "started": "2026-12-01T00:00:00Z", "finished": "2026-12-01T00:00:05Z",
            "source": {"pod": "p", "namespace": "team-a", "node": "n1", "ips": ["10.1.0.5"]},
            "settings": {"timeout_ms": 500, "rate": 10, "deadline_ms": 10000},
            "cluster_view": "inventory", "complete": complete,
            "errors": if complete { json!([]) } else { json!(["--targets t.txt:2: bad"]) },
            "summary": {"planned": 0, "tried": 0, "not_tried": 0, "reachable": 0, "refused": 0,
                        "timeout": 0, "violations": 0, "not_reached": 0, "unjudged": 0},
            "results": results
        }))
        .expect("probe report builds");
        SourcedProbe {
            report,
            file: "p.json".into(),
        }
    }

    fn verdict(r: &AuditReport, id: &str) -> Verdict {
        r.controls
            .iter()
            .find(|c| c.id == id)
            .expect("control")
            .verdict
    }

    #[test]
    fn probes_turn_not_verified_into_evidence_and_reachable_forbidden_into_fail() {
        let denied = json!({"allowed": false, "isolated": true, "policies": ["team-b/only-b"]});
        let open = json!({"allowed": true, "isolated": false, "policies": []});
        let probes = [probe(
            vec![
                result(
                    "10.0.0.1:10250/tcp",
                    "node",
                    "reachable",
                    "blocked",
                    open.clone(),
                ),
                result(
                    "10.0.0.1:22/tcp",
                    "node",
                    "timeout",
                    "blocked",
                    open.clone(),
                ),
                result(
                    "169.254.169.254:80/tcp",
                    "metadata",
                    "timeout",
                    "blocked",
                    open.clone(),
                ),
                result(
                    "169.254.170.23:80/tcp",
                    "metadata",
                    "reachable",
                    "reachable",
                    open,
                ),
                result("10.1.1.7:8080/tcp", "pod", "refused", "blocked", denied),
            ],
            false,
        )];
        let mut r = audit_report(vec![
            control("Host ports", "NOT VERIFIED", json!({"unjudged": 0})),
            control("Metadata API", "NOT VERIFIED", json!({"unjudged": 0})),
            control("NetworkPolicy enforcement", "NOT VERIFIED", json!({})),
        ]);
        apply(&mut r, &probes, 10);
        assert_eq!(verdict(&r, "Host ports"), Verdict::Fail);
        assert_eq!(verdict(&r, "Metadata API"), Verdict::Pass);
        assert_eq!(verdict(&r, "NetworkPolicy enforcement"), Verdict::Pass);
        assert_eq!(
            (r.summary.pass, r.summary.fail, r.summary.not_verified),
            (2, 1, 0)
        );
        let counts = probe_counts(&r);
        assert_eq!(counts["Host ports"]["probe_violating"], 1);
        assert_eq!(counts["Host ports"]["probe_blocked"], 1);
        assert_eq!(counts["Metadata API"]["probe_allowed"], 1);
        assert_eq!(counts["NetworkPolicy enforcement"]["probe_blocked"], 1);
        let host = r
            .controls
            .iter()
            .find(|c| c.id == "Host ports")
            .expect("control");
        assert!(host.reason.starts_with("Probes: 1 target was expected blocked and reachable (e.g. 10.0.0.1:10250/tcp from p.json)."), "{}", host.reason);
        let ev = &host.evidence[0];
        assert_eq!((ev.name.as_str(), ev.total), ("probe_violating", 1));
        assert_eq!(ev.flows[0].source, "p.json: results[0]");
        assert_eq!(ev.flows[0].state, "reachable");
        assert_eq!(
            r.warnings.len(),
            1,
            "an incomplete probe report is a warning: {:?}",
            r.warnings
        );
        assert!(
            r.warnings[0].contains("p.json is incomplete"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn no_pass_without_judged_evidence_or_over_unjudged_flows() {
        let open = json!({"allowed": true, "isolated": false, "policies": []});
        // Reachable with no expectation: nothing can be concluded.
        let unknown = [probe(
            vec![result(
                "10.0.0.1:10250/tcp",
                "node",
                "reachable",
                "unknown",
                open.clone(),
            )],
            true,
        )];
        let mut r = audit_report(vec![control(
            "Host ports",
            "NOT VERIFIED",
            json!({"unjudged": 0}),
        )]);
        apply(&mut r, &unknown, 10);
        assert_eq!(verdict(&r, "Host ports"), Verdict::NotVerified);
        // Blocked probes do not outweigh flows that could not be judged.
        let blocked = [probe(
            vec![result(
                "10.0.0.1:10250/tcp",
                "node",
                "timeout",
                "blocked",
                open,
            )],
            true,
        )];
        let mut r = audit_report(vec![control(
            "Host ports",
            "NOT VERIFIED",
            json!({"unjudged": 2}),
        )]);
        apply(&mut r, &blocked, 10);
        assert_eq!(verdict(&r, "Host ports"), Verdict::NotVerified);
        // A FAIL from flows stays FAIL.
        let mut r = audit_report(vec![control("Host ports", "FAIL", json!({"unjudged": 0}))]);
        apply(&mut r, &blocked, 10);
        assert_eq!(verdict(&r, "Host ports"), Verdict::Fail);
        // No probe in scope: the flows' verdict stands.
        let mut r = audit_report(vec![control(
            "Metadata API",
            "NOT VERIFIED",
            json!({"unjudged": 0}),
        )]);
        apply(&mut r, &blocked, 10);
        assert_eq!(verdict(&r, "Metadata API"), Verdict::NotVerified);
    }

    #[test]
    fn a_file_that_is_no_probe_report_is_named() {
        let err = parse_probe_report("x.json", r#"{"started": 3}"#).expect_err("not a report");
        assert!(
            err.to_string()
                .starts_with("x.json: not a segwatch probe report: at `started`"),
            "{err}"
        );
    }
}
