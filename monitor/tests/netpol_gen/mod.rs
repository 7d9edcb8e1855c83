//! Shared by the NetworkPolicy differential tests (`netpol_differential`,
//! `netpol_diff_differential`): the seeded random cluster generator, where
//! to find `nca`, and parsers for its `src => dst : conns` lines. See
//! `netpol_differential.rs` for the conventions the generator keeps to.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use segwatch::netpol::ports::{ConnSet, PortRange, Protocol};
use serde_json::{json, Value};

mod rng;
pub use rng::Rng;

pub const POD_LABELS: &[(&str, &[&str])] =
    &[("app", &["web", "api", "db"]), ("tier", &["front", "back"])];
pub const NS_LABELS: &[(&str, &[&str])] = &[("env", &["prod", "dev"]), ("team", &["a", "b"])];
/// Named container ports: name, protocol, candidate numbers.
pub const NAMED_PORTS: &[(&str, &str, &[u16])] = &[
    ("http", "TCP", &[80, 8080]),
    ("dns", "UDP", &[53, 5353]),
    ("metrics", "TCP", &[9090, 9100]),
    ("sig", "SCTP", &[7777, 7778]),
];

pub fn gen_selector(rng: &mut Rng, vocab: &[(&str, &[&str])]) -> Value {
    gen_selector_with(rng, vocab, true)
}

pub fn gen_selector_with(rng: &mut Rng, vocab: &[(&str, &[&str])], exists: bool) -> Value {
    match rng.below(4) {
        0 => json!({}),
        1 => {
            let (k, vs) = rng.pick(vocab);
            json!({"matchLabels": {*k: *rng.pick(vs)}})
        }
        _ => {
            let mut exprs = Vec::new();
            for _ in 0..1 + rng.below(2) {
                let (k, vs) = rng.pick(vocab);
                let e = match rng.below(4) {
                    0 => {
                        json!({"key": k, "operator": "In", "values": [rng.pick(vs), rng.pick(vs)]})
                    }
                    1 => json!({"key": k, "operator": "NotIn", "values": [rng.pick(vs)]}),
                    2 if exists => json!({"key": k, "operator": "Exists"}),
                    2 => json!({"key": k, "operator": "In", "values": [rng.pick(vs)]}),
                    _ if exists => json!({"key": k, "operator": "DoesNotExist"}),
                    _ => json!({"key": k, "operator": "NotIn", "values": [rng.pick(vs)]}),
                };
                exprs.push(e);
            }
            if rng.chance(30) {
                let (k, vs) = rng.pick(vocab);
                json!({"matchLabels": {*k: *rng.pick(vs)}, "matchExpressions": exprs})
            } else {
                json!({"matchExpressions": exprs})
            }
        }
    }
}

pub fn gen_peer(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => json!({"podSelector": gen_selector(rng, POD_LABELS)}),
        1 => json!({"namespaceSelector": gen_selector(rng, NS_LABELS)}),
        // No `Exists` in this podSelector: see the module doc.
        2 => {
            json!({"namespaceSelector": gen_selector(rng, NS_LABELS), "podSelector": gen_selector_with(rng, POD_LABELS, false)})
        }
        _ => {
            let (cidr, except): (&str, &[&str]) = *rng.pick(&[
                ("192.168.0.0/16", &["192.168.1.0/24"][..]),
                ("0.0.0.0/0", &["10.0.0.0/8", "172.16.0.0/12"][..]),
                ("172.16.0.0/12", &[][..]),
                ("8.8.8.0/24", &["8.8.8.8/32"][..]),
                ("0.0.0.0/0", &[][..]),
            ]);
            if except.is_empty() {
                json!({"ipBlock": {"cidr": cidr}})
            } else {
                json!({"ipBlock": {"cidr": cidr, "except": except}})
            }
        }
    }
}

