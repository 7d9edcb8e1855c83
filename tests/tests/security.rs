//! Security of the daemon itself: what it exposes must never carry packet
//! payload, secrets from the inventory, raw addresses or pod names.
//!
//! Real TCP and UDP traffic whose payload is a marker string only this test
//! knows; an inventory whose Secret, annotation and container environment
//! hold a second marker. Afterwards neither marker may appear in /metrics,
//! /healthz, /readyz, the flow log or the daemon's diagnostics; /metrics
//! label values are never an IP address, a pod name or a ReplicaSet name
//! (CONTRACT.md "Metrics": bounded sets only); and every flow log field is
//! one of the header fields the contract lists.
//!
//! And who may read /metrics at all: with `--metrics-auth kubernetes` (the
//! DaemonSet's mode) only HTTPS callers whose token the API server accepts
//! and authorizes for `get /metrics`.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use serde_json::{json, Value};
use tests::*;

/// Fields a flow report may have (CONTRACT.md "Flow report" plus the
/// documented extensions `opener`, `observer`, `ended`, `probe`). A new field must
/// be checked for payload before it is added here.
const REPORT_FIELDS: &[&str] = &[
    "time",
    "start",
    "end",
    "interface",
    "protocol",
    "ip_version",
    "src",
    "dst",
    "packets",
    "bytes",
    "tcp",
    "icmp",
    "netpol",
    "verdict",
    "violations",
    "opener",
    "observer",
    "ended",
    "probe",
    // The connection's identity (a hash of node, 5-tuple and start time)
    // and the report's number in it.
    "connection",
    "seq",
];
const ENDPOINT_FIELDS: &[&str] = &[
    "ip",
    "port",
    "kind",
    "namespace",
    "pod",
    "workload",
    "service_account",
    "labels",
    "node",
    "service",
];

fn pod_obj(ns: &str, name: &str, app: &str, p: &Pod, secret: &str, owner: Option<&str>) -> Value {
    let mut meta = json!({
        "name": name, "namespace": ns, "labels": {"app": app},
        "annotations": {"example.com/token": secret}
    });
    if let Some(rs) = owner {
        meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "u1", "controller": true}]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": "n1", "serviceAccountName": app,
                 "containers": [{"name": "c", "image": "x", "env": [{"name": "TOKEN", "value": secret}]}]},
        "status": {"podIP": p.ip4.to_string(), "podIPs": [{"ip": p.ip4.to_string()}, {"ip": p.ip6.to_string()}]}
    })
}

/// Every label value of every sample line.
fn label_values(metrics: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, _)) = rest.rsplit_once('}') else {
            continue;
        };
        // Values are quoted; none of ours contains `",`.
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                out.push((k.to_string(), v.trim_end_matches('"').to_string()));
            }
        }
    }
    out
}

fn check_fields(v: &Value, allowed: &[&str], what: &str, problems: &mut Vec<String>) {
    if let Value::Object(m) = v {
        for k in m.keys() {
            if !allowed.contains(&k.as_str()) {
                problems.push(format!("{what} has field `{k}`, not a header field"));
            }
        }
    }
}

