//! `segwatch suggest --format segmentation-policy`: writes the learned
//! baseline ([`crate::suggest::baseline`]) and replays the observed flows
//! through it, judged as `segwatch run --policy` would judge them.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::suggest::Args;
use crate::index::{ClusterIndex, IndexConfig};
use crate::inventory::Object;
use crate::report::{FlowReport, TcpState, Verdict};
use crate::segpolicy::CompiledDoc;
use crate::suggest::baseline::{baseline, DEFAULT_NAME};
use crate::suggest::{Catalog, Format, Observed};

pub fn run(
    args: &Args,
    inventory: Vec<Object>,
    reports: &[FlowReport],
    observed: &Observed,
    catalog: &Catalog,
) -> anyhow::Result<ExitCode> {
    if args.staged {
        anyhow::bail!("--staged: only NetworkPolicies are staged; --format segmentation-policy writes a SegmentationPolicy");
    }
    let b = baseline(observed, catalog, DEFAULT_NAME);
    let text = match args.output {
        Format::Yaml => format!(
            "---\n{}",
            serde_yaml_ng::to_string(&b.policy).context("rendering the SegmentationPolicy")?
        ),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&b.policy)
                .context("rendering the SegmentationPolicy")?;
            s.push('\n');
            s
        }
    };
    super::suggest::write_one(
        args.out_dir.as_deref(),
        "segmentation-policy",
        args.output,
        &text,
    )?;

    // Replay: the connections the baseline was learned from, judged with
    // it as the only SegmentationPolicy (the inventory's are left out).
    let doc = CompiledDoc::compile(&b.policy)
        .map_err(|e| anyhow::anyhow!("the learned SegmentationPolicy does not compile: {e}"))?;
    let mut index = ClusterIndex::new(IndexConfig {
        static_policies: vec![Arc::new(doc)],
        ..Default::default()
    });
    index.reset(
        inventory
            .into_iter()
            .filter(|o| !matches!(o, Object::SegmentationPolicy(_)))
            .collect(),
    );
    index.refresh();
    let (mut checked, mut violations, mut unjudged) = (0usize, Vec::new(), 0usize);
    for r in reports {
        let learned_from = !r.probe
            && (args.include_violations || r.verdict != Some(Verdict::Violation))
            && (args.include_unanswered
                || !matches!(
                    r.tcp.as_ref().map(|t| t.state),
                    Some(TcpState::Attempted | TcpState::Rejected)
                ))
            && matches!(r.protocol.as_str(), "TCP" | "UDP" | "SCTP")
            && r.src.kind == Some(crate::report::EndpointKind::Pod);
        if !learned_from {
            continue;
        }
        let mut r = r.clone();
        index.judge(&mut r);
        checked += 1;
        match r.verdict {
            Some(Verdict::Allowed) => {}
            Some(Verdict::Violation) => violations.push(format!(
                "{} -> {}:{} {}: {}",
                r.src.ip,
                r.dst.ip,
                r.dst.port.unwrap_or(0),
                r.protocol,
                r.violations
                    .first()
                    .map_or(String::new(), |v| v.reason.clone())
            )),
            Some(Verdict::Unjudged) | None => unjudged += 1,
        }
    }
    let s = &b.stats;
    eprintln!(
        "suggest: SegmentationPolicy {DEFAULT_NAME} from {} observed edge(s): {} cross-namespace rule(s), {} within-namespace rule(s) over {} namespace(s) (every other edge inside them is a violation), {} host access, {} metadata API, {} external rule(s)",
        s.edges, s.cross_namespace, s.within_namespace, s.namespaces, s.host_access, s.metadata_api, s.external
    );
    for n in observed
        .notes
        .iter()
        .map(|n| n.to_string())
        .chain(b.notes.iter().cloned())
    {
        eprintln!("note: {n}");
    }
    eprintln!(
        "replay: {checked} observed connection(s) judged with the learned policy: {} allowed, {} violation(s), {unjudged} unjudged: {}",
        checked - violations.len() - unjudged,
        violations.len(),
        if violations.is_empty() { "PASS" } else { "FAIL" }
    );
    for v in violations.iter().take(args.top) {
        eprintln!("  VIOLATION {v}");
    }
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
