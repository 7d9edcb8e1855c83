//! OTLP export to a collector that speaks TLS only (gRPC over TLS, its
//! serving certificate issued by a CA made in the test): with
//! `--otlp-ca-file` naming that CA every flow report arrives once; without
//! it the agent does not trust the collector: nothing is delivered and
//! nothing counted sent (the loss count after the retries is checked in
//! tests/export.rs with a collector that is down).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use serde_json::json;
use tests::*;

const PORT: u16 = 4317;

/// `source.port` of every record received.
struct Receiver(Arc<Mutex<Vec<i64>>>);

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("lock");
        for rl in &request.get_ref().resource_logs {
            for sl in &rl.scope_logs {
                for rec in &sl.log_records {
                    let port = rec
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "source.port")
                        .and_then(|kv| kv.value.as_ref())
                        .and_then(|v| match v.value {
                            Some(any_value::Value::IntValue(i)) => Some(i),
                            _ => None,
                        })
                        .unwrap_or(-1);
                    got.push(port);
                }
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// A CA, and a serving certificate for 127.0.0.1 it issued: (CA PEM,
/// certificate PEM, key PEM).
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "segwatch test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// The TLS-only OTLP/gRPC collector inside `netns`.
fn collector(netns: &Netns, cert: String, key: String) -> Arc<Mutex<Vec<i64>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    serve_in(netns, PORT, "collector", move |listener| async move {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key));
        tonic::transport::Server::builder()
            .tls_config(tls)
            .expect("TLS config")
            .add_service(LogsServiceServer::new(Receiver(g)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("collector");
    });
    got
}

#[test]
fn otlp_over_tls_with_the_collectors_ca_delivers_and_without_it_delivers_nothing() {
    require_root();
    let topo = Topo::with_prefix("swtls", 2, false);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    tcp_server(b, b.ip4, 8080, 100);
    let dir = TempDir::new("export-tls");
    let (ca, cert, key) = certificates();
    let ca_file = dir.0.join("ca.pem");
    std::fs::write(&ca_file, &ca).expect("write CA");
    let got = collector(&topo.node, cert, key);
    let ca_s = ca_file.to_str().expect("utf-8");
    let inv = dir.0.join("inventory.json");
    std::fs::write(&inv, r#"{"apiVersion": "v1", "kind": "List", "items": []}"#).expect("write");
    let inv_s = inv.to_str().expect("utf-8");
    let url = format!("https://127.0.0.1:{PORT}");

    for (trusted, extra) in [
        (true, vec!["--otlp-endpoint", &url, "--otlp-ca-file", ca_s]),
        (false, vec!["--otlp-endpoint", &url]),
    ] {
        got.lock().expect("lock").clear();
        let mut args = vec![
            "--idle-timeout",
            "2",
            "--sweep-interval-ms",
            "200",
            "--node-name",
            "n1",
            "--inventory",
            inv_s,
        ];
        args.extend(extra);
        let mut d = Daemon::start(&topo.node.name, &args);
        let ports: Vec<u16> = (0..3)
            .map(|_| tcp_client(a, SocketAddr::new(b.ip4, 8080), 100))
            .collect();
        let seen = wait_for(Duration::from_secs(20), || {
            let r = d.reports();
            ports
                .iter()
                .all(|p| {
                    r.iter()
                        .any(|x| x["src"]["port"] == json!(p) && x["ended"] != false)
                })
                .then_some(())
        });
        assert!(
            seen.is_some(),
            "the flow log has the 3 connections: {}",
            d.stderr()
        );
        if trusted {
            let delivered = wait_for(Duration::from_secs(15), || {
                let g = got.lock().expect("lock");
                ports
                    .iter()
                    .all(|p| g.iter().filter(|x| **x == i64::from(*p)).count() == 1)
                    .then_some(())
            });
            assert!(
                delivered.is_some(),
                "with --otlp-ca-file each connection arrives once over TLS: got source ports {:?}, want {ports:?}\n{}",
                got.lock().expect("lock"),
                d.stderr()
            );
            assert_eq!(d.stop(), 0, "clean exit: {}", d.stderr());
            assert_eq!(
                got.lock().expect("lock").len(),
                d.reports().len(),
                "every report once"
            );
        } else {
            // The agent retries with backoff (the loss is counted when
            // its retries end; tests/export.rs checks that count): in the
            // meantime nothing may reach a collector it does not trust.
            std::thread::sleep(Duration::from_secs(5));
            let m = d.metrics();
            assert!(
                m.contains("segwatch_export_records_total{exporter=\"otlp\",result=\"sent\"} 0"),
                "nothing counted sent to an untrusted collector:\n{m}"
            );
            assert!(
                got.lock().expect("lock").is_empty(),
                "nothing is delivered to a collector the agent does not trust"
            );
            assert_eq!(d.stop(), 0, "clean exit: {}", d.stderr());
        }
    }
}
