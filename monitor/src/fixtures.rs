//! A small cluster (inventory + SegmentationPolicy) and flow reports over
//! it, shared by the tests of the judge and of the metric bookkeeping.
//! Test-only, and below both: it imports only the index, the inventory and
//! the report model.

use crate::index::{ClusterIndex, IndexConfig};
use crate::inventory::parse_str;
use crate::report::{Counts, Endpoint, FlowReport, TcpInfo, TcpState};
use std::net::IpAddr;
use std::path::Path;

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {tier: front}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: api}}
- {apiVersion: v1, kind: Namespace, metadata: {name: kube-system}}
- apiVersion: v1
  kind: Pod
  metadata:
    name: web-5c9f-abcde
    namespace: shop
    labels: {app: web, pod-template-hash: 5c9f}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5c9f, uid: u1, controller: true}]
  spec: {serviceAccountName: web, nodeName: n1, containers: []}
  status: {phase: Running, podIPs: [{ip: 10.1.0.5}, {ip: "fd00:1::5"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: backend-0, namespace: api, labels: {app: backend},
             ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: backend, uid: u2, controller: true}]}
  spec: {serviceAccountName: backend, nodeName: n1, containers: []}
  status: {phase: Running, podIPs: [{ip: 10.1.0.7}, {ip: "fd00:1::7"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: coredns-1, namespace: kube-system, labels: {k8s-app: kube-dns}}
  spec: {serviceAccountName: coredns, nodeName: n1, containers: []}
  status: {phase: Running, podIPs: [{ip: 10.1.0.53}]}
- apiVersion: v1
  kind: Service
  metadata: {name: backend, namespace: api}
  spec: {clusterIP: 10.96.0.7, clusterIPs: [10.96.0.7], selector: {app: backend}}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  spec: {podCIDRs: [10.1.0.0/24, "fd00:1::/64"]}
  status: {addresses: [{type: InternalIP, address: 192.168.1.1}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny-all, namespace: api}
  spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

const POLICY: &str = r#"
apiVersion: segwatch.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: shop-policy}
spec:
  crossNamespace:
    allow:
      - name: web-to-backend
        from: {namespace: shop}
        to: {namespace: api, ports: ["8080/TCP"]}
"#;

pub fn cluster(with_policy: bool) -> ClusterIndex {
    let mut idx = ClusterIndex::new(IndexConfig {
        node_name: "n1".into(),
        ..Default::default()
    });
    let mut objects = parse_str(Path::new("cluster.yaml"), CLUSTER)
        .expect("cluster parses")
        .objects;
    if with_policy {
        objects.extend(
            parse_str(Path::new("policy.yaml"), POLICY)
                .expect("policy parses")
                .objects,
        );
    }
    idx.reset(objects);
    idx.refresh();
    idx
}

pub fn report(
    src: &str,
    sport: u16,
    dst: &str,
    dport: Option<u16>,
    proto: &str,
    state: Option<TcpState>,
) -> FlowReport {
    let src: IpAddr = src.parse().expect("ip");
    FlowReport {
        protocol: proto.into(),
        ip_version: if src.is_ipv4() { 4 } else { 6 },
        src: Endpoint::bare(src, Some(sport)),
        dst: Endpoint::bare(dst.parse().expect("ip"), dport),
        packets: Counts {
            sent: 3,
            received: 2,
        },
        bytes: Counts {
            sent: 300,
            received: 200,
        },
        tcp: state.map(|state| TcpInfo {
            flags: vec!["SYN".into()],
            state,
        }),
        ..Default::default()
    }
}
