//! Differential test of staged policies (issue #17) against an independent
//! implementation, IBM network-config-analyzer (`nca`, installed by `cargo
//! xtask setup` into target/tools/venv).
//!
//! Seeded random clusters (the generator of `netpol_differential.rs`) get
//! random staged objects on top of their live NetworkPolicies: new
//! StagedNetworkPolicies, staged *updates* (same namespace and name as a
//! live policy, another spec) and staged removals (`spec.action: Delete`).
//! The test converts live + staged into the plain NetworkPolicy set that
//! would be live after applying them (updates replace, removals remove) and
//! asks `nca --connectivity -n NAMESPACES -p PODS -r POLICIES` what it
//! allows. segwatch judges through the staged overlay
//! (`Overlay::build` + `Overlay::judge`, as the daemon does per connection):
//! for every pod pair, and every pod with both ends of every external range
//! either tool cuts, per protocol (TCP, UDP, SCTP) and probe port, the
//! staged verdict (`allowed`/`would_allow` vs `denied`/`would_deny`) must
//! equal nca's, and the port sets of the overlay's engine must equal nca's.
//!
//! Conventions as in `netpol_differential.rs` (only TCP/UDP/SCTP port sets
//! compared; no IPv6 ranges). `SEGWATCH_STAGED_DIFF_CASES` (default 24)
//! and `SEGWATCH_STAGED_DIFF_SEED` change the number of cases and the seed.
//! nca missing is a failure naming it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use segwatch::inventory;
use segwatch::netpol::ports::{ConnSet, Protocol};
use segwatch::netpol::staged::{Overlay, StagedObjects};
use segwatch::netpol::{Engine, Objects, Peer, Query};
use segwatch::report::StagedVerdict;
use serde_json::{json, Value};

mod netpol_gen;
use netpol_gen::{
    find_nca, gen_case, nca_connectivity, parse_conns, parse_side, ports_only, Rng, Side,
};

/// Ports every pair is judged on: the generator's port numbers, the ends
/// of its ranges and their neighbours, named port numbers, the extremes.
const PROBE_PORTS: &[u16] = &[
    1, 49, 50, 53, 80, 100, 101, 443, 1024, 1025, 5353, 6999, 7000, 7777, 7778, 7999, 8000, 8080,
    8100, 8101, 9090, 9100, 65535,
];
const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// What one case holds, besides its files.
struct Case {
    dir: PathBuf,
    /// Staged objects: (new, updates, removals).
    staged: (usize, usize, usize),
}

fn yaml(list: &[Value]) -> String {
    list.iter()
        .map(|d| serde_yaml_ng::to_string(d).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn id(p: &Value) -> (String, String) {
    (
        p["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn staged_doc(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "segwatch.dev/v1alpha1", "kind": "StagedNetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// Writes one case: `ns.yaml`, `pods.yaml`, `live.yaml`, `staged.yaml`
/// (what segwatch reads) and `applied.yaml` (live with the staged objects
/// applied, as plain NetworkPolicies: what nca reads).
fn write_case(seed: u64, dir: &Path) -> Case {
    let docs = gen_case(seed);
    let kind = |d: &Value| d["kind"].as_str().unwrap_or_default().to_string();
    let namespaces: Vec<Value> = docs
        .iter()
        .filter(|d| kind(d) == "Namespace")
        .cloned()
        .collect();
    let pods: Vec<Value> = docs.iter().filter(|d| kind(d) == "Pod").cloned().collect();
    let live: Vec<Value> = docs
        .iter()
        .filter(|d| kind(d) == "NetworkPolicy")
        .cloned()
        .collect();
    let mut fresh = gen_case(seed ^ 0x57a6_ed00_0000)
        .into_iter()
        .filter(|d| kind(d) == "NetworkPolicy");
    let mut rng = Rng(seed ^ 0x0057_a6ed);
    let mut staged = Vec::new();
    let (mut applied, mut counts) = (Vec::new(), (0, 0, 0));
    for p in &live {
        let (ns, name) = id(p);
        match rng.below(10) {
            0..=2 => {
                staged.push(staged_doc(&ns, &name, json!({"action": "Delete"})));
                counts.2 += 1;
            }
            3 | 4 => match fresh.next() {
                Some(f) => {
                    staged.push(staged_doc(&ns, &name, f["spec"].clone()));
                    let mut updated = p.clone();
                    updated["spec"] = f["spec"].clone();
                    applied.push(updated);
                    counts.1 += 1;
                }
                None => applied.push(p.clone()),
            },
            _ => applied.push(p.clone()),
        }
    }
    for k in 0..rng.below(3) {
        let Some(f) = fresh.next() else { break };
        let ns = format!("ns{}", rng.below(namespaces.len()));
        let name = format!("sq{k}");
        staged.push(staged_doc(&ns, &name, f["spec"].clone()));
        let mut p = f.clone();
        p["metadata"] = json!({"name": name, "namespace": ns});
        applied.push(p);
        counts.0 += 1;
    }
    if applied.is_empty() || staged.is_empty() {
        // nca wants at least one policy; every case stages something: a
        // default-deny of both directions in ns0.
        let spec = json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]});
        staged.push(staged_doc("ns0", "sq-deny", spec.clone()));
        applied.push(
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                            "metadata": {"name": "sq-deny", "namespace": "ns0"}, "spec": spec}),
        );
        counts.0 += 1;
    }
    std::fs::create_dir_all(dir).expect("case dir");
    for (file, list) in [
        ("ns.yaml", &namespaces),
        ("pods.yaml", &pods),
        ("live.yaml", &live),
        ("staged.yaml", &staged),
        ("applied.yaml", &applied),
    ] {
        std::fs::write(dir.join(file), yaml(list)).expect("write case");
    }
    Case {
        dir: dir.to_path_buf(),
        staged: counts,
    }
}

