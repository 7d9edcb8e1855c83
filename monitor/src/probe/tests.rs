//! The probe's judgement and plan over a small cluster given as an inventory.

use std::path::Path;

use super::expect::Judge;
use super::model::{Expected, Outcome, Status};
use super::plan::{plan, PlanInput};
use super::targets::{parse_targets, Target, TargetKind, Transport};
use super::*;
use crate::index::{ClusterIndex, IndexConfig};
use crate::inventory::parse_str;

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: team-a}}
- {apiVersion: v1, kind: Namespace, metadata: {name: team-b}}
- {apiVersion: v1, kind: Namespace, metadata: {name: kube-system}}
- apiVersion: v1
  kind: Pod
  metadata: {name: probe-a, namespace: team-a, labels: {segwatch.dev/probe: "true"}}
  spec: {serviceAccountName: default, nodeName: n1, containers: []}
  status: {phase: Running, podIP: 10.1.0.5, podIPs: [{ip: 10.1.0.5}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: probe-b, namespace: team-b, labels: {segwatch.dev/probe: "true"}}
  spec: {serviceAccountName: default, nodeName: n1, containers: []}
  status: {phase: Running, podIP: 10.1.0.6, podIPs: [{ip: 10.1.0.6}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: api-0, namespace: team-b, labels: {app: api}}
  spec: {nodeName: n1, containers: [{name: c, image: x, ports: [{containerPort: 8080}, {containerPort: 9000, protocol: UDP}, {containerPort: 7000, protocol: SCTP}]}]}
  status: {phase: Running, podIP: 10.1.0.7, podIPs: [{ip: 10.1.0.7}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: db-0, namespace: team-b, labels: {app: db}}
  spec: {nodeName: n1, containers: [{name: c, image: x, ports: [{containerPort: 5432}]}]}
  status: {phase: Running, podIP: 10.1.0.8, podIPs: [{ip: 10.1.0.8}]}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: team-b}
  spec: {type: NodePort, clusterIP: 10.96.0.7, selector: {app: api}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  spec: {podCIDRs: [10.1.0.0/24]}
  status: {addresses: [{type: InternalIP, address: 192.168.1.1}, {type: Hostname, address: n1}]}
- apiVersion: v1
  kind: Node
  metadata: {name: n2}
  status: {addresses: [{type: InternalIP, address: 192.168.1.2}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: db-only-from-api, namespace: team-b}
  spec:
    podSelector: {matchLabels: {app: db}}
    policyTypes: [Ingress]
    ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: no-metadata, namespace: team-b}
  spec:
    podSelector: {}
    policyTypes: [Egress]
    egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]}, {to: [{namespaceSelector: {}}]}]
- apiVersion: segwatch.dev/v1alpha1
  kind: SegmentationPolicy
  metadata: {name: lab}
  spec:
    crossNamespace:
      allow:
        - {name: a-to-api, from: {namespace: team-a}, to: {namespace: team-b, podSelector: {matchLabels: {app: api}}, ports: ["8080/TCP"]}}
    hostAccess:
      allow:
        - {from: {namespace: team-a}, ports: ["22/TCP"]}
"#;

fn index() -> ClusterIndex {
    let mut idx = ClusterIndex::new(IndexConfig {
        node_name: "n1".into(),
        ..Default::default()
    });
    idx.reset(
        parse_str(Path::new("cluster.yaml"), CLUSTER)
            .expect("cluster parses")
            .objects,
    );
    idx.refresh();
    idx
}

fn t(addr: &str, port: u16, kind: TargetKind) -> Target {
    Target {
        address: addr.parse().expect("ip"),
        port,
        transport: Transport::Tcp,
        kind,
        name: "x".into(),
    }
}

