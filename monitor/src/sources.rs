//! The edges that feed the cluster index: inventory files (polled for
//! changes) or kube-rs watchers, plus the host's own addresses. Both drive
//! the same `ClusterIndex` methods the tests call.
//!
//! ```text
//!  --inventory files ──poll mtimes──► load_paths ──► reset(all)      ┐
//!  API server ──watcher per kind──► Init.. InitDone ─► reset_kind    ├─► SharedIndex
//!                                  Apply / Delete   ─► apply/delete  │     ▲
//!  getifaddrs every few seconds ───► set_host_addresses             ┘     │
//!  maintenance tick ──► build_netpol (read lock) ─► install_netpol (write lock)
//! ```
//!
//! A SegmentationPolicy that does not compile (from either source) is
//! reported (`segwatch_policy_errors_total{policy}`, one warn line per
//! version, on the API an `Accepted=False` status condition) and the
//! previous valid version of that document stays in force ([`policies`]).
//!
//! A broken inventory file keeps the last good state, counts
//! `segwatch_inventory_errors_total{source="inventory"}`, sets
//! `segwatch_source_up{source="inventory"}` to 0 and logs one line per
//! change of the files. An API object that does not fit its type is
//! logged with its namespace/name, counted (`source="kube"`) and skipped;
//! it never ends a watch. An API server that cannot be watched keeps the
//! last good state too; after a grace period the sources say so (one warn
//! line, `segwatch_source_up{source="kube"} 0`, /readyz "degraded: ...")
//! until it answers again (see [`health`]).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures::StreamExt as _;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt as _;

use crate::index::{host_addresses, ClusterIndex, IndexConfig, WATCHES};
use crate::inventory::{self, ObjectKind};
use crate::metrics::Metrics;
use crate::runtime::{ReadyFlag, SharedIndex};

pub use crate::runtime::health;
pub mod policies;
pub use health::SourceHealth;
use policies::PolicyGate;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod replay_tests;

/// What the daemon passes in.
pub struct SourcesConfig {
    /// `--inventory`; empty: watch the API server.
    pub inventory: Vec<PathBuf>,
    pub index: IndexConfig,
    pub metrics: Metrics,
    /// How often inventory files are checked for changes.
    pub poll_interval: Duration,
    /// How long an API server watch may fail before the sources report
    /// degraded (reconnects and control-plane rollouts take seconds).
    pub api_grace: Duration,
    /// SegmentationPolicy status writes are spread over this long, by node
    /// name, so that of hundreds of agents seeing the same invalid policy
    /// one writes its condition and the others see it written.
    pub status_spread: Duration,
}

/// What the daemon gets back: the index and how its sources are doing.
pub struct Sources {
    pub index: SharedIndex,
    /// Set once the first full view is in.
    pub ready: ReadyFlag,
    /// Degraded while the API server cannot be watched.
    pub health: SourceHealth,
}

/// Loads `--policy` files and builds the index config; errors name the file,
/// document and field (the daemon exits with them).
pub fn index_config(
    node_name: String,
    node_ips: Vec<std::net::IpAddr>,
    policy: &[PathBuf],
) -> anyhow::Result<IndexConfig> {
    let static_policies = if policy.is_empty() {
        Vec::new()
    } else {
        crate::segpolicy::load_policy_paths(policy).context("--policy")?
    };
    Ok(IndexConfig {
        node_name,
        node_ips,
        static_policies,
        pod_cidrs: Vec::new(),
        agent_selector: None,
    })
}

