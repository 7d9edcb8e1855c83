//! Staged policies: NetworkPolicies (and ClusterNetworkPolicies) that no CNI
//! enforces, judged on the same connections as the live ones, so an admin
//! sees what a policy would block before applying it.
//!
//! ```text
//!  live objects ───────────────┬──────────────► Engine (live)      ─► Decision (live)
//!  StagedNetworkPolicy         │ replace same                           │
//!  StagedClusterNetworkPolicy ─┴ name / remove ► Engine (live+staged) ─► Decision (staged)
//!                                                                     │
//!                       Overlay::judge: allowed | denied | would_deny | would_allow,
//!                       the deciding rule, the staged object it is attributed to,
//!                       the staged objects that apply to the connection
//! ```
//!
//! Semantics (the same as the live engine's, on a changed object set):
//! - A `StagedNetworkPolicy` `ns/name` (`spec.action` absent or `Set`) is
//!   the NetworkPolicy `ns/name` with that spec: it adds one, or replaces
//!   the live policy of the same namespace and name (a staged *update*).
//! - `spec.action: Delete` stages the removal of the live NetworkPolicy of
//!   the same namespace and name ("what breaks if I delete this one").
//! - `StagedClusterNetworkPolicy` does the same for the ClusterNetworkPolicy
//!   of the same name; its spec is a ClusterNetworkPolicy spec.
//! - A connection the live set allows and the staged set denies is
//!   `would_deny`; the reverse is `would_allow`. Both name the deciding rule
//!   of the direction that changed (egress first) and the staged object the
//!   change comes from.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::cluster::{ClusterKind, ClusterPolicyObject, ClusterSpec};
use super::engine::{ClusterPolicyRef, Decision, Direction, Engine, Objects, Query};
use super::policy::{PolicySpec, DEFAULT_NAMESPACE};
use crate::report::{DecidedBy, StagedReport, StagedVerdict};

/// Kind names of the staged objects (`segwatch.dev/v1alpha1`).
pub const STAGED_NP_KIND: &str = "StagedNetworkPolicy";
pub const STAGED_CNP_KIND: &str = "StagedClusterNetworkPolicy";

pub use crate::objects::staged::{StagedAction, StagedNetworkPolicy, StagedNetworkPolicySpec};

impl StagedNetworkPolicy {
    /// `namespace/name` (namespace defaulted).
    pub fn id(&self) -> String {
        np_id(&self.metadata)
    }

    /// The plain NetworkPolicy this staged object stands for (`None` for a
    /// staged removal): what `segwatch staged promote` prints.
    pub fn to_network_policy(&self) -> Option<NetworkPolicy> {
        (self.spec.action == StagedAction::Set).then(|| NetworkPolicy {
            metadata: ObjectMeta {
                name: self.metadata.name.clone(),
                namespace: Some(ns_of(&self.metadata)),
                labels: self.metadata.labels.clone(),
                annotations: self.metadata.annotations.clone(),
                ..Default::default()
            },
            spec: Some(self.spec.policy.clone()),
        })
    }
}

fn ns_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

fn np_id(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        ns_of(meta),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The action of a StagedClusterNetworkPolicy (`spec.action`) and its
/// ClusterNetworkPolicy spec without it.
pub fn cluster_action(obj: &ClusterPolicyObject) -> Result<(StagedAction, Value), String> {
    let mut spec = obj.spec.clone();
    let action = match spec.as_object_mut().and_then(|m| m.remove("action")) {
        None => StagedAction::Set,
        Some(Value::String(s)) if s == "Set" => StagedAction::Set,
        Some(Value::String(s)) if s == "Delete" => StagedAction::Delete,
        Some(other) => return Err(format!("spec.action: {other} is not Set or Delete")),
    };
    Ok((action, spec))
}

/// Which kind of staged object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StagedKind {
    NetworkPolicy,
    ClusterNetworkPolicy,
}

