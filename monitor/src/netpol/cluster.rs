//! Cluster-scoped policies of the network-policy-api project
//! (`policy.networking.k8s.io`), validated into plain specs:
//!
//! - `v1alpha2` ClusterNetworkPolicy: `spec.tier` Admin | Baseline,
//!   `priority` 0-1000 (required in both tiers), `subject`, up to 25
//!   `ingress` and 25 `egress` rules with `action` Accept | Deny | Pass,
//!   `from`/`to` peers (`namespaces`, `pods`; egress also `nodes`,
//!   `networks`) and `protocols` (`tcp|udp|sctp: {destinationPort: {number
//!   | range: {start, end}}}` or `destinationNamedPort`).
//! - the deprecated `v1alpha1` AdminNetworkPolicy (Admin tier, actions
//!   Allow | Deny | Pass) and BaselineAdminNetworkPolicy (Baseline tier,
//!   Allow | Deny), with `ports` (`portNumber`, `portRange`, `namedPort`).
//!
//! The object keeps its `spec` as raw JSON: validation here walks it
//! field by field so that an error names the field, and so that a peer
//! field this engine does not know is seen (and fails closed, below)
//! instead of being dropped silently by a typed decoder.
//!
//! Fail-closed rule for unknown peer fields (network-policy-api, the
//! peer types' documentation: an implementation that does not support a
//! peer type "MUST ... ensure that the rule matches no traffic" for an
//! allowing action and treats it as matching all traffic for Deny and
//! Pass): a peer with a field we do not know matches nothing in an
//! Accept/Allow rule and everything in a Deny or Pass rule.

use std::fmt;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::ports::{PortRange, Protocol};
use super::selector::Selector;

/// Which of the three kinds an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterKind {
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy.
    ClusterNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy (deprecated).
    AdminNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy (deprecated).
    BaselineAdminNetworkPolicy,
}

impl ClusterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            ClusterKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            ClusterKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
}

impl fmt::Display for ClusterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use crate::objects::cluster_policy::ClusterPolicyObject;

/// The tier a policy's rules are evaluated in: Admin before the
/// namespaced NetworkPolicies, Baseline after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `Accept` (v1alpha2) / `Allow` (v1alpha1): allowed, lower tiers are
    /// not consulted.
    Accept,
    /// Denied, lower tiers are not consulted.
    Deny,
    /// Skip the rest of this tier: the namespaced NetworkPolicies (from
    /// Admin) or the default (from Baseline) decide.
    Pass,
}

/// Invalid cluster policy: which object, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {field}: {reason}")]
pub struct ClusterPolicyError {
    pub kind: ClusterKind,
    pub name: String,
    pub field: String,
    pub reason: String,
}

/// Whom a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Every pod of the namespaces matching the selector.
    Namespaces(Selector),
    /// Pods matching `pods` in namespaces matching `namespaces`.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

/// One element of `from`/`to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPeer {
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// Egress only: the addresses of the Nodes whose labels match.
    Nodes(Selector),
    /// Egress only: CIDRs (IPv4 and IPv6). They match pod addresses too:
    /// "cluster-internal traffic will be checked against the rule as well"
    /// (AdminNetworkPolicyEgressPeer.networks).
    Networks(Vec<IpNet>),
    /// A peer with a field this engine does not know (named for messages);
    /// fails closed as the module documentation says.
    Unknown(String),
}

/// One port entry of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPort {
    /// A protocol with a port range (all ports when none was given).
    Ports(Protocol, PortRange),
    /// A named container port of the destination pod, any protocol.
    Named(String),
}

/// One validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    pub name: String,
    pub action: Action,
    /// The action's word as written (`Accept`, `Allow`, `Deny`, `Pass`).
    pub action_word: &'static str,
    pub peers: Vec<ClusterPeer>,
    /// `None`: no ports/protocols given, every connection.
    pub ports: Option<Vec<ClusterPort>>,
}

