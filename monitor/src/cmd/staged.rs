//! `segwatch staged promote`: turns staged policies that proved harmless on
//! live traffic into the plain objects to `kubectl apply`.
//!
//! ```text
//!  --inventory (live objects + staged ones) ─┐
//!  --flows (the window: flow logs of `run`) ─┴► replay_window (each staged object
//!        on its own over the live set) ─► would-deny? refuse (exit 4) : print
//!        NetworkPolicy / ClusterNetworkPolicy YAML (a removal: the kubectl delete)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::netpol::staged::{
    cluster_action, list_text, replay_window, StagedAction, StagedKind, StagedObjects,
};

/// Staged policies: promote the ones that had no would-deny connection.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the plain NetworkPolicies (ClusterNetworkPolicies) of staged
    /// objects, to `kubectl apply`. Refuses (exit 4, evidence on stderr)
    /// when a staged object would have denied a connection of the window
    /// (replayed from --flows, and as recorded by `segwatch run`), unless
    /// --force.
    ///
    /// Examples:
    ///   segwatch staged promote shop/db-lockdown --inventory cluster/ --flows flows.jsonl
    ///   segwatch staged promote --all --inventory cluster/ --flows node-*.jsonl | kubectl apply -f -
    Promote(PromoteArgs),
}

#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    /// `namespace/name` of a StagedNetworkPolicy, or `name` of a
    /// StagedClusterNetworkPolicy.
    #[arg(
        value_name = "NAME",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub name: Option<String>,
    /// Every staged object of the inventory.
    #[arg(long)]
    pub all: bool,
    /// Cluster objects: the live policies and the staged ones (files or
    /// directories, repeatable; `kubectl get ... -o json` output).
    #[arg(long = "inventory", value_name = "PATH", required = true)]
    pub inventory: Vec<PathBuf>,
    /// The window: flow logs written by `segwatch run` (repeatable).
    #[arg(long = "flows", value_name = "FILE", required = true)]
    pub flows: Vec<PathBuf>,
    /// Print even when the window has would-deny connections.
    #[arg(long)]
    pub force: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: crate::suggest::Format,
    /// How many would-deny connections to list per staged object.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
}

/// Exit status when a staged object had would-deny connections.
pub const REFUSED: u8 = 4;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Promote(a) => promote(a),
    }
}

fn promote(args: PromoteArgs) -> anyhow::Result<ExitCode> {
    let inventory =
        crate::inventory::load_paths(&args.inventory).context("cannot read --inventory")?;
    let mut reports = Vec::new();
    for f in &args.flows {
        reports.extend(crate::report::read_flow_log(f)?);
    }
    let live = crate::netpol::Objects::from_inventory(&inventory.objects);
    let staged = StagedObjects::from_inventory(&inventory.objects);
    if staged.is_empty() {
        anyhow::bail!("--inventory holds no StagedNetworkPolicy or StagedClusterNetworkPolicy");
    }
    // The whole staged set is judged together (a default deny and its
    // allow rules work as one), as `segwatch run` does; NAME picks whose
    // verdicts decide.
    let mut results = replay_window(&live, &staged, &reports);
    if let Some(name) = &args.name {
        results.retain(|(info, _)| info.reference() == *name);
        if results.is_empty() {
            anyhow::bail!(
                "{name}: no StagedNetworkPolicy (namespace/name) or StagedClusterNetworkPolicy (name) of that name in --inventory"
            );
        }
    }
    let mut refused = false;
    let mut items = Vec::new();
    let mut deletes = Vec::new();
    for (info, st) in &results {
        let reference = info.reference();
        let kind = info.kind.as_str();
        if let Some(why) = &info.invalid {
            anyhow::bail!("{kind} {reference}: invalid, cannot promote: {why}");
        }
        let deny = st.would_deny.len() as u64;
        eprintln!(
            "{kind} {reference}: {} connection(s) judged in the window, {} selected, {deny} would-deny (replayed), {} recorded by segwatch run, {} would-allow",
            st.judged, st.selected, st.recorded_would_deny, st.would_allow
        );
        if st.judged == 0 {
            eprintln!("  warning: no connection judged by NetworkPolicy in --flows: no evidence either way");
        }
        if (deny > 0 || st.recorded_would_deny > 0) && !args.force {
            refused = true;
            for e in st.would_deny.iter().take(args.top) {
                eprintln!("  would deny: {e}");
            }
            continue;
        }
        match (info.kind, info.action) {
            (StagedKind::NetworkPolicy, StagedAction::Set) => {
                let p = staged
                    .policies
                    .iter()
                    .find(|p| p.id() == reference)
                    .and_then(|p| p.to_network_policy())
                    .context("staged object vanished")?;
                items.push(serde_json::to_value(p).context("serialising a NetworkPolicy")?);
            }
            (StagedKind::ClusterNetworkPolicy, StagedAction::Set) => {
                let c = staged
                    .cluster
                    .iter()
                    .find(|c| c.metadata.name.as_deref() == Some(&info.name))
                    .context("staged object vanished")?;
                let (_, spec) = cluster_action(c).map_err(anyhow::Error::msg)?;
                items.push(serde_json::json!({
                    "apiVersion": "policy.networking.k8s.io/v1alpha2",
                    "kind": "ClusterNetworkPolicy",
                    "metadata": {"name": info.name},
                    "spec": spec,
                }));
            }
            (StagedKind::NetworkPolicy, StagedAction::Delete) => deletes.push(format!(
                "kubectl delete networkpolicy -n {} {}",
                info.namespace, info.name
            )),
            (StagedKind::ClusterNetworkPolicy, StagedAction::Delete) => {
                deletes.push(format!("kubectl delete clusternetworkpolicy {}", info.name));
            }
        }
    }
    if refused {
        eprintln!(
            "refused: staged polic(ies) above would have denied connections of the window; --force to print anyway"
        );
        return Ok(ExitCode::from(REFUSED));
    }
    for d in &deletes {
        eprintln!("staged removal, to apply: {d}");
    }
    if !items.is_empty() {
        use std::io::Write as _;
        let text = list_text(items, args.output == crate::suggest::Format::Json);
        std::io::stdout()
            .write_all(text.as_bytes())
            .context("cannot write to stdout")?;
    }
    Ok(ExitCode::SUCCESS)
}
