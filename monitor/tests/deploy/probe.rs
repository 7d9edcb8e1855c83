//! deploy/probe: the probe pods run without privileges.

use super::*;

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
