//! `metrics_bytes_after_scan` and `scan_series_over_budget`: what a port
//! scan does to /metrics (issue #14). A pod of namespace `edge` connects to
//! 3,000 ports of a pod in `core` through the monitored veths; the figures
//! are the size of /metrics after the scan, next to the budget formula's
//! bound for what one source can add toward one destination:
//! (P + K + 2) series per family, P the declared ports, K
//! `--metrics-ports-per-source` (README "Series budget and scans").

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use tests::{namespace_object, Daemon, PodObject, TempDir};

use crate::report::{Figure, Target};
use crate::Ctx;

const PORTS: u16 = 3000;
const BUDGET: usize = 16;
/// Ports the inventory declares (the target pod's containerPort).
const DECLARED: usize = 1;
const FAMILIES: [&str; 2] = ["segwatch_violations_total", "segwatch_workload_flows_total"];

fn series(metrics: &str, family: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .count()
}

fn sum(metrics: &str, family: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

pub fn phase(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let (scanner, target) = (&ctx.topo.pods[0], &ctx.topo.pods[1]);
    let dir = TempDir::new("bench-scan");
    let inventory = json!({"apiVersion": "v1", "kind": "List", "items": [
        namespace_object("edge"),
        namespace_object("core"),
        PodObject::new("edge", "scanner-6f7d8-abcde")
            .labels(json!({"pod-template-hash": "6f7d8"}))
            .owner("ReplicaSet", "scanner-6f7d8")
            .ip(scanner.ip4)
            .json(),
        PodObject::new("core", "db-0")
            .labels(json!({"pod-template-hash": "6f7d8"}))
            .owner("StatefulSet", "db")
            .tcp_ports(&[5432])
            .ip(target.ip4)
            .json(),
    ]});
    let inv = dir.0.join("inventory.json");
    std::fs::write(&inv, serde_json::to_vec(&inventory)?).context("writing the inventory")?;
    let budget = BUDGET.to_string();
    let d = Daemon::start(
        &ctx.topo.node.name,
        &[
            "--idle-timeout",
            "2",
            "--sweep-interval-ms",
            "200",
            "--inventory",
            inv.to_str().context("non-UTF-8 path")?,
            "--node-name",
            "n1",
            "--metrics-ports-per-source",
            &budget,
        ],
    );
    let before = d.metrics();
    let dst = target.ip4;
    let attempts = scanner
        .ns
        .run(move || {
            let mut n = 0u64;
            for port in 1..=PORTS {
                let _ =
                    TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(1));
                n += 1;
            }
            n
        })
        .join()
        .map_err(|_| anyhow::anyhow!("scan thread panicked"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let m = d.metrics();
        if sum(&m, "segwatch_violations_total") >= attempts as f64 {
            break m;
        }
        if Instant::now() > deadline {
            bail!(
                "after 60 s, {} of {attempts} scan attempts counted",
                sum(&m, "segwatch_violations_total")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let bound = DECLARED + BUDGET + 2;
    let added: Vec<usize> = FAMILIES
        .iter()
        .map(|f| series(&after, f) - series(&before, f))
        .collect();
    let worst = added.iter().copied().max().unwrap_or(0) as f64 / bound as f64;
    let detail = json!({
        "attempts": attempts,
        "metrics_bytes_before": before.len(),
        "metrics_bytes_after": after.len(),
        "series_added": FAMILIES.iter().zip(&added).map(|(f, n)| (f.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "violations_counted": sum(&after, "segwatch_violations_total"),
        "budget": {"ports_per_source": BUDGET, "declared_ports": DECLARED,
                   "series_per_family_bound": bound, "formula": "P + K + 2"},
        "scans_total": sum(&after, "segwatch_scans_total"),
    });
    Ok(vec![
        Figure::new(
            "metrics_bytes_after_scan",
            "bytes",
            Some(Target::AtMost(64.0 * 1024.0)),
            vec![after.len() as f64],
        )
        .what(format!(
            "/metrics after a {attempts}-port scan of one pod ({} bytes before); budget P + K + 2 = {bound} series per family",
            before.len()
        ))
        .detail(detail.clone()),
        Figure::new(
            "scan_series_over_budget",
            "x",
            Some(Target::AtMost(1.0)),
            vec![worst],
        )
        .what(format!(
            "series the scan added per family (violations {}, workload edges {}) over the bound {bound}",
            added[0], added[1]
        ))
        .detail(detail),
    ])
}
