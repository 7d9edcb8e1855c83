//! Differential test of `netpol diff` against an independent
//! implementation: IBM network-config-analyzer's semantic diff (`nca
//! --semantic_diff NEW --base_np_list REF -n NAMESPACES -p PODS`, installed
//! by `cargo xtask setup` into target/tools/venv).
//!
//! Seeded random pairs of NetworkPolicy sets over one random topology (the
//! generator of `netpol_differential.rs`): the reference set is a random
//! set, the new one drops each of its policies with 30% chance and adds up
//! to two fresh ones. nca lists, per pod pair (and per pod and external
//! range), the connections added and removed; segwatch's diff lines give
//! before and after per pair, so added = after - before and removed =
//! before - after must equal nca's, per protocol port sets, for every pod
//! pair and for every pod with both ends of every external range either
//! tool cuts.
//!
//! Conventions (as in `netpol_differential.rs`): only TCP, UDP and SCTP
//! port sets are compared (nca's "All connections" also covers ICMP);
//! IPv6 ranges are not generated and nca's `::` lines are skipped.
//!
//! `SEGWATCH_NETPOL_SEMDIFF_CASES` (default 40) and
//! `SEGWATCH_NETPOL_SEMDIFF_SEED` change the number of cases and the seed.
//! nca missing is a failure naming it (`cargo xtask setup` installs it).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use segwatch::inventory;
use segwatch::netpol::diff::{diff, DiffLine};
use segwatch::netpol::ports::ConnSet;
use segwatch::netpol::{Engine, Objects};
use serde_json::Value;

mod netpol_gen;
use netpol_gen::{find_nca, gen_case, parse_conns, parse_side, ports_only, Rng, Side};

/// nca's added (or removed) connections: pod pairs and pod/range pairs.
#[derive(Default)]
struct Section {
    pods: HashMap<(String, String), ConnSet>,
    /// (pod, (lo, hi), pod is source) -> conns
    external: Vec<(String, (u32, u32), bool, ConnSet)>,
}

fn parse_semantic_diff(out: &str) -> Result<(Section, Section), String> {
    let (mut added, mut removed) = (Section::default(), Section::default());
    let mut current: Option<bool> = None; // Some(true): added
    for line in out.lines() {
        if line.starts_with("Added connections") {
            current = Some(true);
            continue;
        }
        if line.starts_with("Removed connections") {
            current = Some(false);
            continue;
        }
        if line.starts_with("New connections") || line.starts_with("Lost connections") {
            // Peers present on one side only: the topology is shared here.
            return Err(format!("unexpected section {line:?}"));
        }
        let Some((pair, conns)) = line.split_once(" : ") else {
            continue;
        };
        let Some((src, dst)) = pair.split_once(" => ") else {
            continue;
        };
        if src.contains(':') || dst.contains(':') {
            continue; // IPv6 ranges: see the module doc.
        }
        let sec = match current {
            Some(true) => &mut added,
            Some(false) => &mut removed,
            None => return Err(format!("connection line outside a section: {line:?}")),
        };
        let (Some(s), Some(d)) = (parse_side(src), parse_side(dst)) else {
            return Err(format!("unparsable nca line {line:?}"));
        };
        match (s, d) {
            (Side::Pod(a), Side::Pod(b)) => {
                parse_conns(conns, sec.pods.entry((a, b)).or_default())?
            }
            (Side::Pod(a), Side::Range(lo, hi)) => {
                let mut c = ConnSet::empty();
                parse_conns(conns, &mut c)?;
                sec.external.push((a, (lo, hi), true, c));
            }
            (Side::Range(lo, hi), Side::Pod(b)) => {
                let mut c = ConnSet::empty();
                parse_conns(conns, &mut c)?;
                sec.external.push((b, (lo, hi), false, c));
            }
            _ => return Err(format!("unexpected nca line {line:?}")),
        }
    }
    Ok((added, removed))
}

/// (pod, range, pod is source, added, removed) of one of our diff lines.
type OursExternal = (String, (u32, u32), bool, ConnSet, ConnSet);

/// `ns/name[Pod]` -> `ns/name`.
fn pod_of(endpoint: &str) -> Option<&str> {
    endpoint.strip_suffix("[Pod]")
}

/// `a.b.c.d-e.f.g.h[External]` -> the IPv4 range.
fn range_of(endpoint: &str) -> Option<(u32, u32)> {
    let (a, b) = endpoint.strip_suffix("[External]")?.split_once('-')?;
    Some((
        u32::from(a.parse::<Ipv4Addr>().ok()?),
        u32::from(b.parse::<Ipv4Addr>().ok()?),
    ))
}

