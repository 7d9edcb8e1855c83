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

/// A TCP segment between the ends `(a, a_port)` and `(b, b_port)`, from a
/// or from b, with sequence number `seq`.
fn tcp_seg(
    ends: ((IpAddr, u16), (IpAddr, u16)),
    from_a: bool,
    flags: u8,
    payload: usize,
    seq: u32,
) -> Vec<u8> {
    let ((a, ap), (b, bp)) = ends;
    let (s, d, sport, dport) = if from_a {
        (a, b, ap, bp)
    } else {
        (b, a, bp, ap)
    };
    frame(
        s,
        d,
        &L4::Tcp {
            sport,
            dport,
            flags,
            payload,
        },
        &Quirks {
            tcp_seq: Some(seq),
            ..Default::default()
        },
    )
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
    let ends = ((v4(10, 78, 0, 2), 41000), (v4(10, 78, 1, 3), 443));
    let tcp = |from_a, flags, payload, seq| tcp_seg(ends, from_a, flags, payload, seq);
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

/// Packets and bytes `sender` sent in flow `e` (its direction).
fn sent_by(e: &Entry, sender: IpAddr) -> (u64, u64) {
    let octets: Vec<u8> = match sender {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let d = if addr_bytes(&e.key, true) == octets {
        0
    } else {
        assert_eq!(
            addr_bytes(&e.key, false),
            octets,
            "{sender} is an end of {e:?}"
        );
        1
    };
    (e.stats.packets[d], e.stats.bytes[d])
}

/// An ICMP (v4) or ICMPv6 error `from → to` of `ty`/`code` quoting the IP
/// packet of `quoted_frame` (its IP header and the first 8 bytes after it,
/// as RFC 792 asks; `quote_len` overrides how much is quoted).
fn icmp_error(
    from: IpAddr,
    to: IpAddr,
    ty: u8,
    code: u8,
    quoted_frame: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let quote = &quoted_frame[14..14 + quote_len];
    let proto = if from.is_ipv4() { 1 } else { 58 };
    let mut f = frame(
        from,
        to,
        &L4::Raw {
            proto,
            payload: 8 + quote.len(),
        },
        &Quirks::default(),
    );
    let l4 = f.len() - 8 - quote.len();
    f[l4..l4 + 8].copy_from_slice(&[ty, code, 0, 0, 0, 0, 0, 0]);
    f[l4 + 8..].copy_from_slice(quote);
    f
}

/// #15: ICMP/ICMPv6 errors are counted as packets of the connection they
/// quote (from the quoted destination's side back to the quoted source), not
/// as new flows judged as their sender's traffic.
#[test]
fn icmp_errors_count_with_the_connection_they_quote() {
    let mut h = Harness::new();
    h.dp.clear_flows().unwrap();
    let (a, b, router) = (v4(10, 79, 0, 2), v4(10, 79, 1, 3), v4(10, 79, 9, 1));

    // UDP a → b:53, then b answers "port unreachable" quoting it.
    let query = frame(
        a,
        b,
        &L4::Udp {
            sport: 5000,
            dport: 53,
            payload: 20,
        },
        &Quirks::default(),
    );
    h.run(PROG_INGRESS, &query);
    let unreach = icmp_error(b, a, 3, 3, &query, 28);
    h.run(PROG_EGRESS, &unreach);
    let e = h.only_flow();
    assert_eq!(
        (e.key.proto, e.key.port_lo, e.key.port_hi),
        (17, 5000, 53),
        "the error is in the UDP connection"
    );
    assert_eq!(sent_by(&e, a), (1, 48), "the query");
    assert_eq!(
        sent_by(&e, b),
        (1, 20 + 8 + 28),
        "the error, as a packet b → a of the connection, IP-layer bytes"
    );
    assert_eq!(
        e.stats.opener,
        opener::LO,
        "a opened (10.79.0.2 sorts first)"
    );
    assert_eq!(h.delta(Counter::IcmpErrors), 1);
    assert_eq!(h.delta(Counter::NewFlows), 1, "no flow for the error");

    // A router's "time exceeded" for a TCP SYN a → b: counted in a ↔ b
    // (the router's address is in no flow).
    h.dp.clear_flows().unwrap();
    let syn = frame(
        a,
        b,
        &L4::Tcp {
            sport: 40100,
            dport: 443,
            flags: tcp_flags::SYN,
            payload: 0,
        },
        &Quirks::default(),
    );
    h.run(PROG_INGRESS, &syn);
    h.run(PROG_EGRESS, &icmp_error(router, a, 11, 0, &syn, 28));
    let e = h.only_flow();
    assert_eq!((e.key.proto, e.key.port_lo, e.key.port_hi), (6, 40100, 443));
    assert_eq!(sent_by(&e, a), (1, 40));
    assert_eq!(sent_by(&e, b), (1, 56), "the router's error, b's side");
    assert_eq!(
        e.stats.tcp_flags,
        [tcp_flags::SYN, 0],
        "an error adds no TCP flags"
    );
    assert_eq!(h.delta(Counter::IcmpErrors), 2);

    // An error for a connection not seen: its entry is the quoted
    // connection, opened by the quoted packet's sender (the error's
    // receiver), not a flow from the error's sender.
    h.dp.clear_flows().unwrap();
    let (c, d) = (v4(10, 79, 5, 9), v4(10, 79, 2, 1));
    let unseen = frame(
        c,
        d,
        &L4::Udp {
            sport: 7000,
            dport: 9999,
            payload: 4,
        },
        &Quirks::default(),
    );
    h.run(PROG_EGRESS, &icmp_error(d, c, 3, 3, &unseen, 28));
    let e = h.only_flow();
    assert_eq!(
        (e.key.proto, addr_bytes(&e.key, true), e.key.port_lo),
        (17, vec![10, 79, 2, 1], 9999),
        "keyed as the quoted UDP connection"
    );
    assert_eq!(sent_by(&e, d), (1, 56));
    assert_eq!(sent_by(&e, c), (0, 0));
    assert_eq!(
        e.stats.opener,
        opener::HI,
        "c (the hi end) sent the quoted packet: c opened"
    );

    // A quote too short to hold ports: the error is a flow of its own
    // (ICMP, type/code), as any ICMP message.
    h.dp.clear_flows().unwrap();
    h.run(PROG_EGRESS, &icmp_error(d, c, 3, 1, &unseen, 20));
    let e = h.only_flow();
    assert_eq!((e.key.proto, e.stats.packets.iter().sum::<u64>()), (1, 1));
    assert_eq!(h.delta(Counter::IcmpErrors), 3, "not counted as related");

    // ICMPv6: packet too big (type 2) from a router and destination
    // unreachable (type 1) from the peer, quoting TCP x → y.
    h.dp.clear_flows().unwrap();
    let (x, y, r6) = (v6(0x21), v6(0x22), v6(0x99));
    let data = frame(
        x,
        y,
        &L4::Tcp {
            sport: 41000,
            dport: 8443,
            flags: tcp_flags::ACK,
            payload: 1400,
        },
        &Quirks::default(),
    );
    h.run(PROG_INGRESS, &data);
    h.run(PROG_EGRESS, &icmp_error(r6, x, 2, 0, &data, 48));
    h.run(PROG_EGRESS, &icmp_error(y, x, 1, 4, &data, 48));
    let e = h.only_flow();
    assert_eq!((e.key.proto, e.key.ip_version), (6, 6));
    assert_eq!(sent_by(&e, x), (1, 40 + 20 + 1400));
    assert_eq!(
        sent_by(&e, y),
        (2, 2 * (40 + 8 + 48)),
        "both errors, in y's direction"
    );
    assert_eq!(h.delta(Counter::IcmpErrors), 5);
    // An echo request's error (v6) is counted with the echo flow.
    h.dp.clear_flows().unwrap();
    let ping = frame(
        x,
        y,
        &L4::Icmp {
            ty: 128,
            code: 0,
            id: 4242,
            payload: 16,
        },
        &Quirks::default(),
    );
    h.run(PROG_INGRESS, &ping);
    h.run(PROG_EGRESS, &icmp_error(r6, x, 3, 0, &ping, 48));
    let e = h.only_flow();
    assert_eq!(
        (e.key.proto, e.key.port_lo, e.key.port_hi),
        (58, 4242, 4242)
    );
    assert_eq!(e.stats.packets.iter().sum::<u64>(), 2);
    assert_eq!(h.delta(Counter::IcmpErrors), 6);
    assert_eq!(h.delta(Counter::Unparsable), 0);
}

/// An IPv6 fragment of `payload` bytes: fragment header (next header
/// `next`, offset in 8-byte units, more-fragments flag, identification)
/// followed by `data`.
fn v6_fragment(
    x: IpAddr,
    y: IpAddr,
    next: u8,
    offset: u16,
    more: bool,
    id: u32,
    data: &[u8],
) -> Vec<u8> {
    let mut f = frame(
        x,
        y,
        &L4::Raw {
            proto: 44,
            payload: 8 + data.len(),
        },
        &Quirks::default(),
    );
    let fh = 14 + 40;
    let off = (offset << 3) | u16::from(more);
    f[fh..fh + 2].copy_from_slice(&[next, 0]);
    f[fh + 2..fh + 4].copy_from_slice(&off.to_be_bytes());
    f[fh + 4..fh + 8].copy_from_slice(&id.to_be_bytes());
    f[fh + 8..].copy_from_slice(data);
    f
}

/// #15: later fragments are counted to their datagram's ports (from the
/// first fragment), v4 and v6; without a first fragment they are port-less
/// and counted as such.
#[test]
fn later_fragments_count_to_their_datagrams_ports() {
    let mut h = Harness::new();
    h.dp.clear_flows().unwrap();
    let (a, b) = (v4(10, 80, 0, 2), v4(10, 80, 1, 3));

    // A DNS-like answer b:53 → a:5353 of 8 + 104 + 50 bytes in two fragments.
    let first = frame(
        b,
        a,
        &L4::Udp {
            sport: 53,
            dport: 5353,
            payload: 104,
        },
        &Quirks {
            more_fragments: true,
            ..Default::default()
        },
    );
    let later = frame(
        b,
        a,
        &L4::Raw {
            proto: 17,
            payload: 50,
        },
        &Quirks {
            frag_offset: 14,
            ..Default::default()
        },
    );
    h.run(PROG_EGRESS, &first);
    h.run(PROG_EGRESS, &later);
    let e = h.only_flow();
    assert_eq!(
        (e.key.proto, e.key.port_lo, e.key.port_hi),
        (17, 5353, 53),
        "one flow, with the datagram's ports"
    );
    assert_eq!(sent_by(&e, b), (2, 132 + 70), "both fragments, exact bytes");
    assert_eq!(h.delta(Counter::Fragments), 1);
    assert_eq!(h.delta(Counter::FragmentNoPorts), 0);

    // A later fragment of another datagram (identification 2) whose first
    // fragment was never seen: port-less, and counted as such.
    let mut orphan = later.clone();
    orphan[14 + 4..14 + 6].copy_from_slice(&2u16.to_be_bytes());
    h.run(PROG_EGRESS, &orphan);
    assert_eq!(h.delta(Counter::FragmentNoPorts), 1);
    let flows = h.flows();
    assert_eq!(flows.len(), 2, "{flows:#?}");
    let portless = flows
        .iter()
        .find(|e| e.key.port_lo == 0)
        .expect("a port-less flow");
    assert_eq!((portless.key.port_hi, sent_by(portless, b)), (0, (1, 70)));

    // IPv6: y:53 → x:5353, UDP header + 96 bytes, then 40 bytes.
    h.dp.clear_flows().unwrap();
    let (x, y) = (v6(0x31), v6(0x32));
    let mut udp = Vec::new();
    udp.extend(53u16.to_be_bytes());
    udp.extend(5353u16.to_be_bytes());
    udp.extend((8u16 + 96 + 40).to_be_bytes());
    udp.extend([0, 0]);
    udp.resize(8 + 96, 0xCD);
    let id = 0x0a0b_0c0d;
    let f1 = v6_fragment(y, x, 17, 0, true, id, &udp);
    let f2 = v6_fragment(y, x, 17, 13, false, id, &[0xCD; 40]);
    h.run(PROG_EGRESS, &f1);
    h.run(PROG_EGRESS, &f2);
    let e = h.only_flow();
    assert_eq!(
        (e.key.proto, e.key.ip_version, e.key.port_lo, e.key.port_hi),
        (17, 6, 5353, 53),
        "one flow with the datagram's ports (x, ::31, sorts first)"
    );
    assert_eq!(
        sent_by(&e, y),
        (2, (40 + 8 + 104) + (40 + 8 + 40)),
        "both fragments with their IPv6 and fragment headers"
    );
    assert_eq!(h.delta(Counter::Fragments), 3);
    assert_eq!(h.delta(Counter::FragmentNoPorts), 1, "unchanged");
    assert_eq!(h.delta(Counter::Unparsable), 0);
}

/// #15: IPv6 BIG TCP (payload length 0; the length in a hop-by-hop jumbo
/// option, or in the skb alone on kernels that no longer insert it) is
/// parsed, and a GSO packet with a segment size but no segment count is
/// counted as its segments.
#[test]
fn big_tcp_and_gso_without_a_segment_count_are_counted() {
    let mut h = Harness::new();
    h.dp.clear_flows().unwrap();
    let (x, y) = (v6(0x41), v6(0x42));

    // A TCP segment x → y behind a jumbo hop-by-hop header.
    let tcp = frame(
        x,
        y,
        &L4::Tcp {
            sport: 42000,
            dport: 5201,
            flags: tcp_flags::ACK,
            payload: 1000,
        },
        &Quirks::default(),
    );
    let mut jumbo = Vec::new();
    jumbo.extend(&tcp[..14 + 40]);
    jumbo[14 + 4..14 + 6].copy_from_slice(&[0, 0]);
    jumbo[14 + 6] = 0; // next header: hop-by-hop
    jumbo.extend([6, 0, 0xC2, 4]);
    jumbo.extend((8u32 + 20 + 1000).to_be_bytes());
    jumbo.extend(&tcp[14 + 40..]);

    h.run(PROG_INGRESS, &jumbo);
    let e = h.only_flow();
    assert_eq!(
        (e.key.proto, e.key.port_lo, e.key.port_hi),
        (6, 42000, 5201)
    );
    assert_eq!(
        sent_by(&e, x),
        (1, 40 + 8 + 20 + 1000),
        "one jumbogram, its length from the option"
    );
    h.dp.clear_flows().unwrap();

    // As a BIG TCP GSO packet of 2 segments of 500: GSO strips the jumbo
    // header, each segment has IPv6 + TCP headers.
    h.run_pkt(
        PROG_INGRESS,
        TestPacket {
            frame: &jumbo,
            gso_segs: 2,
            gso_size: 500,
            ..Default::default()
        },
    );
    assert_eq!(sent_by(&h.only_flow(), x), (2, 1000 + 2 * 60));
    h.dp.clear_flows().unwrap();

    // Payload length 0 without the option (newer kernels), no segment
    // count either: ceil(1000 / 400) = 3 segments.
    let mut bare = tcp.clone();
    bare[14 + 4..14 + 6].copy_from_slice(&[0, 0]);
    h.run_pkt(
        PROG_INGRESS,
        TestPacket {
            frame: &bare,
            gso_size: 400,
            ..Default::default()
        },
    );
    assert_eq!(sent_by(&h.only_flow(), x), (3, 1000 + 3 * 60));
    h.dp.clear_flows().unwrap();

    // IPv4 TCP and UDP GSO from a tap device: segment size, no count.
    let (a, b) = (v4(10, 81, 0, 2), v4(10, 81, 1, 3));
    let t4 = frame(
        a,
        b,
        &L4::Tcp {
            sport: 42001,
            dport: 80,
            flags: tcp_flags::ACK,
            payload: 2500,
        },
        &Quirks::default(),
    );
    h.run_pkt(
        PROG_INGRESS,
        TestPacket {
            frame: &t4,
            gso_size: 1000,
            ..Default::default()
        },
    );
    assert_eq!(
        sent_by(&h.only_flow(), a),
        (3, 2500 + 3 * 40),
        "ceil(2500 / 1000) segments, headers on each"
    );
    h.dp.clear_flows().unwrap();
    let u4 = frame(
        a,
        b,
        &L4::Udp {
            sport: 4500,
            dport: 4500,
            payload: 3000,
        },
        &Quirks::default(),
    );
    h.run_pkt(
        PROG_INGRESS,
        TestPacket {
            frame: &u4,
            gso_size: 1400,
            ..Default::default()
        },
    );
    assert_eq!(sent_by(&h.only_flow(), a), (3, 3000 + 3 * 28));
    h.dp.clear_flows().unwrap();
    // A segment size larger than the payload: one packet.
    h.run_pkt(
        PROG_INGRESS,
        TestPacket {
            frame: &u4,
            gso_size: 4000,
            ..Default::default()
        },
    );
    assert_eq!(sent_by(&h.only_flow(), a), (1, 3028));
    assert_eq!(h.delta(Counter::Unparsable), 0);
}

/// #15: one interface spraying new tuples gets at most its budget of new
/// entries per window; the rest is counted in its overflow record, and
/// other interfaces still get theirs.
#[test]
fn a_spraying_interface_is_held_to_its_new_flow_budget() {
    let mut h = Harness::new();
    h.dp.clear_flows().unwrap();
    h.dp.set_new_flow_budget(3).unwrap();
    let other = std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .filter_map(|d| {
            let p = d.ok()?.path().join("ifindex");
            std::fs::read_to_string(p).ok()?.trim().parse::<u32>().ok()
        })
        .find(|i| *i != 1)
        .expect("an interface besides loopback");
    let (a, b) = (v4(10, 82, 0, 2), v4(10, 82, 1, 3));
    let udp = |sport: u16| {
        frame(
            a,
            b,
            &L4::Udp {
                sport,
                dport: 53,
                payload: 12,
            },
            &Quirks::default(),
        )
    };
    // Interface 1 (test_run's loopback) sprays 5 tuples, then the first
    // again; `other` starts 2.
    for p in 1000..1005 {
        h.run(PROG_INGRESS, &udp(p));
    }
    h.run(PROG_INGRESS, &udp(1000));
    for p in 2000..2002 {
        h.run_pkt(
            PROG_INGRESS,
            TestPacket {
                frame: &udp(p),
                ifindex: other,
                ..Default::default()
            },
        );
    }
    // An over-budget tuple's next packet is counted in the overflow again.
    h.run(PROG_INGRESS, &udp(1004));
    let flows = h.flows();
    let on = |i: u32| flows.iter().filter(|e| e.key.ifindex == i).count();
    assert_eq!(on(1), 3, "the budget: {flows:#?}");
    assert_eq!(on(other), 2, "the other interface is not starved");
    let e1000 = flows
        .iter()
        .find(|e| [e.key.port_lo, e.key.port_hi].contains(&1000))
        .expect("port 1000 has its entry");
    assert_eq!(sent_by(e1000, a).0, 2, "an admitted connection counts on");
    assert_eq!(h.delta(Counter::FlowBudget), 3, "two new tuples, one twice");
    let budgets = h.dp.budgets().unwrap();
    let lo = budgets
        .iter()
        .find(|(i, _)| *i == 1)
        .expect("loopback's record")
        .1;
    assert_eq!(
        (lo.packets, lo.bytes),
        (3, 3 * 40),
        "overflow packets and bytes"
    );
    assert_eq!(lo.windows_over, 1);
    let o = budgets
        .iter()
        .find(|(i, _)| *i == other)
        .expect("other's record")
        .1;
    assert_eq!(o.packets, 0);
    // No budget: everything gets an entry.
    h.dp.set_new_flow_budget(0).unwrap();
    h.run(PROG_INGRESS, &udp(1003));
    assert_eq!(h.flows().iter().filter(|e| e.key.ifindex == 1).count(), 4);
    assert_eq!(h.delta(Counter::FlowBudget), 3);
}

/// Pins the calling thread to one CPU: `BPF_PROG_TEST_RUN` runs the program
/// on the calling CPU, so every run below shares that CPU's cache slots.
fn pin_to_first_cpu() {
    pin_to_cpu(aya::util::online_cpus().expect("online CPUs")[0]);
}

/// Pins the calling thread to online CPU `cpu`.
fn pin_to_cpu(cpu: u32) {
    let cpu = cpu as usize;
    // SAFETY: cpu_set_t is plain data (all zero: empty); `cpu` is an online
    // CPU number, below CPU_SETSIZE on any machine this runs on.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test thread"
        );
    }
}

