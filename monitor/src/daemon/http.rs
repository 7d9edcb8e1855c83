//! /metrics, /healthz and /readyz.
//!
//! /healthz: the process serves requests (liveness). /readyz: programs are
//! attached and the cluster view has synced; 503 with the reason otherwise,
//! including "degraded" states such as a lost API server or netlink feed,
//! and a failed program load.
//!
//! ```text
//!  --metrics-auth none:        ADDR (HTTP, or HTTPS with --tls-*): /metrics /healthz /readyz
//!  --metrics-auth kubernetes:  ADDR (HTTPS): /metrics behind TokenReview + SubjectAccessReview
//!                              --probe-addr (HTTP): /healthz /readyz, for the kubelet
//! ```
//!
//! The listeners are bound before the programs are loaded, so a slow or
//! failing load is visible on /readyz instead of a process that never
//! answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::auth::{self, Decision, Reviewer};
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
    /// Why the programs could not be loaded, once that failed.
    load_failed: Mutex<Option<String>>,
}

impl Health {
    /// The programs could not be loaded: /readyz says why from now on.
    pub fn set_load_failed(&self, why: &str) {
        *self.load_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    }

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
        if let Some(why) = &*self.load_failed.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(format!("cannot load the eBPF programs: {why}"));
        }
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

/// Where and how to serve.
#[derive(Clone)]
pub struct Endpoints {
    /// `--metrics-addr`: /metrics (and the probes when `probe_addr` is not
    /// set and there is no authentication).
    pub metrics_addr: SocketAddr,
    /// `--probe-addr`: /healthz and /readyz, plain HTTP.
    pub probe_addr: Option<SocketAddr>,
    /// HTTPS on `metrics_addr`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--metrics-auth kubernetes`: who may read /metrics.
    pub auth: Option<Arc<Reviewer>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--metrics-addr {addr}: cannot listen: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--probe-addr {addr}: cannot listen: {source}")]
    Probe {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The running listeners; aborted on drop.
pub struct Server {
    /// Where /metrics is served (the bound address: port 0 resolved).
    pub metrics_addr: SocketAddr,
    pub probe_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.abort();
    }
}

fn probes(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Binds every listener now (so a bad address fails at start) and serves
/// in the background.
pub async fn serve(
    ep: Endpoints,
    metrics: Metrics,
    health: Arc<Health>,
) -> Result<Server, ServeError> {
    let state = AppState { metrics, health };
    let mut app = Router::new()
        .route("/metrics", get(self::metrics))
        .with_state(state.clone());
    match &ep.auth {
        Some(reviewer) => {
            app = app.layer(axum::middleware::from_fn_with_state(
                reviewer.clone(),
                require_token,
            ));
        }
        // Plain mode: everything on one address, as before.
        None if ep.probe_addr.is_none() => app = app.merge(probes(state.clone())),
        None => {}
    }
    let addr = ep.metrics_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Metrics { addr, source })?;
    let metrics_addr = listener
        .local_addr()
        .map_err(|source| ServeError::Metrics { addr, source })?;
    let mut tasks = Vec::new();
    match ep.tls {
        Some(tls) => {
            let listener = super::tls::TlsListener::new(listener, tls)
                .map_err(|source| ServeError::Metrics { addr, source })?;
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            }));
        }
        None => tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        })),
    }
    let mut probe_addr = None;
    if let Some(addr) = ep.probe_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Probe { addr, source })?;
        probe_addr = Some(
            listener
                .local_addr()
                .map_err(|source| ServeError::Probe { addr, source })?,
        );
        let app = probes(state);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "probe server stopped");
            }
        }));
    }
    Ok(Server {
        metrics_addr,
        probe_addr,
        tasks,
    })
}

