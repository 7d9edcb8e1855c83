//! segwatch's flow accounting programs, attached with tcx (or clsact tc on
//! kernels before 6.6) to ingress and egress of the host side of pod veths.
//!
//! ```text
//!  skb ─► fast_v4 / fast_v6: IPv4 or IPv6 (no extension headers) TCP (no
//!         SYN/FIN/RST) or UDP of a connection this CPU's CACHE slot holds
//!         ─► plain adds to the slot, done
//!          │ anything else
//!          ▼ (global functions from here: the verifier checks each once)
//!        segwatch_parse (Ethernet, 802.1Q, IPv4 | IPv6 + ext headers, TCP/UDP/SCTP/ICMP)
//!          │ non-IP ─► COUNTERS[NonIp]         bad headers ─► COUNTERS[Unparsable]
//!          │ ICMP error ─► the quoted connection's tuple, reversed
//!          │ first fragment ─► FRAGS (ports)    later fragment ◄─ FRAGS
//!          │ GSO ─► wire segments (gso_segs, or ceil(payload / gso_size))
//!          ▼
//!        segwatch_track: canonical TupleKey ─► CACHE slot (fill / evict) ─► FLOWS (one shared hash):
//!            hit, same interface ─► atomic adds (jiffies for the last-seen time)
//!            hit, TCP SYN on an ended connection / new ISN ─► rotate: EVENTS(final totals)
//!            hit, other interface ─► skipped (counted once per node)
//!            miss ─► interface over its BUDGET? ─► its overflow record
//!                    else insert (exact ns) + EVENTS (ring buffer)
//!          ▼
//!        TCX_NEXT: the packet always continues unchanged
//! ```
//!
//! Monitoring fails open: no path returns anything but "next", and no
//! helper that can change the packet is ever called.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use core::arch::asm;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_jiffies64, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use monitor_common::{
    config, event_kind, opener, proto, tcp_flags, BudgetValue, CacheSlot, Counter, FinalStats,
    FlowEvent, FlowValue, FragKey, FragPorts, TupleKey, BUDGET_ENTRIES, CACHE_BUSY, CACHE_EMPTY,
    CACHE_SLOTS, CACHE_V4, CACHE_V6, DEFAULT_EVENTS_BYTES, DEFAULT_MAX_FLOWS, FLUSH_CHUNK,
    FRAGS_ENTRIES, GEN_ROTATING, IP_V4, IP_V6, MARK_ISN, MARK_SECOND_IF,
};

/// "Continue with the next program": `TCX_NEXT` (include/uapi/linux/bpf.h,
/// `enum tcx_action_base`), which is also `TC_ACT_UNSPEC` for a legacy
/// clsact filter in direct-action mode (include/uapi/linux/pkt_cls.h), so the
/// CNI's programs and the stack's default handling always follow ours.
const TCX_NEXT: i32 = -1;

/// `-EEXIST` from `bpf_map_update_elem` with `BPF_NOEXIST`: another CPU
/// created the entry between our lookup and insert.
const EEXIST: i32 = -17;

/// Bound on the IPv6 extension headers we walk (RFC 8200 §4.1 recommends
/// at most one of each; eight covers every legal chain).
const MAX_IPV6_EXT: usize = 8;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// One copy for all CPUs (memory flat in the CPU count); see [`FlowValue`]
/// for how CPUs share it.
#[map(name = "FLOWS")]
static FLOWS: HashMap<TupleKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// `[bpf_ktime_get_ns(), bpf_jiffies64()]` as `segwatch_clock` last saw
/// them: the daemon maps jiffies to monotonic ns with two samples.
#[map(name = "CLOCK")]
static CLOCK: Array<u64> = Array::with_max_entries(2, 0);

/// Ports of fragmented datagrams, written by their first fragment, read by
/// the later ones (one copy for all CPUs: fragments may arrive on any).
#[map(name = "FRAGS")]
static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(FRAGS_ENTRIES, 0);

/// Per-interface new-flow budget and overflow record (see [`BudgetValue`]).
#[map(name = "BUDGET")]
static BUDGET: HashMap<u32, BudgetValue> = HashMap::with_max_entries(BUDGET_ENTRIES, 0);

/// Settings the daemon writes after load (see [`config`]).
#[map(name = "CONFIG")]
static CONFIG: Array<u64> = Array::with_max_entries(config::COUNT, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENTS_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Per-CPU two-way set-associative flow cache in front of [`FLOWS`] (see
/// [`cache_try`] for the sets): a packet of a
/// cached connection is added to its CPU's slot with plain stores (no hash,
/// no atomics, no shared cache line). What a slot holds is a delta not yet in
/// [`FLOWS`]; it reaches FLOWS exactly once, when
///
/// - another connection takes the slot (eviction), or
/// - a TCP SYN/FIN/RST of the connection arrives on that CPU (those always
///   take the shared path, after the slot's delta: end states and
///   connection hand-over see every earlier packet of that CPU), or
/// - the daemon runs [`segwatch_flush`] on every CPU before it reads or
///   removes entries (a sweep), so a snapshot holds every packet counted
///   before it.
///
/// 0 disables the cache (set by the daemon at load when it cannot run the
/// flush on every online CPU).
#[map(name = "CACHE")]
static CACHE: PerCpuArray<CacheSlot> = PerCpuArray::with_max_entries(CACHE_SLOTS, 0);

/// 1: the per-CPU cache is in use (a load-time constant; the verifier folds
/// it away).
#[unsafe(no_mangle)]
static CACHE_ENABLED: u32 = 1;

#[inline(always)]
fn cache_enabled() -> bool {
    // SAFETY: a plain read of a load-time constant.
    unsafe { read_volatile(addr_of!(CACHE_ENABLED)) != 0 }
}

#[classifier]
pub fn segwatch_ingress(ctx: TcContext) -> i32 {
    if !fast_v4(&ctx) && !fast_v6(ctx.skb.skb) {
        general(&ctx);
    }
    TCX_NEXT
}

#[classifier]
pub fn segwatch_egress(ctx: TcContext) -> i32 {
    if !fast_v4(&ctx) && !fast_v6(ctx.skb.skb) {
        general(&ctx);
    }
    TCX_NEXT
}

/// Does nothing: the floor that `cargo xtask bench` divides our per-packet
/// cost by (program dispatch plus the kernel's own accounting).
#[classifier]
pub fn segwatch_noop(_ctx: TcContext) -> i32 {
    TCX_NEXT
}

/// Moves every delta of this CPU's [`CACHE`] into [`FLOWS`]. Run by the
/// daemon through `BPF_PROG_TEST_RUN` from a thread pinned to each CPU in
/// turn (test_run runs the program on the calling CPU with preemption
/// off), never attached. A tc program can still interrupt it on this CPU
/// (softirq); it leaves a slot marked busy alone.
///
/// One run flushes [`FLUSH_CHUNK`] slots, the chunk number in the first
/// byte of the frame (the verifier walks every iteration of a loop; the
/// flush itself is a global function, checked once).
#[classifier]
pub fn segwatch_flush(ctx: TcContext) -> i32 {
    let Ok(chunk) = ctx.load::<u8>(0) else {
        return 0;
    };
    let chunk = u32::from(chunk);
    let base = chunk * FLUSH_CHUNK;
    let mut n = 0u32;
    while n < FLUSH_CHUNK {
        let i = base + n;
        n += 1;
        if let Some(s) = CACHE.get_ptr_mut(i) {
            // SAFETY: this CPU's slot. The busy bit is set with one atomic
            // instruction (a tc program may interrupt this one between a
            // load and a store); while it is set no tc program touches the
            // slot, so plain stores follow.
            unsafe {
                atomic_or(addr_of_mut!((*s).state), CACHE_BUSY);
                if read_volatile(addr_of!((*s).state)) & CACHE_KIND != CACHE_EMPTY {
                    segwatch_flush_slot(i);
                }
                write_volatile(addr_of_mut!((*s).state), CACHE_EMPTY);
            }
        }
    }
    0
}

/// Samples both kernel clocks into [`CLOCK`] (run by the daemon through
/// `BPF_PROG_TEST_RUN`, never attached).
#[classifier]
pub fn segwatch_clock(_ctx: TcContext) -> i32 {
    // SAFETY: both helpers have no preconditions.
    let (ns, j) = unsafe { (bpf_ktime_get_ns(), bpf_jiffies64()) };
    if let Some(p) = CLOCK.get_ptr_mut(0) {
        // SAFETY: a valid slot of the array; only this program writes it.
        unsafe { *p = ns };
    }
    if let Some(p) = CLOCK.get_ptr_mut(1) {
        // SAFETY: as above.
        unsafe { *p = j };
    }
    TCX_NEXT
}

/// `lock *(u64 *)(p) += v`: BPF_ATOMIC | BPF_ADD
/// (Documentation/bpf/standardization/instruction-set.rst, "Atomic
/// operations"). Inline assembly because rustc's bpf target is
/// single-threaded: `AtomicU64` lowers to plain loads and stores there.
///
/// # Safety
/// `p` must point into a map value (the verifier checks it).
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: per the caller.
    unsafe {
        asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v, options(nostack));
    }
}

/// `lock *(u64 *)(p) |= v` (BPF_ATOMIC | BPF_OR, kernel ≥ 5.12).
///
/// # Safety
/// As [`atomic_add`].
#[inline(always)]
unsafe fn atomic_or(p: *mut u64, v: u64) {
    // SAFETY: per the caller.
    unsafe {
        asm!("lock *(u64 *)({p} + 0) |= {v}", p = in(reg) p, v = in(reg) v, options(nostack));
    }
}

