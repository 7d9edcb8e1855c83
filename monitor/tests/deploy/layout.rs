//! Kustomizations, the Service, ServiceMonitor and example policy: what
//! `kubectl apply -k deploy/` creates and how its pieces point at each other.

use super::*;

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
    // SegmentationPolicy here; the staged kinds' CRDs: tests/deploy/staged.rs.
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
