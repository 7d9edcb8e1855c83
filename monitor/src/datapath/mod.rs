//! The kernel side as the daemon sees it: load the programs, attach them to
//! interfaces, read the flow table, the counters and the new-flow events.
//!
//! ```text
//!  Datapath::load ─► capabilities checked ─► object loaded (FLOWS sized by --max-flows)
//!                 └► jiffies calibrated against the monotonic clock (segwatch_clock)
//!  attach(ifname) ─► tcx ingress + egress, LinkOrder::first()   (kernel ≥ 6.6)
//!                 └► clsact qdisc + direct-action filters        (older kernels)
//!  snapshot_each()─► every FLOWS entry (batched), current connection's counts
//!  take(keys)     ─► lookup-and-delete: the last counts of ended entries
//!  counters()     ─► COUNTERS summed over CPUs
//!  take_events()  ─► the ring buffer, for an async reader
//! ```

pub mod budget;
pub mod cache;
pub mod caps;
pub mod craft;
pub mod links;
pub mod table;

use std::collections::BTreeMap;

use std::os::fd::AsFd as _;

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::tc::{self, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use monitor_common::{
    Counter, FinalStats, FlowKey, FlowStats, FlowValue, TupleKey, CACHE_ENABLED_GLOBAL,
    CACHE_SLOTS, CLOCK_MAP, COUNTERS_MAP, EVENTS_MAP, FLOWS_MAP, FLUSH_CHUNK, GEN_ROTATING,
    MARK_SECOND_IF, PROG_CLOCK, PROG_EGRESS, PROG_FLUSH, PROG_INGRESS,
};

/// The compiled kernel programs (built by build.rs with aya-build).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("missing capabilities {missing}: run as root or grant them (the DaemonSet adds BPF, NET_ADMIN, PERFMON)")]
    MissingCapabilities { missing: String },
    #[error("cannot load the eBPF programs (kernel {kernel}; segwatch needs BTF and kernel ≥ 5.12 for BPF atomics and ring buffers)")]
    Load {
        kernel: String,
        #[source]
        source: aya::EbpfError,
    },
    #[error("cannot load program {name} into the kernel (verifier or missing kernel support)")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("unknown interface {name}")]
    UnknownInterface { name: String },
    #[error("no program named {name} in the object")]
    UnknownProgram { name: String },
    #[error("cannot attach to {ifname} ({direction})")]
    Attach {
        ifname: String,
        direction: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name} missing from the object or of the wrong type")]
    Map { name: &'static str },
    #[error("reading map {name}")]
    MapRead {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading map {name} in batches")]
    Batch {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot calibrate jiffies against the monotonic clock: {reason}")]
    Clock { reason: String },
    #[error("cannot flush the per-CPU flow cache of CPU {cpu}")]
    Flush {
        cpu: u32,
        #[source]
        source: std::io::Error,
    },
}

/// One connection as the kernel table holds it: the counts of the entry's
/// current connection (generation), with times in monotonic ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The tuple and the interface that counts it.
    pub key: FlowKey,
    pub stats: FlowStats,
    /// Generation of the connection on this tuple (see [`FlowValue`]).
    pub gen: u32,
    /// The connection also crossed a second interface of this node (whose
    /// packets the kernel did not count again).
    pub second_if: bool,
}

impl Entry {
    /// The current connection of a kernel value; `None` for a copy torn by a
    /// rotation running at the same time (see [`FlowValue`]).
    pub fn from_value(key: &TupleKey, v: &FlowValue, clock: &JiffyClock) -> Option<Entry> {
        if u64::from(v.gen_lo) != v.gen || v.gen & GEN_ROTATING != 0 {
            return None;
        }
        let stats = FlowStats {
            packets: [
                v.packets[0].wrapping_sub(v.base_packets[0]),
                v.packets[1].wrapping_sub(v.base_packets[1]),
            ],
            bytes: [
                v.bytes[0].wrapping_sub(v.base_bytes[0]),
                v.bytes[1].wrapping_sub(v.base_bytes[1]),
            ],
            first_ns: v.first_ns,
            last_ns: clock.to_ns(v.last_jiffies).max(v.first_ns),
            tcp_flags: [v.tcp_flags as u8, (v.tcp_flags >> 8) as u8],
            opener: v.opener,
            _pad: [0; 5],
        };
        Some(Entry {
            key: FlowKey::new(key, v.ifindex),
            stats,
            gen: v.gen as u32,
            second_if: v.marks & MARK_SECOND_IF != 0,
        })
    }
}

/// The final totals the kernel handed over when a SYN started a new
/// connection on the tuple.
pub fn final_stats(f: &FinalStats, clock: &JiffyClock) -> FlowStats {
    FlowStats {
        packets: f.packets,
        bytes: f.bytes,
        first_ns: f.first_ns,
        last_ns: clock.to_ns(f.last_jiffies).max(f.first_ns),
        tcp_flags: [f.tcp_flags as u8, (f.tcp_flags >> 8) as u8],
        opener: f.opener,
        _pad: [0; 5],
    }
}

/// Maps `bpf_jiffies64()` values to the monotonic clock. The programs read
/// jiffies for the last-seen time (~1 ns: the verifier inlines the helper)
/// instead of `bpf_ktime_get_ns()` (~33 ns per call on this kind of
/// machine); exact ns only for a connection's first packet. A converted
/// time is correct to one tick (1/CONFIG_HZ: 1-10 ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JiffyClock {
    anchor_ns: u64,
    anchor_jiffies: u64,
    /// CONFIG_HZ of the running kernel.
    pub hz: u32,
}

/// The tick rates Linux can be built with (kernel/Kconfig.hz).
const KERNEL_HZ: [u32; 4] = [100, 250, 300, 1000];

impl JiffyClock {
    /// From two samples `(ns, jiffies)` of both clocks, far enough apart to
    /// tell the tick rates apart (≥ 100 ms).
    pub fn from_samples(a: (u64, u64), b: (u64, u64)) -> Result<Self, DatapathError> {
        let dns = b.0.saturating_sub(a.0);
        let dj = b.1.saturating_sub(a.1);
        if dns < 50_000_000 {
            return Err(DatapathError::Clock {
                reason: format!("samples only {dns} ns apart"),
            });
        }
        let measured = dj as f64 * 1e9 / dns as f64;
        // Within one tick of error either way over the interval.
        let slack = 1e9 / dns as f64 * 1.5;
        let hz = KERNEL_HZ
            .iter()
            .copied()
            .min_by(|x, y| {
                (f64::from(*x) - measured)
                    .abs()
                    .total_cmp(&(f64::from(*y) - measured).abs())
            })
            .filter(|hz| (f64::from(*hz) - measured).abs() <= slack + f64::from(*hz) * 0.02)
            .ok_or_else(|| DatapathError::Clock {
                reason: format!("{measured:.1} ticks/s is no CONFIG_HZ (100, 250, 300, 1000)"),
            })?;
        Ok(JiffyClock {
            anchor_ns: b.0,
            anchor_jiffies: b.1,
            hz,
        })
    }

    /// Monotonic ns of the tick `jiffies` (to one tick).
    pub fn to_ns(&self, jiffies: u64) -> u64 {
        let tick = 1_000_000_000 / u64::from(self.hz);
        if jiffies >= self.anchor_jiffies {
            self.anchor_ns + (jiffies - self.anchor_jiffies) * tick
        } else {
            self.anchor_ns
                .saturating_sub((self.anchor_jiffies - jiffies) * tick)
        }
    }
}

/// Runs `segwatch_clock` once and reads what it sampled.
fn sample_clock(ebpf: &mut Ebpf) -> Result<(u64, u64), DatapathError> {
    use aya::programs::{TestRun as _, TestRunOptions};
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROG_CLOCK)
        .and_then(|p| p.try_into().ok())
        .ok_or(DatapathError::Map { name: PROG_CLOCK })?;
    // "Already loaded" is fine (the second sample).
    let _ = prog.load();
    let frame = [0u8; 64];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.repeat = 1;
    prog.test_run(opts)
        .map_err(|source| DatapathError::Program {
            name: PROG_CLOCK,
            source,
        })?;
    let map = ebpf
        .map(CLOCK_MAP)
        .ok_or(DatapathError::Map { name: CLOCK_MAP })?;
    let arr: Array<&MapData, u64> =
        Array::try_from(map).map_err(|_| DatapathError::Map { name: CLOCK_MAP })?;
    let read = |i: u32| {
        arr.get(&i, 0).map_err(|source| DatapathError::MapRead {
            name: CLOCK_MAP,
            source,
        })
    };
    Ok((read(0)?, read(1)?))
}

