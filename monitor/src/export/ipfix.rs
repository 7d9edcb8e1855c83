//! IPFIX export (RFC 7011) over UDP.
//!
//! Each flow report becomes one or two uniflow Data Records (RFC 5103 §6
//! allows either; we chose two records because common collectors such as
//! nfdump read the standard counters of uniflow records but skip the
//! reverse-direction elements of a biflow record):
//!
//! - the opener's direction (`biflowDirection` = 1, initiator), with the
//!   `sent` counts, always;
//! - the responder's direction (`biflowDirection` = 2, reverseInitiator),
//!   with the `received` counts, when the responder sent any packet.
//!
//! Kubernetes identity travels in enterprise-specific elements under
//! [`PEN`]; the full element list is in the README ("IPFIX elements").

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::report::{Endpoint, FlowReport, TcpState};

/// Private Enterprise Number of the segwatch elements: 32473 is the number
/// IANA reserves for documentation and examples (RFC 5612). segwatch has no
/// PEN of its own; collectors key the elements on (PEN, id), so a later
/// registered number only changes this constant and the README.
pub const PEN: u32 = 32473;

/// Template ids (data sets use ids ≥ 256, RFC 7011 §3.4.1): one template
/// per IP version and set of enterprise elements present. An element a
/// report does not have is left out of the record (never sent as an empty
/// or made-up value): id = 256 + 2048 × (IPv6) + bitmask of the enterprise
/// elements present, in [`ENTERPRISE_FIELDS`] order.
pub const TEMPLATE_BASE: u16 = 256;
const TEMPLATE_V6_BIT: u16 = 2048;

/// The template id of records of this IP version with these enterprise
/// elements present.
pub fn template_id(v6: bool, mask: u16) -> u16 {
    TEMPLATE_BASE + if v6 { TEMPLATE_V6_BIT } else { 0 } + (mask & 0x7ff)
}

/// Largest message we build: below a 1500-byte MTU after IP and UDP headers,
/// as RFC 7011 §10.3.3 asks of UDP exporters (a message with one record
/// longer than this is still sent alone).
pub const MAX_MESSAGE: usize = 1400;

/// Templates are re-sent this often over UDP (RFC 7011 §8.4: "Template
/// Records ... MUST be resent at regular intervals"), and with the first
/// message.
pub const TEMPLATE_INTERVAL: Duration = Duration::from_secs(60);

/// Variable length in a field specifier (RFC 7011 §7).
const VARLEN: u16 = 65535;

/// Standard information elements (IANA IPFIX registry).
pub mod ie {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const TCP_CONTROL_BITS: u16 = 6;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    pub const ICMP_TYPE_CODE_IPV4: u16 = 32;
    pub const FLOW_END_REASON: u16 = 136;
    pub const ICMP_TYPE_CODE_IPV6: u16 = 139;
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    pub const FLOW_END_MILLISECONDS: u16 = 153;
    pub const BIFLOW_DIRECTION: u16 = 239;
}

/// segwatch's enterprise-specific elements (under [`PEN`]); all strings
/// (UTF-8, variable length), empty when unknown.
pub mod pen_ie {
    pub const SOURCE_NAMESPACE: u16 = 1;
    pub const SOURCE_POD: u16 = 2;
    pub const SOURCE_WORKLOAD: u16 = 3;
    pub const SOURCE_SERVICE_ACCOUNT: u16 = 4;
    pub const DESTINATION_NAMESPACE: u16 = 5;
    pub const DESTINATION_POD: u16 = 6;
    pub const DESTINATION_WORKLOAD: u16 = 7;
    pub const DESTINATION_SERVICE_ACCOUNT: u16 = 8;
    pub const DESTINATION_SERVICE: u16 = 9;
    /// `allowed`, `violation` or `unjudged`.
    pub const VERDICT: u16 = 10;
    /// Comma-separated violation kinds (`cross_namespace,...`).
    pub const VIOLATION_KINDS: u16 = 11;
}

