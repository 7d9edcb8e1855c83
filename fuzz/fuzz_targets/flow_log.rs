//! Flow logs as `segwatch suggest` and `segwatch audit` read them
//! (`report::parse_flow_log`: JSON lines of `FlowReport`), then what those
//! commands and the daemon do with a report: a round trip through our own
//! serialiser, judging against a fixed inventory and policy (the daemon's
//! `ClusterIndex::judge`), and the NetworkPolicy suggestion with its replay.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use segwatch::index::{ClusterIndex, IndexConfig};
use segwatch::report::FlowReport;
use segwatch::suggest::{self, Catalog, ObserveOptions, Observed, Options};

/// The suggest fixture's cluster and the audit fixture's whitelist.
const INVENTORY: &str = include_str!("../../monitor/tests/fixtures/suggest/inventory.yaml");
const POLICY: &str = include_str!("../../monitor/tests/fixtures/audit/policy.yaml");

struct World {
    objects: Vec<segwatch::inventory::Object>,
    catalog: Catalog,
    index: ClusterIndex,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let inv = segwatch::inventory::parse_str(Path::new("inventory.yaml"), INVENTORY)
            .expect("the suggest fixture inventory parses");
        let policies = segwatch::segpolicy::parse_policy_str(Path::new("policy.yaml"), POLICY)
            .expect("the audit fixture policy compiles");
        let mut index = ClusterIndex::new(IndexConfig {
            node_name: "n1".into(),
            node_ips: vec!["192.168.0.1".parse().expect("literal")],
            static_policies: policies,
            pod_cidrs: vec!["10.0.0.0/8".parse().expect("literal")],
            agent_selector: None,
        });
        index.reset(inv.objects.clone());
        index.refresh();
        World {
            catalog: Catalog::build(&inv.objects),
            objects: inv.objects,
            index,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let reports = match segwatch::report::parse_flow_log(Path::new("flows.jsonl"), text) {
        Ok(r) => r,
        Err(e) => {
            // file:line, so the user can find the bad line.
            assert!(format!("{e:#}").contains("flows.jsonl:"), "{e:#}");
            return;
        }
    };
    for r in &reports {
        // What we write, we must read back unchanged.
        let line = serde_json::to_string(r).expect("a parsed report serialises");
        let again: FlowReport = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("own output must parse ({e}): {line}"));
        assert_eq!(&again, r, "round trip changed the report: {line}");
    }
    let w = world();
    let mut judged = reports.clone();
    for r in &mut judged {
        w.index.judge(r);
    }
    let observed = Observed::from_flows(
        &reports,
        &w.catalog,
        ObserveOptions {
            include_unanswered: false,
            include_violations: false,
        },
    );
    let suggestion = suggest::generate(&observed, &w.catalog, &Options::default());
    let _ = suggest::render(&suggestion.policies, suggest::Format::Yaml);
    let replay = suggest::replay(
        &w.objects,
        &w.catalog,
        &observed,
        &suggestion.policies,
        &suggestion.namespaces,
    );
    let _ = suggest::summary(&suggestion, &observed, &replay, true, 10);
});