/// Compare-and-swap (BPF_ATOMIC | BPF_CMPXCHG, kernel ≥ 5.12): stores `new`
/// at `p` if it holds `old`; returns what it held.
///
/// # Safety
/// As [`atomic_add`].
#[inline(always)]
unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) -> u64 {
    let mut r0 = old;
    // SAFETY: per the caller.
    unsafe {
        asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") r0,
            options(nostack)
        );
    }
    r0
}

#[inline(always)]
fn count(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; tc programs run with bottom halves disabled,
        // so nothing else on this CPU touches it concurrently.
        unsafe { *slot += n };
    }
}

/// Why a packet is not in a flow.
enum Skip {
    NonIp,
    Unparsable,
    Ipv6ExtLimit,
}

/// What the parser extracts from one packet. `repr(C)` without implicit
/// padding: global functions take it by pointer (BTF describes it).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Packet {
    src: [u32; 4],
    dst: [u32; 4],
    /// TCP sequence number (identifies a connection by its SYN's ISN).
    seq: u32,
    /// Wire packets this skb stands for (GSO super-packets are many).
    segs: u32,
    /// IP-layer bytes of all those wire packets.
    bytes: u64,
    sport: u16,
    dport: u16,
    proto: u8,
    ip_version: u8,
    tcp_flags: u8,
    /// 1: an ICMP error standing for the connection it quotes (see
    /// [`segwatch_quoted`]).
    related: u8,
}

impl Packet {
    const EMPTY: Packet = Packet {
        src: [0; 4],
        dst: [0; 4],
        seq: 0,
        segs: 1,
        bytes: 0,
        sport: 0,
        dport: 0,
        proto: 0,
        ip_version: 0,
        tcp_flags: 0,
        related: 0,
    };
}

/// [`CacheSlot::state`]'s kind bits.
const CACHE_KIND: u64 = 0xFF;

/// The steady path: an IPv4 TCP (no SYN, FIN or RST) or UDP packet of a
/// connection this CPU's [`CACHE`] holds, counted with one bounds check,
/// word loads and plain adds to the slot (no call, no hash, no atomics).
/// `false`: anything else, for [`segwatch_general`] (which parses again
/// from the start: the fast path leaves no state behind).
///
/// The slot key and index are computed exactly as [`slot_key`] and
/// [`slot_of`] do for the general path's [`TupleKey`].
#[inline(always)]
fn fast_v4(ctx: &TcContext) -> bool {
    let start = ctx.data();
    if start + FAST_V4 > ctx.data_end() {
        return false;
    }
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the whole program run.
    if unsafe { (*skb).gso_size } != 0 {
        return false;
    }
    // SAFETY (all loads below): inside start..start + FAST_V4, checked
    // against data_end above.
    if unsafe { load::<u16>(start + 12) } != ETH_P_IP.to_be() {
        return false;
    }
    // RFC 791 §3.1, as words: version/IHL, TOS, total length | id,
    // flags/fragment offset | TTL, protocol, checksum | source | destination.
    let w0: u32 = unsafe { load(start + ETH_HLEN) };
    let w1: u32 = unsafe { load(start + ETH_HLEN + 4) };
    let w2: u32 = unsafe { load(start + ETH_HLEN + 8) };
    // No options, no fragment (offset or more-fragments: bytes 6-7 masked
    // with 0x3FFF, as this little-endian word holds them).
    if w0 as u8 != 0x45 || w1 & 0xFF3F_0000 != 0 {
        return false;
    }
    let tot_len = u16::from_be((w0 >> 16) as u16) as u32;
    if tot_len < 40 || ETH_HLEN as u32 + tot_len > ctx.len() {
        return false;
    }
    let proto = (w2 >> 8) as u8;
    let Some(flags) = (unsafe { fast_l4_flags(proto, start + ETH_HLEN + 20, tot_len - 20) }) else {
        return false;
    };
    let s: u32 = unsafe { load(start + ETH_HLEN + 12) };
    let d: u32 = unsafe { load(start + ETH_HLEN + 16) };
    let ports: u32 = unsafe { load(start + ETH_HLEN + 20) };
    // The canonical order of `less`: address word, then port.
    let a = u64::from(s) << 16 | u64::from(u16::from_be(ports as u16));
    let b = u64::from(d) << 16 | u64::from(u16::from_be((ports >> 16) as u16));
    // Direction 0 is lo → hi.
    let (dir, lo, hi) = if b < a { (1u64, b, a) } else { (0u64, a, b) };
    // CacheSlot::v4_key.
    let k0 = (lo >> 16) | (hi >> 16) << 32;
    let k1 = (lo & 0xFFFF) | (hi & 0xFFFF) << 16 | u64::from(proto) << 32 | u64::from(IP_V4) << 40;
    // Two ways per set: the set's first slot, then its second.
    let base = slot_index(k0 ^ k1.rotate_left(17)) & !1;
    // SAFETY: `s` is one of this CPU's slots.
    let same = |s: *const CacheSlot| unsafe { (*s).key[0] == k0 && (*s).key[1] == k1 };
    fast_count(ctx, base, CACHE_V4, same, dir, tot_len, flags)
}

/// [`fast_v4`] for IPv6 without extension headers (the next header is TCP
/// or UDP): one bounds check, word loads, the five-word slot key of
/// [`slot_key`] compared in place. A jumbogram (payload length 0) and
/// everything else takes the general path.
///
/// A static BPF function (a call, verified with the caller's context): the
/// five key words spill to the stack around the slot lookups, and inlined
/// those spills would enlarge the attached program's frame, which every
/// chain of calls through the general path adds to (512 bytes at most).
#[inline(never)]
fn fast_v6(skb: *mut __sk_buff) -> bool {
    let ctx = &TcContext::new(skb);
    let start = ctx.data();
    if start + FAST_V6 > ctx.data_end() {
        return false;
    }
    // SAFETY: the context pointer is valid for the whole program run.
    if unsafe { (*skb).gso_size } != 0 {
        return false;
    }
    // SAFETY (all loads below): inside start..start + FAST_V6, checked
    // against data_end above.
    if unsafe { load::<u16>(start + 12) } != ETH_P_IPV6.to_be() {
        return false;
    }
    // RFC 8200 §3, as words: version, traffic class, flow label | payload
    // length, next header, hop limit | source | destination.
    let l3 = start + ETH_HLEN;
    let w0: u32 = unsafe { load(l3) };
    let w1: u32 = unsafe { load(l3 + 4) };
    if (w0 as u8) >> 4 != 6 {
        return false;
    }
    let payload_len = u32::from(u16::from_be(w1 as u16));
    if payload_len < 20 || (ETH_HLEN + 40) as u32 + payload_len > ctx.len() {
        return false;
    }
    let proto = (w1 >> 16) as u8;
    let l4 = l3 + 40;
    let Some(flags) = (unsafe { fast_l4_flags(proto, l4, payload_len) }) else {
        return false;
    };
    // Each address as two words of the key's form: bytes 0-3 | 4-7 << 32.
    let s0: u64 = unsafe { load(l3 + 8) };
    let s1: u64 = unsafe { load(l3 + 16) };
    let d0: u64 = unsafe { load(l3 + 24) };
    let d1: u64 = unsafe { load(l3 + 32) };
    let ports: u32 = unsafe { load(l4) };
    let sport = u16::from_be(ports as u16);
    let dport = u16::from_be((ports >> 16) as u16);
    // `less(dst, dport, src, sport)`: the 32-bit words in order, then the
    // port. A word pair rotated by 32 compares as (first word, second).
    let (sa, sb) = (s0.rotate_left(32), s1.rotate_left(32));
    let (da, db) = (d0.rotate_left(32), d1.rotate_left(32));
    let back = da < sa || (da == sa && (db < sb || (db == sb && dport < sport)));
    // Direction 0 is lo → hi.
    let (dir, k0, k1, k2, k3, plo, phi) = if back {
        (1u64, d0, d1, s0, s1, dport, sport)
    } else {
        (0u64, s0, s1, d0, d1, sport, dport)
    };
    let k4 =
        u64::from(plo) | u64::from(phi) << 16 | u64::from(proto) << 32 | u64::from(IP_V6) << 40;
    let base =
        slot_index(k0 ^ k1.rotate_left(17) ^ k2.rotate_left(31) ^ k3 ^ k4.rotate_left(47)) & !1;
    // SAFETY: `s` is one of this CPU's slots.
    let same = |s: *const CacheSlot| unsafe {
        let k = &(*s).key;
        (k[0] ^ k0) | (k[1] ^ k1) | (k[2] ^ k2) | (k[3] ^ k3) | (k[4] ^ k4) == 0
    };
    fast_count(ctx, base, CACHE_V6, same, dir, 40 + payload_len, flags)
}

