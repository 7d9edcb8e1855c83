//! Protocols, port ranges and connection sets.
//!
//! A NetworkPolicy port entry is a protocol plus a port number, a port name
//! or a range (`port`..=`endPort`). The per-query path never builds sets: it
//! asks [`PortRange::contains`]. The connectivity listing (`netpol matrix`)
//! needs whole sets per endpoint pair, so [`ConnSet`] keeps, per protocol, a
//! sorted list of disjoint inclusive ranges.

use std::fmt;
use std::str::FromStr;

use crate::l4::L4;

/// An IP protocol as NetworkPolicy sees it.
///
/// NetworkPolicy ports name only TCP, UDP and SCTP ("The protocol (TCP, UDP,
/// or SCTP) which traffic must match. If not specified, this field defaults
/// to TCP." — NetworkPolicyPort, API reference). Any other protocol (ICMP...)
/// is matched only by rules that list no ports at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// Any other IP protocol, by IANA number.
    Other(u8),
}

impl Protocol {
    /// The three protocols a NetworkPolicy port can name, in display order
    /// (alphabetical, as the conformance suite prints them).
    pub const PORT_PROTOCOLS: [Protocol; 3] = [Protocol::Sctp, Protocol::Tcp, Protocol::Udp];

    pub fn as_str(self) -> std::borrow::Cow<'static, str> {
        match self {
            Protocol::Tcp => "TCP".into(),
            Protocol::Udp => "UDP".into(),
            Protocol::Sctp => "SCTP".into(),
            Protocol::Other(1) => "ICMP".into(),
            Protocol::Other(58) => "ICMPv6".into(),
            Protocol::Other(n) => n.to_string().into(),
        }
    }

    /// Parses a NetworkPolicy `protocol` field: exactly `TCP`, `UDP` or
    /// `SCTP` (the API server rejects anything else, case included).
    pub fn from_policy_field(s: &str) -> Option<Protocol> {
        L4::parse(s).map(Protocol::from)
    }
}

impl From<L4> for Protocol {
    fn from(l4: L4) -> Protocol {
        match l4 {
            L4::Tcp => Protocol::Tcp,
            L4::Udp => Protocol::Udp,
            L4::Sctp => Protocol::Sctp,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// Error for a protocol name in a query or flow.
#[derive(Debug, thiserror::Error)]
#[error("unknown protocol {0:?} (expected TCP, UDP, SCTP, ICMP, ICMPv6 or a protocol number)")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Lenient for queries and flow reports: case-insensitive names, or the
    /// IANA protocol number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" | "6" => Ok(Protocol::Tcp),
            "UDP" | "17" => Ok(Protocol::Udp),
            "SCTP" | "132" => Ok(Protocol::Sctp),
            "ICMP" => Ok(Protocol::Other(1)),
            "ICMPV6" => Ok(Protocol::Other(58)),
            other => other
                .parse::<u8>()
                .map(Protocol::Other)
                .map_err(|_| UnknownProtocol(s.to_string())),
        }
    }
}

/// An inclusive port range, `lo <= hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// Every port a rule without a port number means. Port 0 is not a port a
    /// connection can use, so the full range starts at 1 (as the conformance
    /// suite and the API's endPort validation count).
    pub const ALL: PortRange = PortRange { lo: 1, hi: 65535 };

    pub fn single(p: u16) -> Self {
        PortRange { lo: p, hi: p }
    }

    pub fn new(lo: u16, hi: u16) -> Option<Self> {
        (lo <= hi).then_some(PortRange { lo, hi })
    }

    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A set of ports: sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    ranges: Vec<PortRange>,
}

impl PortSet {
    pub fn empty() -> Self {
        PortSet { ranges: Vec::new() }
    }

