//! The daemon's judge over a two-node cluster: who reports, Services
//! resolved through (a stand-in for) conntrack, late identity, bounds.

use super::*;
use crate::conntrack::{CtError, Entry, Lookup, Tuple};
use crate::daemon::Judge as _;
use crate::flows::ConnKey;
use crate::index::IndexConfig;
use crate::inventory::parse_str;
use crate::report::Counts;
use std::path::Path;
use std::sync::RwLock;

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: Namespace, metadata: {name: pay}}
- {apiVersion: v1, kind: Namespace, metadata: {name: segwatch}}
- {apiVersion: v1, kind: Node, metadata: {name: n1}, spec: {podCIDRs: [10.1.1.0/24]}, status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}}
- {apiVersion: v1, kind: Node, metadata: {name: n2}, spec: {podCIDRs: [10.1.2.0/24]}, status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: agent-1, namespace: segwatch, labels: {app.kubernetes.io/name: segwatch}}, spec: {nodeName: n1, hostNetwork: true, containers: []}, status: {phase: Running, podIP: 192.168.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: agent-2, namespace: segwatch, labels: {app.kubernetes.io/name: segwatch}}, spec: {nodeName: n2, hostNetwork: true, containers: []}, status: {phase: Running, podIP: 192.168.0.2}}
- {apiVersion: v1, kind: Pod, metadata: {name: web, namespace: shop, labels: {app: web}}, spec: {nodeName: n1, containers: []}, status: {phase: Running, podIP: 10.1.1.5}}
- {apiVersion: v1, kind: Pod, metadata: {name: db-1, namespace: pay, labels: {app: db}}, spec: {nodeName: n1, containers: []}, status: {phase: Running, podIP: 10.1.1.7}}
- {apiVersion: v1, kind: Pod, metadata: {name: db-2, namespace: pay, labels: {app: db}}, spec: {nodeName: n2, containers: []}, status: {phase: Running, podIP: 10.1.2.7}}
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: pay}
  spec: {clusterIP: 10.96.0.10, selector: {app: db}, ports: [{port: 80, targetPort: 5432, protocol: TCP}]}
"#;

/// Conntrack stand-in: entries match either direction, like the kernel's
/// hash.
#[derive(Clone, Default)]
struct Table(Arc<std::sync::Mutex<Vec<Entry>>>);

