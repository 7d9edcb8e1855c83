//! What a build script can't do: set up the machine, run every test (the
//! privileged ones included), run the local lab, run the benchmarks.
//!
//! ```text
//!  cargo xtask setup ─► apt packages, pinned nightly + rust-src, bpf-linker, Python tools
//!  cargo xtask test  ─► setup ─► cargo build ─► cargo test --workspace ─► offline checks
//!  cargo xtask demo  ─► setup ─► cargo build --release ─► the lab
//!  cargo xtask bench ─► setup ─► cargo build --release ─► target/release/segwatch-bench
//!                        ─► target/bench/results.json + results.md
//! ```

mod demo;
mod setup;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "xtask", about = "segwatch's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (idempotent): Debian tools, the pinned nightly
    /// with rust-src, bpf-linker for LLVM 22, the Python checkers.
    Setup,
    /// Set up, build, then run every test, the privileged ones included.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build (release), then run the local lab: a small cluster of
    /// network namespaces, segwatch watching it, allowed and forbidden
    /// traffic, the violations and alerts. Removes everything afterwards.
    Demo {
        /// Leave the lab running (daemon, pods, listeners) to poke at by hand.
        #[arg(long, conflicts_with = "clean")]
        keep: bool,
        /// Remove what a previous lab left behind, then exit.
        #[arg(long)]
        clean: bool,
        /// Use this segwatch binary and skip set-up and build (development).
        #[arg(long, value_name = "PATH")]
        segwatch: Option<std::path::PathBuf>,
    },
    /// (internal) Keeps the listeners of a `demo --keep` lab running.
    #[command(hide = true)]
    LabServe {
        #[arg(long, default_value = lab::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Set up, build in release mode, then measure what segwatch costs on
    /// this machine (about 10 minutes; --quick: about one). Writes
    /// target/bench/results.json and target/bench/results.md. Fails only
    /// when something cannot be measured, never because a target is missed.
    Bench {
        /// About one minute: fewer and shorter repetitions.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for segwatch-bench (e.g. `--only tcp`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Task::Setup => setup::run(&root),
        Task::Test { args } => test(&root, &args),
        Task::Demo {
            keep,
            clean,
            segwatch,
        } => demo::run(&root, keep, clean, segwatch),
        Task::LabServe { prefix } => lab::keep_serving(&prefix),
        Task::Bench { quick, args } => bench(&root, quick, &args),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> Result<PathBuf> {
    let manifest = env!("CARGO_MANIFEST_DIR");
    Path::new(manifest)
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// Runs a command, failing with the command line in the message.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("{line} failed: {status}");
    }
    Ok(())
}

pub fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    setup::run(root)?;
    require_root("the privileged tests create network namespaces and load BPF programs")?;
    // Default members only (never --workspace): the kernel crate is built
    // for bpfel by monitor/build.rs, not for the host.
    step("building (kernel programs included)");
    run(Command::new("cargo")
        .current_dir(root)
        .args(["build", "--all-targets"]))?;
    step("running every test");
    let mut cmd = Command::new("cargo");
    // Every failure at once, not just the first test binary's.
    cmd.current_dir(root).args(["test", "--no-fail-fast"]);
    if !args.is_empty() {
        cmd.args(args);
    }
    // The tools the tests drive (nca, kubernetes-validate) live in our venv.
    cmd.env("PATH", setup::path_with_tools(root)?);
    cmd.env("SEGWATCH_REQUIRE_PRIVILEGED", "1");
    run(&mut cmd)?;
    step("all tests passed");
    Ok(())
}

fn bench(root: &Path, quick: bool, args: &[String]) -> Result<()> {
    setup::run(root)?;
    require_root("the benchmark creates network namespaces and loads BPF programs")?;
    step("building segwatch and the benchmark (release)");
    // Default members only: the kernel crate is built by monitor/build.rs.
    run(Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release"]))?;
    step("measuring (results in target/bench/)");
    let mut cmd = Command::new(root.join("target/release/segwatch-bench"));
    cmd.current_dir(root)
        .arg("--out")
        .arg(root.join("target/bench"))
        .arg("--command")
        .arg(if quick {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        });
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(args);
    run(&mut cmd)
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("must run as root: {why}");
    }
    Ok(())
}
