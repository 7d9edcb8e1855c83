//! `segwatch-bench`: what monitoring costs a node, measured side by side in
//! one run on this machine. `cargo xtask bench [--quick]` builds and runs it.
//!
//! ```text
//!  node netns (stands for the host) ── veths ── pod netns p0, p1, p2
//!    │
//!    ├─ test-run  BPF_PROG_TEST_RUN on crafted packets: ours / segwatch_noop
//!    ├─ tcp       iperf3 p0→p1       baseline, monitored, baseline, ...
//!    ├─ small     64-byte UDP p0→p1  baseline, monitored, baseline, ...
//!    ├─ kernel    BPF run-time stats: ours / noop attached on the same veth,
//!    │            and the peer (softflowd, libpcap) on the same traffic
//!    ├─ storm     TCP connections/s all reported with zero loss
//!    ├─ latency   forbidden SYN → segwatch_violations_total
//!    ├─ rss       daemon memory at 100,000 active flows, kernel maps' memlock
//!    ├─ userspace attribution + verdict per flow record, one core
//!    └─ scan      /metrics size after a 3,000-port scan, next to the budget
//!          ▼
//!  target/bench/results.json + results.md (machine, min/median/max per figure)
//! ```
//!
//! Missing a target is reported, never an error. The exit code is non-zero
//! only when something could not be measured (a missing tool, a failed
//! attach, a daemon that would not start); the results are written anyway,
//! with the reason in place of the number.

mod kernel;
mod report;
mod scan;
mod traffic;
mod userspace;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use monitor_common::{PROG_INGRESS, PROG_NOOP};
use segwatch::datapath::craft::{frame, Quirks, L4};
use segwatch::datapath::{Datapath, TestPacket};
use serde_json::json;
use tests::{Daemon, TempDir, Topo};

use report::{median, percentile, Figure, Machine, Run, Target};

/// Measure what segwatch costs a node: throughput and packet rate with and
/// without it, per-packet kernel cost against a no-op program, connection
/// storms, detection latency, memory, and a peer (softflowd) on the same
/// traffic. Needs root. Writes results.json and results.md.
#[derive(Parser)]
#[command(name = "segwatch-bench")]
struct Args {
    /// About one minute: fewer and shorter repetitions.
    #[arg(long)]
    quick: bool,
    /// Directory for results.json and results.md.
    #[arg(long, default_value = "target/bench", value_name = "DIR")]
    out: PathBuf,
    /// Run only these groups (repeatable; default: all).
    #[arg(long = "only", value_enum, value_name = "GROUP")]
    only: Vec<Group>,
    /// How the run was started, as quoted in the results.
    #[arg(long, default_value = "cargo xtask bench", value_name = "TEXT")]
    command: String,
    /// Prefix of the network namespaces and interfaces the bench creates
    /// (distinct prefixes let runs share a host with tests).
    #[arg(long, default_value = "sw", value_name = "PREFIX")]
    name_prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    TestRun,
    Tcp,
    Small,
    Kernel,
    Storm,
    Latency,
    Rss,
    Userspace,
    Scan,
}

/// Repetitions and durations; `--quick` shrinks them to about a minute.
struct Plan {
    reps: usize,
    tcp_secs: u32,
    udp_secs: f64,
    cost_reps: usize,
    test_run_repeat: u32,
    new_flows: usize,
    test_run_reps: usize,
    storm_rates: Vec<Option<f64>>,
    storm_secs: f64,
    latency_conns: usize,
    userspace_records: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                reps: 2,
                tcp_secs: 2,
                udp_secs: 2.0,
                cost_reps: 1,
                test_run_repeat: 50_000,
                new_flows: 500,
                test_run_reps: 3,
                storm_rates: vec![Some(2_000.0), None],
                storm_secs: 1.0,
                latency_conns: 60,
                userspace_records: 200_000,
            }
        } else {
            Plan {
                reps: 5,
                tcp_secs: 3,
                udp_secs: 4.0,
                cost_reps: 3,
                test_run_repeat: 200_000,
                new_flows: 2_000,
                test_run_reps: 7,
                storm_rates: vec![
                    Some(1_000.0),
                    Some(2_000.0),
                    Some(5_000.0),
                    Some(10_000.0),
                    Some(20_000.0),
                    None,
                ],
                storm_secs: 2.0,
                latency_conns: 300,
                userspace_records: 1_000_000,
            }
        }
    }
}

/// The small-packet load: one sender thread (the whole forwarding path runs
/// in its softirq context, so a second sender would only steal the
/// receiver's core on two-core machines) over 64 flows.
const SENDERS: usize = 1;
const FLOWS_PER_SENDER: usize = 64;

