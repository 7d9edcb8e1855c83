//! Per-flow facts the controls rest on: did the flow get through, what the
//! SegmentationPolicy says about it, what the NetworkPolicies say about it.
//!
//! The two judgements are traits so the audit can use either what the daemon
//! wrote into the flow log (its own policy at the time) or a re-evaluation
//! against the policy the auditor declares (`--policy`) and the inventory's
//! NetworkPolicies.

use crate::report::{FlowReport, TcpState, Violation, ViolationKind};

/// Did the flow get through to the destination?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reach {
    /// TCP handshake completed, or (other protocols) the destination answered.
    Reached,
    /// TCP SYN unanswered, or (other protocols) no answer: dropped on the way
    /// or nothing listening. For forbidden traffic: enforcement held.
    NotAnswered,
    /// TCP answered by RST only: no connection was made. Treated like a
    /// blocked attempt (some CNIs reject denied traffic with RST), but shown
    /// apart.
    Refused,
}

impl Reach {
    pub fn of(flow: &FlowReport) -> Reach {
        if let Some(tcp) = &flow.tcp {
            return match tcp.state {
                TcpState::Established | TcpState::Closed => Reach::Reached,
                TcpState::Attempted => Reach::NotAnswered,
                TcpState::Rejected => Reach::Refused,
            };
        }
        if flow.packets.received > 0 || flow.bytes.received > 0 {
            Reach::Reached
        } else {
            Reach::NotAnswered
        }
    }

    /// The state as shown in evidence.
    pub fn state_name(flow: &FlowReport) -> &'static str {
        if let Some(tcp) = &flow.tcp {
            return match tcp.state {
                TcpState::Attempted => "attempted",
                TcpState::Established => "established",
                TcpState::Rejected => "rejected",
                TcpState::Closed => "closed",
            };
        }
        match Reach::of(flow) {
            Reach::Reached => "answered",
            _ => "unanswered",
        }
    }

    /// The TCP state to hand to the NetworkPolicy enforcement check.
    pub fn as_tcp_state(self) -> TcpState {
        match self {
            Reach::Reached => TcpState::Established,
            Reach::NotAnswered => TcpState::Attempted,
            Reach::Refused => TcpState::Rejected,
        }
    }
}

/// What the SegmentationPolicy says about one flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegJudgement {
    /// Violations other than `netpol_bypass` (that one is the enforcement
    /// check's business).
    pub violations: Vec<Violation>,
    /// The allow rule, when known.
    pub rule: Option<String>,
}

impl SegJudgement {
    pub fn violation(&self, kind: ViolationKind) -> Option<&Violation> {
        self.violations.iter().find(|v| v.kind == kind)
    }
}

/// Judges flows against a SegmentationPolicy. `None`: not judged (no
/// verdict in the log, or the policy does not speak about this flow).
pub trait SegmentationJudge {
    fn judge(&self, flow: &FlowReport) -> Option<SegJudgement>;
}

/// The verdicts the daemon wrote (`verdict`, `violations[]`).
pub struct FlowLogVerdicts;

impl SegmentationJudge for FlowLogVerdicts {
    fn judge(&self, flow: &FlowReport) -> Option<SegJudgement> {
        let violations: Vec<Violation> = flow
            .violations
            .iter()
            .filter(|v| v.kind != ViolationKind::NetpolBypass)
            .cloned()
            .collect();
        let unjudged = matches!(flow.verdict, None | Some(crate::report::Verdict::Unjudged));
        if unjudged && violations.is_empty() {
            return None;
        }
        Some(SegJudgement {
            violations,
            rule: None,
        })
    }
}

/// What the NetworkPolicies say about one flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetpolJudgement {
    pub allowed: bool,
    /// Some policy selects an end (`None`: not known, e.g. from the flow log).
    pub isolated: Option<bool>,
    /// `ns/name` of the policies concerned: those allowing it, or for a
    /// denied flow those isolating the ends.
    pub policies: Vec<String>,
    /// For a denied flow that got through: the `netpol_bypass` finding.
    pub bypass: Option<Violation>,
}

pub trait NetpolJudge {
    fn judge(&self, flow: &FlowReport) -> Option<NetpolJudgement>;
}

/// The `netpol` field and `netpol_bypass` violations the daemon wrote.
pub struct FlowLogNetpol;

impl NetpolJudge for FlowLogNetpol {
    fn judge(&self, flow: &FlowReport) -> Option<NetpolJudgement> {
        let logged = flow
            .violations
            .iter()
            .find(|v| v.kind == ViolationKind::NetpolBypass)
            .cloned();
        match (&flow.netpol, logged) {
            (None, None) => None,
            (None, Some(v)) => Some(NetpolJudgement {
                allowed: false,
                isolated: Some(true),
                policies: vec![v.rule.clone()],
                bypass: Some(v),
            }),
            (Some(np), logged) => {
                let mut policies: Vec<String> = np
                    .ingress
                    .iter()
                    .chain(&np.egress)
                    .map(|p| p.to_string())
                    .collect();
                policies.sort();
                policies.dedup();
                let bypass = logged.or_else(|| {
                    (!np.allowed && Reach::of(flow) == Reach::Reached).then(|| Violation {
                        kind: ViolationKind::NetpolBypass,
                        rule: policies.first().cloned().unwrap_or_default(),
                        reason: "connection established although the NetworkPolicies deny it (per the flow log's netpol field): the network plugin is not enforcing NetworkPolicy".to_string(),
                    })
                });
                Some(NetpolJudgement {
                    allowed: np.allowed,
                    // Allowed by a named policy means some policy selects an end;
                    // denied means an end is isolated.
                    isolated: if !np.allowed || !policies.is_empty() {
                        Some(true)
                    } else {
                        None
                    },
                    policies,
                    bypass,
                })
            }
        }
    }
}
