//! The cluster index at scale: memory and time to build it for 5,000
//! nodes' worth of cluster (50,000 pods, 5,000 Services, 2,000
//! NetworkPolicies), and the cost of one pod churn event. Part of
//! `cargo xtask bench`; no privileges needed.
//!
//! ```text
//!  synthetic objects (API wire format) ─► ClusterIndex::reset ─► refresh (NetworkPolicy engine)
//!        heap bytes live (counting allocator), RSS, wall time
//!  churn: delete one pod + add its replacement (new name, new IP) ─► per-event time
//!        + the deferred NetworkPolicy engine rebuild (at most once a second)
//! ```
//!
//! Writes `index.json` and `index.md` to `--out`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use segwatch::index::{ClusterIndex, IndexConfig};
use segwatch::inventory::{object_from_value, Object, ObjectKind};
use serde_json::{json, Value};

/// Counts the bytes allocated and not yet freed: what the index really
/// holds, without the allocator's fragmentation that RSS includes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only
// a counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(clap::Parser)]
struct Args {
    /// Directory for index.json and index.md.
    #[arg(long)]
    out: PathBuf,
    /// Nodes in the synthetic cluster (10 pods each, 1 Service per 10 pods,
    /// 4 NetworkPolicies per 100 pods).
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pod churn events to time.
    #[arg(long, default_value_t = 2000)]
    churn: usize,
}

const PODS_PER_NODE: usize = 10;
const PODS_PER_DEPLOYMENT: usize = 10;
const PODS_PER_NAMESPACE: usize = 100;
const TIERS: [&str; 3] = ["web", "api", "db"];

fn ip(base: u32, n: usize) -> String {
    Ipv4Addr::from(base + n as u32).to_string()
}

fn obj(kind: ObjectKind, v: Value) -> Object {
    object_from_value(kind, v).unwrap_or_else(|e| panic!("synthetic {kind} is valid: {e}"))
}

fn pod(i: usize, generation: usize, nodes: usize) -> Object {
    let dep = i / PODS_PER_DEPLOYMENT;
    let ns = i / PODS_PER_NAMESPACE;
    let hash = format!("{:x}", 0x5f0000 + dep);
    obj(
        ObjectKind::Pod,
        json!({
            "metadata": {
                "name": format!("app{dep}-{hash}-{i}x{generation}"),
                "namespace": format!("ns{ns}"),
                "resourceVersion": "1",
                "labels": {"app": format!("app{dep}"), "tier": TIERS[dep % 3],
                           "pod-template-hash": hash},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": format!("app{dep}-{hash}"), "uid": format!("rs{dep}"),
                                     "controller": true}]
            },
            "spec": {"nodeName": format!("node{}", i % nodes), "serviceAccountName": format!("app{dep}"),
                     "containers": [{"name": "app", "image": "registry.example/app:1",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip(0x0a00_0001, i + generation * 1_000_000),
                       "podIPs": [{"ip": ip(0x0a00_0001, i + generation * 1_000_000)}]}
        }),
    )
}

