//! What the probe tries: targets, the well-known ports and addresses it
//! learns by itself, and the `--targets` file.
//!
//! `--targets` format (CONTRACT.md "New subcommands"): one target a line,
//! `HOST:PORT[/tcp|/udp]`, IPv6 in brackets, `#` starts a comment. A bad
//! line is an error naming `file:line`; the good lines are still probed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Transport of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    /// The flow report's / policy's protocol name.
    pub fn upper(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        }
    }
}

/// What a target stands for: decides which control it is evidence for and
/// how it is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// An address of a node (its admin ports, NodePorts).
    Node,
    /// A cloud metadata endpoint.
    Metadata,
    /// A pod of another namespace on a declared container port.
    Pod,
    /// A Service's ClusterIP on a declared port.
    Service,
    /// A `--targets` line (judged by what its address resolves to).
    Listed,
}

/// One address, port and transport to try.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub address: IpAddr,
    pub port: u16,
    pub transport: Transport,
    pub kind: TargetKind,
    /// Who or what it is, for humans: `node/n1 kubelet`, `AWS/GCP/OpenStack
    /// metadata`, `shop/web-0`, `targets.txt:4`.
    pub name: String,
}

impl Target {
    /// `10.0.0.1:10250/tcp`, `[fd00:ec2::254]:80/tcp`.
    pub fn spec(&self) -> String {
        format!(
            "{}/{}",
            SocketAddr::new(self.address, self.port),
            self.transport.as_str()
        )
    }

    /// The identity the dedup works on (the first name wins).
    pub fn key(&self) -> (IpAddr, u16, Transport) {
        (self.address, self.port, self.transport)
    }
}

/// Node ports every node is probed on, with what usually listens there.
pub const NODE_ADMIN_PORTS: &[(u16, &str)] = &[
    (10250, "kubelet API"),
    (10255, "kubelet read-only API"),
    (2379, "etcd client"),
    (2380, "etcd peer"),
    (22, "sshd"),
    (6443, "API server"),
];

/// Cloud metadata endpoints (TCP 80), and whether pods are meant to reach
/// them. EKS Pod Identity (169.254.170.23) exists to serve every pod its
/// credentials (AWS EKS user guide, "Pod Identity agent"); the others hand
/// out the node's identity and must be blocked unless a policy allows them.
pub const METADATA_ENDPOINTS: &[(IpAddr, &str, bool)] = &[
    (
        IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
        "AWS/GCP/OpenStack instance metadata",
        false,
    ),
    (
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
        "AWS instance metadata (IPv6)",
        false,
    ),
    (
        IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
        "Azure WireServer",
        false,
    ),
    (
        IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
        "Alibaba Cloud metadata",
        false,
    ),
    (
        IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
        "ECS task metadata",
        false,
    ),
    (
        IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
        "EKS Pod Identity agent",
        true,
    ),
];

/// The port metadata endpoints serve on.
pub const METADATA_PORT: u16 = 80;

/// Is `ip` one of the [`METADATA_ENDPOINTS`] pods are meant to reach?
pub fn metadata_meant_reachable(ip: IpAddr) -> Option<bool> {
    METADATA_ENDPOINTS
        .iter()
        .find(|(a, _, _)| *a == ip)
        .map(|&(_, _, ok)| ok)
}

/// Every metadata endpoint as a target.
pub fn metadata_targets() -> Vec<Target> {
    METADATA_ENDPOINTS
        .iter()
        .map(|&(address, name, _)| Target {
            address,
            port: METADATA_PORT,
            transport: Transport::Tcp,
            kind: TargetKind::Metadata,
            name: name.to_owned(),
        })
        .collect()
}

/// A line of the `--targets` file that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct TargetLineError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Parses one target: `HOST:PORT[/tcp|/udp]`.
pub fn parse_target(s: &str) -> Result<(IpAddr, u16, Transport), String> {
    let (addr, transport) = match s.rsplit_once('/') {
        Some((a, t)) => {
            let t = match t.to_ascii_lowercase().as_str() {
                "tcp" => Transport::Tcp,
                "udp" => Transport::Udp,
                _ => return Err(format!("`{s}`: protocol `{t}` is not tcp or udp")),
            };
            (a, t)
        }
        None => (s, Transport::Tcp),
    };
    let sock: SocketAddr = addr.parse().map_err(|_| {
        if addr.matches(':').count() > 1 && !addr.starts_with('[') {
            format!("`{s}`: not HOST:PORT (an IPv6 address goes in brackets: [fd00::1]:80)")
        } else {
            format!("`{s}`: not HOST:PORT with HOST an IP address and PORT 1-65535")
        }
    })?;
    if sock.port() == 0 {
        return Err(format!("`{s}`: port 0 cannot be probed"));
    }
    Ok((sock.ip(), sock.port(), transport))
}

