//! small: 64-byte UDP p0→p1, baseline and monitored in turn.

use super::*;

pub(super) fn blast(ctx: &Ctx) -> Result<traffic::UdpLoad> {
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

pub(super) fn phase_small(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let (mut base, mut mon) = (Vec::new(), Vec::new());
    let (mut base_cpu, mut mon_cpu) = (Vec::new(), Vec::new());
    let (mut base_sent, mut mon_sent) = (Vec::new(), Vec::new());
    let mut daemon_cpu_per_million = Vec::new();
    // The hook floor (see `with_noop_hooks`), which any tc-based monitor
    // pays.
    let (mut noop_pps, mut noop_cpu) = (Vec::new(), Vec::new());
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
            daemon_cpu_per_million.push(daemon_cpu / (m.received.max(1) as f64 / 1e6));
            mon_sent.push(m.sent as f64 / m.secs);
            stop(d)?;
            let h = with_noop_hooks(ctx, |ctx| blast(ctx))?;
            noop_pps.push(h.pps());
            noop_cpu.push(h.per_cpu_s());
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
        "daemon_cpu_s_per_million_delivered": daemon_cpu_per_million,
        "noop_hooks_delivered_pps": noop_pps,
        "noop_hooks_packets_per_cpu_second": noop_cpu,
        "noop_hooks_ratio": median(&noop_pps) / median(&base),
        "noop_hooks_per_cpu_second_ratio": median(&noop_cpu) / median(&base_cpu),
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
            "64-byte UDP frames pod→pod, sendmmsg/recvmmsg batches of 64, {flows} flows, {secs} s runs: {} pps monitored / {} pps unmonitored delivered (medians); a no-op program on the same hooks: {} pps ({:.3} of unmonitored)",
            report::fmt_num(median(&mon)),
            report::fmt_num(median(&base)),
            report::fmt_num(median(&noop_pps)),
            median(&noop_pps) / median(&base)
        ))
        .detail(detail.clone()),
        Figure::new(
            "small_packet_ratio.per_cpu_second",
            "",
            Some(Target::AtLeast(0.95)),
            sandwich(&base_cpu, &mon_cpu),
        )
        .what(format!(
            "same runs, packets per CPU second of the path (sender + receiver threads incl. the softirq work charged to them, ksoftirqd, and the daemon when monitored): {} / {} (medians); other processes' CPU does not count; a no-op program on the same hooks: {} ({:.3} of unmonitored)",
            report::fmt_num(median(&mon_cpu)),
            report::fmt_num(median(&base_cpu)),
            report::fmt_num(median(&noop_cpu)),
            median(&noop_cpu) / median(&base_cpu)
        ))
        .detail(detail.clone()),
        Figure::new(
            "small_packet_ratio.vs_noop_hooks",
            "",
            None,
            mon.iter().zip(&noop_pps).map(|(m, n)| m / n).collect(),
        )
        .what(format!(
            "same runs, segwatch's own share: monitored / segwatch_noop attached to the same hooks (both directions of every pod veth) delivered pps, {} / {} (medians); what the kernel's tcx hooks cost any tc program is in the no-op",
            report::fmt_num(median(&mon)),
            report::fmt_num(median(&noop_pps))
        ))
        .detail(detail),
    ])
}
