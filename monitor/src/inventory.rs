//! Inventory files: cluster objects read from YAML/JSON instead of the API
//! server (CONTRACT.md "Inventory files").
//!
//! ```text
//!  --inventory PATH ─► files (a file, or a directory's *.yaml|*.yml|*.json, sorted)
//!        ─► documents (`---` YAML documents, or a JSON stream)
//!        ─► `List`/`*List` items flattened (what `kubectl get ... -o json` prints)
//!        ─► typed `Object` (k8s-openapi), namespace defaulted to `default`
//! ```
//!
//! Failure modes, as the contract wants them:
//! - unreadable file, unparsable YAML/JSON: an error naming the file and
//!   line (the caller keeps its last good state);
//! - a document of a kind we do not read, or no Kubernetes object at all:
//!   skipped with a warning;
//! - an object of a known kind that does not fit its schema (e.g. a wrong
//!   field type): skipped with a warning naming file, document, kind/name and
//!   field path. [`load_paths_strict`] turns these into errors instead (for
//!   `--policy`, where a dropped document would silence violations).

use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Namespace, Node, Pod, ReplicationController, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Deserialize as _;
use serde_json::Value;

use crate::objects::cluster_policy::ClusterPolicyObject;
use crate::objects::segmentation::SegmentationPolicy;
use crate::objects::staged::StagedNetworkPolicy;

/// One cluster object segwatch reads.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "objects are stored once in the index; boxing would only add indirection"
)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    ServiceAccount(ServiceAccount),
    Node(Node),
    NetworkPolicy(NetworkPolicy),
    Deployment(Deployment),
    ReplicaSet(ReplicaSet),
    StatefulSet(StatefulSet),
    DaemonSet(DaemonSet),
    Job(Job),
    CronJob(CronJob),
    ReplicationController(ReplicationController),
    SegmentationPolicy(SegmentationPolicy),
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy.
    ClusterNetworkPolicy(ClusterPolicyObject),
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy (deprecated).
    AdminNetworkPolicy(ClusterPolicyObject),
    /// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy (deprecated).
    BaselineAdminNetworkPolicy(ClusterPolicyObject),
    /// `segwatch.dev/v1alpha1` StagedNetworkPolicy: judged, never enforced.
    StagedNetworkPolicy(StagedNetworkPolicy),
    /// `segwatch.dev/v1alpha1` StagedClusterNetworkPolicy (spec: a
    /// ClusterNetworkPolicy spec, or `action: Delete`).
    StagedClusterNetworkPolicy(ClusterPolicyObject),
}

