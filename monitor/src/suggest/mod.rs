//! `segwatch suggest`: least-privilege NetworkPolicies from observed
//! traffic, and the proof that they keep that traffic working.
//!
//! ```text
//!  flow reports (--flows) ─┐                      ┌─► NetworkPolicy YAML/JSON (stdout / --out-dir)
//!  metric samples ─────────┼─► observe::Observed ─┤
//!   (--from-prometheus)    │    (conns, edges)    │   generate::generate
//!  inventory ─► catalog::Catalog (workloads,      └─► replay: every observed connection against
//!               labels, Services, nodes, DNS)          existing + suggested policies (netpol engine),
//!                                                      over-permission: allowed but never seen
//! ```
//!
//! Everything in here is pure: the command (`cmd/suggest.rs`) reads files
//! and Prometheus, this module turns observations into objects and text.

pub mod baseline;
pub mod catalog;
pub mod cluster;
pub mod generate;
pub mod labels;
pub mod observe;
pub mod prometheus;
pub mod replay;

use std::fmt;

use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use catalog::Catalog;
pub use generate::{generate, Aggregate, Options, Suggestion};
pub use observe::{ObserveOptions, Observed, WorkloadSample};
pub use replay::{replay, Replay};

/// The protocols a NetworkPolicy port can name: the one parser, [`crate::l4`]'s.
pub use crate::l4::L4;

/// A flow's protocol: one with ports, or any other by IANA number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    L4(L4),
    Other(u8),
}

impl Proto {
    /// The flow report's `protocol` (CONTRACT.md: `TCP|UDP|ICMP|ICMPv6|SCTP|<number>`).
    pub fn parse(s: &str) -> Proto {
        if let Some(l4) = L4::parse(s) {
            return Proto::L4(l4);
        }
        match s {
            "ICMP" => Proto::Other(1),
            "ICMPv6" => Proto::Other(58),
            // IANA numbers of the three, in case a producer writes numbers.
            "6" => Proto::L4(L4::Tcp),
            "17" => Proto::L4(L4::Udp),
            "132" => Proto::L4(L4::Sctp),
            n => Proto::Other(n.parse().unwrap_or(255)),
        }
    }

    pub fn has_ports(self) -> bool {
        matches!(self, Proto::L4(_))
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proto::L4(l) => write!(f, "{l}"),
            Proto::Other(1) => f.write_str("ICMP"),
            Proto::Other(58) => f.write_str("ICMPv6"),
            Proto::Other(n) => write!(f, "{n}"),
        }
    }
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `---`-separated YAML documents (what `kubectl apply -f` takes).
    Yaml,
    /// One `v1` `List` object.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot serialise NetworkPolicy {namespace}/{name} as {format}: {message}")]
    Serialize {
        namespace: String,
        name: String,
        format: &'static str,
        message: String,
    },
}

/// Renders policies (already sorted) as one text.
pub fn render(policies: &[NetworkPolicy], format: Format) -> Result<String, RenderError> {
    let err =
        |p: &NetworkPolicy, format: &'static str, e: &dyn fmt::Display| RenderError::Serialize {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            format,
            message: e.to_string(),
        };
    match format {
        Format::Yaml => {
            let mut out = String::new();
            for p in policies {
                out.push_str("---\n");
                out.push_str(&serde_yaml_ng::to_string(p).map_err(|e| err(p, "YAML", &e))?);
            }
            Ok(out)
        }
        Format::Json => {
            let items = policies
                .iter()
                .map(|p| serde_json::to_value(p).map_err(|e| err(p, "JSON", &e)))
                .collect::<Result<Vec<_>, _>>()?;
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            let mut s = serde_json::to_string_pretty(&list).expect("a JSON value serialises");
            s.push('\n');
            Ok(s)
        }
    }
}

