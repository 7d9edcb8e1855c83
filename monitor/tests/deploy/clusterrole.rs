//! The ClusterRole: read-only, no Secrets, exactly what the index watches.

use super::*;

/// (apiGroup, resource) pairs a ClusterRole grants; panics on anything but
/// plain get/list/watch rules.
fn granted(role: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("ClusterRole rules") {
        let verbs: BTreeSet<&str> = rule["verbs"]
            .as_array()
            .expect("verbs")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            verbs,
            ["get", "list", "watch"].into(),
            "read-only verbs only: {rule}"
        );
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "no nonResourceURLs: {rule}"
        );
        assert!(
            rule.get("resourceNames").is_none(),
            "no resourceNames: {rule}"
        );
        for g in rule["apiGroups"].as_array().expect("apiGroups") {
            for r in rule["resources"].as_array().expect("resources") {
                let (g, r) = (g.as_str().expect("group"), r.as_str().expect("resource"));
                assert!(
                    g != "*" && r != "*" && !r.contains('/'),
                    "no wildcards or subresources: {rule}"
                );
                out.insert((g.to_string(), r.to_string()));
            }
        }
    }
    out
}

#[test]
fn clusterrole_is_read_only_and_never_grants_secrets() {
    let objects = kustomize(&deploy());
    let grants = granted(&find_named(&objects, "ClusterRole", "segwatch").value);
    for forbidden in [
        "secrets",
        "configmaps",
        "pods/exec",
        "serviceaccounts/token",
    ] {
        assert!(
            !grants.iter().any(|(_, r)| r == forbidden),
            "the agent must not be able to read {forbidden}"
        );
    }
}

/// What a role lacks and what it grants beyond `watched`.
type RoleDiff = (Vec<(String, String)>, Vec<(String, String)>);

fn role_diff(grants: &BTreeSet<(String, String)>, watched: &[(&str, &str)]) -> RoleDiff {
    let watched: BTreeSet<(String, String)> = watched
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    (
        watched.difference(grants).cloned().collect(),
        grants.difference(&watched).cloned().collect(),
    )
}

#[test]
fn clusterrole_grants_exactly_what_the_index_watches() {
    let objects = kustomize(&deploy());
    let grants = granted(&find_named(&objects, "ClusterRole", "segwatch").value);
    let (missing, extra) = role_diff(&grants, segwatch::index::WATCHED_RESOURCES);
    assert!(
        missing.is_empty(),
        "the daemon watches {missing:?} (segwatch::index::WATCHED_RESOURCES) but \
         deploy/base/clusterrole.yaml does not grant get/list/watch on them: its watchers would fail with 403"
    );
    assert!(
        extra.is_empty(),
        "deploy/base/clusterrole.yaml grants {extra:?}, which the daemon never watches: least privilege says drop them"
    );
    // The comparison itself must see both directions.
    let mut more = grants.clone();
    more.insert(("".into(), "endpoints".into()));
    more.remove(&("".into(), "pods".into()));
    let (missing, extra) = role_diff(&more, segwatch::index::WATCHED_RESOURCES);
    assert_eq!(missing, [("".to_string(), "pods".to_string())]);
    assert_eq!(extra, [("".to_string(), "endpoints".to_string())]);
}
