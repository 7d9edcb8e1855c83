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

fn find_named<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Object {
    objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifests"))
}

/// The SegmentationPolicy CRD (generated by `segwatch crd`).
const SEGPOL_CRD: &str = "segmentationpolicies.segwatch.dev";

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

// ------------------------------------------------------ layout and wiring

#[test]
fn kustomizations_list_every_manifest_and_nothing_else() {
    // deploy/ works on any cluster; monitoring/ adds the Prometheus Operator
    // objects; no YAML file in base/ or monitoring/ is left out.
    let base = kustomize(&deploy());
    let kinds: BTreeSet<&str> = base.iter().map(Object::kind).collect();
    let want: BTreeSet<&str> = [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Service",
    ]
    .into();
    assert_eq!(kinds, want, "deploy/ must hold exactly the agent's objects");
    let names = |kind: &str| -> BTreeSet<&str> {
        base.iter()
            .filter(|o| o.kind() == kind)
            .map(Object::name)
            .collect()
    };
    // The read-only role (what the index watches), the scrapers' role and
    // the status writer's; bindings for the agent's roles and to the
    // built-in system:auth-delegator (TokenReview, SubjectAccessReview).
    assert_eq!(
        names("ClusterRole"),
        [
            "segwatch",
            "segwatch-metrics-reader",
            "segwatch-policy-status"
        ]
        .into()
    );
    assert_eq!(
        names("ClusterRoleBinding"),
        [
            "segwatch",
            "segwatch-auth-delegator",
            "segwatch-policy-status"
        ]
        .into()
    );
    for kind in want
        .iter()
        .filter(|k| !k.starts_with("ClusterRole") && **k != "CustomResourceDefinition")
    {
        assert_eq!(names(kind).len(), 1, "one {kind} in deploy/");
    }
    // SegmentationPolicy here; the staged kinds' CRDs: tests/deploy_staged.rs.
    assert_eq!(
        names("CustomResourceDefinition"),
        [
            SEGPOL_CRD,
            "stagedclusternetworkpolicies.segwatch.dev",
            "stagednetworkpolicies.segwatch.dev"
        ]
        .into()
    );
    for kind in CUSTOM_KINDS {
        assert!(
            !kinds.contains(kind),
            "deploy/ must apply on a cluster without that CRD; {kind} belongs in monitoring/ or examples/"
        );
    }
    let monitoring = kustomize(&deploy().join("monitoring"));
    let extra: BTreeSet<&str> = monitoring
        .iter()
        .map(Object::kind)
        .filter(|k| !want.contains(k))
        .collect();
    assert_eq!(extra, ["PrometheusRule", "ServiceMonitor"].into());
    assert!(
        monitoring
            .iter()
            .any(|o| o.kind() == "ClusterRoleBinding" && o.name() == "segwatch-metrics-reader"),
        "monitoring/ binds the scraper role to Prometheus"
    );

    for dir in ["base", "monitoring"] {
        let listed: BTreeSet<PathBuf> = kustomize(&deploy().join(dir))
            .into_iter()
            .map(|o| o.file)
            .filter(|f| f.parent() == Some(&deploy().join(dir)))
            .collect();
        for e in std::fs::read_dir(deploy().join(dir)).expect("read dir") {
            let p = e.expect("dir entry").path();
            if p.extension().is_some_and(|x| x == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                assert!(
                    listed.contains(&p),
                    "{} is not listed in its kustomization.yaml",
                    rel(&p)
                );
            }
        }
    }

    // Namespaced objects live in `segwatch`; cluster-scoped ones have none.
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
    ];
    for o in &monitoring {
        let ns = o.value["metadata"]["namespace"].as_str();
        if cluster_scoped.contains(&o.kind()) {
            assert_eq!(ns, None, "{} {} is cluster-scoped", o.kind(), o.name());
        } else {
            assert_eq!(
                ns,
                Some("segwatch"),
                "{} {} must be in namespace segwatch",
                o.kind(),
                o.name()
            );
        }
    }
}

#[test]
fn service_and_service_monitor_select_the_agents_metrics_port() {
    let objects = kustomize(&deploy().join("monitoring"));
    let ds = &find(&objects, "DaemonSet").value;
    let svc = &find(&objects, "Service").value;
    let sm = &find(&objects, "ServiceMonitor").value;
    let binding = &find_named(&objects, "ClusterRoleBinding", "segwatch").value;
    let sa = find(&objects, "ServiceAccount");

    let pod_labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("pod template labels");
    let matches = |selector: &Value, labels: &serde_json::Map<String, Value>| {
        let sel = selector.as_object().expect("selector is a mapping");
        !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(
        matches(&ds["spec"]["selector"]["matchLabels"], pod_labels),
        "the DaemonSet selector must match its pod template"
    );
    assert!(
        matches(&svc["spec"]["selector"], pod_labels),
        "the Service must select the agent pods"
    );
    let svc_labels = svc["metadata"]["labels"]
        .as_object()
        .expect("Service labels");
    assert!(
        matches(&sm["spec"]["selector"]["matchLabels"], svc_labels),
        "the ServiceMonitor must select the Service"
    );
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!(["segwatch"])
    );
    // The alert rules expect job="segwatch": the ServiceMonitor's jobLabel
    // names a Service label whose value is that.
    let job_label = sm["spec"]["jobLabel"]
        .as_str()
        .expect("ServiceMonitor jobLabel");
    assert_eq!(svc_labels.get(job_label), Some(&Value::from("segwatch")));

    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let port = container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "metrics"))
        .expect("container port named metrics");
    assert_eq!(
        port["containerPort"], 9810,
        "CONTRACT: --metrics-addr default port 9810"
    );
    let svc_port = &svc["spec"]["ports"][0];
    assert_eq!(svc_port["name"], "metrics");
    assert_eq!(svc_port["targetPort"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");

    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"].as_str(),
        Some(sa.name())
    );
    assert_eq!(binding["subjects"][0]["name"].as_str(), Some(sa.name()));
    assert_eq!(
        binding["roleRef"]["name"],
        find_named(&objects, "ClusterRole", "segwatch").value["metadata"]["name"]
    );
}

