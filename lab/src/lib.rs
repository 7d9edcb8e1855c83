//! The local lab: a small cluster made of network namespaces on this
//! machine, watched by a real `segwatch run`, driven through allowed and
//! forbidden traffic, and explained. `cargo xtask demo` and the privileged
//! end-to-end test (`tests/tests/lab.rs`) both call [`run`].
//!
//! ```text
//!  World (plain data) ─► inventory.json, policy.yaml      (written to the out dir)
//!        │            └─► topo::build: netns + veths + nft  (serve: listeners)
//!        ▼
//!  segwatch run (one per node netns) ◄── traffic::steps from inside the pods
//!        │   (each connection reported once, by the opener's node)
//!        ├─► flows.jsonl, flows-node2.jsonl ─┐
//!        └─► /metrics of both ───────────────┴─► show: flow table, violations, alerts ─► Outcome
//!  teardown: daemon SIGTERM (flush) ─► listeners stop ─► namespaces deleted
//! ```
//!
//! Everything the lab creates is named `<prefix>-*` (namespaces) and lives
//! inside those namespaces, so [`clean`] finds it all, even after a crash.

pub mod probes;
pub mod serve;
pub mod show;
pub mod staged;
pub mod sys;
pub mod topo;
pub mod traffic;
pub mod world;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

pub use show::Style;
pub use world::World;

/// The prefix `cargo xtask demo` uses.
pub const DEFAULT_PREFIX: &str = "swlab";
/// Where the daemon serves /metrics inside the node namespace.
pub const METRICS_PORT: u16 = 9810;

/// How to run the lab.
pub struct Options {
    /// Start of every namespace name (`swlab` for the demo).
    pub prefix: String,
    /// The segwatch binary to run.
    pub segwatch: PathBuf,
    /// Where the inventory, policy, flow log and reports are written.
    pub out_dir: PathBuf,
    /// Prometheus alert rules to evaluate (deploy/prometheus/rules.yaml).
    pub rules: Option<PathBuf>,
    /// `Some`: leave the lab running; the command starts the process that
    /// keeps the listeners up (it must call [`keep_serving`]).
    pub keep: Option<Command>,
    pub style: Style,
    /// What to tell the user to run to remove a previous lab.
    pub clean_hint: String,
}

/// What a run produced.
pub struct Outcome {
    pub world: World,
    pub done: Vec<traffic::Done>,
    /// Every flow report the daemons wrote (both nodes), but the probes'.
    pub reports: Vec<Value>,
    /// `segwatch probe` from two pods, with the audit of each report.
    pub probes: Vec<probes::Probe>,
    /// The flow reports of the probes' connections (`probe: true`).
    pub probe_flows: Vec<Value>,
    /// /metrics of both daemons (node 1's exposition, then node 2's) once
    /// every flow had been reported: summing a series over it sums the
    /// cluster.
    pub metrics: String,
    pub rows: Vec<show::Row>,
    pub alerts: Vec<show::Alert>,
    /// Extra outputs (suggested policies, audit report) and whether they worked.
    pub extras: Vec<(String, Result<PathBuf, String>)>,
    /// The staged loop: the suggestion staged, this traffic replayed
    /// through it (see [`staged`]).
    pub staged: Result<staged::Loop, String>,
    /// Node 1's flow log.
    pub flow_log: PathBuf,
    /// Every node's flow log.
    pub flow_logs: Vec<PathBuf>,
}

/// The running lab; tears everything down when dropped unless kept.
struct Running {
    prefix: String,
    daemons: Vec<Child>,
    servers: Option<serve::Servers>,
    keep: bool,
}

impl Running {
    /// SIGTERM to the daemons (they flush every open flow), then wait.
    fn stop_daemon(&mut self) -> Result<()> {
        for mut child in std::mem::take(&mut self.daemons) {
            let status = sys::stop_child(&mut child, Duration::from_secs(15))
                .context("waiting for segwatch")?;
            if !status.success() {
                bail!("segwatch exited with {status} on SIGTERM");
            }
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for mut child in std::mem::take(&mut self.daemons) {
            let _ = sys::stop_child(&mut child, Duration::from_secs(15));
        }
        if let Some(s) = self.servers.take() {
            s.stop();
        }
        let _ = clean(&self.prefix);
    }
}

/// What [`clean`] removed.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub processes: Vec<String>,
    pub namespaces: Vec<String>,
    pub failures: Vec<String>,
}