/// The kinds of [`Object`], for deletes and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    Node,
    NetworkPolicy,
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    ReplicationController,
    SegmentationPolicy,
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    StagedNetworkPolicy,
    StagedClusterNetworkPolicy,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 19] = [
        ObjectKind::Namespace,
        ObjectKind::Pod,
        ObjectKind::Service,
        ObjectKind::ServiceAccount,
        ObjectKind::Node,
        ObjectKind::NetworkPolicy,
        ObjectKind::Deployment,
        ObjectKind::ReplicaSet,
        ObjectKind::StatefulSet,
        ObjectKind::DaemonSet,
        ObjectKind::Job,
        ObjectKind::CronJob,
        ObjectKind::ReplicationController,
        ObjectKind::SegmentationPolicy,
        ObjectKind::ClusterNetworkPolicy,
        ObjectKind::AdminNetworkPolicy,
        ObjectKind::BaselineAdminNetworkPolicy,
        ObjectKind::StagedNetworkPolicy,
        ObjectKind::StagedClusterNetworkPolicy,
    ];

    /// Kinds whose CRD may be missing from a cluster: a 404 on their list
    /// is "none of these", not an outage, and does not hold readiness back.
    pub fn is_optional_crd(self) -> bool {
        matches!(
            self,
            ObjectKind::SegmentationPolicy
                | ObjectKind::ClusterNetworkPolicy
                | ObjectKind::AdminNetworkPolicy
                | ObjectKind::BaselineAdminNetworkPolicy
                | ObjectKind::StagedNetworkPolicy
                | ObjectKind::StagedClusterNetworkPolicy
        )
    }

    /// The Kubernetes `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Namespace => "Namespace",
            ObjectKind::Pod => "Pod",
            ObjectKind::Service => "Service",
            ObjectKind::ServiceAccount => "ServiceAccount",
            ObjectKind::Node => "Node",
            ObjectKind::NetworkPolicy => "NetworkPolicy",
            ObjectKind::Deployment => "Deployment",
            ObjectKind::ReplicaSet => "ReplicaSet",
            ObjectKind::StatefulSet => "StatefulSet",
            ObjectKind::DaemonSet => "DaemonSet",
            ObjectKind::Job => "Job",
            ObjectKind::CronJob => "CronJob",
            ObjectKind::ReplicationController => "ReplicationController",
            ObjectKind::SegmentationPolicy => "SegmentationPolicy",
            ObjectKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            ObjectKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            ObjectKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
            ObjectKind::StagedNetworkPolicy => "StagedNetworkPolicy",
            ObjectKind::StagedClusterNetworkPolicy => "StagedClusterNetworkPolicy",
        }
    }

    /// Namespace and Node are cluster-scoped, and so is SegmentationPolicy
    /// (it speaks about traffic between namespaces); the rest live in a
    /// namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(
            self,
            ObjectKind::Namespace
                | ObjectKind::Node
                | ObjectKind::SegmentationPolicy
                | ObjectKind::ClusterNetworkPolicy
                | ObjectKind::AdminNetworkPolicy
                | ObjectKind::BaselineAdminNetworkPolicy
                | ObjectKind::StagedClusterNetworkPolicy
        )
    }

    /// The kind named by a document's `apiVersion` and `kind`, if we read it.
    /// Older group versions (`extensions/v1beta1`, `apps/v1beta2`,
    /// `batch/v1beta1`) are read as their current form, like the
    /// conformance data needs; the fields we use did not change.
    fn from_api(api_version: Option<&str>, kind: &str) -> Option<ObjectKind> {
        let group = api_version.map(|v| v.rsplit_once('/').map_or("", |(g, _)| g));
        let k = ObjectKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
        let Some(group) = group else {
            // No apiVersion at all: trust the kind (hand-written files).
            return Some(k);
        };
        let ok = match k {
            ObjectKind::Namespace
            | ObjectKind::Pod
            | ObjectKind::Service
            | ObjectKind::ServiceAccount
            | ObjectKind::Node
            | ObjectKind::ReplicationController => group.is_empty(),
            ObjectKind::NetworkPolicy => group == "networking.k8s.io" || group == "extensions",
            ObjectKind::Deployment | ObjectKind::ReplicaSet | ObjectKind::DaemonSet => {
                group == "apps" || group == "extensions"
            }
            ObjectKind::StatefulSet => group == "apps",
            ObjectKind::Job | ObjectKind::CronJob => group == "batch",
            ObjectKind::SegmentationPolicy
            | ObjectKind::StagedNetworkPolicy
            | ObjectKind::StagedClusterNetworkPolicy => group == "segwatch.dev",
            ObjectKind::ClusterNetworkPolicy
            | ObjectKind::AdminNetworkPolicy
            | ObjectKind::BaselineAdminNetworkPolicy => group == "policy.networking.k8s.io",
        };
        ok.then_some(k)
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Namespace(_) => ObjectKind::Namespace,
            Object::Pod(_) => ObjectKind::Pod,
            Object::Service(_) => ObjectKind::Service,
            Object::ServiceAccount(_) => ObjectKind::ServiceAccount,
            Object::Node(_) => ObjectKind::Node,
            Object::NetworkPolicy(_) => ObjectKind::NetworkPolicy,
            Object::Deployment(_) => ObjectKind::Deployment,
            Object::ReplicaSet(_) => ObjectKind::ReplicaSet,
            Object::StatefulSet(_) => ObjectKind::StatefulSet,
            Object::DaemonSet(_) => ObjectKind::DaemonSet,
            Object::Job(_) => ObjectKind::Job,
            Object::CronJob(_) => ObjectKind::CronJob,
            Object::ReplicationController(_) => ObjectKind::ReplicationController,
            Object::SegmentationPolicy(_) => ObjectKind::SegmentationPolicy,
            Object::ClusterNetworkPolicy(_) => ObjectKind::ClusterNetworkPolicy,
            Object::AdminNetworkPolicy(_) => ObjectKind::AdminNetworkPolicy,
            Object::BaselineAdminNetworkPolicy(_) => ObjectKind::BaselineAdminNetworkPolicy,
            Object::StagedNetworkPolicy(_) => ObjectKind::StagedNetworkPolicy,
            Object::StagedClusterNetworkPolicy(_) => ObjectKind::StagedClusterNetworkPolicy,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::ReplicaSet(o) => &o.metadata,
            Object::StatefulSet(o) => &o.metadata,
            Object::DaemonSet(o) => &o.metadata,
            Object::Job(o) => &o.metadata,
            Object::CronJob(o) => &o.metadata,
            Object::ReplicationController(o) => &o.metadata,
            Object::SegmentationPolicy(o) => &o.metadata,
            Object::ClusterNetworkPolicy(o)
            | Object::AdminNetworkPolicy(o)
            | Object::BaselineAdminNetworkPolicy(o)
            | Object::StagedClusterNetworkPolicy(o) => &o.metadata,
            Object::StagedNetworkPolicy(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::ServiceAccount(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::ReplicaSet(o) => &mut o.metadata,
            Object::StatefulSet(o) => &mut o.metadata,
            Object::DaemonSet(o) => &mut o.metadata,
            Object::Job(o) => &mut o.metadata,
            Object::CronJob(o) => &mut o.metadata,
            Object::ReplicationController(o) => &mut o.metadata,
            Object::SegmentationPolicy(o) => &mut o.metadata,
            Object::ClusterNetworkPolicy(o)
            | Object::AdminNetworkPolicy(o)
            | Object::BaselineAdminNetworkPolicy(o)
            | Object::StagedClusterNetworkPolicy(o) => &mut o.metadata,
            Object::StagedNetworkPolicy(o) => &mut o.metadata,
        }
    }

    /// `metadata.name` (empty when the document has none).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }

    /// `metadata.namespace`; `None` for cluster-scoped kinds. Objects read by
    /// this module always carry one when namespaced (defaulted to `default`).
    pub fn namespace(&self) -> Option<&str> {
        if self.kind().is_namespaced() {
            self.metadata().namespace.as_deref()
        } else {
            None
        }
    }

    /// Gives a namespaced object without `metadata.namespace` the namespace
    /// `default`, as `kubectl apply` would; drops a stray namespace from a
    /// cluster-scoped one.
    pub fn normalize_namespace(&mut self) {
        let namespaced = self.kind().is_namespaced();
        let meta = self.metadata_mut();
        if namespaced {
            if meta.namespace.as_deref().is_none_or(str::is_empty) {
                meta.namespace = Some("default".to_string());
            }
        } else {
            meta.namespace = None;
        }
    }

    /// `Kind ns/name` or `Kind name`, for messages.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {}/{}", self.kind(), ns, self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }
}

