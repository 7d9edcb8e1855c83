//! The kernel/user ABI of segwatch.
//!
//! ```text
//!   packet ──► tc/tcx program ──► FLOWS (one shared hash: TupleKey → FlowValue, atomic adds)
//!                   │                         ▲ read in batches by the daemon every sweep
//!                   ├──► EVENTS (ring buffer: FlowEvent per new connection / rotation)
//!                   └──► COUNTERS (per-CPU array: Counter → u64)
//! ```
//!
//! Everything here is plain `#[repr(C)]` data with explicit padding so that
//! the layout is identical in the BPF object and in the daemon. The `user`
//! feature adds `aya::Pod` impls; the kernel build never pulls aya.
#![no_std]

/// Name of the flow table in the object file.
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
/// Name of the program that moves a CPU's cached counts into the flow table.
pub const PROG_FLUSH: &str = "segwatch_flush";
/// Name of the per-CPU flow cache.
pub const CACHE_MAP: &str = "CACHE";
/// Load-time constant of the kernel object: 1 enables the per-CPU cache.
pub const CACHE_ENABLED_GLOBAL: &str = "CACHE_ENABLED";
/// Name of the program that samples the kernel clocks (jiffies calibration).
pub const PROG_CLOCK: &str = "segwatch_clock";
/// Name of the array the clock program writes: `[bpf_ktime_get_ns(), bpf_jiffies64()]`.
pub const CLOCK_MAP: &str = "CLOCK";
/// Name of the LRU map of fragmented datagrams' ports ([`FragKey`] → [`FragPorts`]).
pub const FRAGS_MAP: &str = "FRAGS";
/// Entries of [`FRAGS_MAP`]: datagrams in flight as fragments at once.
pub const FRAGS_ENTRIES: u32 = 4096;

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
/// [`FlowValue::opener`].
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

/// A connection as the kernel table keys it: canonical (the `lo` end sorts
/// before the `hi` end by address then port), so that both directions of a
/// connection share one entry and one lookup. The interface is NOT in the
/// key: a connection between two pods of one node crosses two veths, and the
/// entry remembers the first one ([`FlowValue::ifindex`]); only that one
/// counts, so every packet is counted once per node.
///
/// Addresses are the packet's bytes in network order, held as four `u32`
/// words (cheaper to compare in the kernel); IPv4 uses the first word, the
/// rest are zero. Ports are in host byte order. For ICMP echo both ports
/// carry the echo identifier (request and reply then share the entry); for
/// other ICMP messages `port_lo`/`port_hi` carry type and code of the first
/// packet seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TupleKey {
    pub addr_lo: [u32; 4],
    pub addr_hi: [u32; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    pub ip_version: u8,
    pub _pad: [u8; 2],
}

/// A connection as the daemon names it: the kernel's [`TupleKey`] plus the
/// interface it is counted on (from [`FlowValue::ifindex`]).
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

impl FlowKey {
    /// The daemon's key for a kernel tuple counted on `ifindex`.
    pub fn new(t: &TupleKey, ifindex: u32) -> Self {
        FlowKey {
            addr_lo: t.addr_lo,
            addr_hi: t.addr_hi,
            port_lo: t.port_lo,
            port_hi: t.port_hi,
            ifindex,
            proto: t.proto,
            ip_version: t.ip_version,
            _pad: [0; 2],
        }
    }

    /// The kernel table's key of this connection.
    pub fn tuple(&self) -> TupleKey {
        TupleKey {
            addr_lo: self.addr_lo,
            addr_hi: self.addr_hi,
            port_lo: self.port_lo,
            port_hi: self.port_hi,
            proto: self.proto,
            ip_version: self.ip_version,
            _pad: [0; 2],
        }
    }
}

/// Bit of [`FlowValue::gen`] set while a CPU rotates the entry to a new
/// connection (see [`FlowValue`]).
pub const GEN_ROTATING: u64 = 1 << 32;

