//! Shared harness for segwatch's privileged end-to-end tests.
//!
//! ```text
//!   pod netns "p0" ──veth──┐                  ┌──veth── pod netns "p1"
//!     10.77.0.2/30 eth0    │   node netns     │    eth0 10.77.1.2/30
//!     fd77:0::2/64         └─ sw<tag>0  sw<tag>1 ┘    fd77:1::2/64
//!                             (routes between pods, runs `segwatch run`)
//! ```
//!
//! Each test builds its own *node* network namespace standing for the host,
//! with pods as further namespaces routed through it, as a CNI does. The
//! daemon runs inside the node namespace, so tests never touch the real
//! host's interfaces, routes or sysctls, run in parallel without seeing each
//! other, and no packet can leave the machine (the node has no uplink).
//! Everything is removed on drop.
//!
//! Traffic is made by this process itself: a thread enters a pod's
//! namespace (setns) and opens real sockets, so the byte counts the tests
//! expect are exactly what the sockets sent.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod api;
mod capture;
mod daemon;
mod netns;
mod objects;
mod serve;
mod traffic;

pub use api::*;
pub use capture::*;
pub use daemon::*;
pub use netns::*;
pub use objects::*;
pub use serve::*;
pub use traffic::*;

/// Privileged tests need root (network namespaces, BPF). They fail loudly
/// instead of skipping, so a CI run without privileges cannot pass silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, BPF programs); run `cargo xtask test` as root"
    );
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`sh`] inside a network namespace.
pub fn sh_in(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full)
}

/// A short tag unique to this process and call, for interface and namespace
/// names (interface names are at most 15 bytes).
pub fn unique_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n}", std::process::id() % 0xfff)
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
