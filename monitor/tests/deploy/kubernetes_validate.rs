//! Every manifest through `kubernetes-validate --strict`.

use super::*;

#[test]
fn manifests_pass_kubernetes_validate_strict() {
    let Some(kv) = tool("kubernetes-validate", "PyPI kubernetes-validate") else {
        return;
    };
    let files = manifest_files();
    let mut builtin_docs = 0;
    let mut custom_docs: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        for d in yaml_docs(f) {
            let kind = d["kind"].as_str().unwrap_or("").to_string();
            if CUSTOM_KINDS.contains(&kind.as_str()) {
                custom_docs.insert(rel(f), kind);
            } else {
                builtin_docs += 1;
            }
        }
    }
    // The oldest Kubernetes the README claims, and the newest the tool knows.
    for version in [Some("1.30"), None] {
        let mut cmd = Command::new(&kv);
        cmd.current_dir(root()).arg("--strict");
        if let Some(v) = version {
            cmd.args(["--kubernetes-version", v]);
        }
        cmd.args(files.iter().map(|f| rel(f)));
        let (ok, out) = run(&mut cmd);
        let label = version.unwrap_or("latest");
        assert!(ok, "kubernetes-validate --strict ({label}) failed:\n{out}");
        let mut passed = 0;
        for line in out.lines() {
            if line.starts_with("INFO ") && line.contains(" passed for resource ") {
                passed += 1;
            } else if let Some(rest) = line.strip_prefix("WARN ") {
                // Only "no schema" for the custom kinds is acceptable.
                let file = rest.split_whitespace().next().unwrap_or("");
                let kind = custom_docs.get(file);
                assert!(
                    kind.is_some_and(
                        |k| rest.contains(&format!("Couldn't find schema for kind {k} "))
                    ),
                    "unexpected kubernetes-validate warning ({label}): {line}"
                );
            } else if !line.trim().is_empty() {
                panic!("unexpected kubernetes-validate output ({label}): {line}\n{out}");
            }
        }
        assert_eq!(
            passed, builtin_docs,
            "every built-in object must be validated ({label}):\n{out}"
        );
    }
}

#[test]
fn kubernetes_validate_rejects_a_misspelt_field() {
    // The negative control for the test above: --strict must really reject
    // unknown fields, or "passed" would mean nothing.
    let Some(kv) = tool("kubernetes-validate", "PyPI kubernetes-validate") else {
        return;
    };
    let src = std::fs::read_to_string(deploy().join("base/daemonset.yaml")).expect("daemonset");
    let bad = src.replacen("hostNetwork: true", "hostNetwerk: true", 1);
    assert_ne!(src, bad);
    let path = scratch("kv-negative").join("daemonset.yaml");
    std::fs::write(&path, bad).expect("write scratch manifest");
    let (ok, out) = run(Command::new(&kv).arg("--strict").arg(&path));
    assert!(
        !ok && out.contains("hostNetwerk"),
        "kubernetes-validate --strict must reject an unknown field:\n{out}"
    );
}