#[test]
fn metrics_are_served_over_tls_to_authorized_scrapers_only_and_the_service_monitor_matches() {
    let objects = kustomize(&deploy().join("monitoring"));
    let ds = &find(&objects, "DaemonSet").value;
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&"--metrics-auth=kubernetes"),
        "HTTPS + TokenReview + SubjectAccessReview: {args:?}"
    );
    // Without certificate files the agent serves a self-signed one; with
    // them, both must be given.
    let cert = args.iter().any(|a| a.starts_with("--tls-cert-file"));
    let key = args.iter().any(|a| a.starts_with("--tls-private-key-file"));
    assert_eq!(cert, key, "certificate and key come together: {args:?}");

    let sm = &find(&objects, "ServiceMonitor").value;
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["scheme"], "https", "the agents serve HTTPS: {ep}");
    assert_eq!(
        ep["bearerTokenFile"], "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "Prometheus sends its ServiceAccount token: {ep}"
    );
    if cert {
        assert!(
            ep["tlsConfig"]["ca"].is_object(),
            "a served certificate from a CA is verified: {ep}"
        );
    } else {
        assert_eq!(
            ep["tlsConfig"]["insecureSkipVerify"], true,
            "a self-signed certificate cannot be verified: {ep}"
        );
    }
    let svc = &find(&objects, "Service").value;
    assert_eq!(svc["spec"]["ports"][0]["appProtocol"], "https");
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"],
        "https"
    );

    // The agent may ask the API server about tokens: bound to the built-in
    // system:auth-delegator (create tokenreviews, subjectaccessreviews).
    let sa = find(&objects, "ServiceAccount");
    let delegator = &find_named(&objects, "ClusterRoleBinding", "segwatch-auth-delegator").value;
    assert_eq!(delegator["roleRef"]["kind"], "ClusterRole");
    assert_eq!(delegator["roleRef"]["name"], "system:auth-delegator");
    assert_eq!(delegator["subjects"][0]["name"].as_str(), Some(sa.name()));
    assert_eq!(delegator["subjects"][0]["namespace"], "segwatch");
    // Scrapers get exactly `get /metrics`, nothing else.
    let reader = &find_named(&objects, "ClusterRole", "segwatch-metrics-reader").value;
    assert_eq!(
        reader["rules"],
        serde_json::json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])
    );
    let bound = &find_named(&objects, "ClusterRoleBinding", "segwatch-metrics-reader").value;
    assert_eq!(bound["roleRef"]["name"], "segwatch-metrics-reader");
    assert_eq!(bound["subjects"][0]["kind"], "ServiceAccount");
    // The status writer: patch on the status subresource only.
    let status = &find_named(&objects, "ClusterRole", "segwatch-policy-status").value;
    assert_eq!(
        status["rules"],
        serde_json::json!([{"apiGroups": ["segwatch.dev"], "resources": ["segmentationpolicies/status"], "verbs": ["patch"]}])
    );
    let sb = &find_named(&objects, "ClusterRoleBinding", "segwatch-policy-status").value;
    assert_eq!(sb["roleRef"]["name"], "segwatch-policy-status");
    assert_eq!(sb["subjects"][0]["name"].as_str(), Some(sa.name()));
}

#[test]
fn the_example_policy_lets_monitoring_reach_the_metrics_port_and_nothing_else_of_the_node() {
    let docs = yaml_docs(&deploy().join("examples/baseline-policy.yaml"));
    let host = &docs[0]["spec"]["hostAccess"]["allow"];
    assert_eq!(
        host,
        &serde_json::json!([{
            "name": "monitoring-scrapes-segwatch",
            "from": {"namespace": "monitoring"},
            "ports": ["9810/TCP"]
        }]),
        "only the monitoring namespace, only the metrics port"
    );
    assert_eq!(
        docs[0]["spec"]["metadataApi"]["allow"],
        serde_json::json!([])
    );
}

// ------------------------------------------------------ kubernetes-validate

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

// ---------------------------------------------------------- the DaemonSet

/// The capabilities loading and attaching may need (why each: the comments
/// in deploy/base/daemonset.yaml).
const ALLOWED_CAPS: [&str; 4] = ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"];