/// The fast paths' transport check: a TCP segment without SYN, FIN or
/// RST gives its flags (for the slot), a UDP datagram 0; anything else,
/// and a TCP data offset outside `l4_len` (the transport header and
/// payload's length from the IP header), `None`: the general path.
///
/// # Safety
/// `l4..l4 + 20` is inside the packet, checked against `data_end`.
#[inline(always)]
unsafe fn fast_l4_flags(proto: u8, l4: usize, l4_len: u32) -> Option<u64> {
    if proto == proto::UDP {
        return Some(0);
    }
    if proto != proto::TCP {
        return None;
    }
    // RFC 9293 §3.1: data offset (high nibble) and flags.
    // SAFETY: per the caller.
    let doff_flags: u16 = unsafe { load(l4 + 12) };
    let doff = u32::from((doff_flags as u8) >> 4) * 4;
    let f = (doff_flags >> 8) as u8;
    // SYN, FIN and RST take the shared path (see `CACHE`).
    if doff < 20 || doff > l4_len || f & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0 {
        return None;
    }
    Some(u64::from(f))
}

/// The fast paths' common end: finds the key (`same`) in the set at
/// `base` of this CPU's [`CACHE`] and adds the packet to that slot's delta.
/// `false` when the slot is not there or is another interface's without a
/// second-interface mark (the general path then decides).
#[inline(always)]
fn fast_count(
    ctx: &TcContext,
    base: u32,
    kind: u64,
    same: impl Fn(*const CacheSlot) -> bool,
    dir: u64,
    bytes: u32,
    flags: u64,
) -> bool {
    let Some(mut sl) = CACHE.get_ptr_mut(base) else {
        return false;
    };
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer as above; `sl` is this CPU's slot, which
    // no other program changes while this one runs (a tc program is not
    // interrupted by another; the flush program marks slots busy). An
    // emptied slot's key[1] is zero, never an IPv4 key's; the state's kind
    // tells an IPv6 key from an IPv4 one.
    unsafe {
        if !same(sl) {
            let Some(other) = CACHE.get_ptr_mut(base | 1) else {
                return false;
            };
            if !same(other) {
                return false;
            }
            sl = other;
        }
        let ifindex = (*skb).ifindex;
        let state = (*sl).state;
        if state != kind | u64::from(ifindex) << 32 {
            if state & (CACHE_KIND | CACHE_BUSY) == kind && (*sl).second_if != 0 {
                // Counted on the interface that saw it first.
                count(Counter::SecondInterface, 1);
                return true;
            }
            return false;
        }
        let d = dir as usize;
        *(*sl).packets.as_mut_ptr().add(d) += 1;
        *(*sl).bytes.as_mut_ptr().add(d) += u64::from(bytes);
        (*sl).tcp_flags |= flags << (dir * 8);
        (*sl).last_jiffies = bpf_jiffies64();
    }
    true
}

/// Everything the fast paths leave: [`segwatch_parse`], then
/// [`segwatch_track`]. Two global functions (BTF linkage global): the
/// verifier checks each once on its own, with its arguments unknown,
/// instead of the flow update once per way the parser can end. Called one
/// after the other, not nested: the 512-byte stack bound holds for the
/// deepest chain of calls.
#[inline(always)]
fn general(ctx: &TcContext) {
    let mut pkt = Packet::EMPTY;
    if segwatch_parse(ctx.skb.skb, &mut pkt) == 0 {
        segwatch_track(ctx.skb.skb, &pkt);
    }
}

/// Parses the packet into `out`: 0, or 1 when it is in no flow (counted
/// here, by the reason).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn segwatch_parse(skb: *mut __sk_buff, out: *mut Packet) -> i32 {
    // SAFETY: null or the caller's Packet (see `segwatch_track`).
    let Some(out) = (unsafe { out.as_mut() }) else {
        return 1;
    };
    let ctx = TcContext::new(skb);
    if let Some(pkt) = parse_fast(&ctx) {
        *out = pkt;
        return 0;
    }
    match parse(&ctx, out) {
        Ok(()) => 0,
        Err(Skip::NonIp) => {
            count(Counter::NonIp, 1);
            1
        }
        Err(Skip::Unparsable) => {
            count(Counter::Unparsable, 1);
            1
        }
        Err(Skip::Ipv6ExtLimit) => {
            count(Counter::Ipv6ExtLimit, 1);
            1
        }
    }
}

/// The flow update of a parsed packet (cache, shared table, new entries,
/// hand-over). A global function: checked once, whatever the parser found.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn segwatch_track(skb: *mut __sk_buff, pkt: *const Packet) -> i32 {
    // SAFETY: a global function's pointer may be null (the verifier says
    // so); otherwise it points to the caller's Packet.
    let Some(pkt) = (unsafe { pkt.as_ref() }) else {
        return 0;
    };
    track(&TcContext::new(skb), pkt);
    0
}

/// Bytes the fast path needs in the linear area: Ethernet, a 20-byte IPv4
/// header and a 20-byte TCP header (the largest fixed part it reads).
const FAST_V4: usize = ETH_HLEN + 20 + 20;
/// Ethernet, the fixed IPv6 header and a TCP header.
const FAST_V6: usize = ETH_HLEN + 40 + 20;

/// Loads a `T` at `p` (packet memory, bounds checked by the caller) as one
/// word load: the verifier allows misaligned packet loads on x86
/// (CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS), and whole-word loads are what
/// make this path cheap.
///
/// # Safety
/// `p..p + size_of::<T>()` must be inside the packet's linear area.
#[inline(always)]
unsafe fn load<T: Copy>(p: usize) -> T {
    // SAFETY: per the caller.
    unsafe { core::ptr::read(p as *const T) }
}

/// The common frame shapes in one bounds check and word loads: untagged
/// Ethernet, IPv4 without options (not a later fragment) or IPv6 without
/// extension headers, TCP or UDP, one wire packet (not GSO). `None` sends
/// the packet to the general parser, which handles (and counts) the rest.
#[inline(always)]
fn parse_fast(ctx: &TcContext) -> Option<Packet> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + FAST_V4 > end {
        return None;
    }
    // Any GSO packet (a segment size set) takes the general path.
    // SAFETY: the context pointer is valid for the whole program run.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        return None;
    }
    let skb_len = ctx.len() as usize;
    // SAFETY (all loads below): inside start..start + FAST_V4 (or FAST_V6,
    // checked before the IPv6 loads), checked against data_end above.
    let ethertype = u16::from_be(unsafe { load::<u16>(start + 12) });
    // Addresses as whole arrays (no partial initialisation: LLVM would
    // zero the rest with a byte-wise `memset` call).
    let l3 = start + ETH_HLEN;
    let (l4, ip_len, hdr, src, dst, proto, ip_version) = if ethertype == ETH_P_IP {
        // RFC 791 §3.1, read as words: version/IHL, TOS, total length | id,
        // flags/fragment offset | TTL, protocol, checksum | source | destination.
        let w0: u32 = unsafe { load(l3) };
        let w1: u32 = unsafe { load(l3 + 4) };
        let w2: u32 = unsafe { load(l3 + 8) };
        if w0 as u8 != 0x45 {
            return None;
        }
        let tot_len = u16::from_be((w0 >> 16) as u16) as usize;
        let frag = u16::from_be((w1 >> 16) as u16);
        // Any fragment (offset or more-fragments set) takes the general path.
        if frag & 0x3FFF != 0 || tot_len < 40 || ETH_HLEN + tot_len > skb_len {
            return None;
        }
        let s: u32 = unsafe { load(l3 + 12) };
        let d: u32 = unsafe { load(l3 + 16) };
        (
            l3 + 20,
            tot_len,
            20,
            [s, 0, 0, 0],
            [d, 0, 0, 0],
            (w2 >> 8) as u8,
            IP_V4,
        )
    } else if ethertype == ETH_P_IPV6 {
        if start + FAST_V6 > end {
            return None;
        }
        // RFC 8200 §3: version, payload length, next header, addresses.
        let w0: u32 = unsafe { load(l3) };
        let w1: u32 = unsafe { load(l3 + 4) };
        if (w0 as u8) >> 4 != 6 {
            return None;
        }
        let payload_len = u16::from_be(w1 as u16) as usize;
        if payload_len < 20 || ETH_HLEN + 40 + payload_len > skb_len {
            return None;
        }
        (
            l3 + 40,
            40 + payload_len,
            40,
            unsafe { load::<[u32; 4]>(l3 + 8) },
            unsafe { load::<[u32; 4]>(l3 + 24) },
            (w1 >> 16) as u8,
            IP_V6,
        )
    } else {
        return None;
    };
    let mut pkt = Packet {
        src,
        dst,
        sport: 0,
        dport: 0,
        proto,
        ip_version,
        tcp_flags: 0,
        related: 0,
        seq: 0,
        segs: 1,
        bytes: 0,
    };
    let ports: u32 = unsafe { load(l4) };
    pkt.sport = u16::from_be(ports as u16);
    pkt.dport = u16::from_be((ports >> 16) as u16);
    match pkt.proto {
        proto::TCP => {
            // RFC 9293 §3.1: sequence number, data offset and flags.
            let seq: u32 = unsafe { load(l4 + 4) };
            let doff_flags: u16 = unsafe { load(l4 + 12) };
            let doff = ((doff_flags as u8) >> 4) as usize * 4;
            if doff < 20 || hdr + doff > ip_len {
                return None;
            }
            pkt.seq = u32::from_be(seq);
            pkt.tcp_flags = (doff_flags >> 8) as u8;
        }
        proto::UDP => {}
        _ => return None,
    }
    pkt.bytes = ip_len as u64;
    Some(pkt)
}

