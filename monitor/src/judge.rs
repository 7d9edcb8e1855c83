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
use crate::report::{
    Endpoint, EndpointKind, FlowReport, ServiceRef, TcpState, Verdict, Violation, ViolationKind,
};
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
            ep.service = Some(ServiceRef {
                namespace: s.namespace.clone(),
                name: s.name.as_str().into(),
                ip: Some(ip),
                port,
            });
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
        report.staged = None;
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
            // An end we cannot name: nothing honest to say, and never
            // "allowed" by default.
            Some(Verdict::Unjudged)
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
        let query = netpol::Query {
            src: netpol::Peer::Ip(report.src.ip),
            dst: netpol::Peer::Ip(report.dst.ip),
            protocol,
            port: report.dst.port.unwrap_or(0),
        };
        let decision = self.netpol().evaluate(&query);
        report.staged = netpol::staged::report_of(self.netpol(), &decision, &query);
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
            let name = ep.service.as_ref().map_or("", |s| &*s.name);
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

    fn forget_id(&mut self, id: &ConnId) {
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
        m.staged
            .count(r, [&src_ns, &src_wl, &dst_ns, &dst_wl, &port, &r.protocol]);
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

/// Why this node leaves a connection it saw to one report made elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotOurs {
    /// The opener is a pod on another node that runs an agent.
    OpenerNode,
    /// The copy of a Service connection after DNAT; the client's veth on
    /// this node carries the copy that is reported (naming the backend).
    NatCopy,
}

impl NotOurs {
    fn label(self) -> &'static str {
        match self {
            NotOurs::OpenerNode => "opener_node",
            NotOurs::NatCopy => "nat_copy",
        }
    }
}

/// What the judge keeps per open connection (keyed by its `connection`
/// id). Bounded by the kernel flow table: removed when the connection
/// ends, and after every sweep for connections no longer in the table.
struct ConnState {
    key: Option<crate::flows::ConnKey>,
    /// NAT found in conntrack (looked up again while `None`: the entry may
    /// not be confirmed yet when the first packet is announced).
    nat: Option<crate::conntrack::Nat>,
    not_ours: Option<NotOurs>,
    /// Reports published so far (the next one's `seq` is this + 1).
    published: u32,
    /// Violations and workload edge counted (at the announcement, or at a
    /// published report).
    counted: bool,
    /// `segwatch_service_flows_without_backend_total` counted.
    backendless_counted: bool,
    /// The Service translation applied to the connection's reports:
    /// (client end, backend end, the Service addressed).
    translated: Option<(Endpoint, Endpoint, Option<ServiceRef>)>,
    /// The observer's key for it (to forget it when the state goes).
    obs_id: Option<ConnId>,
    /// Reports held until the index names both ends.
    held: Vec<FlowReport>,
    held_since: Option<Instant>,
    /// A report (or the announcement) was seen at the last sweep or since.
    seen: bool,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            key: None,
            nat: None,
            not_ours: None,
            published: 0,
            counted: false,
            backendless_counted: false,
            translated: None,
            obs_id: None,
            held: Vec::new(),
            held_since: None,
            seen: true,
        }
    }
}

/// Reports held at most, over all connections; past it a report is
/// published at once as it is (`unjudged` if it cannot be judged).
const MAX_HELD: usize = 65_536;

/// The daemon's judge: the shared index, the readiness of its sources and
/// the metrics observer; decides which connections this node reports
/// ([`crate::reporter`]), resolves Service connections to their backend
/// from conntrack, and holds reports whose ends the index does not know
/// yet. Plug it into `daemon::run`.
pub struct ClusterJudge {
    index: SharedIndex,
    ready: ReadyFlag,
    health: crate::sources::SourceHealth,
    observer: Observer,
    conntrack: Option<Box<dyn crate::conntrack::Lookup + Send>>,
    conns: HashMap<String, ConnState>,
    held: usize,
    /// How long a report waits for the index to name its ends.
    identity_wait: Duration,
    ct_warned: bool,
}

impl ClusterJudge {
    pub fn new(index: SharedIndex, ready: ReadyFlag, metrics_ttl: Duration) -> Self {
        ClusterJudge {
            index,
            ready,
            health: crate::sources::SourceHealth::default(),
            observer: Observer::new(metrics_ttl),
            conntrack: None,
            conns: HashMap::new(),
            held: 0,
            identity_wait: Duration::from_secs(15),
            ct_warned: false,
        }
    }

