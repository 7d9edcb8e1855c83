//! Metric bookkeeping over judged reports of the small cluster of the
//! judge's tests.

use super::*;
use crate::fixtures::{cluster, report};
use crate::inventory::ObjectKind;
use crate::report::{ScanKind, TcpState};

fn metric_line(m: &Metrics, prefix: &str) -> Vec<String> {
    m.render()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn metrics_count_violations_once_per_connection_with_contract_labels() {
    let idx = cluster(true);
    let m = Metrics::new();
    let mut obs = Observer::new(Duration::from_secs(600));
    let mut host = report(
        "10.1.0.5",
        1,
        "192.168.1.1",
        Some(10250),
        "TCP",
        Some(TcpState::Established),
    );
    idx.judge(&mut host);
    host.ended = false;
    obs.observe(&m, &idx, &host, true, false);
    obs.observe(&m, &idx, &host, false, false);
    let mut meta = report(
        "10.1.0.5",
        2,
        "169.254.169.254",
        Some(80),
        "TCP",
        Some(TcpState::Established),
    );
    idx.judge(&mut meta);
    assert!(obs.announce(&m, &idx, &meta));
    obs.observe(&m, &idx, &meta, true, true);
    let v = metric_line(&m, "segwatch_violations_total{");
    assert_eq!(
        v,
        vec![
            r#"segwatch_violations_total{dst_namespace="",dst_port="10250",dst_workload="node/n1",kind="host_access",protocol="TCP",src_namespace="shop",src_service_account="web",src_workload="Deployment/web"} 1"#,
            r#"segwatch_violations_total{dst_namespace="",dst_port="80",dst_workload="metadata-api",kind="metadata_api",protocol="TCP",src_namespace="shop",src_service_account="web",src_workload="Deployment/web"} 1"#,
        ],
        "one per connection, contract labels"
    );
    let f = metric_line(&m, "segwatch_flows_total{");
    assert_eq!(
        f,
        vec![
            r#"segwatch_flows_total{dst_namespace="",protocol="TCP",src_namespace="shop",verdict="violation"} 2"#
        ],
        "flows count per connection, at its first report (two connections, three reports)"
    );
    let b = metric_line(&m, "segwatch_flow_bytes_total{");
    assert!(b.contains(&r#"segwatch_flow_bytes_total{direction="sent",dst_namespace="",src_namespace="shop"} 900"#.to_string()), "{b:?}");

    // A bypass seen only in a later report counts once, then never again.
    let mut c = report(
        "10.1.0.5",
        3,
        "10.1.0.7",
        Some(8080),
        "TCP",
        Some(TcpState::Attempted),
    );
    idx.judge(&mut c);
    c.ended = false;
    obs.observe(&m, &idx, &c, true, false);
    let mut c2 = report(
        "10.1.0.5",
        3,
        "10.1.0.7",
        Some(8080),
        "TCP",
        Some(TcpState::Established),
    );
    idx.judge(&mut c2);
    c2.ended = false;
    obs.observe(&m, &idx, &c2, false, false);
    obs.observe(&m, &idx, &c2, false, false);
    let bypass: Vec<_> = metric_line(&m, "segwatch_violations_total{")
        .into_iter()
        .filter(|l| l.contains("netpol_bypass"))
        .collect();
    assert_eq!(
        bypass,
        vec![
            r#"segwatch_violations_total{dst_namespace="api",dst_port="8080",dst_workload="StatefulSet/backend",kind="netpol_bypass",protocol="TCP",src_namespace="shop",src_service_account="web",src_workload="Deployment/web"} 1"#
        ]
    );
    let w = metric_line(&m, "segwatch_workload_flows_total{");
    assert!(
        w.contains(&r#"segwatch_workload_flows_total{dst_namespace="api",dst_port="8080",dst_workload="StatefulSet/backend",protocol="TCP",src_namespace="shop",src_workload="Deployment/web"} 1"#.to_string()),
        "{w:?}"
    );
    // Unattributed ends.
    let mut u = report(
        "10.1.0.5",
        4,
        "10.1.0.99",
        Some(80),
        "TCP",
        Some(TcpState::Attempted),
    );
    idx.judge(&mut u);
    obs.observe(&m, &idx, &u, true, false);
    assert_eq!(
        metric_line(&m, "segwatch_flows_unattributed_total"),
        vec!["segwatch_flows_unattributed_total 1"]
    );
    for l in m.render().lines().filter(|l| l.starts_with("segwatch_")) {
        assert!(
            !l.contains("10.1.0.") && !l.contains("web-5c9f-abcde"),
            "no raw IPs or pod names in labels: {l}"
        );
    }
}

#[test]
fn series_of_gone_workloads_are_dropped_after_the_ttl() {
    let mut idx = cluster(true);
    let m = Metrics::new();
    let ttl = Duration::from_secs(60);
    let mut obs = Observer::new(ttl);
    let mut r = report(
        "10.1.0.5",
        1,
        "192.168.1.1",
        Some(22),
        "TCP",
        Some(TcpState::Established),
    );
    idx.judge(&mut r);
    obs.observe(&m, &idx, &r, true, false);
    let t0 = Instant::now();
    obs.sweep(&m, &idx, t0);
    assert_eq!(
        metric_line(&m, "segwatch_violations_total{").len(),
        1,
        "live workload keeps its series"
    );
    idx.delete(ObjectKind::Pod, Some("shop"), "web-5c9f-abcde");
    obs.sweep(&m, &idx, t0 + Duration::from_secs(1));
    assert_eq!(
        metric_line(&m, "segwatch_violations_total{").len(),
        1,
        "gone, but not for the TTL yet"
    );
    obs.sweep(&m, &idx, t0 + Duration::from_secs(62));
    assert!(
        metric_line(&m, "segwatch_violations_total{").is_empty(),
        "gone longer than the TTL: dropped"
    );
    assert!(metric_line(&m, "segwatch_workload_flows_total{").is_empty());
    assert_eq!(
        metric_line(&m, "segwatch_flows_total{").len(),
        1,
        "the namespace shop still exists"
    );
}

#[test]
fn probe_pods_are_tagged_and_counted_apart_from_violations() {
    let mut idx = cluster(true);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "segwatch-probe-x", "namespace": "shop",
                     "labels": {"segwatch.dev/probe": "true"}},
        "spec": {"nodeName": "n1", "containers": []},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.1.0.9"}]}
    }))
    .expect("pod builds");
    idx.apply(crate::inventory::Object::Pod(pod));
    let m = Metrics::new();
    let mut obs = Observer::new(Duration::from_secs(600));
    let mut r = report(
        "10.1.0.9",
        1,
        "192.168.1.1",
        Some(10250),
        "TCP",
        Some(TcpState::Attempted),
    );
    idx.judge(&mut r);
    assert!(
        r.probe,
        "a flow of a pod labelled segwatch.dev/probe=true is tagged"
    );
    assert_eq!(
        r.verdict,
        Some(Verdict::Violation),
        "the verdict stays what it is"
    );
    assert!(serde_json::to_string(&r)
        .expect("json")
        .contains("\"probe\":true"));
    assert!(obs.announce(&m, &idx, &r));
    obs.observe(&m, &idx, &r, true, true);
    assert_eq!(
        metric_line(&m, "segwatch_probe_flows_total{"),
        ["segwatch_probe_flows_total{dst_kind=\"node\",src_namespace=\"shop\",verdict=\"violation\"} 1"]
    );
    assert!(
        metric_line(&m, "segwatch_violations_total{").is_empty(),
        "probe traffic must not page as a violation"
    );
    let mut web = report(
        "10.1.0.5",
        2,
        "192.168.1.1",
        Some(10250),
        "TCP",
        Some(TcpState::Attempted),
    );
    idx.judge(&mut web);
    assert!(!web.probe);
    assert!(
        !serde_json::to_string(&web).expect("json").contains("probe"),
        "the field is omitted for ordinary flows"
    );
    obs.observe(&m, &idx, &web, true, false);
    assert_eq!(metric_line(&m, "segwatch_violations_total{").len(), 1);
}

