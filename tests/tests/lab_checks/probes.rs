//! The lab's active evidence (issue #19): `segwatch probe` from two pods of
//! node 1, one behind the node's nftables filter (see `lab::probes`).
//! Exact reachability of the node and metadata targets, the probes' flows
//! seen by the daemon with their tag, and the audit verdicts that follow.

use std::collections::BTreeMap;

use lab::world::{METADATA_IP4, METADATA_IP6, NODE_IP4, NODE_IP6, NODE_PORTS};
use serde_json::Value;

/// target → status for the node and metadata targets of one report.
fn host_matrix(report: &Value) -> BTreeMap<String, String> {
    report["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| matches!(r["kind"].as_str(), Some("node" | "metadata")))
        .map(|r| {
            (
                r["target"].as_str().expect("target").to_owned(),
                r["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

pub fn check(outcome: &lab::Outcome) {
    let probes = &outcome.probes;
    assert_eq!(
        probes
            .iter()
            .map(|p| (p.pod.as_str(), p.filtered))
            .collect::<Vec<_>>(),
        [
            ("segwatch-probe/probe-open-5f6c7d8b9-q2wz4", false),
            ("segwatch-probe/probe-filtered-6b7c8d9f5-k7xv2", true)
        ],
        "the lab probes from two pods, one behind the filter"
    );
    let (open, filtered) = (&probes[0], &probes[1]);
    for p in probes {
        assert_eq!(p.report["complete"], true, "{}: {}", p.pod, p.report);
        assert_eq!(p.report["source"]["namespace"], "segwatch-probe");
    }

    // The unfiltered pod reaches every port node 1 listens on, over both
    // families, and the metadata API (the lab's cloud namespace).
    let m_open = host_matrix(&open.report);
    for (port, what) in NODE_PORTS {
        for ip in [NODE_IP4.to_string(), format!("[{NODE_IP6}]")] {
            let t = format!("{ip}:{port}/tcp");
            assert_eq!(
                m_open.get(&t).map(String::as_str),
                Some("reachable"),
                "{what} at {t} from the open pod: {m_open:?}"
            );
        }
    }
    for t in [
        format!("{METADATA_IP4}:80/tcp"),
        format!("[{METADATA_IP6}]:80/tcp"),
    ] {
        assert_eq!(
            m_open.get(&t).map(String::as_str),
            Some("reachable"),
            "metadata {t} from the open pod: {m_open:?}"
        );
    }
    // Behind the filter every node and metadata target is dropped: each
    // one tried, each a timeout, none reached.
    let m_filtered = host_matrix(&filtered.report);
    assert_eq!(
        m_filtered.keys().collect::<Vec<_>>(),
        m_open.keys().collect::<Vec<_>>(),
        "both pods try the same node and metadata targets"
    );
    let not_dropped: Vec<_> = m_filtered.iter().filter(|(_, s)| *s != "timeout").collect();
    assert!(
        not_dropped.is_empty(),
        "the node's filter drops all of these: {not_dropped:?}"
    );

    // The audit: PASS with evidence behind the filter, FAIL without.
    for (p, want) in [(open, "FAIL"), (filtered, "PASS")] {
        for control in ["Host ports", "Metadata API"] {
            assert_eq!(
                p.verdicts.get(control).map(String::as_str),
                Some(want),
                "{control} from {}'s probe: {:?}",
                p.pod,
                p.verdicts
            );
        }
        let host = p.audit["controls"]
            .as_array()
            .expect("controls")
            .iter()
            .find(|c| c["id"] == "Host ports")
            .expect("Host ports control");
        let n = |k: &str| host["counts"][k].as_u64().unwrap_or(0);
        if p.filtered {
            assert!(
                n("probe_blocked") > 0 && n("probe_violating") == 0,
                "{host}"
            );
        } else {
            assert!(
                n("probe_violating") >= 2 * NODE_PORTS.len() as u64,
                "the open pod reaches node 1's ports over both families: {host}"
            );
        }
    }

    // The daemon saw the probes' connections, tagged, from the probe pods
    // only; the node targets of the filtered pod as attempted, not answered.
    assert!(
        !outcome.probe_flows.is_empty(),
        "probe flows in the flow log"
    );
    let probe_ips: Vec<String> = ["probe-open", "probe-filtered"]
        .iter()
        .flat_map(|n| {
            let p = outcome.world.pod(n);
            [p.ip4.to_string(), p.ip6.to_string()]
        })
        .collect();
    for r in &outcome.probe_flows {
        assert_eq!(r["probe"], true);
        let src = r["src"]["ip"].as_str().unwrap_or("");
        assert!(
            probe_ips.iter().any(|ip| ip == src),
            "probe flow from {src}: {r}"
        );
    }
    let f = outcome.world.pod("probe-filtered");
    let kubelet_from_filtered: Vec<&Value> = outcome
        .probe_flows
        .iter()
        .filter(|r| {
            r["src"]["ip"] == f.ip4.to_string()
                && r["dst"]["ip"] == NODE_IP4.to_string()
                && r["dst"]["port"] == 10250
        })
        .collect();
    assert_eq!(
        kubelet_from_filtered.len(),
        1,
        "one kubelet probe from the filtered pod"
    );
    assert_eq!(
        kubelet_from_filtered[0]["tcp"]["state"], "attempted",
        "dropped by the node: {}",
        kubelet_from_filtered[0]
    );
    assert!(
        outcome.reports.iter().all(|r| r["probe"] != true),
        "probe flows are kept apart from the traffic steps' reports"
    );
}