/// Starts the sources. Returns once the inventory is loaded (an unreadable
/// or unparsable inventory is an error) or the API client is configured;
/// the [`ReadyFlag`] is set when the watchers' first lists are in.
pub async fn spawn_sources(cfg: SourcesConfig) -> anyhow::Result<Sources> {
    if cfg.inventory.is_empty() {
        let kube = kube::Config::infer().await.context(
            "no --inventory given and no Kubernetes API access (in-cluster config or KUBECONFIG)",
        )?;
        return spawn_api_sources(cfg, kube);
    }
    let shared = new_index(cfg.index);
    let mut inv = inventory::load_paths(&cfg.inventory).context("--inventory")?;
    let mut gate = PolicyGate::new(cfg.metrics.clone());
    gate_inventory(&mut gate, &mut inv);
    let fp = fingerprint(&cfg.inventory);
    tracing::info!(
        objects = inv.objects.len(),
        skipped = inv.warnings.len(),
        "inventory loaded"
    );
    write(&shared).reset(inv.objects);
    cfg.metrics
        .source_up
        .with_label_values(&["inventory"])
        .set(1);
    let ready = ReadyFlag::default();
    ready.set();
    tokio::spawn(poll_inventory(
        cfg.inventory,
        fp,
        gate,
        cfg.poll_interval,
        shared.clone(),
        cfg.metrics.clone(),
    ));
    tokio::spawn(maintain(shared.clone()));
    Ok(Sources {
        index: shared,
        ready,
        health: SourceHealth::default(),
    })
}

/// The API server half of [`spawn_sources`], with the client configuration
/// given (`cfg.inventory` is not read). Must run inside a tokio runtime.
pub fn spawn_api_sources(cfg: SourcesConfig, kube: kube::Config) -> anyhow::Result<Sources> {
    let node_name = cfg.index.node_name.clone();
    let shared = new_index(cfg.index);
    let ready = ReadyFlag::default();
    let health = SourceHealth::for_api(
        kube.cluster_url.to_string(),
        cfg.api_grace,
        WATCHES.iter().map(|&(kind, _, _, plural)| (kind, plural)),
    );
    let client = kube::client::ClientBuilder::try_from(kube)
        .context("configuring the Kubernetes API client")?
        .with_layer(&health::ContactLayer(health.clone()))
        .build();
    let status = policy_status_writer(&client, spread_delay(&node_name, cfg.status_spread));
    spawn_watchers(
        client,
        shared.clone(),
        ready.clone(),
        health.clone(),
        cfg.metrics.clone(),
        status,
    );
    cfg.metrics.source_up.with_label_values(&["kube"]).set(1);
    tokio::spawn(review_health(health.clone(), cfg.metrics.clone()));
    tokio::spawn(maintain(shared.clone()));
    Ok(Sources {
        index: shared,
        ready,
        health,
    })
}

fn new_index(cfg: IndexConfig) -> SharedIndex {
    let mut index = ClusterIndex::new(cfg);
    match host_addresses() {
        Ok(a) => index.set_host_addresses(a),
        Err(e) => tracing::warn!(error = %e, "cannot read the host's addresses"),
    }
    Arc::new(RwLock::new(index))
}

/// Turns the watchers' reports into the degraded state: one warn line when
/// it starts, one info line when it ends, and `segwatch_source_up`.
async fn review_health(health: SourceHealth, metrics: Metrics) {
    let up = metrics.source_up.with_label_values(&["kube"]);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match health.review(std::time::Instant::now()) {
            Some(health::Transition::Degraded(why)) => {
                up.set(0);
                tracing::warn!("cluster sources degraded: {why}");
            }
            Some(health::Transition::Recovered { after }) => {
                up.set(1);
                tracing::info!(
                    after_secs = after.as_secs(),
                    "API server watches recovered; cluster sources no longer degraded"
                );
            }
            None => {}
        }
    }
}

fn write(index: &SharedIndex) -> std::sync::RwLockWriteGuard<'_, ClusterIndex> {
    index.write().unwrap_or_else(|e| e.into_inner())
}

fn read(index: &SharedIndex) -> std::sync::RwLockReadGuard<'_, ClusterIndex> {
    index.read().unwrap_or_else(|e| e.into_inner())
}

/// Names, sizes and mtimes of every inventory file: a change in any of
/// them (or a file appearing in a directory) triggers a reload.
type Fingerprint = Vec<(PathBuf, Option<(u64, SystemTime)>)>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let files = inventory::expand_paths(paths).unwrap_or_else(|_| paths.to_vec());
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            (f, meta)
        })
        .collect()
}

