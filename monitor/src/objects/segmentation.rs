//! The `segwatch.dev/v1alpha1` `SegmentationPolicy` resource, exactly the
//! shape of CONTRACT.md "SegmentationPolicy (the whitelist)".
//!
//! These types are the wire format only (what users write, what the API
//! server stores, what `deploy` turns into the CRD). Nothing evaluates them
//! directly: [`crate::segpolicy`] validates them into compiled rules first.
//!
//! Every struct denies unknown fields, so a typo such as `crossNamespaces`
//! is an error with its field path instead of a silently empty rule. (kube's
//! schema rewriter drops the resulting `additionalProperties: false`, which
//! structural CRD schemas do not allow; the API server prunes unknown fields
//! on its own.)

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The whitelist of allowed traffic. Several documents are unioned.
///
/// Cluster-scoped: it speaks about traffic between namespaces, so it belongs
/// to no single namespace.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "segwatch.dev",
    version = "v1alpha1",
    kind = "SegmentationPolicy",
    plural = "segmentationpolicies",
    shortname = "segpol",
    derive = "PartialEq",
    derive = "Default",
    status = "SegmentationPolicyStatus",
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "Whitelist of allowed traffic between namespaces, to nodes, to the cloud metadata API and to the outside; segwatch flags everything else as a violation."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SegmentationPolicySpec {
    /// Traffic between pods of different namespaces. Absent in every
    /// document: the baseline's kube-dns rule only holds when no policy exists
    /// at all; with policies, all cross-namespace traffic not listed is a
    /// violation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_namespace: Option<CrossNamespace>,
    /// Micro-segmentation inside namespaces: a namespace listed here allows
    /// only what it lists; other namespaces allow all their internal traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub within_namespace: Vec<WithinNamespace>,
    /// Pod to any address of a node (host ports, kubelet, node-local services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_access: Option<HostAccess>,
    /// The cloud instance metadata API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_api: Option<MetadataApi>,
    /// Traffic to addresses outside the cluster. Absent in every document:
    /// outside traffic is not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
}

/// What the segwatch agents report about the policy (written by them, never
/// read for judging).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SegmentationPolicyStatus {
    /// `Accepted`: `True` while this version is valid and in force; `False`
    /// (reason `Invalid`, the problem with its field path as the message)
    /// when it is not; the previous valid version then stays in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrossNamespace {
    #[serde(default)]
    pub allow: Vec<PodRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WithinNamespace {
    /// The namespace this section micro-segments (a name, not `*`).
    pub namespace: String,
    #[serde(default)]
    pub allow: Vec<PodRule>,
}

/// A pod-to-pod rule: `from` pods may open flows to `to` pods on `to.ports`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRule {
    /// Shown as the rule in verdicts; default: `<policy>/<section>[<index>]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The opening side. Absent: any pod.
    #[serde(default)]
    pub from: PodPeer,
    /// The answering side. Absent: any pod, any port.
    #[serde(default)]
    pub to: PodPeer,
}

/// Pods selected by ALL of the fields given; no field given = every pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodPeer {
    /// A namespace name, or `*` for every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Namespaces by their labels (Kubernetes label selector semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods by their labels (Kubernetes label selector semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// The pod's service account name (`spec.serviceAccountName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Destination ports, `PORT/PROTO` or `FIRST-LAST/PROTO` with PROTO one of
    /// TCP, UDP, SCTP. Only meaningful on the answering side (`to`). Absent:
    /// any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostAccess {
    #[serde(default)]
    pub allow: Vec<SourceRule>,
}

/// A rule whose destination is fixed by its section (node, metadata API).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The opening pods. Absent: any pod.
    #[serde(default)]
    pub from: PodPeer,
    /// Destination ports (see [`PodPeer::ports`]). Absent: any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetadataApi {
    /// Addresses of the metadata API. Absent: `169.254.169.254` and
    /// `fd00:ec2::254` (AWS, GCP, Azure, OpenStack all use the IPv4 one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    #[serde(default)]
    pub allow: Vec<SourceRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct External {
    #[serde(default)]
    pub allow: Vec<ExternalRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The opening pods. Absent: any pod.
    #[serde(default)]
    pub from: PodPeer,
    pub to: ExternalPeer,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalPeer {
    /// An IPv4 or IPv6 CIDR, e.g. `0.0.0.0/0` or `2001:db8::/32`.
    pub cidr: String,
    /// Destination ports (see [`PodPeer::ports`]). Absent: any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<String>>,
}
