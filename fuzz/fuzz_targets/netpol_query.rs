//! `segwatch netpol eval` query lines (`cmd::netpol::answer`) against the
//! inventory of the CLI tests: any line is answered or rejected with a
//! field-naming error, never a panic.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use segwatch::netpol::{Engine, Objects};

/// Pods with named ports, a workload without pods, ingress and egress
/// policies with an ipBlock and except (see monitor/tests/netpol_cli.rs).
const INVENTORY: &str = include_str!("../seeds/netpol_inventory.yaml");

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let inv = segwatch::inventory::parse_str(Path::new("inventory.yaml"), INVENTORY)
            .expect("the netpol fuzz inventory parses");
        Engine::build(&Objects::from_inventory(&inv.objects)).0
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let engine = engine();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        match segwatch::cmd::netpol::answer(engine, line) {
            Ok(v) => {
                assert!(v.get("allowed").is_some_and(|a| a.is_boolean()), "{v}");
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "one line per bad query: {msg:?}");
            }
        }
    }
});