/// Runs the inventory's SegmentationPolicies through the gate: an invalid
/// one is replaced by its last valid version (or dropped).
fn gate_inventory(gate: &mut PolicyGate, inv: &mut inventory::Inventory) {
    use sha2::Digest as _;
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(inv.objects.len());
    for o in inv.objects.drain(..) {
        match o {
            inventory::Object::SegmentationPolicy(sp) => {
                let name = sp.metadata.name.clone().unwrap_or_default();
                names.insert(name);
                // The content is the version: an unchanged invalid document
                // in a reloaded set is not reported again.
                let text = serde_json::to_string(&sp).unwrap_or_default();
                let version = format!("{:x}", sha2::Sha256::digest(text.as_bytes()));
                if let Some(keep) = gate.admit(sp, &version).keep {
                    out.push(inventory::Object::SegmentationPolicy(keep));
                }
            }
            other => out.push(other),
        }
    }
    for (name, problem) in &inv.rejected_policies {
        names.insert(name.clone());
        if let Some(keep) = gate.reject(name, problem, problem) {
            out.push(inventory::Object::SegmentationPolicy(keep));
        }
    }
    gate.retain(&names);
    inv.objects = out;
}

async fn poll_inventory(
    paths: Vec<PathBuf>,
    mut last: Fingerprint,
    mut gate: PolicyGate,
    every: Duration,
    index: SharedIndex,
    metrics: Metrics,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = fingerprint(&paths);
        if now == last {
            continue;
        }
        last = now;
        match inventory::load_paths(&paths) {
            Ok(mut inv) => {
                gate_inventory(&mut gate, &mut inv);
                tracing::info!(
                    objects = inv.objects.len(),
                    skipped = inv.warnings.len(),
                    "inventory changed, reloaded"
                );
                write(&index).reset(inv.objects);
                metrics.source_up.with_label_values(&["inventory"]).set(1);
            }
            Err(e) => {
                metrics
                    .inventory_errors
                    .with_label_values(&["inventory"])
                    .inc();
                metrics.source_up.with_label_values(&["inventory"]).set(0);
                tracing::error!("inventory not reloaded, keeping the last good state: {e}");
            }
        }
    }
}

/// Deferred work: the NetworkPolicy engine rebuild (at most once a second,
/// built under a read lock so judging goes on) and the host's addresses
/// (veth gateway addresses come and go with pods).
async fn maintain(index: SharedIndex) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        if n.is_multiple_of(5) {
            if let Ok(a) = host_addresses() {
                write(&index).set_host_addresses(a);
            }
        }
        if !read(&index).needs_refresh() {
            continue;
        }
        let idx = index.clone();
        let built = tokio::task::spawn_blocking(move || read(&idx).build_netpol()).await;
        match built {
            Ok((at, engine)) => write(&index).install_netpol(engine, at),
            Err(e) => tracing::error!(error = %e, "NetworkPolicy engine rebuild failed"),
        }
    }
}

