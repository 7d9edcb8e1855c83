//! What a build script can't do: set up the machine, run every test (the
//! privileged ones included), run the local lab, run the benchmarks.
//!
//! ```text
//!  cargo xtask setup ─► apt packages, pinned nightly + rust-src, bpf-linker, Python tools
//!  cargo xtask test  ─► setup ─► cargo build, fuzz build ─► cargo test ─► every fuzz target for 20 s
//!  cargo xtask fuzz  ─► setup ─► every cargo-fuzz target in fuzz/ for 25 s
//!  cargo xtask soak  ─► setup ─► cargo build --release ─► target/release/segwatch-soak
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
    /// this machine (about 6 minutes; --quick: about one). Writes
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
    /// Set up, then run every cargo-fuzz target in fuzz/ for a bounded
    /// time each; fails on a crash (the input stays in fuzz/artifacts/).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = FUZZ_SECONDS)]
        seconds: u32,
    },
    /// Set up, build in release mode, then run `segwatch run` under mixed
    /// traffic and pod churn (not part of `test`): samples RSS, flow-table
    /// occupancy, losses and attachments, and says whether memory and
    /// occupancy stayed flat. Writes target/soak/results.json and results.md.
    Soak {
        /// How long traffic runs.
        #[arg(long, default_value_t = 10.0, value_name = "N")]
        minutes: f64,
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
        Task::Soak { minutes } => soak(&root, minutes),
        Task::Fuzz { seconds } => {
            setup::run(&root)?;
            fuzz(&root, seconds)
        }
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
    // The fuzz targets use the lib's API too: a change that breaks them
    // fails here, in minutes, not after the whole test run.
    fuzz_build(root)?;
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
    let tests = run(&mut cmd);
    // The parsers face files and queries from users: every fuzz target
    // runs for a bounded time on every test run, also when a test failed
    // (both verdicts are reported).
    let fuzzed = fuzz_run(root, TEST_FUZZ_SECONDS);
    match (tests, fuzzed) {
        (Ok(()), Ok(())) => {
            step("all tests passed, no fuzz target found a crash");
            Ok(())
        }
        (Err(t), Ok(())) => Err(t),
        (Ok(()), Err(f)) => Err(f),
        (Err(t), Err(f)) => Err(t.context(format!("and fuzzing failed too: {f:#}"))),
    }
}

/// Seconds per fuzz target within `cargo xtask test`.
const TEST_FUZZ_SECONDS: u32 = 20;

/// The cargo-fuzz targets in fuzz/ and where their seeds come from.
const FUZZ_TARGETS: &[(&str, &[&str])] = &[
    (
        "segpolicy",
        &[
            "deploy/examples",
            "monitor/tests/fixtures/audit/policy.yaml",
        ],
    ),
    (
        "inventory",
        &[
            "monitor/tests/fixtures/audit",
            "monitor/tests/fixtures/suggest/inventory.yaml",
            "monitor/tests/fixtures/netpol-analyzer/cases",
            "deploy/examples",
        ],
    ),
    (
        "flow_log",
        &[
            "monitor/tests/fixtures/audit",
            "monitor/tests/fixtures/suggest",
        ],
    ),
    ("netpol_query", &["fuzz/seeds/netpol_query"]),
];
/// Seconds each target runs by default.
const FUZZ_SECONDS: u32 = 25;
/// Longest input; seeds above it are left out (YAML cut in the middle only
/// tests the syntax error path, which short inputs reach anyway).
const FUZZ_MAX_LEN: u64 = 16 * 1024;

/// Runs every fuzz target for a bounded time (`cargo xtask fuzz`); a crash, a panic or an input
/// that takes more than 10 s fails the run, the input is kept in
/// fuzz/artifacts/<target>/ for a regression test.
///
/// The lib embeds the kernel object, so monitor/build.rs builds it under
/// cargo-fuzz too: aya-build hands its nested cargo CARGO_ENCODED_RUSTFLAGS
/// (which wins over the RUSTFLAGS cargo-fuzz sets), so no sanitizer or
/// coverage flag reaches the bpfel build.
fn fuzz(root: &Path, seconds: u32) -> Result<()> {
    fuzz_build(root)?;
    fuzz_run(root, seconds)
}