/// Sum of a family's samples whose line contains every `needle`, and the
/// number of such series.
fn sum_series(m: &Metrics, family: &str, needles: &[&str]) -> (u64, usize) {
    let lines: Vec<String> = metric_line(m, &format!("{family}{{"))
        .into_iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect();
    let sum = lines
        .iter()
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("a sample value")
        })
        .sum();
    (sum, lines.len())
}

/// A judged connection attempt of the web pod (shop) to `dst:port`.
fn attempt(idx: &ClusterIndex, sport: u16, dst: &str, port: u16) -> FlowReport {
    let mut r = report(
        "10.1.0.5",
        sport,
        dst,
        Some(port),
        "TCP",
        Some(TcpState::Rejected),
    );
    idx.judge(&mut r);
    r
}

fn gauge(m: &Metrics, family: &str) -> i64 {
    m.metric_series.with_label_values(&[family]).get()
}

#[test]
fn a_port_scan_keeps_its_series_within_the_budget_and_its_counts_exact() {
    let idx = cluster(true);
    let m = Metrics::new();
    let mut cfg = ObserveConfig::new(Duration::from_secs(600));
    cfg.ports_per_source = 16;
    let mut obs = Observer::with_config(cfg);
    obs.sweep(&m, &idx, Instant::now());
    // 3,000 attempts: ports 1..=2000 of the node, then 1..=1000 again.
    let mut n = 0u64;
    for port in (1..=2000u16).chain(1..=1000) {
        n += 1;
        let r = attempt(&idx, 10_000 + (n % 50_000) as u16, "192.168.1.1", port);
        obs.observe(&m, &idx, &r, true, false);
    }
    let (sum, series) = sum_series(
        &m,
        "segwatch_violations_total",
        &["kind=\"host_access\"", "src_workload=\"Deployment/web\""],
    );
    assert_eq!(sum, n, "every attempt counted once, summed over the series");
    assert_eq!(
        series, 17,
        "16 ports keep their number, the rest are \"other\""
    );
    let (other, _) = sum_series(&m, "segwatch_violations_total", &["dst_port=\"other\""]);
    assert_eq!(
        other,
        n - 16 * 2,
        "the first 16 ports, seen twice, keep their number"
    );
    let (wsum, wseries) = sum_series(
        &m,
        "segwatch_workload_flows_total",
        &["dst_workload=\"node/n1\""],
    );
    assert_eq!(
        (wsum, wseries),
        (n, 17),
        "the workload edge: same budget, exact"
    );
    assert_eq!(
        m.label_overflow
            .with_label_values(&["segwatch_violations_total"])
            .get(),
        n - 32
    );
    let numbered: Vec<String> = metric_line(&m, "segwatch_violations_total{")
        .into_iter()
        .filter(|l| !l.contains("\"other\""))
        .collect();
    for p in 1..=16 {
        assert!(
            numbered
                .iter()
                .any(|l| l.contains(&format!("dst_port=\"{p}\""))),
            "the first ports seen keep their number: {p} in {numbered:?}"
        );
    }
    assert_eq!(
        gauge(&m, "segwatch_violations_total"),
        17,
        "segwatch_metric_series tells the series held"
    );
    assert_eq!(gauge(&m, "segwatch_workload_flows_total"), 17);
    assert_eq!(
        sum_series(
            &m,
            "segwatch_scans_total",
            &["kind=\"ports\"", "dst_workload=\"node/n1\""]
        ),
        (1, 1),
        "one scan in one window"
    );
}

