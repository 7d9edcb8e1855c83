//! tcp: iperf3 throughput p0→p1, baseline and monitored in turn.

use super::*;

pub(super) fn phase_tcp(ctx: &mut Ctx) -> Result<Vec<Figure>> {
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