/// Everything wrong with a DaemonSet's security posture, as messages.
fn posture_problems(ds: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let pod = &ds["spec"]["template"]["spec"];
    for (field, why) in [
        ("hostPID", "no need to see the host's processes"),
        ("hostIPC", "no need for the host's IPC namespace"),
    ] {
        if pod[field] == true {
            p.push(format!("pod {field} must not be true ({why})"));
        }
    }
    if pod["hostNetwork"] != true {
        p.push("pod hostNetwork must be true (the veths' host ends live there)".into());
    }
    if pod["automountServiceAccountToken"] != false {
        p.push(
            "automountServiceAccountToken must be false (the token is projected explicitly)".into(),
        );
    }
    if pod["securityContext"]["seccompProfile"]["type"] != "RuntimeDefault" {
        p.push("pod seccompProfile must be RuntimeDefault".into());
    }
    if pod["priorityClassName"] != "system-node-critical" {
        p.push("priorityClassName must be system-node-critical".into());
    }
    let tolerates_all = pod["tolerations"].as_array().is_some_and(|ts| {
        ts.iter().any(|t| {
            t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none()
        })
    });
    if !tolerates_all {
        p.push(
            "tolerations must include `operator: Exists` without key/effect (every node)".into(),
        );
    }
    for v in pod["volumes"].as_array().into_iter().flatten() {
        if v.get("hostPath").is_some() {
            p.push(format!(
                "volume {} is a hostPath; the agent needs none",
                v["name"]
            ));
        }
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            if let Some(exp) = s["serviceAccountToken"]["expirationSeconds"].as_u64() {
                if exp > 3600 {
                    p.push(format!(
                        "projected token lives {exp}s; keep it at most an hour"
                    ));
                }
            }
        }
    }
    let containers: Vec<&Value> = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["initContainers"].as_array().into_iter().flatten())
        .collect();
    if containers.is_empty() {
        p.push("no containers".into());
    }
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["privileged"] != false {
            p.push(format!("{name}: privileged must be false (explicitly)"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            p.push(format!("{name}: allowPrivilegeEscalation must be false"));
        }
        if sc["readOnlyRootFilesystem"] != true {
            p.push(format!("{name}: readOnlyRootFilesystem must be true"));
        }
        if sc["seccompProfile"]
            .get("type")
            .is_some_and(|t| t != "RuntimeDefault")
        {
            p.push(format!(
                "{name}: container seccompProfile overrides RuntimeDefault"
            ));
        }
        let drop: Vec<&str> = sc["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if drop != ["ALL"] {
            p.push(format!(
                "{name}: capabilities.drop must be [ALL], is {drop:?}"
            ));
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            let cap = cap.as_str().unwrap_or("?");
            if !ALLOWED_CAPS.contains(&cap.trim_start_matches("CAP_")) {
                p.push(format!(
                    "{name}: capability {cap} is not needed to load and attach BPF programs"
                ));
            }
        }
        for (kind, path) in [
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ] {
            if c[kind]["httpGet"]["path"] != path {
                p.push(format!("{name}: {kind} must GET {path}"));
            }
            // The probe port serves only the probes; /metrics stays behind
            // its token. `host` would point the kubelet elsewhere (and the
            // Pod Security baseline level forbids it since 1.34).
            if c[kind]["httpGet"]["port"] != "probes" {
                p.push(format!("{name}: {kind} must use the port named probes"));
            }
            if c[kind]["httpGet"].get("host").is_some() {
                p.push(format!("{name}: {kind} must not set host"));
            }
        }
        let args: Vec<&str> = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        // hostNetwork puts /metrics on every node address, reachable from
        // every pod: never without authentication.
        if !args.contains(&"--metrics-auth=kubernetes") {
            p.push(format!(
                "{name}: /metrics must be authenticated (--metrics-auth=kubernetes)"
            ));
        }
        let probe_port = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "probes")
            .and_then(|p| p["containerPort"].as_u64());
        let probe_arg = args
            .iter()
            .find_map(|a| a.strip_prefix("--probe-addr="))
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, port)| port.parse::<u64>().ok());
        if probe_port.is_none() || probe_port != probe_arg {
            p.push(format!(
                "{name}: the port named probes ({probe_port:?}) must be --probe-addr's ({probe_arg:?})"
            ));
        }
        for (section, res) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "cpu"),
            ("limits", "memory"),
        ] {
            if c["resources"][section][res].is_null() {
                p.push(format!("{name}: resources.{section}.{res} is missing"));
            }
        }
        let image = c["image"].as_str().unwrap_or("");
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        if tag.is_empty() || tag.contains('/') || tag == "latest" {
            p.push(format!("{name}: image {image:?} must carry a fixed tag"));
        }
        let node_name = c["env"].as_array().into_iter().flatten().any(|e| {
            e["name"] == "NODE_NAME" && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        });
        if !node_name {
            p.push(format!(
                "{name}: env NODE_NAME must come from the downward API (spec.nodeName)"
            ));
        }
    }
    p
}

#[test]
fn daemonset_security_posture() {
    let objects = kustomize(&deploy());
    let ds = &find(&objects, "DaemonSet").value;
    let problems = posture_problems(ds);
    assert!(
        problems.is_empty(),
        "deploy/base/daemonset.yaml:\n  {}",
        problems.join("\n  ")
    );

    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let added: BTreeSet<&str> = c["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // Exactly what monitor/src/datapath/caps.rs checks for at start-up; no
    // SYS_RESOURCE (kernels >= 5.11 charge BPF memory to the memory cgroup).
    assert_eq!(added, ["BPF", "NET_ADMIN", "PERFMON"].into());
    // The flow log goes to stdout for the log pipeline.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args.first(), Some(&"run"));
    assert!(
        args.contains(&"--flow-log=-"),
        "flow log to stdout: {args:?}"
    );
    // uid 0 is deliberate (see the comment in daemonset.yaml); it is only
    // acceptable together with no_new_privs and every other capability dropped.
    let sc = &c["securityContext"];
    if sc["runAsUser"] == 0 {
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(
            sc["runAsNonRoot"], false,
            "say runAsNonRoot: false explicitly"
        );
    }
    // The namespace must admit it (Pod Security Admission).
    let ns = &find(&objects, "Namespace").value;
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "hostNetwork and BPF capabilities exceed the baseline level"
    );
}

#[test]
fn posture_check_catches_weakened_daemonsets() {
    let objects = kustomize(&deploy());
    let good = find(&objects, "DaemonSet").value.clone();
    type Weaken = fn(&mut Value);
    let cases: [(&str, Weaken); 10] = [
        ("--metrics-auth=kubernetes", |d| {
            let args = d["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array_mut()
                .expect("args");
            args.retain(|a| a != "--metrics-auth=kubernetes");
            args.push("--metrics-auth=none".into());
        }),
        ("port named probes", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] =
                "metrics".into()
        }),
        ("privileged", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] =
                true.into()
        }),
        ("hostPID", |d| {
            d["spec"]["template"]["spec"]["hostPID"] = true.into()
        }),
        ("hostIPC", |d| {
            d["spec"]["template"]["spec"]["hostIPC"] = true.into()
        }),
        ("SYS_ADMIN", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
                .as_array_mut()
                .expect("add")
                .push("SYS_ADMIN".into())
        }),
        ("drop", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
                ["drop"] = serde_json::json!(["NET_RAW"])
        }),
        ("RuntimeDefault", |d| {
            d["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["type"] =
                "Unconfined".into()
        }),
        ("readOnlyRootFilesystem", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]
                ["readOnlyRootFilesystem"] = false.into()
        }),
        ("hostPath", |d| {
            d["spec"]["template"]["spec"]["volumes"]
                .as_array_mut()
                .expect("volumes")
                .push(serde_json::json!({"name": "root", "hostPath": {"path": "/"}}))
        }),
    ];
    for (what, weaken) in cases {
        let mut bad = good.clone();
        weaken(&mut bad);
        let problems = posture_problems(&bad);
        assert!(
            problems.iter().any(|p| p.contains(what)),
            "weakening `{what}` must be reported, got {problems:?}"
        );
    }
}

// --------------------------------------------------------- the ClusterRole

/// (apiGroup, resource) pairs a ClusterRole grants; panics on anything but
/// plain get/list/watch rules.
fn granted(role: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("ClusterRole rules") {
        let verbs: BTreeSet<&str> = rule["verbs"]
            .as_array()
            .expect("verbs")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            verbs,
            ["get", "list", "watch"].into(),
            "read-only verbs only: {rule}"
        );
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "no nonResourceURLs: {rule}"
        );
        assert!(
            rule.get("resourceNames").is_none(),
            "no resourceNames: {rule}"
        );
        for g in rule["apiGroups"].as_array().expect("apiGroups") {
            for r in rule["resources"].as_array().expect("resources") {
                let (g, r) = (g.as_str().expect("group"), r.as_str().expect("resource"));
                assert!(
                    g != "*" && r != "*" && !r.contains('/'),
                    "no wildcards or subresources: {rule}"
                );
                out.insert((g.to_string(), r.to_string()));
            }
        }
    }
    out
}

