//! Builds the kernel programs (`monitor-ebpf`) with the pinned nightly and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`.
//! `cargo xtask setup` installs both; without them the error says so.

use anyhow::Context as _;

/// The nightly the kernel crate builds with. bpf-linker must read its LLVM 22
/// bitcode, so this moves only together with bpf-linker (see xtask).
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir).join("..");
    let ebpf_dir = root.join("monitor-ebpf");
    let common_dir = root.join("monitor-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("non-UTF-8 path to monitor-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "monitor-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` (pinned nightly \
         with rust-src, bpf-linker for LLVM 22)",
    )
}
