//! The kernel's connection tracking, read by original or reply tuple: which
//! backend a Service connection was translated to (kube-proxy's iptables,
//! nftables and IPVS modes all DNAT through conntrack).
//!
//! ```text
//!  observed tuple (opener → responder)
//!     │ IPCTNL_MSG_CT_GET (NFNL_SUBSYS_CTNETLINK), CTA_TUPLE_ORIG = tuple
//!     ▼
//!  kernel: nf_conntrack_find_get() — the hash holds BOTH directions'
//!  tuples of every entry, so a tuple matches its entry's original or
//!  reply direction (net/netfilter/nf_conntrack_netlink.c,
//!  ctnetlink_get_conntrack)
//!     ▼
//!  IPCTNL_MSG_CT_NEW with CTA_TUPLE_ORIG + CTA_TUPLE_REPLY ─► [`Entry`]
//!  (or NLMSG_ERROR -ENOENT: not tracked)
//! ```
//!
//! The messages are the rust-netlink project's `netlink-packet-netfilter`
//! types; this module only builds the request, matches the answer to it
//! and turns the attributes into plain tuples.

use std::net::IpAddr;
use std::os::fd::AsRawFd as _;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple as CtTuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

/// One direction of a connection as conntrack keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// IANA protocol number (TCP, UDP, SCTP carry ports).
    pub proto: u8,
}

impl Tuple {
    /// The other direction.
    pub fn inverse(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

/// A conntrack entry: both directions as the kernel keeps them after NAT
/// (the reply tuple's source is the backend a DNAT chose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
}

/// What conntrack says about a connection observed as `tuple`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Tracked without address translation, or not tracked at all.
    None,
    /// `tuple` is the client's view (before DNAT): the kernel sends it to
    /// `backend` (ip, port).
    Before { backend: (IpAddr, u16) },
    /// `tuple` is what reached the backend (after DNAT, maybe SNAT): the
    /// client was `client` and addressed `addressed`.
    After {
        client: (IpAddr, u16),
        addressed: (IpAddr, u16),
    },
}

/// Classifies an observed tuple with the entries found for it and for its
/// inverse (pure; see [`Lookup::nat_of`]).
pub fn classify(tuple: &Tuple, by_tuple: Option<&Entry>, by_inverse: Option<&Entry>) -> Nat {
    if let Some(e) = by_tuple {
        if e.orig == *tuple {
            if (e.reply.src, e.reply.sport) != (tuple.dst, tuple.dport) {
                return Nat::Before {
                    backend: (e.reply.src, e.reply.sport),
                };
            }
            return Nat::None;
        }
    }
    if let Some(e) = by_inverse {
        // The reply direction answers our responder → opener: we saw the
        // connection after translation.
        if e.reply == tuple.inverse() && (e.orig.dst, e.orig.dport) != (tuple.dst, tuple.dport) {
            return Nat::After {
                client: (e.orig.src, e.orig.sport),
                addressed: (e.orig.dst, e.orig.dport),
            };
        }
    }
    Nat::None
}

#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error("conntrack netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("conntrack answer: {0}")]
    Decode(String),
    #[error("conntrack lookup refused: errno {0}")]
    Errno(i32),
}

/// Something that can look up conntrack entries (the kernel, or a table in
/// tests).
pub trait Lookup {
    /// The entry one of whose directions is `tuple`; `Ok(None)` when the
    /// kernel tracks no such connection.
    fn get(&mut self, tuple: &Tuple) -> Result<Option<Entry>, CtError>;

    /// What NAT did to the connection observed as `tuple` (one or two
    /// lookups).
    fn nat_of(&mut self, tuple: &Tuple) -> Result<Nat, CtError> {
        Ok(self.nat_tracked(tuple)?.0)
    }

