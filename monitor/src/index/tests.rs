//! The index driven through apply/delete/reset, exactly as the sources do.

use super::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    NodeAddress, NodeSpec, NodeStatus, PodIP, PodSpec, PodStatus, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

fn labels(s: &str) -> Labels {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').expect("k=v");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn meta(ns: Option<&str>, name: &str, l: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: ns.map(str::to_owned),
        name: Some(name.to_owned()),
        labels: Some(labels(l)),
        ..Default::default()
    }
}

fn owner(kind: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        controller: Some(true),
        ..Default::default()
    }
}

fn mk_ns(name: &str, l: &str) -> Object {
    Object::Namespace(Namespace {
        metadata: meta(None, name, l),
        ..Default::default()
    })
}

fn mk_pod(ns: &str, name: &str, l: &str, ips: &[&str]) -> Pod {
    Pod {
        metadata: meta(Some(ns), name, l),
        spec: Some(PodSpec {
            service_account_name: Some(format!("{name}-sa")),
            node_name: Some("n1".into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ips.first().map(|s| s.to_string()),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            ..Default::default()
        }),
    }
}

fn owned(mut p: Pod, kind: &str, name: &str) -> Pod {
    p.metadata.owner_references = Some(vec![owner(kind, name)]);
    p
}

fn mk_svc(ns: &str, name: &str, selector: &str, ips: &[&str]) -> Object {
    Object::Service(Service {
        metadata: meta(Some(ns), name, ""),
        spec: Some(ServiceSpec {
            cluster_ip: ips.first().map(|s| s.to_string()),
            cluster_ips: Some(ips.iter().map(|s| s.to_string()).collect()),
            selector: Some(labels(selector)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn mk_node(name: &str, addrs: &[&str], cidrs: &[&str]) -> Object {
    Object::Node(Node {
        metadata: meta(None, name, ""),
        spec: Some(NodeSpec {
            pod_cidrs: Some(cidrs.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(
                addrs
                    .iter()
                    .map(|a| NodeAddress {
                        type_: "InternalIP".into(),
                        address: a.to_string(),
                    })
                    .chain([NodeAddress {
                        type_: "Hostname".into(),
                        address: name.into(),
                    }])
                    .collect(),
            ),
            ..Default::default()
        }),
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn index() -> ClusterIndex {
    ClusterIndex::new(IndexConfig {
        node_name: "local".into(),
        node_ips: vec![ip("192.0.2.10")],
        ..Default::default()
    })
}

fn pod_at<'a>(idx: &'a ClusterIndex, addr: &str) -> Option<&'a PodEntry> {
    match idx.resolve(ip(addr)) {
        Resolved::Pod(p) => Some(p),
        _ => None,
    }
}

#[test]
fn pod_ips_v4_and_v6_attribute_to_the_pod() {
    let mut idx = index();
    idx.apply(mk_ns("shop", "tier=front"));
    idx.apply(Object::Pod(mk_pod(
        "shop",
        "web-0",
        "app=web",
        &["10.1.0.5", "fd00:1::5"],
    )));
    for addr in ["10.1.0.5", "fd00:1::5"] {
        let p = pod_at(&idx, addr).unwrap_or_else(|| panic!("{addr} must be the pod"));
        assert_eq!((&*p.namespace, &*p.name), ("shop", "web-0"));
        assert_eq!(p.service_account.as_deref(), Some("web-0-sa"));
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(p.workload, None, "a pod without owner has no workload");
        assert_eq!(p.workload_label(), BARE_POD_WORKLOAD);
    }
}

#[test]
fn pod_ip_change_and_delete() {
    let mut idx = index();
    idx.apply(Object::Pod(mk_pod("a", "p", "", &["10.1.0.5"])));
    idx.apply(Object::Pod(mk_pod("a", "p", "", &["10.1.0.6"])));
    assert!(
        pod_at(&idx, "10.1.0.5").is_none(),
        "the old IP is released on change"
    );
    assert!(pod_at(&idx, "10.1.0.6").is_some(), "the new IP is the pod");
    idx.delete(ObjectKind::Pod, Some("a"), "p");
    assert!(pod_at(&idx, "10.1.0.6").is_none(), "a deleted pod is gone");
    assert!(!idx.workload_is_live("a", BARE_POD_WORKLOAD));
}

#[test]
fn reused_ip_goes_to_the_remaining_pod() {
    let mut idx = index();
    idx.apply(Object::Pod(mk_pod("a", "old", "", &["10.1.0.7"])));
    idx.apply(Object::Pod(mk_pod("a", "new", "", &["10.1.0.7"])));
    assert_eq!(
        pod_at(&idx, "10.1.0.7").map(|p| &*p.name),
        Some("new"),
        "the last pod applied wins"
    );
    idx.delete(ObjectKind::Pod, Some("a"), "new");
    assert_eq!(
        pod_at(&idx, "10.1.0.7").map(|p| &*p.name),
        Some("old"),
        "the other claimant takes over"
    );
    let mut done = mk_pod("a", "old", "", &["10.1.0.7"]);
    done.status.as_mut().expect("status").phase = Some("Succeeded".into());
    idx.apply(Object::Pod(done));
    assert!(
        pod_at(&idx, "10.1.0.7").is_none(),
        "a finished pod does not hold its IP"
    );
}

#[test]
fn owner_chain_replicaset_to_deployment_and_job_to_cronjob() {
    let mut idx = index();
    let rs_pod = owned(
        mk_pod(
            "shop",
            "web-7d9f-abcde",
            "app=web,pod-template-hash=7d9f",
            &["10.1.0.8"],
        ),
        "ReplicaSet",
        "web-7d9f",
    );
    idx.apply(Object::Pod(rs_pod.clone()));
    assert_eq!(
        pod_at(&idx, "10.1.0.8")
            .and_then(|p| p.workload.clone())
            .as_deref(),
        Some("Deployment/web"),
        "without the ReplicaSet object, the pod-template-hash names the Deployment"
    );
    // The ReplicaSet object says who really owns it.
    idx.apply(Object::ReplicaSet(ReplicaSet {
        metadata: ObjectMeta {
            owner_references: Some(vec![owner("Deployment", "frontend")]),
            ..meta(Some("shop"), "web-7d9f", "")
        },
        ..Default::default()
    }));
    assert_eq!(
        pod_at(&idx, "10.1.0.8")
            .and_then(|p| p.workload.clone())
            .as_deref(),
        Some("Deployment/frontend")
    );
    idx.apply(Object::Deployment(Deployment {
        metadata: meta(Some("shop"), "frontend", ""),
        ..Default::default()
    }));
    assert!(idx.workload_is_live("shop", "Deployment/frontend"));
    idx.delete(ObjectKind::ReplicaSet, Some("shop"), "web-7d9f");
    assert_eq!(
        pod_at(&idx, "10.1.0.8")
            .and_then(|p| p.workload.clone())
            .as_deref(),
        Some("Deployment/web")
    );

    let job_pod = owned(
        mk_pod("batch", "report-29000000-xyz", "", &["10.1.0.9"]),
        "Job",
        "report-29000000",
    );
    idx.apply(Object::Pod(job_pod));
    assert_eq!(
        pod_at(&idx, "10.1.0.9")
            .and_then(|p| p.workload.clone())
            .as_deref(),
        Some("CronJob/report")
    );
    idx.apply(Object::Job(Job {
        metadata: meta(Some("batch"), "report-29000000", ""),
        ..Default::default()
    }));
    assert_eq!(
        pod_at(&idx, "10.1.0.9")
            .and_then(|p| p.workload.clone())
            .as_deref(),
        Some("Job/report-29000000"),
        "a known Job without CronJob owner is the workload itself"
    );
    let sts = owned(
        mk_pod("db", "pg-0", "", &["10.1.0.10"]),
        "StatefulSet",
        "pg",
    );
    idx.apply(Object::Pod(sts));
    assert_eq!(
        pod_at(&idx, "10.1.0.10")
            .and_then(|p| p.workload.clone())
            .as_deref(),
        Some("StatefulSet/pg")
    );
}

#[test]
fn services_nodes_metadata_external_and_unknown() {
    let mut idx = index();
    idx.apply(mk_svc(
        "api",
        "backend",
        "app=api",
        &["10.96.0.7", "fd00:96::7"],
    ));
    idx.apply(mk_node(
        "n1",
        &["192.168.1.1", "2001:db8::1"],
        &["10.1.0.0/24", "fd00:1::/64"],
    ));
    idx.set_host_addresses(vec![ip("10.1.0.1"), ip("169.254.169.254")]);
    for addr in ["10.96.0.7", "fd00:96::7"] {
        match idx.resolve(ip(addr)) {
            Resolved::Service(s) => assert_eq!(&*s.id, "api/backend"),
            other => panic!("{addr} must be the Service, got {other:?}"),
        }
    }
    for (addr, node) in [
        ("192.168.1.1", "n1"),
        ("2001:db8::1", "n1"),
        ("192.0.2.10", "local"),
        ("10.1.0.1", "local"),
    ] {
        match idx.resolve(ip(addr)) {
            Resolved::Node(n) => assert_eq!(&**n, node, "{addr}"),
            other => panic!("{addr} must be node {node}, got {other:?}"),
        }
    }
    assert!(
        matches!(idx.resolve(ip("169.254.169.254")), Resolved::Metadata),
        "the metadata address is metadata even when local on the host"
    );
    assert!(matches!(
        idx.resolve(ip("fd00:ec2::254")),
        Resolved::Metadata
    ));
    assert!(
        matches!(idx.resolve(ip("10.1.0.99")), Resolved::Unknown),
        "in the pod CIDR, no pod"
    );
    assert!(matches!(idx.resolve(ip("fd00:1::99")), Resolved::Unknown));
    assert!(matches!(
        idx.resolve(ip("93.184.216.34")),
        Resolved::External
    ));
    idx.delete(ObjectKind::Node, None, "n1");
    assert!(
        matches!(idx.resolve(ip("192.168.1.1")), Resolved::External),
        "a deleted node's address is outside"
    );
    idx.delete(ObjectKind::Service, Some("api"), "backend");
    assert!(matches!(idx.resolve(ip("10.96.0.7")), Resolved::External));
}

#[test]
fn host_network_pods_do_not_take_the_node_address() {
    let mut idx = index();
    idx.apply(mk_node("n1", &["192.168.1.1"], &[]));
    let mut p = mk_pod("kube-system", "kube-proxy-x", "", &["192.168.1.1"]);
    p.spec.as_mut().expect("spec").host_network = Some(true);
    idx.apply(Object::Pod(p));
    assert!(matches!(
        idx.resolve(ip("192.168.1.1")),
        Resolved::Node(n) if &**n == "n1"
    ));
}

#[test]
fn reset_replaces_everything_and_reset_kind_only_one_kind() {
    let mut idx = index();
    idx.apply(Object::Pod(mk_pod("a", "p1", "", &["10.1.0.1"])));
    idx.apply(mk_svc("a", "s", "", &["10.96.0.1"]));
    idx.reset(vec![Object::Pod(mk_pod("b", "p2", "", &["10.1.0.2"]))]);
    assert!(
        pod_at(&idx, "10.1.0.1").is_none(),
        "reset drops what is not listed"
    );
    assert!(matches!(idx.resolve(ip("10.96.0.1")), Resolved::External));
    assert!(pod_at(&idx, "10.1.0.2").is_some());
    assert!(
        matches!(idx.resolve(ip("192.0.2.10")), Resolved::Node(n) if &**n == "local"),
        "config survives reset"
    );
    idx.apply(mk_svc("b", "s", "", &["10.96.0.2"]));
    idx.reset_kind(
        ObjectKind::Pod,
        vec![Object::Pod(mk_pod("b", "p3", "", &["10.1.0.3"]))],
    );
    assert!(
        pod_at(&idx, "10.1.0.2").is_none() && pod_at(&idx, "10.1.0.3").is_some(),
        "pods re-listed"
    );
    assert!(
        matches!(idx.resolve(ip("10.96.0.2")), Resolved::Service(_)),
        "services untouched"
    );
}

#[test]
fn policy_and_namespace_label_changes_recompile_masks() {
    use crate::segpolicy::{Decision, End, FlowView, L4};
    let mut idx = index();
    idx.apply(mk_ns("web", ""));
    idx.apply(mk_ns("api", ""));
    idx.apply(Object::Pod(mk_pod("web", "w", "app=web", &["10.1.0.1"])));
    idx.apply(Object::Pod(mk_pod("api", "a", "app=api", &["10.1.0.2"])));
    let judge = |idx: &ClusterIndex| {
        let (Some(s), Some(d)) = (pod_at(idx, "10.1.0.1"), pod_at(idx, "10.1.0.2")) else {
            panic!("both pods known")
        };
        idx.policy().evaluate(&FlowView {
            src: End::Pod {
                namespace: &s.namespace,
                masks: &s.masks,
            },
            dst: End::Pod {
                namespace: &d.namespace,
                masks: &d.masks,
            },
            dst_ip: ip("10.1.0.2"),
            dst_port: Some(8080),
            proto: Some(L4::Tcp),
            protocol: "TCP",
        })
    };
    assert!(
        matches!(judge(&idx), Decision::Violation(_)),
        "baseline: cross-namespace is a violation"
    );
    let policy: SegmentationPolicy = serde_yaml_ng::from_str(
        "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: p}\n\
         spec: {crossNamespace: {allow: [{name: front-to-back, from: {namespaceSelector: {matchLabels: {tier: front}}}, to: {namespace: api}}]}}\n",
    )
    .expect("policy");
    idx.apply(Object::SegmentationPolicy(policy));
    assert!(
        matches!(judge(&idx), Decision::Violation(_)),
        "namespace web has no tier label yet"
    );
    idx.apply(mk_ns("web", "tier=front"));
    assert_eq!(
        judge(&idx),
        Decision::Allowed {
            rule: Some(Arc::from("front-to-back"))
        },
        "label change recompiles the pods of web"
    );
    idx.delete(ObjectKind::SegmentationPolicy, None, "p");
    assert!(
        matches!(judge(&idx), Decision::Violation(_)),
        "back to the baseline"
    );
}

#[test]
fn invalid_segmentation_policy_is_skipped_others_hold() {
    let mut idx = index();
    let bad: SegmentationPolicy = serde_yaml_ng::from_str(
        "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: bad}\nspec: {hostAccess: {allow: [{ports: ['x']}]}}\n",
    )
    .expect("shape");
    let good: SegmentationPolicy = serde_yaml_ng::from_str(
        "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: good}\nspec: {hostAccess: {allow: [{ports: ['22']}]}}\n",
    )
    .expect("shape");
    idx.apply(Object::SegmentationPolicy(bad));
    idx.apply(Object::SegmentationPolicy(good));
    assert_eq!(
        idx.policy().documents(),
        &["good".to_string()],
        "only the valid document is unioned"
    );
    assert!(
        idx.warnings
            .iter()
            .any(|w| w.contains("bad") && w.contains("spec.hostAccess.allow[0].ports[0]")),
        "{:?}",
        idx.warnings
    );
}

#[test]
fn conformance_inventory_resolves_every_pod_ip() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/netpol-analyzer/cases/onlineboutique");
    let inv = crate::inventory::load_paths(&[dir]).expect("case loads");
    let mut idx = index();
    let pods: Vec<Pod> = inv
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    idx.reset(inv.objects);
    idx.refresh();
    let mut checked = 0;
    for p in &pods {
        let host = p
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        for pip in p.status.iter().flat_map(|s| s.pod_ips.iter().flatten()) {
            if host {
                continue;
            }
            let e = pod_at(&idx, &pip.ip).unwrap_or_else(|| panic!("{} must resolve", pip.ip));
            assert_eq!(Some(&*e.name), p.metadata.name.as_deref());
            checked += 1;
        }
    }
    assert!(checked > 5, "the case has pods with IPs ({checked})");
    assert!(
        idx.netpol().endpoints().len() >= pods.len(),
        "the NetworkPolicy engine knows the pods"
    );
}

#[test]
fn watched_resources_cover_every_kind() {
    for k in ObjectKind::ALL {
        // Every `*Policy` kind (NetworkPolicy, SegmentationPolicy, the
        // cluster-scoped policy kinds) has the plural `*policies`.
        let lower = k.as_str().to_lowercase();
        let plural = match lower.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{lower}s"),
        };
        assert!(
            WATCHED_RESOURCES.iter().any(|(_, r)| *r == plural),
            "{k} ({plural}) must be watched"
        );
    }
    assert_eq!(
        WATCHED_RESOURCES.len(),
        ObjectKind::ALL.len(),
        "nothing watched that is not read"
    );
}

#[test]
fn host_addresses_include_loopback() {
    let addrs = host_addresses().expect("getifaddrs works");
    assert!(addrs.contains(&ip("127.0.0.1")), "{addrs:?}");
}

#[test]
fn pods_share_identity_fields_and_unused_ones_are_swept() {
    let mut idx = index();
    idx.apply(mk_ns("shop", ""));
    for (name, addr) in [("web-0", "10.1.0.1"), ("web-1", "10.1.0.2")] {
        let mut p = mk_pod("shop", name, "app=web", &[addr]);
        p.spec.as_mut().expect("spec").service_account_name = Some("web".into());
        idx.apply(Object::Pod(p));
    }
    let (a, b) = (
        pod_at(&idx, "10.1.0.1").expect("web-0").clone(),
        pod_at(&idx, "10.1.0.2").expect("web-1").clone(),
    );
    assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
    assert!(Arc::ptr_eq(&a.labels, &b.labels));
    let (sa_a, sa_b) = (
        a.service_account.expect("sa"),
        b.service_account.expect("sa"),
    );
    assert!(Arc::ptr_eq(&sa_a, &sa_b));
    assert!(!Arc::ptr_eq(&a.name, &b.name), "names are the pods' own");

    // Churn: every pod with a label set of its own, then gone. The sweep
    // keeps the interner at what live pods use, not at what ever existed.
    for i in 0..3 * Interner::SWEEP_EVERY {
        let name = format!("job-{i}");
        idx.apply(Object::Pod(mk_pod(
            "shop",
            &name,
            &format!("run={i}"),
            &["10.1.9.9"],
        )));
        idx.delete(ObjectKind::Pod, Some("shop"), &name);
    }
    let live = idx.interner.labels.len() + idx.interner.strs.len();
    assert!(
        live <= Interner::SWEEP_EVERY + 8,
        "{live} interned entries after churn"
    );
    assert!(
        idx.interner
            .labels
            .iter()
            .any(|l| Arc::ptr_eq(l, &a.labels)),
        "entries still in use stay shared"
    );
}