impl StagedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StagedKind::NetworkPolicy => STAGED_NP_KIND,
            StagedKind::ClusterNetworkPolicy => STAGED_CNP_KIND,
        }
    }
}

/// One staged object as the overlay knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedInfo {
    pub kind: StagedKind,
    /// The namespace; empty for a StagedClusterNetworkPolicy.
    pub namespace: String,
    pub name: String,
    pub action: StagedAction,
    /// A live policy of the same name exists (replaced or removed).
    pub replaces_live: bool,
    /// Why the object is not part of the staged set (invalid spec).
    pub invalid: Option<String>,
}

impl StagedInfo {
    /// `ns/name` for a StagedNetworkPolicy, `name` for a cluster-scoped
    /// one: the reference written into flow reports.
    pub fn reference(&self) -> String {
        match self.kind {
            StagedKind::NetworkPolicy => format!("{}/{}", self.namespace, self.name),
            StagedKind::ClusterNetworkPolicy => self.name.clone(),
        }
    }
}

/// The staged objects an overlay is built from.
#[derive(Clone, Debug, Default)]
pub struct StagedObjects<'a> {
    pub policies: Vec<&'a StagedNetworkPolicy>,
    pub cluster: Vec<&'a ClusterPolicyObject>,
}

impl<'a> StagedObjects<'a> {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.cluster.is_empty()
    }

    /// The staged objects of an inventory.
    pub fn from_inventory(objects: &'a [crate::inventory::Object]) -> StagedObjects<'a> {
        use crate::inventory::Object as O;
        let mut out = StagedObjects::default();
        for o in objects {
            match o {
                O::StagedNetworkPolicy(p) => out.policies.push(p),
                O::StagedClusterNetworkPolicy(p) => out.cluster.push(p),
                _ => {}
            }
        }
        out
    }
}

/// The live set with the staged objects applied, compiled.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    engine: Engine,
    policies: Vec<StagedInfo>,
    /// Valid staged `Set` objects by the id the engine gives them.
    set_np: HashMap<String, usize>,
    set_cluster: HashMap<String, usize>,
    /// Staged removals by the id of the live policy they remove.
    del_np: HashMap<String, usize>,
    del_cluster: HashMap<String, usize>,
}

/// The staged view of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: StagedVerdict,
    /// The rule deciding the staged verdict (of the direction that changed
    /// for `would_*`), with staged objects named by their staged kind.
    pub decided_by: Option<DecidedBy>,
    /// Index (in [`Overlay::policies`]) of the staged object a `would_*`
    /// verdict is attributed to.
    pub policy: Option<usize>,
    /// Indexes of the staged objects that apply to the connection (select
    /// its source for egress or its destination for ingress; a removal:
    /// the live policy it removes does).
    pub selected: Vec<usize>,
}