pub fn gen_port(rng: &mut Rng) -> Value {
    let mut p = serde_json::Map::new();
    match rng.below(4) {
        0 => {}
        1 => p.insert("protocol".into(), json!("TCP")).map_or((), |_| ()),
        2 => p.insert("protocol".into(), json!("UDP")).map_or((), |_| ()),
        _ => p
            .insert("protocol".into(), json!("SCTP"))
            .map_or((), |_| ()),
    }
    match rng.below(5) {
        0 => {} // all ports of the protocol
        1 | 2 => {
            p.insert(
                "port".into(),
                json!(*rng.pick(&[53u16, 80, 443, 5353, 7777, 8080, 9090])),
            );
        }
        3 => {
            let (lo, hi) = *rng.pick(&[(50u16, 100u16), (8000, 8100), (7000, 7777), (1, 1024)]);
            p.insert("port".into(), json!(lo));
            p.insert("endPort".into(), json!(hi));
        }
        _ => {
            p.insert(
                "port".into(),
                json!(*rng.pick(&["http", "dns", "metrics", "sig", "nope"])),
            );
        }
    }
    Value::Object(p)
}

pub fn gen_rules(rng: &mut Rng, peers_key: &str) -> Value {
    let mut rules = Vec::new();
    for _ in 0..rng.below(3) {
        let mut r = serde_json::Map::new();
        if !rng.chance(20) {
            r.insert(
                peers_key.into(),
                Value::Array((0..1 + rng.below(2)).map(|_| gen_peer(rng)).collect()),
            );
        }
        if !rng.chance(30) {
            r.insert(
                "ports".into(),
                Value::Array((0..1 + rng.below(2)).map(|_| gen_port(rng)).collect()),
            );
        }
        rules.push(Value::Object(r));
    }
    Value::Array(rules)
}

/// One random cluster as Kubernetes documents.
pub fn gen_case(seed: u64) -> Vec<Value> {
    let mut rng = Rng(seed);
    let mut docs = Vec::new();
    let n_ns = 1 + rng.below(3);
    for n in 0..n_ns {
        let mut labels = serde_json::Map::new();
        for (k, vs) in NS_LABELS {
            if rng.chance(60) {
                labels.insert(k.to_string(), json!(rng.pick(vs)));
            }
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns{n}"), "labels": labels}}));
        for i in 0..1 + rng.below(3) {
            let mut labels = serde_json::Map::new();
            for (k, vs) in POD_LABELS {
                if rng.chance(70) {
                    labels.insert(k.to_string(), json!(rng.pick(vs)));
                }
            }
            let mut ports = vec![json!({"containerPort": 443})];
            for (name, proto, nums) in NAMED_PORTS {
                if rng.chance(50) {
                    ports.push(
                        json!({"name": name, "protocol": proto, "containerPort": rng.pick(nums)}),
                    );
                }
            }
            let ip = format!("10.{n}.0.{}", i + 1);
            docs.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "namespace": format!("ns{n}"), "labels": labels},
                "spec": {"containers": [{"name": "c", "image": "img", "ports": ports}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            }));
        }
    }
    for k in 0..1 + rng.below(3) {
        let mut spec = serde_json::Map::new();
        spec.insert("podSelector".into(), gen_selector(&mut rng, POD_LABELS));
        // (policyTypes, may have ingress rules, may have egress rules). nca
        // rejects rules of a direction missing from explicit policyTypes
        // (the API server accepts them; they have no effect, which the unit
        // tests cover), so they are not generated.
        let (types, ing, egr) = match rng.below(4) {
            0 => (None, true, true),
            1 => (Some(json!(["Ingress"])), true, false),
            2 => (Some(json!(["Egress"])), false, true),
            _ => (Some(json!(["Ingress", "Egress"])), true, true),
        };
        let types_given = types.is_some();
        if let Some(t) = types {
            spec.insert("policyTypes".into(), t);
        }
        if ing && rng.chance(80) {
            spec.insert("ingress".into(), gen_rules(&mut rng, "from"));
        }
        if egr && rng.chance(60) {
            let rules = gen_rules(&mut rng, "to");
            // `egress: []` without policyTypes: see the module doc.
            if types_given || rules.as_array().is_some_and(|r| !r.is_empty()) {
                spec.insert("egress".into(), rules);
            }
        }
        docs.push(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("np{k}"), "namespace": format!("ns{}", rng.below(n_ns))},
            "spec": spec
        }));
    }
    docs
}

