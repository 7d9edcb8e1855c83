//! What the rules and the dashboard may name: the daemon's exported metrics
//! and labels, and the names a PromQL expression uses.

use super::*;

/// Every series name and its label names, from the daemon's own registry:
/// what it renders (scalars, and vectors that have children), plus the
/// label names of the labelled vectors, which render nothing until first
/// used.
pub(super) fn exported_metrics() -> BTreeMap<String, BTreeSet<String>> {
    use prometheus::core::Collector;
    let m = segwatch::metrics::Metrics::new();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in m.render().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest
                .split_whitespace()
                .next()
                .expect("TYPE line has a name");
            out.entry(name.to_string()).or_default();
        } else if !line.starts_with('#') && !line.is_empty() {
            let (name, labels) = match line.split_once('{') {
                Some((n, rest)) => (n, rest.split_once('}').map(|(l, _)| l).unwrap_or("")),
                None => (line.split_whitespace().next().unwrap_or(""), ""),
            };
            let entry = out.entry(name.to_string()).or_default();
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                entry.insert(pair.split('=').next().expect("label").trim().to_string());
            }
        }
    }
    let vectors: Vec<&dyn Collector> = vec![
        &m.flows,
        &m.flow_bytes,
        &m.violations,
        &m.workload_flows,
        &m.events_lost,
        &m.build_info,
        &m.packets,
        &m.inventory_errors,
        &m.source_up,
        &m.probe_flows,
        &m.flows_not_reported,
        &m.flows_identity_late,
        &m.policy_errors,
        &m.export_records,
        &m.scans,
        &m.metric_series,
        &m.label_overflow,
    ];
    for c in vectors {
        for d in c.desc() {
            out.entry(d.fq_name.clone())
                .or_default()
                .extend(d.variable_labels.iter().cloned());
        }
    }
    out
}

/// Metric names in a PromQL expression (identifiers followed by `{`, `[`,
/// whitespace, `)` or end, excluding functions, keywords and label names).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    let mut in_braces = 0;
    let mut in_parens_after_by: Vec<bool> = Vec::new();
    let mut last_word = String::new();
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        match c {
            '{' => in_braces += 1,
            '}' => in_braces -= 1,
            '(' => in_parens_after_by.push(matches!(
                last_word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            )),
            ')' => {
                in_parens_after_by.pop();
            }
            _ => {}
        }
        if c.is_ascii_digit() {
            // Numbers and durations (0.9, 10m, 1e3) are not names.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            last_word.clear();
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            let is_function = next == Some('(');
            let in_label_list = in_parens_after_by.last().copied().unwrap_or(false);
            let keyword = matches!(
                word,
                "by" | "without"
                    | "on"
                    | "ignoring"
                    | "group_left"
                    | "group_right"
                    | "and"
                    | "or"
                    | "unless"
                    | "offset"
                    | "bool"
                    | "sum"
                    | "min"
                    | "max"
                    | "avg"
                    | "group"
                    | "stddev"
                    | "stdvar"
                    | "count"
                    | "count_values"
                    | "bottomk"
                    | "topk"
                    | "quantile"
            );
            if in_braces == 0
                && !is_function
                && !in_label_list
                && !keyword
                && !word.starts_with("__")
            {
                names.insert(word.to_string());
            }
            last_word = word.to_string();
            continue;
        }
        if !c.is_whitespace() {
            last_word.clear();
        }
        i += 1;
    }
    names
}

/// Label names in `by (...)` clauses of an expression.
fn by_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(pos) = rest.find("by (") {
        let after = &rest[pos + 4..];
        let end = after.find(')').expect("by (...) closes");
        for l in after[..end].split(',') {
            out.insert(l.trim().to_string());
        }
        rest = &after[end..];
    }
    out
}

/// Labels the scrape adds to every series (ServiceMonitor relabelling adds
/// `node`), and series from elsewhere the rules may use.
pub(super) const SCRAPE_LABELS: [&str; 3] = ["instance", "job", "node"];
pub(super) const FOREIGN_METRICS: [&str; 3] = [
    "up",
    "kube_daemonset_status_desired_number_scheduled",
    "kube_daemonset_status_number_available",
];

pub(super) fn check_expr(expr: &str, metrics: &BTreeMap<String, BTreeSet<String>>, what: &str) {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: no metric in `{expr}`");
    let mut labels: BTreeSet<String> = SCRAPE_LABELS.iter().map(|s| s.to_string()).collect();
    for n in &names {
        if FOREIGN_METRICS.contains(&n.as_str()) {
            labels.extend(["namespace", "daemonset"].map(String::from));
            continue;
        }
        let l = metrics.get(n).unwrap_or_else(|| {
            panic!("{what}: `{n}` is not a metric segwatch exports (monitor/src/metrics.rs)")
        });
        labels.extend(l.iter().cloned());
    }
    for l in by_labels(expr) {
        assert!(
            labels.contains(&l),
            "{what}: groups by `{l}`, which {names:?} do not carry"
        );
    }
}

#[test]
fn metric_name_extraction_sees_through_promql_syntax() {
    // check_expr relies on this; a broken extractor would pass everything.
    let e = r#"sum by (kind, src_namespace) ((segwatch_violations_total{kind="a b"} unless segwatch_violations_total offset 10m) or increase(segwatch_events_lost_total[5m])) > 0 and on(instance) up == 1"#;
    let names: Vec<String> = metric_names(e).into_iter().collect();
    assert_eq!(
        names,
        [
            "segwatch_events_lost_total",
            "segwatch_violations_total",
            "up"
        ]
    );
    assert_eq!(
        by_labels(e),
        ["kind", "src_namespace"].map(String::from).into()
    );
    let metrics = exported_metrics();
    let caught = std::panic::catch_unwind(|| {
        check_expr("rate(segwatch_violation_total[5m])", &metrics, "t")
    });
    assert!(caught.is_err(), "a misspelt metric must be caught");
    let caught = std::panic::catch_unwind(|| {
        check_expr("sum by (pod) (segwatch_flows_total)", &metrics, "t")
    });
    assert!(
        caught.is_err(),
        "a label the metric does not carry must be caught"
    );
}
