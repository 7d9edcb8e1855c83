//! Attribution and judging of flow reports (pure), and the daemon's judge
//! that publishes them and hands them to the metric bookkeeping.
//!
//! ```text
//!  FlowReport (addresses, ports, counts, tcp state)
//!    │ ClusterIndex::judge: resolve both ends (pod/service/node/metadata/external)
//!    │   fill src/dst identity ─► SegmentationPolicy verdict ─► NetworkPolicy
//!    │   decision (netpol) and enforcement check (netpol_bypass)
//!    ▼
//!  FlowReport (identities, verdict, violations[], netpol)
//!    │ published by ClusterJudge; counted at the edge by
//!    ▼ crate::observe::Observer (series, TTLs, what was counted)
//!  metrics
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::index::{ClusterIndex, Resolved};
use crate::metrics::Metrics;
use crate::netpol;
use crate::observe::{ConnId, Observer};
use crate::report::{
    Endpoint, EndpointKind, FlowReport, ServiceRef, TcpState, Verdict, Violation, ViolationKind,
};
use crate::segpolicy::{Decision, End, FlowView, L4};

pub use crate::runtime::{ReadyFlag, SharedIndex};

pub use crate::observe::{EXTERNAL_WORKLOAD, METADATA_WORKLOAD, UNKNOWN_WORKLOAD};

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
            proto: L4::parse(&report.protocol),
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

/// A connection's key in the judge's maps: the 64 bits its `connection`
/// id spells in 16 hex digits (see [`crate::reporter::connection_id`]);
/// an id of another form (or none: the 5-tuple) is hashed to 64 bits.
type ConnTag = u64;

/// Bits of [`ConnState::flags`].
mod flag {
    /// Violations and workload edge counted (at the announcement, or at a
    /// published report).
    pub const COUNTED: u8 = 1;
    /// `segwatch_service_flows_without_backend_total` counted.
    pub const BACKENDLESS_COUNTED: u8 = 2;
    /// A report (or the announcement) was seen at the last sweep or since.
    pub const SEEN: u8 = 4;
    /// [`super::ConnState::key`] is set.
    pub const HAS_KEY: u8 = 8;
    /// Conntrack knows the connection, without address translation.
    pub const NAT_NONE: u8 = 16;
}

/// What the judge keeps per open connection (keyed by its `connection`
/// id). Bounded by the kernel flow table: removed when the connection
/// ends, and after every sweep for connections no longer in the table.
///
/// 56 bytes: what every connection needs is inline; what few need (a
/// Service translation, held reports, a remembered bypass) is boxed.
struct ConnState {
    /// The connection's tuple (with [`flag::HAS_KEY`]): its state lives
    /// as long as the kernel table holds the tuple.
    key: crate::flows::ConnKey,
    /// Reports published so far (the next one's `seq` is this + 1).
    published: u32,
    not_ours: Option<NotOurs>,
    /// [`flag`] bits.
    flags: u8,
    rare: Option<Box<Rare>>,
}

/// The part of a connection's state few connections have.
#[derive(Default)]
struct Rare {
    /// Address translation found in conntrack (looked up again while
    /// neither this nor [`flag::NAT_NONE`] is set: the entry may not be
    /// confirmed yet when the first packet is announced).
    nat: Option<crate::conntrack::Nat>,
    /// The Service translation applied to the connection's reports:
    /// (client end, backend end, the Service addressed).
    translated: Option<(Endpoint, Endpoint, Option<ServiceRef>)>,
    /// The observer's key for it, while the observer remembers it (to
    /// forget it when the state goes).
    obs_id: Option<ConnId>,
    /// Reports held until the index names both ends.
    held: Vec<FlowReport>,
    held_since: Option<Instant>,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            key: crate::flows::ConnKey {
                addr_lo: [0; 4],
                addr_hi: [0; 4],
                port_lo: 0,
                port_hi: 0,
                proto: 0,
                ip_version: 0,
            },
            published: 0,
            not_ours: None,
            flags: flag::SEEN,
            rare: None,
        }
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Sets flag `f`; returns whether it was set before.
    fn set(&mut self, f: u8) -> bool {
        let was = self.has(f);
        self.flags |= f;
        was
    }

    fn key(&self) -> Option<&crate::flows::ConnKey> {
        self.has(flag::HAS_KEY).then_some(&self.key)
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    /// What conntrack said, once it knew the connection.
    fn nat(&self) -> Option<crate::conntrack::Nat> {
        if self.has(flag::NAT_NONE) {
            return Some(crate::conntrack::Nat::None);
        }
        self.rare.as_ref().and_then(|r| r.nat)
    }

    fn set_nat(&mut self, n: crate::conntrack::Nat) {
        match n {
            crate::conntrack::Nat::None => self.flags |= flag::NAT_NONE,
            n => self.rare_mut().nat = Some(n),
        }
    }

    fn translated(&self) -> Option<&(Endpoint, Endpoint, Option<ServiceRef>)> {
        self.rare.as_ref().and_then(|r| r.translated.as_ref())
    }

    fn held(&self) -> &[FlowReport] {
        self.rare.as_ref().map_or(&[], |r| &r.held)
    }

    /// Drops the boxed part when nothing is left in it.
    fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| {
            r.nat.is_none()
                && r.translated.is_none()
                && r.obs_id.is_none()
                && r.held.is_empty()
                && r.held_since.is_none()
        }) {
            self.rare = None;
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
    conns: HashMap<ConnTag, ConnState>,
    held: usize,
    /// How long a report waits for the index to name its ends.
    identity_wait: Duration,
    ct_warned: bool,
    /// Connections counted and forgotten, newest last (bounded by
    /// [`MAX_DONE`]): a kernel announcement that arrives after the
    /// connection's final report (the event queue lags behind the sweep
    /// under a burst of short connections) must not count it again.
    done: std::collections::VecDeque<ConnTag>,
    done_set: std::collections::HashSet<ConnTag>,
}