/// #15: the per-CPU flow cache counts every packet exactly: the IPv4 fast
/// path in the program (thousands of runs per direction), TCP FIN after
/// cached packets (the slot's delta goes first), a second interface's
/// copies, two connections that share a slot evicting each other, and
/// IPv6 through the general path's slots.
#[test]
fn the_flow_cache_counts_steady_packets_exactly() {
    use monitor_common::{CacheSlot, TupleKey, IP_V4};
    let mut h = Harness::new();
    assert!(
        h.dp.cache_enabled(),
        "the cache is on when the test may run on every CPU"
    );
    // After the load: pinned before, the datapath would turn the cache off.
    pin_to_first_cpu();
    h.dp.clear_flows().unwrap();
    let repeat = |h: &mut Harness, prog: &str, f: &[u8], n: u32, ifindex: u32| {
        let (ret, _) =
            h.dp.test_run(
                prog,
                TestPacket {
                    frame: f,
                    ifindex,
                    ..Default::default()
                },
                n,
            )
            .expect("test_run");
        assert_eq!(ret, TCX_NEXT);
    };
    let udp = |src, dst, sport, dport| {
        frame(
            src,
            dst,
            &L4::Udp {
                sport,
                dport,
                payload: 100,
            },
            &Quirks::default(),
        )
    };
    let (a, b) = (v4(10, 78, 0, 2), v4(10, 78, 1, 3));
    let fwd = udp(a, b, 40000, 53);
    let back = udp(b, a, 53, 40000);
    let len = ip_len(&fwd, 0) as u64;
    assert_eq!(len, 128);

    // UDP both ways: the first packet creates the entry, the second fills
    // the slot, the rest are counted in the slot.
    repeat(&mut h, PROG_INGRESS, &fwd, 3000, 0);
    repeat(&mut h, PROG_EGRESS, &back, 1500, 0);
    let e = h.only_flow();
    assert_eq!(e.stats.packets, [3000, 1500], "every run counted once");
    assert_eq!(e.stats.bytes, [3000 * len, 1500 * len]);
    // Read again: the flush emptied the slots, nothing counted twice.
    repeat(&mut h, PROG_INGRESS, &fwd, 7, 0);
    assert_eq!(h.only_flow().stats.packets, [3007, 1500]);

    // TCP: handshake on the shared path, data in the slot, then a FIN
    // (shared path, after the slot's delta).
    h.dp.clear_flows().unwrap();
    let tcp = |fwd: bool, flags: u8, payload: usize| {
        let (s, d, sp, dp) = if fwd {
            (a, b, 41000, 8080)
        } else {
            (b, a, 8080, 41000)
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
            &Quirks::default(),
        )
    };
    h.run(PROG_INGRESS, &tcp(true, tcp_flags::SYN, 0));
    h.run(PROG_EGRESS, &tcp(false, tcp_flags::SYN | tcp_flags::ACK, 0));
    repeat(
        &mut h,
        PROG_INGRESS,
        &tcp(true, tcp_flags::ACK | tcp_flags::PSH, 500),
        2000,
        0,
    );
    repeat(&mut h, PROG_EGRESS, &tcp(false, tcp_flags::ACK, 0), 1000, 0);
    h.run(PROG_INGRESS, &tcp(true, tcp_flags::FIN | tcp_flags::ACK, 0));
    let e = h.only_flow();
    assert_eq!(e.stats.packets, [2002, 1001]);
    assert_eq!(e.stats.bytes, [40 + 2000 * 540 + 40, 40 + 1000 * 40]);
    assert_eq!(
        e.stats.tcp_flags,
        [
            tcp_flags::SYN | tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN,
            tcp_flags::SYN | tcp_flags::ACK
        ]
    );

    // A second interface's copies of the cached connection: skipped, each
    // counted as such.
    let other = std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .filter_map(|d| {
            let p = d.ok()?.path().join("ifindex");
            std::fs::read_to_string(p).ok()?.trim().parse::<u32>().ok()
        })
        .find(|i| *i != 1)
        .expect("an interface besides loopback");
    let skipped_before = h.delta(Counter::SecondInterface);
    repeat(
        &mut h,
        PROG_EGRESS,
        &tcp(false, tcp_flags::ACK, 0),
        500,
        other,
    );
    repeat(&mut h, PROG_EGRESS, &tcp(false, tcp_flags::ACK, 0), 10, 0);
    let e = h.only_flow();
    assert_eq!(e.stats.packets, [2002, 1011], "not counted again");
    assert!(e.second_if);
    assert_eq!(h.delta(Counter::SecondInterface) - skipped_before, 500);

    // Three UDP connections in one two-slot set take the slots from each
    // other: each eviction moves the delta to the shared table first.
    h.dp.clear_flows().unwrap();
    let word = |ip: IpAddr| match ip {
        IpAddr::V4(v) => u32::from_ne_bytes(v.octets()),
        IpAddr::V6(_) => unreachable!(),
    };
    let slot = |sport: u16| {
        let t = TupleKey {
            addr_lo: [word(a), 0, 0, 0],
            addr_hi: [word(b), 0, 0, 0],
            port_lo: sport,
            port_hi: 53,
            proto: 17,
            ip_version: IP_V4,
            _pad: [0; 2],
        };
        let [k0, k1] = CacheSlot::v4_key(&t);
        CacheSlot::slot_of(&[k0, k1, 0, 0, 0]) & !1
    };
    let first = 40000;
    let mut twins = (40001..u16::MAX).filter(|p| slot(*p) == slot(first));
    let (t1, t2) = (
        twins.next().expect("another port in the same set"),
        twins.next().expect("a third port in the same set"),
    );
    let (f1, f2, f3) = (udp(a, b, first, 53), udp(a, b, t1, 53), udp(a, b, t2, 53));
    for _ in 0..5 {
        repeat(&mut h, PROG_INGRESS, &f1, 100, 0);
        repeat(&mut h, PROG_INGRESS, &f2, 30, 0);
        repeat(&mut h, PROG_INGRESS, &f3, 20, 0);
    }
    let mut flows = h.flows();
    flows.sort_by_key(|e| e.key.port_lo);
    let counts: Vec<(u16, [u64; 2])> = flows
        .iter()
        .map(|e| (e.key.port_lo, e.stats.packets))
        .collect();
    assert_eq!(
        counts,
        vec![(first, [500, 0]), (t1, [150, 0]), (t2, [100, 0])]
    );

    // IPv6 (the general path's slots, five-word keys).
    h.dp.clear_flows().unwrap();
    let (x, y) = (v6(0x21), v6(0x22));
    repeat(&mut h, PROG_INGRESS, &udp(x, y, 5000, 6000), 2000, 0);
    repeat(&mut h, PROG_EGRESS, &udp(y, x, 6000, 5000), 900, 0);
    let e = h.only_flow();
    assert_eq!(e.key.ip_version, 6);
    assert_eq!(e.stats.packets, [2000, 900]);
    assert_eq!(e.stats.bytes, [2000 * 148, 900 * 148]);

    // IPv6 TCP over the IPv6 fast path: the canonical order it computes
    // from the packet's words must be the general path's, whichever word
    // (or the port, for one address) decides it.
    let a6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().expect("address"));
    let pairs = [
        (v6(0x21), v6(0x22), 41000, 8080),
        // The second 32-bit word decides (a 64-bit compare of the first two
        // words as one little-endian load would not).
        (a6("2001:db8:1::5"), a6("2001:db8:0:ffff::5"), 41001, 8080),
        // The third word decides.
        (a6("fd10::1:0:0:7"), a6("fd10::2:0:0:7"), 41002, 443),
        // One address, the ports decide.
        (v6(0x30), v6(0x30), 6000, 5000),
    ];
    for (x, y, xp, yp) in pairs {
        h.dp.clear_flows().unwrap();
        let seg = |fwd: bool, flags: u8, payload: usize| {
            let (s, d, sp, dp) = if fwd { (x, y, xp, yp) } else { (y, x, yp, xp) };
            frame(
                s,
                d,
                &L4::Tcp {
                    sport: sp,
                    dport: dp,
                    flags,
                    payload,
                },
                &Quirks::default(),
            )
        };
        h.run(PROG_INGRESS, &seg(true, tcp_flags::SYN, 0));
        h.run(PROG_EGRESS, &seg(false, tcp_flags::SYN | tcp_flags::ACK, 0));
        repeat(
            &mut h,
            PROG_INGRESS,
            &seg(true, tcp_flags::ACK | tcp_flags::PSH, 300),
            1200,
            0,
        );
        repeat(&mut h, PROG_EGRESS, &seg(false, tcp_flags::ACK, 0), 700, 0);
        h.run(PROG_INGRESS, &seg(true, tcp_flags::FIN | tcp_flags::ACK, 0));
        let e = h.only_flow();
        assert_eq!(e.key.ip_version, 6);
        // Direction 0 is the canonical low end: x's unless y sorts first.
        let octets = match x {
            IpAddr::V6(v) => v.octets().to_vec(),
            IpAddr::V4(_) => unreachable!(),
        };
        let x_first = e.key.port_lo == xp && addr_bytes(&e.key, true) == octets;
        let (xs, ys) = if x_first { (0, 1) } else { (1, 0) };
        let (mut packets, mut bytes) = ([0u64; 2], [0u64; 2]);
        packets[xs] = 1202;
        packets[ys] = 701;
        bytes[xs] = 60 + 1200 * 360 + 60;
        bytes[ys] = 60 + 700 * 60;
        assert_eq!(e.stats.packets, packets, "{x} {xp} <-> {y} {yp}");
        assert_eq!(e.stats.bytes, bytes, "{x} {xp} <-> {y} {yp}");
        // A second interface's copies: skipped, not counted again.
        let skipped_before = h.delta(Counter::SecondInterface);
        repeat(
            &mut h,
            PROG_EGRESS,
            &seg(false, tcp_flags::ACK, 0),
            40,
            other,
        );
        assert_eq!(h.only_flow().stats.packets, packets);
        assert_eq!(h.delta(Counter::SecondInterface) - skipped_before, 40);
    }
    assert_eq!(h.delta(Counter::HandoverRace), 0, "one CPU: no race");
    assert_eq!(h.delta(Counter::FlowMapFull), 0);
}

