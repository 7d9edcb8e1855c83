//! Attribution and judging of flow reports, and the metrics they feed.
//!
//! ```text
//!  FlowReport (addresses, ports, counts, tcp state)
//!    │ ClusterIndex::judge: resolve both ends (pod/service/node/metadata/external)
//!    │   fill src/dst identity ─► SegmentationPolicy verdict ─► NetworkPolicy
//!    │   decision (netpol) and enforcement check (netpol_bypass)
//!    ▼
//!  FlowReport (identities, verdict, violations[], netpol)
//!    │ Observer::observe / announce
//!    ▼
//!  segwatch_flows_total, _flow_bytes_total, _violations_total (once per
//!  connection), _workload_flows_total, _flows_unattributed_total
//!  (series of workloads gone longer than the TTL are dropped)
//! ```

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::index::{ClusterIndex, Resolved, BARE_POD_WORKLOAD};
use crate::metrics::Metrics;
use crate::netpol;
use crate::report::{Endpoint, EndpointKind, FlowReport, TcpState, Verdict, ViolationKind};
use crate::segpolicy::{Decision, End, FlowView, L4};

/// The index shared between the sources (writers) and the judge (reader).
pub type SharedIndex = Arc<RwLock<ClusterIndex>>;

/// Set once the sources finished their initial sync (for /readyz).
#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Metric label value of the metadata API destination (CONTRACT.md).
pub const METADATA_WORKLOAD: &str = "metadata-api";
/// Metric label value of an outside destination (CONTRACT.md).
pub const EXTERNAL_WORKLOAD: &str = "external";
/// Metric label value of an in-cluster address nothing accounts for.
pub const UNKNOWN_WORKLOAD: &str = "unknown";

fn fill(ep: &mut Endpoint, r: &Resolved<'_>) {
    let ip = ep.ip;
    let port = ep.port;
    *ep = Endpoint::bare(ip, port);
    match r {
        Resolved::Pod(p) => {
            ep.kind = Some(EndpointKind::Pod);
            ep.namespace = Some(p.namespace.clone());
            ep.pod = Some(p.name.clone());
            ep.workload.clone_from(&p.workload);
            ep.service_account.clone_from(&p.service_account);
            ep.labels = (!p.labels.is_empty()).then(|| p.labels.clone());
            ep.node.clone_from(&p.node);
        }
        Resolved::Service(s) => {
            ep.kind = Some(EndpointKind::Service);
            ep.namespace = Some(s.namespace.clone());
            ep.service = Some(s.id.clone());
        }
        Resolved::Node(n) => {
            ep.kind = Some(EndpointKind::Node);
            ep.node = (!n.is_empty()).then(|| Arc::clone(n));
        }
        Resolved::Metadata => ep.kind = Some(EndpointKind::Metadata),
        Resolved::External => ep.kind = Some(EndpointKind::External),
        // Not faked as external: we know it is inside, not what it is.
        Resolved::Unknown => {}
    }
}

fn end<'a>(r: &Resolved<'a>) -> End<'a> {
    match *r {
        Resolved::Pod(p) => End::Pod {
            namespace: &p.namespace,
            masks: &p.masks,
        },
        Resolved::Service(s) => End::Service {
            namespace: &s.namespace,
            masks: &s.masks,
        },
        Resolved::Node(n) => End::Node { name: n },
        Resolved::Metadata => End::Metadata,
        Resolved::External => End::External,
        Resolved::Unknown => End::Unknown,
    }
}

/// Opened by a `segwatch probe` pod: the label deploy/probe sets. Who may
/// set it should be restricted (README "Active evidence"): its flows are
/// kept out of the violation metrics.
fn is_probe(src: &Resolved<'_>) -> bool {
    matches!(src, Resolved::Pod(p)
        if p.labels.get(crate::probe::PROBE_LABEL).map(String::as_str) == Some("true"))
}

/// ICMPv6 link control: MLD (130-132, 143), router and neighbour discovery
/// and redirects (133-137), per the IANA ICMPv6 type registry.
fn is_link_control(report: &FlowReport) -> bool {
    report.protocol == "ICMPv6"
        && report
            .icmp
            .is_some_and(|i| matches!(i.icmp_type, 130..=137 | 143))
}

