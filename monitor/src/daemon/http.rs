//! /metrics, /healthz and /readyz.
//!
//! /healthz: the process serves requests (liveness). /readyz: programs are
//! attached and the cluster view has synced; 503 with the reason otherwise,
//! including "degraded" states such as a lost API server or netlink feed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

#[derive(Default)]
pub struct Health {
    attached: AtomicBool,
    synced: AtomicBool,
    degraded: Mutex<Option<String>>,
}

impl Health {
    pub fn set_ready(&self, attached: bool, synced: bool) {
        self.attached.store(attached, Ordering::Relaxed);
        self.synced.store(synced, Ordering::Relaxed);
    }

    pub fn set_degraded(&self, why: &str) {
        *self.degraded.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    }

    pub fn clear_degraded(&self) {
        *self.degraded.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// `Ok("ready")` or the reason it is not.
    pub fn readiness(&self) -> Result<&'static str, String> {
        if let Some(why) = self
            .degraded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(format!("degraded: {why}"));
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