/// Reads a `T` at `off` bytes from the start of the frame with
/// `bpf_skb_load_bytes` (which also reaches paged data, and never changes
/// the skb). The general parser only (the fast paths load words
/// directly): the helper takes any offset, so the verifier tracks no range
/// of it, and the parser's paths (IPv6 extension headers of every length)
/// merge instead of multiplying.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, Skip> {
    ctx.load::<T>(off).map_err(|_| Skip::Unparsable)
}

#[inline(always)]
fn be16(v: u16) -> u16 {
    u16::from_be(v)
}

/// The general parser (every shape the fast path leaves out). Its own
/// function: its stack frame then does not add to the flow-update chain's
/// under the verifier's 512-byte bound.
///
/// Writes the packet to `out` and returns a scalar: a static function must
/// not hand a stack pointer back to its caller, which a returned `Packet`
/// (`sret`) may compile to.
#[inline(never)]
fn parse(ctx: &TcContext, out: &mut Packet) -> Result<(), Skip> {
    // Ethernet, then up to two VLAN tags still in the frame (the stack usually
    // moves them to skb->vlan_tci before tc ingress, but not always on egress).
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16(read::<u16>(ctx, 12).map_err(|_| Skip::NonIp)?);
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16(read::<u16>(ctx, l3 + 2).map_err(|_| Skip::Unparsable)?);
            l3 += 4;
        }
    }
    let skb_len = ctx.len() as usize;
    // SAFETY: the context pointer is valid for the whole program run.
    let (gso_segs, gso_size) = unsafe { ((*ctx.skb.skb).gso_segs, (*ctx.skb.skb).gso_size) };
    // A GSO super-packet (include/linux/skbuff.h, skb_is_gso): its IP
    // header describes one segment (or nothing: BIG TCP), the skb all of them.
    let gso = gso_size != 0 || gso_segs > 1;

    let mut pkt = Packet::EMPTY;

    // Offset of the L4 header, or None for a non-first fragment.
    let l4: Option<usize>;
    // IP length the header claims (used when the skb is one wire packet).
    let ip_len: usize;
    let l3_hdr: usize;
    // Bytes of an IPv6 jumbo hop-by-hop header that GSO removes before it
    // cuts the segments (net/ipv6/ip6_offload.c): in no wire packet.
    let mut jumbo_hbh = 0usize;
    // Fragments: the more-fragments flag (a first fragment when `l4` is
    // set) and the datagram's identification. Kept as values read from
    // the packet, not as constants set in branches: the verifier would
    // otherwise walk the IPv6 header loop once per combination.
    let mut frag_more = 0u32;
    let mut frag_id = 0u32;
    match ethertype {
        ETH_P_IP => {
            // RFC 791 §3.1: version/IHL, total length, fragment offset.
            let vihl: u8 = read(ctx, l3)?;
            if vihl >> 4 != 4 {
                return Err(Skip::Unparsable);
            }
            let ihl = ((vihl & 0x0F) as usize) * 4;
            if ihl < 20 {
                return Err(Skip::Unparsable);
            }
            let tot_len = be16(read::<u16>(ctx, l3 + 2)?) as usize;
            let id_frag: [u16; 2] = read(ctx, l3 + 4)?;
            let frag = be16(id_frag[1]);
            pkt.proto = read::<u8>(ctx, l3 + 9)?;
            pkt.src[0] = read::<u32>(ctx, l3 + 12)?;
            pkt.dst[0] = read::<u32>(ctx, l3 + 16)?;
            pkt.ip_version = IP_V4;
            // BIG TCP GSO packets carry tot_len 0 (net/ipv4/ip_output.c);
            // only a single wire packet must agree with its header.
            if !gso && (tot_len < ihl || l3 + tot_len > skb_len) {
                return Err(Skip::Unparsable);
            }
            ip_len = tot_len;
            l3_hdr = ihl;
            frag_id = u32::from(be16(id_frag[0]));
            frag_more = u32::from(frag >> 13) & 1;
            l4 = if frag & 0x1FFF != 0 {
                None
            } else {
                Some(l3 + ihl)
            };
        }
        ETH_P_IPV6 => {
            // RFC 8200 §3: fixed 40-byte header.
            let vtc: u8 = read(ctx, l3)?;
            if vtc >> 4 != 6 {
                return Err(Skip::Unparsable);
            }
            let payload_len = be16(read::<u16>(ctx, l3 + 4)?) as usize;
            let mut next: u8 = read(ctx, l3 + 6)?;
            pkt.src = read::<[u32; 4]>(ctx, l3 + 8)?;
            pkt.dst = read::<[u32; 4]>(ctx, l3 + 24)?;
            pkt.ip_version = IP_V6;
            let first_next = next;
            if !gso && l3 + 40 + payload_len > skb_len {
                return Err(Skip::Unparsable);
            }
            let mut off = l3 + 40;
            let mut first_fragment = true;
            let mut done = false;
            for _ in 0..MAX_IPV6_EXT {
                match next {
                    // Hop-by-hop, routing, destination options, mobility,
                    // HIP, shim6 (RFC 8200 §4.3-4.6, RFC 6275, RFC 7401,
                    // RFC 5533): length in 8-octet units, not counting the first.
                    0 | 43 | 60 | 135 | 139 | 140 => {
                        let hdr: [u8; 2] = read(ctx, off)?;
                        next = hdr[0];
                        off += (hdr[1] as usize + 1) * 8;
                    }
                    // Fragment (RFC 8200 §4.5): fixed 8 bytes.
                    44 => {
                        let hdr: [u8; 8] = read(ctx, off)?;
                        next = hdr[0];
                        let frag_off = u16::from_be_bytes([hdr[2], hdr[3]]) & 0xFFF8;
                        frag_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                        off += 8;
                        frag_more = u32::from(hdr[3] & 1);
                        if frag_off != 0 {
                            // RFC 8200 §4.5: after a later fragment's header
                            // comes fragment data, not headers: stop here.
                            first_fragment = false;
                            done = true;
                            break;
                        }
                    }
                    // Authentication header (RFC 4302 §2.2): length in 4-octet
                    // units, minus 2.
                    51 => {
                        let hdr: [u8; 2] = read(ctx, off)?;
                        next = hdr[0];
                        off += (hdr[1] as usize + 2) * 4;
                    }
                    _ => {
                        done = true;
                        break;
                    }
                }
            }
            if !done {
                return Err(Skip::Ipv6ExtLimit);
            }
            // After the walk (one walk for every shape, not one per jumbo
            // case): RFC 2675 jumbogram / Linux BIG TCP, payload length 0
            // and the length in a hop-by-hop Jumbo Payload option (type
            // 0xC2, 4 bytes) as the header's first option; without the
            // option (kernels that no longer insert it) the skb has the
            // length (GSO only).
            let mut payload = payload_len;
            if payload_len == 0 && first_next == 0 {
                if let Ok(hbh) = ctx.load::<[u8; 8]>(l3 + 40) {
                    if hbh[2] == 0xC2 && hbh[3] == 4 {
                        payload = u32::from_be_bytes([hbh[4], hbh[5], hbh[6], hbh[7]]) as usize;
                        if hbh[1] == 0 {
                            jumbo_hbh = 8;
                        }
                    }
                }
                if !gso && l3 + 40 + payload > skb_len {
                    return Err(Skip::Unparsable);
                }
            }
            ip_len = 40 + payload;
            let l3_end = if gso { skb_len } else { l3 + ip_len };
            if off > l3_end {
                return Err(Skip::Unparsable);
            }
            pkt.proto = next;
            l3_hdr = off - l3;
            l4 = if first_fragment { Some(off) } else { None };
        }
        _ => return Err(Skip::NonIp),
    }

    // End of the IP packet in the frame: what the header claims for a single
    // wire packet, the skb's end for a GSO super-packet.
    let l3_end = if gso { skb_len } else { l3 + ip_len };
    // Bytes of the L4 header, for the per-segment header copies of GSO.
    let mut l4_hdr = 0usize;
    match l4 {
        None => {
            count(Counter::Fragments, 1);
            segwatch_frag_ports(&mut pkt, frag_id);
        }
        Some(off) => match pkt.proto {
            proto::TCP => {
                // RFC 9293 §3.1: ports, data offset (high nibble of byte 12),
                // flags (byte 13).
                let ports: [u16; 2] = read(ctx, off)?;
                let seq: u32 = read(ctx, off + 4)?;
                let doff_flags: [u8; 2] = read(ctx, off + 12)?;
                let doff = ((doff_flags[0] >> 4) as usize) * 4;
                if doff < 20 {
                    return Err(Skip::Unparsable);
                }
                pkt.sport = be16(ports[0]);
                pkt.dport = be16(ports[1]);
                pkt.tcp_flags = doff_flags[1];
                pkt.seq = u32::from_be(seq);
                l4_hdr = doff;
            }
            proto::UDP | proto::SCTP => {
                // RFC 768 / RFC 9260 §3.1: source and destination port first.
                let ports: [u16; 2] = read(ctx, off)?;
                pkt.sport = be16(ports[0]);
                pkt.dport = be16(ports[1]);
                l4_hdr = if pkt.proto == proto::UDP { 8 } else { 12 };
            }
            proto::ICMP | proto::ICMPV6 => {
                // RFC 792 / RFC 4443: type, code, checksum, then for echo
                // the identifier.
                let hdr: [u8; 6] = read(ctx, off)?;
                let (ty, code) = (hdr[0], hdr[1]);
                let (echo, error) = if pkt.proto == proto::ICMP {
                    // Destination unreachable, source quench, time
                    // exceeded, parameter problem (RFC 792).
                    (
                        ty == 8 || ty == 0,
                        ty == 3 || ty == 4 || ty == 11 || ty == 12,
                    )
                } else {
                    // RFC 4443 §2.1: error messages are types 1-4.
                    (ty == 128 || ty == 129, (1..=4).contains(&ty))
                };
                if echo {
                    let id = u16::from_be_bytes([hdr[4], hdr[5]]);
                    pkt.sport = id;
                    pkt.dport = id;
                } else {
                    pkt.sport = ty as u16;
                    pkt.dport = code as u16;
                }
                l4_hdr = 8;
                // An error quotes the packet that caused it after its 8-byte
                // header: counted with that packet's connection.
                if error && segwatch_quoted(ctx.skb.skb, (off + 8) as u32, &mut pkt) != 0 {
                    count(Counter::IcmpErrors, 1);
                }
            }
            _ => {}
        },
    }
    // A header that runs past the end of the IP packet is bogus (truncated
    // datagram inside a padded frame, or a data offset beyond the packet).
    if let Some(off) = l4 {
        if off + l4_hdr > l3_end {
            return Err(Skip::Unparsable);
        }
    }
    if l4.is_some() && frag_more != 0 {
        segwatch_frag_remember(&pkt, frag_id);
    }

    // Bytes as the wire carries them. A GSO super-packet: the payload once
    // plus the headers of each of its wire segments (include/linux/skbuff.h,
    // skb_shared_info), without a jumbo hop-by-hop header GSO removes.
    let total = if gso {
        skb_len.saturating_sub(l3) as u64
    } else {
        ip_len as u64
    };
    let hdrs = (l3_hdr + l4_hdr - jumbo_hbh) as u64;
    let segs = gso_segments(
        gso_segs,
        gso_size,
        total.saturating_sub(hdrs + jumbo_hbh as u64),
    );
    pkt.segs = segs;
    pkt.bytes = if segs > 1 {
        total - jumbo_hbh as u64 + hdrs * (segs as u64 - 1)
    } else {
        total
    };
    *out = pkt;
    Ok(())
}

