//! Command-line entry: clap derive, one module per subcommand in `cmd/`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use crate::cmd;

/// eBPF network segmentation and flow monitor for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "segwatch", version, about, long_about = None)]
pub struct Cli {
    /// Log filter for diagnostics on stderr (tracing env-filter syntax),
    /// e.g. `info`, `segwatch=debug`. Default: `$RUST_LOG`, else `info`.
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
}

/// Diagnostics go to stderr, never stdout (stdout may carry the flow log).
pub fn init_tracing(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Crd(args) => cmd::crd::run(args),
        Command::Audit(args) => cmd::audit::run(args),
        Command::Suggest(args) => cmd::suggest::run(args),
        Command::Netpol(args) => cmd::netpol::run(args),
    }
}