/// nca's connectivity: pod pairs and (pod, range, pod is source) entries.
#[derive(Default)]
struct Nca {
    pods: HashMap<(String, String), ConnSet>,
    external: Vec<(String, (u32, u32), bool, ConnSet)>,
}

fn parse_nca(out: &str) -> Result<Nca, String> {
    let mut r = Nca::default();
    for line in out.lines() {
        let Some((pair, conns)) = line.split_once(" : ") else {
            continue;
        };
        let Some((src, dst)) = pair.split_once(" => ") else {
            continue;
        };
        if src.contains(':') || dst.contains(':') {
            continue; // IPv6 ranges: not generated, not compared.
        }
        let (Some(s), Some(d)) = (parse_side(src), parse_side(dst)) else {
            return Err(format!("unparsable nca line {line:?}"));
        };
        match (s, d) {
            (Side::Pod(a), Side::Pod(b)) => parse_conns(conns, r.pods.entry((a, b)).or_default())?,
            (Side::Pod(a), Side::Range(lo, hi)) => {
                let mut c = ConnSet::empty();
                parse_conns(conns, &mut c)?;
                r.external.push((a, (lo, hi), true, c));
            }
            (Side::Range(lo, hi), Side::Pod(b)) => {
                let mut c = ConnSet::empty();
                parse_conns(conns, &mut c)?;
                r.external.push((b, (lo, hi), false, c));
            }
            _ => return Err(format!("unexpected nca line {line:?}")),
        }
    }
    Ok(r)
}

/// Verdict tallies over all cases.
#[derive(Default, Debug)]
struct Tally {
    allowed: u64,
    denied: u64,
    would_deny: u64,
    would_allow: u64,
}

impl Tally {
    fn add(&mut self, v: StagedVerdict) {
        match v {
            StagedVerdict::Allowed => self.allowed += 1,
            StagedVerdict::Denied => self.denied += 1,
            StagedVerdict::WouldDeny => self.would_deny += 1,
            StagedVerdict::WouldAllow => self.would_allow += 1,
        }
    }
}

