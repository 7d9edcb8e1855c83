//! Offline checks of everything in `deploy/`: no cluster and no container
//! engine needed, so they run in every `cargo test`.
//!
//! ```text
//!  deploy/kustomization.yaml ─► resolve resources ─► objects ─┬─► kubernetes-validate --strict
//!  deploy/monitoring/...                                      ├─► DaemonSet security posture
//!                                                             ├─► ClusterRole == what the index watches
//!                                                             └─► labels/ports wired consistently
//!  deploy/examples/*.yaml ─► the CRD's openAPIV3Schema (jsonschema) and the Rust type
//!  deploy/prometheus/ ─► promtool check rules + test rules; == PrometheusRule's groups
//!  deploy/grafana/ ─► PromQL parses (promtool), names only exported metrics and labels
//!  deploy/Containerfile ─► multi-stage, distroless, toolchain pins == the build's
//! ```
//!
//! What `kubernetes-validate` cannot check offline: custom resources
//! (ServiceMonitor, PrometheusRule, SegmentationPolicy) have no bundled
//! schema, and it says so with a WARN. The SegmentationPolicy examples are
//! validated against our own CRD's schema here instead; the Prometheus
//! Operator objects only structurally (their rules through promtool, their
//! selectors against the Service). The CRD's schema is checked against the
//! main structural-schema rules. Not checked offline: admission (Pod
//! Security, quotas), CEL rules, and whether a real API server, kubelet and
//! container runtime accept it all; the agent itself is run under the
//! DaemonSet's privileges (last test), not in a cluster.
//!
//! External tools (kubernetes-validate and python3 with jsonschema from
//! target/tools/venv, promtool from Debian's `prometheus`): a missing one
//! fails the test when SEGWATCH_REQUIRE_PRIVILEGED=1 (CI), otherwise the test
//! prints SKIPPED and passes.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

// ---------------------------------------------------------------- helpers

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("monitor/ has a parent")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every non-empty YAML document of a file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", rel(path)));
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} document {i}: invalid YAML: {e}", rel(path)));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

fn yaml_one(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(
        docs.len(),
        1,
        "{} must hold exactly one document",
        rel(path)
    );
    docs.remove(0)
}

/// A manifest object and the file it came from.
#[derive(Clone, Debug)]
struct Object {
    file: PathBuf,
    value: Value,
}

impl Object {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Resolves a kustomization the way `kubectl apply -k` does for the subset
/// we use: `resources` only, files and directories. Anything else in the
/// kustomization (patches, generators, name prefixes...) would change the
/// objects, so it fails the test instead of being silently ignored.
fn kustomize(dir: &Path) -> Vec<Object> {
    let kfile = dir.join("kustomization.yaml");
    let k = yaml_one(&kfile);
    let keys: BTreeSet<&str> = k
        .as_object()
        .unwrap_or_else(|| panic!("{} is not a mapping", rel(&kfile)))
        .keys()
        .map(String::as_str)
        .collect();
    let known: BTreeSet<&str> = ["apiVersion", "kind", "resources"].into();
    assert!(
        keys.is_subset(&known),
        "{}: this test resolves only `resources`; teach it {:?} before using them",
        rel(&kfile),
        keys.difference(&known).collect::<Vec<_>>()
    );
    let mut out = Vec::new();
    for r in k["resources"].as_array().expect("resources is a list") {
        let path = dir.join(r.as_str().expect("a resource is a path"));
        if path.is_dir() {
            out.extend(kustomize(&path));
        } else {
            assert!(
                path.is_file(),
                "{}: resource {} does not exist",
                rel(&kfile),
                rel(&path)
            );
            out.extend(yaml_docs(&path).into_iter().map(|value| Object {
                file: path.clone(),
                value,
            }));
        }
    }
    out
}

/// The SegmentationPolicy CRD (generated by `segwatch crd`).
pub const SEGPOL_CRD: &str = "segmentationpolicies.segwatch.dev";

fn find_named<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Object {
    objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifests"))
}

fn find<'a>(objects: &'a [Object], kind: &str) -> &'a Object {
    let found: Vec<&Object> = objects.iter().filter(|o| o.kind() == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} in the manifests"
    );
    found[0]
}

fn require_tools() -> bool {
    std::env::var("SEGWATCH_REQUIRE_PRIVILEGED").as_deref() == Ok("1")
}

/// An external tool: PATH first, then our venv. Missing: panic under
/// SEGWATCH_REQUIRE_PRIVILEGED=1, else a printed skip note and None.
fn tool(name: &str, installed_by: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    });
    let venv = root().join("target/tools/venv/bin").join(name);
    let found = on_path.or_else(|| venv.is_file().then_some(venv));
    if found.is_none() {
        let msg = format!("`{name}` not found on PATH or in target/tools/venv/bin ({installed_by}; `cargo xtask setup` installs it)");
        assert!(!require_tools(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn run(cmd: &mut Command) -> (bool, String) {
    let line = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target").join("deploy-tests").join(name);
    std::fs::create_dir_all(&dir).expect("create target/deploy-tests");
    dir
}

/// Kinds served by CustomResourceDefinitions: kubernetes-validate has no
/// schema for them (checked otherwise, see the module doc).
const CUSTOM_KINDS: [&str; 3] = ["ServiceMonitor", "PrometheusRule", "SegmentationPolicy"];

/// Every manifest file we ship, for kubernetes-validate.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    for dir in [
        deploy(),
        deploy().join("monitoring"),
        deploy().join("probe"),
    ] {
        for o in kustomize(&dir) {
            files.insert(o.file);
        }
    }
    // The probe's one-off Job (not in its kustomization: a Job is created,
    // not applied).
    files.insert(deploy().join("probe").join("job.yaml"));
    for e in std::fs::read_dir(deploy().join("examples")).expect("deploy/examples") {
        let p = e.expect("dir entry").path();
        // Kubernetes objects only: the examples also hold configuration of
        // other programs (the OpenTelemetry Collector's), which has no kind.
        if p.extension().is_some_and(|x| x == "yaml")
            && yaml_docs(&p).iter().all(|d| d.get("kind").is_some())
        {
            files.insert(p);
        }
    }
    files.into_iter().collect()
}

mod agent_privileges;
mod alerts;
mod clusterrole;
mod crd;
mod daemonset;
mod dashboard;
mod examples;
mod image;
mod kubernetes_validate;
mod layout;
mod probe;
mod promql;
mod staged;