/// Everything read from the inventory paths.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub objects: Vec<Object>,
    /// Skipped documents and objects, one line each (also logged).
    pub warnings: Vec<String>,
    /// SegmentationPolicies that do not fit their schema (also in
    /// `warnings`): (name, file/document and problem). The sources report
    /// them and keep their previous valid version.
    pub rejected_policies: Vec<(String, String)>,
}

/// Where a document or list item came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based index of the document in the file.
    pub document: usize,
    /// 1-based index in the `items` of a `List` document.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)?;
        if let Some(i) = self.item {
            write!(f, ", item {i}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: document {document}{}: not valid {format}: {message}", path.display(), line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Syntax {
        path: PathBuf,
        document: usize,
        line: Option<usize>,
        format: &'static str,
        message: String,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: Origin, message: String },
    #[error("{}: empty file (no objects; still being written?)", path.display())]
    Empty { path: PathBuf },
}

impl InventoryError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            InventoryError::Io { path, .. }
            | InventoryError::Syntax { path, .. }
            | InventoryError::Empty { path } => path,
            InventoryError::Invalid { origin, .. } => &origin.file,
        }
    }
}

/// Reads every inventory path. Invalid objects and unknown kinds are skipped
/// with a warning (logged and returned); unreadable or unparsable files are
/// errors.
pub fn load_paths(paths: &[PathBuf]) -> Result<Inventory, InventoryError> {
    let mut loaded = Loaded::default();
    for file in expand_paths(paths)? {
        let text = read(&file)?;
        parse_into(&file, &text, Mode::Lenient, &mut loaded)?;
    }
    Ok(Inventory {
        objects: loaded.objects.into_iter().map(|(_, o)| o).collect(),
        warnings: loaded.warnings,
        rejected_policies: loaded.rejected_policies,
    })
}

