//! `segwatch netpol eval|matrix`: Kubernetes NetworkPolicy semantics on an
//! inventory, without a cluster.
//!
//! ```text
//!  --inventory PATH... ─► inventory::load_paths ─► netpol::Engine::build
//!  eval:   query lines (JSON) ─► Engine::evaluate ─► answer lines (JSON)
//!  matrix: netpol::matrix::connectivity ─► listing lines
//! ```

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Map, Value};

use crate::inventory;
use crate::netpol::{matrix, Decision, Direction, Engine, Objects, Peer, Protocol, Query};

#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    pub command: NetpolCommand,
}

#[derive(Debug, Subcommand)]
pub enum NetpolCommand {
    /// Answer "would the NetworkPolicies allow this connection?" per query line.
    ///
    /// Each input line is a JSON object:
    ///   {"src":"ns/name"|"<ip>","dst":"ns/name"|"<ip>","port":8080,"protocol":"TCP"}
    /// `name` is a Pod, or a workload (Deployment, ...) standing for its pods;
    /// an IP that is a pod's address means that pod, any other is external.
    /// `protocol` defaults to TCP (TCP, UDP, SCTP, ICMP, ICMPv6 or a number);
    /// `port` is required for TCP, UDP and SCTP.
    ///
    /// Each answer line echoes the query and adds
    ///   "allowed":bool,
    ///   "decided_by":{"kind":..,"name":..,"tier":..,"rule":N,"action":..}|null,
    ///   "egress":{"isolated":bool,"allowed_by":["ns/policy",...]},
    ///   "ingress":{"isolated":bool,"allowed_by":[...]}
    /// (`egress` is the source's, `ingress` the destination's). When the
    /// inventory holds StagedNetworkPolicies or StagedClusterNetworkPolicies,
    /// also the flow log's field
    ///   "staged":{"verdict":"allowed|denied|would_deny|would_allow","decided_by":{..},"policy":..}
    /// (the verdict with the staged objects applied).
    ///
    /// A bad query line is reported on stderr as one line naming the line
    /// number and the field; evaluation goes on with the next line, and the
    /// exit status is 1 if any line was bad.
    ///
    /// Example:
    ///   echo '{"src":"shop/web","dst":"shop/db","port":5432}' |
    ///     segwatch netpol eval --inventory cluster.yaml
    #[command(verbatim_doc_comment)]
    Eval(EvalArgs),

    /// Print every allowed connection of the inventory, one line per pair.
    ///
    /// Format (the np-guard/netpol-analyzer `connlist` text notation):
    ///   src[Kind] => dst[Kind] : All Connections | TCP 8080,UDP 53 | TCP 8000-8010
    /// Pods are shown by their controller (`ns/name[ReplicaSet]`), pods
    /// without one as `ns/pod[Pod]`, addresses outside the cluster as ranges
    /// `a.b.c.d-e.f.g.h[External]` cut at every ipBlock boundary. Lines are
    /// sorted; pairs with no connection and traffic within a workload are
    /// not listed.
    #[command(verbatim_doc_comment)]
    Matrix(MatrixArgs),

    /// Compare the connectivity of two policy sets: what the new set adds,
    /// removes or changes compared with the reference set.
    ///
    /// Both sets are evaluated with every tier (AdminNetworkPolicy /
    /// ClusterNetworkPolicy Admin, NetworkPolicy, Baseline) over the
    /// workloads of `--inventory` plus whatever the sets themselves hold
    /// (directories are read recursively). One line per source/destination
    /// pair whose allowed connections differ:
    ///   diff-type: changed|added|removed, source: S, destination: D,
    ///   ref1: <before>, ref2: <after>[, workloads-diff-info: ...]
    /// Exit status: 0 when nothing changes, 1 when something does, 2 on
    /// bad input.
    ///
    /// Example:
    ///   segwatch netpol diff --inventory cluster.json --ref policies/ --new pr/policies/ -o md
    #[command(verbatim_doc_comment)]
    Diff(DiffArgs),
}

