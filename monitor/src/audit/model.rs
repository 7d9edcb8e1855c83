//! The audit report: plain data, serialised as the JSON format and read by
//! the Markdown and HTML renderers. Field names are stable (tools read them);
//! extend, never rename.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Version of this JSON shape; bumped on incompatible changes.
pub const SCHEMA: &str = "segwatch.dev/audit/v1alpha1";

/// How many evidence rows each group keeps by default; counts stay exact.
pub const DEFAULT_EVIDENCE_CAP: usize = 50;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    pub schema: String,
    /// The only field that varies between runs on the same inputs
    /// (pinned with `--generated-at` or `SOURCE_DATE_EPOCH`).
    pub generated_at: DateTime<Utc>,
    pub tool: Tool,
    pub inputs: Inputs,
    /// Where the per-flow verdicts come from.
    pub judgement: Judgement,
    pub window: Window,
    pub coverage: Coverage,
    pub summary: Summary,
    pub controls: Vec<Control>,
    pub matrix: Matrix,
    /// Inventory and policy warnings (skipped objects), one line each.
    pub warnings: Vec<String>,
    /// One section per staged policy of the inventory (absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staged: Vec<StagedSection>,
}

/// What a staged policy (StagedNetworkPolicy, StagedClusterNetworkPolicy)
/// would have done to the window's connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedSection {
    /// `StagedNetworkPolicy` or `StagedClusterNetworkPolicy`.
    pub kind: String,
    /// `ns/name` or `name`.
    pub name: String,
    /// `Set` or `Delete`.
    pub action: String,
    /// Why it was left out, when invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// Connections judged by NetworkPolicy in the window.
    pub connections_judged: u64,
    /// Connections the staged policy applied to.
    pub connections_selected: u64,
    pub would_deny: u64,
    pub would_allow: u64,
    /// Would-deny connections as `segwatch run` recorded them.
    pub recorded_would_deny: u64,
    /// The would-deny connections (capped like the other evidence).
    pub would_deny_evidence: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub flows: Vec<InputFile>,
    pub inventory: Vec<InputFile>,
    pub policy: Vec<InputFile>,
    /// `segwatch probe` reports (`--probes`); records: results read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<InputFile>,
}

/// One input file, so the report can be reproduced and checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// The path as given (directories are expanded to their files).
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    /// Flow reports read (flow logs) or objects read (inventory, policy).
    pub records: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    /// `flow_log`: the verdicts the daemon wrote with its own policy;
    /// `policy`: every flow re-judged against the declared SegmentationPolicy.
    pub segmentation: JudgementSource,
    /// `engine`: NetworkPolicies of the inventory evaluated by segwatch's
    /// engine; `flow_log`: the `netpol` field the daemon wrote.
    pub networkpolicy: JudgementSource,
    /// Names of the SegmentationPolicy documents declared (`--policy` and
    /// the inventory), sorted.
    pub policies: Vec<String>,
    /// One sentence for humans on what the verdicts rest on.
    pub note: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgementSource {
    FlowLog,
    Policy,
    Engine,
}

impl JudgementSource {
    pub fn as_str(self) -> &'static str {
        match self {
            JudgementSource::FlowLog => "flow_log",
            JudgementSource::Policy => "policy",
            JudgementSource::Engine => "engine",
        }
    }
}

/// The time span the evidence covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<DateTime<Utc>>,
    pub flow_reports: u64,
    /// Per observing node (`observer`; `(unknown)` for reports without one).
    pub observers: Vec<ObserverWindow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObserverWindow {
    pub node: String,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub flow_reports: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Nodes that reported flows.
    pub nodes_observed: Vec<String>,
    /// Nodes in the inventory that reported nothing: no evidence from them.
    pub nodes_not_observed: Vec<String>,
    /// Namespaces seen at either end of a flow.
    pub namespaces_observed: Vec<String>,
    /// Namespaces in the inventory never seen in a flow.
    pub namespaces_not_observed: Vec<String>,
    /// Flow reports with an end attribution could not name (no kind).
    pub unattributed_flow_reports: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub pass: u32,
    pub fail: u32,
    pub not_verified: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Verdict {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "FAIL")]
    Fail,
    #[serde(rename = "NOT VERIFIED")]
    NotVerified,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotVerified => "NOT VERIFIED",
        }
    }
}

/// One control (ids exactly as in CONTROLS.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub id: String,
    pub title: String,
    /// What the control asks, paraphrased.
    pub requirement: String,
    pub verdict: Verdict,
    /// Why this verdict, in one or two sentences.
    pub reason: String,
    /// Exact counts behind the verdict (names are per control, stable).
    pub counts: BTreeMap<String, u64>,
    /// Per-namespace (or per-object) sub-verdicts where the control has them.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub scopes: Vec<Scope>,
    /// Flow evidence, grouped (e.g. violations, blocked attempts, allowed).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub evidence: Vec<EvidenceGroup>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub name: String,
    pub verdict: Verdict,
    pub reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub details: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceGroup {
    /// Stable key: `violations`, `blocked`, `refused`, `allowed`, ...
    pub name: String,
    /// Human title of the group.
    pub title: String,
    /// Every flow report in the group (the list below may be capped).
    pub total: u64,
    pub flows: Vec<FlowEvidence>,
}

/// One flow report as evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEvidence {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observer: Option<String>,
    pub src: Party,
    pub dst: Party,
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `established`, `closed`, `attempted`, `rejected` (TCP) or
    /// `answered`, `unanswered` (other protocols).
    pub state: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the flow report is: `file:line`.
    pub source: String,
}

/// One end of a flow, as attribution named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// `pod`, `service`, `node`, `metadata`, `external` or `unknown`.
    pub kind: String,
    /// Short identity, e.g. `shop/web-0` or `node/n1` or `10.0.0.9`.
    pub name: String,
    pub ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The observed namespace-to-namespace matrix (BSI APP.4.4.A1 input).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matrix {
    /// Row labels: namespaces plus `(nodes)`, `(external)`, `(unknown)`.
    pub sources: Vec<String>,
    /// Column labels: namespaces plus `(nodes)`, `(metadata API)`,
    /// `(external)`, `(unknown)`.
    pub destinations: Vec<String>,
    pub edges: Vec<Edge>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub src: String,
    pub dst: String,
    /// `violating` (a forbidden flow got through), `blocked` (forbidden
    /// flows were all stopped), `allowed`, or `unjudged` (no verdict).
    pub class: EdgeClass,
    pub flow_reports: u64,
    pub violating: u64,
    pub blocked: u64,
    pub bytes: u64,
    /// `port/PROTO`, sorted, at most 12 (then `+N more`).
    pub ports: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeClass {
    Violating,
    Blocked,
    Allowed,
    Unjudged,
}

impl EdgeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeClass::Violating => "violating",
            EdgeClass::Blocked => "blocked",
            EdgeClass::Allowed => "allowed",
            EdgeClass::Unjudged => "unjudged",
        }
    }
}