/// Two clock samples 120 ms apart give the tick rate and an anchor.
fn calibrate(ebpf: &mut Ebpf) -> Result<JiffyClock, DatapathError> {
    let a = sample_clock(ebpf)?;
    std::thread::sleep(std::time::Duration::from_millis(120));
    let b = sample_clock(ebpf)?;
    JiffyClock::from_samples(a, b)
}

/// What the user asked for (`--attach-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// tcx where the kernel has it (≥ 6.6), clsact otherwise.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

/// Attachment mode in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// tcx links (kernel ≥ 6.6): detached when the fd closes, even on SIGKILL.
    Tcx,
    /// clsact qdisc with direct-action filters (older kernels).
    Clsact,
}

pub struct Datapath {
    ebpf: Ebpf,
    flows: MapData,
    clock: JiffyClock,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    mode: Mode,
    attached: BTreeMap<String, links::Attachment>,
    /// Programs attached by [`Datapath::attach_program`] (benchmarks: the
    /// no-op floor next to ours), per interface.
    extra: BTreeMap<String, links::Attachment>,
    max_flows: u32,
    /// The per-CPU flow cache is on (see [`Datapath::flush`]).
    cache: bool,
    loads: Vec<ProgramLoad>,
}

/// One program's verification at [`Datapath::load`].
#[derive(Clone, Copy, Debug)]
pub struct ProgramLoad {
    pub name: &'static str,
    /// Wall time of `BPF_PROG_LOAD` (almost all of it the verifier).
    pub load: std::time::Duration,
    /// Instructions the verifier processed (kernel ≥ 5.16).
    pub verified_insns: Option<u32>,
}