#[derive(Debug, ClapArgs)]
pub struct EvalArgs {
    /// Inventory file or directory (repeatable): Namespaces, Pods,
    /// workloads, NetworkPolicies.
    #[arg(long, value_name = "PATH", required = true)]
    pub inventory: Vec<PathBuf>,
    /// Query lines to read; `-` (the default) is stdin.
    #[arg(long, value_name = "FILE|-", default_value = "-")]
    pub queries: String,
}

#[derive(Debug, ClapArgs)]
pub struct DiffArgs {
    /// The reference policy set: files or directories (repeatable).
    #[arg(long = "ref", value_name = "PATH", required = true)]
    pub reference: Vec<PathBuf>,
    /// The new policy set: files or directories (repeatable).
    #[arg(long, value_name = "PATH", required = true)]
    pub new: Vec<PathBuf>,
    /// Workloads and namespaces both sets apply to (repeatable).
    #[arg(long, value_name = "PATH")]
    pub inventory: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "txt")]
    pub output: DiffFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    Txt,
    Json,
    Md,
}

#[derive(Debug, ClapArgs)]
pub struct MatrixArgs {
    /// Inventory file or directory (repeatable).
    #[arg(long, value_name = "PATH", required = true)]
    pub inventory: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        NetpolCommand::Eval(a) => eval(a),
        NetpolCommand::Matrix(a) => matrix_cmd(a),
        // Exit 1 means "changes" here: bad input must not look like it.
        NetpolCommand::Diff(a) => Ok(diff_cmd(a).unwrap_or_else(|e| {
            eprintln!(
                "segwatch: netpol diff: {}",
                super::one_line(&format!("{e:#}"))
            );
            ExitCode::from(2)
        })),
    }
}

/// Loads the inventory and builds the engine; warnings go to stderr.
fn load(paths: &[PathBuf]) -> Result<(Vec<inventory::Object>, Vec<String>)> {
    let inv = inventory::load_paths(paths).context("loading --inventory")?;
    Ok((inv.objects, inv.warnings))
}

fn build(objects: &[inventory::Object]) -> Engine {
    let live = Objects::from_inventory(objects);
    let (mut engine, warnings) = Engine::build(&live);
    for w in warnings {
        tracing::warn!("{w}");
    }
    // Staged objects in the inventory: answers carry the staged verdict.
    let staged = crate::netpol::staged::StagedObjects::from_inventory(objects);
    if !staged.is_empty() {
        let (overlay, warnings) = crate::netpol::staged::Overlay::build(&live, &staged);
        for w in warnings {
            tracing::warn!("staged policy: {w}");
        }
        engine.set_staged(Some(overlay));
    }
    engine
}

fn matrix_cmd(a: MatrixArgs) -> Result<ExitCode> {
    let (objects, _) = load(&a.inventory)?;
    let engine = build(&objects);
    let lines = matrix::connectivity(&engine);
    let mut out = io::BufWriter::new(io::stdout().lock());
    out.write_all(matrix::render(&lines).as_bytes())
        .context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn eval(a: EvalArgs) -> Result<ExitCode> {
    let (objects, _) = load(&a.inventory)?;
    let engine = build(&objects);
    let (name, reader): (String, Box<dyn BufRead>) = if a.queries == "-" {
        (
            "stdin".to_string(),
            Box::new(BufReader::new(io::stdin().lock())),
        )
    } else {
        let f = File::open(&a.queries)
            .with_context(|| format!("cannot open --queries {}", a.queries))?;
        (a.queries.clone(), Box::new(BufReader::new(f)))
    };
    let mut out = io::stdout().lock();
    let mut bad = 0usize;
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        match answer(&engine, &line) {
            Ok(v) => {
                serde_json::to_writer(&mut out, &v).context("writing to stdout")?;
                out.write_all(b"\n").context("writing to stdout")?;
                out.flush().context("writing to stdout")?;
            }
            Err(e) => {
                bad += 1;
                eprintln!("segwatch: netpol eval: {name}: line {}: {e}", i + 1);
            }
        }
    }
    if bad > 0 {
        eprintln!("segwatch: netpol eval: {bad} query line(s) were invalid");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Why a query line cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("not a JSON object: {0}")]
    Syntax(String),
    #[error("field {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field_err(field: &'static str, reason: impl Into<String>) -> QueryError {
    QueryError::Field {
        field,
        reason: reason.into(),
    }
}

