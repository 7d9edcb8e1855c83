//! Judging and metrics over a small cluster given as an inventory.

use super::*;
pub(crate) use crate::fixtures::{cluster, report};

fn kinds(r: &FlowReport) -> Vec<ViolationKind> {
    r.violations.iter().map(|v| v.kind).collect()
}

#[test]
fn pod_to_pod_identities_are_filled() {
    let idx = cluster(true);
    let mut r = report(
        "10.1.0.5",
        40000,
        "10.1.0.7",
        Some(8080),
        "TCP",
        Some(TcpState::Attempted),
    );
    idx.judge(&mut r);
    assert_eq!(r.src.kind, Some(EndpointKind::Pod));
    assert_eq!(r.src.namespace.as_deref(), Some("shop"));
    assert_eq!(r.src.pod.as_deref(), Some("web-5c9f-abcde"));
    assert_eq!(r.src.workload.as_deref(), Some("Deployment/web"));
    assert_eq!(r.src.service_account.as_deref(), Some("web"));
    assert_eq!(r.src.node.as_deref(), Some("n1"));
    assert_eq!(r.dst.workload.as_deref(), Some("StatefulSet/backend"));
    assert_eq!(r.dst.service, None, "a pod end has no service");
    assert_eq!(
        r.verdict,
        Some(Verdict::Allowed),
        "web-to-backend allows 8080/TCP: {:?}",
        r.violations
    );
    let np = r
        .netpol
        .as_ref()
        .expect("pod to pod has a NetworkPolicy decision");
    assert!(!np.allowed, "deny-all isolates api for ingress");
    let json = serde_json::to_string(&r).expect("serialises");
    assert!(
        !json.contains("\"service\""),
        "absent fields are omitted: {json}"
    );
}

