//! `segwatch.dev/v1alpha1` StagedNetworkPolicy as read: a NetworkPolicy
//! spec plus `action`. What it does to the live set is
//! `crate::netpol::staged`'s.

use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// What a staged object does to the live set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StagedAction {
    /// Adds the policy, or replaces the live one of the same name.
    #[default]
    Set,
    /// Removes the live policy of the same name.
    Delete,
}

impl StagedAction {
    fn is_set(&self) -> bool {
        *self == StagedAction::Set
    }
}

/// `segwatch.dev/v1alpha1` StagedNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StagedNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: StagedNetworkPolicySpec,
}

/// A `networking.k8s.io/v1` NetworkPolicy spec plus `action`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagedNetworkPolicySpec {
    #[serde(default, skip_serializing_if = "StagedAction::is_set")]
    pub action: StagedAction,
    #[serde(flatten)]
    pub policy: NetworkPolicySpec,
}
