//! The flow report: one JSON object per line, exactly the shape fixed in
//! `CONTRACT.md` ("Flow report"). `segwatch run` writes it; `suggest` and
//! `audit` read it back, so (de)serialisation lives in one place.
//!
//! Fields that do not apply are omitted, never faked: every optional field is
//! `Option` and skipped when `None`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use monitor_common::FlowKey;
use serde::{Deserialize, Serialize};

/// One flow report line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowReport {
    /// When the report was written.
    pub time: DateTime<Utc>,
    /// First packet of the reported interval.
    pub start: DateTime<Utc>,
    /// Last packet of the reported interval.
    pub end: DateTime<Utc>,
    /// Host-side interface the counts come from.
    pub interface: String,
    /// `TCP`, `UDP`, `ICMP`, `ICMPv6`, `SCTP` or the IANA number.
    pub protocol: String,
    pub ip_version: u8,
    /// The side that opened the flow.
    pub src: Endpoint,
    pub dst: Endpoint,
    pub packets: Counts,
    pub bytes: Counts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netpol: Option<NetpolInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    /// The verdict of the live policies with the staged ones applied
    /// (StagedNetworkPolicy, StagedClusterNetworkPolicy); absent when no
    /// staged object exists or the connection is not judged by NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<StagedReport>,
    /// Extension: `observed` when the opener was seen opening (SYN, first
    /// packet), `inferred` when the flow was already running when first seen
    /// and the opener was guessed from the ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opener: Option<OpenerSource>,
    /// Extension: the node that observed the flow (`--node-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<String>,
    /// Extension: `true` when this report ends the flow (FIN/RST, idle,
    /// shutdown); `false` for an active-timeout report of a flow that goes on.
    #[serde(default = "default_true")]
    pub ended: bool,
    /// Extension: opened by a `segwatch probe` pod (label
    /// `segwatch.dev/probe: "true"`): deliberate test traffic, counted in
    /// `segwatch_probe_flows_total` instead of the violation metrics.
    /// Omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
    /// Extension: the connection's identity, the same in every report of
    /// it and unique across the cluster's flow logs (the reporting node is
    /// part of it). Readers count connections by it, not reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// Extension: 1 for the connection's first report, 2 for the next
    /// (active timeout), ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    /// Extension: the connection is part of a scan its source workload
    /// ran (counted once per scan window in `segwatch_scans_total`; see
    /// README "Metrics: series budget and scans"). Omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanKind>,
    /// The kernel's connection key (daemon only; never written).
    #[serde(skip)]
    pub conn: Option<ConnKey>,
}

/// What made a source's connections a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanKind {
    /// More distinct ports of one destination (workload, node, ...) than
    /// the threshold within the window.
    Ports,
    /// More distinct addresses of one namespace (or of nodes/outside)
    /// than the threshold within the window, counting connections that
    /// failed or broke the policy.
    Addresses,
}

impl ScanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScanKind::Ports => "ports",
            ScanKind::Addresses => "addresses",
        }
    }
}

fn default_true() -> bool {
    true
}

/// One end of a flow, with what attribution knows about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EndpointKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<str>>,
    /// `Kind/name`, e.g. `Deployment/web`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Arc<BTreeMap<String, String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Arc<str>>,
    /// The Service the client addressed: on a `kind: service` end (no
    /// backend known) or on the backend pod the kernel chose for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
}

