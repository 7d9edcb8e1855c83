//! `segwatch run`: the node daemon.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

/// Attach to pod veths, turn what the kernel sees into flow reports, judge
/// them, and serve /metrics, /healthz and /readyz.
///
/// Examples:
///   segwatch run --inventory cluster.json --flow-log /var/log/segwatch/flows.jsonl
///   segwatch run --interface 'veth*' --policy baseline.yaml
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface name or glob to attach to (repeatable). Default: every veth
    /// in the host network namespace, attached as it appears.
    #[arg(long = "interface", value_name = "NAME|GLOB")]
    pub interfaces: Vec<String>,
    /// Cluster objects from files or directories instead of the API server
    /// (repeatable); re-read when they change.
    #[arg(long = "inventory", value_name = "PATH")]
    pub inventory: Vec<PathBuf>,
    /// SegmentationPolicy documents (repeatable).
    #[arg(long = "policy", value_name = "PATH")]
    pub policy: Vec<PathBuf>,
    /// Address for /metrics (and /healthz, /readyz unless --probe-addr or
    /// --metrics-auth kubernetes moves them).
    #[arg(long, default_value = "0.0.0.0:9810", value_name = "ADDR")]
    pub metrics_addr: SocketAddr,
    /// Who may read /metrics. `kubernetes`: HTTPS, and the caller's bearer
    /// token must pass a TokenReview and a SubjectAccessReview for `get` on
    /// the non-resource URL /metrics (needs API access). `none`: anyone who
    /// can reach the address (a lab, a loopback address).
    #[arg(long, value_enum, default_value = "none", value_name = "MODE")]
    pub metrics_auth: MetricsAuth,
    /// Serving certificate for /metrics (PEM, leaf first), re-read when it
    /// changes; with --tls-private-key-file. Without them, --metrics-auth
    /// kubernetes makes a self-signed one at start.
    #[arg(long, value_name = "PATH", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Address for /healthz and /readyz, plain HTTP (for the kubelet's
    /// probes). Default with --metrics-auth kubernetes: 0.0.0.0:9811;
    /// otherwise they are served on --metrics-addr.
    #[arg(long, value_name = "ADDR")]
    pub probe_addr: Option<SocketAddr>,
    /// When the eBPF programs cannot be loaded, keep answering /readyz with
    /// the reason for this long before exiting with it (seconds; 0: exit at
    /// once).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub load_failure_hold: u64,
    /// Where flow reports go, one JSON object per line; `-` is stdout.
    #[arg(long, default_value = "-", value_name = "PATH|-")]
    pub flow_log: String,
    /// Extra addresses that count as the node (repeatable).
    #[arg(long = "node-ip", value_name = "IP")]
    pub node_ip: Vec<IpAddr>,
    /// Name of this node (reported as `observer`); default: the host name.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// How often the flow table is swept, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub sweep_interval_ms: u64,
    /// A flow with no packet for this long ends (seconds).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub idle_timeout: u64,
    /// A flow that goes on is reported again after this long (seconds).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub active_timeout: u64,
    /// How to attach: tcx (kernel ≥ 6.6, detached with the process even on
    /// SIGKILL), clsact tc filters (older kernels; stale filters from a
    /// crashed run are removed at attach), or auto.
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub attach_mode: crate::datapath::AttachMode,
    /// Series of workloads gone longer than this are dropped from /metrics
    /// (seconds).
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub metrics_ttl: u64,
    /// Distinct port numbers a source workload keeps as `dst_port` label
    /// values per violation kind, and per workload edge, besides the ports
    /// the cluster declares; the rest count under `dst_port="other"`.
    #[arg(long, default_value_t = crate::observe::DEFAULT_PORTS_PER_SOURCE, value_name = "N")]
    pub metrics_ports_per_source: usize,
    /// A source workload touching more distinct ports of one destination
    /// than this within a scan window is scanning (`segwatch_scans_total`).
    #[arg(long, default_value_t = crate::observe::DEFAULT_SCAN_PORTS as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_scan_ports: u64,
    /// A source workload with failed or forbidden connections to more
    /// distinct addresses of one namespace than this within a scan window
    /// is scanning.
    #[arg(long, default_value_t = crate::observe::DEFAULT_SCAN_ADDRESSES as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_scan_addresses: u64,
    /// Length of a scan window (seconds); a scan is counted once per window.
    #[arg(long, default_value_t = crate::observe::DEFAULT_SCAN_WINDOW.as_secs(), value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_scan_window: u64,
    /// Leave this namespace out of the per-workload metric families
    /// (violations, workload edges, scans); its traffic still counts in
    /// the per-namespace ones (repeatable).
    #[arg(long = "metrics-exclude-namespace", value_name = "NAMESPACE")]
    pub metrics_exclude_namespaces: Vec<String>,
    /// Capacity of the kernel flow table (entries per node).
    #[arg(long, default_value_t = monitor_common::DEFAULT_MAX_FLOWS, value_name = "N")]
    pub max_flows: u32,
    /// New connections per second one interface (pod) may start in the
    /// kernel flow table; connections past it are counted in the
    /// interface's overflow metrics instead. 0: no budget. Default: an
    /// eighth of --max-flows.
    #[arg(long, value_name = "N")]
    pub new_flow_budget: Option<u32>,
    /// Labels of segwatch's own agent pods (`k=v,k2=v2`, any namespace):
    /// a node with a running one reports the connections its pods open,
    /// so the other nodes leave them to it. Empty: no other node is known
    /// to run an agent (each reports all it sees).
    #[arg(long, default_value = crate::reporter::DEFAULT_AGENT_SELECTOR, value_name = "LABELS")]
    pub agent_selector: String,
    /// How long a flow report with an end the cluster view does not know
    /// waits for it (a pod's IP arrives with the next watch event) before
    /// it is written as `unjudged` (seconds).
    #[arg(long, default_value_t = 15, value_name = "SECS")]
    pub identity_wait: u64,
    /// Which reports the flow log keeps: `all`, or only `violations`.
    /// Exporters and /metrics see every report either way.
    #[arg(long, value_enum, default_value = "all", value_name = "WHICH")]
    pub flow_log_filter: crate::daemon::FlowLogFilter,
    #[command(flatten)]
    pub export: ExportArgs,
}

