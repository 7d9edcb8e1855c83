//! `segwatch probe`: active evidence of what a pod can reach. The pure
//! parts live here; `cmd::probe` does the sockets, the API and the files.
//!
//! ```text
//!  downward API env / flags ──► Source (pod, namespace, sa, node, ips)
//!  inventory | API lists ─────► ClusterIndex ──► plan::plan ──► [Target]
//!  --targets FILE ─────────────────────────────────┘               │
//!                                      pace::Pacer (rate, deadline)│
//!                                                                  ▼
//!                        TCP connect / UDP send+recv ──► Status per target
//!                                                                  │
//!  expect::Judge (SegmentationPolicy + NetworkPolicy) ──► Expected │
//!                                                                  ▼
//!                                 model::ProbeReport (one JSON document)
//! ```

pub mod expect;
pub mod model;
pub mod pace;
pub mod plan;
pub mod targets;

use model::{finding, outcome, ProbeResult, Status};
use targets::Target;

/// Label the probe's pods carry; the daemon tags their flows `probe: true`
/// and counts them in `segwatch_probe_flows_total` instead of the violation
/// metrics (deploy/probe sets it).
pub const PROBE_LABEL: &str = "segwatch.dev/probe";

/// One result, judged: `who` names the probe's pod in the finding.
pub fn judged_result(
    judge: &expect::Judge<'_>,
    who: &str,
    target: &Target,
    status: Status,
    detail: Option<String>,
) -> ProbeResult {
    let e = judge.expect(target);
    let spec = target.spec();
    let outcome = outcome(status, e.expected);
    ProbeResult {
        finding: finding(outcome, status, who, &spec, &target.name, &e.why),
        target: spec,
        address: target.address,
        port: target.port,
        protocol: target.transport,
        kind: target.kind,
        name: target.name.clone(),
        status,
        detail,
        expected: e.expected,
        outcome,
        why: e.why,
        segmentation: e.segmentation,
        netpol: e.netpol,
    }
}

#[cfg(test)]
mod tests;
