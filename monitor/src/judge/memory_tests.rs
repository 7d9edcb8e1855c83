//! What the daemon keeps per active connection, in bytes counted by the
//! test allocator ([`crate::alloc_count`]): the tracker's state and the
//! judge's, for 100,000 connections made the way `segwatch run` makes them
//! (announced by the kernel, then seen by sweeps). The bound is the
//! daemon's memory formula in the README ("Performance").

use std::sync::Arc;
use std::time::Duration;

use crate::alloc_count;
use crate::daemon::{announcement, Clock, Judge as _};
use crate::datapath::Entry;
use crate::flows::{self, ConnKey, Timeouts, Tracker};
use crate::judge::{ClusterJudge, ReadyFlag};
use crate::metrics::Metrics;
use monitor_common::{event_kind, FlowEvent, FlowKey};
use monitor_common::{opener, proto, FlowStats, TupleKey};

const FLOWS: u32 = 100_000;
const S: u64 = 1_000_000_000;

/// Bytes the tracker and the judge may keep per active connection
/// (README: the daemon's memory per flow, allocator overhead aside).
const TRACKER_BYTES_PER_FLOW: i64 = 160;
const JUDGE_BYTES_PER_FLOW: i64 = 110;

/// Connection `i` of the bench's spray: UDP from a pod to 50,000 ports of
/// its node's address, from two source ports.
fn tuple(i: u32) -> TupleKey {
    TupleKey {
        addr_lo: [u32::from_ne_bytes([10, 0, 0, 5]), 0, 0, 0],
        addr_hi: [u32::from_ne_bytes([10, 200, 0, 1]), 0, 0, 0],
        port_lo: 1024 + (i % 50_000) as u16,
        port_hi: 40_000 + (i / 50_000) as u16,
        proto: proto::UDP,
        ip_version: 4,
        _pad: [0; 2],
    }
}

fn event(i: u32) -> FlowEvent {
    FlowEvent {
        ts_ns: S + u64::from(i),
        key: tuple(i),
        ifindex: 7,
        gen: 1,
        bytes: 40,
        opener: opener::HI,
        kind: event_kind::NEW,
        ..Default::default()
    }
}

fn entry(i: u32) -> Entry {
    Entry {
        key: FlowKey::new(&tuple(i), 7),
        stats: FlowStats {
            packets: [0, 1],
            bytes: [0, 40],
            first_ns: S + u64::from(i),
            last_ns: S + u64::from(i),
            opener: opener::HI,
            ..Default::default()
        },
        gen: 1,
        second_if: false,
    }
}

/// The judge of `segwatch run` without cluster objects: the node's own
/// address only (as in the bench).
fn judge() -> ClusterJudge {
    let mut idx = crate::index::ClusterIndex::new(crate::index::IndexConfig {
        node_name: "n1".into(),
        ..Default::default()
    });
    idx.set_host_addresses(vec!["10.200.0.1".parse().expect("ip")]);
    idx.refresh();
    let ready = ReadyFlag::default();
    ready.set();
    ClusterJudge::new(
        Arc::new(std::sync::RwLock::new(idx)),
        ready,
        Duration::from_secs(300),
    )
}

/// One sweep as [`Daemon::sweep`] runs it, over connections `0..n`.
fn sweep(tracker: &mut Tracker, judge: &mut ClusterJudge, m: &Metrics, n: u32, now: u64) {
    let mut pass = tracker.start(now, false);
    for i in 0..n {
        pass.visit(&entry(i));
    }
    let out = pass.finish(true);
    assert!(
        out.reports.is_empty() && out.remove.is_empty(),
        "long timeouts: every connection runs on unreported"
    );
    let open = |k: &ConnKey| tracker.tracks_tuple(k);
    assert!(judge.after_sweep(m, &open, false).is_empty());
}

#[test]
fn per_connection_state_stays_within_the_stated_bytes() {
    let m = Metrics::new();
    let mut judge = judge();
    let timeouts = Timeouts {
        idle_ns: 600 * S,
        active_ns: 600 * S,
        closed_linger_ns: S,
    };
    let mut tracker = Tracker::new(timeouts);
    let clock = Clock::now();
    let observer = Some("n1".to_owned());

    let before = alloc_count::live();
    for i in 0..FLOWS {
        // What `Daemon::on_event` does with a new connection.
        let raw = announcement(&event(i));
        let mut report = flows::to_report(&raw, "veth0", chrono::Utc::now(), |ns| clock.wall(ns));
        report.observer.clone_from(&observer);
        crate::reporter::stamp(&mut report, &raw, observer.as_deref());
        judge.judge(&mut report);
        judge.announce(&m, &report);
    }
    let judged = alloc_count::live();
    sweep(&mut tracker, &mut judge, &m, FLOWS, 2 * S);
    sweep(&mut tracker, &mut judge, &m, FLOWS, 3 * S);
    let swept = alloc_count::live();
    assert_eq!(tracker.open(), FLOWS as usize);
    assert_eq!(judge.tracked(), FLOWS as usize);

    let per_flow = |bytes: i64| bytes / i64::from(FLOWS);
    let (judge_bytes, tracker_bytes) = (per_flow(judged - before), per_flow(swept - judged));
    eprintln!("per connection: judge {judge_bytes} B, tracker {tracker_bytes} B");
    assert!(
        judge_bytes <= JUDGE_BYTES_PER_FLOW,
        "the judge keeps {judge_bytes} bytes per announced connection, more than {JUDGE_BYTES_PER_FLOW}"
    );
    assert!(
        tracker_bytes <= TRACKER_BYTES_PER_FLOW,
        "the tracker keeps {tracker_bytes} bytes per active connection, more than {TRACKER_BYTES_PER_FLOW}"
    );

    // A sweep of the whole table allocates nothing sized by it: the
    // table is read in batches straight into the tracker.
    alloc_count::reset_peak();
    sweep(&mut tracker, &mut judge, &m, FLOWS, 4 * S);
    let extra = alloc_count::peak() - swept;
    assert!(
        extra < 1 << 20,
        "a sweep over {FLOWS} connections needed {extra} bytes more at its peak"
    );
    let kept = alloc_count::live() - swept;
    assert!(
        kept.abs() < 64 << 10,
        "and keeps nothing sized by the table after it ({kept} bytes)"
    );
}
