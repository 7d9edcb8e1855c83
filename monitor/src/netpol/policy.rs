//! NetworkPolicy objects validated into plain specs (`TryFrom` at the
//! boundary). A spec still holds selectors; [`super::engine`] resolves them
//! against the endpoints it knows.
//!
//! Every check here is one the API server makes (validation of
//! `networking.k8s.io/v1` NetworkPolicy), so an object that fails it cannot
//! exist in a real cluster and is skipped with a message naming the field.

use std::fmt;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cidr::{IpBlock, IpBlockError};
use super::ports::{PortRange, Protocol};
use super::selector::{Selector, SelectorError};

/// The namespace of a namespaced object whose `metadata.namespace` is empty,
/// as `kubectl apply` would place it.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An invalid NetworkPolicy: which object, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NetworkPolicy {namespace}/{name}: {field}: {reason}")]
pub struct PolicyError {
    pub namespace: String,
    pub name: String,
    /// JSON path of the offending field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub reason: String,
}

/// Which directions a policy isolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyTypes {
    pub ingress: bool,
    pub egress: bool,
}

/// Namespaces a pod peer may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    /// No namespaceSelector: "selects particular Pods in the same namespace
    /// as the NetworkPolicy" (NetworkPolicyPeer.podSelector, API reference).
    PolicyNamespace,
    /// namespaceSelector given: the namespaces whose labels match (`{}` = all).
    Matching(Selector),
}

/// One element of `from`/`to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerSpec {
    /// podSelector and/or namespaceSelector. API reference,
    /// NetworkPolicyPeer.podSelector: "If namespaceSelector is also set, then
    /// the NetworkPolicyPeer as a whole selects the Pods matching
    /// podSelector in the Namespaces selected by NamespaceSelector.
    /// Otherwise it selects the Pods matching podSelector in the policy's
    /// own namespace." — and an absent podSelector with a namespaceSelector
    /// selects all pods of those namespaces.
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    /// ipBlock: addresses, never pods (see `engine` for the convention).
    IpBlock(IpBlock),
}

/// What a port entry names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortValue {
    /// No `port`: "If not specified, this matches all port names and
    /// numbers" (NetworkPolicyPort.port).
    Any,
    /// A number, or `port`..=`endPort`.
    Range(PortRange),
    /// A named port, resolved against the destination pod's container ports.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortValue,
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// `None`: `from`/`to` empty or missing, "this rule matches all sources"
    /// (all destinations for egress) — pods and addresses alike.
    pub peers: Option<Vec<PeerSpec>>,
    /// `None`: `ports` empty or missing, "this rule matches all ports".
    pub ports: Option<Vec<PortSpec>>,
}

/// A validated NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    pub types: PolicyTypes,
    /// Rules of the directions in `types` only: rules of a direction the
    /// policy does not cover have no effect.
    pub ingress: Vec<RuleSpec>,
    pub egress: Vec<RuleSpec>,
}

impl PolicySpec {
    /// `namespace/name`, the form used in reports.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

struct Ctx<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl fmt::Display, reason: impl fmt::Display) -> PolicyError {
        PolicyError {
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }

    fn selector(
        &self,
        field: &str,
        sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Result<Selector, PolicyError> {
        Selector::try_from(sel).map_err(|e: SelectorError| self.err(field, e))
    }
}

impl TryFrom<&NetworkPolicy> for PolicySpec {
    type Error = PolicyError;

