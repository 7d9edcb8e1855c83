//! `export.*`: what flow export costs (issue #18), exporters on vs off.
//!
//! ```text
//!  bench thread (one core, a current-thread runtime)      receiver thread
//!  reports ─► Queue ─► run_worker ─► IpfixSink ──UDP──►   count records (decode_ipfix)
//!                                 └► OtlpSink ──HTTP──►   decode, count log records
//!                                             └─gRPC──►   decode, count log records
//! ```
//!
//! - `export.<exporter>_flows_per_cpu_sec`: reports the exporter turns into
//!   wire messages and sends, per second of CPU on the exporting thread
//!   (the whole exporter runs on it: queue, encoder, HTTP/gRPC client), so
//!   what one core sustains. Every record must arrive at the receiver
//!   (IPFIX: one data record per direction that carried packets).
//! - `export.offer_ns_per_report`: what the report path pays per report
//!   with both exporters on (`Exporters::offer`: one clone into shared
//!   memory and a push per queue), next to the same call with export off.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use segwatch::export::otlp::{OtlpConfig, OtlpSink, Protocol};
use segwatch::export::{ipfix, run_worker, ExportConfig, Exporters, Outcome, Policy, Queue, Sink};
use segwatch::metrics::Metrics;
use segwatch::report::FlowReport;
use serde_json::json;

use crate::report::{Figure, Target};
use crate::traffic::thread_cpu_s;
use crate::Ctx;

/// The contract's example report; the bench varies addresses and ports.
const EXAMPLE: &str = r#"{"time":"2026-01-01T00:00:02Z","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z","interface":"veth1","protocol":"TCP","ip_version":4,"src":{"ip":"10.1.0.5","port":40312,"kind":"pod","namespace":"shop","pod":"web-0","workload":"Deployment/web","service_account":"web","node":"n1"},"dst":{"ip":"10.2.0.7","port":8080,"kind":"pod","namespace":"api","pod":"backend-7d9f-x2x","workload":"Deployment/backend","service_account":"backend","node":"n2"},"packets":{"sent":12,"received":10},"bytes":{"sent":1432,"received":88123},"tcp":{"flags":["SYN","ACK","FIN"],"state":"closed"},"verdict":"violation","violations":[{"kind":"cross_namespace","rule":"baseline","reason":"shop -> api:8080/TCP is not whitelisted"}]}"#;

/// The flows/s one core must sustain: above the highest connection rate
/// the datapath reports with zero loss on this kind of machine (~15,000
/// conn/s, the storm figure), with margin.
const FLOWS_PER_CPU_SEC_TARGET: f64 = 20_000.0;
/// What the report path may pay per report for export.
const OFFER_NS_TARGET: f64 = 2_000.0;

fn reports(n: usize) -> Result<Vec<Arc<FlowReport>>> {
    let base: FlowReport = serde_json::from_str(EXAMPLE).context("the example report")?;
    Ok((0..n)
        .map(|i| {
            let mut r = base.clone();
            r.src.ip = std::net::Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8).into();
            r.src.port = Some(32768 + (i % 28000) as u16);
            r.dst.port = Some(8000 + (i % 50) as u16);
            r.packets.sent = 1 + (i % 97) as u64;
            r.bytes.sent = 60 + (i % 9000) as u64;
            Arc::new(r)
        })
        .collect())
}

/// Log records received over OTLP (HTTP and gRPC).
#[derive(Clone, Default)]
struct Received(Arc<AtomicU64>);

impl Received {
    fn add(&self, req: &ExportLogsServiceRequest) {
        let n: usize = req
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[tonic::async_trait]
impl LogsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.add(request.get_ref());
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// OTLP receivers (HTTP/protobuf and gRPC) on loopback, on a runtime of
/// their own thread; returns their ports.
fn otlp_receivers(got: Received) -> Result<(u16, u16)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("receiver runtime");
        rt.block_on(async move {
            let http = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let ports = (
                http.local_addr().expect("addr").port(),
                grpc.local_addr().expect("addr").port(),
            );
            let g = got.clone();
            let app = axum::Router::new().route(
                "/v1/logs",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let g = g.clone();
                    async move {
                        use prost::Message as _;
                        let Ok(req) = ExportLogsServiceRequest::decode(&body[..]) else {
                            return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                        };
                        g.add(&req);
                        let resp = ExportLogsServiceResponse {
                            partial_success: None,
                        };
                        (axum::http::StatusCode::OK, resp.encode_to_vec())
                    }
                }),
            );
            tx.send(ports).expect("ready");
            let incoming = tonic::transport::server::TcpIncoming::from(grpc);
            let grpc = tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(got))
                .serve_with_incoming(incoming);
            let http = async move { axum::serve(http, app).await };
            let _ = tokio::join!(grpc, http);
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .context("the OTLP receivers did not start")
}