/// Removes every trace of a lab with `prefix`: processes running in its
/// namespaces (the daemon, a `--keep` listener keeper), then the namespaces
/// (their veths and nft tables go with them).
pub fn clean(prefix: &str) -> Result<Cleaned> {
    let mut out = Cleaned::default();
    let me = std::process::id() as i32;
    let namespaces = sys::netns_with_prefix(&format!("{prefix}-"));
    for ns in &namespaces {
        for pid in sys::pids_in(ns) {
            if pid == me {
                continue;
            }
            out.processes.push(format!("{pid} {}", sys::cmdline(pid)));
            sys::terminate(pid, Duration::from_secs(15));
        }
    }
    out.failures = topo::teardown(prefix);
    out.namespaces = namespaces;
    Ok(out)
}

/// Everything of a lab with `prefix` that still exists: namespaces, and
/// processes whose command line mentions `marker` (e.g. the out dir).
pub fn leftovers(prefix: &str, marker: &str) -> Vec<String> {
    let mut left: Vec<String> = sys::netns_with_prefix(&format!("{prefix}-"))
        .into_iter()
        .map(|n| format!("network namespace {n}"))
        .collect();
    let me = std::process::id() as i32;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmd = sys::cmdline(pid);
            if pid != me && !marker.is_empty() && cmd.contains(marker) {
                left.push(format!("process {pid}: {cmd}"));
            }
        }
    }
    left
}

/// HTTP GET on 127.0.0.1:`port` inside network namespace `ns`.
pub fn http_get(ns: &str, port: u16, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    sys::in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, port).into(),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let code = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })
}

