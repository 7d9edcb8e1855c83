//! `segwatch suggest` end to end, on the fixture cluster in
//! `tests/fixtures/suggest/`: pods in several namespaces, Services (one
//! with a named targetPort), cluster DNS, outside IPv4 and IPv6 addresses,
//! the node, the metadata API, ICMP, a flow without attribution, a flow
//! reported twice (two nodes) and one reported at an active timeout, and
//! controller labels that change per rollout.
//!
//! The external checkers (`kubernetes-validate`, `nca`) come from the venv
//! `cargo xtask setup` builds; without them a test fails when
//! `SEGWATCH_REQUIRE_PRIVILEGED=1` (CI) and skips with a note otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize as _;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/suggest")
        .join(name)
}

fn segwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segwatch"))
        .args(args)
        .output()
        .expect("the segwatch binary runs")
}

fn suggest(extra: &[&str]) -> Output {
    let flows = fixture("flows.jsonl");
    let inv = fixture("inventory.yaml");
    let mut args = vec![
        "suggest",
        "--flows",
        flows.to_str().unwrap(),
        "--inventory",
        inv.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    segwatch(&args)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "segwatch suggest must succeed (replay PASS) on the fixture; status {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

fn parse_yaml(text: &str) -> Vec<NetworkPolicy> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| NetworkPolicy::deserialize(d).expect("every document is a NetworkPolicy"))
        .collect()
}

/// A checker from the venv, or `None` (after a note) when it is missing and
/// the run does not require it.
fn tool(name: &str) -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/venv/bin")
        .join(name);
    let found = if venv.exists() {
        Some(venv)
    } else {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|c| c.exists())
        })
    };
    if found.is_none() {
        assert!(
            std::env::var("SEGWATCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "{name} is required (SEGWATCH_REQUIRE_PRIVILEGED=1) but not found; run `cargo xtask setup`"
        );
        eprintln!("note: {name} not found (run `cargo xtask setup`); check skipped");
    }
    found
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("segwatch-suggest-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn fixture_replays_clean_and_summarises() {
    let out = suggest(&[]);
    let yaml = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("replay: 20 of 20 observed connection(s) allowed"),
        "every observed connection must be allowed by the engine replay:\n{stderr}"
    );
    assert!(stderr.contains("PASS"), "{stderr}");
    assert!(
        stderr.contains("over-permission:"),
        "the summary states the over-permission:\n{stderr}"
    );
    assert!(
        stderr.contains("never answered") && stderr.contains("TCP/22"),
        "the unanswered SYN to db:22 is listed, not allowed:\n{stderr}"
    );
    assert!(
        stderr.contains("ignored 2 flow report(s) of neighbour discovery"),
        "IPv6 neighbour discovery is link signalling, not a peer to allow:\n{stderr}"
    );
    let policies = parse_yaml(&yaml);
    let names: Vec<String> = policies
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap(),
                p.metadata.name.as_deref().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "batch/segwatch-default-deny",
            "batch/segwatch-allow-dns",
            "batch/segwatch-backup",
            "kube-system/segwatch-default-deny",
            "kube-system/segwatch-allow-dns",
            "kube-system/segwatch-coredns",
            "payments/segwatch-default-deny",
            "payments/segwatch-allow-dns",
            "payments/segwatch-db",
            "shop/segwatch-default-deny",
            "shop/segwatch-allow-dns",
            "shop/segwatch-api",
            "shop/segwatch-web",
        ],
        "one default-deny and DNS policy per observed namespace, one policy per workload with traffic; none for shop/admin (no traffic)"
    );
    // The db port is not open to the SSH attempt, and web reaches api on the
    // Service's target port (named `http` = 9000), not the Service port.
    assert!(!yaml.contains("port: 22\n"), "{yaml}");
    let web = policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("segwatch-web"))
        .unwrap();
    let egress = web.spec.as_ref().unwrap().egress.as_ref().unwrap();
    let api_rule = egress
        .iter()
        .find(|r| {
            r.to.as_ref().unwrap().iter().any(|p| {
                p.pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .is_some_and(|l| l.get("app").map(String::as_str) == Some("api"))
            })
        })
        .expect("web has an egress rule to api");
    let ports: Vec<String> = api_rule
        .ports
        .iter()
        .flatten()
        .map(|p| format!("{:?}/{}", p.port, p.protocol.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        ports,
        ["Some(Int(9000))/TCP"],
        "Service port 80 -> targetPort http (9000)"
    );
    // Evidence on every rule.
    for p in &policies {
        let spec = p.spec.as_ref().unwrap();
        let ann = p.metadata.annotations.clone().unwrap_or_default();
        for (dir, n) in [
            ("ingress", spec.ingress.as_ref().map_or(0, Vec::len)),
            ("egress", spec.egress.as_ref().map_or(0, Vec::len)),
        ] {
            for i in 0..n {
                let v = ann
                    .get(&format!("segwatch.dev/{dir}-{i}"))
                    .unwrap_or_else(|| {
                        panic!("{:?} {dir} rule {i} has no evidence", p.metadata.name)
                    });
                assert!(v.starts_with("flows="), "{v}");
            }
        }
    }
    let db = policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("segwatch-db"))
        .unwrap();
    let ann = db.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        ann["segwatch.dev/ingress-0"],
        "flows=5 first=2026-11-20T10:04:00Z last=2026-11-20T10:14:03Z",
        "5 flows to db:5432 (the long flow reported twice counts once; the unattributed backup flow counts)"
    );
}

