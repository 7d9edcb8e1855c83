//! deploy/examples: SegmentationPolicy examples against the CRD's schema.

use super::*;

const SCHEMA_CHECK: &str = r#"
import json, sys
import jsonschema

def strict(s):
    # A CRD schema is OpenAPI v3: `nullable` allows null, and the API server
    # rejects unknown fields under kubectl's default --validate=strict
    # unless x-kubernetes-preserve-unknown-fields says otherwise.
    s = dict(s)
    if s.get("nullable") is True and isinstance(s.get("type"), str):
        s["type"] = [s["type"], "null"]
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            s[key] = strict(s[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            s[key] = [strict(x) for x in s[key]]
    return s

inp = json.load(sys.stdin)
validator = jsonschema.Draft7Validator(strict(inp["schema"]))
for doc in inp["docs"]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    print(json.dumps(["%s: %s" % (".".join(map(str, e.path)) or "<root>", e.message) for e in errors]))
"#;

/// Validates documents against a CRD version's schema (with apiVersion, kind
/// and metadata removed: the API server handles those itself). One list of
/// error messages per document.
fn schema_errors(python: &Path, schema: &Value, docs: &[Value]) -> Vec<Vec<String>> {
    let bodies: Vec<Value> = docs
        .iter()
        .map(|d| {
            let mut d = d.clone();
            let o = d.as_object_mut().expect("object");
            for k in ["apiVersion", "kind", "metadata"] {
                o.remove(k);
            }
            d
        })
        .collect();
    let input = serde_json::json!({"schema": schema, "docs": bodies});
    let mut child = Command::new(python)
        .args(["-c", SCHEMA_CHECK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.to_string().as_bytes())
            .expect("write schema check input");
    }
    let out = child.wait_with_output().expect("schema check");
    assert!(
        out.status.success(),
        "schema check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON list per document"))
        .collect()
}

/// python3 of our venv, where kubernetes-validate brought jsonschema.
fn venv_python() -> Option<PathBuf> {
    let kv = tool("kubernetes-validate", "PyPI kubernetes-validate")?;
    let python = kv.with_file_name("python3");
    if python.is_file() {
        return Some(python);
    }
    let msg = format!("{} not found next to kubernetes-validate", python.display());
    assert!(!require_tools(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

#[test]
fn segmentation_policy_examples_match_the_crd_schema() {
    let objects = kustomize(&deploy());
    let crd = &find_named(&objects, "CustomResourceDefinition", SEGPOL_CRD).value;
    let group = crd["spec"]["group"].as_str().expect("group");
    let kind = crd["spec"]["names"]["kind"].as_str().expect("kind");
    let cluster_scoped = crd["spec"]["scope"] == "Cluster";
    let versions = crd["spec"]["versions"].as_array().expect("versions");

    let mut examples = Vec::new();
    for f in manifest_files() {
        for d in yaml_docs(&f) {
            if d["kind"] == kind {
                examples.push((rel(&f), d));
            }
        }
    }
    assert!(!examples.is_empty(), "deploy/examples/ holds a {kind}");
    for (file, d) in &examples {
        let api = d["apiVersion"].as_str().expect("apiVersion");
        let (g, v) = api.split_once('/').expect("group/version");
        assert_eq!(g, group, "{file}");
        assert!(
            versions
                .iter()
                .any(|x| x["name"] == v && x["served"] == true),
            "{file}: version {v} is not served by the CRD"
        );
        let name = d["metadata"]["name"].as_str().expect("metadata.name");
        assert!(
            !name.is_empty()
                && name.len() <= 253
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
            "{file}: metadata.name {name:?} is not a DNS subdomain"
        );
        assert_eq!(
            d["metadata"].get("namespace").is_some(),
            !cluster_scoped,
            "{file}: namespace must match the CRD's scope"
        );
    }

    // The daemon's own strict loader (what `--policy` uses) must take them.
    let example_files: Vec<PathBuf> = examples.iter().map(|(f, _)| root().join(f)).collect();
    let loaded = segwatch::segpolicy::load_policy_paths(&example_files)
        .unwrap_or_else(|e| panic!("segwatch rejects the examples: {e}"));
    assert_eq!(loaded.len(), examples.len());

    let Some(python) = venv_python() else {
        return;
    };
    for version in versions {
        let schema = &version["schema"]["openAPIV3Schema"];
        let docs: Vec<Value> = examples.iter().map(|(_, d)| d.clone()).collect();
        for ((file, _), errors) in examples.iter().zip(schema_errors(&python, schema, &docs)) {
            assert!(
                errors.is_empty(),
                "{file} does not match the CRD schema: {errors:?}"
            );
        }
        // Negative controls: the schema check must reject a misspelt section
        // and a wrongly typed field.
        let mut typo = examples[0].1.clone();
        typo["spec"]["crossNamespaces"] = serde_json::json!({"allow": []});
        let mut wrong_type = examples[0].1.clone();
        wrong_type["spec"]["crossNamespace"]["allow"][0]["to"]["ports"] = "53/UDP".into();
        let errs = schema_errors(&python, schema, &[typo, wrong_type]);
        assert!(
            errs[0].iter().any(|e| e.contains("crossNamespaces")),
            "an unknown field must be rejected: {:?}",
            errs[0]
        );
        assert!(
            errs[1].iter().any(|e| e.contains("ports")),
            "a string where a list belongs must be rejected: {:?}",
            errs[1]
        );
    }
}