/// Objects with where they came from, and warnings (see [`load_paths_strict`]).
#[derive(Debug, Default)]
pub struct StrictInventory {
    pub objects: Vec<Object>,
    pub origins: Vec<Origin>,
    pub warnings: Vec<String>,
}

/// Like [`load_paths`], but an object of a known kind that does not fit its
/// schema is an error instead of a warning.
pub fn load_paths_strict(paths: &[PathBuf]) -> Result<StrictInventory, InventoryError> {
    let mut loaded = Loaded::default();
    for file in expand_paths(paths)? {
        let text = read(&file)?;
        parse_into(&file, &text, Mode::Strict, &mut loaded)?;
    }
    let (origins, objects) = loaded.objects.into_iter().unzip();
    Ok(StrictInventory {
        objects,
        origins,
        warnings: loaded.warnings,
    })
}

/// Parses one file's text (`file` only names it in messages).
pub fn parse_str(file: &Path, text: &str) -> Result<Inventory, InventoryError> {
    let mut loaded = Loaded::default();
    parse_into(file, text, Mode::Lenient, &mut loaded)?;
    Ok(Inventory {
        objects: loaded.objects.into_iter().map(|(_, o)| o).collect(),
        warnings: loaded.warnings,
        rejected_policies: loaded.rejected_policies,
    })
}

/// Like [`parse_str`] in the strict mode of [`load_paths_strict`] (one
/// file's text; `file` only names it in messages).
pub fn parse_str_strict(file: &Path, text: &str) -> Result<StrictInventory, InventoryError> {
    let mut loaded = Loaded::default();
    parse_into(file, text, Mode::Strict, &mut loaded)?;
    let (origins, objects) = loaded.objects.into_iter().unzip();
    Ok(StrictInventory {
        objects,
        origins,
        warnings: loaded.warnings,
    })
}

/// The files named by `paths`: a file as given, a directory's `.yaml`,
/// `.yml` and `.json` files (not recursive), sorted by name so that the
/// object order, and so every "last one wins" decision, is deterministic.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, InventoryError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| InventoryError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| InventoryError::Io {
                path: path.clone(),
                source,
            })?;
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| InventoryError::Io {
                    path: path.clone(),
                    source,
                })?;
                let p = entry.path();
                let is_data = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
                if is_data && p.is_file() {
                    found.push(p);
                }
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn read(file: &Path) -> Result<String, InventoryError> {
    let text = std::fs::read_to_string(file).map_err(|source| InventoryError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    // `kubectl get -o yaml|json` never writes an empty file; an empty one
    // is most likely caught in the middle of being rewritten. Taken as "no
    // objects", it would make the daemon forget every pod until the next
    // change of the file.
    if text.trim().is_empty() {
        return Err(InventoryError::Empty {
            path: file.to_path_buf(),
        });
    }
    Ok(text)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Lenient,
    Strict,
}

#[derive(Default)]
struct Loaded {
    objects: Vec<(Origin, Object)>,
    warnings: Vec<String>,
    rejected_policies: Vec<(String, String)>,
}

impl Loaded {
    fn warn(&mut self, line: String) {
        tracing::info!("inventory: {line}");
        self.warnings.push(line);
    }
}

fn looks_like_json(file: &Path, text: &str) -> bool {
    file.extension().is_some_and(|e| e == "json")
        || text.trim_start().starts_with('{')
        || text.trim_start().starts_with('[')
}

fn parse_into(file: &Path, text: &str, mode: Mode, out: &mut Loaded) -> Result<(), InventoryError> {
    let mut documents = Vec::new();
    if looks_like_json(file, text) {
        // A JSON stream: usually one value (a List), but `kubectl get -o json`
        // of several commands concatenated is accepted as well.
        for (i, value) in serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .enumerate()
        {
            let value = value.map_err(|e| InventoryError::Syntax {
                path: file.to_path_buf(),
                document: i + 1,
                line: Some(e.line()),
                format: "JSON",
                message: e.to_string(),
            })?;
            documents.push(value);
        }
    } else {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(doc).map_err(|e| InventoryError::Syntax {
                path: file.to_path_buf(),
                document: i + 1,
                line: e.location().map(|l| l.line()),
                format: "YAML",
                message: e.to_string(),
            })?;
            documents.push(value);
        }
    }
    for (i, value) in documents.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            document: i + 1,
            item: None,
        };
        document_into(origin, value, mode, out)?;
    }
    Ok(())
}