/// Runs the lab end to end and prints its story to stdout.
pub fn run(mut opts: Options) -> Result<Outcome> {
    let st = opts.style;
    if !sys::is_root() {
        bail!("the lab needs root: it creates network namespaces and segwatch loads BPF programs");
    }
    for tool in ["ip", "nft", "sysctl"] {
        if Command::new(tool).arg("--version").output().is_err()
            && Command::new(tool).arg("-V").output().is_err()
        {
            bail!("`{tool}` is missing (`cargo xtask setup` installs iproute2 and nftables)");
        }
    }
    if !opts.segwatch.exists() {
        bail!(
            "{} does not exist: build segwatch first",
            opts.segwatch.display()
        );
    }
    let previous = sys::netns_with_prefix(&format!("{}-", opts.prefix));
    if !previous.is_empty() {
        let procs: usize = previous.iter().map(|n| sys::pids_in(n).len()).sum();
        bail!(
            "a previous lab is still there ({} network namespaces like {}, {procs} processes in them); remove it with `{}`",
            previous.len(),
            previous[0],
            opts.clean_hint
        );
    }
    let world = World::new(&opts.prefix);
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let dir = opts
        .out_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", opts.out_dir.display()))?;

    heading(st, "The cluster");
    let inventory = dir.join("inventory.json");
    let policy = dir.join("policy.yaml");
    let flow_log = dir.join("flows.jsonl");
    write(
        &inventory,
        &serde_json::to_string_pretty(&world.inventory())?,
    )?;
    write(
        &policy,
        &serde_yaml_ng::to_string(&world.segmentation_policy())
            .context("serialising the policy")?,
    )?;
    let _ = std::fs::remove_file(&flow_log);
    progress(
        st,
        &format!(
            "inventory {} (kubectl List: namespaces, pods, services, service accounts, node, NetworkPolicies, workloads)",
            rel(&inventory)
        ),
    );
    progress(st, &format!("SegmentationPolicy {}", rel(&policy)));

    let mut lab = Running {
        prefix: opts.prefix.clone(),
        daemons: Vec::new(),
        servers: None,
        keep: false,
    };
    topo::build(&world, |m| progress(st, m))?;
    lab.servers = Some(serve::Servers::start(&world)?);
    progress(
        st,
        "listeners: the pods' containers, cluster DNS, kubelet :10250, etcd :2379, sshd :22 on the node, the metadata API :80",
    );
    sys::check_interrupt()?;

    heading(st, "segwatch");
    let node = world.node_ns();
    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    let flow_log2 = dir.join("flows-node2.jsonl");
    let _ = std::fs::remove_file(&flow_log2);
    let flow_logs = vec![flow_log.clone(), flow_log2];
    for (n, log_file) in [(1u8, &flow_logs[0]), (2, &flow_logs[1])] {
        let node_ns = world.node_ns_of(n);
        let args: Vec<String> = [
            "run",
            "--inventory",
            path_str(&inventory)?,
            "--policy",
            path_str(&policy)?,
            "--flow-log",
            path_str(log_file)?,
            "--metrics-addr",
            &metrics_addr,
            "--node-name",
            &world.node_name_of(n),
            "--interface",
            "lxc*",
            "--idle-timeout",
            "2",
            "--active-timeout",
            "10",
            "--sweep-interval-ms",
            "200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log_path = dir.join(if n == 1 {
            "segwatch.log".to_owned()
        } else {
            format!("segwatch-node{n}.log")
        });
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node_ns])
            .arg(&opts.segwatch)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Its own session: Ctrl-C in the terminal reaches only us, and we stop
        // the daemon with SIGTERM so that it flushes its flows first.
        // SAFETY: setsid is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        };
        progress(
            st,
            &format!(
                "ip netns exec {node_ns} {} {}",
                opts.segwatch.display(),
                args.iter()
                    .map(|a| if a.contains('*') {
                        format!("'{a}'")
                    } else {
                        rel_str(a)
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        );
        lab.daemons.push(cmd.spawn().context("starting segwatch")?);
        let veths = world.pods.iter().filter(|p| p.node == n).count();
        wait_ready(&mut lab, &node_ns, veths, &log_path)?;
        progress(
            st,
            &format!("ready: /readyz 200, attached to all {veths} lxc* veths of {node_ns}"),
        );
    }
    let log_path = dir.join("segwatch.log");

    heading(st, "Traffic");
    let steps = traffic::steps();
    let mut done = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        sys::check_interrupt()?;
        let d =
            traffic::run(&world, step).with_context(|| format!("step {}: {}", i + 1, step.say))?;
        let expect = if step.expect.is_empty() {
            st.green("allowed")
        } else {
            st.red(&step.expect.join(", "))
        };
        println!(
            "  {} {}\n        {} {} → {} {}  {}  {}",
            st.dim(&format!("{:>2}.", i + 1)),
            step.say,
            st.dim(&world.describe(d.src.ip())),
            st.dim(&d.src.to_string()),
            st.dim(&world.describe(d.dst.ip())),
            st.dim(&d.dst.to_string()),
            st.cyan(&format!("«{}»", d.answer)),
            st.dim(&format!("expect: {expect}")),
        );
        done.push(d);
    }

    // TCP flows are reported a second after they close, UDP after the idle
    // timeout (2 s); wait until every step's connection is in the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        sys::check_interrupt()?;
        let reports = read_all(&flow_logs)?;
        let missing = done
            .iter()
            .filter(|d| !reports.iter().any(|r| report_is(r, d)))
            .count();
        if missing == 0 {
            break;
        }
        if Instant::now() > deadline {
            warn(
                st,
                &format!(
                    "{missing} of {} connections are not in the flow log after 20 s; segwatch's log ({}):\n{}",
                    done.len(),
                    rel(&log_path),
                    tail(&log_path, 15)
                ),
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut metrics = String::new();
    for n in [1u8, 2] {
        let (code, text) = http_get(&world.node_ns_of(n), METRICS_PORT, "/metrics")
            .context("scraping /metrics")?;
        if code != 200 {
            bail!("/metrics of {} answered {code}", world.node_name_of(n));
        }
        let file = if n == 1 {
            "metrics.txt".to_owned()
        } else {
            format!("metrics-node{n}.txt")
        };
        write(&dir.join(file), &text)?;
        metrics.push_str(&text);
    }
    // After the scrape above: the figures shown are the traffic steps'.
    let probes_from = chrono::Utc::now();
    let probes = probes::run(&world, &opts.segwatch, &dir, &inventory, &policy, st)?;
    if opts.keep.is_none() {
        lab.stop_daemon()?;
        progress(
            st,
            "segwatch stopped (SIGTERM: open flows flushed, programs detached)",
        );
    }
    heading(st, "What segwatch saw");
    // What started once the probes began (their connections, the answers
    // and ICMP errors they drew) is kept apart from the traffic steps,
    // whose figures were scraped before.
    let (later, reports): (Vec<Value>, Vec<Value>) = read_all(&flow_logs)?
        .into_iter()
        .partition(|r| probes::started_after(r, probes_from));
    let probe_flows: Vec<Value> = later.into_iter().filter(probes::is_probe_flow).collect();
    let rows = show::rows(&world, &reports, &done);
    let (shown, housekeeping): (Vec<_>, Vec<_>) =
        rows.iter().cloned().partition(|r| !r.housekeeping);
    print!("{}", show::table(&shown, st));
    if !housekeeping.is_empty() {
        println!(
            "  {}",
            st.dim(&format!(
                "(+{} ICMPv6 neighbour discovery / multicast listener flows, link housekeeping)",
                housekeeping.len()
            ))
        );
    }
    println!(
        "  {}",
        st.dim(&format!(
            "{} flow reports, one per connection, in {} and {} (each written by the node where the connection was opened); # = the traffic step above",
            reports.len(),
            rel(&flow_logs[0]),
            rel(&flow_logs[1])
        ))
    );
    println!(
        "  {}",
        st.dim(&format!(
            "+{} connections of the probes above, tagged probe: true (segwatch_probe_flows_total, never a violation metric)",
            probe_flows.len()
        ))
    );
    // Did each step get the verdict it should?
    let mut mismatches = Vec::new();
    {
        for (i, d) in done.iter().enumerate() {
            let mut got: Vec<String> = reports
                .iter()
                .filter(|r| report_is(r, d))
                .flat_map(|r| {
                    r["violations"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v["kind"].as_str().map(String::from))
                        .collect::<Vec<_>>()
                })
                .collect();
            got.sort();
            got.dedup();
            let mut want: Vec<String> = d.step.expect.iter().map(|s| s.to_string()).collect();
            want.sort();
            if got != want {
                mismatches.push(format!(
                    "step {}: expected [{}], segwatch said [{}]",
                    i + 1,
                    want.join(", "),
                    got.join(", ")
                ));
            }
        }
    }

    heading(st, "Violations");
    let viol = show::violations(&reports);
    if viol.is_empty() {
        println!("  {}", st.green("none"));
    }
    for (kind, edge, port, reason, n) in &viol {
        println!(
            "  {} {edge} on {port}{}\n      {}",
            st.red(&format!("{kind:<16}")),
            if *n > 1 {
                format!(" (×{n})")
            } else {
                String::new()
            },
            st.dim(reason)
        );
    }
    for m in &mismatches {
        println!("  {} {m}", st.yellow("unexpected:"));
    }

    heading(st, "Metrics");
    let samples = show::parse_metrics(&metrics);
    let flows_total: f64 = samples
        .iter()
        .filter(|x| x.name == "segwatch_flows_total")
        .map(|x| x.value)
        .sum();
    let lost: f64 = samples
        .iter()
        .filter(|x| x.name == "segwatch_events_lost_total")
        .map(|x| x.value)
        .sum();
    println!(
        "  segwatch_flows_total {flows_total}, segwatch_events_lost_total {lost}; the violation series:"
    );
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("segwatch_violations_total{"))
    {
        println!("  {}", st.dim(line));
    }

    heading(st, "Alerts");
    let mut alerts = Vec::new();
    match &opts.rules {
        Some(rules) if rules.exists() => {
            let text = std::fs::read_to_string(rules)
                .with_context(|| format!("reading {}", rules.display()))?;
            let (fired, skipped) = show::evaluate_rules(&text, &metrics)
                .with_context(|| format!("evaluating {}", rules.display()))?;
            if fired.is_empty() {
                println!("  none of the rules in {} fires", rel(rules));
            } else {
                println!("  {} on the daemons' /metrics would fire:", rel(rules));
            }
            for a in &fired {
                let sev = if a.severity == "critical" {
                    st.red(&a.severity)
                } else {
                    st.yellow(&a.severity)
                };
                println!("  {} {} {}", st.bold(&a.name), sev, a.summary);
            }
            if !skipped.is_empty() {
                println!(
                    "  {}",
                    st.dim(&format!(
                        "not judged from one scrape (need Prometheus over time): {}",
                        skipped.join(", ")
                    ))
                );
            }
            alerts = fired;
        }
        _ => {
            let kinds: std::collections::BTreeSet<&str> =
                viol.iter().map(|v| v.0.as_str()).collect();
            println!(
                "  no alert rules found (deploy/prometheus/rules.yaml); segwatch_violations_total has kinds: {}",
                kinds.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    println!(
        "  {}",
        st.dim(&format!(
            "/metrics as scraped: {}",
            rel(&dir.join("metrics.txt"))
        ))
    );

    let extras = run_extras(&opts.segwatch, &dir, &inventory, &policy, &flow_logs, st);
    heading(st, "Staged: the suggestion tried on this traffic");
    let staged = staged::run(
        &opts.segwatch,
        &dir,
        &inventory,
        &flow_logs,
        &reports,
        &done,
    )
    .map_err(|e| format!("{e:#}"));
    staged::print(&staged, st);

    if let Some(keeper) = opts.keep.as_mut() {
        if let Some(s) = lab.servers.take() {
            s.stop();
        }
        keeper
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("keeper.log"))?);
        // SAFETY: as for the daemon.
        unsafe {
            keeper.pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        };
        keeper.spawn().context("starting the listener keeper")?;
        lab.keep = true;
        heading(st, "The lab keeps running");
        println!("  metrics:   ip netns exec {node} curl -s http://{metrics_addr}/metrics");
        println!("  flow log:  tail -f {}", rel(&flow_log));
        println!(
            "  traffic:   ip netns exec {} curl -s http://10.97.0.30/   (storefront/web via its Service)",
            world.pod_ns(world.pod("reporter"))
        );
        println!("  pods:      ip netns list | grep {}-", opts.prefix);
        println!("  remove:    {}", opts.clean_hint);
    } else {
        drop(lab);
        let left = leftovers(&opts.prefix, "");
        if left.is_empty() {
            progress(
                st,
                "lab removed: namespaces, veths, nft tables, listeners, daemon",
            );
        } else {
            bail!("could not remove: {}", left.join("; "));
        }
    }
    Ok(Outcome {
        world,
        done,
        reports,
        probes,
        probe_flows,
        metrics,
        rows,
        alerts,
        extras,
        staged,
        flow_log,
        flow_logs,
    })
}

/// Whether flow report `r` is (one side of) the connection step `d` made.
pub fn report_is(r: &Value, d: &traffic::Done) -> bool {
    let src = &r["src"];
    src["ip"].as_str().and_then(|s| s.parse().ok()) == Some(d.src.ip())
        && src["port"].as_u64() == Some(u64::from(d.src.port()))
}

fn wait_ready(lab: &mut Running, node: &str, interfaces: usize, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sys::check_interrupt()?;
        if let Some(child) = lab.daemons.last_mut() {
            if let Some(status) = child.try_wait()? {
                lab.daemons.pop();
                bail!(
                    "segwatch exited ({status}) before it was ready:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default().trim_end()
                );
            }
        }
        // /readyz can answer before the initial netlink dump has been
        // attached (each attach takes a few ms), so also wait until every
        // pod veth is attached: traffic before that would go unseen.
        if let Ok((200, _)) = http_get(node, METRICS_PORT, "/readyz") {
            if let Ok((200, m)) = http_get(node, METRICS_PORT, "/metrics") {
                let attached = show::parse_metrics(&m)
                    .iter()
                    .find(|x| x.name == "segwatch_interfaces_attached")
                    .map_or(0.0, |x| x.value);
                if attached >= interfaces as f64 {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "segwatch not ready after 30 s:\n{}",
                std::fs::read_to_string(log).unwrap_or_default().trim_end()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `segwatch suggest` and `segwatch audit` over every node's flow log.
fn run_extras(
    segwatch: &Path,
    dir: &Path,
    inventory: &Path,
    policy: &Path,
    flow_logs: &[PathBuf],
    st: Style,
) -> Vec<(String, Result<PathBuf, String>)> {
    let mut out = Vec::new();
    let flows = |cmd: &mut Command| {
        for f in flow_logs {
            cmd.arg("--flows").arg(f);
        }
    };
    heading(st, "Suggested NetworkPolicies");
    let target = dir.join("suggested");
    let _ = std::fs::remove_dir_all(&target);
    let mut cmd = Command::new(segwatch);
    cmd.arg("suggest");
    flows(&mut cmd);
    let r = cmd
        .arg("--inventory")
        .arg(inventory)
        .arg("--out-dir")
        .arg(&target)
        .output();
    out.push(("suggest".to_string(), report_extra(r, &target, st)));
    heading(st, "Audit report");
    let target = dir.join("audit.html");
    let mut cmd = Command::new(segwatch);
    cmd.arg("audit");
    flows(&mut cmd);
    let r = cmd
        .arg("--inventory")
        .arg(inventory)
        .arg("--policy")
        .arg(policy)
        .args(["--format", "html", "-o"])
        .arg(&target)
        .output();
    out.push(("audit".to_string(), report_extra(r, &target, st)));
    out
}

fn report_extra(
    r: std::io::Result<std::process::Output>,
    target: &Path,
    st: Style,
) -> Result<PathBuf, String> {
    match r {
        Ok(o) if o.status.success() => {
            let summary = strip_ansi(&String::from_utf8_lossy(&o.stderr));
            for l in summary.lines().filter(|l| !l.trim().is_empty()).take(12) {
                println!("  {}", st.dim(l));
            }
            println!("  {} {}", st.green("→"), rel(target));
            Ok(target.to_path_buf())
        }
        Ok(o) => {
            let e = format!(
                "exited {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            println!("  {} {e}", st.yellow("failed:"));
            Err(e)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The `--keep` listener keeper: keeps the lab's listeners up until SIGTERM.
/// Its main thread lives in the node namespace, so `ip netns pids` (and
/// [`clean`]) finds it.
pub fn keep_serving(prefix: &str) -> Result<()> {
    let world = World::new(prefix);
    sys::catch_interrupts();
    sys::enter(&world.node_ns())?;
    let servers = serve::Servers::start(&world)?;
    while !sys::interrupted() {
        std::thread::sleep(Duration::from_millis(200));
    }
    servers.stop();
    Ok(())
}

/// The reports of several flow logs, one after the other.
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(read_reports(p)?);
    }
    Ok(out)
}

pub fn read_reports(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a JSON flow report", path.display(), i + 1))
        })
        .collect()
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// A path relative to the current directory when it is below it.
fn rel(p: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    p.strip_prefix(&cwd)
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| p.display().to_string())
}

fn rel_str(s: &str) -> String {
    if s.starts_with('/') {
        rel(Path::new(s))
    } else {
        s.to_string()
    }
}

fn heading(st: Style, s: &str) {
    println!("\n{}", st.bold(&format!("── {s} ")));
}

/// Drops ANSI escape sequences (the tools colour their stderr on a terminal).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e)
            for d in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn warn(st: Style, s: &str) {
    println!("  {} {s}", st.yellow("!"));
}

/// The last `n` lines of a file, indented.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn progress(st: Style, s: &str) {
    println!("  {} {s}", st.green("✓"));
}
