//! Port specs of SegmentationPolicy rules: `8080/TCP`, `9000-9100/UDP`,
//! `53` (TCP, the Kubernetes default protocol of a port).

use std::fmt;
use std::str::FromStr;

/// The transport protocols a port can belong to: [`crate::l4`]'s.
pub use crate::l4::L4;

/// An inclusive port range of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub proto: L4,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, proto: L4, port: u16) -> bool {
        self.proto == proto && self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}/{}", self.first, self.proto)
        } else {
            write!(f, "{}-{}/{}", self.first, self.last, self.proto)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ports, proto) = match s.split_once('/') {
            Some((p, proto)) => {
                // Written by hand in a policy: any case.
                let Some(proto) = L4::parse(&proto.to_ascii_uppercase()) else {
                    return Err(format!(
                        "`{s}`: protocol must be TCP, UDP or SCTP, not `{proto}`"
                    ));
                };
                (p, proto)
            }
            // Kubernetes ports default to TCP (ContainerPort/ServicePort
            // `protocol` default), so a bare number means the same here.
            None => (s, L4::Tcp),
        };
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!(
                    "`{s}`: `{p}` is not a port (1-65535); write PORT/PROTO or FIRST-LAST/PROTO, e.g. 8080/TCP"
                )),
                Ok(n) => Ok(n),
            }
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("`{s}`: range runs backwards ({first} > {last})"));
        }
        Ok(PortRange { proto, first, last })
    }
}

/// The ports of a rule: `None` = any port (and any protocol, ICMP included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(pub Option<Vec<PortRange>>);

impl PortSet {
    pub const ANY: PortSet = PortSet(None);

    /// Parses a rule's `ports` list; the error carries the index of the bad
    /// entry.
    pub fn parse(ports: Option<&[String]>) -> Result<PortSet, (usize, String)> {
        let Some(ports) = ports else {
            return Ok(PortSet(None));
        };
        let ranges = ports
            .iter()
            .enumerate()
            .map(|(i, p)| p.parse::<PortRange>().map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PortSet(Some(ranges)))
    }

    /// Does a flow to `port`/`proto` fall in this set? A flow without a
    /// port (ICMP) only matches "any port".
    pub fn matches(&self, proto: Option<L4>, port: Option<u16>) -> bool {
        match &self.0 {
            None => true,
            Some(ranges) => match (proto, port) {
                (Some(proto), Some(port)) => ranges.iter().any(|r| r.contains(proto, port)),
                _ => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn port_specs_table() {
        let cases: &[(&str, Option<(L4, u16, u16)>)] = &[
            ("8080/TCP", Some((L4::Tcp, 8080, 8080))),
            ("53/udp", Some((L4::Udp, 53, 53))),
            ("9000-9100/UDP", Some((L4::Udp, 9000, 9100))),
            ("443", Some((L4::Tcp, 443, 443))),
            ("1-65535/SCTP", Some((L4::Sctp, 1, 65535))),
            ("0/TCP", None),
            ("65536/TCP", None),
            ("100-99/TCP", None),
            ("http/TCP", None),
            ("80/ICMP", None),
            ("", None),
            ("80-/TCP", None),
        ];
        for (spec, want) in cases {
            let got = spec
                .parse::<PortRange>()
                .ok()
                .map(|r| (r.proto, r.first, r.last));
            assert_eq!(got, *want, "port spec `{spec}`");
        }
    }

    #[test]
    fn portless_flows_only_match_any_port() {
        let set = PortSet::parse(Some(&["53/UDP".to_string()])).expect("valid");
        assert!(!set.matches(None, None), "ICMP does not match a port list");
        assert!(PortSet::ANY.matches(None, None), "ICMP matches any port");
        assert!(set.matches(Some(L4::Udp), Some(53)));
        assert!(!set.matches(Some(L4::Tcp), Some(53)), "protocol must match");
    }

    fn l4() -> impl Strategy<Value = L4> {
        prop_oneof![Just(L4::Tcp), Just(L4::Udp), Just(L4::Sctp)]
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(proto in l4(), a in 1u16.., b in 1u16..) {
            let r = PortRange { proto, first: a.min(b), last: a.max(b) };
            prop_assert_eq!(r.to_string().parse::<PortRange>(), Ok(r));
        }

        #[test]
        fn range_contains_exactly_its_ports(proto in l4(), a in 1u16.., b in 1u16.., p in 1u16.., other in l4()) {
            let r = PortRange { proto, first: a.min(b), last: a.max(b) };
            let inside = r.first <= p && p <= r.last;
            prop_assert_eq!(r.contains(proto, p), inside);
            if other != proto {
                prop_assert!(!r.contains(other, p));
            }
        }
    }
}