#[test]
fn clusterrole_is_read_only_and_never_grants_secrets() {
    let objects = kustomize(&deploy());
    let grants = granted(&find_named(&objects, "ClusterRole", "segwatch").value);
    for forbidden in [
        "secrets",
        "configmaps",
        "pods/exec",
        "serviceaccounts/token",
    ] {
        assert!(
            !grants.iter().any(|(_, r)| r == forbidden),
            "the agent must not be able to read {forbidden}"
        );
    }
}

/// What a role lacks and what it grants beyond `watched`.
type RoleDiff = (Vec<(String, String)>, Vec<(String, String)>);

fn role_diff(grants: &BTreeSet<(String, String)>, watched: &[(&str, &str)]) -> RoleDiff {
    let watched: BTreeSet<(String, String)> = watched
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    (
        watched.difference(grants).cloned().collect(),
        grants.difference(&watched).cloned().collect(),
    )
}

#[test]
fn clusterrole_grants_exactly_what_the_index_watches() {
    let objects = kustomize(&deploy());
    let grants = granted(&find_named(&objects, "ClusterRole", "segwatch").value);
    let (missing, extra) = role_diff(&grants, segwatch::index::WATCHED_RESOURCES);
    assert!(
        missing.is_empty(),
        "the daemon watches {missing:?} (segwatch::index::WATCHED_RESOURCES) but \
         deploy/base/clusterrole.yaml does not grant get/list/watch on them: its watchers would fail with 403"
    );
    assert!(
        extra.is_empty(),
        "deploy/base/clusterrole.yaml grants {extra:?}, which the daemon never watches: least privilege says drop them"
    );
    // The comparison itself must see both directions.
    let mut more = grants.clone();
    more.insert(("".into(), "endpoints".into()));
    more.remove(&("".into(), "pods".into()));
    let (missing, extra) = role_diff(&more, segwatch::index::WATCHED_RESOURCES);
    assert_eq!(missing, [("".to_string(), "pods".to_string())]);
    assert_eq!(extra, [("".to_string(), "endpoints".to_string())]);
}

// ------------------------------------------------- alerts and Prometheus

/// Every series name and its label names, from the daemon's own registry:
/// what it renders (scalars, and vectors that have children), plus the
/// label names of the labelled vectors, which render nothing until first
/// used.
fn exported_metrics() -> BTreeMap<String, BTreeSet<String>> {
    use prometheus::core::Collector;
    let m = segwatch::metrics::Metrics::new();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in m.render().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest
                .split_whitespace()
                .next()
                .expect("TYPE line has a name");
            out.entry(name.to_string()).or_default();
        } else if !line.starts_with('#') && !line.is_empty() {
            let (name, labels) = match line.split_once('{') {
                Some((n, rest)) => (n, rest.split_once('}').map(|(l, _)| l).unwrap_or("")),
                None => (line.split_whitespace().next().unwrap_or(""), ""),
            };
            let entry = out.entry(name.to_string()).or_default();
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                entry.insert(pair.split('=').next().expect("label").trim().to_string());
            }
        }
    }
    let vectors: Vec<&dyn Collector> = vec![
        &m.flows,
        &m.flow_bytes,
        &m.violations,
        &m.workload_flows,
        &m.events_lost,
        &m.build_info,
        &m.packets,
        &m.inventory_errors,
        &m.source_up,
        &m.probe_flows,
        &m.flows_not_reported,
        &m.flows_identity_late,
        &m.policy_errors,
        &m.export_records,
    ];
    for c in vectors {
        for d in c.desc() {
            out.entry(d.fq_name.clone())
                .or_default()
                .extend(d.variable_labels.iter().cloned());
        }
    }
    out
}

/// Metric names in a PromQL expression (identifiers followed by `{`, `[`,
/// whitespace, `)` or end, excluding functions, keywords and label names).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    let mut in_braces = 0;
    let mut in_parens_after_by: Vec<bool> = Vec::new();
    let mut last_word = String::new();
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        match c {
            '{' => in_braces += 1,
            '}' => in_braces -= 1,
            '(' => in_parens_after_by.push(matches!(
                last_word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            )),
            ')' => {
                in_parens_after_by.pop();
            }
            _ => {}
        }
        if c.is_ascii_digit() {
            // Numbers and durations (0.9, 10m, 1e3) are not names.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            last_word.clear();
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            let is_function = next == Some('(');
            let in_label_list = in_parens_after_by.last().copied().unwrap_or(false);
            let keyword = matches!(
                word,
                "by" | "without"
                    | "on"
                    | "ignoring"
                    | "group_left"
                    | "group_right"
                    | "and"
                    | "or"
                    | "unless"
                    | "offset"
                    | "bool"
                    | "sum"
                    | "min"
                    | "max"
                    | "avg"
                    | "group"
                    | "stddev"
                    | "stdvar"
                    | "count"
                    | "count_values"
                    | "bottomk"
                    | "topk"
                    | "quantile"
            );
            if in_braces == 0
                && !is_function
                && !in_label_list
                && !keyword
                && !word.starts_with("__")
            {
                names.insert(word.to_string());
            }
            last_word = word.to_string();
            continue;
        }
        if !c.is_whitespace() {
            last_word.clear();
        }
        i += 1;
    }
    names
}

/// Label names in `by (...)` clauses of an expression.
fn by_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(pos) = rest.find("by (") {
        let after = &rest[pos + 4..];
        let end = after.find(')').expect("by (...) closes");
        for l in after[..end].split(',') {
            out.insert(l.trim().to_string());
        }
        rest = &after[end..];
    }
    out
}

/// Labels the scrape adds to every series (ServiceMonitor relabelling adds
/// `node`), and series from elsewhere the rules may use.
const SCRAPE_LABELS: [&str; 3] = ["instance", "job", "node"];
const FOREIGN_METRICS: [&str; 3] = [
    "up",
    "kube_daemonset_status_desired_number_scheduled",
    "kube_daemonset_status_number_available",
];

