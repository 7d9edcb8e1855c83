//! The local lab end to end (the code `cargo xtask demo` runs): real
//! namespaces, two nodes, the kube-proxy nftables Services, a real
//! `segwatch run` per node, the lab's traffic. Asserts one report per
//! connection over both nodes' flow logs (a Service connection: one report
//! naming the Service and the backend), the exact violations from the flow
//! logs and /metrics, that suggest and audit work on the flow logs; then
//! that nothing of the lab remains.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use tests::{require_root, segwatch_bin, TempDir};

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

#[test]
fn the_lab_shows_exactly_its_violations_and_leaves_nothing_behind() {
    require_root();
    assert!(
        std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_ok(),
        "nft (nftables) is missing: `cargo xtask setup` installs it"
    );
    let prefix = format!("swlabt{}", std::process::id() % 10_000);
    let dir = TempDir::new("lab");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let outcome = lab::run(lab::Options {
        prefix: prefix.clone(),
        segwatch: segwatch_bin(),
        out_dir: dir.0.clone(),
        rules: Some(root.join("deploy/prometheus/rules.yaml")),
        keep: None,
        style: lab::Style { colour: false },
        clean_hint: format!("lab::clean(\"{prefix}\")"),
    });
    let marker = dir.0.display().to_string();
    let left = lab::leftovers(&prefix, &marker);
    if !left.is_empty() {
        let _ = lab::clean(&prefix);
    }
    let outcome = outcome.unwrap_or_else(|e| panic!("the lab must run end to end: {e:#}"));
    assert!(
        left.is_empty(),
        "nothing of the lab may remain after it ends: {left:?}"
    );

    // Every step's connection is in the flow logs exactly once, opened by
    // the pod that made it, reported by that pod's node, to the address it
    // dialled: a pod, or a Service whose backend the report names.
    for d in &outcome.done {
        let mine: Vec<&Value> = outcome
            .reports
            .iter()
            .filter(|r| lab::report_is(r, d))
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "step '{}' ({} → {}): one report per connection over both nodes: {mine:#?}",
            d.step.say,
            d.src,
            d.dst
        );
        let r = mine[0];
        let (dialled_ip, dialled_port) = (d.dst.ip().to_string(), u64::from(d.dst.port()));
        let direct =
            s(&r["dst"], "ip") == dialled_ip && r["dst"]["port"].as_u64() == Some(dialled_port);
        let svc = &r["dst"]["service"];
        let via_service = s(svc, "ip") == dialled_ip && svc["port"].as_u64() == Some(dialled_port);
        assert!(
            direct || via_service,
            "step '{}' must be reported with what it dialled: {r}",
            d.step.say
        );
        if via_service {
            assert_eq!(r["dst"]["kind"], "pod", "the backend the kernel chose: {r}");
        }
        let opener = outcome
            .world
            .pods
            .iter()
            .find(|p| p.ip(false) == d.src.ip() || p.ip(true) == d.src.ip())
            .expect("every step starts in a pod");
        assert_eq!(
            s(r, "observer"),
            outcome.world.node_name_of(opener.node),
            "the opener's node reports it: {r}"
        );
        assert!(r["connection"].is_string() && r["seq"] == 1, "{r}");
        assert!(
            matches!(s(r, "verdict").as_str(), "allowed" | "violation"),
            "every lab connection is judged: {r}"
        );
        if s(r, "protocol") == "TCP" {
            let state = s(&r["tcp"], "state");
            assert!(
                state == "closed" || state == "established",
                "every lab connection is answered: {r}"
            );
        }
        assert!(
            r["bytes"]["sent"].as_u64().unwrap_or(0) > 0
                && r["bytes"]["received"].as_u64().unwrap_or(0) > 0,
            "both directions carry bytes: {r}"
        );
    }
    // The payments API through its Service: one report naming the Service
    // and the pod behind it (on the other node), judged on its port.
    let svc = outcome
        .done
        .iter()
        .find(|d| d.dst.ip().to_string() == "10.97.0.20")
        .expect("a step through the payments-api Service");
    let r = outcome
        .reports
        .iter()
        .find(|r| lab::report_is(r, svc))
        .expect("reported");
    assert_eq!(
        (
            s(&r["dst"], "pod"),
            r["dst"]["port"].as_u64(),
            s(&r["dst"]["service"], "namespace"),
            s(&r["dst"]["service"], "name"),
            r["dst"]["service"]["port"].as_u64()
        ),
        (
            outcome.world.pod("payments-api").name.to_string(),
            Some(8443),
            "payments".to_string(),
            "payments-api".to_string(),
            Some(8443)
        ),
        "{r}"
    );
    assert!(
        outcome.reports.iter().all(|r| r.get("verdict").is_some()),
        "every report carries a verdict"
    );

    // The exact violations: (kind, src namespace, src workload, dst, port/proto).
    let got: BTreeSet<(String, String, String, String, String)> = outcome
        .reports
        .iter()
        .flat_map(|r| {
            let dst = match s(&r["dst"], "kind").as_str() {
                "node" => format!("node/{}", s(&r["dst"], "node")),
                "metadata" => "metadata-api".to_string(),
                _ => format!("{}/{}", s(&r["dst"], "namespace"), s(&r["dst"], "workload")),
            };
            let port = format!(
                "{}/{}",
                r["dst"]["port"].as_u64().unwrap_or(0),
                s(r, "protocol")
            );
            let (ns, wl) = (s(&r["src"], "namespace"), s(&r["src"], "workload"));
            r["violations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |v| {
                    (
                        s(v, "kind"),
                        ns.clone(),
                        wl.clone(),
                        dst.clone(),
                        port.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    // kind, source namespace, source workload, destination, port/protocol
    let node = format!("node/{prefix}-node");
    let want_lines = [
        "cross_namespace analytics Deployment/reporter payments/StatefulSet/ledger-db 5432/TCP",
        "cross_namespace storefront Deployment/web payments/StatefulSet/ledger-db 5432/TCP",
        // payments' NetworkPolicies deny both; nothing in the lab enforces them.
        "netpol_bypass analytics Deployment/reporter payments/StatefulSet/ledger-db 5432/TCP",
        "netpol_bypass storefront Deployment/web payments/StatefulSet/ledger-db 5432/TCP",
        "host_access analytics Deployment/reporter NODE 22/TCP",
        "host_access analytics Deployment/reporter NODE 10250/TCP",
        "host_access analytics Deployment/reporter NODE 2379/TCP",
        "metadata_api analytics Deployment/reporter metadata-api 80/TCP",
    ];
    let want: BTreeSet<(String, String, String, String, String)> = want_lines
        .iter()
        .map(|l| {
            let f: Vec<String> = l
                .replace("NODE", &node)
                .split(' ')
                .map(String::from)
                .collect();
            (
                f[0].clone(),
                f[1].clone(),
                f[2].clone(),
                f[3].clone(),
                f[4].clone(),
            )
        })
        .collect();
    assert_eq!(got, want, "the lab must produce exactly these violations");

    // Every step got the verdict it is there to show.
    for d in &outcome.done {
        let mut kinds: Vec<String> = outcome
            .reports
            .iter()
            .filter(|r| lab::report_is(r, d))
            .flat_map(|r| r["violations"].as_array().cloned().unwrap_or_default())
            .map(|v| s(&v, "kind"))
            .collect();
        kinds.sort();
        kinds.dedup();
        let mut want = d.step.expect.to_vec();
        want.sort();
        assert_eq!(kinds, want, "step '{}'", d.step.say);
    }

    // /metrics of both agents agrees: one violation per connection, counted
    // by one node.
    let samples = lab::show::parse_metrics(&outcome.metrics);
    let count = |kind: &str, port: &str| -> f64 {
        samples
            .iter()
            .filter(|x| {
                x.name == "segwatch_violations_total"
                    && x.labels.get("kind").map(String::as_str) == Some(kind)
                    && x.labels.get("dst_port").map(String::as_str) == Some(port)
            })
            .map(|x| x.value)
            .sum()
    };
    assert_eq!(
        count("cross_namespace", "5432"),
        3.0,
        "reporter v4 + v6, web v6"
    );
    assert_eq!(
        count("netpol_bypass", "5432"),
        3.0,
        "the same three connections bypass payments' NetworkPolicies"
    );
    assert_eq!(count("host_access", "22"), 1.0);
    assert_eq!(
        count("host_access", "10250"),
        1.0,
        "metrics-server's scrape is allowed"
    );
    assert_eq!(count("host_access", "2379"), 1.0);
    assert_eq!(
        count("metadata_api", "80"),
        1.0,
        "the EBS CSI controller's call is allowed"
    );
    let node_label = format!("node/{prefix}-node");
    assert!(
        samples.iter().any(|x| x.name == "segwatch_violations_total"
            && x.labels.get("dst_workload") == Some(&node_label)
            && x.labels.get("src_service_account").map(String::as_str) == Some("default")),
        "host access is labelled with the node and the reporter's default service account"
    );
    // The shipped rules are part of the repository: no rules, no alerts,
    // and this fails.
    let names: BTreeSet<&str> = outcome.alerts.iter().map(|a| a.name.as_str()).collect();
    assert!(
        names.contains("SegwatchHostAccess")
            && names.contains("SegwatchMetadataApiAccess")
            && names.contains("SegwatchCrossNamespaceViolation")
            && names.contains("SegwatchNetworkPolicyBypass"),
        "the shipped alert rules (deploy/prometheus/rules.yaml) fire on the lab's violations: {names:?}"
    );
    let names: Vec<&str> = outcome.extras.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["suggest", "audit"],
        "the lab runs suggest and audit"
    );
    for (name, r) in &outcome.extras {
        assert!(
            r.is_ok(),
            "segwatch {name} on the lab's flows must work: {r:?}"
        );
    }
    // The staged loop: the suggestion staged, the lab's connections
    // replayed through it; no legitimate step would be denied, every
    // forbidden one would be blocked.
    let staged = outcome
        .staged
        .as_ref()
        .unwrap_or_else(|e| panic!("the staged loop must run on the lab's flows: {e}"));
    assert!(staged.staged_objects > 0, "suggest --staged wrote objects");
    assert_eq!(
        staged.steps.len(),
        outcome.done.len(),
        "every step's connection is replayed"
    );
    assert!(
        staged.legitimate_would_deny().is_empty(),
        "no legitimate step may be would-deny: {:#?}",
        staged.legitimate_would_deny()
    );
    let forbidden: Vec<_> = staged.steps.iter().filter(|s| s.forbidden).collect();
    assert_eq!(
        staged.forbidden_blocked().len(),
        forbidden.len(),
        "enforcing the suggestion blocks every forbidden step: {forbidden:#?}"
    );
    assert!(
        forbidden.iter().any(|s| s.verdict == "would_deny"),
        "some forbidden step is allowed now and would be denied: {forbidden:#?}"
    );
    let flows_total: f64 = samples
        .iter()
        .filter(|x| x.name == "segwatch_flows_total")
        .map(|x| x.value)
        .sum();
    let connections: BTreeSet<(String, String)> = outcome
        .reports
        .iter()
        .map(|r| (s(r, "observer"), s(r, "connection")))
        .collect();
    assert_eq!(
        flows_total,
        connections.len() as f64,
        "segwatch_flows_total over both agents counts each connection once"
    );
    lab_probes::check(&outcome);
}

#[path = "lab_checks/probes.rs"]
mod lab_probes;
