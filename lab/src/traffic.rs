//! The story the lab tells: who talks to whom, and what segwatch should say
//! about it. Each step opens real sockets from inside a pod's namespace.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::serve::{dns, metadata_ip};
use crate::sys;
use crate::world::{World, NODE_IP4, NODE_IP6};

/// Where a step goes.
#[derive(Clone, Copy, Debug)]
pub enum To {
    /// A pod (name prefix) on a port, by its pod IP.
    Pod(&'static str, u16),
    /// A Service ClusterIP (namespace, name, port).
    Service(&'static str, &'static str, u16),
    /// The node's own address.
    Node(u16),
    /// The cloud metadata API, HTTP on port 80.
    Metadata,
    /// A DNS question for `name` to the kube-dns Service.
    Dns { name: &'static str, tcp: bool },
}

/// One thing a pod does, and the violation kinds it must produce (none for
/// allowed traffic).
#[derive(Clone, Debug)]
pub struct Step {
    pub say: &'static str,
    pub from: &'static str,
    pub to: To,
    pub v6: bool,
    pub expect: &'static [&'static str],
}

/// What happened when a step ran.
#[derive(Clone, Debug)]
pub struct Done {
    pub step: Step,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// What the peer answered, in a few words.
    pub answer: String,
}

/// The lab's traffic, in the order it runs.
pub fn steps() -> Vec<Step> {
    let s = |say, from, to, v6, expect| Step {
        say,
        from,
        to,
        v6,
        expect,
    };
    use To::*;
    vec![
        s(
            "web looks up the payments API (cluster DNS)",
            "web-5c8f7d9b6-2xkqp",
            Dns {
                name: "payments-api.payments.svc.cluster.local",
                tcp: false,
            },
            false,
            &[],
        ),
        s(
            "web calls the payments API through its Service",
            "web-5c8f7d9b6-2xkqp",
            Service("payments", "payments-api", 8443),
            false,
            &[],
        ),
        s(
            "second web replica looks it up over IPv6 (DNS over TCP)",
            "web-5c8f7d9b6-m8w4z",
            Dns {
                name: "payments-api.payments.svc.cluster.local",
                tcp: true,
            },
            true,
            &[],
        ),
        s(
            "second web replica calls the payments API over IPv6",
            "web-5c8f7d9b6-m8w4z",
            Service("payments", "payments-api", 8443),
            true,
            &[],
        ),
        s(
            "payments API queries its ledger database",
            "payments-api",
            Pod("ledger-db-0", 5432),
            false,
            &[],
        ),
        s(
            "web replicas talk to each other inside storefront",
            "web-5c8f7d9b6-2xkqp",
            Pod("web-5c8f7d9b6-m8w4z", 8080),
            true,
            &[],
        ),
        s(
            "metrics-server scrapes the kubelet",
            "metrics-server",
            Node(10250),
            false,
            &[],
        ),
        s(
            "the EBS CSI controller fetches node credentials (its job)",
            "ebs-csi-controller",
            Metadata,
            false,
            &[],
        ),
        s(
            "reporter looks around: what is payments-api?",
            "reporter",
            Dns {
                name: "payments-api.payments.svc.cluster.local",
                tcp: false,
            },
            false,
            &[],
        ),
        // payments' NetworkPolicies deny the next three, but nothing here
        // enforces them: segwatch sees the connections established anyway.
        s(
            "reporter reads the ledger database directly, across namespaces",
            "reporter",
            Pod("ledger-db-0", 5432),
            false,
            &["cross_namespace", "netpol_bypass"],
        ),
        s(
            "... and again over IPv6",
            "reporter",
            Pod("ledger-db-0", 5432),
            true,
            &["cross_namespace", "netpol_bypass"],
        ),
        s(
            "web skips the API and reads the ledger database itself",
            "web-5c8f7d9b6-2xkqp",
            Pod("ledger-db-0", 5432),
            true,
            &["cross_namespace", "netpol_bypass"],
        ),
        s(
            "reporter probes the node's sshd: can a pod reach the host's port 22?",
            "reporter",
            Node(22),
            false,
            &["host_access"],
        ),
        s(
            "reporter probes the kubelet API",
            "reporter",
            Node(10250),
            false,
            &["host_access"],
        ),
        s(
            "reporter probes etcd on the node over IPv6",
            "reporter",
            Node(2379),
            true,
            &["host_access"],
        ),
        s(
            "reporter asks the metadata API for the node's cloud credentials",
            "reporter",
            Metadata,
            false,
            &["metadata_api"],
        ),
    ]
}

/// Runs one step from inside the source pod's namespace.
pub fn run(world: &World, step: &Step) -> Result<Done> {
    let from = world.pod(step.from);
    let v6 = step.v6;
    let dns_ip = world.service("kube-system", "kube-dns").ip(v6);
    let (dst, request): (SocketAddr, Vec<u8>) = match step.to {
        To::Pod(name, port) => (
            SocketAddr::new(world.pod(name).ip(v6), port),
            request_for(port),
        ),
        To::Service(ns, name, port) => (
            SocketAddr::new(world.service(ns, name).ip(v6), port),
            request_for(port),
        ),
        To::Node(port) => {
            let ip = if v6 {
                IpAddr::V6(NODE_IP6)
            } else {
                IpAddr::V4(NODE_IP4)
            };
            (SocketAddr::new(ip, port), request_for(port))
        }
        To::Metadata => (
            SocketAddr::new(metadata_ip(v6), 80),
            b"GET /latest/meta-data/iam/security-credentials/swlab-node-role HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        To::Dns { name, tcp } => {
            let qtype = if v6 { dns::AAAA } else { dns::A };
            let id = 0x5a00 | (name.len() as u16 & 0xff);
            let q = dns::query(id, name, qtype);
            let dst = SocketAddr::new(dns_ip, 53);
            let ns = world.pod_ns(from);
            let (src, ip) = sys::in_netns(&ns, move || {
                if tcp {
                    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
                    msg.extend(&q);
                    let (src, reply) = tcp_exchange(dst, &msg)?;
                    Ok((src, reply.get(2..).and_then(|r| dns::parse_answer(id, r))))
                } else {
                    udp_exchange(dst, &q, id)
                }
            })?;
            let answer = match ip {
                Some(ip) => format!("{name} is {ip}"),
                None => format!("no answer for {name}"),
            };
            return Ok(Done {
                step: step.clone(),
                src,
                dst,
                answer,
            });
        }
    };
    let ns = world.pod_ns(from);
    let (src, reply) = sys::in_netns(&ns, move || tcp_exchange(dst, &request))?;
    Ok(Done {
        step: step.clone(),
        src,
        dst,
        answer: first_line(&reply),
    })
}

fn request_for(port: u16) -> Vec<u8> {
    match port {
        5432 => b"SELECT sum(amount) FROM ledger;\n".to_vec(),
        22 => b"SSH-2.0-lab-probe\r\n".to_vec(),
        _ => b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n".to_vec(),
    }
}

/// Connects, sends, half-closes and reads to EOF (bounded by timeouts).
fn tcp_exchange(dst: SocketAddr, msg: &[u8]) -> Result<(SocketAddr, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
        .with_context(|| format!("connect to {dst}"))?;
    let src = s.local_addr()?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(msg)?;
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    Ok((src, reply))
}

fn udp_exchange(dst: SocketAddr, msg: &[u8], id: u16) -> Result<(SocketAddr, Option<IpAddr>)> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(dst)?;
    let src = s.local_addr()?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    // UDP may lose the first datagram while neighbours resolve; retry once.
    for _ in 0..2 {
        s.send(msg)?;
        let mut buf = [0u8; 1500];
        if let Ok(n) = s.recv(&mut buf) {
            return Ok((src, dns::parse_answer(id, &buf[..n])));
        }
    }
    bail!("no DNS reply from {dst}")
}

fn first_line(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "(connected, no reply)".to_string()
    } else if line.len() > 60 {
        format!("{}…", &line[..60])
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_names_pods_and_services_that_exist() {
        let w = World::new("swlab");
        for s in steps() {
            let _ = w.pod(s.from);
            match s.to {
                To::Pod(p, _) => {
                    let _ = w.pod(p);
                }
                To::Service(ns, name, _) => {
                    let _ = w.service(ns, name);
                }
                _ => {}
            }
        }
    }
}