fn check_expr(expr: &str, metrics: &BTreeMap<String, BTreeSet<String>>, what: &str) {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: no metric in `{expr}`");
    let mut labels: BTreeSet<String> = SCRAPE_LABELS.iter().map(|s| s.to_string()).collect();
    for n in &names {
        if FOREIGN_METRICS.contains(&n.as_str()) {
            labels.extend(["namespace", "daemonset"].map(String::from));
            continue;
        }
        let l = metrics.get(n).unwrap_or_else(|| {
            panic!("{what}: `{n}` is not a metric segwatch exports (monitor/src/metrics.rs)")
        });
        labels.extend(l.iter().cloned());
    }
    for l in by_labels(expr) {
        assert!(
            labels.contains(&l),
            "{what}: groups by `{l}`, which {names:?} do not carry"
        );
    }
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let Some(promtool) = tool("promtool", "Debian package prometheus") else {
        return;
    };
    let dir = deploy().join("prometheus");
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.join("rules.yaml")));
    assert!(
        ok,
        "promtool check rules deploy/prometheus/rules.yaml:\n{out}"
    );
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(dir.join("tests.yaml")));
    assert!(
        ok,
        "promtool test rules deploy/prometheus/tests.yaml:\n{out}"
    );
}

#[test]
fn alert_rules_cover_every_violation_kind_and_name_only_exported_metrics() {
    let metrics = exported_metrics();
    let rules = yaml_one(&deploy().join("prometheus/rules.yaml"));
    let mut alerts: BTreeMap<String, Value> = BTreeMap::new();
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"]
                .as_str()
                .or(r["record"].as_str())
                .expect("alert or record");
            check_expr(r["expr"].as_str().expect("expr"), &metrics, name);
            alerts.insert(name.to_string(), r.clone());
        }
    }
    // CONTRACT flow report: the violation kinds. Each has its alert.
    for kind in [
        "cross_namespace",
        "within_namespace",
        "host_access",
        "metadata_api",
        "external",
        "netpol_bypass",
    ] {
        let found = alerts.values().any(|r| {
            r["labels"]["kind"] == kind
                && r["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains(&format!("kind=\"{kind}\"")))
        });
        assert!(found, "no alert for violation kind {kind}");
    }
    for name in [
        "SegwatchAgentDown",
        "SegwatchAgentsAbsent",
        "SegwatchEventsLost",
        "SegwatchNoInterfacesAttached",
    ] {
        assert!(alerts.contains_key(name), "missing alert {name}");
    }
    for (name, r) in &alerts {
        let sev = r["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["warning", "critical"].contains(&sev),
            "{name}: severity {sev:?}"
        );
        assert!(
            r["annotations"]["summary"].is_string(),
            "{name}: no summary"
        );
        assert!(
            r["annotations"]["description"].is_string(),
            "{name}: no description"
        );
    }

    // Unit-test input series use the daemon's names and labels only.
    let tests = yaml_one(&deploy().join("prometheus/tests.yaml"));
    let mut tested: BTreeSet<String> = BTreeSet::new();
    for t in tests["tests"].as_array().expect("tests") {
        for s in t["input_series"].as_array().expect("input_series") {
            let series = s["series"].as_str().expect("series");
            let (name, labels) = series.split_once('{').expect("series has labels");
            if FOREIGN_METRICS.contains(&name) {
                continue;
            }
            let known = metrics
                .get(name)
                .unwrap_or_else(|| panic!("tests.yaml: {name} is not exported by segwatch"));
            for pair in labels.trim_end_matches('}').split("\",") {
                let label = pair.split('=').next().expect("label=value").trim();
                assert!(
                    known.contains(label) || SCRAPE_LABELS.contains(&label),
                    "tests.yaml: {name} has no label {label}"
                );
            }
            // A violation series must carry every label the daemon sets.
            let given: BTreeSet<&str> = labels
                .trim_end_matches('}')
                .split("\",")
                .map(|p| p.split('=').next().expect("label").trim())
                .collect();
            for l in known {
                assert!(
                    given.contains(l.as_str()),
                    "tests.yaml: {series} lacks label {l}"
                );
            }
        }
        for a in t["alert_rule_test"].as_array().expect("alert_rule_test") {
            tested.insert(a["alertname"].as_str().expect("alertname").to_string());
        }
    }
    let untested: Vec<&String> = alerts.keys().filter(|a| !tested.contains(*a)).collect();
    assert!(
        untested.is_empty(),
        "alerts without a unit test in tests.yaml: {untested:?}"
    );
}

#[test]
fn prometheusrule_carries_exactly_the_groups_of_rules_yaml() {
    let rules_path = deploy().join("prometheus/rules.yaml");
    let pr_path = deploy().join("monitoring/prometheusrule.yaml");
    let rules = yaml_one(&rules_path);
    let pr = yaml_one(&pr_path);
    assert_eq!(pr["kind"], "PrometheusRule");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    if pr["spec"]["groups"] != rules["groups"] {
        // Regenerate: the manifest's head up to `spec:`, then rules.yaml's
        // groups indented under it.
        let head: String = std::fs::read_to_string(&pr_path)
            .expect("read prometheusrule.yaml")
            .lines()
            .take_while(|l| *l != "spec:")
            .map(|l| format!("{l}\n"))
            .collect();
        let rules_text = std::fs::read_to_string(&rules_path).expect("read rules.yaml");
        let body: String = rules_text
            .lines()
            .skip_while(|l| !l.starts_with("groups:"))
            .map(|l| {
                if l.is_empty() {
                    "\n".to_string()
                } else {
                    format!("  {l}\n")
                }
            })
            .collect();
        let out = scratch("regenerated").join("prometheusrule.yaml");
        std::fs::write(&out, format!("{head}spec:\n{body}")).expect("write regenerated");
        panic!(
            "deploy/monitoring/prometheusrule.yaml differs from deploy/prometheus/rules.yaml; \
             the regenerated file is {}: copy it over",
            rel(&out)
        );
    }
}

// ----------------------------------------------------------- the dashboard

fn dashboard() -> Value {
    let path = deploy().join("grafana/segwatch-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("read dashboard");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", rel(&path)))
}

/// Grafana's variables replaced by values PromQL accepts.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$namespace", ".*")
}