/// 401 without a valid bearer token, 403 for a user without `get` on
/// `/metrics`, 503 when the API server cannot tell; the metrics otherwise.
async fn require_token(
    State(reviewer): State<Arc<Reviewer>>,
    req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
        .map(str::to_owned);
    let unauthorized = || {
        (
            StatusCode::UNAUTHORIZED,
            // RFC 6750 §3: tell the client which scheme to use.
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"segwatch\"")],
            "Unauthorized: a bearer token the API server accepts is required\n",
        )
            .into_response()
    };
    let Some(token) = token else {
        return unauthorized();
    };
    match reviewer.check(&token).await {
        Ok(Decision::Allowed { user }) => {
            tracing::debug!(%user, "metrics: scrape allowed");
            next.run(req).await
        }
        Ok(Decision::Unauthenticated) => unauthorized(),
        Ok(Decision::Forbidden { user, reason }) => {
            tracing::debug!(%user, %reason, "metrics: scrape forbidden");
            (
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden: user \"{user}\" may not get {}\n",
                    auth::METRICS_PATH
                ),
            )
                .into_response()
        }
        Err(e) => {
            // Never served unverified; the scraper retries next interval.
            tracing::warn!(error = %format!("{e:#}"), "metrics: cannot verify a scraper's token");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot verify the token with the API server\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain HTTP/1.0 GET; (status, body).
    async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes())
            .await
            .expect("send");
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.expect("read");
        let code = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_need_a_token_the_api_server_accepts_and_authorizes() {
        let api = crate::testing::FakeApiServer::start(0, Vec::new());
        api.set_reviews(crate::testing::Reviews {
            tokens: [
                (
                    "tok-prometheus".to_string(),
                    "system:serviceaccount:monitoring:prometheus".to_string(),
                ),
                (
                    "tok-web".to_string(),
                    "system:serviceaccount:shop:web".to_string(),
                ),
            ]
            .into(),
            allowed: ["system:serviceaccount:monitoring:prometheus".to_string()].into(),
        });
        let client = kube::Client::try_from(kube::Config::new(api.url().parse().expect("url")))
            .expect("client");
        let health = Arc::new(Health::default());
        health.set_ready(true, true);
        let metrics = Metrics::new();
        let server = serve(
            Endpoints {
                metrics_addr: "127.0.0.1:0".parse().expect("addr"),
                probe_addr: Some("127.0.0.1:0".parse().expect("addr")),
                tls: None,
                auth: Some(Arc::new(Reviewer::new(client))),
            },
            metrics,
            health,
        )
        .await
        .expect("serve");
        let m = server.metrics_addr;
        let (code, _) = get(m, "/metrics", None).await;
        assert_eq!(code, 401, "no token");
        let (code, _) = get(m, "/metrics", Some("tok-unknown")).await;
        assert_eq!(code, 401, "a token the TokenReview rejects");
        let (code, body) = get(m, "/metrics", Some("tok-web")).await;
        assert_eq!(
            code, 403,
            "authenticated, but not allowed get /metrics: {body}"
        );
        assert!(body.contains("system:serviceaccount:shop:web"), "{body}");
        let (code, body) = get(m, "/metrics", Some("tok-prometheus")).await;
        assert_eq!(code, 200, "allowed: {body}");
        assert!(body.contains("segwatch_build_info"), "{body}");
        // The probes are not on the metrics address, and need no token on
        // their own.
        assert_eq!(get(m, "/readyz", Some("tok-prometheus")).await.0, 404);
        let p = server.probe_addr.expect("probe listener");
        assert_eq!(get(p, "/readyz", None).await, (200, "ready\n".to_string()));
        assert_eq!(get(p, "/healthz", None).await, (200, "ok\n".to_string()));
        assert_eq!(
            get(p, "/metrics", None).await.0,
            404,
            "no metrics on the probe port"
        );
        // Decisions are cached: more scrapes, no more reviews.
        let reviews = || {
            api.requests()
                .iter()
                .filter(|r| r.contains("tokenreviews"))
                .count()
        };
        let before = reviews();
        assert_eq!(
            before,
            3,
            "one TokenReview per distinct token: {:?}",
            api.requests()
        );
        for _ in 0..3 {
            assert_eq!(get(m, "/metrics", Some("tok-prometheus")).await.0, 200);
            assert_eq!(get(m, "/metrics", Some("tok-web")).await.0, 403);
        }
        assert_eq!(reviews(), before, "cached decisions: {:?}", api.requests());
        let sars = api
            .requests()
            .iter()
            .filter(|r| r.contains("subjectaccessreviews"))
            .count();
        assert_eq!(sars, 2, "one SubjectAccessReview per authenticated user");
    }

    #[tokio::test]
    async fn without_auth_everything_is_on_the_metrics_address() {
        let health = Arc::new(Health::default());
        let server = serve(
            Endpoints {
                metrics_addr: "127.0.0.1:0".parse().expect("addr"),
                probe_addr: None,
                tls: None,
                auth: None,
            },
            Metrics::new(),
            health.clone(),
        )
        .await
        .expect("serve");
        let m = server.metrics_addr;
        assert_eq!(get(m, "/metrics", None).await.0, 200);
        assert_eq!(get(m, "/healthz", None).await, (200, "ok\n".to_string()));
        // Before the load: not ready, and after a failed one, the reason.
        assert_eq!(get(m, "/readyz", None).await.0, 503);
        health.set_load_failed("missing capabilities CAP_BPF");
        assert_eq!(
            get(m, "/readyz", None).await,
            (
                503,
                "cannot load the eBPF programs: missing capabilities CAP_BPF\n".to_string()
            )
        );
    }

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
