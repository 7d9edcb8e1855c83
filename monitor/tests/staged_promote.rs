//! `segwatch staged promote` and `segwatch suggest --staged` end to end: the
//! binary on an inventory with a staged policy and a window of flow reports.
//! Promote refuses while the window has would-deny connections; otherwise
//! its output passes `kubernetes-validate --strict` (from PATH or
//! target/tools/venv: missing = failure) and replaying the window through the
//! promoted policies gives exactly the staged verdicts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use segwatch::netpol::staged::{Overlay, StagedObjects};
use segwatch::netpol::{Engine, Objects, Peer, Query};
use segwatch::report::{FlowReport, StagedVerdict};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target").join("staged-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create target/staged-tests");
    dir
}

const LIVE: &str = r"apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
status: {podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: shop, labels: {app: api}}
status: {podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
status: {podIPs: [{ip: 10.0.0.3}]}
";

const STAGED: &str = r"apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: db-lockdown, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 5432, protocol: TCP}]
";

fn flow(conn: &str, src: &str, dst: &str, port: u16) -> String {
    serde_json::json!({
        "time": "2026-12-01T10:00:05Z", "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T10:00:05Z",
        "interface": "veth1", "protocol": "TCP", "ip_version": 4,
        "src": {"ip": src, "port": 40000},
        "dst": {"ip": dst, "port": port},
        "packets": {"sent": 3, "received": 2}, "bytes": {"sent": 180, "received": 120},
        "netpol": {"allowed": true, "ingress": [], "egress": []},
        "verdict": "allowed", "connection": conn
    })
    .to_string()
}

/// Writes `lines` as the flow log of `dir`.
fn write_flows(dir: &Path, lines: &[String]) -> PathBuf {
    let log = dir.join("flows.jsonl");
    std::fs::write(&log, lines.join("\n") + "\n").expect("write flows");
    log
}

/// `segwatch ARGS --inventory DIR/inventory --flows LOG`.
fn segwatch(dir: &Path, args: &[&str], log: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segwatch"))
        .args(args)
        .arg("--inventory")
        .arg(dir.join("inventory"))
        .arg("--flows")
        .arg(log)
        .output()
        .unwrap_or_else(|e| panic!("run segwatch {}: {e}", args.join(" ")))
}

fn promote(dir: &Path, flows: &[String], extra: &[&str]) -> Output {
    let log = write_flows(dir, flows);
    let args: Vec<&str> = ["staged", "promote"].iter().chain(extra).copied().collect();
    segwatch(dir, &args, &log)
}

fn inventory(dir: &Path) {
    let inv = dir.join("inventory");
    std::fs::create_dir_all(&inv).expect("inventory dir");
    std::fs::write(inv.join("live.yaml"), LIVE).expect("write live");
    std::fs::write(inv.join("staged.yaml"), STAGED).expect("write staged");
}

fn kubernetes_validate() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("kubernetes-validate"))
            .find(|c| c.is_file())
    });
    let venv = root().join("target/tools/venv/bin/kubernetes-validate");
    on_path
        .or_else(|| venv.is_file().then_some(venv))
        .expect("kubernetes-validate not found on PATH or in target/tools/venv/bin (`cargo xtask setup` installs it)")
}

