//! Active evidence in the lab: `segwatch probe` from two pods of node 1,
//! one of them behind an nftables filter in the node namespace, then
//! `segwatch audit --probes` on each report.
//!
//! ```text
//!  segwatch-probe/probe-open ─────────────► node ports, metadata API, pods, Services
//!  segwatch-probe/probe-filtered ─► [node 1: table inet lab_probe, prerouting:
//!        drop to the node addresses 10.99.0.0/16 fd99::/16 and the metadata
//!        endpoints 169.254.0.0/16 168.63.129.16 100.100.100.200 fd00:ec2::254]
//!  each ─► probe-<pod>.json ─► segwatch audit --probes ─► Host ports / Metadata API
//!  segwatch run sees the probes' connections tagged probe: true
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::world::{PodSpec, World, NODE_IP4};
use crate::{heading, progress, rel, sys, Style};

/// The pod behind the filter and the one without.
pub const OPEN: &str = "probe-open";
pub const FILTERED: &str = "probe-filtered";
/// The audit controls the probes decide.
pub const CONTROLS: [&str; 3] = ["Host ports", "Metadata API", "NetworkPolicy enforcement"];

/// `ip netns exec NETNS SEGWATCH probe -o OUT`, with the environment
/// that would name another pod (or a cluster) cleared: the lab and the
/// tests are not inside a cluster. The caller adds the probe's flags.
pub fn probe_command(netns: &str, segwatch: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(segwatch)
        .args(["probe", "-o"])
        .arg(out);
    for v in [
        "POD_NAME",
        "POD_NAMESPACE",
        "POD_SERVICE_ACCOUNT",
        "NODE_NAME",
        "POD_IPS",
        "HOST_IPS",
        "KUBECONFIG",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// One pod's probe.
#[derive(Clone, Debug)]
pub struct Probe {
    /// `namespace/name` of the probing pod.
    pub pod: String,
    pub filtered: bool,
    pub report_path: PathBuf,
    /// The probe report (segwatch.dev/probe/v1alpha1).
    pub report: Value,
    /// `segwatch audit --probes <this report>`: control id → verdict.
    pub verdicts: BTreeMap<String, String>,
    /// The audit's controls (for their evidence and counts).
    pub audit: Value,
}

/// The node 1 filter for `pod`'s host-side veth.
pub fn filter_ruleset(pod: &PodSpec) -> String {
    let i = pod.host_if;
    format!(
        "table inet lab_probe {{
  chain pre {{ type filter hook prerouting priority 0; policy accept;
    iifname \"{i}\" ip daddr {{ 10.99.0.0/16, 169.254.0.0/16, 168.63.129.16, 100.100.100.200 }} drop
    iifname \"{i}\" ip6 daddr {{ fd99::/16, fd00:ec2::254 }} drop
  }}
}}
"
    )
}

