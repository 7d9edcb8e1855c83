//! The connectivity listing of a whole inventory, in the notation of the
//! np-guard/netpol-analyzer conformance suite (`connlist` text output):
//!
//! ```text
//! 0.0.0.0-255.255.255.255[External] => shop/web[Deployment] : TCP 8080
//! shop/web[Deployment] => shop/db-7d77fb55cc[ReplicaSet] : TCP 5432,UDP 53
//! ```
//!
//! Normalisation (what makes the output diff against the expected files):
//! - Endpoints are shown by group: a pod's controller (`ns/name[Kind]`
//!   from its controller owner reference), a pod without one (or a static
//!   pod owned by its Node) as `ns/pod[Pod]`, a workload standing for its
//!   pods as `ns/name[Kind]`. The connections of a group are the union over
//!   its pods (they agree unless replicas carry different labels).
//! - Traffic inside a group (a pod to itself, replicas to each other) is
//!   not listed; external-to-external is not listed.
//! - Addresses outside the cluster are cut into ranges `first-last[External]`
//!   at every cidr/except boundary of the ipBlocks of one direction
//!   (destinations at those of egress rules, sources at those of ingress
//!   rules), so every rule treats a range alike; IPv4 always, IPv6 only when
//!   some ipBlock of that direction is IPv6. Adjacent ranges are not merged.
//! - Connections: `All Connections`, or per protocol (SCTP, TCP, UDP) the
//!   sorted ports with touching ports merged into ranges, e.g.
//!   `TCP 8000-8010,UDP 53`.
//! - Lines sorted bytewise (C locale); pairs with no connection omitted.

use std::collections::BTreeMap;

use super::cidr::{disjoint_ranges, IpRange};
use super::engine::{ConnSide, EndpointId, Engine};
use super::model::Group;
use super::ports::ConnSet;

/// One allowed pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub src: String,
    pub dst: String,
    pub conns: ConnSet,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} => {} : {}", self.src, self.dst, self.conns)
    }
}

/// The external ranges of the listing: destinations (`egress`) are cut at
/// the ipBlocks of egress rules, sources at those of ingress rules.
pub fn external_ranges(engine: &Engine, egress: bool) -> Vec<IpRange> {
    let blocks = engine.ip_blocks(egress);
    let mut out = disjoint_ranges(true, &blocks);
    if blocks.iter().any(|b| matches!(b.cidr, ipnet::IpNet::V6(_))) {
        out.extend(disjoint_ranges(false, &blocks));
    }
    out
}

/// Every allowed pair, sorted as the listing prints them.
pub fn connectivity(engine: &Engine) -> Vec<Line> {
    let dst_ranges = external_ranges(engine, true);
    let src_ranges = external_ranges(engine, false);
    connectivity_over(engine, &dst_ranges, &src_ranges)
}

/// Like [`connectivity`], with the external destination and source ranges
/// given (a diff cuts both sides' ranges at the union of their edges).
pub fn connectivity_over(
    engine: &Engine,
    dst_ranges: &[IpRange],
    src_ranges: &[IpRange],
) -> Vec<Line> {
    let mut groups: BTreeMap<&Group, Vec<EndpointId>> = BTreeMap::new();
    for (i, ep) in engine.endpoints().iter().enumerate() {
        groups
            .entry(&ep.group)
            .or_default()
            .push(EndpointId(i as u32));
    }
    let union = |pairs: &mut dyn Iterator<Item = (ConnSide<'_>, ConnSide<'_>)>| {
        let mut acc = ConnSet::empty();
        for (a, b) in pairs {
            acc.union(&engine.conns(a, b));
            if acc.is_all() {
                break;
            }
        }
        acc
    };
    let mut lines = Vec::new();
    for (g1, m1) in &groups {
        for (g2, m2) in &groups {
            if g1 == g2 {
                continue;
            }
            let conns = union(&mut m1.iter().flat_map(|&a| {
                m2.iter()
                    .map(move |&b| (ConnSide::Endpoint(a), ConnSide::Endpoint(b)))
            }));
            if !conns.is_empty() {
                lines.push(Line {
                    src: g1.to_string(),
                    dst: g2.to_string(),
                    conns,
                });
            }
        }
        for r in dst_ranges {
            let out = union(
                &mut m1
                    .iter()
                    .map(|&a| (ConnSide::Endpoint(a), ConnSide::Range(r))),
            );
            if !out.is_empty() {
                lines.push(Line {
                    src: g1.to_string(),
                    dst: format!("{r}[External]"),
                    conns: out,
                });
            }
        }
        for r in src_ranges {
            let inb = union(
                &mut m1
                    .iter()
                    .map(|&a| (ConnSide::Range(r), ConnSide::Endpoint(a))),
            );
            if !inb.is_empty() {
                lines.push(Line {
                    src: format!("{r}[External]"),
                    dst: g1.to_string(),
                    conns: inb,
                });
            }
        }
    }
    let mut rendered: Vec<(String, Line)> = lines.into_iter().map(|l| (l.to_string(), l)).collect();
    rendered.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    rendered.into_iter().map(|(_, l)| l).collect()
}

/// The listing as text, one line per pair, each ending in a newline.
pub fn render(lines: &[Line]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(&l.to_string());
        s.push('\n');
    }
    s
}