/// Wire packets of an skb: `gso_segs` when the stack set it; a GSO packet
/// with a segment size but no count (virtio-net/tun from a guest, e.g.
/// KubeVirt, before the stack fills it in) is `ceil(payload / gso_size)`
/// segments, the way GSO will cut it; one otherwise.
#[inline(always)]
fn gso_segments(gso_segs: u32, gso_size: u32, payload: u64) -> u32 {
    if gso_segs > 1 {
        gso_segs
    } else if gso_segs == 0 && gso_size != 0 && payload > u64::from(gso_size) {
        // At most 64 Ki segments (a 512 KiB BIG TCP packet of 8-byte ones).
        let n = payload.div_ceil(u64::from(gso_size));
        if n > 0xFFFF {
            0xFFFF
        } else {
            n as u32
        }
    } else {
        1
    }
}

/// The connection an ICMP/ICMPv6 error quotes (RFC 792: the quoted IP
/// header and the first 8 bytes of its payload; RFC 4443 §2.4(c): as much
/// as fits): `pkt` becomes a packet of that connection travelling back to
/// the quoted packet's sender (the error's receiver), so it is counted
/// with the connection and judged as its traffic, not as a new flow from
/// the error's sender. `false` (pkt unchanged) when the quote is truncated
/// or names no ports (a later fragment, IPv6 extension headers): the error
/// is then a flow of its own, keyed by type and code.
///
/// A global function (checked once on its own); `1` when `pkt` now stands
/// for the quoted connection.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn segwatch_quoted(skb: *mut __sk_buff, off: u32, pkt: *mut Packet) -> i32 {
    // SAFETY: null or the caller's Packet (see `segwatch_track`).
    let Some(pkt) = (unsafe { pkt.as_mut() }) else {
        return 0;
    };
    i32::from(quoted(&TcContext::new(skb), off as usize, pkt))
}

#[inline(always)]
fn quoted(ctx: &TcContext, off: usize, pkt: &mut Packet) -> bool {
    // Through `bpf_skb_load_bytes` only (a rare path): the verifier then
    // needs no range of `off`, and walks this function once for every way
    // the parser got here, instead of once per range. Whole headers as
    // words, read as `parse_fast` does.
    let (proto, src, dst, l4) = if pkt.ip_version == IP_V4 {
        let Ok(w) = ctx.load::<[u32; 5]>(off) else {
            return false;
        };
        let v = w[0] as u8;
        let ihl = ((v & 0x0F) as usize) * 4;
        let frag = u16::from_be((w[1] >> 16) as u16);
        if v >> 4 != 4 || ihl < 20 || frag & 0x1FFF != 0 {
            return false;
        }
        (
            (w[2] >> 8) as u8,
            [w[3], 0, 0, 0],
            [w[4], 0, 0, 0],
            off + ihl,
        )
    } else {
        let Ok(w) = ctx.load::<[u32; 10]>(off) else {
            return false;
        };
        if (w[0] as u8) >> 4 != 6 {
            return false;
        }
        (
            (w[1] >> 16) as u8,
            [w[2], w[3], w[4], w[5]],
            [w[6], w[7], w[8], w[9]],
            off + 40,
        )
    };
    let Ok(h) = ctx.load::<[u8; 8]>(l4) else {
        return false;
    };
    let (sport, dport) = match proto {
        proto::TCP | proto::UDP | proto::SCTP => (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
        ),
        proto::ICMP | proto::ICMPV6 => {
            let echo = if proto == proto::ICMP {
                h[0] == 8 || h[0] == 0
            } else {
                h[0] == 128 || h[0] == 129
            };
            if echo {
                let id = u16::from_be_bytes([h[4], h[5]]);
                (id, id)
            } else {
                (h[0] as u16, h[1] as u16)
            }
        }
        _ => return false,
    };
    // Reversed: the error travels from the quoted destination's side back
    // to the quoted source.
    pkt.src = dst;
    pkt.dst = src;
    pkt.sport = dport;
    pkt.dport = sport;
    pkt.proto = proto;
    pkt.related = 1;
    true
}

/// The LRU map key of a fragment's datagram (see [`FragKey`]).
#[inline(always)]
fn frag_key(pkt: &Packet, id: u32) -> FragKey {
    FragKey {
        src: pkt.src,
        dst: pkt.dst,
        id,
        proto: if pkt.ip_version == IP_V4 {
            pkt.proto
        } else {
            0
        },
        ip_version: pkt.ip_version,
        _pad: [0; 2],
    }
}

/// A first fragment of several: remembers its ports for the later ones.
/// A global function (checked once on its own).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn segwatch_frag_remember(pkt: *const Packet, id: u32) -> i32 {
    // SAFETY: null or the caller's Packet (see `segwatch_track`).
    let Some(pkt) = (unsafe { pkt.as_ref() }) else {
        return 0;
    };
    let key = frag_key(pkt, id);
    let value = FragPorts {
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    // LRU: a full map evicts the oldest datagram, whose later fragments
    // (if any are still to come) are then counted port-less.
    let _ = FRAGS.insert(&key, &value, 0);
    0
}

/// A later fragment: its datagram's ports (and, for IPv6, upper-layer
/// protocol) from the first fragment, or port-less and counted as such.
/// A global function (checked once on its own).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn segwatch_frag_ports(pkt: *mut Packet, id: u32) -> i32 {
    // SAFETY: null or the caller's Packet (see `segwatch_track`).
    let Some(pkt) = (unsafe { pkt.as_mut() }) else {
        return 0;
    };
    let key = frag_key(pkt, id);
    match FRAGS.get_ptr(&key) {
        Some(v) => {
            // SAFETY: a live element of FRAGS.
            let v = unsafe { *v };
            pkt.sport = v.sport;
            pkt.dport = v.dport;
            pkt.proto = v.proto;
        }
        None => count(Counter::FragmentNoPorts, 1),
    }
    0
}

#[inline(always)]
fn less(a: &[u32; 4], ap: u16, b: &[u32; 4], bp: u16) -> bool {
    // Any total order works, as long as both directions agree; compare the
    // words as stored.
    let mut i = 0;
    while i < 4 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    ap < bp
}

#[inline(always)]
fn track(ctx: &TcContext, pkt: &Packet) {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Direction 0 is lo → hi.
    let dir: usize = if less(&pkt.dst, pkt.dport, &pkt.src, pkt.sport) {
        1
    } else {
        0
    };
    let key = if dir == 0 {
        TupleKey {
            addr_lo: pkt.src,
            addr_hi: pkt.dst,
            port_lo: pkt.sport,
            port_hi: pkt.dport,
            proto: pkt.proto,
            ip_version: pkt.ip_version,
            _pad: [0; 2],
        }
    } else {
        TupleKey {
            addr_lo: pkt.dst,
            addr_hi: pkt.src,
            port_lo: pkt.dport,
            port_hi: pkt.sport,
            proto: pkt.proto,
            ip_version: pkt.ip_version,
            _pad: [0; 2],
        }
    };

    let if_dir = u64::from(ifindex) << 1 | dir as u64;
    let cached = if cache_enabled() {
        cache_try(&key, if_dir, pkt)
    } else {
        CACHE_NO_FILL
    };
    let (outcome, idx) = (cached & 0xFF, (cached >> 8) as u32);
    if outcome == CACHE_COUNTED {
        return;
    }

    if let Some(v) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: a live element of FLOWS (RCU keeps it valid for this run).
        unsafe { hit(v, &key, ifindex, dir, pkt) };
        if outcome != CACHE_NO_FILL {
            // SAFETY: as above.
            unsafe {
                cache_fill(
                    &key,
                    v,
                    u64::from(ifindex) << 1 | u64::from(outcome == CACHE_SAME),
                    idx,
                )
            };
        }
        return;
    }

    create(&key, pkt, if_dir);
}