/// The NetworkPolicy protocol of a report's `protocol`.
fn netpol_protocol(p: &str) -> Option<netpol::Protocol> {
    Some(match p {
        "TCP" => netpol::Protocol::Tcp,
        "UDP" => netpol::Protocol::Udp,
        "SCTP" => netpol::Protocol::Sctp,
        "ICMP" => netpol::Protocol::Other(1),
        "ICMPv6" => netpol::Protocol::Other(58),
        n => netpol::Protocol::Other(n.parse().ok()?),
    })
}

impl ClusterIndex {
    /// Fills a report's `src`/`dst` identities, `verdict`, `violations` and
    /// `netpol`. Fields that do not apply stay absent.
    pub fn judge(&self, report: &mut FlowReport) {
        let src = self.resolve(report.src.ip);
        let dst = self.resolve(report.dst.ip);
        fill(&mut report.src, &src);
        fill(&mut report.dst, &dst);
        report.violations.clear();
        report.netpol = None;
        if is_link_control(report) {
            // Neighbour discovery and multicast listener messages keep the
            // pod's IPv6 link working (RFC 4861, RFC 3810); they are not a
            // connection between workloads and every CNI lets them through.
            // Judging them would flag every IPv6 pod as reaching its node.
            report.verdict = Some(Verdict::Allowed);
            report.probe = false;
            return;
        }
        report.probe = is_probe(&src);
        let decision = self.policy().evaluate(&FlowView {
            src: end(&src),
            dst: end(&dst),
            dst_ip: report.dst.ip,
            dst_port: report.dst.port,
            proto: L4::from_report(&report.protocol),
            protocol: &report.protocol,
        });
        if let Decision::Violation(v) = &decision {
            report.violations.push(v.to_violation());
        }
        self.judge_netpol(report, &src, &dst);
        let unknown_end = matches!(src, Resolved::Unknown) || matches!(dst, Resolved::Unknown);
        report.verdict = if !report.violations.is_empty() {
            Some(Verdict::Violation)
        } else if matches!(decision, Decision::NotJudged) && unknown_end {
            // An end we cannot name: nothing honest to say.
            None
        } else {
            Some(Verdict::Allowed)
        };
    }

    fn judge_netpol(&self, report: &mut FlowReport, src: &Resolved<'_>, dst: &Resolved<'_>) {
        // A ClusterIP is translated to a pod after our hook; NetworkPolicy
        // judges the translated connection, which we see on the pod's veth.
        if matches!(src, Resolved::Service(_) | Resolved::Unknown)
            || matches!(dst, Resolved::Service(_) | Resolved::Unknown)
        {
            return;
        }
        // "traffic to and from the node where a Pod is running is always
        // allowed" (Network Policies concept page).
        let local_node = |pod: &Resolved<'_>, node: &Resolved<'_>| match (pod, node) {
            (Resolved::Pod(p), Resolved::Node(n)) => p.node.as_deref() == Some(&***n),
            _ => false,
        };
        if local_node(src, dst) || local_node(dst, src) {
            report.netpol = Some(crate::report::NetpolInfo {
                allowed: true,
                ingress: Vec::new(),
                egress: Vec::new(),
                ..Default::default()
            });
            return;
        }
        let Some(protocol) = netpol_protocol(&report.protocol) else {
            return;
        };
        let decision = self.netpol().evaluate(&netpol::Query {
            src: netpol::Peer::Ip(report.src.ip),
            dst: netpol::Peer::Ip(report.dst.ip),
            protocol,
            port: report.dst.port.unwrap_or(0),
        });
        let state = match &report.tcp {
            Some(t) => t.state,
            // Without a handshake: the destination answered or it did not.
            None if report.packets.received > 0 => TcpState::Established,
            None => TcpState::Attempted,
        };
        if let Some(netpol::Enforcement::Bypass(v)) = netpol::enforcement_finding(&decision, state)
        {
            report.violations.push(v);
        }
        report.netpol = Some(decision.into_netpol_info());
    }
}

