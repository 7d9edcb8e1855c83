//! Table-driven semantics of the compiled policy, and properties of the
//! union.

use super::*;
use crate::segpolicy::SegmentationPolicy;
use proptest::prelude::*;

type Labels = BTreeMap<String, String>;

fn labels(s: &str) -> Labels {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').expect("k=v");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// A pod for the tables: `ns`, its namespace labels, its labels, its SA.
#[derive(Clone)]
struct P {
    ns: &'static str,
    ns_labels: Labels,
    labels: Labels,
    sa: &'static str,
}

fn pod(ns: &'static str, ns_labels: &str, pod_labels: &str, sa: &'static str) -> P {
    P {
        ns,
        ns_labels: labels(ns_labels),
        labels: labels(pod_labels),
        sa,
    }
}

#[derive(Clone)]
enum D {
    Pod(P),
    Service(P),
    Node,
    Metadata(&'static str),
    External(&'static str),
}

fn doc(yaml: &str) -> Arc<CompiledDoc> {
    let p: SegmentationPolicy = serde_yaml_ng::from_str(yaml).expect("test policy parses");
    Arc::new(CompiledDoc::compile(&p).expect("test policy compiles"))
}

fn decide(
    policy: &CompiledPolicy,
    src: &P,
    dst: &D,
    port: Option<u16>,
    protocol: &str,
) -> Decision {
    let facts = |p: &P, sa: bool| -> PeerMasks {
        policy.masks(&PodFacts {
            namespace: p.ns,
            namespace_labels: &p.ns_labels,
            labels: &p.labels,
            service_account: sa.then_some(p.sa),
        })
    };
    let src_masks = facts(src, true);
    let dst_masks;
    let (dst_end, dst_ip) = match dst {
        D::Pod(p) => {
            dst_masks = facts(p, true);
            (
                End::Pod {
                    namespace: p.ns,
                    masks: &dst_masks,
                },
                "10.0.0.2".parse().expect("ip"),
            )
        }
        D::Service(p) => {
            dst_masks = facts(p, false);
            (
                End::Service {
                    namespace: p.ns,
                    masks: &dst_masks,
                },
                "10.96.0.2".parse().expect("ip"),
            )
        }
        D::Node => (End::Node { name: "n1" }, "192.168.1.1".parse().expect("ip")),
        D::Metadata(ip) => (End::Metadata, ip.parse().expect("ip")),
        D::External(ip) => (End::External, ip.parse().expect("ip")),
    };
    policy.evaluate(&FlowView {
        src: End::Pod {
            namespace: src.ns,
            masks: &src_masks,
        },
        dst: dst_end,
        dst_ip,
        dst_port: port,
        proto: L4::parse(protocol),
        protocol,
    })
}

fn verdict(d: &Decision) -> Result<Option<String>, ViolationKind> {
    match d {
        Decision::Allowed { rule } => Ok(rule.as_deref().map(str::to_owned)),
        Decision::Violation(v) => Err(v.kind()),
        Decision::NotJudged => Ok(Some("<not judged>".into())),
    }
}

const CONTRACT: &str = r#"
apiVersion: segwatch.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: contract}
spec:
  crossNamespace:
    allow:
      - name: web-to-api
        from: {namespace: shop-web}
        to:   {namespace: shop-api, ports: ["8080/TCP", "9000-9100/UDP"]}
      - from: {namespace: monitoring, serviceAccount: prometheus}
        to:   {namespace: "*"}
      - from: {namespaceSelector: {matchLabels: {tier: front}}, podSelector: {matchLabels: {app: web}}}
        to:   {namespaceSelector: {matchExpressions: [{key: tier, operator: In, values: [back]}]}}
  withinNamespace:
    - namespace: payments
      allow:
        - from: {podSelector: {matchLabels: {app: api}}}
          to:   {podSelector: {matchLabels: {app: db}}, ports: ["5432/TCP"]}
  hostAccess:
    allow:
      - from: {namespace: kube-system}
        ports: ["10250/TCP"]
  metadataApi:
    addresses: ["169.254.169.254", "fd00:ec2::254"]
    allow:
      - from: {namespace: kube-system, serviceAccount: ebs-csi-controller}
  external:
    allow:
      - to: {cidr: "0.0.0.0/0", ports: ["443/TCP"]}
"#;

#[test]
fn contract_policy_table() {
    let policy = CompiledPolicy::union(&[doc(CONTRACT)]);
    let web = pod("shop-web", "", "app=web", "web");
    let api = pod("shop-api", "", "app=api", "api");
    let prom = pod("monitoring", "", "app=prometheus", "prometheus");
    let front = pod("store", "tier=front", "app=web", "default");
    let front_other = pod("store", "tier=front", "app=cart", "default");
    let back = pod("backend", "tier=back", "app=x", "default");
    let pay_api = pod("payments", "", "app=api", "api");
    let pay_db = pod("payments", "", "app=db", "db");
    let pay_web = pod("payments", "", "app=web", "web");
    let kube = pod("kube-system", "", "app=ebs", "ebs-csi-controller");
    let kube_other = pod("kube-system", "", "app=other", "other");
    use ViolationKind as V;
    let cases: Vec<(&str, &P, D, Option<u16>, &str, Result<Option<&str>, V>)> = vec![
        (
            "named rule, port in list",
            &web,
            D::Pod(api.clone()),
            Some(8080),
            "TCP",
            Ok(Some("web-to-api")),
        ),
        (
            "named rule, port range",
            &web,
            D::Pod(api.clone()),
            Some(9050),
            "UDP",
            Ok(Some("web-to-api")),
        ),
        (
            "port outside range",
            &web,
            D::Pod(api.clone()),
            Some(9101),
            "UDP",
            Err(V::CrossNamespace),
        ),
        (
            "protocol mismatch",
            &web,
            D::Pod(api.clone()),
            Some(8080),
            "UDP",
            Err(V::CrossNamespace),
        ),
        (
            "ICMP against a port list",
            &web,
            D::Pod(api.clone()),
            None,
            "ICMP",
            Err(V::CrossNamespace),
        ),
        (
            "reverse direction not allowed",
            &api,
            D::Pod(web.clone()),
            Some(8080),
            "TCP",
            Err(V::CrossNamespace),
        ),
        (
            "service dst judged like its pods",
            &web,
            D::Service(api.clone()),
            Some(8080),
            "TCP",
            Ok(Some("web-to-api")),
        ),
        (
            "prometheus SA to anywhere",
            &prom,
            D::Pod(api.clone()),
            Some(1234),
            "TCP",
            Ok(Some("contract/spec.crossNamespace.allow[1]")),
        ),
        (
            "ns + pod selector",
            &front,
            D::Pod(back.clone()),
            Some(1),
            "TCP",
            Ok(Some("contract/spec.crossNamespace.allow[2]")),
        ),
        (
            "ns selector ok, pod selector not",
            &front_other,
            D::Pod(back.clone()),
            Some(1),
            "TCP",
            Err(V::CrossNamespace),
        ),
        (
            "same namespace, not segmented",
            &web,
            D::Pod(pod("shop-web", "", "app=other", "x")),
            Some(1),
            "TCP",
            Ok(None),
        ),
        (
            "micro-segmented allowed",
            &pay_api,
            D::Pod(pay_db.clone()),
            Some(5432),
            "TCP",
            Ok(Some("contract/spec.withinNamespace[0].allow[0]")),
        ),
        (
            "micro-segmented wrong port",
            &pay_api,
            D::Pod(pay_db.clone()),
            Some(5433),
            "TCP",
            Err(V::WithinNamespace),
        ),
        (
            "micro-segmented wrong pod",
            &pay_web,
            D::Pod(pay_db.clone()),
            Some(5432),
            "TCP",
            Err(V::WithinNamespace),
        ),
        (
            "kube-dns not allowed once crossNamespace is given",
            &web,
            D::Pod(pod("kube-system", "", "k8s-app=kube-dns", "coredns")),
            Some(53),
            "UDP",
            Err(V::CrossNamespace),
        ),
        (
            "host access allowed",
            &kube_other,
            D::Node,
            Some(10250),
            "TCP",
            Ok(Some("contract/spec.hostAccess.allow[0]")),
        ),
        (
            "host access wrong port",
            &kube_other,
            D::Node,
            Some(22),
            "TCP",
            Err(V::HostAccess),
        ),
        (
            "host access wrong ns",
            &web,
            D::Node,
            Some(10250),
            "TCP",
            Err(V::HostAccess),
        ),
        (
            "metadata allowed SA",
            &kube,
            D::Metadata("169.254.169.254"),
            Some(80),
            "TCP",
            Ok(Some("contract/spec.metadataApi.allow[0]")),
        ),
        (
            "metadata other SA",
            &kube_other,
            D::Metadata("169.254.169.254"),
            Some(80),
            "TCP",
            Err(V::MetadataApi),
        ),
        (
            "external 443 allowed",
            &web,
            D::External("93.184.216.34"),
            Some(443),
            "TCP",
            Ok(Some("contract/spec.external.allow[0]")),
        ),
        (
            "external v6 not in 0.0.0.0/0",
            &web,
            D::External("2001:db8::1"),
            Some(443),
            "TCP",
            Err(V::External),
        ),
        (
            "external other port",
            &web,
            D::External("93.184.216.34"),
            Some(80),
            "TCP",
            Err(V::External),
        ),
    ];
    for (name, src, dst, port, proto, want) in cases {
        let got = decide(&policy, src, &dst, port, proto);
        let want = want.map(|o| o.map(str::to_owned));
        assert_eq!(verdict(&got), want, "{name}: {got:?}");
    }
}

#[test]
fn baseline_table() {
    let policy = CompiledPolicy::baseline();
    assert!(policy.documents().is_empty());
    let web = pod("shop", "", "app=web", "web");
    let dns = pod("kube-system", "", "k8s-app=kube-dns", "coredns");
    let not_dns = pod("kube-system", "", "k8s-app=metrics", "m");
    let fake_dns = pod("shop2", "", "k8s-app=kube-dns", "coredns");
    use ViolationKind as V;
    let cases: Vec<(&str, D, Option<u16>, &str, Result<Option<&str>, V>)> = vec![
        (
            "dns udp",
            D::Pod(dns.clone()),
            Some(53),
            "UDP",
            Ok(Some("baseline/kube-dns")),
        ),
        (
            "dns tcp",
            D::Pod(dns.clone()),
            Some(53),
            "TCP",
            Ok(Some("baseline/kube-dns")),
        ),
        (
            "dns service",
            D::Service(dns.clone()),
            Some(53),
            "UDP",
            Ok(Some("baseline/kube-dns")),
        ),
        (
            "dns other port",
            D::Pod(dns.clone()),
            Some(5353),
            "UDP",
            Err(V::CrossNamespace),
        ),
        (
            "other kube-system pod",
            D::Pod(not_dns),
            Some(53),
            "UDP",
            Err(V::CrossNamespace),
        ),
        (
            "kube-dns label outside kube-system",
            D::Pod(fake_dns),
            Some(53),
            "UDP",
            Err(V::CrossNamespace),
        ),
        (
            "same namespace",
            D::Pod(pod("shop", "", "app=db", "db")),
            Some(5432),
            "TCP",
            Ok(None),
        ),
        ("host", D::Node, Some(22), "TCP", Err(V::HostAccess)),
        (
            "metadata v4",
            D::Metadata("169.254.169.254"),
            Some(80),
            "TCP",
            Err(V::MetadataApi),
        ),
        (
            "external not judged",
            D::External("8.8.8.8"),
            Some(53),
            "UDP",
            Ok(Some("<not judged>")),
        ),
    ];
    for (name, dst, port, proto, want) in cases {
        let got = decide(&policy, &web, &dst, port, proto);
        assert_eq!(
            verdict(&got),
            want.map(|o| o.map(str::to_owned)),
            "baseline: {name}: {got:?}"
        );
    }
    let addrs: Vec<String> = policy
        .metadata_addresses()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        addrs,
        vec!["169.254.169.254", "fd00:ec2::254"],
        "default metadata addresses"
    );
}

#[test]
fn sections_absent_everywhere_keep_their_baseline() {
    let only_meta = doc(
        "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: m}\n\
         spec: {metadataApi: {addresses: ['10.0.0.254'], allow: [{from: {namespace: a}}]}}\n",
    );
    let policy = CompiledPolicy::union(&[only_meta]);
    let a = pod("a", "", "", "x");
    let dns = pod("kube-system", "", "k8s-app=kube-dns", "coredns");
    assert_eq!(
        verdict(&decide(&policy, &a, &D::Pod(dns), Some(53), "UDP")),
        Ok(Some("baseline/kube-dns".into())),
        "no document has crossNamespace: DNS stays allowed"
    );
    assert_eq!(
        verdict(&decide(
            &policy,
            &a,
            &D::Metadata("10.0.0.254"),
            Some(80),
            "TCP"
        )),
        Ok(Some("m/spec.metadataApi.allow[0]".into()))
    );
    let addrs: Vec<String> = policy
        .metadata_addresses()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        addrs,
        vec!["10.0.0.254"],
        "given addresses replace the default"
    );
    let Decision::Violation(v) = decide(&policy, &a, &D::Node, Some(22), "TCP") else {
        panic!("host access stays a violation")
    };
    assert_eq!(v.rule(), "baseline");
    assert!(
        v.reason().contains("node n1") && v.reason().contains("22/TCP"),
        "{}",
        v.reason()
    );
}

