//! `segwatch audit`: reads flow logs, the inventory and the declared
//! policy, hashes every input file, and renders the audit report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use crate::audit::judge::{FlowLogNetpol, FlowLogVerdicts, NetpolJudge, SegmentationJudge};
use crate::audit::model::{InputFile, Inputs, JudgementSource, DEFAULT_EVIDENCE_CAP};
use crate::audit::rejudge::{EngineJudge, PolicyJudge};
use crate::audit::render::{self, Format};
use crate::audit::{self, AuditInput, SourcedFlow};
use crate::inventory::{self, Object};
use crate::segpolicy::CompiledPolicy;

/// Evidence for auditors: one verdict per control (PASS, FAIL, NOT
/// VERIFIED) with its reason and the flows behind it, the observation
/// window, coverage and a SHA-256 of every input.
///
/// Examples:
///   segwatch audit --flows flows.jsonl --inventory cluster.json --format html -o audit.html
///   segwatch audit --flows n1.jsonl --flows n2.jsonl --inventory inv/ --policy seg.yaml --format json
///   segwatch audit --flows flows.jsonl --probes probe-team-a.json --inventory inv/ --format md
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Flow log written by `segwatch run` (repeatable; one per node is fine).
    #[arg(
        long = "flows",
        value_name = "FILE",
        required_unless_present = "probes"
    )]
    pub flows: Vec<PathBuf>,
    /// `segwatch probe` reports (repeatable): active evidence for "Host
    /// ports", "Metadata API" and "NetworkPolicy enforcement".
    #[arg(long = "probes", value_name = "FILE")]
    pub probes: Vec<PathBuf>,
    /// Cluster objects: files or directories (repeatable).
    #[arg(long = "inventory", value_name = "PATH", required = true)]
    pub inventory: Vec<PathBuf>,
    /// The declared SegmentationPolicy (repeatable). Given: every flow is
    /// re-judged against it. Absent: the verdicts in the flow log are used.
    #[arg(long = "policy", value_name = "PATH")]
    pub policy: Vec<PathBuf>,
    /// Output format: html, json or md.
    #[arg(long, value_name = "html|json|md")]
    pub format: String,
    /// Write the report here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Pin the report's generation time (RFC 3339), for reproducible output.
    /// Default: `$SOURCE_DATE_EPOCH` if set, else now.
    #[arg(long, value_name = "RFC3339")]
    pub generated_at: Option<String>,
    /// Evidence rows listed per group (counts stay exact).
    #[arg(long, default_value_t = DEFAULT_EVIDENCE_CAP, value_name = "N")]
    pub max_evidence: usize,
    /// For pipelines: after writing the report, exit with status 3 when a
    /// control is FAIL (`fail`), or FAIL or NOT VERIFIED (`not-verified`).
    /// Without it the verdicts never change the exit status (errors: 1).
    #[arg(long, value_enum, value_name = "fail|not-verified")]
    pub fail_on: Option<FailOn>,
}

fn sha256_file(path: &Path) -> anyhow::Result<(String, u64, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let digest = Sha256::digest(&bytes);
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, bytes.len() as u64, bytes))
}

fn generated_at(flag: Option<&str>) -> anyhow::Result<DateTime<Utc>> {
    if let Some(s) = flag {
        return DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| anyhow::anyhow!("--generated-at: `{s}` is not an RFC 3339 time: {e}"));
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => {
            let secs: i64 = v.trim().parse().map_err(|_| {
                anyhow::anyhow!("SOURCE_DATE_EPOCH: `{v}` is not a number of seconds")
            })?;
            DateTime::from_timestamp(secs, 0)
                .ok_or_else(|| anyhow::anyhow!("SOURCE_DATE_EPOCH: `{v}` is out of range"))
        }
        _ => Ok(Utc::now()),
    }
}

/// Reads one flow log: the reports (via `report::read_flow_log`, whose
/// errors name file:line) with the line each came from, and its hash.
fn load_flows(path: &Path) -> anyhow::Result<(Vec<SourcedFlow>, InputFile)> {
    let (sha256, bytes, raw) = sha256_file(path)?;
    let reports = crate::report::read_flow_log(path)?;
    // read_flow_log skips blank lines; number the others the same way.
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, _)| i + 1)
        .collect();
    let name = path.display().to_string();
    let flows: Vec<SourcedFlow> = reports
        .into_iter()
        .enumerate()
        .map(|(i, report)| SourcedFlow {
            report,
            source: format!("{name}:{}", lines.get(i).copied().unwrap_or(i + 1)),
        })
        .collect();
    let file = InputFile {
        path: name,
        sha256,
        bytes,
        records: flows.len() as u64,
    };
    Ok((flows, file))
}

