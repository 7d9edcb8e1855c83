//! Two nodes, one report per connection, cluster-wide (issue #13).
//!
//! ```text
//!  node A netns (node-a)                        node B netns (node-b)
//!   web-a  shop  10.81.1.2 ─ swf<t>ap0 ┐      ┌ swf<t>bp0 ─ db-b   pay  10.81.2.2 :5432
//!   db-a   pay   10.81.1.6 ─ swf<t>ap1 ├─ underlay ─┤ swf<t>bp1 ─ api-b  api  10.81.2.6 :8080
//!   api-a  api   10.81.1.10 ─ swf<t>ap2 ┘ 192.168.77.1 .2 └ swf<t>bp2 ─ web-b  shop 10.81.2.10
//!   nft: table ip swfkp (ClusterIP DNAT, kube-proxy style, random backend)
//!   segwatch run --node-name node-a          segwatch run --node-name node-b
//! ```
//!
//! Services: `pay/db` 10.96.0.10:80 → targetPort 5432 (one backend per
//! node), `api/api` 10.96.0.20:8080 → 8080. The backends record which
//! client address they accepted, so each report's backend is checked
//! against the one the kernel really chose.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tests::*;

const DB_VIP: &str = "10.96.0.10";
const API_VIP: &str = "10.96.0.20";

struct PodSpec {
    name: &'static str,
    ns: &'static str,
    app: &'static str,
    ip: &'static str,
    gw: &'static str,
}

const A_PODS: [PodSpec; 3] = [
    PodSpec {
        name: "web-a",
        ns: "shop",
        app: "web",
        ip: "10.81.1.2",
        gw: "10.81.1.1",
    },
    PodSpec {
        name: "db-a",
        ns: "pay",
        app: "db",
        ip: "10.81.1.6",
        gw: "10.81.1.5",
    },
    PodSpec {
        name: "api-a",
        ns: "api",
        app: "api",
        ip: "10.81.1.10",
        gw: "10.81.1.9",
    },
];
const B_PODS: [PodSpec; 3] = [
    PodSpec {
        name: "db-b",
        ns: "pay",
        app: "db",
        ip: "10.81.2.2",
        gw: "10.81.2.1",
    },
    PodSpec {
        name: "api-b",
        ns: "api",
        app: "api",
        ip: "10.81.2.6",
        gw: "10.81.2.5",
    },
    PodSpec {
        name: "web-b",
        ns: "shop",
        app: "web",
        ip: "10.81.2.10",
        gw: "10.81.2.9",
    },
];

/// One node namespace with its pods (each a namespace behind a veth).
struct Node {
    netns: Netns,
    pods: HashMap<&'static str, Netns>,
}

/// IPv6 off: no neighbour discovery or MLD on the links, so every flow
/// is one the test opened.
fn ipv4_only(netns: &str) {
    for key in [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ] {
        sh_in(netns, &["sysctl", "-q", "-w", key]);
    }
}

fn node(tag: &str, side: char, pods: &[PodSpec]) -> Node {
    let netns = Netns::new(format!("swf-{tag}-{side}"));
    ipv4_only(&netns.name);
    for key in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"] {
        sh_in(&netns.name, &["sysctl", "-q", "-w", key]);
    }
    let mut out = HashMap::new();
    for (i, p) in pods.iter().enumerate() {
        let ns = Netns::new(format!("swf-{tag}-{side}{i}"));
        ipv4_only(&ns.name);
        let host_if = format!("swf{tag}{side}p{i}");
        let tmp = format!("swf{tag}{side}t{i}");
        sh_in(
            &netns.name,
            &[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &tmp,
            ],
        );
        sh_in(&netns.name, &["ip", "link", "set", &tmp, "netns", &ns.name]);
        sh_in(&ns.name, &["ip", "link", "set", &tmp, "name", "eth0"]);
        sh_in(
            &netns.name,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/30", p.gw),
                "dev",
                &host_if,
            ],
        );
        sh_in(&netns.name, &["ip", "link", "set", &host_if, "up"]);
        sh_in(
            &ns.name,
            &["ip", "addr", "add", &format!("{}/30", p.ip), "dev", "eth0"],
        );
        sh_in(&ns.name, &["ip", "link", "set", "eth0", "up"]);
        sh_in(&ns.name, &["ip", "route", "add", "default", "via", p.gw]);
        out.insert(p.name, ns);
    }
    Node { netns, pods: out }
}