fn cluster(nodes: usize) -> Vec<Object> {
    let pods = nodes * PODS_PER_NODE;
    let deployments = pods / PODS_PER_DEPLOYMENT;
    let namespaces = pods / PODS_PER_NAMESPACE;
    let mut out = Vec::with_capacity(pods + 5 * deployments + nodes);
    for n in 0..nodes {
        out.push(obj(
            ObjectKind::Node,
            json!({"metadata": {"name": format!("node{n}")},
                   "spec": {"podCIDR": format!("10.{}.{}.0/24", 128 + n / 256, n % 256)},
                   "status": {"addresses": [{"type": "InternalIP", "address": ip(0xc0a8_0001, n)}]}}),
        ));
    }
    for ns in 0..namespaces {
        out.push(obj(
            ObjectKind::Namespace,
            json!({"metadata": {"name": format!("ns{ns}"),
                   "labels": {"kubernetes.io/metadata.name": format!("ns{ns}"), "team": format!("t{}", ns % 20)}}}),
        ));
        // Four NetworkPolicies per namespace of 100 pods: 2,000 for 50,000.
        out.push(obj(
            ObjectKind::NetworkPolicy,
            json!({"metadata": {"name": "allow-dns", "namespace": format!("ns{ns}")},
                   "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                                        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}}),
        ));
        out.push(obj(
            ObjectKind::NetworkPolicy,
            json!({"metadata": {"name": "allow-egress-db", "namespace": format!("ns{ns}")},
                   "spec": {"podSelector": {"matchLabels": {"tier": "api"}}, "policyTypes": ["Egress"],
                            "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}},
                                               {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.128.0.0/9"]}}],
                                        "ports": [{"port": 5432, "protocol": "TCP"}]}]}}),
        ));
        out.push(obj(
            ObjectKind::NetworkPolicy,
            json!({"metadata": {"name": "default-deny", "namespace": format!("ns{ns}")},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}),
        ));
        out.push(obj(
            ObjectKind::NetworkPolicy,
            json!({"metadata": {"name": "allow-web", "namespace": format!("ns{ns}")},
                   "spec": {"podSelector": {"matchLabels": {"tier": "api"}}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [
                                {"podSelector": {"matchLabels": {"tier": "web"}}},
                                {"namespaceSelector": {"matchLabels": {"team": format!("t{}", ns % 20)}},
                                 "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}}],
                                "ports": [{"port": "http", "protocol": "TCP"}]}]}}),
        ));
    }
    for d in 0..deployments {
        let ns = format!("ns{}", d * PODS_PER_DEPLOYMENT / PODS_PER_NAMESPACE);
        let hash = format!("{:x}", 0x5f0000 + d);
        let labels = json!({"app": format!("app{d}"), "tier": TIERS[d % 3]});
        let template = json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}});
        out.push(obj(
            ObjectKind::Deployment,
            json!({"metadata": {"name": format!("app{d}"), "namespace": ns},
                   "spec": {"selector": {"matchLabels": {"app": format!("app{d}")}}, "template": template}}),
        ));
        out.push(obj(
            ObjectKind::ReplicaSet,
            json!({"metadata": {"name": format!("app{d}-{hash}"), "namespace": ns,
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("app{d}"), "uid": format!("d{d}"), "controller": true}]},
                   "spec": {"selector": {"matchLabels": {"app": format!("app{d}")}}, "template": template}}),
        ));
        out.push(obj(
            ObjectKind::ServiceAccount,
            json!({"metadata": {"name": format!("app{d}"), "namespace": ns}}),
        ));
        out.push(obj(
            ObjectKind::Service,
            json!({"metadata": {"name": format!("app{d}"), "namespace": ns},
                   "spec": {"clusterIP": ip(0xac10_0001, d), "clusterIPs": [ip(0xac10_0001, d)],
                            "selector": {"app": format!("app{d}")},
                            "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}}),
        ));
    }
    for i in 0..pods {
        out.push(pod(i, 0, nodes));
    }
    out.push(obj(
        ObjectKind::SegmentationPolicy,
        json!({"apiVersion": "segwatch.dev/v1alpha1", "kind": "SegmentationPolicy",
               "metadata": {"name": "baseline"},
               "spec": {"crossNamespace": {"allow": (0..50).map(|t| json!({
                            "from": {"namespaceSelector": {"matchLabels": {"team": format!("t{t}")}}, "podSelector": {"matchLabels": {"tier": "web"}}},
                            "to": {"namespaceSelector": {"matchLabels": {"team": format!("t{}", (t + 1) % 20)}}, "ports": ["8080/TCP"]}})).collect::<Vec<_>>()},
                        "hostAccess": {"allow": [{"from": {"namespace": "monitoring"}, "ports": ["9810/TCP"]}]}}}),
    ));
    out
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create", args.out.display()))?;
    let nodes = args.nodes;
    let pods = nodes * PODS_PER_NODE;
    eprintln!("segwatch-index-bench: synthesising {nodes} nodes, {pods} pods");
    // Everything the index holds counts, its copy of every object too (the
    // sources hand the objects over; the index keeps them).
    let heap_before = LIVE.load(Ordering::Relaxed);
    let rss_before = rss_bytes();
    let objects = cluster(nodes);
    let counts = |k: ObjectKind| objects.iter().filter(|o| o.kind() == k).count();
    let (n_svc, n_np, n_pods) = (
        counts(ObjectKind::Service),
        counts(ObjectKind::NetworkPolicy),
        counts(ObjectKind::Pod),
    );
    let total_objects = objects.len();
    let mut index = ClusterIndex::new(IndexConfig {
        node_name: "node0".into(),
        ..IndexConfig::default()
    });
    let t = Instant::now();
    index.reset(objects);
    let build = t.elapsed();
    let t = Instant::now();
    let (at, engine) = index.build_netpol();
    let netpol_build = t.elapsed();
    index.install_netpol(engine, at);
    // The objects moved into the index: what is live now beyond the
    // baseline is the index, its objects plus the derived tables.
    let heap_after = LIVE.load(Ordering::Relaxed);
    let rss_after = rss_bytes();
    assert_eq!(index.pod_count(), n_pods, "every pod is indexed");
    let heap_index = heap_after.saturating_sub(heap_before);

    // Lookups: what every flow end costs.
    let probes: Vec<std::net::IpAddr> = (0..100_000)
        .map(|k| ip(0x0a00_0001, (k * 7919) % pods).parse().expect("ip"))
        .collect();
    let t = Instant::now();
    let mut hits = 0usize;
    for a in &probes {
        if matches!(index.resolve(*a), segwatch::index::Resolved::Pod(_)) {
            hits += 1;
        }
    }
    let resolve_ns = t.elapsed().as_nanos() as f64 / probes.len() as f64;
    assert_eq!(hits, probes.len(), "every probed address is a pod");

    // Churn: a rollout replaces pods one by one (a delete and an add with a
    // new name and a new address).
    let mut apply_times = Vec::with_capacity(args.churn);
    let mut delete_times = Vec::with_capacity(args.churn);
    for k in 0..args.churn {
        let i = (k * 7919) % pods;
        let Object::Pod(old) = pod(i, 0, nodes) else {
            unreachable!("pod() makes pods")
        };
        let old_name = old.metadata.name.clone().unwrap_or_default();
        let ns = old.metadata.namespace.clone();
        let new = pod(i, 1, nodes);
        let t = Instant::now();
        index.delete(ObjectKind::Pod, ns.as_deref(), &old_name);
        delete_times.push(t.elapsed());
        let t = Instant::now();
        index.apply(new);
        apply_times.push(t.elapsed());
    }
    apply_times.sort();
    delete_times.sort();
    let t = Instant::now();
    let (at, engine) = index.build_netpol();
    let netpol_rebuild = t.elapsed();
    index.install_netpol(engine, at);
    assert_eq!(index.pod_count(), n_pods, "churn keeps the pod count");

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let result = json!({
        "cluster": {"nodes": nodes, "pods": n_pods, "services": n_svc, "network_policies": n_np,
                    "objects": total_objects},
        "build_ms": ms(build),
        "netpol_engine_build_ms": ms(netpol_build),
        "heap_mib": mib(heap_index),
        "heap_bytes_per_pod": heap_index / n_pods.max(1),
        "rss_growth_mib": mib(rss_after.saturating_sub(rss_before) as usize),
        "resolve_ns": resolve_ns,
        "churn": {"events": args.churn,
                  "apply_us_p50": us(percentile(&apply_times, 0.5)), "apply_us_p99": us(percentile(&apply_times, 0.99)),
                  "delete_us_p50": us(percentile(&delete_times, 0.5)), "delete_us_p99": us(percentile(&delete_times, 0.99)),
                  "netpol_engine_rebuild_ms": ms(netpol_rebuild)},
        "api_load": {"watches_per_agent": segwatch::index::WATCHED_RESOURCES.len(),
                     "watches_cluster_wide": segwatch::index::WATCHED_RESOURCES.len() * nodes,
                     "watch_events_per_pod_change": nodes},
    });
    let md = format!(
        "| figure | result |\n|---|---|\n\
         | cluster | {nodes} nodes, {n_pods} pods, {n_svc} Services, {n_np} NetworkPolicies ({total_objects} objects) |\n\
         | index build (`reset`) | {:.0} ms |\n\
         | NetworkPolicy engine build | {:.0} ms |\n\
         | index memory (live heap) | {:.0} MiB ({} bytes per pod) |\n\
         | RSS growth | {:.0} MiB |\n\
         | address lookup (`resolve`) | {:.0} ns |\n\
         | pod churn: delete / add, p50 (p99) | {:.1} µs ({:.1}) / {:.1} µs ({:.1}) |\n\
         | NetworkPolicy engine rebuild after churn (at most once a second) | {:.0} ms |\n\
         | watches per agent / cluster-wide | {} / {} |\n",
        ms(build),
        ms(netpol_build),
        mib(heap_index),
        heap_index / n_pods.max(1),
        mib(rss_after.saturating_sub(rss_before) as usize),
        resolve_ns,
        us(percentile(&delete_times, 0.5)),
        us(percentile(&delete_times, 0.99)),
        us(percentile(&apply_times, 0.5)),
        us(percentile(&apply_times, 0.99)),
        ms(netpol_rebuild),
        segwatch::index::WATCHED_RESOURCES.len(),
        segwatch::index::WATCHED_RESOURCES.len() * nodes,
    );
    let json_path = args.out.join("index.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = args.out.join("index.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    print!("{md}");
    Ok(())
}