fn union_at(list: &[(String, (u32, u32), bool, ConnSet)], pod: &str, x: u32, src: bool) -> ConnSet {
    let mut c = ConnSet::empty();
    for (p, (lo, hi), s, conns) in list {
        if p == pod && *s == src && *lo <= x && x <= *hi {
            c.union(conns);
        }
    }
    c
}

/// Writes one case: namespaces, pods, ref and new policies as separate
/// files; returns (ref policy count, new policy count).
fn write_case(seed: u64, dir: &Path) -> (usize, usize) {
    let docs = gen_case(seed);
    let kind = |d: &Value| d["kind"].as_str().unwrap_or_default().to_string();
    let namespaces: Vec<&Value> = docs.iter().filter(|d| kind(d) == "Namespace").collect();
    let pods: Vec<&Value> = docs.iter().filter(|d| kind(d) == "Pod").collect();
    let reference: Vec<Value> = docs
        .iter()
        .filter(|d| kind(d) == "NetworkPolicy")
        .cloned()
        .collect();
    let mut rng = Rng(seed ^ 0x00d1_ff00);
    let mut new: Vec<Value> = reference
        .iter()
        .filter(|_| !rng.chance(30))
        .cloned()
        .collect();
    let fresh: Vec<Value> = gen_case(seed ^ 0x5eed_0000_0000)
        .into_iter()
        .filter(|d| kind(d) == "NetworkPolicy")
        .take(rng.below(3))
        .collect();
    for (k, mut p) in fresh.into_iter().enumerate() {
        // Into a namespace of this topology, under a name of its own.
        let ns = format!("ns{}", rng.below(namespaces.len()));
        p["metadata"]["namespace"] = Value::String(ns);
        p["metadata"]["name"] = Value::String(format!("nq{k}"));
        new.push(p);
    }
    if new.is_empty() {
        // Both tools want at least one policy in a file.
        new.push(reference[0].clone());
    }
    let yaml = |list: &[&Value]| -> String {
        list.iter()
            .map(|d| serde_yaml_ng::to_string(d).expect("yaml"))
            .collect::<Vec<_>>()
            .join("---\n")
    };
    std::fs::create_dir_all(dir.join("ref")).expect("case dir");
    std::fs::create_dir_all(dir.join("new")).expect("case dir");
    std::fs::write(dir.join("ns.yaml"), yaml(&namespaces)).expect("write");
    std::fs::write(dir.join("pods.yaml"), yaml(&pods)).expect("write");
    std::fs::write(
        dir.join("ref/np.yaml"),
        yaml(&reference.iter().collect::<Vec<_>>()),
    )
    .expect("write");
    std::fs::write(
        dir.join("new/np.yaml"),
        yaml(&new.iter().collect::<Vec<_>>()),
    )
    .expect("write");
    (reference.len(), new.len())
}

fn engine_of(dir: &Path, set: &str) -> Engine {
    let inv = inventory::load_paths(&[
        dir.join("ns.yaml"),
        dir.join("pods.yaml"),
        dir.join(set).join("np.yaml"),
    ])
    .expect("generated case loads");
    let (engine, warnings) = Engine::build(&Objects::from_inventory(&inv.objects));
    assert!(
        warnings.is_empty(),
        "generated policies are valid: {warnings:?}"
    );
    engine
}

