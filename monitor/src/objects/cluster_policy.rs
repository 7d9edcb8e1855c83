//! `policy.networking.k8s.io` ClusterNetworkPolicy (v1alpha2), and the
//! deprecated AdminNetworkPolicy / BaselineAdminNetworkPolicy (v1alpha1),
//! as read: `crate::netpol::cluster` validates the raw spec.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A cluster-scoped policy object as read from a file or the API server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterPolicyObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Kept raw; `netpol::cluster::ClusterSpec::parse` validates it, so
    /// that an error names the field and an unknown peer field is seen.
    #[serde(default)]
    pub spec: Value,
}
