//! `segwatch suggest --format segmentation-policy` (issue #17, learned
//! baseline): flows judged on a small cluster are written as a flow log,
//! the command writes the SegmentationPolicy, which is loaded back through
//! the `--policy` loader; judged with it alone, every observed connection
//! is allowed and every edge not observed (a reversed edge, a new port, a
//! new namespace pair, node, metadata API, another outside address) is a
//! violation of the kind its section names.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use segwatch::index::{ClusterIndex, IndexConfig};
use segwatch::inventory::{self, Object};
use segwatch::report::{Endpoint, FlowReport, TcpInfo, TcpState, Verdict, ViolationKind};

const INVENTORY: &str = r"apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: Namespace, metadata: {name: api}}
- {apiVersion: v1, kind: Namespace, metadata: {name: kube-system}}
- apiVersion: v1
  kind: Pod
  metadata: {name: web-0, namespace: shop, labels: {app: web},
             ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: web, uid: u1, controller: true}]}
  spec: {serviceAccountName: web, nodeName: n1, containers: []}
  status: {phase: Running, podIPs: [{ip: 10.1.0.5}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: db-0, namespace: shop, labels: {app: db},
             ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: u2, controller: true}]}
  spec: {serviceAccountName: db, nodeName: n1, containers: []}
  status: {phase: Running, podIPs: [{ip: 10.1.0.6}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: api-0, namespace: api, labels: {app: api},
             ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: api, uid: u3, controller: true}]}
  spec: {serviceAccountName: api, nodeName: n1, containers: []}
  status: {phase: Running, podIPs: [{ip: 10.1.0.7}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: coredns-0, namespace: kube-system, labels: {k8s-app: kube-dns},
             ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: coredns, uid: u4, controller: true}]}
  spec: {serviceAccountName: coredns, nodeName: n1, containers: []}
  status: {phase: Running, podIPs: [{ip: 10.1.0.53}]}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  spec: {podCIDRs: [10.1.0.0/24]}
  status: {addresses: [{type: InternalIP, address: 192.168.1.1}]}
";

/// What the cluster had in force while the flows were recorded: every
/// edge of the test allowed (so none is left out as a violation).
const OPEN_POLICY: &str = r#"apiVersion: segwatch.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: open}
spec:
  crossNamespace: {allow: [{from: {namespace: "*"}, to: {namespace: "*"}}]}
  hostAccess: {allow: [{}]}
  external: {allow: [{to: {cidr: 0.0.0.0/0}}]}
"#;

fn index(
    objects: Vec<Object>,
    policies: Vec<Arc<segwatch::segpolicy::CompiledDoc>>,
) -> ClusterIndex {
    let mut idx = ClusterIndex::new(IndexConfig {
        node_name: "n1".into(),
        static_policies: policies,
        ..Default::default()
    });
    idx.reset(objects);
    idx.refresh();
    idx
}

fn conn(idx: &ClusterIndex, sport: u16, dst: &str, port: u16, proto: &str) -> FlowReport {
    let t = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let mut r = FlowReport {
        time: t,
        start: t,
        end: t,
        protocol: proto.into(),
        ip_version: 4,
        src: Endpoint::bare("10.1.0.5".parse().expect("ip"), Some(sport)),
        dst: Endpoint::bare(dst.parse().expect("ip"), Some(port)),
        tcp: (proto == "TCP").then(|| TcpInfo {
            flags: vec!["SYN".into(), "ACK".into(), "FIN".into()],
            state: TcpState::Closed,
        }),
        ..FlowReport::default()
    };
    idx.judge(&mut r);
    r
}

fn from(mut r: FlowReport, idx: &ClusterIndex, src: &str) -> FlowReport {
    r.src.ip = src.parse().expect("ip");
    idx.judge(&mut r);
    r
}

