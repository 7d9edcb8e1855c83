//! SegmentationPolicy: the whitelist segwatch judges flows against
//! (CONTRACT.md "SegmentationPolicy (the whitelist)").
//!
//! ```text
//!  --policy files ─┐
//!  inventory files ├─► crd::SegmentationPolicy ──compile──► CompiledPolicy (validated,
//!  API server (CRD)┘     (wire format, serde)                 unioned) ──► evaluate(flow)
//! ```

/// The wire format lives with the other kinds' in [`crate::objects`].
pub use crate::objects::segmentation as crd;
pub mod policy;
pub mod ports;
pub mod selector;

pub use crd::{SegmentationPolicy, SegmentationPolicySpec};
pub use policy::{
    CompiledDoc, CompiledPolicy, Decision, End, FlowView, PeerMasks, PolicyError, ViolationReason,
};
pub use ports::{PortRange, PortSet, L4};
pub use selector::{LabelMatch, Peer, PodFacts};

use std::path::PathBuf;
use std::sync::Arc;

use crate::inventory::{self, InventoryError, Object};

/// Reads `--policy` paths (files or directories, like `--inventory`) and
/// validates every document. Stricter than the inventory: every document
/// must be a valid SegmentationPolicy, anything else is an error naming the
/// file, the document and the field path, because a policy silently dropped
/// would turn violations into silence.
pub fn load_policy_paths(paths: &[PathBuf]) -> Result<Vec<Arc<CompiledDoc>>, InventoryError> {
    let inv = inventory::load_paths_strict(paths)?;
    compile_documents(inv, paths.first().cloned().unwrap_or_default())
}

/// [`load_policy_paths`] for one file's text (`file` only names it in
/// messages); the fuzz target `segpolicy` drives this.
pub fn parse_policy_str(
    file: &std::path::Path,
    text: &str,
) -> Result<Vec<Arc<CompiledDoc>>, InventoryError> {
    let inv = inventory::parse_str_strict(file, text)?;
    compile_documents(inv, file.to_path_buf())
}

/// Every document must be a valid SegmentationPolicy; `first` names the
/// file in the message about unknown kinds.
fn compile_documents(
    inv: inventory::StrictInventory,
    first: PathBuf,
) -> Result<Vec<Arc<CompiledDoc>>, InventoryError> {
    let mut out = Vec::new();
    for (obj, origin) in inv.objects.into_iter().zip(inv.origins) {
        match obj {
            Object::SegmentationPolicy(p) => {
                let doc = CompiledDoc::compile(&p).map_err(|e| InventoryError::Invalid {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
                out.push(Arc::new(doc));
            }
            other => {
                return Err(InventoryError::Invalid {
                    origin,
                    message: format!(
                    "expected kind SegmentationPolicy (apiVersion segwatch.dev/v1alpha1), found {}",
                    other.describe()
                ),
                })
            }
        }
    }
    if inv.warnings.iter().any(|w| !w.is_empty()) {
        // Unknown kinds in a policy file are errors too.
        return Err(InventoryError::Invalid {
            origin: inventory::Origin {
                file: first,
                document: 0,
                item: None,
            },
            message: inv.warnings.join("; "),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt as _;

    #[test]
    fn policy_files_are_validated_with_file_document_and_path() {
        let dir = std::env::temp_dir().join(format!("segwatch-pol-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("policy.yaml");
        std::fs::write(
            &f,
            "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: ok}\nspec: {}\n---\n\
             apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: bad}\n\
             spec: {hostAccess: {allow: [{ports: ['22/TCPX']}]}}\n",
        )
        .expect("write");
        let err =
            load_policy_paths(std::slice::from_ref(&f)).expect_err("bad port must be rejected");
        let msg = err.to_string();
        for part in [
            "policy.yaml",
            "document 2",
            "spec.hostAccess.allow[0].ports[0]",
            "TCPX",
        ] {
            assert!(msg.contains(part), "error must name `{part}`: {msg}");
        }
        std::fs::write(&f, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
            .expect("write");
        let err =
            load_policy_paths(std::slice::from_ref(&f)).expect_err("a ConfigMap is no policy");
        assert!(err.to_string().contains("ConfigMap"), "{err}");
        std::fs::write(&f, "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: ok}\nspec: {}\n").expect("write");
        let docs = load_policy_paths(std::slice::from_ref(&f)).expect("valid policy loads");
        assert_eq!(docs[0].name, "ok");
    }

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
