//! Benchmark (not a test): NetworkPolicy evaluations per second on one core
//! for 10,000 pods, 1,000 NetworkPolicies and 50 cluster-scoped policies
//! (ClusterNetworkPolicy Admin and Baseline tiers, AdminNetworkPolicy).
//! Target: >= 1,000,000 evaluations/s.
//!
//! `cargo bench -p monitor --bench netpol` (release profile). Prints the
//! build time of the engine and the evaluation rate; nothing is asserted.

use std::hint::black_box;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use segwatch::netpol::cluster::{ClusterKind, ClusterPolicyObject};
use segwatch::netpol::{ClusterPolicyRef, Engine, Objects, Peer, Protocol, Query};
use serde_json::json;

const NAMESPACES: usize = 100;
const PODS: usize = 10_000;
const POLICIES: usize = 1_000;
const APPS: usize = 50;
const CLUSTER_POLICIES: usize = 50;

/// Deterministic pseudo-random numbers (SplitMix64), shared with the tests.
#[allow(dead_code)]
#[path = "../tests/netpol_gen/rng.rs"]
mod rng;
use rng::Rng;

fn main() {
    let mut rng = Rng(42);
    let namespaces: Vec<Namespace> = (0..NAMESPACES)
        .map(|n| {
            serde_json::from_value(json!({"metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{}", n % 10)}}}))
                .expect("namespace")
        })
        .collect();
    let pods: Vec<Pod> = (0..PODS)
        .map(|i| {
            let ns = i % NAMESPACES;
            serde_json::from_value(json!({
                "metadata": {"name": format!("pod{i}"), "namespace": format!("ns{ns}"),
                             "labels": {"app": format!("app{}", rng.below(APPS)), "tier": if i % 2 == 0 { "front" } else { "back" }}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"podIPs": [{"ip": format!("10.{}.{}.{}", ns, (i / 250) % 250, i % 250 + 1)}]}
            }))
            .expect("pod")
        })
        .collect();
    let policies: Vec<NetworkPolicy> = (0..POLICIES)
        .map(|k| {
            let ns = k % NAMESPACES;
            let app = rng.below(APPS);
            let from_app = rng.below(APPS);
            serde_json::from_value(json!({
                "metadata": {"name": format!("np{k}"), "namespace": format!("ns{ns}")},
                "spec": {
                    "podSelector": {"matchLabels": {"app": format!("app{app}")}},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [
                        {"from": [{"podSelector": {"matchLabels": {"app": format!("app{from_app}")}}},
                                  {"namespaceSelector": {"matchLabels": {"team": format!("t{}", k % 10)}},
                                   "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}}],
                         "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100}]},
                        {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}], "ports": [{"port": 443}]}
                    ],
                    "egress": [
                        {"to": [{"namespaceSelector": {}}], "ports": [{"port": 8080}, {"port": 53, "protocol": "UDP"}]},
                        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}
                    ]
                }
            }))
            .expect("policy")
        })
        .collect();

    // Cluster policies: 40 Admin-tier (v1alpha2 and v1alpha1 alike), 10
    // Baseline-tier; subjects by namespace label or by pod label, rules
    // with every action, ports, named ports, networks (v4 and v6).
    let cluster: Vec<(ClusterKind, ClusterPolicyObject)> = (0..CLUSTER_POLICIES)
        .map(|k| {
            let team = format!("t{}", k % 10);
            let app = format!("app{}", rng.below(APPS));
            let subject = if k % 2 == 0 {
                json!({"namespaces": {"matchLabels": {"team": team}}})
            } else {
                json!({"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": app}}}})
            };
            if k % 5 == 4 {
                // v1alpha1 AdminNetworkPolicy.
                let o = json!({"metadata": {"name": format!("anp{k}")}, "spec": {
                    "priority": k, "subject": subject,
                    "ingress": [{"name": "pass-front", "action": "Pass",
                                 "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "front"}}}}],
                                 "ports": [{"portNumber": {"protocol": "TCP", "port": 8080}}, {"namedPort": "http"}]}],
                    "egress": [{"name": "deny-range", "action": "Deny",
                                "to": [{"networks": ["192.168.3.0/24"]}],
                                "ports": [{"portRange": {"protocol": "TCP", "start": 400, "end": 500}}]}]}});
                return (ClusterKind::AdminNetworkPolicy, serde_json::from_value(o).expect("anp"));
            }
            let tier = if k < 40 { "Admin" } else { "Baseline" };
            let o = json!({"metadata": {"name": format!("cnp{k}")}, "spec": {
                "tier": tier, "priority": k, "subject": subject,
                "ingress": [
                    {"name": "accept-team", "action": "Accept",
                     "from": [{"namespaces": {"matchLabels": {"team": format!("t{}", (k + 1) % 10)}}}],
                     "protocols": [{"tcp": {"destinationPort": {"number": 9050}}}, {"destinationNamedPort": "http"}]},
                    {"name": "deny-other", "action": "Deny",
                     "from": [{"pods": {"namespaceSelector": {"matchLabels": {"team": format!("t{}", (k + 2) % 10)}}, "podSelector": {}}}],
                     "protocols": [{"udp": {"destinationPort": {"range": {"start": 50, "end": 60}}}}]}
                ],
                "egress": [
                    {"name": "no-metadata", "action": "Deny",
                     "to": [{"networks": ["169.254.169.254/32", "fd00:ec2::254/128"]}]},
                    {"name": "pass-dns", "action": "Pass",
                     "to": [{"namespaces": {}}], "protocols": [{"udp": {"destinationPort": {"number": 53}}}]}
                ]}});
            (ClusterKind::ClusterNetworkPolicy, serde_json::from_value(o).expect("cnp"))
        })
        .collect();

    let objects = Objects {
        namespaces: namespaces.iter().collect(),
        pods: pods.iter().collect(),
        workloads: Vec::new(),
        policies: policies.iter().collect(),
        nodes: Vec::new(),
        cluster_policies: cluster
            .iter()
            .map(|(kind, object)| ClusterPolicyRef {
                kind: *kind,
                object,
            })
            .collect(),
    };
    let t = Instant::now();
    let (engine, warnings) = Engine::build(&objects);
    let build = t.elapsed();
    assert!(
        warnings.is_empty(),
        "benchmark policies are valid: {warnings:?}"
    );

    // A fixed mix of queries: pod to pod on a few ports, and pod to/from
    // external addresses.
    let n = engine.endpoints().len();
    let queries: Vec<Query> = (0..100_000)
        .map(|i| {
            let a = Peer::Endpoint(segwatch::netpol::EndpointId(rng.below(n) as u32));
            let b = Peer::Endpoint(segwatch::netpol::EndpointId(rng.below(n) as u32));
            let ext = Peer::Ip(
                format!("192.168.{}.{}", rng.below(4), rng.below(250))
                    .parse()
                    .expect("ip"),
            );
            let (src, dst) = match i % 10 {
                0 => (a, ext),
                1 => (ext, a),
                _ => (a, b),
            };
            let (protocol, port) = match i % 4 {
                0 => (Protocol::Tcp, 8080),
                1 => (Protocol::Tcp, 9050),
                2 => (Protocol::Udp, 53),
                _ => (Protocol::Tcp, 443),
            };
            Query {
                src,
                dst,
                protocol,
                port,
            }
        })
        .collect();

    // Warm up, then run for about two seconds on this one thread.
    let mut allowed = 0u64;
    for q in queries.iter().take(10_000) {
        allowed += u64::from(black_box(engine.evaluate(black_box(q))).allowed);
    }
    let mut evals = 0u64;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        for q in &queries {
            allowed += u64::from(black_box(engine.evaluate(black_box(q))).allowed);
        }
        evals += queries.len() as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "netpol: {} endpoints, {} policies, {} cluster policies; engine build {:.1} ms; {:.0} evaluations/s on one core ({} evaluations, {:.1}% allowed)",
        n,
        engine.policy_ids().count(),
        engine.cluster_policy_ids().count(),
        build.as_secs_f64() * 1e3,
        evals as f64 / secs,
        evals,
        100.0 * allowed as f64 / (evals + 10_000) as f64
    );
}
