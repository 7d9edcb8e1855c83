//! The SegmentationPolicy CRD: what `segwatch crd` prints, and a structural
//! schema.

use super::*;

#[test]
fn crd_in_deploy_is_what_segwatch_crd_prints() {
    let (ok, out) = {
        let o = Command::new(env!("CARGO_BIN_EXE_segwatch"))
            .arg("crd")
            .output()
            .expect("run segwatch crd");
        (o.status.success(), o)
    };
    assert!(
        ok,
        "segwatch crd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    let path = deploy().join("base/crd.yaml");
    let shipped = std::fs::read_to_string(&path).expect("read deploy/base/crd.yaml");
    if printed != shipped {
        let fresh = scratch("regenerated").join("crd.yaml");
        std::fs::write(&fresh, &printed).expect("write regenerated CRD");
        panic!(
            "deploy/base/crd.yaml and the SegmentationPolicy type disagree (the generated CRD is {}); \
             regenerate: cargo run -p monitor -- crd > deploy/base/crd.yaml",
            rel(&fresh)
        );
    }
}

// ------------------------------------------- structural CRD schema

/// Where a CRD schema breaks the API server's structural-schema rules
/// (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema):
/// every node has a type (unless int-or-string or preserve-unknown-fields),
/// no `additionalProperties` beside `properties`, no `$ref`. Logical
/// junctors (oneOf, anyOf, allOf, not) carry extra rules this check does not
/// implement, so it rejects them until it does.
pub(super) fn structural_problems(schema: &Value, path: &str, out: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        out.push(format!("{path}: not a schema object"));
        return;
    };
    let exempt = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !exempt
        && !node
            .get("type")
            .is_some_and(|t| t.as_str().is_some_and(|t| !t.is_empty()))
    {
        out.push(format!("{path}: no type"));
    }
    if node.contains_key("properties") && node.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    for k in ["$ref", "oneOf", "anyOf", "allOf", "not"] {
        if node.contains_key(k) {
            out.push(format!("{path}: {k} (not supported by this check)"));
        }
    }
    for (k, v) in node
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        structural_problems(v, &format!("{path}.{k}"), out);
    }
    if let Some(items) = node.get("items") {
        structural_problems(items, &format!("{path}[]"), out);
    }
    if let Some(ap) = node.get("additionalProperties").filter(|v| v.is_object()) {
        structural_problems(ap, &format!("{path}{{}}"), out);
    }
}

#[test]
fn crd_schema_is_structural() {
    let objects = kustomize(&deploy());
    let crd = &find_named(&objects, "CustomResourceDefinition", SEGPOL_CRD).value;
    for v in crd["spec"]["versions"].as_array().expect("versions") {
        let schema = &v["schema"]["openAPIV3Schema"];
        let mut problems = Vec::new();
        structural_problems(schema, "", &mut problems);
        assert!(
            problems.is_empty(),
            "version {}: the API server would reject this schema as not structural:\n  {}",
            v["name"],
            problems.join("\n  ")
        );
        // Control: a node without a type is caught.
        let mut broken = schema.clone();
        broken["properties"]["spec"]
            .as_object_mut()
            .expect("spec schema")
            .remove("type");
        let mut problems = Vec::new();
        structural_problems(&broken, "", &mut problems);
        assert_eq!(problems, [".spec: no type"]);
    }
}
