//! `segwatch run` on real veths: flow reports compared with an independent
//! witness (tshark on the same interface), a burst of short connections,
//! interfaces vanishing under traffic, and a clean detach on SIGTERM.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tests::*;

/// Daemon flags that end flows quickly.
const FAST: &[&str] = &["--idle-timeout", "2", "--sweep-interval-ms", "200"];

fn ip(v: &Value) -> IpAddr {
    v["ip"].as_str().expect("ip").parse().expect("valid ip")
}

fn port(v: &Value) -> u16 {
    v["port"].as_u64().unwrap_or(0) as u16
}

/// Packets and bytes tshark saw from `a` to `b` for one 5-tuple.
fn witness(cap: &[CapturedPacket], proto: u8, a: (IpAddr, u16), b: (IpAddr, u16)) -> (u64, u64) {
    cap.iter()
        .filter(|p| p.proto == proto && (p.src, p.sport) == a && (p.dst, p.dport) == b)
        .fold((0, 0), |(n, bytes), p| (n + 1, bytes + p.ip_len))
}

fn proto_num(name: &str) -> u8 {
    match name {
        "TCP" => 6,
        "UDP" => 17,
        "ICMP" => 1,
        "ICMPv6" => 58,
        other => other.parse().expect("protocol number"),
    }
}

/// Sums the reports of each connection (a long flow may be reported more
/// than once) keyed by (protocol, src, dst).
fn by_connection(reports: &[Value]) -> BTreeMap<(String, (IpAddr, u16), (IpAddr, u16)), [u64; 4]> {
    let mut m = BTreeMap::new();
    for r in reports {
        let key = (
            r["protocol"].as_str().expect("protocol").to_string(),
            (ip(&r["src"]), port(&r["src"])),
            (ip(&r["dst"]), port(&r["dst"])),
        );
        let e: &mut [u64; 4] = m.entry(key).or_default();
        e[0] += r["packets"]["sent"].as_u64().expect("packets.sent");
        e[1] += r["packets"]["received"].as_u64().expect("packets.received");
        e[2] += r["bytes"]["sent"].as_u64().expect("bytes.sent");
        e[3] += r["bytes"]["received"].as_u64().expect("bytes.received");
    }
    m
}