#[test]
fn ephemeral_ports_never_become_label_values_and_declared_ports_always_do() {
    let mut idx = cluster(true);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "exporter", "namespace": "api",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                          "name": "exporter", "uid": "u9", "controller": true}]},
        "spec": {"nodeName": "n1", "containers": [
            {"name": "e", "ports": [{"containerPort": 9100}, {"containerPort": 45000}]}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.1.0.11"}]}
    }))
    .expect("pod builds");
    idx.apply(crate::inventory::Object::Pod(pod));
    idx.refresh();
    let m = Metrics::new();
    let mut cfg = ObserveConfig::new(Duration::from_secs(600));
    cfg.ports_per_source = 2;
    let mut obs = Observer::with_config(cfg);
    obs.sweep(&m, &idx, Instant::now());
    // An ephemeral port first: it does not take a slot.
    for (i, port) in [40_000u16, 50_001, 1, 2, 3, 9100, 45_000, 60_999]
        .into_iter()
        .enumerate()
    {
        let r = attempt(&idx, 20_000 + i as u16, "192.168.1.1", port);
        obs.observe(&m, &idx, &r, true, false);
    }
    let ports: Vec<String> = metric_line(&m, "segwatch_violations_total{")
        .iter()
        .map(|l| {
            let i = l.find("dst_port=\"").expect("dst_port") + 10;
            l[i..].split('"').next().expect("value").to_owned()
        })
        .collect();
    let mut ports = ports;
    ports.sort();
    assert_eq!(
        ports,
        ["1", "2", "45000", "9100", "other"],
        "ephemeral ports go to other (40000, 50001, 60999, and 3 past the budget of 2); \
         ports a pod declares keep their number (9100, and 45000 although ephemeral)"
    );
    assert_eq!(
        sum_series(&m, "segwatch_violations_total", &["dst_port=\"other\""]).0,
        4
    );
}

