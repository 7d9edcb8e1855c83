//! `segwatch-soak`: `segwatch run` under mixed traffic and churn for a long
//! while, sampled every few seconds. `cargo xtask soak [--minutes N]` builds
//! (release) and runs it; it is not part of `cargo xtask test`.
//!
//! ```text
//!  node netns ── veths ── pods p0 p1 (soak-a), p2 p3 (soak-b): TCP/UDP servers
//!    │            └─ churn pods c<k>: created, talk for ~15 s, deleted
//!    │  workers:  TCP (v4/v6, 1-64 KiB), UDP, ICMP/ICMPv6, cross-namespace
//!    │  storms:   every 60 s, 2,000 UDP flows + 200 TCP connections at once
//!    │  scanner:  p1 connects to every port of p3, round after round
//!    └─ segwatch run --inventory --policy (release build)
//!          ▼ every --sample-secs: VmRSS, segwatch_flow_table_entries,
//!            segwatch_events_lost_total{stage}, segwatch_interfaces_attached,
//!            segwatch_metric_series{family} (flat once the port budget is reached)
//!  target/soak/results.json + results.md: first third vs last third
//! ```
//!
//! The verdict is about shape, not speed: did RSS and flow-table occupancy
//! stay flat (last third against first third), were losses counted, did the
//! daemon survive. The exit status is non-zero only when the run could not
//! be measured (the daemon died or could not start).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde_json::{json, Value};
use tests::{enter, metric_value, sh_in, Daemon, Netns, Topo};

/// Run `segwatch run` under mixed traffic and churn; sample its memory,
/// flow-table occupancy, losses and attachments; report whether they stayed
/// flat. Needs root.
#[derive(Parser)]
#[command(name = "segwatch-soak")]
struct Args {
    /// How long traffic runs.
    #[arg(long, default_value_t = 10.0, value_name = "MINUTES")]
    minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    sample_secs: u64,
    /// Directory for results.json and results.md.
    #[arg(long, default_value = "target/soak", value_name = "DIR")]
    out: PathBuf,
    /// How the run was started, as quoted in the results.
    #[arg(long, default_value = "cargo xtask soak", value_name = "TEXT")]
    command: String,
}

/// Counters the traffic threads keep, for the report.
#[derive(Default)]
struct Load {
    tcp: AtomicU64,
    tcp_failed: AtomicU64,
    udp: AtomicU64,
    icmp: AtomicU64,
    storms: AtomicU64,
    pods_created: AtomicU64,
    pods_deleted: AtomicU64,
    bytes: AtomicU64,
    scan_attempts: AtomicU64,
}

impl Load {
    fn json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "tcp_connections": g(&self.tcp), "tcp_failed": g(&self.tcp_failed),
            "udp_datagrams": g(&self.udp), "icmp_pings": g(&self.icmp),
            "storms": g(&self.storms), "pods_created": g(&self.pods_created),
            "pods_deleted": g(&self.pods_deleted), "payload_bytes": g(&self.bytes),
            "scan_attempts": g(&self.scan_attempts),
        })
    }
}

