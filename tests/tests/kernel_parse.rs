//! The real kernel programs on crafted packets (`BPF_PROG_TEST_RUN`): exact
//! keys, counts and loss counters for well-formed and hostile input, and the
//! packet always passes (TCX_NEXT).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use monitor_common::{opener, tcp_flags, Counter, FlowKey, PROG_EGRESS, PROG_INGRESS};
use segwatch::datapath::craft::{frame, ip_len, Quirks, L4};
use segwatch::datapath::{Datapath, Entry, TestPacket};

const TCX_NEXT: i32 = -1;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd10, 0, 0, 0, 0, 0, 0, last))
}

struct Harness {
    dp: Datapath,
    before: [u64; Counter::COUNT as usize],
}

impl Harness {
    fn new() -> Self {
        tests::require_root();
        let dp = Datapath::load(1024, segwatch::datapath::AttachMode::Auto)
            .expect("the programs must load and pass the verifier");
        let before = dp.counters().expect("counters readable");
        Harness { dp, before }
    }

    fn run(&mut self, prog: &str, f: &[u8]) {
        self.run_pkt(
            prog,
            TestPacket {
                frame: f,
                ..Default::default()
            },
        );
    }

    fn run_pkt(&mut self, prog: &str, pkt: TestPacket<'_>) {
        let (ret, _) = self.dp.test_run(prog, pkt, 1).unwrap_or_else(|e| {
            panic!(
                "test_run of a {}-byte frame must work: {e:?}",
                pkt.frame.len()
            )
        });
        assert_eq!(
            ret, TCX_NEXT,
            "every packet must continue unchanged (TCX_NEXT)"
        );
    }

    /// Counter increase since the harness started.
    fn delta(&self, c: Counter) -> u64 {
        self.dp.counters().expect("counters readable")[c as usize] - self.before[c as usize]
    }

    fn flows(&self) -> Vec<Entry> {
        self.dp.snapshot().expect("flow table readable")
    }

    fn only_flow(&self) -> Entry {
        let f = self.flows();
        assert_eq!(f.len(), 1, "expected exactly one flow, got {f:#?}");
        f[0]
    }
}