/// [`FlowValue::marks`]: the current generation's ISN is known (its SYN was seen).
pub const MARK_ISN: u8 = 1;
/// [`FlowValue::marks`]: the connection was also seen on a second interface
/// of this node (pod to pod), whose packets were not counted again.
pub const MARK_SECOND_IF: u8 = 2;

/// One entry of the kernel flow table: ONE copy for all CPUs (memory flat in
/// the CPU count), updated with atomic instructions.
///
/// # Connection identity (generations)
/// One 5-tuple carries several TCP connections over time (client port
/// reuse, RST-closed sockets). A SYN without ACK on an entry whose
/// connection ended (RST, or FIN both ways), or with another initial
/// sequence number than the entry's opening SYN, starts a new connection
/// (a retransmitted SYN, same ISN, does not). The kernel decides it, because
/// the handshake outruns any reader:
///
/// 1. the CPU that sees that SYN claims the entry with a compare-and-swap of
///    `gen` to `(gen + 1) | GEN_ROTATING` (exactly one CPU wins);
///    it reads the cumulative counts once, so every add lands either in
///    the old connection's totals or after them;
/// 2. it sends the old connection's final totals (`packets - base_packets`,
///    ...) to the daemon in a [`FlowEvent`] of kind [`event_kind::ROTATED`];
/// 3. it sets `base_*` to the cumulative counts, resets flags, opener, ISN
///    and times for the new connection;
/// 4. it stores `gen_lo = gen` and clears `GEN_ROTATING` in `gen`.
///
/// Counts are cumulative and never reset, so no add is ever lost: the
/// current connection's counts are `packets - base_packets`. A packet on
/// another CPU that read `gen` before the claim and adds after it, or during
/// a rotation, is counted as [`Counter::HandoverRace`] (its bytes may land in
/// the new connection; the race is counted, never silent). An old
/// connection's delta still in a CPU's cache slot is counted there too,
/// and never added to the new connection.
///
/// The daemon reads entries with the kernel's ascending copy: `gen_lo`
/// (written last by a rotation) comes first, `gen` (claimed first) last, so
/// a copy is consistent iff `gen_lo as u64 == gen` (a seqlock read, valid on
/// x86-TSO, where stores are seen in order); it skips a torn copy until the
/// next sweep, losing nothing (counts are cumulative).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// Equals `gen` when no rotation is in progress.
    pub gen_lo: u32,
    /// Interface whose programs count this entry (the first that saw it).
    pub ifindex: u32,
    /// Cumulative since the entry was created, direction 0 `lo → hi`,
    /// 1 `hi → lo` (atomic adds).
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// `packets`/`bytes` when the current connection (generation) started.
    pub base_packets: [u64; 2],
    pub base_bytes: [u64; 2],
    /// `bpf_ktime_get_ns()` of the current connection's first packet (exact).
    pub first_ns: u64,
    /// `bpf_jiffies64()` of the last packet (coarse: one tick, 1-10 ms).
    pub last_jiffies: u64,
    /// Union of the TCP flags of the current connection: bits 0-7 `lo → hi`,
    /// bits 8-15 `hi → lo` (atomic or; 64 bits, the width BPF atomics have).
    pub tcp_flags: u64,
    /// Initial sequence number of the current connection's SYN ([`MARK_ISN`]).
    pub isn: u32,
    /// See [`opener`].
    pub opener: u8,
    /// [`MARK_ISN`], [`MARK_SECOND_IF`].
    pub marks: u8,
    pub _pad: [u8; 2],
    /// Generation of the current connection (a `u32`, wrapping) with
    /// [`GEN_ROTATING`] during a rotation; 64 bits for the BPF
    /// compare-and-swap. Copied last (see above).
    pub gen: u64,
}

/// Slots per CPU of the kernel's flow cache (a power of two).
pub const CACHE_SLOTS: u32 = 1024;
/// Cache slots one run of the flush program empties (the chunk number is
/// the first byte of the frame it runs on).
pub const FLUSH_CHUNK: u32 = 128;

