//! What should happen to each probe: the connection from the probe's pod to
//! the target judged by the same engines the daemon uses — the
//! SegmentationPolicy (the declared whitelist) and the NetworkPolicies
//! (what the network plugin is asked to enforce).
//!
//! - The whitelist forbids it → expected `blocked` (its reason says why).
//! - A NetworkPolicy denies it → expected `blocked`.
//! - The whitelist allows it and no NetworkPolicy denies it → `reachable`.
//! - Otherwise (the probe's pod unknown, an address nothing accounts for,
//!   outside traffic the whitelist does not judge) → `unknown`: never
//!   "allowed" by default.
//!
//! Metadata endpoints are judged as the metadata API whether or not the
//! policy lists their address (`metadataApi.addresses` defaults to the AWS
//! pair). EKS Pod Identity (169.254.170.23) is meant for every pod.

use std::net::IpAddr;

use crate::index::{ClusterIndex, PodEntry, Resolved};
use crate::netpol;
use crate::segpolicy::{Decision, End, FlowView, L4};

use super::model::{Expected, NetpolJudgement, SegJudgement};
use super::targets::{metadata_meant_reachable, Target, TargetKind, Transport};

/// The probe's judgement of one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub expected: Expected,
    pub why: String,
    pub segmentation: Option<SegJudgement>,
    pub netpol: Option<NetpolJudgement>,
}

/// Judges targets for one source pod.
pub struct Judge<'a> {
    index: &'a ClusterIndex,
    pod: Option<&'a PodEntry>,
    /// `ns/name` of the probe's pod, for messages.
    who: String,
    ips: Vec<IpAddr>,
}

impl<'a> Judge<'a> {
    /// `pod`: the probe's own pod as the index knows it (`None` when the
    /// cluster view lacks it); `ips`: its addresses.
    pub fn new(
        index: &'a ClusterIndex,
        pod: Option<&'a PodEntry>,
        who: String,
        ips: Vec<IpAddr>,
    ) -> Self {
        Judge {
            index,
            pod,
            who,
            ips,
        }
    }

    fn src_ip(&self, dst: IpAddr) -> Option<IpAddr> {
        let same_family = self.ips.iter().find(|ip| ip.is_ipv4() == dst.is_ipv4());
        same_family.or(self.ips.first()).copied()
    }

    pub fn expect(&self, t: &Target) -> Expectation {
        let Some(pod) = self.pod else {
            return Expectation {
                expected: Expected::Unknown,
                why: format!(
                    "the probe's own pod {} is not in the cluster view, so no policy can be applied to it",
                    self.who
                ),
                segmentation: None,
                netpol: None,
            };
        };
        let resolved = self.index.resolve(t.address);
        let protocol = t.transport.upper();
        let meant = (t.kind == TargetKind::Metadata)
            .then(|| metadata_meant_reachable(t.address))
            .flatten();
        let node_name = pod.node.as_deref().unwrap_or("");
        let dst = match (t.kind, resolved) {
            (TargetKind::Metadata, _) | (_, Resolved::Metadata) => End::Metadata,
            (_, Resolved::Pod(p)) => End::Pod {
                namespace: &p.namespace,
                masks: &p.masks,
            },
            (_, Resolved::Service(s)) => End::Service {
                namespace: &s.namespace,
                masks: &s.masks,
            },
            (_, Resolved::Node(n)) => End::Node { name: n },
            // The node's address learnt from the downward API (status.hostIP)
            // while the cluster view has no Node object for it.
            (TargetKind::Node, _) => End::Node { name: node_name },
            (_, Resolved::External) => End::External,
            (_, Resolved::Unknown) => End::Unknown,
        };
        let seg = if meant == Some(true) {
            SegJudgement {
                verdict: "allowed".into(),
                rule: Some("EKS Pod Identity".into()),
                reason: Some(
                    "the EKS Pod Identity agent exists to serve every pod its credentials".into(),
                ),
            }
        } else {
            let decision = self.index.policy().evaluate(&FlowView {
                src: End::Pod {
                    namespace: &pod.namespace,
                    masks: &pod.masks,
                },
                dst,
                dst_ip: t.address,
                dst_port: Some(t.port),
                proto: L4::parse(protocol),
                protocol,
            });
            match decision {
                Decision::Allowed { rule } => SegJudgement {
                    verdict: "allowed".into(),
                    reason: Some(match &rule {
                        Some(r) => format!("allowed by SegmentationPolicy rule {r}"),
                        None => "same namespace, not micro-segmented".to_owned(),
                    }),
                    rule: rule.map(|r| r.to_string()),
                },
                Decision::Violation(v) => SegJudgement {
                    verdict: "violation".into(),
                    rule: Some(v.rule().to_owned()),
                    reason: Some(v.reason()),
                },
                Decision::NotJudged => SegJudgement {
                    verdict: "not_judged".into(),
                    rule: None,
                    reason: Some(match dst {
                        End::External => {
                            "an outside address, and the SegmentationPolicy has no external section"
                                .to_owned()
                        }
                        _ => format!("{} is an address no cluster object accounts for", t.address),
                    }),
                },
            }
        };
        let np = self.netpol(t, &resolved, node_name);
        combine(seg, np)
    }

