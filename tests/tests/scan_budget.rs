//! Metrics that survive a port scan (issue #14), end to end: a pod of
//! namespace `edge` scans 2,000 ports of a pod in `core` and 1,000 ports of
//! its node through attached programs. The scanner's series stay within
//! the port budget, summed over the series every attempt is counted
//! exactly once, `segwatch_scans_total` counts one scan per destination in
//! the scan window, the flow log tags the scan's connections, no ephemeral
//! port becomes a label value, and /metrics stays under a stated size.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;
use tests::*;

const NODE_IP: &str = "10.97.0.1";
const POD_PORTS: u16 = 2000;
const NODE_PORTS: u16 = 1000;
const BUDGET: usize = 16;
/// /metrics after the scan must stay below this (bytes): about 70 scanner
/// series of ~250 bytes next to the fixed families and their help texts.
const METRICS_BOUND: usize = 64 * 1024;

/// Connects to every port in `ports` of `dst` from inside `from`'s netns;
/// returns how many attempts were made (each one connection).
fn scan(from: &Pod, dst: IpAddr, ports: Vec<u16>) -> u64 {
    from.ns
        .run(move || {
            let mut n = 0u64;
            for port in ports {
                // Refused (RST) or accepted: either way one connection.
                let _ =
                    TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(2));
                n += 1;
            }
            n
        })
        .join()
        .expect("scan thread")
}

/// Samples of `family` from the scanner, as (labels, value).
fn scanner_series(metrics: &str, family: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| l.contains("src_workload=\"Deployment/scanner\""))
        .map(|l| {
            let (labels, v) = l.rsplit_once(' ').expect("sample");
            (labels.to_owned(), v.parse::<f64>().expect("value") as u64)
        })
        .collect()
}

fn sum_where(series: &[(String, u64)], needle: &str) -> (u64, usize) {
    let hits: Vec<_> = series.iter().filter(|(l, _)| l.contains(needle)).collect();
    (hits.iter().map(|(_, v)| v).sum(), hits.len())
}

