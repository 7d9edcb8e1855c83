//! Metric bookkeeping of judged flow reports: which series exist, what was
//! counted for a connection, and when series end. The per-flow path above
//! it is pure (attribute → judge → report, in [`crate::judge`]); this is the
//! edge where a judged report becomes counter increments.
//!
//! ```text
//!  FlowReport (identities, verdict, violations[], netpol)
//!    │ Observer::observe / announce
//!    ▼
//!  segwatch_flows_total, _flow_bytes_total, _violations_total (once per
//!  connection), _workload_flows_total, _flows_unattributed_total
//!  (series of workloads gone longer than the TTL are dropped)
//! ```

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::index::{ClusterIndex, BARE_POD_WORKLOAD};
use crate::metrics::Metrics;
use crate::report::{Endpoint, EndpointKind, FlowReport, Verdict, ViolationKind};

/// Metric label value of the metadata API destination (CONTRACT.md).
pub const METADATA_WORKLOAD: &str = "metadata-api";
/// Metric label value of an outside destination (CONTRACT.md).
pub const EXTERNAL_WORKLOAD: &str = "external";
/// Metric label value of an in-cluster address nothing accounts for.
pub const UNKNOWN_WORKLOAD: &str = "unknown";

/// Label values of one flow end for metrics: bounded sets only.
pub fn workload_label(ep: &Endpoint) -> String {
    match ep.kind {
        Some(EndpointKind::Pod) => ep
            .workload
            .as_deref()
            .unwrap_or(BARE_POD_WORKLOAD)
            .to_owned(),
        Some(EndpointKind::Service) => {
            let name = ep.service.as_ref().map_or("", |s| &*s.name);
            format!("Service/{name}")
        }
        Some(EndpointKind::Node) => format!("node/{}", ep.node.as_deref().unwrap_or("")),
        Some(EndpointKind::Metadata) => METADATA_WORKLOAD.to_owned(),
        Some(EndpointKind::External) => EXTERNAL_WORKLOAD.to_owned(),
        None => UNKNOWN_WORKLOAD.to_owned(),
    }
}