/// A validated cluster-scoped policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    pub kind: ClusterKind,
    pub name: String,
    pub tier: Tier,
    /// Lower numbers take precedence. v1alpha1 BaselineAdminNetworkPolicy
    /// has none (it is a singleton) and sorts after every v1alpha2
    /// Baseline policy (1001).
    pub priority: i32,
    pub subject: Subject,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
}

impl ClusterSpec {
    /// `Kind/name`, the form used in reports.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// The maximum number of rules per direction (both API versions).
const MAX_RULES: usize = 100;
const MAX_RULES_V1ALPHA2: usize = 25;

struct Ctx<'a> {
    kind: ClusterKind,
    name: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl fmt::Display, reason: impl fmt::Display) -> ClusterPolicyError {
        ClusterPolicyError {
            kind: self.kind,
            name: self.name.to_string(),
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }

    fn v2(&self) -> bool {
        self.kind == ClusterKind::ClusterNetworkPolicy
    }

    fn selector(&self, field: &str, v: &Value) -> Result<Selector, ClusterPolicyError> {
        let ls: LabelSelector = serde_json::from_value(v.clone())
            .map_err(|e| self.err(field, format!("not a label selector: {e}")))?;
        Selector::try_from(&ls).map_err(|e| self.err(field, e))
    }

    fn object<'v>(
        &self,
        field: &str,
        v: &'v Value,
    ) -> Result<&'v serde_json::Map<String, Value>, ClusterPolicyError> {
        v.as_object()
            .ok_or_else(|| self.err(field, format!("expected an object, got {v}")))
    }

    fn list<'v>(
        &self,
        field: &str,
        v: Option<&'v Value>,
    ) -> Result<&'v [Value], ClusterPolicyError> {
        match v {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(other) => Err(self.err(field, format!("expected a list, got {other}"))),
        }
    }

    fn int(&self, field: &str, v: &Value, lo: i64, hi: i64) -> Result<i64, ClusterPolicyError> {
        v.as_i64()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| self.err(field, format!("{v} is not a number in {lo}-{hi}")))
    }
}

impl ClusterSpec {
    /// Validates an object of `kind` (the API server's checks, so an object
    /// failing them cannot exist in a cluster; it is skipped with a message).
    pub fn parse(kind: ClusterKind, obj: &ClusterPolicyObject) -> Result<Self, ClusterPolicyError> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let ctx = Ctx { kind, name: &name };
        if name.is_empty() {
            return Err(ctx.err("metadata.name", "missing"));
        }
        let spec = ctx.object("spec", &obj.spec)?;
        let tier = match kind {
            ClusterKind::AdminNetworkPolicy => Tier::Admin,
            ClusterKind::BaselineAdminNetworkPolicy => Tier::Baseline,
            ClusterKind::ClusterNetworkPolicy => match spec.get("tier").and_then(Value::as_str) {
                Some("Admin") => Tier::Admin,
                Some("Baseline") => Tier::Baseline,
                Some(other) => {
                    return Err(ctx.err(
                        "spec.tier",
                        format!("unknown tier {other:?} (expected Admin or Baseline)"),
                    ))
                }
                None => return Err(ctx.err("spec.tier", "missing (Admin or Baseline)")),
            },
        };
        let priority = match (kind, spec.get("priority")) {
            (ClusterKind::BaselineAdminNetworkPolicy, _) => {
                // The API allows exactly one, named `default`.
                if name != "default" {
                    return Err(ctx.err(
                        "metadata.name",
                        "a BaselineAdminNetworkPolicy must be named \"default\"",
                    ));
                }
                1001
            }
            (_, None) => return Err(ctx.err("spec.priority", "missing (0-1000)")),
            (_, Some(v)) => ctx.int("spec.priority", v, 0, 1000)? as i32,
        };
        let subject = subject(&ctx, spec.get("subject"))?;
        let max = if ctx.v2() {
            MAX_RULES_V1ALPHA2
        } else {
            MAX_RULES
        };
        let rules =
            |dir: &str, peers_field: &str| -> Result<Vec<ClusterRule>, ClusterPolicyError> {
                let list = ctx.list(&format!("spec.{dir}"), spec.get(dir))?;
                if list.len() > max {
                    return Err(ctx.err(
                        format!("spec.{dir}"),
                        format!("{} rules, at most {max} allowed", list.len()),
                    ));
                }
                list.iter()
                    .enumerate()
                    .map(|(i, r)| {
                        rule(
                            &ctx,
                            tier,
                            &format!("spec.{dir}[{i}]"),
                            peers_field,
                            dir == "egress",
                            r,
                        )
                    })
                    .collect()
            };
        let ingress = rules("ingress", "from")?;
        let egress = rules("egress", "to")?;
        Ok(ClusterSpec {
            kind,
            name,
            tier,
            priority,
            subject,
            ingress,
            egress,
        })
    }
}

