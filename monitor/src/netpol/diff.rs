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
//! External addresses are cut into ranges at the union of both sides'
//! ipBlock/networks edges, so the two listings name the same ranges and a
//! pair is compared range by range (as np-guard/netpol-analyzer's `diff`
//! does). Endpoints are the listing's groups (`ns/name[Kind]`).

use std::collections::{BTreeMap, BTreeSet};

use super::cidr::{disjoint_ranges, IpRange};
use super::engine::Engine;
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

fn ranges(a: &Engine, b: &Engine, egress: bool) -> Vec<IpRange> {
    let mut blocks = a.ip_blocks(egress);
    for blk in b.ip_blocks(egress) {
        if !blocks.contains(&blk) {
            blocks.push(blk);
        }
    }
    let mut out = disjoint_ranges(true, &blocks);
    if blocks.iter().any(|b| matches!(b.cidr, ipnet::IpNet::V6(_))) {
        out.extend(disjoint_ranges(false, &blocks));
    }
    out
}

/// Every pair whose connections differ, ordered `changed`, `added`,
/// `removed`, each group by its line text (byte order).
pub fn diff(reference: &Engine, new: &Engine) -> Vec<DiffLine> {
    let dst_ranges = ranges(reference, new, true);
    let src_ranges = ranges(reference, new, false);
    let listing = |e: &Engine| -> BTreeMap<(String, String), ConnSet> {
        connectivity_over(e, &dst_ranges, &src_ranges)
            .into_iter()
            .map(|l| ((l.src, l.dst), l.conns))
            .collect()
    };
    let groups = |e: &Engine| -> BTreeSet<String> {
        e.endpoints().iter().map(|ep| ep.group.to_string()).collect()
    };
    let (before, after) = (listing(reference), listing(new));
    let (g_before, g_after) = (groups(reference), groups(new));
    let pairs: BTreeSet<&(String, String)> = before.keys().chain(after.keys()).collect();
    let empty = ConnSet::empty();
    let mut out = Vec::new();
    for key in pairs {
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
        out.push(DiffLine {
            change,
            src: key.0.clone(),
            dst: key.1.clone(),
            before: b.clone(),
            after: a.clone(),
            workloads: which.map(|w| (names, w)),
        });
    }
    let mut keyed: Vec<(Change, String, DiffLine)> = out
        .into_iter()
        .map(|l| (l.change, l.to_string(), l))
        .collect();
    keyed.sort_by(|x, y| (x.0, x.1.as_bytes()).cmp(&(y.0, y.1.as_bytes())));
    keyed.into_iter().map(|(_, _, l)| l).collect()
}