/// nca's connectivity report (`--connectivity ... -o txt_no_fw_rules
/// --output_endpoints pods`) for `inputs` (flag and file: `-r`, `-n`,
/// `-p`): its output, or why it failed (the last line nca wrote to stderr).
/// Not every test that includes this module asks nca for connectivity.
#[allow(dead_code)]
pub fn nca_connectivity(nca: &Path, inputs: &[(&str, &Path)]) -> Result<String, String> {
    let mut cmd = std::process::Command::new(nca);
    cmd.arg("--connectivity");
    for (flag, path) in inputs {
        cmd.arg(flag).arg(path);
    }
    let out = cmd
        .args(["-o", "txt_no_fw_rules", "--output_endpoints", "pods"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nca.display()))?;
    if !out.status.success() {
        return Err(format!(
            "nca failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn find_nca() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("nca");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/nca");
    venv.is_file().then_some(venv)
}

/// One side of an nca line: a pod `ns/name` or an IPv4 range.
#[derive(Clone, Debug, PartialEq)]
pub enum Side {
    Pod(String),
    Range(u32, u32),
}

pub fn parse_side(s: &str) -> Option<Side> {
    // A one-address range is printed as the address alone.
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Some(Side::Range(u32::from(a), u32::from(a)));
    }
    if let Some((a, b)) = s.split_once('-').filter(|_| !s.contains('/')) {
        let (a, b) = (a.parse::<Ipv4Addr>().ok()?, b.parse::<Ipv4Addr>().ok()?);
        return Some(Side::Range(u32::from(a), u32::from(b)));
    }
    s.contains('/').then(|| Side::Pod(s.to_string()))
}

/// `All connections`, or `{protocols:TCP[,UDP...][,dst_ports:80,8000-8010]}`.
pub fn parse_conns(s: &str, into: &mut ConnSet) -> Result<(), String> {
    // nca separates protocols with ", " (`{protocols:TCP, SCTP}`): a
    // " SCTP" must not fall through to the portless protocols below.
    let s = &s.replace(", ", ",");
    if s == "All connections" {
        *into = ConnSet::all();
        return Ok(());
    }
    // `All but {protocols:TCP, SCTP[,dst_ports:...]}`: the complement.
    if let Some(rest) = s.strip_prefix("All but ") {
        let mut except = ConnSet::empty();
        parse_conns(rest, &mut except)?;
        into.union(&ConnSet::all().difference(&except));
        return Ok(());
    }
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| format!("unknown conns {s:?}"))?;
    let (protos, ports) = match inner.split_once(",dst_ports:") {
        Some((p, ports)) => (p, Some(ports)),
        None => (inner, None),
    };
    let protos = protos
        .strip_prefix("protocols:")
        .ok_or_else(|| format!("unknown conns {s:?}"))?;
    for proto in protos.split(',') {
        let p = match proto {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            // Portless protocols: outside the compared model (see the module doc).
            _ => continue,
        };
        match ports {
            None => into.insert(p, PortRange::ALL),
            Some(list) => {
                for item in list.split(',') {
                    let (lo, hi) = match item.split_once('-') {
                        Some((a, b)) => (a.parse::<u16>(), b.parse::<u16>()),
                        None => (item.parse::<u16>(), item.parse::<u16>()),
                    };
                    let (lo, hi) = (
                        lo.map_err(|e| format!("{s}: {e}"))?,
                        hi.map_err(|e| format!("{s}: {e}"))?,
                    );
                    into.insert(
                        p,
                        PortRange::new(lo, hi).ok_or_else(|| format!("bad range in {s}"))?,
                    );
                }
            }
        }
    }
    Ok(())
}

/// The port-protocol part of a connection set (see the module doc).
pub fn ports_only(c: &ConnSet) -> (String, String, String) {
    (c.tcp.to_string(), c.udp.to_string(), c.sctp.to_string())
}
