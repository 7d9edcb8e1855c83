//! Bad input at every door: policy files, inventory files, flow logs for
//! `suggest`/`audit`, `netpol eval` queries and command-line flags, given
//! to the real `segwatch` binary. Each must end in exactly ONE error line on
//! stderr that names the file and line/document or the field or flag, a
//! non-zero exit, and no panic (CONTRACT.md: "Exits non-zero with a
//! one-line reason on bad flags, unreadable/invalid files").
//!
//! `segwatch run` cases run inside a namespace of their own: if a check
//! ever regressed and the daemon started, it would watch that empty
//! namespace instead of the host's interfaces.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::*;

/// A good flow report line (the contract's shape).
const GOOD_FLOW: &str = r#"{"time":"2026-01-01T00:00:02Z","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z","interface":"veth1","protocol":"TCP","ip_version":4,"src":{"ip":"10.0.0.1","port":40312,"kind":"pod","namespace":"shop","pod":"web","workload":"Pod/web","labels":{"app":"web"}},"dst":{"ip":"10.0.0.2","port":5432,"kind":"pod","namespace":"shop","pod":"db","labels":{"app":"db"}},"packets":{"sent":3,"received":2},"bytes":{"sent":180,"received":120},"tcp":{"flags":["SYN","ACK"],"state":"established"},"verdict":"allowed"}"#;

const INVENTORY: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c}]}
status: {podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5432}]}]}
status: {podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: pg}]}]
";

const POLICY_HEAD: &str =
    "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: p}\n";

/// The input files of every case, in one temporary directory.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Self {
        let f = Files {
            dir: TempDir::new("bad-input"),
        };
        let policy_ok = format!("{POLICY_HEAD}spec: {{}}\n");
        for (name, text) in [
            ("inventory.yaml", INVENTORY.to_string()),
            ("flows.jsonl", format!("{GOOD_FLOW}\n")),
            ("policy-ok.yaml", policy_ok.clone()),
            (
                "policy-port.yaml",
                format!(
                    "{POLICY_HEAD}spec:\n  crossNamespace:\n    allow:\n      - from: {{namespace: a}}\n        to: {{namespace: b, ports: [\"80/XTP\"]}}\n"
                ),
            ),
            (
                "policy-doc2.yaml",
                format!("{policy_ok}---\n{POLICY_HEAD}spec:\n  crossNamespac: {{}}\n"),
            ),
            (
                "policy-cidr.yaml",
                format!("{POLICY_HEAD}spec:\n  external:\n    allow: [{{to: {{cidr: 10.0.0.0/33}}}}]\n"),
            ),
            (
                "policy-newline-key.yaml",
                format!("{POLICY_HEAD}spec: {{\"cross\\nNamespace\": {{}}}}\n"),
            ),
            (
                "policy-kind.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n".to_string(),
            ),
            ("policy-syntax.yaml", format!("{POLICY_HEAD}spec: [\n")),
            (
                "inventory-syntax.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: x\n  namespace: [\n".to_string(),
            ),
            (
                "inventory-trunc.json",
                r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","#
                    .to_string(),
            ),
            ("inventory-binary.yaml", "\u{0}\u{1}\u{2}".to_string()),
            (
                "flows-trunc.jsonl",
                format!("{GOOD_FLOW}\n{}\n", &GOOD_FLOW[..GOOD_FLOW.len() / 2]),
            ),
            (
                "flows-nonjson.jsonl",
                format!("{GOOD_FLOW}\n\n{GOOD_FLOW}\nthis is not json\n"),
            ),
            (
                "flows-field.jsonl",
                format!("{}\n", GOOD_FLOW.replace("\"10.0.0.2\"", "\"10.0.0.300\"")),
            ),
            (
                "flows-type.jsonl",
                format!("{}\n", GOOD_FLOW.replace("\"sent\":3", "\"sent\":-3")),
            ),
            ("queries-none.jsonl", String::new()),
        ] {
            std::fs::write(f.dir.0.join(name), text).expect("write input file");
        }
        std::fs::write(f.dir.0.join("flows-binary.jsonl"), [0xff, 0xfe, 0x00, 0x0a])
            .expect("write binary flow log");
        // An inventory directory with one broken file among good ones.
        let inv_dir = f.dir.0.join("inv");
        std::fs::create_dir_all(&inv_dir).expect("inv dir");
        std::fs::write(inv_dir.join("a-good.yaml"), INVENTORY).expect("write");
        std::fs::write(
            inv_dir.join("b-broken.yaml"),
            "kind: Pod\nmetadata: {name: [}\n",
        )
        .expect("write");
        f
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    stdin: String,
    /// Every one of these must be in the error line.
    expect: Vec<String>,
}

