//! From kernel table entries to flow reports: which connections ended, which
//! are due for an active-timeout report, which entries are the same
//! connection seen on a second interface. Pure: the daemon feeds it
//! snapshots and the clock; tests feed it made-up entries.
//!
//! ```text
//!  snapshot (one entry per tuple: its current connection = generation)
//!     │ per (tuple, generation): ended? (FIN both ways / RST, after a
//!     │ linger; or idle)   due? (active timeout)
//!     ▼
//!  RawReport (delta since the last report) + keys to remove from the kernel
//!  removed(taken)  ─► final reports from what the removal returned
//!  handed_over(ev) ─► final report of a connection a SYN replaced (kernel event)
//! ```

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use monitor_common::{opener, proto, tcp_flags, FlowKey, FlowStats, IP_V4};

use crate::datapath::Entry;
pub use crate::report::ConnKey;
use crate::report::{Counts, Endpoint, FlowReport, IcmpInfo, OpenerSource, TcpInfo, TcpState};

/// Timeouts, in nanoseconds of the kernel's monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A connection with no packet for this long ends.
    pub idle_ns: u64,
    /// A connection that goes on is reported again after this long.
    pub active_ns: u64,
    /// A TCP connection closed by FIN/RST ends once quiet for this long
    /// (so the last ACKs land in its report, not in a new flow).
    pub closed_linger_ns: u64,
}

/// What a sweep produced: reports of running connections, and kernel
/// entries to remove (their connections ended; [`Tracker::removed`] reports
/// them from what the removal returned).
#[derive(Debug, Default)]
pub struct SweepOutput {
    pub reports: Vec<RawReport>,
    pub remove: Vec<FlowKey>,
    /// Connections newly found on a second interface of this node.
    pub new_duplicates: u64,
}

/// One report before attribution: the key (with the interface that counted
/// it), the counts of the reported interval, and whether the connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawReport {
    pub key: FlowKey,
    /// Cumulative stats of the connection (flags, opener, times).
    pub stats: FlowStats,
    /// Packets and bytes of this interval, per canonical direction.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Monotonic ns of the interval's start and end.
    pub start_ns: u64,
    pub end_ns: u64,
    pub ended: bool,
    /// The connection's generation on its 5-tuple: two connections on one
    /// tuple (client port reuse) have different ones (see
    /// `monitor_common::FlowValue`).
    pub generation: u32,
    /// The connection's first report (later ones follow active timeouts).
    pub first: bool,
}

/// One connection: a tuple and its generation.
pub type ConnId = (ConnKey, u32);

/// Bits of [`ConnState::flags`].
mod flag {
    /// A report was made already.
    pub const REPORTED: u8 = 1;
    /// The connection's second interface was counted.
    pub const DUPLICATE_COUNTED: u8 = 2;
    /// In the snapshot of the sweep running now.
    pub const SEEN: u8 = 4;
}

/// What is kept per connection between sweeps: 56 bytes, next to its
/// 40-byte tuple in [`Tracker`]'s map (the tuple is stored once; the
/// interface and the counts of the last snapshot are not kept: each sweep
/// brings them).
#[derive(Clone, Copy, Debug)]
struct ConnState {
    /// Cumulative counts at the last report.
    packets: [u64; 2],
    bytes: [u64; 2],
    /// When the last report was made (monotonic ns), or the first packet.
    last_report_ns: u64,
    /// End of the last reported interval (start of the next).
    next_start_ns: u64,
    /// The connection's generation on its tuple.
    gen: u32,
    /// [`flag`] bits.
    flags: u8,
}

