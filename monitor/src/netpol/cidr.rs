//! `ipBlock` peers: a CIDR minus `except` CIDRs, IPv4 or IPv6.
//!
//! API reference, IPBlock: "IPBlock describes a particular CIDR (Ex.
//! "192.168.1.0/24","2001:db8::/64") that is allowed to the pods matched by a
//! NetworkPolicySpec's podSelector. The except entry describes CIDRs that
//! should not be included within this rule." and, for `except`: "Except
//! values will be rejected if they are outside the cidr range".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an `ipBlock` is invalid (the API server would reject it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpBlockError {
    #[error("cidr {0:?} is not a CIDR (expected e.g. 10.0.0.0/8 or 2001:db8::/64)")]
    BadCidr(String),
    #[error("except entry {0:?} is not a CIDR")]
    BadExcept(String),
    #[error("except entry {except} is outside cidr {cidr}")]
    ExceptOutside { cidr: IpNet, except: IpNet },
}

/// A validated ipBlock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

fn parse_net(s: &str) -> Option<IpNet> {
    // Host bits are allowed by the (older) API validation ("10.0.0.1/8"); the
    // network the block means is the truncated one.
    s.trim().parse::<IpNet>().ok().map(|n| n.trunc())
}

impl IpBlock {
    pub fn parse(cidr: &str, except: &[String]) -> Result<IpBlock, IpBlockError> {
        let net = parse_net(cidr).ok_or_else(|| IpBlockError::BadCidr(cidr.to_string()))?;
        let mut ex = Vec::with_capacity(except.len());
        for e in except {
            let n = parse_net(e).ok_or_else(|| IpBlockError::BadExcept(e.clone()))?;
            // `contains(&IpNet)` is false across address families, so an IPv6
            // except in an IPv4 block is rejected here too.
            if !net.contains(&n) {
                return Err(IpBlockError::ExceptOutside {
                    cidr: net,
                    except: n,
                });
            }
            ex.push(n);
        }
        Ok(IpBlock {
            cidr: net,
            except: ex,
        })
    }

    /// Whether an address is in the block: inside `cidr` and in no `except`.
    /// An IPv4 block never matches an IPv6 address and vice versa.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }

    /// Whether every address of the inclusive range is in the block. Used by
    /// the connectivity listing, whose external ranges are cut at every
    /// cidr/except boundary so a range is either wholly in or wholly out.
    pub fn contains_range(&self, r: &IpRange) -> bool {
        let (lo, hi) = net_bounds(&self.cidr);
        if matches!(self.cidr, IpNet::V4(_)) != r.v4 || r.lo < lo || r.hi > hi {
            return false;
        }
        !self.except.iter().any(|e| {
            let (elo, ehi) = net_bounds(e);
            elo <= r.hi && r.lo <= ehi
        })
    }
}

/// First and last address of a network, as numbers (IPv4 in the low bits).
pub fn net_bounds(n: &IpNet) -> (u128, u128) {
    match n {
        IpNet::V4(n) => (
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    pub v4: bool,
    pub lo: u128,
    pub hi: u128,
}

impl IpRange {
    pub const V4_ALL: IpRange = IpRange {
        v4: true,
        lo: 0,
        hi: u32::MAX as u128,
    };
    pub const V6_ALL: IpRange = IpRange {
        v4: false,
        lo: 0,
        hi: u128::MAX,
    };

    fn addr(&self, n: u128) -> IpAddr {
        if self.v4 {
            IpAddr::V4(Ipv4Addr::from(n as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(n))
        }
    }

    pub fn first(&self) -> IpAddr {
        self.addr(self.lo)
    }

    pub fn last(&self) -> IpAddr {
        self.addr(self.hi)
    }
}

/// `a.b.c.d-e.f.g.h`, the conformance suite's notation for external ranges.
impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first(), self.last())
    }
}