/// The human summary for stderr: what the set allows, and what to look at.
pub fn summary(
    s: &Suggestion,
    obs: &Observed,
    rp: &Replay,
    default_deny: bool,
    top: usize,
) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    let mut out = String::new();
    let rules: usize = s
        .stats
        .iter()
        .map(|p| p.ingress_rules + p.egress_rules)
        .sum();
    let flows: u64 = obs.conns.values().map(|e| e.flows).sum();
    let _ = writeln!(
        out,
        "suggest: {} policies with {} rules in {} namespace(s), from {} observed connection(s) ({} flows, {} edges)",
        s.policies.len(),
        rules,
        s.namespaces.len(),
        obs.conns.len(),
        flows,
        obs.edges.len()
    );
    let mut per_ns: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for p in &s.stats {
        let e = per_ns.entry(&p.namespace).or_default();
        e.0 += 1;
        e.1 += p.ingress_rules;
        e.2 += p.egress_rules;
    }
    for (ns, (n, i, e)) in &per_ns {
        let _ = writeln!(
            out,
            "  {ns}: {n} policies, {i} ingress rule(s), {e} egress rule(s){}",
            if default_deny { ", default-deny" } else { "" }
        );
    }
    for w in &s.widened {
        let _ = writeln!(
            out,
            "  {}: ipBlock {} allows {} address(es), {} observed",
            w.policy,
            w.cidr,
            addresses(&w.cidr),
            w.observed
        );
    }
    if !s.quiet.is_empty() {
        let what = if default_deny {
            "isolated by the default-deny (nothing observed)"
        } else {
            "left unrestricted (nothing observed)"
        };
        let _ = writeln!(out, "{} workload(s) {what}:", s.quiet.len());
        for w in &s.quiet {
            let _ = writeln!(out, "  {w}");
        }
    }
    for n in obs
        .notes
        .iter()
        .map(|n| n.to_string())
        .chain(s.notes.iter().cloned())
    {
        let _ = writeln!(out, "note: {n}");
    }
    for w in &rp.warnings {
        let _ = writeln!(out, "warning: {w}");
    }

    // The replay check.
    let count = |f: &dyn Fn(&replay::Outcome) -> bool| -> (usize, u64) {
        rp.results
            .iter()
            .filter(|r| f(&r.outcome))
            .fold((0, 0), |(n, fl), r| (n + 1, fl + r.flows))
    };
    let (an, af) = count(&|o| matches!(o, replay::Outcome::Allowed));
    let (dn, df) = count(&|o| matches!(o, replay::Outcome::Denied { .. }));
    let (un, uf) = count(&|o| matches!(o, replay::Outcome::Unverifiable { .. }));
    let _ = writeln!(
        out,
        "replay: {} of {} observed connection(s) allowed by existing + suggested policies ({af} flows); {dn} denied ({df} flows); {un} unverifiable ({uf} flows): {}",
        an,
        rp.results.len(),
        if rp.passed() { "PASS" } else { "FAIL" }
    );
    for r in &rp.results {
        match &r.outcome {
            replay::Outcome::Denied { reason } => {
                let _ = writeln!(out, "  DENIED {} ({} flows): {reason}", r.conn, r.flows);
            }
            replay::Outcome::Unverifiable { reason } => {
                let _ = writeln!(
                    out,
                    "  UNVERIFIABLE {} ({} flows): {reason}",
                    r.conn, r.flows
                );
            }
            replay::Outcome::Allowed => {}
        }
    }

    // Over-permission.
    let total: u64 = rp.over.iter().map(|e| e.ports).sum();
    let _ = writeln!(
        out,
        "over-permission: {} workload pair(s) with {total} (protocol, port) combination(s) allowed but never observed{}",
        rp.over.len(),
        if rp.over.is_empty() { "" } else { "; largest:" }
    );
    for e in rp.over.iter().take(top) {
        let _ = writeln!(out, "  {e}");
    }
    if rp.over.len() > top {
        let _ = writeln!(out, "  ... {} more (--top N)", rp.over.len() - top);
    }
    out
}

/// Number of addresses in a network, saturating at u128::MAX.
fn addresses(net: &ipnet::IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}