fn spawn_watchers(
    client: kube::Client,
    index: SharedIndex,
    ready: ReadyFlag,
    health: SourceHealth,
    metrics: Metrics,
    status: StatusTx,
) {
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(WATCHES.len()));
    for &(kind, group, version, plural) in WATCHES {
        let ar = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() {
                version.into()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.as_str().into(),
            plural: plural.into(),
        };
        let api = kube::Api::<DynamicObject>::all_with(client.clone(), &ar);
        tokio::spawn(watch_kind(
            (kind, plural),
            api,
            index.clone(),
            ready.clone(),
            pending.clone(),
            health.clone(),
            metrics.clone(),
            status.clone(),
        ));
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one watcher's shared handles, each cloned in spawn_watchers"
)]
async fn watch_kind(
    (kind, plural): (ObjectKind, &'static str),
    api: kube::Api<DynamicObject>,
    index: SharedIndex,
    ready: ReadyFlag,
    pending: Arc<std::sync::atomic::AtomicUsize>,
    health: SourceHealth,
    metrics: Metrics,
    status: StatusTx,
) {
    use std::sync::atomic::Ordering;
    let mut gate = PolicyGate::new(metrics.clone());
    let is_policy = kind == ObjectKind::SegmentationPolicy;
    let mut synced = false;
    let mark_synced = |synced: &mut bool| {
        if !*synced {
            *synced = true;
            if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                tracing::info!("cluster index synced");
                ready.set();
            }
        }
    };
    let mut buffer = Vec::new();
    let mut listed = std::collections::HashSet::new();
    // Paginated lists (500 a page) of the most recent state: kube omits
    // resourceVersion=0 when a page size is set, so the pages are served
    // by etcd through the API server (README, "API load").
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        // `Init` comes before the list is even sent: not a sign of contact.
        if matches!(&ev, Ok(e) if !matches!(e, watcher::Event::Init)) {
            health.contact(plural);
        }
        match ev {
            Ok(watcher::Event::Init) => {
                buffer.clear();
                listed.clear();
            }
            Ok(watcher::Event::InitApply(o)) => {
                let obj = if is_policy {
                    listed.insert(o.metadata.name.clone().unwrap_or_default());
                    admit_policy(&mut gate, &status, o)
                } else {
                    convert(kind, o, &metrics)
                };
                if let Some(obj) = obj {
                    buffer.push(obj);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if is_policy {
                    gate.retain(&listed);
                }
                write(&index).reset_kind(kind, std::mem::take(&mut buffer));
                mark_synced(&mut synced);
            }
            Ok(watcher::Event::Apply(o)) => {
                let obj = if is_policy {
                    admit_policy(&mut gate, &status, o)
                } else {
                    convert(kind, o, &metrics)
                };
                if let Some(obj) = obj {
                    write(&index).apply(obj);
                }
            }
            Ok(watcher::Event::Delete(o)) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                if is_policy {
                    gate.forget(&name);
                    status.gone(&name);
                }
                write(&index).delete(kind, o.metadata.namespace.as_deref(), &name);
            }
            // 410 Gone: the API server no longer has the history to resume
            // from (its watch cache moved on). Routine; the watcher lists
            // again at once. Not an error of the objects, not an outage.
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                tracing::debug!(kind = %kind, "watch expired (410 Gone), listing again");
            }
            Err(e) => {
                metrics.inventory_errors.with_label_values(&["kube"]).inc();
                // Every retry of an outage lands here (with backoff, up to
                // every 30 s): the health review logs the outage once.
                tracing::debug!(kind = %kind, error = %health::describe(&e), "watch failed, retrying");
                if health.failed(plural, &e) {
                    if kind == ObjectKind::SegmentationPolicy {
                        tracing::info!(
                            "the SegmentationPolicy CRD is not installed (the API server answers 404): \
                             only --policy files and the built-in baseline apply; still watching for it"
                        );
                    } else {
                        tracing::info!(
                            kind = %kind,
                            "the {kind} CRD is not installed (the API server answers 404): \
                             no such policies apply; still watching for it"
                        );
                    }
                }
                // Without the CRD installed, SegmentationPolicies cannot be
                // listed: the other kinds still make a usable index, so this
                // one does not hold readiness back (it keeps retrying).
                if kind.is_optional_crd() {
                    mark_synced(&mut synced);
                }
            }
        }
    }
}

/// One version of a SegmentationPolicy from the watch: checked by the
/// gate, its `Accepted` condition queued; returns what the index should
/// hold (this version, the previous valid one, or nothing).
fn admit_policy(
    gate: &mut PolicyGate,
    status: &StatusTx,
    mut o: DynamicObject,
) -> Option<inventory::Object> {
    let name = o.metadata.name.clone().unwrap_or_default();
    let version = o.metadata.resource_version.clone().unwrap_or_default();
    let generation = o.metadata.generation;
    // The status is ours to write, not part of the policy: a malformed one
    // must not make the policy invalid.
    let current = o.data.as_object_mut().and_then(|m| m.remove("status"));
    let converted = serde_json::to_value(&o)
        .map_err(|e| e.to_string())
        .and_then(|v| inventory::object_from_value(ObjectKind::SegmentationPolicy, v));
    let (keep, verdict) = match converted {
        Ok(inventory::Object::SegmentationPolicy(sp)) => {
            let a = gate.admit(sp, &version);
            (a.keep, a.verdict)
        }
        Ok(other) => {
            let problem = format!("not a SegmentationPolicy: {}", other.describe());
            (gate.reject(&name, &version, &problem), Err(problem))
        }
        Err(problem) => (gate.reject(&name, &version, &problem), Err(problem)),
    };
    status.want(&name, current, policies::condition(&verdict, generation));
    keep.map(inventory::Object::SegmentationPolicy)
}