struct Ctx {
    topo: Topo,
    plan: Plan,
    dp: Datapath,
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("segwatch-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Returns whether every figure was measured.
fn run(args: &Args) -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (network namespaces, BPF programs)");
    }
    let wanted = |g: Group| args.only.is_empty() || args.only.contains(&g);
    let mut tools = vec!["ip", "ethtool"];
    if wanted(Group::Tcp) {
        tools.push("iperf3");
    }
    if wanted(Group::Kernel) {
        tools.extend(["softflowd", "softflowctl"]);
    }
    for t in tools {
        if !kernel::have_tool(t) {
            bail!("{t} not found on PATH: run `cargo xtask setup` (it installs the benchmark's tools)");
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let mut machine = Machine::probe();
    let plan = Plan::new(args.quick);
    eprintln!(
        "segwatch-bench: Linux {}, {}, {} cores, load {}{}",
        machine.kernel,
        machine.cpu,
        machine.cores,
        machine.load_before,
        if args.quick { " (quick)" } else { "" }
    );

    let topo = Topo::with_prefix(&args.name_prefix, 3, true);
    // The kernel side (our Datapath, tcx queries, the daemon's /metrics on
    // 127.0.0.1) lives in the node namespace; this thread stays there.
    tests::enter(&topo.node.path());
    let mut dp = Datapath::load(65_536, segwatch::datapath::AttachMode::Auto)
        .context("loading the programs for test_run")?;
    let events = dp.take_events();
    let mut ctx = Ctx {
        topo,
        plan,
        dp,
        events,
    };

    type Phase = fn(&mut Ctx) -> Result<Vec<Figure>>;
    let phases: [(Group, &str, Phase, &[(&str, &str)]); 9] = [
        (
            Group::TestRun,
            "test_run on crafted packets",
            phase_test_run,
            &[
                ("ns_per_packet.test_run_steady", "x floor"),
                ("ns_per_packet.test_run_new_flow", "x floor"),
            ],
        ),
        (
            Group::Tcp,
            "TCP throughput (iperf3)",
            phase_tcp,
            &[("tcp_throughput_ratio", "")],
        ),
        (
            Group::Small,
            "64-byte UDP packet rate",
            phase_small,
            &[
                ("small_packet_ratio", ""),
                ("small_packet_ratio.per_cpu_second", ""),
            ],
        ),
        (
            Group::Kernel,
            "kernel run-time statistics and the peer (softflowd)",
            phase_kernel,
            &[
                ("ns_per_packet.kernel_stats", "x floor"),
                ("peer.softflowd_cpu_ratio", "x"),
                ("peer.softflowd_lost_packets", "packets"),
            ],
        ),
        (
            Group::Storm,
            "connection storm",
            phase_storm,
            &[
                ("connection_storm", "conn/s"),
                ("connection_storm.lost_beyond", "flows"),
            ],
        ),
        (
            Group::Latency,
            "detection latency",
            phase_latency,
            &[
                ("detection_latency_ms.p50", "ms"),
                ("detection_latency_ms.p99", "ms"),
            ],
        ),
        (
            Group::Rss,
            "daemon memory at 100,000 flows",
            phase_rss,
            &[("daemon_rss_mb", "MiB"), ("kernel_maps_mb", "MiB")],
        ),
        (
            Group::Userspace,
            "userspace attribution + verdict",
            userspace::phase,
            &[("userspace_flows_per_sec", "flows/s")],
        ),
        (
            Group::Scan,
            "/metrics after a port scan",
            scan::phase,
            &[
                ("metrics_bytes_after_scan", "bytes"),
                ("scan_series_over_budget", "x"),
            ],
        ),
    ];

    let mut figures = Vec::new();
    let mut all_measured = true;
    for (group, title, phase, names) in phases {
        if !wanted(group) {
            continue;
        }
        eprintln!("==> {title}");
        let t = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| phase(&mut ctx)));
        let failure = match result {
            Ok(Ok(figs)) => {
                for f in &figs {
                    eprintln!("    {}", one_line(f));
                }
                all_measured &= figs.iter().all(|f| f.not_measured.is_none());
                figures.extend(figs);
                None
            }
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(p) => Some(
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()),
            ),
        };
        if let Some(why) = failure {
            eprintln!("    cannot measure: {why}");
            all_measured = false;
            for (name, unit) in names {
                figures.push(Figure::missing(name, unit, None, why.clone()));
            }
        }
        eprintln!("    ({:.0} s)", t.elapsed().as_secs_f64());
    }

    machine.load_after = report::loadavg();
    let run = Run {
        command: args.command.clone(),
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        duration_s: t0.elapsed().as_secs_f64(),
        quick: args.quick,
        machine,
        segwatch_version: env!("CARGO_PKG_VERSION").to_string(),
        figures,
    };
    let json_path = args.out.join("results.json");
    let md_path = args.out.join("results.md");
    let text = serde_json::to_string_pretty(&run.to_json()).context("serializing results")?;
    std::fs::write(&json_path, text + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md = run.to_markdown();
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("{md}");
    eprintln!(
        "segwatch-bench: wrote {} and {} in {:.0} s",
        json_path.display(),
        md_path.display(),
        run.duration_s
    );
    if !all_measured {
        eprintln!("segwatch-bench: some figures could not be measured (see above)");
    }
    Ok(all_measured)
}

fn one_line(f: &Figure) -> String {
    match (f.summary(), &f.not_measured) {
        (Some(s), None) => format!(
            "{} = {} {} (min {}, max {}, n {}){}",
            f.name,
            report::fmt_num(s.median),
            f.unit,
            report::fmt_num(s.min),
            report::fmt_num(s.max),
            s.n,
            match f.met() {
                Some(true) => ", target met",
                Some(false) => ", target MISSED",
                None => "",
            }
        ),
        (_, why) => format!(
            "{}: not measured ({})",
            f.name,
            why.as_deref().unwrap_or("no samples")
        ),
    }
}

