//! `userspace_flows_per_sec`: attribution + verdict per flow record on one
//! core, through the same call the daemon makes per report
//! (`ClusterIndex::judge`: both ends resolved to identities, the
//! SegmentationPolicy union evaluated, the NetworkPolicy engine asked).
//!
//! The world is synthetic but shaped like a real cluster: 10,000 dual-stack
//! pods in 50 namespaces, each owned by a ReplicaSet of a Deployment, a
//! ClusterIP Service per Deployment, 20 nodes, a default-deny and allow
//! NetworkPolicies per namespace, and SegmentationPolicies with 200 rules.
//! Flows mix pod→pod (same and other namespace, v4 and v6), pod→Service,
//! pod→node port, pod→metadata API and pod→outside.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};
use chrono::Utc;
use segwatch::index::{ClusterIndex, IndexConfig};
use segwatch::report::{Counts, Endpoint, FlowReport, TcpInfo, TcpState, Verdict};
use serde_json::{json, Value};

use crate::report::{Figure, Target};
use crate::Ctx;

const NAMESPACES: usize = 50;
const PODS: usize = 10_000;
const DEPLOYMENTS_PER_NS: usize = 10;
const NODES: usize = 20;
/// SegmentationPolicy rules in all (cross-namespace, within-namespace,
/// host access, metadata API).
const RULES: usize = 200;
const REPS: usize = 5;

/// Deterministic pseudo-random numbers (SplitMix64): the same flows in
/// every run; the generator monitor's tests and benchmark use.
#[allow(dead_code)]
#[path = "../../../../monitor/tests/netpol_gen/rng.rs"]
mod rng;
use rng::Rng;

fn pod_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        100 + (i / 65_000) as u8,
        ((i / 250) % 256) as u8,
        (i % 250 + 1) as u8,
    )
}

fn pod_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd10, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16 + 1)
}

fn svc_v4(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (k / 250) as u8, (k % 250 + 1) as u8)
}

fn node_v4(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, n as u8 + 1)
}

fn meta(kind: &str, api: &str, name: &str, ns: Option<&str>) -> Value {
    let mut m = json!({"name": name, "uid": format!("{kind}-{}-{name}", ns.unwrap_or(""))});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    json!({"apiVersion": api, "kind": kind, "metadata": m})
}

