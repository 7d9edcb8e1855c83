//! `segwatch netpol eval` with staged objects in the inventory (issue #17):
//! each answer carries the flow log's `staged` field, so a connection can
//! be tried against a staged policy without traffic (the lab's staged loop
//! replays its connections this way).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const INVENTORY: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
status: {podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
status: {podIPs: [{ip: 10.0.0.3}]}
---
apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: db-lockdown, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 5432}]}]
";

fn eval(inventory: &str, queries: &str) -> Vec<Value> {
    let dir = std::env::temp_dir().join(format!("segwatch-staged-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let inv = dir.join("inventory.yaml");
    std::fs::write(&inv, inventory).expect("write inventory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_segwatch"))
        .args(["netpol", "eval", "--inventory"])
        .arg(&inv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("segwatch runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(queries.as_bytes())
        .expect("queries written");
    let out = child.wait_with_output().expect("segwatch ends");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("answer is JSON"))
        .collect()
}

#[test]
fn eval_answers_carry_the_staged_verdict_when_staged_objects_exist() {
    let a = eval(
        INVENTORY,
        "{\"src\":\"shop/api\",\"dst\":\"shop/db\",\"port\":5432}\n{\"src\":\"10.0.0.1\",\"dst\":\"10.0.0.2\",\"port\":5432}\n",
    );
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["allowed"], true);
    assert_eq!(a[0]["staged"]["verdict"], "allowed");
    assert_eq!(a[0]["staged"]["decided_by"]["name"], "shop/db-lockdown");
    assert_eq!(a[0]["staged"]["decided_by"]["action"], "Allow");
    assert_eq!(a[1]["allowed"], true, "live: nothing isolates db");
    assert_eq!(a[1]["staged"]["verdict"], "would_deny");
    assert_eq!(a[1]["staged"]["decided_by"]["kind"], "StagedNetworkPolicy");
    assert_eq!(a[1]["staged"]["policy"], "shop/db-lockdown");

    // Without staged objects the field is absent (answers as before).
    let live_only = INVENTORY
        .split("---")
        .filter(|d| !d.contains("StagedNetworkPolicy"))
        .collect::<Vec<_>>()
        .join("---");
    let a = eval(
        &live_only,
        "{\"src\":\"10.0.0.1\",\"dst\":\"10.0.0.2\",\"port\":5432}\n",
    );
    assert!(a[0].get("staged").is_none(), "{}", a[0]);
}