/// The two nodes joined by an underlay veth, each routing the other's pod
/// network through it.
fn cluster(tag: &str) -> (Node, Node) {
    let a = node(tag, 'a', &A_PODS);
    let b = node(tag, 'b', &B_PODS);
    let (ua, ub) = (format!("swf{tag}ua"), format!("swf{tag}ub"));
    sh_in(
        &a.netns.name,
        &[
            "ip", "link", "add", &ua, "type", "veth", "peer", "name", &ub,
        ],
    );
    sh_in(
        &a.netns.name,
        &["ip", "link", "set", &ub, "netns", &b.netns.name],
    );
    for (n, dev, ip, other_net, other_ip) in [
        (&a, &ua, "192.168.77.1/24", "10.81.2.0/24", "192.168.77.2"),
        (&b, &ub, "192.168.77.2/24", "10.81.1.0/24", "192.168.77.1"),
    ] {
        sh_in(&n.netns.name, &["ip", "addr", "add", ip, "dev", dev]);
        sh_in(&n.netns.name, &["ip", "link", "set", dev, "up"]);
        sh_in(
            &n.netns.name,
            &["ip", "route", "add", other_net, "via", other_ip],
        );
    }
    for n in [&a, &b] {
        nft(&n.netns.name, &ruleset());
        for ns in std::iter::once(&n.netns).chain(n.pods.values()) {
            ipv4_only(&ns.name);
        }
    }
    (a, b)
}

/// kube-proxy's nftables mode, reduced: a map from Service address, protocol
/// and port to a per-Service chain that picks an endpoint at random.
fn ruleset() -> String {
    r#"table ip swfkp {
  map service-ips {
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = { 10.96.0.10 . tcp . 80 : goto svc-db, 10.96.0.20 . tcp . 8080 : goto svc-api }
  }
  chain services {
    ip daddr . meta l4proto . th dport vmap @service-ips
  }
  chain nat-prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }
  chain svc-db {
    numgen random mod 2 vmap { 0 : goto ep-db-a, 1 : goto ep-db-b }
  }
  chain ep-db-a {
    meta l4proto tcp dnat to 10.81.1.6:5432
  }
  chain ep-db-b {
    meta l4proto tcp dnat to 10.81.2.2:5432
  }
  chain svc-api {
    numgen random mod 2 vmap { 0 : goto ep-api-a, 1 : goto ep-api-b }
  }
  chain ep-api-a {
    meta l4proto tcp dnat to 10.81.1.10:8080
  }
  chain ep-api-b {
    meta l4proto tcp dnat to 10.81.2.6:8080
  }
}
"#
    .to_owned()
}