#[test]
fn dashboard_shows_what_security_teams_ask_for_from_exported_metrics() {
    let metrics = exported_metrics();
    let d = dashboard();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut rects: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("panel title").to_string();
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "duplicate panel id in {title}"
        );
        let g = &p["gridPos"];
        let r = (
            g["x"].as_i64().expect("x"),
            g["y"].as_i64().expect("y"),
            g["w"].as_i64().expect("w"),
            g["h"].as_i64().expect("h"),
        );
        assert!(r.0 + r.2 <= 24, "{title} is wider than the grid");
        for o in &rects {
            let overlap = r.0 < o.0 + o.2 && o.0 < r.0 + r.2 && r.1 < o.1 + o.3 && o.1 < r.1 + r.3;
            assert!(!overlap, "panels {title} and {} overlap", o.4);
        }
        rects.push((r.0, r.1, r.2, r.3, title.clone()));
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            check_expr(&grafana_to_promql(expr), &metrics, &title);
            exprs.push((title.clone(), grafana_to_promql(expr)));
        }
    }
    let all = exprs
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let titles = rects
        .iter()
        .map(|r| r.4.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for (needle, what) in [
        ("sum by (kind)", "violations by kind"),
        (
            "sum by (kind, src_namespace, dst_namespace)",
            "violations by namespace pair",
        ),
        (
            "segwatch_workload_flows_total",
            "top talkers (workload edges)",
        ),
        ("segwatch_flow_bytes_total", "top talkers (bytes)"),
        (
            "sum by (stage) (increase(segwatch_events_lost_total",
            "losses by stage",
        ),
        ("segwatch_interfaces_attached", "attached interfaces"),
        (
            "segwatch_flow_table_entries / (segwatch_flow_table_capacity",
            "flow table fill",
        ),
    ] {
        assert!(all.contains(needle), "the dashboard must show {what}");
    }
    assert!(titles.contains("Top talkers"), "a panel titled Top talkers");

    // Every query must parse as PromQL: promtool checks them as recording rules.
    let Some(promtool) = tool("promtool", "Debian package prometheus") else {
        return;
    };
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        file.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(e).expect("quote")
        ));
    }
    let path = scratch("dashboard").join("queries.yaml");
    std::fs::write(&path, file).expect("write queries");
    let (ok, out) = run(Command::new(&promtool).args(["check", "rules"]).arg(&path));
    assert!(
        ok,
        "dashboard queries do not parse ({}):\n{out}",
        rel(&path)
    );
}

#[test]
fn metric_name_extraction_sees_through_promql_syntax() {
    // check_expr relies on this; a broken extractor would pass everything.
    let e = r#"sum by (kind, src_namespace) ((segwatch_violations_total{kind="a b"} unless segwatch_violations_total offset 10m) or increase(segwatch_events_lost_total[5m])) > 0 and on(instance) up == 1"#;
    let names: Vec<String> = metric_names(e).into_iter().collect();
    assert_eq!(
        names,
        [
            "segwatch_events_lost_total",
            "segwatch_violations_total",
            "up"
        ]
    );
    assert_eq!(
        by_labels(e),
        ["kind", "src_namespace"].map(String::from).into()
    );
    let metrics = exported_metrics();
    let caught = std::panic::catch_unwind(|| {
        check_expr("rate(segwatch_violation_total[5m])", &metrics, "t")
    });
    assert!(caught.is_err(), "a misspelt metric must be caught");
    let caught = std::panic::catch_unwind(|| {
        check_expr("sum by (pod) (segwatch_flows_total)", &metrics, "t")
    });
    assert!(
        caught.is_err(),
        "a label the metric does not carry must be caught"
    );
}

// ---------------------------------------------------------- the image

#[test]
fn containerfile_is_multistage_distroless_and_pinned_like_the_build() {
    let text = std::fs::read_to_string(deploy().join("Containerfile")).expect("read Containerfile");
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(
        froms.len() >= 2,
        "multi-stage: a build stage and a final stage"
    );
    let final_stage = &instructions[*froms.last().expect("a FROM")..];
    assert!(
        final_stage[0].contains("gcr.io/distroless/static")
            || final_stage[0].contains("gcr.io/distroless/cc"),
        "the final image must be distroless static or cc (no shell): {}",
        final_stage[0]
    );
    assert!(
        !final_stage[0].contains(":debug"),
        "distroless :debug images carry a shell"
    );
    for l in final_stage {
        assert!(
            !l.starts_with("RUN "),
            "no RUN in the final stage (there is no shell): {l}"
        );
        if let Some(src) = l.strip_prefix("COPY ") {
            assert!(
                src.starts_with("--from=build /out/segwatch "),
                "the final stage copies the binary only: {l}"
            );
        }
    }
    let entry = final_stage
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    assert!(
        entry.contains("[\"/usr/local/bin/segwatch\"]"),
        "exec-form ENTRYPOINT of the binary: {entry}"
    );

    // Toolchain pins equal to the build's, so the image builds what CI tests.
    let build_rs = std::fs::read_to_string(root().join("monitor/build.rs")).expect("build.rs");
    let setup = std::fs::read_to_string(root().join("xtask/src/setup.rs")).expect("setup.rs");
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let quoted = |src: &str, key: &str| -> String {
        let line = src
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("`{key}` not found"));
        line.split('"').nth(1).expect("a quoted value").to_string()
    };
    let arg = |key: &str| -> String {
        instructions
            .iter()
            .find_map(|l| l.strip_prefix(&format!("ARG {key}=")))
            .unwrap_or_else(|| panic!("ARG {key} in the Containerfile"))
            .to_string()
    };
    assert_eq!(
        arg("EBPF_NIGHTLY"),
        quoted(&build_rs, "const EBPF_TOOLCHAIN")
    );
    assert_eq!(arg("EBPF_NIGHTLY"), quoted(&setup, "pub const NIGHTLY"));
    assert_eq!(
        arg("BPF_LINKER_VERSION"),
        quoted(&setup, "const BPF_LINKER_VERSION")
    );
    let rust_version = quoted(&manifest, "rust-version");
    assert!(
        instructions[froms[0]].contains(&format!("rust:{rust_version}-")),
        "the build stage uses the workspace's rust-version {rust_version}: {}",
        instructions[froms[0]]
    );
    // The image's name matches the DaemonSet's.
    let objects = kustomize(&deploy());
    let image = find(&objects, "DaemonSet").value["spec"]["template"]["spec"]["containers"][0]
        ["image"]
        .as_str()
        .expect("image")
        .to_string();
    assert!(
        text.contains(&format!("-t {image} ")),
        "the build command in the Containerfile tags {image}"
    );
}

