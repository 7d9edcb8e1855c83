//! SegmentationPolicy: the whitelist segwatch judges flows against
//! (CONTRACT.md "SegmentationPolicy (the whitelist)").
//!
//! ```text
//!  --policy files ─┐
//!  inventory files ├─► crd::SegmentationPolicy ──compile──► CompiledPolicy (validated,
//!  API server (CRD)┘     (wire format, serde)                 unioned) ──► evaluate(flow)
//! ```

pub mod crd;

pub use crd::{SegmentationPolicy, SegmentationPolicySpec};

use std::path::PathBuf;

use crate::inventory::{self, InventoryError, Object};

/// Reads `--policy` paths (files or directories, like `--inventory`).
/// Stricter than the inventory: every document must be a valid
/// SegmentationPolicy, anything else is an error naming the file, the
/// document and the field path, because a policy silently dropped would turn
/// violations into silence.
pub fn load_policy_paths(paths: &[PathBuf]) -> Result<Vec<SegmentationPolicy>, InventoryError> {
    let inv = inventory::load_paths_strict(paths)?;
    let mut out = Vec::new();
    for (obj, origin) in inv.objects.into_iter().zip(inv.origins) {
        match obj {
            Object::SegmentationPolicy(p) => out.push(p),
            other => {
                return Err(InventoryError::Invalid {
                    origin,
                    message: format!(
                    "expected kind SegmentationPolicy (apiVersion segwatch.dev/v1alpha1), found {}",
                    other.kind().as_str()
                ),
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt as _;

    #[test]
    fn crd_is_generated_cluster_scoped_with_a_structural_schema() {
        let crd = SegmentationPolicy::crd();
        assert_eq!(crd.spec.group, "segwatch.dev");
        assert_eq!(crd.spec.names.plural, "segmentationpolicies");
        assert_eq!(
            crd.spec.scope, "Cluster",
            "policies speak about traffic between namespaces"
        );
        let yaml = serde_yaml_ng::to_string(&crd).expect("CRD serialises");
        assert!(
            yaml.contains("crossNamespace") && yaml.contains("metadataApi"),
            "{yaml}"
        );
        assert!(
            !yaml.contains("additionalProperties: false"),
            "structural schemas may not carry additionalProperties: false:\n{yaml}"
        );
    }
}