/// One slot of the kernel's per-CPU flow cache (`CACHE`, kernel side only):
/// a connection's packets on one CPU not yet added to its [`FlowValue`].
/// Kernel memory: `CACHE_SLOTS × 104` bytes per possible CPU.
///
/// The key is held in the slot's own form: an IPv4 connection in two words
/// ([`CacheSlot::v4_key`]: addresses, then ports, protocol and version; the
/// other three zero), an IPv6 one as the [`TupleKey`]'s five words. The
/// kind in `state` tells them apart, so the IPv4 fast path compares three
/// words: `state` (kind, not busy, interface) and the two key words.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CacheSlot {
    /// Bits 0-7: [`CACHE_EMPTY`], [`CACHE_V4`] or [`CACHE_V6`]; bit 8:
    /// [`CACHE_BUSY`] while the flush program works on the slot (a tc
    /// program that interrupts it on the same CPU leaves the slot alone);
    /// bits 32-63: the interface that counts the connection
    /// ([`FlowValue::ifindex`]).
    pub state: u64,
    pub key: [u64; 5],
    /// Delta per direction, as in [`FlowValue`].
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// TCP flags of the delta, as in [`FlowValue::tcp_flags`].
    pub tcp_flags: u64,
    /// `bpf_jiffies64()` of the slot's last packet.
    pub last_jiffies: u64,
    /// Generation of the connection the delta belongs to.
    pub gen: u32,
    /// 1: packets of the connection on another interface were seen (and
    /// marked in the shared entry); they are counted as skipped here.
    pub second_if: u32,
}

/// [`CacheSlot::state`] kind: the slot holds nothing.
pub const CACHE_EMPTY: u64 = 0;
/// [`CacheSlot::state`] kind: an IPv4 connection (two key words).
pub const CACHE_V4: u64 = IP_V4 as u64;
/// [`CacheSlot::state`] kind: an IPv6 connection (five key words).
pub const CACHE_V6: u64 = IP_V6 as u64;
/// [`CacheSlot::state`]: the flush program works on the slot.
pub const CACHE_BUSY: u64 = 1 << 8;

impl CacheSlot {
    /// The two words an IPv4 [`TupleKey`] is cached as: `addr_lo | addr_hi
    /// << 32` and `port_lo | port_hi << 16 | proto << 32 | ip_version << 40`.
    #[inline(always)]
    pub fn v4_key(t: &TupleKey) -> [u64; 2] {
        [
            u64::from(t.addr_lo[0]) | u64::from(t.addr_hi[0]) << 32,
            u64::from(t.port_lo)
                | u64::from(t.port_hi) << 16
                | u64::from(t.proto) << 32
                | u64::from(t.ip_version) << 40,
        ]
    }

    /// The slot of a key in the slot's form (five words, an IPv4 key's last
    /// three zero): a multiplicative hash. Zero words add nothing, so an
    /// IPv4 key's slot is `slot_index(k0 ^ k1.rotate_left(17))`, which is
    /// what the kernel's IPv4 fast path computes.
    #[inline(always)]
    pub fn slot_of(k: &[u64; 5]) -> u32 {
        Self::slot_index(
            k[0] ^ k[1].rotate_left(17) ^ k[2].rotate_left(31) ^ k[3] ^ k[4].rotate_left(47),
        )
    }

    /// The slot of mixed key words (see [`CacheSlot::slot_of`]).
    #[inline(always)]
    pub fn slot_index(mixed: u64) -> u32 {
        ((mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u32) & (CACHE_SLOTS - 1)
    }

    /// The [`TupleKey`] of an IPv4 slot key ([`CacheSlot::v4_key`]'s inverse).
    #[inline(always)]
    pub fn v4_tuple(k: [u64; 2]) -> TupleKey {
        TupleKey {
            addr_lo: [k[0] as u32, 0, 0, 0],
            addr_hi: [(k[0] >> 32) as u32, 0, 0, 0],
            port_lo: k[1] as u16,
            port_hi: (k[1] >> 16) as u16,
            proto: (k[1] >> 32) as u8,
            ip_version: (k[1] >> 40) as u8,
            _pad: [0; 2],
        }
    }
}

/// A fragmented datagram as its fragments all name it (RFC 791 §3.2:
/// source, destination, protocol and identification; RFC 8200 §4.5: source,
/// destination and the fragment header's identification, `proto` 0 since
/// the Next Header of later fragments may differ from the first's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub id: u32,
    pub proto: u8,
    pub ip_version: u8,
    pub _pad: [u8; 2],
}

