//! How the API server watches are doing: the sources' half of /readyz,
//! the `segwatch_source_up{source="kube"}` gauge and the degraded log lines.
//!
//! ```text
//!  watcher Err for a kind ───────────────► failing(kind, since, error)
//!  watcher event for a kind ────────────┐
//!  HTTP 2xx to a list/watch of a kind ──┴► healthy(kind), last contact = now
//!  review (every 250 ms): a required kind failing longer than the grace?
//!     no → yes: degraded, one warn line      yes → no: one info line
//! ```
//!
//! Why the HTTP answers count and not only the watcher's events: after a
//! lost connection kube's watcher resumes from its last resourceVersion
//! without emitting anything, so on a quiet cluster a recovered watch would
//! look failed until the next object changes. A thin tower layer on the
//! client sees the API server answer that resumed watch.
//!
//! Why "any required kind failing longer than a grace period" rather than
//! "every kind failing": the kinds are not independent views, the judge
//! needs all of them (a stale Pod watch alone misattributes every new pod),
//! and when the API server goes away every watch fails within the same
//! second anyway. The grace absorbs what is routine: the API server ends
//! watches every few minutes, load balancers drop idle connections, and a
//! control-plane rollout takes seconds; none of that should flap /readyz.
//! The SegmentationPolicy kind is optional: a 404 there means the CRD is not
//! installed (policies then come from `--policy` only), not an outage.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::runtime::watcher;

use crate::inventory::ObjectKind;

/// Shared by the watchers (writers), the client layer, the review task and
/// the judge (`/readyz`). Cheap to clone. The default tracks nothing and is
/// never degraded (inventory files, node-only mode).
#[derive(Clone, Default)]
pub struct SourceHealth(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// The API server's URL, as the client was configured.
    api_server: String,
    grace: Duration,
    /// plural → state of that kind's watch.
    kinds: BTreeMap<&'static str, KindState>,
    /// The last time the API server was known to answer.
    last_contact: Option<Instant>,
    /// Since when the sources are degraded (the start of the failure
    /// that made them so). Decided by [`SourceHealth::review`] only, so
    /// that the log, the gauge and /readyz agree.
    degraded: Option<Instant>,
}

struct KindState {
    kind: ObjectKind,
    /// The API server answered this kind at least once.
    contacted: bool,
    failure: Option<Failure>,
}

struct Failure {
    since: Instant,
    error: String,
    /// A SegmentationPolicy list answered 404: the CRD is not installed.
    crd_absent: bool,
}

/// A change of the degraded state, for the one log line per change.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    Degraded(String),
    Recovered { after: Duration },
}