    /// Reports the sources' degraded state (a lost API server) to /readyz.
    pub fn with_health(mut self, health: crate::sources::SourceHealth) -> Self {
        self.health = health;
        self
    }

    /// Reads Service backends from this connection tracking table.
    pub fn with_conntrack(mut self, ct: Box<dyn crate::conntrack::Lookup + Send>) -> Self {
        self.conntrack = Some(ct);
        self
    }

    /// How long a report with an end the index does not know waits for it
    /// (`--identity-wait`).
    pub fn with_identity_wait(mut self, wait: Duration) -> Self {
        self.identity_wait = wait;
        self
    }

    /// Connections with state kept (for bounds checks).
    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    fn conn_key(report: &FlowReport) -> String {
        report.connection.clone().unwrap_or_else(|| {
            format!(
                "{}:{}>{}:{}/{}",
                report.src.ip,
                report.src.port.unwrap_or(0),
                report.dst.ip,
                report.dst.port.unwrap_or(0),
                report.protocol
            )
        })
    }

    /// What conntrack says about the connection, once found.
    fn nat(&mut self, report: &FlowReport, metrics: Option<&Metrics>) -> crate::conntrack::Nat {
        use crate::conntrack::{Nat, Tuple};
        let id = Self::conn_key(report);
        if let Some(n) = self.conns.get(&id).and_then(|s| s.nat) {
            return n;
        }
        let proto = match report.protocol.as_str() {
            "TCP" => 6,
            "UDP" => 17,
            "SCTP" => 132,
            _ => return Nat::None,
        };
        let (Some(sport), Some(dport), Some(ct)) =
            (report.src.port, report.dst.port, self.conntrack.as_mut())
        else {
            return Nat::None;
        };
        let tuple = Tuple {
            src: report.src.ip,
            dst: report.dst.ip,
            sport,
            dport,
            proto,
        };
        match ct.nat_tracked(&tuple) {
            Ok((n, tracked)) => {
                // Kept once conntrack knows the connection; asked again
                // while it does not (the entry is confirmed only after
                // the first packet passed the hooks).
                if tracked {
                    self.conns.entry(id).or_insert_with(ConnState::new).nat = Some(n);
                }
                n
            }
            Err(e) => {
                if let Some(m) = metrics {
                    m.conntrack_errors.inc();
                }
                if !self.ct_warned {
                    self.ct_warned = true;
                    tracing::warn!(error = %e, "conntrack lookup failed: Service connections are reported without backend");
                }
                Nat::None
            }
        }
    }

