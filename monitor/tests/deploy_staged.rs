//! deploy/base/crd-staged.yaml: the StagedNetworkPolicy and
//! StagedClusterNetworkPolicy CRDs are structural (the API server's rules:
//! every node typed, or explicitly open with
//! x-kubernetes-preserve-unknown-fields), name the kinds, plurals and scopes
//! the daemon watches, are part of the kustomization, and the role lets the
//! daemon read them.

use std::path::{Path, PathBuf};

use segwatch::inventory::ObjectKind;
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy/base")
}

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy().join(file))
        .unwrap_or_else(|e| panic!("read deploy/base/{file}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Structural-schema problems (subset of the API server's rules that a
/// hand-written schema can break): a node without `type` that is not
/// explicitly open, `properties` under a non-object, `items` missing on an
/// array.
fn problems(node: &Value, path: &str, out: &mut Vec<String>) {
    let open = node["x-kubernetes-preserve-unknown-fields"] == true
        || node["x-kubernetes-int-or-string"] == true;
    match node["type"].as_str() {
        None if !open => out.push(format!("{path}: no type")),
        Some("array") if node.get("items").is_none() => {
            out.push(format!("{path}: array without items"))
        }
        Some(t) if t != "object" && node.get("properties").is_some() => {
            out.push(format!("{path}: properties on type {t}"));
        }
        _ => {}
    }
    for (k, v) in node["properties"].as_object().into_iter().flatten() {
        problems(v, &format!("{path}.{k}"), out);
    }
    if let Some(items) = node.get("items") {
        problems(items, &format!("{path}[]"), out);
    }
    if let Some(ap) = node.get("additionalProperties").filter(|v| v.is_object()) {
        problems(ap, &format!("{path}{{}}"), out);
    }
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
        problems(schema, "", &mut p);
        assert!(
            p.is_empty(),
            "{kind}: not structural:\n  {}",
            p.join("\n  ")
        );
        let action = &schema["properties"]["spec"]["properties"]["action"]["enum"];
        assert_eq!(
            action,
            &serde_json::json!(["Set", "Delete"]),
            "{kind}: spec.action"
        );

        // Control: the checker catches an untyped node.
        let mut broken = schema.clone();
        broken["properties"]["spec"]
            .as_object_mut()
            .expect("spec schema")
            .remove("type");
        let mut p = Vec::new();
        problems(&broken, "", &mut p);
        assert_eq!(p, [".spec: no type"]);
    }
}

#[test]
fn staged_crds_are_deployed_and_readable_by_the_daemon() {
    let k = std::fs::read_to_string(deploy().join("kustomization.yaml")).expect("kustomization");
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
                .any(|r| r["apiGroups"] == serde_json::json!(["segwatch.dev"])
                    && r["resources"]
                        .as_array()
                        .is_some_and(|rs| rs.iter().any(|x| x == plural))
                    && r["verbs"] == serde_json::json!(["get", "list", "watch"])),
            "the segwatch ClusterRole reads {plural}"
        );
    }
}