#[test]
fn promote_refuses_while_the_window_has_would_deny_connections() {
    let dir = scratch("refuse");
    inventory(&dir);
    let flows = [
        flow("c1", "10.0.0.2", "10.0.0.3", 5432),
        flow("c2", "10.0.0.1", "10.0.0.3", 5432),
    ];
    let out = promote(&dir, &flows, &["shop/db-lockdown"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "refused with exit 4: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing to apply is printed when refused"
    );
    assert!(
        stderr.contains("2 connection(s) judged in the window, 2 selected, 1 would-deny"),
        "{stderr}"
    );
    assert!(
        stderr.contains("would deny: - 10.0.0.1 -> - 10.0.0.3:5432 TCP"),
        "the evidence names the connection: {stderr}"
    );
    // --force prints it anyway.
    let out = promote(&dir, &flows, &["shop/db-lockdown", "--force"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kind: NetworkPolicy"));
    // An unknown name is a one-line error.
    let out = promote(&dir, &flows, &["shop/nope"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shop/nope"), "{stderr}");
}

#[test]
fn promoted_policy_validates_and_replays_to_the_staged_verdicts() {
    let dir = scratch("promote");
    inventory(&dir);
    let flows = [
        flow("c1", "10.0.0.2", "10.0.0.3", 5432),
        flow("c2", "10.0.0.1", "10.0.0.2", 8080),
        flow("c3", "10.0.0.2", "10.0.0.1", 80),
    ];
    let out = promote(&dir, &flows, &["--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "no would-deny: promoted; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let promoted = dir.join("promoted.yaml");
    std::fs::write(&promoted, &stdout).expect("write promoted");
    let v = Command::new(kubernetes_validate())
        .arg("--strict")
        .arg(&promoted)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        v.status.success(),
        "kubernetes-validate --strict rejects the promoted policy:\n{}{}\n{stdout}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    // Replay: live + promoted (plain objects) against live + staged, for
    // the window and for every pair on a few ports.
    let live = segwatch::inventory::parse_str(Path::new("live.yaml"), LIVE).expect("live");
    let staged = segwatch::inventory::parse_str(Path::new("staged.yaml"), STAGED).expect("staged");
    let promoted_objs =
        segwatch::inventory::parse_str(&promoted, &stdout).expect("promoted parses");
    assert_eq!(promoted_objs.objects.len(), 1, "{stdout}");
    let mut applied = live.objects.clone();
    applied.extend(promoted_objs.objects);
    let (applied_engine, _) = Engine::build(&Objects::from_inventory(&applied));
    let (live_engine, _) = Engine::build(&Objects::from_inventory(&live.objects));
    let (overlay, warnings) = Overlay::build(
        &Objects::from_inventory(&live.objects),
        &StagedObjects::from_inventory(&staged.objects),
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    let reports: Vec<FlowReport> = flows
        .iter()
        .map(|l| serde_json::from_str(l).expect("report"))
        .collect();
    let mut queries: Vec<Query> = reports
        .iter()
        .map(|r| Query {
            src: Peer::Ip(r.src.ip),
            dst: Peer::Ip(r.dst.ip),
            protocol: segwatch::netpol::Protocol::Tcp,
            port: r.dst.port.unwrap_or(0),
        })
        .collect();
    for s in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        for d in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            for port in [80, 5432, 8080] {
                queries.push(Query {
                    src: Peer::Ip(s.parse().expect("ip")),
                    dst: Peer::Ip(d.parse().expect("ip")),
                    protocol: segwatch::netpol::Protocol::Tcp,
                    port,
                });
            }
        }
    }
    let mut would_deny = 0;
    for q in &queries {
        let live_d = live_engine.evaluate(q);
        let j = overlay.judge(&live_engine, &live_d, q);
        let staged_allowed = matches!(
            j.verdict,
            StagedVerdict::Allowed | StagedVerdict::WouldAllow
        );
        if j.verdict == StagedVerdict::WouldDeny {
            would_deny += 1;
        }
        assert_eq!(
            applied_engine.evaluate(q).allowed,
            staged_allowed,
            "{q:?}: the promoted policy must decide as the staged one did"
        );
    }
    // web/db -> db on every port, api -> db on 80 and 8080.
    assert_eq!(would_deny, 5, "would-deny among the probed pairs");
}

#[test]
fn suggest_staged_writes_staged_objects() {
    let dir = scratch("suggest");
    inventory(&dir);
    std::fs::remove_file(dir.join("inventory/staged.yaml")).expect("rm staged");
    let mut lines = Vec::new();
    for (i, (s, d, p)) in [
        ("10.0.0.2", "10.0.0.3", 5432u16),
        ("10.0.0.1", "10.0.0.2", 8080),
    ]
    .into_iter()
    .enumerate()
    {
        let mut v: serde_json::Value =
            serde_json::from_str(&flow(&format!("c{i}"), s, d, p)).expect("json");
        v["tcp"] = serde_json::json!({"flags": ["SYN", "ACK"], "state": "established"});
        lines.push(v.to_string());
    }
    // A violation: never turned into an allow rule by default.
    let mut v: serde_json::Value =
        serde_json::from_str(&flow("c9", "10.0.0.1", "10.0.0.3", 22)).expect("json");
    v["verdict"] = "violation".into();
    v["violations"] = serde_json::json!([{"kind": "within_namespace", "rule": "r", "reason": "x"}]);
    lines.push(v.to_string());
    let log = write_flows(&dir, &lines);
    let out = segwatch(&dir, &["suggest", "--staged"], &log);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let inv = segwatch::inventory::parse_str(Path::new("s.yaml"), &stdout).expect("parses");
    assert!(!inv.objects.is_empty(), "{stdout}");
    assert!(
        inv.objects
            .iter()
            .all(|o| o.kind() == segwatch::inventory::ObjectKind::StagedNetworkPolicy),
        "every suggestion is staged: {stdout}"
    );
    assert!(
        stderr.contains("left out (violation within_namespace, 1 flow(s); --include-violations"),
        "the summary says what was left out and why: {stderr}"
    );
    // Staged together with the flows, they would deny none of the allowed ones.
    std::fs::write(dir.join("inventory/suggested.yaml"), &stdout).expect("write");
    let out = segwatch(&dir, &["staged", "promote", "--all"], &log);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The violation's connection (web -> db:22) is what they would deny.
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("10.0.0.1 -> - 10.0.0.3:22 TCP"), "{stderr}");
    assert_eq!(stderr.matches("would deny:").count(), 1, "{stderr}");
}

#[test]
fn audit_has_a_section_per_staged_policy() {
    let dir = scratch("audit");
    inventory(&dir);
    let log = write_flows(
        &dir,
        &[
            flow("c1", "10.0.0.2", "10.0.0.3", 5432),
            flow("c2", "10.0.0.1", "10.0.0.3", 5432),
            flow("c3", "10.0.0.1", "10.0.0.2", 80),
        ],
    );
    let out = segwatch(&dir, &["audit", "--format", "json"], &log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("audit JSON");
    let s = &v["staged"][0];
    assert_eq!(s["kind"], "StagedNetworkPolicy");
    assert_eq!(s["name"], "shop/db-lockdown");
    assert_eq!(s["connections_judged"], 3);
    assert_eq!(s["connections_selected"], 2, "api->db and web->db");
    assert_eq!(s["would_deny"], 1);
    assert_eq!(s["would_allow"], 0);
    assert!(
        s["would_deny_evidence"][0]
            .as_str()
            .is_some_and(|e| e.contains("10.0.0.1 -> - 10.0.0.3:5432 TCP")),
        "{s}"
    );
    let out = segwatch(&dir, &["audit", "--format", "md"], &log);
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("## Staged policy StagedNetworkPolicy shop/db-lockdown"),
        "{md}"
    );
    assert!(md.contains("- Would deny: **1**"), "{md}");
}
