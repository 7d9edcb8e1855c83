//! What the metric bookkeeping ([`crate::observe`]) asks the index: which
//! ports the cluster declares (they keep their number in the per-source
//! port budget), and whether the node or Service a series names still
//! exists (its series end like a gone workload's).

use std::collections::HashSet;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ClusterIndex;

/// `(port, protocol)` pairs the cluster declares.
pub type DeclaredPorts = HashSet<(u16, String)>;

impl ClusterIndex {
    /// Ports some pod declares (`containerPorts`, `hostPort`), a Service
    /// declares (`port`, numeric `targetPort`, `nodePort`), or a hostAccess
    /// rule of the SegmentationPolicy names as a single port. Bounded by
    /// the cluster's objects, never by traffic.
    pub fn declared_ports(&self) -> DeclaredPorts {
        let mut out = DeclaredPorts::new();
        let proto = |p: Option<&String>| p.cloned().unwrap_or_else(|| "TCP".into());
        for pod in self.pods.values() {
            let containers = pod.spec.as_ref().map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            });
            for c in containers.into_iter().flatten() {
                for p in c.ports.iter().flatten() {
                    for n in [Some(p.container_port), p.host_port].into_iter().flatten() {
                        if let Ok(n) = u16::try_from(n) {
                            out.insert((n, proto(p.protocol.as_ref())));
                        }
                    }
                }
            }
        }
        for svc in self.services.values() {
            for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                let target = match &p.target_port {
                    Some(IntOrString::Int(n)) => Some(*n),
                    _ => None,
                };
                for n in [Some(p.port), target, p.node_port].into_iter().flatten() {
                    if let Ok(n) = u16::try_from(n) {
                        out.insert((n, proto(p.protocol.as_ref())));
                    }
                }
            }
        }
        for (port, proto) in self.policy.host_ports_named() {
            out.insert((port, proto.to_owned()));
        }
        out
    }

    /// Is this node known (a Node object, or this agent's own node)?
    pub fn node_is_live(&self, name: &str) -> bool {
        name.is_empty() || name == self.cfg.node_name || self.nodes.contains_key(name)
    }

    /// Is this Service known?
    pub fn service_is_live(&self, namespace: &str, name: &str) -> bool {
        self.services
            .contains_key(&(namespace.to_owned(), name.to_owned()))
    }
}