/// [`cache_try`]: the packet is counted in this CPU's slot.
const CACHE_COUNTED: u64 = 0;
/// [`cache_try`]: take the shared path, then cache the entry in the slot.
const CACHE_FILL: u64 = 1;
/// [`cache_try`]: take the shared path; the slot holds this key already
/// (a packet of a second interface).
const CACHE_SAME: u64 = 2;
/// [`cache_try`]: take the shared path, leave the slot alone.
const CACHE_NO_FILL: u64 = 3;

/// A key in the cache slot's form ([`CacheSlot`]): the words and the kind.
#[inline(always)]
fn slot_key(key: &TupleKey) -> ([u64; 5], u64) {
    if key.ip_version == IP_V4 {
        let [k0, k1] = CacheSlot::v4_key(key);
        ([k0, k1, 0, 0, 0], CACHE_V4)
    } else {
        // SAFETY: TupleKey is 40 bytes of plain integers, 4-byte aligned
        // (read as 4-byte words: the verifier rejects misaligned stack
        // access).
        let w = unsafe { *(key as *const TupleKey as *const [u32; 10]) };
        let word = |i: usize| u64::from(w[2 * i]) | u64::from(w[2 * i + 1]) << 32;
        ([word(0), word(1), word(2), word(3), word(4)], CACHE_V6)
    }
}

/// The per-CPU cache in front of [`FLOWS`] (see [`CACHE`]) for what
/// [`fast_v4`] and [`fast_v6`] did not count: a slot to fill or to
/// evict, TCP SYN/FIN/RST, IPv6 extension headers. Two-way set
/// associative: a key may sit in either slot of its set (`slot_of & !1`
/// and the one after); a new key takes an empty slot of the set, else the
/// one whose last packet is older (its delta goes to [`FLOWS`] first). Returns the outcome in bits 0-7 and the
/// slot for [`cache_fill`] above them. Its own function: the verifier
/// then walks the shared path once, not once per cache outcome.
#[inline(never)]
fn cache_try(key: &TupleKey, if_dir: u64, pkt: &Packet) -> u64 {
    let (ifindex, dir) = ((if_dir >> 1) as u32, (if_dir & 1) as usize);
    let (words, kind) = slot_key(key);
    // SYN, FIN and RST always take the shared path: rotation and end states
    // are decided there, after this CPU's earlier packets.
    let special = pkt.proto == proto::TCP
        && pkt.tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0;
    let base = slot_of(&words) & !1;
    let Some(s0) = CACHE.get_ptr_mut(base) else {
        return CACHE_NO_FILL;
    };
    let Some(s1) = CACHE.get_ptr_mut(base | 1) else {
        return CACHE_NO_FILL;
    };
    // SAFETY: this CPU's slots; a tc program is not interrupted by another
    // on the same CPU, and the flush program marks them busy.
    unsafe {
        let st0 = read_volatile(addr_of!((*s0).state));
        let st1 = read_volatile(addr_of!((*s1).state));
        if (st0 | st1) & CACHE_BUSY != 0 {
            return CACHE_NO_FILL;
        }
        let m0 = st0 & CACHE_KIND == kind && same_key(&(*s0).key, &words);
        let m1 = !m0 && st1 & CACHE_KIND == kind && same_key(&(*s1).key, &words);
        if m0 || m1 {
            let (s, state, idx) = if m0 {
                (s0, st0, base)
            } else {
                (s1, st1, base | 1)
            };
            if special {
                // The delta goes first.
                segwatch_flush_slot(idx);
                return CACHE_NO_FILL;
            }
            if (state >> 32) as u32 == ifindex {
                cache_add(s, dir, pkt);
                return CACHE_COUNTED;
            }
            if (*s).second_if != 0 {
                count(Counter::SecondInterface, pkt.segs as u64);
                return CACHE_COUNTED;
            }
            return CACHE_SAME | u64::from(idx) << 8;
        }
        if special {
            return CACHE_NO_FILL;
        }
        let (victim, state) = if st0 & CACHE_KIND == CACHE_EMPTY {
            (base, st0)
        } else if st1 & CACHE_KIND == CACHE_EMPTY {
            (base | 1, st1)
        } else if (*s1).last_jiffies < (*s0).last_jiffies {
            (base | 1, st1)
        } else {
            (base, st0)
        };
        if state & CACHE_KIND != CACHE_EMPTY {
            // Evicted: the delta goes first.
            segwatch_flush_slot(victim);
        }
        CACHE_FILL | u64::from(victim) << 8
    }
}

/// Word-wise key comparison (no `bcmp` in BPF).
#[inline(always)]
fn same_key(a: &[u64; 5], b: &[u64; 5]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
}

#[inline(always)]
fn slot_of(k: &[u64; 5]) -> u32 {
    CacheSlot::slot_of(k)
}

#[inline(always)]
fn slot_index(mixed: u64) -> u32 {
    CacheSlot::slot_index(mixed)
}

/// Adds one packet to this CPU's cached delta (plain stores: the slot is
/// this CPU's alone).
///
/// # Safety
/// `s` is this CPU's slot, not busy.
#[inline(always)]
unsafe fn cache_add(s: *mut CacheSlot, dir: usize, pkt: &Packet) {
    // SAFETY: per the caller. Constant indices only (see `track`).
    unsafe {
        if dir == 0 {
            (*s).packets[0] += pkt.segs as u64;
            (*s).bytes[0] += pkt.bytes;
            (*s).tcp_flags |= pkt.tcp_flags as u64;
        } else {
            (*s).packets[1] += pkt.segs as u64;
            (*s).bytes[1] += pkt.bytes;
            (*s).tcp_flags |= (pkt.tcp_flags as u64) << 8;
        }
        (*s).last_jiffies = bpf_jiffies64();
    }
}

/// Caches the entry `v` (just counted on the shared path) in this CPU's
/// slot `idx` ([`cache_try`]'s choice): the next packets of it on this CPU stay on this CPU. With `same`
/// (bit 0 of `if_same`) the slot already holds this key (a packet of a
/// second interface): only the second-interface mark is added.
///
/// # Safety
/// `v` is a live element of [`FLOWS`].
#[inline(never)]
unsafe fn cache_fill(key: &TupleKey, v: *mut FlowValue, if_same: u64, idx: u32) {
    let (ifindex, same) = ((if_same >> 1) as u32, if_same & 1 != 0);
    let (words, kind) = slot_key(key);
    let Some(s) = CACHE.get_ptr_mut(idx) else {
        return;
    };
    // SAFETY: per the caller; `s` is this CPU's slot.
    unsafe {
        if read_volatile(addr_of!((*s).state)) & CACHE_BUSY != 0 {
            return;
        }
        let owner = (*v).ifindex;
        if same {
            if owner != ifindex {
                (*s).second_if = 1;
            }
            return;
        }
        let g = read_volatile(addr_of!((*v).gen));
        if g & GEN_ROTATING != 0 {
            return;
        }
        (*s).key = words;
        (*s).gen = g as u32;
        (*s).second_if = u32::from(owner != ifindex);
        (*s).packets = [0; 2];
        (*s).bytes = [0; 2];
        (*s).tcp_flags = 0;
        (*s).last_jiffies = 0;
        (*s).state = kind | u64::from(owner) << 32;
    }
}

/// `count` for paths the flush program shares with tc programs (which can
/// interrupt it on its CPU): an atomic add, so no increment is lost.
#[inline(always)]
fn count_sync(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a valid slot of the array.
        unsafe { atomic_add(slot, n) };
    }
}