fn subject(ctx: &Ctx<'_>, v: Option<&Value>) -> Result<Subject, ClusterPolicyError> {
    let Some(v) = v else {
        return Err(ctx.err("spec.subject", "missing (namespaces or pods)"));
    };
    let m = ctx.object("spec.subject", v)?;
    match (m.get("namespaces"), m.get("pods")) {
        (Some(ns), None) if m.len() == 1 => Ok(Subject::Namespaces(
            ctx.selector("spec.subject.namespaces", ns)?,
        )),
        (None, Some(p)) if m.len() == 1 => {
            let (namespaces, pods) = namespaced_pods(ctx, "spec.subject.pods", p)?;
            Ok(Subject::Pods { namespaces, pods })
        }
        _ => Err(ctx.err(
            "spec.subject",
            "exactly one of namespaces or pods must be set",
        )),
    }
}

fn namespaced_pods(
    ctx: &Ctx<'_>,
    field: &str,
    v: &Value,
) -> Result<(Selector, Selector), ClusterPolicyError> {
    let m = ctx.object(field, v)?;
    // Both are required in the schema, but a selector is a struct, not a
    // pointer, in the Go types: an absent one decodes as the empty selector
    // ("all"), which is what implementations and the conformance data use.
    let sel = |key: &str| -> Result<Selector, ClusterPolicyError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(Selector::everything()),
            Some(v) => ctx.selector(&format!("{field}.{key}"), v),
        }
    };
    Ok((sel("namespaceSelector")?, sel("podSelector")?))
}