impl Datapath {
    /// Checks privileges, loads the object with a flow table of `max_flows`
    /// entries and loads (verifies) both programs. Nothing is attached yet.
    pub fn load(max_flows: u32, attach: AttachMode) -> Result<Self, DatapathError> {
        caps::require(&caps::NEEDED)?;
        let version = KernelVersion::current().ok();
        let kernel = version
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| "unknown".into());
        // The per-CPU cache needs the flush on every CPU that runs the
        // programs: off when this process may not run on all of them.
        let cache = cache::flushable();
        if !cache {
            tracing::warn!(
                "the per-CPU flow cache is off: this process cannot run on every online CPU (cpuset)"
            );
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_MAP, max_flows)
            .override_global(CACHE_ENABLED_GLOBAL, &u32::from(cache), true)
            .load(OBJECT)
            .map_err(|source| DatapathError::Load { kernel, source })?;
        let mut loads = Vec::with_capacity(3);
        for name in [PROG_INGRESS, PROG_EGRESS, PROG_FLUSH] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(DatapathError::Map { name })?;
            let t = std::time::Instant::now();
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
            let load = t.elapsed();
            let verified_insns = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count());
            tracing::debug!(program = name, ?load, ?verified_insns, "program verified");
            loads.push(ProgramLoad {
                name,
                load,
                verified_insns,
            });
        }
        let flows = match ebpf.take_map(FLOWS_MAP) {
            Some(Map::HashMap(data)) => data,
            _ => return Err(DatapathError::Map { name: FLOWS_MAP }),
        };
        let clock = calibrate(&mut ebpf)?;
        tracing::debug!(hz = clock.hz, "jiffies calibrated");
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .and_then(|m| PerCpuArray::try_from(m).ok())
            .ok_or(DatapathError::Map { name: COUNTERS_MAP })?;
        let events = ebpf
            .take_map(EVENTS_MAP)
            .and_then(|m| RingBuf::try_from(m).ok())
            .ok_or(DatapathError::Map { name: EVENTS_MAP })?;
        // tcx arrived in 6.6 (commit e420bed02507, "bpf: Add fd-based tcx multi-prog infra").
        let has_tcx = version.is_some_and(|v| v >= KernelVersion::new(6, 6, 0));
        let mode = match attach {
            AttachMode::Tcx => Mode::Tcx,
            AttachMode::Clsact => Mode::Clsact,
            AttachMode::Auto if has_tcx => Mode::Tcx,
            AttachMode::Auto => Mode::Clsact,
        };
        Ok(Datapath {
            ebpf,
            flows,
            clock,
            counters,
            events: Some(events),
            mode,
            attached: BTreeMap::new(),
            extra: BTreeMap::new(),
            max_flows,
            cache,
            loads,
        })
    }

    /// How long the kernel took to verify and load each program, and the
    /// instructions its verifier processed (`bpf_prog_info.verified_insns`).
    pub fn program_loads(&self) -> &[ProgramLoad] {
        &self.loads
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn max_flows(&self) -> u32 {
        self.max_flows
    }

    /// The ring buffer of new-flow events; taken once by the event reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Attaches both programs to `ifname` (host side of a veth). Idempotent.
    pub fn attach(&mut self, ifname: &str) -> Result<(), DatapathError> {
        if self.attached.contains_key(ifname) {
            return Ok(());
        }
        if links::ifindex(ifname).is_none() {
            return Err(DatapathError::UnknownInterface {
                name: ifname.to_string(),
            });
        }
        if self.mode == Mode::Clsact {
            // EEXIST is fine: the qdisc is shared with the CNI's filters.
            let _ = tc::qdisc_add_clsact(ifname);
            // Unlike tcx links, clsact filters outlive a killed process. Ours
            // are found by name; any here now is a crashed predecessor's.
            for (name, attach_type) in [
                (PROG_INGRESS, TcAttachType::Ingress),
                (PROG_EGRESS, TcAttachType::Egress),
            ] {
                if tc::qdisc_detach_program(ifname, attach_type, name).is_ok() {
                    tracing::info!(
                        interface = ifname,
                        program = name,
                        "removed a stale filter left by a previous run"
                    );
                }
            }
        }
        let mut ids = Vec::with_capacity(2);
        for (name, direction, attach_type) in [
            (PROG_INGRESS, "ingress", TcAttachType::Ingress),
            (PROG_EGRESS, "egress", TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(DatapathError::Map { name })?;
            let options = match self.mode {
                // First in the chain, so we see every packet before the CNI's
                // programs decide its fate; we always return TCX_NEXT.
                Mode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
                Mode::Clsact => TcAttachOptions::Netlink(Default::default()),
            };
            match prog.attach_with_options(ifname, attach_type, options) {
                Ok(id) => ids.push((name, id)),
                Err(source) => {
                    // Undo the half-attachment so nothing of ours stays behind.
                    for (name, id) in ids {
                        if let Some(p) = self.ebpf.program_mut(name) {
                            let p: Result<&mut SchedClassifier, _> = p.try_into();
                            if let Ok(p) = p {
                                let _ = p.detach(id);
                            }
                        }
                    }
                    return Err(DatapathError::Attach {
                        ifname: ifname.to_string(),
                        direction,
                        source,
                    });
                }
            }
        }
        self.attached
            .insert(ifname.to_string(), links::Attachment { ids });
        Ok(())
    }

    /// Attaches one named program ([`PROG_INGRESS`], [`PROG_EGRESS`] or
    /// `segwatch_noop`) to ingress and egress of `ifname`, after whatever is
    /// attached there already. Benchmarks put the no-op program next to ours
    /// this way, so the kernel's run-time statistics give the floor under the
    /// same traffic. [`Datapath::detach`] removes it with the rest.
    pub fn attach_program(&mut self, program: &str, ifname: &str) -> Result<(), DatapathError> {
        let name: &'static str = match program {
            PROG_INGRESS => PROG_INGRESS,
            PROG_EGRESS => PROG_EGRESS,
            monitor_common::PROG_NOOP => monitor_common::PROG_NOOP,
            other => {
                return Err(DatapathError::UnknownProgram {
                    name: other.to_string(),
                })
            }
        };
        if self.extra.contains_key(ifname) {
            return Ok(());
        }
        if links::ifindex(ifname).is_none() {
            return Err(DatapathError::UnknownInterface {
                name: ifname.to_string(),
            });
        }
        if self.mode == Mode::Clsact {
            let _ = tc::qdisc_add_clsact(ifname);
        }
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Map { name })?;
        if name == monitor_common::PROG_NOOP {
            // Loaded lazily (see `test_run`); "already loaded" is fine.
            let _ = prog.load();
        }
        let mut ids = Vec::with_capacity(2);
        for (direction, attach_type) in [
            ("ingress", TcAttachType::Ingress),
            ("egress", TcAttachType::Egress),
        ] {
            let options = match self.mode {
                Mode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::last()),
                Mode::Clsact => TcAttachOptions::Netlink(Default::default()),
            };
            match prog.attach_with_options(ifname, attach_type, options) {
                Ok(id) => ids.push((name, id)),
                Err(source) => {
                    for (_, id) in ids {
                        let _ = prog.detach(id);
                    }
                    return Err(DatapathError::Attach {
                        ifname: ifname.to_string(),
                        direction,
                        source,
                    });
                }
            }
        }
        self.extra
            .insert(ifname.to_string(), links::Attachment { ids });
        Ok(())
    }

    /// Detaches from `ifname`. When the interface is already gone the kernel
    /// has dropped the attachment; we only forget it.
    pub fn detach(&mut self, ifname: &str) {
        if let Some(att) = self.extra.remove(ifname) {
            self.release(ifname, att);
        }
        let Some(att) = self.attached.remove(ifname) else {
            return;
        };
        self.release(ifname, att);
    }

    fn release(&mut self, ifname: &str, att: links::Attachment) {
        let gone = links::ifindex(ifname).is_none();
        for (name, id) in att.ids {
            let Some(p) = self.ebpf.program_mut(name) else {
                continue;
            };
            let p: Result<&mut SchedClassifier, _> = p.try_into();
            let Ok(p) = p else { continue };
            if gone {
                // Dropping the taken link closes its fd (tcx) without a
                // netlink request against a vanished interface.
                drop(p.take_link(id));
            } else if let Err(e) = p.detach(id) {
                tracing::warn!(interface = ifname, error = %e, "detach failed");
            }
        }
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) {
        let names: Vec<String> = self
            .attached
            .keys()
            .chain(self.extra.keys())
            .cloned()
            .collect();
        for n in names {
            self.detach(&n);
        }
    }

    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    pub fn is_attached(&self, ifname: &str) -> bool {
        self.attached.contains_key(ifname)
    }

    /// The jiffies → monotonic ns mapping measured at load.
    pub fn clock(&self) -> &JiffyClock {
        &self.clock
    }

    /// Every entry of the flow table (read in batches), as the counts of its
    /// current connection. A copy torn by a rotation running at that moment
    /// is left out: counts are cumulative, the next sweep has them.
    pub fn snapshot(&self) -> Result<Vec<Entry>, DatapathError> {
        let mut out = Vec::new();
        self.snapshot_each(|e| out.push(*e))?;
        Ok(out)
    }

    /// Like [`Datapath::snapshot`], one entry at a time, without holding
    /// the whole table: what the daemon's sweep uses (its memory does not
    /// grow with the table). Returns how many entries the table held (torn
    /// copies included). On an error, `f` has seen part of the table.
    pub fn snapshot_each(&self, mut f: impl FnMut(&Entry)) -> Result<usize, DatapathError> {
        self.flush()?;
        table::lookup_each(self.flows.fd().as_fd(), |k: &TupleKey, v: &FlowValue| {
            if let Some(e) = Entry::from_value(k, v, &self.clock) {
                f(&e);
            }
        })
        .map_err(|source| DatapathError::Batch {
            name: FLOWS_MAP,
            source,
        })
    }

    /// Removes ended connections from the kernel table and returns what each
    /// entry held at the moment it went (packets that arrived after the
    /// snapshot included). Entries already gone, or torn by a rotation at
    /// that instant, are left out.
    pub fn take(&mut self, keys: &[FlowKey]) -> Vec<Entry> {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "cannot flush the per-CPU flow cache before removing entries");
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let t = k.tuple();
            match table::lookup_and_delete::<TupleKey, FlowValue>(self.flows.fd().as_fd(), &t) {
                Ok(Some(v)) => out.extend(Entry::from_value(&t, &v, &self.clock)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot remove a flow table entry"),
            }
        }
        out
    }

    /// Whether the per-CPU flow cache is on.
    pub fn cache_enabled(&self) -> bool {
        self.cache
    }

    /// Moves what every CPU's flow cache holds into the flow table: runs
    /// `segwatch_flush` once on each online CPU (`BPF_PROG_TEST_RUN` runs
    /// the program on the calling CPU; this thread is pinned to each in
    /// turn and then gets its CPU mask back). After it, the table holds
    /// every packet counted before the call.
    pub fn flush(&self) -> Result<(), DatapathError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        if !self.cache {
            return Ok(());
        }
        let prog: &SchedClassifier = self
            .ebpf
            .program(PROG_FLUSH)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Map { name: PROG_FLUSH })?;
        cache::on_each_cpu(|cpu| {
            for chunk in 0..CACHE_SLOTS / FLUSH_CHUNK {
                let mut frame = [0u8; 64];
                frame[0] = chunk as u8;
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(&frame);
                opts.repeat = 1;
                prog.test_run(opts).map_err(|e| DatapathError::Flush {
                    cpu,
                    source: std::io::Error::other(e),
                })?;
            }
            Ok(())
        })
    }

    /// The kernel counters, summed over CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize], DatapathError> {
        let mut out = [0u64; Counter::COUNT as usize];
        for (i, c) in Counter::ALL.iter().enumerate() {
            let values =
                self.counters
                    .get(&(*c as u32), 0)
                    .map_err(|source| DatapathError::MapRead {
                        name: COUNTERS_MAP,
                        source,
                    })?;
            out[i] = values.iter().sum();
        }
        Ok(out)
    }
}