#[test]
fn every_document_passes_kubernetes_validate_strict() {
    let Some(kv) = tool("kubernetes-validate") else {
        return;
    };
    let dir = tmpdir("kv");
    let yaml = ok(&suggest(&[]));
    let file = dir.join("suggested.yaml");
    std::fs::write(&file, &yaml).unwrap();
    // JSON output: each item of the List on its own.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&suggest(&["-o", "json"]))).expect("-o json is JSON");
    assert_eq!(json["kind"], "List");
    let items = json["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        parse_yaml(&yaml).len(),
        "JSON and YAML hold the same policies"
    );
    let mut files = vec![file];
    for (i, item) in items.iter().enumerate() {
        let f = dir.join(format!("item-{i}.json"));
        std::fs::write(&f, serde_json::to_string(item).unwrap()).unwrap();
        files.push(f);
    }
    let out = Command::new(&kv)
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR") && !text.contains("WARN"),
        "kubernetes-validate --strict must accept every document:\n{text}"
    );
    assert!(
        text.matches("passed").count() >= 2 * items.len(),
        "every document was validated:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn output_is_deterministic() {
    let a = ok(&suggest(&[]));
    let b = ok(&suggest(&[]));
    assert_eq!(a, b, "same input, same bytes");
    // Input order does not matter either: flows reversed, inventory
    // documents reversed.
    let dir = tmpdir("det");
    let flows: Vec<String> = std::fs::read_to_string(fixture("flows.jsonl"))
        .unwrap()
        .lines()
        .rev()
        .map(String::from)
        .collect();
    let f = dir.join("flows.jsonl");
    std::fs::write(&f, flows.join("\n")).unwrap();
    let inv_text = std::fs::read_to_string(fixture("inventory.yaml")).unwrap();
    let docs: Vec<&str> = inv_text.split("\n---\n").collect();
    let i = dir.join("inventory.yaml");
    std::fs::write(
        &i,
        docs.into_iter().rev().collect::<Vec<_>>().join("\n---\n"),
    )
    .unwrap();
    let c = ok(&segwatch(&[
        "suggest",
        "--flows",
        f.to_str().unwrap(),
        "--inventory",
        i.to_str().unwrap(),
    ]));
    assert_eq!(a, c, "input order must not change the output");
    let _ = std::fs::remove_dir_all(&dir);
}