fn rule(
    ctx: &Ctx<'_>,
    tier: Tier,
    field: &str,
    peers_field: &str,
    egress: bool,
    v: &Value,
) -> Result<ClusterRule, ClusterPolicyError> {
    let m = ctx.object(field, v)?;
    let name = m
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let word = m
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| ctx.err(format!("{field}.action"), "missing"))?;
    let (action, action_word) = match (ctx.kind, tier, word) {
        (ClusterKind::ClusterNetworkPolicy, _, "Accept") => (Action::Accept, "Accept"),
        (ClusterKind::ClusterNetworkPolicy, _, "Deny") => (Action::Deny, "Deny"),
        (ClusterKind::ClusterNetworkPolicy, _, "Pass") => (Action::Pass, "Pass"),
        (ClusterKind::AdminNetworkPolicy, _, "Allow")
        | (ClusterKind::BaselineAdminNetworkPolicy, _, "Allow") => (Action::Accept, "Allow"),
        (ClusterKind::AdminNetworkPolicy, _, "Deny")
        | (ClusterKind::BaselineAdminNetworkPolicy, _, "Deny") => (Action::Deny, "Deny"),
        (ClusterKind::AdminNetworkPolicy, _, "Pass") => (Action::Pass, "Pass"),
        (kind, _, other) => {
            let expected = match kind {
                ClusterKind::ClusterNetworkPolicy => "Accept, Deny or Pass",
                ClusterKind::AdminNetworkPolicy => "Allow, Deny or Pass",
                ClusterKind::BaselineAdminNetworkPolicy => "Allow or Deny",
            };
            return Err(ctx.err(
                format!("{field}.action"),
                format!("unknown action {other:?} (expected {expected})"),
            ));
        }
    };
    let peer_list = ctx.list(&format!("{field}.{peers_field}"), m.get(peers_field))?;
    if peer_list.is_empty() {
        return Err(ctx.err(
            format!("{field}.{peers_field}"),
            "must contain at least one peer",
        ));
    }
    let peers = peer_list
        .iter()
        .enumerate()
        .map(|(i, p)| peer(ctx, &format!("{field}.{peers_field}[{i}]"), egress, p))
        .collect::<Result<Vec<_>, _>>()?;
    // v1alpha2 `protocols`, v1alpha1 `ports`: a list of port entries each
    // (absent, null or empty: every connection).
    type PortEntry = fn(&Ctx<'_>, &str, &Value) -> Result<ClusterPort, ClusterPolicyError>;
    let (ports_field, port_entry): (&str, PortEntry) = if ctx.v2() {
        ("protocols", protocol_v2)
    } else {
        ("ports", port_v1)
    };
    let list = ctx.list(&format!("{field}.{ports_field}"), m.get(ports_field))?;
    let ports = if list.is_empty() {
        None
    } else {
        Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| port_entry(ctx, &format!("{field}.{ports_field}[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    Ok(ClusterRule {
        name,
        action,
        action_word,
        peers,
        ports,
    })
}

fn peer(
    ctx: &Ctx<'_>,
    field: &str,
    egress: bool,
    v: &Value,
) -> Result<ClusterPeer, ClusterPolicyError> {
    let m = ctx.object(field, v)?;
    let known: &[&str] = if egress {
        &["namespaces", "pods", "nodes", "networks"]
    } else {
        &["namespaces", "pods"]
    };
    if let Some(unknown) = m.keys().find(|k| !known.contains(&k.as_str())) {
        return Ok(ClusterPeer::Unknown(format!("{field}.{unknown}")));
    }
    if m.len() != 1 {
        return Err(ctx.err(
            field,
            format!("exactly one of {} must be set", known.join(", ")),
        ));
    }
    let (key, val) = m.iter().next().expect("one entry");
    let sub = format!("{field}.{key}");
    Ok(match key.as_str() {
        "namespaces" => ClusterPeer::Namespaces(ctx.selector(&sub, val)?),
        "pods" => {
            let (namespaces, pods) = namespaced_pods(ctx, &sub, val)?;
            ClusterPeer::Pods { namespaces, pods }
        }
        "nodes" => ClusterPeer::Nodes(ctx.selector(&sub, val)?),
        _ => {
            let list = ctx.list(&sub, Some(val))?;
            if list.is_empty() || list.len() > 25 {
                return Err(ctx.err(&sub, "must hold 1-25 CIDRs"));
            }
            let mut nets = Vec::new();
            for (i, c) in list.iter().enumerate() {
                let net = c
                    .as_str()
                    .and_then(|s| s.trim().parse::<IpNet>().ok())
                    .ok_or_else(|| {
                        ctx.err(
                            format!("{sub}[{i}]"),
                            format!(
                                "{c} is not a CIDR (expected e.g. 10.0.0.0/8 or 2001:db8::/64)"
                            ),
                        )
                    })?;
                nets.push(net.trunc());
            }
            ClusterPeer::Networks(nets)
        }
    })
}

fn protocol_of(
    ctx: &Ctx<'_>,
    field: &str,
    v: Option<&Value>,
) -> Result<Protocol, ClusterPolicyError> {
    match v {
        // v1alpha1 AdminNetworkPolicyPort: protocol defaults to TCP.
        None | Some(Value::Null) => Ok(Protocol::Tcp),
        Some(Value::String(s)) => Protocol::from_policy_field(s).ok_or_else(|| {
            ctx.err(
                field,
                format!("unsupported protocol {s:?} (expected TCP, UDP or SCTP)"),
            )
        }),
        Some(other) => Err(ctx.err(field, format!("expected a string, got {other}"))),
    }
}

fn port_range(
    ctx: &Ctx<'_>,
    field: &str,
    start: Option<&Value>,
    end: Option<&Value>,
) -> Result<PortRange, ClusterPolicyError> {
    let num = |f: &str, v: Option<&Value>| -> Result<u16, ClusterPolicyError> {
        let v = v.ok_or_else(|| ctx.err(format!("{field}.{f}"), "missing"))?;
        Ok(ctx.int(&format!("{field}.{f}"), v, 1, 65535)? as u16)
    };
    let lo = num("start", start)?;
    let hi = num("end", end)?;
    PortRange::new(lo, hi).ok_or_else(|| {
        ctx.err(
            format!("{field}.end"),
            format!("end {hi} is less than start {lo}"),
        )
    })
}

fn port_name(ctx: &Ctx<'_>, field: &str, v: &Value) -> Result<String, ClusterPolicyError> {
    v.as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ctx.err(field, format!("{v} is not a port name")))
}

