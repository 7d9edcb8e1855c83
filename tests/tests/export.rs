//! Flow export end to end: `segwatch run` with real traffic between pods
//! exports to collectors running in the node namespace.
//!
//! - IPFIX: Debian's `nfcapd` (nfdump) receives the export; `nfdump` reads
//!   it back and every flow's packets and bytes equal the flow log's. The
//!   same datagrams (copied by a relay in front of nfcapd) are decoded a
//!   second time with the `netflow_parser` crate, which checks the
//!   enterprise elements (namespace, pod, workload, verdict).
//! - OTLP over gRPC (with a header) and over HTTP/protobuf (gzip): a
//!   receiver built on the OpenTelemetry protobuf definitions
//!   (`opentelemetry-proto`) gets every report exactly once with the
//!   documented attributes; with no receiver the loss counter equals the
//!   reports made, and the flow log is complete.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use serde_json::{json, Value};
use tests::*;

fn pod_obj(ns: &str, name: &str, sa: &str, app: &str, p: &Pod) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-5d8f9c7b6d"), "uid": "u", "controller": true}]},
        "spec": {"serviceAccountName": sa, "nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
        "status": {"podIP": p.ip4.to_string(), "podIPs": [{"ip": p.ip4.to_string()}, {"ip": p.ip6.to_string()}]}
    })
}

/// Two pods, `shop/web-0` and `api/api-0`, and an inventory naming them;
/// a policy that allows only web → api:8080/TCP across namespaces.
struct Setup {
    topo: Topo,
    dir: TempDir,
}

impl Setup {
    fn new() -> Self {
        let topo = Topo::with_prefix("swe", 2, false);
        let (web, api) = (&topo.pods[0], &topo.pods[1]);
        tcp_server(api, api.ip4, 8080, 3000);
        tcp_server(api, api.ip4, 9090, 10);
        udp_sink(api, SocketAddr::new(api.ip4, 5353));
        let dir = TempDir::new("export");
        let ns = |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"kubernetes.io/metadata.name": n}}});
        let inventory = json!({"apiVersion": "v1", "kind": "List", "items": [
            ns("shop"), ns("api"),
            pod_obj("shop", "web-0", "web", "web", web),
            pod_obj("api", "api-0", "api", "api", api),
        ]});
        std::fs::write(
            dir.0.join("inventory.json"),
            serde_json::to_vec(&inventory).expect("json"),
        )
        .expect("write inventory");
        std::fs::write(
            dir.0.join("policy.yaml"),
            "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: shop}\nspec:\n  crossNamespace:\n    allow:\n      - name: web-to-api\n        from: {namespace: shop}\n        to: {namespace: api, ports: [\"8080/TCP\"]}\n",
        )
        .expect("write policy");
        Setup { topo, dir }
    }

    fn start(&self, extra: &[&str]) -> Daemon {
        let inv = self.dir.0.join("inventory.json");
        let pol = self.dir.0.join("policy.yaml");
        let mut args = vec![
            "--idle-timeout",
            "2",
            "--sweep-interval-ms",
            "200",
            "--node-name",
            "n1",
            "--inventory",
            inv.to_str().expect("utf-8"),
            "--policy",
            pol.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        Daemon::start(&self.topo.node.name, &args)
    }

    /// Three TCP connections (one forbidden) and one UDP exchange, web →
    /// api; returns how many pod-to-pod reports they make.
    fn traffic(&self) -> usize {
        let (web, api) = (&self.topo.pods[0], &self.topo.pods[1]);
        tcp_client(web, SocketAddr::new(api.ip4, 8080), 1000);
        tcp_client(web, SocketAddr::new(api.ip4, 8080), 20_000);
        tcp_client(web, SocketAddr::new(api.ip4, 9090), 10);
        udp_send(web, SocketAddr::new(api.ip4, 5353), 3, 100);
        4
    }

    /// Waits until the flow log holds the ended reports of every pod-to-pod
    /// flow of [`Setup::traffic`].
    fn wait_reports(&self, d: &Daemon, n: usize) -> Vec<Value> {
        let (web, api) = (&self.topo.pods[0], &self.topo.pods[1]);
        let pair = |r: &Value| {
            r["src"]["ip"] == web.ip4.to_string() && r["dst"]["ip"] == api.ip4.to_string()
        };
        let got = wait_for(Duration::from_secs(20), || {
            let r = d.reports();
            (r.iter().filter(|r| pair(r) && r["ended"] != false).count() >= n).then_some(r)
        });
        got.unwrap_or_else(|| {
            panic!(
                "{n} ended web → api reports expected in the flow log: {:#?}\n{}",
                d.reports(),
                d.stderr()
            )
        })
    }
}

