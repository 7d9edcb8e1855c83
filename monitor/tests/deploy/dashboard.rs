//! The Grafana dashboard: parses, shows what security teams ask for, names
//! only exported metrics.

use super::promql::{check_expr, exported_metrics};
use super::*;

fn dashboard() -> Value {
    let path = deploy().join("grafana/segwatch-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("read dashboard");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", rel(&path)))
}

/// Grafana's variables replaced by values PromQL accepts.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$namespace", ".*")
}

#[test]
fn dashboard_shows_what_security_teams_ask_for_from_exported_metrics() {
    let metrics = exported_metrics();
    let d = dashboard();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut rects: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("panel title").to_string();
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "duplicate panel id in {title}"
        );
        let g = &p["gridPos"];
        let r = (
            g["x"].as_i64().expect("x"),
            g["y"].as_i64().expect("y"),
            g["w"].as_i64().expect("w"),
            g["h"].as_i64().expect("h"),
        );
        assert!(r.0 + r.2 <= 24, "{title} is wider than the grid");
        for o in &rects {
            let overlap = r.0 < o.0 + o.2 && o.0 < r.0 + r.2 && r.1 < o.1 + o.3 && o.1 < r.1 + r.3;
            assert!(!overlap, "panels {title} and {} overlap", o.4);
        }
        rects.push((r.0, r.1, r.2, r.3, title.clone()));
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            check_expr(&grafana_to_promql(expr), &metrics, &title);
            exprs.push((title.clone(), grafana_to_promql(expr)));
        }
    }
    let all = exprs
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let titles = rects
        .iter()
        .map(|r| r.4.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for (needle, what) in [
        ("sum by (kind)", "violations by kind"),
        (
            "sum by (kind, src_namespace, dst_namespace)",
            "violations by namespace pair",
        ),
        (
            "segwatch_workload_flows_total",
            "top talkers (workload edges)",
        ),
        ("segwatch_flow_bytes_total", "top talkers (bytes)"),
        (
            "sum by (stage) (increase(segwatch_events_lost_total",
            "losses by stage",
        ),
        ("segwatch_interfaces_attached", "attached interfaces"),
        (
            "segwatch_flow_table_entries / (segwatch_flow_table_capacity",
            "flow table fill",
        ),
    ] {
        assert!(all.contains(needle), "the dashboard must show {what}");
    }
    assert!(titles.contains("Top talkers"), "a panel titled Top talkers");

    // Every query must parse as PromQL: promtool checks them as recording rules.
    let Some(promtool) = tool("promtool", "Debian package prometheus") else {
        return;
    };
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        file.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(e).expect("quote")
        ));
    }
    let path = scratch("dashboard").join("queries.yaml");
    std::fs::write(&path, file).expect("write queries");
    let (ok, out) = run(Command::new(&promtool).args(["check", "rules"]).arg(&path));
    assert!(
        ok,
        "dashboard queries do not parse ({}):\n{out}",
        rel(&path)
    );
}