#[test]
fn learned_baseline_allows_what_was_observed_and_flags_every_new_edge() {
    let dir = std::env::temp_dir().join(format!("segwatch-baseline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let inv_path = dir.join("inventory.yaml");
    std::fs::write(&inv_path, INVENTORY).expect("write inventory");
    let objects = inventory::parse_str(Path::new("inventory.yaml"), INVENTORY)
        .expect("inventory parses")
        .objects;
    let open = segwatch::segpolicy::parse_policy_str(Path::new("open.yaml"), OPEN_POLICY)
        .expect("open policy parses");
    let recorded = index(objects.clone(), open);

    // Observed: web -> db:5432 (shop), web -> api:8080 (cross), web -> DNS,
    // web -> the node's kubelet, web -> one outside address; db -> web:80.
    let observed = vec![
        conn(&recorded, 40001, "10.1.0.6", 5432, "TCP"),
        conn(&recorded, 40002, "10.1.0.7", 8080, "TCP"),
        conn(&recorded, 40003, "10.1.0.53", 53, "UDP"),
        conn(&recorded, 40004, "192.168.1.1", 10250, "TCP"),
        conn(&recorded, 40005, "203.0.113.7", 443, "TCP"),
        from(
            conn(&recorded, 40006, "10.1.0.5", 80, "TCP"),
            &recorded,
            "10.1.0.6",
        ),
    ];
    for r in &observed {
        assert_eq!(
            r.verdict,
            Some(Verdict::Allowed),
            "recorded as allowed: {r:?}"
        );
    }
    let flows = dir.join("flows.jsonl");
    let lines: Vec<String> = observed
        .iter()
        .map(|r| serde_json::to_string(r).expect("report serialises"))
        .collect();
    std::fs::write(&flows, lines.join("\n") + "\n").expect("write flows");

    let out_dir = dir.join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_segwatch"))
        .args(["suggest", "--format", "segmentation-policy", "--flows"])
        .arg(&flows)
        .arg("--inventory")
        .arg(&inv_path)
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .expect("segwatch runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "suggest fails: {stderr}");
    assert!(
        stderr.contains("replay: 6 observed connection(s) judged with the learned policy: 6 allowed, 0 violation(s), 0 unjudged: PASS"),
        "{stderr}"
    );
    let file = out_dir.join("segmentation-policy.yaml");
    let text = std::fs::read_to_string(&file).expect("policy written");
    assert!(
        text.contains("apiVersion: segwatch.dev/v1alpha1")
            && text.contains("kind: SegmentationPolicy"),
        "{text}"
    );

    // Loaded back the way `segwatch run --policy` loads it.
    let docs = segwatch::segpolicy::load_policy_paths(std::slice::from_ref(&file))
        .unwrap_or_else(|e| panic!("the learned policy loads: {e}\n{text}"));
    assert_eq!(docs.len(), 1);
    let learned = index(objects, docs);
    for r in &observed {
        let mut again = r.clone();
        learned.judge(&mut again);
        assert_eq!(
            again.verdict,
            Some(Verdict::Allowed),
            "observed edge {} -> {}:{:?} must pass: {:?}\n{text}",
            r.src.ip,
            r.dst.ip,
            r.dst.port,
            again.violations
        );
    }
    let new_edges = [
        // web -> db on a port not seen.
        (
            conn(&learned, 41001, "10.1.0.6", 5433, "TCP"),
            ViolationKind::WithinNamespace,
        ),
        // db -> web on the port web -> db used (the reverse edge).
        (
            from(
                conn(&learned, 41002, "10.1.0.5", 5432, "TCP"),
                &learned,
                "10.1.0.6",
            ),
            ViolationKind::WithinNamespace,
        ),
        // api -> db: a namespace pair never seen.
        (
            from(
                conn(&learned, 41003, "10.1.0.6", 5432, "TCP"),
                &learned,
                "10.1.0.7",
            ),
            ViolationKind::CrossNamespace,
        ),
        // web -> api on another port.
        (
            conn(&learned, 41004, "10.1.0.7", 9090, "TCP"),
            ViolationKind::CrossNamespace,
        ),
        (
            conn(&learned, 41005, "192.168.1.1", 22, "TCP"),
            ViolationKind::HostAccess,
        ),
        (
            conn(&learned, 41006, "169.254.169.254", 80, "TCP"),
            ViolationKind::MetadataApi,
        ),
        (
            conn(&learned, 41007, "203.0.113.8", 443, "TCP"),
            ViolationKind::External,
        ),
    ];
    for (r, kind) in &new_edges {
        assert_eq!(
            (r.verdict, r.violations.first().map(|v| v.kind)),
            (Some(Verdict::Violation), Some(*kind)),
            "new edge {} -> {}:{:?} must be a violation: {:?}\n{text}",
            r.src.ip,
            r.dst.ip,
            r.dst.port,
            r.violations
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
