use crate::alloc_count::live;
use crate::daemon::Judge as _;
use crate::flows::{self, ConnKey, RawReport, Timeouts, Tracker};
use crate::datapath::Entry;
use monitor_common::{FlowKey, FlowStats, opener, proto};
use std::collections::HashSet;

const S: u64 = 1_000_000_000;
const N: usize = 100_000;

fn entries(n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let port = 1024 + (i % 50_000) as u16;
            let sport = 40000 + (i / 50_000) as u16;
            Entry {
                key: FlowKey {
                    addr_lo: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
                    addr_hi: [u32::from_ne_bytes([10, 200, 0, 2]), 0, 0, 0],
                    port_lo: port,
                    port_hi: sport,
                    ifindex: 7,
                    proto: proto::UDP,
                    ip_version: 4,
                    _pad: [0; 2],
                },
                stats: FlowStats {
                    packets: [1, 0],
                    bytes: [40, 0],
                    first_ns: S,
                    last_ns: S,
                    tcp_flags: [0, 0],
                    opener: opener::HI,
                    _pad: [0; 5],
                },
                gen: 1,
                second_if: false,
            }
        })
        .collect()
}

#[test]
fn scratch_breakdown() {
    let es = entries(N);
    let base = live();
    let mut t = Tracker::new(Timeouts { idle_ns: 600 * S, active_ns: 600 * S, closed_linger_ns: S });
    let o = t.sweep(&es, 2 * S, false);
    drop(o);
    let after1 = live();
    let o = t.sweep(&es, 3 * S, false);
    drop(o);
    let after2 = live();
    eprintln!("tracker: {} B/flow after 1 sweep, {} after 2", (after1 - base) / N as i64, (after2 - base) / N as i64);
    let b = live();
    let tup = t.open_tuples();
    eprintln!("open_tuples transient: {} B/flow", (live() - b) / N as i64);
    drop(tup);

    // announced set
    let b = live();
    let mut announced: HashSet<flows::ConnId> = HashSet::new();
    for e in &es { announced.insert((ConnKey::from(&e.key), e.gen)); }
    eprintln!("announced: {} B/flow", (live() - b) / N as i64);

    // judge
    let mut idx = crate::index::ClusterIndex::new(crate::index::IndexConfig { node_name: "n1".into(), ..Default::default() });
    idx.set_host_addresses(vec!["10.200.0.2".parse().unwrap()]);
    idx.refresh();
    let shared = std::sync::Arc::new(std::sync::RwLock::new(idx));
    let ready = crate::judge::ReadyFlag::default();
    ready.set();
    let m = crate::metrics::Metrics::new();
    let mut j = crate::judge::ClusterJudge::new(shared, ready, std::time::Duration::from_secs(300));
    let b = live();
    for e in &es {
        let raw = RawReport { key: e.key, stats: e.stats, packets: e.stats.packets, bytes: e.stats.bytes, start_ns: S, end_ns: S, ended: false, generation: 1, first: true };
        let mut r = flows::to_report(&raw, "veth0", chrono::DateTime::UNIX_EPOCH, |_| chrono::DateTime::UNIX_EPOCH);
        r.observer = Some("n1".into());
        crate::reporter::stamp(&mut r, &raw, Some("n1"));
        j.judge(&mut r);
        j.announce(&m, &r);
    }
    eprintln!("judge: {} B/flow ({} tracked)", (live() - b) / N as i64, j.tracked());
    let tuples = t.open_tuples();
    let b = live();
    let rel = j.after_sweep(&m, &|k: &ConnKey| tuples.contains(k), false);
    eprintln!("judge after_sweep: {} B/flow, released {}", (live() - b) / N as i64, rel.len());
    eprintln!("sizes: ConnKey {} FlowKey {} Entry {} FlowReport {} Endpoint {}", size_of::<ConnKey>(), size_of::<FlowKey>(), size_of::<Entry>(), size_of::<crate::report::FlowReport>(), size_of::<crate::report::Endpoint>());
}