    pub fn all() -> Self {
        PortSet {
            ranges: vec![PortRange::ALL],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn is_all(&self) -> bool {
        self.ranges == [PortRange::ALL]
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.ranges
    }

    pub fn contains(&self, port: u16) -> bool {
        // Ranges are sorted: binary search for the last range starting <= port.
        let i = self.ranges.partition_point(|r| r.lo <= port);
        i > 0 && self.ranges[i - 1].hi >= port
    }

    /// Adds a range, keeping the ranges sorted, disjoint and merged when they
    /// touch (8080 and 8081 become 8080-8081).
    pub fn insert(&mut self, r: PortRange) {
        let mut lo = r.lo;
        let mut hi = r.hi;
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for &cur in &self.ranges {
            if (cur.hi as u32) + 1 < lo as u32 {
                out.push(cur);
            } else if (hi as u32) + 1 < cur.lo as u32 {
                if !placed {
                    out.push(PortRange { lo, hi });
                    placed = true;
                }
                out.push(cur);
            } else {
                lo = lo.min(cur.lo);
                hi = hi.max(cur.hi);
            }
        }
        if !placed {
            out.push(PortRange { lo, hi });
        }
        self.ranges = out;
    }

    pub fn union(&mut self, other: &PortSet) {
        for &r in &other.ranges {
            self.insert(r);
        }
    }

    pub fn intersection(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let a = self.ranges[i];
            let b = other.ranges[j];
            let lo = a.lo.max(b.lo);
            let hi = a.hi.min(b.hi);
            if lo <= hi {
                out.push(PortRange { lo, hi });
            }
            if a.hi < b.hi {
                i += 1;
            } else {
                j += 1;
            }
        }
        PortSet { ranges: out }
    }
}

impl PortSet {
    /// Every port (1-65535) not in the set.
    pub fn complement(&self) -> PortSet {
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut next: u32 = PortRange::ALL.lo as u32;
        for r in &self.ranges {
            if (r.lo as u32) > next {
                out.push(PortRange {
                    lo: next as u16,
                    hi: r.lo - 1,
                });
            }
            next = next.max(r.hi as u32 + 1);
        }
        if next <= PortRange::ALL.hi as u32 {
            out.push(PortRange {
                lo: next as u16,
                hi: PortRange::ALL.hi,
            });
        }
        PortSet { ranges: out }
    }

    /// The ports in `self` and not in `other`.
    pub fn difference(&self, other: &PortSet) -> PortSet {
        if other.is_empty() {
            return self.clone();
        }
        self.intersection(&other.complement())
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The connections allowed between two endpoints: ports per port protocol,
/// plus whether protocols without ports (ICMP...) pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnSet {
    pub tcp: PortSet,
    pub udp: PortSet,
    pub sctp: PortSet,
    /// Protocols other than TCP/UDP/SCTP: allowed only by a rule without
    /// `ports` (or when the direction is not isolated).
    pub other: bool,
}

impl ConnSet {
    pub fn all() -> Self {
        ConnSet {
            tcp: PortSet::all(),
            udp: PortSet::all(),
            sctp: PortSet::all(),
            other: true,
        }
    }

    pub fn empty() -> Self {
        ConnSet::default()
    }

    pub fn is_all(&self) -> bool {
        self.other && self.tcp.is_all() && self.udp.is_all() && self.sctp.is_all()
    }

    pub fn is_empty(&self) -> bool {
        !self.other && self.tcp.is_empty() && self.udp.is_empty() && self.sctp.is_empty()
    }

    pub fn ports(&self, p: Protocol) -> Option<&PortSet> {
        match p {
            Protocol::Tcp => Some(&self.tcp),
            Protocol::Udp => Some(&self.udp),
            Protocol::Sctp => Some(&self.sctp),
            Protocol::Other(_) => None,
        }
    }

    fn ports_mut(&mut self, p: Protocol) -> Option<&mut PortSet> {
        match p {
            Protocol::Tcp => Some(&mut self.tcp),
            Protocol::Udp => Some(&mut self.udp),
            Protocol::Sctp => Some(&mut self.sctp),
            Protocol::Other(_) => None,
        }
    }

    pub fn insert(&mut self, p: Protocol, r: PortRange) {
        if let Some(set) = self.ports_mut(p) {
            set.insert(r);
        }
    }

    pub fn contains(&self, p: Protocol, port: u16) -> bool {
        match self.ports(p) {
            Some(set) => set.contains(port),
            None => self.other,
        }
    }

    pub fn union(&mut self, other: &ConnSet) {
        self.tcp.union(&other.tcp);
        self.udp.union(&other.udp);
        self.sctp.union(&other.sctp);
        self.other |= other.other;
    }

    /// The connections in `self` and not in `other`.
    pub fn difference(&self, other: &ConnSet) -> ConnSet {
        ConnSet {
            tcp: self.tcp.difference(&other.tcp),
            udp: self.udp.difference(&other.udp),
            sctp: self.sctp.difference(&other.sctp),
            other: self.other && !other.other,
        }
    }

