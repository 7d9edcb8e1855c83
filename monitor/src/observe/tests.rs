//! Metric bookkeeping over judged reports of the small cluster of the
//! judge's tests.

use super::*;
use crate::inventory::ObjectKind;
use crate::judge::tests::{cluster, report};
use crate::report::TcpState;

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
    obs.observe(&m, &host, true, false);
    obs.observe(&m, &host, false, false);
    let mut meta = report(
        "10.1.0.5",
        2,
        "169.254.169.254",
        Some(80),
        "TCP",
        Some(TcpState::Established),
    );
    idx.judge(&mut meta);
    assert!(obs.announce(&m, &meta));
    obs.observe(&m, &meta, true, true);
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
    obs.observe(&m, &c, true, false);
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
    obs.observe(&m, &c2, false, false);
    obs.observe(&m, &c2, false, false);
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
    obs.observe(&m, &u, true, false);
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
    obs.observe(&m, &r, true, false);
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
    assert!(obs.announce(&m, &r));
    obs.observe(&m, &r, true, true);
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
    obs.observe(&m, &web, true, false);
    assert_eq!(metric_line(&m, "segwatch_violations_total{").len(), 1);
}