/// Where the watchers send what a policy's status condition should be.
#[derive(Clone)]
struct StatusTx(Option<tokio::sync::mpsc::UnboundedSender<StatusMsg>>);

enum StatusMsg {
    /// The object as last seen (its status) and the condition it should
    /// carry.
    Want {
        name: String,
        current: Option<serde_json::Value>,
        condition: serde_json::Value,
    },
    Gone(String),
}

impl StatusTx {
    fn want(&self, name: &str, current: Option<serde_json::Value>, condition: serde_json::Value) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(StatusMsg::Want {
                name: name.to_owned(),
                current,
                condition,
            });
        }
    }

    fn gone(&self, name: &str) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(StatusMsg::Gone(name.to_owned()));
        }
    }
}

/// This agent's delay before writing a status: a stable point in
/// `0..spread` picked by its node name, so agents spread out evenly.
fn spread_delay(node_name: &str, spread: Duration) -> Duration {
    use sha2::Digest as _;
    if spread.is_zero() {
        return Duration::ZERO;
    }
    let d = sha2::Sha256::digest(node_name.as_bytes());
    let x = u64::from_le_bytes(d[..8].try_into().unwrap_or_default());
    Duration::from_millis(x % spread.as_millis().max(1) as u64)
}

/// Writes `Accepted` conditions on SegmentationPolicies' status (merge
/// patch on the status subresource), each after `delay`, and only if the
/// object does not carry it by then (another agent wrote it: the watch
/// shows it).
fn policy_status_writer(client: &kube::Client, delay: Duration) -> StatusTx {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<StatusMsg>();
    let api = kube::Api::<DynamicObject>::all_with(
        client.clone(),
        &ApiResource {
            group: "segwatch.dev".into(),
            version: "v1alpha1".into(),
            api_version: "segwatch.dev/v1alpha1".into(),
            kind: "SegmentationPolicy".into(),
            plural: "segmentationpolicies".into(),
        },
    );
    tokio::spawn(async move {
        use std::collections::HashMap;
        // name → (condition wanted, when to write it)
        let mut pending: HashMap<String, (serde_json::Value, tokio::time::Instant)> =
            HashMap::new();
        let mut failed_once: std::collections::HashSet<String> = Default::default();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => return,
                    Some(StatusMsg::Want { name, current, condition }) => {
                        if policies::has_condition(current.as_ref(), &condition) {
                            pending.remove(&name);
                        } else if pending.get(&name).map(|p| &p.0) != Some(&condition) {
                            pending.insert(name, (condition, tokio::time::Instant::now() + delay));
                        }
                    }
                    Some(StatusMsg::Gone(name)) => {
                        pending.remove(&name);
                    }
                },
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    let due: Vec<String> = pending
                        .iter()
                        .filter(|(_, (_, at))| *at <= now)
                        .map(|(n, _)| n.clone())
                        .collect();
                    for name in due {
                        let Some((mut condition, _)) = pending.remove(&name) else { continue };
                        condition["lastTransitionTime"] = serde_json::json!(
                            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        );
                        let patch = serde_json::json!({"status": {"conditions": [condition]}});
                        match api
                            .patch_status(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
                            .await
                        {
                            Ok(_) => tracing::debug!(policy = %name, "SegmentationPolicy status written"),
                            // Once per policy: RBAC or an old CRD without the
                            // status subresource would fail every time.
                            Err(e) if failed_once.insert(name.clone()) => tracing::warn!(
                                policy = %name,
                                error = %e,
                                "cannot write the SegmentationPolicy's status condition"
                            ),
                            Err(e) => tracing::debug!(policy = %name, error = %e, "status write failed"),
                        }
                    }
                }
            }
        }
    });
    StatusTx(Some(tx))
}