/// v1alpha1 AdminNetworkPolicyPort: exactly one of `portNumber: {protocol,
/// port}`, `namedPort`, `portRange: {protocol, start, end}`.
fn port_v1(ctx: &Ctx<'_>, field: &str, v: &Value) -> Result<ClusterPort, ClusterPolicyError> {
    let m = ctx.object(field, v)?;
    if m.len() != 1 {
        return Err(ctx.err(
            field,
            "exactly one of portNumber, namedPort or portRange must be set",
        ));
    }
    let (key, val) = m.iter().next().expect("one entry");
    let sub = format!("{field}.{key}");
    match key.as_str() {
        "portNumber" => {
            let pm = ctx.object(&sub, val)?;
            let proto = protocol_of(ctx, &format!("{sub}.protocol"), pm.get("protocol"))?;
            let port = pm
                .get("port")
                .ok_or_else(|| ctx.err(format!("{sub}.port"), "missing"))?;
            let n = ctx.int(&format!("{sub}.port"), port, 1, 65535)? as u16;
            Ok(ClusterPort::Ports(proto, PortRange::single(n)))
        }
        "portRange" => {
            let pm = ctx.object(&sub, val)?;
            let proto = protocol_of(ctx, &format!("{sub}.protocol"), pm.get("protocol"))?;
            Ok(ClusterPort::Ports(
                proto,
                port_range(ctx, &sub, pm.get("start"), pm.get("end"))?,
            ))
        }
        "namedPort" => Ok(ClusterPort::Named(port_name(ctx, &sub, val)?)),
        other => Err(ctx.err(
            &sub,
            format!("unknown port field {other:?} (expected portNumber, namedPort or portRange)"),
        )),
    }
}