fn document_into(
    origin: Origin,
    value: Value,
    mode: Mode,
    out: &mut Loaded,
) -> Result<(), InventoryError> {
    let Value::Object(mut map) = value else {
        if !value.is_null() {
            // An empty document (`---` at the start or end) is null; anything
            // else that is not a mapping is not a Kubernetes object.
            out.warn(format!("{origin}: not a Kubernetes object, skipped"));
        }
        return Ok(());
    };
    let Some(kind) = map.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        out.warn(format!(
            "{origin}: no `kind`, not a Kubernetes object, skipped"
        ));
        return Ok(());
    };
    let is_list = kind == "List" || kind.ends_with("List");
    if is_list {
        if let Some(Value::Array(items)) = map.remove("items") {
            // Items of a typed list (`PodList`) may omit their own kind and
            // apiVersion; they are the list's.
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
            let api_version = map.get("apiVersion").cloned();
            for (j, mut item) in items.into_iter().enumerate() {
                let item_origin = Origin {
                    item: Some(j + 1),
                    ..origin.clone()
                };
                if let (Value::Object(m), Some(k)) = (&mut item, item_kind) {
                    m.entry("kind")
                        .or_insert_with(|| Value::String(k.to_owned()));
                    if let Some(v) = &api_version {
                        m.entry("apiVersion").or_insert_with(|| v.clone());
                    }
                }
                match item {
                    Value::Object(m) => object_into(item_origin, m, mode, out)?,
                    _ => out.warn(format!("{item_origin}: not a Kubernetes object, skipped")),
                }
            }
            return Ok(());
        }
    }
    object_into(origin, map, mode, out)
}

fn object_into(
    origin: Origin,
    mut map: serde_json::Map<String, Value>,
    mode: Mode,
    out: &mut Loaded,
) -> Result<(), InventoryError> {
    let kind_str = map
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    let Some(kind) = ObjectKind::from_api(api_version.as_deref(), &kind_str) else {
        if kind_str.is_empty() {
            out.warn(format!(
                "{origin}: no `kind`, not a Kubernetes object, skipped"
            ));
        } else {
            out.warn(format!(
                "{origin}: kind {kind_str} ({}) {name} is not read by segwatch, skipped",
                api_version.as_deref().unwrap_or("no apiVersion")
            ));
        }
        return Ok(());
    };
    if kind != ObjectKind::SegmentationPolicy {
        // k8s-openapi insists on the current apiVersion; older group versions
        // were accepted above, so drop the fields it would reject.
        map.remove("apiVersion");
        map.remove("kind");
    } else {
        map.insert(
            "apiVersion".into(),
            Value::String("segwatch.dev/v1alpha1".into()),
        );
    }
    match typed(kind, Value::Object(map)) {
        Ok(mut obj) => {
            obj.normalize_namespace();
            out.objects.push((origin, obj));
            Ok(())
        }
        Err(e) => {
            let message = format!("{kind} {name}: invalid {e}");
            match mode {
                Mode::Lenient => {
                    if kind == ObjectKind::SegmentationPolicy {
                        out.rejected_policies
                            .push((name.clone(), format!("{origin}: {message}")));
                    }
                    out.warn(format!("{origin}: {message}, skipped"));
                    Ok(())
                }
                Mode::Strict => Err(InventoryError::Invalid { origin, message }),
            }
        }
    }
}

