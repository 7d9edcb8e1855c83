//! The few system operations the lab needs: commands (`ip`, `nft`, `sysctl`),
//! entering a network namespace on a thread, processes, and the Ctrl-C flag.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context as _, Result};

/// Runs a command; fails with the command line and its stderr.
pub fn cmd(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`cmd`] inside the network namespace `ns`.
pub fn cmd_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    cmd(&full)
}

/// Feeds `input` to `nft -f -` inside `ns`.
pub fn nft_in(ns: &str, input: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run nft (`cargo xtask setup` installs nftables)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(input.as_bytes())
        .context("writing the ruleset to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft rejected the lab's ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Where `ip netns` keeps named namespaces.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// Named network namespaces whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Moves the calling thread into the network namespace `name`.
pub fn enter(name: &str) -> Result<()> {
    let path = netns_path(name);
    let f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET changes only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "setns into {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Runs `f` on a thread inside the network namespace `ns` and waits for it.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a lab thread panicked"))?
}

/// Process ids running in the network namespace `ns` (`ip netns pids`).
pub fn pids_in(ns: &str) -> Vec<i32> {
    cmd(&["ip", "netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// SIGTERM, then SIGKILL after `grace`; returns once the process is gone.
pub fn terminate(pid: i32, grace: std::time::Duration) {
    if !alive(pid) {
        return;
    }
    // SAFETY: plain kill(2) on a pid the lab started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + grace;
    while alive(pid) && std::time::Instant::now() < deadline {
        reap(pid);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    reap(pid);
}

/// SIGTERM to our child, SIGKILL after `grace`; returns its exit status.
pub fn stop_child(
    child: &mut std::process::Child,
    grace: std::time::Duration,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(st) = child.try_wait()? {
        return Ok(st);
    }
    // SAFETY: plain kill(2) on our own child's pid (not yet reaped).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + grace;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            return child.wait();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Collects a child's exit status if it is ours (no zombie left behind).
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on one pid; fails harmlessly if not our child.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// The command line of a process, NUL-separated arguments joined by spaces.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP set a flag instead of killing the
/// process, so that the lab can tear down what it built (the steps check
/// [`interrupted`] between actions and every network wait is bounded).
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Whether Ctrl-C (or SIGTERM/SIGHUP) arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with "interrupted" once Ctrl-C arrived.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `fd` is a terminal.
pub fn isatty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}
