//! `segwatch probe`: run inside a pod, try what the pod should not reach
//! (node admin ports, NodePorts, cloud metadata endpoints, other
//! namespaces) and print one JSON report judged against the policies.
//!
//! Sources of trouble never abort the run: an unreachable API server, an
//! unreadable inventory, a bad `--targets` line are one-line errors in the
//! report (and on stderr), the report says `"complete": false`, and
//! whatever could be tried is tried. Bad flags and an invalid `--policy`
//! are errors: a policy silently replaced by the baseline would change
//! every expectation.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;

use crate::index::{ClusterIndex, IndexConfig, Resolved};
use crate::inventory::{self, Object};
use crate::probe::expect::Judge;
use crate::probe::judged_result;
use crate::probe::model::{ProbeReport, Settings, Source, Status, Summary, SCHEMA};
use crate::probe::pace::{Pacer, Step};
use crate::probe::plan::{plan, PlanInput};
use crate::probe::targets::{
    metadata_meant_reachable, parse_targets, Target, TargetKind, Transport,
};

/// Where Kubernetes mounts the pod's service account (namespace, token).
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Active evidence from inside a pod: tries TCP connects (and UDP where an
/// answer or ICMP port unreachable tells) to node admin ports (10250, 10255,
/// 2379, 2380, 22, 6443), NodePorts, the cloud metadata endpoints, a sample
/// of pods and Services of other namespaces and the `--targets` lines, at a
/// bounded rate and within a deadline; prints one JSON report with, per
/// target, reachable|refused|timeout and what the SegmentationPolicy and
/// the NetworkPolicies expect (blocked|reachable|unknown).
///
/// Exit status: 0 with a complete report, 3 when the report was written but
/// is incomplete (see its `errors` and `not_tried`), 1 on errors, 2 on bad flags.
///
/// Examples:
///   segwatch probe                                  # in a pod, API via the service account
///   segwatch probe --inventory cluster.json --targets extra.txt -o probe.json
#[derive(Debug, clap::Args)]
pub struct Args {
    /// More targets, one a line: HOST:PORT[/tcp|/udp], IPv6 in brackets, `#` comments.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// Timeout of one connection attempt.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
    /// Connection attempts per second, at most.
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// Everything is done by then; targets not started before are listed as
    /// `not_tried` (the report is then incomplete).
    #[arg(long, default_value_t = 120_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub deadline_ms: u64,
    /// Write the report here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Cluster objects from files/directories instead of the API server (repeatable).
    #[arg(long = "inventory", value_name = "PATH")]
    pub inventory: Vec<PathBuf>,
    /// SegmentationPolicy documents (repeatable); policies in the cluster view are added.
    #[arg(long = "policy", value_name = "PATH")]
    pub policy: Vec<PathBuf>,
    /// Other nodes, pods and Services to sample (each).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub sample: usize,
    /// The probe's pod (downward API `metadata.name`); default `$POD_NAME`, else the host name.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,
    /// The probe's namespace; default `$POD_NAMESPACE`, else the service account's namespace file.
    #[arg(long = "namespace", env = "POD_NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,
    /// The probe's service account; default `$POD_SERVICE_ACCOUNT`, else the pod object, else the token's subject.
    #[arg(long, env = "POD_SERVICE_ACCOUNT", value_name = "NAME")]
    pub service_account: Option<String>,
    /// The node the probe runs on (`spec.nodeName`); default `$NODE_NAME`, else the pod object.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// The pod's addresses (`status.podIPs`), comma-separated; default
    /// `$POD_IPS`, else the pod object, else this network namespace's addresses.
    #[arg(long, env = "POD_IPS", value_name = "IP,...", value_delimiter = ',')]
    pub pod_ip: Vec<IpAddr>,
    /// The node's addresses (`status.hostIPs`), comma-separated; default `$HOST_IPS`.
    #[arg(long, env = "HOST_IPS", value_name = "IP,...", value_delimiter = ',')]
    pub host_ip: Vec<IpAddr>,
}

/// Exit status of a report written but incomplete.
const INCOMPLETE: u8 = 3;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let static_policies = if args.policy.is_empty() {
        Vec::new()
    } else {
        crate::segpolicy::load_policy_paths(&args.policy).context("--policy")?
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt.block_on(probe(&args, static_policies))?;
    let mut text = serde_json::to_string_pretty(&report).context("serialising the report")?;
    text.push('\n');
    match &args.output {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .context("cannot write the report to stdout")?;
        }
    }
    let s = &report.summary;
    tracing::info!(
        tried = s.tried,
        reachable = s.reachable,
        refused = s.refused,
        timeout = s.timeout,
        violations = s.violations,
        not_tried = s.not_tried,
        complete = report.complete,
        "probe report written"
    );
    Ok(if report.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INCOMPLETE)
    })
}

