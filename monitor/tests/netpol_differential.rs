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
//!   them, as segwatch does. The same holds for `DoesNotExist` (e.g.
//!   `tier: front` plus `app DoesNotExist` misses a pod labelled only
//!   `tier: front` in another namespace). Neither is generated in that
//!   position (both still are in policy podSelectors and podSelector-only
//!   peers).
//! - IPv6: no IPv6 ipBlocks are generated and nca's `::`-ranges are skipped;
//!   IPv6 containment is covered by the unit and property tests.
//!
//! `SEGWATCH_NETPOL_DIFF_CASES` (default 200) and `SEGWATCH_NETPOL_DIFF_SEED`
//! change the number of cases and the seed. Without nca the test is skipped
//! with a note, unless `SEGWATCH_REQUIRE_PRIVILEGED=1` (CI), where it fails.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use segwatch::inventory;
use segwatch::netpol::ports::ConnSet;
use segwatch::netpol::{Engine, Objects, Peer};

mod netpol_gen;
use netpol_gen::{find_nca, gen_case, nca_connectivity, parse_conns, parse_side, ports_only, Side};

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
                            let res = nca_connectivity(&nca, &[("-r", &dir)]);
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
