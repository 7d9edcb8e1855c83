//! Test support shared by this crate's tests and the end-to-end tests in
//! `tests/` (feature `test-support`): a stand-in for the Kubernetes API
//! server, so the real kube client, watchers, backoff and health tracking
//! run without a cluster.
//!
//! ```text
//!  GET  list / watch of a watched plural ─► a recorded exchange (Replay), in order,
//!                                           else the static objects (quiet cluster)
//!  POST tokenreviews, subjectaccessreviews ─► Reviews (tokens → users, allowed users)
//!  PATCH segmentationpolicies/NAME/status ─► recorded (status_patches)
//! ```
//!
//! Recorded exchanges are the API's documented wire format
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/>):
//! `List` bodies with `metadata.resourceVersion` and `metadata.continue`,
//! watch streams of `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":...}`
//! lines over chunked transfer encoding. A watch stream pauses at each
//! `{"step": NAME}` marker until the test calls [`FakeApiServer::release`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::index::WATCHES;
use crate::inventory::ObjectKind;

/// Who the fake TokenReview and SubjectAccessReview know.
#[derive(Clone, Debug, Default)]
pub struct Reviews {
    /// token → username the TokenReview answers with (others: not
    /// authenticated).
    pub tokens: BTreeMap<String, String>,
    /// Users the SubjectAccessReview allows `get` on the non-resource URL
    /// `/metrics` (nothing else is ever allowed).
    pub allowed: BTreeSet<String>,
}

/// One recorded answer to a request for a resource.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// Query parameters the request must carry (`watch` is "true" for a
    /// watch, absent for a list); a request that differs is answered 400
    /// and recorded in [`FakeApiServer::mismatches`].
    #[serde(default)]
    pub expect: BTreeMap<String, String>,
    #[serde(default = "ok")]
    pub status: u16,
    /// The whole answer of a list (or an error Status).
    #[serde(default)]
    pub body: Option<Value>,
    /// The events of a watch, with `{"step": NAME}` pauses.
    #[serde(default)]
    pub stream: Option<Vec<Value>>,
    /// After the last event: close the stream (true) or hold it open like a
    /// quiet cluster (false).
    #[serde(default)]
    pub close: bool,
}

fn ok() -> u16 {
    200
}

/// Recorded exchanges per resource plural, answered in order.
pub type Replay = BTreeMap<String, Vec<Exchange>>;

#[derive(Default)]
struct Shared {
    objects: Vec<Value>,
    reviews: Reviews,
    replay: HashMap<String, VecDeque<Exchange>>,
    replaying: bool,
    released: BTreeSet<String>,
    mismatches: Vec<String>,
    requests: Vec<String>,
    status_patches: Vec<(String, Value)>,
}

struct State {
    shared: Mutex<Shared>,
    released: Condvar,
    stop: AtomicBool,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Answers lists of every watched resource with the given objects (by
/// their `kind`), a 404 for SegmentationPolicies (as when the CRD is not
/// installed), and holds watches open without events, like a quiet
/// cluster; or, with [`FakeApiServer::replay`], answers each resource's
/// requests with recorded exchanges. Connections are plain HTTP/1.1 on
/// loopback.
pub struct FakeApiServer {
    pub port: u16,
    state: Arc<State>,
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
        let state = Arc::new(State {
            shared: Mutex::new(Shared {
                objects,
                ..Shared::default()
            }),
            released: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (state2, conns2) = (state.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            // Polling keeps shutdown simple: the listener closes when this
            // thread ends.
            while !state2.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).expect("blocking stream");
                        if let Ok(c) = s.try_clone() {
                            conns2.lock().expect("conns").push(c);
                        }
                        let state = state2.clone();
                        std::thread::spawn(move || connection(s, &state));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeApiServer {
            port,
            state,
            conns,
            accept: Some(accept),
        }
    }

    /// Answers every resource's requests with the recorded exchanges in
    /// order (resources without a recording answer an empty list and a
    /// quiet watch); a request past the end of a recording is a mismatch.
    pub fn replay(&self, replay: Replay) {
        let mut s = self.state.lock();
        s.replaying = true;
        s.replay = replay
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
    }

    /// Lets every watch stream go on past its `{"step": name}` marker.
    pub fn release(&self, step: &str) {
        self.state.lock().released.insert(step.to_string());
        self.state.released.notify_all();
    }

    /// Requests that did not match the recording, as one line each.
    pub fn mismatches(&self) -> Vec<String> {
        self.state.lock().mismatches.clone()
    }

    /// Every request so far: `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().requests.clone()
    }

    /// Recorded exchanges not asked for yet, per resource.
    pub fn pending(&self) -> BTreeMap<String, usize> {
        self.state
            .lock()
            .replay
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, q)| (k.clone(), q.len()))
            .collect()
    }

    /// Sets who the TokenReview and SubjectAccessReview know.
    pub fn set_reviews(&self, reviews: Reviews) {
        self.state.lock().reviews = reviews;
    }