    pub fn intersection(&self, other: &ConnSet) -> ConnSet {
        ConnSet {
            tcp: self.tcp.intersection(&other.tcp),
            udp: self.udp.intersection(&other.udp),
            sctp: self.sctp.intersection(&other.sctp),
            other: self.other && other.other,
        }
    }
}

/// The conformance suite's notation: `All Connections`, `No Connections`, or
/// per protocol in alphabetical order `PROTO ports` joined by commas, e.g.
/// `SCTP 7070,TCP 8080-8081,UDP 9090`. The notation knows only the three
/// port protocols: every port of TCP, UDP and SCTP is `All Connections`
/// even when portless protocols (ICMP) are not allowed.
impl fmt::Display for ConnSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tcp.is_all() && self.udp.is_all() && self.sctp.is_all() {
            return f.write_str("All Connections");
        }
        if self.is_empty() {
            return f.write_str("No Connections");
        }
        let mut first = true;
        for p in Protocol::PORT_PROTOCOLS {
            let Some(set) = self.ports(p) else { continue };
            if set.is_empty() {
                continue;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{p} {set}")?;
        }
        if self.other && first {
            f.write_str("other protocols")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ranges: &[(u16, u16)]) -> PortSet {
        let mut s = PortSet::empty();
        for &(lo, hi) in ranges {
            s.insert(PortRange::new(lo, hi).expect("test ranges are ordered"));
        }
        s
    }

    #[test]
    fn insert_merges_adjacent_and_overlapping() {
        let s = set(&[(8080, 8080), (8081, 8081), (10, 20), (15, 30), (100, 100)]);
        assert_eq!(
            s.to_string(),
            "10-30,100,8080-8081",
            "adjacent/overlapping ranges merge, sorted"
        );
    }

    #[test]
    fn display_of_conn_sets() {
        let mut c = ConnSet::empty();
        assert_eq!(c.to_string(), "No Connections");
        c.insert(Protocol::Udp, PortRange::single(9090));
        c.insert(Protocol::Tcp, PortRange::new(8080, 8081).unwrap());
        c.insert(Protocol::Sctp, PortRange::single(7070));
        assert_eq!(c.to_string(), "SCTP 7070,TCP 8080-8081,UDP 9090");
        assert_eq!(ConnSet::all().to_string(), "All Connections");
    }

    #[test]
    fn protocol_parsing() {
        assert_eq!("tcp".parse::<Protocol>().unwrap(), Protocol::Tcp);
        assert_eq!("ICMP".parse::<Protocol>().unwrap(), Protocol::Other(1));
        assert_eq!("47".parse::<Protocol>().unwrap(), Protocol::Other(47));
        assert!("bogus".parse::<Protocol>().is_err());
        assert_eq!(
            Protocol::from_policy_field("tcp"),
            None,
            "the API accepts only upper case"
        );
    }

    fn arb_ranges() -> impl Strategy<Value = Vec<(u16, u16)>> {
        prop::collection::vec((1u16..=65535, 0u16..300), 0..8).prop_map(|v| {
            v.into_iter()
                .map(|(lo, len)| (lo, lo.saturating_add(len)))
                .collect()
        })
    }

    proptest! {
        /// A port is in the set iff it is in one of the inserted ranges, and
        /// the representation stays canonical (sorted, disjoint, non-adjacent).
        #[test]
        fn portset_membership_matches_ranges(ranges in arb_ranges(), probes in prop::collection::vec(0u16..=65535, 32)) {
            let s = set(&ranges);
            for w in s.ranges().windows(2) {
                prop_assert!((w[0].hi as u32) + 1 < w[1].lo as u32, "ranges must be disjoint and non-adjacent: {s}");
            }
            for p in probes.iter().copied().chain(ranges.iter().flat_map(|&(lo, hi)| [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)])) {
                let expected = ranges.iter().any(|&(lo, hi)| lo <= p && p <= hi);
                prop_assert_eq!(s.contains(p), expected, "port {} in {}", p, s);
            }
        }

        #[test]
        fn portset_intersection_is_pointwise_and(a in arb_ranges(), b in arb_ranges(), probes in prop::collection::vec(0u16..=65535, 64)) {
            let (sa, sb) = (set(&a), set(&b));
            let both = sa.intersection(&sb);
            let edges: Vec<u16> = a.iter().chain(b.iter()).flat_map(|&(lo, hi)| [lo, hi, hi.wrapping_add(1)]).collect();
            for p in probes.into_iter().chain(edges) {
                prop_assert_eq!(both.contains(p), sa.contains(p) && sb.contains(p), "port {}", p);
            }
        }

        #[test]
        fn portset_difference_is_pointwise_and_not(a in arb_ranges(), b in arb_ranges(), probes in prop::collection::vec(1u16..=65535, 64)) {
            let (sa, sb) = (set(&a), set(&b));
            let d = sa.difference(&sb);
            let edges: Vec<u16> = a.iter().chain(b.iter()).flat_map(|&(lo, hi)| [lo, hi, hi.saturating_add(1), lo.saturating_sub(1).max(1)]).collect();
            for p in probes.into_iter().chain(edges) {
                prop_assert_eq!(d.contains(p), sa.contains(p) && !sb.contains(p), "port {}", p);
            }
        }

        #[test]
        fn portset_union_is_pointwise_or(a in arb_ranges(), b in arb_ranges(), probes in prop::collection::vec(0u16..=65535, 64)) {
            let (sa, sb) = (set(&a), set(&b));
            let mut u = sa.clone();
            u.union(&sb);
            for p in probes {
                prop_assert_eq!(u.contains(p), sa.contains(p) || sb.contains(p), "port {}", p);
            }
        }
    }
}
