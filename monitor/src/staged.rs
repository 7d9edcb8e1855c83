//! The daemon side of staged policies: what a judged flow report's `staged`
//! field adds to `/metrics` (the verdicts themselves come from
//! [`crate::netpol::staged::Overlay`] in `ClusterIndex::judge`).
//!
//! ```text
//!  FlowReport.staged {verdict, decided_by, policy, selected}
//!    │ count (once per connection, from the Observer's per-connection step)
//!    ▼
//!  segwatch_staged_verdicts_total{policy_namespace,policy,verdict,src_*,dst_*,dst_port,protocol}
//!  segwatch_staged_selected_total{policy_namespace,policy}
//!  segwatch_staged_last_would_deny_timestamp_seconds{policy_namespace,policy}
//! ```
//!
//! Label values: staged objects (as bounded as the policies of a cluster),
//! namespaces, workloads and ports exactly as the other workload families;
//! `verdict` is `would_deny | would_allow` (connections whose verdict does
//! not change are not counted here, only as selected).
//!
//! Series end with what they name: [`StagedMetrics::sweep`] (from the
//! Observer's sweep) drops every series of a staged object that is no
//! longer in the cluster view, and the verdict series of workload edges
//! whose ends expired like the other workload families.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::report::{FlowReport, StagedVerdict};

/// The staged-policy metric families.
#[derive(Clone)]
pub struct StagedMetrics {
    /// `segwatch_staged_verdicts_total{policy_namespace,policy,verdict,src_namespace,src_workload,dst_namespace,dst_workload,dst_port,protocol}`
    pub verdicts: IntCounterVec,
    /// `segwatch_staged_selected_total{policy_namespace,policy}`: connections
    /// a staged object applied to (selected their source for egress or
    /// their destination for ingress; a removal: the policy it removes did).
    pub selected: IntCounterVec,
    /// `segwatch_staged_last_would_deny_timestamp_seconds{policy_namespace,policy}`:
    /// Unix time of the last connection the staged object would have denied.
    pub last_would_deny: IntGaugeVec,
    /// The series made so far, by the staged reference they belong to.
    series: Arc<Mutex<BTreeMap<String, PolicySeries>>>,
    /// `segwatch_metric_series{family}`, told the three families' counts
    /// after every change (absent: nobody asked, as in unit tests).
    series_gauge: Option<IntGaugeVec>,
}

/// The staged families as `segwatch_metric_series{family}` names them.
pub const SERIES_FAMILIES: [&str; 3] = [
    "segwatch_staged_verdicts_total",
    "segwatch_staged_selected_total",
    "segwatch_staged_last_would_deny_timestamp_seconds",
];

/// The series of one staged object.
#[derive(Default)]
struct PolicySeries {
    /// Label values of its `segwatch_staged_verdicts_total` series.
    verdicts: BTreeSet<Vec<String>>,
    selected: bool,
    last_would_deny: bool,
}

/// A (namespace, workload) an edge names; workload `None`: the namespace
/// itself (as the Observer names its series).
pub type EndName = (String, Option<String>);

/// The label values of one connection's ends, as the workload families
/// have them: `[src_namespace, src_workload, dst_namespace, dst_workload,
/// dst_port, protocol]`.
pub type EdgeLabels<'a> = [&'a str; 6];

/// `(policy_namespace, policy)` of a staged reference: `ns/name` for a
/// StagedNetworkPolicy, `name` (namespace `""`) for a cluster-scoped one.
pub fn policy_labels(reference: &str) -> (&str, &str) {
    reference.split_once('/').unwrap_or(("", reference))
}

impl StagedMetrics {
    pub fn register(registry: &Registry) -> Self {
        let verdicts = IntCounterVec::new(
            Opts::new(
                "segwatch_staged_verdicts_total",
                "Connections whose verdict a staged policy would change (would_deny: allowed now, denied with the staged objects applied; would_allow: the reverse), by the staged object it comes from; counted once per connection.",
            ),
            &[
                "policy_namespace",
                "policy",
                "verdict",
                "src_namespace",
                "src_workload",
                "dst_namespace",
                "dst_workload",
                "dst_port",
                "protocol",
            ],
        )
        .expect("static metric definition is valid");
        let selected = IntCounterVec::new(
            Opts::new(
                "segwatch_staged_selected_total",
                "Connections a staged policy applied to (its subject is the source for egress or the destination for ingress), counted once per connection.",
            ),
            &["policy_namespace", "policy"],
        )
        .expect("static metric definition is valid");
        let last_would_deny = IntGaugeVec::new(
            Opts::new(
                "segwatch_staged_last_would_deny_timestamp_seconds",
                "Unix time of the last connection the staged policy would have denied (absent: none since the daemon started).",
            ),
            &["policy_namespace", "policy"],
        )
        .expect("static metric definition is valid");
        for c in [&verdicts, &selected] {
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
        }
        registry
            .register(Box::new(last_would_deny.clone()))
            .expect("metric names are unique");
        StagedMetrics {
            verdicts,
            selected,
            last_would_deny,
            series: Arc::default(),
            series_gauge: None,
        }
    }