/// Parses a `--targets` file's text: the targets of the good lines and an
/// error per bad line (`file` only names it in messages).
pub fn parse_targets(file: &Path, text: &str) -> (Vec<Target>, Vec<TargetLineError>) {
    let name = file.display().to_string();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match parse_target(line) {
            Ok((address, port, transport)) => out.push(Target {
                address,
                port,
                transport,
                kind: TargetKind::Listed,
                name: format!("{name}:{}", i + 1),
            }),
            Err(message) => errors.push(TargetLineError {
                file: name.clone(),
                line: i + 1,
                message,
            }),
        }
    }
    (out, errors)
}

/// Keeps the first target of each (address, port, transport).
pub fn dedup(targets: Vec<Target>) -> Vec<Target> {
    let mut seen = std::collections::HashSet::new();
    targets
        .into_iter()
        .filter(|t| seen.insert(t.key()))
        .collect()
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.spec(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_lines_parse_with_comments_brackets_and_protocols() {
        let text = "# admin ports\n10.0.0.1:10250\n\n[fd00::1]:53/udp  # dns\n10.0.0.2:22/TCP\n";
        let (t, e) = parse_targets(Path::new("t.txt"), text);
        assert!(e.is_empty(), "{e:?}");
        let specs: Vec<String> = t.iter().map(Target::spec).collect();
        assert_eq!(
            specs,
            ["10.0.0.1:10250/tcp", "[fd00::1]:53/udp", "10.0.0.2:22/tcp"]
        );
        assert_eq!(t[1].name, "t.txt:4", "a listed target names its line");
    }

    #[test]
    fn garbage_lines_are_errors_naming_file_and_line_and_the_rest_is_kept() {
        let text = "10.0.0.1:22\nnot a target\nfd00::1:80\n10.0.0.1:0\n10.0.0.1:80/icmp\nexample.com:80\n10.0.0.3:70000\n10.0.0.4:443/udp\n";
        let (t, e) = parse_targets(Path::new("bad.txt"), text);
        assert_eq!(
            t.iter().map(Target::spec).collect::<Vec<_>>(),
            ["10.0.0.1:22/tcp", "10.0.0.4:443/udp"],
            "good lines around bad ones are kept"
        );
        let lines: Vec<usize> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7]);
        let msgs: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert!(msgs[0].starts_with("bad.txt:2: `not a target`"), "{msgs:?}");
        assert!(msgs[1].contains("in brackets"), "{msgs:?}");
        assert!(msgs[2].contains("port 0"), "{msgs:?}");
        assert!(msgs[3].contains("`icmp` is not tcp or udp"), "{msgs:?}");
        assert!(msgs.iter().all(|m| !m.contains('\n')), "one line each");
    }

    #[test]
    fn dedup_keeps_the_first_name() {
        let mk = |name: &str, t| Target {
            address: "10.0.0.1".parse().expect("ip"),
            port: 22,
            transport: t,
            kind: TargetKind::Node,
            name: name.into(),
        };
        let d = dedup(vec![
            mk("a", Transport::Tcp),
            mk("b", Transport::Tcp),
            mk("c", Transport::Udp),
        ]);
        assert_eq!(
            d.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
    }

    #[test]
    fn only_eks_pod_identity_is_meant_reachable() {
        let meant: Vec<String> = METADATA_ENDPOINTS
            .iter()
            .filter(|e| e.2)
            .map(|e| e.0.to_string())
            .collect();
        assert_eq!(meant, ["169.254.170.23"]);
        assert_eq!(metadata_targets().len(), 6);
        assert_eq!(
            metadata_targets()[1].spec(),
            "[fd00:ec2::254]:80/tcp",
            "IPv6 metadata address"
        );
    }
}
