//! Conformance: the connectivity listing of every case of the
//! np-guard/netpol-analyzer suite must equal its expected file.
//!
//! Data: `tests/fixtures/netpol-analyzer/` — `cases/<case>/` (inputs) and
//! `expected/<case>_connlist_output.txt`, copied from np-guard/netpol-analyzer
//! (Apache-2.0, see the LICENSE there; snapshot of commit e54a33430edb,
//! 2025-10-08) via the project's shared conformance data.
//!
//! Normalisation: none beyond what `segwatch netpol matrix` prints itself
//! (see `netpol::matrix`); line endings of the expected files are ignored.

use std::path::{Path, PathBuf};

use segwatch::inventory;
use segwatch::netpol::{matrix, Engine, Objects};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/netpol-analyzer")
}

fn listing(case: &Path) -> String {
    let inv = inventory::load_paths(&[case.to_path_buf()])
        .unwrap_or_else(|e| panic!("case {} must load: {e}", case.display()));
    let (engine, warnings) = Engine::build(&Objects::from_inventory(&inv.objects));
    assert!(
        warnings.is_empty(),
        "case {}: no policy may be invalid: {warnings:?}",
        case.display()
    );
    matrix::render(&matrix::connectivity(&engine))
}

#[test]
fn every_conformance_case_matches_its_expected_listing() {
    let root = fixtures();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root.join("cases"))
        .unwrap_or_else(|e| panic!("conformance cases under {} must exist: {e}", root.display()))
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 42, "the suite has 42 cases");

    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let expected_path = root
            .join("expected")
            .join(format!("{name}_connlist_output.txt"));
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!("expected file {} must exist: {e}", expected_path.display())
        });
        let expected: Vec<&str> = expected
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.is_empty())
            .collect();
        let got = listing(case);
        let got: Vec<&str> = got.lines().collect();
        if got != expected {
            let missing: Vec<_> = expected
                .iter()
                .filter(|l| !got.contains(l))
                .take(5)
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|l| !expected.contains(l))
                .take(5)
                .collect();
            failures.push(format!(
                "{name}: {} lines expected, {} produced; missing (first 5): {missing:#?}; unexpected (first 5): {extra:#?}",
                expected.len(),
                got.len()
            ));
        }
    }
    println!(
        "netpol conformance: {}/{} cases match",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
