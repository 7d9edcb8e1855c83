//! Metric bookkeeping of judged flow reports: which series exist, what was
//! counted for a connection, and when series end. The per-flow path above
//! it is pure (attribute → judge → report, in [`crate::judge`]); this is the
//! edge where a judged report becomes counter increments.
//!
//! ```text
//!  FlowReport (identities, verdict, violations[], netpol)
//!    │ Observer::observe / announce
//!    │   dst_port: declared by the cluster, or one of the first
//!    │   `ports_per_source` of the source (per kind / per edge), else "other"
//!    │   scans: distinct ports per destination, addresses per namespace,
//!    │   per scan window
//!    ▼
//!  segwatch_flows_total, _flow_bytes_total, _violations_total (once per
//!  connection), _workload_flows_total, _flows_unattributed_total,
//!  _scans_total, _metric_series, _label_overflow_total
//!  (series naming a workload, node or Service gone longer than the TTL
//!  are dropped)
//! ```
//!
//! Every label value comes from a bounded set: namespaces, workloads (see
//! [`crate::index::metric_workload`]), nodes, Services, declared ports, the
//! first few ports per source, `other`. Counts stay exact: a connection
//! past the budget is counted under `dst_port="other"`, never dropped.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::index::{metric_workload, ClusterIndex, DeclaredPorts};
use crate::metrics::Metrics;
use crate::report::{Endpoint, EndpointKind, FlowReport, ScanKind, Verdict, ViolationKind};

/// Metric label value of the metadata API destination (CONTRACT.md).
pub const METADATA_WORKLOAD: &str = "metadata-api";
/// Metric label value of an outside destination (CONTRACT.md).
pub const EXTERNAL_WORKLOAD: &str = "external";
/// Metric label value of an in-cluster address nothing accounts for.
pub const UNKNOWN_WORKLOAD: &str = "unknown";

/// Label values of one flow end for metrics: bounded sets only.
/// Where the observer reads the cluster index from when it needs it: the
/// index itself, or the daemon's shared one (read-locked only then).
pub trait IndexSource {
    fn with_index(&self, f: &mut dyn FnMut(&ClusterIndex));
}

impl IndexSource for ClusterIndex {
    fn with_index(&self, f: &mut dyn FnMut(&ClusterIndex)) {
        f(self)
    }
}

impl IndexSource for std::sync::RwLock<ClusterIndex> {
    fn with_index(&self, f: &mut dyn FnMut(&ClusterIndex)) {
        let guard = self.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }
}

