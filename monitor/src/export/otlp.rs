//! OTLP logs export: one log record per flow report, sent with the
//! OpenTelemetry project's own exporter (`opentelemetry-otlp`) over gRPC or
//! HTTP/protobuf.
//!
//! We call the exporter directly with our batches instead of going through
//! the SDK's batch processor: that processor drops records on overflow and
//! says so only in its own logs, while every record here goes through our
//! bounded queue, our retries and our loss counters (`super`).
//!
//! Resource attributes name the agent only (`service.name`,
//! `k8s.node.name`, `k8s.cluster.name`): backends such as Loki turn resource
//! attributes into index labels, and a pod name there would make one stream
//! per pod. The flow itself is in record attributes, listed in the README
//! ("OTLP log records").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLoggerProvider};
use rustls_pki_types::pem::PemObject as _;

use super::ExportError;
use crate::report::{Endpoint, FlowReport, Verdict};

/// Wire protocol of `--otlp-endpoint`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317); the endpoint is the server's base URL.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318); the endpoint is
    /// the full URL of the logs path, e.g. `http://collector:4318/v1/logs`.
    Http,
}

/// Everything the OTLP exporter needs, validated by `segwatch run`.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub gzip: bool,
    /// PEM CA bundle to trust instead of the system roots (https only).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Deadline of one export request.
    pub timeout: Duration,
    pub node_name: Option<String>,
    pub cluster_name: Option<String>,
}

/// The OTLP sink: the exporter plus what is needed to build records.
pub struct OtlpSink {
    exporter: opentelemetry_otlp::LogExporter,
    scope: InstrumentationScope,
    /// Only a factory for records (`SdkLogRecord` has no public
    /// constructor); it has no processor, nothing is emitted through it.
    logger: opentelemetry_sdk::logs::SdkLogger,
    _provider: SdkLoggerProvider,
}

fn cfg_err(flag: &'static str, value: &str, reason: impl std::fmt::Display) -> ExportError {
    ExportError::Config {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn read_pem(flag: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path).map_err(|e| cfg_err(flag, &path.display().to_string(), e))
}

/// The agent's resource: who sent the records, never what they are about.
pub fn resource(cfg: &OtlpConfig) -> opentelemetry_sdk::Resource {
    let mut attrs = vec![KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION").to_string(),
    )];
    if let Some(n) = &cfg.node_name {
        attrs.push(KeyValue::new("k8s.node.name", n.clone()));
    }
    if let Some(c) = &cfg.cluster_name {
        attrs.push(KeyValue::new("k8s.cluster.name", c.clone()));
    }
    opentelemetry_sdk::Resource::builder_empty()
        .with_service_name("segwatch")
        .with_attributes(attrs)
        .build()
}

