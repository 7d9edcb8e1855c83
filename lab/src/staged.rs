//! The staged-policy loop on the lab (issue #17): suggest → stage → watch →
//! apply, shown on the lab's own traffic.
//!
//! ```text
//!  flow logs ─► segwatch suggest --staged ─► staged.yaml (StagedNetworkPolicies)
//!  each step's reported connection (src, backend dst, port, protocol)
//!    ─► segwatch netpol eval --inventory inventory.json --inventory staged.yaml
//!    ─► per step: staged verdict (allowed | would_deny | ...), deciding rule
//! ```
//!
//! The replay judges the connections exactly as the daemon judges them
//! with the staged objects in its inventory (the same engine and overlay),
//! without running the traffic again: the lab stays seconds long. The
//! legitimate steps must show zero would-deny; the forbidden ones are
//! what enforcing the suggestion would block.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::traffic::Done;

/// One traffic step judged with the staged suggestion applied.
#[derive(Clone, Debug)]
pub struct StepVerdict {
    /// Index into the run's steps.
    pub step: usize,
    pub say: &'static str,
    /// The step is one of the forbidden ones (the lab expects violations).
    pub forbidden: bool,
    /// `allowed | denied | would_deny | would_allow` from the staged field.
    pub verdict: String,
    /// `Kind name` of the deciding rule, if any.
    pub decided_by: String,
}

/// What the loop found.
#[derive(Clone, Debug)]
pub struct Loop {
    /// The StagedNetworkPolicies suggested from the flow logs.
    pub staged_file: PathBuf,
    pub staged_objects: usize,
    pub steps: Vec<StepVerdict>,
    /// How long suggest and the replay took.
    pub took: std::time::Duration,
}

impl Loop {
    /// Legitimate steps the staged policies would deny (want none).
    pub fn legitimate_would_deny(&self) -> Vec<&StepVerdict> {
        self.steps
            .iter()
            .filter(|s| !s.forbidden && s.verdict == "would_deny")
            .collect()
    }

    /// Forbidden steps enforcement would block (would deny, or already
    /// denied by the live policies).
    pub fn forbidden_blocked(&self) -> Vec<&StepVerdict> {
        self.steps
            .iter()
            .filter(|s| s.forbidden && matches!(s.verdict.as_str(), "would_deny" | "denied"))
            .collect()
    }
}

/// Runs the loop: `segwatch suggest --staged`, then every step's reported
/// connection through `segwatch netpol eval` with the staged objects.
pub fn run(
    segwatch: &Path,
    dir: &Path,
    inventory: &Path,
    flow_logs: &[PathBuf],
    reports: &[Value],
    done: &[Done],
) -> Result<Loop> {
    let started = std::time::Instant::now();
    let mut cmd = Command::new(segwatch);
    cmd.args(["suggest", "--staged"]);
    for f in flow_logs {
        cmd.arg("--flows").arg(f);
    }
    let out = cmd
        .arg("--inventory")
        .arg(inventory)
        .output()
        .context("running segwatch suggest --staged")?;
    // Exit 3: the suggestion's own replay found a denied connection; the
    // staged objects are still written and this loop shows which.
    if !matches!(out.status.code(), Some(0 | 3)) {
        bail!(
            "segwatch suggest --staged exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let staged_file = dir.join("suggested-staged.yaml");
    let text = String::from_utf8(out.stdout).context("suggest output is not UTF-8")?;
    let staged_objects = text
        .lines()
        .filter(|l| l.trim() == "kind: StagedNetworkPolicy")
        .count();
    if staged_objects == 0 {
        bail!("segwatch suggest --staged wrote no StagedNetworkPolicy");
    }
    std::fs::write(&staged_file, &text)
        .with_context(|| format!("writing {}", staged_file.display()))?;

    // One query per step: its reported connection (dst: the backend the
    // kernel chose, as the daemon judges it).
    let mut queries = Vec::new();
    let mut which = Vec::new();
    for (i, d) in done.iter().enumerate() {
        let Some(r) = reports.iter().find(|r| crate::report_is(r, d)) else {
            bail!("step {}: no flow report to replay", i + 1);
        };
        let mut q = json!({
            "src": r["src"]["ip"],
            "dst": r["dst"]["ip"],
            "protocol": r["protocol"],
        });
        if let Some(p) = r["dst"]["port"].as_u64() {
            q["port"] = json!(p);
        }
        queries.push(q.to_string());
        which.push(i);
    }
    let qfile = dir.join("staged-queries.jsonl");
    std::fs::write(&qfile, queries.join("\n") + "\n")
        .with_context(|| format!("writing {}", qfile.display()))?;
    let out = Command::new(segwatch)
        .args(["netpol", "eval", "--inventory"])
        .arg(inventory)
        .arg("--inventory")
        .arg(&staged_file)
        .arg("--queries")
        .arg(&qfile)
        .output()
        .context("running segwatch netpol eval")?;
    if !out.status.success() {
        bail!(
            "segwatch netpol eval exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("netpol eval answers are not JSON")?;
    if answers.len() != which.len() {
        bail!(
            "netpol eval answered {} of {} queries",
            answers.len(),
            which.len()
        );
    }
    let steps = which
        .iter()
        .zip(&answers)
        .map(|(&i, a)| {
            let s = &a["staged"];
            let by = &s["decided_by"];
            StepVerdict {
                step: i,
                say: done[i].step.say,
                forbidden: !done[i].step.expect.is_empty(),
                verdict: s["verdict"].as_str().unwrap_or("missing").to_string(),
                decided_by: match (by["kind"].as_str(), by["name"].as_str()) {
                    (Some(k), Some(n)) => format!("{k} {n}"),
                    _ => String::new(),
                },
            }
        })
        .collect();
    Ok(Loop {
        staged_file,
        staged_objects,
        steps,
        took: started.elapsed(),
    })
}

/// Prints the loop's outcome under its heading.
pub fn print(l: &Result<Loop, String>, st: crate::Style) {
    let l = match l {
        Ok(l) => l,
        Err(e) => {
            println!("  {} {e}", st.yellow("failed:"));
            return;
        }
    };
    println!(
        "  {} StagedNetworkPolicies suggested from the flow logs ({}), never enforced; the lab's {} connections replayed through them ({:.1} s):",
        l.staged_objects,
        l.staged_file.display(),
        l.steps.len(),
        l.took.as_secs_f64()
    );
    let legit = l.legitimate_would_deny();
    let n_legit = l.steps.iter().filter(|s| !s.forbidden).count();
    let line = format!(
        "{} would-deny among the {n_legit} legitimate steps",
        legit.len()
    );
    println!(
        "  {}",
        if legit.is_empty() {
            st.green(&line)
        } else {
            st.red(&line)
        }
    );
    for s in &legit {
        println!("    step {}: {} ({})", s.step + 1, s.say, s.decided_by);
    }
    println!("  enforcing them would block the forbidden steps:");
    for s in l.steps.iter().filter(|s| s.forbidden) {
        let v = if matches!(s.verdict.as_str(), "would_deny" | "denied") {
            st.red(&s.verdict)
        } else {
            st.yellow(&format!("{} (not blocked)", s.verdict))
        };
        println!(
            "    {:>2}. {} {v} {}",
            s.step + 1,
            s.say,
            st.dim(&s.decided_by)
        );
    }
    println!(
        "  {}",
        st.dim("then: kubectl apply -f the staged file, watch segwatch_staged_verdicts_total, segwatch staged promote --all")
    );
}