fn nft(netns: &str, rules: &str) {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft must be installed (cargo xtask setup installs nftables)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("write ruleset");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft rejected the ruleset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A connection the test made: the client (ip, port), the Service address
/// it dialled (if any), and whether the policy forbids it.
type Conn = ((IpAddr, u16), Option<(&'static str, u16)>, bool);

/// Who accepted which client (ip, port): the kernel's real choice.
type Accepted = Arc<Mutex<HashMap<(IpAddr, u16), &'static str>>>;

fn server(ns: &Netns, name: &'static str, ip: &str, port: u16, accepted: &Accepted) {
    let addr: SocketAddr = SocketAddr::new(ip.parse().expect("ip"), port);
    let accepted = accepted.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    ns.run(move || {
        let l = TcpListener::bind(addr).expect("bind server");
        tx.send(()).expect("ready");
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let peer = s.peer_addr().expect("peer");
            accepted
                .lock()
                .expect("lock")
                .insert((peer.ip(), peer.port()), name);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.write_all(&[0x5a; 300]);
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
}

/// One TCP connection from a pod; returns its (ip, port) as the server
/// sees it (no SNAT between pods).
fn connect(ns: &Netns, src: &str, dst: &str, port: u16) -> (IpAddr, u16) {
    let dst = SocketAddr::new(dst.parse().expect("ip"), port);
    let src: IpAddr = src.parse().expect("ip");
    let p = ns
        .run(move || {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
            let port = s.local_addr().expect("local").port();
            s.write_all(&[0xa5; 700]).expect("send");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
            port
        })
        .join()
        .expect("client thread");
    (src, p)
}

fn pod_obj(p: &PodSpec, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": p.ns, "labels": {"app": p.app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": p.ip, "podIPs": [{"ip": p.ip}]}
    })
}

fn inventory(extra: Vec<Value>, skip_pod: Option<&str>) -> Value {
    let mut items = vec![];
    for ns in ["shop", "pay", "api", "segwatch"] {
        items.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}));
    }
    for (name, cidr, ip) in [
        ("node-a", "10.81.1.0/24", "192.168.77.1"),
        ("node-b", "10.81.2.0/24", "192.168.77.2"),
    ] {
        items.push(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        );
        // segwatch's own DaemonSet pod on the node: that node runs an agent.
        items.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("segwatch-{name}"), "namespace": "segwatch",
                         "labels": {"app.kubernetes.io/name": "segwatch"}},
            "spec": {"nodeName": name, "hostNetwork": true, "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip}}));
    }
    for p in &A_PODS {
        if Some(p.name) != skip_pod {
            items.push(pod_obj(p, "node-a"));
        }
    }
    for p in &B_PODS {
        if Some(p.name) != skip_pod {
            items.push(pod_obj(p, "node-b"));
        }
    }
    items.push(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "pay"},
        "spec": {"clusterIP": DB_VIP, "clusterIPs": [DB_VIP], "selector": {"app": "db"},
                 "ports": [{"port": 80, "targetPort": 5432, "protocol": "TCP"}]}}));
    items.push(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "api", "namespace": "api"},
        "spec": {"clusterIP": API_VIP, "clusterIPs": [API_VIP], "selector": {"app": "api"},
                 "ports": [{"port": 8080, "targetPort": 8080, "protocol": "TCP"}]}}));
    items.push(json!({"apiVersion": "segwatch.dev/v1alpha1", "kind": "SegmentationPolicy",
        "metadata": {"name": "shop-to-api"},
        "spec": {"crossNamespace": {"allow": [
            {"name": "shop-api", "from": {"namespace": "shop"}, "to": {"namespace": "api", "ports": ["8080/TCP"]}}
        ]}}}));
    items.extend(extra);
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn write_atomic(path: &std::path::Path, v: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).expect("json")).expect("write inventory");
    std::fs::rename(&tmp, path).expect("rename inventory");
}

fn start(n: &Node, name: &str, inv: &std::path::Path, tag: &str, side: char) -> Daemon {
    Daemon::start(
        &n.netns.name,
        &[
            "--inventory",
            inv.to_str().expect("utf-8 path"),
            "--node-name",
            name,
            "--interface",
            &format!("swf{tag}{side}p*"),
            "--sweep-interval-ms",
            "200",
        ],
    )
}

