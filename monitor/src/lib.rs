//! segwatch: eBPF network segmentation and flow monitor for Kubernetes.
//!
//! ```text
//!  kernel (monitor-ebpf)            daemon (`segwatch run`)
//!  ┌───────────────────────┐  ring  ┌──────────┐   ┌─────────────┐   ┌──────────────┐
//!  │ tcx ingress/egress on │──buf──►│ datapath │──►│ flows       │──►│ flow log     │
//!  │ every pod veth        │  maps  │ (aya)    │   │ (sweep,     │   │ JSON lines   │
//!  └───────────────────────┘───────►└──────────┘   │  dedup)     │   │ + /metrics   │
//!                                                  └─────────────┘   └──────────────┘
//! ```
//!
//! The pure core (reports, policies, the cluster index) has no tokio, kube or
//! aya in it; the datapath, watchers and HTTP are adapters around it.

#[cfg(test)]
mod alloc_count;
pub mod audit;
pub mod cli;
pub mod cmd;
pub mod conntrack;
pub mod daemon;
pub mod datapath;
pub mod export;
#[cfg(test)]
mod fixtures;
pub mod flows;
pub mod index;
pub mod inventory;
pub mod ipmap;
pub mod judge;
pub mod l4;
pub mod metrics;
pub mod netpol;
pub mod objects;
pub mod observe;
pub mod probe;
pub mod report;
pub mod reporter;
pub mod runtime;
pub mod segpolicy;
pub mod selector;
pub mod sources;
pub mod staged;
pub mod suggest;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
