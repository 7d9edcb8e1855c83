//! Semantic diff of two policy sets over the same (or changed) workloads:
//! which source/destination pairs gain, lose or change allowed
//! connections.
//!
//! ```text
//!  reference objects ─► Engine ─► connectivity ─┐   per (src, dst):
//!                                              ├─► before != after ─► Line
//!  new objects ───────► Engine ─► connectivity ─┘   changed | added | removed
//! ```
//!
//! External addresses are cut, per workload and direction, at the edges of
//! the ipBlocks/networks of the policies that apply to that workload on
//! either side, so the two listings name the same ranges and a pair is
//! compared range by range (as np-guard/netpol-analyzer's `diff` does).
//! Endpoints are the listing's groups (`ns/name[Kind]`).
//!
//! Compared are the ports of TCP, UDP and SCTP, the protocols policy ports
//! name; a change that only concerns portless protocols (ICMP, allowed by
//! rules without ports) is not reported.

use std::collections::{BTreeMap, BTreeSet};

use super::cidr::{disjoint_ranges, IpBlock, IpRange};
use super::engine::{ConnSide, EndpointId, Engine};
use super::matrix::connectivity_over;
use super::ports::ConnSet;

/// How a pair changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    /// Something is allowed before and after, but not the same.
    Changed,
    /// Nothing was allowed before.
    Added,
    /// Nothing is allowed after.
    Removed,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Changed => "changed",
            Change::Added => "added",
            Change::Removed => "removed",
        }
    }
}

/// One pair whose allowed connections differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffLine {
    pub change: Change,
    pub src: String,
    pub dst: String,
    pub before: ConnSet,
    pub after: ConnSet,
    /// Endpoints of this pair that exist on one side only, and which.
    pub workloads: Option<(Vec<String>, Change)>,
}

impl std::fmt::Display for DiffLine {
    /// `diff-type: added, source: a, destination: b, ref1: .., ref2: ..[,
    /// workloads-diff-info: workload X added]`, the notation of
    /// np-guard/netpol-analyzer's txt diff.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "diff-type: {}, source: {}, destination: {}, ref1: {}, ref2: {}",
            self.change.as_str(),
            self.src,
            self.dst,
            self.before,
            self.after
        )?;
        if let Some((names, change)) = &self.workloads {
            write!(
                f,
                ", workloads-diff-info: workload {} {}",
                names.join(" and "),
                change.as_str()
            )?;
        }
        Ok(())
    }
}

type Listing = BTreeMap<(String, String), ConnSet>;

fn cut(blocks: &[IpBlock]) -> Vec<IpRange> {
    let mut out = disjoint_ranges(true, blocks);
    if blocks.iter().any(|b| matches!(b.cidr, ipnet::IpNet::V6(_))) {
        out.extend(disjoint_ranges(false, blocks));
    }
    out
}

/// Ports of TCP, UDP and SCTP only: the notation (and the reference
/// analyzer) has no word for portless protocols.
fn ported(c: ConnSet) -> Option<ConnSet> {
    let c = ConnSet { other: false, ..c };
    (!c.is_empty()).then_some(c)
}