/// Moves the delta of this CPU's slot `idx` into its [`FLOWS`] entry and
/// empties the slot (the busy bit, if set, stays). An entry the daemon
/// removed since the slot was filled is created again with the delta (a
/// later part of the connection, as a packet after the removal would). A
/// delta of a connection that a SYN on another CPU handed over since is
/// not added to the new connection: it is counted as
/// [`Counter::HandoverRace`] (lost to the old connection's report, which
/// went out with the rotation).
///
/// A global function, checked once: the flush program calls it for every
/// slot of its chunk. The caller makes sure no other program changes the
/// slot meanwhile (a tc program's own slot, or one the flush program marked
/// busy).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn segwatch_flush_slot(idx: u32) -> i32 {
    let Some(s) = CACHE.get_ptr_mut(idx) else {
        return 0;
    };
    // SAFETY: this CPU's slot, per the above.
    unsafe {
        let state = (*s).state;
        (*s).state = state & CACHE_BUSY;
        let key = if state & CACHE_KIND == CACHE_V4 {
            CacheSlot::v4_tuple([(*s).key[0], (*s).key[1]])
        } else {
            *((*s).key.as_ptr() as *const TupleKey)
        };
        // No IPv4 key has a zero second word: the fast path's key compare
        // then never matches an emptied slot.
        (*s).key[1] = 0;
        let p0 = (*s).packets[0];
        let p1 = (*s).packets[1];
        if p0 | p1 == 0 {
            return 0;
        }
        let Some(v) = FLOWS.get_ptr_mut(&key) else {
            reinsert(s, &key, (state >> 32) as u32);
            return 0;
        };
        let b0 = (*s).bytes[0];
        let b1 = (*s).bytes[1];
        let f = (*s).tcp_flags;
        let j = (*s).last_jiffies;
        (*s).packets = [0; 2];
        (*s).bytes = [0; 2];
        (*s).tcp_flags = 0;
        let g = read_volatile(addr_of!((*v).gen));
        if g & GEN_ROTATING == 0
            && (g as u32).wrapping_sub((*s).gen).wrapping_sub(1) < ROTATED_SINCE
        {
            // SYNs rotated the entry since the slot was filled: the delta
            // is an earlier connection's on this tuple (a client port
            // reused within seconds, its last packets counted on this
            // CPU), whose final totals went out with the rotation. Added,
            // it would be the new connection's; counted apart instead, so
            // every report holds its own connection's packets only.
            count_sync(Counter::HandoverRace, p0 + p1);
            return 0;
        }
        if g as u32 != (*s).gen || g & GEN_ROTATING != 0 {
            // Mid-rotation, or an entry created again since (a random
            // generation): added to what holds the tuple now, and counted.
            count_sync(Counter::HandoverRace, p0 + p1);
        }
        if p0 != 0 {
            atomic_add(addr_of_mut!((*v).packets[0]), p0);
            atomic_add(addr_of_mut!((*v).bytes[0]), b0);
        }
        if p1 != 0 {
            atomic_add(addr_of_mut!((*v).packets[1]), p1);
            atomic_add(addr_of_mut!((*v).bytes[1]), b1);
        }
        if read_volatile(addr_of!((*v).tcp_flags)) & f != f {
            atomic_or(addr_of_mut!((*v).tcp_flags), f);
        }
        if read_volatile(addr_of!((*v).last_jiffies)) < j {
            write_volatile(addr_of_mut!((*v).last_jiffies), j);
        }
    }
    0
}

/// Rotations a slot's generation may lag its entry's by and still be told
/// from an entry created again (whose generation is random).
const ROTATED_SINCE: u32 = 64;

/// [`segwatch_flush_slot`] for an entry no longer in [`FLOWS`]: a new entry
/// with the delta (the daemon finds it at its next sweep), its opener
/// inferred from the ports as for any connection first seen mid-stream.
///
/// # Safety
/// As [`segwatch_flush_slot`]; empties the slot's delta.
#[inline(always)]
unsafe fn reinsert(s: *mut CacheSlot, key: &TupleKey, ifindex: u32) {
    // SAFETY: the helpers have no preconditions; `s` per the caller.
    let (now, gen) = unsafe { (bpf_ktime_get_ns(), u64::from(bpf_get_prandom_u32())) };
    // SAFETY: per the caller.
    let (packets, bytes) = unsafe {
        let p = (*s).packets;
        let b = (*s).bytes;
        (*s).packets = [0; 2];
        (*s).bytes = [0; 2];
        (p, b)
    };
    // SAFETY: as above.
    let (last_jiffies, tcp_flags) = unsafe { ((*s).last_jiffies, (*s).tcp_flags) };
    // SAFETY: as above.
    unsafe { (*s).tcp_flags = 0 };
    let value = FlowValue {
        gen_lo: gen as u32,
        ifindex,
        packets,
        bytes,
        base_packets: [0; 2],
        base_bytes: [0; 2],
        first_ns: now,
        last_jiffies,
        tcp_flags,
        isn: 0,
        // The lower port is taken for the server's.
        opener: if key.port_lo < key.port_hi {
            opener::HI_INFERRED
        } else {
            opener::LO_INFERRED
        },
        marks: 0,
        _pad: [0; 2],
        gen,
    };
    let n = packets[0] + packets[1];
    match FLOWS.insert(key, &value, BPF_NOEXIST as u64) {
        Ok(()) => count_sync(Counter::NewFlows, 1),
        Err(EEXIST) => match FLOWS.get_ptr_mut(key) {
            // SAFETY: a live element of FLOWS.
            Some(v) => unsafe {
                atomic_add(addr_of_mut!((*v).packets[0]), packets[0]);
                atomic_add(addr_of_mut!((*v).packets[1]), packets[1]);
                atomic_add(addr_of_mut!((*v).bytes[0]), bytes[0]);
                atomic_add(addr_of_mut!((*v).bytes[1]), bytes[1]);
                atomic_or(addr_of_mut!((*v).tcp_flags), tcp_flags);
            },
            None => count_sync(Counter::FlowMapFull, n),
        },
        Err(_) => count_sync(Counter::FlowMapFull, n),
    }
}

/// A new connection: inserts its entry and announces it. Its own function,
/// so its stack frame (the new value) is not in the hit path's.
#[inline(never)]
fn create(key: &TupleKey, pkt: &Packet, if_dir: u64) {
    let (ifindex, dir) = ((if_dir >> 1) as u32, (if_dir & 1) as usize);
    if over_budget(ifindex, pkt) {
        return;
    }
    let key = *key;
    // The only place besides a rotation that reads the exact (costly) clock.
    // SAFETY: bpf_ktime_get_ns, bpf_jiffies64 and bpf_get_prandom_u32 have
    // no preconditions.
    let (now, jiffies, gen) = unsafe {
        (
            bpf_ktime_get_ns(),
            bpf_jiffies64(),
            u64::from(bpf_get_prandom_u32()),
        )
    };
    let opened_by = opener_of(pkt, dir);
    let syn_only = pkt.proto == proto::TCP
        && pkt.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let mut value = FlowValue {
        gen_lo: gen as u32,
        ifindex,
        packets: [0; 2],
        bytes: [0; 2],
        base_packets: [0; 2],
        base_bytes: [0; 2],
        first_ns: now,
        last_jiffies: jiffies,
        tcp_flags: 0,
        isn: if syn_only { pkt.seq } else { 0 },
        opener: opened_by,
        marks: if syn_only { MARK_ISN } else { 0 },
        _pad: [0; 2],
        gen,
    };
    // Constant indices only: LLVM turns `arr[dir]` on a stack slot into
    // pointer arithmetic (`fp | dir`) that the verifier rejects.
    if dir == 0 {
        value.packets[0] = pkt.segs as u64;
        value.bytes[0] = pkt.bytes;
        value.tcp_flags = pkt.tcp_flags as u64;
    } else {
        value.packets[1] = pkt.segs as u64;
        value.bytes[1] = pkt.bytes;
        value.tcp_flags = (pkt.tcp_flags as u64) << 8;
    }
    match FLOWS.insert(&key, &value, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(Counter::NewFlows, 1);
            let a = Announce {
                now,
                ifindex,
                gen: gen as u32,
                opened_by,
            };
            if announce(&key, pkt, &a, None).is_none() {
                count(Counter::RingbufFull, 1);
            }
        }
        Err(EEXIST) => {
            // Another CPU created the entry between our lookup and insert
            // (no rotation check here: that CPU saw this connection's start).
            match FLOWS.get_ptr_mut(&key) {
                // SAFETY: a live element of FLOWS.
                Some(v) if unsafe { (*v).ifindex } == ifindex => unsafe { add(v, dir, pkt) },
                Some(_) => count(Counter::SecondInterface, pkt.segs as u64),
                // Created and removed again by the daemon in between.
                None => count(Counter::FlowMapFull, 1),
            }
        }
        Err(_) => count(Counter::FlowMapFull, 1),
    }
}

/// The interface's new-flow budget ([`BudgetValue`]): `true` when this new
/// connection is over it, its packet then counted in the interface's
/// overflow record instead of an entry of its own. The window is reset by
/// whichever CPU sees it expire first (plain stores: two CPUs resetting at
/// once only give a window a few flows more).
#[inline(never)]
fn over_budget(ifindex: u32, pkt: &Packet) -> bool {
    let cap = match CONFIG.get(config::NEW_FLOW_BUDGET) {
        Some(c) if *c != 0 => *c,
        _ => return false,
    };
    let window = CONFIG
        .get(config::BUDGET_WINDOW_JIFFIES)
        .copied()
        .unwrap_or(0);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_jiffies64() };
    let v = match BUDGET.get_ptr_mut(&ifindex) {
        Some(v) => v,
        None => {
            let fresh = BudgetValue {
                window_start: now,
                ..BudgetValue::default()
            };
            // EEXIST: another CPU added it meanwhile; full: not limited.
            let _ = BUDGET.insert(&ifindex, &fresh, BPF_NOEXIST as u64);
            match BUDGET.get_ptr_mut(&ifindex) {
                Some(v) => v,
                None => return false,
            }
        }
    };
    // SAFETY: a live element of BUDGET; counts are atomic adds.
    unsafe {
        if now.wrapping_sub(read_volatile(addr_of!((*v).window_start))) >= window {
            write_volatile(addr_of_mut!((*v).window_start), now);
            write_volatile(addr_of_mut!((*v).window_flows), 0);
        }
        let tried = read_volatile(addr_of!((*v).window_flows));
        atomic_add(addr_of_mut!((*v).window_flows), 1);
        if tried < cap {
            return false;
        }
        if tried == cap {
            atomic_add(addr_of_mut!((*v).windows_over), 1);
        }
        atomic_add(addr_of_mut!((*v).packets), pkt.segs as u64);
        atomic_add(addr_of_mut!((*v).bytes), pkt.bytes);
    }
    count(Counter::FlowBudget, pkt.segs as u64);
    true
}