impl OtlpSink {
    /// Builds the exporter (inside the tokio runtime: the gRPC channel
    /// connects lazily on it). Bad flags and unreadable certificates are
    /// errors naming the flag.
    pub fn new(cfg: &OtlpConfig) -> Result<Self, ExportError> {
        let url = cfg
            .endpoint
            .parse::<http::Uri>()
            .map_err(|e| cfg_err("--otlp-endpoint", &cfg.endpoint, e))?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(cfg_err(
                    "--otlp-endpoint",
                    &cfg.endpoint,
                    "must start with http:// or https://",
                ))
            }
        };
        if !https && (cfg.ca_file.is_some() || cfg.client_cert.is_some()) {
            return Err(cfg_err(
                "--otlp-ca-file/--otlp-client-cert",
                &cfg.endpoint,
                "TLS options need an https:// endpoint",
            ));
        }
        if cfg.client_cert.is_some() != cfg.client_key.is_some() {
            return Err(cfg_err(
                "--otlp-client-cert/--otlp-client-key",
                "",
                "give both or neither",
            ));
        }
        let no_retry = opentelemetry_otlp::RetryPolicy::disabled();
        let compression = cfg.gzip.then_some(opentelemetry_otlp::Compression::Gzip);
        let exporter = match cfg.protocol {
            Protocol::Grpc => {
                let mut md = tonic::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key =
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .map_err(|e| cfg_err("--otlp-header", k, e))?;
                    let val = v
                        .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
                        .map_err(|e| cfg_err("--otlp-header", k, e))?;
                    md.insert(key, val);
                }
                let mut b = opentelemetry_otlp::LogExporter::builder()
                    .with_tonic()
                    .with_endpoint(cfg.endpoint.clone())
                    .with_timeout(cfg.timeout)
                    .with_metadata(md)
                    .with_retry_policy(no_retry);
                if let Some(c) = compression {
                    b = b.with_compression(c);
                }
                if https {
                    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                    if let Some(ca) = &cfg.ca_file {
                        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(
                            read_pem("--otlp-ca-file", ca)?,
                        ));
                    }
                    if let (Some(c), Some(k)) = (&cfg.client_cert, &cfg.client_key) {
                        tls = tls.identity(tonic::transport::Identity::from_pem(
                            read_pem("--otlp-client-cert", c)?,
                            read_pem("--otlp-client-key", k)?,
                        ));
                    }
                    b = b.with_tls_config(tls);
                }
                b.build()
                    .map_err(|e| cfg_err("--otlp-endpoint", &cfg.endpoint, e))?
            }
            Protocol::Http => {
                let headers = cfg.headers.iter().cloned().collect::<HashMap<_, _>>();
                let client = http_client(cfg, https)?;
                let mut b = opentelemetry_otlp::LogExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(cfg.endpoint.clone())
                    .with_timeout(cfg.timeout)
                    .with_headers(headers)
                    .with_http_client(client)
                    .with_retry_policy(no_retry);
                if let Some(c) = compression {
                    b = b.with_compression(c);
                }
                b.build()
                    .map_err(|e| cfg_err("--otlp-endpoint", &cfg.endpoint, e))?
            }
        };
        let mut exporter = exporter;
        exporter.set_resource(&resource(cfg));
        let provider = SdkLoggerProvider::builder().build();
        let scope = InstrumentationScope::builder("segwatch")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let logger = provider.logger_with_scope(scope.clone());
        Ok(OtlpSink {
            exporter,
            scope,
            logger,
            _provider: provider,
        })
    }
}

/// The HTTP client for OTLP/HTTP: hyper with rustls (already in the build
/// through kube), trusting the system roots, or `--otlp-ca-file` instead.
fn http_client(
    cfg: &OtlpConfig,
    https: bool,
) -> Result<
    opentelemetry_http::hyper::HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    >,
    ExportError,
> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| cfg_err("--otlp-endpoint", &cfg.endpoint, e))?;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &cfg.ca_file {
        let pem = read_pem("--otlp-ca-file", ca)?;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| cfg_err("--otlp-ca-file", &ca.display().to_string(), e))?;
            roots
                .add(cert)
                .map_err(|e| cfg_err("--otlp-ca-file", &ca.display().to_string(), e))?;
        }
        if roots.is_empty() {
            return Err(cfg_err(
                "--otlp-ca-file",
                &ca.display().to_string(),
                "no PEM certificate in it",
            ));
        }
    } else if https {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    let builder = builder.with_root_certificates(roots);
    let tls = match (&cfg.client_cert, &cfg.client_key) {
        (Some(c), Some(k)) => {
            let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&read_pem(
                "--otlp-client-cert",
                c,
            )?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cfg_err("--otlp-client-cert", &c.display().to_string(), e))?;
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(&read_pem("--otlp-client-key", k)?)
                    .map_err(|e| cfg_err("--otlp-client-key", &k.display().to_string(), e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| cfg_err("--otlp-client-cert", &c.display().to_string(), e))?
        }
        _ => builder.with_no_client_auth(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector,
        cfg.timeout,
        None,
    ))
}

fn ep_str(e: &Option<Arc<str>>) -> Option<String> {
    e.as_deref().map(str::to_string)
}

fn kind_str(e: &Endpoint) -> Option<&'static str> {
    e.kind.map(|k| match k {
        crate::report::EndpointKind::Pod => "pod",
        crate::report::EndpointKind::Service => "service",
        crate::report::EndpointKind::Node => "node",
        crate::report::EndpointKind::Metadata => "metadata",
        crate::report::EndpointKind::External => "external",
    })
}