impl IpBlock {
    /// The block as sorted, disjoint, inclusive address intervals: the
    /// cidr with the excepts cut out (touching excepts leave no gap).
    pub fn intervals(&self) -> Vec<(u128, u128)> {
        let (lo, hi) = net_bounds(&self.cidr);
        let mut ex: Vec<(u128, u128)> = self.except.iter().map(net_bounds).collect();
        ex.sort_unstable();
        let mut out = Vec::new();
        // First address neither emitted nor excluded yet; None past the end.
        let mut next = Some(lo);
        for (elo, ehi) in ex {
            let Some(c) = next else { break };
            if ehi < c {
                continue;
            }
            if elo > c {
                out.push((c, elo - 1));
            }
            next = (ehi < hi).then(|| ehi + 1);
        }
        if let Some(c) = next {
            out.push((c, hi));
        }
        out
    }
}

/// Cuts the address space of one family into the coarsest ranges such that
/// each given block is a union of whole ranges: the cut points are the
/// starts and ends of the blocks' intervals. Every address then behaves the
/// same as the first one of its range for every rule built from these
/// blocks (as np-guard/netpol-analyzer splits its external peers).
pub fn disjoint_ranges(v4: bool, blocks: &[IpBlock]) -> Vec<IpRange> {
    let all = if v4 { IpRange::V4_ALL } else { IpRange::V6_ALL };
    let mut cuts: Vec<u128> = vec![all.lo];
    for b in blocks
        .iter()
        .filter(|b| matches!(b.cidr, IpNet::V4(_)) == v4)
    {
        for (lo, hi) in b.intervals() {
            cuts.push(lo);
            if hi < all.hi {
                cuts.push(hi + 1);
            }
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts.iter()
        .enumerate()
        .map(|(i, &lo)| {
            let hi = cuts.get(i + 1).map_or(all.hi, |next| next - 1);
            IpRange { v4, lo, hi }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn except_is_carved_out() {
        let b = IpBlock::parse("10.0.0.0/8", &["10.1.0.0/16".into()]).unwrap();
        assert!(b.contains("10.0.0.1".parse().unwrap()));
        assert!(
            !b.contains("10.1.2.3".parse().unwrap()),
            "except must remove 10.1/16"
        );
        assert!(!b.contains("11.0.0.1".parse().unwrap()));
        assert!(
            !b.contains("::a00:1".parse().unwrap()),
            "an IPv4 block never matches IPv6"
        );
    }

    #[test]
    fn ipv6_block() {
        let b = IpBlock::parse("2001:db8::/32", &["2001:db8:1::/48".into()]).unwrap();
        assert!(b.contains("2001:db8::1".parse().unwrap()));
        assert!(!b.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!b.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn invalid_blocks_are_rejected() {
        assert!(matches!(
            IpBlock::parse("10.0.0.0", &[]),
            Err(IpBlockError::BadCidr(_))
        ));
        assert!(matches!(
            IpBlock::parse("10.0.0.0/33", &[]),
            Err(IpBlockError::BadCidr(_))
        ));
        assert!(matches!(
            IpBlock::parse("10.0.0.0/8", &["11.0.0.0/16".into()]),
            Err(IpBlockError::ExceptOutside { .. })
        ));
        assert!(matches!(
            IpBlock::parse("10.0.0.0/8", &["::/0".into()]),
            Err(IpBlockError::ExceptOutside { .. })
        ));
        // Host bits are tolerated and truncated.
        assert_eq!(
            IpBlock::parse("10.1.2.3/8", &[]).unwrap().cidr.to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn ranges_cut_at_boundaries() {
        let blocks = [
            IpBlock::parse("10.0.0.0/8", &["10.1.0.0/16".into()]).unwrap(),
            // Touching excepts leave one hole: 20.0.0.0-20.255.255.255.
            IpBlock::parse("0.0.0.0/0", &["20.0.0.0/9".into(), "20.128.0.0/9".into()]).unwrap(),
        ];
        let r: Vec<String> = disjoint_ranges(true, &blocks)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            r,
            [
                "0.0.0.0-9.255.255.255",
                "10.0.0.0-10.0.255.255",
                "10.1.0.0-10.1.255.255",
                "10.2.0.0-10.255.255.255",
                "11.0.0.0-19.255.255.255",
                "20.0.0.0-20.255.255.255",
                "21.0.0.0-255.255.255.255"
            ]
        );
        assert_eq!(
            disjoint_ranges(true, &[]).len(),
            1,
            "no blocks: the whole space"
        );
        assert_eq!(
            disjoint_ranges(true, &[IpBlock::parse("0.0.0.0/0", &[]).unwrap()]),
            vec![IpRange::V4_ALL]
        );
        assert_eq!(
            disjoint_ranges(false, &blocks),
            vec![IpRange::V6_ALL],
            "IPv4 blocks do not cut IPv6"
        );
        let v6 = [IpBlock::parse("::/0", &["ffff::/16".into()]).unwrap()];
        assert_eq!(
            disjoint_ranges(false, &v6).len(),
            2,
            "an except at the very end of the space"
        );
    }

    fn arb_v4net() -> impl Strategy<Value = IpNet> {
        (any::<u32>(), 0u8..=32).prop_map(|(a, len)| {
            IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), len)
                .unwrap()
                .trunc()
        })
    }

    fn arb_block() -> impl Strategy<Value = IpBlock> {
        (
            arb_v4net(),
            prop::collection::vec((any::<u32>(), 0u8..=32), 0..4),
        )
            .prop_map(|(cidr, ex)| {
                let (lo, hi) = net_bounds(&cidr);
                let except = ex
                    .into_iter()
                    .map(|(a, len)| {
                        // Put each except inside the cidr and no shorter than it.
                        let span = (hi - lo + 1) as u64;
                        let addr = lo as u64 + (a as u64 % span);
                        let len = len.max(cidr.prefix_len());
                        IpNet::new(IpAddr::V4(Ipv4Addr::from(addr as u32)), len)
                            .unwrap()
                            .trunc()
                    })
                    .collect();
                IpBlock { cidr, except }
            })
    }

    proptest! {
        /// The range check agrees with the per-address check at both ends of
        /// every disjoint range, and a range is never half in a block.
        #[test]
        fn ranges_are_uniform_for_blocks(blocks in prop::collection::vec(arb_block(), 1..4), probes in prop::collection::vec(any::<u32>(), 16)) {
            let ranges = disjoint_ranges(true, &blocks);
            prop_assert_eq!(ranges.first().unwrap().lo, 0);
            prop_assert_eq!(ranges.last().unwrap().hi, u32::MAX as u128);
            for w in ranges.windows(2) {
                prop_assert_eq!(w[0].hi + 1, w[1].lo, "ranges must tile the space");
            }
            for b in &blocks {
                for r in &ranges {
                    let whole = b.contains_range(r);
                    prop_assert_eq!(whole, b.contains(r.first()), "first address of {} vs block {:?}", r, b);
                    prop_assert_eq!(whole, b.contains(r.last()), "last address of {} vs block {:?}", r, b);
                }
                for &p in &probes {
                    let ip = IpAddr::V4(Ipv4Addr::from(p));
                    let r = ranges.iter().find(|r| r.lo <= p as u128 && p as u128 <= r.hi).unwrap();
                    prop_assert_eq!(b.contains(ip), b.contains_range(r), "probe {} in {}", ip, r);
                }
            }
        }

        /// Containment is "in cidr and in no except", checked against a
        /// direct bit-mask computation.
        #[test]
        fn contains_is_cidr_minus_except(b in arb_block(), probes in prop::collection::vec(any::<u32>(), 32)) {
            let in_net = |n: &IpNet, a: u32| {
                let (lo, hi) = net_bounds(n);
                lo <= a as u128 && a as u128 <= hi
            };
            for a in probes {
                let expected = in_net(&b.cidr, a) && !b.except.iter().any(|e| in_net(e, a));
                prop_assert_eq!(b.contains(IpAddr::V4(Ipv4Addr::from(a))), expected);
            }
        }
    }
}