impl ConnState {
    fn new(e: &Entry) -> Self {
        ConnState {
            packets: [0; 2],
            bytes: [0; 2],
            last_report_ns: e.stats.first_ns,
            next_start_ns: e.stats.first_ns,
            gen: e.gen,
            flags: 0,
        }
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// The report of what `stats` holds beyond the last report, if anything.
    fn report(
        &mut self,
        key: FlowKey,
        stats: &FlowStats,
        now: u64,
        ended: bool,
    ) -> Option<RawReport> {
        let packets = [
            stats.packets[0].saturating_sub(self.packets[0]),
            stats.packets[1].saturating_sub(self.packets[1]),
        ];
        let bytes = [
            stats.bytes[0].saturating_sub(self.bytes[0]),
            stats.bytes[1].saturating_sub(self.bytes[1]),
        ];
        if packets[0] + packets[1] == 0 {
            return None;
        }
        let r = RawReport {
            key,
            stats: *stats,
            packets,
            bytes,
            start_ns: self.next_start_ns.max(stats.first_ns),
            end_ns: stats.last_ns,
            ended,
            generation: self.gen,
            first: !self.has(flag::REPORTED),
        };
        self.packets = stats.packets;
        self.bytes = stats.bytes;
        self.last_report_ns = now;
        self.next_start_ns = stats.last_ns;
        self.flags |= flag::REPORTED;
        Some(r)
    }
}

/// A connection whose tuple a newer connection took: it waits for the
/// kernel's hand-over event (its final totals).
#[derive(Clone, Copy, Debug)]
struct Awaiting {
    state: ConnState,
    /// Monotonic ns since it waits.
    since: u64,
}

/// Tracks what has been reported of each open connection.
///
/// Memory: one [`HashMap`] entry per tuple in the kernel table (the
/// tuple's current connection: 96 bytes and a control byte, in a table
/// between half and 7/8 full), plus the rare connections that wait for a
/// hand-over. A sweep visits the kernel's entries one at a time
/// ([`Sweep::visit`]): nothing is sized by the table per sweep.
#[derive(Debug)]
pub struct Tracker {
    timeouts: Timeouts,
    /// The current connection of each tuple of the last snapshot.
    conns: HashMap<ConnKey, ConnState>,
    /// Older connections of a tuple, waiting for their hand-over.
    older: BTreeMap<ConnId, Awaiting>,
    /// Ended in the last sweep, removal pending: the snapshot's entry.
    ending: HashMap<ConnKey, Entry>,
}

/// One pass over the kernel table in progress (see [`Tracker::start`]).
pub struct Sweep<'a> {
    tracker: &'a mut Tracker,
    now: u64,
    shutdown: bool,
    out: SweepOutput,
    /// Entries visited.
    visited: usize,
}

impl Sweep<'_> {
    /// One entry of the kernel table (each tuple at most once per sweep).
    pub fn visit(&mut self, e: &Entry) {
        self.visited += 1;
        let t = &mut *self.tracker;
        let ck = ConnKey::from(&e.key);
        let st = match t.conns.entry(ck) {
            MapEntry::Occupied(o) => {
                let st = o.into_mut();
                if st.gen != e.gen {
                    // A newer connection took the tuple: the one tracked
                    // waits for its hand-over (or is the one waiting).
                    let next = match t.older.remove(&(ck, e.gen)) {
                        Some(a) => a.state,
                        None => ConnState::new(e),
                    };
                    let prev = std::mem::replace(st, next);
                    t.older.insert(
                        (ck, prev.gen),
                        Awaiting {
                            state: prev,
                            since: self.now,
                        },
                    );
                }
                st
            }
            MapEntry::Vacant(v) => v.insert(match t.older.remove(&(ck, e.gen)) {
                Some(a) => a.state,
                None => ConnState::new(e),
            }),
        };
        st.flags |= flag::SEEN;
        if e.second_if && !st.has(flag::DUPLICATE_COUNTED) {
            st.flags |= flag::DUPLICATE_COUNTED;
            self.out.new_duplicates += 1;
        }
        let now = self.now;
        let quiet = now.saturating_sub(e.stats.last_ns);
        let closed = ck.proto == proto::TCP && tcp_closed(&e.stats);
        let ended = quiet >= t.timeouts.idle_ns || (closed && quiet >= t.timeouts.closed_linger_ns);
        if ended && !self.shutdown {
            self.out.remove.push(e.key);
            t.ending.insert(ck, *e);
            return;
        }
        let due = now.saturating_sub(st.last_report_ns) >= t.timeouts.active_ns;
        if due || self.shutdown {
            if let Some(r) = st.report(e.key, &e.stats, now, ended) {
                self.out.reports.push(r);
            } else if due {
                st.last_report_ns = now;
            }
        }
    }

    /// Entries visited so far.
    pub fn visited(&self) -> usize {
        self.visited
    }

    /// Ends the pass. With `complete` (every entry of the table was
    /// visited), connections not visited are forgotten: either a newer
    /// connection took the tuple (the kernel's hand-over event brings the
    /// final totals; if that event was lost the kernel counted it, and
    /// the state goes after the idle timeout), or the entry vanished (its
    /// interface was deleted): nothing more to report. After a partial
    /// pass (the table could not be read to the end) nothing is forgotten.
    pub fn finish(self, complete: bool) -> SweepOutput {
        let t = self.tracker;
        let now = self.now;
        let idle = t.timeouts.idle_ns;
        if complete {
            t.conns.retain(|_, st| {
                let seen = st.has(flag::SEEN);
                st.flags &= !flag::SEEN;
                seen
            });
            let conns = &t.conns;
            t.older
                .retain(|(ck, _), a| conns.contains_key(ck) && now.saturating_sub(a.since) < idle);
        } else {
            for st in t.conns.values_mut() {
                st.flags &= !flag::SEEN;
            }
        }
        shrink(&mut t.conns);
        self.out
    }
}