    /// Attribution and verdict of one report, with the Service translation
    /// applied; returns why it is not ours to report, if it is not.
    fn judge_one(&mut self, report: &mut FlowReport, metrics: Option<&Metrics>) -> Option<NotOurs> {
        use crate::conntrack::Nat;
        let id = Self::conn_key(report);
        let done = self.conns.get(&id).and_then(|s| s.translated.clone());
        let nat = if done.is_some() {
            Nat::None
        } else {
            self.nat(report, metrics)
        };
        let index = self.index.clone();
        // A writer that panicked left a consistent-enough index (every
        // method completes its update before the next); keep judging.
        let idx = index.read().unwrap_or_else(|e| e.into_inner());
        let protocol = report.protocol.clone();
        let svc_ref = |s: &crate::index::ServiceEntry, ip: IpAddr, port: u16| ServiceRef {
            namespace: s.namespace.clone(),
            name: s.name.as_str().into(),
            ip: Some(ip),
            port: Some(port),
        };
        let translated = match (done, nat) {
            (Some(t), _) => Some(t),
            (None, Nat::Before { backend }) => {
                // The client's view: the Service address it dialled. The
                // kernel sent it to `backend`; judge that (what
                // NetworkPolicy sees), and name the Service too.
                let service = report.dst.port.and_then(|port| {
                    idx.service_at(report.dst.ip, port, &protocol)
                        .map(|s| svc_ref(s, report.dst.ip, port))
                });
                Some((
                    Endpoint::bare(report.src.ip, report.src.port),
                    Endpoint::bare(backend.0, Some(backend.1)),
                    service,
                ))
            }
            (None, Nat::After { client, addressed }) => {
                if idx.is_local_pod(client.0) {
                    // The client's veth is on this node: its copy (before
                    // DNAT) is the one reported.
                    return Some(NotOurs::NatCopy);
                }
                let service = idx
                    .service_at(addressed.0, addressed.1, &protocol)
                    .map(|s| svc_ref(s, addressed.0, addressed.1));
                // The client as it opened the connection (before a
                // masquerade), the backend as it is.
                Some((
                    Endpoint::bare(client.0, Some(client.1)),
                    Endpoint::bare(report.dst.ip, report.dst.port),
                    service,
                ))
            }
            (None, Nat::None) => None,
        };
        let mut service = None;
        if let Some((src, dst, svc)) = &translated {
            report.src = src.clone();
            report.dst = dst.clone();
            service.clone_from(svc);
            self.conns
                .entry(id)
                .or_insert_with(ConnState::new)
                .translated
                .clone_from(&translated);
        }
        let opener = report.src.ip;
        if let crate::reporter::Choice::OpenerNode(_) = crate::reporter::choose(&idx, opener) {
            return Some(NotOurs::OpenerNode);
        }
        idx.judge(report);
        if service.is_some() {
            report.dst.service = service;
        }
        // Traffic that left a pod veth of this node is from a pod even
        // before the index names it: reaching a node or the metadata API
        // is a violation at once (no rule can allow an unknown pod).
        if report.src.kind.is_none() && idx.is_local_pod(report.src.ip) {
            let kind = match report.dst.kind {
                Some(EndpointKind::Metadata) => Some((
                    ViolationKind::MetadataApi,
                    idx.policy().metadata_owner_name(),
                    "the metadata API",
                )),
                Some(EndpointKind::Node) => Some((
                    ViolationKind::HostAccess,
                    idx.policy().host_owner_name(),
                    "a node port",
                )),
                _ => None,
            };
            if let Some((kind, rule, what)) = kind {
                let port = report.dst.port.map(|p| format!(":{p}")).unwrap_or_default();
                report.violations.push(Violation {
                    kind,
                    rule,
                    reason: format!(
                        "a pod of this node not yet in the cluster view ({}) reached {what} ({}{port}/{})",
                        report.src.ip, report.dst.ip, report.protocol
                    ),
                });
                report.verdict = Some(Verdict::Violation);
            }
        }
        None
    }

    /// Drops a connection's state unless reports of it are still held.
    fn forget_if_done(&mut self, id: &str) {
        if self.conns.get(id).is_some_and(|s| s.held.is_empty()) {
            if let Some(st) = self.conns.remove(id) {
                if let Some(o) = st.obs_id {
                    self.observer.forget_id(&o);
                }
            }
        }
    }

    /// Is an end of `r` still to be named by the index?
    fn unattributed(r: &FlowReport) -> bool {
        r.src.kind.is_none() || r.dst.kind.is_none()
    }

    /// Counts a report in the metrics and numbers it; the caller writes it.
    fn publish(&mut self, metrics: &Metrics, mut r: FlowReport) -> FlowReport {
        let id = Self::conn_key(&r);
        let st = self.conns.entry(id).or_insert_with(ConnState::new);
        st.published += 1;
        r.seq = Some(st.published);
        let first = st.published == 1;
        let announced = st.counted;
        st.obs_id = Some(Observer::conn_id(&r));
        st.counted = true;
        if first
            && r.dst.kind == Some(EndpointKind::Service)
            && !std::mem::replace(&mut st.backendless_counted, true)
        {
            metrics.service_without_backend.inc();
        }
        self.observer.observe(metrics, &r, first, announced);
        r
    }

    /// Publishes the held reports of a connection (re-judged with what the
    /// index knows now).
    fn release(&mut self, metrics: &Metrics, id: &str, out: &mut Vec<FlowReport>) {
        let Some(st) = self.conns.get_mut(id) else {
            return;
        };
        let held = std::mem::take(&mut st.held);
        st.held_since = None;
        self.held -= held.len();
        for mut r in held {
            let _ = self.judge_one(&mut r, Some(metrics));
            let outcome = if Self::unattributed(&r) {
                "unjudged"
            } else {
                "attributed"
            };
            if r.verdict.is_none() || (outcome == "unjudged" && r.verdict == Some(Verdict::Allowed))
            {
                r.verdict = Some(Verdict::Unjudged);
            }
            metrics
                .flows_identity_late
                .with_label_values(&[outcome])
                .inc();
            out.push(self.publish(metrics, r));
        }
        metrics.flows_awaiting_identity.set(self.held as i64);
    }
}