fn peer(engine: &Engine, field: &'static str, v: Option<&Value>) -> Result<Peer, QueryError> {
    let s = match v {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(field_err(field, format!("expected a string, got {other}"))),
        None => return Err(field_err(field, "missing")),
    };
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Peer::Ip(ip));
    }
    let Some((ns, name)) = s
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
    else {
        return Err(field_err(
            field,
            format!("{s:?} is neither an IP address nor namespace/name"),
        ));
    };
    engine
        .endpoint_by_name(ns, name)
        .map(Peer::Endpoint)
        .ok_or_else(|| field_err(field, format!("no pod or workload {s:?} in the inventory")))
}

/// Parses one query line and answers it: the query's fields plus the verdict.
pub fn answer(engine: &Engine, line: &str) -> Result<Value, QueryError> {
    let v: Value = serde_json::from_str(line).map_err(|e| QueryError::Syntax(e.to_string()))?;
    let Value::Object(mut map) = v else {
        return Err(QueryError::Syntax(
            "expected an object like {\"src\":..,\"dst\":..,\"port\":..}".into(),
        ));
    };
    let protocol = match map.get("protocol") {
        None | Some(Value::Null) => Protocol::Tcp,
        Some(Value::String(s)) => s
            .parse::<Protocol>()
            .map_err(|e| field_err("protocol", e.to_string()))?,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .map(|n| {
                n.to_string()
                    .parse::<Protocol>()
                    .unwrap_or(Protocol::Other(n))
            })
            .ok_or_else(|| field_err("protocol", format!("{n} is not a protocol number")))?,
        Some(other) => {
            return Err(field_err(
                "protocol",
                format!("expected a string, got {other}"),
            ))
        }
    };
    let has_ports = !matches!(protocol, Protocol::Other(_));
    let port = match map.get("port") {
        None | Some(Value::Null) if has_ports => {
            return Err(field_err(
                "port",
                format!("missing (required for {protocol})"),
            ))
        }
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|&p| p >= 1 || !has_ports)
            .ok_or_else(|| field_err("port", format!("{n} is not a port number (1-65535)")))?,
        Some(other) => return Err(field_err("port", format!("expected a number, got {other}"))),
    };
    let src = peer(engine, "src", map.get("src"))?;
    let dst = peer(engine, "dst", map.get("dst"))?;
    let q = Query {
        src,
        dst,
        protocol,
        port,
    };
    let d = engine.evaluate(&q);
    add_decision(&mut map, &d);
    if let Some(s) = crate::netpol::staged::report_of(engine, &d, &q) {
        map.insert(
            "staged".into(),
            serde_json::to_value(s).unwrap_or(Value::Null),
        );
    }
    Ok(Value::Object(map))
}

fn direction_json(d: &Direction) -> Value {
    let mut v = json!({"isolated": d.isolated, "allowed_by": d.allowed_by.iter().map(|s| &**s).collect::<Vec<_>>()});
    if let Some(by) = &d.decided_by {
        v["decided_by"] = serde_json::to_value(by).unwrap_or(Value::Null);
    }
    v
}

fn add_decision(map: &mut Map<String, Value>, d: &Decision) {
    map.insert("allowed".into(), Value::Bool(d.allowed));
    map.insert(
        "decided_by".into(),
        d.decided_by()
            .and_then(|by| serde_json::to_value(by).ok())
            .unwrap_or(Value::Null),
    );
    map.insert("egress".into(), direction_json(&d.egress));
    map.insert("ingress".into(), direction_json(&d.ingress));
}