/// Gives memory back after a burst: a table less than a quarter full is
/// cut to twice what it holds.
fn shrink<K: Eq + std::hash::Hash, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 4096 && m.len() < m.capacity() / 4 {
        m.shrink_to(m.len() * 2);
    }
}

impl Tracker {
    pub fn new(timeouts: Timeouts) -> Self {
        Tracker {
            timeouts,
            conns: HashMap::new(),
            older: BTreeMap::new(),
            ending: HashMap::new(),
        }
    }

    /// Connections currently tracked.
    pub fn open(&self) -> usize {
        self.conns.len() + self.older.len()
    }

    /// Is this connection (tuple and generation) still tracked?
    pub fn tracks(&self, id: &ConnId) -> bool {
        self.conns.get(&id.0).is_some_and(|st| st.gen == id.1) || self.older.contains_key(id)
    }

    /// Is a connection on this tuple tracked?
    pub fn tracks_tuple(&self, ck: &ConnKey) -> bool {
        self.conns.contains_key(ck)
            || self
                .older
                .range((*ck, 0)..=(*ck, u32::MAX))
                .next()
                .is_some()
    }

    /// Starts one pass over the kernel table at monotonic time `now`:
    /// [`Sweep::visit`] each entry, then [`Sweep::finish`]. Running
    /// connections due for a report are reported; ended ones are listed in
    /// `remove` and reported by [`Tracker::removed`]. With `shutdown`,
    /// every open connection is reported (as not ended unless it did end)
    /// and nothing is removed.
    pub fn start(&mut self, now: u64, shutdown: bool) -> Sweep<'_> {
        Sweep {
            tracker: self,
            now,
            shutdown,
            out: SweepOutput::default(),
            visited: 0,
        }
    }

    /// One pass over a whole snapshot (see [`Tracker::start`]).
    pub fn sweep(&mut self, entries: &[Entry], now: u64, shutdown: bool) -> SweepOutput {
        let mut s = self.start(now, shutdown);
        for e in entries {
            s.visit(e);
        }
        s.finish(true)
    }

    /// Takes the state of connection `(ck, gen)` out of the tracker.
    fn take_state(&mut self, ck: &ConnKey, gen: u32) -> Option<ConnState> {
        match self.conns.get(ck) {
            Some(st) if st.gen == gen => self.conns.remove(ck),
            _ => self.older.remove(&(*ck, gen)).map(|a| a.state),
        }
    }

    /// The entries [`SweepOutput::remove`] listed, as the kernel returned
    /// them when removing (everything counted up to that instant): one final
    /// report per ended connection.
    pub fn removed(&mut self, taken: &[Entry], now: u64) -> Vec<RawReport> {
        let mut out = Vec::new();
        let mut done: HashSet<ConnKey> = HashSet::new();
        for t in taken {
            let ck = ConnKey::from(&t.key);
            done.insert(ck);
            let Some(snap) = self.ending.remove(&ck) else {
                continue;
            };
            if t.gen == snap.gen {
                if let Some(mut st) = self.take_state(&ck, t.gen) {
                    out.extend(st.report(t.key, &t.stats, now, true));
                }
            } else {
                // A SYN rotated the entry between the snapshot and the
                // removal: the old connection's final totals come with the
                // hand-over event (its state waits for it); the new one is
                // reported with what it had.
                if let Some(state) = self.take_state(&ck, snap.gen) {
                    self.older
                        .insert((ck, snap.gen), Awaiting { state, since: now });
                }
                let mut st = ConnState::new(t);
                out.extend(st.report(t.key, &t.stats, now, false));
            }
        }
        // Already gone from the kernel (or torn at that instant): what the
        // snapshot said is final.
        for (ck, snap) in std::mem::take(&mut self.ending) {
            if done.contains(&ck) {
                continue;
            }
            if let Some(mut st) = self.take_state(&ck, snap.gen) {
                out.extend(st.report(snap.key, &snap.stats, now, true));
            }
        }
        shrink(&mut self.conns);
        out
    }

    /// The kernel handed over a tuple to a new connection: `prev` are the
    /// final totals of the connection of generation `gen` that ended. One
    /// final report of what was not reported yet.
    pub fn handed_over(
        &mut self,
        key: FlowKey,
        gen: u32,
        prev: &FlowStats,
        now: u64,
    ) -> Option<RawReport> {
        let ck = ConnKey::from(&key);
        let mut st = self.take_state(&ck, gen).unwrap_or_else(|| {
            ConnState::new(&Entry {
                key,
                stats: *prev,
                gen,
                second_if: false,
            })
        });
        st.report(key, prev, now, true)
    }
}