// ------------------------------------------- SegmentationPolicy CRD

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

// ------------------------------------------- SegmentationPolicy examples

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

// ------------------------------- the agent under the DaemonSet's privileges

/// A network namespace of this test, deleted on drop.
struct TestNetns(String);

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip_cmd(args: &[&str]) {
    let (ok, out) = run(Command::new("ip").args(args));
    assert!(ok, "ip {args:?}: {out}");
}

/// HTTP GET on 127.0.0.1:`port` inside network namespace `ns`.
fn get_in(ns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsRawFd as _;
    let ns_path = Path::new("/var/run/netns").join(ns);
    let path = path.to_string();
    std::thread::spawn(move || -> Option<(u16, String)> {
        let f = std::fs::File::open(&ns_path).ok()?;
        // SAFETY: a valid namespace fd; CLONE_NEWNET moves only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: segwatch\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let code = buf.get(9..12)?.parse().ok()?;
        Some((
            code,
            buf.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        ))
    })
    .join()
    .ok()
    .flatten()
}

/// Capability bit numbers (include/uapi/linux/capability.h).
fn cap_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("no bit known for capability {other}"),
    }
}

/// Starts the agent with the DaemonSet's args, uid 0 and exactly `caps` (as
/// bounding = permitted = effective set, inheritable and ambient empty,
/// no_new_privs), every mount but /proc, /sys and /dev read-only, inside
/// network namespace `ns`. Returns the child; stdout and stderr go to files
/// in `dir`.
fn spawn_confined(ns: &str, caps: &[&str], args: &[String], dir: &Path) -> std::process::Child {
    let bounding = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    // readOnlyRootFilesystem, approximated: a private mount namespace whose
    // mounts are remounted read-only (the host's stay as they are).
    let script = r#"
        for m in $(findmnt -rno TARGET); do
          case "$m" in /proc*|/sys*|/dev*) ;; *) mount -o remount,bind,ro "$m" 2>/dev/null ;; esac
        done
        if touch /.segwatch-rw-probe 2>/dev/null; then echo "root filesystem still writable" >&2; exit 97; fi
        exec "$@"
    "#;
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_segwatch"))
        .args(args)
        .env("NODE_NAME", "deploy-test-node")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn the confined agent")
}

#[test]
fn the_agent_loads_and_attaches_with_exactly_the_daemonsets_privileges() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let msg = "needs root (network namespace, BPF programs); `cargo xtask test` runs as root";
        assert!(!require_tools(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    for t in ["ip", "setpriv", "unshare", "findmnt"] {
        if tool(t, "Debian util-linux / iproute2").is_none() {
            return;
        }
    }
    let objects = kustomize(&deploy());
    let c = &find(&objects, "DaemonSet").value["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["securityContext"]["runAsUser"], 0,
        "this test runs the agent as uid 0, like the manifest"
    );
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // The DaemonSet's own arguments; only the cluster view comes from a file
    // here, as there is no API server.
    let mut args: Vec<String> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect();
    let port_of = |flag: &str| -> u16 {
        args.iter()
            .find_map(|a| a.strip_prefix(flag))
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("{flag}ADDR:PORT in the DaemonSet args"))
    };
    let port = port_of("--metrics-addr=");
    let probe_port = port_of("--probe-addr=");
    // Reviewing scrapers' tokens needs an API server, which this test has
    // not: /metrics is read without authentication here (the authenticated
    // mode is tested in tests/tests/security.rs with a fake API server).
    for a in args
        .iter_mut()
        .filter(|a| *a == "--metrics-auth=kubernetes")
    {
        *a = "--metrics-auth=none".into();
    }
    let dir = scratch("confined");
    let inventory = dir.join("inventory.yaml");
    std::fs::write(
        &inventory,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n",
    )
    .expect("inventory");
    args.push(format!("--inventory={}", inventory.display()));

    let ns = TestNetns(format!("swdpl{}", std::process::id()));
    let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
    ip_cmd(&["netns", "add", &ns.0]);
    ip_cmd(&["-n", &ns.0, "link", "set", "lo", "up"]);
    ip_cmd(&[
        "-n", &ns.0, "link", "add", "swd0", "type", "veth", "peer", "name", "swd1",
    ]);
    ip_cmd(&["-n", &ns.0, "link", "set", "swd0", "up"]);
    ip_cmd(&["-n", &ns.0, "link", "set", "swd1", "up"]);

    // Negative control first: one capability less must fail, or the
    // confinement would not be real. The DaemonSet's agent says why on
    // /readyz (--load-failure-hold) before it exits with the reason.
    let fewer: Vec<&str> = caps.iter().copied().filter(|c| *c != "PERFMON").collect();
    let mut child = spawn_confined(&ns.0, &fewer, &args, &dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let why = loop {
        if let Some((503, body)) = get_in(&ns.0, probe_port, "/readyz") {
            if body.starts_with("cannot load") {
                break body;
            }
        }
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!(
                "without CAP_PERFMON the agent must stay up and say why on /readyz, exited ({st}): {}",
                std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no load failure on /readyz within 30 s: {:?}",
            get_in(&ns.0, probe_port, "/readyz")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        why.contains("missing capabilities CAP_PERFMON"),
        "/readyz names the missing capability: {why}"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert!(
        !status.success() && stderr.contains("PERFMON"),
        "without CAP_PERFMON the agent must refuse to start ({status}): {stderr}"
    );

    let mut child = spawn_confined(&ns.0, &caps, &args, &dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let stderr = || std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!(
                "the agent exited ({st}) under the DaemonSet's privileges: {}",
                stderr()
            );
        }
        if get_in(&ns.0, probe_port, "/readyz").is_some_and(|(code, _)| code == 200) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent was not ready within 30 s: {}", stderr());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("/proc/PID/status");
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} in /proc/PID/status"))
            .trim()
            .to_string()
    };
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "segwatch",
        "the child is the agent itself (exec all the way)"
    );
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    let eff = u64::from_str_radix(&field("CapEff"), 16).expect("CapEff hex");
    assert_eq!(
        eff, want,
        "effective capabilities are exactly the DaemonSet's"
    );
    assert_eq!(field("NoNewPrivs"), "1");
    assert!(field("Uid").starts_with("0\t"), "uid 0");
    // Ready does not wait for every interface netlink announces; poll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = get_in(&ns.0, port, "/metrics").expect("GET /metrics").1;
        if metrics
            .lines()
            .any(|l| l == "segwatch_interfaces_attached 2")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both veth ends must be attached under the DaemonSet's privileges:\n{}\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("segwatch_interfaces"))
                .collect::<Vec<_>>()
                .join("\n"),
            stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent ignored SIGTERM for 20 s: {}", stderr());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        code,
        Some(0),
        "SIGTERM ends the agent cleanly: {}",
        stderr()
    );
}