fn addr_bytes(k: &FlowKey, lo: bool) -> Vec<u8> {
    let words = if lo { k.addr_lo } else { k.addr_hi };
    let n = if k.ip_version == 4 { 1 } else { 4 };
    words[..n].iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// One test, because the maps are shared by every run of the program; the
/// parts clear the table and compare counters by difference.
#[test]
fn programs_account_exactly_and_never_drop() {
    let mut h = Harness::new();
    let (a, b) = (v4(10, 77, 0, 2), v4(10, 77, 1, 3));

    // --- TCP handshake and data, both directions, one canonical entry.
    let syn = frame(
        a,
        b,
        &L4::Tcp {
            sport: 40000,
            dport: 8080,
            flags: tcp_flags::SYN,
            payload: 0,
        },
        &Quirks::default(),
    );
    let synack = frame(
        b,
        a,
        &L4::Tcp {
            sport: 8080,
            dport: 40000,
            flags: tcp_flags::SYN | tcp_flags::ACK,
            payload: 0,
        },
        &Quirks::default(),
    );
    let data = frame(
        a,
        b,
        &L4::Tcp {
            sport: 40000,
            dport: 8080,
            flags: tcp_flags::ACK | tcp_flags::PSH,
            payload: 100,
        },
        &Quirks::default(),
    );
    h.run(PROG_INGRESS, &syn);
    h.run(PROG_EGRESS, &synack);
    h.run(PROG_INGRESS, &data);
    let e = h.only_flow();
    assert_eq!(e.key.proto, 6);
    assert_eq!(e.key.ip_version, 4);
    assert_eq!(
        addr_bytes(&e.key, true),
        vec![10, 77, 0, 2],
        "lo end sorts first"
    );
    assert_eq!((e.key.port_lo, e.key.port_hi), (40000, 8080));
    assert_eq!(e.stats.packets, [2, 1], "two packets a→b, one b→a");
    assert_eq!(
        e.stats.bytes,
        [40 + 140, 40],
        "IP-layer bytes per direction"
    );
    assert_eq!(
        e.stats.tcp_flags,
        [
            tcp_flags::SYN | tcp_flags::ACK | tcp_flags::PSH,
            tcp_flags::SYN | tcp_flags::ACK
        ]
    );
    assert_eq!(e.stats.opener, opener::LO, "the SYN sender opened");
    assert!(e.stats.first_ns > 0 && e.stats.last_ns >= e.stats.first_ns);
    assert_eq!(h.delta(Counter::NewFlows), 1);
    h.dp.clear_flows().unwrap();

    // --- The first packet seen is a SYN-ACK: the receiver opened.
    h.run(PROG_EGRESS, &synack);
    assert_eq!(
        h.only_flow().stats.opener,
        opener::LO,
        "SYN-ACK seen first: its receiver (a, the lo end) opened"
    );
    h.dp.clear_flows().unwrap();

    // --- Mid-stream: inferred from ports (the lower port is the server's).
    let mid = frame(
        b,
        a,
        &L4::Tcp {
            sport: 8080,
            dport: 40000,
            flags: tcp_flags::ACK,
            payload: 10,
        },
        &Quirks::default(),
    );
    h.run(PROG_EGRESS, &mid);
    assert_eq!(h.only_flow().stats.opener, opener::LO_INFERRED);
    h.dp.clear_flows().unwrap();

    // --- GSO super-packet: 3 wire segments of 1000 bytes payload.
    let gso = frame(
        a,
        b,
        &L4::Tcp {
            sport: 40001,
            dport: 8080,
            flags: tcp_flags::ACK,
            payload: 3000,
        },
        &Quirks::default(),
    );
    h.run_pkt(
        PROG_INGRESS,
        TestPacket {
            frame: &gso,
            gso_segs: 3,
            gso_size: 1000,
            ..Default::default()
        },
    );
    let e = h.only_flow();
    assert_eq!(e.stats.packets[0], 3, "a GSO skb counts its wire segments");
    assert_eq!(
        e.stats.bytes[0],
        3000 + 3 * 40,
        "payload once plus IP+TCP headers per segment"
    );
    h.dp.clear_flows().unwrap();

    // --- UDP over IPv6 through two extension headers; 802.1Q-tagged IPv4 UDP.
    let (x, y) = (v6(2), v6(3));
    let udp6 = frame(
        x,
        y,
        &L4::Udp {
            sport: 5353,
            dport: 53,
            payload: 30,
        },
        &Quirks {
            ipv6_ext_count: 2,
            ..Default::default()
        },
    );
    h.run(PROG_INGRESS, &udp6);
    let e = h.only_flow();
    assert_eq!((e.key.proto, e.key.ip_version), (17, 6));
    assert_eq!(
        {
            let mut p = [e.key.port_lo, e.key.port_hi];
            p.sort();
            p
        },
        [53, 5353]
    );
    assert_eq!(e.stats.bytes.iter().sum::<u64>(), ip_len(&udp6, 0) as u64);
    h.dp.clear_flows().unwrap();
    let tagged = frame(
        a,
        b,
        &L4::Udp {
            sport: 1000,
            dport: 2000,
            payload: 5,
        },
        &Quirks {
            vlan_tags: 2,
            ..Default::default()
        },
    );
    h.run(PROG_INGRESS, &tagged);
    let e = h.only_flow();
    assert_eq!(
        (e.key.port_lo, e.key.port_hi),
        (1000, 2000),
        "QinQ-tagged frames are parsed"
    );
    assert_eq!(e.stats.bytes[0], ip_len(&tagged, 2) as u64);
    h.dp.clear_flows().unwrap();

    // --- ICMP echo request and reply share one flow; SCTP has ports.
    let req = frame(
        a,
        b,
        &L4::Icmp {
            ty: 8,
            code: 0,
            id: 77,
            payload: 56,
        },
        &Quirks::default(),
    );
    let rep = frame(
        b,
        a,
        &L4::Icmp {
            ty: 0,
            code: 0,
            id: 77,
            payload: 56,
        },
        &Quirks::default(),
    );
    h.run(PROG_INGRESS, &req);
    h.run(PROG_EGRESS, &rep);
    let e = h.only_flow();
    assert_eq!(
        e.stats.packets,
        [1, 1],
        "echo request and reply are one flow"
    );
    h.dp.clear_flows().unwrap();
    let icmp6 = frame(
        x,
        y,
        &L4::Icmp {
            ty: 128,
            code: 0,
            id: 9,
            payload: 8,
        },
        &Quirks::default(),
    );
    h.run(PROG_INGRESS, &icmp6);
    assert_eq!(h.only_flow().key.proto, 58);
    h.dp.clear_flows().unwrap();
    let sctp = frame(
        a,
        b,
        &L4::Sctp {
            sport: 36412,
            dport: 38412,
            payload: 20,
        },
        &Quirks::default(),
    );
    h.run(PROG_INGRESS, &sctp);
    let e = h.only_flow();
    assert_eq!(
        (e.key.proto, e.key.port_lo, e.key.port_hi),
        (132, 36412, 38412)
    );
    h.dp.clear_flows().unwrap();

    // --- Hostile and odd input: each counted exactly, none in a flow.
    let before_unparsable = h.delta(Counter::Unparsable);
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        // (BPF_PROG_TEST_RUN refuses frames too short for the Ethernet and
        // IPv4 headers with EINVAL; those are sent over a real veth in the
        // end-to-end tests instead.)
        (
            "IHL below 5",
            frame(
                a,
                b,
                &L4::Udp {
                    sport: 1,
                    dport: 2,
                    payload: 0,
                },
                &Quirks {
                    ihl: Some(4),
                    ..Default::default()
                },
            ),
        ),
        (
            "IHL beyond the packet",
            frame(
                a,
                b,
                &L4::Udp {
                    sport: 1,
                    dport: 2,
                    payload: 0,
                },
                &Quirks {
                    ihl: Some(15),
                    ..Default::default()
                },
            ),
        ),
        (
            "TCP data offset below 5",
            frame(
                a,
                b,
                &L4::Tcp {
                    sport: 1,
                    dport: 2,
                    flags: 2,
                    payload: 0,
                },
                &Quirks {
                    tcp_doff: Some(3),
                    ..Default::default()
                },
            ),
        ),
        (
            "truncated TCP header",
            frame(
                a,
                b,
                &L4::Tcp {
                    sport: 1,
                    dport: 2,
                    flags: 2,
                    payload: 0,
                },
                &Quirks {
                    truncate: Some(14 + 20 + 10),
                    ..Default::default()
                },
            ),
        ),
        (
            "truncated UDP in IPv6",
            frame(
                x,
                y,
                &L4::Udp {
                    sport: 1,
                    dport: 2,
                    payload: 0,
                },
                &Quirks {
                    truncate: Some(14 + 40 + 4),
                    ..Default::default()
                },
            ),
        ),
    ];
    for (what, f) in &hostile {
        let unparsable_before = h.delta(Counter::Unparsable);
        h.run(PROG_INGRESS, f);
        assert_eq!(
            h.delta(Counter::Unparsable),
            unparsable_before + 1,
            "{what}: must be counted as unparsable"
        );
    }
    assert_eq!(
        h.delta(Counter::Unparsable) - before_unparsable,
        hostile.len() as u64
    );
    assert!(
        h.flows().is_empty(),
        "no hostile packet may create a flow: {:#?}",
        h.flows()
    );

    let too_many_ext = frame(
        x,
        y,
        &L4::Udp {
            sport: 1,
            dport: 2,
            payload: 0,
        },
        &Quirks {
            ipv6_ext_count: 9,
            ..Default::default()
        },
    );
    h.run(PROG_INGRESS, &too_many_ext);
    assert_eq!(
        h.delta(Counter::Ipv6ExtLimit),
        1,
        "a chain longer than the bound is counted"
    );

    let mut arp = vec![0xffu8; 12];
    arp.extend(0x0806u16.to_be_bytes());
    arp.extend([0u8; 28]);
    h.run(PROG_INGRESS, &arp);
    assert_eq!(h.delta(Counter::NonIp), 1, "ARP is counted as non-IP");
    assert!(h.flows().is_empty());

    // --- A later IPv4 fragment: counted, in a port-less flow, not misattributed.
    let frag = frame(
        a,
        b,
        &L4::Raw {
            proto: 17,
            payload: 64,
        },
        &Quirks {
            frag_offset: 185,
            ..Default::default()
        },
    );
    h.run(PROG_INGRESS, &frag);
    assert_eq!(h.delta(Counter::Fragments), 1);
    let e = h.only_flow();
    assert_eq!(
        (e.key.port_lo, e.key.port_hi, e.key.proto),
        (0, 0, 17),
        "no ports invented for a later fragment"
    );
    h.dp.clear_flows().unwrap();

    // --- Zero-length UDP payload is a flow like any other.
    let empty = frame(
        a,
        b,
        &L4::Udp {
            sport: 7,
            dport: 9,
            payload: 0,
        },
        &Quirks::default(),
    );
    h.run(PROG_INGRESS, &empty);
    assert_eq!(h.only_flow().stats.bytes[0], 28);

    // Every packet that is in no flow is in exactly one loss or skip
    // bucket (accounted packets are in the flow table: no per-packet counter).
    let skipped =
        h.delta(Counter::NonIp) + h.delta(Counter::Unparsable) + h.delta(Counter::Ipv6ExtLimit);
    assert_eq!(
        skipped,
        hostile.len() as u64 + 1 + 1,
        "hostile, the long IPv6 chain and ARP"
    );
    assert_eq!(h.delta(Counter::FlowMapFull), 0);
}

