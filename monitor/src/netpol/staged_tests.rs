//! Live vs staged verdicts, the deciding rule, attribution and removals.

use std::path::Path;

use super::*;
use crate::netpol::{Peer, Protocol};

/// shop: web (10.0.0.1, app=web), api (10.0.0.2, app=api), db (10.0.0.3,
/// app=db); other: client (10.0.1.1, app=client). Plus `extra` documents.
fn inventory(extra: &str) -> Vec<crate::inventory::Object> {
    let mut text = String::new();
    for ns in ["shop", "other"] {
        text.push_str(&format!(
            r"apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
"
        ));
    }
    for (ns, name, ip) in [
        ("shop", "web", "10.0.0.1"),
        ("shop", "api", "10.0.0.2"),
        ("shop", "db", "10.0.0.3"),
        ("other", "client", "10.0.1.1"),
    ] {
        text.push_str(&format!(
            r"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}
status: {{podIPs: [{{ip: {ip}}}]}}
---
"
        ));
    }
    text.push_str(extra);
    let inv = crate::inventory::parse_str(Path::new("test.yaml"), &text).expect("inventory parses");
    assert!(
        inv.warnings.is_empty(),
        "no warnings expected: {:?}",
        inv.warnings
    );
    inv.objects
}

struct World {
    objects: Vec<crate::inventory::Object>,
}

impl World {
    fn new(extra: &str) -> World {
        World {
            objects: inventory(extra),
        }
    }

    fn engines(&self) -> (Engine, Overlay, Vec<String>) {
        let live = Objects::from_inventory(&self.objects);
        let (engine, _) = Engine::build(&live);
        let staged = StagedObjects::from_inventory(&self.objects);
        let (overlay, warnings) = Overlay::build(&live, &staged);
        (engine, overlay, warnings)
    }

    fn judge(&self, src: &str, dst: &str, port: u16) -> Judgement {
        let (engine, overlay, _) = self.engines();
        let q = Query {
            src: Peer::Ip(src.parse().expect("address")),
            dst: Peer::Ip(dst.parse().expect("address")),
            protocol: Protocol::Tcp,
            port,
        };
        let live = engine.evaluate(&q);
        overlay.judge(&engine, &live, &q)
    }
}

const WEB: &str = "10.0.0.1";
const API: &str = "10.0.0.2";
const DB: &str = "10.0.0.3";
const CLIENT: &str = "10.0.1.1";

const STAGED_DENY_DB: &str = r"apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: db-lockdown, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 5432}]
---
";

#[test]
fn staged_default_deny_with_allow_rule() {
    let w = World::new(STAGED_DENY_DB);
    let ok = w.judge(API, DB, 5432);
    assert_eq!(
        ok.verdict,
        StagedVerdict::Allowed,
        "api -> db:5432 stays allowed"
    );
    let by = ok.decided_by.expect("the staged allow rule decides");
    assert_eq!(
        (&*by.kind, &*by.name, by.rule, &*by.action, &*by.direction),
        (
            "StagedNetworkPolicy",
            "shop/db-lockdown",
            Some(0),
            "Allow",
            "ingress"
        )
    );
    assert_eq!(ok.selected, vec![0], "the staged policy selects db");

    let bad = w.judge(WEB, DB, 5432);
    assert_eq!(
        bad.verdict,
        StagedVerdict::WouldDeny,
        "web -> db would be denied"
    );
    let by = bad.decided_by.expect("a denial names its decider");
    assert_eq!(
        (&*by.kind, &*by.name, by.rule, &*by.action, &*by.direction),
        (
            "StagedNetworkPolicy",
            "shop/db-lockdown",
            None,
            "Deny",
            "ingress"
        )
    );
    assert_eq!(bad.policy, Some(0));

    let wrong_port = w.judge(API, DB, 80);
    assert_eq!(wrong_port.verdict, StagedVerdict::WouldDeny);

    let untouched = w.judge(WEB, API, 80);
    assert_eq!(untouched.verdict, StagedVerdict::Allowed);
    assert!(
        untouched.selected.is_empty(),
        "nothing staged selects web -> api"
    );
    assert_eq!(untouched.policy, None);
}

const LIVE_DENY_ALL_SHOP: &str = r"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
";
const LIVE_ALLOW_WEB_API: &str = r"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-to-api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
---
";

#[test]
fn staged_allow_turns_a_denial_into_would_allow() {
    let staged = r"apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: client-to-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]
---
";
    let w = World::new(&format!("{LIVE_DENY_ALL_SHOP}{staged}"));
    let j = w.judge(CLIENT, WEB, 80);
    assert_eq!(j.verdict, StagedVerdict::WouldAllow);
    let by = j.decided_by.expect("decided");
    assert_eq!(
        (&*by.kind, &*by.name, &*by.action),
        ("StagedNetworkPolicy", "shop/client-to-web", "Allow")
    );
    assert_eq!(j.policy, Some(0));
    // Still denied for the api (not selected by the staged policy).
    let j = w.judge(CLIENT, API, 80);
    assert_eq!(j.verdict, StagedVerdict::Denied);
    assert_eq!(j.policy, None);
    assert!(j.selected.is_empty());
}