/// Flow export (OTLP logs, IPFIX); see README "Flow export".
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Send one OpenTelemetry log record per flow report to this OTLP
    /// endpoint: gRPC `http(s)://host:4317`, or with `--otlp-protocol http`
    /// the logs URL `http(s)://host:4318/v1/logs`.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport.
    #[arg(long, value_enum, default_value = "grpc", value_name = "PROTO")]
    pub otlp_protocol: crate::export::otlp::Protocol,
    /// Extra header (gRPC metadata) on every OTLP request, e.g.
    /// `Authorization=Bearer ...` or `X-Scope-OrgID=team` (repeatable).
    #[arg(long = "otlp-header", value_name = "K=V", value_parser = parse_header)]
    pub otlp_headers: Vec<(String, String)>,
    /// Compress OTLP requests with gzip.
    #[arg(long)]
    pub otlp_gzip: bool,
    /// PEM CA bundle that signs the collector's certificate (https only;
    /// default: the system roots).
    #[arg(long, value_name = "PATH")]
    pub otlp_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `--otlp-client-key`).
    #[arg(long, value_name = "PATH")]
    pub otlp_client_cert: Option<PathBuf>,
    /// PEM private key of `--otlp-client-cert`.
    #[arg(long, value_name = "PATH")]
    pub otlp_client_key: Option<PathBuf>,
    /// Deadline of one OTLP request (seconds).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub otlp_timeout: u64,
    /// Cluster name for the `k8s.cluster.name` resource attribute.
    #[arg(long, env = "CLUSTER_NAME", value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Export flow records over UDP as IPFIX (RFC 7011) to this collector.
    #[arg(long, value_name = "HOST:PORT")]
    pub ipfix_collector: Option<String>,
    /// Memory each exporter may hold for reports not yet delivered (MiB);
    /// beyond it reports are dropped and counted, never written to disk.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub export_memory_budget: u64,
    /// How long a batch is retried (with backoff) before it is given up and
    /// counted lost (seconds).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub export_retry_timeout: u64,
    /// How long the agent waits at shutdown for exports to drain (seconds).
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub export_shutdown_grace: u64,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not K=V"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("{s:?}: empty header name"));
    }
    http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("{k:?}: {e}"))?;
    http::HeaderValue::from_str(v).map_err(|e| format!("value of {k:?}: {e}"))?;
    Ok((k.to_string(), v.to_string()))
}