/// A Service as the client addressed it (CONTRACT "Services in a flow
/// report"): `{"namespace","name","ip","port"}`. Flow logs of earlier
/// versions wrote `"namespace/name"`; that still reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The address the client connected to (ClusterIP, node address of a
    /// NodePort, external or load-balancer IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The port the client connected to (the Service `port`, or the
    /// `nodePort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl ServiceRef {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl<'de> Deserialize<'de> for ServiceRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Full {
            namespace: Arc<str>,
            name: Arc<str>,
            #[serde(default)]
            ip: Option<IpAddr>,
            #[serde(default)]
            port: Option<u16>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Id(String),
            Full(Full),
        }
        match Either::deserialize(d)? {
            Either::Id(id) => {
                let (ns, name) = id.split_once('/').ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "service {id:?}: expected \"namespace/name\" or an object"
                    ))
                })?;
                Ok(ServiceRef {
                    namespace: ns.into(),
                    name: name.into(),
                    ip: None,
                    port: None,
                })
            }
            Either::Full(f) => Ok(ServiceRef {
                namespace: f.namespace,
                name: f.name,
                ip: f.ip,
                port: f.port,
            }),
        }
    }
}

impl Default for FlowReport {
    fn default() -> Self {
        let t = DateTime::<Utc>::UNIX_EPOCH;
        FlowReport {
            time: t,
            start: t,
            end: t,
            interface: String::new(),
            protocol: String::new(),
            ip_version: 4,
            src: Endpoint::default(),
            dst: Endpoint::default(),
            packets: Counts::default(),
            bytes: Counts::default(),
            tcp: None,
            icmp: None,
            netpol: None,
            verdict: None,
            violations: Vec::new(),
            staged: None,
            opener: None,
            observer: None,
            ended: true,
            probe: false,
            connection: None,
            seq: None,
            scan: None,
            conn: None,
        }
    }
}

impl Endpoint {
    /// An endpoint known only by address (and port).
    pub fn bare(ip: IpAddr, port: Option<u16>) -> Self {
        Endpoint {
            ip,
            port,
            kind: None,
            namespace: None,
            pod: None,
            workload: None,
            service_account: None,
            labels: None,
            node: None,
            service: None,
        }
    }
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint::bare(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), None)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    Pod,
    Service,
    Node,
    Metadata,
    External,
}

/// Counts per direction: `sent` by `src`, `received` by `src`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub sent: u64,
    pub received: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpInfo {
    /// Union of the flags seen in both directions, in header bit order.
    pub flags: Vec<String>,
    pub state: TcpState,
}

/// What the handshake tells about a TCP flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpState {
    /// SYN sent, nothing answered (dropped on the way, or still pending).
    Attempted,
    /// The responder answered the SYN with SYN-ACK.
    Established,
    /// The responder answered with RST and never with SYN-ACK.
    Rejected,
    /// Established, then ended by FIN or RST.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpInfo {
    #[serde(rename = "type")]
    pub icmp_type: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetpolInfo {
    pub allowed: bool,
    /// `namespace/name` of the ingress policies that allow it.
    #[serde(default)]
    pub ingress: Vec<Arc<str>>,
    /// `namespace/name` of the egress policies that allow it.
    #[serde(default)]
    pub egress: Vec<Arc<str>>,
    /// Extension: the rule that decided (the denying side's when denied;
    /// absent when no policy of any tier applies and the default allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<DecidedBy>,
}

/// Which object, tier, rule and action decided a NetworkPolicy verdict
/// (CONTRACT: `"decided_by":{"kind":...,"name":...,"rule":N,"action":...}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedBy {
    /// `NetworkPolicy`, `ClusterNetworkPolicy`, `AdminNetworkPolicy` or
    /// `BaselineAdminNetworkPolicy`.
    pub kind: std::borrow::Cow<'static, str>,
    /// `namespace/name` for a NetworkPolicy, `name` for cluster-scoped kinds.
    pub name: Arc<str>,
    /// `Admin`, `NetworkPolicy` or `Baseline`.
    pub tier: std::borrow::Cow<'static, str>,
    /// Index of the rule in the object's `ingress`/`egress` list; absent
    /// for a NetworkPolicy denial (isolation without an allowing rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// The rule's `name` (cluster-scoped kinds), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<Arc<str>>,
    /// `ingress` or `egress`: the list the rule is in.
    pub direction: std::borrow::Cow<'static, str>,
    /// `Accept`, `Allow`, `Deny` or `Pass` as the object writes it (a
    /// NetworkPolicy rule allows: `Allow`; its isolation denies: `Deny`).
    pub action: std::borrow::Cow<'static, str>,
}

