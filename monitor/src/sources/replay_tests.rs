//! The kube watchers of `segwatch run` against recorded API server traffic
//! (`tests/fixtures/watch/*.json`, the API's documented wire format): every
//! watched kind, paginated lists, chunked watch streams with ADDED,
//! MODIFIED, DELETED, BOOKMARK, ERROR 410 and the re-list after it. The
//! index must hold exactly the API's objects, at the API's versions, after
//! each step.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::testing::{FakeApiServer, Replay};

#[derive(serde::Deserialize)]
struct Scenario {
    #[expect(dead_code, reason = "documentation inside the data file")]
    description: String,
    recording: Replay,
    steps: Vec<Step>,
}

#[derive(serde::Deserialize)]
struct Step {
    name: String,
    /// The step marker the watch streams wait at.
    release: Option<String>,
    /// plural → `namespace/name` (or `name`) → resourceVersion.
    expect: BTreeMap<String, BTreeMap<String, String>>,
    /// A query every kind's watcher must have sent by the end of the step.
    #[serde(default)]
    requested: Option<String>,
}

type State = BTreeMap<String, BTreeMap<String, String>>;

fn index_state(index: &SharedIndex) -> State {
    let idx = read(index);
    WATCHES
        .iter()
        .map(|&(kind, _, _, plural)| (plural.to_string(), idx.versions(kind)))
        .collect()
}

fn metric(metrics: &Metrics, series: &str) -> Option<f64> {
    metrics.render().lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_watch_traffic_drives_the_index_step_by_step() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/watch/every-kind.json"
    );
    let text = std::fs::read_to_string(path).expect("the recording exists");
    let scenario: Scenario = serde_json::from_str(&text).expect("the recording parses");
    assert_eq!(
        scenario
            .recording
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .len(),
        WATCHES.len(),
        "the recording covers every watched kind"
    );
    for &(_, _, _, plural) in WATCHES {
        assert!(
            scenario.recording.contains_key(plural),
            "no recording for {plural}"
        );
    }
    let server = FakeApiServer::start(0, Vec::new());
    server.replay(scenario.recording.clone());
    let metrics = Metrics::new();
    let sources = spawn_api_sources(
        SourcesConfig {
            inventory: Vec::new(),
            index: IndexConfig {
                node_name: "node-1".into(),
                ..IndexConfig::default()
            },
            metrics: metrics.clone(),
            poll_interval: Duration::from_secs(2),
            api_grace: Duration::from_secs(30),
            status_spread: Duration::ZERO,
        },
        kube::Config::new(server.url().parse().expect("url")),
    )
    .expect("client configured");
    let policy_errors = "segwatch_policy_errors_total{policy=\"policy-a\"}";

    for step in &scenario.steps {
        if let Some(r) = &step.release {
            server.release(r);
        }
        // Some steps change nothing in the index; what tells that they
        // were processed is checked with them.
        let extra_done = || match step.name.as_str() {
            "s2-modified" => metric(&metrics, policy_errors) == Some(1.0),
            _ => match &step.requested {
                Some(q) => {
                    server
                        .requests()
                        .iter()
                        .filter(|r| r.starts_with("GET ") && r.contains(q.as_str()))
                        .count()
                        == WATCHES.len()
                }
                None => true,
            },
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = index_state(&sources.index);
            if state == step.expect && extra_done() {
                break;
            }
            assert!(
                server.mismatches().is_empty(),
                "step {}: requests the recording does not expect: {:#?}",
                step.name,
                server.mismatches()
            );
            if tokio::time::Instant::now() > deadline {
                let diff: Vec<String> = step
                    .expect
                    .iter()
                    .filter(|(p, want)| state.get(*p) != Some(want))
                    .map(|(p, want)| format!("{p}: index {:?}, API {want:?}", state.get(p)))
                    .collect();
                panic!(
                    "after step {}, the index must equal the API's state:\n{}\nrequests: {:#?}\npolicy errors: {:?}",
                    step.name,
                    diff.join("\n"),
                    server.requests(),
                    metric(&metrics, policy_errors)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(sources.ready.is_set(), "ready once every list is in");
        if step.name == "s5-gone-relisted" {
            assert_eq!(
                metric(&metrics, policy_errors),
                Some(1.0),
                "the re-listed invalid version is the same version: not counted again"
            );
        }
    }
    assert!(server.mismatches().is_empty(), "{:?}", server.mismatches());
    assert_eq!(
        server.pending(),
        BTreeMap::new(),
        "every recorded exchange was asked for"
    );

    // 410 Gone is routine: no read error, no outage.
    assert_eq!(
        metric(&metrics, "segwatch_inventory_errors_total{source=\"kube\"}").unwrap_or(0.0),
        0.0,
        "{}",
        metrics.render()
    );
    assert_eq!(sources.health.degraded(), None);

    // What the index derives from the objects follows them too.
    {
        let idx = read(&sources.index);
        let pod_at = |ip: &str| match idx.resolve(ip.parse().expect("ip")) {
            crate::index::Resolved::Pod(p) => Some((
                p.name.to_string(),
                p.labels.get("revision").cloned().unwrap_or_default(),
            )),
            _ => None,
        };
        assert_eq!(
            pod_at("10.1.0.1"),
            Some(("web-a".into(), "2".into())),
            "modified"
        );
        assert_eq!(pod_at("10.1.0.2"), None, "deleted");
        assert_eq!(pod_at("10.1.0.3"), None, "gone at the re-list");
        assert_eq!(
            pod_at("10.1.0.4"),
            Some(("web-d".into(), "2".into())),
            "after the re-list"
        );
        assert!(
            matches!(idx.resolve("10.96.0.1".parse().expect("ip")), crate::index::Resolved::Service(s) if s.name == "svc-a"),
            "the Service's ClusterIP"
        );
        assert!(
            matches!(idx.resolve("192.168.0.4".parse().expect("ip")), crate::index::Resolved::Node(n) if &**n == "node-d"),
            "the Node's address"
        );
    }

    // The invalid version was reported on the object; the valid ones too.
    // (Status writes trail the index by up to a writer tick.)
    let final_written = || {
        server.status_patches().iter().any(|(n, p)| {
            let c = &p["status"]["conditions"][0];
            n == "policy-a" && c["status"] == "True" && c["observedGeneration"] == 3
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !final_written() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let patches = server.status_patches();
    let conditions = |name: &str| -> Vec<serde_json::Value> {
        patches
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, p)| p["status"]["conditions"][0].clone())
            .collect()
    };
    let a = conditions("policy-a");
    assert!(
        a.iter().any(|c| c["type"] == "Accepted"
            && c["status"] == "False"
            && c["reason"] == "Invalid"
            && c["observedGeneration"] == 2
            && c["message"].as_str().is_some_and(|m| m.contains("TCPX"))),
        "Accepted=False with the problem for generation 2: {a:#?}"
    );
    let last = a.last().expect("policy-a has conditions");
    assert_eq!(
        (&last["status"], &last["observedGeneration"]),
        (&serde_json::json!("True"), &serde_json::json!(3)),
        "the valid generation 3 is Accepted again: {a:#?}"
    );
    assert!(
        conditions("policy-d")
            .iter()
            .any(|c| c["status"] == "True" && c["observedGeneration"] == 2),
        "valid policies are Accepted: {patches:#?}"
    );
}