impl crate::daemon::Judge for ClusterJudge {
    fn judge(&mut self, report: &mut FlowReport) {
        let id = Self::conn_key(report);
        let not_ours = self.judge_one(report, None);
        let st = self.conns.entry(id).or_insert_with(ConnState::new);
        st.seen = true;
        if st.key.is_none() {
            st.key = report.conn;
        }
        st.not_ours = not_ours;
    }

    fn observe(
        &mut self,
        metrics: &Metrics,
        report: FlowReport,
        _first: bool,
    ) -> Option<FlowReport> {
        let id = Self::conn_key(&report);
        let ended = report.ended;
        let st = self.conns.entry(id.clone()).or_insert_with(ConnState::new);
        st.seen = true;
        let out = if let Some(why) = st.not_ours {
            if st.published == 0 && !std::mem::replace(&mut st.counted, true) {
                metrics
                    .flows_not_reported
                    .with_label_values(&[why.label()])
                    .inc();
            }
            None
        } else if Self::unattributed(&report)
            && (!st.held.is_empty() || st.published == 0)
            && self.held < MAX_HELD
        {
            // Held until the index names the end (or the wait is over):
            // its violations count then, once, with the identity. What is
            // a violation whoever the pod is (metadata API, node ports)
            // counts now, for the alert.
            if !report.violations.is_empty() && !st.counted {
                st.counted = true;
                self.observer.announce(metrics, &report);
            }
            st.held_since.get_or_insert_with(Instant::now);
            st.held.push(report);
            self.held += 1;
            metrics.flows_awaiting_identity.set(self.held as i64);
            None
        } else {
            Some(self.publish(metrics, report))
        };
        if self.observer.sweep_due() {
            let index = self.index.clone();
            let guard = index.read().unwrap_or_else(|e| e.into_inner());
            self.observer.sweep(metrics, &guard, Instant::now());
        }
        if ended {
            self.forget_if_done(&id);
        }
        out
    }

    fn announce(&mut self, metrics: &Metrics, report: &FlowReport) -> bool {
        let id = Self::conn_key(report);
        let st = self.conns.entry(id).or_insert_with(ConnState::new);
        st.seen = true;
        // Not ours, or not judged on its final identity yet (an unknown
        // end, a Service whose backend conntrack does not show yet): the
        // report counts it.
        if st.not_ours.is_some()
            || st.counted
            || (Self::unattributed(report) && report.violations.is_empty())
            || report.dst.kind == Some(EndpointKind::Service)
        {
            return false;
        }
        st.counted = true;
        self.observer.announce(metrics, report)
    }

    fn after_sweep(
        &mut self,
        metrics: &Metrics,
        open: &dyn Fn(&crate::flows::ConnKey) -> bool,
        shutdown: bool,
    ) -> Vec<FlowReport> {
        let mut out = Vec::new();
        let now = Instant::now();
        let waiting: Vec<String> = self
            .conns
            .iter()
            .filter(|(_, s)| !s.held.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            let due = {
                let st = &self.conns[&id];
                let expired = st
                    .held_since
                    .is_some_and(|t| now.duration_since(t) >= self.identity_wait);
                let mut probe = st.held[0].clone();
                let _ = self.judge_one(&mut probe, Some(metrics));
                shutdown || expired || !Self::unattributed(&probe)
            };
            if due {
                self.release(metrics, &id, &mut out);
            }
        }
        // Per-connection state lives as long as the kernel tracks the
        // connection (flows that end without a final report included).
        let mut gone = Vec::new();
        for (id, st) in &mut self.conns {
            let alive = st.key.as_ref().is_some_and(open) || std::mem::take(&mut st.seen);
            if !alive && st.held.is_empty() {
                gone.push(id.clone());
            }
        }
        for id in gone {
            self.forget_if_done(&id);
        }
        out
    }

    fn ready(&self) -> bool {
        self.ready.is_set()
    }

    fn degraded(&self) -> Option<String> {
        self.health.degraded()
    }
}

#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod tests;
