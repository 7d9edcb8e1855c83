//! The index's cost grows with what changes, not with the cluster: counted
//! in units of work ([`ClusterIndex::work`]: entries compiled, addresses
//! placed, entries scanned), never timed. A step that redoes the whole
//! cluster per object (the 5,000-node `reset` that rebuilt every Node's
//! addresses for each Node) makes the build grow with the square of the
//! cluster and a single event grow with the cluster; both are caught here.

use super::*;
use crate::inventory::object_from_value;
use serde_json::{json, Value};

const PODS_PER_NODE: usize = 10;
const PODS_PER_NAMESPACE: usize = 50;
const PODS_PER_DEPLOYMENT: usize = 5;

fn obj(kind: ObjectKind, v: Value) -> Object {
    object_from_value(kind, v).unwrap_or_else(|e| panic!("synthetic {kind}: {e}"))
}

fn v4(base: u32, n: usize) -> String {
    std::net::Ipv4Addr::from(base + n as u32).to_string()
}

fn pod(i: usize, generation: usize, nodes: usize) -> Object {
    let dep = i / PODS_PER_DEPLOYMENT;
    obj(
        ObjectKind::Pod,
        json!({
            "metadata": {"name": format!("app{dep}-h{dep}-{i}x{generation}"),
                         "namespace": format!("ns{}", i / PODS_PER_NAMESPACE),
                         "labels": {"app": format!("app{dep}"), "pod-template-hash": format!("h{dep}")},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": format!("app{dep}-h{dep}"), "uid": "u", "controller": true}]},
            "spec": {"nodeName": format!("node{}", i % nodes), "serviceAccountName": format!("app{dep}"),
                     "containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": "Running", "podIP": v4(0x0a00_0001, i + generation * 1_000_000)}
        }),
    )
}

fn node(n: usize, extra: &str) -> Object {
    obj(
        ObjectKind::Node,
        json!({"metadata": {"name": format!("node{n}"), "labels": {"extra": extra}},
               "spec": {"podCIDR": format!("10.{}.{}.0/24", 128 + n / 256, n % 256)},
               "status": {"addresses": [{"type": "InternalIP", "address": v4(0xc0a8_0001, n)},
                                        {"type": "Hostname", "address": format!("node{n}")}]}}),
    )
}

fn service(d: usize, node_port: u16) -> Object {
    obj(
        ObjectKind::Service,
        json!({"metadata": {"name": format!("app{d}"), "namespace": format!("ns{}", d * PODS_PER_DEPLOYMENT / PODS_PER_NAMESPACE)},
               "spec": {"type": "NodePort", "clusterIP": v4(0xac10_0001, d), "externalIPs": [v4(0xcb00_7101, d)],
                        "selector": {"app": format!("app{d}")},
                        "ports": [{"port": 80, "protocol": "TCP", "nodePort": node_port}]}}),
    )
}

fn replica_set(d: usize, deployment: &str) -> Object {
    obj(
        ObjectKind::ReplicaSet,
        json!({"metadata": {"name": format!("app{d}-h{d}"), "namespace": format!("ns{}", d * PODS_PER_DEPLOYMENT / PODS_PER_NAMESPACE),
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                                                 "uid": "u", "controller": true}]}}),
    )
}