/// A connection judged by the live set and by the live set with the staged
/// objects applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagedVerdict {
    /// Both allow it.
    Allowed,
    /// Both deny it.
    Denied,
    /// The live set allows it, the staged set would deny it.
    WouldDeny,
    /// The live set denies it, the staged set would allow it.
    WouldAllow,
}

impl StagedVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            StagedVerdict::Allowed => "allowed",
            StagedVerdict::Denied => "denied",
            StagedVerdict::WouldDeny => "would_deny",
            StagedVerdict::WouldAllow => "would_allow",
        }
    }
}

/// The flow report's `staged` field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedReport {
    pub verdict: StagedVerdict,
    /// The rule deciding the staged verdict (for `would_*`: of the
    /// direction that changed); a staged object is named by its staged kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<DecidedBy>,
    /// Extension: the staged object a `would_*` verdict comes from (`ns/name`
    /// of a StagedNetworkPolicy, `name` of a StagedClusterNetworkPolicy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Extension: the staged objects that apply to the connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selected: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed,
    Violation,
    /// An end could not be attributed (not in the cluster view in time) or
    /// the flow could not be judged: never reported as `allowed`.
    Unjudged,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub kind: ViolationKind,
    /// Name of the policy rule or document concerned.
    pub rule: String,
    /// One line a human can act on.
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    CrossNamespace,
    WithinNamespace,
    HostAccess,
    MetadataApi,
    External,
    NetpolBypass,
}

impl ViolationKind {
    /// The label value used in metrics and the flow log.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::CrossNamespace => "cross_namespace",
            ViolationKind::WithinNamespace => "within_namespace",
            ViolationKind::HostAccess => "host_access",
            ViolationKind::MetadataApi => "metadata_api",
            ViolationKind::External => "external",
            ViolationKind::NetpolBypass => "netpol_bypass",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenerSource {
    Observed,
    Inferred,
}

impl FlowReport {
    /// Folds a later report of the same connection (same `connection`)
    /// into this one: counts add up, the interval widens, TCP flags and
    /// violations are the union, the later handshake state and NetworkPolicy
    /// finding hold, and the verdict is the worst of both.
    pub fn absorb(&mut self, later: &FlowReport) {
        self.time = self.time.max(later.time);
        self.start = self.start.min(later.start);
        self.end = self.end.max(later.end);
        self.packets.sent += later.packets.sent;
        self.packets.received += later.packets.received;
        self.bytes.sent += later.bytes.sent;
        self.bytes.received += later.bytes.received;
        match (&mut self.tcp, &later.tcp) {
            (Some(a), Some(b)) => {
                for f in &b.flags {
                    if !a.flags.contains(f) {
                        a.flags.push(f.clone());
                    }
                }
                a.state = b.state;
            }
            (None, Some(b)) => self.tcp = Some(b.clone()),
            _ => {}
        }
        for v in &later.violations {
            if !self.violations.iter().any(|x| x.kind == v.kind) {
                self.violations.push(v.clone());
            }
        }
        if later.netpol.is_some() {
            self.netpol.clone_from(&later.netpol);
        }
        let rank = |v: Option<Verdict>| match v {
            Some(Verdict::Violation) => 3,
            Some(Verdict::Unjudged) => 2,
            Some(Verdict::Allowed) => 1,
            None => 0,
        };
        if rank(later.verdict) > rank(self.verdict) {
            self.verdict = later.verdict;
        }
        self.ended = later.ended;
        self.seq = self.seq.max(later.seq);
    }
}

/// One entry per connection: reports carrying the same (`observer`,
/// `connection`) are folded into the first (see [`FlowReport::absorb`]);
/// reports without a `connection` (older flow logs) stay as they are.
/// Keeps the order of first appearance.
pub fn by_connection<T>(items: Vec<T>, report: impl Fn(&mut T) -> &mut FlowReport) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    let mut at: std::collections::HashMap<(Option<String>, String), usize> =
        std::collections::HashMap::new();
    for mut item in items {
        let r = report(&mut item);
        let Some(id) = r.connection.clone() else {
            out.push(item);
            continue;
        };
        let key = (r.observer.clone(), id);
        match at.get(&key) {
            Some(&i) => {
                let later = report(&mut item).clone();
                report(&mut out[i]).absorb(&later);
            }
            None => {
                at.insert(key, out.len());
                out.push(item);
            }
        }
    }
    out
}