/// The record attributes of one report (names in the README table). Only
/// fields the report has are set: absent means unknown, never a default.
pub fn attributes(r: &FlowReport) -> Vec<(&'static str, AnyValue)> {
    let mut a: Vec<(&'static str, AnyValue)> = Vec::with_capacity(40);
    let s = |v: &str| AnyValue::from(v.to_string());
    a.push(("source.address", s(&r.src.ip.to_string())));
    if let Some(p) = r.src.port {
        a.push(("source.port", AnyValue::from(i64::from(p))));
    }
    a.push(("destination.address", s(&r.dst.ip.to_string())));
    if let Some(p) = r.dst.port {
        a.push(("destination.port", AnyValue::from(i64::from(p))));
    }
    a.push(("network.transport", s(&r.protocol.to_ascii_lowercase())));
    a.push((
        "network.type",
        s(if r.ip_version == 6 { "ipv6" } else { "ipv4" }),
    ));
    if !r.interface.is_empty() {
        a.push(("network.interface.name", s(&r.interface)));
    }
    // The opener is "the" pod of the record in OpenTelemetry's k8s.*
    // conventions (one pod per record); the peer is segwatch.destination.*.
    if let Some(ns) = ep_str(&r.src.namespace) {
        a.push(("k8s.namespace.name", AnyValue::from(ns)));
    }
    if let Some(p) = ep_str(&r.src.pod) {
        a.push(("k8s.pod.name", AnyValue::from(p)));
    }
    for (prefix, e) in [("source", &r.src), ("destination", &r.dst)] {
        let key = |k: &str| -> &'static str {
            // Interned once per name: a fixed, bounded set of keys.
            intern(prefix, k)
        };
        if let Some(k) = kind_str(e) {
            a.push((key("kind"), s(k)));
        }
        if prefix == "destination" {
            if let Some(v) = ep_str(&e.namespace) {
                a.push((key("namespace"), AnyValue::from(v)));
            }
            if let Some(v) = ep_str(&e.pod) {
                a.push((key("pod"), AnyValue::from(v)));
            }
        }
        for (name, v) in [
            ("workload", &e.workload),
            ("service_account", &e.service_account),
            ("node", &e.node),
        ] {
            if let Some(v) = ep_str(v) {
                a.push((key(name), AnyValue::from(v)));
            }
        }
        if let Some(svc) = &e.service {
            a.push((key("service"), AnyValue::from(svc.id())));
        }
    }
    a.push((
        "segwatch.verdict",
        s(match r.verdict {
            Some(Verdict::Allowed) => "allowed",
            Some(Verdict::Violation) => "violation",
            Some(Verdict::Unjudged) | None => "unjudged",
        }),
    ));
    if !r.violations.is_empty() {
        let join = |f: &dyn Fn(&crate::report::Violation) -> String, sep: &str| {
            r.violations.iter().map(f).collect::<Vec<_>>().join(sep)
        };
        a.push((
            "segwatch.violation.kinds",
            AnyValue::from(join(&|v| v.kind.as_str().to_string(), ",")),
        ));
        a.push((
            "segwatch.violation.rules",
            AnyValue::from(join(&|v| v.rule.clone(), ",")),
        ));
        a.push((
            "segwatch.violation.reasons",
            AnyValue::from(join(&|v| v.reason.clone(), "; ")),
        ));
    }
    if let Some(n) = &r.netpol {
        a.push(("segwatch.netpol.allowed", AnyValue::from(n.allowed)));
    }
    let n = |v: u64| AnyValue::from(i64::try_from(v).unwrap_or(i64::MAX));
    a.push(("segwatch.packets.sent", n(r.packets.sent)));
    a.push(("segwatch.packets.received", n(r.packets.received)));
    a.push(("segwatch.bytes.sent", n(r.bytes.sent)));
    a.push(("segwatch.bytes.received", n(r.bytes.received)));
    if let Some(t) = &r.tcp {
        a.push((
            "segwatch.tcp.state",
            s(match t.state {
                crate::report::TcpState::Attempted => "attempted",
                crate::report::TcpState::Established => "established",
                crate::report::TcpState::Rejected => "rejected",
                crate::report::TcpState::Closed => "closed",
            }),
        ));
        a.push(("segwatch.tcp.flags", s(&t.flags.join(","))));
    }
    if let Some(i) = r.icmp {
        a.push(("segwatch.icmp.type", AnyValue::from(i64::from(i.icmp_type))));
        if let Some(c) = i.code {
            a.push(("segwatch.icmp.code", AnyValue::from(i64::from(c))));
        }
    }
    a.push(("segwatch.flow.start", s(&r.start.to_rfc3339())));
    a.push(("segwatch.flow.end", s(&r.end.to_rfc3339())));
    a.push(("segwatch.flow.ended", AnyValue::from(r.ended)));
    if let Some(o) = r.opener {
        a.push((
            "segwatch.opener",
            s(match o {
                crate::report::OpenerSource::Observed => "observed",
                crate::report::OpenerSource::Inferred => "inferred",
            }),
        ));
    }
    a
}

