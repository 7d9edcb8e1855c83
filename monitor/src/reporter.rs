//! Who reports a connection, cluster-wide, without the agents talking to
//! each other; and the connection's identity in the flow logs.
//!
//! ```text
//!  opener (src; the client before SNAT for a Service connection)
//!    │ a pod (spec.nodeName, or a Node's spec.podCIDRs) on ANOTHER node
//!    │ that runs an agent (an agent pod on it in the index)?
//!    ├── yes ─► not ours: that node saw it leave the pod and reports it
//!    └── no  ─► ours: the opener runs here, or it is external, a node
//!               process, a hostNetwork pod, or on a node without agent —
//!               then the responder's node (this one: we saw it on a pod
//!               veth of this node) reports it
//! ```
//!
//! Every agent decides from the same cluster view (the same inventory or
//! API objects), so exactly one of them takes each connection.

use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::flows::{ConnKey, RawReport};
use crate::index::ClusterIndex;
use crate::report::FlowReport;

/// The default `--agent-selector`: the label of segwatch's DaemonSet pods
/// (deploy/base/daemonset.yaml).
pub const DEFAULT_AGENT_SELECTOR: &str = "app.kubernetes.io/name=segwatch";

/// Whether this node reports a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// This node reports it.
    Report,
    /// The opener is a pod on `node`, whose agent reports it.
    OpenerNode(Arc<str>),
}

/// Who reports a connection opened by `opener` that this node saw.
pub fn choose(index: &ClusterIndex, opener: IpAddr) -> Choice {
    // hostNetwork pods are not pod addresses in the index (they share the
    // node's): their connections count as the node's, as the issue says.
    match index.pod_node_of(opener) {
        Some(n) if **n != *index.node_name() && index.runs_agent(n) => {
            Choice::OpenerNode(n.clone())
        }
        _ => Choice::Report,
    }
}

/// Stable identity of a connection in the flow logs: the reporting node,
/// the connection's 5-tuple and the kernel time of its first packet,
/// hashed (16 hex digits). The same for every report of the connection;
/// two connections on one 5-tuple differ by their first packet.
pub fn connection_id(observer: &str, key: &ConnKey, first_ns: u64) -> String {
    let mut h = Sha256::new();
    h.update(observer.as_bytes());
    h.update([0, key.proto, key.ip_version]);
    for w in key.addr_lo.iter().chain(key.addr_hi.iter()) {
        h.update(w.to_ne_bytes());
    }
    h.update(key.port_lo.to_be_bytes());
    h.update(key.port_hi.to_be_bytes());
    h.update(first_ns.to_be_bytes());
    let d = h.finalize();
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Gives a fresh report its connection key and identity (the daemon calls
/// this right after building it from the kernel's counts).
pub fn stamp(report: &mut FlowReport, raw: &RawReport, observer: Option<&str>) {
    let key = ConnKey::from(&raw.key);
    report.connection = Some(connection_id(
        observer.unwrap_or(""),
        &key,
        raw.stats.first_ns,
    ));
    report.conn = Some(key);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexConfig;
    use crate::inventory::parse_str;
    use std::path::Path;

    /// n1 and n2 run agents, n3 does not; pods on each, one hostNetwork.
    const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: Namespace, metadata: {name: segwatch}}
- {apiVersion: v1, kind: Node, metadata: {name: n1}, spec: {podCIDRs: [10.1.1.0/24]}, status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}}
- {apiVersion: v1, kind: Node, metadata: {name: n2}, spec: {podCIDRs: [10.1.2.0/24]}, status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}}
- {apiVersion: v1, kind: Node, metadata: {name: n3}, spec: {podCIDRs: [10.1.3.0/24]}, status: {addresses: [{type: InternalIP, address: 192.168.0.3}]}}
- apiVersion: v1
  kind: Pod
  metadata: {name: segwatch-a, namespace: segwatch, labels: {app.kubernetes.io/name: segwatch}}
  spec: {nodeName: n1, hostNetwork: true, containers: []}
  status: {phase: Running, podIP: 192.168.0.1}
- apiVersion: v1
  kind: Pod
  metadata: {name: segwatch-b, namespace: segwatch, labels: {app.kubernetes.io/name: segwatch}}
  spec: {nodeName: n2, hostNetwork: true, containers: []}
  status: {phase: Running, podIP: 192.168.0.2}
