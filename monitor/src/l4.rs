//! The transport protocols with ports (TCP, UDP, SCTP) and a pod's named
//! container ports: the one parser of a Kubernetes `protocol` field, shared
//! by the policy kinds (`netpol`, `segpolicy`), the flow-report readers and
//! the suggestions.

use std::fmt;

use k8s_openapi::api::core::v1::PodSpec;

/// The protocols a Kubernetes port can name ("The protocol (TCP, UDP, or
/// SCTP) which traffic must match", NetworkPolicyPort; the same three in
/// ContainerPort, ServicePort and flow reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    Tcp,
    Udp,
    Sctp,
}

impl L4 {
    /// Exactly `TCP`, `UDP` or `SCTP` (the API server rejects anything
    /// else, case included; flow reports write these); `None` for
    /// protocols without ports (ICMP, numbers) and anything else.
    pub fn parse(s: &str) -> Option<L4> {
        match s {
            "TCP" => Some(L4::Tcp),
            "UDP" => Some(L4::Udp),
            "SCTP" => Some(L4::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            L4::Tcp => "TCP",
            L4::Udp => "UDP",
            L4::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for L4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named container port of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerPort<'a> {
    pub name: &'a str,
    pub protocol: L4,
    pub port: u16,
}

/// The named ports of a pod's `containers` (not init containers: their
/// ports are not served while the pod runs), in order. ContainerPort.protocol
/// "Must be UDP, TCP, or SCTP. Defaults to "TCP"."; a port with another
/// protocol, or a number that is not a u16, is left out.
pub fn named_container_ports(spec: Option<&PodSpec>) -> impl Iterator<Item = ContainerPort<'_>> {
    spec.map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .flat_map(|c| c.ports.as_deref().unwrap_or_default())
        .filter_map(|p| {
            Some(ContainerPort {
                name: p.name.as_deref()?,
                port: u16::try_from(p.container_port).ok()?,
                protocol: L4::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_are_exact() {
        for (s, want) in [
            ("TCP", Some(L4::Tcp)),
            ("UDP", Some(L4::Udp)),
            ("SCTP", Some(L4::Sctp)),
            ("tcp", None),
            ("ICMP", None),
            ("6", None),
            ("", None),
        ] {
            assert_eq!(L4::parse(s), want, "{s:?}");
            if let Some(l4) = want {
                assert_eq!(l4.to_string(), s);
            }
        }
    }

    #[test]
    fn named_ports_of_containers_only_default_tcp() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "initContainers": [{"name": "i", "ports": [{"name": "init", "containerPort": 1}]}],
            "containers": [
                {"name": "a", "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"containerPort": 9090},
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"name": "odd", "containerPort": 70000},
                    {"name": "lower", "containerPort": 81, "protocol": "tcp"}
                ]},
                {"name": "b", "ports": [{"name": "sctp", "containerPort": 7, "protocol": "SCTP"}]}
            ]
        }))
        .expect("pod spec");
        let got: Vec<_> = named_container_ports(Some(&spec))
            .map(|p| (p.name, p.protocol, p.port))
            .collect();
        assert_eq!(
            got,
            [
                ("http", L4::Tcp, 8080),
                ("dns", L4::Udp, 53),
                ("sctp", L4::Sctp, 7)
            ]
        );
        assert_eq!(named_container_ports(None).count(), 0);
    }
}
