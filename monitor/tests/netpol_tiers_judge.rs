//! The tiers in the daemon's path: the cluster index holds cluster-scoped
//! policies (as the watchers and inventory files deliver them), the judge
//! fills the flow report's `netpol` field with `decided_by`, and a
//! connection established although an Admin-tier Deny denies it is a
//! `netpol_bypass` naming that rule. Deleting the policy takes it back.

use std::path::Path;

use segwatch::index::{ClusterIndex, IndexConfig};
use segwatch::inventory::{parse_str, ObjectKind};
use segwatch::report::{Counts, Endpoint, FlowReport, TcpInfo, TcpState, Verdict, ViolationKind};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {tenant: a}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: rival, labels: {tenant: b}}}
- apiVersion: v1
  kind: Pod
  metadata: {name: web-0, namespace: shop, labels: {app: web}}
  spec: {serviceAccountName: web, nodeName: n1, containers: []}
  status: {phase: Running, podIPs: [{ip: 10.1.0.5}, {ip: "fd00:1::5"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: spy-0, namespace: rival, labels: {app: spy}}
  spec: {serviceAccountName: spy, nodeName: n1, containers: []}
  status: {phase: Running, podIPs: [{ip: 10.1.0.9}, {ip: "fd00:1::9"}]}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  spec: {podCIDRs: [10.1.0.0/24, "fd00:1::/64"]}
  status: {addresses: [{type: InternalIP, address: 192.168.1.1}]}
"#;

const TENANTS: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: tenant-isolation}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {tenant: a}}}
  ingress:
  - name: no-other-tenants
    action: Deny
    from: [{namespaces: {matchExpressions: [{key: tenant, operator: NotIn, values: [a]}]}}]
"#;

fn report(src: &str, dst: &str, state: TcpState) -> FlowReport {
    FlowReport {
        protocol: "TCP".into(),
        ip_version: if src.contains(':') { 6 } else { 4 },
        src: Endpoint::bare(src.parse().expect("ip"), Some(40000)),
        dst: Endpoint::bare(dst.parse().expect("ip"), Some(8080)),
        packets: Counts {
            sent: 3,
            received: 2,
        },
        bytes: Counts {
            sent: 300,
            received: 200,
        },
        tcp: Some(TcpInfo {
            flags: vec!["SYN".into(), "ACK".into()],
            state,
        }),
        ..Default::default()
    }
}

#[test]
fn admin_deny_established_is_a_bypass_naming_the_rule() {
    let mut idx = ClusterIndex::new(IndexConfig {
        node_name: "n1".into(),
        ..Default::default()
    });
    let mut objects = parse_str(Path::new("cluster.yaml"), CLUSTER)
        .expect("cluster parses")
        .objects;
    let cnp = parse_str(Path::new("cnp.yaml"), TENANTS).expect("policy parses");
    assert!(
        cnp.warnings.is_empty(),
        "the kind is read: {:?}",
        cnp.warnings
    );
    assert_eq!(cnp.objects[0].kind(), ObjectKind::ClusterNetworkPolicy);
    objects.extend(cnp.objects);
    idx.reset(objects);
    idx.refresh();

    for (src, dst) in [("10.1.0.9", "10.1.0.5"), ("fd00:1::9", "fd00:1::5")] {
        let mut r = report(src, dst, TcpState::Established);
        idx.judge(&mut r);
        let np = r
            .netpol
            .as_ref()
            .expect("pod to pod has a NetworkPolicy decision");
        assert!(!np.allowed, "{src} -> {dst}: the Admin Deny denies it");
        let by = np.decided_by.as_ref().expect("decided_by is filled");
        assert_eq!(
            (
                &*by.kind,
                &*by.name,
                &*by.tier,
                by.rule,
                &*by.action,
                &*by.direction
            ),
            (
                "ClusterNetworkPolicy",
                "tenant-isolation",
                "Admin",
                Some(0),
                "Deny",
                "ingress"
            )
        );
        let bypass: Vec<_> = r
            .violations
            .iter()
            .filter(|v| v.kind == ViolationKind::NetpolBypass)
            .collect();
        assert_eq!(bypass.len(), 1, "{:?}", r.violations);
        assert_eq!(bypass[0].rule, "ClusterNetworkPolicy/tenant-isolation");
        assert!(
            bypass[0].reason.contains("Admin tier")
                && bypass[0]
                    .reason
                    .contains("rule 0 (\"no-other-tenants\"), action Deny"),
            "{}",
            bypass[0].reason
        );
        assert_eq!(r.verdict, Some(Verdict::Violation));
        let json = serde_json::to_value(&r).expect("serialises");
        assert_eq!(json["netpol"]["decided_by"]["name"], "tenant-isolation");
        assert_eq!(json["netpol"]["decided_by"]["rule"], 0);
    }

    // Attempted only: enforcement worked, no bypass.
    let mut r = report("10.1.0.9", "10.1.0.5", TcpState::Attempted);
    idx.judge(&mut r);
    assert!(!r
        .violations
        .iter()
        .any(|v| v.kind == ViolationKind::NetpolBypass));

    // The other way is not denied (rival is no subject): no decided_by.
    let mut r = report("10.1.0.5", "10.1.0.9", TcpState::Established);
    idx.judge(&mut r);
    let np = r.netpol.as_ref().expect("decision");
    assert!(np.allowed && np.decided_by.is_none(), "{np:?}");

    // A watcher's delete takes the policy back.
    idx.delete(ObjectKind::ClusterNetworkPolicy, None, "tenant-isolation");
    idx.refresh();
    let mut r = report("10.1.0.9", "10.1.0.5", TcpState::Established);
    idx.judge(&mut r);
    assert!(
        r.netpol.as_ref().is_some_and(|n| n.allowed),
        "{:?}",
        r.netpol
    );
    assert!(!r
        .violations
        .iter()
        .any(|v| v.kind == ViolationKind::NetpolBypass));
}
