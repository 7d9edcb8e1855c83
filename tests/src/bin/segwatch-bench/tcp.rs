//! tcp: iperf3 throughput p0→p1: unmonitored, monitored, and the no-op
//! program on the same hooks, in turn.

use super::*;

pub(super) fn phase_tcp(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let (p0, p1) = (&ctx.topo.pods[0], &ctx.topo.pods[1]);
    let (client_ns, server_ip) = (p0.ns.name.clone(), p1.ip4);
    let _server = traffic::Iperf3Server::start(&p1.ns.name, p1.ip4, 5201)?;
    let secs = ctx.plan.tcp_secs;
    let (mut base, mut mon, mut noop) = (Vec::new(), Vec::new(), Vec::new());
    let (mut base_cpu, mut mon_cpu, mut noop_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut daemon_cpu = Vec::new();
    // Throughput and bits per busy CPU second of the whole machine: the
    // host's steal and other guests move the first by up to 3x between
    // runs here; the second only counts the cycles this machine spent.
    let run = |cpu: &mut Vec<f64>| -> Result<f64> {
        let busy0 = kernel::machine_busy_seconds()?;
        let bps = traffic::iperf3_bps(&client_ns, server_ip, 5201, secs)?;
        let busy = kernel::machine_busy_seconds()? - busy0;
        cpu.push(bps * f64::from(secs) / busy.max(0.01));
        Ok(bps)
    };
    for i in 0..=ctx.plan.reps {
        base.push(run(&mut base_cpu)?);
        if i < ctx.plan.reps {
            let d = daemon(ctx, &[]);
            let pid = daemon_pid(&d)?;
            let c0 = kernel::cpu_seconds(pid)?;
            mon.push(run(&mut mon_cpu)?);
            // What the daemon itself took from the two cores meanwhile.
            daemon_cpu.push(kernel::cpu_seconds(pid)? - c0);
            stop(d)?;
            noop.push(with_noop_hooks(ctx, |_| run(&mut noop_cpu))?);
        }
    }
    let gbit = |v: &[f64]| median(v) / 1e9;
    let detail = json!({
        "baseline_bits_per_second": base,
        "monitored_bits_per_second": mon,
        "noop_hooks_bits_per_second": noop,
        "daemon_cpu_s_per_run": daemon_cpu,
        "baseline_bits_per_busy_cpu_second": base_cpu,
        "monitored_bits_per_busy_cpu_second": mon_cpu,
        "noop_hooks_bits_per_busy_cpu_second": noop_cpu,
        "seconds_per_run": secs,
    });
    Ok(vec![
        Figure::new(
            "tcp_throughput_ratio",
            "",
            Some(Target::AtLeast(0.98)),
            sandwich(&base, &mon),
        )
        .what(format!(
            "iperf3 TCP pod→pod through the node's veths (offloads on), {secs} s runs: {:.2} Gbit/s monitored / {:.2} Gbit/s unmonitored (medians); a no-op program on the same hooks: {:.2} Gbit/s ({:.3} of unmonitored); the daemon's own CPU per run {:.3} s (median)",
            gbit(&mon),
            gbit(&base),
            gbit(&noop),
            median(&noop) / median(&base),
            median(&daemon_cpu)
        ))
        .detail(detail.clone()),
        Figure::new(
            "tcp_throughput_ratio.per_cpu_second",
            "",
            Some(Target::AtLeast(0.98)),
            sandwich(&base_cpu, &mon_cpu),
        )
        .what(format!(
            "same runs, received bits per busy CPU second of the whole machine (/proc/stat user+nice+system+irq+softirq over the iperf3 run; its 1 s warm-up is in the CPU, not in the bits, for every arm): {:.2} / {:.2} Gbit per CPU second (medians); a no-op program on the same hooks: {:.2} ({:.3} of unmonitored)",
            gbit(&mon_cpu),
            gbit(&base_cpu),
            gbit(&noop_cpu),
            median(&noop_cpu) / median(&base_cpu)
        ))
        .detail(detail.clone()),
        Figure::new(
            "tcp_throughput_ratio.vs_noop_hooks",
            "",
            None,
            mon.iter().zip(&noop).map(|(m, n)| m / n).collect(),
        )
        .what(format!(
            "same runs, segwatch's own share: monitored / segwatch_noop attached to the same hooks, {:.2} / {:.2} Gbit/s (medians)",
            gbit(&mon),
            gbit(&noop)
        ))
        .detail(detail),
    ])
}
