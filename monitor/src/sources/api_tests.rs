//! The kube watchers against a small fake API server on loopback: the
//! real client, watcher, backoff and health review, no cluster needed.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// Answers lists of every watched resource (one Namespace and one Pod,
/// a 404 for SegmentationPolicies as when the CRD is not installed) and
/// holds watches open without events, like a quiet cluster.
struct FakeApiServer {
    port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1:`port` (0: any free port).
    fn start(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the fake API server");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            // Polling keeps shutdown simple: the listener closes when this
            // thread ends.
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).expect("blocking stream");
                        if let Ok(c) = s.try_clone() {
                            conns2.lock().expect("conns").push(c);
                        }
                        std::thread::spawn(move || serve(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeApiServer {
            port,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the listener and every open connection (watches included):
    /// from now on connections are refused, as when the API server is gone.
    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            t.join().expect("accept thread");
        }
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One connection: HTTP/1.1 keep-alive requests until the client or
/// `shutdown` closes it.
fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if query
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1")
        {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            // Hold the watch until the client goes or the server shuts down.
            while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
            return;
        }
        let (status, body) = list(path);
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// The answer to a list of the resource at `path`.
fn list(path: &str) -> (&'static str, String) {
    let plural = path.rsplit('/').next().unwrap_or_default();
    let Some(&(kind, group, version, _)) = WATCHES.iter().find(|w| w.3 == plural) else {
        return ("404 Not Found", not_found());
    };
    if kind == ObjectKind::SegmentationPolicy {
        return ("404 Not Found", not_found());
    }
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let items = match kind {
        ObjectKind::Namespace => serde_json::json!([{
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "resourceVersion": "1"}
        }]),
        ObjectKind::Pod => serde_json::json!([{
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop", "resourceVersion": "1"},
            "status": {"podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}]}
        }]),
        _ => serde_json::json!([]),
    };
    let body = serde_json::json!({
        "apiVersion": api_version,
        "kind": format!("{}List", kind.as_str()),
        "metadata": {"resourceVersion": "1"},
        "items": items,
    });
    ("200 OK", body.to_string())
}

fn not_found() -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": "the server could not find the requested resource",
        "reason": "NotFound", "code": 404
    })
    .to_string()
}

/// Polls `f` every 50 ms for up to `limit`.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
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
    let mut server = FakeApiServer::start(0);
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
    let _server = FakeApiServer::start(server.port);
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
