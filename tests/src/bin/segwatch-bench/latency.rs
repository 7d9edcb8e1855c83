//! latency: forbidden SYN to segwatch_violations_total.

use super::*;

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

pub(super) fn phase_latency(ctx: &mut Ctx) -> Result<Vec<Figure>> {
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