/// Label values of one flow end for metrics: bounded sets only.
fn workload_label(ep: &Endpoint) -> String {
    match ep.kind {
        Some(EndpointKind::Pod) => ep
            .workload
            .as_deref()
            .unwrap_or(BARE_POD_WORKLOAD)
            .to_owned(),
        Some(EndpointKind::Service) => {
            let name = ep
                .service
                .as_deref()
                .and_then(|s| s.split_once('/'))
                .map_or("", |(_, n)| n);
            format!("Service/{name}")
        }
        Some(EndpointKind::Node) => format!("node/{}", ep.node.as_deref().unwrap_or("")),
        Some(EndpointKind::Metadata) => METADATA_WORKLOAD.to_owned(),
        Some(EndpointKind::External) => EXTERNAL_WORKLOAD.to_owned(),
        None => UNKNOWN_WORKLOAD.to_owned(),
    }
}

fn namespace_label(ep: &Endpoint) -> &str {
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

type ConnId = (IpAddr, Option<u16>, IpAddr, Option<u16>, String);

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

    fn conn_id(r: &FlowReport) -> ConnId {
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

    /// Per report: flows and bytes. Per connection (`first`): violations,
    /// workload edges, unattributed ends. A `netpol_bypass` found only in a
    /// later report (the handshake completed after the first) is counted
    /// then, once.
    pub fn observe(&mut self, m: &Metrics, r: &FlowReport, first: bool) {
        let src_ns = namespace_label(&r.src).to_owned();
        let dst_ns = namespace_label(&r.dst).to_owned();
        let verdict = match r.verdict {
            Some(Verdict::Allowed) => "allowed",
            Some(Verdict::Violation) => "violation",
            None => "unjudged",
        };
        let ns_names = vec![(src_ns.clone(), None), (dst_ns.clone(), None)];
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
        for (dir, n) in [("sent", r.bytes.sent), ("received", r.bytes.received)] {
            self.inc(
                m,
                Family::Bytes,
                vec![src_ns.clone(), dst_ns.clone(), dir.to_owned()],
                n,
                ns_names.clone(),
            );
        }
        if first {
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
            self.bypass_counted.remove(&Self::conn_id(r));
        }
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
            None => "unjudged",
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

/// The daemon's judge: the shared index, the readiness of its sources and
/// the metrics observer. Plug it into `daemon::run`.
pub struct ClusterJudge {
    index: SharedIndex,
    ready: ReadyFlag,
    health: crate::sources::SourceHealth,
    observer: Observer,
}

impl ClusterJudge {
    pub fn new(index: SharedIndex, ready: ReadyFlag, metrics_ttl: Duration) -> Self {
        ClusterJudge {
            index,
            ready,
            health: crate::sources::SourceHealth::default(),
            observer: Observer::new(metrics_ttl),
        }
    }

    /// Reports the sources' degraded state (a lost API server) to /readyz.
    pub fn with_health(mut self, health: crate::sources::SourceHealth) -> Self {
        self.health = health;
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ClusterIndex> {
        // A writer that panicked left a consistent-enough index (every
        // method completes its update before the next); keep judging.
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl crate::daemon::Judge for ClusterJudge {
    fn judge(&mut self, report: &mut FlowReport) {
        self.read().judge(report);
    }

    fn observe(&mut self, metrics: &Metrics, report: &FlowReport, first: bool) {
        self.observer.observe(metrics, report, first);
        if self.observer.sweep_due() {
            let index = self.index.clone();
            let guard = index.read().unwrap_or_else(|e| e.into_inner());
            self.observer.sweep(metrics, &guard, Instant::now());
        }
    }

    fn announce(&mut self, metrics: &Metrics, report: &FlowReport) -> bool {
        self.observer.announce(metrics, report)
    }

    fn ready(&self) -> bool {
        self.ready.is_set()
    }

    fn degraded(&self) -> Option<String> {
        self.health.degraded()
    }
}

#[cfg(test)]
mod tests;