/// Every data file under the paths: a file as given, a directory's
/// `.yaml`/`.yml`/`.json` files at any depth (policy repositories nest
/// them per team or namespace), sorted.
fn policy_files(paths: &[PathBuf], flag: &str) -> Result<Vec<PathBuf>> {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{flag} {}", p.display()))?;
        if meta.is_dir() {
            walk(p, &mut out).with_context(|| format!("{flag} {}", p.display()))?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// The objects of one side: the inventory's, then the set's.
fn side(
    inventory: &[inventory::Object],
    paths: &[PathBuf],
    flag: &str,
) -> Result<Vec<inventory::Object>> {
    let files = policy_files(paths, flag)?;
    let mut objects = inventory.to_vec();
    for f in &files {
        // One file at a time: a file that is not Kubernetes YAML (a
        // JSON array of results, say) is skipped with a warning instead of
        // failing the whole comparison.
        match inventory::load_paths(std::slice::from_ref(f)) {
            Ok(inv) => objects.extend(inv.objects),
            Err(e @ inventory::InventoryError::Syntax { .. }) => {
                tracing::warn!("{flag}: {e}; file skipped");
            }
            Err(e) => return Err(e).with_context(|| format!("loading {flag}")),
        }
    }
    Ok(objects)
}

fn diff_cmd(a: DiffArgs) -> Result<ExitCode> {
    let inv = if a.inventory.is_empty() {
        Vec::new()
    } else {
        load(&a.inventory)?.0
    };
    let reference = build(&side(&inv, &a.reference, "--ref")?);
    let new = build(&side(&inv, &a.new, "--new")?);
    let lines = crate::netpol::diff::diff(&reference, &new);
    let text = render_diff(&lines, a.output);
    let mut out = io::BufWriter::new(io::stdout().lock());
    out.write_all(text.as_bytes())
        .context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(if lines.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The diff in one of the output formats.
pub fn render_diff(lines: &[crate::netpol::diff::DiffLine], format: DiffFormat) -> String {
    match format {
        DiffFormat::Txt => {
            if lines.is_empty() {
                return String::new();
            }
            let mut s = String::from("Connectivity diff:\n");
            for l in lines {
                s.push_str(&l.to_string());
                s.push('\n');
            }
            s
        }
        DiffFormat::Json => {
            let changes: Vec<Value> = lines
                .iter()
                .map(|l| {
                    let mut v = json!({
                        "diff": l.change.as_str(),
                        "src": l.src,
                        "dst": l.dst,
                        "before": l.before.to_string(),
                        "after": l.after.to_string(),
                    });
                    if let Some((names, change)) = &l.workloads {
                        v["workloads"] = json!({"names": names, "change": change.as_str()});
                    }
                    v
                })
                .collect();
            let mut s = serde_json::to_string_pretty(&json!({
                "changed": !lines.is_empty(),
                "changes": changes,
            }))
            .unwrap_or_default();
            s.push('\n');
            s
        }
        DiffFormat::Md => {
            let mut s = String::from("# Connectivity diff\n\n");
            if lines.is_empty() {
                s.push_str("No change: both policy sets allow exactly the same connections.\n");
                return s;
            }
            s.push_str("| change | source | destination | before | after | workloads |\n|---|---|---|---|---|---|\n");
            let cell = |t: &str| t.replace('|', "\\|");
            for l in lines {
                let w = l
                    .workloads
                    .as_ref()
                    .map(|(n, c)| format!("{} {}", n.join(" and "), c.as_str()))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "| {} | `{}` | `{}` | {} | {} | {} |\n",
                    l.change.as_str(),
                    cell(&l.src),
                    cell(&l.dst),
                    cell(&l.before.to_string()),
                    cell(&l.after.to_string()),
                    cell(&w)
                ));
            }
            s
        }
    }
}
