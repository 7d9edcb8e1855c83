//! `segwatch probe` end to end: a node namespace with listening host ports
//! and a metadata address made local, two pods, one of them behind an
//! nftables filter in the node namespace. Checks the exact reachability
//! matrix of both probe reports, that `segwatch run` sees the probes'
//! connections tagged `probe: true` and counts them in
//! `segwatch_probe_flows_total` (never in `segwatch_violations_total`), and
//! the audit verdicts that follow from the reports. Then bad input: a
//! missing inventory, an unreachable API server, garbage `--targets` lines,
//! and a deadline that leaves targets untried.
//!
//! ```text
//!  swp-pod-*-0 (team-a/probe-a)  ──┐   swp-node-* (n1, 10.99.77.1)
//!  swp-pod-*-1 (team-b/probe-b)  ──┤   listens: 10250 2379 22 30080/tcp, 5353/udp,
//!     :8080 listening              │            169.254.169.254:80, [fd00:ec2::254]:80
//!                                  │   nft table inet swp_probe: pod 1 may not reach
//!                                  │   10250, 22, NodePorts (drop), 2379 (reset),
//!                                  │   metadata addresses (drop); nobody reaches pod 1:8080
//! ```
//!
//! Every name carries the prefix `swp`; nothing leaves the namespaces.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};
use tests::*;

const NODE_IP: &str = "10.99.77.1";

fn tcp_listen(ns: &Netns, addr: SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.run(move || {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(()).expect("ready");
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listener up");
}

fn udp_echo(ns: &Netns, addr: SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.run(move || {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(if n == 0 { b"pong" } else { &buf[..n] }, from);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("udp echo up");
}

/// A pod of the probe's Job (the label the daemon tags probe flows by).
fn probe_pod(ns: &str, name: &str, p: &Pod, ports: &[u16]) -> Value {
    PodObject::new(ns, name)
        .labels(json!({"app": "segwatch-probe", "segwatch.dev/probe": "true"}))
        .service_account("default")
        .tcp_ports(ports)
        .ips(p)
        .json()
}

fn inventory(topo: &Topo) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {"kubernetes.io/metadata.name": "team-a"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-b", "labels": {"kubernetes.io/metadata.name": "team-b"}}},
        probe_pod("team-a", "probe-a", &topo.pods[0], &[]),
        probe_pod("team-b", "probe-b", &topo.pods[1], &[8080]),
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
         "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "team-b"},
         "spec": {"type": "NodePort", "clusterIP": "10.96.77.10", "selector": {"app": "web"},
                  "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "only-team-b", "namespace": "team-b"},
         "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-b"}}}]}]}}
    ]})
}