- apiVersion: v1
  kind: Pod
  metadata: {name: segwatch-old, namespace: segwatch, labels: {app.kubernetes.io/name: segwatch}}
  spec: {nodeName: n3, hostNetwork: true, containers: []}
  status: {phase: Failed, podIP: 192.168.0.3}
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: shop}, spec: {nodeName: n1, containers: []}, status: {phase: Running, podIP: 10.1.1.5}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: shop}, spec: {nodeName: n2, containers: []}, status: {phase: Running, podIP: 10.1.2.5}}
- {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: shop}, spec: {nodeName: n3, containers: []}, status: {phase: Running, podIP: 10.1.3.5}}
- {apiVersion: v1, kind: Pod, metadata: {name: h, namespace: shop}, spec: {nodeName: n2, hostNetwork: true, containers: []}, status: {phase: Running, podIP: 192.168.0.2}}
"#;

    fn node(name: &str) -> ClusterIndex {
        let mut idx = ClusterIndex::new(IndexConfig {
            node_name: name.into(),
            agent_selector: Some(
                [("app.kubernetes.io/name".to_owned(), "segwatch".to_owned())].into(),
            ),
            ..Default::default()
        });
        idx.reset(
            parse_str(Path::new("cluster.yaml"), CLUSTER)
                .expect("cluster parses")
                .objects,
        );
        idx
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// Each case: the opener, and who reports among n1, n2, n3 (the
    /// nodes that see the connection: the opener's and the responder's).
    #[test]
    fn exactly_one_node_reports_each_connection() {
        let (n1, n2, n3) = (node("n1"), node("n2"), node("n3"));
        assert!(!n1.runs_agent("n3"), "n3's only agent pod failed");
        assert!(n1.runs_agent("n2") && n2.runs_agent("n1"));
        let reports = |opener: &str, seen_on: &[&ClusterIndex]| -> Vec<String> {
            seen_on
                .iter()
                .filter(|i| choose(i, ip(opener)) == Choice::Report)
                .map(|i| i.node_name().to_owned())
                .collect()
        };
        assert_eq!(
            reports("10.1.1.5", &[&n1, &n2]),
            ["n1"],
            "pod on n1 (agent) to a pod on n2: the opener's node"
        );
        assert_eq!(
            reports("10.1.2.5", &[&n2, &n1]),
            ["n2"],
            "and the other way round"
        );
        assert_eq!(
            reports("10.1.3.5", &[&n1]),
            ["n1"],
            "a pod on n3 (no agent: its agent pod failed) to n1: the responder's node"
        );
        assert_eq!(
            choose(&n3, ip("10.1.3.5")),
            Choice::Report,
            "own pods are always ours"
        );
        assert_eq!(
            reports("192.168.0.2", &[&n1]),
            ["n1"],
            "a hostNetwork pod or node process on n2: the responder's node"
        );
        assert_eq!(
            reports("203.0.113.9", &[&n1]),
            ["n1"],
            "an external client: the responder's node"
        );
        assert_eq!(
            reports("10.1.2.77", &[&n2, &n1]),
            ["n2"],
            "a pod not in the index yet, inside n2's podCIDR: still n2's"
        );
        assert_eq!(
            reports("10.1.1.5", &[&n1]),
            ["n1"],
            "on one node (two veths of it): that node"
        );
    }

    #[test]
    fn without_agent_discovery_only_this_node_is_known_to_report() {
        let mut idx = ClusterIndex::new(IndexConfig {
            node_name: "n2".into(),
            ..Default::default()
        });
        idx.reset(
            parse_str(Path::new("cluster.yaml"), CLUSTER)
                .expect("cluster parses")
                .objects,
        );
        assert_eq!(
            choose(&idx, ip("10.1.1.5")),
            Choice::Report,
            "n1's agent is unknown without a selector: report rather than lose it"
        );
    }

    #[test]
    fn connection_ids_are_stable_and_tell_connections_apart() {
        let key = ConnKey {
            addr_lo: [1, 0, 0, 0],
            addr_hi: [2, 0, 0, 0],
            port_lo: 80,
            port_hi: 40000,
            proto: 6,
            ip_version: 4,
        };
        let a = connection_id("n1", &key, 1_000);
        assert_eq!(a.len(), 16);
        assert_eq!(
            a,
            connection_id("n1", &key, 1_000),
            "same connection, same id"
        );
        assert_ne!(
            a,
            connection_id("n1", &key, 2_000),
            "a later connection on the same tuple"
        );
        assert_ne!(a, connection_id("n2", &key, 1_000), "another node's report");
    }
}