/// Byte offsets in `struct __sk_buff` (include/uapi/linux/bpf.h) of the
/// fields `BPF_PROG_TEST_RUN` lets us set (net/bpf/test_run.c,
/// `convert___skb_to_skb`).
const SKB_CTX_LEN: usize = 192;
const SKB_CTX_IFINDEX: usize = 40;
const SKB_CTX_GSO_SEGS: usize = 164;
const SKB_CTX_GSO_SIZE: usize = 176;

/// How one crafted packet is presented to a program by `test_run`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestPacket<'a> {
    /// The frame, starting with the Ethernet header.
    pub frame: &'a [u8],
    /// `skb->ifindex` (0: the kernel's default, loopback).
    pub ifindex: u32,
    /// GSO segments and segment size (0: not a GSO packet).
    pub gso_segs: u32,
    pub gso_size: u32,
}

impl Datapath {
    /// Runs `program` (one of [`PROG_INGRESS`], [`PROG_EGRESS`] or
    /// `segwatch_noop`) on a crafted packet `repeat` times without any network
    /// (`BPF_PROG_TEST_RUN`). The maps are the live ones. Returns the
    /// program's return value and the kernel's average run time.
    pub fn test_run(
        &mut self,
        program: &str,
        pkt: TestPacket<'_>,
        repeat: u32,
    ) -> Result<(i32, std::time::Duration), DatapathError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let name: &'static str = match program {
            PROG_INGRESS => PROG_INGRESS,
            PROG_EGRESS => PROG_EGRESS,
            PROG_CLOCK => PROG_CLOCK,
            _ => monitor_common::PROG_NOOP,
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Map { name })?;
        if name == monitor_common::PROG_NOOP || name == PROG_CLOCK {
            // Loaded lazily: only benchmarks (and the calibration) use them.
            let _ = prog.load();
        }
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&pkt.ifindex.to_ne_bytes());
        ctx[SKB_CTX_GSO_SEGS..SKB_CTX_GSO_SEGS + 4].copy_from_slice(&pkt.gso_segs.to_ne_bytes());
        ctx[SKB_CTX_GSO_SIZE..SKB_CTX_GSO_SIZE + 4].copy_from_slice(&pkt.gso_size.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(pkt.frame);
        if pkt.ifindex != 0 || pkt.gso_segs != 0 || pkt.gso_size != 0 {
            opts.ctx_in = Some(&ctx);
        }
        opts.repeat = repeat.max(1);
        let res = prog
            .test_run(opts)
            .map_err(|source| DatapathError::Program { name, source })?;
        Ok((res.return_value as i32, res.duration))
    }

    /// Clears the flow table (tests and benchmarks only).
    pub fn clear_flows(&mut self) -> Result<(), DatapathError> {
        let all: Vec<(TupleKey, FlowValue)> =
            table::lookup_all(self.flows.fd().as_fd()).map_err(|source| DatapathError::Batch {
                name: FLOWS_MAP,
                source,
            })?;
        for (k, _) in all {
            let _ = table::lookup_and_delete::<TupleKey, FlowValue>(self.flows.fd().as_fd(), &k);
        }
        Ok(())
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::opener;

    fn clock() -> JiffyClock {
        // HZ 250: 4 ms per tick; jiffy 1000 at 10 s.
        JiffyClock::from_samples((9_880_000_000, 970), (10_000_000_000, 1000)).unwrap()
    }

    #[test]
    fn the_tick_rate_is_one_of_the_kernels() {
        assert_eq!(clock().hz, 250);
        assert_eq!(clock().to_ns(1000), 10_000_000_000);
        assert_eq!(clock().to_ns(1250), 11_000_000_000, "250 ticks = 1 s");
        assert_eq!(clock().to_ns(750), 9_000_000_000);
        let hz1000 = JiffyClock::from_samples((0, 0), (120_000_000, 121)).unwrap();
        assert_eq!(hz1000.hz, 1000, "one tick of slack");
        assert!(
            JiffyClock::from_samples((0, 0), (120_000_000, 60)).is_err(),
            "500 ticks/s is no kernel's HZ"
        );
    }

    fn value(gen: u32) -> FlowValue {
        FlowValue {
            gen_lo: gen,
            ifindex: 7,
            packets: [10, 4],
            bytes: [1000, 400],
            base_packets: [3, 1],
            base_bytes: [300, 100],
            first_ns: 10_000_000_000,
            last_jiffies: 1001,
            tcp_flags: 0x12 << 8 | 0x02,
            isn: 0,
            opener: opener::LO,
            marks: MARK_SECOND_IF,
            _pad: [0; 2],
            gen: u64::from(gen),
        }
    }

    #[test]
    fn an_entry_is_its_current_connection() {
        let e = Entry::from_value(&TupleKey::default(), &value(5), &clock()).unwrap();
        assert_eq!(e.stats.packets, [7, 3], "counts since the generation began");
        assert_eq!(e.stats.bytes, [700, 300]);
        assert_eq!(e.stats.tcp_flags, [0x02, 0x12]);
        assert_eq!(e.stats.last_ns, 10_004_000_000, "jiffy 1001 = 10.004 s");
        assert_eq!((e.gen, e.key.ifindex, e.second_if), (5, 7, true));
    }

    #[test]
    fn a_copy_torn_by_a_rotation_is_skipped() {
        let mut v = value(5);
        v.gen = 6 | GEN_ROTATING;
        assert!(Entry::from_value(&TupleKey::default(), &v, &clock()).is_none());
        v.gen = 6;
        assert!(
            Entry::from_value(&TupleKey::default(), &v, &clock()).is_none(),
            "gen_lo not yet published"
        );
    }
}