impl ExportArgs {
    fn config(self, node_name: Option<String>) -> anyhow::Result<crate::export::ExportConfig> {
        if self.export_memory_budget == 0 {
            anyhow::bail!("--export-memory-budget must be at least 1 (MiB)");
        }
        if self.otlp_timeout == 0 {
            anyhow::bail!("--otlp-timeout must be at least 1 (seconds)");
        }
        if self.otlp_endpoint.is_none()
            && (!self.otlp_headers.is_empty()
                || self.otlp_gzip
                || self.otlp_ca_file.is_some()
                || self.otlp_client_cert.is_some()
                || self.otlp_client_key.is_some())
        {
            anyhow::bail!(
                "--otlp-header/--otlp-gzip/--otlp-ca-file/--otlp-client-*: need --otlp-endpoint"
            );
        }
        let otlp = self
            .otlp_endpoint
            .map(|endpoint| crate::export::otlp::OtlpConfig {
                endpoint,
                protocol: self.otlp_protocol,
                headers: self.otlp_headers,
                gzip: self.otlp_gzip,
                ca_file: self.otlp_ca_file,
                client_cert: self.otlp_client_cert,
                client_key: self.otlp_client_key,
                timeout: std::time::Duration::from_secs(self.otlp_timeout),
                node_name,
                cluster_name: self.cluster_name,
            });
        Ok(crate::export::ExportConfig {
            otlp,
            ipfix: self.ipfix_collector,
            memory_budget: usize::try_from(self.export_memory_budget.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            retry_timeout: std::time::Duration::from_secs(self.export_retry_timeout),
            initial_backoff: std::time::Duration::from_millis(200),
            max_backoff: std::time::Duration::from_secs(10),
            shutdown_grace: std::time::Duration::from_secs(self.export_shutdown_grace),
        })
    }
}

/// `k=v,k2=v2` into labels; the error names the flag.
fn parse_selector(s: &str) -> anyhow::Result<Option<crate::index::Labels>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let mut out = crate::index::Labels::new();
    for part in s.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            anyhow::bail!("--agent-selector {s}: `{part}` is not key=value");
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            anyhow::bail!("--agent-selector {s}: empty label key in `{part}`");
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(Some(out))
}

/// `--metrics-auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsAuth {
    /// TokenReview + SubjectAccessReview (`get` on /metrics), over HTTPS.
    Kubernetes,
    /// No authentication.
    None,
}

