//! The lab's servers: tiny listeners standing for the pods' containers, the
//! node's daemons (kubelet, etcd, sshd — banners only, nothing real behind
//! them), the cloud's metadata API and cluster DNS. Each runs on a thread
//! that entered its network namespace; all stop when [`Servers`] is dropped.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::sys;
use crate::world::{Proto, World, METADATA_IP4, METADATA_IP6, NODE_PORTS};

/// What a TCP listener answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An HTTP service in a pod; the body names the pod.
    App,
    /// PostgreSQL stand-in.
    Database,
    Dns,
    Kubelet,
    Etcd,
    Sshd,
    Metadata,
}

/// Every server thread of the lab.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts every listener of `world` and returns once all are bound.
    pub fn start(world: &World) -> Result<Self> {
        let mut s = Servers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for p in &world.pods {
            let ns = world.pod_ns(p);
            for (_, port, proto) in &p.ports {
                let role = match (*port, *proto) {
                    (53, Proto::Udp) => {
                        s.udp_dns(&ns, world.clone())?;
                        continue;
                    }
                    (53, Proto::Tcp) => Role::Dns,
                    (5432, _) => Role::Database,
                    _ => Role::App,
                };
                s.tcp(&ns, *port, role, world.clone(), p.id())?;
            }
        }
        for (port, _) in NODE_PORTS {
            let role = match port {
                10250 => Role::Kubelet,
                2379 => Role::Etcd,
                _ => Role::Sshd,
            };
            s.tcp(
                &world.node_ns(),
                port,
                role,
                world.clone(),
                world.node_name(),
            )?;
        }
        s.tcp(
            &world.cloud_ns(),
            80,
            Role::Metadata,
            world.clone(),
            world.node_name(),
        )?;
        Ok(s)
    }

    /// A dual-stack TCP listener on `[::]:port` inside `ns`.
    fn tcp(&mut self, ns: &str, port: u16, role: Role, world: World, who: String) -> Result<()> {
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let ns_name = ns.to_string();
        self.threads.push(std::thread::spawn(move || {
            let bound = sys::enter(&ns_name).and_then(|()| {
                let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
                    .with_context(|| format!("bind [::]:{port} in {ns_name}"))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let l = match bound {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        let _ = serve_tcp(s, peer, role, &world, &who);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5))
            .context("a listener thread did not start")?
    }

    /// Cluster DNS over UDP on `[::]:53` inside `ns`.
    fn udp_dns(&mut self, ns: &str, world: World) -> Result<()> {
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let ns_name = ns.to_string();
        self.threads.push(std::thread::spawn(move || {
            let bound = sys::enter(&ns_name).and_then(|()| {
                let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 53))
                    .with_context(|| format!("bind udp [::]:53 in {ns_name}"))?;
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(s)
            });
            let s = match bound {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = s.recv_from(&mut buf) {
                    if let Some(reply) = dns::answer(&world, &buf[..n]) {
                        let _ = s.send_to(&reply, peer);
                    }
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5))
            .context("the DNS thread did not start")?
    }

    /// Stops every listener and waits for the threads (sockets closed).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve_tcp(
    mut s: TcpStream,
    peer: SocketAddr,
    role: Role,
    world: &World,
    who: &str,
) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    if role == Role::Sshd {
        // sshd speaks first (RFC 4253 section 4.2).
        s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")?;
    }
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let req = &buf[..n];
    let reply: Vec<u8> = match role {
        Role::Dns => {
            // DNS over TCP: two-byte length, then the message (RFC 1035 4.2.2).
            match req.get(2..).and_then(|q| dns::answer(world, q)) {
                Some(a) => {
                    let mut out = (a.len() as u16).to_be_bytes().to_vec();
                    out.extend(a);
                    out
                }
                None => Vec::new(),
            }
        }
        Role::App => http(200, &format!("hello from {who}, {peer}\n")),
        Role::Database => format!("ledger-db: 1842 rows for {peer}\n").into_bytes(),
        Role::Kubelet => http(401, "Unauthorized\n"),
        Role::Etcd => http(
            200,
            "{\"etcdserver\":\"3.5.16\",\"etcdcluster\":\"3.5.0\"}\n",
        ),
        Role::Sshd => Vec::new(),
        Role::Metadata => {
            let path = String::from_utf8_lossy(req)
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            if path.starts_with("/latest/meta-data/iam/security-credentials/") {
                http(
                    200,
                    "{\"Code\":\"Success\",\"AccessKeyId\":\"ASIALABEXAMPLE0NODE\",\"SecretAccessKey\":\"(lab: not a real key)\"}\n",
                )
            } else {
                http(200, &format!("i-0lab{}\n", who.len()))
            }
        }
    };
    s.write_all(&reply)?;
    s.shutdown(std::net::Shutdown::Both)
}

fn http(code: u16, body: &str) -> Vec<u8> {
    let reason = if code == 200 { "OK" } else { "Unauthorized" };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Just enough DNS (RFC 1035) for `<service>.<namespace>.svc.cluster.local`
/// A and AAAA questions, answered from the lab's Services.
pub mod dns {
    use super::*;

    pub const A: u16 = 1;
    pub const AAAA: u16 = 28;

    /// A standard query with recursion desired.
    pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.trim_end_matches('.').split('.') {
            m.push(label.len() as u8);
            m.extend(label.as_bytes());
        }
        m.push(0);
        m.extend(qtype.to_be_bytes());
        m.extend(1u16.to_be_bytes());
        m
    }

    /// (name, qtype, end of the question section)
    fn question(msg: &[u8]) -> Option<(String, u16, usize)> {
        let mut i = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*msg.get(i)?);
            i += 1;
            if len == 0 {
                break;
            }
            if len > 63 {
                return None; // compression is not valid in a question here
            }
            labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_lowercase());
            i += len;
        }
        let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
        Some((labels.join("."), qtype, i + 4))
    }

    /// The reply to `msg`, or None when it is not a query we can parse.
    pub fn answer(world: &World, msg: &[u8]) -> Option<Vec<u8>> {
        if msg.len() < 12 || msg[2] & 0x80 != 0 {
            return None;
        }
        let (name, qtype, end) = question(msg)?;
        let ip = world
            .services
            .iter()
            .find(|s| name == format!("{}.{}.svc.cluster.local", s.name, s.namespace))
            .and_then(|s| match qtype {
                A => Some(IpAddr::V4(s.ip4)),
                AAAA => Some(IpAddr::V6(s.ip6)),
                _ => None,
            });
        let mut r = msg[..end].to_vec();
        r[2] = 0x81; // QR, RD
        r[3] = if ip.is_some() { 0x80 } else { 0x83 }; // RA; NXDOMAIN when unknown
        r[6..8].copy_from_slice(&u16::from(ip.is_some()).to_be_bytes());
        r[8..12].fill(0);
        if let Some(ip) = ip {
            r.extend([0xc0, 12]); // pointer to the question's name
            r.extend(qtype.to_be_bytes());
            r.extend(1u16.to_be_bytes());
            r.extend(30u32.to_be_bytes());
            let data = match ip {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            r.extend((data.len() as u16).to_be_bytes());
            r.extend(data);
        }
        Some(r)
    }

    /// The first A/AAAA answer of a reply to query `id`.
    pub fn parse_answer(id: u16, msg: &[u8]) -> Option<IpAddr> {
        if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
            return None;
        }
        if u16::from_be_bytes([msg[6], msg[7]]) == 0 {
            return None;
        }
        let (_, _, mut i) = question(msg)?;
        // Name: a pointer (2 bytes) in our replies.
        i += 2;
        let rtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
        let len = usize::from(u16::from_be_bytes([*msg.get(i + 8)?, *msg.get(i + 9)?]));
        let data = msg.get(i + 10..i + 10 + len)?;
        match (rtype, len) {
            (A, 4) => Some(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (AAAA, 16) => {
                let b: [u8; 16] = data.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => None,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn resolves_services_in_both_families_and_refuses_the_rest() {
            let w = World::new("swlab");
            let q = query(7, "payments-api.payments.svc.cluster.local", A);
            let r = answer(&w, &q).expect("a reply");
            assert_eq!(parse_answer(7, &r), Some("10.97.0.20".parse().unwrap()));
            let q = query(8, "kube-dns.kube-system.svc.cluster.local", AAAA);
            let r = answer(&w, &q).expect("a reply");
            assert_eq!(parse_answer(8, &r), Some("fd97::10".parse().unwrap()));
            let q = query(9, "nope.payments.svc.cluster.local", A);
            let r = answer(&w, &q).expect("a reply");
            assert_eq!(r[3] & 0x0f, 3, "unknown names get NXDOMAIN");
            assert_eq!(parse_answer(9, &r), None);
            assert_eq!(answer(&w, &r), None, "replies are not answered");
        }
    }
}

/// The metadata API addresses, for clients.
pub fn metadata_ip(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(METADATA_IP6)
    } else {
        IpAddr::V4(METADATA_IP4)
    }
}