/// FIN seen in both directions, or RST in either: the connection is over.
fn tcp_closed(s: &FlowStats) -> bool {
    let fin_both = s.tcp_flags[0] & tcp_flags::FIN != 0 && s.tcp_flags[1] & tcp_flags::FIN != 0;
    let rst = (s.tcp_flags[0] | s.tcp_flags[1]) & tcp_flags::RST != 0;
    fin_both || rst
}

/// IP address of one end of a key.
pub fn addr(words: &[u32; 4], ip_version: u8) -> IpAddr {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if ip_version == IP_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        let mut b = [0u8; 16];
        b.copy_from_slice(&bytes);
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// Protocol name as the flow log spells it.
pub fn protocol_name(p: u8) -> String {
    match p {
        proto::TCP => "TCP".into(),
        proto::UDP => "UDP".into(),
        proto::ICMP => "ICMP".into(),
        proto::ICMPV6 => "ICMPv6".into(),
        proto::SCTP => "SCTP".into(),
        n => n.to_string(),
    }
}

/// TCP flag names in header bit order.
pub fn flag_names(flags: u8) -> Vec<String> {
    const NAMES: [(u8, &str); 8] = [
        (tcp_flags::FIN, "FIN"),
        (tcp_flags::SYN, "SYN"),
        (tcp_flags::RST, "RST"),
        (tcp_flags::PSH, "PSH"),
        (tcp_flags::ACK, "ACK"),
        (tcp_flags::URG, "URG"),
        (tcp_flags::ECE, "ECE"),
        (tcp_flags::CWR, "CWR"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// What the handshake says, from the opener's and the responder's flags.
pub fn tcp_state(opener_flags: u8, responder_flags: u8, inferred: bool) -> TcpState {
    let any = opener_flags | responder_flags;
    let ended = any & (tcp_flags::FIN | tcp_flags::RST) != 0;
    let answered =
        responder_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN | tcp_flags::ACK;
    if answered || (inferred && responder_flags & tcp_flags::ACK != 0) {
        if ended {
            TcpState::Closed
        } else {
            TcpState::Established
        }
    } else if responder_flags & tcp_flags::RST != 0 {
        TcpState::Rejected
    } else if opener_flags & tcp_flags::SYN != 0 || !inferred {
        TcpState::Attempted
    } else if ended {
        TcpState::Closed
    } else {
        TcpState::Established
    }
}

/// The opener end of a key: `true` when the `lo` end opened, and whether it
/// was observed or inferred.
pub fn opener_of(stats: &FlowStats) -> (bool, OpenerSource) {
    match stats.opener {
        opener::LO => (true, OpenerSource::Observed),
        opener::HI => (false, OpenerSource::Observed),
        opener::HI_INFERRED => (false, OpenerSource::Inferred),
        _ => (true, OpenerSource::Inferred),
    }
}

/// Turns a raw report into the contract's flow report (identity fields not
/// yet filled): `src` is the opener. `to_wall` maps monotonic ns to time.
pub fn to_report(
    raw: &RawReport,
    interface: &str,
    now: chrono::DateTime<chrono::Utc>,
    to_wall: impl Fn(u64) -> chrono::DateTime<chrono::Utc>,
) -> FlowReport {
    let k = &raw.key;
    let (lo_opened, source) = opener_of(&raw.stats);
    let (s, d) = if lo_opened { (0usize, 1usize) } else { (1, 0) };
    let lo = addr(&k.addr_lo, k.ip_version);
    let hi = addr(&k.addr_hi, k.ip_version);
    let (src_ip, dst_ip, sport, dport) = if lo_opened {
        (lo, hi, k.port_lo, k.port_hi)
    } else {
        (hi, lo, k.port_hi, k.port_lo)
    };
    let has_ports =
        matches!(k.proto, proto::TCP | proto::UDP | proto::SCTP) && (sport, dport) != (0, 0);
    let mut report = FlowReport {
        time: now,
        start: to_wall(raw.start_ns),
        end: to_wall(raw.end_ns),
        interface: interface.to_string(),
        protocol: protocol_name(k.proto),
        ip_version: k.ip_version,
        src: Endpoint::bare(src_ip, has_ports.then_some(sport)),
        dst: Endpoint::bare(dst_ip, has_ports.then_some(dport)),
        packets: Counts {
            sent: raw.packets[s],
            received: raw.packets[d],
        },
        bytes: Counts {
            sent: raw.bytes[s],
            received: raw.bytes[d],
        },
        opener: Some(source),
        ended: raw.ended,
        ..FlowReport::default()
    };
    if k.proto == proto::TCP {
        let (fo, fr) = (raw.stats.tcp_flags[s], raw.stats.tcp_flags[d]);
        report.tcp = Some(TcpInfo {
            flags: flag_names(fo | fr),
            state: tcp_state(fo, fr, source == OpenerSource::Inferred),
        });
    }
    if matches!(k.proto, proto::ICMP | proto::ICMPV6) {
        let echo_id = k.port_lo == k.port_hi;
        // Echo flows carry the identifier in both port slots; others the
        // type and code of the first message.
        let (ty, code) = if echo_id {
            (if k.proto == proto::ICMP { 8 } else { 128 }, None)
        } else {
            let (t, c) = if lo_opened {
                (k.port_lo, k.port_hi)
            } else {
                (k.port_hi, k.port_lo)
            };
            (t as u8, Some(c as u8))
        };
        report.icmp = Some(IcmpInfo {
            icmp_type: ty,
            code,
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn timeouts() -> Timeouts {
        Timeouts {
            idle_ns: 30 * S,
            active_ns: 60 * S,
            closed_linger_ns: S,
        }
    }

    fn key(ifindex: u32, proto: u8) -> FlowKey {
        FlowKey {
            addr_lo: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            addr_hi: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            port_lo: 40000,
            port_hi: 80,
            ifindex,
            proto,
            ip_version: 4,
            _pad: [0; 2],
        }
    }

    fn stats(p: [u64; 2], first: u64, last: u64, flags: [u8; 2], op: u8) -> FlowStats {
        FlowStats {
            packets: p,
            bytes: [p[0] * 100, p[1] * 100],
            first_ns: first,
            last_ns: last,
            tcp_flags: flags,
            opener: op,
            _pad: [0; 5],
        }
    }

    fn entry(key: FlowKey, stats: FlowStats, gen: u32) -> Entry {
        Entry {
            key,
            stats,
            gen,
            second_if: false,
        }
    }

    #[test]
    fn a_closed_tcp_connection_ends_after_the_linger_with_what_the_removal_returned() {
        let mut t = Tracker::new(timeouts());
        let e = entry(
            key(7, proto::TCP),
            stats([5, 4], S, 2 * S, [0x13, 0x13], opener::LO),
            1,
        );
        let out = t.sweep(&[e], 2 * S + S / 2, false);
        assert!(
            out.reports.is_empty() && out.remove.is_empty(),
            "still inside the linger"
        );
        let out = t.sweep(&[e], 3 * S + 1, false);
        assert!(
            out.reports.is_empty(),
            "ended connections are reported from the removal"
        );
        assert_eq!(
            out.remove,
            vec![e.key],
            "an ended connection leaves the kernel table"
        );
        // A last ACK arrived between the snapshot and the removal.
        let taken = entry(e.key, stats([6, 4], S, 3 * S, [0x13, 0x13], opener::LO), 1);
        let finals = t.removed(&[taken], 3 * S + 2);
        assert_eq!(finals.len(), 1);
        assert!(finals[0].ended && finals[0].first);
        assert_eq!(
            finals[0].packets,
            [6, 4],
            "nothing lost between snapshot and removal"
        );
        assert_eq!(t.open(), 0);
    }

    #[test]
    fn a_long_flow_is_reported_per_active_interval_with_deltas() {
        let mut t = Tracker::new(timeouts());
        let k = key(7, proto::UDP);
        let e1 = entry(k, stats([10, 10], S, 59 * S, [0, 0], opener::LO), 3);
        assert!(t.sweep(&[e1], 59 * S, false).reports.is_empty());
        let e2 = entry(k, stats([12, 11], S, 61 * S, [0, 0], opener::LO), 3);
        let out = t.sweep(&[e2], 61 * S + 1, false);
        assert_eq!(out.reports.len(), 1);
        assert_eq!(out.reports[0].packets, [12, 11]);
        assert!(!out.reports[0].ended && out.reports[0].first);
        assert!(
            out.remove.is_empty(),
            "a running flow stays in the kernel table"
        );
        let e3 = entry(k, stats([15, 11], S, 70 * S, [0, 0], opener::LO), 3);
        let out = t.sweep(&[e3], 101 * S, false);
        assert_eq!(out.remove, vec![k], "idle for 31 s: ends");
        let finals = t.removed(&[e3], 101 * S);
        assert_eq!(
            finals[0].packets,
            [3, 0],
            "only what came after the last report"
        );
        assert_eq!(
            finals[0].start_ns,
            61 * S,
            "the interval starts where the last one ended"
        );
        assert!(finals[0].ended && !finals[0].first);
    }

    #[test]
    fn a_connection_also_seen_on_a_second_interface_counts_one_duplicate() {
        let mut t = Tracker::new(timeouts());
        let mut e = entry(
            key(7, proto::TCP),
            stats([3, 3], S, 2 * S, [0x12, 0x12], opener::LO),
            1,
        );
        e.second_if = true;
        assert_eq!(t.sweep(&[e], 3 * S, false).new_duplicates, 1);
        assert_eq!(
            t.sweep(&[e], 4 * S, false).new_duplicates,
            0,
            "once per connection"
        );
    }

    #[test]
    fn shutdown_flushes_open_flows_without_deleting() {
        let mut t = Tracker::new(timeouts());
        let e = entry(
            key(7, proto::UDP),
            stats([1, 0], S, S, [0, 0], opener::LO),
            1,
        );
        let out = t.sweep(&[e], 2 * S, true);
        assert_eq!(out.reports.len(), 1);
        assert!(!out.reports[0].ended, "flushed at shutdown, not ended");
        assert!(out.remove.is_empty());
    }

    #[test]
    fn connections_on_one_tuple_are_reported_apart() {
        let mut t = Tracker::new(timeouts());
        let k = key(7, proto::TCP);
        // Connection 1 is seen by a sweep, reported at an active timeout.
        let c1 = entry(k, stats([4, 3], S, 60 * S, [0x12, 0x12], opener::LO), 10);
        assert_eq!(t.sweep(&[c1], 61 * S, false).reports.len(), 1);
        // A SYN took the tuple: the sweep sees connection 2 only, and the
        // kernel's hand-over brings connection 1's final totals.
        let c2 = entry(k, stats([1, 0], 62 * S, 62 * S, [0x02, 0], opener::LO), 11);
        let out = t.sweep(&[c2], 62 * S + 1, false);
        assert!(out.reports.is_empty() && out.remove.is_empty());
        assert_eq!(t.open(), 2, "connection 1 waits for its hand-over");
        let final1 = stats([6, 3], S, 62 * S, [0x17, 0x12], opener::LO);
        let r = t
            .handed_over(k, 10, &final1, 62 * S + 2)
            .expect("a final report");
        assert_eq!(
            (r.packets, r.generation),
            ([2, 0], 10),
            "only what the last report missed"
        );
        assert!(r.ended && !r.first);
        // Connection 3 came and went between two sweeps: reported whole.
        let final2 = stats([1, 1], 62 * S, 62 * S, [0x02, 0x14], opener::LO);
        let r = t
            .handed_over(k, 11, &final2, 63 * S)
            .expect("a final report");
        assert_eq!((r.packets, r.generation), ([1, 1], 11));
        assert!(r.ended && r.first, "its first and last report");
        assert_eq!(t.open(), 0);
    }

    #[test]
    fn a_table_read_that_fails_part_way_forgets_nothing() {
        let mut t = Tracker::new(timeouts());
        let a = entry(
            key(7, proto::UDP),
            stats([1, 0], S, S, [0, 0], opener::LO),
            1,
        );
        let mut kb = key(7, proto::UDP);
        kb.port_lo = 40001;
        let b = entry(kb, stats([1, 0], S, S, [0, 0], opener::LO), 1);
        t.sweep(&[a, b], 2 * S, false);
        assert_eq!(t.open(), 2);
        // The read stopped after `a`: `b` is still in the table.
        let mut pass = t.start(3 * S, false);
        pass.visit(&a);
        pass.finish(false);
        assert!(
            t.tracks(&(ConnKey::from(&kb), 1)),
            "not visited because the read failed, not because it ended"
        );
        // A complete read without `b`: its entry is gone.
        t.sweep(&[a], 4 * S, false);
        assert_eq!(t.open(), 1);
        assert!(t.tracks_tuple(&ConnKey::from(&a.key)) && !t.tracks_tuple(&ConnKey::from(&kb)));
    }

    #[test]
    fn tcp_states_follow_the_handshake() {
        use tcp_flags::*;
        assert_eq!(tcp_state(SYN, 0, false), TcpState::Attempted);
        assert_eq!(tcp_state(SYN, RST | ACK, false), TcpState::Rejected);
        assert_eq!(
            tcp_state(SYN | ACK, SYN | ACK, false),
            TcpState::Established
        );
        assert_eq!(
            tcp_state(SYN | ACK | FIN, SYN | ACK | FIN, false),
            TcpState::Closed
        );
        assert_eq!(
            tcp_state(ACK, ACK, true),
            TcpState::Established,
            "mid-stream flows were established"
        );
    }

    #[test]
    fn reports_put_the_opener_first() {
        let raw = RawReport {
            key: key(7, proto::TCP),
            stats: stats(
                [2, 3],
                S,
                2 * S,
                [
                    tcp_flags::SYN | tcp_flags::ACK,
                    tcp_flags::SYN | tcp_flags::ACK,
                ],
                opener::HI,
            ),
            packets: [2, 3],
            bytes: [200, 300],
            start_ns: S,
            end_ns: 2 * S,
            ended: true,
            generation: 1,
            first: true,
        };
        let r = to_report(&raw, "veth7", chrono::DateTime::UNIX_EPOCH, |_| {
            chrono::DateTime::UNIX_EPOCH
        });
        assert_eq!(r.src.ip.to_string(), "10.0.0.2", "the hi end opened");
        assert_eq!((r.src.port, r.dst.port), (Some(80), Some(40000)));
        assert_eq!((r.packets.sent, r.packets.received), (3, 2));
        assert_eq!((r.bytes.sent, r.bytes.received), (300, 200));
        assert_eq!(r.tcp.unwrap().state, TcpState::Established);
    }
}