// ---------------------------------------------------------------- OTLP

/// What the receiver got: (resource attributes, record attributes, body)
/// per log record, and the request headers.
#[derive(Default)]
struct Received {
    records: Vec<(BTreeMap<String, Value>, BTreeMap<String, Value>, String)>,
    headers: Vec<(String, String)>,
}

fn any_to_json(v: &Option<AnyValue>) -> Value {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::DoubleValue(f)) => json!(f),
        other => json!(format!("{other:?}")),
    }
}

fn attrs(kv: &[KeyValue]) -> BTreeMap<String, Value> {
    kv.iter()
        .map(|kv| (kv.key.clone(), any_to_json(&kv.value)))
        .collect()
}

fn collect(req: &ExportLogsServiceRequest, into: &mut Received) {
    for rl in &req.resource_logs {
        let res = rl
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for sl in &rl.scope_logs {
            for lr in &sl.log_records {
                let body = match any_to_json(&lr.body) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                into.records
                    .push((res.clone(), attrs(&lr.attributes), body));
            }
        }
    }
}

struct Grpc(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("lock");
        for kv in request.metadata().iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                got.headers
                    .push((k.to_string(), v.to_str().unwrap_or("").to_string()));
            }
        }
        collect(request.get_ref(), &mut got);
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts an OTLP receiver inside `netns` on 127.0.0.1:`port`.
fn otlp_receiver(netns: &Netns, grpc: bool, port: u16) -> Arc<Mutex<Received>> {
    let got = Arc::new(Mutex::new(Received::default()));
    let g = got.clone();
    serve_in(netns, port, "receiver", move |listener| async move {
        if grpc {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tonic::transport::Server::builder()
                .add_service(
                    LogsServiceServer::new(Grpc(g))
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .serve_with_incoming(incoming)
                .await
                .expect("grpc receiver");
        } else {
            let app = axum::Router::new().route(
                "/v1/logs",
                axum::routing::post(
                    move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let g = g.clone();
                        async move {
                            use prost::Message as _;
                            let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
                            let raw = if gzip {
                                use std::io::Read as _;
                                let mut out = Vec::new();
                                flate2::read::GzDecoder::new(&body[..])
                                    .read_to_end(&mut out)
                                    .expect("gzip body");
                                out
                            } else {
                                body.to_vec()
                            };
                            let req = ExportLogsServiceRequest::decode(&raw[..])
                                .expect("an OTLP ExportLogsServiceRequest");
                            let mut got = g.lock().expect("lock");
                            for (k, v) in &headers {
                                got.headers
                                    .push((k.to_string(), v.to_str().unwrap_or("").to_string()));
                            }
                            collect(&req, &mut got);
                            let resp = ExportLogsServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec();
                            (
                                [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                                resp,
                            )
                        }
                    },
                ),
            );
            axum::serve(listener, app).await.expect("http receiver");
        }
    });
    got
}

/// The flow identity both sides carry.
fn key_of_report(r: &Value) -> String {
    format!(
        "{} {} {} {} {} {}",
        r["src"]["ip"].as_str().unwrap_or(""),
        r["src"]["port"],
        r["dst"]["ip"].as_str().unwrap_or(""),
        r["dst"]["port"],
        r["protocol"].as_str().unwrap_or("").to_ascii_lowercase(),
        r["packets"]["sent"],
    )
}

fn key_of_record(a: &BTreeMap<String, Value>) -> String {
    let port = |k: &str| a.get(k).cloned().unwrap_or(Value::Null);
    format!(
        "{} {} {} {} {} {}",
        a["source.address"].as_str().unwrap_or(""),
        port("source.port"),
        a["destination.address"].as_str().unwrap_or(""),
        port("destination.port"),
        a["network.transport"].as_str().unwrap_or(""),
        a["segwatch.packets.sent"],
    )
}

fn otlp_roundtrip(grpc: bool) {
    let setup = Setup::new();
    let port = if grpc { 4317 } else { 4318 };
    let got = otlp_receiver(&setup.topo.node, grpc, port);
    let url = if grpc {
        format!("http://127.0.0.1:{port}")
    } else {
        format!("http://127.0.0.1:{port}/v1/logs")
    };
    let proto = if grpc { "grpc" } else { "http" };
    let mut extra = vec![
        "--otlp-endpoint",
        &url,
        "--otlp-protocol",
        proto,
        "--otlp-header",
        "X-Scope-OrgID=team-a",
        "--cluster-name",
        "lab",
    ];
    if !grpc {
        extra.push("--otlp-gzip");
    }
    let mut d = setup.start(&extra);
    let n = setup.traffic();
    setup.wait_reports(&d, n);
    assert_eq!(d.stop(), 0, "clean exit: {}", d.stderr());
    let reports = d.reports();
    let got = got.lock().expect("lock");
    assert!(
        got.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("x-scope-orgid") && v == "team-a"),
        "--otlp-header reaches the receiver: {:?}",
        got.headers
    );
    // Every report exactly once: the same multiset of flow keys.
    let mut want = reports.iter().map(key_of_report).collect::<Vec<_>>();
    let mut have = got
        .records
        .iter()
        .map(|(_, a, _)| key_of_record(a))
        .collect::<Vec<_>>();
    want.sort();
    have.sort();
    assert_eq!(
        have,
        want,
        "the receiver got every flow report once ({} reports)",
        reports.len()
    );
    for (res, _, _) in &got.records {
        assert_eq!(
            res.keys().cloned().collect::<Vec<_>>(),
            [
                "k8s.cluster.name",
                "k8s.node.name",
                "service.name",
                "service.version"
            ],
            "resource attributes name the agent only: {res:?}"
        );
        assert_eq!(res["service.name"], "segwatch");
        assert_eq!(res["k8s.node.name"], "n1");
        assert_eq!(res["k8s.cluster.name"], "lab");
    }
    // The forbidden connection, attribute by attribute.
    let api = &setup.topo.pods[1];
    let bad = reports
        .iter()
        .find(|r| r["dst"]["port"] == 9090)
        .expect("report of web → api:9090");
    let (_, a, body) = got
        .records
        .iter()
        .find(|(_, a, _)| a.get("destination.port") == Some(&json!(9090)))
        .expect("record of web → api:9090");
    let expect = [
        ("destination.address", json!(api.ip4.to_string())),
        ("network.transport", json!("tcp")),
        ("network.type", json!("ipv4")),
        ("k8s.namespace.name", json!("shop")),
        ("k8s.pod.name", json!("web-0")),
        ("segwatch.source.workload", bad["src"]["workload"].clone()),
        ("segwatch.source.service_account", json!("web")),
        ("segwatch.destination.namespace", json!("api")),
        ("segwatch.destination.pod", json!("api-0")),
        ("segwatch.verdict", json!("violation")),
        ("segwatch.violation.kinds", json!("cross_namespace")),
        ("segwatch.packets.sent", bad["packets"]["sent"].clone()),
        (
            "segwatch.packets.received",
            bad["packets"]["received"].clone(),
        ),
        ("segwatch.bytes.sent", bad["bytes"]["sent"].clone()),
        ("segwatch.bytes.received", bad["bytes"]["received"].clone()),
        ("segwatch.tcp.state", bad["tcp"]["state"].clone()),
    ];
    for (k, v) in expect {
        assert_eq!(a.get(k), Some(&v), "attribute {k} of {a:#?}");
    }
    assert!(
        body.contains("shop/web-0") && body.contains("violation"),
        "body: {body}"
    );
    // Counts for allowed flows match the flow log too.
    for r in reports.iter().filter(|r| r["dst"]["port"] == 8080) {
        let key = key_of_report(r);
        let (_, a, _) = got
            .records
            .iter()
            .find(|(_, a, _)| key_of_record(a) == key)
            .expect("record");
        assert_eq!(a["segwatch.bytes.sent"], r["bytes"]["sent"]);
        assert_eq!(a["segwatch.bytes.received"], r["bytes"]["received"]);
        assert_eq!(a["segwatch.verdict"], "allowed");
    }
}