const POLICY: &str = "apiVersion: segwatch.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: probe-lab}
spec:
  hostAccess:
    allow:
      - from: {namespace: team-a}
        ports: [\"22/TCP\"]
  metadataApi:
    addresses: [169.254.169.254, \"fd00:ec2::254\", 168.63.129.16, 100.100.100.200, 169.254.170.2]
";

/// `segwatch probe` inside `netns` with `args`; the report is written to
/// `out`. Environment that would name another pod is cleared.
fn probe(netns: &str, args: &[&str], out: &Path, env: &[(&str, &Path)]) -> (Output, Value) {
    let mut cmd = lab::probes::probe_command(netns, &segwatch_bin(), out);
    cmd.args(args).envs(env.iter().copied());
    let output = cmd.output().expect("run segwatch probe");
    let text = std::fs::read_to_string(out).unwrap_or_else(|e| {
        panic!(
            "no probe report at {} ({e}); stderr: {}",
            out.display(),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let report: Value = serde_json::from_str(&text).expect("the probe report is JSON");
    (output, report)
}

/// target -> (status, expected, outcome)
fn matrix(report: &Value) -> BTreeMap<String, (String, String, String)> {
    report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("?").to_owned();
            (s("target"), (s("status"), s("expected"), s("outcome")))
        })
        .collect()
}

fn want(rows: &[(&str, &str, &str, &str)]) -> BTreeMap<String, (String, String, String)> {
    rows.iter()
        .map(|(t, s, e, o)| {
            (
                (*t).to_owned(),
                ((*s).to_owned(), (*e).to_owned(), (*o).to_owned()),
            )
        })
        .collect()
}

fn audit(args: &[&str]) -> Value {
    let out = Command::new(segwatch_bin())
        .args([
            "audit",
            "--format",
            "json",
            "--generated-at",
            "2026-12-01T00:00:00Z",
        ])
        .args(args)
        .output()
        .expect("run segwatch audit");
    assert!(
        out.status.success(),
        "segwatch audit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("audit JSON")
}

fn verdicts(report: &Value) -> BTreeMap<String, String> {
    report["controls"]
        .as_array()
        .expect("controls")
        .iter()
        .filter(|c| {
            matches!(
                c["id"].as_str(),
                Some("Host ports" | "Metadata API" | "NetworkPolicy enforcement")
            )
        })
        .map(|c| {
            (
                c["id"].as_str().unwrap_or("").to_owned(),
                c["verdict"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn control<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["controls"]
        .as_array()
        .expect("controls")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("control {id} missing"))
}

#[test]
fn probe_matrix_daemon_tags_and_audit_verdicts() {
    let topo = Topo::with_prefix("swp", 2, true);
    let node = &topo.node;
    // The node answers refused probes with ICMP errors; the kernel's rate
    // limits (per peer: icmp_ratelimit; per namespace: icmp_msgs_per_sec
    // and _burst, with a random cost per message since 6.12) would turn
    // some of them into timeouts depending on timing. Lifted inside this
    // test's own namespace only (all four are per network namespace).
    for key in [
        "net.ipv4.icmp_ratelimit=0",
        "net.ipv6.icmp.ratelimit=0",
        "net.ipv4.icmp_msgs_per_sec=100000",
        "net.ipv4.icmp_msgs_burst=100000",
    ] {
        sh_in(&node.name, &["sysctl", "-q", "-w", key]);
    }
    topo.add_node_address(&format!("{NODE_IP}/32"));
    // The metadata endpoints and a ClusterIP made local to the node: each
    // answers (listener) or refuses (RST) deterministically. (Unroutable
    // addresses would refuse by ICMP, which a connecting socket may keep as
    // a soft error and time out on: README, "Active evidence", limits.)
    for a in [
        "169.254.169.254/32",
        "fd00:ec2::254/128",
        "168.63.129.16/32",
        "100.100.100.200/32",
        "169.254.170.2/32",
        "169.254.170.23/32",
        "10.96.77.10/32",
    ] {
        topo.add_node_address(a);
    }
    let any4 = |p: u16| SocketAddr::new("0.0.0.0".parse().expect("ip"), p);
    for port in [10250, 2379, 22, 30080] {
        tcp_listen(node, any4(port));
    }
    tcp_listen(node, "169.254.169.254:80".parse().expect("addr"));
    tcp_listen(node, "[fd00:ec2::254]:80".parse().expect("addr"));
    tcp_listen(node, "169.254.170.23:80".parse().expect("addr"));
    udp_echo(node, format!("{NODE_IP}:5353").parse().expect("addr"));
    tcp_listen(&topo.pods[1].ns, any4(8080));
    let b_if = &topo.pods[1].host_if;
    let nft = format!(
        "table inet swp_probe {{
  chain pre {{ type filter hook prerouting priority 0; policy accept;
    iifname \"{b_if}\" ip daddr {{ 169.254.0.0/16, 168.63.129.16, 100.100.100.200 }} drop
    iifname \"{b_if}\" ip6 daddr fd00:ec2::254 drop
  }}
  chain input {{ type filter hook input priority 0; policy accept;
    iifname \"{b_if}\" tcp dport {{ 10250, 22, 30000-32767 }} drop
    iifname \"{b_if}\" tcp dport 2379 reject with tcp reset
  }}
  chain forward {{ type filter hook forward priority 0; policy accept;
    oifname \"{b_if}\" tcp dport 8080 drop
  }}
}}
"
    );
    lab::sys::nft_in(&node.name, &nft).expect("the node's filter loads");

    let dir = TempDir::new("probe");
    let inv = dir.0.join("inventory.json");
    std::fs::write(
        &inv,
        serde_json::to_string(&inventory(&topo)).expect("json"),
    )
    .expect("write");
    let pol = dir.0.join("policy.yaml");
    std::fs::write(&pol, POLICY).expect("write");
    let targets = dir.0.join("targets.txt");
    std::fs::write(
        &targets,
        format!("# UDP on the node: one answers, one is closed\n{NODE_IP}:5353/udp\n{NODE_IP}:5354/udp\n"),
    )
    .expect("write");
    let (inv_s, pol_s) = (inv.to_str().expect("utf-8"), pol.to_str().expect("utf-8"));

    let mut daemon = Daemon::start(
        &node.name,
        &["--inventory", inv_s, "--policy", pol_s, "--node-name", "n1"],
    );

    let common = |ns: &str, pod: &str| -> Vec<String> {
        [
            "--inventory",
            inv_s,
            "--policy",
            pol_s,
            "--namespace",
            ns,
            "--pod-name",
            pod,
            "--host-ip",
            NODE_IP,
            "--timeout-ms",
            "500",
            "--rate",
            "50",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let out_a = dir.0.join("probe-a.json");
    let mut args_a = common("team-a", "probe-a");
    args_a.extend(["--targets".to_owned(), targets.display().to_string()]);
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let (oa, ra) = probe(&topo.pods[0].ns.name, &args_a, &out_a, &[]);
    assert_eq!(
        oa.status.code(),
        Some(0),
        "a complete probe exits 0: {}",
        String::from_utf8_lossy(&oa.stderr)
    );
    let out_b = dir.0.join("probe-b.json");
    let args_b = common("team-b", "probe-b");
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let (ob, rb) = probe(&topo.pods[1].ns.name, &args_b, &out_b, &[]);
    assert_eq!(
        ob.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ob.stderr)
    );

    // --- the reachability matrices
    let n = |port: &str| format!("{NODE_IP}:{port}");
    let a_rows = [
        (n("10250/tcp"), "reachable", "blocked", "violation"),
        (n("10255/tcp"), "refused", "blocked", "as_expected"),
        (n("2379/tcp"), "reachable", "blocked", "violation"),
        (n("2380/tcp"), "refused", "blocked", "as_expected"),
        (n("22/tcp"), "reachable", "reachable", "as_expected"),
        (n("6443/tcp"), "refused", "blocked", "as_expected"),
        (n("30080/tcp"), "reachable", "blocked", "violation"),
        (
            "169.254.169.254:80/tcp".into(),
            "reachable",
            "blocked",
            "violation",
        ),
        (
            "[fd00:ec2::254]:80/tcp".into(),
            "reachable",
            "blocked",
            "violation",
        ),
        (
            "168.63.129.16:80/tcp".into(),
            "refused",
            "blocked",
            "as_expected",
        ),
        (
            "100.100.100.200:80/tcp".into(),
            "refused",
            "blocked",
            "as_expected",
        ),
        (
            "169.254.170.2:80/tcp".into(),
            "refused",
            "blocked",
            "as_expected",
        ),
        (
            "169.254.170.23:80/tcp".into(),
            "reachable",
            "reachable",
            "as_expected",
        ),
        (n("5353/udp"), "reachable", "blocked", "violation"),
        (n("5354/udp"), "refused", "blocked", "as_expected"),
        (
            format!("{}:8080/tcp", topo.pods[1].ip4),
            "timeout",
            "blocked",
            "as_expected",
        ),
        // team-b's Service (no kube-proxy here: nothing listens).
        (
            "10.96.77.10:80/tcp".into(),
            "refused",
            "blocked",
            "as_expected",
        ),
    ];
    let a_rows: Vec<(&str, &str, &str, &str)> = a_rows
        .iter()
        .map(|(t, s, e, o)| (t.as_str(), *s, *e, *o))
        .collect();
    assert_eq!(
        matrix(&ra),
        want(&a_rows),
        "team-a (unfiltered) reachability matrix"
    );
    let b_rows = [
        (n("10250/tcp"), "timeout", "blocked", "as_expected"),
        (n("10255/tcp"), "refused", "blocked", "as_expected"),
        (n("2379/tcp"), "refused", "blocked", "as_expected"),
        (n("2380/tcp"), "refused", "blocked", "as_expected"),
        (n("22/tcp"), "timeout", "blocked", "as_expected"),
        (n("6443/tcp"), "refused", "blocked", "as_expected"),
        (n("30080/tcp"), "timeout", "blocked", "as_expected"),
        (
            "169.254.169.254:80/tcp".into(),
            "timeout",
            "blocked",
            "as_expected",
        ),
        (
            "[fd00:ec2::254]:80/tcp".into(),
            "timeout",
            "blocked",
            "as_expected",
        ),
        (
            "168.63.129.16:80/tcp".into(),
            "timeout",
            "blocked",
            "as_expected",
        ),
        (
            "100.100.100.200:80/tcp".into(),
            "timeout",
            "blocked",
            "as_expected",
        ),
        (
            "169.254.170.2:80/tcp".into(),
            "timeout",
            "blocked",
            "as_expected",
        ),
        (
            "169.254.170.23:80/tcp".into(),
            "timeout",
            "reachable",
            "not_reached",
        ),
    ];
    let b_rows: Vec<(&str, &str, &str, &str)> = b_rows
        .iter()
        .map(|(t, s, e, o)| (t.as_str(), *s, *e, *o))
        .collect();
    assert_eq!(
        matrix(&rb),
        want(&b_rows),
        "team-b (behind the node's filter) reachability matrix"
    );

    assert_eq!(ra["complete"], true);
    assert_eq!(ra["cluster_view"], "inventory");
    assert_eq!(
        ra["source"],
        json!({"pod": "probe-a", "namespace": "team-a", "service_account": "default", "node": "n1",
               "ips": [topo.pods[0].ip4.to_string(), topo.pods[0].ip6.to_string()]}),
        "the source is named from the pod object"
    );
    assert_eq!(
        ra["summary"],
        json!({"planned": 17, "tried": 17, "not_tried": 0, "reachable": 8, "refused": 8,
               "timeout": 1, "violations": 6, "not_reached": 0, "unjudged": 0})
    );
    let kubelet = ra["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["target"] == n("10250/tcp"))
        .expect("kubelet result");
    let finding = kubelet["finding"]
        .as_str()
        .expect("a violation carries a finding");
    assert!(
        finding.starts_with(&format!(
            "expected blocked, was reachable: team-a/probe-a connected to {NODE_IP}:10250/tcp (node/n1 kubelet API); pod in team-a -> node n1 on 10250/TCP: host access is not in hostAccess of SegmentationPolicy probe-lab"
        )),
        "{finding}"
    );
    let np = ra["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["kind"] == "pod")
        .expect("the pod target");
    assert_eq!(
        np["netpol"],
        json!({"allowed": false, "isolated": true, "policies": ["team-b/only-team-b"]})
    );

    // --- the daemon: probe flows tagged and counted on their own
    let probe_series = |ns: &str, kind: &str, verdict: &str| {
        // The exposition sorts labels by name.
        format!("segwatch_probe_flows_total{{dst_kind=\"{kind}\",src_namespace=\"{ns}\",verdict=\"{verdict}\"}}")
    };
    // The daemon's policy names the metadata addresses the lab made local
    // (169.254.170.23, EKS Pod Identity, stays a node address there).
    let expected_counts = [
        (probe_series("team-a", "node", "violation"), 9.0),
        (probe_series("team-a", "node", "allowed"), 1.0),
        (probe_series("team-a", "metadata", "violation"), 5.0),
        (probe_series("team-a", "pod", "violation"), 1.0),
        (probe_series("team-a", "service", "violation"), 1.0),
        (probe_series("team-b", "node", "violation"), 8.0),
        (probe_series("team-b", "metadata", "violation"), 5.0),
    ];
    let settled = wait_for(Duration::from_secs(20), || {
        let text = daemon.metrics();
        expected_counts
            .iter()
            .all(|(s, v)| metric_value(&text, s) == *v)
            .then_some(text)
    });
    let text = settled.unwrap_or_else(|| {
        let text = daemon.metrics();
        let got: Vec<(String, f64)> = expected_counts
            .iter()
            .map(|(s, _)| (s.clone(), metric_value(&text, s)))
            .collect();
        panic!(
            "probe flow counts never reached the expected values: {got:?}\n{}",
            daemon.stderr()
        )
    });
    let probe_total: f64 = text
        .lines()
        .filter(|l| l.starts_with("segwatch_probe_flows_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(
        probe_total, 30.0,
        "17 + 13 probe connections, each counted once"
    );
    for ns in ["team-a", "team-b"] {
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("segwatch_violations_total{")
                    && l.contains(&format!("src_namespace=\"{ns}\""))),
            "probe connections must not be counted as violations (they would page):\n{text}"
        );
    }
    assert_eq!(daemon.stop(), 0, "daemon exits cleanly");
    let reports = daemon.reports();
    let pod_ips: Vec<String> = topo
        .pods
        .iter()
        .flat_map(|p| [p.ip4.to_string(), p.ip6.to_string()])
        .collect();
    let from_probes: Vec<&Value> = reports
        .iter()
        .filter(|r| pod_ips.iter().any(|ip| r["src"]["ip"] == *ip.as_str()))
        .filter(|r| r["protocol"] == "TCP" || r["protocol"] == "UDP")
        .collect();
    assert!(
        !from_probes.is_empty(),
        "the daemon saw the probes' connections"
    );
    for r in &from_probes {
        assert_eq!(r["probe"], true, "a probe pod's connection is tagged: {r}");
    }
    let find = |src: IpAddr, port: u16| {
        from_probes
            .iter()
            .find(|r| {
                r["src"]["ip"] == src.to_string()
                    && r["dst"]["ip"] == NODE_IP
                    && r["dst"]["port"] == port
            })
            .unwrap_or_else(|| panic!("no flow report {src} -> {NODE_IP}:{port}"))
    };
    let a_kubelet = find(topo.pods[0].ip4, 10250);
    assert_eq!(a_kubelet["verdict"], "violation");
    assert_eq!(a_kubelet["violations"][0]["kind"], "host_access");
    assert!(
        matches!(
            a_kubelet["tcp"]["state"].as_str(),
            Some("closed" | "established")
        ),
        "team-a reached the kubelet: {a_kubelet}"
    );
    assert_eq!(
        find(topo.pods[1].ip4, 10250)["tcp"]["state"],
        "attempted",
        "dropped for team-b"
    );
    assert_eq!(
        find(topo.pods[1].ip4, 2379)["tcp"]["state"],
        "rejected",
        "reset for team-b"
    );

    // --- the audit verdicts that follow from the reports
    let (a_s, b_s) = (
        out_a.to_str().expect("utf-8"),
        out_b.to_str().expect("utf-8"),
    );
    let only_b = audit(&["--probes", b_s, "--inventory", inv_s, "--policy", pol_s]);
    assert_eq!(
        verdicts(&only_b),
        BTreeMap::from([
            ("Host ports".to_owned(), "PASS".to_owned()),
            ("Metadata API".to_owned(), "PASS".to_owned()),
            (
                "NetworkPolicy enforcement".to_owned(),
                "NOT VERIFIED".to_owned()
            ),
        ]),
        "team-b behind the filter reaches nothing it should not"
    );
    let host = control(&only_b, "Host ports");
    assert_eq!(host["counts"]["probe_blocked"], 7);
    assert_eq!(host["counts"]["probe_violating"], 0);
    let meta = control(&only_b, "Metadata API");
    assert_eq!(
        (
            meta["counts"]["probe_blocked"].clone(),
            meta["counts"]["probe_allowed"].clone()
        ),
        (json!(5), json!(1))
    );
    let both = audit(&[
        "--probes",
        a_s,
        "--probes",
        b_s,
        "--inventory",
        inv_s,
        "--policy",
        pol_s,
    ]);
    assert_eq!(
        verdicts(&both),
        BTreeMap::from([
            ("Host ports".to_owned(), "FAIL".to_owned()),
            ("Metadata API".to_owned(), "FAIL".to_owned()),
            ("NetworkPolicy enforcement".to_owned(), "PASS".to_owned()),
        ]),
        "team-a reaches the kubelet and the metadata API; the denied pod port was blocked"
    );
    assert_eq!(control(&both, "Host ports")["counts"]["probe_violating"], 4);
    assert_eq!(
        control(&both, "Metadata API")["counts"]["probe_violating"],
        2
    );
    assert_eq!(
        control(&both, "NetworkPolicy enforcement")["counts"]["probe_blocked"],
        1
    );
    assert_eq!(
        both["inputs"]["probes"].as_array().map(Vec::len),
        Some(2),
        "probe files are hashed inputs"
    );
}

/// An empty network namespace (loopback only) to run a probe in.
fn bare_netns() -> Netns {
    require_root();
    Netns::new(format!("swp-bad-{}", unique_tag()))
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bad_input_is_one_line_each_and_partial_results_are_kept_and_marked() {
    let ns = bare_netns();
    let dir = TempDir::new("probe-bad");
    let targets = dir.0.join("targets.txt");
    std::fs::write(
        &targets,
        "127.0.0.1:9\nthis is garbage\n[::1]:9/udp\n127.0.0.1:99999\n",
    )
    .expect("write");
    let t = targets.display().to_string();
    let out = dir.0.join("report.json");
    let missing = dir.0.join("no-such-inventory.json");
    let base = [
        "--namespace",
        "team-x",
        "--pod-name",
        "ghost",
        "--host-ip",
        "127.0.0.1",
        "--timeout-ms",
        "300",
        "--rate",
        "100",
        "--targets",
        &t,
    ];

    // A missing inventory and two garbage lines: still probes, marks it.
    let mut args: Vec<&str> = base.to_vec();
    let missing_s = missing.display().to_string();
    args.extend(["--inventory", &missing_s]);
    let (o, r) = probe(&ns.name, &args, &out, &[]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "an incomplete report exits 3: {:?}",
        stderr_lines(&o)
    );
    assert_eq!(r["complete"], false);
    assert_eq!(r["cluster_view"], "none");
    let errors: Vec<&str> = r["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!("--targets {t}:2: `this is garbage`")),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with(&format!("--targets {t}:4: `127.0.0.1:99999`")),
        "{errors:?}"
    );
    assert!(
        errors[2].contains(&missing_s) && errors[2].contains("probing without a cluster view"),
        "{errors:?}"
    );
    let lines = stderr_lines(&o);
    for e in &errors {
        assert!(
            lines.iter().any(|l| l.ends_with(e)),
            "each error is one stderr line: {e}\n{lines:?}"
        );
    }
    // 6 admin ports on the host IP, 6 metadata endpoints, 2 good lines.
    let m = matrix(&r);
    assert_eq!(m.len(), 14, "{m:?}");
    assert_eq!(
        m["127.0.0.1:9/tcp"],
        ("refused".into(), "unknown".into(), "unjudged".into())
    );
    assert_eq!(
        m["[::1]:9/udp"],
        ("refused".into(), "unknown".into(), "unjudged".into()),
        "ICMP port unreachable"
    );
    assert_eq!(
        m["169.254.169.254:80/tcp"].0, "refused",
        "no route in an empty namespace"
    );
    assert!(
        m.values().all(|(_, e, _)| e == "unknown"),
        "without a cluster view nothing is expected, never allowed by default"
    );

    // An API server that does not answer.
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: x, cluster: {server: \"http://127.0.0.1:1\"}}]\nusers: [{name: x, user: {}}]\ncontexts: [{name: x, context: {cluster: x, user: x}}]\ncurrent-context: x\n",
    )
    .expect("write");
    let (o, r) = probe(&ns.name, &base, &out, &[("KUBECONFIG", &kubeconfig)]);
    assert_eq!(o.status.code(), Some(3), "{:?}", stderr_lines(&o));
    let errors: Vec<&str> = r["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for what in [
        "namespaces",
        "nodes",
        "pods",
        "services",
        "networkpolicies",
        "segmentationpolicies",
    ] {
        assert!(
            errors.iter().any(
                |e| e.starts_with("API server http://127.0.0.1:1/: cannot list ")
                    && e.contains(&format!("cannot list {what}: "))
            ),
            "the unreachable API server is named for {what}: {errors:?}"
        );
    }
    assert_eq!(r["cluster_view"], "none");
    assert_eq!(matrix(&r).len(), 14, "the probing went on without the API");

    // The deadline: at 1 attempt/s, 1.5 s leave room for two.
    let missing_path = m_path(&missing);
    let args: Vec<&str> = vec![
        "--namespace",
        "team-x",
        "--pod-name",
        "ghost",
        "--host-ip",
        "127.0.0.1",
        "--timeout-ms",
        "300",
        "--inventory",
        &missing_path,
        "--rate",
        "1",
        "--deadline-ms",
        "1500",
    ];
    let (o, r) = probe(&ns.name, &args, &out, &[]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        r["summary"]["tried"], 2,
        "slots at 0 s and 1 s, the next at 2 s is past the deadline"
    );
    assert_eq!(r["summary"]["planned"], 12);
    assert_eq!(r["summary"]["not_tried"], 10);
    assert_eq!(r["not_tried"].as_array().map(Vec::len), Some(10));
    assert_eq!(
        r["settings"],
        json!({"timeout_ms": 300, "rate": 1, "deadline_ms": 1500})
    );
}

fn m_path(p: &Path) -> String {
    p.display().to_string()
}
