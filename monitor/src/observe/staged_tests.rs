//! Staged-policy series end with their staged object (and their edge's
//! workloads, after the TTL), through the Observer's sweep.

use super::*;
use crate::fixtures::{cluster, report};
use crate::inventory::ObjectKind;
use crate::report::{StagedVerdict, TcpState};

const STAGED: &str = r"apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: deny-all, namespace: api}
spec: {action: Delete}
---
apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{ports: [{protocol: TCP, port: 8080}]}]
";

fn staged_lines(m: &Metrics, policy: &str) -> Vec<String> {
    m.render()
        .lines()
        .filter(|l| l.starts_with("segwatch_staged_"))
        .filter(|l| l.contains(&format!("policy=\"{policy}\"")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn staged_series_are_dropped_with_their_staged_object_and_expired_ends() {
    let mut idx = cluster(true);
    for o in crate::inventory::parse_str(std::path::Path::new("staged.yaml"), STAGED)
        .expect("staged objects parse")
        .objects
    {
        idx.apply(o);
    }
    idx.refresh();
    let m = Metrics::new();
    let ttl = Duration::from_secs(60);
    let mut obs = Observer::new(ttl);
    // web -> backend:8080: denied by the live deny-all of api, allowed once
    // its removal is applied (web-egress allows 8080/TCP).
    let mut c1 = report(
        "10.1.0.5",
        40001,
        "10.1.0.7",
        Some(8080),
        "TCP",
        Some(TcpState::Established),
    );
    // web -> kube-dns:53/UDP: allowed now, web-egress would deny it.
    let mut c2 = report("10.1.0.5", 40002, "10.1.0.53", Some(53), "UDP", None);
    for r in [&mut c1, &mut c2] {
        idx.judge(r);
        obs.observe(&m, &idx, r, true, false);
    }
    let verdict = |r: &FlowReport| r.staged.as_ref().map(|s| (s.verdict, s.policy.clone()));
    assert_eq!(
        verdict(&c1),
        Some((StagedVerdict::WouldAllow, Some("api/deny-all".into())))
    );
    assert_eq!(
        verdict(&c2),
        Some((StagedVerdict::WouldDeny, Some("shop/web-egress".into())))
    );
    let t0 = Instant::now();
    obs.sweep(&m, &idx, t0);
    // deny-all: one verdict series, selected; web-egress: one verdict
    // series, selected, last would-deny.
    assert_eq!(staged_lines(&m, "deny-all").len(), 2, "{}", m.render());
    assert_eq!(staged_lines(&m, "web-egress").len(), 3, "{}", m.render());
    assert_eq!(m.staged.series_count(), 5);
    assert_eq!(staged_series_gauges(&m), [2, 2, 1], "{}", m.render());

    // The removal is withdrawn: its series go at the next sweep, the
    // other staged object's stay.
    idx.delete(ObjectKind::StagedNetworkPolicy, Some("api"), "deny-all");
    idx.refresh();
    obs.sweep(&m, &idx, t0 + Duration::from_secs(1));
    assert_eq!(staged_lines(&m, "deny-all"), Vec::<String>::new());
    assert_eq!(staged_lines(&m, "web-egress").len(), 3, "{}", m.render());
    assert_eq!(m.staged.series_count(), 3);
    assert_eq!(staged_series_gauges(&m), [1, 1, 1]);

    // The source workload goes: its edge's verdict series expire with the
    // TTL like the workload families; the policy's own series stay.
    idx.delete(ObjectKind::Pod, Some("shop"), "web-5c9f-abcde");
    idx.refresh();
    obs.sweep(&m, &idx, t0 + Duration::from_secs(2));
    assert_eq!(
        staged_lines(&m, "web-egress").len(),
        3,
        "not gone for the TTL yet"
    );
    obs.sweep(&m, &idx, t0 + Duration::from_secs(63));
    let left = staged_lines(&m, "web-egress");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .all(|l| !l.starts_with("segwatch_staged_verdicts_total")),
        "{left:?}"
    );

    // The staged object is deleted: nothing of it is left.
    idx.delete(ObjectKind::StagedNetworkPolicy, Some("shop"), "web-egress");
    idx.refresh();
    obs.sweep(&m, &idx, t0 + Duration::from_secs(64));
    assert_eq!(staged_lines(&m, "web-egress"), Vec::<String>::new());
    assert_eq!(m.staged.series_count(), 0);
    assert_eq!(staged_series_gauges(&m), [0, 0, 0]);
}

/// `segwatch_metric_series{family}` of the three staged families.
fn staged_series_gauges(m: &Metrics) -> [i64; 3] {
    crate::staged::SERIES_FAMILIES.map(|f| m.metric_series.with_label_values(&[f]).get())
}