/// A packet of a known entry.
///
/// # Safety
/// `v` points to a live element of [`FLOWS`].
#[inline(always)]
unsafe fn hit(v: *mut FlowValue, key: &TupleKey, ifindex: u32, dir: usize, pkt: &Packet) {
    // SAFETY (whole body): `v` is a live map value; shared fields are
    // written with atomics or as single aligned words.
    unsafe {
        if (*v).ifindex != ifindex {
            // The same connection on a second interface of this node: the
            // first one counts every packet of it already.
            if (*v).marks & MARK_SECOND_IF == 0 {
                (*v).marks |= MARK_SECOND_IF;
            }
            count(Counter::SecondInterface, pkt.segs as u64);
            return;
        }
        if pkt.proto != proto::TCP {
            add(v, dir, pkt);
            return;
        }
        let g1 = read_volatile(addr_of!((*v).gen));
        if pkt.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
            && g1 & GEN_ROTATING == 0
            && syn_starts_connection(v, pkt)
        {
            rotate(v, key, pkt, g1, u64::from(ifindex) << 1 | dir as u64);
            return;
        }
        add(v, dir, pkt);
        let g2 = read_volatile(addr_of!((*v).gen));
        if g1 != g2 || g1 & GEN_ROTATING != 0 {
            // A rotation on another CPU overlapped this packet's adds.
            count(Counter::HandoverRace, 1);
        }
    }
}

/// Whether a SYN (without ACK) on an existing entry opens a new connection:
/// the entry's connection ended (RST either way, or FIN both ways), or its
/// opening SYN had another initial sequence number. A SYN on an entry
/// without a known ISN (first seen mid-stream) records its ISN.
///
/// # Safety
/// As [`hit`].
#[inline(always)]
unsafe fn syn_starts_connection(v: *mut FlowValue, pkt: &Packet) -> bool {
    // SAFETY: per the caller.
    unsafe {
        let f = read_volatile(addr_of!((*v).tcp_flags));
        let (lo, hi) = (f as u8, (f >> 8) as u8);
        let ended = (lo | hi) & tcp_flags::RST != 0
            || (lo & tcp_flags::FIN != 0 && hi & tcp_flags::FIN != 0);
        if ended {
            return true;
        }
        if (*v).marks & MARK_ISN == 0 {
            (*v).isn = pkt.seq;
            (*v).marks |= MARK_ISN;
            return false;
        }
        (*v).isn != pkt.seq
    }
}

/// Hands the entry over to the connection `pkt` (a SYN) opens: the steps
/// are those of [`FlowValue`]'s documentation. Its own function: the
/// verifier's stack bound is per call frame.
///
/// # Safety
/// As [`hit`].
#[inline(never)]
unsafe fn rotate(v: *mut FlowValue, key: &TupleKey, pkt: &Packet, g: u64, if_dir: u64) {
    // ifindex and direction in one argument (five at most for a BPF call).
    let (ifindex, dir) = ((if_dir >> 1) as u32, (if_dir & 1) as usize);
    // SAFETY: per the caller.
    unsafe {
        let next = u64::from((g as u32).wrapping_add(1));
        if cmpxchg(addr_of_mut!((*v).gen), g, next | GEN_ROTATING) != g {
            // Another CPU rotates this entry right now: count the packet
            // into whatever connection holds it, and say so.
            add(v, dir, pkt);
            count(Counter::HandoverRace, 1);
            return;
        }
        // 1. The cumulative counts, read once: every add is either in them
        //    (the old connection) or after them (the new one).
        let p0 = read_volatile(addr_of!((*v).packets[0]));
        let p1 = read_volatile(addr_of!((*v).packets[1]));
        let b0 = read_volatile(addr_of!((*v).bytes[0]));
        let b1 = read_volatile(addr_of!((*v).bytes[1]));
        let prev = FinalStats {
            packets: [
                p0.wrapping_sub((*v).base_packets[0]),
                p1.wrapping_sub((*v).base_packets[1]),
            ],
            bytes: [
                b0.wrapping_sub((*v).base_bytes[0]),
                b1.wrapping_sub((*v).base_bytes[1]),
            ],
            first_ns: (*v).first_ns,
            last_jiffies: (*v).last_jiffies,
            tcp_flags: read_volatile(addr_of!((*v).tcp_flags)) as u32,
            gen: g as u32,
            opener: (*v).opener,
            _pad: [0; 7],
        };
        // 2. The new connection's start.
        let now = bpf_ktime_get_ns();
        (*v).base_packets = [p0, p1];
        (*v).base_bytes = [b0, b1];
        (*v).first_ns = now;
        write_volatile(addr_of_mut!((*v).tcp_flags), 0);
        (*v).isn = pkt.seq;
        (*v).marks |= MARK_ISN;
        let opened_by = opener_of(pkt, dir);
        (*v).opener = opened_by;
        add(v, dir, pkt);
        // 3. Published: readers see gen_lo == gen again.
        write_volatile(addr_of_mut!((*v).gen_lo), next as u32);
        write_volatile(addr_of_mut!((*v).gen), next);
        count(Counter::Rotations, 1);
        // 4. The old connection's final totals, and the new one announced.
        let a = Announce {
            now,
            ifindex,
            gen: next as u32,
            opened_by,
        };
        if announce(key, pkt, &a, Some(&prev)).is_none() {
            count(Counter::RingbufFull, 1);
            count(Counter::HandoverLost, prev.packets[0] + prev.packets[1]);
        }
    }
}

/// What [`announce`] says besides the packet (BPF calls take five
/// arguments at most).
#[derive(Clone, Copy)]
struct Announce {
    now: u64,
    ifindex: u32,
    gen: u32,
    opened_by: u8,
}

/// Sends a [`FlowEvent`], written in place in the ring buffer (a 128-byte
/// event on the stack would not fit the verifier's 512-byte stack next to
/// the parser's). `None`: the ring buffer is full.
#[inline(always)]
fn announce(key: &TupleKey, pkt: &Packet, a: &Announce, prev: Option<&FinalStats>) -> Option<()> {
    let Announce {
        now,
        ifindex,
        gen,
        opened_by,
    } = *a;
    let mut entry = EVENTS.reserve::<FlowEvent>(0)?;
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved, exclusively ours record of the right size.
    unsafe {
        (*e).ts_ns = now;
        (*e).key = *key;
        (*e).ifindex = ifindex;
        (*e).gen = gen;
        (*e).bytes = pkt.bytes as u32;
        (*e).tcp_flags = pkt.tcp_flags;
        (*e).opener = opened_by;
        (*e)._pad = [0; 1];
        match prev {
            Some(p) => {
                (*e).kind = event_kind::ROTATED;
                (*e).prev = *p;
            }
            None => {
                (*e).kind = event_kind::NEW;
                core::ptr::write_bytes(addr_of_mut!((*e).prev), 0, 1);
            }
        }
    }
    entry.submit(0);
    Some(())
}

/// Adds one packet to the entry's current connection.
///
/// # Safety
/// As [`hit`].
#[inline(always)]
unsafe fn add(v: *mut FlowValue, dir: usize, pkt: &Packet) {
    // SAFETY: per the caller. Constant indices only (see `track`).
    unsafe {
        let f = if dir == 0 {
            atomic_add(addr_of_mut!((*v).packets[0]), pkt.segs as u64);
            atomic_add(addr_of_mut!((*v).bytes[0]), pkt.bytes);
            pkt.tcp_flags as u64
        } else {
            atomic_add(addr_of_mut!((*v).packets[1]), pkt.segs as u64);
            atomic_add(addr_of_mut!((*v).bytes[1]), pkt.bytes);
            (pkt.tcp_flags as u64) << 8
        };
        // Flags rarely change after the handshake: read before the atomic.
        if read_volatile(addr_of!((*v).tcp_flags)) & f != f {
            atomic_or(addr_of_mut!((*v).tcp_flags), f);
        }
        // bpf_jiffies64 is inlined by the verifier (a load of jiffies_64);
        // the entry's line is written only when the tick moved.
        let j = bpf_jiffies64();
        if read_volatile(addr_of!((*v).last_jiffies)) != j {
            write_volatile(addr_of_mut!((*v).last_jiffies), j);
        }
    }
}

/// Which end opened the connection, judged from its first packet seen.
#[inline(always)]
fn opener_of(pkt: &Packet, dir: usize) -> u8 {
    // The packet travels lo → hi when dir == 0.
    let (sender, receiver) = if dir == 0 {
        (opener::LO, opener::HI)
    } else {
        (opener::HI, opener::LO)
    };
    if pkt.proto != proto::TCP {
        // An ICMP error stands for the packet it quotes, sent by its
        // receiver.
        return if pkt.related != 0 { receiver } else { sender };
    }
    let syn_ack = pkt.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK);
    if syn_ack == tcp_flags::SYN {
        sender
    } else if syn_ack == tcp_flags::SYN | tcp_flags::ACK {
        receiver
    } else if pkt.sport < pkt.dport {
        // Mid-stream: the lower port is taken for the server's.
        if receiver == opener::LO {
            opener::LO_INFERRED
        } else {
            opener::HI_INFERRED
        }
    } else if sender == opener::LO {
        opener::LO_INFERRED
    } else {
        opener::HI_INFERRED
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic path;
    // nothing here is reachable at run time.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