/// Port of the probe listener when --metrics-auth kubernetes moves the
/// probes off the metrics address.
pub const DEFAULT_PROBE_ADDR: &str = "0.0.0.0:9811";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    const NS: u64 = 1_000_000_000;
    if args.sweep_interval_ms == 0 {
        anyhow::bail!("--sweep-interval-ms must be at least 1");
    }
    if args.max_flows == 0 {
        anyhow::bail!("--max-flows must be at least 1");
    }
    // 0 would end or re-report every flow at every sweep: a typo, not a
    // setting.
    if args.idle_timeout == 0 {
        anyhow::bail!("--idle-timeout must be at least 1 (seconds)");
    }
    if args.active_timeout == 0 {
        anyhow::bail!("--active-timeout must be at least 1 (seconds)");
    }
    // Flags first: a bad one is the only line the user sees.
    for name in args
        .interfaces
        .iter()
        .filter(|p| !crate::datapath::links::is_glob(p))
    {
        if crate::datapath::links::ifindex(name).is_none() {
            anyhow::bail!("--interface {name}: unknown interface");
        }
    }
    let agent_selector = parse_selector(&args.agent_selector)?;
    let node_name = args.node_name.clone().or_else(hostname);
    let auth = args.metrics_auth == MetricsAuth::Kubernetes;
    let probe_addr = match args.probe_addr {
        Some(a) => Some(a),
        None if auth => Some(
            DEFAULT_PROBE_ADDR
                .parse()
                .context("default probe address")?,
        ),
        None => None,
    };
    if probe_addr == Some(args.metrics_addr) && args.metrics_addr.port() != 0 {
        anyhow::bail!(
            "--probe-addr {}: the same address as --metrics-addr",
            args.metrics_addr
        );
    }
    let cert = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => Some(crate::daemon::tls::CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        // A bearer token must never travel in the clear.
        _ if auth => Some(crate::daemon::tls::CertSource::SelfSigned {
            names: self_signed_names(node_name.as_deref(), &args.node_ip),
        }),
        _ => None,
    };
    let tls = cert
        .as_ref()
        .map(crate::daemon::tls::server_config)
        .transpose()?;
    let export = args.export.config(node_name.clone())?;
    let cfg = crate::daemon::Config {
        interfaces: args.interfaces,
        http: crate::daemon::http::Endpoints {
            metrics_addr: args.metrics_addr,
            probe_addr,
            tls,
            // Set below, inside the runtime (the client needs it).
            auth: None,
        },
        load_failure_hold: std::time::Duration::from_secs(args.load_failure_hold),
        flow_log: args.flow_log,
        node_name,
        sweep_interval: std::time::Duration::from_millis(args.sweep_interval_ms),
        timeouts: crate::flows::Timeouts {
            idle_ns: args.idle_timeout.saturating_mul(NS),
            active_ns: args.active_timeout.saturating_mul(NS),
            // Long enough for the last ACK of a FIN exchange, short enough
            // that a closed connection is reported promptly.
            closed_linger_ns: NS,
        },
        max_flows: args.max_flows,
        new_flow_budget: args
            .new_flow_budget
            .unwrap_or_else(|| crate::datapath::budget::default_new_flow_budget(args.max_flows)),
        attach_mode: args.attach_mode,
        flow_log_filter: args.flow_log_filter,
        export,
    };
    let metrics = crate::metrics::Metrics::new();
    let mut index_cfg = crate::sources::index_config(
        cfg.node_name.clone().unwrap_or_default(),
        args.node_ip,
        &args.policy,
    )?;
    index_cfg.agent_selector = agent_selector;
    let identity_wait = std::time::Duration::from_secs(args.identity_wait);
    let observe = crate::observe::ObserveConfig {
        ttl: std::time::Duration::from_secs(args.metrics_ttl),
        ports_per_source: args.metrics_ports_per_source,
        scan_ports: usize::try_from(args.metrics_scan_ports).unwrap_or(usize::MAX),
        scan_addresses: usize::try_from(args.metrics_scan_addresses).unwrap_or(usize::MAX),
        scan_window: std::time::Duration::from_secs(args.metrics_scan_window),
        exclude_namespaces: args.metrics_exclude_namespaces.into_iter().collect(),
    };
    let ttl = observe.ttl;
    let inventory = args.inventory;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut cfg = cfg;
    rt.block_on(async move {
        if auth {
            let kube = kube::Config::infer().await.context(
                "--metrics-auth kubernetes: no Kubernetes API access (in-cluster config or KUBECONFIG) \
                 to review tokens with",
            )?;
            let client = kube::Client::try_from(kube)
                .context("--metrics-auth kubernetes: configuring the API client")?;
            cfg.http.auth = Some(std::sync::Arc::new(crate::daemon::auth::Reviewer::new(client)));
        }
        let sources = if inventory.is_empty() && kube::Config::infer().await.is_err() {
            // A plain Linux host (or a test): still useful, with honest
            // attribution: the node's own addresses, metadata, external.
            tracing::warn!(
                "no --inventory and no Kubernetes API access (in-cluster config or KUBECONFIG): \
                 flows are attributed to this node's addresses only"
            );
            node_only(index_cfg)
        } else {
            crate::sources::spawn_sources(crate::sources::SourcesConfig {
                inventory,
                index: index_cfg,
                metrics: metrics.clone(),
                poll_interval: std::time::Duration::from_secs(2),
                api_grace: std::time::Duration::from_secs(5),
                status_spread: std::time::Duration::from_secs(10),
            })
            .await?
        };
        let mut judge = crate::judge::ClusterJudge::new(sources.index, sources.ready, ttl)
            .with_health(sources.health)
            .with_identity_wait(identity_wait)
            .with_observe(observe);
        match crate::conntrack::Conntrack::open() {
            Ok(ct) => judge = judge.with_conntrack(Box::new(ct)),
            // Still useful without it: Service connections are reported
            // without backend, and counted as such.
            Err(e) => tracing::warn!(
                error = %e,
                "cannot read connection tracking: Service connections are reported without backend"
            ),
        }
        crate::daemon::run(cfg, Box::new(judge), metrics).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// An index without cluster objects: the node's addresses (kept current:
/// veth gateways come and go), `--node-ip`, `--policy`.
fn node_only(cfg: crate::index::IndexConfig) -> crate::sources::Sources {
    let mut index = crate::index::ClusterIndex::new(cfg);
    if let Ok(addrs) = crate::index::host_addresses() {
        index.set_host_addresses(addrs);
    }
    index.refresh();
    let shared = std::sync::Arc::new(std::sync::RwLock::new(index));
    tokio::spawn(refresh_host_addresses(shared.clone()));
    let ready = crate::judge::ReadyFlag::default();
    ready.set();
    crate::sources::Sources {
        index: shared,
        ready,
        health: crate::sources::SourceHealth::default(),
    }
}

/// Veth gateway addresses come and go with pods: keep the node's own
/// addresses current (they make `kind: node`).
async fn refresh_host_addresses(index: crate::judge::SharedIndex) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        if let Ok(addrs) = crate::index::host_addresses() {
            let mut idx = index.write().unwrap_or_else(|e| e.into_inner());
            idx.set_host_addresses(addrs);
        }
    }
}