/// Drains the ring buffer: every event the programs sent so far.
fn events(rb: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<monitor_common::FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        assert!(item.len() >= std::mem::size_of::<monitor_common::FlowEvent>());
        // SAFETY: the kernel wrote a FlowEvent (repr(C), any bit pattern valid).
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    out
}

/// Connection identity in the kernel (#13): one 5-tuple, several TCP
/// connections. A retransmitted SYN is the same connection; a SYN after RST,
/// after FIN both ways, or with a new ISN starts a new one, and the old one's
/// exact totals are handed over in an event.
#[test]
fn a_syn_on_an_ended_or_other_connection_starts_a_new_one() {
    use monitor_common::event_kind;
    let mut h = Harness::new();
    let mut rb = h.dp.take_events().expect("ring buffer");
    h.dp.clear_flows().unwrap();
    events(&mut rb);
    let (a, b) = (v4(10, 78, 0, 2), v4(10, 78, 1, 3));
    let tcp = |from_a: bool, flags: u8, payload: usize, seq: u32| {
        let (s, d, sp, dp) = if from_a {
            (a, b, 41000, 443)
        } else {
            (b, a, 443, 41000)
        };
        frame(
            s,
            d,
            &L4::Tcp {
                sport: sp,
                dport: dp,
                flags,
                payload,
            },
            &Quirks {
                tcp_seq: Some(seq),
                ..Default::default()
            },
        )
    };
    use tcp_flags::{ACK, FIN, RST, SYN};
    // Connection 1: handshake and 100 bytes of data.
    h.run(PROG_INGRESS, &tcp(true, SYN, 0, 1000));
    h.run(PROG_EGRESS, &tcp(false, SYN | ACK, 0, 5000));
    h.run(PROG_INGRESS, &tcp(true, ACK, 100, 1001));
    let e1 = h.only_flow();
    assert_eq!(e1.stats.packets, [2, 1]);
    let ev = events(&mut rb);
    assert_eq!(ev.len(), 1, "one announcement for the new entry: {ev:?}");
    assert_eq!((ev[0].kind, ev[0].gen), (event_kind::NEW, e1.gen));

    // A retransmitted SYN (same ISN): the same connection.
    h.run(PROG_INGRESS, &tcp(true, SYN, 0, 1000));
    let e = h.only_flow();
    assert_eq!(e.gen, e1.gen, "a retransmitted SYN is not a new connection");
    assert_eq!(
        e.stats.packets,
        [3, 1],
        "it is counted into the same connection"
    );
    assert_eq!(h.delta(Counter::Rotations), 0);
    assert!(
        events(&mut rb).is_empty(),
        "nothing announced for a retransmission"
    );

    // A SYN with a new ISN: connection 2, connection 1's totals handed over.
    h.run(PROG_INGRESS, &tcp(true, SYN, 0, 9000));
    let e2 = h.only_flow();
    assert_ne!(e2.gen, e1.gen, "a SYN with another ISN is a new connection");
    assert_eq!(
        e2.stats.packets,
        [1, 0],
        "connection 2 counted from its first packet"
    );
    assert_eq!(e2.stats.bytes, [40, 0]);
    assert_eq!(e2.stats.tcp_flags, [SYN, 0], "flags start afresh");
    assert_eq!(e2.stats.opener, opener::LO);
    let ev = events(&mut rb);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, event_kind::ROTATED);
    assert_eq!((ev[0].gen, ev[0].prev.gen), (e2.gen, e1.gen));
    assert_eq!(
        ev[0].prev.packets,
        [3, 1],
        "connection 1's exact final packets"
    );
    assert_eq!(ev[0].prev.bytes, [40 + 140 + 40, 40], "and bytes");
    assert_eq!(
        ev[0].prev.tcp_flags,
        u32::from(SYN | ACK) | u32::from(SYN | ACK) << 8
    );
    assert_eq!(h.delta(Counter::Rotations), 1);

    // RST ends connection 2; a SYN with the SAME ISN after it is connection 3.
    h.run(PROG_EGRESS, &tcp(false, RST | ACK, 0, 0));
    h.run(PROG_INGRESS, &tcp(true, SYN, 0, 9000));
    let e3 = h.only_flow();
    assert_ne!(e3.gen, e2.gen, "a SYN after RST is a new connection");
    assert_eq!(e3.stats.packets, [1, 0]);
    let ev = events(&mut rb);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        ev[0].prev.packets,
        [1, 1],
        "connection 2: its SYN and the RST"
    );
    assert_eq!(ev[0].prev.bytes, [40, 40]);

    // FIN both ways ends connection 3; the next SYN is connection 4.
    h.run(PROG_EGRESS, &tcp(false, SYN | ACK, 0, 7000));
    h.run(PROG_INGRESS, &tcp(true, FIN | ACK, 10, 9001));
    let mid = h.only_flow();
    assert_eq!(mid.gen, e3.gen, "FIN one way: still connection 3");
    h.run(PROG_EGRESS, &tcp(false, FIN | ACK, 0, 7001));
    h.run(PROG_INGRESS, &tcp(true, ACK, 0, 9012));
    h.run(PROG_INGRESS, &tcp(true, SYN, 0, 9000));
    let e4 = h.only_flow();
    assert_ne!(
        e4.gen, e3.gen,
        "a SYN after FIN both ways is a new connection"
    );
    let ev = events(&mut rb);
    assert_eq!(
        ev[0].prev.packets,
        [3, 2],
        "connection 3: SYN, FIN, ACK / SYN-ACK, FIN"
    );
    assert_eq!(ev[0].prev.bytes, [40 + 50 + 40, 80]);
    assert_eq!(h.delta(Counter::Rotations), 3);
    assert_eq!(h.delta(Counter::HandoverLost), 0);
    assert_eq!(h.delta(Counter::HandoverRace), 0, "one CPU: no race");

    // The same connection on a second interface (pod to pod): not counted
    // again. test_run runs on loopback unless told another interface of
    // this namespace.
    let other = std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .filter_map(|d| {
            let p = d.ok()?.path().join("ifindex");
            std::fs::read_to_string(p).ok()?.trim().parse::<u32>().ok()
        })
        .find(|i| *i != 1)
        .expect("an interface besides loopback");
    h.run_pkt(
        PROG_EGRESS,
        TestPacket {
            frame: &tcp(true, ACK, 0, 9001),
            ifindex: other,
            ..Default::default()
        },
    );
    let e = h.only_flow();
    assert_eq!(
        e.stats.packets,
        [1, 0],
        "a second interface's copy is not counted"
    );
    assert!(e.second_if, "and marked");
    assert_eq!(h.delta(Counter::SecondInterface), 1);
}

