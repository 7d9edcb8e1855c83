//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) semantics, exactly as
//! the API reference defines them, compiled for fast queries.
//!
//! ```text
//!  typed objects                 compile (TryFrom, resolve)        queries
//!  Namespace, Pod, workloads ─► model::Endpoint, ns labels ─┐
//!  NetworkPolicy ────────────► policy::PolicySpec ──────────┴─► engine::Engine
//!                                                                 │ evaluate(Query) -> Decision
//!                                                                 │ enforcement_finding(Decision, TcpState)
//!                                                                 └ matrix::connectivity -> listing
//! ```
//!
//! `segwatch netpol eval|matrix` (cmd/netpol.rs) and the daemon's flow
//! judging are thin users of [`Engine`]. No I/O, no async in here.

pub mod cidr;
pub mod cluster;
pub mod diff;
pub mod engine;
pub mod matrix;
pub mod model;
pub mod policy;
pub mod ports;
/// Label selectors live below every policy kind, in [`crate::selector`].
pub use crate::selector;
pub mod staged;

pub use engine::{
    enforcement_finding, ClusterPolicyRef, Decision, Direction, EndpointId, Enforcement, Engine,
    Objects, Peer, Query, Warning,
};
pub use model::Endpoint;
pub use ports::Protocol;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use model::WorkloadRef;
use selector::Selector;

/// A workload object with a pod template.
pub trait PodTemplateOwner {
    const KIND: &'static str;
    fn meta(&self) -> &ObjectMeta;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn pod_selector(&self) -> Option<Selector>;

    fn workload_ref(&self) -> WorkloadRef<'_> {
        WorkloadRef {
            kind: Self::KIND,
            meta: self.meta(),
            template: self.template(),
            selector: self.pod_selector(),
        }
    }
}

fn selector_of(s: &LabelSelector) -> Option<Selector> {
    Selector::try_from(s).ok()
}

macro_rules! template_owner {
    ($ty:ty, $kind:literal, |$o:ident| $tmpl:expr, |$s:ident| $sel:expr) => {
        impl PodTemplateOwner for $ty {
            const KIND: &'static str = $kind;
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn template(&self) -> Option<&PodTemplateSpec> {
                let $o = self;
                $tmpl
            }
            fn pod_selector(&self) -> Option<Selector> {
                let $s = self;
                $sel
            }
        }
    };
}

template_owner!(Deployment, "Deployment", |o| Some(&o.spec.template), |o| {
    selector_of(&o.spec.selector)
});
template_owner!(
    ReplicaSet,
    "ReplicaSet",
    |o| o.spec.template.as_ref(),
    |o| selector_of(&o.spec.selector)
);
template_owner!(
    StatefulSet,
    "StatefulSet",
    |o| Some(&o.spec.template),
    |o| selector_of(&o.spec.selector)
);
template_owner!(DaemonSet, "DaemonSet", |o| Some(&o.spec.template), |o| {
    selector_of(&o.spec.selector)
});
template_owner!(Job, "Job", |o| o.spec.as_ref().map(|s| &s.template), |o| o
    .spec
    .as_ref()
    .and_then(|s| s.selector.as_ref())
    .and_then(selector_of));
template_owner!(
    CronJob,
    "CronJob",
    |o| o.spec.job_template.spec.as_ref().map(|s| &s.template),
    |o| o
        .spec
        .job_template
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .map(Selector::from_match_labels)
);
template_owner!(
    ReplicationController,
    "ReplicationController",
    |o| o.spec.as_ref().and_then(|s| s.template.as_ref()),
    |o| o
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .map(Selector::from_match_labels)
);

impl<'a> Objects<'a> {
    /// The objects of an inventory (or a cluster index snapshot) that
    /// NetworkPolicy semantics look at; other kinds are ignored.
    pub fn from_inventory(objects: &'a [crate::inventory::Object]) -> Objects<'a> {
        use crate::inventory::Object as O;
        let mut out = Objects::default();
        for o in objects {
            match o {
                O::Namespace(n) => out.namespaces.push(n),
                O::Pod(p) => out.pods.push(p),
                O::NetworkPolicy(p) => out.policies.push(p),
                O::Deployment(w) => out.workloads.push(w.workload_ref()),
                O::ReplicaSet(w) => out.workloads.push(w.workload_ref()),
                O::StatefulSet(w) => out.workloads.push(w.workload_ref()),
                O::DaemonSet(w) => out.workloads.push(w.workload_ref()),
                O::Job(w) => out.workloads.push(w.workload_ref()),
                O::CronJob(w) => out.workloads.push(w.workload_ref()),
                O::ReplicationController(w) => out.workloads.push(w.workload_ref()),
                O::Node(n) => out.nodes.push(n),
                O::ClusterNetworkPolicy(_)
                | O::AdminNetworkPolicy(_)
                | O::BaselineAdminNetworkPolicy(_) => {
                    out.cluster_policies.extend(ClusterPolicyRef::of(o));
                }
                // Staged objects are never live: see `staged::Overlay`.
                O::Service(_)
                | O::ServiceAccount(_)
                | O::SegmentationPolicy(_)
                | O::StagedNetworkPolicy(_)
                | O::StagedClusterNetworkPolicy(_) => {}
            }
        }
        out
    }
}
