//! Staged policies end to end (issue #17): `segwatch run --inventory` with
//! live NetworkPolicies and staged objects on a netns lab, real TCP
//! connections through the attached programs, and exact per-policy counts.
//!
//! ```text
//!  shop: web ──8080──► api        staged (no CNI enforces them):
//!        api ──5432──► db           shop/default-deny  ingress, every pod of shop
//!        web ──5432──► db           shop/allow-api     api <- web :8080
//!        api ──8080──► web          shop/allow-db      db  <- api :5432
//!  ops:  tool ─8080──► shop/api     ops/tool-lockdown  action: Delete (removal)
//!        shop/web ─9000──► tool   live: ops/tool-lockdown (tool: no ingress)
//! ```
//!
//! Nothing here enforces a NetworkPolicy: every connection completes, the
//! daemon only judges. Expected, per connection (counted once each):
//! - web → api:8080 ×3, api → db:5432 ×2: allowed live and staged (the
//!   staged allow rule decides);
//! - web → db:5432 ×2, api → web:8080 ×1, tool → api:8080 ×1: `would_deny`
//!   (the staged default-deny isolates the destination, no staged rule
//!   allows the source);
//! - web → tool:9000 ×2: `would_allow` (the live lockdown denies it, its
//!   staged removal lifts it).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tests::*;

/// Pod `<app>-0` of StatefulSet `app` (workload label `StatefulSet/<app>`).
fn stateful_pod(ns: &str, app: &str, p: &Pod) -> Value {
    PodObject::new(ns, &format!("{app}-0"))
        .labels(json!({"app": app}))
        .owner("StatefulSet", app)
        .service_account("default")
        .ip(p.ip4)
        .json()
}

fn staged(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "segwatch.dev/v1alpha1", "kind": "StagedNetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn ingress_from(app: &str, port: u16) -> Value {
    json!([{"from": [{"podSelector": {"matchLabels": {"app": app}}}],
            "ports": [{"protocol": "TCP", "port": port}]}])
}

/// Samples of `family` whose labels contain every `key="value"` of `want`.
fn samples(metrics: &str, family: &str, want: &[(&str, &str)]) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            let (labels, v) = l.rsplit_once(' ').expect("sample");
            (labels.to_owned(), v.parse::<f64>().expect("value"))
        })
        .collect()
}

fn total(metrics: &str, family: &str, want: &[(&str, &str)]) -> f64 {
    samples(metrics, family, want).iter().map(|(_, v)| v).sum()
}

const VERDICTS: &str = "segwatch_staged_verdicts_total";
const SELECTED: &str = "segwatch_staged_selected_total";
const LAST_DENY: &str = "segwatch_staged_last_would_deny_timestamp_seconds";

/// One expected `segwatch_staged_verdicts_total` series.
struct Expect {
    policy: (&'static str, &'static str),
    verdict: &'static str,
    src: &'static str,
    dst: (&'static str, &'static str),
    port: &'static str,
    count: f64,
}