/// `nodes` nodes' worth of cluster: 10 pods a node, Namespaces of 50
/// pods, Deployments of 5 with a NodePort Service each, NetworkPolicies
/// and a SegmentationPolicy.
fn cluster(nodes: usize) -> Vec<Object> {
    let pods = nodes * PODS_PER_NODE;
    let mut out: Vec<Object> = (0..nodes).map(|n| node(n, "a")).collect();
    for ns in 0..pods / PODS_PER_NAMESPACE {
        out.push(obj(
            ObjectKind::Namespace,
            json!({"metadata": {"name": format!("ns{ns}"), "labels": {"team": format!("t{}", ns % 7)}}}),
        ));
        out.push(obj(
            ObjectKind::NetworkPolicy,
            json!({"metadata": {"name": "default-deny", "namespace": format!("ns{ns}")},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        ));
    }
    for d in 0..pods / PODS_PER_DEPLOYMENT {
        out.push(replica_set(d, &format!("app{d}")));
        out.push(service(d, 30000 + d as u16));
    }
    out.extend((0..pods).map(|i| pod(i, 0, nodes)));
    out.push(obj(
        ObjectKind::SegmentationPolicy,
        json!({"apiVersion": "segwatch.dev/v1alpha1", "kind": "SegmentationPolicy",
               "metadata": {"name": "baseline"},
               "spec": {"crossNamespace": {"allow": [
                   {"from": {"namespaceSelector": {"matchLabels": {"team": "t1"}}},
                    "to": {"namespaceSelector": {"matchLabels": {"team": "t2"}}, "ports": ["80/TCP"]}}]}}}),
    ));
    out
}

fn built(nodes: usize) -> ClusterIndex {
    let mut idx = ClusterIndex::new(IndexConfig {
        node_name: "node0".into(),
        ..IndexConfig::default()
    });
    idx.reset(cluster(nodes));
    idx
}

/// Work one call does.
fn cost(idx: &mut ClusterIndex, f: impl FnOnce(&mut ClusterIndex)) -> u64 {
    let before = idx.work();
    f(idx);
    idx.work() - before
}

#[test]
fn building_grows_linearly_with_the_cluster() {
    let (small, large) = (100, 800);
    let mut a = ClusterIndex::new(IndexConfig::default());
    let wa = cost(&mut a, |i| i.reset(cluster(small)));
    let mut b = ClusterIndex::new(IndexConfig::default());
    let wb = cost(&mut b, |i| i.reset(cluster(large)));
    assert_eq!(b.pod_count(), large * PODS_PER_NODE, "every pod indexed");
    // Every pod, Service and Node is compiled about once, its addresses
    // placed once; the interner's sweeps add at most twice the entries it
    // made (each sweep waits for as many new entries as the last one
    // kept). So: a few units per object, and 8x the cluster is about 8x the
    // work (a per-object rescan of the cluster would be 64x).
    let objects = |n: usize| n * (PODS_PER_NODE + 1) + n * PODS_PER_NODE / PODS_PER_DEPLOYMENT;
    for (n, w) in [(small, wa), (large, wb)] {
        assert!(
            w as usize >= objects(n) && w as usize <= 3 * objects(n),
            "{w} units for {} objects",
            objects(n)
        );
    }
    let ratio = wb as f64 / wa as f64;
    assert!(
        ratio < 8.0 * 2.0,
        "reset: {wa} units for {small} nodes, {wb} for {large}: x{ratio:.1} for x8 the cluster"
    );
    // And the index is right: a pod, a node, a pod network, a NodePort.
    assert!(
        matches!(b.resolve(v4(0x0a00_0001, 7777).parse().expect("ip")),
        Resolved::Pod(p) if &*p.name == "app1555-h1555-7777x0")
    );
    assert!(
        matches!(b.resolve(v4(0xc0a8_0001, 700).parse().expect("ip")),
        Resolved::Node(n) if &**n == "node700")
    );
    assert_eq!(
        b.pod_node_of("10.130.187.9".parse().expect("ip"))
            .map(|n| n.to_string()),
        Some("node699".into()),
        "10.130.187.0/24 is node 2*256+187's pod network"
    );
    assert!(matches!(
        b.resolve("10.130.187.9".parse().expect("ip")),
        Resolved::Unknown
    ));
    let node_ip: IpAddr = v4(0xc0a8_0001, 3).parse().expect("ip");
    assert_eq!(
        b.service_at(node_ip, 30042, "TCP")
            .map(|s| s.id.to_string()),
        Some("ns4/app42".into())
    );
}

#[test]
fn one_event_costs_what_it_touches_not_the_cluster() {
    let nodes = 400;
    let mut idx = built(nodes);
    let pods = nodes * PODS_PER_NODE;

    // Pod churn: a delete and an add.
    for k in 0..50 {
        let i = (k * 7919) % pods;
        let Object::Pod(old) = pod(i, 0, nodes) else {
            unreachable!()
        };
        let name = old.metadata.name.clone().expect("name");
        let ns = old.metadata.namespace.clone();
        let w = cost(&mut idx, |x| {
            x.delete(ObjectKind::Pod, ns.as_deref(), &name)
        });
        assert!(w <= 2, "pod delete: {w} units");
        // Sweeps of the interner are spread over the entries made.
        let w = cost(&mut idx, |x| x.apply(pod(i, 1, nodes)));
        assert!(w <= 2, "pod add: {w} units");
    }
    assert_eq!(idx.pod_count(), pods);

    // A Node update (status, labels): its own addresses and networks.
    let w = cost(&mut idx, |x| x.apply(node(17, "b")));
    assert!(w <= 8, "node update: {w} units");
    let w = cost(&mut idx, |x| x.delete(ObjectKind::Node, None, "node18"));
    assert!(w <= 8, "node delete: {w} units");
    assert!(matches!(
        idx.resolve(v4(0xc0a8_0001, 18).parse().expect("ip")),
        Resolved::External
    ));

    // A Service update: its own addresses and ports.
    let w = cost(&mut idx, |x| x.apply(service(42, 31999)));
    assert!(w <= 2, "service update: {w} units");
    let node_ip: IpAddr = v4(0xc0a8_0001, 3).parse().expect("ip");
    assert!(
        idx.service_at(node_ip, 30042, "TCP").is_none(),
        "old NodePort gone"
    );
    assert_eq!(
        idx.service_at(node_ip, 31999, "TCP")
            .map(|s| s.id.to_string()),
        Some("ns4/app42".into())
    );

    // A namespace relabelled: its pods and Services, no others.
    let per_ns = PODS_PER_NAMESPACE + PODS_PER_NAMESPACE / PODS_PER_DEPLOYMENT;
    let w = cost(&mut idx, |x| {
        x.apply(obj(
            ObjectKind::Namespace,
            json!({"metadata": {"name": "ns5", "labels": {"team": "t2"}}}),
        ))
    });
    assert!(
        w as usize <= 2 * per_ns + 2,
        "namespace relabel: {w} units for {per_ns} objects in it"
    );

    // A ReplicaSet whose owner changes: the pods of its namespace.
    let w = cost(&mut idx, |x| x.apply(replica_set(3, "renamed")));
    assert!(
        w as usize <= 2 * PODS_PER_NAMESPACE + 2,
        "owner change: {w} units for {PODS_PER_NAMESPACE} pods in the namespace"
    );
    assert_eq!(
        idx.pod("ns0", "app3-h3-15x0")
            .and_then(|p| p.workload.as_deref().map(str::to_owned)),
        Some("Deployment/renamed".into())
    );
}