impl SourceHealth {
    /// Health of the watches of `kinds` (kind, plural) on `api_server`:
    /// degraded once a required kind has failed for longer than `grace`.
    pub fn for_api(
        api_server: String,
        grace: Duration,
        kinds: impl IntoIterator<Item = (ObjectKind, &'static str)>,
    ) -> Self {
        let kinds = kinds
            .into_iter()
            .map(|(kind, plural)| {
                (
                    plural,
                    KindState {
                        kind,
                        contacted: false,
                        failure: None,
                    },
                )
            })
            .collect();
        SourceHealth(Arc::new(Mutex::new(State {
            api_server,
            grace,
            kinds,
            ..State::default()
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update completes before the lock is released: a panic
        // elsewhere cannot leave half a state behind.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The API server answered a request for `plural` (or, with an unknown
    /// plural, some other request) with success.
    pub fn contact(&self, plural: &str) {
        let mut s = self.lock();
        s.last_contact = Some(Instant::now());
        if let Some(k) = s.kinds.get_mut(plural) {
            k.contacted = true;
            k.failure = None;
        }
    }

    /// The watcher of `plural` failed. Returns true when this is the first
    /// sign of a missing SegmentationPolicy CRD (worth one log line).
    pub fn failed(&self, plural: &str, error: &watcher::Error) -> bool {
        let now = Instant::now();
        let status = answer(error);
        let text = describe(error);
        let mut s = self.lock();
        let Some(k) = s.kinds.get_mut(plural) else {
            return false;
        };
        let crd_absent = k.kind.is_optional_crd() && status.is_some_and(|st| st.code == 404);
        // A watch that worked until now held a live connection until now:
        // that is the last contact, not the start of that watch.
        let was_live = k.contacted && k.failure.is_none();
        let newly_absent = crd_absent && !k.failure.as_ref().is_some_and(|f| f.crd_absent);
        match &mut k.failure {
            // A missing CRD is not an outage: one starting now is new.
            Some(f) if f.crd_absent && !crd_absent => {
                *f = Failure {
                    since: now,
                    error: text,
                    crd_absent,
                }
            }
            Some(f) => {
                f.error = text;
                f.crd_absent = crd_absent;
            }
            None => {
                k.failure = Some(Failure {
                    since: now,
                    error: text,
                    crd_absent,
                })
            }
        }
        if was_live {
            s.last_contact = Some(now);
        }
        newly_absent
    }

    /// Decides the degraded state at `now`; returns the change, if any.
    pub fn review(&self, now: Instant) -> Option<Transition> {
        let mut s = self.lock();
        // Degraded after the grace; recovered only once nothing fails (a
        // kind that fails again right after answering is the same outage).
        let failing = s.failing_since();
        match (s.degraded, failing) {
            (None, Some(since)) if now.saturating_duration_since(since) > s.grace => {
                s.degraded = Some(since);
                Some(Transition::Degraded(s.reason(now)))
            }
            (Some(since), None) => {
                s.degraded = None;
                Some(Transition::Recovered {
                    after: now.saturating_duration_since(since),
                })
            }
            _ => None,
        }
    }

    /// The reason /readyz gives, while degraded.
    pub fn degraded(&self) -> Option<String> {
        let s = self.lock();
        s.degraded.map(|_| s.reason(Instant::now()))
    }
}

impl State {
    /// Start of the oldest failure of a required kind.
    fn failing_since(&self) -> Option<Instant> {
        self.required_failures().map(|(_, f)| f.since).min()
    }

    fn required_failures(&self) -> impl Iterator<Item = (&'static str, &Failure)> + '_ {
        self.kinds.iter().filter_map(|(plural, k)| {
            k.failure
                .as_ref()
                .filter(|f| !f.crd_absent)
                .map(|f| (*plural, f))
        })
    }

    fn reason(&self, now: Instant) -> String {
        let mut failing: Vec<(&'static str, &Failure)> = self.required_failures().collect();
        failing.sort_by_key(|(plural, f)| (f.since, *plural));
        let Some((first, oldest)) = failing.first() else {
            return format!("API server {}: watches recovered", self.api_server);
        };
        let more = match failing.len() - 1 {
            0 => String::new(),
            1 => " and 1 more resource".to_string(),
            n => format!(" and {n} more resources"),
        };
        let contact = match self.last_contact {
            Some(t) => format!("{} ago", human(now.saturating_duration_since(t))),
            None => "never".to_string(),
        };
        format!(
            "API server {}: cannot watch {first}{more} for {} ({}); last successful contact {contact}; \
             judging with the last known cluster state",
            self.api_server,
            human(now.saturating_duration_since(oldest.since)),
            oldest.error,
        )
    }
}

/// `42s`, `3m5s`, `2h10m`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// The API server's own answer inside a watcher error, if it gave one.
fn answer(e: &watcher::Error) -> Option<&kube::core::Status> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => Some(s),
        _ => None,
    }
}

/// One line for a watcher error: the API server's answer if there is one,
/// else the error and its causes without the repeats (each level of kube's
/// errors prints its source again).
pub fn describe(e: &watcher::Error) -> String {
    if let Some(s) = answer(e) {
        let mut out = format!("the API server answered {}", s.code);
        if !s.reason.is_empty() {
            out.push(' ');
            out.push_str(&s.reason);
        }
        if !s.message.is_empty() {
            out.push_str(": ");
            out.push_str(&s.message);
        }
        return out;
    }
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let t = c.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cause = c.source();
    }
    out
}

/// Tower layer on the kube client: a 2xx answer to a request for one of
/// the watched resources marks that resource reachable.
#[derive(Clone)]
pub struct ContactLayer(pub SourceHealth);

impl<S> tower::Layer<S> for ContactLayer {
    type Service = Contact<S>;

    fn layer(&self, inner: S) -> Contact<S> {
        Contact {
            inner,
            health: self.0.clone(),
        }
    }
}

pub struct Contact<S> {
    inner: S,
    health: SourceHealth,
}

impl<S, B> tower::Service<http::Request<kube::client::Body>> for Contact<S>
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        // Cluster-wide lists and watches end in the plural:
        // /api/v1/pods, /apis/apps/v1/deployments.
        let plural = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let health = self.health.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            if resp.status().is_success() {
                health.contact(&plural);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> watcher::Error {
        watcher::Error::WatchStartFailed(kube::Error::Service(
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused").into(),
        ))
    }

    fn not_found() -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(kube::core::Status {
            code: 404,
            reason: "NotFound".into(),
            message: "the server could not find the requested resource".into(),
            ..Default::default()
        })))
    }

    fn health() -> SourceHealth {
        SourceHealth::for_api(
            "https://10.0.0.1:6443".into(),
            Duration::from_secs(5),
            [
                (ObjectKind::Pod, "pods"),
                (ObjectKind::Namespace, "namespaces"),
                (ObjectKind::SegmentationPolicy, "segmentationpolicies"),
            ],
        )
    }

    #[test]
    fn a_failure_longer_than_the_grace_degrades_once_and_contact_ends_it() {
        let h = health();
        let t0 = Instant::now();
        h.contact("pods");
        h.contact("namespaces");
        assert!(!h.failed("pods", &refused()));
        assert_eq!(h.review(t0), None, "within the grace: not degraded");
        assert_eq!(h.degraded(), None);
        let later = Instant::now() + Duration::from_secs(6);
        let Some(Transition::Degraded(why)) = h.review(later) else {
            panic!("a kind failing for 6 s (grace 5 s) degrades the sources");
        };
        assert!(
            why.starts_with("API server https://10.0.0.1:6443: cannot watch pods for 6s (")
                && why.contains("connection refused")
                && why.contains("last successful contact 6s ago"),
            "the reason names the server, the resource, the error and the last contact: {why}"
        );
        // Retries while still down: no second transition (one log line).
        h.failed("pods", &refused());
        h.failed("namespaces", &refused());
        assert_eq!(h.review(later), None);
        assert!(h
            .degraded()
            .is_some_and(|w| w.contains("pods and 1 more resource")));
        // One resource answering is not enough while another still fails.
        h.contact("pods");
        assert_eq!(h.review(later + Duration::from_secs(1)), None);
        h.contact("namespaces");
        assert!(matches!(
            h.review(later + Duration::from_secs(1)),
            Some(Transition::Recovered { .. })
        ));
        assert_eq!(h.degraded(), None);
    }

    #[test]
    fn a_missing_segmentation_policy_crd_never_degrades() {
        let h = health();
        h.contact("pods");
        assert!(
            h.failed("segmentationpolicies", &not_found()),
            "the first 404 is reported (one log line)"
        );
        assert!(!h.failed("segmentationpolicies", &not_found()), "only once");
        assert_eq!(h.review(Instant::now() + Duration::from_secs(600)), None);
        assert_eq!(h.degraded(), None);
        // Any other failure of that kind is an outage like the others,
        // starting when it starts (not with the 404s before it).
        h.failed("segmentationpolicies", &refused());
        assert_eq!(h.review(Instant::now()), None, "within the grace");
        assert!(matches!(
            h.review(Instant::now() + Duration::from_secs(6)),
            Some(Transition::Degraded(w)) if w.contains("cannot watch segmentationpolicies for 6s")
        ));
    }

    #[test]
    fn api_answers_and_causes_read_as_one_line() {
        assert_eq!(
            describe(&not_found()),
            "the API server answered 404 NotFound: the server could not find the requested resource"
        );
        let d = describe(&refused());
        assert!(
            d.starts_with("failed to start watching object: ") && d.contains("connection refused"),
            "{d}"
        );
        assert!(!d.contains('\n'));
    }

    #[test]
    fn the_default_is_never_degraded() {
        let h = SourceHealth::default();
        h.failed("pods", &refused());
        assert_eq!(h.review(Instant::now() + Duration::from_secs(60)), None);
        assert_eq!(h.degraded(), None);
    }
}