/// (id, length) of the standard fields, in record order, for one IP version.
fn standard_fields(v6: bool) -> [(u16, u16); 13] {
    let (sa, da, addr_len, icmp) = if v6 {
        (
            ie::SOURCE_IPV6_ADDRESS,
            ie::DESTINATION_IPV6_ADDRESS,
            16,
            ie::ICMP_TYPE_CODE_IPV6,
        )
    } else {
        (
            ie::SOURCE_IPV4_ADDRESS,
            ie::DESTINATION_IPV4_ADDRESS,
            4,
            ie::ICMP_TYPE_CODE_IPV4,
        )
    };
    [
        (ie::FLOW_START_MILLISECONDS, 8),
        (ie::FLOW_END_MILLISECONDS, 8),
        (ie::OCTET_DELTA_COUNT, 8),
        (ie::PACKET_DELTA_COUNT, 8),
        (sa, addr_len),
        (da, addr_len),
        (ie::SOURCE_TRANSPORT_PORT, 2),
        (ie::DESTINATION_TRANSPORT_PORT, 2),
        (ie::PROTOCOL_IDENTIFIER, 1),
        (ie::TCP_CONTROL_BITS, 2),
        (icmp, 2),
        (ie::BIFLOW_DIRECTION, 1),
        (ie::FLOW_END_REASON, 1),
    ]
}

/// The enterprise fields, in record order.
const ENTERPRISE_FIELDS: [u16; 11] = [
    pen_ie::SOURCE_NAMESPACE,
    pen_ie::SOURCE_POD,
    pen_ie::SOURCE_WORKLOAD,
    pen_ie::SOURCE_SERVICE_ACCOUNT,
    pen_ie::DESTINATION_NAMESPACE,
    pen_ie::DESTINATION_POD,
    pen_ie::DESTINATION_WORKLOAD,
    pen_ie::DESTINATION_SERVICE_ACCOUNT,
    pen_ie::DESTINATION_SERVICE,
    pen_ie::VERDICT,
    pen_ie::VIOLATION_KINDS,
];

/// One template record (RFC 7011 §3.4.1) for template id `tid`.
pub fn template_record(tid: u16) -> Vec<u8> {
    let v6 = tid >= TEMPLATE_BASE + TEMPLATE_V6_BIT;
    let mask = (tid - TEMPLATE_BASE) & 0x7ff;
    let std = standard_fields(v6);
    let ent = ENTERPRISE_FIELDS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, ie)| *ie)
        .collect::<Vec<_>>();
    let mut t = Vec::with_capacity(4 + std.len() * 4 + ent.len() * 8);
    put16(&mut t, tid);
    put16(&mut t, (std.len() + ent.len()) as u16);
    for (ie, len) in std {
        put16(&mut t, ie);
        put16(&mut t, len);
    }
    for ie in ent {
        // Enterprise bit (RFC 7011 §3.2) and the PEN after the length.
        put16(&mut t, 0x8000 | ie);
        put16(&mut t, VARLEN);
        t.extend_from_slice(&PEN.to_be_bytes());
    }
    t
}

/// A template set (set id 2) with the given templates.
pub fn template_set(tids: &[u16]) -> Vec<u8> {
    let mut set = vec![0, 2, 0, 0];
    for &tid in tids {
        set.extend_from_slice(&template_record(tid));
    }
    let len = set.len() as u16;
    set[2..4].copy_from_slice(&len.to_be_bytes());
    set
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_be_bytes());
}

/// A variable-length string (RFC 7011 §7): one length byte below 255, else
/// 255 and two length bytes. Only non-empty strings are encoded (an absent
/// value leaves the element out of the template). Longer strings are cut at a character boundary
/// (Kubernetes names are at most 253 bytes; this only guards the encoding).
fn put_varlen(b: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX) - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let s = &s.as_bytes()[..end];
    if s.len() < 255 {
        b.push(s.len() as u8);
    } else {
        b.push(255);
        put16(b, s.len() as u16);
    }
    b.extend_from_slice(s);
}

