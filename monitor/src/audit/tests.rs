//! Fixture audits with known violations: verdicts and evidence counts must
//! come out exactly; a clean fixture passes; silence never passes.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::judge::{FlowLogNetpol, FlowLogVerdicts};
use super::model::*;
use super::render::{html, markdown};
use super::*;
use crate::inventory;
use crate::report::read_flow_log;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audit")
        .join(name)
}

fn pinned() -> DateTime<Utc> {
    "2026-01-02T00:00:00Z".parse().expect("valid time")
}

/// Audits fixture files with the flow log's own verdicts.
fn audit_files(flows: &[&str], inventory: &str, policy: Option<&str>) -> AuditReport {
    let mut sourced = Vec::new();
    for f in flows {
        let path = fixture(f);
        for (i, report) in read_flow_log(&path)
            .expect("fixture flow log parses")
            .into_iter()
            .enumerate()
        {
            sourced.push(SourcedFlow {
                report,
                source: format!("{f}:{}", i + 1),
            });
        }
    }
    audit_flows(sourced, inventory, policy)
}

fn audit_flows(flows: Vec<SourcedFlow>, inventory: &str, policy: Option<&str>) -> AuditReport {
    audit_with(flows, inventory, policy, Mode::FlowLog)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The verdicts the daemon wrote.
    FlowLog,
    /// Re-judged: SegmentationPolicy evaluator and NetworkPolicy engine.
    Rejudge,
}

fn audit_with(
    flows: Vec<SourcedFlow>,
    inventory: &str,
    policy: Option<&str>,
    mode: Mode,
) -> AuditReport {
    let inv = inventory::load_paths(&[fixture(inventory)]).expect("fixture inventory loads");
    let paths: Vec<PathBuf> = policy.into_iter().map(fixture).collect();
    let declared = load_declared_policies(&paths, &inv.objects).expect("fixture policy loads");
    let policy_judge = rejudge::PolicyJudge::new(
        crate::segpolicy::CompiledPolicy::union(&declared.compiled),
        &inv.objects,
    );
    let (engine_judge, warnings) = rejudge::EngineJudge::new(&inv.objects);
    assert!(
        warnings.is_empty(),
        "fixture NetworkPolicies are valid: {warnings:?}"
    );
    let (segmentation, segmentation_source, netpol, netpol_source): (
        &dyn judge::SegmentationJudge,
        _,
        &dyn judge::NetpolJudge,
        _,
    ) = match mode {
        Mode::FlowLog => (
            &FlowLogVerdicts,
            JudgementSource::FlowLog,
            &FlowLogNetpol,
            JudgementSource::FlowLog,
        ),
        Mode::Rejudge => (
            &policy_judge,
            JudgementSource::Policy,
            &engine_judge,
            JudgementSource::Engine,
        ),
    };
    build(AuditInput {
        flows,
        objects: &inv.objects,
        policies: &declared.raw,
        segmentation,
        segmentation_source,
        netpol,
        netpol_source,
        inputs: Inputs::default(),
        generated_at: pinned(),
        evidence_cap: DEFAULT_EVIDENCE_CAP,
        warnings: Vec::new(),
    })
}

fn read_fixture_flows(name: &str) -> Vec<SourcedFlow> {
    read_flow_log(&fixture(name))
        .expect("fixture flow log parses")
        .into_iter()
        .enumerate()
        .map(|(i, report)| SourcedFlow {
            report,
            source: format!("{name}:{}", i + 1),
        })
        .collect()
}

fn control<'r>(r: &'r AuditReport, id: &str) -> &'r Control {
    r.controls
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("the report must carry control `{id}`"))
}

fn count(c: &Control, key: &str) -> u64 {
    *c.counts
        .get(key)
        .unwrap_or_else(|| panic!("control {} must count `{key}`: {:?}", c.id, c.counts))
}

fn group_total(c: &Control, name: &str) -> u64 {
    c.evidence
        .iter()
        .find(|g| g.name == name)
        .map_or(0, |g| g.total)
}

const IDS: [&str; 8] = [
    "BSI APP.4.4.A1",
    "BSI APP.4.4.A7",
    "Host ports",
    "Metadata API",
    "BSI APP.4.4.A18",
    "CIS 5.3.2",
    "NetworkPolicy enforcement",
    "BSI APP.4.4.A9",
];

#[test]
fn known_violations_give_exact_verdicts_and_counts_from_the_flow_log() {
    let r = audit_files(
        &["violations-flows.jsonl"],
        "violations-inventory.json",
        Some("policy.yaml"),
    );
    check_known_violations(&r);
}

