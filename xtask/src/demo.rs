//! `cargo xtask demo`: set-up, release build, then the local lab (the `lab`
//! crate); `--clean` removes a lab left behind, `--keep` leaves it running.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{require_root, run as run_cmd, setup, step};

pub fn run(root: &Path, keep: bool, clean: bool, segwatch: Option<PathBuf>) -> Result<()> {
    require_root("the lab creates network namespaces and segwatch loads BPF programs")?;
    let prefix = lab::DEFAULT_PREFIX;
    if clean {
        let c = lab::clean(prefix)?;
        for p in &c.processes {
            step(&format!("stopped process {p}"));
        }
        for n in &c.namespaces {
            step(&format!("removed network namespace {n}"));
        }
        if !c.failures.is_empty() {
            bail!("could not remove: {}", c.failures.join("; "));
        }
        if c.processes.is_empty() && c.namespaces.is_empty() {
            step("no lab found: nothing to remove");
        }
        return Ok(());
    }
    // Refuse early, before minutes of set-up and build.
    let previous = lab::sys::netns_with_prefix(&format!("{prefix}-"));
    if !previous.is_empty() {
        bail!(
            "a previous lab is still there ({} network namespaces, e.g. {}); remove it with `cargo xtask demo --clean`",
            previous.len(),
            previous[0]
        );
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let segwatch = match segwatch {
        Some(p) => p,
        None => {
            setup::run(root)?;
            step("building segwatch (release; kernel programs included)");
            run_cmd(
                Command::new("cargo")
                    .current_dir(root)
                    .args(["build", "--release"]),
            )?;
            target.join("release").join("segwatch")
        }
    };
    lab::sys::catch_interrupts();
    let keeper = keep.then(|| {
        let mut c = Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
        c.args(["lab-serve", "--prefix", prefix]);
        c
    });
    let started = std::time::Instant::now();
    let outcome = lab::run(lab::Options {
        prefix: prefix.to_string(),
        segwatch,
        out_dir: target.join("lab"),
        rules: Some(root.join("deploy").join("prometheus").join("rules.yaml")),
        keep: keeper,
        style: lab::Style {
            colour: lab::sys::isatty(1),
        },
        clean_hint: "cargo xtask demo --clean".to_string(),
    })
    .with_context(|| {
        if lab::sys::interrupted() {
            "interrupted: everything the lab built has been removed"
        } else {
            "the lab failed (everything it built has been removed)"
        }
    })?;
    println!(
        "\n  lab done in {:.0} s: {} flow reports, {} alerts; outputs in {}",
        started.elapsed().as_secs_f64(),
        outcome.reports.len(),
        outcome.alerts.len(),
        outcome
            .flow_log
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    Ok(())
}