/// The synthetic cluster as one kubectl `List`, and the cross-namespace
/// rules' edges.
fn world() -> (Value, Vec<(usize, usize, usize)>) {
    let mut items = Vec::new();
    for n in 0..NODES {
        let mut node = meta("Node", "v1", &format!("node{n}"), None);
        node["status"] =
            json!({"addresses": [{"type": "InternalIP", "address": node_v4(n).to_string()}]});
        items.push(node);
    }
    for ns in 0..NAMESPACES {
        let ns_name = format!("ns{ns}");
        let mut o = meta("Namespace", "v1", &ns_name, None);
        o["metadata"]["labels"] = json!({"kubernetes.io/metadata.name": ns_name, "tier": if ns % 2 == 0 { "front" } else { "back" }});
        items.push(o);
        // A default-deny, then allow rules from the neighbouring namespace.
        let mut deny = meta(
            "NetworkPolicy",
            "networking.k8s.io/v1",
            "default-deny",
            Some(&ns_name),
        );
        deny["spec"] = json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]});
        items.push(deny);
        for d in 0..DEPLOYMENTS_PER_NS {
            let app = format!("app{d}");
            let mut dep = meta("Deployment", "apps/v1", &app, Some(&ns_name));
            dep["spec"] = json!({"selector": {"matchLabels": {"app": app}}, "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}});
            items.push(dep);
            let mut rs = meta(
                "ReplicaSet",
                "apps/v1",
                &format!("{app}-5d9f"),
                Some(&ns_name),
            );
            rs["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": app, "uid": format!("Deployment-{ns_name}-{app}"), "controller": true}]);
            rs["spec"] = json!({"selector": {"matchLabels": {"app": app}}});
            items.push(rs);
            let k = ns * DEPLOYMENTS_PER_NS + d;
            let mut svc = meta("Service", "v1", &app, Some(&ns_name));
            svc["spec"] = json!({"selector": {"app": app}, "clusterIP": svc_v4(k).to_string(), "clusterIPs": [svc_v4(k).to_string()], "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]});
            items.push(svc);
            // Ingress from the own namespace and from the three namespaces
            // before it (the cross-namespace rules below point forward);
            // egress inside the cluster, to the outside on 443, and DNS.
            let mut np = meta(
                "NetworkPolicy",
                "networking.k8s.io/v1",
                &format!("allow-{app}"),
                Some(&ns_name),
            );
            let upstream: Vec<String> = (1..=3)
                .map(|b| format!("ns{}", (ns + NAMESPACES - b) % NAMESPACES))
                .collect();
            np["spec"] = json!({
                "podSelector": {"matchLabels": {"app": app}},
                "ingress": [{"from": [
                    {"podSelector": {}},
                    {"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": upstream}]}}
                ], "ports": [{"protocol": "TCP", "port": "http"}, {"protocol": "UDP", "port": 53}]}],
                "egress": [
                    {"to": [{"namespaceSelector": {}}]},
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}, {"ipBlock": {"cidr": "::/0"}}], "ports": [{"protocol": "TCP", "port": 443}]}
                ]
            });
            items.push(np);
        }
    }
    for i in 0..PODS {
        let ns = i % NAMESPACES;
        let d = (i / NAMESPACES) % DEPLOYMENTS_PER_NS;
        let (ns_name, app) = (format!("ns{ns}"), format!("app{d}"));
        let mut pod = meta("Pod", "v1", &format!("{app}-5d9f-{i}"), Some(&ns_name));
        pod["metadata"]["labels"] =
            json!({"app": app, "pod-template-hash": "5d9f", "version": format!("v{}", i % 3)});
        pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-5d9f"), "uid": format!("ReplicaSet-{ns_name}-{app}-5d9f"), "controller": true}]);
        pod["spec"] = json!({"serviceAccountName": app, "nodeName": format!("node{}", i % NODES), "containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]});
        pod["status"] = json!({"phase": "Running", "podIP": pod_v4(i).to_string(), "podIPs": [{"ip": pod_v4(i).to_string()}, {"ip": pod_v6(i).to_string()}]});
        items.push(pod);
    }
    let (docs, edges) = policies();
    items.extend(docs);
    (
        json!({"apiVersion": "v1", "kind": "List", "items": items}),
        edges,
    )
}

/// SegmentationPolicies with [`RULES`] rules in all, and the cross-namespace
/// rules as (from namespace, from app, to namespace) for the flow mix.
fn policies() -> (Vec<Value>, Vec<(usize, usize, usize)>) {
    let mut cross = Vec::new();
    let mut within = Vec::new();
    let host = vec![
        json!({"from": {"namespace": "ns0", "podSelector": {"matchLabels": {"app": "app0"}}}, "ports": ["10250/TCP", "9100/TCP"]}),
    ];
    let metadata = vec![json!({"from": {"namespace": "ns1", "serviceAccount": "app1"}})];
    let mut rules = host.len() + metadata.len();
    let mut k = 0;
    let mut edges = Vec::new();
    while rules < RULES {
        let ns = k % NAMESPACES;
        if k % 4 == 3 {
            // Ten micro-segmented namespaces with five rules each.
            within.push(json!({"namespace": format!("ns{}", (k / 4) % 10), "allow": [{
                "from": {"podSelector": {"matchLabels": {"app": format!("app{}", k % DEPLOYMENTS_PER_NS)}}},
                "to": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": [format!("app{}", (k + 1) % DEPLOYMENTS_PER_NS), format!("app{}", (k + 2) % DEPLOYMENTS_PER_NS)]}]}, "ports": ["8080/TCP"]}
            }]}));
        } else {
            edges.push((ns, k % DEPLOYMENTS_PER_NS, (ns + 1 + k % 3) % NAMESPACES));
            cross.push(json!({
                "name": format!("r{k}"),
                "from": {"namespace": format!("ns{ns}"), "podSelector": {"matchLabels": {"app": format!("app{}", k % DEPLOYMENTS_PER_NS)}}},
                "to": {"namespace": format!("ns{}", (ns + 1 + k % 3) % NAMESPACES), "ports": ["8080/TCP", "53/UDP", "9000-9100/TCP"]}
            }));
        }
        rules += 1;
        k += 1;
    }
    // Two documents: the evaluator takes their union.
    let half = cross.len() / 2;
    let doc = |name: &str, spec: Value| {
        let mut d = meta("SegmentationPolicy", "segwatch.dev/v1alpha1", name, None);
        d["spec"] = spec;
        d
    };
    let docs = vec![
        doc(
            "apps-a",
            json!({"crossNamespace": {"allow": cross[..half]}, "withinNamespace": within}),
        ),
        doc(
            "apps-b",
            json!({"crossNamespace": {"allow": cross[half..]}, "hostAccess": {"allow": host}, "metadataApi": {"allow": metadata}}),
        ),
    ];
    (docs, edges)
}

fn report(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: &str) -> FlowReport {
    let now = Utc::now();
    let v6 = src.is_ipv6();
    FlowReport {
        time: now,
        start: now,
        end: now,
        interface: "veth0".into(),
        protocol: proto.into(),
        ip_version: if v6 { 6 } else { 4 },
        src: Endpoint::bare(src, Some(sport)),
        dst: Endpoint::bare(dst, Some(dport)),
        packets: Counts {
            sent: 10,
            received: 8,
        },
        bytes: Counts {
            sent: 1_400,
            received: 9_000,
        },
        tcp: (proto == "TCP").then(|| TcpInfo {
            flags: vec!["SYN".into(), "ACK".into(), "FIN".into()],
            state: TcpState::Closed,
        }),
        ..FlowReport::default()
    }
}

/// Index of the `m`-th pod of Deployment `app{d}` in namespace `ns{ns}`.
fn pod_of(ns: usize, d: usize, m: usize) -> usize {
    ns + NAMESPACES * (d + DEPLOYMENTS_PER_NS * m)
}

const PODS_PER_DEPLOYMENT: usize = PODS / (NAMESPACES * DEPLOYMENTS_PER_NS);

/// The flow mix, deterministic and shaped like a cluster that mostly keeps
/// its rules: about three quarters allowed, the rest spread over every kind
/// of violation.
fn flows(n: usize, cross_rules: &[(usize, usize, usize)]) -> Vec<FlowReport> {
    let mut rng = Rng(7);
    (0..n)
        .map(|_| {
            let a = rng.below(PODS);
            let v6 = rng.below(5) == 0;
            let pod = |i: usize| -> IpAddr {
                if v6 {
                    pod_v6(i).into()
                } else {
                    pod_v4(i).into()
                }
            };
            let sport = 32_768 + rng.below(28_000) as u16;
            match rng.below(100) {
                // Inside the namespace (micro-segmented namespaces judge it).
                0..=44 => {
                    let b = (a + NAMESPACES * (1 + rng.below(PODS / NAMESPACES - 1))) % PODS;
                    report(pod(a), sport, pod(b), 8080, "TCP")
                }
                // Along a whitelisted cross-namespace rule.
                45..=69 => {
                    let (from_ns, app, to_ns) = cross_rules[rng.below(cross_rules.len())];
                    let src = pod_of(from_ns, app, rng.below(PODS_PER_DEPLOYMENT));
                    let dst = pod_of(
                        to_ns,
                        rng.below(DEPLOYMENTS_PER_NS),
                        rng.below(PODS_PER_DEPLOYMENT),
                    );
                    report(pod(src), sport, pod(dst), 8080, "TCP")
                }
                // Anywhere else in the cluster.
                70..=74 => {
                    let b = rng.below(PODS);
                    let (port, proto) = if rng.below(4) == 0 {
                        (53, "UDP")
                    } else {
                        (8080, "TCP")
                    };
                    report(pod(a), sport, pod(b), port, proto)
                }
                // A Service of the own namespace.
                75..=84 => {
                    let svc = (a % NAMESPACES) * DEPLOYMENTS_PER_NS + rng.below(DEPLOYMENTS_PER_NS);
                    report(pod_v4(a).into(), sport, svc_v4(svc).into(), 80, "TCP")
                }
                85..=88 => report(
                    pod_v4(a).into(),
                    sport,
                    node_v4(rng.below(NODES)).into(),
                    [10250, 22, 2379][rng.below(3)],
                    "TCP",
                ),
                89 => report(
                    pod_v4(a).into(),
                    sport,
                    Ipv4Addr::new(169, 254, 169, 254).into(),
                    80,
                    "TCP",
                ),
                _ => report(
                    pod(a),
                    sport,
                    if v6 {
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, rng.below(250) as u16 + 1)
                            .into()
                    } else {
                        Ipv4Addr::new(203, 0, 113, rng.below(250) as u8 + 1).into()
                    },
                    443,
                    "TCP",
                ),
            }
        })
        .collect()
}