#[test]
fn staged_policies_count_would_deny_and_would_allow_per_policy_exactly() {
    let topo = Topo::with_prefix("stg", 4, true);
    let (web, api, db, tool) = (&topo.pods[0], &topo.pods[1], &topo.pods[2], &topo.pods[3]);
    tcp_server(api, api.ip4, 8080, 20);
    tcp_server(web, web.ip4, 8080, 20);
    tcp_server(db, db.ip4, 5432, 20);
    tcp_server(tool, tool.ip4, 9000, 20);

    let dir = TempDir::new("staged");
    let inventory = json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            namespace_object("shop"), namespace_object("ops"),
            stateful_pod("shop", "web", web), stateful_pod("shop", "api", api), stateful_pod("shop", "db", db),
            stateful_pod("ops", "tool", tool),
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}},
            // Live: nothing may reach tool.
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "tool-lockdown", "namespace": "ops"},
             "spec": {"podSelector": {"matchLabels": {"app": "tool"}}, "policyTypes": ["Ingress"]}},
            staged("shop", "default-deny", json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
            staged("shop", "allow-api", json!({
                "podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                "ingress": ingress_from("web", 8080)})),
            staged("shop", "allow-db", json!({
                "podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                "ingress": ingress_from("api", 5432)})),
            staged("ops", "tool-lockdown", json!({"action": "Delete"})),
        ]
    });
    let inv_path = dir.0.join("inventory.json");
    std::fs::write(&inv_path, serde_json::to_vec_pretty(&inventory).unwrap()).unwrap();
    let mut daemon = Daemon::start(
        &topo.node.name,
        &[
            "--idle-timeout",
            "2",
            "--sweep-interval-ms",
            "200",
            "--inventory",
            inv_path.to_str().unwrap(),
            "--node-name",
            "n1",
        ],
    );

    let t0 = chrono::Utc::now().timestamp();
    let to = |p: &Pod, port: u16| SocketAddr::new(p.ip4, port);
    // (src, dst, port, times): every client port is kept to find the reports.
    let mix: [(&Pod, &Pod, u16, usize); 6] = [
        (web, api, 8080, 3),
        (api, db, 5432, 2),
        (web, db, 5432, 2),
        (api, web, 8080, 1),
        (tool, api, 8080, 1),
        (web, tool, 9000, 2),
    ];
    let mut conns: Vec<(usize, u16)> = Vec::new();
    for (i, (src, dst, port, times)) in mix.iter().enumerate() {
        for _ in 0..*times {
            conns.push((i, tcp_client(src, to(dst, *port), 10)));
        }
    }
    assert_eq!(conns.len(), 11);

    let expect = [
        Expect {
            policy: ("shop", "allow-db"),
            verdict: "would_deny",
            src: "StatefulSet/web",
            dst: ("shop", "StatefulSet/db"),
            port: "5432",
            count: 2.0,
        },
        Expect {
            policy: ("shop", "default-deny"),
            verdict: "would_deny",
            src: "StatefulSet/api",
            dst: ("shop", "StatefulSet/web"),
            port: "8080",
            count: 1.0,
        },
        Expect {
            policy: ("shop", "allow-api"),
            verdict: "would_deny",
            src: "StatefulSet/tool",
            dst: ("shop", "StatefulSet/api"),
            port: "8080",
            count: 1.0,
        },
        Expect {
            policy: ("ops", "tool-lockdown"),
            verdict: "would_allow",
            src: "StatefulSet/web",
            dst: ("ops", "StatefulSet/tool"),
            port: "9000",
            count: 2.0,
        },
    ];
    // Connections per staged object it applies to: default-deny selects
    // every shop pod (9 connections into shop), allow-api the 4 to api,
    // allow-db the 4 to db, the removal the 2 its live policy selects.
    let selected = [
        (("shop", "default-deny"), 9.0),
        (("shop", "allow-api"), 4.0),
        (("shop", "allow-db"), 4.0),
        (("ops", "tool-lockdown"), 2.0),
    ];
    let settled = |m: &str| {
        total(m, VERDICTS, &[]) == 6.0
            && selected.iter().all(|((ns, p), n)| {
                total(m, SELECTED, &[("policy_namespace", ns), ("policy", p)]) == *n
            })
    };
    let got = wait_for(Duration::from_secs(10), || {
        let m = daemon.metrics();
        settled(&m).then_some(())
    });
    // Late duplicates (a connection counted twice) would show up now.
    std::thread::sleep(Duration::from_secs(2));
    let t1 = chrono::Utc::now().timestamp();
    let m = daemon.metrics();
    let staged_lines = m
        .lines()
        .filter(|l| l.starts_with("segwatch_staged_"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        got.is_some(),
        "staged metrics did not settle within 10 s:\n{staged_lines}\n{}",
        daemon.stderr()
    );

    let all = samples(&m, VERDICTS, &[]);
    assert_eq!(
        all.len(),
        expect.len(),
        "one series per expected edge and policy:\n{staged_lines}"
    );
    for e in &expect {
        let want = [
            ("policy_namespace", e.policy.0),
            ("policy", e.policy.1),
            ("verdict", e.verdict),
            ("src_workload", e.src),
            ("dst_namespace", e.dst.0),
            ("dst_workload", e.dst.1),
            ("dst_port", e.port),
            ("protocol", "TCP"),
        ];
        assert_eq!(
            total(&m, VERDICTS, &want),
            e.count,
            "{VERDICTS}{want:?}:\n{staged_lines}"
        );
    }
    for ((ns, p), n) in selected {
        assert_eq!(
            total(&m, SELECTED, &[("policy_namespace", ns), ("policy", p)]),
            n,
            "{SELECTED} of {ns}/{p}:\n{staged_lines}"
        );
    }
    for (ns, p) in [
        ("shop", "allow-db"),
        ("shop", "default-deny"),
        ("shop", "allow-api"),
    ] {
        let at = total(&m, LAST_DENY, &[("policy_namespace", ns), ("policy", p)]) as i64;
        assert!(
            (t0 - 1..=t1 + 1).contains(&at),
            "{LAST_DENY} of {ns}/{p} = {at}, traffic ran in {t0}..{t1}"
        );
    }
    assert!(
        samples(
            &m,
            LAST_DENY,
            &[("policy_namespace", "ops"), ("policy", "tool-lockdown")]
        )
        .is_empty(),
        "the removal never would deny: no last-would-deny series\n{staged_lines}"
    );

    assert_eq!(daemon.stop(), 0);
    let reports = daemon.reports();
    // (verdict, decided_by {kind, name, direction, action, rule}, policy, selected)
    type Want = (
        &'static str,
        Option<(
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            Option<u64>,
        )>,
        Option<&'static str>,
        &'static [&'static str],
    );
    let want: [Want; 6] = [
        (
            "allowed",
            Some((
                "StagedNetworkPolicy",
                "shop/allow-api",
                "ingress",
                "Allow",
                Some(0),
            )),
            None,
            &["shop/allow-api", "shop/default-deny"],
        ),
        (
            "allowed",
            Some((
                "StagedNetworkPolicy",
                "shop/allow-db",
                "ingress",
                "Allow",
                Some(0),
            )),
            None,
            &["shop/allow-db", "shop/default-deny"],
        ),
        (
            "would_deny",
            Some((
                "StagedNetworkPolicy",
                "shop/allow-db",
                "ingress",
                "Deny",
                None,
            )),
            Some("shop/allow-db"),
            &["shop/allow-db", "shop/default-deny"],
        ),
        (
            "would_deny",
            Some((
                "StagedNetworkPolicy",
                "shop/default-deny",
                "ingress",
                "Deny",
                None,
            )),
            Some("shop/default-deny"),
            &["shop/default-deny"],
        ),
        (
            "would_deny",
            Some((
                "StagedNetworkPolicy",
                "shop/allow-api",
                "ingress",
                "Deny",
                None,
            )),
            Some("shop/allow-api"),
            &["shop/allow-api", "shop/default-deny"],
        ),
        (
            "would_allow",
            None,
            Some("ops/tool-lockdown"),
            &["ops/tool-lockdown"],
        ),
    ];
    for (i, port) in &conns {
        let (src, dst, dport, _) = mix[*i];
        let r = reports
            .iter()
            .find(|r| {
                r["src"]["ip"] == src.ip4.to_string()
                    && r["src"]["port"] == *port
                    && r["dst"]["ip"] == dst.ip4.to_string()
                    && r["dst"]["port"] == dport
            })
            .unwrap_or_else(|| panic!("no report of connection {i} (port {port}): {reports:#?}"));
        let (verdict, decided, policy, sel) = &want[*i];
        let s = &r["staged"];
        assert_eq!(s["verdict"], *verdict, "connection {i}: {r}");
        match decided {
            Some((kind, name, direction, action, rule)) => {
                let d = &s["decided_by"];
                assert_eq!(
                    (&d["kind"], &d["name"], &d["direction"], &d["action"]),
                    (
                        &json!(kind),
                        &json!(name),
                        &json!(direction),
                        &json!(action)
                    ),
                    "connection {i}: {r}"
                );
                assert_eq!(d["rule"].as_u64(), *rule, "connection {i}: {r}");
            }
            None => assert!(
                s.get("decided_by").is_none(),
                "connection {i}: no rule decides an unisolated pod: {r}"
            ),
        }
        assert_eq!(s["policy"].as_str(), *policy, "connection {i}: {r}");
        assert_eq!(s["selected"], json!(sel), "connection {i}: {r}");
        // The live verdict is unchanged by staging.
        let live_allowed = *i != 5;
        assert_eq!(r["netpol"]["allowed"], live_allowed, "connection {i}: {r}");
    }
}
