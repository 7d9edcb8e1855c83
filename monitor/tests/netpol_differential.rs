//! Differential test: segwatch's NetworkPolicy engine against an independent
//! implementation, IBM network-config-analyzer (`nca`, PyPI, installed by
//! `cargo xtask setup` into target/tools/venv).
//!
//! Seeded random clusters (namespaces with labels, pods with named ports,
//! policies with every selector operator, namespaceSelector+podSelector
//! peers, ipBlocks with except, numeric/named/endPort ports over TCP, UDP and
//! SCTP, all policyTypes forms) are written to a directory, `nca
//! --connectivity -r DIR -o txt_no_fw_rules --output_endpoints pods` lists
//! what it allows, and every pod pair, and every pod with the first and last
//! address of every external range of both tools, must get the same port
//! sets per protocol from both.
//!
//! Known convention differences (handled below, each with its reason):
//! - Protocols without ports: nca's "All connections" also covers ICMP and
//!   other protocols; segwatch's connection sets compare TCP, UDP and SCTP
//!   port sets only (NetworkPolicy ports name only those three).
//! - Rules of a direction missing from an explicit `policyTypes`: the API
//!   server accepts them (they have no effect), nca rejects the policy; the
//!   generator does not produce them (unit tests cover the case).
//! - `egress: []` without `policyTypes`: upstream defaulting adds Egress
//!   only when `len(spec.Egress) != 0` (pkg/apis/networking/v1/defaults.go,
//!   SetDefaults_NetworkPolicy), so the policy does not isolate egress; nca
//!   treats the present-but-empty list as egress isolation. Not generated.
//! - `Exists` in the podSelector of a peer that also has a
//!   namespaceSelector: nca does not match pods of other namespaces that
//!   carry the key (e.g. `tier Exists` misses a pod labelled `tier: back`
//!   in a selected namespace, while `tier In [back]` matches it); the API's
//!   LabelSelector semantics ("Exists": the label key is present) match
//!   them, as segwatch does. Not generated in that position (Exists is
//!   still generated in policy podSelectors and podSelector-only peers).
//! - IPv6: no IPv6 ipBlocks are generated and nca's `::`-ranges are skipped;
//!   IPv6 containment is covered by the unit and property tests.
//!
//! `SEGWATCH_NETPOL_DIFF_CASES` (default 200) and `SEGWATCH_NETPOL_DIFF_SEED`
//! change the number of cases and the seed. Without nca the test is skipped
//! with a note, unless `SEGWATCH_REQUIRE_PRIVILEGED=1` (CI), where it fails.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use segwatch::inventory;
use segwatch::netpol::ports::{ConnSet, PortRange, Protocol};
use segwatch::netpol::{Engine, Objects, Peer};
use serde_json::{json, Value};

/// SplitMix64: a tiny deterministic generator, so a seed reproduces a case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const POD_LABELS: &[(&str, &[&str])] =
    &[("app", &["web", "api", "db"]), ("tier", &["front", "back"])];
const NS_LABELS: &[(&str, &[&str])] = &[("env", &["prod", "dev"]), ("team", &["a", "b"])];
/// Named container ports: name, protocol, candidate numbers.
const NAMED_PORTS: &[(&str, &str, &[u16])] = &[
    ("http", "TCP", &[80, 8080]),
    ("dns", "UDP", &[53, 5353]),
    ("metrics", "TCP", &[9090, 9100]),
    ("sig", "SCTP", &[7777, 7778]),
];

fn gen_selector(rng: &mut Rng, vocab: &[(&str, &[&str])]) -> Value {
    gen_selector_with(rng, vocab, true)
}