#[test]
fn invalid_documents_name_the_field_path() {
    let cases = [
        ("spec: {crossNamespace: {allow: [{to: {ports: ['80/TCP', 'x/TCP']}}]}}", "spec.crossNamespace.allow[0].to.ports[1]"),
        ("spec: {crossNamespace: {allow: [{from: {ports: ['80']}}]}}", "spec.crossNamespace.allow[0].from.ports"),
        ("spec: {crossNamespace: {allow: [{from: {podSelector: {matchExpressions: [{key: a, operator: Is}]}}}]}}", "spec.crossNamespace.allow[0].from.podSelector.matchExpressions[0].operator"),
        ("spec: {withinNamespace: [{namespace: '*'}]}", "spec.withinNamespace[0].namespace"),
        ("spec: {withinNamespace: [{namespace: a, allow: [{to: {namespace: b}}]}]}", "spec.withinNamespace[0].allow[0].to"),
        ("spec: {hostAccess: {allow: [{ports: ['99999/TCP']}]}}", "spec.hostAccess.allow[0].ports[0]"),
        ("spec: {metadataApi: {addresses: ['169.254.169.254', 'metadata']}}", "spec.metadataApi.addresses[1]"),
        ("spec: {external: {allow: [{to: {cidr: '10.0.0.0/33'}}]}}", "spec.external.allow[0].to.cidr"),
    ];
    for (spec, path) in cases {
        let yaml = format!("apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {{name: bad}}\n{spec}\n");
        let p: SegmentationPolicy = serde_yaml_ng::from_str(&yaml).expect("shape is valid");
        let err = CompiledDoc::compile(&p).expect_err("invalid content must be rejected");
        assert_eq!(err.path, path, "{spec}: {err}");
        assert!(err.to_string().contains("SegmentationPolicy bad"), "{err}");
    }
}