/// An error for the report, also logged (one line).
fn note(errors: &mut Vec<String>, msg: String) {
    let msg = super::one_line(&msg);
    tracing::warn!("{msg}");
    errors.push(msg);
}

async fn probe(
    args: &Args,
    static_policies: Vec<std::sync::Arc<crate::segpolicy::CompiledDoc>>,
) -> anyhow::Result<ProbeReport> {
    let started = Utc::now();
    let mut errors = Vec::new();

    // Extra targets: bad lines are errors, the good ones are probed.
    let mut listed = Vec::new();
    if let Some(path) = &args.targets {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let (t, bad) = parse_targets(path, &text);
                listed = t;
                for e in bad {
                    note(&mut errors, format!("--targets {e}"));
                }
            }
            Err(e) => note(
                &mut errors,
                format!("--targets {}: cannot read: {e}", path.display()),
            ),
        }
    }

    // The cluster view.
    let (objects, cluster_view) = cluster_view(args, &mut errors).await;

    // Identity: flags/env first, then the pod object, then the files.
    let namespace = args.namespace.clone().or_else(|| {
        std::fs::read_to_string(Path::new(SA_DIR).join("namespace"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    });
    let pod_name = args.pod_name.clone().or_else(hostname);
    let mut index = ClusterIndex::new(IndexConfig {
        node_name: args.node_name.clone().unwrap_or_default(),
        node_ips: args.host_ip.clone(),
        static_policies,
        pod_cidrs: Vec::new(),
        agent_selector: None,
    });
    index.reset(objects.clone());
    index.refresh();
    for w in &index.warnings {
        note(&mut errors, format!("cluster view: {w}"));
    }
    let pod = match (&namespace, &pod_name) {
        (Some(ns), Some(name)) => index.pod(ns, name).cloned(),
        _ => None,
    };
    if pod.is_none() && cluster_view != "none" {
        note(
            &mut errors,
            format!(
                "the probe's own pod {}/{} is not in the cluster view: expectations are unknown (set POD_NAME/POD_NAMESPACE or --pod-name/--namespace)",
                namespace.as_deref().unwrap_or("?"),
                pod_name.as_deref().unwrap_or("?")
            ),
        );
    }
    let service_account = args
        .service_account
        .clone()
        .or_else(|| {
            pod.as_ref()
                .and_then(|p| p.service_account.as_deref().map(str::to_owned))
        })
        .or_else(token_service_account);
    let node = args.node_name.clone().or_else(|| {
        pod.as_ref()
            .and_then(|p| p.node.as_deref().map(str::to_owned))
    });
    let mut ips = args.pod_ip.clone();
    if ips.is_empty() {
        ips = pod.as_ref().map(|p| p.ips.clone()).unwrap_or_default();
    }
    if ips.is_empty() {
        ips = crate::index::host_addresses()
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
            .collect();
    }
    let source = Source {
        pod: pod_name.clone(),
        namespace: namespace.clone(),
        service_account,
        node: node.clone(),
        ips: ips.clone(),
    };
    let who = format!(
        "{}/{}",
        namespace.as_deref().unwrap_or("?"),
        pod_name.as_deref().unwrap_or("?")
    );

    // A listed target counts as what its address is (a node's port is
    // evidence for "Host ports" whether planned or listed).
    for t in &mut listed {
        t.kind = match index.resolve(t.address) {
            _ if args.host_ip.contains(&t.address) => TargetKind::Node,
            Resolved::Node(_) => TargetKind::Node,
            Resolved::Metadata => TargetKind::Metadata,
            Resolved::Pod(_) => TargetKind::Pod,
            Resolved::Service(_) => TargetKind::Service,
            _ if metadata_meant_reachable(t.address).is_some() => TargetKind::Metadata,
            Resolved::External | Resolved::Unknown => TargetKind::Listed,
        };
    }
    let targets = plan(PlanInput {
        objects: &objects,
        namespace: namespace.as_deref(),
        node: node.as_deref(),
        host_ips: &args.host_ip,
        listed,
        sample: args.sample,
    });
    tracing::info!(targets = targets.len(), rate = args.rate, "probing");

    let settings = Settings {
        timeout_ms: args.timeout_ms,
        rate: args.rate,
        deadline_ms: args.deadline_ms,
    };
    let (tried, not_tried, attempt_errors) = attempt_all(&targets, settings).await;
    for e in attempt_errors {
        note(&mut errors, e);
    }
    let judge = Judge::new(&index, pod.as_deref(), who.clone(), ips);
    let results = tried
        .into_iter()
        .map(|(t, status, detail)| judged_result(&judge, &who, &t, status, detail))
        .collect();
    let mut report = ProbeReport {
        schema: SCHEMA.to_owned(),
        started,
        finished: Utc::now(),
        source,
        settings,
        cluster_view: cluster_view.to_owned(),
        complete: false,
        errors,
        summary: Summary::default(),
        results,
        not_tried: not_tried.iter().map(Target::spec).collect(),
    };
    report.complete = report.errors.is_empty() && report.not_tried.is_empty();
    report.summarise();
    Ok(report)
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The pod's host name is its name (Kubernetes sets it so unless
/// `spec.hostname` overrides it).
fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The service account from the mounted token's `sub` claim
/// (`system:serviceaccount:<namespace>:<name>`). The token is not verified:
/// it only names who we are, it grants nothing here.
fn token_service_account() -> Option<String> {
    use base64::Engine as _;
    let token = std::fs::read_to_string(Path::new(SA_DIR).join("token")).ok()?;
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let sub = claims.get("sub")?.as_str()?;
    sub.strip_prefix("system:serviceaccount:")?
        .split_once(':')
        .map(|(_, name)| name.to_owned())
}

/// The objects to plan and judge with, and where they came from.
async fn cluster_view(args: &Args, errors: &mut Vec<String>) -> (Vec<Object>, &'static str) {
    if !args.inventory.is_empty() {
        return match inventory::load_paths(&args.inventory) {
            Ok(inv) => {
                for w in inv.warnings {
                    note(errors, format!("--inventory: {w}"));
                }
                (inv.objects, "inventory")
            }
            Err(e) => {
                note(
                    errors,
                    format!("--inventory {e}; probing without a cluster view"),
                );
                (Vec::new(), "none")
            }
        };
    }
    let config = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            note(
                errors,
                format!("no --inventory given and no Kubernetes API access (in-cluster config or KUBECONFIG): {e}; probing without a cluster view"),
            );
            return (Vec::new(), "none");
        }
    };
    let url = config.cluster_url.to_string();
    let client = match kube::Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            note(
                errors,
                format!("API server {url}: cannot configure the client: {e}"),
            );
            return (Vec::new(), "none");
        }
    };
    let (objects, failed) = list_api(&client, &url, errors).await;
    (objects, if failed { "none" } else { "api" })
}