/// v1alpha2 ClusterNetworkPolicyProtocol: exactly one of `tcp`, `udp`,
/// `sctp` (each with an optional `destinationPort: {number | range}`;
/// without it every port of the protocol) or `destinationNamedPort`.
fn protocol_v2(ctx: &Ctx<'_>, field: &str, v: &Value) -> Result<ClusterPort, ClusterPolicyError> {
    let m = ctx.object(field, v)?;
    if m.len() != 1 {
        return Err(ctx.err(
            field,
            "exactly one of tcp, udp, sctp or destinationNamedPort must be set",
        ));
    }
    let (key, val) = m.iter().next().expect("one entry");
    let sub = format!("{field}.{key}");
    let proto = match key.as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        "destinationNamedPort" => return Ok(ClusterPort::Named(port_name(ctx, &sub, val)?)),
        other => {
            return Err(ctx.err(
                &sub,
                format!("unknown protocol field {other:?} (expected tcp, udp, sctp or destinationNamedPort)"),
            ))
        }
    };
    let pm = match val {
        Value::Null => return Ok(ClusterPort::Ports(proto, PortRange::ALL)),
        v => ctx.object(&sub, v)?,
    };
    let Some(dp) = pm.get("destinationPort").filter(|v| !v.is_null()) else {
        return Ok(ClusterPort::Ports(proto, PortRange::ALL));
    };
    let dsub = format!("{sub}.destinationPort");
    let dm = ctx.object(&dsub, dp)?;
    match (dm.get("number"), dm.get("range")) {
        (Some(n), None) => {
            let n = ctx.int(&format!("{dsub}.number"), n, 1, 65535)? as u16;
            Ok(ClusterPort::Ports(proto, PortRange::single(n)))
        }
        (None, Some(r)) => {
            let rsub = format!("{dsub}.range");
            let rm = ctx.object(&rsub, r)?;
            Ok(ClusterPort::Ports(
                proto,
                port_range(ctx, &rsub, rm.get("start"), rm.get("end"))?,
            ))
        }
        _ => Err(ctx.err(&dsub, "exactly one of number or range must be set")),
    }
}

/// What the cluster-scoped policies guarantee for every pod of one
/// namespace (audit evidence, CIS 5.3.2: "default deny" need not come from
/// NetworkPolicy objects).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceCover {
    /// `Kind/name` of the policies whose subject is every pod of the namespace.
    pub policies: Vec<String>,
    /// Those with a Deny rule without ports from every pod of every namespace.
    pub deny_ingress: Vec<String>,
    /// Those with a Deny rule without ports to every pod and to 0.0.0.0/0.
    pub deny_egress: Vec<String>,
}

fn all_pods(p: &ClusterPeer) -> bool {
    match p {
        ClusterPeer::Namespaces(s) => s.is_everything(),
        ClusterPeer::Pods { namespaces, pods } => {
            namespaces.is_everything() && pods.is_everything()
        }
        _ => false,
    }
}

fn deny_all(r: &ClusterRule, egress: bool) -> bool {
    if r.action != Action::Deny || r.ports.is_some() {
        return false;
    }
    // An unknown peer type makes a Deny rule match everything.
    if r.peers.iter().any(|p| matches!(p, ClusterPeer::Unknown(_))) {
        return true;
    }
    let pods = r.peers.iter().any(all_pods);
    let world = !egress
        || r.peers.iter().any(|p| {
            matches!(p, ClusterPeer::Networks(nets) if nets.iter().any(|n| n.prefix_len() == 0 && matches!(n, IpNet::V4(_))))
        });
    pods && world
}