/// `segwatch.<side>.<field>` as a `&'static str` without allocating per
/// record (the set of names is fixed).
fn intern(side: &str, field: &str) -> &'static str {
    macro_rules! names {
        ($($f:literal),*) => {
            match (side, field) {
                $(("source", $f) => concat!("segwatch.source.", $f),
                  ("destination", $f) => concat!("segwatch.destination.", $f),)*
                _ => "segwatch.unknown",
            }
        };
    }
    names!(
        "kind",
        "namespace",
        "pod",
        "workload",
        "service_account",
        "service",
        "node"
    )
}

/// The log line a human sees first in a log viewer.
pub fn body(r: &FlowReport) -> String {
    let who = |e: &Endpoint| match (&e.namespace, &e.pod, &e.service) {
        (Some(ns), Some(p), Some(svc)) => format!("svc/{} → {ns}/{p}", svc.id()),
        (_, _, Some(svc)) => format!("svc/{}", svc.id()),
        (Some(ns), Some(p), _) => format!("{ns}/{p}"),
        _ => match kind_str(e) {
            Some(k) => format!("{k}:{}", e.ip),
            None => e.ip.to_string(),
        },
    };
    let port = r.dst.port.map(|p| format!(":{p}")).unwrap_or_default();
    let verdict = match r.verdict {
        Some(Verdict::Allowed) => "allowed".to_string(),
        Some(Verdict::Violation) => format!(
            "violation ({})",
            r.violations
                .iter()
                .map(|v| v.kind.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ),
        Some(Verdict::Unjudged) | None => "unjudged".to_string(),
    };
    format!(
        "{} {} -> {}{port} {verdict}",
        r.protocol,
        who(&r.src),
        who(&r.dst)
    )
}

impl OtlpSink {
    fn record(&self, r: &FlowReport) -> SdkLogRecord {
        let mut rec = self.logger.create_log_record();
        rec.set_event_name("segwatch.flow");
        rec.set_timestamp(SystemTime::from(r.time));
        rec.set_observed_timestamp(SystemTime::now());
        let (sev, text) = if r.verdict == Some(Verdict::Violation) {
            (Severity::Warn, "WARN")
        } else {
            (Severity::Info, "INFO")
        };
        rec.set_severity_number(sev);
        rec.set_severity_text(text);
        rec.set_body(AnyValue::from(body(r)));
        for (k, v) in attributes(r) {
            rec.add_attribute(k, v);
        }
        rec
    }
}

impl super::Sink for OtlpSink {
    const NAME: &'static str = "otlp";
    const MAX_BATCH: usize = 512;

    async fn send(&mut self, batch: &[Arc<FlowReport>]) -> Result<(), super::Partial> {
        let records = batch.iter().map(|r| self.record(r)).collect::<Vec<_>>();
        let refs = records.iter().map(|r| (r, &self.scope)).collect::<Vec<_>>();
        // One request per batch: it is delivered whole or not at all.
        self.exporter
            .export(LogBatch::new(&refs))
            .await
            .map_err(|e| super::Partial {
                delivered: 0,
                error: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_name_both_ends_and_never_invent() {
        let line = r#"{"time":"2026-01-01T00:00:02Z","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z","interface":"veth1","protocol":"TCP","ip_version":4,"src":{"ip":"10.1.0.5","port":40312,"kind":"pod","namespace":"shop","pod":"web-0","workload":"Deployment/web","service_account":"web","node":"n1"},"dst":{"ip":"10.2.0.7","port":8080,"kind":"service","namespace":"api","service":"api/backend"},"packets":{"sent":12,"received":10},"bytes":{"sent":1432,"received":88123},"tcp":{"flags":["SYN","ACK","FIN"],"state":"closed"},"verdict":"violation","violations":[{"kind":"cross_namespace","rule":"baseline","reason":"shop -> api:8080/TCP is not whitelisted"}]}"#;
        let r: FlowReport = serde_json::from_str(line).expect("contract example");
        let a = attributes(&r);
        let get = |k: &str| {
            a.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| format!("{v:?}"))
        };
        assert_eq!(
            get("source.address").as_deref(),
            Some("String(Owned(\"10.1.0.5\"))")
        );
        assert_eq!(get("source.port").as_deref(), Some("Int(40312)"));
        assert_eq!(get("destination.port").as_deref(), Some("Int(8080)"));
        assert_eq!(
            get("network.transport").as_deref(),
            Some("String(Owned(\"tcp\"))")
        );
        assert_eq!(
            get("network.type").as_deref(),
            Some("String(Owned(\"ipv4\"))")
        );
        assert_eq!(
            get("k8s.namespace.name").as_deref(),
            Some("String(Owned(\"shop\"))")
        );
        assert_eq!(
            get("k8s.pod.name").as_deref(),
            Some("String(Owned(\"web-0\"))")
        );
        assert_eq!(
            get("segwatch.destination.service").as_deref(),
            Some("String(Owned(\"api/backend\"))")
        );
        assert_eq!(
            get("segwatch.bytes.received").as_deref(),
            Some("Int(88123)")
        );
        assert_eq!(
            get("segwatch.tcp.state").as_deref(),
            Some("String(Owned(\"closed\"))")
        );
        assert_eq!(
            get("segwatch.violation.kinds").as_deref(),
            Some("String(Owned(\"cross_namespace\"))")
        );
        assert_eq!(get("segwatch.destination.pod"), None, "no pod: not set");
        assert_eq!(get("segwatch.netpol.allowed"), None, "not judged: not set");
        assert_eq!(get("segwatch.unknown"), None);
        let mut names = a.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        names.sort_unstable();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len, "every attribute once");
        assert_eq!(
            body(&r),
            "TCP shop/web-0 -> svc/api/backend:8080 violation (cross_namespace)"
        );
    }

    #[test]
    fn an_unjudged_report_says_so() {
        let r = FlowReport::default();
        let a = attributes(&r);
        let v = a
            .iter()
            .find(|(n, _)| *n == "segwatch.verdict")
            .map(|(_, v)| format!("{v:?}"));
        assert_eq!(v.as_deref(), Some("String(Owned(\"unjudged\"))"));
    }

    #[test]
    fn the_resource_names_the_agent_only() {
        let cfg = OtlpConfig {
            endpoint: "http://c:4317".into(),
            protocol: Protocol::Grpc,
            headers: vec![],
            gzip: false,
            ca_file: None,
            client_cert: None,
            client_key: None,
            timeout: Duration::from_secs(1),
            node_name: Some("n1".into()),
            cluster_name: Some("prod".into()),
        };
        let res = resource(&cfg);
        let mut keys = res
            .iter()
            .map(|(k, _)| k.as_str().to_string())
            .collect::<Vec<_>>();
        keys.sort();
        assert_eq!(
            keys,
            [
                "k8s.cluster.name",
                "k8s.node.name",
                "service.name",
                "service.version"
            ]
        );
    }
}