/// Pins this thread to one CPU so the figure is for one core.
fn pin_to_one_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no preconditions; the cpu_set_t is zeroed
    // and filled with CPU_SET before sched_setaffinity reads it.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).ok()?;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        (libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0)
            .then_some(cpu)
    }
}

pub fn phase(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let records = ctx.plan.userspace_records;
    let (world, edges) = world();
    let text = serde_json::to_string(&world)?;
    let inv = segwatch::inventory::parse_str(Path::new("synthetic-cluster.json"), &text)
        .context("the synthetic cluster does not load")?;
    anyhow::ensure!(
        inv.warnings.is_empty(),
        "synthetic cluster has invalid objects: {:?}",
        inv.warnings
    );
    let built = Instant::now();
    let mut index = ClusterIndex::new(IndexConfig {
        node_name: "node0".into(),
        ..IndexConfig::default()
    });
    index.reset(inv.objects);
    index.refresh();
    let build_s = built.elapsed().as_secs_f64();
    anyhow::ensure!(
        index.pod_count() == PODS && index.warnings.is_empty(),
        "synthetic cluster: {} pods indexed, warnings {:?}",
        index.pod_count(),
        index.warnings
    );

    let mut batch = flows(records, &edges);
    // The verdict mix, from one pass, so the figure says what was judged.
    let mut mix = std::collections::BTreeMap::<String, usize>::new();
    for r in &mut batch {
        index.judge(r);
        let key = match (r.verdict, r.violations.first()) {
            (Some(Verdict::Violation), Some(v)) => format!(
                "violation:{}",
                serde_json::to_value(v.kind)?.as_str().unwrap_or("?")
            ),
            (Some(Verdict::Allowed), _) => "allowed".into(),
            _ => "not judged".into(),
        };
        *mix.entry(key).or_default() += 1;
    }
    anyhow::ensure!(
        mix.keys().filter(|k| k.starts_with("violation:")).count() >= 3
            && mix.contains_key("allowed"),
        "the synthetic flow mix must give allowed flows and several kinds of violation: {mix:?}"
    );

    let cpu = pin_to_one_cpu();
    let mut rates = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let t = Instant::now();
        for r in &mut batch {
            index.judge(black_box(r));
        }
        black_box(&batch);
        rates.push(records as f64 / t.elapsed().as_secs_f64());
    }
    Ok(vec![Figure::new(
        "userspace_flows_per_sec",
        "flows/s",
        Some(Target::AtLeast(1_000_000.0)),
        rates,
    )
    .what(format!(
        "ClusterIndex::judge per flow report (attribution of both ends, SegmentationPolicy union, NetworkPolicy engine) on one core{}: {PODS} dual-stack pods in {NAMESPACES} namespaces, {RULES} SegmentationPolicy rules, {} NetworkPolicies; {records} records x {REPS} passes",
        cpu.map(|c| format!(" (pinned to CPU {c})")).unwrap_or_default(),
        NAMESPACES * (DEPLOYMENTS_PER_NS + 1),
    ))
    .detail(json!({
        "pods": PODS, "namespaces": NAMESPACES, "segmentation_rules": RULES,
        "network_policies": NAMESPACES * (DEPLOYMENTS_PER_NS + 1),
        "index_build_s": build_s, "verdict_mix": mix,
    }))])
}