/// Runs both probes (the daemons are running) and the audit on each report.
pub fn run(
    world: &World,
    segwatch: &Path,
    dir: &Path,
    inventory: &Path,
    policy: &Path,
    st: Style,
) -> Result<Vec<Probe>> {
    heading(st, "Active evidence: segwatch probe");
    let node = world.node_ns_of(1);
    // Refused probes are answered with ICMP errors, which the kernel rate
    // limits per peer and per namespace: lifted in the lab's node namespace
    // only, so that every refusal is seen as one.
    for key in [
        "net.ipv4.icmp_ratelimit=0",
        "net.ipv6.icmp.ratelimit=0",
        "net.ipv4.icmp_msgs_per_sec=100000",
        "net.ipv4.icmp_msgs_burst=100000",
    ] {
        sys::cmd_in(&node, &["sysctl", "-q", "-w", key])
            .with_context(|| format!("sysctl {key} in {node}"))?;
    }
    let filtered = world.pod(FILTERED);
    sys::nft_in(&node, &filter_ruleset(filtered)).context("installing the probe filter")?;
    progress(
        st,
        &format!(
            "node 1 drops what {} sends to node addresses and metadata endpoints (nft table inet lab_probe)",
            filtered.id()
        ),
    );
    let mut out = Vec::new();
    for (name, is_filtered) in [(OPEN, false), (FILTERED, true)] {
        sys::check_interrupt()?;
        let pod = world.pod(name);
        let report_path = dir.join(format!("probe-{name}.json"));
        let _ = std::fs::remove_file(&report_path);
        let mut cmd = probe_command(&world.pod_ns(pod), segwatch, &report_path);
        cmd.arg("--inventory")
            .arg(inventory)
            .arg("--policy")
            .arg(policy)
            .args(["--namespace", pod.namespace, "--pod-name", pod.name])
            .args(["--host-ip", &NODE_IP4.to_string()])
            .args(["--timeout-ms", "500", "--rate", "50"]);
        let o = cmd.output().context("running segwatch probe")?;
        if !o.status.success() {
            bail!(
                "segwatch probe in {} exited {}: {}",
                pod.id(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let text = std::fs::read_to_string(&report_path)
            .with_context(|| format!("reading {}", report_path.display()))?;
        let report: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", report_path.display()))?;
        let audit = audit(segwatch, inventory, policy, &report_path)?;
        let verdicts = verdicts(&audit);
        show(st, pod, is_filtered, &report, &verdicts, &report_path);
        out.push(Probe {
            pod: pod.id(),
            filtered: is_filtered,
            report_path,
            report,
            verdicts,
            audit,
        });
    }
    Ok(out)
}

fn audit(segwatch: &Path, inventory: &Path, policy: &Path, probe: &Path) -> Result<Value> {
    let o = Command::new(segwatch)
        .args(["audit", "--format", "json", "--probes"])
        .arg(probe)
        .arg("--inventory")
        .arg(inventory)
        .arg("--policy")
        .arg(policy)
        .output()
        .context("running segwatch audit --probes")?;
    if !o.status.success() {
        bail!(
            "segwatch audit --probes {} exited {}: {}",
            probe.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    serde_json::from_slice(&o.stdout).context("segwatch audit --format json: not JSON")
}

/// Control id → verdict for the controls the probes decide.
pub fn verdicts(audit: &Value) -> BTreeMap<String, String> {
    audit["controls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let id = c["id"].as_str()?;
            CONTROLS.contains(&id).then(|| {
                (
                    id.to_owned(),
                    c["verdict"].as_str().unwrap_or("").to_owned(),
                )
            })
        })
        .collect()
}

fn show(
    st: Style,
    pod: &PodSpec,
    filtered: bool,
    report: &Value,
    verdicts: &BTreeMap<String, String>,
    path: &Path,
) {
    let sum = &report["summary"];
    println!(
        "  {} {}: {} targets tried: {} reachable, {} refused, {} timeout; {} violations",
        st.bold(&pod.id()),
        if filtered {
            "(behind the node's filter)"
        } else {
            "(no filter)"
        },
        sum["tried"],
        sum["reachable"],
        sum["refused"],
        sum["timeout"],
        sum["violations"],
    );
    for r in report["results"].as_array().into_iter().flatten() {
        if !matches!(r["kind"].as_str(), Some("node" | "metadata")) {
            continue;
        }
        let status = r["status"].as_str().unwrap_or("?");
        let shown = match (r["outcome"].as_str(), status) {
            (Some("violation"), _) => st.red(status),
            (_, "reachable") => st.yellow(status),
            _ => st.green(status),
        };
        println!(
            "      {:<28} {:<32} {shown:<10} {}",
            r["target"].as_str().unwrap_or("?"),
            r["name"].as_str().unwrap_or("?"),
            st.dim(r["outcome"].as_str().unwrap_or("?"))
        );
    }
    let v: Vec<String> = CONTROLS
        .iter()
        .map(|c| {
            let verdict = verdicts.get(*c).map_or("missing", String::as_str);
            let shown = match verdict {
                "PASS" => st.green(verdict),
                "FAIL" => st.red(verdict),
                _ => st.yellow(verdict),
            };
            format!("{c}: {shown}")
        })
        .collect();
    println!("      segwatch audit --probes: {}", v.join(", "));
    println!("      {} {}", st.green("→"), rel(path));
}

/// Is flow report `r` tagged as probe traffic?
pub fn is_probe_flow(r: &Value) -> bool {
    r["probe"] == true
}

/// Did flow report `r` start at or after `t`? (A report without a readable
/// start counts as earlier: it stays with the traffic steps.)
pub fn started_after(r: &Value, t: chrono::DateTime<chrono::Utc>) -> bool {
    r["start"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_some_and(|s| s >= t)
}