/// Ratio of each monitored repetition to the mean of the baselines run
/// right before and after it (baseline, monitored, baseline, ...): slow
/// drift of the machine's load cancels out.
fn sandwich(base: &[f64], mon: &[f64]) -> Vec<f64> {
    mon.iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let b = match (base.get(i), base.get(i + 1)) {
                (Some(a), Some(b)) => (a + b) / 2.0,
                (Some(a), None) => *a,
                _ => return None,
            };
            Some(m / b)
        })
        .collect()
}

/// `segwatch run` in the node namespace with `args`; ready when it returns.
fn daemon(ctx: &Ctx, args: &[&str]) -> Daemon {
    Daemon::start(&ctx.topo.node.name, args)
}

fn daemon_pid(d: &Daemon) -> Result<u32> {
    let pid = d
        .child
        .as_ref()
        .map(|c| c.id())
        .context("daemon not running")?;
    // `ip netns exec` execs the command, so the child is segwatch itself.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "segwatch" {
        bail!("pid {pid} is {:?}, not segwatch", comm.trim());
    }
    Ok(pid)
}

fn stop(mut d: Daemon) -> Result<()> {
    let code = d.stop();
    if code != 0 {
        bail!("segwatch exited with {code}: {}", d.stderr());
    }
    Ok(())
}

/// Sum of every sample of a metric family in a Prometheus exposition.
fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// GET /metrics from the daemon; this thread is in the node namespace, so
/// no thread hop per request (the latency figure polls fast).
fn scrape(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("connecting to /metrics")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

// ---------------------------------------------------------------- test_run

fn pkt(f: &[u8]) -> TestPacket<'_> {
    TestPacket {
        frame: f,
        ..Default::default()
    }
}

fn drain(ctx: &mut Ctx) {
    if let Some(rb) = ctx.events.as_mut() {
        while rb.next().is_some() {}
    }
}

fn phase_test_run(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let src = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
    let dst = IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1));
    let udp = |sport| {
        frame(
            src,
            dst,
            &L4::Udp {
                sport,
                dport: 53,
                payload: traffic::SMALL_PAYLOAD,
            },
            &Quirks::default(),
        )
    };
    let steady = udp(40_000);
    let fresh: Vec<Vec<u8>> = (0..ctx.plan.new_flows as u16)
        .map(|i| udp(1024 + i))
        .collect();
    let repeat = ctx.plan.test_run_repeat;
    let (mut steady_ratio, mut new_ratio) = (Vec::new(), Vec::new());
    let (mut noop_ns, mut steady_ns, mut noop1_ns, mut new_ns) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ctx.plan.test_run_reps {
        ctx.dp.clear_flows()?;
        drain(ctx);
        // Steady state: the flow exists, every run is a hit.
        let (_, noop) = ctx.dp.test_run(PROG_NOOP, pkt(&steady), repeat)?;
        ctx.dp.test_run(PROG_INGRESS, pkt(&steady), 1)?;
        let (_, ours) = ctx.dp.test_run(PROG_INGRESS, pkt(&steady), repeat)?;
        let (noop, ours) = (noop.as_nanos() as f64, ours.as_nanos() as f64);
        noop_ns.push(noop);
        steady_ns.push(ours);
        steady_ratio.push(ours / noop.max(1.0));
        // New-flow path: each packet creates an entry and a ring buffer
        // event; single runs, so the floor is a single run of the no-op.
        let (mut n1, mut o1) = (Vec::new(), Vec::new());
        for f in &fresh {
            n1.push(ctx.dp.test_run(PROG_NOOP, pkt(f), 1)?.1.as_nanos() as f64);
            o1.push(ctx.dp.test_run(PROG_INGRESS, pkt(f), 1)?.1.as_nanos() as f64);
        }
        let entries = ctx.dp.snapshot()?.len();
        if entries != fresh.len() + 1 {
            bail!(
                "test_run created {entries} flow entries, expected {} (the new-flow path did not run)",
                fresh.len() + 1
            );
        }
        let (n1, o1) = (median(&n1), median(&o1));
        noop1_ns.push(n1);
        new_ns.push(o1);
        new_ratio.push(o1 / n1.max(1.0));
        drain(ctx);
    }
    ctx.dp.clear_flows()?;
    let detail = json!({
        "noop_ns_per_run_repeat": noop_ns,
        "ours_steady_ns_per_run": steady_ns,
        "noop_ns_single_run_median": noop1_ns,
        "ours_new_flow_ns_single_run_median": new_ns,
        "repeat": repeat,
        "new_flows_per_repetition": fresh.len(),
        "frame": "64-byte Ethernet frame, IPv4 UDP, 18-byte payload",
    });
    Ok(vec![
        Figure::new(
            "ns_per_packet.test_run_steady",
            "x floor",
            Some(Target::AtMost(2.0)),
            steady_ratio,
        )
        .what(format!(
            "BPF_PROG_TEST_RUN, existing flow: segwatch_ingress {:.0} ns / segwatch_noop {:.0} ns per run (medians, repeat {repeat})",
            median(&steady_ns),
            median(&noop_ns)
        ))
        .detail(detail.clone()),
        Figure::new(
            "ns_per_packet.test_run_new_flow",
            "x floor",
            Some(Target::AtMost(2.0)),
            new_ratio,
        )
        .what(format!(
            "BPF_PROG_TEST_RUN, new flow (insert + ring buffer event): {:.0} ns / no-op {:.0} ns (median single runs)",
            median(&new_ns),
            median(&noop1_ns)
        ))
        .detail(detail),
    ])
}

