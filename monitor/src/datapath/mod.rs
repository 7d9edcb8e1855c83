//! The kernel side as the daemon sees it: load the programs, attach them to
//! interfaces, read the flow table, the counters and the new-flow events.
//!
//! ```text
//!  Datapath::load ─► capabilities checked ─► object loaded (FLOWS sized by --max-flows)
//!  attach(ifname) ─► tcx ingress + egress, LinkOrder::first()   (kernel ≥ 6.6)
//!                 └► clsact qdisc + direct-action filters        (older kernels)
//!  snapshot()     ─► every FLOWS entry with its per-CPU values merged
//!  counters()     ─► COUNTERS summed over CPUs
//!  take_events()  ─► the ring buffer, for an async reader
//! ```

pub mod caps;
pub mod craft;
pub mod links;

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::tc::{self, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use monitor_common::{
    Counter, FlowKey, FlowStats, COUNTERS_MAP, EVENTS_MAP, FLOWS_MAP, PROG_EGRESS, PROG_INGRESS,
};

/// The compiled kernel programs (built by build.rs with aya-build).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("missing capabilities {missing}: run as root or grant them (the DaemonSet adds BPF, NET_ADMIN, PERFMON)")]
    MissingCapabilities { missing: String },
    #[error("cannot load the eBPF programs (kernel {kernel}; segwatch needs BTF and kernel ≥ 5.8 for ring buffers)")]
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
}

/// One connection as the kernel table holds it, per-CPU values merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: FlowKey,
    pub stats: FlowStats,
}

/// Merges the per-CPU slots of one entry: counts add up, flags unite, the
/// earliest first and latest last packet win, and the opener comes from the
/// one slot (the creating CPU's) that has it.
pub fn merge(slots: &[FlowStats]) -> FlowStats {
    let mut out = FlowStats::default();
    for s in slots {
        for d in 0..2 {
            out.packets[d] += s.packets[d];
            out.bytes[d] += s.bytes[d];
            out.tcp_flags[d] |= s.tcp_flags[d];
        }
        if s.first_ns != 0 && (out.first_ns == 0 || s.first_ns < out.first_ns) {
            out.first_ns = s.first_ns;
        }
        out.last_ns = out.last_ns.max(s.last_ns);
        if out.opener == monitor_common::opener::UNSET {
            out.opener = s.opener;
        }
    }
    out
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
    flows: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    mode: Mode,
    attached: BTreeMap<String, links::Attachment>,
    /// Programs attached by [`Datapath::attach_program`] (benchmarks: the
    /// no-op floor next to ours), per interface.
    extra: BTreeMap<String, links::Attachment>,
    max_flows: u32,
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
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_MAP, max_flows)
            .load(OBJECT)
            .map_err(|source| DatapathError::Load { kernel, source })?;
        for name in [PROG_INGRESS, PROG_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(DatapathError::Map { name })?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let flows = ebpf
            .take_map(FLOWS_MAP)
            .and_then(|m| PerCpuHashMap::try_from(m).ok())
            .ok_or(DatapathError::Map { name: FLOWS_MAP })?;
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
            counters,
            events: Some(events),
            mode,
            attached: BTreeMap::new(),
            extra: BTreeMap::new(),
            max_flows,
        })
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

    /// Every entry of the flow table, per-CPU values merged. Entries that
    /// vanish during the walk (deleted concurrently) are skipped.
    pub fn snapshot(&self) -> Result<Vec<Entry>, DatapathError> {
        let mut out = Vec::new();
        for item in self.flows.iter() {
            match item {
                Ok((key, values)) => out.push(Entry {
                    key,
                    stats: merge(&values),
                }),
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(DatapathError::MapRead {
                        name: FLOWS_MAP,
                        source,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Removes ended connections from the kernel table.
    pub fn remove(&mut self, keys: &[FlowKey]) {
        for k in keys {
            // Already gone is fine (a concurrent delete or the interface went).
            let _ = self.flows.remove(k);
        }
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
            _ => monitor_common::PROG_NOOP,
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Map { name })?;
        if name == monitor_common::PROG_NOOP {
            // Loaded lazily: only benchmarks use it.
            let _ = prog.load();
        }
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&pkt.ifindex.to_ne_bytes());
        ctx[SKB_CTX_GSO_SEGS..SKB_CTX_GSO_SEGS + 4].copy_from_slice(&pkt.gso_segs.to_ne_bytes());
        ctx[SKB_CTX_GSO_SIZE..SKB_CTX_GSO_SIZE + 4].copy_from_slice(&pkt.gso_size.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(pkt.frame);
        if pkt.ifindex != 0 || pkt.gso_segs != 0 {
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
        let keys: Vec<FlowKey> = self.flows.keys().filter_map(Result::ok).collect();
        self.remove(&keys);
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

    #[test]
    fn merge_adds_counts_and_keeps_the_creators_opener() {
        let a = FlowStats {
            packets: [3, 1],
            bytes: [300, 60],
            first_ns: 50,
            last_ns: 90,
            tcp_flags: [0x02, 0x12],
            opener: 0,
            _pad: [0; 5],
        };
        let b = FlowStats {
            packets: [2, 0],
            bytes: [200, 0],
            first_ns: 40,
            last_ns: 70,
            tcp_flags: [0x11, 0],
            opener: opener::HI,
            _pad: [0; 5],
        };
        let idle = FlowStats::default();
        let m = merge(&[a, idle, b]);
        assert_eq!(m.packets, [5, 1]);
        assert_eq!(m.bytes, [500, 60]);
        assert_eq!(
            (m.first_ns, m.last_ns),
            (40, 90),
            "earliest first, latest last; idle CPUs ignored"
        );
        assert_eq!(m.tcp_flags, [0x13, 0x12]);
        assert_eq!(
            m.opener,
            opener::HI,
            "the opener comes from the slot that recorded it"
        );
    }
}
