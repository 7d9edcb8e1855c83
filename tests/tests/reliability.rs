//! Faults and hostile input on the datapath: crafted frames on a real veth,
//! SIGKILL and restart, an overflowing flow table, missing capabilities;
//! and at the cluster sources: an inventory file replaced by an invalid one,
//! the API server going away and coming back.

use std::net::SocketAddr;
use std::time::Duration;

use segwatch::datapath::craft::{frame, Quirks, L4};
use tests::*;

const FAST: &[&str] = &["--idle-timeout", "2", "--sweep-interval-ms", "200"];

fn mac(netns: &str, dev: &str) -> [u8; 6] {
    let text = sh_in(netns, &["cat", &format!("/sys/class/net/{dev}/address")]);
    let mut out = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate() {
        out[i] = u8::from_str_radix(part, 16).expect("hex mac");
    }
    out
}

/// Sends raw Ethernet frames out of the pod's eth0 (AF_PACKET), so they
/// arrive on the node side of the veth exactly as written.
fn send_raw(pod: &Pod, frames: Vec<Vec<u8>>) {
    pod.ns
        .run(move || {
            // SAFETY: plain socket(2); closed below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let ifindex = segwatch::datapath::links::ifindex("eth0").expect("eth0 in the pod");
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            for f in frames {
                sll.sll_addr[..6].copy_from_slice(&f[..6]);
                // SAFETY: f and sll are valid for their lengths.
                let rc = unsafe {
                    libc::sendto(
                        fd,
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&sll as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert!(
                    rc >= 0,
                    "send {} bytes: {}",
                    f.len(),
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
        })
        .join()
        .expect("raw sender");
}

#[test]
fn hostile_frames_on_a_real_veth_are_counted_exactly_and_pass() {
    let topo = Topo::new(2, false);
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    // Only the sender's veth: a frame whose IP header is fine (bad TCP data
    // offset) is routed on to p1 and would be counted there a second time.
    let mut args = FAST.to_vec();
    args.extend(["--interface", p0.host_if.as_str()]);
    let daemon = Daemon::start(&topo.node.name, &args);
    let (src, dst) = (p0.ip4, p1.ip4);
    let (src6, dst6) = (p0.ip6, p1.ip6);
    let d = Quirks::default;
    let to_node = mac(&topo.node.name, &p0.host_if);
    let from_pod = mac(&p0.ns.name, "eth0");
    let mut frames = vec![
        // Unparsable: each must add exactly one to stage="unparsable".
        frame(
            src,
            dst,
            &L4::Udp {
                sport: 1,
                dport: 2,
                payload: 0,
            },
            &Quirks {
                truncate: Some(14 + 12),
                ..d()
            },
        ),
        frame(
            src,
            dst,
            &L4::Udp {
                sport: 1,
                dport: 2,
                payload: 0,
            },
            &Quirks {
                ihl: Some(4),
                ..d()
            },
        ),
        frame(
            src,
            dst,
            &L4::Tcp {
                sport: 1,
                dport: 2,
                flags: 2,
                payload: 0,
            },
            &Quirks {
                tcp_doff: Some(3),
                ..d()
            },
        ),
        frame(
            src,
            dst,
            &L4::Tcp {
                sport: 1,
                dport: 2,
                flags: 2,
                payload: 0,
            },
            &Quirks {
                truncate: Some(14 + 20 + 10),
                ..d()
            },
        ),
        frame(
            src6,
            dst6,
            &L4::Udp {
                sport: 1,
                dport: 2,
                payload: 0,
            },
            &Quirks {
                truncate: Some(14 + 30),
                ..d()
            },
        ),
        // Longer extension-header chain than the bound.
        frame(
            src6,
            dst6,
            &L4::Udp {
                sport: 1,
                dport: 2,
                payload: 0,
            },
            &Quirks {
                ipv6_ext_count: 9,
                ..d()
            },
        ),
        // A later fragment: a port-less flow, no invented ports.
        frame(
            src,
            dst,
            &L4::Raw {
                proto: 17,
                payload: 48,
            },
            &Quirks {
                frag_offset: 100,
                ..d()
            },
        ),
        // Zero-length UDP payload to a listener: must arrive.
        frame(
            src,
            dst,
            &L4::Udp {
                sport: 4444,
                dport: 5555,
                payload: 0,
            },
            &d(),
        ),
    ];
    // Non-IP ethertype.
    let mut odd = vec![0u8; 12];
    odd.extend(0x88b5u16.to_be_bytes()); // IEEE local experimental
    odd.extend([0u8; 46]);
    frames.push(odd);
    for f in &mut frames {
        f[..6].copy_from_slice(&to_node);
        f[6..12].copy_from_slice(&from_pod);
    }
    // The zero-length datagram is routed to p1: a listener counts it.
    let (tx, rx) = std::sync::mpsc::channel();
    p1.ns.run(move || {
        let s = std::net::UdpSocket::bind(SocketAddr::new(dst, 5555)).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 64];
        let got = s.recv_from(&mut buf).map(|(n, a)| (n, a.port()));
        let _ = tx.send(());
        got
    });
    rx.recv().expect("listener up");
    let lost = |d: &Daemon, stage: &str| {
        d.metric(&format!("segwatch_events_lost_total{{stage=\"{stage}\"}}"))
    };
    let (u0, x0) = (lost(&daemon, "unparsable"), lost(&daemon, "ipv6_ext_limit"));
    send_raw(p0, frames);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the zero-length datagram must pass through to the pod");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        lost(&daemon, "unparsable") - u0,
        5.0,
        "five malformed frames, five counted"
    );
    assert_eq!(
        lost(&daemon, "ipv6_ext_limit") - x0,
        1.0,
        "one over-long extension chain"
    );
    assert!(daemon.metric("segwatch_packets_total{result=\"fragment\"}") >= 1.0);
    assert!(daemon.metric("segwatch_packets_total{result=\"non_ip\"}") >= 1.0);
    std::thread::sleep(Duration::from_secs(3));
    let reports = daemon.reports();
    let frag: Vec<_> = reports
        .iter()
        .filter(|r| {
            r["protocol"] == "UDP"
                && r["src"]["ip"] == src.to_string()
                && r["src"]["port"].is_null()
        })
        .collect();
    assert_eq!(
        frag.len(),
        1,
        "the later fragment is one port-less flow: {reports:#?}"
    );
    let empty = reports
        .iter()
        .find(|r| r["dst"]["port"] == 5555)
        .expect("zero-length UDP flow");
    assert_eq!(empty["bytes"]["sent"], 28, "20 IP + 8 UDP bytes");
    // Nothing odd was attributed to a port.
    assert!(
        !reports
            .iter()
            .any(|r| r["src"]["port"] == 1 || r["dst"]["port"] == 2),
        "no malformed frame may appear as a flow: {reports:#?}"
    );
}

#[test]
fn sigkill_leaves_nothing_attached_and_a_restart_works() {
    let topo = Topo::new(2, true);
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    let mut daemon = Daemon::start(&topo.node.name, FAST);
    assert_eq!(tcx_programs(&topo.node.name, &p0.host_if).len(), 2);
    let mut child = daemon.child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let left = wait_for(Duration::from_secs(5), || {
        tcx_programs(&topo.node.name, &p0.host_if)
            .is_empty()
            .then_some(())
    });
    assert!(
        left.is_some(),
        "tcx links die with the process: nothing may stay attached after SIGKILL"
    );
    // A new daemon attaches again and reports new traffic.
    udp_sink(p1, SocketAddr::new(p1.ip4, 6000));
    let mut again = Daemon::start(&topo.node.name, FAST);
    let port = udp_send(p0, SocketAddr::new(p1.ip4, 6000), 3, 10);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(again.stop(), 0);
    let n = again
        .reports()
        .iter()
        .filter(|r| r["src"]["port"] == port)
        .count();
    assert_eq!(n, 1, "the restarted daemon reports the new flow once");
    assert_eq!(tcx_programs(&topo.node.name, &p0.host_if).len(), 0);
}

#[test]
fn an_overflowing_flow_table_is_counted_and_recovers() {
    let topo = Topo::new(2, true);
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    udp_sink(p1, SocketAddr::new(p1.ip4, 7000));
    // 32 entries: a pod-to-pod flow takes two (one per veth). The
    // per-interface new-flow budget (default max-flows/8 per second) would
    // stop the spray first; this test is about the table, so it is off
    // (tests/kernel_parse.rs holds the budget's own test).
    let mut args = FAST.to_vec();
    args.extend(["--max-flows", "32", "--new-flow-budget", "0"]);
    let mut daemon = Daemon::start(&topo.node.name, &args);
    let dst = SocketAddr::new(p1.ip4, 7000);
    p0.ns
        .run(move || {
            for _ in 0..200 {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
                s.send_to(b"x", dst).expect("send");
            }
        })
        .join()
        .expect("storm");
    let lost = wait_for(Duration::from_secs(5), || {
        let v = daemon.metric("segwatch_events_lost_total{stage=\"flow_map_full\"}");
        (v > 0.0).then_some(v)
    });
    assert!(
        lost.is_some(),
        "packets that found the table full must be counted as lost"
    );
    assert_eq!(daemon.get("/healthz").expect("alive").0, 200);
    // Flows idle out (2 s), the table empties, new flows are tracked again.
    std::thread::sleep(Duration::from_secs(4));
    let port = udp_send(p0, dst, 2, 10);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(daemon.stop(), 0);
    let n = daemon
        .reports()
        .iter()
        .filter(|r| r["src"]["port"] == port)
        .count();
    assert_eq!(n, 1, "after the storm a new flow is reported again");
}

#[test]
fn refuses_to_start_without_capabilities_and_names_them() {
    require_root();
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set", "-bpf,-sys_admin"])
        .arg(segwatch_bin())
        .args([
            "run",
            "--interface",
            "lo",
            "--metrics-addr",
            "127.0.0.1:0",
            "--flow-log",
            "/dev/null",
        ])
        .output()
        .expect("setpriv (util-linux) runs segwatch");
    assert!(!out.status.success(), "must not start without CAP_BPF");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing capabilities CAP_BPF"),
        "names the capability: {err}"
    );
    assert!(
        !err.contains("CAP_NET_ADMIN"),
        "does not name what it has: {err}"
    );
}

/// Our tc filters on `iface` in `netns` (ingress and egress), one line each.
fn tc_filters(netns: &str, iface: &str) -> String {
    let mut out = sh_in(netns, &["tc", "filter", "show", "dev", iface, "ingress"]);
    out.push_str(&sh_in(
        netns,
        &["tc", "filter", "show", "dev", iface, "egress"],
    ));
    out.lines()
        .filter(|l| l.contains("direct-action") && l.contains("segwatch_"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn clsact_fallback_counts_detaches_and_cleans_up_after_a_crash() {
    // The path kernels before 6.6 take, forced on this one.
    let topo = Topo::new(2, true);
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    udp_sink(p1, SocketAddr::new(p1.ip4, 6100));
    let mut args = FAST.to_vec();
    args.extend(["--attach-mode", "clsact"]);
    let mut daemon = Daemon::start(&topo.node.name, &args);
    assert!(
        tcx_programs(&topo.node.name, &p0.host_if).is_empty(),
        "clsact mode must not use tcx"
    );
    let filters = tc_filters(&topo.node.name, &p0.host_if);
    assert_eq!(
        filters.lines().count(),
        2,
        "one filter per direction:\n{filters}"
    );
    let port = udp_send(p0, SocketAddr::new(p1.ip4, 6100), 5, 100);
    std::thread::sleep(Duration::from_secs(3));
    // SIGKILL: clsact filters stay behind ...
    let mut child = daemon.child.take().expect("running");
    child.kill().expect("kill");
    child.wait().expect("reaped");
    let stale = tc_filters(&topo.node.name, &p0.host_if);
    assert_eq!(
        stale.lines().count(),
        2,
        "clsact filters outlive the process:\n{stale}"
    );
    // ... and the next run replaces them instead of stacking a second set.
    let mut again = Daemon::start(&topo.node.name, &args);
    let now = tc_filters(&topo.node.name, &p0.host_if);
    assert_eq!(
        now.lines().count(),
        2,
        "stale filters replaced, not duplicated:\n{now}"
    );
    let port2 = udp_send(p0, SocketAddr::new(p1.ip4, 6100), 4, 100);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(again.stop(), 0);
    let after = tc_filters(&topo.node.name, &p0.host_if);
    assert_eq!(
        after.lines().count(),
        0,
        "SIGTERM removes our filters:\n{after}"
    );
    let r = again.reports();
    let flow = r
        .iter()
        .find(|r| r["src"]["port"] == port2)
        .expect("flow after restart");
    assert_eq!(flow["packets"]["sent"], 4, "exact count through clsact");
    assert_eq!(flow["bytes"]["sent"], 4 * 128);
    let _ = port;
}

/// A Namespace and a Pod of `p` (both its addresses) as inventory objects.
fn inventory_of(ns: &str, pod: &str, labels: serde_json::Value, p: &Pod) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": pod, "namespace": ns, "labels": labels},
             "spec": {"containers": [{"name": "c", "image": "x"}]},
             "status": {"podIP": p.ip4.to_string(),
                        "podIPs": [{"ip": p.ip4.to_string()}, {"ip": p.ip6.to_string()}]}}
        ]
    })
}