impl Overlay {
    /// Compiles `live` with `staged` applied. Invalid staged objects are
    /// listed (with the reason) and left out; the messages are returned.
    pub fn build(live: &Objects<'_>, staged: &StagedObjects<'_>) -> (Overlay, Vec<String>) {
        let mut warnings = Vec::new();
        let mut policies = Vec::new();
        let live_np: HashSet<String> = live.policies.iter().map(|p| np_id(&p.metadata)).collect();
        let live_cnp: HashSet<String> = live
            .cluster_policies
            .iter()
            .filter(|c| c.kind == ClusterKind::ClusterNetworkPolicy)
            .filter_map(|c| c.object.metadata.name.clone())
            .collect();

        let mut np_objs: Vec<NetworkPolicy> = Vec::new();
        let (mut set_np, mut del_np) = (HashMap::new(), HashMap::new());
        let mut sorted = staged.policies.clone();
        sorted.sort_by_key(|p| p.id());
        for s in sorted {
            let id = s.id();
            let mut info = StagedInfo {
                kind: StagedKind::NetworkPolicy,
                namespace: ns_of(&s.metadata),
                name: s.metadata.name.clone().unwrap_or_default(),
                action: s.spec.action,
                replaces_live: live_np.contains(&id),
                invalid: None,
            };
            if info.name.is_empty() {
                info.invalid = Some("metadata.name: missing".into());
            } else if set_np.contains_key(&id) || del_np.contains_key(&id) {
                info.invalid = Some("given twice; the first one is used".into());
            } else {
                match s.spec.action {
                    StagedAction::Set => {
                        let np = s.to_network_policy().unwrap_or_default();
                        match PolicySpec::try_from(&np) {
                            Ok(_) => {
                                set_np.insert(id.clone(), policies.len());
                                np_objs.push(np);
                            }
                            Err(e) => info.invalid = Some(e.to_string()),
                        }
                    }
                    StagedAction::Delete => {
                        if !info.replaces_live {
                            warnings.push(format!(
                                "{STAGED_NP_KIND} {id}: stages the removal of NetworkPolicy {id}, which does not exist"
                            ));
                        }
                        del_np.insert(id.clone(), policies.len());
                    }
                }
            }
            if let Some(why) = &info.invalid {
                warnings.push(format!("{STAGED_NP_KIND} {id}: {why} (left out)"));
            }
            policies.push(info);
        }

        let mut cnp_objs: Vec<ClusterPolicyObject> = Vec::new();
        let (mut set_cluster, mut del_cluster) = (HashMap::new(), HashMap::new());
        let mut sorted = staged.cluster.clone();
        sorted.sort_by_key(|p| p.metadata.name.clone());
        for s in sorted {
            let name = s.metadata.name.clone().unwrap_or_default();
            let mut info = StagedInfo {
                kind: StagedKind::ClusterNetworkPolicy,
                namespace: String::new(),
                name: name.clone(),
                action: StagedAction::Set,
                replaces_live: live_cnp.contains(&name),
                invalid: None,
            };
            match cluster_action(s) {
                Err(e) => info.invalid = Some(e),
                Ok(_) if name.is_empty() => info.invalid = Some("metadata.name: missing".into()),
                Ok(_) if set_cluster.contains_key(&name) || del_cluster.contains_key(&name) => {
                    info.invalid = Some("given twice; the first one is used".into());
                }
                Ok((StagedAction::Delete, _)) => {
                    info.action = StagedAction::Delete;
                    if !info.replaces_live {
                        warnings.push(format!(
                            "{STAGED_CNP_KIND} {name}: stages the removal of ClusterNetworkPolicy {name}, which does not exist"
                        ));
                    }
                    del_cluster.insert(name.clone(), policies.len());
                }
                Ok((StagedAction::Set, spec)) => {
                    let obj = ClusterPolicyObject {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            ..Default::default()
                        },
                        spec,
                    };
                    match ClusterSpec::parse(ClusterKind::ClusterNetworkPolicy, &obj) {
                        Ok(_) => {
                            set_cluster.insert(name.clone(), policies.len());
                            cnp_objs.push(obj);
                        }
                        Err(e) => info.invalid = Some(e.to_string()),
                    }
                }
            }
            if let Some(why) = &info.invalid {
                warnings.push(format!("{STAGED_CNP_KIND} {name}: {why} (left out)"));
            }
            policies.push(info);
        }