    /// [`Lookup::nat_of`], and whether conntrack tracks the connection (an
    /// answer that will not change; untracked may be "not yet").
    fn nat_tracked(&mut self, tuple: &Tuple) -> Result<(Nat, bool), CtError> {
        let direct = self.get(tuple)?;
        if let Some(e) = &direct {
            if e.orig == *tuple {
                return Ok((classify(tuple, Some(e), None), true));
            }
        }
        let inverse = self.get(&tuple.inverse())?;
        let tracked = direct.is_some() || inverse.is_some();
        Ok((classify(tuple, direct.as_ref(), inverse.as_ref()), tracked))
    }
}

/// IPCTNL_MSG_CT_GET request for `tuple` (as CTA_TUPLE_ORIG; the kernel
/// matches either direction), with sequence number `seq`.
pub fn encode_get(tuple: &Tuple, seq: u32) -> Vec<u8> {
    let family = match tuple.src {
        IpAddr::V4(_) => NetfilterProtoFamily::IPv4,
        IpAddr::V6(_) => NetfilterProtoFamily::IPv6,
    };
    let attrs = vec![ConntrackAttribute::CtaTupleOrig(vec![
        CtTuple::Ip(vec![
            IPTuple::SourceAddress(tuple.src),
            IPTuple::DestinationAddress(tuple.dst),
        ]),
        CtTuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(tuple.proto)),
            ProtoTuple::SourcePort(tuple.sport),
            ProtoTuple::DestinationPort(tuple.dport),
        ]),
    ])];
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST;
    hdr.sequence_number = seq;
    // nfgenmsg: family, NFNETLINK_V0, res_id 0 (include/uapi/linux/netfilter/nfnetlink.h).
    let mut msg = NetlinkMessage::new(
        hdr,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            ConntrackMessage::Get(attrs),
        )),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Decodes the answer to request `seq` from one datagram: `Ok(Some(entry))`,
/// `Ok(None)` for ENOENT, `Err` for anything else. Messages of other
/// sequence numbers (late answers) are skipped: `Err(Decode)` if nothing
/// for `seq` is in the datagram.
pub fn decode_answer(buf: &[u8], seq: u32) -> Result<Option<Entry>, CtError> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..])
            .map_err(|e| CtError::Decode(e.to_string()))?;
        let len = msg.header.length as usize;
        if len == 0 {
            break;
        }
        // Netlink messages are 4-byte aligned (NLMSG_ALIGN).
        off += (len + 3) & !3;
        if msg.header.sequence_number != seq {
            continue;
        }
        return match msg.payload {
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(None),
                Some(c) if c.get() == -libc::ENOENT => Ok(None),
                Some(c) => Err(CtError::Errno(-c.get())),
            },
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                ..
            }) => entry_of(&attrs)
                .map(Some)
                .ok_or_else(|| CtError::Decode("entry without both tuples".into())),
            other => Err(CtError::Decode(format!(
                "unexpected message {:?}",
                std::mem::discriminant(&other)
            ))),
        };
    }
    Err(CtError::Decode(format!("no answer for request {seq}")))
}

fn tuple_of(parts: &[CtTuple]) -> Option<Tuple> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, 0, 0, None);
    for p in parts {
        match p {
            CtTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            CtTuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => sport = *n,
                        ProtoTuple::DestinationPort(n) => dport = *n,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        sport,
        dport,
        proto: proto?,
    })
}

fn entry_of(attrs: &[ConntrackAttribute]) -> Option<Entry> {
    let (mut orig, mut reply) = (None, None);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple_of(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple_of(t),
            _ => {}
        }
    }
    Some(Entry {
        orig: orig?,
        reply: reply?,
    })
}

/// The kernel's conntrack table of the daemon's network namespace.
pub struct Conntrack {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    /// Opens a NETLINK_NETFILTER socket. Reading conntrack needs
    /// CAP_NET_ADMIN, which the daemon holds anyway.
    pub fn open() -> Result<Self, CtError> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        // A lookup is a local kernel round trip (microseconds); bound it so
        // a lost answer never stalls the daemon's loop.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: a valid socket fd and a timeval of the size we pass.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Conntrack {
            sock,
            seq: 0,
            buf: vec![0; 16 * 1024],
        })
    }
}

