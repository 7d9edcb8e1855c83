//! `segwatch netpol eval` and `matrix` as a user runs them: JSON lines in,
//! JSON lines out, one-line errors for bad queries.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

const INVENTORY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5432}]}]}
status: {podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker, namespace: shop}
spec:
  selector: {matchLabels: {app: worker}}
  template:
    metadata: {labels: {app: worker}}
    spec: {containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: pg}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {}}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]
    ports: [{port: 443}]
"#;

fn inventory() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segwatch-netpol-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("inventory.yaml");
    std::fs::write(&path, INVENTORY).expect("write inventory");
    path
}

fn segwatch(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_segwatch"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("segwatch runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .expect("write queries");
    let out = child.wait_with_output().expect("segwatch finishes");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn eval_answers_each_query_and_reports_bad_lines() {
    let inv = inventory();
    let queries = [
        r#"{"src":"shop/web","dst":"shop/db","port":5432,"protocol":"TCP"}"#,
        r#"{"src":"shop/worker","dst":"shop/db","port":5432}"#,
        r#"{"src":"10.0.0.1","dst":"93.184.216.34","port":443,"protocol":"TCP","id":7}"#,
        r#"{"src":"shop/web","dst":"169.254.169.254","port":443,"protocol":"TCP"}"#,
        r#"{"src":"shop/nope","dst":"shop/db","port":5432}"#,
        "",
        r#"{"src":"shop/web","dst":"shop/db","port":70000}"#,
        "not json",
        r#"{"src":"shop/db","dst":"shop/db","port":1,"protocol":"UDP"}"#,
    ]
    .join("\n");
    let (code, out, err) = segwatch(
        &["netpol", "eval", "--inventory", inv.to_str().unwrap()],
        &queries,
    );
    assert_eq!(code, 1, "bad lines make the exit status 1; stderr: {err}");
    let answers: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("answers are JSON"))
        .collect();
    assert_eq!(answers.len(), 5, "one answer per good line: {out}");

    let a = &answers[0];
    assert_eq!(a["src"], "shop/web", "the query is echoed");
    assert_eq!(a["allowed"], true);
    assert_eq!(a["egress"]["isolated"], true);
    assert_eq!(
        a["egress"]["allowed_by"],
        serde_json::json!(["shop/web-egress"])
    );
    assert_eq!(
        a["ingress"]["allowed_by"],
        serde_json::json!(["shop/db-ingress"]),
        "named port pg = 5432"
    );

    assert_eq!(
        answers[1]["allowed"], false,
        "the Deployment's pods are not app=web"
    );
    assert_eq!(answers[1]["ingress"]["isolated"], true);
    assert_eq!(answers[1]["ingress"]["allowed_by"], serde_json::json!([]));
    assert_eq!(
        answers[2]["allowed"], true,
        "pod IP -> external 443 by ipBlock"
    );
    assert_eq!(answers[2]["id"], 7, "extra fields are echoed");
    assert_eq!(
        answers[2]["ingress"]["isolated"], false,
        "an external destination is never isolated"
    );
    assert_eq!(
        answers[3]["allowed"], false,
        "except carves out the metadata address"
    );
    assert_eq!(answers[4]["allowed"], true, "a pod may always reach itself");

    let errs: Vec<&str> = err.lines().filter(|l| l.contains("line ")).collect();
    assert_eq!(errs.len(), 3, "one stderr line per bad query: {err}");
    assert!(
        errs[0].contains("line 5")
            && errs[0].contains("field src")
            && errs[0].contains("shop/nope"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("line 7") && errs[1].contains("field port"),
        "{}",
        errs[1]
    );
    assert!(
        errs[2].contains("line 8") && errs[2].contains("not a JSON object"),
        "{}",
        errs[2]
    );
}

#[test]
fn matrix_lists_allowed_pairs() {
    let inv = inventory();
    let (code, out, err) = segwatch(
        &["netpol", "matrix", "--inventory", inv.to_str().unwrap()],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"shop/web[Pod] => shop/db[Pod] : TCP 5432"),
        "{out}"
    );
    assert!(
        lines.contains(&"shop/web[Pod] => 0.0.0.0-169.254.169.253[External] : TCP 443"),
        "{out}"
    );
    assert!(
        lines.contains(&"shop/web[Pod] => shop/worker[Deployment] : All Connections"),
        "{out}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("shop/worker[Deployment] => shop/db")),
        "db admits only web: {out}"
    );
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "the listing is sorted");
}

#[test]
fn unreadable_inventory_is_a_one_line_error() {
    let (code, _, err) = segwatch(
        &["netpol", "matrix", "--inventory", "/nonexistent/inv.yaml"],
        "",
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("/nonexistent/inv.yaml"),
        "the error names the path: {err}"
    );
}