fn case(name: &'static str, args: &[&str], expect: &[&str]) -> Case {
    Case {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: String::new(),
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

/// stderr without the daemon's log lines (tracing: an RFC 3339 timestamp
/// first, possibly in ANSI colours), which are diagnostics, not the error.
fn error_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(strip_ansi)
        .filter(|l| {
            let b = l.as_bytes();
            !(b.len() > 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T')
        })
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `segwatch` (inside `netns` when given) and returns exit code, stdout
/// and stderr; a process still running after 60 s fails the case.
fn run_segwatch(
    netns: Option<&str>,
    args: &[String],
    stdin: &str,
) -> (Option<i32>, String, String) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(segwatch_bin());
            c
        }
        None => Command::new(segwatch_bin()),
    };
    let mut child = cmd
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("segwatch starts");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let _ = writer.join();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs every case; returns one message per case that broke the standard.
fn check(netns: Option<&str>, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        let (code, _stdout, stderr) = run_segwatch(netns, &c.args, &c.stdin);
        let lines = error_lines(&stderr);
        let mut why = Vec::new();
        match code {
            None => why.push("still running after 60 s (or killed by a signal)".to_string()),
            Some(0) => why.push("exit status 0".to_string()),
            Some(_) => {}
        }
        if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
            why.push("panicked".to_string());
        }
        if stderr.contains('\u{1b}') {
            why.push("colour escape sequences on a stderr that is not a terminal".to_string());
        }
        if lines.len() != 1 {
            why.push(format!("{} error lines instead of one", lines.len()));
        }
        if let Some(line) = lines.first() {
            if !line.starts_with("segwatch: ") {
                why.push("the error line does not start with `segwatch: `".into());
            }
            for e in &c.expect {
                if !line.contains(e.as_str()) {
                    why.push(format!("does not name `{e}`"));
                }
            }
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {}\n    segwatch {}\n    stderr: {stderr:?}",
                c.name,
                why.join(", "),
                c.args.join(" ")
            ));
        }
    }
    failures
}