/// What a datagram's first fragment said that later ones lack: the ports
/// (as in [`TupleKey`]: ICMP echo id or type/code) and the upper-layer
/// protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Name of the per-interface new-flow budget map (`ifindex` → [`BudgetValue`]).
pub const BUDGET_MAP: &str = "BUDGET";
/// Interfaces the budget map tracks (past it, an interface is not limited).
pub const BUDGET_ENTRIES: u32 = 4096;
/// Name of the configuration array the daemon writes after load (`u64` slots,
/// see [`config`]).
pub const CONFIG_MAP: &str = "CONFIG";

/// Slots of [`CONFIG_MAP`].
pub mod config {
    /// New flows one interface may create per window; 0: no budget.
    pub const NEW_FLOW_BUDGET: u32 = 0;
    /// The budget's window in jiffies.
    pub const BUDGET_WINDOW_JIFFIES: u32 = 1;
    /// Number of slots.
    pub const COUNT: u32 = 2;
}

/// One interface's new-flow budget (kernel map `BUDGET`). New connections
/// past the budget in a window are not given an entry of their own; their
/// packets and bytes are added here (and to [`Counter::FlowBudget`]), so the
/// daemon reports them as the interface's overflow, never silently.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BudgetValue {
    /// `bpf_jiffies64()` when the current window began.
    pub window_start: u64,
    /// New connections tried in the current window.
    pub window_flows: u64,
    /// Cumulative packets and IP-layer bytes of connections over the budget.
    pub packets: u64,
    pub bytes: u64,
    /// Windows in which the budget ran out.
    pub windows_over: u64,
}

/// Kinds of [`FlowEvent`].
pub mod event_kind {
    /// A new entry: a connection's first packet.
    pub const NEW: u8 = 1;
    /// A SYN started a new connection on an existing entry; `prev` holds the
    /// final totals of the one that ended.
    pub const ROTATED: u8 = 2;
}

/// A connection's final totals as the kernel hands them over at a rotation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FinalStats {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub first_ns: u64,
    pub last_jiffies: u64,
    /// Bits 0-7 `lo → hi`, 8-15 `hi → lo`.
    pub tcp_flags: u32,
    pub gen: u32,
    pub opener: u8,
    pub _pad: [u8; 7],
}

/// Announces a connection the moment its first packet is seen, so that the
/// daemon can judge it within milliseconds instead of at the next sweep.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` of the packet.
    pub ts_ns: u64,
    pub key: TupleKey,
    /// Interface that counts the connection.
    pub ifindex: u32,
    /// Generation of the new connection (see [`FlowValue`]).
    pub gen: u32,
    /// IP-layer length of the first packet.
    pub bytes: u32,
    /// TCP flags of the first packet.
    pub tcp_flags: u8,
    /// See [`opener`].
    pub opener: u8,
    /// See [`event_kind`].
    pub kind: u8,
    pub _pad: [u8; 1],
    /// With [`event_kind::ROTATED`]: the connection that ended.
    pub prev: FinalStats,
}

/// One connection's counts as the daemon works with them (from a
/// [`FlowValue`] of the current generation, or a [`FinalStats`]). Direction
/// 0 is `lo → hi`, direction 1 is `hi → lo`.
///
/// `bytes` are IP-layer bytes (IP header included, link layer excluded) as
/// they would cross a wire: a GSO super-packet of `n` segments counts `n`
/// packets and its payload plus `n` copies of the headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Monotonic ns of the first packet (exact: `bpf_ktime_get_ns()`).
    pub first_ns: u64,
    /// Monotonic ns of the last packet, to the kernel tick (jiffies).
    pub last_ns: u64,
    /// Union of the TCP flags seen per direction.
    pub tcp_flags: [u8; 2],
    /// See [`opener`].
    pub opener: u8,
    pub _pad: [u8; 5],
}