/// A field-path error: `at spec.ports[0].port: invalid type: ...`.
struct FieldError {
    path: String,
    message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "object: {}", self.message)
        } else {
            write!(f, "at `{}`: {}", self.path, self.message)
        }
    }
}

fn de<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| FieldError {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Turns one API object (JSON, as a watcher delivers it) into the typed
/// object of `kind`, namespace defaulted; the error names the field path.
pub fn object_from_value(kind: ObjectKind, value: Value) -> Result<Object, String> {
    let mut value = value;
    if let Value::Object(map) = &mut value {
        if kind == ObjectKind::SegmentationPolicy {
            map.insert(
                "apiVersion".into(),
                Value::String("segwatch.dev/v1alpha1".into()),
            );
            map.insert("kind".into(), Value::String("SegmentationPolicy".into()));
        } else {
            map.remove("apiVersion");
            map.remove("kind");
        }
    }
    let mut obj = typed(kind, value).map_err(|e| e.to_string())?;
    obj.normalize_namespace();
    Ok(obj)
}

fn typed(kind: ObjectKind, v: Value) -> Result<Object, FieldError> {
    Ok(match kind {
        ObjectKind::Namespace => Object::Namespace(de(v)?),
        ObjectKind::Pod => Object::Pod(de(v)?),
        ObjectKind::Service => Object::Service(de(v)?),
        ObjectKind::ServiceAccount => Object::ServiceAccount(de(v)?),
        ObjectKind::Node => Object::Node(de(v)?),
        ObjectKind::NetworkPolicy => Object::NetworkPolicy(de(v)?),
        ObjectKind::Deployment => Object::Deployment(de(v)?),
        ObjectKind::ReplicaSet => Object::ReplicaSet(de(v)?),
        ObjectKind::StatefulSet => Object::StatefulSet(de(v)?),
        ObjectKind::DaemonSet => Object::DaemonSet(de(v)?),
        ObjectKind::Job => Object::Job(de(v)?),
        ObjectKind::CronJob => Object::CronJob(de(v)?),
        ObjectKind::ReplicationController => Object::ReplicationController(de(v)?),
        ObjectKind::SegmentationPolicy => Object::SegmentationPolicy(de(v)?),
        ObjectKind::ClusterNetworkPolicy => Object::ClusterNetworkPolicy(de(v)?),
        ObjectKind::AdminNetworkPolicy => Object::AdminNetworkPolicy(de(v)?),
        ObjectKind::BaselineAdminNetworkPolicy => Object::BaselineAdminNetworkPolicy(de(v)?),
        ObjectKind::StagedNetworkPolicy => Object::StagedNetworkPolicy(de(v)?),
        ObjectKind::StagedClusterNetworkPolicy => Object::StagedClusterNetworkPolicy(de(v)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Inventory {
        parse_str(Path::new("test.yaml"), text).expect("test input must parse")
    }

    #[test]
    fn every_conformance_case_loads_without_error() {
        let root =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/netpol-analyzer/cases");
        let mut cases: Vec<_> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("conformance cases at {} must exist: {e}", root.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_dir())
            .collect();
        cases.sort();
        assert!(
            cases.len() >= 40,
            "expected the 42 conformance cases, found {}",
            cases.len()
        );
        let mut pods = 0;
        for case in &cases {
            let inv = load_paths(std::slice::from_ref(case))
                .unwrap_or_else(|e| panic!("case {} must load: {e}", case.display()));
            let invalid: Vec<_> = inv
                .warnings
                .iter()
                .filter(|w| w.contains("invalid"))
                .collect();
            assert!(
                invalid.is_empty(),
                "case {}: no object may be invalid: {invalid:?}",
                case.display()
            );
            assert!(
                !inv.objects.is_empty(),
                "case {} has objects",
                case.display()
            );
            pods += inv
                .objects
                .iter()
                .filter(|o| o.kind() == ObjectKind::Pod)
                .count();
            for o in &inv.objects {
                if o.kind().is_namespaced() {
                    assert!(
                        o.namespace().is_some(),
                        "{} must have a namespace",
                        o.describe()
                    );
                }
            }
        }
        assert!(pods > 100, "the cases hold many pods, read {pods}");
    }

    #[test]
    fn multi_document_yaml_with_defaults_and_unknown_kind() {
        let inv = parse(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {tier: front}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, labels: {app: web}}\n\
             status: {podIPs: [{ip: 10.0.0.5}, {ip: 'fd00::5'}]}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n",
        );
        assert_eq!(inv.objects.len(), 2, "Namespace and Pod are read: {inv:?}");
        assert_eq!(
            inv.objects[1].namespace(),
            Some("default"),
            "a namespaced object without namespace goes to default"
        );
        assert_eq!(
            inv.objects[0].namespace(),
            None,
            "a Namespace has no namespace"
        );
        assert_eq!(
            inv.warnings.len(),
            1,
            "the ConfigMap is skipped with one warning: {:?}",
            inv.warnings
        );
        assert!(
            inv.warnings[0].contains("ConfigMap") && inv.warnings[0].contains("document 3"),
            "{:?}",
            inv.warnings
        );
    }

    #[test]
    fn kubectl_list_json_with_untyped_items() {
        let inv = parse_str(
            Path::new("all.json"),
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"v1","kind":"Service","metadata":{"name":"api","namespace":"shop"},"spec":{"clusterIP":"10.96.0.10"}},
                {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny","namespace":"shop"},"spec":{"podSelector":{}}},
                {"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"shop"},"spec":{"selector":{},"template":{}}}
            ]}
            {"apiVersion":"v1","kind":"PodList","items":[{"metadata":{"name":"p","namespace":"x"}}]}"#,
        )
        .expect("a List parses");
        let kinds: Vec<_> = inv.objects.iter().map(Object::kind).collect();
        assert_eq!(
            kinds,
            vec![
                ObjectKind::Service,
                ObjectKind::NetworkPolicy,
                ObjectKind::Deployment,
                ObjectKind::Pod
            ],
            "List items and typed-list items (without their own kind) are read in order"
        );
        assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    }

    #[test]
    fn old_group_versions_are_read_foreign_groups_are_not() {
        let inv = parse(
            "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {podSelector: {}}\n---\n\
             apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: k}\n",
        );
        assert_eq!(
            inv.objects.len(),
            1,
            "extensions/v1beta1 NetworkPolicy is read"
        );
        assert_eq!(inv.objects[0].kind(), ObjectKind::NetworkPolicy);
        assert!(
            inv.warnings[0].contains("serving.knative.dev/v1"),
            "a knative Service is not a core Service: {:?}",
            inv.warnings
        );
    }

    #[test]
    fn invalid_object_is_skipped_with_field_path() {
        let inv = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: shop}\nspec: {ports: [{port: http}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: good, namespace: shop}\n",
        );
        assert_eq!(
            inv.objects.len(),
            1,
            "the bad Service is skipped, the good one read"
        );
        assert_eq!(inv.objects[0].name(), "good");
        let w = &inv.warnings[0];
        for part in [
            "test.yaml",
            "document 1",
            "Service bad",
            "spec.ports[0].port",
        ] {
            assert!(w.contains(part), "warning must name `{part}`: {w}");
        }
    }

    #[test]
    fn strict_mode_rejects_invalid_objects() {
        let dir = tempdir("strict");
        let f = dir.join("p.yaml");
        std::fs::write(
            &f,
            "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: p}\n\
             spec: {crossNamespaces: {allow: []}}\n",
        )
        .expect("write");
        let err = load_paths_strict(std::slice::from_ref(&f)).expect_err("a typo must be an error");
        let msg = err.to_string();
        for part in [
            "p.yaml",
            "document 1",
            "SegmentationPolicy p",
            "crossNamespaces",
        ] {
            assert!(msg.contains(part), "error must name `{part}`: {msg}");
        }
    }

    #[test]
    fn unparsable_files_are_errors_naming_file_and_line() {
        let err = parse_str(
            Path::new("broken.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n",
        )
        .expect_err("broken YAML is an error");
        let msg = err.to_string();
        assert!(msg.contains("broken.yaml") && msg.contains("line"), "{msg}");
        let err = parse_str(
            Path::new("broken.json"),
            "{\"kind\": \"Pod\",\n \"metadata\": }",
        )
        .expect_err("broken JSON is an error");
        let msg = err.to_string();
        assert!(
            msg.contains("broken.json") && msg.contains("line 2"),
            "{msg}"
        );
        let err = load_paths(&[PathBuf::from("/nonexistent/segwatch-inventory.yaml")])
            .expect_err("a missing file is an error");
        assert!(
            err.to_string()
                .contains("/nonexistent/segwatch-inventory.yaml"),
            "{err}"
        );
    }

    #[test]
    fn directory_files_are_sorted_and_filtered() {
        let dir = tempdir("dir");
        std::fs::write(
            dir.join("b.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("a.json"),
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}"#,
        )
        .expect("write");
        std::fs::write(dir.join("notes.txt"), "not: read").expect("write");
        let inv = load_paths(std::slice::from_ref(&dir)).expect("directory loads");
        let names: Vec<_> = inv.objects.iter().map(Object::name).collect();
        assert_eq!(
            names,
            vec!["a", "b"],
            "files are read in name order, .txt ignored"
        );
    }

    #[test]
    fn segmentation_policy_from_contract_parses() {
        let inv = parse(CONTRACT_POLICY);
        assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
        let Object::SegmentationPolicy(p) = &inv.objects[0] else {
            panic!("a SegmentationPolicy is read as such: {:?}", inv.objects)
        };
        assert_eq!(p.metadata.name.as_deref(), Some("baseline"));
        let cross = p.spec.cross_namespace.as_ref().expect("crossNamespace");
        assert_eq!(cross.allow.len(), 3);
        assert_eq!(
            cross.allow[0].to.ports.as_deref(),
            Some(&["8080/TCP".to_string(), "9000-9100/UDP".to_string()][..])
        );
        assert_eq!(p.spec.within_namespace[0].namespace, "payments");
        assert_eq!(
            p.spec.external.as_ref().expect("external").allow[0].to.cidr,
            "0.0.0.0/0"
        );
        assert_eq!(
            inv.objects[0].namespace(),
            None,
            "SegmentationPolicy is cluster-scoped"
        );
    }

    pub(crate) const CONTRACT_POLICY: &str = r#"
apiVersion: segwatch.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: baseline}
spec:
  crossNamespace:
    allow:
      - name: web-to-api
        from: {namespace: shop-web}
        to:   {namespace: shop-api, ports: ["8080/TCP", "9000-9100/UDP"]}
      - from: {namespace: monitoring, serviceAccount: prometheus}
        to:   {namespace: "*"}
      - from: {namespaceSelector: {matchLabels: {tier: front}}, podSelector: {matchLabels: {app: web}}}
        to:   {namespaceSelector: {matchExpressions: [{key: tier, operator: In, values: [back]}]}}
  withinNamespace:
    - namespace: payments
      allow:
        - from: {podSelector: {matchLabels: {app: api}}}
          to:   {podSelector: {matchLabels: {app: db}}, ports: ["5432/TCP"]}
  hostAccess:
    allow:
      - from: {namespace: kube-system}
        ports: ["10250/TCP"]
  metadataApi:
    addresses: ["169.254.169.254", "fd00:ec2::254"]
    allow:
      - from: {namespace: kube-system, serviceAccount: ebs-csi-controller}
  external:
    allow:
      - to: {cidr: "0.0.0.0/0", ports: ["443/TCP"]}
"#;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("segwatch-inv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        d
    }
}
