//! The DaemonSet's security posture (capabilities, mounts, user).

use super::*;

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
