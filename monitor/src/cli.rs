//! Command-line entry: clap derive, one module per subcommand in `cmd/`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use crate::cmd;
pub use crate::cmd::one_line;

/// eBPF network segmentation and flow monitor for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "segwatch", version, about, long_about = None)]
pub struct Cli {
    /// Log filter for diagnostics on stderr (tracing env-filter syntax),
    /// e.g. `info`, `segwatch=debug`. Default: `$RUST_LOG`, else `info`
    /// without the kube client's per-retry lines.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon: attach to pod veths, report flows, serve /metrics.
    Run(cmd::run::Args),
    /// Print the SegmentationPolicy CustomResourceDefinition (YAML).
    Crd(cmd::crd::Args),
    /// Evidence for auditors: controls with PASS/FAIL/NOT VERIFIED verdicts
    /// from flow logs and the inventory, as html, json or md.
    Audit(cmd::audit::Args),
    /// Suggest least-privilege NetworkPolicies from observed flows and check them.
    Suggest(cmd::suggest::Args),
    /// Kubernetes NetworkPolicy semantics on an inventory: `eval` queries, `matrix` listing.
    Netpol(cmd::netpol::Args),
    /// Active evidence from inside a pod: try node admin ports, NodePorts,
    /// cloud metadata endpoints and other namespaces; judge against the policies.
    Probe(cmd::probe::Args),
    /// Staged policies (StagedNetworkPolicy, StagedClusterNetworkPolicy):
    /// promote the ones that would have denied nothing.
    Staged(cmd::staged::Args),
}

/// The log filter without `--log-level` or RUST_LOG. kube's client and
/// watcher log every failed retry (a line or two per watched resource every
/// few seconds while the API server is away); the cluster sources report an
/// outage once, with its error, when it starts and once when it ends.
/// `--log-level info,kube_client=debug` brings them back.
pub const DEFAULT_LOG: &str = "info,kube_client=off,kube_runtime=off";

/// Diagnostics go to stderr, never stdout (stdout may carry the flow log).
/// A `--log-level` that is not a valid filter is a bad flag, not a warning.
pub fn init_tracing(filter: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f)
            .map_err(|e| anyhow::anyhow!("--log-level `{f}`: not a log filter: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
    };
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: journald, kubectl logs
        // and log files get plain text, not escape sequences.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    Ok(())
}

/// A command-line error as one line (CONTRACT: "exits non-zero with a
/// one-line reason on bad flags"). clap renders several lines (the error,
/// a tip, the usage, a pointer to --help); this keeps the error and its
/// details, drops the usage, and joins the rest. `--help` and `--version`
/// are not errors and print as clap prints them.
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut line = String::new();
    for part in text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part.strip_prefix("error: ").unwrap_or(part));
    }
    eprintln!("segwatch: {line}");
    // clap's own exit status for usage errors.
    ExitCode::from(2)
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Crd(args) => cmd::crd::run(args),
        Command::Audit(args) => cmd::audit::run(args),
        Command::Suggest(args) => cmd::suggest::run(args),
        Command::Netpol(args) => cmd::netpol::run(args),
        Command::Probe(args) => cmd::probe::run(args),
        Command::Staged(args) => cmd::staged::run(args),
    }
}