/// Compares one case; returns the differences (empty = agree).
fn compare(case: &Case, nca_out: &str, tally: &mut Tally) -> Vec<String> {
    let nca = match parse_nca(nca_out) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let files: Vec<PathBuf> = ["ns.yaml", "pods.yaml", "live.yaml", "staged.yaml"]
        .iter()
        .map(|f| case.dir.join(f))
        .collect();
    let inv = inventory::load_paths(&files).expect("generated case loads");
    let live_objects = Objects::from_inventory(&inv.objects);
    let (live, warnings) = Engine::build(&live_objects);
    let (overlay, staged_warnings) =
        Overlay::build(&live_objects, &StagedObjects::from_inventory(&inv.objects));
    if !warnings.is_empty() || !staged_warnings.is_empty() {
        return vec![format!(
            "warnings on a generated (valid) case: {warnings:?} {staged_warnings:?}"
        )];
    }
    let staged = overlay.engine();
    let mut diffs = Vec::new();
    // Judges src -> dst on every probe port and protocol through the
    // overlay; compares with nca's connection set.
    let mut judge = |a: &str, b: &str, src: Peer, dst: Peer, theirs: &ConnSet| {
        let ours = staged.connections(src, dst);
        if ports_only(&ours) != ports_only(theirs) {
            diffs.push(format!("{a} => {b}: segwatch staged {ours}, nca {theirs}"));
        }
        for protocol in PROTOCOLS {
            for &port in PROBE_PORTS {
                let q = Query {
                    src,
                    dst,
                    protocol,
                    port,
                };
                let j = overlay.judge(&live, &live.evaluate(&q), &q);
                tally.add(j.verdict);
                let ours = matches!(
                    j.verdict,
                    StagedVerdict::Allowed | StagedVerdict::WouldAllow
                );
                if ours != theirs.contains(protocol, port) {
                    diffs.push(format!(
                        "{a} => {b} {port}/{protocol}: staged verdict {:?} (decided by {:?}), nca {theirs}",
                        j.verdict, j.decided_by
                    ));
                }
            }
        }
    };
    let pods: Vec<(String, IpAddr)> = staged
        .endpoints()
        .iter()
        .map(|e| (e.id(), e.ips[0]))
        .collect();
    for (a, ia) in &pods {
        for (b, ib) in &pods {
            if a == b {
                continue;
            }
            let theirs = nca
                .pods
                .get(&(a.clone(), b.clone()))
                .cloned()
                .unwrap_or_default();
            judge(a, b, Peer::Ip(*ia), Peer::Ip(*ib), &theirs);
        }
    }
    let mut probes: Vec<u32> = vec![0, u32::MAX];
    for (_, (lo, hi), _, _) in &nca.external {
        probes.extend([*lo, *hi]);
    }
    for engine in [&live, staged] {
        for egress in [true, false] {
            for r in segwatch::netpol::matrix::external_ranges(engine, egress) {
                if r.v4 {
                    probes.extend([r.lo as u32, r.hi as u32]);
                }
            }
        }
    }
    probes.sort_unstable();
    probes.dedup();
    for (a, ia) in &pods {
        for &x in &probes {
            let ip = IpAddr::V4(Ipv4Addr::from(x));
            if staged.endpoint_by_ip(ip).is_some() {
                continue;
            }
            for pod_is_src in [true, false] {
                let mut theirs = ConnSet::empty();
                for (p, (lo, hi), s, c) in &nca.external {
                    if p == a && *s == pod_is_src && *lo <= x && x <= *hi {
                        theirs.union(c);
                    }
                }
                let x = ip.to_string();
                if pod_is_src {
                    judge(a, &x, Peer::Ip(*ia), Peer::Ip(ip), &theirs);
                } else {
                    judge(&x, a, Peer::Ip(ip), Peer::Ip(*ia), &theirs);
                }
            }
        }
    }
    diffs
}

#[test]
fn staged_verdicts_agree_with_nca_on_the_applied_policy_set() {
    let nca = find_nca().unwrap_or_else(|| {
        panic!("nca (network-config-analyzer, PyPI) not found on PATH or in target/tools/venv: run `cargo xtask setup`")
    });
    let started = Instant::now();
    let cases: u64 = std::env::var("SEGWATCH_STAGED_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let seed: u64 = std::env::var("SEGWATCH_STAGED_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x57a6_ed17);
    let root = std::env::temp_dir().join(format!("segwatch-staged-diff-{}", std::process::id()));
    let all: Vec<(u64, Case)> = (0..cases)
        .map(|i| {
            let s = seed.wrapping_add(i);
            (s, write_case(s, &root.join(format!("case-{s}"))))
        })
        .collect();

    // nca per case, from two threads (a Python start each).
    let outputs: BTreeMap<u64, Result<String, String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..2)
            .map(|w| {
                let (nca, all) = (&nca, &all);
                sc.spawn(move || {
                    all.iter()
                        .skip(w)
                        .step_by(2)
                        .map(|(s, case)| {
                            let d = &case.dir;
                            let res = nca_connectivity(
                                nca,
                                &[
                                    ("-n", &d.join("ns.yaml")),
                                    ("-p", &d.join("pods.yaml")),
                                    ("-r", &d.join("applied.yaml")),
                                ],
                            );
                            (*s, res)
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

    let nca_secs = started.elapsed().as_secs_f64();
    let mut tally = Tally::default();
    let mut staged = (0, 0, 0);
    let mut failures = Vec::new();
    for (s, case) in &all {
        staged.0 += case.staged.0;
        staged.1 += case.staged.1;
        staged.2 += case.staged.2;
        match &outputs[s] {
            Err(e) => failures.push(format!("case seed {s} ({}): {e}", case.dir.display())),
            Ok(out) => {
                let d = compare(case, out, &mut tally);
                if !d.is_empty() {
                    failures.push(format!(
                        "case seed {s} ({}), {} differences, first: {:#?}",
                        case.dir.display(),
                        d.len(),
                        &d[..d.len().min(4)]
                    ));
                }
            }
        }
    }
    println!(
        "staged differential: {cases} cases ({} new, {} updates, {} removals staged) in {:.1} s ({nca_secs:.1} s writing and running nca); verdicts {tally:?}; {} differ",
        staged.0,
        staged.1,
        staged.2,
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    // The generator must exercise every kind of staged object and change.
    assert!(
        staged.0 > 0 && staged.1 > 0 && staged.2 > 0,
        "new, updated and removed policies staged: {staged:?}"
    );
    assert!(
        tally.would_deny > 0 && tally.would_allow > 0,
        "both would_deny and would_allow occur: {tally:?}"
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
