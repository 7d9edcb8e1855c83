//! Test support shared by this crate's tests and the end-to-end tests in
//! `tests/` (feature `test-support`): a stand-in for the Kubernetes API
//! server, so the real kube client, watchers, backoff and health tracking
//! run without a cluster.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::inventory::ObjectKind;
use crate::sources::WATCHES;

/// Answers lists of every watched resource with the given objects (by
/// their `kind`), a 404 for SegmentationPolicies (as when the CRD is not
/// installed), and holds watches open without events, like a quiet
/// cluster. Connections are plain HTTP/1.1 on loopback.
pub struct FakeApiServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1:`port` (0: any free port).
    pub fn start(port: u16, objects: Vec<Value>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the fake API server");
        Self::serve(listener, objects)
    }

    /// Serves on a listener bound by the caller (e.g. inside a network
    /// namespace: a socket belongs to the namespace it was made in).
    pub fn serve(listener: TcpListener, objects: Vec<Value>) -> Self {
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let objects = Arc::new(objects);
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
                        let objects = objects.clone();
                        std::thread::spawn(move || connection(s, &objects));
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

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig file in `dir` that points at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n\
             current-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Closes the listener and every open connection, watches included:
    /// from now on connections are refused, as when the API server is gone.
    pub fn shutdown(&mut self) {
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
fn connection(mut s: TcpStream, objects: &[Value]) {
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
        let (status, body) = list(path, objects);
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
fn list(path: &str, objects: &[Value]) -> (&'static str, String) {
    let plural = path.rsplit('/').next().unwrap_or_default();
    let watched = WATCHES.iter().find(|w| w.3 == plural);
    let Some(&(kind, group, version, _)) =
        watched.filter(|w| w.0 != ObjectKind::SegmentationPolicy)
    else {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "the server could not find the requested resource",
            "reason": "NotFound", "code": 404
        });
        return ("404 Not Found", status.to_string());
    };
    let items: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some(kind.as_str()))
        .collect();
    let body = json!({
        "apiVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") },
        "kind": format!("{}List", kind.as_str()),
        "metadata": {"resourceVersion": "1"},
        "items": items,
    });
    ("200 OK", body.to_string())
}