/// How long one list call may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Lists what the probe needs. Returns the objects and whether every list
/// failed. A missing SegmentationPolicy CRD (404) is no error.
async fn list_api(
    client: &kube::Client,
    url: &str,
    errors: &mut Vec<String>,
) -> (Vec<Object>, bool) {
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use kube::api::{Api, ListParams};

    async fn list<K>(
        api: Api<K>,
        what: &str,
        url: &str,
        errors: &mut Vec<String>,
        wrap: fn(K) -> Object,
        optional: bool,
    ) -> Option<Vec<Object>>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        // A bounded page: a sample is enough, and a huge cluster's full
        // pod list is not worth the API server's time.
        let lp = ListParams::default().limit(2000);
        match tokio::time::timeout(LIST_TIMEOUT, api.list(&lp)).await {
            Ok(Ok(l)) => Some(l.items.into_iter().map(wrap).collect()),
            Ok(Err(kube::Error::Api(s))) if optional && s.code == 404 => Some(Vec::new()),
            Ok(Err(e)) => {
                note(errors, format!("API server {url}: cannot list {what}: {e}"));
                None
            }
            Err(_) => {
                note(
                    errors,
                    format!(
                        "API server {url}: cannot list {what}: no answer within {} s",
                        LIST_TIMEOUT.as_secs()
                    ),
                );
                None
            }
        }
    }
    let c = client.clone();
    let parts = [
        list(
            Api::<Namespace>::all(c.clone()),
            "namespaces",
            url,
            errors,
            Object::Namespace,
            false,
        )
        .await,
        list(
            Api::<Node>::all(c.clone()),
            "nodes",
            url,
            errors,
            Object::Node,
            false,
        )
        .await,
        list(
            Api::<Pod>::all(c.clone()),
            "pods",
            url,
            errors,
            Object::Pod,
            false,
        )
        .await,
        list(
            Api::<Service>::all(c.clone()),
            "services",
            url,
            errors,
            Object::Service,
            false,
        )
        .await,
        list(
            Api::<NetworkPolicy>::all(c.clone()),
            "networkpolicies",
            url,
            errors,
            Object::NetworkPolicy,
            false,
        )
        .await,
        list(
            Api::<crate::segpolicy::SegmentationPolicy>::all(c),
            "segmentationpolicies",
            url,
            errors,
            Object::SegmentationPolicy,
            true,
        )
        .await,
    ];
    let all_failed = parts.iter().all(Option::is_none);
    (parts.into_iter().flatten().flatten().collect(), all_failed)
}