    /// Reports the series held per family in `gauge`
    /// (`segwatch_metric_series{family}`).
    pub fn counting_series_in(mut self, gauge: IntGaugeVec) -> Self {
        for f in SERIES_FAMILIES {
            gauge.with_label_values(&[f]).set(0);
        }
        self.series_gauge = Some(gauge);
        self
    }

    /// Sets `segwatch_metric_series` for the staged families from `series`.
    fn publish(&self, series: &BTreeMap<String, PolicySeries>) {
        let Some(gauge) = &self.series_gauge else {
            return;
        };
        let counts = series.values().fold([0usize; 3], |[v, s, l], p| {
            [
                v + p.verdicts.len(),
                s + usize::from(p.selected),
                l + usize::from(p.last_would_deny),
            ]
        });
        for (family, n) in SERIES_FAMILIES.iter().zip(counts) {
            gauge
                .with_label_values(&[family])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Series held now (all three families).
    pub fn series_count(&self) -> usize {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .values()
            .map(|p| p.verdicts.len() + usize::from(p.selected) + usize::from(p.last_would_deny))
            .sum()
    }

    /// Drops the series of every staged object not in `live` (references:
    /// `ns/name`, or `name` for a cluster-scoped one), and the verdict
    /// series naming an end in `expired` (gone longer than the TTL).
    pub fn sweep(&self, live: &HashSet<String>, expired: &HashSet<EndName>) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.retain(|reference, p| {
            let (ns, name) = policy_labels(reference);
            if live.contains(reference) {
                p.verdicts.retain(|labels| {
                    let gone = |ns: &str, wl: &str| {
                        expired.contains(&(ns.to_owned(), None))
                            || expired.contains(&(ns.to_owned(), Some(wl.to_owned())))
                    };
                    if gone(&labels[3], &labels[4]) || gone(&labels[5], &labels[6]) {
                        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                        let _ = self.verdicts.remove_label_values(&refs);
                        return false;
                    }
                    true
                });
                return true;
            }
            for labels in &p.verdicts {
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                let _ = self.verdicts.remove_label_values(&refs);
            }
            if p.selected {
                let _ = self.selected.remove_label_values(&[ns, name]);
            }
            if p.last_would_deny {
                let _ = self.last_would_deny.remove_label_values(&[ns, name]);
            }
            false
        });
        self.publish(&series);
    }

    /// Counts one connection (call once, at its first report).
    pub fn count(&self, r: &FlowReport, edge: EdgeLabels<'_>) {
        let Some(s) = &r.staged else {
            return;
        };
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for p in &s.selected {
            let (ns, name) = policy_labels(p);
            self.selected.with_label_values(&[ns, name]).inc();
            series.entry(p.clone()).or_default().selected = true;
        }
        let verdict = match s.verdict {
            StagedVerdict::WouldDeny | StagedVerdict::WouldAllow => s.verdict.as_str(),
            StagedVerdict::Allowed | StagedVerdict::Denied => {
                self.publish(&series);
                return;
            }
        };
        let reference = s.policy.as_deref().unwrap_or("");
        let (ns, name) = policy_labels(reference);
        let [src_ns, src_wl, dst_ns, dst_wl, port, proto] = edge;
        let labels = [
            ns, name, verdict, src_ns, src_wl, dst_ns, dst_wl, port, proto,
        ];
        self.verdicts.with_label_values(&labels).inc();
        let entry = series.entry(reference.to_owned()).or_default();
        entry
            .verdicts
            .insert(labels.iter().map(|l| l.to_string()).collect());
        if s.verdict == StagedVerdict::WouldDeny {
            self.last_would_deny
                .with_label_values(&[ns, name])
                .set(r.time.timestamp());
            entry.last_would_deny = true;
        }
        self.publish(&series);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::StagedReport;
    use prometheus::Encoder as _;

    fn report(verdict: StagedVerdict, policy: Option<&str>, selected: &[&str]) -> FlowReport {
        FlowReport {
            time: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time"),
            staged: Some(StagedReport {
                verdict,
                decided_by: None,
                policy: policy.map(str::to_owned),
                selected: selected.iter().map(|s| s.to_string()).collect(),
            }),
            ..FlowReport::default()
        }
    }

    #[test]
    fn would_deny_counts_selected_and_sets_the_last_time() {
        let m = StagedMetrics::register(&Registry::new());
        let edge = [
            "shop",
            "Deployment/web",
            "shop",
            "StatefulSet/db",
            "5432",
            "TCP",
        ];
        m.count(
            &report(
                StagedVerdict::WouldDeny,
                Some("shop/db-lockdown"),
                &["shop/db-lockdown"],
            ),
            edge,
        );
        m.count(
            &report(StagedVerdict::Allowed, None, &["shop/db-lockdown"]),
            edge,
        );
        m.count(
            &report(StagedVerdict::WouldAllow, Some("open-all"), &["open-all"]),
            edge,
        );
        m.count(&FlowReport::default(), edge);
        let wd = [
            "shop",
            "db-lockdown",
            "would_deny",
            "shop",
            "Deployment/web",
            "shop",
            "StatefulSet/db",
            "5432",
            "TCP",
        ];
        assert_eq!(m.verdicts.with_label_values(&wd).get(), 1);
        let wa = [
            "",
            "open-all",
            "would_allow",
            "shop",
            "Deployment/web",
            "shop",
            "StatefulSet/db",
            "5432",
            "TCP",
        ];
        assert_eq!(m.verdicts.with_label_values(&wa).get(), 1);
        assert_eq!(
            m.selected.with_label_values(&["shop", "db-lockdown"]).get(),
            2
        );
        assert_eq!(
            m.last_would_deny
                .with_label_values(&["shop", "db-lockdown"])
                .get(),
            1_700_000_000
        );
        assert_eq!(
            m.last_would_deny.with_label_values(&["", "open-all"]).get(),
            0
        );
    }

    /// The daemon path: the index judges a report (staged field filled by
    /// the overlay built with the engine) and the Observer step counts it.
    #[test]
    fn the_index_fills_the_staged_field_and_metrics_count_it() {
        use crate::index::{ClusterIndex, IndexConfig};
        let text = r"apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
status: {podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
status: {podIPs: [{ip: 10.0.0.3}]}
---
apiVersion: segwatch.dev/v1alpha1
kind: StagedNetworkPolicy
metadata: {name: db-lockdown, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
";
        let inv = crate::inventory::parse_str(std::path::Path::new("c.yaml"), text)
            .expect("inventory parses");
        let mut idx = ClusterIndex::new(IndexConfig {
            node_name: "n1".into(),
            ..Default::default()
        });
        idx.reset(inv.objects);
        let mut r = FlowReport {
            protocol: "TCP".into(),
            src: crate::report::Endpoint::bare("10.0.0.1".parse().expect("ip"), Some(40000)),
            dst: crate::report::Endpoint::bare("10.0.0.3".parse().expect("ip"), Some(5432)),
            ..FlowReport::default()
        };
        idx.judge(&mut r);
        let s = r
            .staged
            .as_ref()
            .expect("a staged object exists: the field is filled");
        assert_eq!(s.verdict, StagedVerdict::WouldDeny);
        assert_eq!(s.policy.as_deref(), Some("shop/db-lockdown"));
        let line = serde_json::to_value(&r).expect("serializes");
        assert_eq!(line["staged"]["verdict"], "would_deny");
        assert_eq!(line["staged"]["decided_by"]["kind"], "StagedNetworkPolicy");
        assert_eq!(
            r.netpol.as_ref().map(|n| n.allowed),
            Some(true),
            "live still allows"
        );

        let registry = Registry::new();
        let m = StagedMetrics::register(&registry);
        m.count(&r, ["shop", "bare-pod", "shop", "bare-pod", "5432", "TCP"]);
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .expect("renders");
        let text = String::from_utf8(buf).expect("utf-8");
        assert!(
            text.contains(r#"segwatch_staged_verdicts_total{dst_namespace="shop",dst_port="5432",dst_workload="bare-pod",policy="db-lockdown",policy_namespace="shop",protocol="TCP",src_namespace="shop",src_workload="bare-pod",verdict="would_deny"} 1"#),
            "{text}"
        );
    }
}
