//! `cargo xtask setup`: installs only what is missing and says what it does.

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run as run_cmd, step};

/// The nightly that builds the kernel crate (keep in step with monitor/build.rs).
pub const NIGHTLY: &str = "nightly-2026-05-19";
/// bpf-linker release line that reads LLVM 22 bitcode.
const BPF_LINKER_VERSION: &str = "0.13";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages: the LLVM bpf-linker links against, and the tools the tests,
/// the lab and the benchmarks drive.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("tshark", "independent packet witness in the datapath tests"),
    ("iproute2", "network namespaces and veth pairs"),
    ("bpftool", "checks that nothing stays attached"),
    (
        "ethtool",
        "turns veth offloads off where tshark must see wire packets",
    ),
    (
        "nftables",
        "the lab's Service DNAT (kube-proxy nftables mode)",
    ),
    ("iperf3", "throughput benchmark"),
    ("iputils-ping", "ICMP traffic in the soak run"),
    (
        "softflowd",
        "the benchmark's peer: a libpcap NetFlow probe on the same traffic",
    ),
    (
        "prometheus",
        "promtool for the alert rules, Prometheus for suggest",
    ),
    (
        "nfdump",
        "nfcapd/nfdump: the real IPFIX collector the export test sends to",
    ),
    ("python3-venv", "venv for the Python checkers"),
    (
        "curl",
        "HTTPS scrapes with bearer tokens in the authenticated-metrics test",
    ),
    (
        "chromium",
        "headless rendering check of the audit HTML report",
    ),
];

/// Python tools, installed into target/tools/venv.
const PIP_PACKAGES: &[(&str, &str)] = &[
    ("network-config-analyzer", "nca"),
    ("kubernetes-validate", "kubernetes-validate"),
];

pub fn run(root: &Path) -> Result<()> {
    apt(root)?;
    nightly()?;
    bpf_linker()?;
    cargo_fuzz()?;
    venv(root)?;
    Ok(())
}

/// cargo-fuzz runs the parser fuzz targets in `cargo xtask test`.
fn cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have {
        step("cargo-fuzz: present");
        return Ok(());
    }
    step("installing cargo-fuzz (runs the fuzz targets in fuzz/)");
    run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt(_root: &Path) -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(pkg, _)| !dpkg_installed(pkg))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    for (pkg, why) in APT_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        step(&format!("installing {pkg} ({why})"));
    }
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
    .context("apt-get install failed (are you root on a Debian/Ubuntu host?)")
}

fn nightly() -> Result<()> {
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup not found: install Rust with rustup first")?;
    let have_toolchain = String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.starts_with(NIGHTLY));
    let have_src = have_toolchain
        && Command::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("rust-src"))
            })
            .unwrap_or(false);
    if have_toolchain && have_src {
        step(&format!("{NIGHTLY} with rust-src: present"));
        return Ok(());
    }
    step(&format!(
        "installing {NIGHTLY} with rust-src (builds the kernel programs)"
    ));
    run_cmd(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn bpf_linker() -> Result<()> {
    let current = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = &current {
        let v = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && v.contains(&format!(" {BPF_LINKER_VERSION}.")) {
            step(&format!("bpf-linker: present ({})", v.trim()));
            return Ok(());
        }
    }
    step(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)"
    ));
    run_cmd(Command::new("cargo").env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        &format!("^{BPF_LINKER_VERSION}"),
        "--no-default-features",
        "--features",
        "llvm-22",
        "--force",
    ]))
}

/// target/tools/venv, holding the Python checkers.
pub fn venv_dir(root: &Path) -> PathBuf {
    root.join("target").join("tools").join("venv")
}

fn venv(root: &Path) -> Result<()> {
    let venv = venv_dir(root);
    let bin = venv.join("bin");
    let missing: Vec<&str> = PIP_PACKAGES
        .iter()
        .filter(|(_, exe)| !bin.join(exe).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        step("Python checkers (nca, kubernetes-validate): present");
        return Ok(());
    }
    if !bin.join("pip").exists() {
        step(&format!("creating Python venv {}", venv.display()));
        run_cmd(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    step(&format!("installing {} into the venv", missing.join(", ")));
    run_cmd(
        Command::new(bin.join("pip"))
            .args(["install", "--quiet"])
            .args(&missing),
    )
}

/// PATH with the venv's bin first, for the tests that run the checkers.
pub fn path_with_tools(root: &Path) -> Result<String> {
    let old = std::env::var("PATH").unwrap_or_default();
    let bin = venv_dir(root).join("bin");
    Ok(format!(
        "{}:{old}",
        bin.to_str().context("non-UTF-8 venv path")?
    ))
}