/// An IPFIX collector on loopback: keeps every datagram until `stop`.
struct IpfixCollector {
    port: u16,
    datagrams: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl IpfixCollector {
    fn start() -> Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0").context("binding the IPFIX collector")?;
        // Loopback UDP drops what the receiver has no room for: a large
        // buffer (FORCE: above rmem_max, as root) keeps the count honest.
        let size: libc::c_int = 64 << 20;
        // SAFETY: a valid socket and a pointer to a c_int of the given size.
        unsafe {
            use std::os::fd::AsRawFd as _;
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let port = sock.local_addr()?.port();
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let d = datagrams.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            // Ends with the process; the bench runs this phase once.
            loop {
                if let Ok(n) = sock.recv(&mut buf) {
                    d.lock().expect("lock").push(buf[..n].to_vec());
                }
            }
        });
        Ok(IpfixCollector { port, datagrams })
    }

    /// Data records received so far (decoded by the independent decoder).
    fn records(&self) -> usize {
        let dgrams = std::mem::take(&mut *self.datagrams.lock().expect("lock"));
        segwatch::testing::decode_ipfix(&dgrams, ipfix::PEN).len()
    }
}

struct Sustained {
    sent: u64,
    wall_s: f64,
    cpu_s: f64,
}

/// Pushes every report through `sink` on the current thread's runtime,
/// never refused for lack of room (the producer waits), and measures the
/// thread's CPU until the last report is delivered.
async fn sustain<S: Sink>(sink: S, all: &[Arc<FlowReport>]) -> Result<Sustained> {
    let metrics = Metrics::new();
    let outcome = Outcome::new(S::NAME, metrics.clone());
    let queue = Arc::new(Queue::new(32 << 20));
    let policy = Policy {
        retry_timeout: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
    };
    let (cpu0, t0) = (thread_cpu_s(), Instant::now());
    let worker = tokio::spawn(run_worker(sink, queue.clone(), outcome, policy));
    for r in all {
        while queue.push(r.clone()).is_err() {
            tokio::task::yield_now().await;
        }
    }
    queue.close();
    worker.await.context("the export worker panicked")?;
    let (wall_s, cpu_s) = (t0.elapsed().as_secs_f64(), thread_cpu_s() - cpu0);
    let count = |result: &str| {
        metrics
            .export_records
            .with_label_values(&[S::NAME, result])
            .get()
    };
    let lost: u64 = ["queue_full", "failed", "shutdown"]
        .into_iter()
        .map(count)
        .sum();
    if lost > 0 {
        bail!("{}: {lost} reports not delivered", S::NAME);
    }
    Ok(Sustained {
        sent: count("sent"),
        wall_s,
        cpu_s,
    })
}

fn otlp_config(endpoint: String, protocol: Protocol) -> OtlpConfig {
    OtlpConfig {
        endpoint,
        protocol,
        headers: vec![],
        gzip: false,
        ca_file: None,
        client_cert: None,
        client_key: None,
        timeout: Duration::from_secs(10),
        node_name: Some("bench".into()),
        cluster_name: Some("bench".into()),
    }
}