/// Replaces `path` the way kubectl and ConfigMap volumes do (write a new
/// file, rename it over the old), so the daemon never reads half a file.
fn replace_file(path: &std::path::Path, text: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Sends one datagram from `from` to `to` and waits for its flow report.
fn report_of(daemon: &Daemon, from: &Pod, to: SocketAddr) -> serde_json::Value {
    let port = udp_send(from, to, 1, 20);
    wait_for(Duration::from_secs(10), || {
        daemon
            .reports()
            .into_iter()
            .find(|r| r["src"]["port"] == port && r["dst"]["port"] == to.port())
    })
    .unwrap_or_else(|| {
        panic!(
            "no report of {}:{port} -> {to}: {:#?}",
            from.ip4,
            daemon.reports()
        )
    })
}

#[test]
fn an_invalid_inventory_keeps_the_last_good_state_until_a_valid_one_comes() {
    let topo = Topo::new(2, true);
    let (web, api) = (&topo.pods[0], &topo.pods[1]);
    udp_sink(api, SocketAddr::new(api.ip4, 6200));
    let dir = TempDir::new("inventory");
    let inv = dir.0.join("cluster.json");
    let good = inventory_of("shop", "web-0", serde_json::json!({"app": "web"}), web);
    replace_file(&inv, &serde_json::to_vec(&good).expect("json"));
    let mut args = FAST.to_vec();
    args.extend(["--inventory", inv.to_str().expect("utf-8 path")]);
    let daemon = Daemon::start(&topo.node.name, &args);
    let dst = SocketAddr::new(api.ip4, 6200);
    let r = report_of(&daemon, web, dst);
    assert_eq!(
        (&r["src"]["namespace"], &r["src"]["pod"]),
        (&serde_json::json!("shop"), &serde_json::json!("web-0")),
        "attributed from the inventory: {r}"
    );
    assert_eq!(
        daemon.metric("segwatch_source_up{source=\"inventory\"}"),
        1.0
    );

    // Cut off mid-document, as an interrupted copy leaves it.
    replace_file(
        &inv,
        br#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "#,
    );
    let counted = wait_for(Duration::from_secs(15), || {
        (daemon.metric("segwatch_inventory_errors_total{source=\"inventory\"}") == 1.0)
            .then_some(())
    });
    assert!(
        counted.is_some(),
        "the invalid file is counted once:\n{}",
        daemon.metrics()
    );
    assert_eq!(
        daemon.metric("segwatch_source_up{source=\"inventory\"}"),
        0.0,
        "the inventory source is marked stale"
    );
    let r = report_of(&daemon, web, dst);
    assert_eq!(
        (&r["src"]["namespace"], &r["src"]["pod"]),
        (&serde_json::json!("shop"), &serde_json::json!("web-0")),
        "new traffic is judged with the last good state: {r}"
    );
    assert_eq!(
        daemon.get("/readyz").expect("readyz").0,
        200,
        "a bad file keeps the node serving with the last good state"
    );
    let stderr = daemon.stderr();
    let path = inv.display().to_string();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("inventory not reloaded"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one log line for one bad change:\n{stderr}"
    );
    assert!(
        lines[0].contains("ERROR")
            && lines[0].contains("keeping the last good state")
            && lines[0].contains(&path)
            && lines[0].contains("not valid JSON"),
        "the line names the file and the problem: {}",
        lines[0]
    );

    // A valid file again: the change takes effect.
    let renamed = inventory_of("shop", "web-1", serde_json::json!({"app": "web2"}), web);
    replace_file(&inv, &serde_json::to_vec(&renamed).expect("json"));
    let reloaded = wait_for(Duration::from_secs(15), || {
        (daemon.metric("segwatch_source_up{source=\"inventory\"}") == 1.0).then_some(())
    });
    assert!(reloaded.is_some(), "the valid file is read again");
    let r = report_of(&daemon, web, dst);
    assert_eq!(r["src"]["pod"], "web-1", "the new state applies: {r}");
    assert_eq!(r["src"]["labels"], serde_json::json!({"app": "web2"}));
    assert_eq!(
        daemon.metric("segwatch_inventory_errors_total{source=\"inventory\"}"),
        1.0,
        "a valid file is no error"
    );
}

#[test]
fn a_lost_api_server_leaves_the_node_alive_not_ready_and_judging_with_the_last_state() {
    let topo = Topo::new(2, true);
    let (web, api) = (&topo.pods[0], &topo.pods[1]);
    udp_sink(api, SocketAddr::new(api.ip4, 6300));
    let cluster = inventory_of("shop", "web-0", serde_json::json!({"app": "web"}), web);
    let objects = cluster["items"].as_array().expect("items").clone();
    let mut server = fake_api_server(&topo.node, 0, objects.clone());
    let dir = TempDir::new("kube");
    let kubeconfig = server.kubeconfig(&dir.0);
    // No --inventory: the watchers list and watch the fake API server; the
    // missing SegmentationPolicy CRD (404) does not hold readiness back.
    let daemon = Daemon::start_with_env(&topo.node.name, FAST, &[("KUBECONFIG", &kubeconfig)]);
    let dst = SocketAddr::new(api.ip4, 6300);
    let r = report_of(&daemon, web, dst);
    assert_eq!(r["src"]["pod"], "web-0", "attributed from the API: {r}");
    assert_eq!(daemon.metric("segwatch_source_up{source=\"kube\"}"), 1.0);

    server.shutdown();
    let why = wait_for(Duration::from_secs(30), || {
        let (code, body) = daemon.get("/readyz").ok()?;
        (code == 503).then_some(body)
    })
    .unwrap_or_else(|| {
        panic!(
            "/readyz must turn 503 without the API server: {}",
            daemon.stderr()
        )
    });
    let url = format!("http://127.0.0.1:{}/", server.port);
    assert!(
        why.starts_with(&format!("degraded: API server {url}: cannot watch "))
            && why.contains("last successful contact"),
        "the reason names the API server and the last contact: {why}"
    );
    assert_eq!(
        daemon.get("/healthz").expect("healthz"),
        (200, "ok\n".to_string()),
        "liveness holds: restarting the pod would not bring the API server back"
    );
    assert_eq!(daemon.metric("segwatch_source_up{source=\"kube\"}"), 0.0);
    let r = report_of(&daemon, web, dst);
    assert_eq!(
        r["src"]["pod"], "web-0",
        "judged with the last known cluster state: {r}"
    );

    let _back = fake_api_server(&topo.node, server.port, objects);
    let ready = wait_for(Duration::from_secs(60), || {
        (daemon.get("/readyz").ok()?.0 == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "/readyz recovers with the API server: {:?}\n{}",
        daemon.get("/readyz"),
        daemon.stderr()
    );
    let stderr = daemon.stderr();
    let count = |what: &str| stderr.lines().filter(|l| l.contains(what)).count();
    assert_eq!(
        (
            count("cluster sources degraded"),
            count("cluster sources no longer degraded")
        ),
        (1, 1),
        "one line when the outage starts, one when it ends:\n{stderr}"
    );
    let alarms: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert_eq!(
        alarms.len(),
        1,
        "the outage is the only warning, not one per retry and resource:\n{stderr}"
    );
    assert_eq!(daemon.metric("segwatch_source_up{source=\"kube\"}"), 1.0);
}