fn compare(dir: &Path, nca_out: &str, nca_changed: bool) -> Vec<String> {
    let (added, removed) = match parse_semantic_diff(nca_out) {
        Ok(x) => x,
        Err(e) => return vec![e],
    };
    let (reference, new) = (engine_of(dir, "ref"), engine_of(dir, "new"));
    let lines: Vec<DiffLine> = diff(&reference, &new);
    let mut diffs = Vec::new();
    if lines.is_empty() == nca_changed {
        diffs.push(format!(
            "segwatch says {} change, nca says {}",
            if lines.is_empty() { "no" } else { "a" },
            if nca_changed {
                "not equivalent"
            } else {
                "equivalent"
            }
        ));
    }
    let pods: Vec<String> = new.endpoints().iter().map(|e| e.id()).collect();
    // Ours, per pod pair and per (pod, range, side).
    let mut ours_pods: HashMap<(String, String), (ConnSet, ConnSet)> = HashMap::new();
    let mut ours_ext: Vec<OursExternal> = Vec::new();
    for l in &lines {
        let plus = l.after.difference(&l.before);
        let minus = l.before.difference(&l.after);
        match (
            pod_of(&l.src),
            pod_of(&l.dst),
            range_of(&l.src),
            range_of(&l.dst),
        ) {
            (Some(a), Some(b), _, _) => {
                ours_pods.insert((a.to_string(), b.to_string()), (plus, minus));
            }
            (Some(a), None, _, Some(r)) => ours_ext.push((a.to_string(), r, true, plus, minus)),
            (None, Some(b), Some(r), _) => ours_ext.push((b.to_string(), r, false, plus, minus)),
            _ => {
                if !l.src.contains(':') && !l.dst.contains(':') {
                    diffs.push(format!("unexpected diff line {l}"));
                }
            }
        }
    }
    let none = (ConnSet::empty(), ConnSet::empty());
    for a in &pods {
        for b in &pods {
            if a == b {
                continue;
            }
            let (plus, minus) = ours_pods.get(&(a.clone(), b.clone())).unwrap_or(&none);
            let key = (a.clone(), b.clone());
            let their_plus = added.pods.get(&key).cloned().unwrap_or_default();
            let their_minus = removed.pods.get(&key).cloned().unwrap_or_default();
            if ports_only(plus) != ports_only(&their_plus)
                || ports_only(minus) != ports_only(&their_minus)
            {
                diffs.push(format!(
                    "{a} => {b}: segwatch +[{plus}] -[{minus}], nca +[{their_plus}] -[{their_minus}]"
                ));
            }
        }
    }
    let mut probes: Vec<u32> = vec![0, u32::MAX];
    for (_, (lo, hi), _, _) in added.external.iter().chain(removed.external.iter()) {
        probes.extend([*lo, *hi]);
    }
    for (_, (lo, hi), _, _, _) in &ours_ext {
        probes.extend([*lo, *hi]);
    }
    probes.sort_unstable();
    probes.dedup();
    for a in &pods {
        for &x in &probes {
            if new.endpoint_by_ip(IpAddr::V4(Ipv4Addr::from(x))).is_some() {
                continue;
            }
            for src in [true, false] {
                let mut plus = ConnSet::empty();
                let mut minus = ConnSet::empty();
                for (p, (lo, hi), s, pl, mi) in &ours_ext {
                    if p == a && *s == src && *lo <= x && x <= *hi {
                        plus.union(pl);
                        minus.union(mi);
                    }
                }
                let tp = union_at(&added.external, a, x, src);
                let tm = union_at(&removed.external, a, x, src);
                if ports_only(&plus) != ports_only(&tp) || ports_only(&minus) != ports_only(&tm) {
                    let ip = Ipv4Addr::from(x);
                    let (s, d) = if src {
                        (a.clone(), ip.to_string())
                    } else {
                        (ip.to_string(), a.clone())
                    };
                    diffs.push(format!(
                        "{s} => {d}: segwatch +[{plus}] -[{minus}], nca +[{tp}] -[{tm}]"
                    ));
                }
            }
        }
    }
    diffs
}

#[test]
fn netpol_diff_agrees_with_nca_semantic_diff_on_random_pairs() {
    let nca = find_nca().unwrap_or_else(|| {
        panic!("nca (network-config-analyzer, PyPI) not found on PATH or in target/tools/venv: run `cargo xtask setup`")
    });
    let cases: u64 = std::env::var("SEGWATCH_NETPOL_SEMDIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("SEGWATCH_NETPOL_SEMDIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xd1ff_5eed);
    let root = std::env::temp_dir().join(format!("segwatch-netpol-semdiff-{}", std::process::id()));
    let mut failures = Vec::new();
    let mut changed = 0;
    for i in 0..cases {
        let s = seed.wrapping_add(i);
        let dir = root.join(format!("case-{s}"));
        write_case(s, &dir);
        let out = Command::new(&nca)
            .arg("--semantic_diff")
            .arg(dir.join("new/np.yaml"))
            .arg("--base_np_list")
            .arg(dir.join("ref/np.yaml"))
            .arg("-n")
            .arg(dir.join("ns.yaml"))
            .arg("-p")
            .arg(dir.join("pods.yaml"))
            .args(["-o", "txt_no_fw_rules", "--output_endpoints", "pods"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nca.display()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // nca's exit status: 0 equivalent, 1 not equivalent, anything
        // else an error.
        match out.status.code() {
            Some(0) => {}
            Some(1) => changed += 1,
            _ => {
                failures.push(format!(
                    "case seed {s} ({}): nca failed ({}): {}",
                    dir.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or_default()
                ));
                continue;
            }
        }
        let d = compare(&dir, &text, out.status.code() == Some(1));
        if !d.is_empty() {
            failures.push(format!(
                "case seed {s} ({}), {} differences, first: {:#?}",
                dir.display(),
                d.len(),
                &d[..d.len().min(4)]
            ));
        }
    }
    println!(
        "netpol diff vs nca semantic diff: {cases} cases, {changed} with changes, {} differ",
        failures.len()
    );
    assert!(changed > 0, "the generator must produce some changes");
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&root);
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ (inputs kept):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