#[test]
fn withinnamespace_union_merges_documents() {
    let a = doc("apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: a}\nspec: {withinNamespace: [{namespace: p, allow: [{from: {podSelector: {matchLabels: {app: x}}}}]}]}\n");
    let b = doc("apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: b}\nspec: {withinNamespace: [{namespace: p, allow: []}]}\n");
    let policy = CompiledPolicy::union(&[a, b]);
    let x = pod("p", "", "app=x", "s");
    let y = pod("p", "", "app=y", "s");
    assert!(matches!(
        decide(&policy, &x, &D::Pod(y.clone()), Some(1), "TCP"),
        Decision::Allowed { .. }
    ));
    let Decision::Violation(v) = decide(&policy, &y, &D::Pod(x), Some(1), "TCP") else {
        panic!("y is not allowed to open flows inside p")
    };
    assert_eq!(v.rule(), "a,b", "both documents segment p");
}

/// A random rule over a small universe of namespaces and labels.
fn arb_rule() -> impl Strategy<Value = String> {
    let ns = prop_oneof![Just("a"), Just("b"), Just("c"), Just("*")];
    let app = prop_oneof![Just("x"), Just("y")];
    let port = prop_oneof![Just("80/TCP"), Just("53/UDP"), Just("1000-2000/TCP")];
    (
        ns.clone(),
        ns,
        proptest::option::of(app),
        proptest::option::of(port),
    )
        .prop_map(|(f, t, app, port)| {
            let sel = app
                .map(|a| format!(", podSelector: {{matchLabels: {{app: {a}}}}}"))
                .unwrap_or_default();
            let ports = port
                .map(|p| format!(", ports: ['{p}']"))
                .unwrap_or_default();
            format!("{{from: {{namespace: '{f}'{sel}}}, to: {{namespace: '{t}'{ports}}}}}")
        })
}

