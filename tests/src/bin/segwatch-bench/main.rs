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
//!    ├─ scan      /metrics size after a 3,000-port scan, next to the budget
//!    └─ export    flows/s the IPFIX and OTLP exporters sustain on one core,
//!                 and what the report path pays per report, export on vs off
//!          ▼
//!  target/bench/results.json + results.md (machine, min/median/max per figure)
//! ```
//!
//! Missing a target is reported, never an error. The exit code is non-zero
//! only when something could not be measured (a missing tool, a failed
//! attach, a daemon that would not start); the results are written anyway,
//! with the reason in place of the number.

mod export;
mod kernel;
mod kernel_peer;
mod latency;
mod report;
mod rss;
mod scan;
mod small;
mod storm;
mod tcp;
mod test_run;
mod traffic;
mod userspace;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
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

use kernel_peer::phase_kernel;
use latency::phase_latency;
use report::{median, percentile, Figure, Machine, Run, Target};
use rss::phase_rss;
use small::phase_small;
use storm::phase_storm;
use tcp::phase_tcp;
use test_run::phase_test_run;

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
    Export,
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
    export_records: usize,
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
                export_records: 20_000,
            }
        } else {
            Plan {
                // Nine interleaved repetitions: on a shared VM single 3-4 s
                // runs of either arm spread over ±30 %; the median of nine
                // ratios moves far less than that of five.
                reps: 9,
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
                export_records: 100_000,
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
    let phases: [(Group, &str, Phase, &[(&str, &str)]); 10] = [
        (
            Group::TestRun,
            "test_run on crafted packets",
            phase_test_run,
            &[
                ("verifier.load_s", "s"),
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
        (
            Group::Export,
            "flow export (IPFIX, OTLP)",
            export::phase,
            &[
                ("export.ipfix_flows_per_cpu_sec", "flows/s"),
                ("export.otlp_http_flows_per_cpu_sec", "flows/s"),
                ("export.otlp_grpc_flows_per_cpu_sec", "flows/s"),
                ("export.offer_ns_per_report", "ns"),
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

/// `f` with `segwatch_noop` attached to both directions of every pod
/// veth, where segwatch attaches its programs: the hook floor, what the
/// kernel's tcx hooks cost any tc program. Detached again before the
/// result of `f` is looked at.
fn with_noop_hooks<T>(ctx: &mut Ctx, f: impl FnOnce(&mut Ctx) -> Result<T>) -> Result<T> {
    let ifaces: Vec<String> = ctx.topo.pods.iter().map(|p| p.host_if.clone()).collect();
    for i in &ifaces {
        ctx.dp
            .attach_program(PROG_NOOP, i)
            .with_context(|| format!("attaching {PROG_NOOP} to {i}"))?;
    }
    let out = f(ctx);
    for i in &ifaces {
        ctx.dp.detach(i);
    }
    out
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
