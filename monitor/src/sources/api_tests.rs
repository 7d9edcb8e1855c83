//! The kube watchers against a small fake API server on loopback: the
//! real client, watcher, backoff and health review, no cluster needed.

use std::time::Duration;

use super::*;
use crate::testing::FakeApiServer;

/// One Namespace and one Pod (SegmentationPolicies answer 404: the CRD is
/// not installed).
fn cluster() -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "resourceVersion": "1"}
        }),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop", "resourceVersion": "1"},
            "status": {"podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}]}
        }),
    ]
}

/// Polls `f` every 50 ms for up to `limit` (also for the tests in
/// `sources.rs`).
pub(super) async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_api_server_degrades_the_sources_keeps_the_index_and_recovers() {
    let mut server = FakeApiServer::start(0, cluster());
    let metrics = Metrics::new();
    let grace = Duration::from_secs(1);
    let kube = kube::Config::new(server.url().parse().expect("url"));
    let sources = spawn_api_sources(
        SourcesConfig {
            inventory: Vec::new(),
            index: IndexConfig::default(),
            metrics: metrics.clone(),
            poll_interval: Duration::from_secs(2),
            api_grace: grace,
            status_spread: Duration::ZERO,
        },
        kube,
    )
    .expect("client configured");
    let web_0 = || {
        matches!(read(&sources.index).resolve("10.1.0.5".parse().expect("ip")),
            crate::index::Resolved::Pod(p) if &*p.name == "web-0" && &*p.namespace == "shop")
    };
    let up = |v: i64| {
        metrics
            .render()
            .contains(&format!("segwatch_source_up{{source=\"kube\"}} {v}\n"))
    };
    assert!(
        eventually(Duration::from_secs(20), || sources.ready.is_set()).await,
        "ready once every list is in (the missing CRD does not hold it back)"
    );
    assert!(web_0(), "the listed pod is in the index");
    // Longer than the grace with the SegmentationPolicy list answering 404
    // all along: a missing CRD is not an outage.
    tokio::time::sleep(grace * 3).await;
    assert_eq!(sources.health.degraded(), None, "healthy API server");
    assert!(up(1), "source up:\n{}", metrics.render());

    server.shutdown();
    assert!(
        eventually(Duration::from_secs(20), || sources
            .health
            .degraded()
            .is_some())
        .await,
        "the sources report degraded once the API server is gone past the grace"
    );
    let why = sources.health.degraded().unwrap_or_default();
    let url = server.url();
    assert!(
        why.starts_with(&format!("API server {url}/: cannot watch "))
            && why.contains("last successful contact ")
            && why.contains(" ago")
            && why.to_lowercase().contains("connect"),
        "the reason names the API server, the error and the last contact: {why}"
    );
    assert!(up(0), "source down:\n{}", metrics.render());
    assert!(web_0(), "the index keeps the last good state");

    // Back on the same port: the watchers' next retry (backoff at most a
    // few seconds by now) reaches it and the degraded state ends.
    let _server = FakeApiServer::start(server.port, cluster());
    assert!(
        eventually(Duration::from_secs(40), || sources
            .health
            .degraded()
            .is_none())
        .await,
        "degraded ends once the API server answers again: {:?}",
        sources.health.degraded()
    );
    assert!(
        eventually(Duration::from_secs(2), || up(1)).await,
        "source up again:\n{}",
        metrics.render()
    );
    assert!(web_0());
}
