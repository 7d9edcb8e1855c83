//! Crafted frames for `BPF_PROG_TEST_RUN`: tests of the parser (including
//! hostile input) and the per-packet cost benchmark run the real programs on
//! these without any network.

use std::net::IpAddr;

/// Layer-4 part of a crafted packet.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: usize,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: usize,
    },
    Icmp {
        ty: u8,
        code: u8,
        id: u16,
        payload: usize,
    },
    Sctp {
        sport: u16,
        dport: u16,
        payload: usize,
    },
    /// Any other protocol number with a raw payload.
    Raw { proto: u8, payload: usize },
}

impl L4 {
    fn proto(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => {
                if v6 {
                    58
                } else {
                    1
                }
            }
            L4::Sctp { .. } => 132,
            L4::Raw { proto, .. } => *proto,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match *self {
            L4::Tcp {
                sport,
                dport,
                flags,
                payload,
            } => {
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(1u32.to_be_bytes()); // seq
                b.extend(0u32.to_be_bytes()); // ack
                b.push(5 << 4); // data offset 20 bytes
                b.push(flags);
                b.extend(65535u16.to_be_bytes());
                b.extend([0, 0, 0, 0]); // checksum, urgent
                b.resize(b.len() + payload, 0xAB);
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(((8 + payload) as u16).to_be_bytes());
                b.extend([0, 0]);
                b.resize(b.len() + payload, 0xCD);
            }
            L4::Icmp {
                ty,
                code,
                id,
                payload,
            } => {
                b.extend([ty, code, 0, 0]);
                b.extend(id.to_be_bytes());
                b.extend(1u16.to_be_bytes());
                b.resize(b.len() + payload, 0xEF);
            }
            L4::Sctp {
                sport,
                dport,
                payload,
            } => {
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend([0u8; 8]); // verification tag, checksum
                b.resize(b.len() + payload, 0x11);
            }
            L4::Raw { payload, .. } => b.resize(payload, 0x22),
        }
        b
    }
}

/// Options that bend a frame for the hostile-input tests.
#[derive(Clone, Debug, Default)]
pub struct Quirks {
    /// 802.1Q tags to put in front of the IP ethertype.
    pub vlan_tags: usize,
    /// Raw IPv6 extension headers (next-header byte is patched in).
    pub ipv6_ext: Vec<u8>,
    /// Number of IPv6 extension headers (each 8 bytes) to chain.
    pub ipv6_ext_count: usize,
    /// IPv4 fragment offset in 8-byte units (non-zero: a later fragment).
    pub frag_offset: u16,
    /// IPv4 more-fragments flag.
    pub more_fragments: bool,
    /// Override the IPv4 IHL nibble (in 4-byte words).
    pub ihl: Option<u8>,
    /// Override the TCP data offset nibble (in 4-byte words).
    pub tcp_doff: Option<u8>,
    /// Cut the frame to this many bytes.
    pub truncate: Option<usize>,
    /// Override the TCP sequence number (default 1).
    pub tcp_seq: Option<u32>,
}

const ETH_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const ETH_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// An Ethernet frame carrying `src → dst` with `l4`, bent by `q`.
pub fn frame(src: IpAddr, dst: IpAddr, l4: &L4, q: &Quirks) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(ETH_DST);
    f.extend(ETH_SRC);
    for _ in 0..q.vlan_tags {
        f.extend(0x8100u16.to_be_bytes());
        f.extend(100u16.to_be_bytes());
    }
    let l4b = l4.bytes();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend(0x0800u16.to_be_bytes());
            let tot = (20 + l4b.len()) as u16;
            let ihl = q.ihl.unwrap_or(5);
            f.push(0x40 | (ihl & 0x0F));
            f.push(0);
            f.extend(tot.to_be_bytes());
            f.extend([0, 1]); // id
            let frag = (q.frag_offset & 0x1FFF) | if q.more_fragments { 0x2000 } else { 0 };
            f.extend(frag.to_be_bytes());
            f.push(64);
            f.push(l4.proto(false));
            f.extend([0, 0]);
            f.extend(s.octets());
            f.extend(d.octets());
            // RFC 791 header checksum, so that well-formed frames survive
            // the receiving stack (ip_rcv drops a bad one).
            let ip_start = f.len() - 20;
            let csum = checksum(&f[ip_start..]);
            f[ip_start + 10..ip_start + 12].copy_from_slice(&csum.to_be_bytes());
            let start = f.len();
            f.extend(&l4b);
            patch_doff(&mut f, start, l4, q);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend(0x86DDu16.to_be_bytes());
            let ext_len = q.ipv6_ext_count * 8;
            f.extend([0x60, 0, 0, 0]);
            f.extend(((ext_len + l4b.len()) as u16).to_be_bytes());
            // First next-header: a destination-options chain, or the L4.
            f.push(if q.ipv6_ext_count > 0 {
                60
            } else {
                l4.proto(true)
            });
            f.push(64);
            f.extend(s.octets());
            f.extend(d.octets());
            for i in 0..q.ipv6_ext_count {
                let next = if i + 1 < q.ipv6_ext_count {
                    60
                } else {
                    l4.proto(true)
                };
                f.extend([next, 0, 1, 4, 0, 0, 0, 0]); // PadN option filling 8 bytes
            }
            let start = f.len();
            f.extend(&l4b);
            patch_doff(&mut f, start, l4, q);
        }
        _ => panic!("craft::frame needs two addresses of one family"),
    }
    if let Some(n) = q.truncate {
        f.truncate(n);
    }
    f
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn patch_doff(f: &mut [u8], l4_start: usize, l4: &L4, q: &Quirks) {
    if let (L4::Tcp { .. }, Some(doff)) = (l4, q.tcp_doff) {
        f[l4_start + 12] = doff << 4;
    }
    if let (L4::Tcp { .. }, Some(seq)) = (l4, q.tcp_seq) {
        f[l4_start + 4..l4_start + 8].copy_from_slice(&seq.to_be_bytes());
    }
}

/// IP-layer length of a frame built by [`frame`] without truncation.
pub fn ip_len(frame: &[u8], vlan_tags: usize) -> usize {
    frame.len() - 14 - 4 * vlan_tags
}