#[test]
fn flow_counts_equal_what_tshark_captures() {
    let topo = Topo::new(2, false);
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    tcp_server(p1, p1.ip4, 8080, 3000);
    tcp_server(p1, p1.ip6, 8080, 1000);
    udp_sink(p1, SocketAddr::new(p1.ip4, 5000));
    udp_sink(p1, SocketAddr::new(p1.ip6, 5000));

    let mut daemon = Daemon::start(&topo.node.name, FAST);
    let cap = Capture::start(&topo.node.name, &p0.host_if);

    let fin4 = tcp_client(p0, SocketAddr::new(p1.ip4, 8080), 5000);
    let rst4 = tcp_client_rst(p0, SocketAddr::new(p1.ip4, 8080), 700);
    let fin6 = tcp_client(p0, SocketAddr::new(p1.ip6, 8080), 20_000);
    tcp_refused(p0, SocketAddr::new(p1.ip4, 9));
    let udp4 = udp_send(p0, SocketAddr::new(p1.ip4, 5000), 10, 100);
    let udp6 = udp_send(p0, SocketAddr::new(p1.ip6, 5000), 7, 1200);
    icmp_echo(p0, p1.ip4, 4242, 3);
    icmp_echo(p0, p1.ip6, 4343, 4);

    // Idle timeout 2 s, sweep 200 ms: every flow has ended by now.
    std::thread::sleep(Duration::from_secs(4));
    let captured = cap.finish();
    assert_eq!(
        daemon.stop(),
        0,
        "SIGTERM must end the daemon with 0: {}",
        daemon.stderr()
    );
    let reports = daemon.reports();
    let conns = by_connection(&reports);

    let expect = [
        ("TCP", (p0.ip4, fin4), (p1.ip4, 8080)),
        ("TCP", (p0.ip4, rst4), (p1.ip4, 8080)),
        ("TCP", (p0.ip6, fin6), (p1.ip6, 8080)),
        ("UDP", (p0.ip4, udp4), (p1.ip4, 5000)),
        ("UDP", (p0.ip6, udp6), (p1.ip6, 5000)),
        ("ICMP", (p0.ip4, 4242), (p1.ip4, 4242)),
        ("ICMPv6", (p0.ip6, 4343), (p1.ip6, 4343)),
    ];
    for (proto, src, dst) in expect {
        let (src_k, dst_k) = if proto.starts_with("ICMP") {
            ((src.0, 0), (dst.0, 0))
        } else {
            (src, dst)
        };
        let got = conns
            .get(&(proto.to_string(), src_k, dst_k))
            .unwrap_or_else(|| {
                panic!("no flow report for {proto} {src:?} -> {dst:?}; reports: {reports:#?}")
            });
        let (ps, bs) = witness(&captured, proto_num(proto), src, dst);
        let (pr, br) = witness(&captured, proto_num(proto), dst, src);
        assert!(
            ps > 0,
            "tshark must have seen {proto} {src:?} -> {dst:?}; captured {} packets, first: {:?}",
            captured.len(),
            captured.iter().take(5).collect::<Vec<_>>()
        );
        assert_eq!(
            *got,
            [ps, pr, bs, br],
            "{proto} {src:?} -> {dst:?}: [packets sent, received, bytes sent, received] must equal tshark's"
        );
    }
    // The refused connection: one SYN, one RST, state rejected.
    let refused: Vec<&Value> = reports
        .iter()
        .filter(|r| r["dst"]["port"] == 9 && r["protocol"] == "TCP")
        .collect();
    assert_eq!(refused.len(), 1, "the refused attempt is one flow");
    assert_eq!(refused[0]["tcp"]["state"], "rejected");
    assert_eq!(refused[0]["packets"]["sent"], 1);
    let fin_report = reports
        .iter()
        .find(|r| r["src"]["port"] == fin4)
        .expect("fin flow");
    assert_eq!(fin_report["tcp"]["state"], "closed");
    assert_eq!(
        fin_report["interface"],
        p0.host_if.as_str(),
        "reported once, from the opener's veth"
    );
    // Seen on two veths of the node, reported once each.
    for (proto, src, dst) in expect {
        let icmp = proto.starts_with("ICMP");
        let n = reports
            .iter()
            .filter(|r| r["protocol"] == proto && ip(&r["src"]) == src.0 && ip(&r["dst"]) == dst.0)
            .filter(|r| {
                if icmp {
                    matches!(r["icmp"]["type"].as_u64(), Some(8 | 128))
                } else {
                    port(&r["src"]) == src.1
                }
            })
            .count();
        assert_eq!(
            n, 1,
            "{proto} {src:?} -> {dst:?} must be reported exactly once (dedup across the two veths)"
        );
    }
}

#[test]
fn gso_packets_are_counted_as_wire_segments() {
    // Offloads on: the sender's TCP hands veth super-packets. The witness is
    // each sender's own TCP stack: TcpOutSegs counts the segments it put on
    // the wire (tcp_skb_pcount), while TcpInSegs counts received skbs, so
    // the server's TcpOutSegs witnesses what the client received.
    let topo = Topo::new(2, true);
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    tcp_server(p1, p1.ip4, 8080, 200_000);
    let mut daemon = Daemon::start(&topo.node.name, FAST);
    let (before, server_before) = (nstat(&p0.ns.name), nstat(&p1.ns.name));
    let port = tcp_client(p0, SocketAddr::new(p1.ip4, 8080), 2_000_000);
    std::thread::sleep(Duration::from_millis(500));
    let (after, server_after) = (nstat(&p0.ns.name), nstat(&p1.ns.name));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(daemon.stop(), 0);
    let reports = daemon.reports();
    let conns = by_connection(&reports);
    let got = conns
        .get(&("TCP".to_string(), (p0.ip4, port), (p1.ip4, 8080)))
        .unwrap_or_else(|| panic!("no report for the GSO connection: {reports:#?}"));
    let out_segs = after["TcpOutSegs"] - before["TcpOutSegs"];
    let server_out = server_after["TcpOutSegs"] - server_before["TcpOutSegs"];
    assert_eq!(got[0], out_segs, "packets sent = the client's TcpOutSegs");
    assert_eq!(
        got[1], server_out,
        "packets received = the server's TcpOutSegs"
    );
    assert!(
        got[2] > 2_000_000,
        "bytes include the 2 MB payload plus headers"
    );
}

