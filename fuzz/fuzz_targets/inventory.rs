//! Inventory files: parse one file's text (`inventory::parse_str`, what
//! `--inventory` runs per file: YAML documents, JSON streams, Lists), then
//! feed the objects to the cluster index and the NetworkPolicy engine the
//! way `segwatch run` and `segwatch netpol` do. Invalid objects are skipped
//! with a warning, unparsable text is an error; nothing may panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use segwatch::index::{ClusterIndex, IndexConfig};
use segwatch::netpol::{Engine, Objects};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let inv = match segwatch::inventory::parse_str(Path::new("fuzz.yaml"), text) {
        Ok(inv) => inv,
        Err(e) => {
            assert!(e.to_string().contains("fuzz.yaml"), "{e}");
            return;
        }
    };
    let (engine, _warnings) = Engine::build(&Objects::from_inventory(&inv.objects));
    let _ = segwatch::netpol::matrix::connectivity(&engine);
    let mut index = ClusterIndex::new(IndexConfig {
        node_name: "n1".into(),
        node_ips: vec!["192.168.0.1".parse().expect("literal")],
        static_policies: Vec::new(),
        pod_cidrs: Vec::new(),
        agent_selector: None,
    });
    index.reset(inv.objects);
    index.refresh();
    for ip in ["10.0.0.1", "10.96.0.10", "192.168.0.1", "fd00::1"] {
        let _ = index.resolve(ip.parse().expect("literal"));
    }
});