/// Reads flow reports from JSON lines; a bad line is an error naming the
/// file and line (blank lines are skipped).
pub fn read_flow_log(path: &std::path::Path) -> anyhow::Result<Vec<FlowReport>> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read flow log {}", path.display()))?;
    parse_flow_log(path, &text)
}

/// [`read_flow_log`] on text already read (`path` only names it in
/// messages); the fuzz target `flow_log` drives this.
pub fn parse_flow_log(path: &std::path::Path, text: &str) -> anyhow::Result<Vec<FlowReport>> {
    use anyhow::Context as _;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let report = parse_line(line)
            .with_context(|| format!("{}:{}: not a flow report", path.display(), i + 1))?;
        out.push(report);
    }
    Ok(out)
}

/// One JSON line; the error names the field path (`at \`src.ip\`: ...`)
/// so the user knows what in the line is wrong.
fn parse_line(line: &str) -> anyhow::Result<FlowReport> {
    let mut de = serde_json::Deserializer::from_str(line);
    let report: FlowReport = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path.is_empty() || path == "." {
            anyhow::anyhow!("{}", e.inner())
        } else {
            anyhow::anyhow!("at `{path}`: {}", e.inner())
        }
    })?;
    // Like serde_json::from_str: nothing but whitespace may follow.
    de.end()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_names_file_line_and_field() {
        let good = r#"{"time":"2026-01-01T00:00:02Z","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z","interface":"veth1","protocol":"UDP","ip_version":4,"src":{"ip":"10.1.0.5","port":1,"kind":"pod"},"dst":{"ip":"10.2.0.7","port":53,"kind":"pod"},"packets":{"sent":1,"received":0},"bytes":{"sent":28,"received":0},"verdict":"allowed"}"#;
        let p = std::path::Path::new("flows.jsonl");
        assert_eq!(
            parse_flow_log(p, &format!("{good}\n\n{good}\n"))
                .expect("two good lines")
                .len(),
            2
        );
        let bad_ip = good.replace("10.2.0.7", "10.2.0.700");
        let err = format!(
            "{:#}",
            parse_flow_log(p, &format!("{good}\n{bad_ip}\n")).expect_err("bad IP")
        );
        assert!(
            err.starts_with("flows.jsonl:2: not a flow report: at `dst.ip`:"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            parse_flow_log(p, &format!("{good} x")).expect_err("trailing")
        );
        assert!(
            err.starts_with("flows.jsonl:1: not a flow report: trailing characters"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            parse_flow_log(p, &good[..good.len() - 9]).expect_err("truncated")
        );
        assert!(
            err.starts_with("flows.jsonl:1: not a flow report: ")
                && err.contains("EOF while parsing"),
            "{err}"
        );
    }

    #[test]
    fn services_read_in_both_shapes_and_write_the_object() {
        let old: Endpoint =
            serde_json::from_str(r#"{"ip":"10.96.0.7","kind":"service","service":"api/backend"}"#)
                .expect("the earlier string form reads");
        let svc = old.service.expect("service");
        assert_eq!(
            (svc.id(), svc.ip, svc.port),
            ("api/backend".into(), None, None)
        );
        let new: Endpoint = serde_json::from_str(
            r#"{"ip":"10.1.0.7","port":5432,"kind":"pod","service":{"namespace":"pay","name":"db","ip":"10.96.0.10","port":80}}"#,
        )
        .expect("the contract's object form reads");
        let text = serde_json::to_string(&new).expect("writes");
        assert!(
            text.contains(
                r#""service":{"namespace":"pay","name":"db","ip":"10.96.0.10","port":80}"#
            ),
            "{text}"
        );
        assert!(
            serde_json::from_str::<Endpoint>(r#"{"ip":"10.1.0.7","service":"no-slash"}"#).is_err(),
            "a string without namespace is an error, not a guess"
        );
    }

    #[test]
    fn reports_of_one_connection_fold_into_one() {
        let mk =
            |conn: Option<&str>, seq: u32, sent: u64, ended: bool, verdict: Verdict| FlowReport {
                connection: conn.map(str::to_owned),
                seq: Some(seq),
                observer: Some("n1".into()),
                bytes: Counts { sent, received: 1 },
                packets: Counts {
                    sent: 1,
                    received: 1,
                },
                ended,
                verdict: Some(verdict),
                ..FlowReport::default()
            };
        let folded = by_connection(
            vec![
                mk(Some("a"), 1, 100, false, Verdict::Allowed),
                mk(Some("b"), 1, 5, true, Verdict::Allowed),
                mk(Some("a"), 2, 50, true, Verdict::Violation),
                mk(None, 1, 7, true, Verdict::Allowed),
                mk(None, 1, 7, true, Verdict::Allowed),
            ],
            |r| r,
        );
        assert_eq!(
            folded.len(),
            4,
            "a's two reports are one; reports without id stay apart"
        );
        let a = &folded[0];
        assert_eq!(
            (a.bytes.sent, a.packets.sent, a.seq, a.ended, a.verdict),
            (150, 2, Some(2), true, Some(Verdict::Violation))
        );
        assert_eq!(folded[1].bytes.sent, 5);
    }

    #[test]
    fn contract_example_round_trips() {
        let line = r#"{"time":"2026-01-01T00:00:02Z","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z","interface":"veth1","protocol":"TCP","ip_version":4,"src":{"ip":"10.1.0.5","port":40312,"kind":"pod","namespace":"shop","pod":"web-0","workload":"Deployment/web","service_account":"web","labels":{"app":"web"},"node":"n1"},"dst":{"ip":"10.2.0.7","port":8080,"kind":"service","namespace":"api","service":"api/backend"},"packets":{"sent":12,"received":10},"bytes":{"sent":1432,"received":88123},"tcp":{"flags":["SYN","ACK","FIN"],"state":"closed"},"netpol":{"allowed":true,"ingress":["api/allow-web"],"egress":[]},"verdict":"violation","violations":[{"kind":"cross_namespace","rule":"baseline","reason":"shop -> api:8080/TCP is not whitelisted"}]}"#;
        let r: FlowReport = serde_json::from_str(line).expect("contract example must parse");
        assert_eq!(r.src.workload.as_deref(), Some("Deployment/web"));
        assert_eq!(r.tcp.as_ref().map(|t| t.state), Some(TcpState::Closed));
        assert_eq!(r.violations[0].kind, ViolationKind::CrossNamespace);
        let back = serde_json::to_string(&r).expect("serialises");
        let again: FlowReport = serde_json::from_str(&back).expect("own output parses");
        assert_eq!(r, again, "a report must survive a round trip unchanged");
        assert!(
            !back.contains("\"pod\":null"),
            "absent fields are omitted, not null"
        );
    }
}

/// A connection independent of the interface it was seen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub addr_lo: [u32; 4],
    pub addr_hi: [u32; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    pub ip_version: u8,
}

impl From<&FlowKey> for ConnKey {
    fn from(k: &FlowKey) -> Self {
        ConnKey {
            addr_lo: k.addr_lo,
            addr_hi: k.addr_hi,
            port_lo: k.port_lo,
            port_hi: k.port_hi,
            proto: k.proto,
            ip_version: k.ip_version,
        }
    }
}
