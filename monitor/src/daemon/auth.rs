//! Who may read `/metrics` (`--metrics-auth kubernetes`): the caller's
//! bearer token is authenticated with a TokenReview and the user it names
//! is authorized with a SubjectAccessReview for `get` on the non-resource
//! URL `/metrics`, the way the API server's own metrics, controller-runtime's
//! `WithAuthenticationAndAuthorization` filter and kube-rbac-proxy decide it.
//!
//! ```text
//!  GET /metrics ─► Authorization: Bearer T ?──no──► 401
//!                     │ yes
//!                     ▼
//!    cache[sha256(T)] ─hit─► decision
//!                     │ miss (≤ 4 reviews at once)
//!                     ▼
//!   POST tokenreviews {token: T} ─► authenticated? ──no──► 401
//!                     │ yes: user, groups, uid, extra
//!                     ▼
//!   POST subjectaccessreviews {nonResourceAttributes: get /metrics}
//!                     ├─ allowed ─► 200 + metrics
//!                     └─ denied ──► 403
//!   API server unreachable or failing: 503 (never served unverified)
//! ```
//!
//! TokenReview: <https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/token-review-v1/>;
//! SubjectAccessReview: <https://kubernetes.io/docs/reference/kubernetes-api/authorization-resources/subject-access-review-v1/>.
//! The cache keeps decisions briefly (allowed 60 s, refused 10 s) so that a
//! scrape every 15–30 s costs the API server two small POSTs a minute per
//! scraper and node at most; it holds SHA-256 digests, never tokens, and at
//! most [`CACHE_CAPACITY`] of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use sha2::{Digest as _, Sha256};

/// The non-resource URL and verb a scraper must be allowed (RBAC:
/// `nonResourceURLs: ["/metrics"], verbs: ["get"]`).
pub const METRICS_PATH: &str = "/metrics";
pub const METRICS_VERB: &str = "get";

/// Decisions kept at most; beyond, expired ones go first, then the oldest.
pub const CACHE_CAPACITY: usize = 4096;
/// How long an allowed token stays allowed without asking again.
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refused token stays refused (short: RBAC may be fixed).
pub const REFUSED_TTL: Duration = Duration::from_secs(10);
/// Tokens longer than this are refused without asking (a JWT service
/// account token is about 1 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Reviews in flight at once; more callers wait (a flood of random tokens
/// must not turn into a flood of POSTs to the API server).
const CONCURRENT_REVIEWS: usize = 4;

/// What the API server decided about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Authenticated and allowed `get /metrics`.
    Allowed { user: String },
    /// No valid token (HTTP 401).
    Unauthenticated,
    /// A valid token of a user who may not read the metrics (HTTP 403).
    Forbidden { user: String, reason: String },
}

/// The reviews could not be made: nothing is decided (HTTP 503).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("TokenReview failed: {0}")]
    TokenReview(#[source] kube::Error),
    #[error("SubjectAccessReview for {user} failed: {source}")]
    AccessReview {
        user: String,
        #[source]
        source: kube::Error,
    },
}

/// Asks the API server about bearer tokens, with a bounded cache.
pub struct Reviewer {
    client: kube::Client,
    cache: Mutex<Cache>,
    in_flight: tokio::sync::Semaphore,
}

impl Reviewer {
    pub fn new(client: kube::Client) -> Self {
        Reviewer {
            client,
            cache: Mutex::new(Cache::default()),
            in_flight: tokio::sync::Semaphore::new(CONCURRENT_REVIEWS),
        }
    }

    /// The decision for `token` (the value after `Bearer `).
    pub async fn check(&self, token: &str) -> Result<Decision, ReviewError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Ok(Decision::Unauthenticated);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(d) = self.cached(&key, Instant::now()) {
            return Ok(d);
        }
        // Closed never: the semaphore lives as long as self.
        let _permit = self.in_flight.acquire().await;
        // Someone else may have asked while we waited.
        if let Some(d) = self.cached(&key, Instant::now()) {
            return Ok(d);
        }
        let decision = self.review(token).await?;
        let ttl = match decision {
            Decision::Allowed { .. } => ALLOWED_TTL,
            _ => REFUSED_TTL,
        };
        self.lock()
            .insert(key, decision.clone(), Instant::now() + ttl);
        Ok(decision)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, key: &[u8; 32], now: Instant) -> Option<Decision> {
        self.lock().get(key, now)
    }

    async fn review(&self, token: &str) -> Result<Decision, ReviewError> {
        let tr = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                // The API server's own audiences: what a pod's projected
                // service account token (Prometheus's) is issued for.
                audiences: None,
            },
            ..Default::default()
        };
        let api = kube::Api::<TokenReview>::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &tr)
            .await
            .map_err(ReviewError::TokenReview)?;
        let status = answer.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                tracing::debug!(
                    error = status.error.as_deref().unwrap_or(""),
                    "metrics: token not authenticated"
                );
                return Ok(Decision::Unauthenticated);
            }
        };
        let name = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(METRICS_PATH.into()),
                    verb: Some(METRICS_VERB.into()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        let api = kube::Api::<SubjectAccessReview>::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|source| ReviewError::AccessReview {
                user: name.clone(),
                source,
            })?;
        let status = answer.status.unwrap_or_default();
        if status.allowed && status.denied != Some(true) {
            Ok(Decision::Allowed { user: name })
        } else {
            Ok(Decision::Forbidden {
                user: name,
                reason: status.reason.unwrap_or_default(),
            })
        }
    }
}

/// Decisions by token digest, each with its expiry.
#[derive(Default)]
struct Cache {
    entries: HashMap<[u8; 32], (Decision, Instant)>,
}

impl Cache {
    fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<Decision> {
        match self.entries.get(key) {
            Some((d, until)) if *until > now => Some(d.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: [u8; 32], d: Decision, until: Instant) {
        if self.entries.len() >= CACHE_CAPACITY && !self.entries.contains_key(&key) {
            let now = Instant::now();
            self.entries.retain(|_, (_, u)| *u > now);
            if self.entries.len() >= CACHE_CAPACITY {
                // Full of live entries: the one expiring first goes.
                if let Some(k) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, u))| *u)
                    .map(|(k, _)| *k)
                {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, (d, until));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The token of an `Authorization: Bearer <token>` header value
/// (RFC 6750 §2.1: the scheme is case-insensitive).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_nothing_else_is() {
        assert_eq!(bearer("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn the_cache_expires_entries_and_stays_bounded() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        let allowed = Decision::Allowed { user: "p".into() };
        c.insert([1; 32], allowed.clone(), t0 + ALLOWED_TTL);
        assert_eq!(c.get(&[1; 32], t0), Some(allowed));
        assert_eq!(c.get(&[1; 32], t0 + ALLOWED_TTL), None, "expired");
        assert_eq!(c.len(), 0, "an expired entry is dropped when met");
        let far = t0 + Duration::from_secs(3600);
        for i in 0..CACHE_CAPACITY + 10 {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c.insert(
                k,
                Decision::Unauthenticated,
                far + Duration::from_secs(i as u64),
            );
        }
        assert_eq!(c.len(), CACHE_CAPACITY, "never more than the capacity");
        let mut first = [0u8; 32];
        first[..8].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(c.get(&first, t0), None, "the entry expiring first went");
    }
}