    fn try_from(np: &NetworkPolicy) -> Result<Self, Self::Error> {
        let name = np.metadata.name.clone().unwrap_or_default();
        let namespace = np
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let ctx = Ctx {
            namespace: &namespace,
            name: &name,
        };
        if name.is_empty() {
            return Err(ctx.err("metadata.name", "missing"));
        }
        let spec = np.spec.clone().unwrap_or_default();

        // podSelector is required; Go's zero value (absent) is the empty
        // selector, which "selects all pods in the namespace".
        let pod_selector = match &spec.pod_selector {
            Some(s) => ctx.selector("spec.podSelector", s)?,
            None => Selector::everything(),
        };

        let ingress_rules = spec.ingress.as_deref().unwrap_or_default();
        let egress_rules = spec.egress.as_deref().unwrap_or_default();

        // API reference, NetworkPolicySpec.policyTypes: "If this field is not
        // specified, it will default based on the existence of ingress or
        // egress rules; policies that contain an egress section are assumed
        // to affect egress, and all policies (whether or not they contain an
        // ingress section) are assumed to affect ingress." The defaulting
        // (pkg/apis/networking/v1/defaults.go, SetDefaults_NetworkPolicy)
        // checks `len(spec.Egress) != 0`, so `egress: []` does not count.
        let types = match spec.policy_types.as_deref() {
            Some(list) if !list.is_empty() => {
                let mut t = PolicyTypes {
                    ingress: false,
                    egress: false,
                };
                for (i, v) in list.iter().enumerate() {
                    match v.as_str() {
                        "Ingress" => t.ingress = true,
                        "Egress" => t.egress = true,
                        other => {
                            return Err(ctx.err(
                                format!("spec.policyTypes[{i}]"),
                                format!(
                                    "unknown policy type {other:?} (expected Ingress or Egress)"
                                ),
                            ))
                        }
                    }
                }
                t
            }
            _ => PolicyTypes {
                ingress: true,
                egress: !egress_rules.is_empty(),
            },
        };

        let mut ingress = Vec::new();
        for (i, r) in ingress_rules.iter().enumerate() {
            let field = format!("spec.ingress[{i}]");
            let rule = rule(&ctx, &field, "from", r.from.as_deref(), r.ports.as_deref())?;
            if types.ingress {
                ingress.push(rule);
            }
        }
        let mut egress = Vec::new();
        for (i, r) in egress_rules.iter().enumerate() {
            let field = format!("spec.egress[{i}]");
            let rule = rule(&ctx, &field, "to", r.to.as_deref(), r.ports.as_deref())?;
            if types.egress {
                egress.push(rule);
            }
        }
        Ok(PolicySpec {
            namespace,
            name,
            pod_selector,
            types,
            ingress,
            egress,
        })
    }
}

fn rule(
    ctx: &Ctx<'_>,
    field: &str,
    peers_field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<RuleSpec, PolicyError> {
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| peer(ctx, &format!("{field}.{peers_field}[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| port(ctx, &format!("{field}.ports[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(RuleSpec { peers, ports })
}

fn peer(ctx: &Ctx<'_>, field: &str, p: &NetworkPolicyPeer) -> Result<PeerSpec, PolicyError> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(b), None, None) => {
            let block =
                IpBlock::parse(&b.cidr, b.except.as_deref().unwrap_or_default()).map_err(|e| {
                    let sub = match e {
                        IpBlockError::BadCidr(_) => "ipBlock.cidr",
                        IpBlockError::BadExcept(_) | IpBlockError::ExceptOutside { .. } => {
                            "ipBlock.except"
                        }
                    };
                    ctx.err(format!("{field}.{sub}"), e)
                })?;
            Ok(PeerSpec::IpBlock(block))
        }
        // API validation: "must specify a peer" / ipBlock "may not be
        // specified with other peer fields".
        (Some(_), _, _) => Err(ctx.err(
            field,
            "ipBlock may not be combined with podSelector or namespaceSelector",
        )),
        (None, None, None) => Err(ctx.err(
            field,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        )),
        (None, pods, nss) => {
            let pods = match pods {
                Some(s) => ctx.selector(&format!("{field}.podSelector"), s)?,
                None => Selector::everything(),
            };
            let namespaces = match nss {
                Some(s) => NamespaceScope::Matching(
                    ctx.selector(&format!("{field}.namespaceSelector"), s)?,
                ),
                None => NamespaceScope::PolicyNamespace,
            };
            Ok(PeerSpec::Pods { namespaces, pods })
        }
    }
}

/// IANA service name as the API validates a named port (`IsValidPortName`):
/// at most 15 characters of `a-z0-9-`, at least one letter, no leading,
/// trailing or doubled hyphen.
fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn port(ctx: &Ctx<'_>, field: &str, p: &NetworkPolicyPort) -> Result<PortSpec, PolicyError> {
    let protocol = match p.protocol.as_deref() {
        // NetworkPolicyPort.protocol: "If not specified, this field defaults to TCP."
        None => Protocol::Tcp,
        Some(s) => Protocol::from_policy_field(s).ok_or_else(|| {
            ctx.err(
                format!("{field}.protocol"),
                format!("unsupported protocol {s:?} (expected TCP, UDP or SCTP)"),
            )
        })?,
    };
    let number = |n: i32, f: &str| -> Result<u16, PolicyError> {
        u16::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
            ctx.err(
                format!("{field}.{f}"),
                format!("{n} is not a port number (1-65535)"),
            )
        })
    };
    let value = match (&p.port, p.end_port) {
        (None, None) => PortValue::Any,
        (None, Some(_)) => {
            return Err(ctx.err(format!("{field}.endPort"), "endPort needs a numeric port"))
        }
        (Some(IntOrString::Int(n)), end) => {
            let lo = number(*n, "port")?;
            // NetworkPolicyPort.endPort: "indicates that the range of ports
            // from port to endPort if set, inclusive, should be allowed by
            // the policy. This field cannot be defined if the port field is
            // not defined or if the port field is defined as a named
            // (string) port. The endPort must be equal or greater than port."
            let hi = match end {
                None => lo,
                Some(e) => {
                    let hi = number(e, "endPort")?;
                    if hi < lo {
                        return Err(ctx.err(
                            format!("{field}.endPort"),
                            format!("endPort {hi} is less than port {lo}"),
                        ));
                    }
                    hi
                }
            };
            PortValue::Range(PortRange { lo, hi })
        }
        (Some(IntOrString::String(s)), end) => {
            if end.is_some() {
                return Err(ctx.err(
                    format!("{field}.endPort"),
                    "endPort may not be used with a named port",
                ));
            }
            if !valid_port_name(s) {
                return Err(ctx.err(
                    format!("{field}.port"),
                    format!(
                        "{s:?} is not a valid port name (1-15 of a-z, 0-9, '-', with a letter)"
                    ),
                ));
            }
            PortValue::Named(s.clone())
        }
    };
    Ok(PortSpec {
        protocol,
        port: value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(yaml: &str) -> NetworkPolicy {
        serde_yaml_ng::from_str(yaml).expect("test policy parses")
    }

    fn spec(yaml: &str) -> PolicySpec {
        PolicySpec::try_from(&np(yaml)).expect("valid policy")
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns}\n";

    #[test]
    fn policy_types_defaulting_table() {
        // (spec, expected ingress, expected egress, why)
        let cases = [
            (
                "spec: {podSelector: {}}",
                true,
                false,
                "no rules: Ingress only",
            ),
            (
                "spec: {podSelector: {}, ingress: [{}]}",
                true,
                false,
                "ingress rules: Ingress",
            ),
            (
                "spec: {podSelector: {}, egress: [{}]}",
                true,
                true,
                "egress rules: Ingress and Egress",
            ),
            (
                "spec: {podSelector: {}, egress: []}",
                true,
                false,
                "empty egress list does not count",
            ),
            (
                "spec: {podSelector: {}, policyTypes: [], egress: [{}]}",
                true,
                true,
                "empty policyTypes defaults",
            ),
            (
                "spec: {podSelector: {}, policyTypes: [Egress]}",
                false,
                true,
                "explicit Egress only",
            ),
            (
                "spec: {podSelector: {}, policyTypes: [Ingress], egress: [{}]}",
                true,
                false,
                "explicit Ingress only",
            ),
            (
                "spec: {podSelector: {}, policyTypes: [Ingress, Egress]}",
                true,
                true,
                "explicit both",
            ),
        ];
        for (s, ingress, egress, why) in cases {
            let p = spec(&format!("{HEAD}{s}"));
            assert_eq!(p.types, PolicyTypes { ingress, egress }, "{why}: {s}");
        }
    }

    #[test]
    fn rules_of_uncovered_directions_are_dropped() {
        let p = spec(&format!("{HEAD}spec: {{podSelector: {{}}, policyTypes: [Egress], ingress: [{{}}], egress: [{{}}]}}"));
        assert!(
            p.ingress.is_empty(),
            "ingress rules of an Egress-only policy have no effect"
        );
        assert_eq!(p.egress.len(), 1);
    }

    #[test]
    fn ports_and_peers() {
        let p = spec(&format!(
            "{HEAD}spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress:
  - from:
    - podSelector: {{matchLabels: {{app: api}}}}
    - namespaceSelector: {{}}
      podSelector: {{}}
    - ipBlock: {{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}
    ports:
    - port: 5432
    - {{port: http, protocol: UDP}}
    - {{port: 8000, endPort: 8010, protocol: SCTP}}
    - {{protocol: UDP}}
  - {{}}"
        ));
        let r = &p.ingress[0];
        let peers = r.peers.as_ref().unwrap();
        assert!(matches!(
            &peers[0],
            PeerSpec::Pods {
                namespaces: NamespaceScope::PolicyNamespace,
                ..
            }
        ));
        assert!(
            matches!(&peers[1], PeerSpec::Pods { namespaces: NamespaceScope::Matching(s), pods } if s.is_everything() && pods.is_everything())
        );
        assert!(matches!(&peers[2], PeerSpec::IpBlock(b) if b.except.len() == 1));
        let ports = r.ports.as_ref().unwrap();
        assert_eq!(
            ports[0],
            PortSpec {
                protocol: Protocol::Tcp,
                port: PortValue::Range(PortRange::single(5432))
            },
            "protocol defaults to TCP"
        );
        assert_eq!(
            ports[1],
            PortSpec {
                protocol: Protocol::Udp,
                port: PortValue::Named("http".into())
            }
        );
        assert_eq!(
            ports[2],
            PortSpec {
                protocol: Protocol::Sctp,
                port: PortValue::Range(PortRange { lo: 8000, hi: 8010 })
            }
        );
        assert_eq!(
            ports[3],
            PortSpec {
                protocol: Protocol::Udp,
                port: PortValue::Any
            }
        );
        assert_eq!(
            p.ingress[1],
            RuleSpec {
                peers: None,
                ports: None
            },
            "empty rule allows everything"
        );
    }

    #[test]
    fn namespace_defaults() {
        let p = spec("kind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}");
        assert_eq!(p.id(), "default/p");
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let cases = [
            (
                "ingress: [{ports: [{port: 80, protocol: ICMP}]}]",
                "spec.ingress[0].ports[0].protocol",
            ),
            (
                "ingress: [{ports: [{port: 0}]}]",
                "spec.ingress[0].ports[0].port",
            ),
            (
                "ingress: [{ports: [{port: 90, endPort: 80}]}]",
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                "ingress: [{ports: [{port: http, endPort: 80}]}]",
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                "ingress: [{ports: [{endPort: 80}]}]",
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                "ingress: [{ports: [{port: \"Bad_Name\"}]}]",
                "spec.ingress[0].ports[0].port",
            ),
            (
                "egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]",
                "spec.egress[0].to[0].ipBlock.except",
            ),
            (
                "egress: [{to: [{ipBlock: {cidr: nope}}]}]",
                "spec.egress[0].to[0].ipBlock.cidr",
            ),
            (
                "egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
                "spec.egress[0].to[0]",
            ),
            ("egress: [{to: [{}]}]", "spec.egress[0].to[0]"),
            (
                "ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]}]",
                "spec.ingress[0].from[0].podSelector",
            ),
            ("policyTypes: [ingress]", "spec.policyTypes[0]"),
        ];
        for (s, field) in cases {
            let err =
                PolicySpec::try_from(&np(&format!("{HEAD}spec: {{podSelector: {{}}, {}}}", &s)))
                    .unwrap_err();
            assert_eq!(err.field, field, "{s}: {err}");
            assert!(err.to_string().starts_with("NetworkPolicy ns/p: "), "{err}");
        }
    }
}