/// `tcpControlBits` from the report's flag names (RFC 9293 header order,
/// IANA "IPFIX Information Element #6").
pub fn tcp_control_bits(flags: &[String]) -> u16 {
    flags
        .iter()
        .map(|f| match f.as_str() {
            "FIN" => 0x01,
            "SYN" => 0x02,
            "RST" => 0x04,
            "PSH" => 0x08,
            "ACK" => 0x10,
            "URG" => 0x20,
            "ECE" => 0x40,
            "CWR" => 0x80,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// IANA protocol number from the report's protocol name.
pub fn protocol_number(p: &str) -> u8 {
    match p {
        "TCP" => 6,
        "UDP" => 17,
        "ICMP" => 1,
        "ICMPv6" => 58,
        "SCTP" => 132,
        other => other.parse().unwrap_or(255),
    }
}

/// `flowEndReason` (IANA registry, IE 136): 1 idle timeout, 2 active
/// timeout, 3 end of flow detected (FIN/RST seen).
fn end_reason(r: &FlowReport) -> u8 {
    if !r.ended {
        2
    } else if matches!(
        r.tcp.as_ref().map(|t| t.state),
        Some(TcpState::Closed | TcpState::Rejected)
    ) {
        3
    } else {
        1
    }
}

fn verdict(r: &FlowReport) -> &'static str {
    match r.verdict {
        Some(crate::report::Verdict::Allowed) => "allowed",
        Some(crate::report::Verdict::Violation) => "violation",
        Some(crate::report::Verdict::Unjudged) | None => "unjudged",
    }
}

fn put_addr(b: &mut Vec<u8>, ip: IpAddr, v6: bool) {
    match (ip, v6) {
        (IpAddr::V4(a), false) => b.extend_from_slice(&a.octets()),
        (IpAddr::V6(a), true) => b.extend_from_slice(&a.octets()),
        (IpAddr::V4(a), true) => b.extend_from_slice(&a.to_ipv6_mapped().octets()),
        (IpAddr::V6(a), false) => {
            b.extend_from_slice(&a.to_ipv4_mapped().map_or([0; 4], |a| a.octets()))
        }
    }
}

/// The data records of one report: `(template id, record bytes)`, the
/// opener's direction first.
pub fn data_records(r: &FlowReport) -> Vec<(u16, Vec<u8>)> {
    let v6 = r.ip_version == 6;
    let mut out = Vec::with_capacity(2);
    let kinds = r
        .violations
        .iter()
        .map(|v| v.kind.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let icmp = r.icmp.map_or(0, |i| {
        u16::from(i.icmp_type) << 8 | u16::from(i.code.unwrap_or(0))
    });
    let dirs: [(&Endpoint, &Endpoint, u64, u64, u8); 2] = [
        (&r.src, &r.dst, r.bytes.sent, r.packets.sent, 1),
        (&r.dst, &r.src, r.bytes.received, r.packets.received, 2),
    ];
    for (from, to, bytes, packets, direction) in dirs {
        if direction == 2 && packets == 0 {
            continue;
        }
        let mut b = Vec::with_capacity(160);
        b.extend_from_slice(&(r.start.timestamp_millis().max(0) as u64).to_be_bytes());
        b.extend_from_slice(&(r.end.timestamp_millis().max(0) as u64).to_be_bytes());
        b.extend_from_slice(&bytes.to_be_bytes());
        b.extend_from_slice(&packets.to_be_bytes());
        put_addr(&mut b, from.ip, v6);
        put_addr(&mut b, to.ip, v6);
        put16(&mut b, from.port.unwrap_or(0));
        put16(&mut b, to.port.unwrap_or(0));
        b.push(protocol_number(&r.protocol));
        put16(
            &mut b,
            r.tcp.as_ref().map_or(0, |t| tcp_control_bits(&t.flags)),
        );
        put16(&mut b, icmp);
        b.push(direction);
        b.push(end_reason(r));
        fn s(o: &Option<std::sync::Arc<str>>) -> &str {
            o.as_deref().unwrap_or("")
        }
        let service = to
            .service
            .as_ref()
            .map(crate::report::ServiceRef::id)
            .unwrap_or_default();
        // In ENTERPRISE_FIELDS order.
        let values: [&str; 11] = [
            s(&from.namespace),
            s(&from.pod),
            s(&from.workload),
            s(&from.service_account),
            s(&to.namespace),
            s(&to.pod),
            s(&to.workload),
            s(&to.service_account),
            &service,
            verdict(r),
            &kinds,
        ];
        let mut mask = 0u16;
        for (i, v) in values.iter().enumerate() {
            if !v.is_empty() {
                mask |= 1 << i;
                put_varlen(&mut b, v);
            }
        }
        out.push((template_id(v6, mask), b));
    }
    out
}

/// Builds IPFIX messages: header, the templates the collector has not been
/// sent yet, data sets.
pub struct Encoder {
    domain: u32,
    /// Data records sent so far (RFC 7011 §3.1 sequence number, mod 2^32).
    sequence: u32,
    /// Templates sent since the last refresh.
    announced: std::collections::BTreeSet<u16>,
    refreshed: Option<Instant>,
}

/// One message being filled.
#[derive(Default)]
struct Draft {
    templates: Vec<u16>,
    records: Vec<(u16, Vec<u8>)>,
    size: usize,
    reports: usize,
}

impl Encoder {
    pub fn new(domain: u32) -> Self {
        Encoder {
            domain,
            sequence: 0,
            announced: Default::default(),
            refreshed: None,
        }
    }

    /// Send every template again with its next use (after a send error:
    /// the collector may have restarted without them).
    pub fn resend_templates(&mut self) {
        self.announced.clear();
    }

    /// Encodes `reports` into messages of at most [`MAX_MESSAGE`] bytes
    /// (unless one report alone is larger). Each template goes out before
    /// its first data record, and again on first use after every
    /// [`TEMPLATE_INTERVAL`]. Returns each message with the number of
    /// reports whose records it completes, so a sender knows how many were
    /// delivered when a later message fails. The sequence numbers advance
    /// as if every message is sent.
    pub fn encode(
        &mut self,
        reports: &[std::sync::Arc<FlowReport>],
        now: Instant,
        export_time: u32,
    ) -> Vec<(Vec<u8>, usize)> {
        if self
            .refreshed
            .is_none_or(|t| now.duration_since(t) >= TEMPLATE_INTERVAL)
        {
            self.announced.clear();
            self.refreshed = Some(now);
        }
        let mut out = Vec::new();
        let mut draft = Draft::default();
        for r in reports {
            let recs = data_records(r);
            let new = recs
                .iter()
                .map(|(t, _)| *t)
                .filter(|t| !self.announced.contains(t) && !draft.templates.contains(t))
                .collect::<std::collections::BTreeSet<_>>();
            let size = recs.iter().map(|(_, b)| b.len() + 4).sum::<usize>()
                + new
                    .iter()
                    .map(|t| template_record(*t).len() + 4)
                    .sum::<usize>();
            if draft.reports > 0 && 16 + draft.size + size > MAX_MESSAGE {
                out.push(self.finish(std::mem::take(&mut draft), export_time));
            }
            // A template announced in a finished message needs no resend.
            for t in new {
                if !self.announced.contains(&t) && !draft.templates.contains(&t) {
                    draft.templates.push(t);
                }
            }
            draft.size += size;
            draft.records.extend(recs);
            draft.reports += 1;
        }
        if draft.reports > 0 {
            out.push(self.finish(draft, export_time));
        }
        out
    }

    fn finish(&mut self, draft: Draft, export_time: u32) -> (Vec<u8>, usize) {
        let mut msg = vec![0u8; 16];
        if !draft.templates.is_empty() {
            msg.extend_from_slice(&template_set(&draft.templates));
            self.announced.extend(draft.templates.iter().copied());
        }
        // Consecutive records of one template share a data set.
        let mut set_start: Option<(usize, u16)> = None;
        let close = |msg: &mut Vec<u8>, at: usize| {
            let len = (msg.len() - at) as u16;
            msg[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
        };
        let records = draft.records.len() as u32;
        for (tid, rec) in draft.records {
            if set_start.is_none_or(|(_, t)| t != tid) {
                if let Some((at, _)) = set_start {
                    close(&mut msg, at);
                }
                set_start = Some((msg.len(), tid));
                put16(&mut msg, tid);
                put16(&mut msg, 0);
            }
            msg.extend_from_slice(&rec);
        }
        if let Some((at, _)) = set_start {
            close(&mut msg, at);
        }
        let len = msg.len() as u16;
        msg[0..2].copy_from_slice(&10u16.to_be_bytes());
        msg[2..4].copy_from_slice(&len.to_be_bytes());
        msg[4..8].copy_from_slice(&export_time.to_be_bytes());
        // The sequence number counts data records sent BEFORE this message.
        msg[8..12].copy_from_slice(&self.sequence.to_be_bytes());
        msg[12..16].copy_from_slice(&self.domain.to_be_bytes());
        self.sequence = self.sequence.wrapping_add(records);
        (msg, draft.reports)
    }
}

/// The UDP sender: a connected socket (so ICMP port-unreachable from a
/// collector that is down surfaces as a send error we retry).
pub struct IpfixSink {
    socket: tokio::net::UdpSocket,
    encoder: Encoder,
}

impl IpfixSink {
    /// Resolves `collector` (`HOST:PORT`) and connects a UDP socket to it.
    pub async fn connect(collector: &str, domain: u32) -> Result<Self, super::ExportError> {
        let addr = tokio::net::lookup_host(collector)
            .await
            .map_err(|e| super::ExportError::Config {
                flag: "--ipfix-collector",
                value: collector.to_string(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| super::ExportError::Config {
                flag: "--ipfix-collector",
                value: collector.to_string(),
                reason: "resolves to no address".into(),
            })?;
        let bind: std::net::SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let io = |e: std::io::Error| super::ExportError::Config {
            flag: "--ipfix-collector",
            value: collector.to_string(),
            reason: e.to_string(),
        };
        let socket = tokio::net::UdpSocket::bind(bind).await.map_err(io)?;
        socket.connect(addr).await.map_err(io)?;
        Ok(IpfixSink {
            socket,
            encoder: Encoder::new(domain),
        })
    }
}

impl super::Sink for IpfixSink {
    const NAME: &'static str = "ipfix";
    const MAX_BATCH: usize = 256;

    async fn send(&mut self, batch: &[std::sync::Arc<FlowReport>]) -> Result<(), super::Partial> {
        let export_time = chrono::Utc::now().timestamp().clamp(0, i64::from(u32::MAX)) as u32;
        let messages = self.encoder.encode(batch, Instant::now(), export_time);
        let mut delivered = 0;
        for (msg, reports) in messages {
            if let Err(e) = self.socket.send(&msg).await {
                self.encoder.resend_templates();
                return Err(super::Partial {
                    delivered,
                    error: e.to_string(),
                });
            }
            delivered += reports;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Counts, TcpInfo, Verdict, Violation, ViolationKind};
    use std::sync::Arc;

    fn report() -> FlowReport {
        let t = |s| chrono::DateTime::from_timestamp(s, 5_000_000).expect("valid");
        let mut r = FlowReport {
            start: t(1_700_000_000),
            end: t(1_700_000_002),
            protocol: "TCP".into(),
            ip_version: 4,
            packets: Counts {
                sent: 12,
                received: 10,
            },
            bytes: Counts {
                sent: 1432,
                received: 88123,
            },
            tcp: Some(TcpInfo {
                flags: vec!["SYN".into(), "ACK".into(), "FIN".into()],
                state: TcpState::Closed,
            }),
            verdict: Some(Verdict::Violation),
            violations: vec![Violation {
                kind: ViolationKind::CrossNamespace,
                rule: "baseline".into(),
                reason: "x".into(),
            }],
            ..FlowReport::default()
        };
        r.src = Endpoint::bare("10.1.0.5".parse().expect("ip"), Some(40312));
        r.src.namespace = Some("shop".into());
        r.src.pod = Some("web-0".into());
        r.dst = Endpoint::bare("10.2.0.7".parse().expect("ip"), Some(8080));
        r.dst.namespace = Some("api".into());
        r.dst.service = Some(crate::report::ServiceRef {
            namespace: "api".into(),
            name: "backend".into(),
            ip: None,
            port: None,
        });
        r
    }

    #[test]
    fn a_template_declares_the_standard_fields_and_the_present_enterprise_ones() {
        let tid = template_id(false, 0b101);
        assert_eq!(tid, 256 + 5);
        assert_eq!(template_id(true, 0b101), 256 + 2048 + 5);
        let t = template_record(tid);
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), tid);
        assert_eq!(
            u16::from_be_bytes([t[2], t[3]]),
            15,
            "13 standard + 2 enterprise"
        );
        assert_eq!(t.len(), 4 + 13 * 4 + 2 * 8);
        let first_pen = 4 + 13 * 4;
        assert_eq!(&t[first_pen..first_pen + 4], &[0x80, 1, 0xff, 0xff]);
        assert_eq!(&t[first_pen + 4..first_pen + 8], &PEN.to_be_bytes());
        assert_eq!(&t[first_pen + 8..first_pen + 12], &[0x80, 3, 0xff, 0xff]);
        let v6 = template_record(template_id(true, 0));
        assert_eq!(
            &v6[4 + 4 * 4..4 + 5 * 4],
            &[0, 27, 0, 16],
            "sourceIPv6Address"
        );
        let set = template_set(&[tid, tid + 1]);
        assert_eq!(&set[0..2], &[0, 2], "template set id 2");
        assert_eq!(usize::from(u16::from_be_bytes([set[2], set[3]])), set.len());
    }

    #[test]
    fn records_carry_both_directions_with_exact_counts() {
        let recs = data_records(&report());
        assert_eq!(recs.len(), 2, "responder sent packets: two records");
        let (tid, fwd) = &recs[0];
        assert_eq!(
            *tid,
            256 + 0b111_0001_0011,
            "src ns+pod, dst ns+service, verdict, kinds"
        );
        assert_eq!(&fwd[0..8], &1_700_000_000_005u64.to_be_bytes(), "start ms");
        assert_eq!(&fwd[16..24], &1432u64.to_be_bytes());
        assert_eq!(&fwd[24..32], &12u64.to_be_bytes());
        assert_eq!(&fwd[32..36], &[10, 1, 0, 5]);
        assert_eq!(&fwd[36..40], &[10, 2, 0, 7]);
        assert_eq!(&fwd[40..44], &[0x9d, 0x78, 0x1f, 0x90], "40312 → 8080");
        assert_eq!(fwd[44], 6);
        assert_eq!(&fwd[45..47], &[0, 0x13], "FIN|SYN|ACK");
        assert_eq!(fwd[49], 1, "initiator");
        assert_eq!(fwd[50], 3, "end of flow detected");
        assert_eq!(
            &fwd[51..],
            b"\x04shop\x05web-0\x03api\x0bapi/backend\x09violation\x0fcross_namespace"
        );
        let (rtid, rev) = &recs[1];
        assert_eq!(*rtid, 256 + 0b110_0011_0001, "the responder's view");
        assert_eq!(&rev[16..24], &88123u64.to_be_bytes());
        assert_eq!(&rev[24..32], &10u64.to_be_bytes());
        assert_eq!(&rev[32..36], &[10, 2, 0, 7], "responder is the source");
        assert_eq!(rev[49], 2, "reverseInitiator");
        assert_eq!(
            &rev[51..],
            b"\x03api\x04shop\x05web-0\x09violation\x0fcross_namespace"
        );
    }

    #[test]
    fn a_one_way_unjudged_flow_is_one_record_and_v6_uses_a_v6_template() {
        let mut r = report();
        r.packets.received = 0;
        r.bytes.received = 0;
        r.ip_version = 6;
        r.verdict = None;
        r.violations.clear();
        r.src.ip = "fd00::1".parse().expect("ip");
        r.dst.ip = "fd00::2".parse().expect("ip");
        let recs = data_records(&r);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].0, 256 + 2048 + 0b11_0001_0011);
        assert_eq!(recs[0].1[32 + 15], 1);
        assert_eq!(recs[0].1[48 + 15], 2);
        assert!(
            recs[0].1.ends_with(b"\x08unjudged"),
            "never allowed by default"
        );
    }

    #[test]
    fn an_independent_decoder_reads_standard_and_enterprise_elements() {
        let mut r = report();
        r.src.workload = Some("Deployment/web".into());
        r.src.service_account = Some("web".into());
        let mut six = report();
        six.ip_version = 6;
        six.src.ip = "fd00::1".parse().expect("ip");
        six.dst.ip = "fd00::2".parse().expect("ip");
        six.src.pod = Some("p".repeat(300).into());
        let mut enc = Encoder::new(1);
        let msgs = enc
            .encode(&[Arc::new(r), Arc::new(six)], Instant::now(), 0)
            .into_iter()
            .map(|(m, _)| m)
            .collect::<Vec<_>>();
        let recs = crate::testing::decode_ipfix(&msgs, PEN);
        assert_eq!(recs.len(), 4, "two reports, two directions each");
        let fwd = &recs[0];
        let get = |m: &std::collections::BTreeMap<String, String>, k: &str| {
            m.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{k} missing in {m:#?}"))
        };
        assert_eq!(get(fwd, "IANA(SourceIpv4address)"), "10.1.0.5");
        assert_eq!(get(fwd, "IANA(DestinationTransportPort)"), "8080");
        assert_eq!(get(fwd, "IANA(OctetDeltaCount)"), "1432");
        assert_eq!(get(fwd, "IANA(PacketDeltaCount)"), "12");
        let pen = |id: u16| format!("{PEN}/{id}");
        assert_eq!(get(fwd, &pen(pen_ie::SOURCE_NAMESPACE)), "shop");
        assert_eq!(get(fwd, &pen(pen_ie::SOURCE_POD)), "web-0");
        assert_eq!(get(fwd, &pen(pen_ie::SOURCE_WORKLOAD)), "Deployment/web");
        assert_eq!(get(fwd, &pen(pen_ie::SOURCE_SERVICE_ACCOUNT)), "web");
        assert_eq!(get(fwd, &pen(pen_ie::DESTINATION_NAMESPACE)), "api");
        assert_eq!(get(fwd, &pen(pen_ie::DESTINATION_SERVICE)), "api/backend");
        assert_eq!(get(fwd, &pen(pen_ie::VERDICT)), "violation");
        assert_eq!(get(fwd, &pen(pen_ie::VIOLATION_KINDS)), "cross_namespace");
        let rev = &recs[1];
        assert_eq!(get(rev, "IANA(OctetDeltaCount)"), "88123");
        assert_eq!(get(rev, &pen(pen_ie::SOURCE_NAMESPACE)), "api");
        assert_eq!(get(rev, &pen(pen_ie::DESTINATION_POD)), "web-0");
        let v6 = &recs[2];
        assert_eq!(get(v6, "IANA(SourceIpv6address)"), "fd00::1");
        assert_eq!(
            get(v6, &pen(pen_ie::SOURCE_POD)).len(),
            300,
            "3-byte length"
        );
    }

    #[test]
    fn long_strings_use_the_three_byte_length() {
        let mut b = Vec::new();
        put_varlen(&mut b, &"p".repeat(300));
        assert_eq!(&b[..3], &[255, 1, 44]);
        assert_eq!(b.len(), 303);
        b.clear();
        put_varlen(&mut b, &"p".repeat(254));
        assert_eq!(b[0], 254);
    }

    #[test]
    fn messages_split_under_the_mtu_count_sequence_and_resend_templates() {
        let reports = (0..40).map(|_| Arc::new(report())).collect::<Vec<_>>();
        let mut enc = Encoder::new(7);
        let t0 = Instant::now();
        let msgs = enc.encode(&reports, t0, 1_700_000_000);
        assert!(msgs.len() > 1, "80 records do not fit one message");
        assert_eq!(msgs.iter().map(|(_, n)| n).sum::<usize>(), 40);
        let mut seq = 0u32;
        for (i, (m, n)) in msgs.iter().enumerate() {
            assert!(m.len() <= MAX_MESSAGE, "message {i} is {} bytes", m.len());
            assert_eq!(&m[0..2], &[0, 10], "version 10");
            assert_eq!(usize::from(u16::from_be_bytes([m[2], m[3]])), m.len());
            assert_eq!(u32::from_be_bytes([m[8], m[9], m[10], m[11]]), seq);
            assert_eq!(&m[12..16], &7u32.to_be_bytes());
            let has_templates = m[16..18] == [0, 2];
            assert_eq!(has_templates, i == 0, "templates once, before their data");
            seq += 2 * *n as u32;
        }
        let later = enc.encode(&reports[..1], t0 + Duration::from_secs(1), 0);
        assert_ne!(&later[0].0[16..18], &[0, 2], "not due yet");
        let mut other = report();
        other.src.pod = None;
        let new_shape = enc.encode(&[Arc::new(other)], t0 + Duration::from_secs(1), 0);
        assert_eq!(
            &new_shape[0].0[16..18],
            &[0, 2],
            "a new template goes first"
        );
        let due = enc.encode(&reports[..1], t0 + TEMPLATE_INTERVAL, 0);
        assert_eq!(&due[0].0[16..18], &[0, 2], "re-sent on the timer");
        enc.resend_templates();
        let again = enc.encode(&reports[..1], t0 + TEMPLATE_INTERVAL, 0);
        assert_eq!(&again[0].0[16..18], &[0, 2], "re-sent after an error");
    }
}