/// Subject alternative names of the self-signed certificate: the node's
/// name, its --node-ip addresses and loopback (scrapers cannot verify it
/// anyway; the names only make it readable).
fn self_signed_names(node: Option<&str>, ips: &[IpAddr]) -> Vec<String> {
    let mut names: Vec<String> = node
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .into_iter()
        .collect();
    names.extend(["localhost".into(), "127.0.0.1".into(), "::1".into()]);
    names.extend(ips.iter().map(IpAddr::to_string));
    names
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        export: ExportArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<crate::export::ExportConfig> {
        let cli = Cli::try_parse_from(std::iter::once("segwatch").chain(args.iter().copied()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cli.export.config(Some("n1".into()))
    }

    #[test]
    fn export_flags_parse_and_bad_ones_name_the_flag() {
        let c = config(&[
            "--otlp-endpoint",
            "http://c:4317",
            "--otlp-header",
            "X-Scope-OrgID=team=a",
            "--ipfix-collector",
            "c:4739",
            "--export-memory-budget",
            "2",
        ])
        .expect("valid flags");
        let o = c.otlp.expect("otlp on");
        assert_eq!(
            o.headers,
            [("X-Scope-OrgID".to_string(), "team=a".to_string())]
        );
        assert_eq!(o.node_name.as_deref(), Some("n1"));
        assert_eq!(c.memory_budget, 2 << 20);
        assert_eq!(c.ipfix.as_deref(), Some("c:4739"));
        let err = |a: &[&str]| format!("{:#}", config(a).expect_err("must fail"));
        assert!(err(&["--otlp-header", "novalue"]).contains("--otlp-header"));
        assert!(err(&["--otlp-header", "a b=1"]).contains("--otlp-header"));
        assert!(err(&["--otlp-gzip"]).contains("need --otlp-endpoint"));
        assert!(err(&["--export-memory-budget", "0"]).contains("--export-memory-budget"));
        assert!(err(&["--otlp-protocol", "udp"]).contains("--otlp-protocol"));
    }
}