/// Forgotten connections remembered against late announcements.
const MAX_DONE: usize = 65_536;

/// The [`ConnTag`] of a connection id: the 64 bits of an id as
/// [`crate::reporter::connection_id`] writes it (16 lowercase hex digits),
/// else a SHA-256 of the text cut to 64 bits.
fn conn_tag(id: &str) -> ConnTag {
    if id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        if let Ok(v) = u64::from_str_radix(id, 16) {
            return v;
        }
    }
    use sha2::{Digest as _, Sha256};
    let d = Sha256::digest(id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
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
            done: std::collections::VecDeque::new(),
            done_set: std::collections::HashSet::new(),
        }
    }

    /// Reports the sources' degraded state (a lost API server) to /readyz.
    pub fn with_health(mut self, health: crate::sources::SourceHealth) -> Self {
        self.health = health;
        self
    }

    /// Bounds the metrics' series this way (`--metrics-*` flags).
    pub fn with_observe(mut self, cfg: crate::observe::ObserveConfig) -> Self {
        self.observer = Observer::with_config(cfg);
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

    fn conn_key(report: &FlowReport) -> ConnTag {
        match &report.connection {
            Some(id) => conn_tag(id),
            None => conn_tag(&format!(
                "{}:{}>{}:{}/{}",
                report.src.ip,
                report.src.port.unwrap_or(0),
                report.dst.ip,
                report.dst.port.unwrap_or(0),
                report.protocol
            )),
        }
    }

    /// What conntrack says about the connection, once found.
    fn nat(&mut self, report: &FlowReport, metrics: Option<&Metrics>) -> crate::conntrack::Nat {
        use crate::conntrack::{Nat, Tuple};
        let id = Self::conn_key(report);
        if let Some(n) = self.conns.get(&id).and_then(ConnState::nat) {
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
                    self.conns
                        .entry(id)
                        .or_insert_with(ConnState::new)
                        .set_nat(n);
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
        let done = self.conns.get(&id).and_then(|s| s.translated().cloned());
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
                .rare_mut()
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
    fn forget_if_done(&mut self, id: ConnTag) {
        if self.conns.get(&id).is_some_and(|s| s.held().is_empty()) {
            if let Some(st) = self.conns.remove(&id) {
                if let Some(o) = st.rare.and_then(|r| r.obs_id) {
                    self.observer.forget_id(&o);
                }
                if st.flags & flag::COUNTED != 0 && self.done_set.insert(id) {
                    self.done.push_back(id);
                    if self.done.len() > MAX_DONE {
                        if let Some(old) = self.done.pop_front() {
                            self.done_set.remove(&old);
                        }
                    }
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
        let announced = st.set(flag::COUNTED);
        if first && r.dst.kind == Some(EndpointKind::Service) && !st.set(flag::BACKENDLESS_COUNTED)
        {
            metrics.service_without_backend.inc();
        }
        self.observer
            .observe(metrics, &*self.index, &r, first, announced);
        // The observer's key is kept while the observer remembers the
        // connection (a counted bypass), to forget it with the state.
        let obs_id = Observer::conn_id(&r);
        let remembered = self.observer.remembers(&obs_id);
        if let Some(st) = self.conns.get_mut(&id) {
            if remembered {
                st.rare_mut().obs_id = Some(obs_id);
            } else if let Some(rare) = st.rare.as_mut() {
                rare.obs_id = None;
                st.tidy();
            }
        }
        r.scan = self.observer.scan_of(&r);
        r
    }

    /// Publishes the held reports of a connection (re-judged with what the
    /// index knows now).
    fn release(&mut self, metrics: &Metrics, id: ConnTag, out: &mut Vec<FlowReport>) {
        let Some(st) = self.conns.get_mut(&id) else {
            return;
        };
        let held = st.rare.as_mut().map_or_else(Vec::new, |r| {
            r.held_since = None;
            std::mem::take(&mut r.held)
        });
        st.tidy();
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
        st.flags |= flag::SEEN;
        if let (false, Some(k)) = (st.has(flag::HAS_KEY), report.conn) {
            st.key = k;
            st.flags |= flag::HAS_KEY;
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
        let st = self.conns.entry(id).or_insert_with(ConnState::new);
        st.flags |= flag::SEEN;
        let out = if let Some(why) = st.not_ours {
            if st.published == 0 && !st.set(flag::COUNTED) {
                metrics
                    .flows_not_reported
                    .with_label_values(&[why.label()])
                    .inc();
            }
            None
        } else if Self::unattributed(&report)
            && (!st.held().is_empty() || st.published == 0)
            && self.held < MAX_HELD
        {
            // Held until the index names the end (or the wait is over):
            // its violations count then, once, with the identity. What is
            // a violation whoever the pod is (metadata API, node ports)
            // counts now, for the alert.
            if !report.violations.is_empty() && !st.set(flag::COUNTED) {
                self.observer.announce(metrics, &*self.index, &report);
            }
            let rare = st.rare_mut();
            rare.held_since.get_or_insert_with(Instant::now);
            rare.held.push(report);
            self.held += 1;
            metrics.flows_awaiting_identity.set(self.held as i64);
            None
        } else {
            Some(self.publish(metrics, report))
        };
        self.observer.maintain(metrics, &*self.index);
        if ended {
            self.forget_if_done(id);
        }
        out
    }

    fn announce(&mut self, metrics: &Metrics, report: &FlowReport) {
        let id = Self::conn_key(report);
        if self.done_set.contains(&id) {
            // Announced after its final report: counted then.
            return;
        }
        let st = self.conns.entry(id).or_insert_with(ConnState::new);
        st.flags |= flag::SEEN;
        // Not ours, or not judged on its final identity yet (an unknown
        // end, a Service whose backend conntrack does not show yet): the
        // report counts it.
        if st.not_ours.is_some()
            || st.has(flag::COUNTED)
            || (Self::unattributed(report) && report.violations.is_empty())
            || report.dst.kind == Some(EndpointKind::Service)
        {
            return;
        }
        st.flags |= flag::COUNTED;
        self.observer.announce(metrics, &*self.index, report);
    }

    fn after_sweep(
        &mut self,
        metrics: &Metrics,
        open: &dyn Fn(&crate::flows::ConnKey) -> bool,
        shutdown: bool,
    ) -> Vec<FlowReport> {
        let mut out = Vec::new();
        let now = Instant::now();
        let waiting: Vec<ConnTag> = self
            .conns
            .iter()
            .filter(|(_, s)| !s.held().is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            let due = {
                let st = &self.conns[&id];
                let expired = st
                    .rare
                    .as_ref()
                    .and_then(|r| r.held_since)
                    .is_some_and(|t| now.duration_since(t) >= self.identity_wait);
                let mut probe = st.held()[0].clone();
                let _ = self.judge_one(&mut probe, Some(metrics));
                shutdown || expired || !Self::unattributed(&probe)
            };
            if due {
                self.release(metrics, id, &mut out);
            }
        }
        // Per-connection state lives as long as the kernel tracks the
        // connection (flows that end without a final report included).
        let mut gone = Vec::new();
        for (id, st) in &mut self.conns {
            let alive = st.key().is_some_and(open) || {
                let seen = st.has(flag::SEEN);
                st.flags &= !flag::SEEN;
                seen
            };
            if !alive && st.held().is_empty() {
                gone.push(*id);
            }
        }
        for id in gone {
            self.forget_if_done(id);
        }
        if self.conns.capacity() > 4096 && self.conns.len() < self.conns.capacity() / 4 {
            // Memory back after a burst of connections.
            self.conns.shrink_to(self.conns.len() * 2);
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
mod memory_tests;
#[cfg(test)]
pub(crate) mod tests;