/// Sum of every sample of a metric family (prefix incl. `{`).
fn sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn two_nodes_report_each_connection_once_naming_the_backend_the_kernel_chose() {
    require_root();
    let tag = unique_tag();
    let (a, b) = cluster(&tag);
    let accepted: Accepted = Arc::default();
    server(&a.pods["db-a"], "db-a", "10.81.1.6", 5432, &accepted);
    server(&a.pods["api-a"], "api-a", "10.81.1.10", 8080, &accepted);
    server(&b.pods["db-b"], "db-b", "10.81.2.2", 5432, &accepted);
    server(&b.pods["api-b"], "api-b", "10.81.2.6", 8080, &accepted);
    let dir = TempDir::new("cluster");
    let inv = dir.0.join("inventory.json");
    write_atomic(&inv, &inventory(Vec::new(), None));
    let da = start(&a, "node-a", &inv, &tag, 'a');
    let db = start(&b, "node-b", &inv, &tag, 'b');

    // (client, via, forbidden): every connection the test makes.
    let mut conns: Vec<Conn> = Vec::new();
    for _ in 0..4 {
        conns.push((
            connect(&a.pods["web-a"], "10.81.1.2", DB_VIP, 80),
            Some((DB_VIP, 80)),
            true,
        ));
        conns.push((
            connect(&a.pods["web-a"], "10.81.1.2", API_VIP, 8080),
            Some((API_VIP, 8080)),
            false,
        ));
    }
    for _ in 0..2 {
        conns.push((
            connect(&b.pods["web-b"], "10.81.2.10", DB_VIP, 80),
            Some((DB_VIP, 80)),
            true,
        ));
    }
    // Pod to pod across the nodes, both ways.
    conns.push((
        connect(&a.pods["web-a"], "10.81.1.2", "10.81.2.2", 5432),
        None,
        true,
    ));
    conns.push((
        connect(&b.pods["db-b"], "10.81.2.2", "10.81.1.10", 8080),
        None,
        true,
    ));
    let forbidden = conns.iter().filter(|c| c.2).count();
    assert_eq!((conns.len(), forbidden), (12, 8));

    let all = || {
        let mut r = da.reports();
        r.extend(db.reports());
        r
    };
    let got = wait_for(Duration::from_secs(30), || {
        let r = all();
        (r.len() >= conns.len()).then_some(r)
    });
    let Some(_) = got else {
        panic!(
            "expected {} reports over both nodes, got {}: {:#?}\nnode-a: {}\nnode-b: {}",
            conns.len(),
            all().len(),
            all(),
            da.stderr(),
            db.stderr()
        );
    };
    // A few more sweeps: a second report of any connection would come now.
    std::thread::sleep(Duration::from_secs(3));
    let reports = all();
    let accepted = accepted.lock().expect("lock").clone();
    let mut per_conn: BTreeMap<(String, u64), Vec<&Value>> = BTreeMap::new();
    for r in &reports {
        let key = (
            r["src"]["ip"].as_str().unwrap_or("").to_owned(),
            r["src"]["port"].as_u64().unwrap_or(0),
        );
        per_conn.entry(key).or_default().push(r);
    }
    assert_eq!(
        reports.len(),
        conns.len(),
        "exactly one report per connection over both flow logs: {reports:#?}"
    );
    for (client, via, forbidden) in &conns {
        let key = (client.0.to_string(), u64::from(client.1));
        let rs = per_conn.get(&key).cloned().unwrap_or_default();
        assert_eq!(rs.len(), 1, "one report for {client:?}: {rs:#?}");
        let r = rs[0];
        let backend = accepted
            .get(client)
            .unwrap_or_else(|| panic!("no backend accepted {client:?}"));
        let opener_node = if client.0.to_string().starts_with("10.81.1.") {
            "node-a"
        } else {
            "node-b"
        };
        assert_eq!(r["observer"], opener_node, "the opener's node reports: {r}");
        assert_eq!(
            r["dst"]["pod"], *backend,
            "the backend the kernel chose: {r}"
        );
        assert_eq!(r["dst"]["kind"], "pod", "{r}");
        let want_port = if backend.starts_with("db") {
            5432
        } else {
            8080
        };
        assert_eq!(
            r["dst"]["port"], want_port,
            "dst.port is the targetPort: {r}"
        );
        match via {
            Some((vip, port)) => {
                let svc = &r["dst"]["service"];
                let name = if *vip == DB_VIP {
                    ("pay", "db")
                } else {
                    ("api", "api")
                };
                assert_eq!(
                    (&svc["namespace"], &svc["name"], &svc["ip"], &svc["port"]),
                    (&json!(name.0), &json!(name.1), &json!(vip), &json!(port)),
                    "dst.service names the Service the client addressed: {r}"
                );
            }
            None => assert!(r["dst"].get("service").is_none(), "no Service: {r}"),
        }
        let verdict = if *forbidden { "violation" } else { "allowed" };
        assert_eq!(r["verdict"], verdict, "{r}");
        assert_eq!(
            r["bytes"]["sent"].as_u64().map(|b| b > 700),
            Some(true),
            "{r}"
        );
        assert!(r["connection"].is_string() && r["seq"] == 1, "{r}");
    }
    let (ma, mb) = (da.metrics(), db.metrics());
    assert_eq!(
        sum(&ma, "segwatch_violations_total{") + sum(&mb, "segwatch_violations_total{"),
        forbidden as f64,
        "violations summed over both agents = forbidden connections\nnode-a:\n{ma}\nnode-b:\n{mb}"
    );
    assert_eq!(
        sum(&ma, "segwatch_flows_total{") + sum(&mb, "segwatch_flows_total{"),
        conns.len() as f64,
        "segwatch_flows_total counts connections"
    );
    // Each cross-node connection was seen by both nodes: the other one
    // says why it did not report it.
    let cross = conns
        .iter()
        .filter(|(c, _, _)| {
            let backend = accepted[c];
            let client_a = c.0.to_string().starts_with("10.81.1.");
            let backend_a = backend.ends_with("-a");
            client_a != backend_a
        })
        .count();
    assert_eq!(
        metric_value(
            &ma,
            r#"segwatch_flows_not_reported_total{reason="opener_node"}"#
        ) + metric_value(
            &mb,
            r#"segwatch_flows_not_reported_total{reason="opener_node"}"#
        ),
        cross as f64,
        "every cross-node connection is left to the opener's node once"
    );
    assert_eq!(
        metric_value(&ma, "segwatch_service_flows_without_backend_total")
            + metric_value(&mb, "segwatch_service_flows_without_backend_total"),
        0.0,
        "conntrack showed every backend"
    );
}