/// The listing of `engines[0]`: pairs of groups, and per group the
/// external ranges cut at the address blocks that matter to that group in
/// any of `engines` (so that both sides of a diff name the same ranges,
/// and a group no policy with addresses applies to keeps the whole space
/// as one range, as np-guard/netpol-analyzer lists it).
fn listing(engines: &[&Engine]) -> Listing {
    let e = engines[0];
    let mut out = Listing::new();
    for l in connectivity_over(e, &[], &[]) {
        if let Some(c) = ported(l.conns) {
            out.insert((l.src, l.dst), c);
        }
    }
    let by_group = |eng: &Engine| -> BTreeMap<String, Vec<EndpointId>> {
        let mut groups: BTreeMap<String, Vec<EndpointId>> = BTreeMap::new();
        for (i, ep) in eng.endpoints().iter().enumerate() {
            groups
                .entry(ep.group.to_string())
                .or_default()
                .push(EndpointId(i as u32));
        }
        groups
    };
    let all_groups: Vec<BTreeMap<String, Vec<EndpointId>>> =
        engines.iter().map(|&eng| by_group(eng)).collect();
    for (name, members) in &all_groups[0] {
        for egress in [true, false] {
            let mut blocks: Vec<IpBlock> = Vec::new();
            for (eng, groups) in engines.iter().zip(&all_groups) {
                for &id in groups.get(name).map(Vec::as_slice).unwrap_or_default() {
                    for b in eng.ip_blocks_of(id, egress) {
                        if !blocks.contains(&b) {
                            blocks.push(b);
                        }
                    }
                }
            }
            for r in cut(&blocks) {
                let mut acc = ConnSet::empty();
                for &m in members {
                    let c = if egress {
                        e.conns(ConnSide::Endpoint(m), ConnSide::Range(&r))
                    } else {
                        e.conns(ConnSide::Range(&r), ConnSide::Endpoint(m))
                    };
                    acc.union(&c);
                }
                if let Some(c) = ported(acc) {
                    let ext = format!("{r}[External]");
                    let key = if egress {
                        (name.clone(), ext)
                    } else {
                        (ext, name.clone())
                    };
                    out.insert(key, c);
                }
            }
        }
    }
    out
}

/// Every pair whose connections differ, ordered `changed`, `added`,
/// `removed`, each group by its line text (byte order).
pub fn diff(reference: &Engine, new: &Engine) -> Vec<DiffLine> {
    let common = |a: &Engine, b: &Engine| listing(&[a, b]);
    let own = |e: &Engine| listing(&[e]);
    let groups = |e: &Engine| -> BTreeSet<String> {
        e.endpoints()
            .iter()
            .map(|ep| ep.group.to_string())
            .collect()
    };
    let (g_before, g_after) = (groups(reference), groups(new));
    // Which workload of a pair exists on one side only, and which side.
    let one_sided = |key: &(String, String)| -> Option<(Vec<String>, Change)> {
        let mut names = Vec::new();
        let mut which = None;
        for name in [&key.0, &key.1] {
            if name.ends_with("[External]") {
                continue;
            }
            match (g_before.contains(name), g_after.contains(name)) {
                (false, true) => {
                    names.push(name.clone());
                    which = Some(Change::Added);
                }
                (true, false) => {
                    names.push(name.clone());
                    which = Some(Change::Removed);
                }
                _ => {}
            }
        }
        which.map(|w| (names, w))
    };
    let (before, after) = (common(reference, new), common(new, reference));
    let empty = ConnSet::empty();
    let mut out = Vec::new();
    let pairs: BTreeSet<&(String, String)> = before.keys().chain(after.keys()).collect();
    for key in pairs {
        if one_sided(key).is_some() {
            continue; // below, from that side's own listing
        }
        let b = before.get(key).unwrap_or(&empty);
        let a = after.get(key).unwrap_or(&empty);
        if a == b {
            continue;
        }
        let change = if b.is_empty() {
            Change::Added
        } else if a.is_empty() {
            Change::Removed
        } else {
            Change::Changed
        };
        out.push(DiffLine {
            change,
            src: key.0.clone(),
            dst: key.1.clone(),
            before: b.clone(),
            after: a.clone(),
            workloads: None,
        });
    }
    // A pair with a workload that exists on one side only has nothing to
    // be compared with: its connections are that side's listing as it is
    // (its own external ranges, not cut at the other side's).
    for (side, listing) in [(Change::Added, own(new)), (Change::Removed, own(reference))] {
        for (key, conns) in listing {
            let Some((names, which)) = one_sided(&key) else {
                continue;
            };
            if which != side {
                continue;
            }
            let (before, after) = match side {
                Change::Added => (ConnSet::empty(), conns),
                _ => (conns, ConnSet::empty()),
            };
            out.push(DiffLine {
                change: side,
                src: key.0,
                dst: key.1,
                before,
                after,
                workloads: Some((names, which)),
            });
        }
    }
    let mut keyed: Vec<(Change, String, DiffLine)> = out
        .into_iter()
        .map(|l| (l.change, l.to_string(), l))
        .collect();
    keyed.sort_by(|x, y| (x.0, x.1.as_bytes()).cmp(&(y.0, y.1.as_bytes())));
    keyed.into_iter().map(|(_, _, l)| l).collect()
}
