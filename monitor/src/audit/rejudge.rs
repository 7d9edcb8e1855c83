//! Re-judging flows for the audit, instead of trusting the verdicts the
//! daemon wrote:
//!
//! - [`PolicyJudge`]: the declared SegmentationPolicy (`--policy` plus the
//!   inventory's documents), evaluated by `segpolicy::CompiledPolicy` over
//!   the flow's own attribution (namespace, labels, service account: what
//!   the daemon knew when the flow happened), with labels the report lacks
//!   filled in from the inventory.
//! - [`EngineJudge`]: the inventory's NetworkPolicies, evaluated by
//!   `netpol::Engine`, plus its enforcement check (`netpol_bypass`).
//!
//! Both are pure: built from typed objects, queried per flow.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::judge::{NetpolJudge, NetpolJudgement, Reach, SegJudgement, SegmentationJudge};
use crate::inventory::Object;
use crate::netpol::{self, Engine};
use crate::report::{Endpoint, EndpointKind, FlowReport};
use crate::segpolicy::{CompiledPolicy, Decision, End, FlowView, PodFacts, L4};

type Labels = BTreeMap<String, String>;

/// What the inventory adds to a flow's attribution.
#[derive(Default)]
struct Facts {
    ns_labels: HashMap<String, Labels>,
    pod_labels: HashMap<(String, String), Labels>,
    /// `ns/name` of a Service → its selector (the labels its pods carry).
    service_selectors: HashMap<String, Labels>,
    services: HashMap<String, Service>,
}

impl Facts {
    fn from_objects(objects: &[Object]) -> Self {
        let mut f = Facts::default();
        for o in objects {
            match o {
                Object::Namespace(n) => {
                    let mut labels = n.metadata.labels.clone().unwrap_or_default();
                    // Set by the control plane on every namespace (Kubernetes
                    // "Well-Known Labels"), so selectors by name work.
                    labels.insert(
                        netpol::model::NAMESPACE_NAME_LABEL.to_owned(),
                        o.name().to_owned(),
                    );
                    f.ns_labels.insert(o.name().to_owned(), labels);
                }
                Object::Pod(p) => {
                    f.pod_labels.insert(
                        (
                            o.namespace().unwrap_or_default().to_owned(),
                            o.name().to_owned(),
                        ),
                        p.metadata.labels.clone().unwrap_or_default(),
                    );
                }
                Object::Service(s) => {
                    let id = format!("{}/{}", o.namespace().unwrap_or_default(), o.name());
                    if let Some(sel) = s.spec.as_ref().and_then(|sp| sp.selector.clone()) {
                        f.service_selectors.insert(id.clone(), sel);
                    }
                    f.services.insert(id, s.clone());
                }
                _ => {}
            }
        }
        f
    }

    fn ns_labels(&self, ns: &str) -> Labels {
        self.ns_labels.get(ns).cloned().unwrap_or_else(|| {
            Labels::from([(
                netpol::model::NAMESPACE_NAME_LABEL.to_owned(),
                ns.to_owned(),
            )])
        })
    }

    fn pod_labels(&self, ep: &Endpoint) -> Labels {
        if let Some(l) = &ep.labels {
            return Labels::clone(l);
        }
        match (&ep.namespace, &ep.pod) {
            (Some(ns), Some(pod)) => self
                .pod_labels
                .get(&(ns.to_string(), pod.to_string()))
                .cloned()
                .unwrap_or_default(),
            _ => Labels::new(),
        }
    }
}

/// The declared SegmentationPolicy, re-evaluated for every flow.
pub struct PolicyJudge {
    policy: CompiledPolicy,
    facts: Facts,
}

impl PolicyJudge {
    pub fn new(policy: CompiledPolicy, objects: &[Object]) -> Self {
        PolicyJudge {
            policy,
            facts: Facts::from_objects(objects),
        }
    }

    pub fn metadata_addresses(&self) -> &[IpAddr] {
        self.policy.metadata_addresses()
    }
}