#[test]
fn a_pod_the_inventory_names_a_second_late_is_judged_then_with_its_identity() {
    require_root();
    let tag = unique_tag();
    let (a, _b) = cluster(&tag);
    let accepted: Accepted = Arc::default();
    server(&a.pods["db-a"], "db-a", "10.81.1.6", 5432, &accepted);
    let dir = TempDir::new("late");
    let inv = dir.0.join("inventory.json");
    // web-a is not in the cluster view yet (its IP arrives with the next
    // watch event, here: the next inventory write).
    write_atomic(&inv, &inventory(Vec::new(), Some("web-a")));
    let da = start(&a, "node-a", &inv, &tag, 'a');
    let client = connect(&a.pods["web-a"], "10.81.1.2", "10.81.1.6", 5432);
    let held = wait_for(Duration::from_secs(20), || {
        (da.metric("segwatch_flows_awaiting_identity") == 1.0).then_some(())
    });
    assert!(
        held.is_some(),
        "the report waits for the identity: {}\n{}",
        da.metrics(),
        da.stderr()
    );
    assert!(
        da.reports().is_empty(),
        "nothing written as allowed meanwhile"
    );
    std::thread::sleep(Duration::from_secs(1));
    write_atomic(&inv, &inventory(Vec::new(), None));
    let r = wait_for(Duration::from_secs(20), || da.reports().into_iter().next()).unwrap_or_else(
        || {
            panic!(
                "no report after the inventory named the pod: {}",
                da.stderr()
            )
        },
    );
    assert_eq!(r["src"]["pod"], "web-a", "{r}");
    assert_eq!(r["src"]["port"], client.1, "{r}");
    assert_eq!(r["verdict"], "violation", "{r}");
    assert_eq!(r["violations"][0]["kind"], "cross_namespace", "{r}");
    let m = da.metrics();
    assert_eq!(
        metric_value(
            &m,
            r#"segwatch_violations_total{dst_namespace="pay",dst_port="5432",dst_workload="bare-pod",kind="cross_namespace",protocol="TCP",src_namespace="shop",src_service_account="default",src_workload="bare-pod"}"#
        ),
        1.0,
        "counted once, with the pod's identity:\n{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"segwatch_flows_identity_late_total{outcome="attributed"}"#
        ),
        1.0
    );
    assert_eq!(sum(&m, "segwatch_violations_total{"), 1.0, "{m}");
}
