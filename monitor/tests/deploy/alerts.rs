//! Alert rules and the PrometheusRule: promtool, coverage of every
//! violation kind, only exported metrics and labels.

use super::promql::{check_expr, exported_metrics, FOREIGN_METRICS, SCRAPE_LABELS};
use super::*;

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let Some(promtool) = tool("promtool", "Debian package prometheus") else {
        return;
    };
    let dir = deploy().join("prometheus");
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.join("rules.yaml")));
    assert!(
        ok,
        "promtool check rules deploy/prometheus/rules.yaml:\n{out}"
    );
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(dir.join("tests.yaml")));
    assert!(
        ok,
        "promtool test rules deploy/prometheus/tests.yaml:\n{out}"
    );
}

#[test]
fn alert_rules_cover_every_violation_kind_and_name_only_exported_metrics() {
    let metrics = exported_metrics();
    let rules = yaml_one(&deploy().join("prometheus/rules.yaml"));
    let mut alerts: BTreeMap<String, Value> = BTreeMap::new();
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"]
                .as_str()
                .or(r["record"].as_str())
                .expect("alert or record");
            check_expr(r["expr"].as_str().expect("expr"), &metrics, name);
            alerts.insert(name.to_string(), r.clone());
        }
    }
    // CONTRACT flow report: the violation kinds. Each has its alert.
    for kind in [
        "cross_namespace",
        "within_namespace",
        "host_access",
        "metadata_api",
        "external",
        "netpol_bypass",
    ] {
        let found = alerts.values().any(|r| {
            r["labels"]["kind"] == kind
                && r["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains(&format!("kind=\"{kind}\"")))
        });
        assert!(found, "no alert for violation kind {kind}");
    }
    for name in [
        "SegwatchAgentDown",
        "SegwatchAgentsAbsent",
        "SegwatchEventsLost",
        "SegwatchNoInterfacesAttached",
    ] {
        assert!(alerts.contains_key(name), "missing alert {name}");
    }
    for (name, r) in &alerts {
        let sev = r["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["warning", "critical"].contains(&sev),
            "{name}: severity {sev:?}"
        );
        assert!(
            r["annotations"]["summary"].is_string(),
            "{name}: no summary"
        );
        assert!(
            r["annotations"]["description"].is_string(),
            "{name}: no description"
        );
    }

    // Unit-test input series use the daemon's names and labels only.
    let mut tested: BTreeSet<String> = BTreeSet::new();
    let test_files = ["prometheus/tests.yaml", "prometheus/tests-scans.yaml"];
    let tests: Vec<Value> = test_files
        .iter()
        .map(|f| yaml_one(&deploy().join(f)))
        .collect();
    for t in tests
        .iter()
        .flat_map(|t| t["tests"].as_array().expect("tests"))
    {
        for s in t["input_series"].as_array().expect("input_series") {
            let series = s["series"].as_str().expect("series");
            let (name, labels) = series.split_once('{').expect("series has labels");
            if FOREIGN_METRICS.contains(&name) {
                continue;
            }
            let known = metrics
                .get(name)
                .unwrap_or_else(|| panic!("tests.yaml: {name} is not exported by segwatch"));
            for pair in labels.trim_end_matches('}').split("\",") {
                let label = pair.split('=').next().expect("label=value").trim();
                assert!(
                    known.contains(label) || SCRAPE_LABELS.contains(&label),
                    "tests.yaml: {name} has no label {label}"
                );
            }
            // A violation series must carry every label the daemon sets.
            let given: BTreeSet<&str> = labels
                .trim_end_matches('}')
                .split("\",")
                .map(|p| p.split('=').next().expect("label").trim())
                .collect();
            for l in known {
                assert!(
                    given.contains(l.as_str()),
                    "tests.yaml: {series} lacks label {l}"
                );
            }
        }
        for a in t["alert_rule_test"].as_array().expect("alert_rule_test") {
            tested.insert(a["alertname"].as_str().expect("alertname").to_string());
        }
    }
    let untested: Vec<&String> = alerts.keys().filter(|a| !tested.contains(*a)).collect();
    assert!(
        untested.is_empty(),
        "alerts without a unit test in tests.yaml: {untested:?}"
    );
}

#[test]
fn prometheusrule_carries_exactly_the_groups_of_rules_yaml() {
    let rules_path = deploy().join("prometheus/rules.yaml");
    let pr_path = deploy().join("monitoring/prometheusrule.yaml");
    let rules = yaml_one(&rules_path);
    let pr = yaml_one(&pr_path);
    assert_eq!(pr["kind"], "PrometheusRule");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    if pr["spec"]["groups"] != rules["groups"] {
        // Regenerate: the manifest's head up to `spec:`, then rules.yaml's
        // groups indented under it.
        let head: String = std::fs::read_to_string(&pr_path)
            .expect("read prometheusrule.yaml")
            .lines()
            .take_while(|l| *l != "spec:")
            .map(|l| format!("{l}\n"))
            .collect();
        let rules_text = std::fs::read_to_string(&rules_path).expect("read rules.yaml");
        let body: String = rules_text
            .lines()
            .skip_while(|l| !l.starts_with("groups:"))
            .map(|l| {
                if l.is_empty() {
                    "\n".to_string()
                } else {
                    format!("  {l}\n")
                }
            })
            .collect();
        let out = scratch("regenerated").join("prometheusrule.yaml");
        std::fs::write(&out, format!("{head}spec:\n{body}")).expect("write regenerated");
        panic!(
            "deploy/monitoring/prometheusrule.yaml differs from deploy/prometheus/rules.yaml; \
             the regenerated file is {}: copy it over",
            rel(&out)
        );
    }
}
