//! SegmentationPolicy documents: parse (YAML or JSON, several documents),
//! validate and compile (`segpolicy::parse_policy_str`, what `--policy`
//! runs per file), then union and evaluate a few flows with the result.
//! Invalid input must come back as an error, never a panic.

#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use segwatch::segpolicy::{self, CompiledPolicy, End, FlowView, PodFacts, L4};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let docs = match segpolicy::parse_policy_str(Path::new("fuzz.yaml"), text) {
        Ok(docs) => docs,
        Err(e) => {
            // The message names the file: the user must know which one.
            assert!(e.to_string().contains("fuzz.yaml"), "{e}");
            return;
        }
    };
    let policy = CompiledPolicy::union(&docs);
    let ns_labels: BTreeMap<String, String> = [("tier".to_string(), "front".to_string())].into();
    let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let web = policy.masks(&PodFacts {
        namespace: "shop",
        namespace_labels: &ns_labels,
        labels: &labels,
        service_account: Some("web"),
    });
    let api = policy.masks(&PodFacts {
        namespace: "payments",
        namespace_labels: &BTreeMap::new(),
        labels: &BTreeMap::new(),
        service_account: None,
    });
    let src = End::Pod {
        namespace: "shop",
        masks: &web,
    };
    let dst_ip: IpAddr = "10.0.0.9".parse().expect("literal");
    for dst in [
        End::Pod {
            namespace: "payments",
            masks: &api,
        },
        End::Pod {
            namespace: "shop",
            masks: &web,
        },
        End::Service {
            namespace: "payments",
            masks: &api,
        },
        End::Node { name: "n1" },
        End::Metadata,
        End::External,
        End::Unknown,
    ] {
        for (proto, port, name) in [
            (Some(L4::Tcp), Some(8080), "TCP"),
            (Some(L4::Udp), Some(53), "UDP"),
            (None, None, "ICMP"),
        ] {
            let d = policy.evaluate(&FlowView {
                src,
                dst,
                dst_ip,
                dst_port: port,
                proto,
                protocol: name,
            });
            if let segpolicy::Decision::Violation(v) = d {
                let _ = v.to_violation();
            }
        }
    }
});