#[test]
fn staged_removal_is_attributed_to_the_removal() {
    let removal = r"apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: web-to-api, namespace: shop}
spec: {action: Delete}
---
";
    let w = World::new(&format!(
        "{LIVE_DENY_ALL_SHOP}{LIVE_ALLOW_WEB_API}{removal}"
    ));
    let (_, overlay, warnings) = w.engines();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(overlay.policies()[0].action, StagedAction::Delete);
    assert!(overlay.policies()[0].replaces_live);
    let j = w.judge(WEB, API, 80);
    assert_eq!(
        j.verdict,
        StagedVerdict::WouldDeny,
        "removing the only allow denies web -> api"
    );
    let by = j.decided_by.expect("decided");
    // The live default-deny decides, the removal is what changed.
    assert_eq!(
        (&*by.kind, &*by.name, &*by.action),
        ("NetworkPolicy", "shop/deny-all", "Deny")
    );
    assert_eq!(j.policy, Some(0));
    assert_eq!(j.selected, vec![0], "the removed policy selected api");

    // Removing the default-deny instead allows what it denied.
    let removal = r"apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {action: Delete}
---
";
    let w = World::new(&format!("{LIVE_DENY_ALL_SHOP}{removal}"));
    let j = w.judge(CLIENT, DB, 5432);
    assert_eq!(j.verdict, StagedVerdict::WouldAllow);
    assert_eq!(j.policy, Some(0));
    assert_eq!(j.decided_by, None, "nothing applies once it is gone");
}

#[test]
fn staged_update_replaces_the_live_policy_of_the_same_name() {
    // The live web-to-api allows any port; the staged version only 8080.
    let update = r"apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: web-to-api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 8080}]
---
";
    let w = World::new(&format!("{LIVE_ALLOW_WEB_API}{update}"));
    assert_eq!(w.judge(WEB, API, 8080).verdict, StagedVerdict::Allowed);
    let j = w.judge(WEB, API, 9090);
    assert_eq!(j.verdict, StagedVerdict::WouldDeny);
    let by = j.decided_by.expect("decided");
    assert_eq!(
        (&*by.kind, &*by.name),
        ("StagedNetworkPolicy", "shop/web-to-api")
    );
    assert_eq!(j.policy, Some(0));
    assert_eq!(w.judge(DB, API, 80).verdict, StagedVerdict::Denied);
}

#[test]
fn staged_cluster_policy_denies_and_its_removal_allows() {
    let staged = r"apiVersion: segwatch.dev/v1alpha1
kind: StagedClusterNetworkPolicy
metadata: {name: no-other-to-shop}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: shop}}}
  ingress:
  - name: other
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: other}}}]
---
";
    let w = World::new(staged);
    let j = w.judge(CLIENT, WEB, 80);
    assert_eq!(j.verdict, StagedVerdict::WouldDeny);
    let by = j.decided_by.expect("decided");
    assert_eq!(
        (&*by.kind, &*by.name, by.rule, &*by.action, &*by.tier),
        (
            "StagedClusterNetworkPolicy",
            "no-other-to-shop",
            Some(0),
            "Deny",
            "Admin"
        )
    );
    assert_eq!(j.selected, vec![0]);
    assert_eq!(w.judge(WEB, API, 80).verdict, StagedVerdict::Allowed);

    // The same object live, and its staged removal.
    let live = staged
        .replace("segwatch.dev/v1alpha1", "policy.networking.k8s.io/v1alpha2")
        .replace("StagedClusterNetworkPolicy", "ClusterNetworkPolicy");
    let removal = r"apiVersion: segwatch.dev/v1alpha1
kind: StagedClusterNetworkPolicy
metadata: {name: no-other-to-shop}
spec: {action: Delete}
---
";
    let w = World::new(&format!("{live}{removal}"));
    let j = w.judge(CLIENT, WEB, 80);
    assert_eq!(j.verdict, StagedVerdict::WouldAllow);
    assert_eq!(j.policy, Some(0));
    assert_eq!(j.selected, vec![0], "the removed policy's subject is web");
}

#[test]
fn invalid_staged_objects_are_left_out_with_a_reason() {
    let bad = r"apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: bad, namespace: shop}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Nope}]}
---
apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: gone, namespace: shop}
spec: {action: Delete}
---
";
    let w = World::new(bad);
    let (_, overlay, warnings) = w.engines();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("StagedNetworkPolicy shop/bad") && warnings[0].contains("podSelector"),
        "{warnings:?}"
    );
    assert!(warnings[1].contains("does not exist"), "{warnings:?}");
    assert!(overlay.policies()[0].invalid.is_some());
    // Nothing valid is staged: every connection keeps its live verdict.
    assert_eq!(w.judge(WEB, DB, 1).verdict, StagedVerdict::Allowed);
}

#[test]
fn staged_spec_round_trips_and_promotes_to_a_plain_policy() {
    let objects = inventory(STAGED_DENY_DB);
    let crate::inventory::Object::StagedNetworkPolicy(s) = objects.last().expect("staged object")
    else {
        panic!("a StagedNetworkPolicy is read as such: {objects:?}");
    };
    let np = s.to_network_policy().expect("a Set object promotes");
    let spec = np.spec.as_ref().expect("spec");
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    let v = serde_json::to_value(s).expect("serializes");
    assert!(
        v["spec"].get("action").is_none(),
        "Set is the default, not written"
    );
    assert_eq!(v["spec"]["podSelector"]["matchLabels"]["app"], "db");
}