    fn netpol(&self, t: &Target, resolved: &Resolved<'_>, node: &str) -> Option<NetpolJudgement> {
        match resolved {
            // A ClusterIP is translated to a backend after the pod's egress;
            // NetworkPolicy judges the backend, which the probe does not see.
            Resolved::Service(_) | Resolved::Unknown => return None,
            // "traffic to and from the node where a Pod is running is always
            // allowed" (Network Policies concept page), as the daemon judges it.
            Resolved::Node(n) if !node.is_empty() && &***n == node => {
                return Some(NetpolJudgement {
                    allowed: true,
                    isolated: false,
                    policies: Vec::new(),
                })
            }
            _ => {}
        }
        if t.kind == TargetKind::Node && !matches!(resolved, Resolved::Node(_)) {
            // The probe's own node by status.hostIP: the same rule.
            return Some(NetpolJudgement {
                allowed: true,
                isolated: false,
                policies: Vec::new(),
            });
        }
        let src = self.src_ip(t.address)?;
        let d = self.index.netpol().evaluate(&netpol::Query {
            src: netpol::Peer::Ip(src),
            dst: netpol::Peer::Ip(t.address),
            protocol: match t.transport {
                Transport::Tcp => netpol::Protocol::Tcp,
                Transport::Udp => netpol::Protocol::Udp,
            },
            port: t.port,
        });
        let isolated = d.egress.isolated || d.ingress.isolated;
        let policies: Vec<String> = if d.allowed {
            d.egress
                .allowed_by
                .iter()
                .chain(d.ingress.allowed_by.iter())
                .map(|s| s.to_string())
                .collect()
        } else {
            let dir = if d.egress.allowed {
                &d.ingress
            } else {
                &d.egress
            };
            dir.isolated_by.iter().map(|s| s.to_string()).collect()
        };
        Some(NetpolJudgement {
            allowed: d.allowed,
            isolated,
            policies,
        })
    }
}

fn combine(seg: SegJudgement, np: Option<NetpolJudgement>) -> Expectation {
    let seg_reason = seg.reason.clone().unwrap_or_default();
    let (expected, why) = match (seg.verdict.as_str(), &np) {
        ("violation", _) => (Expected::Blocked, seg_reason),
        (_, Some(n)) if !n.allowed => (
            Expected::Blocked,
            format!(
                "NetworkPolicy {} isolates it and no rule allows it",
                n.policies.join(", ")
            ),
        ),
        ("allowed", Some(n)) if n.isolated => (
            Expected::Reachable,
            format!(
                "{seg_reason}; NetworkPolicy {} allows it",
                n.policies.join(", ")
            ),
        ),
        ("allowed", _) => (
            Expected::Reachable,
            format!("{seg_reason}; no NetworkPolicy restricts it"),
        ),
        (_, Some(n)) if n.isolated => (
            Expected::Reachable,
            format!(
                "NetworkPolicy {} allows it ({seg_reason})",
                n.policies.join(", ")
            ),
        ),
        _ => (
            Expected::Unknown,
            format!("{seg_reason}; no NetworkPolicy selects either end"),
        ),
    };
    Expectation {
        expected,
        why,
        segmentation: Some(seg),
        netpol: np,
    }
}