fn convert(kind: ObjectKind, o: DynamicObject, metrics: &Metrics) -> Option<inventory::Object> {
    let ns = o.metadata.namespace.clone().unwrap_or_default();
    let name = o.metadata.name.clone().unwrap_or_default();
    let value = match serde_json::to_value(&o) {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(kind = %kind, namespace = %ns, name = %name, error = %e, "object skipped");
            return None;
        }
    };
    match inventory::object_from_value(kind, value) {
        Ok(obj) => Some(obj),
        Err(e) => {
            metrics.inventory_errors.with_label_values(&["kube"]).inc();
            tracing::info!(kind = %kind, namespace = %ns, name = %name, "invalid object skipped: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::api_tests::eventually;
    use super::*;

    #[test]
    fn watcher_objects_convert_and_invalid_ones_are_skipped() {
        let m = Metrics::new();
        let good: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "a"},
            "status": {"podIPs": [{"ip": "10.0.0.1"}]}
        }))
        .expect("dynamic object");
        let obj = convert(ObjectKind::Pod, good, &m).expect("a valid pod converts");
        assert_eq!(obj.describe(), "Pod a/p");
        let bad: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "q", "namespace": "a"},
            "spec": {"containers": "not-a-list"}
        }))
        .expect("dynamic object");
        assert!(
            convert(ObjectKind::Pod, bad, &m).is_none(),
            "an invalid pod is skipped"
        );
        assert!(m
            .render()
            .contains("segwatch_inventory_errors_total{source=\"kube\"} 1"));
        let sp: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "segwatch.dev/v1alpha1", "kind": "SegmentationPolicy",
            "metadata": {"name": "p"},
            "spec": {"hostAccess": {"allow": [{"ports": ["22/TCP"]}]}}
        }))
        .expect("dynamic object");
        let obj = convert(ObjectKind::SegmentationPolicy, sp, &m).expect("a policy converts");
        assert_eq!(obj.describe(), "SegmentationPolicy p");
    }

    #[tokio::test]
    async fn an_invalid_policy_in_the_inventory_keeps_its_previous_version() {
        let dir = std::env::temp_dir().join(format!("segwatch-pol-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("cluster.yaml");
        let policy = |rv: &str, name: &str, ports: &str| {
            format!(
                "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\n\
                 metadata: {{name: {name}, resourceVersion: '{rv}'}}\n\
                 spec: {{hostAccess: {{allow: [{{ports: {ports}}}]}}}}\n"
            )
        };
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, resourceVersion: '1'}\n";
        std::fs::write(
            &f,
            format!(
                "{ns}---\n{}---\n{}",
                policy("1", "p", "['22/TCP']"),
                policy("1", "q", "['80/TCP']")
            ),
        )
        .expect("write");
        let metrics = Metrics::new();
        let Sources { index, .. } = spawn_sources(SourcesConfig {
            inventory: vec![dir.clone()],
            index: IndexConfig::default(),
            metrics: metrics.clone(),
            poll_interval: Duration::from_millis(20),
            api_grace: Duration::from_secs(5),
            status_spread: Duration::ZERO,
        })
        .await
        .expect("inventory loads");
        let policies = || read(&index).versions(ObjectKind::SegmentationPolicy);
        let errors = |p: &str| {
            metrics.render().lines().find_map(|l| {
                l.strip_prefix(&format!("segwatch_policy_errors_total{{policy=\"{p}\"}} "))
                    .map(str::to_owned)
            })
        };
        let want = |p: &str, q: &str| -> BTreeMap<String, String> {
            [
                ("p".to_string(), p.to_string()),
                ("q".to_string(), q.to_string()),
            ]
            .into()
        };
        assert_eq!(policies(), want("1", "1"));
        // p: a bad port (the document fits the schema but does not compile);
        // q: valid, changed. q's new version applies, p's old one stays.
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(
            &f,
            format!(
                "{ns}---\n{}---\n{}",
                policy("2", "p", "['22/TCPX']"),
                policy("2", "q", "['81/TCP']")
            ),
        )
        .expect("write");
        let seen = eventually(Duration::from_secs(4), || {
            policies() == want("1", "2") && errors("p").as_deref() == Some("1")
        })
        .await;
        assert!(
            seen,
            "p keeps version 1, q moves to 2, p counted once: {:?} {:?}",
            policies(),
            errors("p")
        );
        // p: a document that does not even fit the schema (a string where
        // the port list belongs): reported, the previous version stays.
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(
            &f,
            format!(
                "{ns}---\n{}---\n{}",
                policy("3", "p", "'22/TCP'"),
                policy("2", "q", "['81/TCP']")
            ),
        )
        .expect("write");
        let seen = eventually(Duration::from_secs(4), || {
            errors("p").as_deref() == Some("2")
        })
        .await;
        assert!(
            seen,
            "the second invalid version is counted: {:?}",
            errors("p")
        );
        assert_eq!(policies(), want("1", "2"), "p's last valid version stays");
        assert_eq!(errors("q"), None, "q was never invalid");
        // A valid p again takes over.
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(
            &f,
            format!(
                "{ns}---\n{}---\n{}",
                policy("4", "p", "['23/TCP']"),
                policy("2", "q", "['81/TCP']")
            ),
        )
        .expect("write");
        let seen = eventually(Duration::from_secs(4), || policies() == want("4", "2")).await;
        assert!(seen, "a valid version applies again: {:?}", policies());
        assert_eq!(errors("p").as_deref(), Some("2"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn inventory_reload_keeps_last_good_state_and_counts_errors() {
        let dir = std::env::temp_dir().join(format!("segwatch-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("cluster.yaml");
        let pod = |name: &str, ip: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: a}}\nstatus: {{podIPs: [{{ip: {ip}}}]}}\n")
        };
        std::fs::write(&f, pod("one", "10.0.0.1")).expect("write");
        let metrics = Metrics::new();
        let Sources { index, ready, .. } = spawn_sources(SourcesConfig {
            inventory: vec![dir.clone()],
            index: IndexConfig::default(),
            metrics: metrics.clone(),
            poll_interval: Duration::from_millis(20),
            api_grace: Duration::from_secs(5),
            status_spread: Duration::ZERO,
        })
        .await
        .expect("inventory loads");
        assert!(ready.is_set(), "ready after the inventory is loaded");
        let is_pod = |ip: &str, name: &str| matches!(read(&index).resolve(ip.parse().expect("ip")), crate::index::Resolved::Pod(p) if &*p.name == name);
        assert!(is_pod("10.0.0.1", "one"));
        // Same size, different content: the mtime must tell. Wait past the
        // file system's timestamp granularity first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(&f, pod("two", "10.0.0.2")).expect("write");
        let reloaded = eventually(Duration::from_secs(4), || is_pod("10.0.0.2", "two")).await;
        assert!(reloaded, "a changed file is re-read");
        assert!(!is_pod("10.0.0.1", "one"), "and replaces the old state");
        std::fs::write(&f, "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n").expect("write");
        let counted = eventually(Duration::from_secs(4), || {
            metrics
                .render()
                .contains("segwatch_inventory_errors_total{source=\"inventory\"} 1")
        })
        .await;
        assert!(
            counted,
            "a broken file is counted once:\n{}",
            metrics.render()
        );
        assert!(
            is_pod("10.0.0.2", "two"),
            "a broken file keeps the last good state"
        );
        assert!(
            metrics
                .render()
                .contains("segwatch_source_up{source=\"inventory\"} 0"),
            "the inventory source is marked stale:\n{}",
            metrics.render()
        );
        // Truncated by a writer that has not written yet: an error too,
        // not an empty cluster.
        std::fs::write(&f, "").expect("truncate");
        let counted = eventually(Duration::from_secs(4), || {
            metrics
                .render()
                .contains("segwatch_inventory_errors_total{source=\"inventory\"} 2")
        })
        .await;
        assert!(counted, "an empty file is counted:\n{}", metrics.render());
        assert!(
            is_pod("10.0.0.2", "two"),
            "an empty file keeps the last good state"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