        let mut merged = live.clone();
        merged.policies.retain(|p| {
            let id = np_id(&p.metadata);
            !set_np.contains_key(&id) && !del_np.contains_key(&id)
        });
        merged.policies.extend(np_objs.iter());
        merged.cluster_policies.retain(|c| {
            let name = c.object.metadata.name.as_deref().unwrap_or_default();
            c.kind != ClusterKind::ClusterNetworkPolicy
                || (!set_cluster.contains_key(name) && !del_cluster.contains_key(name))
        });
        merged
            .cluster_policies
            .extend(cnp_objs.iter().map(|object| ClusterPolicyRef {
                kind: ClusterKind::ClusterNetworkPolicy,
                object,
            }));
        let (engine, engine_warnings) = Engine::build(&merged);
        // Live objects' problems are reported by the live engine already.
        drop(engine_warnings);
        (
            Overlay {
                engine,
                policies,
                set_np,
                set_cluster,
                del_np,
                del_cluster,
            },
            warnings,
        )
    }

    /// Every staged object, sorted (NetworkPolicies by `ns/name`, then
    /// cluster-scoped ones by name).
    pub fn policies(&self) -> &[StagedInfo] {
        &self.policies
    }

    /// The engine of the live set with the staged objects applied.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The staged object a deciding rule belongs to, if it is one.
    fn staged_of(&self, d: &DecidedBy) -> Option<usize> {
        if d.kind == "NetworkPolicy" {
            self.set_np.get(&*d.name).copied()
        } else if d.kind == "ClusterNetworkPolicy" {
            self.set_cluster.get(&*d.name).copied()
        } else {
            None
        }
    }

    /// The staged removal of the live policy a deciding rule belongs to.
    fn removal_of(&self, d: &DecidedBy) -> Option<usize> {
        if d.kind == "NetworkPolicy" {
            self.del_np.get(&*d.name).copied()
        } else if d.kind == "ClusterNetworkPolicy" {
            self.del_cluster.get(&*d.name).copied()
        } else {
            None
        }
    }

    /// The deciding rule with a staged object named by its staged kind.
    fn relabel(&self, d: &DecidedBy) -> DecidedBy {
        let mut d = d.clone();
        if let Some(i) = self.staged_of(&d) {
            d.kind = std::borrow::Cow::Borrowed(self.policies[i].kind.as_str());
        }
        d
    }

    /// The deciding rule of a direction of the staged decision; for a
    /// NetworkPolicy isolation denial the staged object isolating the pod
    /// (the live engine names the first isolating policy by name).
    fn decider(&self, dir: &Direction) -> Option<DecidedBy> {
        let mut d = dir.decided_by.clone()?;
        if d.tier == "NetworkPolicy" && d.action == "Deny" && self.staged_of(&d).is_none() {
            if let Some(id) = dir
                .isolated_by
                .iter()
                .find(|id| self.set_np.contains_key(&***id))
            {
                d.name = id.clone();
            }
        }
        Some(d)
    }

    /// Judges one connection: `live` is the live engine's decision on `q`.
    pub fn judge(&self, live_engine: &Engine, live: &Decision, q: &Query) -> Judgement {
        let staged = self.engine.evaluate(q);
        let selected = self.selected(live_engine, live, &staged, q);
        let verdict = match (live.allowed, staged.allowed) {
            (true, true) => StagedVerdict::Allowed,
            (false, false) => StagedVerdict::Denied,
            (true, false) => StagedVerdict::WouldDeny,
            (false, true) => StagedVerdict::WouldAllow,
        };
        // The direction that changed decides; egress first, as the packet
        // meets it first.
        let changed = |l: &Direction, s: &Direction| l.allowed != s.allowed;
        let (live_dir, staged_dir) = match verdict {
            StagedVerdict::WouldDeny | StagedVerdict::WouldAllow => {
                if changed(&live.egress, &staged.egress) {
                    (Some(&live.egress), Some(&staged.egress))
                } else {
                    (Some(&live.ingress), Some(&staged.ingress))
                }
            }
            _ => (None, None),
        };
        let (decided_by, policy) = match (live_dir, staged_dir) {
            (Some(l), Some(s)) => {
                let d = self.decider(s);
                let policy = d
                    .as_ref()
                    .and_then(|d| self.staged_of(d))
                    .or_else(|| self.attribute_removal(l, s))
                    .or_else(|| selected.first().copied());
                (d, policy)
            }
            _ => (staged.decided_by().cloned(), None),
        };
        Judgement {
            verdict,
            decided_by: decided_by.map(|d| self.relabel(&d)),
            policy,
            selected,
        }
    }

    /// A change not decided by a staged rule comes from a removal: of the
    /// live rule that decided the direction, of a live policy that allowed
    /// it, or (would_allow) of a live policy that isolated the pod.
    fn attribute_removal(&self, live: &Direction, staged: &Direction) -> Option<usize> {
        if let Some(i) = live.decided_by.as_ref().and_then(|d| self.removal_of(d)) {
            return Some(i);
        }
        let by_np = |ids: &[Arc<str>]| ids.iter().find_map(|id| self.del_np.get(&**id).copied());
        if !staged.allowed {
            by_np(&live.allowed_by)
        } else {
            by_np(&live.isolated_by)
        }
    }

    fn selected(
        &self,
        live_engine: &Engine,
        live: &Decision,
        staged: &Decision,
        q: &Query,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        let mut add = |i: usize| {
            if !out.contains(&i) {
                out.push(i);
            }
        };
        for id in staged
            .egress
            .isolated_by
            .iter()
            .chain(&*staged.ingress.isolated_by)
        {
            if let Some(&i) = self.set_np.get(&**id) {
                add(i);
            }
        }
        for id in live
            .egress
            .isolated_by
            .iter()
            .chain(&*live.ingress.isolated_by)
        {
            if let Some(&i) = self.del_np.get(&**id) {
                add(i);
            }
        }
        if !self.set_cluster.is_empty() {
            for name in self.engine.cluster_subject_names(q.src, q.dst) {
                if let Some(&i) = self.set_cluster.get(name) {
                    add(i);
                }
            }
        }
        if !self.del_cluster.is_empty() {
            for name in live_engine.cluster_subject_names(q.src, q.dst) {
                if let Some(&i) = self.del_cluster.get(name) {
                    add(i);
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// The flow report's `staged` field for one connection.
    pub fn report(&self, live_engine: &Engine, live: &Decision, q: &Query) -> StagedReport {
        let j = self.judge(live_engine, live, q);
        StagedReport {
            verdict: j.verdict,
            decided_by: j.decided_by,
            policy: j.policy.map(|i| self.policies[i].reference()),
            selected: j
                .selected
                .iter()
                .map(|&i| self.policies[i].reference())
                .collect(),
        }
    }
}

/// What a staged object did over a window of flow reports, replayed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Connections judged by NetworkPolicy in the window.
    pub judged: u64,
    /// Connections the staged object applied to.
    pub selected: u64,
    /// Connections it would deny: one line of evidence each.
    pub would_deny: Vec<String>,
    pub would_allow: u64,
    /// Connections a flow log recorded as `would_deny` for this object
    /// (the daemon's verdict at the time).
    pub recorded_would_deny: u64,
}

/// Replays flow reports (connections the daemon judged by NetworkPolicy:
/// reports with a `netpol` field; a connection counts once) through the
/// live set with the staged set applied, as the daemon judges them: per
/// staged object the connections it applied to and the would-deny /
/// would-allow ones attributed to it.
pub fn replay_window(
    live: &Objects<'_>,
    staged: &StagedObjects<'_>,
    reports: &[crate::report::FlowReport],
) -> Vec<(StagedInfo, WindowStats)> {
    let (engine, _) = Engine::build(live);
    let mut seen = HashSet::new();
    let conns: Vec<(&crate::report::FlowReport, Query)> = reports
        .iter()
        .filter(|r| r.netpol.is_some())
        .filter(|r| {
            seen.insert(match &r.connection {
                Some(c) => format!("{}|{c}", r.observer.as_deref().unwrap_or("")),
                None => format!(
                    "{}|{:?}|{}|{:?}|{}|{}",
                    r.src.ip, r.src.port, r.dst.ip, r.dst.port, r.protocol, r.start
                ),
            })
        })
        .filter_map(|r| {
            let protocol = r.protocol.parse().ok()?;
            Some((
                r,
                Query {
                    src: super::Peer::Ip(r.src.ip),
                    dst: super::Peer::Ip(r.dst.ip),
                    protocol,
                    port: r.dst.port.unwrap_or(0),
                },
            ))
        })
        .collect();
    let (overlay, _) = Overlay::build(live, staged);
    let mut out: Vec<(StagedInfo, WindowStats)> = overlay
        .policies()
        .iter()
        .map(|p| (p.clone(), WindowStats::default()))
        .collect();
    for (r, q) in &conns {
        let live_decision = engine.evaluate(q);
        let j = overlay.judge(&engine, &live_decision, q);
        for (_, st) in out.iter_mut() {
            st.judged += 1;
        }
        for &i in &j.selected {
            out[i].1.selected += 1;
        }
        if let Some(i) = j.policy {
            match j.verdict {
                StagedVerdict::WouldDeny => out[i].1.would_deny.push(format!(
                    "{} {} -> {} {}:{} {} at {}",
                    r.src.namespace.as_deref().unwrap_or("-"),
                    r.src.pod.as_deref().unwrap_or(&r.src.ip.to_string()),
                    r.dst.namespace.as_deref().unwrap_or("-"),
                    r.dst.pod.as_deref().unwrap_or(&r.dst.ip.to_string()),
                    r.dst.port.unwrap_or(0),
                    r.protocol,
                    r.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )),
                StagedVerdict::WouldAllow => out[i].1.would_allow += 1,
                StagedVerdict::Allowed | StagedVerdict::Denied => {}
            }
        }
        if let Some(s) = r
            .staged
            .as_ref()
            .filter(|s| s.verdict == StagedVerdict::WouldDeny)
        {
            if let Some((_, st)) = out
                .iter_mut()
                .find(|(p, _)| s.policy.as_deref() == Some(&p.reference()))
            {
                st.recorded_would_deny += 1;
            }
        }
    }
    out
}

/// NetworkPolicies as StagedNetworkPolicy objects (same namespace, name and
/// spec): YAML documents, or a JSON `List`.
pub fn render_staged(policies: &[NetworkPolicy], json: bool) -> Result<String, serde_json::Error> {
    let items = policies
        .iter()
        .map(|p| {
            let staged = StagedNetworkPolicy {
                metadata: ObjectMeta {
                    name: p.metadata.name.clone(),
                    namespace: Some(ns_of(&p.metadata)),
                    labels: p.metadata.labels.clone(),
                    annotations: p.metadata.annotations.clone(),
                    ..Default::default()
                },
                spec: StagedNetworkPolicySpec {
                    action: StagedAction::Set,
                    policy: p.spec.clone().unwrap_or_default(),
                },
            };
            let mut v = serde_json::to_value(&staged)?;
            if let Value::Object(m) = &mut v {
                let mut out = serde_json::Map::new();
                out.insert("apiVersion".into(), "segwatch.dev/v1alpha1".into());
                out.insert("kind".into(), STAGED_NP_KIND.into());
                out.extend(std::mem::take(m));
                *m = out;
            }
            Ok(v)
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    Ok(list_text(items, json))
}

/// Objects as YAML documents, or a pretty JSON `List`.
pub fn list_text(items: Vec<Value>, json: bool) -> String {
    if json {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let mut s = serde_json::to_string_pretty(&list).unwrap_or_default();
        s.push('\n');
        s
    } else {
        let mut out = String::new();
        for v in items {
            out.push_str("---\n");
            out.push_str(&serde_yaml_ng::to_string(&v).unwrap_or_default());
        }
        out
    }
}

/// The flow report's `staged` field of a connection the live `engine`
/// decided: `None` when no staged object exists.
pub fn report_of(engine: &Engine, live: &Decision, q: &Query) -> Option<StagedReport> {
    engine.staged().map(|o| o.report(engine, live, q))
}

#[cfg(test)]
#[path = "staged_tests.rs"]
mod tests;