/// Owned inputs of one end, so the masks can borrow them.
struct EndFacts {
    namespace: String,
    ns_labels: Labels,
    labels: Labels,
    service_account: Option<String>,
}

impl SegmentationJudge for PolicyJudge {
    fn judge(&self, flow: &FlowReport) -> Option<SegJudgement> {
        let pod_end = |ep: &Endpoint| -> Option<EndFacts> {
            let ns = ep.namespace.as_deref()?.to_owned();
            let (labels, sa) = match ep.kind {
                Some(EndpointKind::Pod) => (
                    self.facts.pod_labels(ep),
                    ep.service_account.as_deref().map(str::to_owned),
                ),
                // A Service stands for its pods: the labels its selector
                // requires, any service account.
                Some(EndpointKind::Service) => (
                    ep.service
                        .as_ref()
                        .and_then(|s| self.facts.service_selectors.get(s.id().as_str()))
                        .cloned()
                        .unwrap_or_default(),
                    None,
                ),
                _ => return None,
            };
            Some(EndFacts {
                ns_labels: self.facts.ns_labels(&ns),
                namespace: ns,
                labels,
                service_account: sa,
            })
        };
        let src_facts = match flow.src.kind {
            Some(EndpointKind::Pod) => pod_end(&flow.src),
            _ => None,
        };
        let dst_facts = pod_end(&flow.dst);
        let masks = |f: &EndFacts| {
            self.policy.masks(&PodFacts {
                namespace: &f.namespace,
                namespace_labels: &f.ns_labels,
                labels: &f.labels,
                service_account: f.service_account.as_deref(),
            })
        };
        let src_masks = src_facts.as_ref().map(masks);
        let dst_masks = dst_facts.as_ref().map(masks);
        let src = match (&src_facts, &src_masks) {
            (Some(f), Some(m)) => End::Pod {
                namespace: &f.namespace,
                masks: m,
            },
            // Opened by a node or from outside: the whitelist does not judge it.
            _ => return None,
        };
        let is_metadata = flow.dst.kind == Some(EndpointKind::Metadata)
            || self.policy.metadata_addresses().contains(&flow.dst.ip);
        let dst = if is_metadata {
            End::Metadata
        } else {
            match (flow.dst.kind, &dst_facts, &dst_masks) {
                (Some(EndpointKind::Pod), Some(f), Some(m)) => End::Pod {
                    namespace: &f.namespace,
                    masks: m,
                },
                (Some(EndpointKind::Service), Some(f), Some(m)) => End::Service {
                    namespace: &f.namespace,
                    masks: m,
                },
                (Some(EndpointKind::Node), _, _) => End::Node {
                    name: flow.dst.node.as_deref().unwrap_or(""),
                },
                (Some(EndpointKind::External), _, _) => End::External,
                _ => End::Unknown,
            }
        };
        let decision = self.policy.evaluate(&FlowView {
            src,
            dst,
            dst_ip: flow.dst.ip,
            dst_port: flow.dst.port,
            proto: L4::parse(&flow.protocol),
            protocol: &flow.protocol,
        });
        match decision {
            Decision::Allowed { rule } => Some(SegJudgement {
                violations: Vec::new(),
                rule: rule.map(|r| r.to_string()),
            }),
            Decision::Violation(reason) => Some(SegJudgement {
                violations: vec![reason.to_violation()],
                rule: None,
            }),
            Decision::NotJudged => None,
        }
    }
}

/// The inventory's NetworkPolicies through segwatch's engine.
pub struct EngineJudge {
    engine: Engine,
    facts: Facts,
}

impl EngineJudge {
    /// Builds the engine; returns its warnings (invalid policies skipped).
    pub fn new(objects: &[Object]) -> (Self, Vec<String>) {
        let o = netpol::Objects::from_inventory(objects);
        let (engine, warnings) = Engine::build(&o);
        (
            EngineJudge {
                engine,
                facts: Facts::from_objects(objects),
            },
            warnings
                .iter()
                .map(|w| format!("NetworkPolicy engine: {w}"))
                .collect(),
        )
    }