/// xorshift64*: enough randomness to vary the traffic, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn main() -> Result<()> {
    let args = Args::parse();
    tests::require_root();
    // The ICMP part of the mix: without ping it would silently be missing.
    Command::new("ping")
        .arg("-V")
        .output()
        .context("ping not found (Debian package iputils-ping; `cargo xtask setup` installs it)")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out)?;
    let topo = Topo::new(4, true);
    let targets: Vec<IpAddr> = topo.pods.iter().flat_map(|p| [p.ip4, p.ip6]).collect();
    let (inventory, policy) = write_inputs(&out, &topo)?;
    for p in &topo.pods {
        for ip in [p.ip4, p.ip6] {
            tests::tcp_server(p, ip, TCP_PORT, 2048);
        }
        tests::udp_sink(p, SocketAddr::new(p.ip4, UDP_PORT));
    }
    eprintln!(
        "soak: starting segwatch run ({})",
        tests::segwatch_bin().display()
    );
    let mut daemon = Daemon::start(
        &topo.node.name,
        &[
            "--inventory",
            inventory.to_str().context("non-UTF-8 path")?,
            "--policy",
            policy.to_str().context("non-UTF-8 path")?,
        ],
    );
    let pid = daemon.child.as_ref().context("daemon not running")?.id();

    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Load::default());
    let mut threads = Vec::new();
    for (i, p) in topo.pods.iter().enumerate() {
        let (path, stop, load, targets) =
            (p.ns.path(), stop.clone(), load.clone(), targets.clone());
        let own = [p.ip4, p.ip6];
        threads.push(std::thread::spawn(move || {
            enter(&path);
            worker(i as u64, &own, &targets, &stop, &load, None);
        }));
    }
    {
        let (node, tag, stop, load, targets) = (
            topo.node.name.clone(),
            topo.tag.clone(),
            stop.clone(),
            load.clone(),
            targets.clone(),
        );
        threads.push(std::thread::spawn(move || {
            churn(&node, &tag, &targets, &stop, &load)
        }));
    }
    {
        let (path, stop, load) = (topo.pods[0].ns.path(), stop.clone(), load.clone());
        let (v4, v6) = (topo.pods[2].ip4, topo.pods[3].ip6);
        threads.push(std::thread::spawn(move || {
            enter(&path);
            storms(v4, v6, &stop, &load);
        }));
    }
    {
        let (path, stop, load) = (topo.pods[1].ns.path(), stop.clone(), load.clone());
        let target = topo.pods[3].ip4;
        threads.push(std::thread::spawn(move || {
            enter(&path);
            scanner(target, &stop, &load);
        }));
    }

    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let mut samples = Vec::new();
    let mut died = None;
    eprintln!(
        "soak: {} min of traffic, a sample every {} s",
        args.minutes, args.sample_secs
    );
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(args.sample_secs));
        if let Some(c) = daemon.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                died = Some(format!("segwatch exited during the soak: {status}"));
                break;
            }
        }
        match sample(&daemon, pid, started) {
            Ok(s) => {
                eprintln!(
                    "soak: t={:>5.0}s rss={:.1} MiB flows-in-table={} attached={} lost={} budgeted-series={}",
                    s["t"].as_f64().unwrap_or(0.0),
                    s["rss_mib"].as_f64().unwrap_or(0.0),
                    s["flow_table_entries"],
                    s["interfaces_attached"],
                    s["events_lost_total"],
                    s["budgeted_series"]
                );
                samples.push(s);
            }
            Err(e) => eprintln!("soak: sample failed: {e:#}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let exit = if died.is_none() {
        Some(daemon.stop())
    } else {
        None
    };
    let stderr_tail: Vec<String> = daemon
        .stderr()
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .take(20)
        .map(str::to_string)
        .collect();
    let reports = std::fs::metadata(&daemon.flow_log)
        .map(|m| m.len())
        .unwrap_or(0);

    let analysis = analyse(&samples);
    let results = json!({
        "command": args.command,
        "minutes": args.minutes,
        "sample_secs": args.sample_secs,
        "machine": machine(),
        "load": load.json(),
        "daemon": {"exit_status": exit, "died": died, "flow_log_bytes": reports,
                   "warnings_and_errors": stderr_tail},
        "analysis": analysis,
        "samples": samples,
    });
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let md = markdown(&results);
    let md_path = out.join("results.md");
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    print!("{md}");
    eprintln!(
        "soak: wrote {} and {}",
        json_path.display(),
        md_path.display()
    );
    if let Some(d) = died {
        bail!("{d}");
    }
    if samples.len() < 3 {
        bail!("only {} samples: too short to compare", samples.len());
    }
    Ok(())
}

/// Two namespaces, four bare pods, and a policy that allows soak-a → soak-b
/// on TCP 8080 only: the rest of the cross-namespace traffic is violations,
/// so the verdict path and its metric series are exercised too.
fn write_inputs(out: &Path, topo: &Topo) -> Result<(PathBuf, PathBuf)> {
    let mut items = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "soak-a"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "soak-b"}}),
    ];
    for (i, p) in topo.pods.iter().enumerate() {
        let ns = if i < 2 { "soak-a" } else { "soak-b" };
        items.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{i}"), "namespace": ns, "labels": {"app": format!("app{}", i % 2)}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
            "status": {"podIPs": [{"ip": p.ip4.to_string()}, {"ip": p.ip6.to_string()}]}
        }));
    }
    let inventory = out.join("inventory.json");
    std::fs::write(
        &inventory,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )?;
    let policy = out.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: soak}\n\
         spec:\n  crossNamespace:\n    allow:\n      - from: {namespace: soak-a}\n        \
         to: {namespace: soak-b, ports: [\"8080/TCP\"]}\n",
    )?;
    Ok((inventory, policy))
}

