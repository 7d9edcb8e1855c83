//! Kubernetes objects for the tests' inventory files, shaped as the API
//! server returns them (only the fields segwatch reads).
//!
//! ```text
//!   PodObject::new("shop", "web-0")
//!       .labels(json!({"app": "web"}))      metadata.labels
//!       .owner("StatefulSet", "web")         metadata.ownerReferences (controller)
//!       .service_account("web")              spec.serviceAccountName
//!       .ports(json!([{"containerPort": 80}]))  spec.containers[0].ports
//!       .ips(&pod)                           status.podIP / podIPs (IPv4, IPv6)
//!       .json()
//! ```

use std::net::IpAddr;

use serde_json::{json, Value};

use crate::Pod;

/// A Namespace with the `kubernetes.io/metadata.name` label the API server
/// sets on every namespace.
pub fn namespace_object(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

/// A running Pod on node `n1`, built field by field.
#[derive(Debug, Clone)]
pub struct PodObject {
    namespace: String,
    name: String,
    labels: Value,
    owner: Option<(String, String)>,
    service_account: Option<String>,
    ports: Value,
    ips: Vec<IpAddr>,
}

impl PodObject {
    /// A pod without labels, owner, service account, ports or addresses.
    pub fn new(namespace: &str, name: &str) -> Self {
        PodObject {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels: json!({}),
            owner: None,
            service_account: None,
            ports: json!([]),
            ips: Vec::new(),
        }
    }

    /// `metadata.labels` (a JSON object).
    pub fn labels(mut self, labels: Value) -> Self {
        self.labels = labels;
        self
    }

    /// The controller owner reference (`apps/v1` kind and name).
    pub fn owner(mut self, kind: &str, name: &str) -> Self {
        self.owner = Some((kind.to_owned(), name.to_owned()));
        self
    }

    /// `spec.serviceAccountName` (absent unless set).
    pub fn service_account(mut self, name: &str) -> Self {
        self.service_account = Some(name.to_owned());
        self
    }

    /// `ports` of the pod's one container (a JSON array of container ports).
    pub fn ports(mut self, ports: Value) -> Self {
        self.ports = ports;
        self
    }

    /// Declared TCP ports of the pod's container, by number.
    pub fn tcp_ports(self, ports: &[u16]) -> Self {
        let ports: Vec<Value> = ports.iter().map(|p| json!({"containerPort": p})).collect();
        self.ports(Value::Array(ports))
    }

    /// The test pod's addresses, IPv4 first, then IPv6.
    pub fn ips(self, pod: &Pod) -> Self {
        self.ip(pod.ip4).ip(pod.ip6)
    }

    /// One more address (the first one is `status.podIP`).
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }

    /// The object.
    pub fn json(&self) -> Value {
        let mut metadata = json!({"name": self.name, "namespace": self.namespace,
                                  "labels": self.labels});
        if let Some((kind, name)) = &self.owner {
            metadata["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind,
                "name": name, "uid": format!("uid-{}", self.name), "controller": true}]);
        }
        let mut spec = json!({"nodeName": "n1",
                              "containers": [{"name": "c", "image": "x", "ports": self.ports}]});
        if let Some(sa) = &self.service_account {
            spec["serviceAccountName"] = json!(sa);
        }
        let pod_ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
        let mut status = json!({"phase": "Running", "podIPs": pod_ips});
        if let Some(first) = self.ips.first() {
            status["podIP"] = json!(first.to_string());
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec,
               "status": status})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_carries_what_was_set_and_nothing_else() {
        let p = PodObject::new("shop", "web-0")
            .labels(json!({"app": "web"}))
            .owner("StatefulSet", "web")
            .service_account("web")
            .tcp_ports(&[80])
            .ip("10.0.0.2".parse().expect("ip"))
            .ip("fd00::2".parse().expect("ip"))
            .json();
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
        assert_eq!(p["spec"]["serviceAccountName"], "web");
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
        assert_eq!(p["status"]["podIP"], "10.0.0.2");
        assert_eq!(p["status"]["podIPs"][1]["ip"], "fd00::2");
        let bare = PodObject::new("shop", "x").json();
        assert!(bare["metadata"].get("ownerReferences").is_none());
        assert!(bare["spec"].get("serviceAccountName").is_none());
        assert!(bare["status"].get("podIP").is_none());
    }
}