fn policy_doc(name: &str, rules: &[String]) -> Arc<CompiledDoc> {
    doc(&format!(
        "apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {{name: {name}}}\nspec: {{crossNamespace: {{allow: [{}]}}}}\n",
        rules.join(", ")
    ))
}

proptest! {
    /// The union allows a flow exactly when one of the documents alone
    /// allows it (for documents that all have crossNamespace).
    #[test]
    fn union_is_or_of_documents(
        r1 in proptest::collection::vec(arb_rule(), 1..4),
        r2 in proptest::collection::vec(arb_rule(), 1..4),
        src_ns in prop_oneof![Just("a"), Just("b"), Just("c")],
        dst_ns in prop_oneof![Just("a"), Just("b"), Just("c")],
        app in prop_oneof![Just("app=x"), Just("app=y")],
        port in prop_oneof![Just(80u16), Just(53), Just(1500)],
        proto in prop_oneof![Just("TCP"), Just("UDP")],
    ) {
        let d1 = policy_doc("one", &r1);
        let d2 = policy_doc("two", &r2);
        let src = pod(src_ns, "", app, "sa");
        let dst = D::Pod(pod(dst_ns, "", "app=y", "sa"));
        let allowed = |p: &CompiledPolicy| !matches!(decide(p, &src, &dst, Some(port), proto), Decision::Violation(_));
        let u = CompiledPolicy::union(&[d1.clone(), d2.clone()]);
        let a = CompiledPolicy::union(&[d1]);
        let b = CompiledPolicy::union(&[d2]);
        prop_assert_eq!(allowed(&u), allowed(&a) || allowed(&b));
        if src_ns == dst_ns {
            prop_assert!(allowed(&u), "same-namespace traffic is allowed unless micro-segmented");
        }
    }

    /// Masks give the same answer as matching every rule by hand.
    #[test]
    fn masks_agree_with_direct_matching(rules in proptest::collection::vec(arb_rule(), 1..80), app in prop_oneof![Just("app=x"), Just("app=y")]) {
        let d = policy_doc("p", &rules);
        let policy = CompiledPolicy::union(&[d]);
        let src = pod("a", "", app, "sa");
        let src_l = src.labels.clone();
        let facts = PodFacts { namespace: "a", namespace_labels: &src.ns_labels, labels: &src_l, service_account: Some("sa") };
        let m = policy.masks(&facts);
        let by_hand: Vec<usize> = policy.pod_rules.iter().enumerate().filter(|(_, r)| r.from.matches(&facts)).map(|(i, _)| i).collect();
        prop_assert_eq!(m.from_pod.iter().collect::<Vec<_>>(), by_hand);
    }

    /// CIDR rules match exactly the addresses inside the network.
    #[test]
    fn external_cidr_matching(a in any::<u32>(), len in 0u8..=32, probe in any::<u32>()) {
        let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), len).expect("valid prefix").trunc();
        let yaml = format!("apiVersion: segwatch.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {{name: e}}\nspec: {{external: {{allow: [{{to: {{cidr: '{net}'}}}}]}}}}\n");
        let policy = CompiledPolicy::union(&[doc(&yaml)]);
        let ip = std::net::Ipv4Addr::from(probe);
        let src = pod("a", "", "", "s");
        let masks = policy.masks(&PodFacts { namespace: "a", namespace_labels: &src.ns_labels, labels: &src.labels, service_account: Some("s") });
        let d = policy.evaluate(&FlowView { src: End::Pod { namespace: "a", masks: &masks }, dst: End::External, dst_ip: IpAddr::V4(ip), dst_port: Some(1), proto: Some(L4::Tcp), protocol: "TCP" });
        let inside = (u32::from(ip) & u32::from(net.netmask())) == u32::from(net.network());
        prop_assert_eq!(matches!(d, Decision::Allowed { .. }), inside);
    }
}
