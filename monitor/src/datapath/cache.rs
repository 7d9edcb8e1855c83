//! Running the flush of the kernel's per-CPU flow cache on every CPU.
//!
//! `BPF_PROG_TEST_RUN` of a tc program runs it on the calling CPU with
//! preemption off (net/bpf/test_run.c, `bpf_test_run`), so a thread pinned
//! to a CPU flushes exactly that CPU's slots. The thread's CPU mask is put
//! back afterwards.

use std::mem::{size_of, zeroed};

use super::DatapathError;

/// The calling thread's CPU mask.
fn mask() -> std::io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; all zero is an empty set.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(set)
}

fn set_mask(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn online() -> Vec<u32> {
    aya::util::online_cpus().unwrap_or_default()
}

/// Whether this process may run on every online CPU (then it can flush
/// each CPU's cache).
pub fn flushable() -> bool {
    let Ok(set) = mask() else { return false };
    let cpus = online();
    !cpus.is_empty()
        && cpus.iter().all(|&c| {
            (c as usize) < libc::CPU_SETSIZE as usize
                // SAFETY: `c` is below CPU_SETSIZE.
                && unsafe { libc::CPU_ISSET(c as usize, &set) }
        })
}

/// Runs `f` on each online CPU in turn, then restores the thread's mask.
// The datapath's one error type, as everywhere in this module's callers.
#[allow(clippy::result_large_err)]
pub fn on_each_cpu(
    mut f: impl FnMut(u32) -> Result<(), DatapathError>,
) -> Result<(), DatapathError> {
    let saved = mask().map_err(|source| DatapathError::Flush { cpu: 0, source })?;
    let mut result = Ok(());
    for cpu in online() {
        // SAFETY: plain data; CPU_SET below is bounds-checked by the guard.
        let mut one: libc::cpu_set_t = unsafe { zeroed() };
        if cpu as usize >= libc::CPU_SETSIZE as usize {
            result = Err(DatapathError::Flush {
                cpu,
                source: std::io::Error::other("CPU number beyond CPU_SETSIZE"),
            });
            break;
        }
        // SAFETY: `cpu` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu as usize, &mut one) };
        if let Err(source) = set_mask(&one) {
            result = Err(DatapathError::Flush { cpu, source });
            break;
        }
        if let Err(e) = f(cpu) {
            result = Err(e);
            break;
        }
    }
    if let Err(source) = set_mask(&saved) {
        tracing::warn!(error = %source, "cannot restore the thread's CPU mask after a cache flush");
    }
    result
}