#[test]
fn metrics_and_flow_log_carry_no_payload_secret_address_or_pod_name() {
    let topo = Topo::new(2, true);
    let (client, server) = (&topo.pods[0], &topo.pods[1]);
    let payload_marker = format!("PAYLOAD-MARKER-{}-x7Qz", unique_tag());
    let secret_marker = format!("SECRET-MARKER-{}-k9Wv", unique_tag());
    let client_pod = "sec-client-0";
    let server_pod = "sec-server-6b8d4f-q9zrt";
    let server_rs = "sec-server-6b8d4f";
    let dir = TempDir::new("security");
    let inventory = json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sec-a"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sec-b"}},
            pod_obj("sec-a", client_pod, "client", client, &secret_marker, None),
            pod_obj("sec-b", server_pod, "server", server, &secret_marker, Some(server_rs)),
            {"apiVersion": "apps/v1", "kind": "ReplicaSet",
             "metadata": {"name": server_rs, "namespace": "sec-b",
                          "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "sec-server", "uid": "u2", "controller": true}]},
             "spec": {"selector": {"matchLabels": {"app": "server"}},
                      "template": {"metadata": {"labels": {"app": "server"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "sec-b"},
             "stringData": {"password": secret_marker}}
        ]
    });
    let inv_path = dir.0.join("inventory.json");
    std::fs::write(&inv_path, inventory.to_string()).expect("write inventory");
    let inv = inv_path.display().to_string();
    let daemon = Daemon::start(
        &topo.node.name,
        &[
            "--inventory",
            &inv,
            "--idle-timeout",
            "2",
            "--sweep-interval-ms",
            "200",
        ],
    );

    // A TCP server that answers with the marker, a UDP sink; the client
    // sends the marker over TCP (v4 and v6) and UDP.
    let marker = payload_marker.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    for addr in [server.ip4, server.ip6] {
        let marker = marker.clone();
        let tx = tx.clone();
        server.ns.run(move || {
            let l = std::net::TcpListener::bind(SocketAddr::new(addr, 8443)).expect("bind");
            tx.send(()).expect("ready");
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(marker.repeat(20).as_bytes());
            }
        });
    }
    rx.recv().expect("v4 server");
    rx.recv().expect("v6 server");
    udp_sink(server, SocketAddr::new(server.ip4, 5353));
    let (s4, s6) = (server.ip4, server.ip6);
    let marker = payload_marker.clone();
    client
        .ns
        .run(move || {
            for dst in [s4, s6] {
                let mut s =
                    TcpStream::connect_timeout(&SocketAddr::new(dst, 8443), Duration::from_secs(5))
                        .expect("connect");
                s.write_all(marker.repeat(30).as_bytes()).expect("send");
                s.shutdown(std::net::Shutdown::Write).expect("shutdown");
                let mut back = Vec::new();
                let _ = s.read_to_end(&mut back);
                assert!(
                    String::from_utf8_lossy(&back).contains(&marker),
                    "the server's reply carries the marker"
                );
            }
            let u = UdpSocket::bind("0.0.0.0:0").expect("udp bind");
            for _ in 0..5 {
                u.send_to(marker.as_bytes(), SocketAddr::new(s4, 5353))
                    .expect("udp send");
            }
        })
        .join()
        .expect("client");
    icmp_echo(client, s4, 77, 2);

    // Flows idle out after 2 s and are reported.
    let reports = wait_for(Duration::from_secs(20), || {
        let r = daemon.reports();
        let tcp = r.iter().filter(|r| r["dst"]["port"] == 8443).count();
        let udp = r.iter().any(|r| r["dst"]["port"] == 5353);
        (tcp >= 2 && udp).then_some(r)
    })
    .unwrap_or_else(|| panic!("TCP and UDP flows reported: {:#?}", daemon.reports()));
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("dst_workload=\"Deployment/sec-server\""),
        "the test must see attributed series, or it checks nothing:\n{metrics}"
    );

    let mut problems = Vec::new();
    let flow_log = std::fs::read_to_string(&daemon.flow_log).expect("flow log");
    let healthz = daemon.get("/healthz").expect("healthz").1;
    let readyz = daemon.get("/readyz").expect("readyz").1;
    for (what, text) in [
        ("/metrics", metrics.as_str()),
        ("/healthz", healthz.as_str()),
        ("/readyz", readyz.as_str()),
        ("the flow log", flow_log.as_str()),
        ("the daemon's stderr", &daemon.stderr()),
    ] {
        for (name, m) in [("payload", &payload_marker), ("secret", &secret_marker)] {
            // Also a fragment: a payload excerpt would be cut somewhere.
            if text.contains(m.as_str()) || text.contains(&m[..12]) {
                problems.push(format!("{what} contains the {name} marker"));
            }
        }
    }

    let addresses: BTreeSet<String> = [client, server]
        .iter()
        .flat_map(|p| [p.ip4.to_string(), p.ip6.to_string()])
        .collect();
    for (k, v) in label_values(&metrics) {
        if v.parse::<IpAddr>().is_ok() || addresses.iter().any(|a| v.contains(a.as_str())) {
            problems.push(format!("/metrics label {k}=\"{v}\" is a raw address"));
        }
        for name in [client_pod, server_pod, server_rs] {
            if v.contains(name) {
                problems.push(format!(
                    "/metrics label {k}=\"{v}\" names pod or ReplicaSet {name}"
                ));
            }
        }
    }

    for r in &reports {
        check_fields(r, REPORT_FIELDS, "a flow report", &mut problems);
        check_fields(&r["src"], ENDPOINT_FIELDS, "src", &mut problems);
        check_fields(&r["dst"], ENDPOINT_FIELDS, "dst", &mut problems);
    }
    // Counts are there (the daemon saw the payload) without the payload.
    let tcp4 = reports
        .iter()
        .find(|r| r["dst"]["port"] == 8443 && r["ip_version"] == 4)
        .expect("TCP v4 flow");
    let sent = tcp4["bytes"]["sent"].as_u64().unwrap_or(0);
    assert!(
        sent >= (payload_marker.len() * 30) as u64,
        "bytes counted, not captured: {tcp4}"
    );
    assert_eq!(tcp4["dst"]["pod"], server_pod, "the flow log may name pods");
    assert!(
        problems.is_empty(),
        "the daemon leaks:\n{}\n--- /metrics:\n{metrics}",
        problems.join("\n")
    );
}