/// The pod's TCP counters (nstat -az, absolute values).
fn nstat(netns: &str) -> BTreeMap<String, u64> {
    sh_in(netns, &["nstat", "-az", "--json"]);
    let out = sh_in(netns, &["nstat", "-asz", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("nstat json");
    v["kernel"]
        .as_object()
        .expect("kernel counters")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

#[test]
fn a_burst_of_ten_thousand_connections_is_reported_or_counted_lost() {
    let topo = Topo::new(2, true);
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    tcp_server(p1, p1.ip4, 7000, 0);
    let mut daemon = Daemon::start(&topo.node.name, FAST);
    let dst = SocketAddr::new(p1.ip4, 7000);
    const N: usize = 10_000;
    // Each connection from a port of its own: a 5-tuple taken again within
    // the closed-flow linger would be reported with the earlier connection
    // (a known limit, see the README), which is not what this measures.
    p0.ns
        .run(move || {
            for i in 0..N {
                drop(tcp_connect_from(20_000 + i as u16, dst));
            }
        })
        .join()
        .expect("burst");
    std::thread::sleep(Duration::from_secs(4));
    let metrics = daemon.metrics();
    assert_eq!(daemon.stop(), 0);
    let reports = daemon.reports();
    let n = reports.iter().filter(|r| r["dst"]["port"] == 7000).count();
    let lost: f64 = ["ringbuf_full", "flow_map_full", "event_queue_full"]
        .iter()
        .map(|s| {
            metric_value(
                &metrics,
                &format!("segwatch_events_lost_total{{stage=\"{s}\"}}"),
            )
        })
        .sum();
    // Every connection is accounted for: reported once, or counted lost.
    eprintln!("burst: {n} reports, {lost} counted losses, {N} connections");
    assert_eq!(
        n as f64 + lost,
        N as f64,
        "reports ({n}) + counted losses ({lost}) must equal the {N} connections made"
    );
}

#[test]
fn deleting_a_veth_under_traffic_detaches_cleanly() {
    let topo = Topo::new(2, true);
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    udp_sink(p1, SocketAddr::new(p1.ip4, 5000));
    let daemon = Daemon::start(&topo.node.name, FAST);
    let attached = |d: &Daemon| d.metric("segwatch_interfaces_attached");
    assert_eq!(attached(&daemon), 2.0, "both pod veths attached");
    let dst = SocketAddr::new(p1.ip4, 5000);
    let sender = p0.ns.run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..2000 {
            let _ = s.send_to(&[0u8; 200], dst);
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    sh_in(&topo.node.name, &["ip", "link", "del", &p1.host_if]);
    sender.join().expect("sender");
    let gone = wait_for(Duration::from_secs(5), || {
        (attached(&daemon) == 1.0).then_some(())
    });
    assert!(
        gone.is_some(),
        "the gauge must drop to 1 after the veth is deleted; stderr: {}",
        daemon.stderr()
    );
    assert_eq!(
        daemon.get("/healthz").expect("healthz").0,
        200,
        "the daemon keeps running"
    );
    // A veth that appears later is attached too.
    sh_in(
        &topo.node.name,
        &[
            "ip",
            "link",
            "add",
            &format!("{}n", p1.host_if),
            "type",
            "veth",
            "peer",
            "name",
            &format!("{}m", p1.host_if),
        ],
    );
    let back = wait_for(Duration::from_secs(5), || {
        (attached(&daemon) >= 2.0).then_some(())
    });
    assert!(back.is_some(), "a new veth must be attached as it appears");
}

#[test]
fn nothing_stays_attached_after_sigterm() {
    let topo = Topo::new(1, true);
    let iface = topo.pods[0].host_if.clone();
    let mut daemon = Daemon::start(&topo.node.name, FAST);
    let during = tcx_programs(&topo.node.name, &iface);
    assert_eq!(
        during.iter().filter(|n| n.starts_with("segwatch_")).count(),
        2,
        "while running, our ingress and egress programs are attached (else this check proves nothing): {during:?}"
    );
    assert_eq!(daemon.stop(), 0);
    let after = tcx_programs(&topo.node.name, &iface);
    assert!(
        after.iter().all(|n| !n.starts_with("segwatch")),
        "after SIGTERM nothing of ours may stay attached: {after:?}"
    );
}

#[test]
fn bad_flags_and_unknown_interfaces_fail_with_one_line() {
    require_root();
    let out = std::process::Command::new(segwatch_bin())
        .args([
            "run",
            "--interface",
            "no-such-if0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run segwatch");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--interface no-such-if0: unknown interface"),
        "stderr: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn a_named_program_attaches_after_ours_and_runs_on_every_packet() {
    use aya::programs::{SchedClassifier, TcAttachType};
    use monitor_common::PROG_NOOP;
    use segwatch::datapath::{Datapath, DatapathError};

    let topo = Topo::new(2, true);
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    udp_sink(p1, SocketAddr::new(p1.ip4, 5000));
    let node = topo.node.path();
    let iface = p0.host_if.clone();
    // The kernel's run-time statistics stay on while the fd lives; they are
    // how the benchmark reads the floor. Another test running at the same
    // time only sees its programs counted too.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let kernel = std::thread::spawn(move || {
        enter(&node);
        let mut dp = Datapath::load(1024, segwatch::datapath::AttachMode::Auto).expect("load");
        assert!(
            matches!(
                dp.attach_program("no_such_prog", &iface),
                Err(DatapathError::UnknownProgram { .. })
            ),
            "an unknown program name is an error"
        );
        dp.attach(&iface).expect("attach ours");
        dp.attach_program(PROG_NOOP, &iface)
            .expect("attach the no-op");
        let names = |t: TcAttachType| -> Vec<(String, u64)> {
            SchedClassifier::query_tcx(&iface, t)
                .expect("query tcx")
                .1
                .iter()
                .map(|p| (p.name_as_str().unwrap_or("?").to_string(), p.run_count()))
                .collect()
        };
        let before = names(TcAttachType::Ingress);
        assert_eq!(before.len(), 2, "ours and the no-op on ingress: {before:?}");
        assert!(
            before[0].0.starts_with("segwatch_ingres") && before[1].0 == PROG_NOOP,
            "ours stays first, the no-op runs after it: {before:?}"
        );
        assert_eq!(names(TcAttachType::Egress).len(), 2, "both on egress too");
        tx.send(()).expect("attached");
        done_rx.recv().expect("traffic sent");
        let after = names(TcAttachType::Ingress);
        let runs = after[1].1 - before[1].1;
        assert!(
            runs >= 200,
            "the no-op must have run on each of the 200 datagrams (kernel run_cnt {runs})"
        );
        dp.detach(&iface);
        let left: Vec<_> = [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .flat_map(names)
            .collect();
        assert!(left.is_empty(), "detach removes the no-op too: {left:?}");
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        kernel.join().expect("the attach checks must hold");
        panic!("the kernel thread neither attached nor failed");
    }
    udp_send(p0, SocketAddr::new(p1.ip4, 5000), 200, 64);
    done_tx.send(()).expect("kernel thread");
    kernel.join().expect("the no-op attach checks must hold");
}

/// Connection identity (#13): three TCP connections, one after the other on
/// ONE 5-tuple (RST-closed with SO_LINGER 0, reconnected at once from the
/// same source port), give one report each with its own exact counts:
/// tshark's packets split at each opening SYN are the witness.
#[test]
fn connections_reusing_one_tuple_are_reported_apart_and_exact() {
    let topo = Topo::with_prefix("swk", 2, false);
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    tcp_server(p1, p1.ip4, 8080, 0);
    let mut daemon = Daemon::start(&topo.node.name, FAST);
    let cap = Capture::start(&topo.node.name, &p0.host_if);
    let dst = SocketAddr::new(p1.ip4, 8080);
    const PORT: u16 = 47011;
    const SENT: [usize; 3] = [1000, 2500, 7000];
    p0.ns
        .run(move || {
            for n in SENT {
                let mut s = tcp_connect_from(PORT, dst);
                std::io::Write::write_all(&mut s, &vec![7u8; n]).expect("send");
                std::thread::sleep(Duration::from_millis(100));
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid fd and option struct.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&s),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
                drop(s); // RST; the next connect takes the tuple at once
            }
        })
        .join()
        .expect("client");
    std::thread::sleep(Duration::from_secs(4));
    let captured = cap.finish();
    let metrics = daemon.metrics();
    assert_eq!(daemon.stop(), 0, "{}", daemon.stderr());
    let client = (p0.ip4, PORT);
    let server = (p1.ip4, 8080u16);
    // The witness: this tuple's packets in capture order, a new connection
    // at each SYN from the client.
    let mut witness: Vec<[u64; 4]> = Vec::new();
    for p in captured.iter().filter(|p| p.proto == 6) {
        let out = (p.src, p.sport) == client && (p.dst, p.dport) == server;
        let back = (p.src, p.sport) == server && (p.dst, p.dport) == client;
        if !out && !back {
            continue;
        }
        if out
            && p.tcp_flags & 0x12 == 0x02
            && (witness.is_empty() || witness.last().unwrap()[1] > 0)
        {
            witness.push([0; 4]);
        }
        let w = witness.last_mut().expect("the capture starts with a SYN");
        if out {
            w[0] += 1;
            w[2] += p.ip_len;
        } else {
            w[1] += 1;
            w[3] += p.ip_len;
        }
    }
    assert_eq!(
        witness.len(),
        3,
        "tshark saw three connections: {witness:?}"
    );
    let reports = daemon.reports();
    let mut mine: Vec<&Value> = reports
        .iter()
        .filter(|r| r["protocol"] == "TCP" && ip(&r["src"]) == client.0 && port(&r["src"]) == PORT)
        .collect();
    mine.sort_by_key(|r| r["start"].as_str().unwrap_or("").to_string());
    let got: Vec<[u64; 4]> = mine
        .iter()
        .map(|r| {
            [
                r["packets"]["sent"].as_u64().unwrap_or(0),
                r["packets"]["received"].as_u64().unwrap_or(0),
                r["bytes"]["sent"].as_u64().unwrap_or(0),
                r["bytes"]["received"].as_u64().unwrap_or(0),
            ]
        })
        .collect();
    assert_eq!(
        got, witness,
        "one report per connection, each with tshark's exact [packets sent, received, bytes sent, received]: {mine:#?}"
    );
    for (r, n) in mine.iter().zip(SENT) {
        assert!(r["ended"] != false, "each connection ended: {r}");
        assert!(
            r["bytes"]["sent"].as_u64().unwrap_or(0) > n as u64,
            "the socket sent {n} bytes of payload: {r}"
        );
    }
    assert_eq!(
        metric_value(
            &metrics,
            "segwatch_events_lost_total{stage=\"tcp_handover\"}"
        ),
        0.0
    );
}
