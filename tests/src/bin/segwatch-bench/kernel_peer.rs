//! kernel: BPF run-time statistics of ours and of noop on the same veth,
//! and the peer (softflowd, libpcap) on the same traffic.

use super::small::blast;
use super::*;

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

pub(super) fn phase_kernel(ctx: &mut Ctx) -> Result<Vec<Figure>> {
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
    let (mut seg_machine_pm, mut soft_machine_pm) = (Vec::new(), Vec::new());
    let (mut seg_whole_pm, mut soft_whole_pm, mut machine_ratio) =
        (Vec::new(), Vec::new(), Vec::new());
    // Both arms are measured the same way over the same window: the blast
    // plus a 500 ms tail (softflowd reads what libpcap buffered a little
    // after the traffic; segwatch's sweep may run then too).
    let tail = Duration::from_millis(500);
    for _ in 0..ctx.plan.cost_reps {
        // segwatch on the one interface softflowd also watches.
        let d = daemon(ctx, &["--interface", &iface]);
        let pid = daemon_pid(&d)?;
        let (s0, c0) = (kernel::tcx_stats(&iface)?, kernel::cpu_seconds(pid)?);
        let m0 = kernel::machine_busy_seconds()?;
        let load = blast(ctx)?;
        std::thread::sleep(tail);
        let m1 = kernel::machine_busy_seconds()?;
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
        let million = nn as f64 / 1e6;
        let seg_cpu = ot as f64 / 1e9 + (c1 - c0);
        seg_cpu_pm.push(seg_cpu / million);
        seg_pps.push(load.pps());
        seg_path.push(load.cpu_s / million);
        let seg_whole = (load.cpu_s + (c1 - c0)) / million;
        seg_whole_pm.push(seg_whole);
        let seg_machine = (m1 - m0) / million;
        seg_machine_pm.push(seg_machine);

        let sf = Softflowd::start(&ctx.topo.node.name, &iface)?;
        let spid = sf.pid()?;
        let (s0, c0) = (kernel::tcx_stats(&iface)?, kernel::cpu_seconds(spid)?);
        let m0 = kernel::machine_busy_seconds()?;
        let load = blast(ctx)?;
        std::thread::sleep(tail);
        let m1 = kernel::machine_busy_seconds()?;
        let (s1, c1) = (kernel::tcx_stats(&iface)?, kernel::cpu_seconds(spid)?);
        let stats = sf.statistics()?;
        drop(sf);
        let (_, nn) = kernel::delta(&s0, &s1, noop);
        let million = nn as f64 / 1e6;
        soft_cpu_pm.push((c1 - c0) / million);
        soft_pps.push(load.pps());
        let soft_whole = (load.cpu_s + (c1 - c0)) / million;
        soft_whole_pm.push(soft_whole);
        peer_ratio.push(soft_whole / seg_whole);
        let soft_machine = (m1 - m0) / million;
        soft_machine_pm.push(soft_machine);
        machine_ratio.push(soft_machine / seg_machine);
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
            "path_cpu_s_per_million": load.cpu_s / million,
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
        Figure::new("peer.softflowd_cpu_ratio", "x", Some(Target::AtLeast(1.0)), machine_ratio)
            .what(format!(
                "whole-machine busy CPU s per million packets on one veth (64-byte UDP blast + 500 ms, /proc/stat user+nice+system+irq+softirq), softflowd {:.2} / segwatch {:.2}; the path threads + the monitor process alone: softflowd {:.2} / segwatch {:.2}",
                median(&soft_machine_pm),
                median(&seg_machine_pm),
                median(&soft_whole_pm),
                median(&seg_whole_pm)
            ))
            .detail(json!({
                "softflowd_machine_cpu_s_per_million": soft_machine_pm,
                "segwatch_machine_cpu_s_per_million": seg_machine_pm,
                "softflowd_path_and_process_cpu_s_per_million": soft_whole_pm,
                "segwatch_path_and_process_cpu_s_per_million": seg_whole_pm,
                "path_and_process_ratio": peer_ratio,
                "softflowd_process_cpu_s_per_million": soft_cpu_pm,
                "segwatch_bpf_and_daemon_cpu_s_per_million": seg_cpu_pm,
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
