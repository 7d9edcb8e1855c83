//! `segwatch suggest`: NetworkPolicies from observed flows (CONTRACT.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::suggest::{
    self, prometheus, Aggregate, Catalog, Format, ObserveOptions, Observed, Options, WorkloadSample,
};

/// Suggest least-privilege NetworkPolicies from observed traffic, and check
/// them against it.
///
/// Writes `networking.k8s.io/v1` NetworkPolicies that allow every observed
/// connection: per namespace a default-deny for ingress and egress plus DNS
/// egress to kube-dns, and per workload (`segwatch-<name>`) allow rules
/// naming peers by namespace and stable pod labels, outside addresses as
/// /32 or /128 ipBlocks. Each rule carries its evidence (flow count, first
/// and last seen) as an annotation. Output is deterministic.
///
/// stderr gets the summary: what the set allows per namespace, the replay
/// of every observed connection against the existing and suggested
/// policies, and what the set allows that was never observed.
///
/// Exit status: 0 when every observed connection is allowed by the set,
/// 3 when the replay finds one denied, 1 on bad input.
///
/// Examples:
///   segwatch suggest --flows node1.jsonl --flows node2.jsonl --inventory cluster.json
///   segwatch suggest --flows flows.jsonl --inventory inv/ --out-dir policies/ --default-deny off
///   segwatch suggest --from-prometheus http://prometheus:9090 --window 7d --inventory cluster.json
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Flow log files written by `segwatch run` (repeatable; any number of nodes).
    #[arg(
        long = "flows",
        value_name = "FILE",
        required_unless_present = "from_prometheus"
    )]
    pub flows: Vec<PathBuf>,
    /// Read workload edges (`segwatch_workload_flows_total`) from this
    /// Prometheus (base URL, `http://`), for a whole cluster. Outside
    /// addresses are not in the metric: use --flows for those ipBlocks.
    #[arg(long, value_name = "URL")]
    pub from_prometheus: Option<String>,
    /// The window to read from Prometheus, a PromQL duration.
    #[arg(
        long,
        default_value = "24h",
        value_name = "DURATION",
        requires = "from_prometheus"
    )]
    pub window: String,
    /// End of the Prometheus window (RFC 3339); default: now. Fix it to get
    /// the same output from the same data.
    #[arg(long, value_name = "TIME", requires = "from_prometheus")]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Cluster objects: files or directories (repeatable). The workloads'
    /// labels, Services and existing NetworkPolicies come from here.
    #[arg(long = "inventory", value_name = "PATH", required = true)]
    pub inventory: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
    /// What to suggest: `networkpolicy` (namespaced NetworkPolicies, the
    /// default) or `clusternetworkpolicy` (v1alpha2 ClusterNetworkPolicy:
    /// Admin-tier Deny guardrails for the metadata API, node ports and the
    /// namespace pairs whose flows were cross_namespace violations, each
    /// leaving out what was judged allowed; and a Baseline default deny
    /// with cluster DNS, to go with the suggested NetworkPolicies), or
    /// `segmentation-policy` (a learned baseline: the observed workload
    /// edges as one SegmentationPolicy; loaded with `segwatch run
    /// --policy`, any edge not observed is a violation).
    #[arg(long, value_enum, default_value = "networkpolicy", value_name = "KIND")]
    pub format: SuggestKind,
    /// Write one file per namespace (`<namespace>.yaml|json`) into DIR
    /// instead of printing to stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Per namespace a default-deny for ingress and egress plus DNS egress
    /// (on, the default). With off, each workload's policy isolates only
    /// the directions it had traffic in, so a workload nothing was seen of
    /// stays unrestricted.
    #[arg(long, value_enum, default_value = "on", value_name = "on|off")]
    pub default_deny: OnOff,
    /// Widen outside addresses to networks of these prefix lengths and
    /// merge them, e.g. `v4=24,v6=64` (default: exact /32 and /128).
    #[arg(long, value_name = "v4=LEN,v6=LEN")]
    pub aggregate_cidrs: Option<Aggregate>,
    /// Also allow TCP connections that were never answered (SYN without
    /// SYN-ACK, or reset): by default they are listed, not allowed.
    #[arg(long)]
    pub include_unanswered: bool,
    /// Also allow connections that violated the SegmentationPolicy
    /// (metadata API, node ports, forbidden cross-namespace...): by default
    /// they are left out and the summary lists them, so a suggestion never
    /// whitelists an attack.
    #[arg(long)]
    pub include_violations: bool,
    /// Write the suggestions as StagedNetworkPolicy objects
    /// (segwatch.dev/v1alpha1): judged on live traffic by `segwatch run`,
    /// never enforced; `segwatch staged promote` turns them into
    /// NetworkPolicies once they had no would-deny connection.
    #[arg(long)]
    pub staged: bool,
    /// How many never-observed allowed connections the summary lists.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SuggestKind {
    Networkpolicy,
    Clusternetworkpolicy,
    SegmentationPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let inventory =
        crate::inventory::load_paths(&args.inventory).context("cannot read --inventory")?;
    let catalog = Catalog::build(&inventory.objects);
    let mut reports = Vec::new();
    for f in &args.flows {
        reports.extend(crate::report::read_flow_log(f)?);
    }
    let mut observed = Observed::from_flows(
        &reports,
        &catalog,
        ObserveOptions {
            include_unanswered: args.include_unanswered,
            include_violations: args.include_violations,
        },
    );
    if let Some(url) = &args.from_prometheus {
        let window = prometheus::parse_window(&args.window)?;
        let at = args.at.unwrap_or_else(chrono::Utc::now);
        let samples =
            read_prometheus(url, window, at).with_context(|| format!("--from-prometheus {url}"))?;
        tracing::info!(edges = samples.len(), "read workload edges from Prometheus");
        let start = at - chrono::Duration::seconds(i64::try_from(window).unwrap_or(i64::MAX));
        observed.merge(Observed::from_samples(
            &samples,
            (start, at),
            &catalog,
            ObserveOptions {
                include_unanswered: args.include_unanswered,
                include_violations: args.include_violations,
            },
        ));
    }
    if observed.conns.is_empty() {
        // No evidence, no suggestion: an empty set with a passing replay
        // would read as "nothing needs to be allowed".
        for n in &observed.notes {
            eprintln!("note: {n}");
        }
        anyhow::bail!(
            "nothing observed between pods to suggest from ({} flow report(s){})",
            reports.len(),
            if args.from_prometheus.is_some() {
                ", and no workload edge in the Prometheus window"
            } else {
                ""
            }
        );
    }
    let opts = Options {
        default_deny: args.default_deny == OnOff::On,
        aggregate: args.aggregate_cidrs,
    };
    if args.format == SuggestKind::SegmentationPolicy {
        return super::suggest_baseline::run(
            &args,
            inventory.objects,
            &reports,
            &observed,
            &catalog,
        );
    }
    let suggestion = suggest::generate(&observed, &catalog, &opts);
    if args.format == SuggestKind::Clusternetworkpolicy {
        return cluster_run(&args, &inventory.objects, &reports, &suggestion.policies);
    }

    let render = |policies: &[k8s_openapi::api::networking::v1::NetworkPolicy]| {
        if args.staged {
            crate::netpol::staged::render_staged(policies, args.output == Format::Json)
                .context("rendering StagedNetworkPolicies")
        } else {
            Ok(suggest::render(policies, args.output)?)
        }
    };
    match &args.out_dir {
        None => {
            let text = render(&suggestion.policies)?;
            use std::io::Write as _;
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to stdout")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create --out-dir {}", dir.display()))?;
            let ext = match args.output {
                Format::Yaml => "yaml",
                Format::Json => "json",
            };
            for ns in &suggestion.namespaces {
                let policies: Vec<_> = suggestion
                    .policies
                    .iter()
                    .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
                    .cloned()
                    .collect();
                let path = dir.join(format!("{ns}.{ext}"));
                std::fs::write(&path, render(&policies)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
    }
    let replay = suggest::replay(
        &inventory.objects,
        &catalog,
        &observed,
        &suggestion.policies,
        &suggestion.namespaces,
    );
    eprint!(
        "{}",
        suggest::summary(
            &suggestion,
            &observed,
            &replay,
            args.default_deny == OnOff::On,
            args.top
        )
    );
    Ok(if replay.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// `--format clusternetworkpolicy`: the guardrails, and a replay of every
/// allowed observed flow against the existing policies, the suggested
/// NetworkPolicies and the guardrails together (exit 3 if one is denied).
fn cluster_run(
    args: &Args,
    inventory: &[crate::inventory::Object],
    reports: &[crate::report::FlowReport],
    netpols: &[k8s_openapi::api::networking::v1::NetworkPolicy],
) -> anyhow::Result<ExitCode> {
    use crate::inventory::Object;
    let s = suggest::cluster::suggest(reports);
    let text = suggest::cluster::render(&s.objects, args.output);
    write_one(
        args.out_dir.as_deref(),
        "clusternetworkpolicies",
        args.output,
        &text,
    )?;
    let mut objects: Vec<Object> = inventory.to_vec();
    objects.extend(netpols.iter().cloned().map(Object::NetworkPolicy));
    for o in &s.objects {
        objects.push(Object::ClusterNetworkPolicy(
            serde_json::from_value(o.clone()).context("a suggested ClusterNetworkPolicy")?,
        ));
    }
    let (engine, warnings) =
        crate::netpol::Engine::build(&crate::netpol::Objects::from_inventory(&objects));
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let mut checked = 0usize;
    let mut denied = Vec::new();
    for r in reports {
        if r.verdict != Some(crate::report::Verdict::Allowed) {
            continue;
        }
        let Some(protocol) = r.protocol.parse::<crate::netpol::Protocol>().ok() else {
            continue;
        };
        checked += 1;
        let d = engine.evaluate(&crate::netpol::Query {
            src: crate::netpol::Peer::Ip(r.src.ip),
            dst: crate::netpol::Peer::Ip(r.dst.ip),
            protocol,
            port: r.dst.port.unwrap_or(0),
        });
        if !d.allowed {
            let by = d
                .decided_by()
                .map(|b| {
                    format!(
                        "{} {} rule {}",
                        b.kind,
                        b.name,
                        b.rule.map_or("-".into(), |r| r.to_string())
                    )
                })
                .unwrap_or_default();
            denied.push(format!(
                "{} -> {}:{} {}: denied by {by}",
                r.src.ip,
                r.dst.ip,
                r.dst.port.unwrap_or(0),
                r.protocol
            ));
        }
    }
    eprintln!(
        "ClusterNetworkPolicy guardrails ({} objects):",
        s.objects.len()
    );
    for n in &s.notes {
        eprintln!("  {n}");
    }
    eprintln!(
        "replay of {checked} allowed observed flow(s) against existing + suggested NetworkPolicies + these guardrails: {} denied",
        denied.len()
    );
    for d in denied.iter().take(args.top) {
        eprintln!("  {d}");
    }
    Ok(if denied.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Runs the two queries of `suggest::prometheus` against `/api/v1/query`.
///
/// The HTTP client is hyper's (client, http1) through hyper-util's pooled
/// client: both are already in the build through kube, so this adds no
/// crate, and a blocking client (ureq) would add its own TLS and HTTP
/// stacks for two GET requests. Plain `http://` only: Prometheus inside a
/// cluster serves plain HTTP (or is reached with `kubectl port-forward`).
fn read_prometheus(
    base: &str,
    window_secs: u64,
    at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<WorkloadSample>> {
    use http_body_util::BodyExt as _;
    let base_uri: hyper::Uri = base.parse().context("not a URL")?;
    match base_uri.scheme_str() {
        Some("http") => {}
        Some(other) => anyhow::bail!(
            "scheme {other}: only http:// is supported (use kubectl port-forward for an https-only Prometheus)"
        ),
        None => anyhow::bail!("expected an http:// URL"),
    }
    let prefix = base.trim_end_matches('/');
    let time = at.timestamp_millis() as f64 / 1000.0;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let mut answers = Vec::new();
    for q in prometheus::queries(window_secs) {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", &q)
            .append_pair("time", &format!("{time:.3}"))
            .finish();
        let uri: hyper::Uri = format!("{prefix}/api/v1/query?{query}")
            .parse()
            .context("cannot build the query URL")?;
        let body = rt.block_on(async {
            let resp = tokio::time::timeout(std::time::Duration::from_secs(60), client.get(uri))
                .await
                .context("no answer within 60 s")?
                .context("request failed")?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .context("cannot read the answer")?
                .to_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            // Prometheus answers errors with 400/422/503 and a JSON body
            // saying why; anything else without JSON is reported by status.
            if !status.is_success() && !text.trim_start().starts_with('{') {
                anyhow::bail!("HTTP {status}: {}", text.lines().next().unwrap_or(""));
            }
            anyhow::Ok(text)
        })?;
        tracing::debug!(query = %q, answer = %body, "Prometheus answer");
        answers.push((q, body));
    }
    let [(q1, a1), (q2, a2), (q3, a3)] = <[(String, String); 3]>::try_from(answers)
        .map_err(|_| anyhow::anyhow!("expected three answers"))?;
    let increase = prometheus::parse_answer(&a1).with_context(|| format!("query {q1}"))?;
    let born = prometheus::parse_answer(&a2).with_context(|| format!("query {q2}"))?;
    let violations = prometheus::parse_violations(&a3).with_context(|| format!("query {q3}"))?;
    Ok(prometheus::samples(&increase, &born, &violations))
}

/// Writes one rendered document: to stdout, or as `STEM.yaml|json` in
/// `--out-dir`.
pub(super) fn write_one(
    out_dir: Option<&std::path::Path>,
    stem: &str,
    format: Format,
    text: &str,
) -> anyhow::Result<()> {
    match out_dir {
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to stdout")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create --out-dir {}", dir.display()))?;
            let path = dir.join(match format {
                Format::Yaml => format!("{stem}.yaml"),
                Format::Json => format!("{stem}.json"),
            });
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}
