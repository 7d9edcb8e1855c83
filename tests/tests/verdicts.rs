//! `segwatch run --inventory --policy` end to end: pods of three namespaces,
//! a node address with a listening host port, the metadata address; allowed
//! and forbidden TCP/UDP over IPv4 and IPv6; exact violation counts in
//! /metrics and exact verdicts in the flow log.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use tests::*;

const NODE_IP: &str = "10.99.0.1";
const NODE_IP6: &str = "fd99::1";
const METADATA: &str = "169.254.169.254";

/// Sum of `segwatch_violations_total` samples of one kind.
fn violations(metrics: &str, kind: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("segwatch_violations_total{") && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn violations_are_counted_exactly_and_explained_in_the_flow_log() {
    let topo = Topo::new(3, true);
    let (web, api, db) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    topo.add_node_address(&format!("{NODE_IP}/32"));
    topo.add_node_address(&format!("{NODE_IP6}/128"));
    topo.add_node_address(&format!("{METADATA}/32"));
    // Listeners: the API pod, the database pod, the node's sshd and the
    // metadata service (in the node namespace).
    for port in [8080, 9090] {
        tcp_server(api, api.ip4, port, 100);
        tcp_server(api, api.ip6, port, 100);
    }
    tcp_server(db, db.ip4, 5432, 10);
    tcp_server(web, web.ip4, 8080, 10);
    udp_sink(api, SocketAddr::new(api.ip4, 5353));
    udp_sink(api, SocketAddr::new(api.ip4, 5400));
    udp_sink(api, SocketAddr::new(api.ip6, 5400));
    let node_ns = Netns {
        name: topo.node.name.clone(),
    };
    let node_pod = Pod {
        ns: node_ns,
        host_if: String::new(),
        ip4: NODE_IP.parse().unwrap(),
        ip6: NODE_IP6.parse().unwrap(),
        gw4: NODE_IP.parse().unwrap(),
        gw6: NODE_IP6.parse().unwrap(),
    };
    tcp_server(&node_pod, node_pod.ip4, 22, 20);
    tcp_server(&node_pod, METADATA.parse().unwrap(), 80, 300);

    let dir = TempDir::new("verdicts");
    let inventory = json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            namespace_object("shop"), namespace_object("api"), namespace_object("kube-system"),
            PodObject::new("shop", "web-0").service_account("web").labels(json!({"app": "web"})).ips(web).json(),
            PodObject::new("api", "api-0").service_account("api").labels(json!({"app": "api"})).ips(api).json(),
            PodObject::new("shop", "db-0").service_account("db").labels(json!({"app": "db"})).ips(db).json(),
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
             "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "InternalIP", "address": NODE_IP6}]}}
        ]
    });
    let inv_path = dir.0.join("inventory.json");
    std::fs::write(&inv_path, serde_json::to_vec_pretty(&inventory).unwrap()).unwrap();
    let policy_path = dir.0.join("policy.yaml");
    std::fs::write(
        &policy_path,
        "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: shop}\nspec:\n  crossNamespace:\n    allow:\n      - name: web-to-api\n        from: {namespace: shop}\n        to: {namespace: api, ports: [\"8080/TCP\", \"5353/UDP\"]}\n  withinNamespace:\n    - namespace: shop\n      allow:\n        - from: {podSelector: {matchLabels: {app: web}}}\n          to: {podSelector: {matchLabels: {app: db}}, ports: [\"5432/TCP\"]}\n",
    )
    .unwrap();
    let inv = inv_path.to_str().unwrap();
    let pol = policy_path.to_str().unwrap();
    let mut args = vec![
        "--idle-timeout",
        "2",
        "--sweep-interval-ms",
        "200",
        "--inventory",
        inv,
        "--policy",
        pol,
        "--node-name",
        "n1",
    ];
    args.extend(["--node-ip", NODE_IP]);
    let mut daemon = Daemon::start(&topo.node.name, &args);

    // Allowed: web → api:8080 (v4, v6), web → api:5353/UDP, web → db:5432.
    tcp_client(web, SocketAddr::new(api.ip4, 8080), 100);
    tcp_client(web, SocketAddr::new(api.ip6, 8080), 100);
    udp_send(web, SocketAddr::new(api.ip4, 5353), 2, 40);
    tcp_client(web, SocketAddr::new(db.ip4, 5432), 100);
    // Forbidden: web → api:9090 (v4, v6), api → db:5432 (cross-namespace),
    // web → node sshd, web → metadata API.
    tcp_client(web, SocketAddr::new(api.ip4, 9090), 100);
    tcp_client(web, SocketAddr::new(api.ip6, 9090), 100);
    tcp_client(api, SocketAddr::new(db.ip4, 5432), 100);
    // Forbidden UDP across namespaces (only 5353/UDP is whitelisted), IPv4
    // and IPv6, and db → web inside shop (only web → db is whitelisted).
    udp_send(web, SocketAddr::new(api.ip4, 5400), 3, 60);
    udp_send(web, SocketAddr::new(api.ip6, 5400), 3, 60);
    tcp_client(db, SocketAddr::new(web.ip4, 8080), 10);
    tcp_client(
        web,
        SocketAddr::new(IpAddr::V4(NODE_IP.parse().unwrap()), 22),
        10,
    );
    tcp_client(web, SocketAddr::new(METADATA.parse().unwrap(), 80), 10);

    let expect = [
        ("cross_namespace", 5.0),
        ("host_access", 1.0),
        ("metadata_api", 1.0),
        ("within_namespace", 1.0),
    ];
    let got = wait_for(Duration::from_secs(10), || {
        let m = daemon.metrics();
        expect
            .iter()
            .all(|(k, n)| violations(&m, k) == *n)
            .then_some(m)
    });
    let m = daemon.metrics();
    assert!(
        got.is_some(),
        "violations per kind must be exactly {expect:?}; /metrics:\n{}",
        m.lines()
            .filter(|l| l.starts_with("segwatch_violations_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        m.contains("dst_workload=\"node/n1\"") && m.contains("dst_workload=\"metadata-api\""),
        "node and metadata destinations are labelled per the contract:\n{m}"
    );
    assert!(
        !m.contains(&web.ip4.to_string()),
        "no raw IPs in metric labels"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(daemon.stop(), 0);
    let reports = daemon.reports();
    let find_from = |src: &str, dst: &str, port: u64| -> &Value {
        reports
            .iter()
            .find(|r| r["src"]["ip"] == src && r["dst"]["ip"] == dst && r["dst"]["port"] == port)
            .unwrap_or_else(|| panic!("no report {src} -> {dst}:{port}: {reports:#?}"))
    };
    let (w4, w6) = (web.ip4.to_string(), web.ip6.to_string());
    let find = |dst: &str, port: u64| {
        if dst.contains(':') {
            find_from(&w6, dst, port)
        } else {
            find_from(&w4, dst, port)
        }
    };
    let ok = find(&api.ip4.to_string(), 8080);
    assert_eq!(ok["verdict"], "allowed");
    assert_eq!(ok["src"]["namespace"], "shop");
    assert_eq!(ok["src"]["pod"], "web-0");
    assert_eq!(ok["src"]["service_account"], "web");
    assert_eq!(ok["dst"]["kind"], "pod");
    let bad = find(&api.ip6.to_string(), 9090);
    assert_eq!(bad["verdict"], "violation");
    assert_eq!(bad["violations"][0]["kind"], "cross_namespace");
    assert!(
        bad["violations"][0]["reason"].as_str().unwrap_or("").len() > 10,
        "a reason a human can act on"
    );
    let ssh = find(NODE_IP, 22);
    assert_eq!(ssh["dst"]["kind"], "node");
    assert_eq!(ssh["violations"][0]["kind"], "host_access");
    assert!(ssh["dst"].get("pod").is_none(), "no pod field for a node");
    let md = find(METADATA, 80);
    assert_eq!(md["dst"]["kind"], "metadata");
    assert_eq!(md["violations"][0]["kind"], "metadata_api");
    let within = find(&db.ip4.to_string(), 5432);
    assert_eq!(within["src"]["namespace"], "shop");
    assert_eq!(
        within["verdict"], "allowed",
        "web → db:5432 is whitelisted inside shop"
    );
    let cross = find_from(&api.ip4.to_string(), &db.ip4.to_string(), 5432);
    assert_eq!(
        cross["violations"][0]["kind"], "cross_namespace",
        "api → shop is not whitelisted"
    );
    for dst in [api.ip4.to_string(), api.ip6.to_string()] {
        let udp = find(&dst, 5400);
        assert_eq!(udp["protocol"], "UDP", "{udp}");
        assert_eq!(udp["verdict"], "violation", "{udp}");
        assert_eq!(udp["violations"][0]["kind"], "cross_namespace", "{udp}");
        assert_eq!(udp["packets"]["sent"], 3, "{udp}");
        assert_eq!(udp["dst"]["namespace"], "api", "{udp}");
    }
    let lateral = find_from(&db.ip4.to_string(), &web.ip4.to_string(), 8080);
    assert_eq!(
        lateral["violations"][0]["kind"], "within_namespace",
        "{lateral}"
    );
    assert_eq!(lateral["src"]["pod"], "db-0", "{lateral}");
}

/// Issue #16: a connection established although an Admin-tier
/// ClusterNetworkPolicy denies it (the CNI did not enforce it) is a
/// `netpol_bypass` naming that policy, counted once; a connection the same
/// policy does not select is not. The SegmentationPolicy allows both, so
/// the bypass is the only violation.
#[test]
fn an_established_connection_an_admin_tier_deny_forbids_is_a_netpol_bypass() {
    let topo = Topo::new(3, true);
    let (web, api, spy) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    tcp_server(api, api.ip4, 8080, 10);
    let dir = TempDir::new("verdicts-anp");
    let ns = |name: &str, tenant: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name,
               "labels": {"kubernetes.io/metadata.name": name, "tenant": tenant}}})
    };
    let inventory = json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            ns("shop", "a"), ns("api", "a"), ns("rival", "b"),
            PodObject::new("shop", "web-0").service_account("web").labels(json!({"app": "web"})).ips(web).json(),
            PodObject::new("api", "api-0").service_account("api").labels(json!({"app": "api"})).ips(api).json(),
            PodObject::new("rival", "spy-0").service_account("spy").labels(json!({"app": "spy"})).ips(spy).json(),
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
             "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}},
            {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
             "metadata": {"name": "tenant-isolation"},
             "spec": {"tier": "Admin", "priority": 10,
                      "subject": {"namespaces": {"matchLabels": {"tenant": "a"}}},
                      "ingress": [{"name": "no-other-tenants", "action": "Deny",
                                   "from": [{"namespaces": {"matchExpressions": [
                                       {"key": "tenant", "operator": "NotIn", "values": ["a"]}]}}]}]}}
        ]
    });
    let inv_path = dir.0.join("inventory.json");
    std::fs::write(&inv_path, serde_json::to_vec_pretty(&inventory).unwrap()).unwrap();
    let policy_path = dir.0.join("policy.yaml");
    std::fs::write(
        &policy_path,
        "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: open}\nspec:\n  crossNamespace:\n    allow:\n      - from: {namespace: \"*\"}\n        to: {namespace: api, ports: [\"8080/TCP\"]}\n",
    )
    .unwrap();
    let mut daemon = Daemon::start(
        &topo.node.name,
        &[
            "--idle-timeout",
            "2",
            "--sweep-interval-ms",
            "200",
            "--inventory",
            inv_path.to_str().unwrap(),
            "--policy",
            policy_path.to_str().unwrap(),
            "--node-name",
            "n1",
            "--node-ip",
            NODE_IP,
        ],
    );
    // Same tenant: allowed by every layer. Other tenant: denied by the
    // Admin tier, yet the handshake completes (nothing enforces it here).
    tcp_client(web, SocketAddr::new(api.ip4, 8080), 100);
    tcp_client(spy, SocketAddr::new(api.ip4, 8080), 100);
    let got = wait_for(Duration::from_secs(10), || {
        let m = daemon.metrics();
        (violations(&m, "netpol_bypass") == 1.0).then_some(m)
    });
    let m = daemon.metrics();
    assert!(
        got.is_some(),
        "exactly one netpol_bypass (spy → api) must be counted; /metrics:\n{}",
        m.lines()
            .filter(|l| l.starts_with("segwatch_violations_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        violations(&m, "cross_namespace"),
        0.0,
        "the SegmentationPolicy allows both connections"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(daemon.stop(), 0);
    let reports = daemon.reports();
    let from = |src: &Pod| -> &Value {
        reports
            .iter()
            .find(|r| r["src"]["ip"] == src.ip4.to_string() && r["dst"]["port"] == 8080)
            .unwrap_or_else(|| panic!("no report from {} to api:8080: {reports:#?}", src.ip4))
    };
    let ok = from(web);
    assert_eq!(ok["verdict"], "allowed", "{ok}");
    assert_eq!(ok["netpol"]["allowed"], true, "{ok}");
    let bad = from(spy);
    assert_eq!(
        bad["tcp"]["state"], "closed",
        "the handshake completed: {bad}"
    );
    assert_eq!(bad["verdict"], "violation", "{bad}");
    assert_eq!(bad["netpol"]["allowed"], false, "{bad}");
    let decided = &bad["netpol"]["decided_by"];
    assert_eq!(decided["kind"], "ClusterNetworkPolicy", "{bad}");
    assert_eq!(decided["name"], "tenant-isolation", "{bad}");
    assert_eq!(decided["action"], "Deny", "{bad}");
    let kinds: Vec<&str> = bad["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| v["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["netpol_bypass"], "{bad}");
    assert_eq!(
        bad["violations"][0]["rule"], "ClusterNetworkPolicy/tenant-isolation",
        "{bad}"
    );
}