#[test]
fn known_violations_give_the_same_verdicts_when_rejudged() {
    let r = audit_with(
        read_fixture_flows("violations-flows.jsonl"),
        "violations-inventory.json",
        Some("policy.yaml"),
        Mode::Rejudge,
    );
    assert_eq!(r.judgement.segmentation, JudgementSource::Policy);
    assert_eq!(r.judgement.networkpolicy, JudgementSource::Engine);
    check_known_violations(&r);
    // The evaluator names the rule that allowed a flow.
    let a7 = control(&r, "BSI APP.4.4.A7");
    let allowed = a7
        .evidence
        .iter()
        .find(|g| g.name == "allowed")
        .expect("allowed flows");
    let rules: Vec<_> = allowed
        .flows
        .iter()
        .map(|f| f.rule.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(rules, ["web-to-api", "dns", "dns"]);
}

fn check_known_violations(r: &AuditReport) {
    let ids: Vec<&str> = r.controls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, IDS, "every control, ids exactly as in CONTROLS.md");
    let verdicts: Vec<(&str, Verdict)> = r
        .controls
        .iter()
        .map(|c| (c.id.as_str(), c.verdict))
        .collect();
    assert_eq!(
        verdicts,
        vec![
            ("BSI APP.4.4.A1", Verdict::Pass),
            ("BSI APP.4.4.A7", Verdict::Fail),
            ("Host ports", Verdict::Fail),
            ("Metadata API", Verdict::Pass),
            ("BSI APP.4.4.A18", Verdict::Fail),
            ("CIS 5.3.2", Verdict::Fail),
            ("NetworkPolicy enforcement", Verdict::Fail),
            ("BSI APP.4.4.A9", Verdict::Fail),
        ]
    );
    assert_eq!(
        (r.summary.pass, r.summary.fail, r.summary.not_verified),
        (2, 6, 0)
    );

    // A7: web-0 -> payments/db-0 got through; web-1 -> payments/api-0 was
    // only attempted (blocked); 3 whitelisted (api, two DNS).
    let a7 = control(&r, "BSI APP.4.4.A7");
    assert_eq!(
        (
            count(a7, "in_scope"),
            count(a7, "violating"),
            count(a7, "blocked"),
            count(a7, "allowed")
        ),
        (5, 1, 1, 3)
    );
    assert_eq!(group_total(a7, "violating"), 1);
    let v = &a7.evidence[0].flows[0];
    assert_eq!(
        (
            v.src.name.as_str(),
            v.dst.name.as_str(),
            v.port,
            v.state.as_str()
        ),
        ("shop-web/web-0", "payments/db-0", Some(5432), "established")
    );
    assert_eq!((v.bytes_sent, v.bytes_received), (1200, 5400));
    assert_eq!(v.observer.as_deref(), Some("n2"));
    assert_eq!(v.rule.as_deref(), Some("shop"));

    // Host ports: sshd on n1 established = FAIL; kubelet attempt blocked;
    // kube-system probe allowed.
    let hp = control(&r, "Host ports");
    assert_eq!(
        (
            count(hp, "in_scope"),
            count(hp, "violating"),
            count(hp, "blocked"),
            count(hp, "allowed")
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(hp.evidence[0].flows[0].port, Some(22));

    // Metadata API: one attempt, blocked: evidence, and a PASS.
    let md = control(&r, "Metadata API");
    assert_eq!(
        (
            count(md, "in_scope"),
            count(md, "violating"),
            count(md, "blocked")
        ),
        (1, 0, 1)
    );

    // A18: payments declares micro-segmentation; db -> api broke it.
    let a18 = control(&r, "BSI APP.4.4.A18");
    assert_eq!(
        (
            count(a18, "violating"),
            count(a18, "allowed"),
            count(a18, "declared_namespaces")
        ),
        (1, 1, 1)
    );
    assert_eq!(a18.scopes.len(), 1);
    assert_eq!(
        (a18.scopes[0].name.as_str(), a18.scopes[0].verdict),
        ("payments", Verdict::Fail)
    );

    // CIS 5.3.2: only shop-api denies both ways; payments lacks egress;
    // four namespaces have no policy at all.
    let cis = control(&r, "CIS 5.3.2");
    assert_eq!(
        (
            count(cis, "namespaces"),
            count(cis, "namespaces_pass"),
            count(cis, "namespaces_without_policies"),
            count(cis, "namespaces_without_default_deny_egress"),
            count(cis, "namespaces_without_default_deny_ingress"),
        ),
        (6, 1, 4, 1, 0)
    );
    assert!(
        cis.reason
            .contains("idle, kube-system, monitoring, shop-web"),
        "{}",
        cis.reason
    );
    let failing: Vec<&str> = cis
        .scopes
        .iter()
        .filter(|s| s.verdict == Verdict::Fail)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        failing,
        ["idle", "kube-system", "monitoring", "payments", "shop-web"]
    );

    // Enforcement: three established flows the daemon flagged, plus the
    // sshd connection and the external one its netpol field denies.
    let np = control(&r, "NetworkPolicy enforcement");
    assert_eq!(
        (
            count(np, "bypass"),
            count(np, "blocked"),
            count(np, "allowed_by_policy"),
            count(np, "not_selected_by_any_policy")
        ),
        (5, 2, 1, 4)
    );

    // A9: prom-0 runs as default.
    let a9 = control(&r, "BSI APP.4.4.A9");
    assert_eq!(
        (
            count(a9, "on_default"),
            count(a9, "with_service_account"),
            count(a9, "inventory_pods_and_workloads_on_default")
        ),
        (1, 12, 1)
    );
    assert_eq!(a9.scopes[0].name, "monitoring/StatefulSet/prom");

    // Window and coverage.
    assert_eq!(r.window.flow_reports, 12);
    assert_eq!(
        r.window
            .observers
            .iter()
            .map(|o| (o.node.as_str(), o.flow_reports))
            .collect::<Vec<_>>(),
        [("n1", 8), ("n2", 4)]
    );
    assert_eq!(r.coverage.nodes_not_observed, ["n3"]);
    assert_eq!(r.coverage.namespaces_not_observed, ["idle"]);

    // Matrix: shop-web -> payments is violating (one got through, one blocked).
    let e = r
        .matrix
        .edges
        .iter()
        .find(|e| e.src == "shop-web" && e.dst == "payments")
        .expect("edge shop-web -> payments");
    assert_eq!(
        (e.class, e.flow_reports, e.violating, e.blocked),
        (EdgeClass::Violating, 2, 1, 1)
    );
    let m = r
        .matrix
        .edges
        .iter()
        .find(|e| e.dst == METADATA)
        .expect("edge to the metadata API");
    assert_eq!(m.class, EdgeClass::Blocked);
}

#[test]
fn a_clean_fixture_passes_every_control() {
    let r = audit_files(
        &["clean-flows.jsonl"],
        "clean-inventory.json",
        Some("policy.yaml"),
    );
    for c in &r.controls {
        assert_eq!(
            c.verdict,
            Verdict::Pass,
            "clean fixture: {} must PASS: {}",
            c.id,
            c.reason
        );
    }
    // Blocked attempts are evidence of enforcement, not failures.
    assert_eq!(count(control(&r, "Host ports"), "blocked"), 1);
    assert_eq!(count(control(&r, "BSI APP.4.4.A7"), "blocked"), 1);
}

#[test]
fn a_declared_policy_overrides_the_daemons_verdicts() {
    // The daemon ran with a lenient policy and logged everything allowed;
    // the auditor's declared policy forbids shop-web -> shop-api.
    let mut flows = read_fixture_flows("clean-flows.jsonl");
    for f in &mut flows {
        f.report.verdict = Some(crate::report::Verdict::Allowed);
        f.report.violations.clear();
    }
    let dir = std::env::temp_dir().join(format!("segwatch-audit-strict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let strict = dir.join("strict.yaml");
    std::fs::write(
        &strict,
        "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: strict}\nspec:\n  crossNamespace: {allow: []}\n",
    )
    .expect("write policy");
    let lenient = audit_with(
        flows.clone(),
        "clean-inventory.json",
        Some("policy.yaml"),
        Mode::FlowLog,
    );
    assert_eq!(control(&lenient, "BSI APP.4.4.A7").verdict, Verdict::Pass);
    let r = audit_with(
        flows,
        "clean-inventory.json",
        Some(strict.to_str().expect("utf-8 path")),
        Mode::Rejudge,
    );
    let a7 = control(&r, "BSI APP.4.4.A7");
    assert_eq!(
        a7.verdict,
        Verdict::Fail,
        "re-judged against the declared policy: {}",
        a7.reason
    );
    assert_eq!((count(a7, "violating"), count(a7, "blocked")), (2, 1));
    assert!(a7.evidence[0].flows[0]
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("strict"));
}

#[test]
fn an_empty_flow_log_verifies_no_traffic_control() {
    let r = audit_flows(Vec::new(), "clean-inventory.json", Some("policy.yaml"));
    for id in [
        "BSI APP.4.4.A7",
        "Host ports",
        "Metadata API",
        "BSI APP.4.4.A18",
        "NetworkPolicy enforcement",
        "BSI APP.4.4.A9",
    ] {
        let c = control(&r, id);
        assert_eq!(
            c.verdict,
            Verdict::NotVerified,
            "{id} with no flows must be NOT VERIFIED, never PASS: {}",
            c.reason
        );
    }
    // Controls that rest on objects alone still judge.
    assert_eq!(control(&r, "CIS 5.3.2").verdict, Verdict::Pass);
    assert_eq!(control(&r, "BSI APP.4.4.A1").verdict, Verdict::Pass);
    assert_eq!(r.window.first, None);
}

#[test]
fn without_a_policy_or_networkpolicies_the_controls_say_so() {
    let flows: Vec<SourcedFlow> = read_flow_log(&fixture("clean-flows.jsonl"))
        .expect("parses")
        .into_iter()
        .map(|report| SourcedFlow {
            report,
            source: "x".into(),
        })
        .collect();
    let inv_path = fixture("violations-inventory.json");
    let inv = inventory::load_paths(&[inv_path]).expect("loads");
    let objects: Vec<_> = inv
        .objects
        .into_iter()
        .filter(|o| !matches!(o, crate::inventory::Object::NetworkPolicy(_)))
        .collect();
    let r = build(AuditInput {
        flows,
        objects: &objects,
        policies: &[],
        segmentation: &FlowLogVerdicts,
        segmentation_source: JudgementSource::FlowLog,
        netpol: &FlowLogNetpol,
        netpol_source: JudgementSource::FlowLog,
        inputs: Inputs::default(),
        generated_at: pinned(),
        evidence_cap: 1,
        warnings: Vec::new(),
    });
    for id in [
        "BSI APP.4.4.A1",
        "BSI APP.4.4.A7",
        "BSI APP.4.4.A18",
        "CIS 5.3.2",
        "NetworkPolicy enforcement",
    ] {
        assert_eq!(
            control(&r, id).verdict,
            Verdict::NotVerified,
            "{id}: {}",
            control(&r, id).reason
        );
    }
    // The cap limits rows, never counts.
    let a7 = control(&r, "BSI APP.4.4.A7");
    let allowed = a7
        .evidence
        .iter()
        .find(|g| g.name == "allowed")
        .expect("allowed group");
    assert_eq!((allowed.total, allowed.flows.len()), (2, 1));
}

#[test]
fn output_does_not_depend_on_input_order() {
    let mut flows: Vec<SourcedFlow> = read_flow_log(&fixture("violations-flows.jsonl"))
        .expect("parses")
        .into_iter()
        .enumerate()
        .map(|(i, report)| SourcedFlow {
            report,
            source: format!("f:{}", i + 1),
        })
        .collect();
    let a = audit_flows(
        flows.clone(),
        "violations-inventory.json",
        Some("policy.yaml"),
    );
    flows.reverse();
    let b = audit_flows(flows, "violations-inventory.json", Some("policy.yaml"));
    assert_eq!(
        render::json(&a),
        render::json(&b),
        "same flows in another order: same report"
    );
    assert_eq!(html::render(&a), html::render(&b));
}

#[test]
fn hostile_names_are_escaped_in_html_and_markdown() {
    let r = audit_files(
        &["violations-flows.jsonl"],
        "violations-inventory.json",
        Some("policy.yaml"),
    );
    let page = html::render(&r);
    assert!(
        page.contains("Deployment/&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
        "the hostile workload is shown, escaped"
    );
    assert!(
        !page.contains("<script"),
        "no script element may come from input"
    );
    assert!(
        !page.to_lowercase().contains("<img"),
        "no markup from input"
    );
    assert!(
        !page.contains("http://")
            || page.matches("http://").count()
                == page.matches("http://www.w3.org/2000/svg").count(),
        "no external reference except the SVG namespace"
    );
    let md = markdown::render(&r);
    assert!(
        md.contains("Deployment/\\<script\\>alert('x')\\</script\\>"),
        "markdown escapes markup"
    );
    for line in md.lines().filter(|l| l.starts_with('|')) {
        let cells = line.matches(" | ").count();
        assert!(
            cells < 12,
            "no table row grows extra cells from input: {line}"
        );
    }
}

#[test]
fn escape_functions_cover_every_special_character() {
    assert_eq!(
        html::esc(r#"<a href="x" onclick='y'>&</a>"#),
        "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
    );
    assert_eq!(
        markdown::md("a|b*c_[d](e)<f>`"),
        "a\\|b\\*c\\_\\[d\\](e)\\<f\\>\\`"
    );
    assert_eq!(markdown::md("two\nlines"), "two lines");
}