/// Hashes the files behind inventory/policy paths (directories expanded the
/// same way the loader expands them), with the objects read from each.
fn hash_paths(paths: &[PathBuf]) -> anyhow::Result<Vec<InputFile>> {
    let files = inventory::expand_paths(paths).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    for f in files {
        let (sha256, bytes, raw) = sha256_file(&f)?;
        let records = inventory::parse_str(&f, &String::from_utf8_lossy(&raw))
            .map(|inv| inv.objects.len() as u64)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(InputFile {
            path: f.display().to_string(),
            sha256,
            bytes,
            records,
        });
    }
    Ok(out)
}

/// The verdicts that make `--fail-on` exit non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    Fail,
    NotVerified,
}

/// Exit status of a report written whose verdicts `--fail-on` rejects
/// (1 is an error, 2 a usage error).
const CONTROLS_FAILED: u8 = 3;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let format: Format = args
        .format
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let generated_at = generated_at(args.generated_at.as_deref())?;

    let mut flows = Vec::new();
    let mut flow_files = Vec::new();
    for path in &args.flows {
        let (f, file) = load_flows(path)?;
        flows.extend(f);
        flow_files.push(file);
    }
    let inv = inventory::load_paths(&args.inventory).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut warnings = inv.warnings.clone();
    let objects: Vec<Object> = inv.objects;
    let declared = audit::load_declared_policies(&args.policy, &objects)?;

    let mut probes = Vec::new();
    let mut probe_files = Vec::new();
    for path in &args.probes {
        let (sha256, bytes, raw) = sha256_file(path)?;
        let file = path.display().to_string();
        let report = audit::probes::parse_probe_report(&file, &String::from_utf8_lossy(&raw))?;
        probe_files.push(InputFile {
            path: file.clone(),
            sha256,
            bytes,
            records: report.results.len() as u64,
        });
        probes.push(audit::probes::SourcedProbe { report, file });
    }
    let inputs = Inputs {
        flows: flow_files,
        inventory: hash_paths(&args.inventory)?,
        policy: hash_paths(&args.policy)?,
        probes: probe_files,
    };

    // Segmentation verdicts: re-judged against the declared policy when
    // there is one (the auditor's question), else the daemon's own.
    let policy_judge;
    let (segmentation, segmentation_source): (&dyn SegmentationJudge, _) =
        if declared.raw.is_empty() {
            (&FlowLogVerdicts, JudgementSource::FlowLog)
        } else {
            policy_judge = PolicyJudge::new(CompiledPolicy::union(&declared.compiled), &objects);
            (&policy_judge, JudgementSource::Policy)
        };
    // NetworkPolicy verdicts: the engine over the inventory's policies when
    // it has any, else the daemon's `netpol` field.
    let engine_judge;
    let has_netpols = objects
        .iter()
        .any(|o| matches!(o, Object::NetworkPolicy(_)));
    let (netpol, netpol_source): (&dyn NetpolJudge, _) = if has_netpols {
        let (judge, w) = EngineJudge::new(&objects);
        warnings.extend(w);
        engine_judge = judge;
        (&engine_judge, JudgementSource::Engine)
    } else {
        (&FlowLogNetpol, JudgementSource::FlowLog)
    };
    warnings.sort();
    warnings.dedup();
    // The staged sections replay the window: keep the reports only when
    // there is something staged.
    let staged_flows: Vec<crate::report::FlowReport> = if objects.iter().any(|o| {
        matches!(
            o,
            crate::inventory::Object::StagedNetworkPolicy(_)
                | crate::inventory::Object::StagedClusterNetworkPolicy(_)
        )
    }) {
        flows.iter().map(|f| f.report.clone()).collect()
    } else {
        Vec::new()
    };
    let mut report = audit::build(AuditInput {
        flows,
        objects: &objects,
        policies: &declared.raw,
        segmentation,
        segmentation_source,
        netpol,
        netpol_source,
        inputs,
        generated_at,
        evidence_cap: args.max_evidence,
        warnings,
    });
    if !probes.is_empty() {
        audit::probes::apply(&mut report, &probes, args.max_evidence);
    }
    audit::staged::apply(&mut report, &objects, &staged_flows, args.max_evidence);
    let text = render::render(&report, format);
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .context("cannot write the report to stdout")?;
        }
    }
    tracing::info!(
        pass = report.summary.pass,
        fail = report.summary.fail,
        not_verified = report.summary.not_verified,
        "audit report written"
    );
    let s = &report.summary;
    let (rejected, flag) = match args.fail_on {
        None => (0, ""),
        Some(FailOn::Fail) => (s.fail, "fail"),
        Some(FailOn::NotVerified) => (s.fail + s.not_verified, "not-verified"),
    };
    if rejected > 0 {
        eprintln!(
            "segwatch: audit: {} control(s) FAIL, {} NOT VERIFIED (--fail-on {flag})",
            s.fail, s.not_verified
        );
        return Ok(ExitCode::from(CONTROLS_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}
