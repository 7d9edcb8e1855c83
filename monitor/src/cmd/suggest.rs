//! `segwatch suggest`: NetworkPolicies from observed flows (CONTRACT.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::suggest::{self, Aggregate, Catalog, Format, ObserveOptions, Observed, Options};

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
    #[arg(long = "flows", value_name = "FILE", required = true)]
    pub flows: Vec<PathBuf>,
    /// Cluster objects: files or directories (repeatable). The workloads'
    /// labels, Services and existing NetworkPolicies come from here.
    #[arg(long = "inventory", value_name = "PATH", required = true)]
    pub inventory: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
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
    /// How many never-observed allowed connections the summary lists.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
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
    let observed = Observed::from_flows(
        &reports,
        &catalog,
        ObserveOptions {
            include_unanswered: args.include_unanswered,
        },
    );
    let opts = Options {
        default_deny: args.default_deny == OnOff::On,
        aggregate: args.aggregate_cidrs,
    };
    let suggestion = suggest::generate(&observed, &catalog, &opts);

    match &args.out_dir {
        None => {
            let text = suggest::render(&suggestion.policies, args.output)?;
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
                std::fs::write(&path, suggest::render(&policies, args.output)?)
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