/// Slots of the per-CPU counter array. Every loss has one, and the daemon
/// exports all of them. None is touched per packet on the common path:
/// accounted packets are in the flow table.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets not counted again on a second interface: a connection is
    /// counted on the interface that saw it first (pod-to-pod traffic
    /// crosses two veths of the node). Not a loss.
    SecondInterface = 0,
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
    /// Non-first IP fragments (accounted to their datagram's flow, ports
    /// from its first fragment; see [`Counter::FragmentNoPorts`]).
    Fragments = 6,
    /// New flow table entries created.
    NewFlows = 7,
    /// TCP connections started on an existing entry by a SYN (rotations).
    Rotations = 8,
    /// Packets that raced with a rotation on another CPU: a packet that
    /// overlapped it, counted possibly into the new connection instead of
    /// the old one; or an old connection's packets still in another CPU's
    /// cache slot when a SYN handed the entry over, kept out of the new
    /// connection and so in neither report.
    HandoverRace = 9,
    /// Packets of ended connections whose final totals could not be handed
    /// to the daemon (ring buffer full at the rotation). A loss.
    HandoverLost = 10,
    /// Later fragments whose first fragment was not seen (or has left the
    /// fragment map): counted in a port-less flow of their addresses and
    /// protocol. A partial loss: the packets are counted, their ports not.
    FragmentNoPorts = 11,
    /// ICMP/ICMPv6 errors (destination unreachable, packet too big, time
    /// exceeded, parameter problem) counted as packets of the connection
    /// they quote. Not a loss.
    IcmpErrors = 12,
    /// Packets of new connections over their interface's new-flow budget:
    /// counted in that interface's overflow record (`BUDGET`), not in a
    /// connection of their own. A partial loss: packets and bytes are
    /// counted, their connection not.
    FlowBudget = 13,
}

impl Counter {
    /// Number of slots in the counter array.
    pub const COUNT: u32 = 14;
    /// All counters in slot order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::SecondInterface,
        Counter::NonIp,
        Counter::Unparsable,
        Counter::Ipv6ExtLimit,
        Counter::RingbufFull,
        Counter::FlowMapFull,
        Counter::Fragments,
        Counter::NewFlows,
        Counter::Rotations,
        Counter::HandoverRace,
        Counter::HandoverLost,
        Counter::FragmentNoPorts,
        Counter::IcmpErrors,
        Counter::FlowBudget,
    ];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all three): plain `#[repr(C)]` integers and byte arrays with
    // explicit padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::TupleKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::BudgetValue {}
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
        assert_eq!(size_of::<TupleKey>(), 40, "TupleKey layout changed");
        assert_eq!(size_of::<FlowValue>(), 112, "FlowValue layout changed");
        assert_eq!(size_of::<FlowStats>(), 56, "FlowStats layout changed");
        assert_eq!(size_of::<FinalStats>(), 64, "FinalStats layout changed");
        assert_eq!(size_of::<FlowEvent>(), 128, "FlowEvent layout changed");
        assert_eq!(size_of::<CacheSlot>(), 104, "CacheSlot layout changed");
        let t = TupleKey {
            addr_lo: [0x0100_000a, 0, 0, 0],
            addr_hi: [0x0200_000a, 0, 0, 0],
            port_lo: 53,
            port_hi: 40000,
            proto: 17,
            ip_version: IP_V4,
            _pad: [0; 2],
        };
        assert_eq!(CacheSlot::v4_tuple(CacheSlot::v4_key(&t)), t);
        assert_eq!(size_of::<FragKey>(), 40, "FragKey layout changed");
        assert_eq!(size_of::<FragPorts>(), 8, "FragPorts layout changed");
        assert_eq!(size_of::<BudgetValue>(), 40, "BudgetValue layout changed");
        assert_eq!(
            core::mem::offset_of!(FlowValue, gen_lo),
            0,
            "gen_lo must be copied first"
        );
        assert_eq!(
            core::mem::offset_of!(FlowValue, gen),
            104,
            "gen must be copied last"
        );
    }
}