// ------------------------------------------- structural CRD schema

/// Where a CRD schema breaks the API server's structural-schema rules
/// (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema):
/// every node has a type (unless int-or-string or preserve-unknown-fields),
/// no `additionalProperties` beside `properties`, no `$ref`. Logical
/// junctors (oneOf, anyOf, allOf, not) carry extra rules this check does not
/// implement, so it rejects them until it does.
fn structural_problems(schema: &Value, path: &str, out: &mut Vec<String>) {
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

// ------------------------------------------------------ deploy/probe

/// Problems with a `segwatch probe` pod template: no capabilities, non-root,
/// read-only root filesystem, the label the daemon tags probe flows by, its
/// identity from the downward API.
fn probe_pod_problems(name: &str, template: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let spec = &template["spec"];
    if template["metadata"]["labels"]["segwatch.dev/probe"] != "true" {
        p.push(format!("{name}: pod label segwatch.dev/probe: \"true\" missing (the daemon tags probe flows by it)"));
    }
    for k in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[k] == true {
            p.push(format!("{name}: {k} must not be set"));
        }
    }
    if spec["securityContext"]["runAsNonRoot"] != true {
        p.push(format!("{name}: runAsNonRoot must be true"));
    }
    if spec["securityContext"]["seccompProfile"]["type"] != "RuntimeDefault" {
        p.push(format!("{name}: seccompProfile RuntimeDefault"));
    }
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.len() != 1 {
        p.push(format!("{name}: exactly one container"));
    }
    for c in &containers {
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"] != false {
            p.push(format!("{name}: allowPrivilegeEscalation must be false"));
        }
        if sc["readOnlyRootFilesystem"] != true {
            p.push(format!("{name}: readOnlyRootFilesystem must be true"));
        }
        if sc["privileged"] == true {
            p.push(format!("{name}: privileged"));
        }
        if sc["capabilities"]["drop"] != json!(["ALL"]) {
            p.push(format!("{name}: capabilities must drop ALL"));
        }
        if !sc["capabilities"]["add"].is_null() {
            p.push(format!("{name}: no capability may be added"));
        }
        if c["args"][0] != "probe" {
            p.push(format!("{name}: the container runs `segwatch probe`"));
        }
        let env: BTreeMap<&str, &str> = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?,
                    e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
                ))
            })
            .collect();
        let want: BTreeMap<&str, &str> = [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            ("NODE_NAME", "spec.nodeName"),
            ("POD_IPS", "status.podIPs"),
            ("HOST_IPS", "status.hostIPs"),
        ]
        .into();
        if env != want {
            p.push(format!(
                "{name}: identity env from the downward API: {env:?}, want {want:?}"
            ));
        }
    }
    p
}

#[test]
fn probe_manifests_run_without_privileges_as_the_namespace_account() {
    let dir = deploy().join("probe");
    let objects = kustomize(&dir);
    let kinds: BTreeSet<&str> = objects.iter().map(Object::kind).collect();
    assert_eq!(kinds, ["ClusterRole", "CronJob"].into());
    for o in &objects {
        assert!(
            o.value["metadata"]["namespace"].is_null(),
            "{}: no namespace, `kubectl apply -k deploy/probe -n NS` chooses it",
            rel(&o.file)
        );
    }
    let cron = &find(&objects, "CronJob").value;
    let template = &cron["spec"]["jobTemplate"]["spec"]["template"];
    let problems = probe_pod_problems("deploy/probe/cronjob.yaml", template);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(template["spec"]["serviceAccountName"], "default");
    let job = yaml_one(&dir.join("job.yaml"));
    assert_eq!(job["kind"], "Job");
    assert_eq!(
        job["spec"]["template"], *template,
        "job.yaml runs the CronJob's pod"
    );
    // The reader role: get/list of what the probe plans and judges with,
    // never secrets, never a write.
    let role = &find(&objects, "ClusterRole").value;
    let granted: BTreeSet<(String, String)> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|r| {
            let verbs: Vec<String> = r["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            assert_eq!(verbs, ["get", "list"], "read once, never watch or write");
            r["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .flat_map(|res| {
                    r["apiGroups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|g| g.as_str())
                        .map(move |g| (g.to_owned(), res.to_owned()))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("", "namespaces"),
        ("", "nodes"),
        ("", "pods"),
        ("", "services"),
        ("networking.k8s.io", "networkpolicies"),
        ("segwatch.dev", "segmentationpolicies"),
    ]
    .iter()
    .map(|(g, r)| ((*g).to_owned(), (*r).to_owned()))
    .collect();
    assert_eq!(granted, want);
}

#[test]
fn probe_posture_check_catches_weakened_pods() {
    let objects = kustomize(&deploy().join("probe"));
    let good = find(&objects, "CronJob").value["spec"]["jobTemplate"]["spec"]["template"].clone();
    let cases: [(&str, fn(&mut Value)); 5] = [
        ("capability added", |t| {
            t["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                json!(["NET_RAW"])
        }),
        ("root", |t| {
            t["spec"]["securityContext"]["runAsNonRoot"] = json!(false)
        }),
        ("writable root", |t| {
            t["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = json!(false)
        }),
        ("label gone", |t| {
            t["metadata"]["labels"]["segwatch.dev/probe"] = Value::Null
        }),
        ("host network", |t| t["spec"]["hostNetwork"] = json!(true)),
    ];
    for (what, weaken) in cases {
        let mut t = good.clone();
        weaken(&mut t);
        assert!(
            !probe_pod_problems("x", &t).is_empty(),
            "the probe posture check must catch: {what}"
        );
    }
}
