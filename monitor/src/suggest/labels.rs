//! Which pod labels may go into a suggested selector.
//!
//! A selector in a NetworkPolicy has to keep matching the workload's pods
//! after a rollout, a restart or a new Job run. Labels the controllers put on
//! each pod (or each revision) change at exactly those moments, so a policy
//! selecting on them would silently stop selecting the new pods: for an
//! allow rule that breaks traffic, for the subject of a policy it lifts the
//! isolation. They are dropped.

use std::collections::BTreeMap;

/// Label keys set by controllers per pod or per revision. Sources: the
/// "Well-Known Labels, Annotations and Taints" page of the Kubernetes
/// reference, and the controllers' documentation:
/// - `pod-template-hash`: Deployment -> ReplicaSet, per template revision;
/// - `controller-revision-hash`: StatefulSet and DaemonSet revisions;
/// - `pod-template-generation`: DaemonSet (deprecated) revision;
/// - `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`:
///   one value per StatefulSet replica;
/// - `job-name`, `controller-uid` and everything under `batch.kubernetes.io/`
///   (`job-name`, `controller-uid`, `job-completion-index`): per Job run,
///   a CronJob's runs each get new values.
const UNSTABLE_KEYS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "job-name",
    "controller-uid",
    // Set by Helm charts and the recommended labels on every release:
    // a policy keyed on them stops matching after the next upgrade.
    "helm.sh/chart",
    "app.kubernetes.io/version",
];

/// Key prefixes owned by controllers that set per-run values.
const UNSTABLE_PREFIXES: &[&str] = &["batch.kubernetes.io/"];

/// Whether a label key is stable enough to select a workload's pods.
pub fn is_stable(key: &str) -> bool {
    !UNSTABLE_KEYS.contains(&key) && !UNSTABLE_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The stable subset of a label map.
pub fn stable(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| is_stable(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The labels every map agrees on (key and value); `None` for no maps.
pub fn intersection<'a>(
    mut maps: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let mut acc = maps.next()?.clone();
    for m in maps {
        acc.retain(|k, v| m.get(k) == Some(v));
    }
    Some(acc)
}

/// Whether every pair of a Service selector or `matchLabels` is in a pod's
/// labels: the one label matcher, [`crate::selector`]'s.
pub use crate::selector::selects;

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn controller_labels_are_dropped_user_labels_kept() {
        let pod = map(&[
            ("app", "web"),
            ("tier", "front"),
            ("pod-template-hash", "7d77fb55cc"),
            ("controller-revision-hash", "web-5f7c"),
            ("statefulset.kubernetes.io/pod-name", "web-0"),
            ("apps.kubernetes.io/pod-index", "0"),
            ("job-name", "backup-28391234"),
            ("controller-uid", "0b1e"),
            ("batch.kubernetes.io/job-name", "backup-28391234"),
            ("batch.kubernetes.io/controller-uid", "0b1e"),
            ("pod-template-generation", "3"),
            ("app.kubernetes.io/name", "web"),
        ]);
        assert_eq!(
            stable(&pod),
            map(&[
                ("app", "web"),
                ("app.kubernetes.io/name", "web"),
                ("tier", "front")
            ]),
            "only labels that survive rollouts and new runs may select pods"
        );
    }

    #[test]
    fn intersection_keeps_agreeing_pairs() {
        let a = map(&[("app", "web"), ("v", "1")]);
        let b = map(&[("app", "web"), ("v", "2")]);
        assert_eq!(
            intersection([&a, &b].into_iter()),
            Some(map(&[("app", "web")]))
        );
        assert_eq!(intersection(std::iter::empty()), None);
    }
}
