//! What the kernel and /proc say about programs and processes: per-program
//! run-time statistics, a process's CPU time and resident memory, and the
//! memory its BPF maps lock.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::programs::{SchedClassifier, TcAttachType};

/// Totals the kernel keeps per program while `BPF_ENABLE_STATS` is on
/// (`bpf_prog_info.run_time_ns`, `run_cnt`).
#[derive(Clone, Debug, Default)]
pub struct ProgStats {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every program attached with tcx to `iface` (in the calling thread's
/// network namespace), ingress and egress, by program id. A program attached
/// in both directions, or to several interfaces, is one entry: the kernel's
/// statistics are per program.
pub fn tcx_stats(iface: &str) -> Result<BTreeMap<u32, ProgStats>> {
    let mut out = BTreeMap::new();
    for t in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, progs) = SchedClassifier::query_tcx(iface, t)
            .with_context(|| format!("querying the tcx programs on {iface}"))?;
        for p in progs {
            out.insert(
                p.id(),
                ProgStats {
                    name: p.name_as_str().unwrap_or("?").to_string(),
                    run_time_ns: p.run_time().as_nanos() as u64,
                    run_cnt: p.run_count(),
                },
            );
        }
    }
    Ok(out)
}

/// Run time and run count between two readings, summed over the programs
/// `pick` selects (programs present in both readings only).
pub fn delta(
    before: &BTreeMap<u32, ProgStats>,
    after: &BTreeMap<u32, ProgStats>,
    pick: impl Fn(&str) -> bool,
) -> (u64, u64) {
    let mut t = 0;
    let mut n = 0;
    for (id, a) in after {
        if !pick(&a.name) {
            continue;
        }
        if let Some(b) = before.get(id) {
            t += a.run_time_ns.saturating_sub(b.run_time_ns);
            n += a.run_cnt.saturating_sub(b.run_cnt);
        }
    }
    (t, n)
}

/// user + system CPU seconds of a process so far (`/proc/<pid>/stat`
/// fields 14 and 15, in clock ticks; proc(5)).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces; fields restart after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no ')'"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state), so field 14 is index 11.
    let ticks = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Busy CPU seconds of the whole machine so far: user, nice, system, irq
/// and softirq of the `cpu` line of `/proc/stat` (proc(5); idle, iowait,
/// steal and guest time left out), in clock ticks.
pub fn machine_busy_seconds() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat: no cpu line")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<f64>())
        .collect::<Result<_, _>>()
        .context("/proc/stat: cpu line")?;
    // user nice system idle iowait irq softirq steal guest guest_nice
    let busy = |i: usize| f.get(i).copied().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((busy(0) + busy(1) + busy(2) + busy(5) + busy(6)) / hz)
}

/// Resident set size in MiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_mib(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("{path}: no VmRSS"))?;
    Ok(kb / 1024.0)
}

/// Memory the kernel charges for the BPF maps a process holds open: the sum
/// of `memlock:` over its map fds (`/proc/<pid>/fdinfo/*` with a `map_type:`
/// line; kernel/bpf/syscall.c, `bpf_map_show_fdinfo`). A map open twice
/// counts once (by `map_id`). Returns (bytes, maps).
pub fn map_memlock(pid: u32) -> Result<(u64, usize)> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut seen = BTreeMap::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(e) = e else { continue };
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if !text.contains("map_type:") {
            continue;
        }
        let field = |k: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
        };
        let id = field("map_id:").unwrap_or(u64::MAX - seen.len() as u64);
        seen.insert(id, field("memlock:").unwrap_or(0));
    }
    Ok((seen.values().sum(), seen.len()))
}

/// Whether an executable is on PATH.
pub fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
        || Path::new(name).is_file()
}