#[test]
fn verdicts_table_over_v4_and_v6() {
    let idx = cluster(true);
    use ViolationKind as V;
    let cases: Vec<(
        &str,
        FlowReport,
        Option<Verdict>,
        Vec<V>,
        Option<EndpointKind>,
    )> = vec![
        (
            "allowed cross-ns v6",
            report(
                "fd00:1::5",
                1,
                "fd00:1::7",
                Some(8080),
                "TCP",
                Some(TcpState::Attempted),
            ),
            Some(Verdict::Allowed),
            vec![],
            Some(EndpointKind::Pod),
        ),
        (
            "wrong port",
            report(
                "10.1.0.5",
                1,
                "10.1.0.7",
                Some(9090),
                "TCP",
                Some(TcpState::Attempted),
            ),
            Some(Verdict::Violation),
            vec![V::CrossNamespace],
            Some(EndpointKind::Pod),
        ),
        (
            "reverse direction",
            report(
                "10.1.0.7",
                1,
                "10.1.0.5",
                Some(8080),
                "TCP",
                Some(TcpState::Attempted),
            ),
            Some(Verdict::Violation),
            vec![V::CrossNamespace],
            Some(EndpointKind::Pod),
        ),
        (
            "via ClusterIP",
            report(
                "10.1.0.5",
                1,
                "10.96.0.7",
                Some(8080),
                "TCP",
                Some(TcpState::Established),
            ),
            Some(Verdict::Allowed),
            vec![],
            Some(EndpointKind::Service),
        ),
        (
            "dns not listed once crossNamespace given",
            report("10.1.0.5", 1, "10.1.0.53", Some(53), "UDP", None),
            Some(Verdict::Violation),
            vec![V::CrossNamespace],
            Some(EndpointKind::Pod),
        ),
        (
            "host access",
            report(
                "10.1.0.5",
                1,
                "192.168.1.1",
                Some(10250),
                "TCP",
                Some(TcpState::Established),
            ),
            Some(Verdict::Violation),
            vec![V::HostAccess],
            Some(EndpointKind::Node),
        ),
        (
            "metadata v4",
            report(
                "10.1.0.5",
                1,
                "169.254.169.254",
                Some(80),
                "TCP",
                Some(TcpState::Established),
            ),
            Some(Verdict::Violation),
            vec![V::MetadataApi],
            Some(EndpointKind::Metadata),
        ),
        (
            "metadata v6",
            report(
                "fd00:1::5",
                1,
                "fd00:ec2::254",
                Some(80),
                "TCP",
                Some(TcpState::Attempted),
            ),
            Some(Verdict::Violation),
            vec![V::MetadataApi],
            Some(EndpointKind::Metadata),
        ),
        (
            "external not judged",
            report(
                "10.1.0.5",
                1,
                "93.184.216.34",
                Some(443),
                "TCP",
                Some(TcpState::Established),
            ),
            Some(Verdict::Allowed),
            vec![],
            Some(EndpointKind::External),
        ),
        (
            "unknown pod-network address",
            report(
                "10.1.0.5",
                1,
                "10.1.0.99",
                Some(80),
                "TCP",
                Some(TcpState::Attempted),
            ),
            Some(Verdict::Unjudged),
            vec![],
            None,
        ),
        (
            "netpol bypass: established although deny-all",
            report(
                "fd00:1::5",
                1,
                "fd00:1::7",
                Some(8080),
                "TCP",
                Some(TcpState::Established),
            ),
            Some(Verdict::Violation),
            vec![V::NetpolBypass],
            Some(EndpointKind::Pod),
        ),
        (
            "netpol blocked: attempted only",
            report(
                "10.1.0.5",
                1,
                "10.1.0.7",
                Some(8080),
                "TCP",
                Some(TcpState::Rejected),
            ),
            Some(Verdict::Allowed),
            vec![],
            Some(EndpointKind::Pod),
        ),
        (
            "both: cross-ns and bypass",
            report(
                "10.1.0.5",
                1,
                "10.1.0.7",
                Some(22),
                "TCP",
                Some(TcpState::Closed),
            ),
            Some(Verdict::Violation),
            vec![V::CrossNamespace, V::NetpolBypass],
            Some(EndpointKind::Pod),
        ),
        (
            "udp answered = established for netpol",
            report("10.1.0.5", 1, "10.1.0.7", Some(8080), "UDP", None),
            Some(Verdict::Violation),
            vec![V::CrossNamespace, V::NetpolBypass],
            Some(EndpointKind::Pod),
        ),
        (
            "node to pod not judged",
            report(
                "192.168.1.1",
                1,
                "10.1.0.5",
                Some(8080),
                "TCP",
                Some(TcpState::Established),
            ),
            Some(Verdict::Allowed),
            vec![],
            Some(EndpointKind::Pod),
        ),
    ];
    for (name, mut r, verdict, want, dst_kind) in cases {
        idx.judge(&mut r);
        assert_eq!(r.verdict, verdict, "{name}: {:?}", r.violations);
        assert_eq!(kinds(&r), want, "{name}: {:?}", r.violations);
        assert_eq!(r.dst.kind, dst_kind, "{name}");
        for v in &r.violations {
            assert!(
                !v.rule.is_empty() && !v.reason.is_empty(),
                "{name}: rule and reason are filled: {v:?}"
            );
        }
    }
}

#[test]
fn baseline_without_policy() {
    let idx = cluster(false);
    let mut dns = report("10.1.0.5", 1, "10.1.0.53", Some(53), "UDP", None);
    dns.packets.received = 0;
    idx.judge(&mut dns);
    assert_eq!(
        dns.verdict,
        Some(Verdict::Allowed),
        "baseline allows kube-dns: {:?}",
        dns.violations
    );
    let mut x = report(
        "10.1.0.5",
        1,
        "10.1.0.7",
        Some(8080),
        "TCP",
        Some(TcpState::Attempted),
    );
    idx.judge(&mut x);
    assert_eq!(kinds(&x), vec![ViolationKind::CrossNamespace]);
    assert_eq!(x.violations[0].rule, "baseline");
}