pub fn workload_label(ep: &Endpoint) -> String {
    match ep.kind {
        Some(EndpointKind::Pod) => metric_workload(ep.workload.as_deref()).to_owned(),
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

/// Ports the kernel hands out to connecting sockets: Linux's default
/// `net.ipv4.ip_local_port_range` (32768-60999) and the IANA dynamic range
/// (49152-65535). Never a label value unless the cluster declares the port:
/// a connection whose opener was inferred the wrong way round would
/// otherwise leak one series per client port.
pub const EPHEMERAL_PORTS: RangeInclusive<u16> = 32768..=65535;

/// Label value of the ports past the budget.
pub const OTHER_PORT: &str = "other";

/// Defaults of the `segwatch run --metrics-*` flags.
pub const DEFAULT_PORTS_PER_SOURCE: usize = 16;
pub const DEFAULT_SCAN_PORTS: usize = 64;
pub const DEFAULT_SCAN_ADDRESSES: usize = 64;
pub const DEFAULT_SCAN_WINDOW: Duration = Duration::from_secs(60);

/// How the observer bounds its series (`segwatch run --metrics-*`).
#[derive(Clone, Debug)]
pub struct ObserveConfig {
    /// Series of ends gone longer than this are dropped.
    pub ttl: Duration,
    /// Distinct undeclared `dst_port` values that keep their number per
    /// source workload and violation kind, and per workload edge.
    pub ports_per_source: usize,
    /// A source touching more distinct ports of one destination than this
    /// within a window is scanning (`kind="ports"`).
    pub scan_ports: usize,
    /// A source with failed or forbidden connections to more distinct
    /// addresses of one namespace (or of nodes, or outside) than this
    /// within a window is scanning (`kind="addresses"`).
    pub scan_addresses: usize,
    pub scan_window: Duration,
    /// Namespaces left out of the per-workload families (violations,
    /// workload edges, scans); still counted per namespace.
    pub exclude_namespaces: HashSet<String>,
}

impl ObserveConfig {
    pub fn new(ttl: Duration) -> Self {
        ObserveConfig {
            ttl,
            ports_per_source: DEFAULT_PORTS_PER_SOURCE,
            scan_ports: DEFAULT_SCAN_PORTS,
            scan_addresses: DEFAULT_SCAN_ADDRESSES,
            scan_window: DEFAULT_SCAN_WINDOW,
            exclude_namespaces: HashSet::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Family {
    Flows,
    Bytes,
    Violations,
    WorkloadFlows,
    Probe,
    Scans,
}

impl Family {
    /// The metric's name (the `family` label of the self-observation).
    fn name(self) -> &'static str {
        match self {
            Family::Flows => "segwatch_flows_total",
            Family::Bytes => "segwatch_flow_bytes_total",
            Family::Violations => "segwatch_violations_total",
            Family::WorkloadFlows => "segwatch_workload_flows_total",
            Family::Probe => "segwatch_probe_flows_total",
            Family::Scans => "segwatch_scans_total",
        }
    }

    fn vec(self, m: &Metrics) -> &prometheus::IntCounterVec {
        match self {
            Family::Flows => &m.flows,
            Family::Bytes => &m.flow_bytes,
            Family::Violations => &m.violations,
            Family::WorkloadFlows => &m.workload_flows,
            Family::Probe => &m.probe_flows,
            Family::Scans => &m.scans,
        }
    }
}

/// What identifies a connection to the observer (its 5-tuple as reported).
pub type ConnId = (IpAddr, Option<u16>, IpAddr, Option<u16>, String);

/// A (namespace, workload) a series names; workload `None`: the namespace.
type Name = (String, Option<String>);

/// A scan window of one source toward one destination (ports) or one
/// namespace (addresses): what it touched, up to the threshold.
struct ScanWindow {
    start: Instant,
    seen: HashSet<(IpAddr, u16)>,
    fired: bool,
}

/// The clock of scan windows and expiry (a fixed one in tests).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Updates the flow metrics from judged reports, keeps every label in a
/// bounded set, names scans, and drops series of ends gone longer than the
/// TTL.
pub struct Observer {
    cfg: ObserveConfig,
    /// Every series we created, with the names it carries.
    series: HashMap<(Family, Vec<String>), Vec<Name>>,
    gone_since: HashMap<Name, Instant>,
    bypass_counted: HashSet<ConnId>,
    /// First-seen ports that keep their number, per budget key (family,
    /// its source-side labels), with the names of the key.
    budgets: HashMap<(Family, Vec<String>), (HashSet<u16>, Vec<Name>)>,
    /// Ports the cluster declares, as of index generation `declared_at`.
    declared: DeclaredPorts,
    declared_at: Option<u64>,
    declared_checked: Instant,
    scans: HashMap<(ScanKind, [String; 4]), ScanWindow>,
    last_sweep: Instant,
    clock: Clock,
}

impl Observer {
    /// With the default budget and scan thresholds.
    pub fn new(ttl: Duration) -> Self {
        Self::with_config(ObserveConfig::new(ttl))
    }

    pub fn with_config(cfg: ObserveConfig) -> Self {
        let clock: Clock = Arc::new(Instant::now);
        Observer {
            cfg,
            series: HashMap::new(),
            gone_since: HashMap::new(),
            bypass_counted: HashSet::new(),
            budgets: HashMap::new(),
            declared: DeclaredPorts::new(),
            declared_at: None,
            declared_checked: clock(),
            scans: HashMap::new(),
            last_sweep: clock(),
            clock,
        }
    }

    /// Uses `clock` for scan windows instead of the system's.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
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

    fn inc(&mut self, m: &Metrics, fam: Family, labels: Vec<String>, by: u64, names: Vec<Name>) {
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        fam.vec(m).with_label_values(&refs).inc_by(by);
        if let std::collections::hash_map::Entry::Vacant(e) = self.series.entry((fam, labels)) {
            e.insert(names);
            m.metric_series.with_label_values(&[fam.name()]).inc();
        }
    }

    /// Series held now, all families (for bounds checks).
    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Per report: bytes. At the connection's first report (`first`):
    /// `segwatch_flows_total`, and unless `announced` (counted then) the
    /// violations, workload edges and unattributed ends. A `netpol_bypass`
    /// found only in a later report (the handshake completed after the
    /// first) is counted then, once.
    ///
    /// The ports the cluster declares are taken from `index` first when
    /// they may have changed (see [`Observer::refresh_declared_if_due`]), so
    /// no caller can count with stale or unknown ones.
    pub fn observe(
        &mut self,
        m: &Metrics,
        index: &impl IndexSource,
        r: &FlowReport,
        first: bool,
        announced: bool,
    ) {
        self.refresh_declared_if_due(index);
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

    /// Is the connection `id` remembered (its bypass counted)?
    pub fn remembers(&self, id: &ConnId) -> bool {
        self.bypass_counted.contains(id)
    }

    /// Connections remembered (bypass counted), for bounds checks.
    pub fn remembered(&self) -> usize {
        self.bypass_counted.len()
    }

    /// A new connection announced by the kernel: counts its per-connection
    /// metrics now so alerts fire at once. Always counts (returns true).
    /// The port budget must know the declared ports before it counts (a
    /// burst of announcements can come before any report does): they are
    /// taken from `index` first, as in [`Observer::observe`].
    pub fn announce(&mut self, m: &Metrics, index: &impl IndexSource, r: &FlowReport) -> bool {
        self.refresh_declared_if_due(index);
        self.count_connection(m, r);
        true
    }

    fn excluded(&self, r: &FlowReport) -> bool {
        let ex = &self.cfg.exclude_namespaces;
        !ex.is_empty()
            && (ex.contains(namespace_label(&r.src)) || ex.contains(namespace_label(&r.dst)))
    }

    fn count_connection(&mut self, m: &Metrics, r: &FlowReport) {
        if r.probe {
            // Deliberate test traffic: its own counter, never a violation
            // or a workload edge (it would page, and suggest would allow it).
            self.count_probe(m, r);
            return;
        }
        if r.src.kind.is_none() || r.dst.kind.is_none() {
            m.flows_unattributed.inc();
        }
        if self.excluded(r) {
            return;
        }
        self.count_violations(m, r, false);
        self.count_scan(m, r);
        let src_ns = namespace_label(&r.src).to_owned();
        let dst_ns = namespace_label(&r.dst).to_owned();
        let (src_wl, dst_wl) = (workload_label(&r.src), workload_label(&r.dst));
        let names = vec![
            (src_ns.clone(), Some(src_wl.clone())),
            (dst_ns.clone(), Some(dst_wl.clone())),
        ];
        let port = self.port_label(
            m,
            Family::WorkloadFlows,
            vec![
                src_ns.clone(),
                src_wl.clone(),
                dst_ns.clone(),
                dst_wl.clone(),
            ],
            &names,
            r,
        );
        // Staged verdicts share the edge's budgeted port label.
        m.staged
            .count(r, [&src_ns, &src_wl, &dst_ns, &dst_wl, &port, &r.protocol]);
        self.inc(
            m,
            Family::WorkloadFlows,
            vec![src_ns, src_wl, dst_ns, dst_wl, port, r.protocol.clone()],
            1,
            names,
        );
    }

    /// The `dst_port` label of `r` under the budget `key`: its number if
    /// the cluster declares it or it is one of the budget's first
    /// `ports_per_source` (never an ephemeral port), else `other`.
    fn port_label(
        &mut self,
        m: &Metrics,
        fam: Family,
        key: Vec<String>,
        names: &[Name],
        r: &FlowReport,
    ) -> String {
        let Some(port) = r.dst.port else {
            return String::new();
        };
        if self.declared.contains(&(port, r.protocol.clone())) {
            return port.to_string();
        }
        let budget = &mut self
            .budgets
            .entry((fam, key))
            .or_insert_with(|| (HashSet::new(), names.to_vec()))
            .0;
        if budget.contains(&port)
            || (!EPHEMERAL_PORTS.contains(&port) && budget.len() < self.cfg.ports_per_source && {
                budget.insert(port);
                true
            })
        {
            return port.to_string();
        }
        m.label_overflow.with_label_values(&[fam.name()]).inc();
        OTHER_PORT.to_owned()
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
        if self.excluded(r) {
            return;
        }
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
        for v in &r.violations {
            let bypass = v.kind == ViolationKind::NetpolBypass;
            if only_bypass && !bypass {
                continue;
            }
            if bypass && !self.bypass_counted.insert(Self::conn_id(r)) {
                continue;
            }
            let names = vec![
                (src_ns.clone(), Some(src_wl.clone())),
                (dst_ns.clone(), Some(dst_wl.clone())),
            ];
            let port = self.port_label(
                m,
                Family::Violations,
                vec![v.kind.as_str().to_owned(), src_ns.clone(), src_wl.clone()],
                &names[..1],
                r,
            );
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
                    port,
                    r.protocol.clone(),
                ],
                1,
                names,
            );
        }
    }

    /// The scan windows a connection falls in: distinct ports of its
    /// destination end, and (when it failed or broke the policy) distinct
    /// addresses of the destination's namespace.
    fn scan_keys(r: &FlowReport) -> [(ScanKind, [String; 4], (IpAddr, u16)); 2] {
        let src_ns = namespace_label(&r.src).to_owned();
        let src_wl = workload_label(&r.src);
        let dst_ns = namespace_label(&r.dst).to_owned();
        [
            (
                ScanKind::Ports,
                [
                    src_ns.clone(),
                    src_wl.clone(),
                    dst_ns.clone(),
                    workload_label(&r.dst),
                ],
                // Every address of the destination end is one target: a
                // port of a workload is the same port on any of its pods.
                (IpAddr::from([0u8; 4]), r.dst.port.unwrap_or(0)),
            ),
            (
                ScanKind::Addresses,
                [src_ns, src_wl, dst_ns, String::new()],
                (r.dst.ip, 0),
            ),
        ]
    }

    /// Did the connection fail or break the policy (what counts toward an
    /// address scan; a client fanning out to healthy backends does not)?
    fn failed_or_forbidden(r: &FlowReport) -> bool {
        use crate::report::TcpState;
        r.verdict == Some(Verdict::Violation)
            || match &r.tcp {
                Some(t) => matches!(t.state, TcpState::Attempted | TcpState::Rejected),
                None => r.packets.received == 0,
            }
    }

    fn count_scan(&mut self, m: &Metrics, r: &FlowReport) {
        let now = (self.clock)();
        let window = self.cfg.scan_window;
        let failed = Self::failed_or_forbidden(r);
        for (kind, key, target) in Self::scan_keys(r) {
            let threshold = match kind {
                ScanKind::Ports if r.dst.port.is_some() => self.cfg.scan_ports,
                ScanKind::Addresses if failed => self.cfg.scan_addresses,
                _ => continue,
            };
            let w = self
                .scans
                .entry((kind, key.clone()))
                .or_insert_with(|| ScanWindow {
                    start: now,
                    seen: HashSet::new(),
                    fired: false,
                });
            if now.duration_since(w.start) >= window {
                *w = ScanWindow {
                    start: now,
                    seen: HashSet::new(),
                    fired: false,
                };
            }
            if w.fired {
                continue;
            }
            // At most threshold + 1 targets are kept per window.
            w.seen.insert(target);
            if w.seen.len() > threshold {
                w.fired = true;
                w.seen = HashSet::new();
                let [src_ns, src_wl, dst_ns, dst_wl] = key;
                let mut names = vec![(src_ns.clone(), Some(src_wl.clone()))];
                names.push(match kind {
                    ScanKind::Ports => (dst_ns.clone(), Some(dst_wl.clone())),
                    ScanKind::Addresses => (dst_ns.clone(), None),
                });
                self.inc(
                    m,
                    Family::Scans,
                    vec![kind.as_str().to_owned(), src_ns, src_wl, dst_ns, dst_wl],
                    1,
                    names,
                );
            }
        }
    }

    /// The scan a report's connection is part of (its source's window
    /// toward its destination has fired and is still open), for the flow
    /// log's `scan` field.
    pub fn scan_of(&self, r: &FlowReport) -> Option<ScanKind> {
        if r.probe || self.excluded(r) {
            return None;
        }
        let now = (self.clock)();
        Self::scan_keys(r).into_iter().find_map(|(kind, key, _)| {
            self.scans
                .get(&(kind, key))
                .filter(|w| w.fired && now.duration_since(w.start) < self.cfg.scan_window)
                .map(|_| kind)
        })
    }

    /// Is it time for [`Observer::sweep`]?
    pub fn sweep_due(&self) -> bool {
        self.declared_at.is_none()
            || self.last_sweep.elapsed()
                >= (self.cfg.ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Is it time for [`Observer::refresh_declared`] (at most once a
    /// second: the declared ports are gathered over every pod)?
    pub fn declared_due(&self) -> bool {
        self.declared_checked.elapsed() >= Duration::from_secs(1)
    }

    /// Have the declared ports never been taken from the index?
    pub fn declared_unknown(&self) -> bool {
        self.declared_at.is_none()
    }

    /// Takes the declared ports from `index` when they may have changed (at
    /// most once a second, and at once before the first count).
    fn refresh_declared_if_due(&mut self, index: &impl IndexSource) {
        if self.declared_due() || self.declared_unknown() {
            index.with_index(&mut |i| self.refresh_declared(i));
        }
    }

    /// What runs between reports: [`Observer::sweep`] when it is due, else
    /// the declared ports when they are.
    pub fn maintain(&mut self, m: &Metrics, index: &impl IndexSource) {
        if self.sweep_due() {
            index.with_index(&mut |i| self.sweep(m, i, Instant::now()));
        } else if self.declared_due() {
            index.with_index(&mut |i| self.refresh_declared(i));
        }
    }

    /// Takes the ports the cluster declares from the index, if it changed.
    pub fn refresh_declared(&mut self, index: &ClusterIndex) {
        self.declared_checked = Instant::now();
        if self.declared_at != Some(index.generation()) {
            self.declared = index.declared_ports();
            self.declared_at = Some(index.generation());
        }
    }

    /// Takes the ports the cluster declares from the index (when it
    /// changed), closes scan windows that are over, and drops every series
    /// naming a namespace, workload, node or Service that has been gone
    /// (not in the index) for longer than the TTL. Metadata, outside and
    /// unknown ends are constants: their series end with their other end.
    pub fn sweep(&mut self, m: &Metrics, index: &ClusterIndex, now: Instant) {
        self.last_sweep = now;
        self.refresh_declared(index);
        let window = self.cfg.scan_window;
        let clock_now = (self.clock)();
        self.scans
            .retain(|_, w| clock_now.duration_since(w.start) < window);
        let live = |ns: &str, wl: Option<&str>| -> bool {
            match wl {
                None if ns.is_empty() => true,
                None => index.namespace_is_live(ns),
                Some(w) => match w.split_once('/') {
                    Some(("node", n)) if ns.is_empty() => index.node_is_live(n),
                    Some(("Service", s)) => index.service_is_live(ns, s),
                    _ if ns.is_empty() => true,
                    _ => index.workload_is_live(ns, w),
                },
            }
        };
        let mut names: HashSet<Name> = HashSet::new();
        for n in self.series.values().flatten() {
            names.insert(n.clone());
        }
        let mut expired: HashSet<Name> = HashSet::new();
        for n in names {
            if live(&n.0, n.1.as_deref()) {
                self.gone_since.remove(&n);
            } else {
                let since = *self.gone_since.entry(n.clone()).or_insert(now);
                if now.duration_since(since) >= self.cfg.ttl {
                    expired.insert(n);
                }
            }
        }
        // Staged series end with their staged object or their edge's ends.
        let staged: HashSet<String> = index
            .netpol()
            .staged()
            .map(|o| o.policies().iter().map(|p| p.reference()).collect())
            .unwrap_or_default();
        m.staged.sweep(&staged, &expired);
        if expired.is_empty() {
            return;
        }
        self.series.retain(|(fam, labels), ns| {
            if !ns.iter().any(|n| expired.contains(n)) {
                return true;
            }
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            if fam.vec(m).remove_label_values(&refs).is_ok() {
                m.metric_series.with_label_values(&[fam.name()]).dec();
            }
            false
        });
        self.budgets
            .retain(|_, (_, ns)| !ns.iter().any(|n| expired.contains(n)));
        for n in expired {
            self.gone_since.remove(&n);
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
#[path = "observe/staged_tests.rs"]
mod staged_tests;