/// #15: the IPv6 header walk stops after a later fragment's header: what
/// follows is data (here bytes that would read as a destination-options
/// header running past the packet), and the packet is a counted fragment.
#[test]
fn the_ipv6_walk_stops_after_a_later_fragment_header() {
    let mut h = Harness::new();
    h.dp.clear_flows().unwrap();
    let (x, y) = (v6(7), v6(8));
    let mut f = frame(
        x,
        y,
        &L4::Raw {
            proto: 44,
            payload: 8 + 16,
        },
        &Quirks::default(),
    );
    let frag = 14 + 40;
    // Fragment header: next header 60, offset 1 (8 bytes), id 0x1234.
    f[frag..frag + 8].copy_from_slice(&[60, 0, 0, 0x08, 0, 0, 0x12, 0x34]);
    // Fragment data that looks like a 2 KiB destination-options header.
    f[frag + 8] = 60;
    f[frag + 9] = 255;
    h.run(PROG_INGRESS, &f);
    assert_eq!(
        h.delta(Counter::Unparsable),
        0,
        "fragment data is not parsed as headers"
    );
    assert_eq!(h.delta(Counter::Fragments), 1, "a later fragment, counted");
    let e = h.only_flow();
    assert_eq!((e.key.proto, e.key.port_lo, e.key.port_hi), (60, 0, 0));
    assert_eq!(
        e.stats.bytes.iter().sum::<u64>(),
        40 + 24,
        "the whole IP packet"
    );
}
