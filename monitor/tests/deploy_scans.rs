//! Offline checks of what issue #14 added to `deploy/` and the README: the
//! `SegwatchPortScan` alert and its promtool unit tests
//! (deploy/prometheus/tests-scans.yaml), the dashboard's scan and
//! series-budget panels, and the README's budget section naming the flags
//! `segwatch run` has. promtool (Debian package `prometheus`, installed by
//! `cargo xtask setup`) is required: without it the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("monitor/ has a parent")
        .to_path_buf()
}

fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("promtool"))
                .find(|c| c.is_file())
        })
        .expect("promtool not found on PATH (Debian package prometheus; `cargo xtask setup` installs it)")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

#[test]
fn port_scan_alert_passes_its_promtool_unit_tests() {
    let dir = root().join("deploy/prometheus");
    let out = Command::new(promtool())
        .args(["test", "rules"])
        .arg(dir.join("tests-scans.yaml"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool test rules deploy/prometheus/tests-scans.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tests = read("deploy/prometheus/tests-scans.yaml");
    assert!(
        tests.contains("alertname: SegwatchPortScan"),
        "tests-scans.yaml tests SegwatchPortScan"
    );
    let rules: serde_json::Value =
        serde_yaml_ng::from_str(&read("deploy/prometheus/rules.yaml")).expect("rules.yaml parses");
    let alert = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .find(|r| r["alert"] == "SegwatchPortScan")
        .expect("rules.yaml has SegwatchPortScan");
    let expr = alert["expr"].as_str().expect("expr");
    assert!(expr.contains("segwatch_scans_total"), "{expr}");
    for l in [
        "kind",
        "src_namespace",
        "src_workload",
        "dst_namespace",
        "dst_workload",
    ] {
        assert!(expr.contains(l), "SegwatchPortScan keeps label {l}: {expr}");
    }
}

#[test]
fn dashboard_shows_scans_and_the_series_budget() {
    let d: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/segwatch-dashboard.json")).expect("JSON");
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for needle in [
        "segwatch_scans_total",
        "segwatch_metric_series",
        "segwatch_label_overflow_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needle)),
            "the dashboard must show {needle}"
        );
    }
}

#[test]
fn readme_documents_the_budget_flags_segwatch_run_has() {
    use clap::CommandFactory;
    let readme = read("README.md");
    let cli = segwatch::cli::Cli::command();
    let run = cli
        .get_subcommands()
        .find(|c| c.get_name() == "run")
        .expect("run subcommand");
    let flags: Vec<String> = run
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    for f in [
        "metrics-ports-per-source",
        "metrics-scan-ports",
        "metrics-scan-addresses",
        "metrics-scan-window",
        "metrics-exclude-namespace",
    ] {
        assert!(flags.iter().any(|x| x == f), "segwatch run has --{f}");
        assert!(readme.contains(&format!("--{f}")), "README documents --{f}");
    }
    for needle in [
        "segwatch_scans_total",
        "segwatch_metric_series",
        "segwatch_label_overflow_total",
        "dst_port=\"other\"",
        "series per agent",
    ] {
        assert!(readme.contains(needle), "README mentions {needle}");
    }
}
