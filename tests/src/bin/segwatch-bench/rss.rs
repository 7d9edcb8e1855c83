//! rss: daemon memory at 100,000 active flows, kernel maps' memlock.

use super::*;

pub(super) fn phase_rss(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    const FLOWS: u64 = 100_000;
    let p0 = &ctx.topo.pods[0];
    // Long timeouts: every flow stays active while we look. No new-flow
    // budget: the spray is one pod's 100,000 new tuples in about a second
    // (the default budget, 16,384 per second and interface, would stop it
    // near 33,000).
    let d = daemon(
        ctx,
        &[
            "--idle-timeout",
            "600",
            "--active-timeout",
            "600",
            "--new-flow-budget",
            "0",
        ],
    );
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