// ---------------------------------------------------------------- tcp

fn phase_tcp(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let (p0, p1) = (&ctx.topo.pods[0], &ctx.topo.pods[1]);
    let _server = traffic::Iperf3Server::start(&p1.ns.name, p1.ip4, 5201)?;
    let secs = ctx.plan.tcp_secs;
    let (mut base, mut mon) = (Vec::new(), Vec::new());
    for i in 0..=ctx.plan.reps {
        base.push(traffic::iperf3_bps(&p0.ns.name, p1.ip4, 5201, secs)?);
        if i < ctx.plan.reps {
            let d = daemon(ctx, &[]);
            mon.push(traffic::iperf3_bps(&p0.ns.name, p1.ip4, 5201, secs)?);
            stop(d)?;
        }
    }
    let gbit = |v: &[f64]| median(v) / 1e9;
    Ok(vec![Figure::new(
        "tcp_throughput_ratio",
        "",
        Some(Target::AtLeast(0.98)),
        sandwich(&base, &mon),
    )
    .what(format!(
        "iperf3 TCP pod→pod through the node's veths (offloads on), {secs} s runs: {:.2} Gbit/s monitored / {:.2} Gbit/s unmonitored (medians)",
        gbit(&mon),
        gbit(&base)
    ))
    .detail(json!({
        "baseline_bits_per_second": base,
        "monitored_bits_per_second": mon,
        "seconds_per_run": secs,
    }))])
}

// ---------------------------------------------------------------- small packets

fn blast(ctx: &Ctx) -> Result<traffic::UdpLoad> {
    let (p0, p1) = (&ctx.topo.pods[0], &ctx.topo.pods[1]);
    traffic::udp_blast(
        p0,
        p1,
        SocketAddr::new(p1.ip4, 9000),
        SENDERS,
        FLOWS_PER_SENDER,
        traffic::SMALL_PAYLOAD,
        Duration::from_secs_f64(ctx.plan.udp_secs),
    )
}

fn phase_small(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let (mut base, mut mon) = (Vec::new(), Vec::new());
    let (mut base_cpu, mut mon_cpu) = (Vec::new(), Vec::new());
    let (mut base_sent, mut mon_sent) = (Vec::new(), Vec::new());
    for i in 0..=ctx.plan.reps {
        let b = blast(ctx)?;
        base.push(b.pps());
        base_cpu.push(b.per_cpu_s());
        base_sent.push(b.sent as f64 / b.secs);
        if i < ctx.plan.reps {
            let d = daemon(ctx, &[]);
            let pid = daemon_pid(&d)?;
            let c0 = kernel::cpu_seconds(pid)?;
            let m = blast(ctx)?;
            // The daemon's own CPU is part of what monitoring costs.
            let daemon_cpu = kernel::cpu_seconds(pid)? - c0;
            mon.push(m.pps());
            mon_cpu.push(m.received as f64 / (m.cpu_s + daemon_cpu));
            mon_sent.push(m.sent as f64 / m.secs);
            stop(d)?;
        }
    }
    let flows = SENDERS * FLOWS_PER_SENDER;
    let secs = ctx.plan.udp_secs;
    let detail = json!({
        "baseline_delivered_pps": base,
        "monitored_delivered_pps": mon,
        "baseline_sent_pps": base_sent,
        "monitored_sent_pps": mon_sent,
        "baseline_packets_per_cpu_second": base_cpu,
        "monitored_packets_per_cpu_second": mon_cpu,
        "flows": flows,
        "senders": SENDERS,
        "seconds_per_run": secs,
    });
    Ok(vec![
        Figure::new(
            "small_packet_ratio",
            "",
            Some(Target::AtLeast(0.95)),
            sandwich(&base, &mon),
        )
        .what(format!(
            "64-byte UDP frames pod→pod, sendmmsg/recvmmsg batches of 64, {flows} flows, {secs} s runs: {} pps monitored / {} pps unmonitored delivered (medians)",
            report::fmt_num(median(&mon)),
            report::fmt_num(median(&base))
        ))
        .detail(detail.clone()),
        Figure::new(
            "small_packet_ratio.per_cpu_second",
            "",
            Some(Target::AtLeast(0.95)),
            sandwich(&base_cpu, &mon_cpu),
        )
        .what(format!(
            "same runs, packets per CPU second of the path (sender + receiver threads incl. the softirq work charged to them, ksoftirqd, and the daemon when monitored): {} / {} (medians); other processes' CPU does not count",
            report::fmt_num(median(&mon_cpu)),
            report::fmt_num(median(&base_cpu))
        ))
        .detail(detail),
    ])
}