fn ip_blocks(policies: &[NetworkPolicy]) -> Vec<String> {
    let mut out = Vec::new();
    for p in policies {
        let spec = p.spec.as_ref().unwrap();
        let peers = spec
            .ingress
            .iter()
            .flatten()
            .flat_map(|r| r.from.iter().flatten())
            .chain(
                spec.egress
                    .iter()
                    .flatten()
                    .flat_map(|r| r.to.iter().flatten()),
            );
        for peer in peers {
            if let Some(b) = &peer.ip_block {
                out.push(b.cidr.clone());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn outside_addresses_are_host_blocks_by_family() {
    let policies = parse_yaml(&ok(&suggest(&[])));
    let blocks = ip_blocks(&policies);
    assert_eq!(
        blocks,
        [
            "169.254.169.254/32",
            "192.168.1.10/32",
            "203.0.113.9/32",
            "2606:2800:220:1:248:1893:25c8:1946/128",
            "2a00:1450:4001:82b::200e/128",
            "8.8.8.8/32",
            "93.184.216.34/32",
        ]
    );
    for b in &blocks {
        let net: ipnet::IpNet = b.parse().expect("a CIDR");
        match net.addr() {
            IpAddr::V4(_) => assert_eq!(net.prefix_len(), 32, "{b}"),
            IpAddr::V6(_) => assert_eq!(net.prefix_len(), 128, "IPv6 must be /128, never /32: {b}"),
        }
    }
}

#[test]
fn aggregation_widens_and_still_replays() {
    let out = suggest(&["--aggregate-cidrs", "v4=24,v6=64"]);
    let policies = parse_yaml(&ok(&out));
    let blocks = ip_blocks(&policies);
    assert!(
        blocks.contains(&"93.184.216.0/24".to_string()),
        "{blocks:?}"
    );
    assert!(
        blocks.contains(&"2606:2800:220:1::/64".to_string()),
        "{blocks:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ipBlock 93.184.216.0/24 allows 256 address(es), 1 observed"),
        "widened blocks are reported:\n{stderr}"
    );
    let bad = segwatch(&[
        "suggest",
        "--flows",
        "x",
        "--inventory",
        "y",
        "--aggregate-cidrs",
        "v4=99",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--aggregate-cidrs"),
        "a bad flag value names the flag"
    );
}

/// Label keys the controllers set per pod or revision.
const UNSTABLE: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "job-name",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/controller-uid",
];

#[test]
fn unstable_labels_never_select() {
    for extra in [&[][..], &["--default-deny", "off"][..]] {
        let policies = parse_yaml(&ok(&suggest(extra)));
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for p in &policies {
            let spec = p.spec.as_ref().unwrap();
            let mut sels = vec![spec.pod_selector.clone()];
            for peer in spec
                .ingress
                .iter()
                .flatten()
                .flat_map(|r| r.from.iter().flatten())
                .chain(
                    spec.egress
                        .iter()
                        .flatten()
                        .flat_map(|r| r.to.iter().flatten()),
                )
            {
                sels.push(peer.pod_selector.clone());
                sels.push(peer.namespace_selector.clone());
            }
            for s in sels.into_iter().flatten() {
                keys.extend(s.match_labels.unwrap_or_default().into_keys());
                assert!(s.match_expressions.is_none());
            }
        }
        for k in UNSTABLE {
            assert!(
                !keys.contains(*k),
                "unstable label {k} in a selector: {keys:?}"
            );
        }
        assert!(
            !keys.contains("app.kubernetes.io/version"),
            "release labels change on upgrade: {keys:?}"
        );
        assert!(keys.contains("app") && keys.contains("k8s-app"), "{keys:?}");
    }
}

#[test]
fn default_deny_off_isolates_only_directions_with_traffic() {
    let out = suggest(&["--default-deny", "off"]);
    let policies = parse_yaml(&ok(&out));
    assert!(
        policies.iter().all(|p| {
            let n = p.metadata.name.as_deref().unwrap();
            n != "segwatch-default-deny" && n != "segwatch-allow-dns"
        }),
        "no namespace-wide policies with --default-deny off"
    );
    for p in &policies {
        let spec = p.spec.as_ref().unwrap();
        let types = spec.policy_types.clone().unwrap();
        assert_eq!(
            types.contains(&"Ingress".to_string()),
            spec.ingress.as_ref().is_some_and(|r| !r.is_empty()),
            "{:?}: Ingress isolation only with ingress rules",
            p.metadata.name
        );
        let egress = spec.egress.clone().unwrap_or_default();
        assert_eq!(types.contains(&"Egress".to_string()), !egress.is_empty());
        if !egress.is_empty() {
            // DNS stays allowed once egress is isolated.
            assert!(
                egress.iter().any(|r| r.to.iter().flatten().any(|peer| peer
                    .pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .is_some_and(|l| l.get("k8s-app").map(String::as_str) == Some("kube-dns")))),
                "{:?} isolates egress without keeping DNS",
                p.metadata.name
            );
        }
    }
    // db had only ingress: its egress is not touched.
    let db = policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("segwatch-db"))
        .unwrap();
    assert_eq!(
        db.spec.as_ref().unwrap().policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("left unrestricted"), "{stderr}");
}

#[test]
fn out_dir_writes_one_file_per_namespace() {
    let dir = tmpdir("outdir");
    let out = suggest(&["--out-dir", dir.to_str().unwrap()]);
    assert!(ok(&out).is_empty(), "nothing on stdout with --out-dir");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "batch.yaml",
            "kube-system.yaml",
            "payments.yaml",
            "shop.yaml"
        ]
    );
    let all = parse_yaml(&ok(&suggest(&[])));
    let mut n = 0;
    for f in &files {
        let ns = f.trim_end_matches(".yaml");
        let ps = parse_yaml(&std::fs::read_to_string(dir.join(f)).unwrap());
        assert!(ps
            .iter()
            .all(|p| p.metadata.namespace.as_deref() == Some(ns)));
        n += ps.len();
    }
    assert_eq!(n, all.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replay_fails_when_a_flow_cannot_be_allowed() {
    // A bare pod without labels cannot be selected by any policy: the
    // suggestion cannot allow its traffic, and the replay must say so.
    let dir = tmpdir("deny");
    let inv = dir.join("inv.yaml");
    std::fs::write(
        &inv,
        format!(
            "{}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: debug, namespace: shop}}\nspec: {{containers: [{{name: c, image: busybox}}]}}\nstatus: {{podIP: 10.1.0.99}}\n",
            std::fs::read_to_string(fixture("inventory.yaml")).unwrap()
        ),
    )
    .unwrap();
    let flows = dir.join("flows.jsonl");
    let line = r#"{"time":"2026-11-20T11:00:04Z","start":"2026-11-20T11:00:00Z","end":"2026-11-20T11:00:03Z","interface":"veth9","protocol":"TCP","ip_version":4,"src":{"ip":"10.1.0.99","port":40000,"kind":"pod","namespace":"shop","pod":"debug"},"dst":{"ip":"10.1.0.6","port":9000,"kind":"pod","namespace":"shop","pod":"api-5f9c6b7d8-xk2lp","workload":"Deployment/api","labels":{"app":"api","pod-template-hash":"5f9c6b7d8"}},"packets":{"sent":3,"received":3},"bytes":{"sent":100,"received":100},"tcp":{"flags":["SYN","ACK"],"state":"established"}}"#;
    std::fs::write(&flows, format!("{line}\n")).unwrap();
    let out = segwatch(&[
        "suggest",
        "--flows",
        flows.to_str().unwrap(),
        "--inventory",
        inv.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "replay failure exits 3:\n{stderr}"
    );
    assert!(stderr.contains("DENIED"), "{stderr}");
    assert!(stderr.contains("no stable labels"), "{stderr}");
    assert!(stderr.contains("FAIL"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flow_line_names_file_and_line() {
    let dir = tmpdir("bad");
    let flows = dir.join("flows.jsonl");
    std::fs::write(&flows, "{\"time\":1}\n").unwrap();
    let out = segwatch(&[
        "suggest",
        "--flows",
        flows.to_str().unwrap(),
        "--inventory",
        fixture("inventory.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:1", flows.display())) && stderr.lines().count() == 1,
        "one line naming file and line: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The permitted-connections config for nca, built straight from the flow
/// reports (not from the suggestion): each observed pod is selected by all
/// of its labels (so each policy speaks of exactly that pod), and allowed
/// exactly its observed peers on the observed ports. Service flows are
/// resolved by hand to what the fixture's Services say.
fn permits_config(flows: &str) -> String {
    use serde_json::Value;
    // ClusterIP:port -> (backend pod labels, namespace, target port)
    let services: BTreeMap<(&str, u64), (BTreeMap<&str, &str>, &str, u64)> = BTreeMap::from([
        (
            ("10.96.1.1", 80),
            (
                BTreeMap::from([("app", "api"), ("pod-template-hash", "5f9c6b7d8")]),
                "shop",
                9000,
            ),
        ),
        (
            ("10.96.0.10", 53),
            (
                BTreeMap::from([("k8s-app", "kube-dns"), ("pod-template-hash", "668d6bf9bc")]),
                "kube-system",
                53,
            ),
        ),
    ]);
    // Unattributed flow endpoints, attributed by hand.
    let by_ip: BTreeMap<&str, (BTreeMap<&str, &str>, &str)> = BTreeMap::from([
        (
            "10.4.0.9",
            (
                BTreeMap::from([("app", "backup"), ("job-name", "backup-28391234")]),
                "batch",
            ),
        ),
        (
            "10.2.0.7",
            (
                BTreeMap::from([
                    ("app", "db"),
                    ("statefulset.kubernetes.io/pod-name", "db-0"),
                ]),
                "payments",
            ),
        ),
    ]);
    #[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
    enum End {
        Pod(String, Vec<(String, String)>),
        Ip(String),
    }
    let end = |v: &Value| -> End {
        let ip = v["ip"].as_str().unwrap();
        match v["kind"].as_str() {
            Some("pod") => End::Pod(
                v["namespace"].as_str().unwrap().to_string(),
                v["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, x)| (k.clone(), x.as_str().unwrap().to_string()))
                    // nca's YAML reader turns the quoted "0" of
                    // apps.kubernetes.io/pod-index into a number and then
                    // rejects it; the pod-name label selects the pod anyway.
                    .filter(|(_, x)| x.parse::<u64>().is_err())
                    .collect(),
            ),
            None if by_ip.contains_key(ip) => {
                let (l, ns) = &by_ip[ip];
                End::Pod(
                    ns.to_string(),
                    l.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
            }
            _ => End::Ip(ip.to_string()),
        }
    };
    // (pod, direction) -> peer -> ports
    let mut rules: BTreeMap<(End, &str), BTreeMap<End, BTreeSet<(String, Option<u64>)>>> =
        BTreeMap::new();
    for line in flows.lines() {
        let f: Value = serde_json::from_str(line).unwrap();
        if f["tcp"]["state"] == "attempted" || f["protocol"] == "ICMPv6" {
            // Unanswered, and neighbour discovery: not traffic to allow.
            continue;
        }
        let proto = f["protocol"].as_str().unwrap().to_string();
        let mut port = f["dst"]["port"].as_u64();
        let src = end(&f["src"]);
        let dst = if f["dst"]["kind"] == "service" {
            let (l, ns, target) = &services[&(f["dst"]["ip"].as_str().unwrap(), port.unwrap())];
            port = Some(*target);
            End::Pod(
                ns.to_string(),
                l.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        } else {
            end(&f["dst"])
        };
        let p = (proto, port);
        if let End::Pod(..) = src {
            rules
                .entry((src.clone(), "Egress"))
                .or_default()
                .entry(dst.clone())
                .or_default()
                .insert(p.clone());
        }
        if let End::Pod(..) = dst {
            rules
                .entry((dst, "Ingress"))
                .or_default()
                .entry(src)
                .or_default()
                .insert(p);
        }
    }
    let peer = |e: &End| -> Value {
        match e {
            End::Pod(ns, l) => serde_json::json!({
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "podSelector": {"matchLabels": l.iter().cloned().collect::<BTreeMap<_, _>>()},
            }),
            End::Ip(ip) => {
                let len = if ip.contains(':') { 128 } else { 32 };
                serde_json::json!({"ipBlock": {"cidr": format!("{ip}/{len}")}})
            }
        }
    };
    let mut docs = Vec::new();
    for (i, ((subject, dir), peers)) in rules.iter().enumerate() {
        let End::Pod(ns, labels) = subject else {
            unreachable!()
        };
        let mut list = Vec::new();
        for (p, ports) in peers {
            let portless = ports.iter().any(|(proto, _)| proto == "ICMP");
            let ports: Vec<Value> = ports
                .iter()
                .filter(|(proto, _)| proto != "ICMP")
                .map(|(proto, port)| serde_json::json!({"protocol": proto, "port": port}))
                .collect();
            let key = if *dir == "Ingress" { "from" } else { "to" };
            let mut rule = serde_json::json!({ key: [peer(p)] });
            if !portless {
                rule["ports"] = Value::Array(ports);
            }
            list.push(rule);
        }
        let key = if *dir == "Ingress" {
            "ingress"
        } else {
            "egress"
        };
        docs.push(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": format!("observed-{i}"), "namespace": ns},
            "spec": {
                "podSelector": {"matchLabels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
                "policyTypes": [dir],
                key: list,
            }
        }));
    }
    docs.iter()
        .map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).unwrap()))
        .collect()
}

#[test]
fn nca_confirms_the_set_permits_every_observed_connection() {
    let Some(nca) = tool("nca") else {
        return;
    };
    let dir = tmpdir("nca");
    let flows = std::fs::read_to_string(fixture("flows.jsonl")).unwrap();
    let permits = dir.join("observed.yaml");
    std::fs::write(&permits, permits_config(&flows)).unwrap();
    // Base: the existing policies of the inventory plus the suggestion.
    let inv = std::fs::read_to_string(fixture("inventory.yaml")).unwrap();
    let existing: String = inv
        .split("\n---\n")
        .filter(|d| d.contains("kind: NetworkPolicy"))
        .map(|d| format!("---\n{d}\n"))
        .collect();
    let base = dir.join("base.yaml");
    std::fs::write(&base, format!("{existing}{}", ok(&suggest(&[])))).unwrap();
    let run = |permits: &Path, base: &Path| -> (bool, String) {
        let out = Command::new(&nca)
            .arg("--permits")
            .arg(permits)
            .arg("--base_np_list")
            .arg(base)
            .arg("--pod_list")
            .arg(fixture("inventory.yaml"))
            .arg("--ns_list")
            .arg(fixture("inventory.yaml"))
            .output()
            .expect("nca runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (passed, text) = run(&permits, &base);
    assert!(
        passed && text.contains("permits all connections"),
        "nca --permits must accept the suggested set for every observed connection:\n{text}"
    );
    // The check can fail: without the web policy, web's traffic is denied.
    let trimmed: String = std::fs::read_to_string(&base)
        .unwrap()
        .split("---\n")
        .filter(|d| !d.trim().is_empty() && !d.contains("name: segwatch-web\n"))
        .map(|d| format!("---\n{d}"))
        .collect();
    let base2 = dir.join("base-without-web.yaml");
    std::fs::write(&base2, trimmed).unwrap();
    let (passed, text) = run(&permits, &base2);
    assert!(
        !passed,
        "nca must reject a set missing the web policy:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Policies without their evidence annotations (what differs between flow
/// logs, with timestamps, and metrics, with a window).
fn specs(policies: &[NetworkPolicy]) -> Vec<NetworkPolicy> {
    policies
        .iter()
        .cloned()
        .map(|mut p| {
            p.metadata.annotations = None;
            p
        })
        .collect()
}

#[test]
fn metric_edges_give_the_same_policies_as_the_flows() {
    use segwatch::report::{EndpointKind, FlowReport};
    use segwatch::suggest::{self, Catalog, ObserveOptions, Observed, Options, WorkloadSample};
    let inv = segwatch::inventory::load_paths(&[fixture("inventory.yaml")]).unwrap();
    let cat = Catalog::build(&inv.objects);
    // Pod and Service traffic only: the metric names no outside address.
    let reports: Vec<FlowReport> = segwatch::report::read_flow_log(&fixture("flows.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.src.kind == Some(EndpointKind::Pod)
                && matches!(r.dst.kind, Some(EndpointKind::Pod | EndpointKind::Service))
                && r.tcp
                    .as_ref()
                    .is_none_or(|t| t.flags.contains(&"ACK".to_string()))
        })
        .collect();
    assert!(
        reports.len() >= 10,
        "the fixture has pod and Service traffic"
    );
    // What the daemon exports for them (judge.rs: workload_label).
    let mut samples: BTreeMap<[String; 6], f64> = BTreeMap::new();
    for r in &reports {
        let dst_w = match r.dst.kind {
            Some(EndpointKind::Service) => {
                format!("Service/{}", r.dst.service.as_ref().unwrap().name)
            }
            _ => r.dst.workload.as_deref().unwrap().to_owned(),
        };
        let key = [
            r.src.namespace.as_deref().unwrap().to_owned(),
            r.src.workload.as_deref().unwrap().to_owned(),
            r.dst.namespace.as_deref().unwrap().to_owned(),
            dst_w,
            r.dst.port.map(|p| p.to_string()).unwrap_or_default(),
            r.protocol.clone(),
        ];
        *samples.entry(key).or_default() += 1.0;
    }
    let samples: Vec<WorkloadSample> = samples
        .into_iter()
        .map(|(k, v)| WorkloadSample {
            src_namespace: k[0].clone(),
            src_workload: k[1].clone(),
            dst_namespace: k[2].clone(),
            dst_workload: k[3].clone(),
            dst_port: k[4].clone(),
            protocol: k[5].clone(),
            flows: v,
            violation: None,
        })
        .collect();
    let t = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    for opts in [
        Options::default(),
        Options {
            default_deny: false,
            aggregate: None,
        },
    ] {
        let from_flows = suggest::generate(
            &Observed::from_flows(&reports, &cat, ObserveOptions::default()),
            &cat,
            &opts,
        );
        let from_metric = suggest::generate(
            &Observed::from_samples(&samples, (t, t), &cat, ObserveOptions::default()),
            &cat,
            &opts,
        );
        assert!(from_flows.policies.len() >= 4, "{:?}", from_flows.stats);
        assert_eq!(
            specs(&from_metric.policies),
            specs(&from_flows.policies),
            "the same traffic as metric edges must give the same policies ({opts:?})"
        );
    }
}

#[test]
fn nothing_observed_is_an_error_not_an_empty_pass() {
    let dir = tmpdir("empty");
    let flows = dir.join("flows.jsonl");
    std::fs::write(&flows, "\n").unwrap();
    let out = segwatch(&[
        "suggest",
        "--flows",
        flows.to_str().unwrap(),
        "--inventory",
        fixture("inventory.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing observed between pods"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