    /// Every PATCH to a SegmentationPolicy's status: (name, patch body).
    pub fn status_patches(&self) -> Vec<(String, Value)> {
        self.state.lock().status_patches.clone()
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
        self.state.stop.store(true, Ordering::Relaxed);
        self.state.released.notify_all();
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

/// One parsed request.
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// One connection: HTTP/1.1 keep-alive requests until the client or
/// `shutdown` closes it.
fn connection(mut s: TcpStream, state: &State) {
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
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < length {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or("GET").to_string();
        let target = words.next().unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let req = Request {
            method,
            path: path.to_string(),
            query,
            body,
        };
        state
            .lock()
            .requests
            .push(format!("{} {target}", req.method));
        if !answer(&mut s, state, &req) {
            return;
        }
    }
}

fn write_json(s: &mut TcpStream, status: u16, body: &Value) -> bool {
    let body = body.to_string();
    let reply = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    s.write_all(reply.as_bytes()).is_ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        410 => "Gone",
        _ => "Status",
    }
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

/// Answers one request; false when the connection is done.
fn answer(s: &mut TcpStream, state: &State, req: &Request) -> bool {
    let plural = req.path.rsplit('/').next().unwrap_or_default();
    match (req.method.as_str(), plural) {
        ("POST", "tokenreviews") => return write_json(s, 201, &token_review(state, &req.body)),
        ("POST", "subjectaccessreviews") => {
            return write_json(s, 201, &access_review(state, &req.body))
        }
        ("PATCH", "status") => {
            // /apis/segwatch.dev/v1alpha1/segmentationpolicies/NAME/status
            let name = req.path.rsplit('/').nth(1).unwrap_or_default().to_string();
            let patch: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            state
                .lock()
                .status_patches
                .push((name.clone(), patch.clone()));
            // The object as the API server would return it: enough for the
            // client to parse.
            let obj = json!({
                "apiVersion": "segwatch.dev/v1alpha1", "kind": "SegmentationPolicy",
                "metadata": {"name": name}, "spec": {},
                "status": patch.get("status").cloned().unwrap_or(Value::Null)
            });
            return write_json(s, 200, &obj);
        }
        _ => {}
    }
    let watch = matches!(
        req.query.get("watch").map(String::as_str),
        Some("true" | "1")
    );
    let recorded = {
        let mut sh = state.lock();
        if sh.replaying {
            match sh.replay.get_mut(plural).map(VecDeque::pop_front) {
                Some(Some(x)) => Some(Ok(x)),
                Some(None) => Some(Err(format!(
                    "{} {}: past the end of the recording",
                    req.method, req.path
                ))),
                None => None,
            }
        } else {
            None
        }
    };
    let x = match recorded {
        Some(Ok(x)) => x,
        Some(Err(why)) => {
            state.lock().mismatches.push(why.clone());
            return write_json(s, 400, &status_object(400, "BadRequest", &why));
        }
        None => {
            if watch {
                return hold_quiet_watch(s, state);
            }
            let (status, body) = list(&req.path, &state.lock().objects);
            return write_json(s, status, &body);
        }
    };
    let mut expect = x.expect.clone();
    let want_watch = expect.remove("watch").is_some_and(|w| w == "true");
    let mut problems = Vec::new();
    if want_watch != watch {
        problems.push(format!(
            "expected a {}",
            if want_watch { "watch" } else { "list" }
        ));
    }
    for (k, v) in &expect {
        if req.query.get(k) != Some(v) {
            problems.push(format!("expected {k}={v}, got {:?}", req.query.get(k)));
        }
    }
    if !problems.is_empty() {
        let why = format!(
            "GET {}?{}: {}",
            req.path,
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(req.query.iter())
                .finish(),
            problems.join("; ")
        );
        state.lock().mismatches.push(why.clone());
        return write_json(s, 400, &status_object(400, "BadRequest", &why));
    }
    match (&x.stream, watch) {
        (Some(events), true) if x.status == 200 => stream(s, state, events, x.close),
        _ => write_json(
            s,
            x.status,
            x.body.as_ref().unwrap_or(&json!({"kind": "Status"})),
        ),
    }
}

/// A watch with no events, held until the client goes or the server
/// shuts down.
fn hold_quiet_watch(s: &mut TcpStream, state: &State) -> bool {
    if s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .is_err()
    {
        return false;
    }
    hold_open(s, state)
}

fn chunk(s: &mut TcpStream, data: &[u8]) -> bool {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    s.write_all(&out).is_ok() && s.flush().is_ok()
}

/// Sends the events of a recorded watch over chunked encoding, pausing at
/// each step marker until it is released. Each event is split over two
/// chunks: chunk boundaries carry no meaning, and the client must join
/// the lines itself.
fn stream(s: &mut TcpStream, state: &State, events: &[Value], close: bool) -> bool {
    if s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .is_err()
    {
        return false;
    }
    for ev in events {
        if let Some(step) = ev.get("step").and_then(Value::as_str) {
            let mut sh = state.lock();
            while !sh.released.contains(step) {
                if state.stop.load(Ordering::Relaxed) {
                    return false;
                }
                sh = state
                    .released
                    .wait_timeout(sh, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            continue;
        }
        let mut line = ev.to_string().into_bytes();
        line.push(b'\n');
        let mid = line.len() / 2;
        if !chunk(s, &line[..mid]) || !chunk(s, &line[mid..]) {
            return false;
        }
    }
    if close {
        // The API server ends the stream; the connection stays usable.
        return s.write_all(b"0\r\n\r\n").is_ok();
    }
    hold_open(s, state)
}

/// Holds a started watch response open (no further events) until the
/// client goes or the server shuts down.
fn hold_open(s: &mut TcpStream, state: &State) -> bool {
    let mut chunk = [0u8; 64];
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
        if state.stop.load(Ordering::Relaxed) {
            return false;
        }
    }
}

/// The TokenReview answer: authenticated with the user the token maps to,
/// or not authenticated (TokenReview v1 status, as the API server fills it).
fn token_review(state: &State, body: &[u8]) -> Value {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let token = req["spec"]["token"].as_str().unwrap_or_default();
    let user = state.lock().reviews.tokens.get(token).cloned();
    let status = match user {
        Some(u) => json!({
            "authenticated": true,
            "user": {"username": u, "uid": format!("uid-{u}"),
                     "groups": ["system:serviceaccounts", "system:authenticated"]}
        }),
        None => json!({"user": {}, "error": "invalid bearer token"}),
    };
    json!({
        "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {}, "spec": req["spec"], "status": status
    })
}

/// The SubjectAccessReview answer: allowed only for a known user asking
/// `get` on the non-resource URL `/metrics`.
fn access_review(state: &State, body: &[u8]) -> Value {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let spec = &req["spec"];
    let user = spec["user"].as_str().unwrap_or_default();
    let nra = &spec["nonResourceAttributes"];
    let asks_metrics = nra["path"] == "/metrics" && nra["verb"] == "get";
    let allowed = asks_metrics && state.lock().reviews.allowed.contains(user);
    let reason = if allowed {
        "RBAC: allowed by ClusterRoleBinding \"segwatch-metrics-reader\""
    } else {
        ""
    };
    json!({
        "kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "metadata": {}, "spec": spec, "status": {"allowed": allowed, "reason": reason}
    })
}

/// The answer to a list of the resource at `path`.
fn list(path: &str, objects: &[Value]) -> (u16, Value) {
    let plural = path.rsplit('/').next().unwrap_or_default();
    let watched = WATCHES.iter().find(|w| w.3 == plural);
    let Some(&(kind, group, version, _)) =
        watched.filter(|w| w.0 != ObjectKind::SegmentationPolicy)
    else {
        return (
            404,
            status_object(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
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
    (200, body)
}

/// Every data record in the datagrams, decoded by `netflow_parser` (a
/// second, independent reading of our IPFIX export; the export's unit tests
/// and `tests/tests/export.rs` use it), as element → value (`IANA(Name)` or
/// `PEN/id`); `pen` is the export's enterprise number (elements 1..=11).
pub fn decode_ipfix(
    datagrams: &[Vec<u8>],
    pen: u32,
) -> Vec<std::collections::BTreeMap<String, String>> {
    use netflow_parser::variable_versions::enterprise_registry::EnterpriseFieldDef;
    use netflow_parser::variable_versions::field_value::{FieldDataType, FieldValue};
    use netflow_parser::variable_versions::ipfix::lookup::IPFixField;
    use netflow_parser::variable_versions::ipfix::FlowSetBody;
    let mut parser = netflow_parser::NetflowParser::builder()
        .register_enterprise_fields(
            (1..=11)
                .map(|id| EnterpriseFieldDef::new(pen, id, "segwatch", FieldDataType::String))
                .collect::<Vec<_>>(),
        )
        .build()
        .expect("parser");
    let mut out = Vec::new();
    for d in datagrams {
        let res = parser.parse_bytes(d);
        assert!(res.error.is_none(), "netflow_parser: {:?}", res.error);
        for p in res.packets {
            let netflow_parser::NetflowPacket::IPFix(ipfix) = p else {
                panic!("not IPFIX: {p:?}")
            };
            for fs in ipfix.flowsets {
                let FlowSetBody::Data(data) = fs.body else {
                    continue;
                };
                for rec in data.fields {
                    let mut m = std::collections::BTreeMap::new();
                    for (field, value) in rec {
                        let k = match field {
                            IPFixField::Enterprise {
                                enterprise_number,
                                field_number,
                            } => format!("{enterprise_number}/{field_number}"),
                            other => format!("{other:?}"),
                        };
                        let v = match value {
                            FieldValue::String(s) => s.value,
                            FieldValue::DataNumber(n) => format!("{n:?}")
                                .trim_end_matches(')')
                                .rsplit('(')
                                .next()
                                .unwrap_or("")
                                .to_string(),
                            FieldValue::Ip4Addr(a) => a.to_string(),
                            FieldValue::Ip6Addr(a) => a.to_string(),
                            other => format!("{other:?}"),
                        };
                        m.insert(k, v);
                    }
                    out.push(m);
                }
            }
        }
    }
    out
}