fn gen_selector_with(rng: &mut Rng, vocab: &[(&str, &[&str])], exists: bool) -> Value {
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
                    _ => json!({"key": k, "operator": "DoesNotExist"}),
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

fn gen_peer(rng: &mut Rng) -> Value {
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

fn gen_port(rng: &mut Rng) -> Value {
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

fn gen_rules(rng: &mut Rng, peers_key: &str) -> Value {
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
fn gen_case(seed: u64) -> Vec<Value> {
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

fn find_nca() -> Option<PathBuf> {
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
enum Side {
    Pod(String),
    Range(u32, u32),
}

fn parse_side(s: &str) -> Option<Side> {
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
fn parse_conns(s: &str, into: &mut ConnSet) -> Result<(), String> {
    if s == "All connections" {
        *into = ConnSet::all();
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
fn ports_only(c: &ConnSet) -> (String, String, String) {
    (c.tcp.to_string(), c.udp.to_string(), c.sctp.to_string())
}

struct NcaResult {
    pods: HashMap<(String, String), ConnSet>,
    /// (pod, range, pod is source, conns)
    external: Vec<(String, (u32, u32), bool, ConnSet)>,
}

fn external_entry(
    r: &mut NcaResult,
    pod: String,
    range: (u32, u32),
    pod_is_src: bool,
) -> &mut ConnSet {
    let i = match r
        .external
        .iter()
        .position(|(p, rg, s, _)| *p == pod && *rg == range && *s == pod_is_src)
    {
        Some(i) => i,
        None => {
            r.external.push((pod, range, pod_is_src, ConnSet::empty()));
            r.external.len() - 1
        }
    };
    &mut r.external[i].3
}

fn parse_nca(out: &str) -> Result<NcaResult, String> {
    let mut r = NcaResult {
        pods: HashMap::new(),
        external: Vec::new(),
    };
    for line in out.lines() {
        let Some((pair, conns)) = line.split_once(" : ") else {
            continue;
        };
        let Some((src, dst)) = pair.split_once(" => ") else {
            continue;
        };
        if src.contains(':') || dst.contains(':') {
            continue; // IPv6 ranges: see the module doc.
        }
        let (Some(s), Some(d)) = (parse_side(src), parse_side(dst)) else {
            return Err(format!("unparsable nca line {line:?}"));
        };
        match (s, d) {
            (Side::Pod(a), Side::Pod(b)) => parse_conns(conns, r.pods.entry((a, b)).or_default())?,
            // nca prints one line per protocol group: accumulate per pair.
            (Side::Pod(a), Side::Range(lo, hi)) => {
                parse_conns(conns, external_entry(&mut r, a, (lo, hi), true))?
            }
            (Side::Range(lo, hi), Side::Pod(b)) => {
                parse_conns(conns, external_entry(&mut r, b, (lo, hi), false))?
            }
            _ => return Err(format!("unexpected nca line {line:?}")),
        }
    }
    Ok(r)
}

/// Compares one case; returns the differences (empty = agree).
fn compare(dir: &Path, nca_out: &str) -> Vec<String> {
    let nca = match parse_nca(nca_out) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let inv = inventory::load_paths(&[dir.to_path_buf()]).expect("generated case loads");
    let (engine, warnings) = Engine::build(&Objects::from_inventory(&inv.objects));
    if !warnings.is_empty() {
        return vec![format!(
            "engine warnings on a generated (valid) case: {warnings:?}"
        )];
    }
    let mut diffs = Vec::new();
    let pods: Vec<(String, Peer)> = engine
        .endpoints()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                e.id(),
                Peer::Endpoint(segwatch::netpol::EndpointId(i as u32)),
            )
        })
        .collect();
    for (a, pa) in &pods {
        for (b, pb) in &pods {
            if a == b {
                continue;
            }
            let ours = engine.connections(*pa, *pb);
            let theirs = nca
                .pods
                .get(&(a.clone(), b.clone()))
                .cloned()
                .unwrap_or_default();
            if ports_only(&ours) != ports_only(&theirs) {
                diffs.push(format!("{a} => {b}: segwatch {ours}, nca {theirs}"));
            }
        }
    }
    // External addresses: the ends of every range either tool cuts.
    let mut probes: Vec<u32> = vec![0, u32::MAX];
    for (_, (lo, hi), _, _) in &nca.external {
        probes.extend([*lo, *hi]);
    }
    for egress in [true, false] {
        for r in segwatch::netpol::matrix::external_ranges(&engine, egress) {
            if r.v4 {
                probes.extend([r.lo as u32, r.hi as u32]);
            }
        }
    }
    probes.sort_unstable();
    probes.dedup();
    for (a, pa) in &pods {
        for &x in &probes {
            let ip = IpAddr::V4(Ipv4Addr::from(x));
            if engine.endpoint_by_ip(ip).is_some() {
                continue; // a pod's address is that pod, compared above
            }
            for pod_is_src in [true, false] {
                let ours = if pod_is_src {
                    engine.connections(*pa, Peer::Ip(ip))
                } else {
                    engine.connections(Peer::Ip(ip), *pa)
                };
                let theirs = nca
                    .external
                    .iter()
                    .find(|(p, (lo, hi), s, _)| p == a && *s == pod_is_src && *lo <= x && x <= *hi)
                    .map(|(_, _, _, c)| c.clone())
                    .unwrap_or_default();
                if ports_only(&ours) != ports_only(&theirs) {
                    let (s, d) = if pod_is_src {
                        (a.clone(), ip.to_string())
                    } else {
                        (ip.to_string(), a.clone())
                    };
                    diffs.push(format!("{s} => {d}: segwatch {ours}, nca {theirs}"));
                }
            }
        }
    }
    diffs
}

#[test]
fn engine_agrees_with_network_config_analyzer_on_random_clusters() {
    let Some(nca) = find_nca() else {
        let msg = "nca (network-config-analyzer) not found on PATH or in target/tools/venv; run `cargo xtask setup`";
        if std::env::var("SEGWATCH_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{msg} (SEGWATCH_REQUIRE_PRIVILEGED=1 requires it)");
        }
        eprintln!("note: skipping the differential test: {msg}");
        return;
    };
    let cases: u64 = std::env::var("SEGWATCH_NETPOL_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("SEGWATCH_NETPOL_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5e6_a7c4);
    let root = std::env::temp_dir().join(format!("segwatch-netpol-diff-{}", std::process::id()));

    // Write every case, then run nca on them from a few threads.
    let dirs: Vec<(u64, PathBuf)> = (0..cases)
        .map(|i| {
            let case_seed = seed.wrapping_add(i);
            let dir = root.join(format!("case-{case_seed}"));
            std::fs::create_dir_all(&dir).expect("create case dir");
            let yaml: Vec<String> = gen_case(case_seed)
                .iter()
                .map(|d| serde_yaml_ng::to_string(d).expect("yaml"))
                .collect();
            std::fs::write(dir.join("cluster.yaml"), yaml.join("---\n")).expect("write case");
            (case_seed, dir)
        })
        .collect();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    let outputs: BTreeMap<u64, Result<String, String>> = std::thread::scope(|s| {
        let chunks: Vec<Vec<(u64, PathBuf)>> = (0..workers)
            .map(|w| dirs.iter().skip(w).step_by(workers).cloned().collect())
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let nca = nca.clone();
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|(seed, dir)| {
                            let out = Command::new(&nca)
                                .arg("--connectivity")
                                .arg("-r")
                                .arg(&dir)
                                .args(["-o", "txt_no_fw_rules", "--output_endpoints", "pods"])
                                .output();
                            let res = match out {
                                Ok(o) if o.status.success() => {
                                    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
                                }
                                Ok(o) => Err(format!(
                                    "nca failed ({}): {}",
                                    o.status,
                                    String::from_utf8_lossy(&o.stderr)
                                        .lines()
                                        .last()
                                        .unwrap_or_default()
                                )),
                                Err(e) => Err(format!("cannot run {}: {e}", nca.display())),
                            };
                            (seed, res)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("nca worker"))
            .collect()
    });

    let mut failures = Vec::new();
    let mut compared = 0;
    for (seed, dir) in &dirs {
        match &outputs[seed] {
            Err(e) => failures.push(format!("case seed {seed} ({}): {e}", dir.display())),
            Ok(out) => {
                compared += 1;
                let diffs = compare(dir, out);
                if !diffs.is_empty() {
                    failures.push(format!(
                        "case seed {seed} ({}), {} differences, first: {:#?}",
                        dir.display(),
                        diffs.len(),
                        &diffs[..diffs.len().min(4)]
                    ));
                }
            }
        }
    }
    println!(
        "netpol differential: {compared} cases compared with nca, {} differ",
        failures.len()
    );
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&root);
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ from nca (inputs kept):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