#[test]
fn node_and_service_series_end_when_the_node_or_service_is_gone() {
    let mut idx = cluster(true);
    let objs = crate::inventory::parse_str(
        std::path::Path::new("more.yaml"),
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: n2}
  spec: {podCIDRs: [10.2.0.0/24]}
  status: {addresses: [{type: InternalIP, address: 192.168.1.2}]}
"#,
    )
    .expect("parses")
    .objects;
    for o in objs {
        idx.apply(o);
    }
    idx.refresh();
    let m = Metrics::new();
    let ttl = Duration::from_secs(60);
    let mut obs = Observer::new(ttl);
    let r = attempt(&idx, 1000, "192.168.1.2", 22);
    assert_eq!(r.dst.kind, Some(EndpointKind::Node));
    obs.observe(&m, &idx, &r, true, false);
    let t0 = Instant::now();
    obs.sweep(&m, &idx, t0);
    assert_eq!(
        sum_series(&m, "segwatch_violations_total", &["node/n2"]).1,
        1
    );
    idx.delete(ObjectKind::Node, None, "n2");
    idx.refresh();
    obs.sweep(&m, &idx, t0 + Duration::from_secs(1));
    assert_eq!(
        sum_series(&m, "segwatch_violations_total", &["node/n2"]).1,
        1,
        "gone, not for the TTL yet"
    );
    obs.sweep(&m, &idx, t0 + Duration::from_secs(62));
    assert_eq!(
        sum_series(&m, "segwatch_violations_total", &["node/n2"]).1,
        0,
        "a node gone longer than the TTL: its series are dropped"
    );
    assert_eq!(
        sum_series(&m, "segwatch_workload_flows_total", &["node/n2"]).1,
        0
    );
    assert_eq!(gauge(&m, "segwatch_violations_total"), 0);
    // The agent's own node never expires.
    let r = attempt(&idx, 1001, "192.168.1.1", 22);
    obs.observe(&m, &idx, &r, true, false);
    obs.sweep(&m, &idx, t0 + Duration::from_secs(200));
    obs.sweep(&m, &idx, t0 + Duration::from_secs(400));
    assert_eq!(
        sum_series(&m, "segwatch_violations_total", &["node/n1"]).1,
        1
    );
}

