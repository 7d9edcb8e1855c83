//! Which interfaces to watch, and the netlink feed that says when they come
//! and go.
//!
//! ```text
//!  RTMGRP_LINK multicast ─┐
//!                         ├─► LinkEvent::{Up, Gone} ─► daemon attaches / detaches
//!  RTM_GETLINK dump ──────┘   (subscribed before the dump: no veth is missed)
//! ```

use std::ffi::{CStr, CString};

use aya::programs::tc::SchedClassifierLinkId;
use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{AsyncSocket as _, SocketAddr};
use tokio::sync::mpsc;

/// The two program attachments of one interface.
pub struct Attachment {
    pub ids: Vec<(&'static str, SchedClassifierLinkId)>,
}

/// Interface index by name, `None` when there is no such interface.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Interface name by index, `None` when it is gone.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// `*` matches any run of characters, `?` exactly one; everything else is
/// literal (interface names have no path separators to care about).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// The `--interface` flags: names and globs, or (none given) every veth.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    patterns: Vec<String>,
}

impl Selector {
    pub fn new(patterns: Vec<String>) -> Self {
        Selector { patterns }
    }

    /// No `--interface` given: every veth.
    pub fn is_default(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Names given literally (not globs): they must exist at start.
    pub fn literal_names(&self) -> impl Iterator<Item = &str> {
        self.patterns
            .iter()
            .filter(|p| !is_glob(p))
            .map(String::as_str)
    }

    /// Whether an interface of this name and link kind is to be watched.
    pub fn wants(&self, name: &str, kind: Option<&str>) -> bool {
        if self.patterns.is_empty() {
            return kind == Some("veth");
        }
        self.patterns.iter().any(|p| glob_match(p, name))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// An interface exists (from the initial dump, or it appeared/changed).
    Up {
        index: u32,
        name: String,
        kind: Option<String>,
    },
    /// An interface was deleted (or moved to another network namespace).
    Gone { index: u32, name: String },
    /// Every interface present at start has been sent.
    DumpDone,
}

fn describe(msg: &LinkMessage) -> (u32, Option<String>, Option<String>) {
    let mut name = None;
    let mut kind = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(match k {
                            InfoKind::Veth => "veth".to_string(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    (msg.header.index, name, kind)
}

/// Feeds `tx` with every interface now present, then with every change,
/// until `tx` closes. Fails only if netlink cannot be opened at all.
pub async fn watch(tx: mpsc::Sender<LinkEvent>) -> std::io::Result<()> {
    // Subscribe first, then dump: a veth created in between shows up in
    // both, and attaching is idempotent.
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))?;
    tokio::spawn(conn);

    let (dump_conn, handle, _) = rtnetlink::new_connection()?;
    let dump_task = tokio::spawn(dump_conn);
    let mut links = handle.link().get().execute();
    loop {
        match links.try_next().await {
            Ok(Some(msg)) => {
                let (index, name, kind) = describe(&msg);
                if let Some(name) = name {
                    if tx.send(LinkEvent::Up { index, name, kind }).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(None) => break,
            Err(e) => return Err(std::io::Error::other(format!("netlink link dump: {e}"))),
        }
    }
    drop(handle);
    dump_task.abort();
    if tx.send(LinkEvent::DumpDone).await.is_err() {
        return Ok(());
    }

    while let Some((msg, _)) = messages.next().await {
        let event = match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                let (index, name, kind) = describe(&m);
                name.map(|name| LinkEvent::Up { index, name, kind })
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                let (index, name, _) = describe(&m);
                Some(LinkEvent::Gone {
                    index,
                    name: name.unwrap_or_default(),
                })
            }
            _ => None,
        };
        if let Some(ev) = event {
            if tx.send(ev).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("veth*", "veth1a2b"));
        assert!(glob_match("*", ""));
        assert!(glob_match("cali?x", "cali1x"));
        assert!(!glob_match("cali?x", "cali12x"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(glob_match("lxc*_h", "lxc12_h"));
        assert!(!glob_match("lxc*_h", "lxc12_hx"));
    }

    #[test]
    fn default_selector_takes_every_veth_only() {
        let s = Selector::default();
        assert!(s.wants("anything", Some("veth")));
        assert!(!s.wants("eth0", None));
        assert!(!s.wants("br0", Some("bridge")));
        let s = Selector::new(vec!["eth*".into(), "lo".into()]);
        assert!(s.wants("eth0", None));
        assert!(s.wants("lo", None));
        assert!(!s.wants("veth1", Some("veth")));
        assert_eq!(s.literal_names().collect::<Vec<_>>(), vec!["lo"]);
    }
}
