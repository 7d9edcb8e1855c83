//! test-run: BPF_PROG_TEST_RUN on crafted packets, ours against segwatch_noop.

use super::*;

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

pub(super) fn phase_test_run(ctx: &mut Ctx) -> Result<Vec<Figure>> {
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
    // The same frame over IPv6 (its own fast path).
    let steady6 = frame(
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 1)),
        &L4::Udp {
            sport: 40_000,
            dport: 53,
            payload: traffic::SMALL_PAYLOAD,
        },
        &Quirks::default(),
    );
    let fresh: Vec<Vec<u8>> = (0..ctx.plan.new_flows as u16)
        .map(|i| udp(1024 + i))
        .collect();
    let repeat = ctx.plan.test_run_repeat;
    let (mut steady_ratio, mut new_ratio) = (Vec::new(), Vec::new());
    let (mut noop_ns, mut steady_ns, mut noop1_ns, mut new_ns) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut noop6_ns, mut steady6_ns, mut steady6_ratio) = (Vec::new(), Vec::new(), Vec::new());
    // Steady state: the flow exists (one run creates it), every run of
    // `repeat` is a hit; the no-op on the same frame first.
    let steady_run = |ctx: &mut Ctx, f: &[u8]| -> Result<(f64, f64)> {
        let (_, noop) = ctx.dp.test_run(PROG_NOOP, pkt(f), repeat)?;
        ctx.dp.test_run(PROG_INGRESS, pkt(f), 1)?;
        let (_, ours) = ctx.dp.test_run(PROG_INGRESS, pkt(f), repeat)?;
        Ok((noop.as_nanos() as f64, ours.as_nanos() as f64))
    };
    for _ in 0..ctx.plan.test_run_reps {
        ctx.dp.clear_flows()?;
        drain(ctx);
        let (noop, ours) = steady_run(ctx, &steady)?;
        noop_ns.push(noop);
        steady_ns.push(ours);
        steady_ratio.push(ours / noop.max(1.0));
        let (noop6, ours6) = steady_run(ctx, &steady6)?;
        noop6_ns.push(noop6);
        steady6_ns.push(ours6);
        steady6_ratio.push(ours6 / noop6.max(1.0));
        // New-flow path: each packet creates an entry and a ring buffer
        // event; single runs, so the floor is a single run of the no-op.
        let (mut n1, mut o1) = (Vec::new(), Vec::new());
        for f in &fresh {
            n1.push(ctx.dp.test_run(PROG_NOOP, pkt(f), 1)?.1.as_nanos() as f64);
            o1.push(ctx.dp.test_run(PROG_INGRESS, pkt(f), 1)?.1.as_nanos() as f64);
        }
        let entries = ctx.dp.snapshot()?.len();
        if entries != fresh.len() + 2 {
            bail!(
                "test_run created {entries} flow entries, expected {} (the new-flow path did not run)",
                fresh.len() + 2
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
        "noop_ns_per_run_repeat_ipv6": noop6_ns,
        "ours_steady_ns_per_run_ipv6": steady6_ns,
        "noop_ns_single_run_median": noop1_ns,
        "ours_new_flow_ns_single_run_median": new_ns,
        "repeat": repeat,
        "new_flows_per_repetition": fresh.len(),
        "frame": "64-byte Ethernet frame, IPv4 UDP, 18-byte payload (IPv6: the same payload, 84 bytes)",
    });
    // The verifier's work at the bench's own load (one sample per run).
    let loads = ctx.dp.program_loads();
    let load_s: f64 = loads.iter().map(|l| l.load.as_secs_f64()).sum();
    let per_program: serde_json::Map<String, serde_json::Value> = loads
        .iter()
        .map(|l| {
            (
                l.name.to_string(),
                json!({ "load_s": l.load.as_secs_f64(), "verified_insns": l.verified_insns }),
            )
        })
        .collect();
    Ok(vec![
        Figure::new("verifier.load_s", "s", None, vec![load_s])
            .what(format!(
                "BPF_PROG_LOAD of {} (verification), verified instructions {}",
                loads.iter().map(|l| l.name).collect::<Vec<_>>().join(", "),
                loads
                    .iter()
                    .map(|l| l.verified_insns.map_or("?".to_string(), |n| n.to_string()))
                    .collect::<Vec<_>>()
                    .join(" / ")
            ))
            .detail(json!(per_program)),
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
            "ns_per_packet.test_run_steady_ipv6",
            "x floor",
            Some(Target::AtMost(2.0)),
            steady6_ratio,
        )
        .what(format!(
            "BPF_PROG_TEST_RUN, existing IPv6 UDP flow: segwatch_ingress {:.0} ns / segwatch_noop {:.0} ns per run (medians, repeat {repeat})",
            median(&steady6_ns),
            median(&noop6_ns)
        ))
        .detail(detail.clone()),
        Figure::new(
            "ns_per_packet.test_run_new_flow",
            "x floor",
            None,
            new_ratio,
        )
        .what(format!(
            "BPF_PROG_TEST_RUN, new flow (insert + ring buffer event, once per connection; the per-packet target is the steady figure above, connection rates are the storm's): {:.0} ns / no-op {:.0} ns (median single runs)",
            median(&new_ns),
            median(&noop1_ns)
        ))
        .detail(detail),
    ])
}
