//! The per-interface new-flow budget: one pod spraying new tuples cannot
//! fill the flow table for every other pod of the node. The kernel gives an
//! interface at most `N` new connections per second; connections past it
//! are counted in the interface's overflow record (packets and bytes), and
//! the daemon exports those per interface and as the
//! `segwatch_events_lost_total{stage="new_flow_budget"}` loss.

// DatapathError carries aya's errors, as every Datapath method returns.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use monitor_common::{config, BudgetValue, BUDGET_MAP, CONFIG_MAP};

use super::{Datapath, DatapathError};

/// Default of `--new-flow-budget` (new connections per second and
/// interface): an eighth of the table, so one pod needs several seconds of
/// spraying (longer than a sweep) to fill it, while a legitimate client
/// pod's bursts stay within it at the default table size (16,384/s). Above
/// it a pod's further new connections go to its overflow record, counted,
/// not reported one by one; the bench's connection storm, whose one client
/// pod opens up to ~27,000/s on a 2-core machine, runs with the budget off.
pub fn default_new_flow_budget(max_flows: u32) -> u32 {
    (max_flows / 8).max(1)
}

impl Datapath {
    /// Sets the budget: at most `per_second` new connections per second on
    /// each interface (0: no budget).
    pub fn set_new_flow_budget(&mut self, per_second: u32) -> Result<(), DatapathError> {
        let hz = u64::from(self.clock().hz);
        let map = self
            .ebpf
            .map_mut(CONFIG_MAP)
            .ok_or(DatapathError::Map { name: CONFIG_MAP })?;
        let mut arr: Array<&mut MapData, u64> =
            Array::try_from(map).map_err(|_| DatapathError::Map { name: CONFIG_MAP })?;
        let write = |arr: &mut Array<&mut MapData, u64>, slot: u32, v: u64| {
            arr.set(slot, v, 0)
                .map_err(|source| DatapathError::MapRead {
                    name: CONFIG_MAP,
                    source,
                })
        };
        // The window first: a budget never meets a zero-length window.
        write(&mut arr, config::BUDGET_WINDOW_JIFFIES, hz)?;
        write(&mut arr, config::NEW_FLOW_BUDGET, u64::from(per_second))
    }

    /// Every interface's budget record (`ifindex` → cumulative overflow).
    pub fn budgets(&self) -> Result<Vec<(u32, BudgetValue)>, DatapathError> {
        let map = self
            .ebpf
            .map(BUDGET_MAP)
            .ok_or(DatapathError::Map { name: BUDGET_MAP })?;
        let table: BpfHashMap<&MapData, u32, BudgetValue> =
            BpfHashMap::try_from(map).map_err(|_| DatapathError::Map { name: BUDGET_MAP })?;
        table
            .iter()
            .map(|r| {
                r.map_err(|source| DatapathError::MapRead {
                    name: BUDGET_MAP,
                    source,
                })
            })
            .collect()
    }

    /// Forgets an interface's budget record (it went away; its overflow was
    /// exported at the last sweep).
    pub fn forget_budget(&mut self, ifindex: u32) {
        if let Some(map) = self.ebpf.map_mut(BUDGET_MAP) {
            let table: Result<BpfHashMap<&mut MapData, u32, BudgetValue>, _> =
                BpfHashMap::try_from(map);
            if let Ok(mut t) = table {
                let _ = t.remove(&ifindex);
            }
        }
    }
}

/// Turns the kernel's cumulative overflow records into counter increments.
#[derive(Debug, Default)]
pub struct OverflowDeltas {
    last: HashMap<u32, (u64, u64)>,
}

/// New overflow of one interface since the previous call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow {
    pub ifindex: u32,
    pub packets: u64,
    pub bytes: u64,
}

impl OverflowDeltas {
    /// The increments in `records` (cumulative per interface) since the last
    /// call; interfaces no longer in `records` are forgotten.
    pub fn update(&mut self, records: &[(u32, BudgetValue)]) -> Vec<Overflow> {
        let mut out = Vec::new();
        let mut seen = HashMap::with_capacity(records.len());
        for (ifindex, v) in records {
            let (p, b) = self.last.get(ifindex).copied().unwrap_or((0, 0));
            let d = Overflow {
                ifindex: *ifindex,
                packets: v.packets.saturating_sub(p),
                bytes: v.bytes.saturating_sub(b),
            };
            if d.packets != 0 || d.bytes != 0 {
                out.push(d);
            }
            seen.insert(*ifindex, (v.packets, v.bytes));
        }
        self.last = seen;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(packets: u64, bytes: u64) -> BudgetValue {
        BudgetValue {
            packets,
            bytes,
            ..BudgetValue::default()
        }
    }

    #[test]
    fn overflow_is_exported_as_increments() {
        let mut d = OverflowDeltas::default();
        assert_eq!(
            d.update(&[(3, rec(5, 500)), (4, rec(0, 0))]),
            vec![Overflow {
                ifindex: 3,
                packets: 5,
                bytes: 500
            }]
        );
        assert!(d.update(&[(3, rec(5, 500))]).is_empty(), "nothing new");
        assert_eq!(
            d.update(&[(3, rec(7, 640))]),
            vec![Overflow {
                ifindex: 3,
                packets: 2,
                bytes: 140
            }]
        );
        // An interface removed and seen again starts from zero.
        assert!(d.update(&[]).is_empty());
        assert_eq!(d.update(&[(3, rec(1, 60))])[0].packets, 1);
    }
}
