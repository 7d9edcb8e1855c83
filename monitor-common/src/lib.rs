//! The kernel/user ABI of segwatch.
//!
//! ```text
//!   packet ──► tc/tcx program ──► FLOWS (per-CPU hash: FlowKey → FlowStats per CPU)
//!                   │                         ▲ drained by the daemon every sweep
//!                   ├──► EVENTS (ring buffer: FlowEvent, one per new connection)
//!                   └──► COUNTERS (per-CPU array: Counter → u64)
//! ```
//!
//! Everything here is plain `#[repr(C)]` data with explicit padding so that
//! the layout is identical in the BPF object and in the daemon. The `user`
//! feature adds `aya::Pod` impls; the kernel build never pulls aya.
#![no_std]

/// Name of the per-CPU flow table in the object file.
pub const FLOWS_MAP: &str = "FLOWS";
/// Name of the new-connection ring buffer.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU counter array.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the ingress program (host side of a veth: traffic leaving the pod).
pub const PROG_INGRESS: &str = "segwatch_ingress";
/// Name of the egress program (host side of a veth: traffic entering the pod).
pub const PROG_EGRESS: &str = "segwatch_egress";
/// Name of the no-op program (the benchmark's floor).
pub const PROG_NOOP: &str = "segwatch_noop";

/// Default capacity of the flow table (entries). The daemon overrides it at
/// load time from `--max-flows`.
pub const DEFAULT_MAX_FLOWS: u32 = 131_072;
/// Default size of the ring buffer in bytes (a power of two, page aligned).
pub const DEFAULT_EVENTS_BYTES: u32 = 1 << 22;

/// Address family carried in [`FlowKey::ip_version`].
pub const IP_V4: u8 = 4;
/// Address family carried in [`FlowKey::ip_version`].
pub const IP_V6: u8 = 6;

/// IANA protocol numbers the programs understand.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// TCP flag bits exactly as in the TCP header's flags byte (RFC 9293 §3.1).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Which end of a canonical key opened the connection, as recorded in
/// [`FlowStats::opener`]. Only the CPU slot that created the entry sets it;
/// the other slots keep [`opener::UNSET`].
pub mod opener {
    pub const UNSET: u8 = 0;
    /// The `lo` end sent the first packet (UDP/ICMP/...) or the SYN (TCP).
    pub const LO: u8 = 1;
    /// The `hi` end opened.
    pub const HI: u8 = 2;
    /// The `lo` end is assumed to have opened: the first packet seen was in
    /// the middle of a TCP connection, so the opener was inferred from ports.
    pub const LO_INFERRED: u8 = 3;
    /// Like [`LO_INFERRED`] for the `hi` end.
    pub const HI_INFERRED: u8 = 4;
}

/// A connection as the kernel tracks it: canonical (the `lo` end sorts before
/// the `hi` end by address then port), so that both directions of a
/// connection share one entry and one lookup. The interface is part of the
/// key: a connection between two pods of one node crosses two veths, and each
/// program counts what it saw; the daemon reports it once.
///
/// Addresses are the packet's bytes in network order, held as four `u32`
/// words (cheaper to compare in the kernel); IPv4 uses the first word, the
/// rest are zero. Ports are in host byte order. For ICMP echo both ports carry the echo
/// identifier (request and reply then share the entry); for other ICMP
/// messages `port_lo`/`port_hi` carry type and code of the first packet seen.
/// Non-first fragments carry no ports (0/0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FlowKey {
    pub addr_lo: [u32; 4],
    pub addr_hi: [u32; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub ifindex: u32,
    pub proto: u8,
    pub ip_version: u8,
    pub _pad: [u8; 2],
}

/// What one CPU counted for one connection. Direction 0 is `lo → hi`,
/// direction 1 is `hi → lo`.
///
/// `bytes` are IP-layer bytes (IP header included, link layer excluded) as
/// they would cross a wire: a GSO super-packet of `n` segments counts `n`
/// packets and its payload plus `n` copies of the headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// `bpf_ktime_get_ns()` of the first packet this CPU counted (0: none).
    pub first_ns: u64,
    /// `bpf_ktime_get_ns()` of the last packet this CPU counted.
    pub last_ns: u64,
    /// Union of the TCP flags seen per direction.
    pub tcp_flags: [u8; 2],
    /// See [`opener`]; set only in the slot of the CPU that created the entry.
    pub opener: u8,
    pub _pad: [u8; 5],
}

/// Announces a connection the moment its first packet is seen, so that the
/// daemon can judge it within milliseconds instead of at the next sweep.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` of the packet.
    pub ts_ns: u64,
    pub key: FlowKey,
    /// IP-layer length of the first packet.
    pub bytes: u32,
    /// TCP flags of the first packet.
    pub tcp_flags: u8,
    /// See [`opener`].
    pub opener: u8,
    pub _pad: [u8; 6],
}

/// Slots of the per-CPU counter array. Every loss has one, and the daemon
/// exports all of them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every packet (skb) the programs ran on. Packets accounted to a flow
    /// are `Packets - NonIp - Unparsable - Ipv6ExtLimit - FlowMapFull`.
    Packets = 0,
    /// Ethernet frames that carry neither IPv4 nor IPv6 (ARP, LLDP, ...).
    /// Not a loss: they are not connections.
    NonIp = 1,
    /// IP packets whose headers are truncated or inconsistent (bogus IHL,
    /// TCP data offset, lengths). A loss: the packet is not in any flow.
    Unparsable = 2,
    /// IPv6 packets with more extension headers than we walk. A loss.
    Ipv6ExtLimit = 3,
    /// New connections not announced because the ring buffer was full.
    /// The flow itself is still counted in the table.
    RingbufFull = 4,
    /// Packets of new connections not counted because the flow table was
    /// full. A loss.
    FlowMapFull = 5,
    /// Non-first IP fragments (accounted to a port-less flow; not a loss).
    Fragments = 6,
    /// New flow table entries created.
    NewFlows = 7,
}

impl Counter {
    /// Number of slots in the counter array.
    pub const COUNT: u32 = 8;
    /// All counters in slot order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Packets,
        Counter::NonIp,
        Counter::Unparsable,
        Counter::Ipv6ExtLimit,
        Counter::RingbufFull,
        Counter::FlowMapFull,
        Counter::Fragments,
        Counter::NewFlows,
    ];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all three): plain `#[repr(C)]` integers and byte arrays with
    // explicit padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::FlowEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(
            size_of::<FlowKey>(),
            44,
            "FlowKey layout changed: update the BPF object and daemon together"
        );
        assert_eq!(size_of::<FlowStats>(), 56, "FlowStats layout changed");
        assert_eq!(size_of::<FlowEvent>(), 64, "FlowEvent layout changed");
    }
}
