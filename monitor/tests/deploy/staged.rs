//! deploy/base/crd-staged.yaml: the StagedNetworkPolicy and
//! StagedClusterNetworkPolicy CRDs are structural (the API server's rules:
//! every node typed, or explicitly open with
//! x-kubernetes-preserve-unknown-fields), name the kinds, plurals and scopes
//! the daemon watches, are part of the kustomization, and the role lets the
//! daemon read them.

use super::crd::structural_problems;
use super::*;
use segwatch::inventory::ObjectKind;

/// The documents of a file in deploy/base.
fn docs(file: &str) -> Vec<Value> {
    yaml_docs(&deploy().join("base").join(file))
}

#[test]
fn staged_crds_are_structural_and_match_what_the_daemon_watches() {
    let crds = docs("crd-staged.yaml");
    assert_eq!(crds.len(), 2, "one CRD per staged kind");
    for (kind, plural) in [
        (ObjectKind::StagedNetworkPolicy, "stagednetworkpolicies"),
        (
            ObjectKind::StagedClusterNetworkPolicy,
            "stagedclusternetworkpolicies",
        ),
    ] {
        let crd = crds
            .iter()
            .find(|c| c["spec"]["names"]["kind"] == kind.as_str())
            .unwrap_or_else(|| panic!("a CRD for {kind}"));
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        assert_eq!(crd["metadata"]["name"], format!("{plural}.segwatch.dev"));
        assert_eq!(crd["spec"]["group"], "segwatch.dev");
        assert_eq!(crd["spec"]["names"]["plural"], plural);
        let scope = if kind.is_namespaced() {
            "Namespaced"
        } else {
            "Cluster"
        };
        assert_eq!(
            crd["spec"]["scope"], scope,
            "{kind}: scope as the daemon reads it"
        );
        assert!(
            segwatch::index::WATCHED_RESOURCES.contains(&("segwatch.dev", plural)),
            "the daemon watches {plural}"
        );
        let versions = crd["spec"]["versions"].as_array().expect("versions");
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0]["name"], "v1alpha1");
        let schema = &versions[0]["schema"]["openAPIV3Schema"];
        let mut p = Vec::new();
        structural_problems(schema, "", &mut p);
        assert!(
            p.is_empty(),
            "{kind}: not structural:\n  {}",
            p.join("\n  ")
        );
        let action = &schema["properties"]["spec"]["properties"]["action"]["enum"];
        assert_eq!(action, &json!(["Set", "Delete"]), "{kind}: spec.action");

        // Control: the checker catches an untyped node.
        let mut broken = schema.clone();
        broken["properties"]["spec"]
            .as_object_mut()
            .expect("spec schema")
            .remove("type");
        let mut p = Vec::new();
        structural_problems(&broken, "", &mut p);
        assert_eq!(p, [".spec: no type"]);
    }
}

#[test]
fn staged_crds_are_deployed_and_readable_by_the_daemon() {
    let k =
        std::fs::read_to_string(deploy().join("base/kustomization.yaml")).expect("kustomization");
    assert!(
        k.contains("- crd-staged.yaml"),
        "the kustomization applies crd-staged.yaml"
    );
    let role = docs("clusterrole.yaml");
    let rules = role[0]["rules"].as_array().expect("rules");
    for plural in ["stagednetworkpolicies", "stagedclusternetworkpolicies"] {
        assert!(
            rules
                .iter()
                .any(|r| r["apiGroups"] == json!(["segwatch.dev"])
                    && r["resources"]
                        .as_array()
                        .is_some_and(|rs| rs.iter().any(|x| x == plural))
                    && r["verbs"] == json!(["get", "list", "watch"])),
            "the segwatch ClusterRole reads {plural}"
        );
    }
}
