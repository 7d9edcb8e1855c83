//! /metrics, /healthz and /readyz.
//!
//! /healthz: the process serves requests (liveness). /readyz: programs are
//! attached and the cluster view has synced; 503 with the reason otherwise,
//! including "degraded" states such as a lost API server or netlink feed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// The parts of the daemon that can degrade it, each with its own reason:
/// one clearing must not hide another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// The netlink feed of new interfaces.
    LinkFeed,
    /// The cluster sources (API server watches).
    ClusterSources,
}

#[derive(Default)]
pub struct Health {
    attached: AtomicBool,
    synced: AtomicBool,
    degraded: Mutex<BTreeMap<Component, String>>,
}

impl Health {
    pub fn set_ready(&self, attached: bool, synced: bool) {
        self.attached.store(attached, Ordering::Relaxed);
        self.synced.store(synced, Ordering::Relaxed);
    }

    fn degraded(&self) -> std::sync::MutexGuard<'_, BTreeMap<Component, String>> {
        self.degraded.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_degraded(&self, part: Component, why: &str) {
        self.degraded().insert(part, why.to_string());
    }

    pub fn clear_degraded(&self, part: Component) {
        self.degraded().remove(&part);
    }

    /// `Ok("ready")` or the reason it is not.
    pub fn readiness(&self) -> Result<&'static str, String> {
        {
            let degraded = self.degraded();
            if !degraded.is_empty() {
                let why: Vec<&str> = degraded.values().map(String::as_str).collect();
                return Err(format!("degraded: {}", why.join("; ")));
            }
        }
        if !self.attached.load(Ordering::Relaxed) {
            return Err("programs not attached yet".into());
        }
        if !self.synced.load(Ordering::Relaxed) {
            return Err("cluster index not synced yet".into());
        }
        Ok("ready")
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.health.readiness() {
        Ok(r) => (StatusCode::OK, format!("{r}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Binds `addr` now (so a bad address fails at start) and serves in the
/// background.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_component_degrades_readiness_on_its_own() {
        let h = Health::default();
        h.set_ready(true, true);
        assert_eq!(h.readiness(), Ok("ready"));
        h.set_degraded(Component::LinkFeed, "netlink link feed stopped");
        h.set_degraded(Component::ClusterSources, "API server x: cannot watch pods");
        assert_eq!(
            h.readiness(),
            Err("degraded: netlink link feed stopped; API server x: cannot watch pods".into())
        );
        // The API server coming back does not hide the dead link feed.
        h.clear_degraded(Component::ClusterSources);
        assert_eq!(
            h.readiness(),
            Err("degraded: netlink link feed stopped".into())
        );
        h.clear_degraded(Component::LinkFeed);
        assert_eq!(h.readiness(), Ok("ready"));
    }
}
