//! Every metric segwatch exports, in one registry (names and labels fixed in
//! CONTRACT.md "Metrics"). Label values come from bounded sets only:
//! namespaces, workloads, ports seen, never pod names or raw IPs.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The daemon's metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `segwatch_flows_total{src_namespace,dst_namespace,protocol,verdict}`
    pub flows: IntCounterVec,
    /// `segwatch_flow_bytes_total{src_namespace,dst_namespace,direction}`
    pub flow_bytes: IntCounterVec,
    /// `segwatch_violations_total{kind,src_namespace,src_workload,src_service_account,dst_namespace,dst_workload,dst_port,protocol}`
    pub violations: IntCounterVec,
    /// `segwatch_workload_flows_total{src_namespace,src_workload,dst_namespace,dst_workload,dst_port,protocol}`
    pub workload_flows: IntCounterVec,
    /// `segwatch_probe_flows_total{src_namespace,dst_kind,verdict}`:
    /// connections of `segwatch probe` pods (label `segwatch.dev/probe`),
    /// counted here instead of in the violation and workload metrics.
    pub probe_flows: IntCounterVec,
    /// `segwatch_events_lost_total{stage}`: every loss, kernel and userspace.
    pub events_lost: IntCounterVec,
    /// `segwatch_interfaces_attached`
    pub interfaces_attached: IntGauge,
    /// `segwatch_flows_unattributed_total`: flow ends no identity was found for.
    pub flows_unattributed: IntCounter,
    /// `segwatch_build_info{version}` (always 1).
    pub build_info: IntGaugeVec,
    /// `segwatch_packets_total{result}`: what the kernel programs saw
    /// (`accounted`, `non_ip`, `fragment`), next to the losses.
    pub packets: IntCounterVec,
    /// `segwatch_flow_table_entries`: entries in the kernel flow table at the
    /// last sweep, and `segwatch_flow_table_capacity`.
    pub flow_table_entries: IntGauge,
    pub flow_table_capacity: IntGauge,
    /// `segwatch_flows_deduplicated_total`: connections also seen on a second
    /// interface of this node and reported once.
    pub flows_deduplicated: IntCounter,
    /// `segwatch_kernel_new_flows_total`: entries the kernel created.
    pub new_flows: IntCounter,
    /// `segwatch_inventory_errors_total{source}`: inventory files or API
    /// objects that could not be read (last good state kept).
    pub inventory_errors: IntCounterVec,
    /// `segwatch_source_up{source}`: 1 while the cluster source (`kube`
    /// watches or `inventory` files) is current, 0 while the index runs on
    /// the last good state.
    pub source_up: IntGaugeVec,
    /// `segwatch_flows_not_reported_total{reason}`: connections this node
    /// saw and left to the one report made elsewhere: `opener_node` (the
    /// opener's node runs an agent and reports it), `nat_copy` (the copy
    /// of a Service connection after DNAT; the client's veth reports it).
    pub flows_not_reported: IntCounterVec,
    /// `segwatch_service_flows_without_backend_total`: connections to a
    /// Service address with no DNAT in the kernel's connection tracking
    /// (e.g. a CNI that balances at the socket): reported without backend.
    pub service_without_backend: IntCounter,
    /// `segwatch_conntrack_errors_total`: conntrack lookups that failed
    /// (not "not tracked"): the report goes out without a backend.
    pub conntrack_errors: IntCounter,
    /// `segwatch_flows_awaiting_identity`: reports held until the cluster
    /// view names their ends.
    pub flows_awaiting_identity: IntGauge,
    /// `segwatch_flows_identity_late_total{outcome}`: held reports
    /// released, `attributed` (judged once the index learned the end) or
    /// `unjudged` (not learned within the wait, or no room to hold).
    pub flows_identity_late: IntCounterVec,
    /// `segwatch_policy_errors_total{policy}`: invalid versions of
    /// SegmentationPolicies (by name; the previous valid version is kept).
    pub policy_errors: IntCounterVec,
    /// `segwatch_export_records_total{exporter,result}`: flow reports handed
    /// to an exporter, by how they ended (`sent`, `queue_full`, `failed`,
    /// `shutdown`).
    pub export_records: IntCounterVec,
    /// `segwatch_scans_total{kind,src_namespace,src_workload,dst_namespace,dst_workload}`:
    /// scans named as such, once per source, destination and scan window.
    pub scans: IntCounterVec,
    /// `segwatch_metric_series{family}`: series the flow families hold now.
    pub metric_series: IntGaugeVec,
    /// `segwatch_label_overflow_total{family}`: connections counted under
    /// `dst_port="other"` (past the per-source port budget, or from an
    /// ephemeral port).
    pub label_overflow: IntCounterVec,
    /// `segwatch_staged_*`: staged policy verdicts (see [`crate::staged`]).
    pub staged: crate::staged::StagedMetrics,
    /// `segwatch_new_flow_budget_overflow_packets_total{interface}` and
    /// `..._bytes_total{interface}`: packets and bytes of connections over
    /// an interface's new-flow budget (counted there, not in a flow report).
    /// One series per attached interface, removed when it goes.
    pub budget_overflow_packets: IntCounterVec,
    pub budget_overflow_bytes: IntCounterVec,
}