impl Lookup for Table {
    fn get(&mut self, tuple: &Tuple) -> Result<Option<Entry>, CtError> {
        Ok(self
            .0
            .lock()
            .expect("table lock")
            .iter()
            .find(|e| e.orig == *tuple || e.reply == *tuple)
            .copied())
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn tuple(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
    Tuple {
        src: ip(src),
        dst: ip(dst),
        sport,
        dport,
        proto: 6,
    }
}

fn index_of(node: &str, text: &str) -> SharedIndex {
    let mut idx = ClusterIndex::new(IndexConfig {
        node_name: node.into(),
        agent_selector: Some([("app.kubernetes.io/name".to_owned(), "segwatch".to_owned())].into()),
        ..Default::default()
    });
    idx.reset(
        parse_str(Path::new("cluster.yaml"), text)
            .expect("cluster parses")
            .objects,
    );
    Arc::new(RwLock::new(idx))
}

fn judge_on(node: &str, table: &Table) -> (ClusterJudge, SharedIndex) {
    let index = index_of(node, CLUSTER);
    let j = ClusterJudge::new(
        index.clone(),
        ReadyFlag::default(),
        Duration::from_secs(600),
    )
    .with_conntrack(Box::new(table.clone()))
    .with_identity_wait(Duration::from_secs(3600));
    (j, index)
}

/// A report as the daemon builds it: addresses, counts, a connection id.
fn raw(id: &str, src: &str, sport: u16, dst: &str, dport: u16, ended: bool) -> FlowReport {
    FlowReport {
        protocol: "TCP".into(),
        src: Endpoint::bare(ip(src), Some(sport)),
        dst: Endpoint::bare(ip(dst), Some(dport)),
        packets: Counts {
            sent: 4,
            received: 3,
        },
        bytes: Counts {
            sent: 400,
            received: 300,
        },
        tcp: Some(crate::report::TcpInfo {
            flags: vec!["SYN".into(), "ACK".into(), "FIN".into()],
            state: TcpState::Closed,
        }),
        ended,
        connection: Some(id.into()),
        conn: Some(ConnKey {
            addr_lo: [u32::from(sport), 0, 0, 0],
            addr_hi: [u32::from(dport), 0, 0, 0],
            port_lo: sport,
            port_hi: dport,
            proto: 6,
            ip_version: 4,
        }),
        ..Default::default()
    }
}

fn run(j: &mut ClusterJudge, m: &Metrics, mut r: FlowReport) -> Option<FlowReport> {
    j.judge(&mut r);
    j.observe(m, r, true)
}

fn metric(m: &Metrics, series: &str) -> u64 {
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn sum(m: &Metrics, prefix: &str) -> u64 {
    m.render()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_service_connection_is_one_report_naming_the_backend_the_kernel_chose() {
    let table = Table::default();
    // web (n1) → 10.96.0.10:80, DNAT'd to db-1 (n1) :5432.
    table.0.lock().expect("lock").push(Entry {
        orig: tuple("10.1.1.5", 40000, "10.96.0.10", 80),
        reply: tuple("10.1.1.7", 5432, "10.1.1.5", 40000),
    });
    let (mut j, _) = judge_on("n1", &table);
    let m = Metrics::new();
    let client_view = run(
        &mut j,
        &m,
        raw("c1", "10.1.1.5", 40000, "10.96.0.10", 80, true),
    )
    .expect("the client's veth copy is reported");
    assert_eq!(client_view.dst.ip, ip("10.1.1.7"), "dst is the backend");
    assert_eq!(
        client_view.dst.port,
        Some(5432),
        "dst.port is the targetPort"
    );
    assert_eq!(client_view.dst.pod.as_deref(), Some("db-1"));
    assert_eq!(client_view.dst.kind, Some(EndpointKind::Pod));
    let svc = client_view.dst.service.clone().expect("dst.service");
    assert_eq!(
        (&*svc.namespace, &*svc.name, svc.ip, svc.port),
        ("pay", "db", Some(ip("10.96.0.10")), Some(80))
    );
    assert_eq!(client_view.verdict, Some(Verdict::Violation));
    assert!(
        client_view.violations[0].reason.contains("5432"),
        "judged on the backend port: {:?}",
        client_view.violations
    );
    assert_eq!(client_view.seq, Some(1));
    // The copy after DNAT on the backend's veth (same node) is not a
    // second report.
    assert!(
        run(
            &mut j,
            &m,
            raw("c2", "10.1.1.5", 40000, "10.1.1.7", 5432, true)
        )
        .is_none(),
        "the post-DNAT copy is the same connection"
    );
    assert_eq!(
        metric(
            &m,
            r#"segwatch_flows_not_reported_total{reason="nat_copy"}"#
        ),
        1
    );
    assert_eq!(
        metric(
            &m,
            r#"segwatch_flows_total{dst_namespace="pay",protocol="TCP",src_namespace="shop",verdict="violation"}"#
        ),
        1,
        "one connection, counted once"
    );
    assert_eq!(
        metric(
            &m,
            r#"segwatch_violations_total{dst_namespace="pay",dst_port="5432",dst_workload="bare-pod",kind="cross_namespace",protocol="TCP",src_namespace="shop",src_service_account="default",src_workload="bare-pod"}"#
        ),
        1
    );
    assert_eq!(j.tracked(), 0, "ended connections leave no state");
}

#[test]
fn the_backend_node_leaves_a_service_connection_to_the_clients_node() {
    let table = Table::default();
    // On n2 conntrack saw no NAT: web (n1) → db-2 (n2) :5432.
    table.0.lock().expect("lock").push(Entry {
        orig: tuple("10.1.1.5", 40001, "10.1.2.7", 5432),
        reply: tuple("10.1.2.7", 5432, "10.1.1.5", 40001),
    });
    let (mut j, _) = judge_on("n2", &table);
    let m = Metrics::new();
    assert!(run(
        &mut j,
        &m,
        raw("c3", "10.1.1.5", 40001, "10.1.2.7", 5432, true)
    )
    .is_none());
    assert_eq!(
        metric(
            &m,
            r#"segwatch_flows_not_reported_total{reason="opener_node"}"#
        ),
        1
    );
    assert_eq!(
        metric(&m, "segwatch_flows_total{"),
        0,
        "nothing counted by the node that does not report"
    );
}

#[test]
fn no_dnat_visible_reports_the_service_without_backend_and_counts_it() {
    let (mut j, _) = judge_on("n1", &Table::default());
    let m = Metrics::new();
    let r = run(
        &mut j,
        &m,
        raw("c4", "10.1.1.5", 40002, "10.96.0.10", 80, true),
    )
    .expect("reported");
    assert_eq!(r.dst.kind, Some(EndpointKind::Service));
    assert_eq!(r.dst.pod, None, "no backend guessed");
    assert_eq!(
        r.dst.service.as_ref().map(|s| s.id()),
        Some("pay/db".into())
    );
    assert_eq!(
        metric(&m, "segwatch_service_flows_without_backend_total"),
        1
    );
}

#[test]
fn a_flow_from_a_pod_the_index_does_not_know_yet_waits_and_is_judged_once_known() {
    let (mut j, index) = judge_on("n1", &Table::default());
    let m = Metrics::new();
    let open = |_: &ConnKey| true;
    assert!(
        run(
            &mut j,
            &m,
            raw("c5", "10.1.1.9", 40003, "10.1.1.7", 5432, true)
        )
        .is_none(),
        "held: its source is not named yet"
    );
    assert!(j.after_sweep(&m, &open, false).is_empty(), "still unknown");
    assert_eq!(metric(&m, "segwatch_flows_awaiting_identity"), 1);
    let late = CLUSTER.to_owned()
        + "- {apiVersion: v1, kind: Pod, metadata: {name: late, namespace: shop}, spec: {nodeName: n1, containers: []}, status: {phase: Running, podIP: 10.1.1.9}}\n";
    let fresh = index_of("n1", &late);
    let objects = std::mem::take(&mut *fresh.write().expect("lock"));
    *index.write().expect("lock") = objects;
    let out = j.after_sweep(&m, &open, false);
    assert_eq!(out.len(), 1, "released once the index names the pod");
    assert_eq!(out[0].src.pod.as_deref(), Some("late"));
    assert_eq!(out[0].verdict, Some(Verdict::Violation));
    assert_eq!(
        metric(
            &m,
            r#"segwatch_violations_total{dst_namespace="pay",dst_port="5432",dst_workload="bare-pod",kind="cross_namespace",protocol="TCP",src_namespace="shop",src_service_account="default",src_workload="bare-pod"}"#
        ),
        1,
        "counted when judged, once"
    );
    assert_eq!(
        metric(
            &m,
            r#"segwatch_flows_identity_late_total{outcome="attributed"}"#
        ),
        1
    );
    assert!(j.after_sweep(&m, &open, false).is_empty(), "nothing twice");
    assert_eq!(metric(&m, "segwatch_flows_awaiting_identity"), 0);
}

#[test]
fn an_unknown_pod_reaching_the_metadata_api_is_a_violation_at_once() {
    let (mut j, _) = judge_on("n1", &Table::default());
    let m = Metrics::new();
    let mut r = raw("c6", "10.1.1.9", 40004, "169.254.169.254", 80, true);
    j.judge(&mut r);
    assert_eq!(r.verdict, Some(Verdict::Violation));
    assert_eq!(r.violations[0].kind, ViolationKind::MetadataApi);
    assert!(j.observe(&m, r, true).is_none(), "held for the identity");
    assert_eq!(
        metric(
            &m,
            r#"segwatch_violations_total{dst_namespace="",dst_port="80",dst_workload="metadata-api",kind="metadata_api",protocol="TCP",src_namespace="",src_service_account="",src_workload="unknown"}"#
        ),
        1,
        "the alert does not wait for the identity"
    );
    // Never learned: written unjudged-for-identity at shutdown, violation
    // kept, not counted twice.
    let out = j.after_sweep(&m, &|_: &ConnKey| true, true);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].verdict, Some(Verdict::Violation));
    assert_eq!(sum(&m, "segwatch_violations_total{"), 1, "counted once");
}

#[test]
fn state_of_connections_that_leave_the_kernel_table_is_dropped() {
    let (mut j, _) = judge_on("n1", &Table::default());
    let m = Metrics::new();
    for i in 0..100u16 {
        let r = raw(
            &format!("x{i}"),
            "10.1.1.5",
            41000 + i,
            "10.1.1.7",
            5432,
            false,
        );
        assert!(run(&mut j, &m, r).is_some());
    }
    assert_eq!(j.tracked(), 100, "running connections keep their state");
    // Gone from the kernel table without a final report (interface
    // deleted): one sweep to notice no report came, then dropped.
    let none = |_: &ConnKey| false;
    let _ = j.after_sweep(&m, &none, false);
    let _ = j.after_sweep(&m, &none, false);
    assert_eq!(j.tracked(), 0);
    assert_eq!(j.observer.remembered(), 0);
}