type Tried = Vec<(Target, Status, Option<String>)>;

/// What one attempt says: a status (with the socket error behind it), or
/// a local failure that says nothing about the target.
type AttemptResult = Result<(Status, Option<String>), String>;

/// Tries every target, paced; returns the results in target order, the
/// targets the deadline left, and attempts that failed locally (not a
/// network answer: e.g. out of file descriptors).
async fn attempt_all(targets: &[Target], s: Settings) -> (Tried, Vec<Target>, Vec<String>) {
    let t0 = tokio::time::Instant::now();
    let mut pacer = Pacer::new(
        s.rate,
        Duration::from_millis(s.timeout_ms),
        Duration::from_millis(s.deadline_ms),
    );
    let mut set = tokio::task::JoinSet::new();
    let mut not_tried = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        match pacer.next(t0.elapsed()) {
            Step::Stop => {
                not_tried.extend_from_slice(&targets[i..]);
                break;
            }
            Step::Start { at, timeout } => {
                tokio::time::sleep_until(t0 + at).await;
                let t = t.clone();
                set.spawn(async move {
                    let r = attempt(&t, timeout).await;
                    (i, t, r)
                });
            }
        }
    }
    let mut done: Vec<(usize, Target, AttemptResult)> = Vec::new();
    while let Some(j) = set.join_next().await {
        match j {
            Ok(r) => done.push(r),
            Err(e) => tracing::warn!(error = %e, "a probe task failed"),
        }
    }
    done.sort_by_key(|(i, _, _)| *i);
    let mut tried = Vec::new();
    let mut errors = Vec::new();
    for (_, t, r) in done {
        match r {
            Ok((status, detail)) => tried.push((t, status, detail)),
            Err(e) => {
                errors.push(format!("{}: not tried: {e}", t.spec()));
                not_tried.push(t);
            }
        }
    }
    (tried, not_tried, errors)
}

/// What a socket error says about the target: refused (RST, ICMP errors,
/// no route) or a local failure (`Err`) that says nothing about it.
fn classify(e: &std::io::Error) -> AttemptResult {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        return Ok((Status::Refused, None));
    }
    if e.kind() == std::io::ErrorKind::TimedOut {
        return Ok((Status::Timeout, None));
    }
    match e.raw_os_error() {
        // ICMP host/net unreachable (also "administratively prohibited",
        // RFC 1812 5.2.7.1), no route, or a local firewall's reject.
        Some(
            libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EACCES
            | libc::EPERM
            | libc::EADDRNOTAVAIL,
        ) => Ok((Status::Refused, Some(e.to_string()))),
        _ => Err(e.to_string()),
    }
}

async fn attempt(t: &Target, timeout: Duration) -> AttemptResult {
    let addr = SocketAddr::new(t.address, t.port);
    match t.transport {
        Transport::Tcp => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Err(_) => Ok((Status::Timeout, None)),
                // Closed at once (FIN): nothing is sent to the service.
                Ok(Ok(_stream)) => Ok((Status::Reachable, None)),
                Ok(Err(e)) => classify(&e),
            }
        }
        Transport::Udp => {
            let bind: SocketAddr = if t.address.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = tokio::net::UdpSocket::bind(bind)
                .await
                .map_err(|e| e.to_string())?;
            if let Err(e) = sock.connect(addr).await {
                return classify(&e);
            }
            // An empty datagram: the ICMP port unreachable that answers a
            // closed port is all we can rely on (RFC 1122 3.2.2.1); a
            // service may answer or stay silent.
            if let Err(e) = sock.send(&[]).await {
                return classify(&e);
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
                Err(_) => Ok((Status::Timeout, None)),
                Ok(Ok(_)) => Ok((Status::Reachable, None)),
                Ok(Err(e)) => classify(&e),
            }
        }
    }
}