#[test]
fn expectations_follow_the_segmentation_policy_and_the_network_policies() {
    let idx = index();
    let a = idx.pod("team-a", "probe-a").expect("probe-a indexed");
    let b = idx.pod("team-b", "probe-b").expect("probe-b indexed");
    let ja = Judge::new(&idx, Some(a), "team-a/probe-a".into(), a.ips.clone());
    let jb = Judge::new(&idx, Some(b), "team-b/probe-b".into(), b.ips.clone());
    use Expected::{Blocked as B, Reachable as R, Unknown as U};
    let cases: &[(&Judge<'_>, Target, Expected, &str)] = &[
        // hostAccess allows team-a 22/TCP only; the kubelet is forbidden.
        (
            &ja,
            t("192.168.1.1", 22, TargetKind::Node),
            R,
            "hostAccess 22",
        ),
        (&ja, t("192.168.1.1", 10250, TargetKind::Node), B, "kubelet"),
        (
            &jb,
            t("192.168.1.1", 22, TargetKind::Node),
            B,
            "team-b has no host access",
        ),
        (
            &ja,
            t("192.168.1.2", 2379, TargetKind::Node),
            B,
            "another node's etcd",
        ),
        // Metadata: forbidden by the whitelist (no metadataApi section);
        // EKS Pod Identity is meant for every pod.
        (
            &ja,
            t("169.254.169.254", 80, TargetKind::Metadata),
            B,
            "IMDS",
        ),
        (
            &ja,
            t("168.63.129.16", 80, TargetKind::Metadata),
            B,
            "WireServer judged as metadata",
        ),
        (
            &ja,
            t("169.254.170.23", 80, TargetKind::Metadata),
            R,
            "EKS Pod Identity",
        ),
        // team-b's egress policy excepts IMDS, so Pod Identity is allowed.
        (
            &jb,
            t("169.254.170.23", 80, TargetKind::Metadata),
            R,
            "Pod Identity for team-b",
        ),
        // Cross-namespace: a-to-api allows 8080 to app=api only.
        (&ja, t("10.1.0.7", 8080, TargetKind::Pod), R, "whitelisted"),
        (&ja, t("10.1.0.7", 9999, TargetKind::Pod), B, "other port"),
        (
            &ja,
            t("10.1.0.8", 5432, TargetKind::Pod),
            B,
            "db: whitelist and netpol",
        ),
        // Inside team-b (not micro-segmented): the NetworkPolicy decides.
        (
            &jb,
            t("10.1.0.8", 5432, TargetKind::Pod),
            B,
            "db-only-from-api",
        ),
        (
            &jb,
            t("10.1.0.7", 8080, TargetKind::Pod),
            R,
            "same namespace, open",
        ),
        // An address nothing accounts for inside the pod network.
        (
            &ja,
            t("10.1.0.99", 80, TargetKind::Listed),
            U,
            "unknown address",
        ),
    ];
    for (j, target, want, what) in cases {
        let e = j.expect(target);
        assert_eq!(
            e.expected,
            *want,
            "{what}: {} should be expected {want:?} ({})",
            target.spec(),
            e.why
        );
    }
    // The reasons say which policy decides.
    let e = jb.expect(&t("10.1.0.8", 5432, TargetKind::Pod));
    assert!(e.why.contains("team-b/db-only-from-api"), "{}", e.why);
    let np = e.netpol.expect("a pod target has a NetworkPolicy verdict");
    assert!(!np.allowed && np.isolated);
    let e = ja.expect(&t("192.168.1.1", 10250, TargetKind::Node));
    assert!(
        e.why
            .contains("host access is not in hostAccess of SegmentationPolicy lab"),
        "{}",
        e.why
    );
    let e = jb.expect(&t("169.254.169.254", 80, TargetKind::Metadata));
    assert_eq!(e.expected, B);
    assert_eq!(
        e.netpol.map(|n| n.allowed),
        Some(false),
        "the egress policy excepts IMDS"
    );
}

#[test]
fn an_unknown_own_pod_judges_nothing() {
    let idx = index();
    let j = Judge::new(
        &idx,
        None,
        "team-x/ghost".into(),
        vec!["10.1.0.50".parse().expect("ip")],
    );
    let e = j.expect(&t("192.168.1.1", 10250, TargetKind::Node));
    assert_eq!(e.expected, Expected::Unknown);
    assert!(
        e.why.contains("team-x/ghost is not in the cluster view"),
        "{}",
        e.why
    );
    let r = judged_result(
        &j,
        "team-x/ghost",
        &t("192.168.1.1", 10250, TargetKind::Node),
        Status::Reachable,
        None,
    );
    assert_eq!(r.outcome, Outcome::Unjudged, "never allowed by default");
}

#[test]
fn a_reachable_forbidden_target_is_a_violation_in_words() {
    let idx = index();
    let a = idx.pod("team-a", "probe-a").expect("probe-a indexed");
    let j = Judge::new(&idx, Some(a), "team-a/probe-a".into(), a.ips.clone());
    let mut target = t("192.168.1.1", 10250, TargetKind::Node);
    target.name = "node/n1 kubelet API".into();
    let r = judged_result(&j, "team-a/probe-a", &target, Status::Reachable, None);
    assert_eq!(r.outcome, Outcome::Violation);
    let f = r.finding.expect("a violation has a finding");
    assert!(
        f.starts_with("expected blocked, was reachable: team-a/probe-a connected to 192.168.1.1:10250/tcp (node/n1 kubelet API); pod in team-a -> node n1 on 10250/TCP"),
        "{f}"
    );
    let r = judged_result(&j, "team-a/probe-a", &target, Status::Timeout, None);
    assert_eq!((r.outcome, r.finding), (Outcome::AsExpected, None));
}

#[test]
fn the_plan_covers_own_node_nodeports_metadata_listed_and_other_namespaces() {
    let objects = parse_str(Path::new("cluster.yaml"), CLUSTER)
        .expect("cluster parses")
        .objects;
    let (listed, errors) = parse_targets(Path::new("t.txt"), "10.9.9.9:443\n192.168.1.1:22\n");
    assert!(errors.is_empty());
    let host_ips = ["192.168.1.1".parse().expect("ip")];
    let targets = plan(PlanInput {
        objects: &objects,
        namespace: Some("team-a"),
        node: Some("n1"),
        host_ips: &host_ips,
        listed,
        sample: 5,
    });
    let specs: Vec<String> = targets.iter().map(|t| t.spec()).collect();
    let own: Vec<&str> = specs
        .iter()
        .filter(|s| s.starts_with("192.168.1.1:"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        own,
        [
            "192.168.1.1:10250/tcp",
            "192.168.1.1:10255/tcp",
            "192.168.1.1:2379/tcp",
            "192.168.1.1:2380/tcp",
            "192.168.1.1:22/tcp",
            "192.168.1.1:6443/tcp",
            "192.168.1.1:30080/tcp",
        ],
        "hostIP and the Node's InternalIP are one address, tried once"
    );
    assert_eq!(targets[6].name, "node/n1 NodePort of team-b/web");
    assert_eq!(
        specs
            .iter()
            .filter(|s| s.starts_with("192.168.1.2:"))
            .count(),
        7,
        "n2 sampled"
    );
    assert_eq!(
        specs
            .iter()
            .filter(|s| s.ends_with(":80/tcp") && !s.starts_with("10."))
            .count(),
        6,
        "metadata endpoints"
    );
    assert!(
        specs.contains(&"10.9.9.9:443/tcp".to_owned()),
        "listed target kept"
    );
    // Other namespaces only: team-b's pods on declared ports (SCTP skipped),
    // the probe-b pod has none; the Service on its port.
    let pods: Vec<&str> = targets
        .iter()
        .filter(|t| t.kind == TargetKind::Pod)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(pods, ["team-b/api-0", "team-b/api-0", "team-b/db-0"]);
    assert!(specs.contains(&"10.1.0.7:9000/udp".to_owned()));
    assert!(
        !specs.iter().any(|s| s.contains(":7000/")),
        "SCTP is not probed"
    );
    assert!(specs.contains(&"10.96.0.7:80/tcp".to_owned()));
    assert_eq!(targets.len(), 14 + 6 + 1 + 3 + 1);
}