impl Lookup for Conntrack {
    fn get(&mut self, tuple: &Tuple) -> Result<Option<Entry>, CtError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.sock.send(&encode_get(tuple, seq), 0)?;
        // Answers to earlier, timed-out requests may still arrive: skip them.
        for _ in 0..4 {
            self.buf.clear();
            let n = self.sock.recv(&mut self.buf, 0)?;
            let n = n.min(self.buf.len());
            match decode_answer(&self.buf[..n], seq) {
                Err(CtError::Decode(m)) if m.starts_with("no answer") => continue,
                r => return r,
            }
        }
        Err(CtError::Decode(format!("no answer for request {seq}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
        Tuple {
            src: src.parse().expect("ip"),
            dst: dst.parse().expect("ip"),
            sport,
            dport,
            proto: 6,
        }
    }

    /// The request bytes, checked against the layout the kernel parses
    /// (nlmsghdr, nfgenmsg, nested CTA_TUPLE_ORIG > CTA_TUPLE_IP/PROTO).
    #[test]
    fn a_get_request_has_the_ctnetlink_layout() {
        let b = encode_get(&t("10.0.0.1", 40000, "10.96.0.10", 80), 7);
        assert_eq!(b.len(), 16 + 4 + 4 + (4 + 8 + 8) + (4 + 8 + 8 + 8));
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        assert_eq!(u32_at(0) as usize, b.len(), "nlmsg_len");
        assert_eq!(
            u16_at(4),
            (1 << 8) | 1,
            "NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET"
        );
        assert_eq!(u16_at(6), NLM_F_REQUEST, "a plain request, not a dump");
        assert_eq!(u32_at(8), 7, "sequence number");
        assert_eq!(
            &b[16..20],
            &[2, 0, 0, 0],
            "nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0"
        );
        assert_eq!(u16_at(22) & 0x3fff, 1, "CTA_TUPLE_ORIG");
        assert_ne!(u16_at(22) & 0x8000, 0, "NLA_F_NESTED");
        assert_eq!(u16_at(26) & 0x3fff, 1, "CTA_TUPLE_IP");
        assert_eq!((u16_at(28), u16_at(30)), (8, 1), "CTA_IP_V4_SRC");
        assert_eq!(&b[32..36], &[10, 0, 0, 1]);
        assert_eq!((u16_at(36), u16_at(38)), (8, 2), "CTA_IP_V4_DST");
        assert_eq!(&b[40..44], &[10, 96, 0, 10]);
        assert_eq!(u16_at(46) & 0x3fff, 2, "CTA_TUPLE_PROTO");
        assert_eq!(
            (u16_at(48), u16_at(50), b[52]),
            (5, 1, 6),
            "CTA_PROTO_NUM = TCP"
        );
        assert_eq!((u16_at(56), u16_at(58)), (6, 2), "CTA_PROTO_SRC_PORT");
        assert_eq!(
            &b[60..62],
            &40000u16.to_be_bytes(),
            "ports in network order"
        );
        assert_eq!((u16_at(64), u16_at(66)), (6, 3), "CTA_PROTO_DST_PORT");
        assert_eq!(&b[68..70], &80u16.to_be_bytes());
        let v6 = encode_get(&t("fd00::1", 1, "fd00::2", 2), 1);
        assert_eq!(v6[16], 10, "AF_INET6");
    }

    /// Builds the kernel's answer (IPCTNL_MSG_CT_NEW with both tuples).
    fn answer(seq: u32, e: &Entry) -> Vec<u8> {
        let tuple = |t: &Tuple| {
            vec![
                CtTuple::Ip(vec![
                    IPTuple::SourceAddress(t.src),
                    IPTuple::DestinationAddress(t.dst),
                ]),
                CtTuple::Proto(vec![
                    ProtoTuple::Protocol(Protocol::from(t.proto)),
                    ProtoTuple::SourcePort(t.sport),
                    ProtoTuple::DestinationPort(t.dport),
                ]),
            ]
        };
        let mut hdr = NetlinkHeader::default();
        hdr.sequence_number = seq;
        let mut msg = NetlinkMessage::new(
            hdr,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
                ConntrackMessage::New(vec![
                    ConntrackAttribute::CtaTupleOrig(tuple(&e.orig)),
                    ConntrackAttribute::CtaTupleReply(tuple(&e.reply)),
                    ConntrackAttribute::CtaMark(0),
                ]),
            )),
        );
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    fn error(seq: u32, errno: i32) -> Vec<u8> {
        // nlmsghdr (NLMSG_ERROR = 2) + int error + the request's header.
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(-errno).to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]);
        b
    }

    #[test]
    fn answers_decode_to_entries_or_not_tracked() {
        let e = Entry {
            orig: t("10.0.0.1", 40000, "10.96.0.10", 80),
            reply: t("10.0.1.7", 5432, "10.0.0.1", 40000),
        };
        assert_eq!(decode_answer(&answer(3, &e), 3).expect("decodes"), Some(e));
        assert_eq!(
            decode_answer(&error(3, libc::ENOENT), 3).expect("ENOENT"),
            None
        );
        assert!(matches!(
            decode_answer(&error(3, libc::EPERM), 3),
            Err(CtError::Errno(e)) if e == libc::EPERM
        ));
        // A late answer to an earlier request is not taken for this one.
        let mut two = answer(2, &e);
        two.extend(error(3, libc::ENOENT));
        assert_eq!(decode_answer(&two, 3).expect("second message"), None);
        assert!(decode_answer(&answer(2, &e), 3).is_err());
        assert!(
            decode_answer(&[1, 2, 3], 3).is_err(),
            "garbage is an error, not a panic"
        );
    }

    /// A table standing in for the kernel: matches either direction.
    struct Table(Vec<Entry>);
    impl Lookup for Table {
        fn get(&mut self, tuple: &Tuple) -> Result<Option<Entry>, CtError> {
            Ok(self
                .0
                .iter()
                .find(|e| e.orig == *tuple || e.reply == *tuple)
                .copied())
        }
    }

    #[test]
    fn nat_is_read_from_both_views_of_a_service_connection() {
        let client = t("10.0.0.1", 40000, "10.96.0.10", 80);
        let e = Entry {
            orig: client,
            reply: t("10.0.1.7", 5432, "10.0.0.1", 40000),
        };
        let mut table = Table(vec![e]);
        assert_eq!(
            table.nat_of(&client).expect("lookup"),
            Nat::Before {
                backend: ("10.0.1.7".parse().expect("ip"), 5432)
            },
            "the client's veth sees the ClusterIP: the reply tuple names the backend"
        );
        let backend_view = t("10.0.0.1", 40000, "10.0.1.7", 5432);
        assert_eq!(
            table.nat_of(&backend_view).expect("lookup"),
            Nat::After {
                client: ("10.0.0.1".parse().expect("ip"), 40000),
                addressed: ("10.96.0.10".parse().expect("ip"), 80),
            },
            "the backend's veth sees the translated tuple"
        );
        let plain = t("10.0.0.1", 40001, "10.0.1.7", 5432);
        let mut table = Table(vec![Entry {
            orig: plain,
            reply: plain.inverse(),
        }]);
        assert_eq!(table.nat_of(&plain).expect("lookup"), Nat::None);
        assert_eq!(
            Table(Vec::new()).nat_of(&plain).expect("lookup"),
            Nat::None,
            "untracked: nothing guessed"
        );
    }
}