/// Traffic from one pod (the calling thread is in its namespace) until
/// `stop`, or until `until` for a churn pod.
fn worker(
    seed: u64,
    own: &[IpAddr],
    targets: &[IpAddr],
    stop: &AtomicBool,
    load: &Load,
    until: Option<Instant>,
) {
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ now_nanos());
    let peers: Vec<IpAddr> = targets
        .iter()
        .copied()
        .filter(|t| !own.contains(t))
        .collect();
    while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
        let dst = peers[rng.below(peers.len() as u64) as usize];
        // Churn pods have IPv4 only.
        if own.iter().all(IpAddr::is_ipv4) && dst.is_ipv6() {
            continue;
        }
        match rng.below(10) {
            0..=5 => {
                let size = 1024 + rng.below(63 * 1024) as usize;
                if tcp_exchange(SocketAddr::new(dst, TCP_PORT), size) {
                    load.tcp.fetch_add(1, Ordering::Relaxed);
                    load.bytes.fetch_add(size as u64, Ordering::Relaxed);
                } else {
                    load.tcp_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            6..=8 if dst.is_ipv4() => {
                if let Ok(s) = UdpSocket::bind("0.0.0.0:0") {
                    for _ in 0..1 + rng.below(5) {
                        if s.send_to(&[0x55; 200], SocketAddr::new(dst, UDP_PORT))
                            .is_ok()
                        {
                            load.udp.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            _ => {
                let v6 = if dst.is_ipv6() { "-6" } else { "-4" };
                let ok = Command::new("ping")
                    .args([
                        v6,
                        "-c",
                        "2",
                        "-i",
                        "0.2",
                        "-W",
                        "1",
                        "-q",
                        &dst.to_string(),
                    ])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if ok {
                    load.icmp.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20 + rng.below(80)));
    }
}

/// Connect, send `size` bytes, half-close, read the reply; false on any error.
fn tcp_exchange(dst: SocketAddr, size: usize) -> bool {
    let run = || -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(&vec![0xa5; size])?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut sink = Vec::new();
        s.read_to_end(&mut sink)?;
        Ok(())
    };
    run().is_ok()
}

/// Pods come and go: every ~8 s a new pod (namespace + veth, IPv4) appears,
/// talks for ~15 s and is deleted, so the daemon attaches and detaches all
/// the time. Addresses cycle through 10.77.100-199.0/30.
fn churn(node: &str, tag: &str, targets: &[IpAddr], stop: &Arc<AtomicBool>, load: &Arc<Load>) {
    let mut alive: Vec<(Netns, Instant, std::thread::JoinHandle<()>)> = Vec::new();
    let mut k: u64 = 0;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Delete the expired ones (their veth goes with the namespace).
        let (gone, keep): (Vec<_>, Vec<_>) = alive.into_iter().partition(|(_, end, _)| now >= *end);
        alive = keep;
        for (ns, _, h) in gone {
            let _ = h.join();
            drop(ns);
            load.pods_deleted.fetch_add(1, Ordering::Relaxed);
        }
        if now >= next {
            next = now + Duration::from_secs(8);
            let i = 100 + k % 100;
            let name = format!("sw-soak-{tag}-c{k}");
            match add_churn_pod(node, tag, &name, k, i) {
                Ok((ns, ip)) => {
                    load.pods_created.fetch_add(1, Ordering::Relaxed);
                    let end = Instant::now() + Duration::from_secs(15);
                    let path = ns.path();
                    let targets = targets.to_vec();
                    let (stop, load) = (stop.clone(), load.clone());
                    let h = std::thread::spawn(move || {
                        enter(&path);
                        worker(k, &[ip], &targets, &stop, &load, Some(end));
                    });
                    alive.push((ns, end, h));
                }
                Err(e) => eprintln!("soak: churn pod {name}: {e:#}"),
            }
            k += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (ns, _, h) in alive {
        let _ = h.join();
        drop(ns);
        load.pods_deleted.fetch_add(1, Ordering::Relaxed);
    }
}

/// A pod namespace with a veth to the node: 10.77.<i>.2/30, gateway .1.
fn add_churn_pod(node: &str, tag: &str, name: &str, k: u64, i: u64) -> Result<(Netns, IpAddr)> {
    let ns = Netns::new(name.to_string());
    let host_if = format!("sw{tag}c{}", k % 1000);
    let tmp = format!("sw{tag}u{}", k % 1000);
    let (ip, gw) = (format!("10.77.{i}.2"), format!("10.77.{i}.1"));
    let r = std::panic::catch_unwind(|| {
        sh_in(
            node,
            &[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &tmp,
            ],
        );
        sh_in(node, &["ip", "link", "set", &tmp, "netns", &ns.name]);
        sh_in(&ns.name, &["ip", "link", "set", &tmp, "name", "eth0"]);
        sh_in(
            node,
            &["ip", "addr", "add", &format!("{gw}/30"), "dev", &host_if],
        );
        sh_in(node, &["ip", "link", "set", &host_if, "up"]);
        sh_in(
            &ns.name,
            &["ip", "addr", "add", &format!("{ip}/30"), "dev", "eth0"],
        );
        sh_in(&ns.name, &["ip", "link", "set", "eth0", "up"]);
        sh_in(&ns.name, &["ip", "route", "add", "default", "via", &gw]);
    });
    if r.is_err() {
        bail!("could not set up {name}");
    }
    Ok((ns, ip.parse()?))
}

/// Every 60 s a burst of new flows from one pod: 2,000 UDP flows (a socket
/// each) and 200 TCP connections.
/// A port scan that never ends: every port of `target`, round after round
/// (a few hundred attempts a second). Its series must stop growing once
/// the per-source port budget is spent.
fn scanner(target: IpAddr, stop: &AtomicBool, load: &Load) {
    let mut port: u16 = 1;
    while !stop.load(Ordering::Relaxed) {
        let _ =
            TcpStream::connect_timeout(&SocketAddr::new(target, port), Duration::from_millis(200));
        load.scan_attempts.fetch_add(1, Ordering::Relaxed);
        port = port.checked_add(1).unwrap_or(1);
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn storms(v4: IpAddr, v6: IpAddr, stop: &AtomicBool, load: &Load) {
    let mut next = Instant::now() + Duration::from_secs(20);
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            next = Instant::now() + Duration::from_secs(60);
            for _ in 0..2000 {
                if let Ok(s) = UdpSocket::bind("0.0.0.0:0") {
                    if s.send_to(b"storm", SocketAddr::new(v4, UDP_PORT)).is_ok() {
                        load.udp.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            for n in 0..200 {
                let dst = if n % 2 == 0 { v4 } else { v6 };
                if tcp_exchange(SocketAddr::new(dst, TCP_PORT), 64) {
                    load.tcp.fetch_add(1, Ordering::Relaxed);
                } else {
                    load.tcp_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            load.storms.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One sample: the daemon's RSS and what its /metrics says.
fn sample(daemon: &Daemon, pid: u32, started: Instant) -> Result<Value> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    let (code, metrics) = daemon.get("/metrics").context("GET /metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    let mut lost = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("segwatch_events_lost_total{"))
    {
        if let (Some(stage), Some((_, v))) = (
            line.split("stage=\"")
                .nth(1)
                .and_then(|r| r.split('"').next()),
            line.rsplit_once(' '),
        ) {
            lost.insert(stage.to_string(), v.parse::<f64>().unwrap_or(0.0));
        }
    }
    let sum = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    let budgeted: f64 = ["segwatch_violations_total", "segwatch_workload_flows_total"]
        .iter()
        .map(|f| {
            metric_value(
                &metrics,
                &format!("segwatch_metric_series{{family=\"{f}\"}}"),
            )
        })
        .sum();
    Ok(json!({
        "t": started.elapsed().as_secs_f64().round(),
        "rss_mib": rss_kib / 1024.0,
        "flow_table_entries": metric_value(&metrics, "segwatch_flow_table_entries"),
        "flow_table_capacity": metric_value(&metrics, "segwatch_flow_table_capacity"),
        "interfaces_attached": metric_value(&metrics, "segwatch_interfaces_attached"),
        "events_lost_total": lost.values().sum::<f64>(),
        "events_lost": lost,
        "flows_total": sum("segwatch_flows_total{"),
        "violations_total": sum("segwatch_violations_total{"),
        "metric_series": metrics.lines().filter(|l| !l.starts_with('#')).count(),
        "budgeted_series": budgeted,
        "scans_total": sum("segwatch_scans_total{"),
    }))
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// First third against last third of the samples, per figure.
fn analyse(samples: &[Value]) -> Value {
    let n = samples.len();
    let third = (n / 3).max(1);
    let series = |key: &str| -> Vec<f64> {
        samples
            .iter()
            .map(|s| s[key].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let compare = |key: &str, slack: f64| -> Value {
        let v = series(key);
        if n < 3 {
            return json!({"samples": n});
        }
        let (first, last) = (mean(&v[..third]), mean(&v[n - third..]));
        let max = v.iter().copied().fold(f64::MIN, f64::max);
        let growth = if first > 0.0 {
            (last - first) / first
        } else {
            0.0
        };
        // Flat: the last third is not above the first by more than the
        // relative slack (or a small absolute amount for tiny values).
        let flat = last <= first * (1.0 + slack) || last - first <= 2.0;
        json!({"first_third_mean": first, "last_third_mean": last, "max": max,
               "growth": growth, "flat": flat, "slack": slack})
    };
    json!({
        "rss_mib": compare("rss_mib", 0.10),
        "flow_table_entries": compare("flow_table_entries", 0.25),
        "metric_series": compare("metric_series", 0.25),
        "budgeted_series": compare("budgeted_series", 0.10),
        "scans_total_at_end": samples.last().map(|s| s["scans_total"].clone()),
        "interfaces_attached": compare("interfaces_attached", 0.5),
        "events_lost_total_at_end": samples.last().map(|s| s["events_lost"].clone()),
        "flows_total_at_end": samples.last().map(|s| s["flows_total"].clone()),
    })
}

fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({"kernel": kernel.trim(), "cpus": cpus, "loadavg_at_end": load.trim()})
}

fn markdown(r: &Value) -> String {
    use std::fmt::Write as _;
    let a = &r["analysis"];
    let mut md = String::new();
    let _ = writeln!(md, "# segwatch soak\n");
    let _ = writeln!(
        md,
        "`{}`: {} min of mixed traffic and churn, a sample every {} s; kernel {}, {} CPUs (load at the end: {}).\n",
        r["command"].as_str().unwrap_or(""),
        r["minutes"],
        r["sample_secs"],
        r["machine"]["kernel"].as_str().unwrap_or("?"),
        r["machine"]["cpus"],
        r["machine"]["loadavg_at_end"].as_str().unwrap_or("?"),
    );
    let l = &r["load"];
    let _ = writeln!(
        md,
        "Load: {} TCP connections ({} failed), {} UDP datagrams, {} ping runs, {} storms, {} pods created / {} deleted, {:.1} MiB of payload.\n",
        l["tcp_connections"], l["tcp_failed"], l["udp_datagrams"], l["icmp_pings"], l["storms"],
        l["pods_created"], l["pods_deleted"],
        l["payload_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
    );
    let _ = writeln!(
        md,
        "| figure | first third (mean) | last third (mean) | max | change | flat |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (key, label) in [
        ("rss_mib", "daemon RSS (MiB)"),
        ("flow_table_entries", "flow table entries"),
        ("metric_series", "/metrics series"),
        (
            "budgeted_series",
            "violation + workload-edge series (segwatch_metric_series), scanner included",
        ),
        ("interfaces_attached", "interfaces attached"),
    ] {
        let f = &a[key];
        let _ = writeln!(
            md,
            "| {label} | {:.1} | {:.1} | {:.1} | {:+.1}% | {} |",
            f["first_third_mean"].as_f64().unwrap_or(f64::NAN),
            f["last_third_mean"].as_f64().unwrap_or(f64::NAN),
            f["max"].as_f64().unwrap_or(f64::NAN),
            f["growth"].as_f64().unwrap_or(f64::NAN) * 100.0,
            match f["flat"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            }
        );
    }
    let _ = writeln!(
        md,
        "\nScanner: {} attempts; segwatch_scans_total at the end: {}.",
        l["scan_attempts"], a["scans_total_at_end"]
    );
    let _ = writeln!(
        md,
        "\nLosses at the end (segwatch_events_lost_total by stage): {}\n",
        a["events_lost_total_at_end"]
    );
    let _ = writeln!(
        md,
        "Daemon: exit status {}, {}; flow log {} bytes.",
        r["daemon"]["exit_status"],
        r["daemon"]["died"].as_str().unwrap_or("survived the run"),
        r["daemon"]["flow_log_bytes"]
    );
    let rss_flat = a["rss_mib"]["flat"].as_bool();
    let table_flat = a["flow_table_entries"]["flat"].as_bool();
    let _ = writeln!(
        md,
        "\nVerdict: RSS {}, flow-table occupancy {} (last third against first third; RSS slack 10%, table 25%).",
        if rss_flat == Some(true) { "stayed flat" } else { "grew" },
        if table_flat == Some(true) { "stayed flat" } else { "grew" },
    );
    md
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}