pub fn namespace_label(ep: &Endpoint) -> &str {
    match ep.kind {
        Some(EndpointKind::Pod | EndpointKind::Service) => ep.namespace.as_deref().unwrap_or(""),
        _ => "",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Family {
    Flows,
    Bytes,
    Violations,
    WorkloadFlows,
    Probe,
}

/// What identifies a connection to the observer (its 5-tuple as reported).
pub type ConnId = (IpAddr, Option<u16>, IpAddr, Option<u16>, String);

/// Updates the flow metrics from judged reports, and drops series of
/// workloads gone longer than `ttl`.
pub struct Observer {
    ttl: Duration,
    /// Every series we created, with the (namespace, workload) pairs it
    /// names (workload `None`: a namespace-only series).
    series: HashMap<(Family, Vec<String>), Vec<(String, Option<String>)>>,
    gone_since: HashMap<(String, Option<String>), Instant>,
    bypass_counted: HashSet<ConnId>,
    last_sweep: Instant,
}

impl Observer {
    pub fn new(ttl: Duration) -> Self {
        Observer {
            ttl,
            series: HashMap::new(),
            gone_since: HashMap::new(),
            bypass_counted: HashSet::new(),
            last_sweep: Instant::now(),
        }
    }

    pub fn conn_id(r: &FlowReport) -> ConnId {
        (
            r.src.ip,
            r.src.port,
            r.dst.ip,
            r.dst.port,
            r.protocol.clone(),
        )
    }

    fn inc(
        &mut self,
        m: &Metrics,
        fam: Family,
        labels: Vec<String>,
        by: u64,
        names: Vec<(String, Option<String>)>,
    ) {
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let vec = match fam {
            Family::Flows => &m.flows,
            Family::Bytes => &m.flow_bytes,
            Family::Violations => &m.violations,
            Family::WorkloadFlows => &m.workload_flows,
            Family::Probe => &m.probe_flows,
        };
        vec.with_label_values(&refs).inc_by(by);
        self.series.entry((fam, labels)).or_insert(names);
    }

    /// Per report: bytes. At the connection's first report (`first`):
    /// `segwatch_flows_total`, and unless `announced` (counted then) the
    /// violations, workload edges and unattributed ends. A `netpol_bypass`
    /// found only in a later report (the handshake completed after the
    /// first) is counted then, once.
    pub fn observe(&mut self, m: &Metrics, r: &FlowReport, first: bool, announced: bool) {
        let src_ns = namespace_label(&r.src).to_owned();
        let dst_ns = namespace_label(&r.dst).to_owned();
        let verdict = match r.verdict {
            Some(Verdict::Allowed) => "allowed",
            Some(Verdict::Violation) => "violation",
            Some(Verdict::Unjudged) | None => "unjudged",
        };
        let ns_names = vec![(src_ns.clone(), None), (dst_ns.clone(), None)];
        if first {
            self.inc(
                m,
                Family::Flows,
                vec![
                    src_ns.clone(),
                    dst_ns.clone(),
                    r.protocol.clone(),
                    verdict.to_owned(),
                ],
                1,
                ns_names.clone(),
            );
        }
        for (dir, n) in [("sent", r.bytes.sent), ("received", r.bytes.received)] {
            self.inc(
                m,
                Family::Bytes,
                vec![src_ns.clone(), dst_ns.clone(), dir.to_owned()],
                n,
                ns_names.clone(),
            );
        }
        if first && !announced {
            self.count_connection(m, r);
        } else if !r.probe
            && r.violations
                .iter()
                .any(|v| v.kind == ViolationKind::NetpolBypass)
            && !self.bypass_counted.contains(&Self::conn_id(r))
        {
            self.count_violations(m, r, true);
        }
        if r.ended {
            self.forget(r);
        }
    }

    /// Drops what is kept about the connection of `r` (it ended, or left
    /// the kernel table without a final report).
    pub fn forget(&mut self, r: &FlowReport) {
        self.bypass_counted.remove(&Self::conn_id(r));
    }

    pub fn forget_id(&mut self, id: &ConnId) {
        self.bypass_counted.remove(id);
    }

    /// Connections remembered (bypass counted), for bounds checks.
    pub fn remembered(&self) -> usize {
        self.bypass_counted.len()
    }

    /// A new connection announced by the kernel: counts its per-connection
    /// metrics now so alerts fire at once. Always counts (returns true).
    pub fn announce(&mut self, m: &Metrics, r: &FlowReport) -> bool {
        self.count_connection(m, r);
        true
    }

    fn count_connection(&mut self, m: &Metrics, r: &FlowReport) {
        if r.probe {
            // Deliberate test traffic: its own counter, never a violation
            // or a workload edge (it would page, and suggest would allow it).
            self.count_probe(m, r);
            return;
        }
        self.count_violations(m, r, false);
        if r.src.kind.is_none() || r.dst.kind.is_none() {
            m.flows_unattributed.inc();
        }
        let src_ns = namespace_label(&r.src).to_owned();
        let dst_ns = namespace_label(&r.dst).to_owned();
        let (src_wl, dst_wl) = (workload_label(&r.src), workload_label(&r.dst));
        let port = r.dst.port.map(|p| p.to_string()).unwrap_or_default();
        let names = vec![
            (src_ns.clone(), Some(src_wl.clone())),
            (dst_ns.clone(), Some(dst_wl.clone())),
        ];
        self.inc(
            m,
            Family::WorkloadFlows,
            vec![src_ns, src_wl, dst_ns, dst_wl, port, r.protocol.clone()],
            1,
            names,
        );
    }

    fn count_probe(&mut self, m: &Metrics, r: &FlowReport) {
        let src_ns = namespace_label(&r.src).to_owned();
        let dst_kind = match r.dst.kind {
            Some(EndpointKind::Pod) => "pod",
            Some(EndpointKind::Service) => "service",
            Some(EndpointKind::Node) => "node",
            Some(EndpointKind::Metadata) => "metadata",
            Some(EndpointKind::External) => "external",
            None => "unknown",
        };
        let verdict = match r.verdict {
            Some(Verdict::Allowed) => "allowed",
            Some(Verdict::Violation) => "violation",
            Some(Verdict::Unjudged) | None => "unjudged",
        };
        self.inc(
            m,
            Family::Probe,
            vec![src_ns.clone(), dst_kind.to_owned(), verdict.to_owned()],
            1,
            vec![(src_ns, None)],
        );
    }

    fn count_violations(&mut self, m: &Metrics, r: &FlowReport, only_bypass: bool) {
        let src_ns = namespace_label(&r.src).to_owned();
        let dst_ns = namespace_label(&r.dst).to_owned();
        let (src_wl, dst_wl) = (workload_label(&r.src), workload_label(&r.dst));
        let sa = match r.src.kind {
            Some(EndpointKind::Pod) => r
                .src
                .service_account
                .as_deref()
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        };
        let port = r.dst.port.map(|p| p.to_string()).unwrap_or_default();
        for v in &r.violations {
            let bypass = v.kind == ViolationKind::NetpolBypass;
            if only_bypass && !bypass {
                continue;
            }
            if bypass {
                if !self.bypass_counted.insert(Self::conn_id(r)) {
                    continue;
                }
            }
            let names = vec![
                (src_ns.clone(), Some(src_wl.clone())),
                (dst_ns.clone(), Some(dst_wl.clone())),
            ];
            self.inc(
                m,
                Family::Violations,
                vec![
                    v.kind.as_str().to_owned(),
                    src_ns.clone(),
                    src_wl.clone(),
                    sa.clone(),
                    dst_ns.clone(),
                    dst_wl.clone(),
                    port.clone(),
                    r.protocol.clone(),
                ],
                1,
                names,
            );
        }
    }

    /// Is it time for [`Observer::sweep`]?
    pub fn sweep_due(&self) -> bool {
        self.last_sweep.elapsed()
            >= (self.ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Drops every series naming a namespace or workload that has been gone
    /// (not in the index) for longer than the TTL. Node, metadata, outside
    /// and Service ends count as present while their namespace is.
    pub fn sweep(&mut self, m: &Metrics, index: &ClusterIndex, now: Instant) {
        self.last_sweep = now;
        let live = |ns: &str, wl: Option<&str>| -> bool {
            if ns.is_empty() {
                return true;
            }
            match wl {
                None => index.namespace_is_live(ns),
                Some(w) if w.starts_with("Service/") => index.namespace_is_live(ns),
                Some(w) => index.workload_is_live(ns, w),
            }
        };
        let mut names: HashSet<(String, Option<String>)> = HashSet::new();
        for n in self.series.values().flatten() {
            names.insert(n.clone());
        }
        let mut expired: HashSet<(String, Option<String>)> = HashSet::new();
        for n in names {
            if live(&n.0, n.1.as_deref()) {
                self.gone_since.remove(&n);
            } else {
                let since = *self.gone_since.entry(n.clone()).or_insert(now);
                if now.duration_since(since) >= self.ttl {
                    expired.insert(n);
                }
            }
        }
        if expired.is_empty() {
            return;
        }
        self.series.retain(|(fam, labels), ns| {
            if !ns.iter().any(|n| expired.contains(n)) {
                return true;
            }
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            let vec = match fam {
                Family::Flows => &m.flows,
                Family::Bytes => &m.flow_bytes,
                Family::Violations => &m.violations,
                Family::WorkloadFlows => &m.workload_flows,
                Family::Probe => &m.probe_flows,
            };
            let _ = vec.remove_label_values(&refs);
            false
        });
        for n in expired {
            self.gone_since.remove(&n);
        }
    }
}

#[cfg(test)]
mod tests;
