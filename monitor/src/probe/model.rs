//! The probe report: one JSON document, the shape of CONTRACT.md ("New
//! subcommands", `segwatch probe`), extended. `segwatch probe` writes it,
//! `segwatch audit --probes` reads it back. Extend, never rename.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::targets::{TargetKind, Transport};

/// Version of this JSON shape.
pub const SCHEMA: &str = "segwatch.dev/probe/v1alpha1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    #[serde(default)]
    pub schema: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub source: Source,
    pub settings: Settings,
    /// Where the cluster view came from: `api`, `inventory` or `none`.
    pub cluster_view: String,
    /// `false` when something could not be done: a source of targets or of
    /// the cluster view failed, a `--targets` line was bad, or the deadline
    /// left targets untried. `errors` and `not_tried` say what.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    pub summary: Summary,
    pub results: Vec<ProbeResult>,
    /// Targets the deadline left untried (`10.0.0.1:22/tcp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_tried: Vec<String>,
}

/// Who probed: the pod the probe ran in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub timeout_ms: u64,
    /// Attempts per second, at most.
    pub rate: u32,
    pub deadline_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub planned: u64,
    pub tried: u64,
    pub not_tried: u64,
    pub reachable: u64,
    pub refused: u64,
    pub timeout: u64,
    /// Expected blocked, was reachable.
    pub violations: u64,
    /// Expected reachable, was not reached.
    pub not_reached: u64,
    /// Reached or not, nothing said what to expect.
    pub unjudged: u64,
}

/// What one attempt saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// TCP: the handshake completed. UDP: an answer came back.
    Reachable,
    /// TCP: answered by RST; UDP: ICMP port unreachable; either: an ICMP
    /// error (host/net unreachable, administratively prohibited) or no route.
    Refused,
    /// No answer within the timeout (UDP: open or filtered, cannot tell).
    Timeout,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Reachable => "reachable",
            Status::Refused => "refused",
            Status::Timeout => "timeout",
        }
    }
}

/// What the policies say should happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    Blocked,
    Reachable,
    Unknown,
}

impl Expected {
    pub fn as_str(self) -> &'static str {
        match self {
            Expected::Blocked => "blocked",
            Expected::Reachable => "reachable",
            Expected::Unknown => "unknown",
        }
    }
}

/// Status against expectation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Blocked as expected, or reached as allowed.
    AsExpected,
    /// Expected blocked, was reachable: the finding an auditor acts on.
    Violation,
    /// Expected reachable, was not reached (nothing listens, or something
    /// blocks more than the policies say).
    NotReached,
    /// Nothing to compare with.
    Unjudged,
}

/// The SegmentationPolicy's judgement of the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegJudgement {
    /// `allowed`, `violation` or `not_judged`.
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The NetworkPolicies' judgement of the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetpolJudgement {
    pub allowed: bool,
    /// Some policy selects the source (egress) or destination (ingress).
    pub isolated: bool,
    /// `ns/name` of the policies that decide: the allowing ones when
    /// allowed, the isolating ones when denied.
    #[serde(default)]
    pub policies: Vec<String>,
}

/// One target tried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// `10.0.0.1:10250/tcp`.
    pub target: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Transport,
    pub kind: TargetKind,
    /// What it is: `node/n1 kubelet API`, `Azure WireServer`, `shop/web-0`.
    pub name: String,
    pub status: Status,
    /// The socket error behind `refused` (`no route to host`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub expected: Expected,
    pub outcome: Outcome,
    /// One line an auditor can act on, for every outcome but `as_expected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
    /// Why `expected` is what it is.
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<SegJudgement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netpol: Option<NetpolJudgement>,
}

/// Outcome of `status` against `expected`.
pub fn outcome(status: Status, expected: Expected) -> Outcome {
    match (expected, status) {
        (Expected::Unknown, _) => Outcome::Unjudged,
        (Expected::Blocked, Status::Reachable) => Outcome::Violation,
        (Expected::Blocked, _) | (Expected::Reachable, Status::Reachable) => Outcome::AsExpected,
        (Expected::Reachable, _) => Outcome::NotReached,
    }
}

/// The `finding` line for a result.
pub fn finding(
    outcome: Outcome,
    status: Status,
    src: &str,
    target: &str,
    name: &str,
    why: &str,
) -> Option<String> {
    match outcome {
        Outcome::AsExpected => None,
        Outcome::Violation => Some(format!(
            "expected blocked, was reachable: {src} connected to {target} ({name}); {why}. Block it (NetworkPolicy egress rule, node firewall) or allow it in the policy if it is meant"
        )),
        Outcome::NotReached => Some(format!(
            "expected reachable, was {}: {src} could not reach {target} ({name}); {why}",
            status.as_str()
        )),
        Outcome::Unjudged => Some(format!(
            "{}, no expectation: {src} -> {target} ({name}); {why}",
            status.as_str()
        )),
    }
}

impl ProbeReport {
    /// Recounts `summary` from `results` and `not_tried`.
    pub fn summarise(&mut self) {
        let mut s = Summary {
            planned: (self.results.len() + self.not_tried.len()) as u64,
            tried: self.results.len() as u64,
            not_tried: self.not_tried.len() as u64,
            ..Summary::default()
        };
        for r in &self.results {
            match r.status {
                Status::Reachable => s.reachable += 1,
                Status::Refused => s.refused += 1,
                Status::Timeout => s.timeout += 1,
            }
            match r.outcome {
                Outcome::Violation => s.violations += 1,
                Outcome::NotReached => s.not_reached += 1,
                Outcome::Unjudged => s.unjudged += 1,
                Outcome::AsExpected => {}
            }
        }
        self.summary = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_table() {
        use Expected as E;
        use Outcome as O;
        use Status as S;
        let cases = [
            (S::Reachable, E::Blocked, O::Violation),
            (S::Refused, E::Blocked, O::AsExpected),
            (S::Timeout, E::Blocked, O::AsExpected),
            (S::Reachable, E::Reachable, O::AsExpected),
            (S::Refused, E::Reachable, O::NotReached),
            (S::Timeout, E::Reachable, O::NotReached),
            (S::Reachable, E::Unknown, O::Unjudged),
            (S::Timeout, E::Unknown, O::Unjudged),
        ];
        for (s, e, o) in cases {
            assert_eq!(outcome(s, e), o, "{s:?} against expected {e:?}");
        }
        let f = finding(
            O::Violation,
            S::Reachable,
            "team-a/probe",
            "10.0.0.1:10250/tcp",
            "node/n1 kubelet API",
            "host access is not in hostAccess",
        )
        .expect("a violation has a finding");
        assert!(
            f.starts_with(
                "expected blocked, was reachable: team-a/probe connected to 10.0.0.1:10250/tcp"
            ),
            "{f}"
        );
    }
}