/// The flow families whose series the observer keeps (and bounds), as
/// `segwatch_metric_series{family}` names them.
pub const SERIES_FAMILIES: [&str; 6] = [
    "segwatch_flows_total",
    "segwatch_flow_bytes_total",
    "segwatch_violations_total",
    "segwatch_workload_flows_total",
    "segwatch_probe_flows_total",
    "segwatch_scans_total",
];

/// Names of the loss stages in `segwatch_events_lost_total{stage}`.
pub mod stage {
    /// New-connection events not announced: kernel ring buffer full.
    pub const RINGBUF_FULL: &str = "ringbuf_full";
    /// Packets not counted: kernel flow table full.
    pub const FLOW_MAP_FULL: &str = "flow_map_full";
    /// Packets with headers we could not parse.
    pub const UNPARSABLE: &str = "unparsable";
    /// IPv6 packets with more extension headers than the bound.
    pub const IPV6_EXT_LIMIT: &str = "ipv6_ext_limit";
    /// Flow reports that could not be written to the flow log.
    pub const FLOW_LOG_WRITE: &str = "flow_log_write";
    /// New-flow events dropped because the daemon fell behind (the flows are
    /// still reported at the next sweep, only not announced at once).
    pub const EVENT_QUEUE_FULL: &str = "event_queue_full";
    /// Final totals of a TCP connection whose 5-tuple a new connection took
    /// could not be handed to the daemon (kernel ring buffer full): counted
    /// in packets of the lost connection.
    pub const TCP_HANDOVER: &str = "tcp_handover";
    /// Packets that raced with such a hand-over on another CPU: counted
    /// possibly into the new connection instead of the old one, or (the old
    /// connection's last packets still in another CPU's cache) in neither.
    pub const TCP_HANDOVER_RACE: &str = "tcp_handover_race";
    /// Flow reports the OTLP exporter could not deliver (queue over its
    /// memory budget, retries given up, or left at shutdown).
    pub const EXPORT_OTLP: &str = "export_otlp";
    /// The same for the IPFIX exporter.
    pub const EXPORT_IPFIX: &str = "export_ipfix";
    /// Later IP fragments whose first fragment (and so their ports) was not
    /// seen: counted in a port-less flow (packets; their ports are lost).
    pub const FRAGMENT_PORTS_UNKNOWN: &str = "fragment_ports_unknown";
    /// Packets of new connections over their interface's new-flow budget:
    /// counted per interface in `segwatch_new_flow_budget_overflow_*`, not
    /// in a connection of their own.
    pub const NEW_FLOW_BUDGET: &str = "new_flow_budget";
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let flows = counter_vec(
            "segwatch_flows_total",
            "Connections (counted at their first report), by namespace pair, protocol and verdict.",
            &["src_namespace", "dst_namespace", "protocol", "verdict"],
        );
        let flow_bytes = counter_vec(
            "segwatch_flow_bytes_total",
            "IP-layer bytes of reported flows, by namespace pair and direction (sent by the opener, received by it).",
            &["src_namespace", "dst_namespace", "direction"],
        );
        let violations = counter_vec(
            "segwatch_violations_total",
            "Connections that break the segmentation policy, counted once per connection.",
            &[
                "kind",
                "src_namespace",
                "src_workload",
                "src_service_account",
                "dst_namespace",
                "dst_workload",
                "dst_port",
                "protocol",
            ],
        );
        let probe_flows = counter_vec(
            "segwatch_probe_flows_total",
            "Connections opened by segwatch probe pods (label segwatch.dev/probe=true), counted once per connection; not counted as violations.",
            &["src_namespace", "dst_kind", "verdict"],
        );
        let workload_flows = counter_vec(
            "segwatch_workload_flows_total",
            "Connections between workloads (edges for cluster-wide policy suggestions).",
            &[
                "src_namespace",
                "src_workload",
                "dst_namespace",
                "dst_workload",
                "dst_port",
                "protocol",
            ],
        );
        let events_lost = counter_vec(
            "segwatch_events_lost_total",
            "Everything lost on the way from packet to report, by stage.",
            &["stage"],
        );
        let packets = counter_vec(
            "segwatch_packets_total",
            "Packets the kernel programs ran on, by result.",
            &["result"],
        );
        let export_records = counter_vec(
            "segwatch_export_records_total",
            "Flow reports handed to an exporter, by exporter and result (sent, or lost: queue_full, failed, shutdown).",
            &["exporter", "result"],
        );
        let inventory_errors = counter_vec(
            "segwatch_inventory_errors_total",
            "Inventory files or API objects that could not be read; the last good state is kept.",
            &["source"],
        );
        let flows_not_reported = counter_vec(
            "segwatch_flows_not_reported_total",
            "Connections seen here and reported once elsewhere: by the opener's node (opener_node) or from the client's side of a Service DNAT on this node (nat_copy).",
            &["reason"],
        );
        let flows_identity_late = counter_vec(
            "segwatch_flows_identity_late_total",
            "Reports held until the cluster view named their ends, by outcome (attributed, unjudged).",
            &["outcome"],
        );
        for r in ["opener_node", "nat_copy"] {
            flows_not_reported.with_label_values(&[r]);
        }
        for o in ["attributed", "unjudged"] {
            flows_identity_late.with_label_values(&[o]);
        }
        let policy_errors = counter_vec(
            "segwatch_policy_errors_total",
            "Invalid SegmentationPolicy versions seen, by policy name; the previous valid version of the policy stays in force.",
            &["policy"],
        );
        let scans = counter_vec(
            "segwatch_scans_total",
            "Scans: a source workload touching more distinct ports of one destination (kind ports), or more distinct addresses of one namespace with failed or forbidden connections (kind addresses), than the threshold within a scan window; counted once per window.",
            &[
                "kind",
                "src_namespace",
                "src_workload",
                "dst_namespace",
                "dst_workload",
            ],
        );
        let label_overflow = counter_vec(
            "segwatch_label_overflow_total",
            "Connections counted under dst_port=\"other\": the source's port budget was spent, or the port is ephemeral.",
            &["family"],
        );
        let metric_series = IntGaugeVec::new(
            Opts::new(
                "segwatch_metric_series",
                "Series the flow families hold now (bounded by the port budget and the TTL).",
            ),
            &["family"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(metric_series.clone()))
            .expect("metric names are unique");
        for f in SERIES_FAMILIES {
            metric_series.with_label_values(&[f]);
        }
        for f in ["segwatch_violations_total", "segwatch_workload_flows_total"] {
            label_overflow.with_label_values(&[f]);
        }
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition is valid");
            registry
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let interfaces_attached = gauge(
            "segwatch_interfaces_attached",
            "Interfaces our programs are attached to.",
        );
        let flow_table_entries = gauge(
            "segwatch_flow_table_entries",
            "Entries in the kernel flow table at the last sweep.",
        );
        let flow_table_capacity = gauge(
            "segwatch_flow_table_capacity",
            "Capacity of the kernel flow table.",
        );
        let flows_unattributed = counter(
            "segwatch_flows_unattributed_total",
            "Flows with an end inside the pod network that no known pod, service or node matched.",
        );
        let new_flows = counter(
            "segwatch_kernel_new_flows_total",
            "Connections the kernel programs started tracking (one per interface that saw it).",
        );
        let flows_deduplicated = counter(
            "segwatch_flows_deduplicated_total",
            "Connections seen on two interfaces of this node and reported once.",
        );
        let service_without_backend = counter(
            "segwatch_service_flows_without_backend_total",
            "Connections to a Service address whose backend the kernel's connection tracking does not show (no DNAT visible): reported as kind service, without backend.",
        );
        let conntrack_errors = counter(
            "segwatch_conntrack_errors_total",
            "Connection tracking lookups that failed (not counted: connections that are simply not tracked).",
        );
        let flows_awaiting_identity = gauge(
            "segwatch_flows_awaiting_identity",
            "Flow reports held until the cluster view names their ends.",
        );
        let source_up = IntGaugeVec::new(
            Opts::new(
                "segwatch_source_up",
                "1 while the cluster source is current, 0 while the index keeps the last good state (API server not watchable, inventory file invalid).",
            ),
            &["source"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(source_up.clone()))
            .expect("metric names are unique");
        let build_info = IntGaugeVec::new(
            Opts::new("segwatch_build_info", "Build information (always 1)."),
            &["version"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(build_info.clone()))
            .expect("metric names are unique");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every loss stage exists from the start (at 0), so alerts on
        // `increase()` see the first loss.
        for s in [
            stage::RINGBUF_FULL,
            stage::FLOW_MAP_FULL,
            stage::UNPARSABLE,
            stage::IPV6_EXT_LIMIT,
            stage::FLOW_LOG_WRITE,
            stage::EVENT_QUEUE_FULL,
            stage::EXPORT_OTLP,
            stage::EXPORT_IPFIX,
            stage::FRAGMENT_PORTS_UNKNOWN,
            stage::NEW_FLOW_BUDGET,
        ] {
            events_lost.with_label_values(&[s]);
        }
        let budget_overflow_packets = counter_vec(
            "segwatch_new_flow_budget_overflow_packets_total",
            "Packets of new connections over the interface's new-flow budget (--new-flow-budget): counted here, not in a flow report.",
            &["interface"],
        );
        let budget_overflow_bytes = counter_vec(
            "segwatch_new_flow_budget_overflow_bytes_total",
            "IP-layer bytes of those packets.",
            &["interface"],
        );
        let staged = crate::staged::StagedMetrics::register(&registry)
            .counting_series_in(metric_series.clone());
        Metrics {
            registry,
            flows,
            flow_bytes,
            violations,
            workload_flows,
            probe_flows,
            events_lost,
            interfaces_attached,
            flows_unattributed,
            build_info,
            packets,
            flow_table_entries,
            flow_table_capacity,
            flows_deduplicated,
            new_flows,
            inventory_errors,
            source_up,
            flows_not_reported,
            service_without_backend,
            conntrack_errors,
            flows_awaiting_identity,
            flows_identity_late,
            policy_errors,
            export_records,
            scans,
            metric_series,
            label_overflow,
            staged,
            budget_overflow_packets,
            budget_overflow_bytes,
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text encoder writes UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_metrics_are_exported_from_the_start() {
        let m = Metrics::new();
        let text = m.render();
        for name in [
            "segwatch_events_lost_total{stage=\"ringbuf_full\"} 0",
            "segwatch_interfaces_attached 0",
            "segwatch_build_info{version=",
            "segwatch_flows_unattributed_total 0",
        ] {
            assert!(
                text.contains(name),
                "/metrics must carry `{name}` before any traffic:\n{text}"
            );
        }
    }
}