#[test]
fn label_value_parser_sees_every_label() {
    // The leak check is only as good as this parser.
    let m = "# HELP x\nsegwatch_x{a=\"10.0.0.1\",b=\"Deployment/web\",c=\"\"} 1\nsegwatch_y 2\n";
    assert_eq!(
        label_values(m),
        vec![
            ("a".to_string(), "10.0.0.1".to_string()),
            ("b".to_string(), "Deployment/web".to_string()),
            ("c".to_string(), String::new()),
        ]
    );
}

/// The agent in the DaemonSet's mode, against a fake API server that knows
/// two tokens: one of a user allowed `get /metrics`, one of a user who is
/// not.
fn auth_daemon(node: &Netns, api: &FakeApiServer, dir: &TempDir, tls: &[&str]) -> Daemon {
    let kubeconfig = api.kubeconfig(&dir.0);
    let inv = dir.0.join("inventory.json");
    std::fs::write(
        &inv,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}).to_string(),
    )
    .expect("write inventory");
    let inv = inv.display().to_string();
    let mut args = vec![
        "--inventory",
        &inv,
        "--metrics-auth",
        "kubernetes",
        "--probe-addr",
        "127.0.0.1:9811",
    ];
    args.extend_from_slice(tls);
    Daemon::start_with_env(&node.name, &args, &[("KUBECONFIG", &kubeconfig)])
}

const PROMETHEUS: &str = "system:serviceaccount:monitoring:prometheus-k8s";
const WEB: &str = "system:serviceaccount:shop:web";

fn reviews() -> segwatch::testing::Reviews {
    segwatch::testing::Reviews {
        tokens: [
            ("token-prometheus".to_string(), PROMETHEUS.to_string()),
            ("token-web".to_string(), WEB.to_string()),
        ]
        .into(),
        allowed: [PROMETHEUS.to_string()].into(),
    }
}