/// The cover of a namespace with these labels (name label included).
pub fn namespace_cover(specs: &[ClusterSpec], labels: &super::selector::Labels) -> NamespaceCover {
    let mut out = NamespaceCover::default();
    for s in specs {
        let whole = match &s.subject {
            Subject::Namespaces(sel) => sel.matches(labels),
            Subject::Pods { namespaces, pods } => {
                pods.is_everything() && namespaces.matches(labels)
            }
        };
        if !whole {
            continue;
        }
        out.policies.push(s.id());
        if s.ingress.iter().any(|r| deny_all(r, false)) {
            out.deny_ingress.push(s.id());
        }
        if s.egress.iter().any(|r| deny_all(r, true)) {
            out.deny_egress.push(s.id());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(yaml: &str) -> ClusterPolicyObject {
        serde_yaml_ng::from_str(yaml).expect("test object parses")
    }

    #[test]
    fn v1alpha2_parses_protocols_peers_and_tier() {
        let o = obj("
metadata: {name: guard}
spec:
  tier: Admin
  priority: 5
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}
  egress:
  - name: no-metadata
    action: Deny
    to: [{networks: [169.254.169.254/32, 'fd00:ec2::254/128']}]
  - name: dns
    action: Accept
    to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]
    protocols:
    - udp: {destinationPort: {number: 53}}
    - tcp: {destinationPort: {range: {start: 8000, end: 8010}}}
    - destinationNamedPort: http
    - sctp: {}
  - name: future
    action: Accept
    to: [{domainNames: [example.com]}]
");
        let s = ClusterSpec::parse(ClusterKind::ClusterNetworkPolicy, &o).expect("valid");
        assert_eq!((s.tier, s.priority), (Tier::Admin, 5));
        assert_eq!(s.egress.len(), 3);
        assert_eq!(
            s.egress[0].peers,
            vec![ClusterPeer::Networks(vec![
                "169.254.169.254/32".parse().unwrap(),
                "fd00:ec2::254/128".parse().unwrap()
            ])]
        );
        assert_eq!(
            s.egress[1].ports,
            Some(vec![
                ClusterPort::Ports(Protocol::Udp, PortRange::single(53)),
                ClusterPort::Ports(Protocol::Tcp, PortRange::new(8000, 8010).unwrap()),
                ClusterPort::Named("http".into()),
                ClusterPort::Ports(Protocol::Sctp, PortRange::ALL),
            ])
        );
        assert_eq!(
            s.egress[2].peers,
            vec![ClusterPeer::Unknown(
                "spec.egress[2].to[0].domainNames".into()
            )]
        );
        assert_eq!(s.id(), "ClusterNetworkPolicy/guard");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("spec: {tier: Admin, subject: {namespaces: {}}}", "spec.priority"),
            ("spec: {tier: Middle, priority: 1, subject: {namespaces: {}}}", "spec.tier"),
            ("spec: {tier: Admin, priority: 1001, subject: {namespaces: {}}}", "spec.priority"),
            ("spec: {tier: Admin, priority: 1, subject: {}}", "spec.subject"),
            (
                "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Allow, from: [{namespaces: {}}]}]}",
                "spec.ingress[0].action",
            ),
            (
                "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: []}]}",
                "spec.egress[0].to",
            ),
            (
                "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [nope]}]}]}",
                "spec.egress[0].to[0].networks[0]",
            ),
            (
                "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 9, end: 8}}}}]}]}",
                "spec.egress[0].protocols[0].tcp.destinationPort.range.end",
            ),
        ];
        for (spec, field) in cases {
            let err = ClusterSpec::parse(
                ClusterKind::ClusterNetworkPolicy,
                &obj(&format!("metadata: {{name: p}}\n{spec}")),
            )
            .unwrap_err();
            assert_eq!(err.field, field, "{spec}: {err}");
            assert!(
                err.to_string().starts_with("ClusterNetworkPolicy p: "),
                "{err}"
            );
        }
    }

    #[test]
    fn v1alpha1_kinds() {
        let anp = obj("
metadata: {name: a}
spec:
  priority: 3
  subject: {namespaces: {}}
  ingress:
  - {name: r, action: Pass, from: [{pods: {namespaceSelector: {}, podSelector: {}}}],
     ports: [{portNumber: {protocol: UDP, port: 53}}, {portRange: {start: 1, end: 9}}, {namedPort: dns}]}
");
        let s = ClusterSpec::parse(ClusterKind::AdminNetworkPolicy, &anp).expect("valid ANP");
        assert_eq!(s.ingress[0].action, Action::Pass);
        assert_eq!(
            s.ingress[0].ports.as_ref().unwrap()[1],
            ClusterPort::Ports(Protocol::Tcp, PortRange::new(1, 9).unwrap()),
            "portRange protocol defaults to TCP"
        );
        let banp = obj("
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  egress: [{action: Pass, to: [{namespaces: {}}]}]
");
        let err = ClusterSpec::parse(ClusterKind::BaselineAdminNetworkPolicy, &banp).unwrap_err();
        assert_eq!(err.field, "spec.egress[0].action", "BANP has no Pass");
    }
}
