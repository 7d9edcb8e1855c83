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