#[test]
fn metrics_need_https_and_a_token_allowed_to_get_them() {
    require_root();
    let node = Netns::new(format!("swh-auth-{}", unique_tag()));
    let api = fake_api_server(&node, 0, Vec::new());
    api.set_reviews(reviews());
    let dir = TempDir::new("metrics-auth");
    let daemon = auth_daemon(&node, &api, &dir, &[]);
    let k = ["-k"];

    let (code, body) = daemon.https("/metrics", None, &k);
    assert_eq!(code, 401, "no token: {body}");
    let (code, body) = daemon.https("/metrics", Some("not-a-token"), &k);
    assert_eq!(code, 401, "a token the TokenReview rejects: {body}");
    let (code, body) = daemon.https("/metrics", Some("token-web"), &k);
    assert_eq!(
        code, 403,
        "authenticated, but the SubjectAccessReview denies get /metrics: {body}"
    );
    assert!(
        !body.contains("segwatch_"),
        "no metrics in a refusal: {body}"
    );
    let (code, body) = daemon.https("/metrics", Some("token-prometheus"), &k);
    assert_eq!(code, 200, "allowed: {body}");
    assert!(
        body.contains("segwatch_build_info{version="),
        "the metrics themselves: {body}"
    );
    // Plain HTTP on the metrics port gets no metrics, whatever the token.
    let plain = daemon.get("/metrics");
    assert!(
        !matches!(&plain, Ok((200, b)) if b.contains("segwatch_")),
        "plain HTTP must not serve the metrics: {plain:?}"
    );
    // The certificate is self-signed: a verifying client refuses it.
    let (code, err) = daemon.https("/metrics", Some("token-prometheus"), &[]);
    assert_eq!(
        code, 0,
        "a self-signed certificate cannot be verified: {err}"
    );
    // The kubelet's probes: plain, on their own port, no token.
    assert_eq!(
        daemon.get("/readyz").expect("readyz"),
        (200, "ready\n".into())
    );
    assert_eq!(
        daemon.get("/healthz").expect("healthz"),
        (200, "ok\n".into())
    );
    // The reviews went to the API server: one TokenReview per distinct
    // token (3), one SubjectAccessReview per authenticated user (2); the
    // decisions are cached.
    for _ in 0..3 {
        assert_eq!(
            daemon.https("/metrics", Some("token-prometheus"), &k).0,
            200
        );
    }
    let count = |what: &str| {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("POST ") && r.contains(what))
            .count()
    };
    assert_eq!(
        (count("tokenreviews"), count("subjectaccessreviews")),
        (3, 2),
        "{:?}",
        api.requests()
    );
}

#[test]
fn a_mounted_certificate_from_a_ca_is_served_and_verifies() {
    require_root();
    let node = Netns::new(format!("swh-tls-{}", unique_tag()));
    let api = fake_api_server(&node, 0, Vec::new());
    api.set_reviews(reviews());
    let dir = TempDir::new("metrics-tls");
    // A CA and a serving certificate it signs, as cert-manager would put
    // into a kubernetes.io/tls Secret.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct names: a leaf whose subject equals its issuer reads as
    // self-signed to a verifier.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "segwatch test CA");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "segwatch node-1");
    let leaf = leaf.signed_by(&key, &ca).expect("signed");
    let (ca_pem, crt, tls_key) = (
        dir.0.join("ca.crt"),
        dir.0.join("tls.crt"),
        dir.0.join("tls.key"),
    );
    std::fs::write(&ca_pem, ca.pem()).expect("write");
    std::fs::write(&crt, leaf.pem()).expect("write");
    std::fs::write(&tls_key, key.serialize_pem()).expect("write");
    let (crt_s, key_s, ca_s) = (
        crt.display().to_string(),
        tls_key.display().to_string(),
        ca_pem.display().to_string(),
    );
    let daemon = auth_daemon(
        &node,
        &api,
        &dir,
        &["--tls-cert-file", &crt_s, "--tls-private-key-file", &key_s],
    );
    let (code, body) = daemon.https("/metrics", Some("token-prometheus"), &["--cacert", &ca_s]);
    assert_eq!(code, 200, "verified against the CA and allowed: {body}");
    let (code, _) = daemon.https("/metrics", None, &["--cacert", &ca_s]);
    assert_eq!(code, 401, "still no metrics without a token");
}
