//! Shared harness for segwatch's privileged end-to-end tests: network
//! namespaces and veth pairs routed through the host (like a CNI), the daemon
//! as a child process, and helpers to read its flow log and /metrics.
//!
//! Every test builds its own namespaces with unique names and removes them
//! on drop, so tests run in parallel without touching each other.

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