fn assert_no_failures(failures: Vec<String>, total: usize) {
    assert!(
        failures.is_empty(),
        "{} of {total} bad inputs broke the one-line-error standard:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_offline_subcommand_rejects_bad_input_with_one_line() {
    let f = Files::new();
    let p = |n: &str| f.path(n);
    let (inv, flows, pol) = (p("inventory.yaml"), p("flows.jsonl"), p("policy-ok.yaml"));
    let missing = p("does-not-exist.jsonl");
    let inv_dir = p("inv");
    let cases = vec![
        // suggest: flow logs and inventories.
        case(
            "suggest: truncated flow log line",
            &[
                "suggest",
                "--flows",
                &p("flows-trunc.jsonl"),
                "--inventory",
                &inv,
            ],
            &["flows-trunc.jsonl:2:", "EOF while parsing"],
        ),
        case(
            "suggest: a line that is not JSON",
            &[
                "suggest",
                "--flows",
                &p("flows-nonjson.jsonl"),
                "--inventory",
                &inv,
            ],
            &["flows-nonjson.jsonl:4:", "not a flow report"],
        ),
        case(
            "suggest: a bad field in a flow report",
            &[
                "suggest",
                "--flows",
                &p("flows-field.jsonl"),
                "--inventory",
                &inv,
            ],
            &["flows-field.jsonl:1:", "dst.ip"],
        ),
        case(
            "suggest: a negative counter",
            &[
                "suggest",
                "--flows",
                &p("flows-type.jsonl"),
                "--inventory",
                &inv,
            ],
            &["flows-type.jsonl:1:", "packets.sent"],
        ),
        case(
            "suggest: a binary flow log",
            &[
                "suggest",
                "--flows",
                &p("flows-binary.jsonl"),
                "--inventory",
                &inv,
            ],
            &["flows-binary.jsonl"],
        ),
        case(
            "suggest: a missing flow log",
            &["suggest", "--flows", &missing, "--inventory", &inv],
            &["does-not-exist.jsonl", "No such file"],
        ),
        case(
            "suggest: a directory as flow log",
            &["suggest", "--flows", &inv_dir, "--inventory", &inv],
            &["inv"],
        ),
        case(
            "suggest: inventory directory with a broken file",
            &["suggest", "--flows", &flows, "--inventory", &inv_dir],
            &["b-broken.yaml", "document 1", "line 2", "YAML"],
        ),
        case(
            "suggest: truncated JSON inventory",
            &[
                "suggest",
                "--flows",
                &flows,
                "--inventory",
                &p("inventory-trunc.json"),
            ],
            &["inventory-trunc.json", "document 1", "line 1", "JSON"],
        ),
        case(
            "suggest: binary inventory",
            &[
                "suggest",
                "--flows",
                &flows,
                "--inventory",
                &p("inventory-binary.yaml"),
            ],
            &["inventory-binary.yaml", "document 1"],
        ),
        case(
            "suggest: unknown output format",
            &[
                "suggest",
                "--flows",
                &flows,
                "--inventory",
                &inv,
                "-o",
                "xml",
            ],
            &["'xml'", "--output"],
        ),
        case(
            "suggest: bad --aggregate-cidrs",
            &[
                "suggest",
                "--flows",
                &flows,
                "--inventory",
                &inv,
                "--aggregate-cidrs",
                "v4=99",
            ],
            &["--aggregate-cidrs", "99"],
        ),
        case(
            "suggest: --inventory missing",
            &["suggest", "--flows", &flows],
            &["--inventory"],
        ),
        // audit: the same files, plus its own flags.
        case(
            "audit: truncated flow log line",
            &[
                "audit",
                "--flows",
                &p("flows-trunc.jsonl"),
                "--inventory",
                &inv,
                "--format",
                "md",
            ],
            &["flows-trunc.jsonl:2:"],
        ),
        case(
            "audit: a bad field in a flow report",
            &[
                "audit",
                "--flows",
                &p("flows-field.jsonl"),
                "--inventory",
                &inv,
                "--format",
                "json",
            ],
            &["flows-field.jsonl:1:", "dst.ip"],
        ),
        case(
            "audit: missing flow log",
            &[
                "audit",
                "--flows",
                &missing,
                "--inventory",
                &inv,
                "--format",
                "md",
            ],
            &["does-not-exist.jsonl"],
        ),
        case(
            "audit: inventory directory with a broken file",
            &[
                "audit",
                "--flows",
                &flows,
                "--inventory",
                &inv_dir,
                "--format",
                "md",
            ],
            &["b-broken.yaml", "document 1"],
        ),
        case(
            "audit: invalid policy port",
            &[
                "audit",
                "--flows",
                &flows,
                "--inventory",
                &inv,
                "--policy",
                &p("policy-port.yaml"),
                "--format",
                "md",
            ],
            &[
                "policy-port.yaml",
                "document 1",
                "spec.crossNamespace.allow[0].to.ports[0]",
                "XTP",
            ],
        ),
        case(
            "audit: policy that is a ConfigMap",
            &[
                "audit",
                "--flows",
                &flows,
                "--inventory",
                &inv,
                "--policy",
                &p("policy-kind.yaml"),
                "--format",
                "md",
            ],
            &["policy-kind.yaml", "ConfigMap"],
        ),
        case(
            "audit: unknown format",
            &[
                "audit",
                "--flows",
                &flows,
                "--inventory",
                &inv,
                "--format",
                "pdf",
            ],
            &["--format", "pdf"],
        ),
        case(
            "audit: bad --generated-at",
            &[
                "audit",
                "--flows",
                &flows,
                "--inventory",
                &inv,
                "--format",
                "md",
                "--generated-at",
                "yesterday",
            ],
            &["--generated-at", "yesterday"],
        ),
        case(
            "audit: bad --max-evidence",
            &[
                "audit",
                "--flows",
                &flows,
                "--inventory",
                &inv,
                "--format",
                "md",
                "--max-evidence",
                "many",
            ],
            &["--max-evidence", "many"],
        ),
        case(
            "audit: unwritable -o",
            &[
                "audit",
                "--flows",
                &flows,
                "--inventory",
                &inv,
                "--policy",
                &pol,
                "--format",
                "md",
                "-o",
                "/nonexistent-dir/report.md",
            ],
            &["/nonexistent-dir/report.md"],
        ),
        // netpol: files and flags (query lines: their own test below).
        case(
            "netpol eval: missing --queries file",
            &["netpol", "eval", "--inventory", &inv, "--queries", &missing],
            &["--queries", "does-not-exist.jsonl"],
        ),
        case(
            "netpol eval: broken inventory",
            &[
                "netpol",
                "eval",
                "--inventory",
                &p("inventory-syntax.yaml"),
                "--queries",
                &p("queries-none.jsonl"),
            ],
            &["inventory-syntax.yaml", "document 1", "line 4"],
        ),
        case(
            "netpol matrix: missing inventory",
            &["netpol", "matrix", "--inventory", &missing],
            &["does-not-exist.jsonl"],
        ),
        case(
            "netpol eval: --inventory missing",
            &["netpol", "eval"],
            &["--inventory"],
        ),
        // The command line itself.
        case("unknown subcommand", &["frobnicate"], &["frobnicate"]),
        case("crd: unknown flag", &["crd", "--bogus"], &["--bogus"]),
        case(
            "bad --log-level",
            &["--log-level", "segwatch=[[[", "crd"],
            &["--log-level", "segwatch=[[["],
        ),
    ];
    let total = cases.len();
    assert_no_failures(check(None, &cases), total);
}

#[test]
fn segwatch_run_rejects_bad_files_and_flags_with_one_line() {
    require_root();
    let f = Files::new();
    let p = |n: &str| f.path(n);
    let ns = Netns::new(format!("sw-bad-{}", unique_tag()));
    // A port that is taken inside the namespace.
    let (tx, rx) = std::sync::mpsc::channel();
    let _holder = ns.run(move || {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        tx.send(l.local_addr().expect("addr").port()).expect("send");
        std::thread::sleep(Duration::from_secs(600));
        drop(l);
    });
    let busy = format!("127.0.0.1:{}", rx.recv().expect("port"));
    // A flow log and metrics address unless the case gives its own (clap
    // rejects a repeated flag before looking at its value).
    let run = |name: &'static str, extra: &[&str], expect: &[&str]| {
        let mut args: Vec<&str> = vec!["run"];
        for (flag, value) in [
            ("--flow-log", "/dev/null"),
            ("--metrics-addr", "127.0.0.1:0"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend_from_slice(extra);
        case(name, &args, expect)
    };
    let cases = vec![
        run(
            "--policy: invalid port",
            &["--policy", &p("policy-port.yaml")],
            &[
                "--policy",
                "policy-port.yaml",
                "document 1",
                "spec.crossNamespace.allow[0].to.ports[0]",
            ],
        ),
        run(
            "--policy: unknown field in the second document",
            &["--policy", &p("policy-doc2.yaml")],
            &["policy-doc2.yaml", "document 2", "crossNamespac"],
        ),
        run(
            "--policy: bad CIDR",
            &["--policy", &p("policy-cidr.yaml")],
            &[
                "policy-cidr.yaml",
                "document 1",
                "spec.external.allow[0].to.cidr",
            ],
        ),
        run(
            "--policy: a field name with a line break",
            &["--policy", &p("policy-newline-key.yaml")],
            &["policy-newline-key.yaml", "document 1", "cross\\nNamespace"],
        ),
        run(
            "--policy: a ConfigMap",
            &["--policy", &p("policy-kind.yaml")],
            &["policy-kind.yaml", "ConfigMap"],
        ),
        run(
            "--policy: YAML syntax",
            &["--policy", &p("policy-syntax.yaml")],
            &["policy-syntax.yaml", "document 1", "line", "YAML"],
        ),
        run(
            "--policy: missing file",
            &["--policy", &p("nope.yaml")],
            &["--policy", "nope.yaml", "No such file"],
        ),
        run(
            "--inventory: YAML syntax",
            &["--inventory", &p("inventory-syntax.yaml")],
            &[
                "--inventory",
                "inventory-syntax.yaml",
                "document 1",
                "line 4",
            ],
        ),
        run(
            "--inventory: truncated JSON",
            &["--inventory", &p("inventory-trunc.json")],
            &["--inventory", "inventory-trunc.json", "JSON"],
        ),
        run(
            "--inventory: directory with a broken file",
            &["--inventory", &p("inv")],
            &["--inventory", "b-broken.yaml", "document 1"],
        ),
        run(
            "--inventory: missing path",
            &["--inventory", &p("nope")],
            &["--inventory", "nope"],
        ),
        run("--max-flows 0", &["--max-flows", "0"], &["--max-flows"]),
        run(
            "--max-flows too big",
            &["--max-flows", "99999999999"],
            &["--max-flows"],
        ),
        run(
            "--idle-timeout 0",
            &["--idle-timeout", "0"],
            &["--idle-timeout"],
        ),
        run(
            "--active-timeout 0",
            &["--active-timeout", "0"],
            &["--active-timeout"],
        ),
        run(
            "--sweep-interval-ms 0",
            &["--sweep-interval-ms", "0"],
            &["--sweep-interval-ms"],
        ),
        run(
            "--metrics-addr not an address",
            &["--metrics-addr", "localhost"],
            &["--metrics-addr", "localhost"],
        ),
        run(
            "--metrics-addr in use",
            &["--metrics-addr", &busy, "--interface", "lo"],
            &["--metrics-addr", &busy, "in use"],
        ),
        run(
            "--node-ip not an IP",
            &["--node-ip", "node1"],
            &["--node-ip", "node1"],
        ),
        run(
            "--attach-mode unknown",
            &["--attach-mode", "xdp"],
            &["--attach-mode", "xdp"],
        ),
        run(
            "--interface unknown",
            &["--interface", "swnosuch0"],
            &["--interface", "swnosuch0", "unknown interface"],
        ),
        run(
            "--flow-log in a missing directory",
            &[
                "--interface",
                "lo",
                "--flow-log",
                "/nonexistent-dir/flows.jsonl",
            ],
            &["--flow-log", "/nonexistent-dir/flows.jsonl"],
        ),
        run("unknown flag", &["--frobnicate"], &["--frobnicate"]),
    ];
    let total = cases.len();
    assert_no_failures(check(Some(&ns.name), &cases), total);
}

#[test]
fn netpol_eval_names_line_and_field_of_each_bad_query() {
    let f = Files::new();
    let queries = [
        "this is not json",
        r#"{"src":"shop/web","dst":"shop/db"}"#,
        r#"{"src":"shop/nope","dst":"shop/db","port":5432}"#,
        r#"{"src":"shop/web","dst":"shop/db","port":70000}"#,
        r#"{"src":"shop/web","dst":"shop/db","port":5432,"protocol":"XTP"}"#,
        r#"[1,2,3]"#,
        r#"{"src":"shop/web","dst":"shop/db","port":"5432"}"#,
        r#"{"src":"shop/web","dst":"shop/db","port":5432}"#,
    ];
    let expect: [&[&str]; 7] = [
        &["line 1", "not a JSON object"],
        &["line 2", "field port"],
        &["line 3", "field src", "shop/nope"],
        &["line 4", "field port", "70000"],
        &["line 5", "field protocol", "XTP"],
        &["line 6"],
        &["line 7", "field port"],
    ];
    let mut input = queries.join("\n");
    input.push('\n');
    let args: Vec<String> = ["netpol", "eval", "--inventory", &f.path("inventory.yaml")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (code, stdout, stderr) = run_segwatch(None, &args, &input);
    assert_eq!(
        code,
        Some(1),
        "bad query lines make exit status 1: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines = error_lines(&stderr);
    assert_eq!(
        lines.len(),
        expect.len() + 1,
        "one line per bad query plus the summary: {stderr}"
    );
    for (line, parts) in lines.iter().zip(expect) {
        assert!(line.starts_with("segwatch: netpol eval: stdin: "), "{line}");
        for part in parts {
            assert!(line.contains(part), "`{line}` must name `{part}`");
        }
    }
    assert!(
        lines[7].contains("7 query line(s) were invalid"),
        "{}",
        lines[7]
    );
    // The good line after the bad ones is still answered.
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        answers.len(),
        1,
        "exactly the good query answered: {stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(answers[0]).expect("answer is JSON");
    assert_eq!(v["allowed"], true, "web may reach db on pg: {v}");
}

#[test]
fn error_line_filter_keeps_errors_and_drops_log_lines() {
    // The filter above must not hide an error line, or the one-line check
    // could not fail.
    let stderr = "\u{1b}[2m2026-11-23T20:23:23.127620Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m no --inventory\n\
                  2026-11-23T20:23:23Z  INFO x\nsegwatch: --max-flows must be at least 1\n\nsecond\n";
    assert_eq!(
        error_lines(stderr),
        vec!["segwatch: --max-flows must be at least 1", "second"]
    );
    assert!(Path::new("/").exists());
}
