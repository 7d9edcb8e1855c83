//! storm: TCP connections per second, all reported with zero loss.

use super::*;

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

pub(super) fn phase_storm(ctx: &mut Ctx) -> Result<Vec<Figure>> {
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