// ---------------------------------------------------------------- kernel stats + peer

/// softflowd capturing on one interface, stopped on drop.
struct Softflowd {
    child: Option<Child>,
    ctl: PathBuf,
    netns: String,
    _dir: TempDir,
}

impl Softflowd {
    fn start(netns: &str, iface: &str) -> Result<Self> {
        let dir = TempDir::new("softflowd");
        let ctl = dir.0.join("ctl");
        let err = std::fs::File::create(dir.0.join("stderr.log"))?;
        // -d: foreground; -N: no promiscuous mode (a veth needs none);
        // export NetFlow v9 to a loopback port nobody reads.
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "softflowd", "-d", "-N", "-i", iface])
            .arg("-c")
            .arg(&ctl)
            .arg("-p")
            .arg(dir.0.join("pid"))
            .args(["-n", "127.0.0.1:9995", "-v", "9"])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .context("starting softflowd")?;
        let mut s = Softflowd {
            child: Some(child),
            ctl,
            netns: netns.to_string(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.ctl.exists() {
            if let Some(st) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(s._dir.0.join("stderr.log")).unwrap_or_default();
                bail!("softflowd exited ({st}): {log}");
            }
            if Instant::now() > deadline {
                bail!("softflowd did not open its control socket within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The capture is live once the control socket is there; give libpcap
        // a moment to fill its ring.
        std::thread::sleep(Duration::from_millis(300));
        Ok(s)
    }

    fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("softflowd not running")
    }

    fn statistics(&self) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "softflowctl", "-c"])
            .arg(&self.ctl)
            .arg("statistics")
            .output()
            .context("running softflowctl statistics")?;
        if !out.status.success() {
            bail!(
                "softflowctl statistics failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Softflowd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Packets softflowd says it processed and dropped, from
/// `softflowctl statistics` ("Number of packets ..." lines, and libpcap's
/// own drop counters where it prints them).
fn softflowd_counts(stats: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in stats.lines() {
        let l = line.trim();
        let Some((k, v)) = l.rsplit_once(':') else {
            continue;
        };
        let Some(n) = v
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.insert(k.trim().to_string(), n);
    }
    out
}

fn phase_kernel(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let iface = ctx.topo.pods[0].host_if.clone();
    // The kernel's run-time statistics (what sysctl kernel.bpf_stats_enabled
    // turns on), held through an fd: they switch off again when it closes,
    // also if this process dies.
    let _stats =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS (run time)")?;
    ctx.dp
        .attach_program(PROG_NOOP, &iface)
        .with_context(|| format!("attaching {PROG_NOOP} to {iface}"))?;
    let ours = |n: &str| n.starts_with("segwatch_") && n != PROG_NOOP;
    let noop = |n: &str| n == PROG_NOOP;
    let (mut ratio, mut ours_ns, mut noop_ns) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seg_cpu_pm, mut soft_cpu_pm, mut peer_ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut soft_lost, mut soft_detail) = (Vec::new(), Vec::new());
    let (mut seg_pps, mut soft_pps, mut seg_path) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ctx.plan.cost_reps {
        // segwatch on the one interface softflowd also watches.
        let d = daemon(ctx, &["--interface", &iface]);
        let pid = daemon_pid(&d)?;
        let (s0, c0) = (kernel::tcx_stats(&iface)?, kernel::cpu_seconds(pid)?);
        let load = blast(ctx)?;
        let (s1, c1) = (kernel::tcx_stats(&iface)?, kernel::cpu_seconds(pid)?);
        stop(d)?;
        let (ot, on) = kernel::delta(&s0, &s1, ours);
        let (nt, nn) = kernel::delta(&s0, &s1, noop);
        if on == 0 || nn == 0 {
            bail!("no run counts for our programs ({on}) or the no-op ({nn}) on {iface}: stats not enabled?");
        }
        let (o, n) = (ot as f64 / on as f64, nt as f64 / nn as f64);
        ours_ns.push(o);
        noop_ns.push(n);
        ratio.push(o / n);
        // Packets that crossed the interface: the no-op runs once on each.
        let seg_cpu = ot as f64 / 1e9 + (c1 - c0);
        let seg = seg_cpu / (nn as f64 / 1e6);
        seg_cpu_pm.push(seg);
        seg_pps.push(load.pps());
        seg_path.push(load.cpu_s / (nn as f64 / 1e6));

        let sf = Softflowd::start(&ctx.topo.node.name, &iface)?;
        let spid = sf.pid()?;
        let (s0, c0) = (kernel::tcx_stats(&iface)?, kernel::cpu_seconds(spid)?);
        let load = blast(ctx)?;
        // softflowd reads what libpcap buffered a little after the traffic.
        std::thread::sleep(Duration::from_millis(500));
        let (s1, c1) = (kernel::tcx_stats(&iface)?, kernel::cpu_seconds(spid)?);
        let stats = sf.statistics()?;
        drop(sf);
        let (_, nn) = kernel::delta(&s0, &s1, noop);
        let soft = (c1 - c0) / (nn as f64 / 1e6);
        soft_cpu_pm.push(soft);
        soft_pps.push(load.pps());
        peer_ratio.push(soft / seg);
        let counts = softflowd_counts(&stats);
        // Lost: what libpcap or the interface say they dropped, or packets
        // that crossed the interface but never reached libpcap.
        let dropped: u64 = counts
            .iter()
            .filter(|(k, _)| k.to_lowercase().contains("dropped"))
            .map(|(_, v)| *v)
            .sum();
        let unseen = counts
            .get("Packets received by libpcap")
            .map(|r| nn.saturating_sub(*r))
            .unwrap_or(0);
        soft_lost.push(dropped.max(unseen) as f64);
        soft_detail.push(json!({
            "packets_on_interface": nn,
            "softflowctl_statistics": counts,
            "path_cpu_s_per_million": load.cpu_s / (nn as f64 / 1e6),
        }));
    }
    ctx.dp.detach(&iface);
    Ok(vec![
        Figure::new(
            "ns_per_packet.kernel_stats",
            "x floor",
            Some(Target::AtMost(2.0)),
            ratio,
        )
        .what(format!(
            "kernel run-time stats under the 64-byte UDP load: segwatch programs {:.0} ns / segwatch_noop {:.0} ns per run, both attached to {iface}",
            median(&ours_ns),
            median(&noop_ns)
        ))
        .detail(json!({"ours_ns_per_run": ours_ns, "noop_ns_per_run": noop_ns})),
        Figure::new("peer.softflowd_cpu_ratio", "x", None, peer_ratio)
            .what(format!(
                "CPU s per million packets on one veth, softflowd {:.2} / segwatch {:.2} (segwatch = BPF run time + daemon user+sys; softflowd = its user+sys, not counting the kernel's packet-socket copies)",
                median(&soft_cpu_pm),
                median(&seg_cpu_pm)
            ))
            .detail(json!({
                "softflowd_cpu_s_per_million": soft_cpu_pm,
                "segwatch_cpu_s_per_million": seg_cpu_pm,
                "segwatch_run_delivered_pps": seg_pps,
                "softflowd_run_delivered_pps": soft_pps,
                "segwatch_run_path_cpu_s_per_million": seg_path,
                "softflowd": soft_detail,
            })),
        Figure::new("peer.softflowd_lost_packets", "packets", None, soft_lost).what(
            "packets softflowd lost under the same load: libpcap/interface drops from softflowctl statistics, or packets on the veth libpcap never received",
        ),
    ])
}

// ---------------------------------------------------------------- storm

fn lost_total(port: u16) -> f64 {
    scrape(port)
        .map(|m| metric_sum(&m, "segwatch_events_lost_total"))
        .unwrap_or(f64::NAN)
}

/// Server ports of the storm: [`STORM_PORTS`] per step from this one on.
const STORM_BASE_PORT: u16 = 20_000;
const STORM_PORTS: usize = 16;

/// Reports in the flow log for completed connections to `ports`.
fn completed_reports(d: &Daemon, ports: &std::ops::Range<u16>) -> u64 {
    d.reports()
        .iter()
        .filter(|r| {
            r["protocol"] == "TCP"
                && r["dst"]["port"]
                    .as_u64()
                    .is_some_and(|p| ports.contains(&(p as u16)))
        })
        .filter(|r| matches!(r["tcp"]["state"].as_str(), Some("established" | "closed")))
        .count() as u64
}

fn phase_storm(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let (p0, p1) = (&ctx.topo.pods[0], &ctx.topo.pods[1]);
    // Enough ephemeral ports and quick TIME_WAIT reuse in the client pod
    // (its own namespace: the host is untouched).
    tests::sh_in(
        &p0.ns.name,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=1024 65535",
        ],
    );
    tests::sh_in(
        &p0.ns.name,
        &["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"],
    );
    tests::sh_in(
        &p1.ns.name,
        &["sysctl", "-q", "-w", "net.core.somaxconn=65535"],
    );
    let d = daemon(ctx, &[]);
    let mport = d.metrics_port;
    let mut steps = Vec::new();
    let mut zero_loss_rate = 0.0f64;
    let mut generator_limited_clean = false;
    let mut lost_beyond: Option<f64> = None;
    for (i, rate) in ctx.plan.storm_rates.clone().into_iter().enumerate() {
        // Several server ports per step: the client then rarely needs a
        // 5-tuple whose last connection ended within the closed-flow linger
        // (such a connection is reported with the earlier one, a known
        // limit), so missing reports measure loss, not port reuse.
        let ports = STORM_BASE_PORT + (i * STORM_PORTS) as u16
            ..STORM_BASE_PORT + ((i + 1) * STORM_PORTS) as u16;
        let mut dsts = Vec::new();
        for port in ports.clone() {
            let dst = SocketAddr::new(p1.ip4, port);
            traffic::tcp_closer(p1, dst)?;
            dsts.push(dst);
        }
        let lost0 = lost_total(mport);
        let threads = if rate.is_some() { 2 } else { 4 };
        let s = traffic::tcp_storm(
            p0,
            &dsts,
            threads,
            rate,
            Duration::from_secs_f64(ctx.plan.storm_secs),
        )?;
        // Closed connections are reported after a 1 s linger at the next
        // sweep; wait until all are in or the count stops moving.
        let mut reported = 0;
        let mut last_change = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(20);
        std::thread::sleep(Duration::from_secs(2));
        while Instant::now() < deadline {
            let n = completed_reports(&d, &ports);
            if n != reported {
                reported = n;
                last_change = Instant::now();
            }
            if reported >= s.made || last_change.elapsed() > Duration::from_secs(4) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let lost = lost_total(mport) - lost0;
        let achieved = s.made as f64 / s.secs;
        let missing = s.made.saturating_sub(reported);
        let clean = missing == 0 && lost == 0.0;
        // A paced step the generator could not keep up with says nothing
        // about that rate.
        let generator_short = rate.is_some_and(|r| achieved < 0.9 * r);
        if clean {
            zero_loss_rate = zero_loss_rate.max(achieved);
            if rate.is_none() {
                generator_limited_clean = true;
            }
        } else if lost_beyond.is_none() {
            lost_beyond = Some(lost.max(missing as f64));
        }
        eprintln!(
            "    storm {}: {:.0} conn/s made {} failed {} reported {} lost {}",
            rate.map(|r| format!("{r:.0}/s"))
                .unwrap_or_else(|| "max".into()),
            achieved,
            s.made,
            s.failed,
            reported,
            lost
        );
        steps.push(json!({
            "target_rate": rate,
            "achieved_rate": achieved,
            "connections": s.made,
            "connect_failures": s.failed,
            "reported": reported,
            "missing_reports": missing,
            "events_lost_total": lost,
            "seconds": s.secs,
            "generator_below_target": generator_short,
        }));
    }
    stop(d)?;
    let what = if generator_limited_clean {
        format!(
            "highest rate with every connection reported and 0 losses: {:.0} conn/s, reached by the unthrottled generator (its own limit on this machine, not segwatch's)",
            zero_loss_rate
        )
    } else {
        format!(
            "highest paced rate with every connection reported and 0 losses ({:.0} conn/s); beyond it losses were counted",
            zero_loss_rate
        )
    };
    Ok(vec![
        Figure::new("connection_storm", "conn/s", None, vec![zero_loss_rate])
            .what(what)
            .detail(json!({"steps": steps, "generator_limit_reached_without_loss": generator_limited_clean})),
        Figure::new(
            "connection_storm.lost_beyond",
            "flows",
            None,
            vec![lost_beyond.unwrap_or(0.0)],
        )
        .what(if lost_beyond.is_some() {
            "losses (counted or missing reports) at the first rate above the zero-loss one"
        } else {
            "no loss at any rate tried"
        }),
    ])
}

// ---------------------------------------------------------------- latency

/// An inventory for the bench topology: pod p0 in namespace `bench-client`,
/// pod p1 in `bench-server`; without a SegmentationPolicy the built-in
/// baseline forbids this cross-namespace traffic (CONTRACT.md).
fn write_inventory(ctx: &Ctx, path: &Path) -> Result<()> {
    let (p0, p1) = (&ctx.topo.pods[0], &ctx.topo.pods[1]);
    let pod = |ns: &str, name: &str, ip: IpAddr| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"nodeName": "bench-node", "serviceAccountName": name,
                     "containers": [{"name": name, "image": "bench"}]},
            "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
        })
    };
    let ns = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
    };
    let list = json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            ns("bench-client"), ns("bench-server"),
            pod("bench-client", "client", p0.ip4),
            pod("bench-server", "server", p1.ip4),
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bench-node"},
             "status": {"addresses": [{"type": "InternalIP", "address": p0.gw4.to_string()}]}},
        ],
    });
    std::fs::write(path, serde_json::to_string_pretty(&list)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn phase_latency(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let (p0, p1) = (&ctx.topo.pods[0], &ctx.topo.pods[1]);
    let dir = TempDir::new("inventory");
    let inv = dir.0.join("inventory.json");
    write_inventory(ctx, &inv)?;
    let port = 7300;
    traffic::tcp_closer(p1, SocketAddr::new(p1.ip4, port))?;
    let inv_s = inv.to_str().context("non-UTF-8 temp path")?.to_string();
    let d = daemon(ctx, &["--inventory", &inv_s]);
    let mport = d.metrics_port;
    let dst = SocketAddr::new(p1.ip4, port);
    let violations = || -> f64 {
        scrape(mport)
            .map(|m| metric_sum(&m, "segwatch_violations_total"))
            .unwrap_or(f64::NAN)
    };
    let mut lat_ms = Vec::new();
    let mut timed_out = 0usize;
    for i in 0..ctx.plan.latency_conns {
        let v0 = violations();
        // The SYN leaves when connect() starts; the clock starts there.
        let t0 = p0
            .ns
            .run(move || {
                let t0 = Instant::now();
                let _ = TcpStream::connect_timeout(&dst, Duration::from_secs(2));
                t0
            })
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        let deadline = t0 + Duration::from_secs(5);
        let mut seen = None;
        while Instant::now() < deadline {
            if violations() > v0 {
                seen = Some(t0.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        match seen {
            Some(l) => lat_ms.push(l.as_secs_f64() * 1e3),
            None => {
                timed_out += 1;
                if i < 3 && lat_ms.is_empty() && timed_out == 3 {
                    let text = scrape(mport).unwrap_or_default();
                    let shown = text.contains("segwatch_violations_total{");
                    let err = d.stderr();
                    stop(d)?;
                    let why = if shown {
                        "the violation counter did not move within 5 s of a forbidden SYN"
                            .to_string()
                    } else {
                        format!(
                            "`segwatch run --inventory` does not report violations in this build (no segwatch_violations_total sample after 3 forbidden connections){}",
                            err.lines().last().map(|l| format!("; daemon: {l}")).unwrap_or_default()
                        )
                    };
                    return Ok(vec![
                        Figure::missing(
                            "detection_latency_ms.p50",
                            "ms",
                            Some(Target::AtMost(1000.0)),
                            why.clone(),
                        ),
                        Figure::missing(
                            "detection_latency_ms.p99",
                            "ms",
                            Some(Target::AtMost(1000.0)),
                            why,
                        ),
                    ]);
                }
            }
        }
    }
    stop(d)?;
    let p50 = percentile(&lat_ms, 50.0);
    let p99 = percentile(&lat_ms, 99.0);
    let what = format!(
        "cross-namespace TCP connect (forbidden by the built-in baseline) to the increment of segwatch_violations_total on /metrics (polled every 0.5 ms), {} connections, {} not seen within 5 s",
        lat_ms.len() + timed_out,
        timed_out
    );
    let detail = json!({
        "connections": lat_ms.len() + timed_out,
        "not_seen_within_5s": timed_out,
        "min_ms": lat_ms.iter().copied().fold(f64::INFINITY, f64::min),
        "max_ms": lat_ms.iter().copied().fold(0.0, f64::max),
        "p50_ms": p50, "p90_ms": percentile(&lat_ms, 90.0), "p99_ms": p99,
    });
    Ok(vec![
        Figure::new(
            "detection_latency_ms.p50",
            "ms",
            Some(Target::AtMost(100.0)),
            vec![p50],
        )
        .what(what.clone())
        .detail(detail.clone()),
        Figure::new(
            "detection_latency_ms.p99",
            "ms",
            Some(Target::AtMost(1000.0)),
            vec![p99],
        )
        .what(what)
        .detail(detail),
    ])
}

// ---------------------------------------------------------------- rss

fn phase_rss(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    const FLOWS: u64 = 100_000;
    let p0 = &ctx.topo.pods[0];
    // Long timeouts: every flow stays active while we look.
    let d = daemon(ctx, &["--idle-timeout", "600", "--active-timeout", "600"]);
    let pid = daemon_pid(&d)?;
    let mport = d.metrics_port;
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = kernel::rss_mib(pid)?;
    // UDP from the pod to 50,000 ports of a node address, from two source
    // sockets: 100,000 flows on the pod's veth (nobody listens; the node's
    // ICMP errors are rate-limited and share one flow).
    let sent = traffic::udp_fanout(p0, p0.gw4, 1024..51_024, 2, 50_000)?;
    let entries = || {
        scrape(mport)
            .map(|m| metric_sum(&m, "segwatch_flow_table_entries"))
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = entries();
    while n < FLOWS as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        n = entries();
    }
    if n < FLOWS as f64 {
        bail!("only {n} flows in the kernel table after sending {sent} datagrams (wanted {FLOWS})");
    }
    // Two more sweeps so the tracker holds them all, then sample.
    std::thread::sleep(Duration::from_secs(2));
    let mut rss = Vec::new();
    for _ in 0..3 {
        rss.push(kernel::rss_mib(pid)?);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (memlock, maps) = kernel::map_memlock(pid)?;
    let flows_now = entries();
    let lost = scrape(mport)
        .map(|m| metric_sum(&m, "segwatch_events_lost_total"))
        .unwrap_or(f64::NAN);
    // Killed, not stopped: a SIGTERM would first flush 100,000 reports,
    // which is not what this figure is about.
    drop(d);
    Ok(vec![
        Figure::new("daemon_rss_mb", "MiB", None, rss.clone())
            .what(format!(
                "VmRSS of `segwatch run` with {flows_now:.0} active flows in its table (idle: {idle_rss:.1} MiB); 3 samples 1 s apart"
            ))
            .detail(json!({"rss_mib": rss, "idle_rss_mib": idle_rss, "flows": flows_now,
                           "datagrams_sent": sent, "events_lost_total": lost})),
        Figure::new(
            "kernel_maps_mb",
            "MiB",
            None,
            vec![memlock as f64 / (1024.0 * 1024.0)],
        )
        .what(format!(
            "memlock of the daemon's {maps} BPF maps (/proc/<pid>/fdinfo), flow table sized for the default --max-flows {} on {} CPUs",
            monitor_common::DEFAULT_MAX_FLOWS,
            std::thread::available_parallelism().map(usize::from).unwrap_or(1)
        ))
        .detail(json!({"memlock_bytes": memlock, "maps": maps})),
    ])
}