    fn peer(&self, ep: &Endpoint) -> netpol::Peer {
        if ep.kind == Some(EndpointKind::Pod) {
            if let (Some(ns), Some(pod)) = (&ep.namespace, &ep.pod) {
                if let Some(id) = self.engine.endpoint_by_name(ns, pod) {
                    return netpol::Peer::Endpoint(id);
                }
            }
        }
        netpol::Peer::Ip(ep.ip)
    }

    /// The pods behind a Service destination and the port each listens on
    /// (`targetPort`, numeric or named; API reference, ServicePort).
    fn backends(&self, flow: &FlowReport, protocol: netpol::Protocol) -> Vec<(netpol::Peer, u16)> {
        // A backend the kernel chose is judged as the pod it is; only a
        // Service end without backend stands for its pods.
        if flow.dst.kind != Some(EndpointKind::Service) {
            return Vec::new();
        }
        let Some(id) = flow.dst.service.as_ref().map(|s| s.id()) else {
            return Vec::new();
        };
        let id = &id;
        let (Some(sel), Some(svc)) = (
            self.facts.service_selectors.get(&**id),
            self.facts.services.get(&**id),
        ) else {
            return Vec::new();
        };
        let ns = id.split_once('/').map_or("", |(ns, _)| ns);
        let port = flow.dst.port.unwrap_or(0);
        let target = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| {
                ports.iter().find(|p| {
                    p.port == i32::from(port)
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol.as_str()
                })
            })
            .and_then(|p| p.target_port.clone());
        self.engine
            .endpoints()
            .iter()
            .enumerate()
            .filter(|(_, e)| e.namespace == ns && crate::selector::selects(sel, &e.labels))
            .filter_map(|(i, e)| {
                let p = match &target {
                    None => port,
                    Some(IntOrString::Int(n)) => u16::try_from(*n).ok()?,
                    Some(IntOrString::String(name)) => e.named_port(name, protocol)?,
                };
                Some((netpol::Peer::Endpoint(netpol::EndpointId(i as u32)), p))
            })
            .collect()
    }
}

impl NetpolJudge for EngineJudge {
    fn judge(&self, flow: &FlowReport) -> Option<NetpolJudgement> {
        let protocol: netpol::Protocol = flow.protocol.parse().ok()?;
        let src = self.peer(&flow.src);
        let dsts: Vec<(netpol::Peer, u16)> = if flow.dst.kind == Some(EndpointKind::Service) {
            self.backends(flow, protocol)
        } else {
            vec![(self.peer(&flow.dst), flow.dst.port.unwrap_or(0))]
        };
        let decisions: Vec<netpol::Decision> = dsts
            .iter()
            .map(|&(dst, port)| {
                self.engine.evaluate(&netpol::Query {
                    src,
                    dst,
                    protocol,
                    port,
                })
            })
            .collect();
        // A Service whose backends the policies treat differently (or none
        // known): which pod answered is not in the report, so no verdict.
        let first = decisions.first()?;
        if decisions.iter().any(|d| d.allowed != first.allowed) {
            return None;
        }
        let decision = first;
        let isolated = decision.egress.isolated || decision.ingress.isolated;
        let mut policies: Vec<String> = if decision.allowed {
            decision
                .egress
                .allowed_by
                .iter()
                .chain(&decision.ingress.allowed_by)
                .map(|s| s.to_string())
                .collect()
        } else {
            [&decision.egress, &decision.ingress]
                .into_iter()
                .filter(|d| !d.allowed)
                .flat_map(|d| d.isolated_by.iter().map(|s| s.to_string()))
                .collect()
        };
        policies.sort();
        policies.dedup();
        let bypass = match netpol::enforcement_finding(decision, Reach::of(flow).as_tcp_state()) {
            Some(netpol::Enforcement::Bypass(v)) => Some(v),
            _ => None,
        };
        Some(NetpolJudgement {
            allowed: decision.allowed,
            isolated: Some(isolated),
            policies,
            bypass,
        })
    }
}