pub fn phase(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let n = ctx.plan.export_records;
    let all = reports(n)?;
    let got = Received::default();
    let (http_port, grpc_port) = otlp_receivers(got.clone())?;
    let collector = IpfixCollector::start()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("bench runtime")?;
    let mut figures = Vec::new();

    // One exporter at a time, the whole exporter on this thread.
    let mut rows = Vec::new();
    for name in ["ipfix", "otlp_http", "otlp_grpc"] {
        let before = got.get();
        let s = rt.block_on(async {
            match name {
                "ipfix" => {
                    let sink =
                        ipfix::IpfixSink::connect(&format!("127.0.0.1:{}", collector.port), 1)
                            .await?;
                    sustain(sink, &all).await
                }
                "otlp_http" => {
                    let cfg = otlp_config(
                        format!("http://127.0.0.1:{http_port}/v1/logs"),
                        Protocol::Http,
                    );
                    sustain(OtlpSink::new(&cfg)?, &all).await
                }
                _ => {
                    let cfg = otlp_config(format!("http://127.0.0.1:{grpc_port}"), Protocol::Grpc);
                    sustain(OtlpSink::new(&cfg)?, &all).await
                }
            }
        })?;
        // Let the receivers catch up with the last message.
        std::thread::sleep(Duration::from_millis(500));
        let received = if name == "ipfix" {
            collector.records() as u64
        } else {
            got.get() - before
        };
        // IPFIX: one data record per direction that carried packets.
        let expected = if name == "ipfix" {
            all.iter()
                .map(|r| ipfix::data_records(r).len() as u64)
                .sum()
        } else {
            s.sent
        };
        if received != expected {
            bail!(
                "{name}: {} reports sent, {received} records received, {expected} expected",
                s.sent
            );
        }
        let per_cpu = s.sent as f64 / s.cpu_s.max(1e-9);
        eprintln!(
            "    {name}: {} reports in {:.2} s wall, {:.2} s CPU: {per_cpu:.0} flows per CPU-second ({received} received)",
            s.sent, s.wall_s, s.cpu_s
        );
        let detail = json!({"reports": s.sent, "received": received, "wall_s": s.wall_s,
                            "cpu_s": s.cpu_s, "flows_per_wall_sec": s.sent as f64 / s.wall_s});
        rows.push((name, per_cpu, detail));
    }
    for (name, per_cpu, detail) in rows {
        figures.push(
            Figure::new(
                &format!("export.{name}_flows_per_cpu_sec"),
                "flows/s",
                Some(Target::AtLeast(FLOWS_PER_CPU_SEC_TARGET)),
                vec![per_cpu],
            )
            .what(format!(
                "{n} flow reports through the {name} exporter (queue, encoder, client) per CPU-second of its thread"
            ))
            .detail(detail),
        );
    }

    // The report path: offer() with both exporters on vs off. The workers
    // do not run while offering (one thread, no await), so this is the
    // caller's cost alone; the reports are delivered afterwards.
    let metrics = Metrics::new();
    let (on_ns, off_ns) = rt.block_on(async {
        let cfg = ExportConfig {
            otlp: Some(otlp_config(
                format!("http://127.0.0.1:{grpc_port}"),
                Protocol::Grpc,
            )),
            ipfix: Some(format!("127.0.0.1:{}", collector.port)),
            memory_budget: 4 << 30,
            retry_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(60),
        };
        let on = Exporters::start(&cfg, &metrics).await?;
        let t = Instant::now();
        for r in &all {
            on.offer(r);
        }
        let on_ns = t.elapsed().as_nanos() as f64 / n as f64;
        on.shutdown().await;
        let off = Exporters::none();
        let t = Instant::now();
        for r in &all {
            off.offer(std::hint::black_box(r));
        }
        let off_ns = t.elapsed().as_nanos() as f64 / n as f64;
        anyhow::Ok((on_ns, off_ns))
    })?;
    let sent = |e: &str| metrics.export_records.with_label_values(&[e, "sent"]).get();
    if sent("otlp") != n as u64 || sent("ipfix") != n as u64 {
        bail!(
            "offer phase: otlp sent {}, ipfix sent {} of {n}",
            sent("otlp"),
            sent("ipfix")
        );
    }
    figures.push(
        Figure::new(
            "export.offer_ns_per_report",
            "ns",
            Some(Target::AtMost(OFFER_NS_TARGET)),
            vec![on_ns],
        )
        .what(format!(
            "report path cost per report with OTLP and IPFIX on ({off_ns:.1} ns with export off)"
        ))
        .detail(json!({"on_ns": on_ns, "off_ns": off_ns, "reports": n})),
    );
    Ok(figures)
}