#[test]
fn otlp_grpc_delivers_every_report_once_with_the_documented_attributes() {
    otlp_roundtrip(true);
}

#[test]
fn otlp_http_gzip_delivers_every_report_once_with_the_documented_attributes() {
    otlp_roundtrip(false);
}

#[test]
fn otlp_receiver_down_every_report_is_counted_lost_and_the_flow_log_is_complete() {
    let setup = Setup::new();
    // Nothing listens on 4399.
    let mut d = setup.start(&[
        "--otlp-endpoint",
        "http://127.0.0.1:4399",
        "--export-retry-timeout",
        "1",
    ]);
    let n = setup.traffic();
    let reports = setup.wait_reports(&d, n);
    let udp = reports
        .iter()
        .find(|r| r["protocol"] == "UDP" && r["dst"]["port"] == 5353)
        .expect("UDP report");
    assert_eq!(udp["packets"]["sent"], 3, "the datapath counted exactly");
    assert_eq!(udp["bytes"]["sent"], 3 * 128, "3 × (100 + 8 UDP + 20 IPv4)");
    // Every report written so far must end up lost, none sent.
    let seen = wait_for(Duration::from_secs(30), || {
        let m = d.metrics();
        let written = d.reports().len() as f64;
        let lost = metric_value(&m, "segwatch_events_lost_total{stage=\"export_otlp\"}");
        (lost == written && lost >= n as f64).then_some((lost, m))
    });
    let m = d.metrics();
    let (lost, m2) = seen.unwrap_or_else(|| {
        panic!(
            "export_otlp losses must equal the {} reports written:\n{}",
            d.reports().len(),
            m.lines()
                .filter(|l| l.contains("export"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!(
        metric_value(
            &m2,
            "segwatch_export_records_total{exporter=\"otlp\",result=\"failed\"}"
        ),
        lost,
        "given up after --export-retry-timeout"
    );
    assert_eq!(
        metric_value(
            &m2,
            "segwatch_export_records_total{exporter=\"otlp\",result=\"sent\"}"
        ),
        0.0
    );
    assert_eq!(d.stop(), 0, "clean exit: {}", d.stderr());
}

// ---------------------------------------------------------------- IPFIX

/// A UDP relay in `netns`: receives on `listen`, keeps a copy of every
/// datagram and forwards it to `to`.
fn relay(netns: &Netns, listen: u16, to: u16) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let copies = Arc::new(Mutex::new(Vec::new()));
    let c = copies.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    netns.run(move || {
        let s = UdpSocket::bind(("127.0.0.1", listen)).expect("bind relay");
        let out = UdpSocket::bind("127.0.0.1:0").expect("bind relay out");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 65536];
        while let Ok(n) = s.recv(&mut buf) {
            c.lock().expect("lock").push(buf[..n].to_vec());
            let _ = out.send_to(&buf[..n], ("127.0.0.1", to));
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("relay up");
    copies
}

fn need(tool: &str) {
    let ok = Command::new(tool)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "{tool} is missing: install Debian's nfdump package (cargo xtask setup does)"
    );
}

#[test]
fn ipfix_nfdump_reads_the_flow_logs_counts_and_a_second_decoder_the_k8s_elements() {
    need("nfcapd");
    need("nfdump");
    let setup = Setup::new();
    let node = &setup.topo.node;
    let capdir = TempDir::new("nfcapd");
    let nfcapd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.name,
            "nfcapd",
            "-b",
            "127.0.0.1",
            "-p",
            "4740",
            "-w",
        ])
        .arg(&capdir.0)
        .args(["-t", "3600"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nfcapd");
    let copies = relay(node, 4739, 4740);
    let mut d = setup.start(&["--ipfix-collector", "127.0.0.1:4739"]);
    let n = setup.traffic();
    setup.wait_reports(&d, n);
    assert_eq!(d.stop(), 0, "clean exit: {}", d.stderr());
    let reports = d.reports();
    // The agent stopped after its last send; let the relay and nfcapd
    // take in the last datagrams (a bound, not a timing assertion).
    let all = wait_for(Duration::from_secs(5), || {
        let c = copies.lock().expect("lock").len();
        (c > 0).then_some(c)
    });
    assert!(all.is_some(), "no IPFIX datagram reached the relay");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our child (ip netns exec execs nfcapd in place).
    unsafe { libc::kill(nfcapd.id() as i32, libc::SIGTERM) };
    let out = nfcapd.wait_with_output().expect("nfcapd exits");
    assert!(
        out.status.success(),
        "nfcapd: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 1. nfdump: one flow per direction, counts equal the flow log's.
    let dump = Command::new("nfdump")
        .arg("-R")
        .arg(&capdir.0)
        .args(["-o", "json", "-q"])
        .output()
        .expect("run nfdump");
    assert!(
        dump.status.success(),
        "nfdump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let flows = parse_nfdump_json(&String::from_utf8_lossy(&dump.stdout));
    let mut want = BTreeMap::new();
    for r in &reports {
        let proto = match r["protocol"].as_str() {
            Some("TCP") => 6,
            Some("UDP") => 17,
            Some("ICMP") => 1,
            Some("ICMPv6") => 58,
            _ => continue,
        };
        let ip = |e: &Value| e["ip"].as_str().unwrap_or("").to_string();
        let port = |e: &Value| e["port"].as_u64().unwrap_or(0);
        *want
            .entry((
                ip(&r["src"]),
                port(&r["src"]),
                ip(&r["dst"]),
                port(&r["dst"]),
                proto,
            ))
            .or_insert((0, 0)) = (
            r["packets"]["sent"].as_u64().unwrap_or(0),
            r["bytes"]["sent"].as_u64().unwrap_or(0),
        );
        if r["packets"]["received"].as_u64().unwrap_or(0) > 0 {
            want.insert(
                (
                    ip(&r["dst"]),
                    port(&r["dst"]),
                    ip(&r["src"]),
                    port(&r["src"]),
                    proto,
                ),
                (
                    r["packets"]["received"].as_u64().unwrap_or(0),
                    r["bytes"]["received"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    assert!(want.len() >= 7, "4 flows, 3 answered: {want:#?}");
    let mut have = BTreeMap::new();
    for f in &flows {
        let e = have.entry(f.0.clone()).or_insert((0, 0));
        e.0 += f.1;
        e.1 += f.2;
    }
    assert_eq!(
        have, want,
        "nfdump's per-flow packets and bytes equal the flow log's"
    );

    // 2. netflow_parser: the enterprise elements (PEN 32473).
    let records = segwatch::testing::decode_ipfix(
        &copies.lock().expect("lock"),
        segwatch::export::ipfix::PEN,
    );
    let pen = |id: u16| format!("32473/{id}");
    let get = |r: &BTreeMap<String, String>, k: &str| r.get(k).cloned().unwrap_or_default();
    let forbidden = records
        .iter()
        .filter(|r| get(r, "IANA(DestinationTransportPort)") == "9090")
        .collect::<Vec<_>>();
    assert_eq!(
        forbidden.len(),
        1,
        "one record of web → api:9090: {records:#?}"
    );
    let f = forbidden[0];
    let bad = reports
        .iter()
        .find(|r| r["dst"]["port"] == 9090)
        .expect("flow log report of web → api:9090");
    for (id, want) in [
        (1, "shop"),
        (2, "web-0"),
        (3, bad["src"]["workload"].as_str().unwrap_or("")),
        (4, "web"),
        (5, "api"),
        (6, "api-0"),
        (8, "api"),
        (10, "violation"),
        (11, "cross_namespace"),
    ] {
        assert_eq!(get(f, &pen(id)), want, "enterprise element {id} in {f:#?}");
    }
    assert_eq!(
        get(f, "IANA(PacketDeltaCount)"),
        bad["packets"]["sent"].to_string()
    );
    // The answers of the allowed connections: the responder is the source.
    let answers = records
        .iter()
        .filter(|r| get(r, "IANA(SourceTransportPort)") == "8080")
        .collect::<Vec<_>>();
    assert_eq!(answers.len(), 2, "two allowed connections answered");
    for a in answers {
        assert_eq!(get(a, &pen(1)), "api");
        assert_eq!(get(a, &pen(6)), "web-0");
        assert_eq!(get(a, &pen(10)), "allowed");
        assert_eq!(get(a, &pen(11)), "", "no violation kinds element");
        assert_eq!(get(a, "IANA(BiflowDirection)"), "2");
    }
}

/// (5-tuple, packets, bytes) of each flow in nfdump's JSON output.
fn parse_nfdump_json(text: &str) -> Vec<((String, u64, String, u64, u64), u64, u64)> {
    let v: Value = serde_json::from_str(text.trim())
        .or_else(|_| serde_json::from_str(&format!("[{}]", text.trim().trim_end_matches(','))))
        .unwrap_or_else(|e| panic!("nfdump JSON ({e}): {text}"));
    let arr = v.as_array().cloned().unwrap_or_default();
    arr.iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or("").to_string();
            let u = |k: &str| f[k].as_u64().unwrap_or(0);
            let (src, dst) = if f.get("src4_addr").is_some() {
                (s("src4_addr"), s("dst4_addr"))
            } else {
                (s("src6_addr"), s("dst6_addr"))
            };
            (
                (src, u("src_port"), dst, u("dst_port"), u("proto")),
                u("in_packets"),
                u("in_bytes"),
            )
        })
        .collect()
}

// ------------------------------------------------ flow log filter, SIGHUP

#[test]
fn flow_log_filter_keeps_violations_and_sighup_reopens_the_file() {
    let setup = Setup::new();
    let mut d = setup.start(&["--flow-log-filter", "violations"]);
    let (web, api) = (&setup.topo.pods[0], &setup.topo.pods[1]);
    // Allowed (8080) and forbidden (9090) connections.
    tcp_client(web, SocketAddr::new(api.ip4, 8080), 100);
    let first_port = tcp_client(web, SocketAddr::new(api.ip4, 9090), 10);
    let allowed_flows = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("segwatch_flows_total{") && l.contains("verdict=\"allowed\""))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    let first = wait_for(Duration::from_secs(20), || {
        let r = d.reports();
        let done = r.iter().any(|r| r["src"]["port"] == first_port);
        (done && allowed_flows(&d.metrics()) >= 1.0).then_some(r)
    })
    .unwrap_or_else(|| panic!("a violation report and an allowed flow: {}", d.stderr()));
    assert!(
        first.iter().all(|r| r["verdict"] == "violation"),
        "only violations in the flow log: {first:#?}"
    );
    assert_eq!(
        first.iter().filter(|r| r["dst"]["port"] == 9090).count(),
        1,
        "the forbidden connection once: {first:#?}"
    );
    // logrotate: move the file away, SIGHUP, new reports go to a new file.
    let rotated = d.flow_log.with_extension("jsonl.1");
    std::fs::rename(&d.flow_log, &rotated).expect("rotate");
    let pid = d.child.as_ref().expect("running").id();
    // SAFETY: kill(2) on our child (ip netns exec execs segwatch in place).
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let reopened = wait_for(Duration::from_secs(10), || {
        d.flow_log.exists().then_some(())
    });
    assert!(
        reopened.is_some(),
        "SIGHUP reopens --flow-log: {}",
        d.stderr()
    );
    let second_port = tcp_client(web, SocketAddr::new(api.ip4, 9090), 20);
    let second = wait_for(Duration::from_secs(20), || {
        let r = d.reports();
        r.iter()
            .any(|r| r["src"]["port"] == second_port)
            .then_some(r)
    })
    .unwrap_or_else(|| panic!("the new violation in the new file: {}", d.stderr()));
    assert_eq!(d.stop(), 0, "clean exit: {}", d.stderr());
    let second_all = d.reports();
    assert!(second_all.len() >= second.len());
    assert!(
        second_all
            .iter()
            .all(|r| r["verdict"] == "violation" && r["dst"]["port"] == 9090),
        "{second_all:#?}"
    );
    assert!(
        second_all.iter().all(|r| r["src"]["port"] != first_port),
        "the first connection is not in the new file"
    );
    let old = read_reports(&rotated);
    assert!(
        old.iter().all(|r| r["src"]["port"] != second_port),
        "nothing after SIGHUP in the rotated file: {old:#?}"
    );
    assert_eq!(old.len(), first.len(), "the rotated file is unchanged");
}