#[test]
fn a_scan_is_counted_once_per_window_and_tagged_in_the_flow_log() {
    let idx = cluster(true);
    let m = Metrics::new();
    let now = Arc::new(std::sync::Mutex::new(Instant::now()));
    let clock_now = Arc::clone(&now);
    let clock: Clock = Arc::new(move || *clock_now.lock().expect("clock"));
    let mut cfg = ObserveConfig::new(Duration::from_secs(600));
    cfg.scan_ports = 10;
    cfg.scan_addresses = 5;
    cfg.scan_window = Duration::from_secs(60);
    let mut obs = Observer::with_config(cfg).with_clock(clock);
    let mut sport = 30_000u16;
    let mut scan_ports = |obs: &mut Observer, dst: &str, ports: std::ops::RangeInclusive<u16>| {
        let mut tagged = 0;
        for p in ports {
            sport += 1;
            let r = attempt(&idx, sport, dst, p);
            obs.observe(&m, &idx, &r, true, false);
            if obs.scan_of(&r) == Some(ScanKind::Ports) {
                tagged += 1;
            }
        }
        tagged
    };
    // Ten distinct ports: not a scan yet.
    assert_eq!(scan_ports(&mut obs, "192.168.1.1", 1..=10), 0);
    assert!(metric_line(&m, "segwatch_scans_total{").is_empty());
    // The eleventh and on: one scan, every connection from then tagged.
    assert_eq!(scan_ports(&mut obs, "192.168.1.1", 11..=500), 490);
    assert_eq!(
        metric_line(&m, "segwatch_scans_total{"),
        [
            r#"segwatch_scans_total{dst_namespace="",dst_workload="node/n1",kind="ports",src_namespace="shop",src_workload="Deployment/web"} 1"#
        ]
    );
    // Next window: counted again, once.
    *now.lock().expect("clock") += Duration::from_secs(61);
    assert_eq!(
        scan_ports(&mut obs, "192.168.1.1", 1..=500),
        490,
        "a new window starts counting from zero"
    );
    assert_eq!(
        sum_series(&m, "segwatch_scans_total", &["kind=\"ports\""]),
        (2, 1)
    );
    // An address sweep of failed connections in namespace api.
    for i in 0..20u8 {
        let r = attempt(&idx, 40 + u16::from(i), &format!("10.1.0.{}", 100 + i), 80);
        obs.observe(&m, &idx, &r, true, false);
    }
    assert_eq!(
        sum_series(&m, "segwatch_scans_total", &["kind=\"addresses\""]).0,
        1,
        "{:?}",
        metric_line(&m, "segwatch_scans_total{")
    );
    // Window state is dropped once the window is over.
    *now.lock().expect("clock") += Duration::from_secs(61);
    obs.sweep(&m, &idx, Instant::now());
    assert!(obs.scans.is_empty(), "closed windows are forgotten");
    // Flow log field.
    let mut r = attempt(&idx, 9, "192.168.1.1", 7);
    r.scan = Some(ScanKind::Ports);
    assert!(serde_json::to_string(&r)
        .expect("json")
        .contains(r#""scan":"ports""#));
}

#[test]
fn excluded_namespaces_keep_only_the_per_namespace_families() {
    let idx = cluster(true);
    let m = Metrics::new();
    let mut cfg = ObserveConfig::new(Duration::from_secs(600));
    cfg.exclude_namespaces.insert("shop".into());
    let mut obs = Observer::with_config(cfg);
    for p in 1..=200u16 {
        let r = attempt(&idx, p, "192.168.1.1", p);
        obs.observe(&m, &idx, &r, true, false);
    }
    assert!(metric_line(&m, "segwatch_violations_total{").is_empty());
    assert!(metric_line(&m, "segwatch_workload_flows_total{").is_empty());
    assert!(metric_line(&m, "segwatch_scans_total{").is_empty());
    assert_eq!(
        sum_series(&m, "segwatch_flows_total", &["src_namespace=\"shop\""]),
        (200, 1),
        "still counted per namespace"
    );
}

#[test]
fn workloads_named_per_run_fall_back_to_their_kind() {
    use crate::index::metric_workload;
    assert_eq!(metric_workload(Some("Deployment/web")), "Deployment/web");
    assert_eq!(metric_workload(Some("CronJob/backup")), "CronJob/backup");
    assert_eq!(metric_workload(Some("Job/migrate-x7k2p")), "Job");
    assert_eq!(metric_workload(Some("Workflow/build-81723")), "Workflow");
    assert_eq!(metric_workload(None), "bare-pod");
    assert_eq!(metric_workload(Some("odd")), "bare-pod");
}