/// A client port reused within seconds: the old connection's last packets
/// still sit in one CPU's cache slot when a SYN on another CPU hands the
/// tuple over. They stay out of the new connection (its counts and flags
/// are its own packets' only) and are counted as a hand-over race; with
/// the old connection's final totals they add up to every packet sent.
#[test]
fn an_old_connections_cached_packets_stay_out_of_the_next_one() {
    use monitor_common::event_kind;
    use tcp_flags::{ACK, FIN, SYN};
    let cpus = aya::util::online_cpus().expect("online CPUs");
    assert!(
        cpus.len() >= 2,
        "this test needs two online CPUs, found {}",
        cpus.len()
    );
    let mut h = Harness::new();
    assert!(h.dp.cache_enabled(), "loaded unpinned: the cache is on");
    let mut rb = h.dp.take_events().expect("ring buffer");
    pin_to_cpu(cpus[0]);
    h.dp.clear_flows().unwrap();
    events(&mut rb);
    let ends = ((v4(10, 78, 2, 2), 42000), (v4(10, 78, 3, 3), 443));
    let tcp = |from_a, flags, payload, seq| tcp_seg(ends, from_a, flags, payload, seq);
    // Connection 1 on the first CPU: handshake, data, FIN both ways, then
    // the closing ACKs (a plain ACK takes the cache slot's fast path).
    h.run(PROG_INGRESS, &tcp(true, SYN, 0, 1000));
    h.run(PROG_EGRESS, &tcp(false, SYN | ACK, 0, 5000));
    for _ in 0..5 {
        h.run(PROG_INGRESS, &tcp(true, ACK, 100, 1001));
    }
    h.run(PROG_INGRESS, &tcp(true, FIN | ACK, 0, 1501));
    h.run(PROG_EGRESS, &tcp(false, FIN | ACK, 0, 5001));
    for _ in 0..3 {
        h.run(PROG_INGRESS, &tcp(true, ACK, 0, 1502));
    }
    let sent1 = [1 + 5 + 1 + 3, 1 + 1];

    // Connection 2 (the port again, a new ISN) on the second CPU, before
    // anything flushed the first CPU's slot.
    pin_to_cpu(cpus[1]);
    h.run(PROG_INGRESS, &tcp(true, SYN, 0, 9000));
    h.run(PROG_EGRESS, &tcp(false, SYN | ACK, 0, 7000));
    for _ in 0..3 {
        h.run(PROG_INGRESS, &tcp(true, ACK, 50, 9001));
    }
    // The read flushes every CPU's cache, the first CPU's stale slot too.
    let e2 = h.only_flow();
    assert_eq!(e2.stats.packets, [4, 1], "connection 2's own packets only");
    assert_eq!(e2.stats.bytes, [40 + 3 * 90, 40]);
    assert_eq!(e2.stats.tcp_flags, [SYN | ACK, SYN | ACK]);
    let ev = events(&mut rb);
    let rotated: Vec<_> = ev
        .iter()
        .filter(|e| e.kind == event_kind::ROTATED)
        .collect();
    assert_eq!(rotated.len(), 1, "{ev:?}");
    assert_eq!(rotated[0].gen, e2.gen);
    // The first closing ACK, on the slot the FIN emptied, went through the
    // shared table and filled the slot again; the other two stayed in it.
    assert_eq!(
        rotated[0].prev.packets,
        [sent1[0] - 2, sent1[1]],
        "connection 1's totals at the hand-over"
    );
    assert_eq!(
        h.delta(Counter::HandoverRace),
        2,
        "the two ACKs left in the first CPU's slot, in neither report"
    );
    assert_eq!(h.delta(Counter::HandoverLost), 0);
}