#[test]
fn a_port_scan_stays_within_the_series_budget_with_exact_counts() {
    let topo = Topo::with_prefix("scb", 2, true);
    let (scanner, db) = (&topo.pods[0], &topo.pods[1]);
    topo.add_node_address(&format!("{NODE_IP}/32"));
    tcp_server(db, db.ip4, 5432, 10);

    let dir = TempDir::new("scan-budget");
    let inventory = json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            namespace_object("edge"),
            namespace_object("core"),
            PodObject::new("edge", "scanner-6f7d8-abcde")
                .labels(json!({"app": "scanner", "pod-template-hash": "6f7d8"}))
                .owner("ReplicaSet", "scanner-6f7d8")
                .service_account("default")
                .ip(scanner.ip4)
                .json(),
            PodObject::new("core", "db-0")
                .labels(json!({"app": "db"}))
                .owner("StatefulSet", "db")
                .service_account("default")
                .tcp_ports(&[5432])
                .ip(db.ip4)
                .json(),
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
             "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}}
        ]
    });
    let inv_path = dir.0.join("inventory.json");
    std::fs::write(&inv_path, serde_json::to_vec_pretty(&inventory).unwrap()).unwrap();
    let budget = BUDGET.to_string();
    let daemon = Daemon::start(
        &topo.node.name,
        &[
            "--idle-timeout",
            "2",
            "--sweep-interval-ms",
            "200",
            "--inventory",
            inv_path.to_str().unwrap(),
            "--node-name",
            "n1",
            "--node-ip",
            NODE_IP,
            "--metrics-ports-per-source",
            &budget,
            "--metrics-scan-ports",
            "64",
            // One window over the whole scan: one scan per destination.
            "--metrics-scan-window",
            "3600",
        ],
    );
    let before = daemon.metrics();

    // Ports 1..1999 (closed) and 5432 (the pod's declared, listening port).
    let pod_ports: Vec<u16> = (1..POD_PORTS).chain([5432]).collect();
    let pod_attempts = scan(scanner, db.ip4, pod_ports);
    let node_attempts = scan(
        scanner,
        NODE_IP.parse().unwrap(),
        (1..=NODE_PORTS).collect(),
    );
    assert_eq!((pod_attempts, node_attempts), (2000, 1000));

    let done = wait_for(Duration::from_secs(30), || {
        let m = daemon.metrics();
        let v = scanner_series(&m, "segwatch_violations_total");
        let cross = sum_where(&v, "kind=\"cross_namespace\"").0;
        let host = sum_where(&v, "kind=\"host_access\"").0;
        (cross >= pod_attempts && host >= node_attempts).then_some(m)
    });
    // Let late reports (if any were wrong) arrive before asserting exactness.
    std::thread::sleep(Duration::from_secs(3));
    let metrics = daemon.metrics();
    let v = scanner_series(&metrics, "segwatch_violations_total");
    assert!(
        done.is_some(),
        "the scan's violations were not all counted within 30 s: {v:?}\n{}",
        daemon.stderr()
    );

    // Exact counts, summed over the series.
    let (cross, cross_series) = sum_where(&v, "kind=\"cross_namespace\"");
    let (host, host_series) = sum_where(&v, "kind=\"host_access\"");
    assert_eq!(
        (cross, host),
        (pod_attempts, node_attempts),
        "every attempt counted once (cross_namespace to the pod, host_access to the node)"
    );
    // Within the budget: 16 first-seen ports, the declared 5432, other.
    assert!(
        cross_series <= BUDGET + 2,
        "cross_namespace series of the scanner: {cross_series} > {} ({v:?})",
        BUDGET + 2
    );
    assert!(
        host_series <= BUDGET + 1,
        "host_access series of the scanner: {host_series} > {}",
        BUDGET + 1
    );
    assert!(
        v.iter()
            .any(|(l, _)| l.contains("dst_port=\"5432\"") && l.contains("cross_namespace")),
        "a port the pod declares keeps its number: {v:?}"
    );
    let w = scanner_series(&metrics, "segwatch_workload_flows_total");
    let (wsum, wseries) = sum_where(&w, "dst_workload=");
    assert_eq!(
        wsum,
        pod_attempts + node_attempts,
        "workload edges count exactly too"
    );
    assert!(wseries <= 2 * BUDGET + 3, "workload edge series: {wseries}");
    for (l, _) in v.iter().chain(&w) {
        let port = l
            .split("dst_port=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("dst_port label");
        if let Ok(p) = port.parse::<u16>() {
            assert!(
                p < 32768 || p == 5432,
                "an ephemeral port became a label value: {l}"
            );
        } else {
            assert_eq!(port, "other", "{l}");
        }
    }
    let overflow = metric_value(
        &metrics,
        "segwatch_label_overflow_total{family=\"segwatch_violations_total\"}",
    ) as u64;
    let numbered: u64 = v
        .iter()
        .filter(|(l, _)| !l.contains("dst_port=\"other\""))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        overflow + numbered,
        cross + host,
        "overflow counts what went to other"
    );
    let held = metric_value(
        &metrics,
        "segwatch_metric_series{family=\"segwatch_violations_total\"}",
    ) as usize;
    let shown = metrics
        .lines()
        .filter(|l| l.starts_with("segwatch_violations_total{"))
        .count();
    assert_eq!(held, shown, "segwatch_metric_series tells the series held");

    // One scan per destination in the window.
    for dst in [
        "dst_workload=\"StatefulSet/db\"",
        "dst_workload=\"node/n1\"",
    ] {
        let s = sum_where(&scanner_series(&metrics, "segwatch_scans_total"), dst);
        assert_eq!(
            s,
            (1, 1),
            "segwatch_scans_total{{kind=\"ports\",{dst}}}: once per window"
        );
    }
    let tagged = daemon
        .reports()
        .iter()
        .filter(|r| r["src"]["workload"] == "Deployment/scanner" && r["scan"] == "ports")
        .count() as u64;
    assert!(
        tagged >= pod_attempts + node_attempts - 2 * 64,
        "the flow log tags the scan's connections past the threshold: {tagged}"
    );

    let size = metrics.len();
    eprintln!(
        "/metrics: {} bytes before, {size} after {} attempts (bound {METRICS_BOUND})",
        before.len(),
        pod_attempts + node_attempts
    );
    assert!(
        size < METRICS_BOUND,
        "/metrics is {size} bytes after the scan"
    );
}