/// The same flags for build and run, or `run` builds again.
const FUZZ_FLAGS: [&str; 2] = ["--codegen-units", "16"];

/// Builds every fuzz target (AddressSanitizer, coverage).
fn fuzz_build(root: &Path) -> Result<()> {
    let nightly = format!("+{}", setup::NIGHTLY);
    step(&format!(
        "fuzz: building {} targets (cargo-fuzz, {}, AddressSanitizer)",
        FUZZ_TARGETS.len(),
        setup::NIGHTLY
    ));
    run(Command::new("cargo")
        .current_dir(root)
        .args([nightly.as_str(), "fuzz", "build"])
        .args(FUZZ_FLAGS))
    .context("the fuzz targets in fuzz/ do not build")
}

/// Runs every (built) fuzz target for `seconds` each.
fn fuzz_run(root: &Path, seconds: u32) -> Result<()> {
    let nightly = format!("+{}", setup::NIGHTLY);
    for (target, seed_paths) in FUZZ_TARGETS {
        let seeds = root.join("target/fuzz-seeds").join(target);
        let n = collect_seeds(root, seed_paths, &seeds)?;
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        step(&format!(
            "fuzz: {target} for {seconds} s ({n} seeds from {}; corpus kept in fuzz/corpus/{target})",
            seed_paths.join(", ")
        ));
        run(Command::new("cargo")
            .current_dir(root)
            .args([nightly.as_str(), "fuzz", "run"])
            .args(FUZZ_FLAGS)
            .arg(target)
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={FUZZ_MAX_LEN}"))
            .arg("-timeout=10")
            .arg("-print_final_stats=1"))
        .with_context(|| {
            format!("fuzz target {target} failed: the input is in fuzz/artifacts/{target}/; reproduce with `cargo {nightly} fuzz run {target} <file>`")
        })?;
    }
    Ok(())
}

/// Copies the fixture files under `paths` (files or directories,
/// recursively) of at most FUZZ_MAX_LEN bytes into `dest`, and each line
/// of a JSON-lines file as a seed of its own. Returns how many.
fn collect_seeds(root: &Path, paths: &[&str], dest: &Path) -> Result<usize> {
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut files = Vec::new();
    let mut todo: Vec<PathBuf> = paths.iter().map(|p| root.join(p)).collect();
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("reading {}", p.display()))? {
                todo.push(e?.path());
            }
        } else if p.is_file() {
            files.push(p);
        }
    }
    let mut n = 0;
    for f in files {
        let text = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        let mut put = |bytes: &[u8]| -> Result<()> {
            if !bytes.is_empty() && bytes.len() as u64 <= FUZZ_MAX_LEN {
                n += 1;
                std::fs::write(dest.join(format!("seed-{n}")), bytes)
                    .with_context(|| format!("writing seeds to {}", dest.display()))?;
            }
            Ok(())
        };
        put(&text)?;
        if f.extension().is_some_and(|e| e == "jsonl") {
            for line in text.split(|&b| b == b'\n') {
                put(line)?;
            }
        }
    }
    Ok(n)
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
    run(&mut cmd)?;
    step("cluster index at scale (results in target/bench/index.md)");
    let mut index = Command::new(root.join("target/release/segwatch-index-bench"));
    index
        .current_dir(root)
        .arg("--out")
        .arg(root.join("target/bench"));
    if quick {
        // 500 nodes' worth: the same code paths in seconds.
        index.args(["--nodes", "500"]);
    }
    run(&mut index)
}

fn soak(root: &Path, minutes: f64) -> Result<()> {
    setup::run(root)?;
    require_root("the soak creates network namespaces and loads BPF programs")?;
    step("building segwatch and the soak driver (release)");
    run(Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release"]))?;
    step(&format!(
        "soak: {minutes} min of traffic and churn (results in target/soak/)"
    ));
    run(Command::new(root.join("target/release/segwatch-soak"))
        .current_dir(root)
        .arg("--minutes")
        .arg(minutes.to_string())
        .arg("--out")
        .arg(root.join("target/soak"))
        .arg("--command")
        .arg(format!("cargo xtask soak --minutes {minutes}")))
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("must run as root: {why}");
    }
    Ok(())
}
