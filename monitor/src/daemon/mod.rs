//! The node daemon's event loop: the adapter that wires the kernel, netlink,
//! the flow tracker, the flow log and /metrics together.
//!
//! ```text
//!  netlink links ──► attach / detach ──► segwatch_interfaces_attached
//!  ring buffer ────► new connection (judged at once, for fast alerts)
//!  every sweep ────► snapshot ─► Tracker ─► FlowReport ─► judge ─► flow log + metrics
//!                                                               └─► exporters (queued, never awaited)
//!                    counters ─► segwatch_events_lost_total, segwatch_packets_total
//!  SIGHUP ─────────► reopen the flow log (logrotate)
//!  SIGTERM/SIGINT ─► final sweep (flush) ─► detach everything ─► exit 0
//! ```

pub mod auth;
pub mod http;
pub mod tls;

use std::collections::HashMap;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use aya::maps::{MapData, RingBuf};
use monitor_common::{event_kind, Counter, FlowEvent, FlowKey};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::datapath::links::{self, LinkEvent, Selector};
use crate::datapath::Datapath;
use crate::flows::{self, ConnKey, Timeouts, Tracker};
use crate::metrics::{stage, Metrics};
use crate::report::FlowReport;

/// Everything `segwatch run` needs, parsed and validated at the edge.
pub struct Config {
    pub interfaces: Vec<String>,
    /// /metrics, /healthz, /readyz: addresses, TLS, authentication.
    pub http: http::Endpoints,
    /// After a failed program load, keep answering /readyz (503, with the
    /// reason) this long before exiting with the error.
    pub load_failure_hold: Duration,
    pub flow_log: String,
    pub node_name: Option<String>,
    pub sweep_interval: Duration,
    pub timeouts: Timeouts,
    pub max_flows: u32,
    /// New connections per second one interface may start (0: no budget).
    pub new_flow_budget: u32,
    pub attach_mode: crate::datapath::AttachMode,
    pub flow_log_filter: FlowLogFilter,
    pub export: crate::export::ExportConfig,
}

/// Which reports the flow log keeps (`--flow-log-filter`); exporters and
/// metrics see every report either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowLogFilter {
    /// Every report.
    #[default]
    All,
    /// Only reports whose verdict is `violation`.
    Violations,
}

impl FlowLogFilter {
    pub fn keeps(self, report: &FlowReport) -> bool {
        match self {
            FlowLogFilter::All => true,
            FlowLogFilter::Violations => report.verdict == Some(crate::report::Verdict::Violation),
        }
    }
}

/// Judges a flow report in place (attribution, verdict, violations) and
/// records it in the metrics. `first` is true for the first report of a
/// connection (violations count once per connection).
pub trait Judge: Send {
    fn judge(&mut self, report: &mut FlowReport);
    /// Counts a judged report and hands back what goes to the flow log:
    /// the report, or nothing (another node or another copy reports the
    /// connection, or it waits for the cluster view to name its ends).
    fn observe(&mut self, metrics: &Metrics, report: FlowReport, first: bool)
        -> Option<FlowReport>;
    /// After each sweep, with the connections the kernel still tracks:
    /// forgets the others and returns held reports now due (judged with
    /// what the cluster view knows now; all of them with `shutdown`).
    fn after_sweep(
        &mut self,
        _metrics: &Metrics,
        _open: &dyn Fn(&ConnKey) -> bool,
        _shutdown: bool,
    ) -> Vec<FlowReport> {
        Vec::new()
    }
    /// A new connection announced by the kernel, judged before any counts
    /// exist so that alerts fire within milliseconds. A judge that counts
    /// the connection's violations now remembers it, and does not count
    /// them again with the connection's reports (the daemon keeps nothing
    /// per announced connection).
    fn announce(&mut self, metrics: &Metrics, report: &FlowReport);
    /// The cluster view is complete enough to judge (for /readyz).
    fn ready(&self) -> bool;
    /// Why the cluster view is running on its last good state, if it is
    /// (for /readyz: "degraded: <reason>"). Liveness is not affected.
    fn degraded(&self) -> Option<String> {
        None
    }
}

/// A judge that knows nothing about the cluster: reports carry addresses and
/// ports only, and metrics use empty namespace labels.
pub struct NoJudge;

impl Judge for NoJudge {
    fn judge(&mut self, _report: &mut FlowReport) {}
    fn observe(
        &mut self,
        metrics: &Metrics,
        report: FlowReport,
        first: bool,
    ) -> Option<FlowReport> {
        if first {
            metrics
                .flows
                .with_label_values(&["", "", &report.protocol, "unjudged"])
                .inc();
        }
        metrics
            .flow_bytes
            .with_label_values(&["", "", "sent"])
            .inc_by(report.bytes.sent);
        metrics
            .flow_bytes
            .with_label_values(&["", "", "received"])
            .inc_by(report.bytes.received);
        Some(report)
    }
    fn announce(&mut self, _metrics: &Metrics, _report: &FlowReport) {}
    fn ready(&self) -> bool {
        true
    }
}

/// Where flow reports go.
enum FlowLog {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(std::io::BufWriter<std::fs::File>, String),
}

impl FlowLog {
    fn open(spec: &str) -> Result<Self> {
        if spec == "-" {
            return Ok(FlowLog::Stdout(std::io::BufWriter::new(std::io::stdout())));
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec)
            .with_context(|| format!("--flow-log {spec}: cannot open for appending"))?;
        Ok(FlowLog::File(std::io::BufWriter::new(f), spec.to_string()))
    }

    /// Opens the path again (SIGHUP after logrotate moved the file away);
    /// on failure the old file stays in use and the error is returned.
    fn reopen(&mut self) -> Result<()> {
        if let FlowLog::File(w, spec) = self {
            w.flush().ok();
            let spec = spec.clone();
            *self = FlowLog::open(&spec)?;
        }
        Ok(())
    }

    fn write(&mut self, report: &FlowReport) -> std::io::Result<()> {
        let line = serde_json::to_string(report).map_err(std::io::Error::other)?;
        let w: &mut dyn std::io::Write = match self {
            FlowLog::Stdout(w) => w,
            FlowLog::File(w, _) => w,
        };
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            FlowLog::Stdout(w) => w.flush(),
            FlowLog::File(w, _) => w.flush(),
        }
    }
}

/// How often at most freed heap memory is given back to the kernel.
const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// Gives the pages the C allocator holds free back to the kernel. A burst
/// (a spray of new connections announced faster than they are judged, a
/// sweep that ends many connections at once) leaves freed memory spread
/// over the allocator's arenas, which glibc keeps resident otherwise: the
/// daemon's RSS would stay at the burst's peak. Cheap next to a sweep
/// (it walks the free lists, not the live memory).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; 0 keeps no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Monotonic (CLOCK_MONOTONIC, what bpf_ktime_get_ns reads) now, in ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Maps kernel monotonic timestamps to wall-clock time.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    /// Wall ns minus monotonic ns, measured now.
    offset_ns: i128,
}

impl Clock {
    pub(crate) fn now() -> Self {
        let wall = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as i128;
        Clock {
            offset_ns: wall - monotonic_ns() as i128,
        }
    }

    pub(crate) fn wall(&self, mono_ns: u64) -> chrono::DateTime<chrono::Utc> {
        let ns = (mono_ns as i128 + self.offset_ns).clamp(0, i64::MAX as i128) as i64;
        chrono::DateTime::from_timestamp_nanos(ns)
    }
}

struct Daemon {
    dp: Datapath,
    selector: Selector,
    metrics: Metrics,
    judge: Box<dyn Judge>,
    tracker: Tracker,
    log: FlowLog,
    log_filter: FlowLogFilter,
    exporters: crate::export::Exporters,
    observer: Option<String>,
    /// ifindex → name of every interface we attached to (kept after it goes,
    /// for the reports of its last flows).
    names: HashMap<u32, String>,
    /// Kernel counters at the last sweep, to export increments.
    last_counters: [u64; Counter::COUNT as usize],
    /// New-flow budget overflow per interface at the last sweep.
    budget_overflow: crate::datapath::budget::OverflowDeltas,
    health: Arc<http::Health>,
    /// The initial interface dump has been processed.
    links_synced: bool,
    /// When freed heap pages were last given back to the kernel.
    last_trim: std::time::Instant,
}

impl Daemon {
    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up { index, name, kind } => {
                if !self.selector.wants(&name, kind.as_deref()) || self.dp.is_attached(&name) {
                    return;
                }
                match self.dp.attach(&name) {
                    Ok(()) => {
                        tracing::info!(interface = %name, index, "attached");
                        self.names.insert(index, name);
                    }
                    // The interface may be gone already (short-lived veth).
                    Err(e) => {
                        tracing::warn!(interface = %name, error = %format!("{e:#}"), "cannot attach")
                    }
                }
            }
            LinkEvent::DumpDone => {
                // Every interface present at start is attached (or failed):
                // from now on the programs see the node's pods.
                self.links_synced = true;
                self.health.set_ready(true, self.judge.ready());
            }
            LinkEvent::Gone { index, name } => {
                let name = if name.is_empty() {
                    self.names.get(&index).cloned().unwrap_or_default()
                } else {
                    name
                };
                if self.dp.is_attached(&name) {
                    self.dp.detach(&name);
                    tracing::info!(interface = %name, index, "interface gone, detached");
                }
                // Its budget record goes with it (the series too: labels
                // stay bounded by the interfaces present); the total
                // stays in segwatch_events_lost_total{stage="new_flow_budget"}.
                if let Err(e) = self.export_budget() {
                    tracing::warn!(error = %e, "cannot export the new-flow budget overflow");
                }
                self.dp.forget_budget(index);
                let _ = self
                    .metrics
                    .budget_overflow_packets
                    .remove_label_values(&[&name]);
                let _ = self
                    .metrics
                    .budget_overflow_bytes
                    .remove_label_values(&[&name]);
            }
        }
        self.metrics
            .interfaces_attached
            .set(self.dp.attached().count() as i64);
    }

    fn on_event(&mut self, ev: FlowEvent) {
        let key = FlowKey::new(&ev.key, ev.ifindex);
        if ev.kind == event_kind::ROTATED {
            // A SYN started a new connection on this tuple: the old one's
            // final totals, exactly as the kernel held them.
            let prev = crate::datapath::final_stats(&ev.prev, self.dp.clock());
            if let Some(raw) = self
                .tracker
                .handed_over(key, ev.prev.gen, &prev, monotonic_ns())
            {
                self.emit(&[raw]);
            }
        }
        let raw = announcement(&ev);
        let clock = Clock::now();
        let iface = self
            .names
            .get(&key.ifindex)
            .map(String::as_str)
            .unwrap_or("");
        let mut report = flows::to_report(&raw, iface, chrono::Utc::now(), |ns| clock.wall(ns));
        report.observer.clone_from(&self.observer);
        crate::reporter::stamp(&mut report, &raw, self.observer.as_deref());
        self.judge.judge(&mut report);
        self.judge.announce(&self.metrics, &report);
    }

    /// Judges, counts and logs raw reports (a report the judge holds for a
    /// late identity is written when it is released).
    fn emit(&mut self, raws: &[flows::RawReport]) {
        let clock = Clock::now();
        let wall_now = chrono::Utc::now();
        for raw in raws {
            let iface = self
                .names
                .get(&raw.key.ifindex)
                .cloned()
                .or_else(|| links::ifname(raw.key.ifindex))
                .unwrap_or_else(|| format!("if{}", raw.key.ifindex));
            let mut report = flows::to_report(raw, &iface, wall_now, |ns| clock.wall(ns));
            report.observer.clone_from(&self.observer);
            crate::reporter::stamp(&mut report, raw, self.observer.as_deref());
            self.judge.judge(&mut report);
            // Violations count once per connection: at the announcement if
            // the judge counted them then (it remembers), else with the
            // first report.
            let first = raw.first;
            self.metrics
                .packets
                .with_label_values(&["accounted"])
                .inc_by(raw.packets[0] + raw.packets[1]);
            let published = self.judge.observe(&self.metrics, report, first);
            if let Some(report) = published {
                self.write_report(&report);
            }
        }
        if let Err(e) = self.log.flush() {
            tracing::warn!(error = %e, "cannot flush the flow log");
        }
    }

    /// One pass over the kernel table; with `shutdown`, flush everything.
    /// The table is read in batches straight into the tracker: memory per
    /// sweep does not grow with the table.
    fn sweep(&mut self, shutdown: bool) -> Result<()> {
        let now = monotonic_ns();
        let mut pass = self.tracker.start(now, shutdown);
        let read = self.dp.snapshot_each(|e| pass.visit(e));
        let visited = pass.visited();
        // A table read that failed part-way still made reports of what it
        // visited (their counts are taken): they are written, and nothing
        // the read did not reach is forgotten.
        let out = pass.finish(read.is_ok());
        if read.is_ok() {
            self.metrics.flow_table_entries.set(visited as i64);
        }
        self.metrics.flows_deduplicated.inc_by(out.new_duplicates);
        self.emit(&out.reports);
        // Removing returns the last counts (nothing is lost between the
        // snapshot and the removal); the ended connections are reported
        // from those.
        let taken = self.dp.take(&out.remove);
        let finals = self.tracker.removed(&taken, now);
        self.emit(&finals);
        self.after_sweep(shutdown);
        if self.last_trim.elapsed() >= TRIM_INTERVAL {
            self.last_trim = std::time::Instant::now();
            release_free_memory();
        }
        read.context("reading the kernel flow table")?;
        self.export_counters()?;
        Ok(())
    }

    /// Hands a published report to the exporters and, unless the filter
    /// leaves it out, to the flow log.
    fn write_report(&mut self, report: &FlowReport) {
        self.exporters.offer(report);
        if !self.log_filter.keeps(report) {
            return;
        }
        if let Err(e) = self.log.write(report) {
            self.metrics
                .events_lost
                .with_label_values(&[stage::FLOW_LOG_WRITE])
                .inc();
            tracing::warn!(error = %e, "cannot write the flow log");
        }
    }

    /// Per-connection state lives as long as the kernel table holds the
    /// connection (also when it ends without a final report); held reports
    /// that are due go to the flow log.
    fn after_sweep(&mut self, shutdown: bool) {
        let tracker = &self.tracker;
        let open = |k: &ConnKey| tracker.tracks_tuple(k);
        let released = self.judge.after_sweep(&self.metrics, &open, shutdown);
        for r in &released {
            self.write_report(r);
        }
        if !released.is_empty() {
            if let Err(e) = self.log.flush() {
                tracing::warn!(error = %e, "cannot flush the flow log");
            }
        }
    }

    fn export_counters(&mut self) -> Result<()> {
        let now = self.dp.counters().context("reading the kernel counters")?;
        let delta = |c: Counter| now[c as usize].saturating_sub(self.last_counters[c as usize]);
        let lost = &self.metrics.events_lost;
        lost.with_label_values(&[stage::RINGBUF_FULL])
            .inc_by(delta(Counter::RingbufFull));
        lost.with_label_values(&[stage::FLOW_MAP_FULL])
            .inc_by(delta(Counter::FlowMapFull));
        lost.with_label_values(&[stage::UNPARSABLE])
            .inc_by(delta(Counter::Unparsable));
        lost.with_label_values(&[stage::IPV6_EXT_LIMIT])
            .inc_by(delta(Counter::Ipv6ExtLimit));
        lost.with_label_values(&[stage::TCP_HANDOVER])
            .inc_by(delta(Counter::HandoverLost));
        lost.with_label_values(&[stage::TCP_HANDOVER_RACE])
            .inc_by(delta(Counter::HandoverRace));
        // Accounted packets are in the flow reports (no per-packet counter
        // on the kernel's hot path): counted as reports are made.
        let p = &self.metrics.packets;
        p.with_label_values(&["second_interface"])
            .inc_by(delta(Counter::SecondInterface));
        p.with_label_values(&["non_ip"])
            .inc_by(delta(Counter::NonIp));
        p.with_label_values(&["fragment"])
            .inc_by(delta(Counter::Fragments));
        p.with_label_values(&["icmp_error"])
            .inc_by(delta(Counter::IcmpErrors));
        lost.with_label_values(&[stage::FRAGMENT_PORTS_UNKNOWN])
            .inc_by(delta(Counter::FragmentNoPorts));
        lost.with_label_values(&[stage::NEW_FLOW_BUDGET])
            .inc_by(delta(Counter::FlowBudget));
        self.metrics.new_flows.inc_by(delta(Counter::NewFlows));
        self.last_counters = now;
        self.export_budget()
    }

    /// Exports what each interface counted over its new-flow budget.
    fn export_budget(&mut self) -> Result<()> {
        let records = self.dp.budgets().context("reading the new-flow budgets")?;
        for o in self.budget_overflow.update(&records) {
            let name = self
                .names
                .get(&o.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("if{}", o.ifindex));
            self.metrics
                .budget_overflow_packets
                .with_label_values(&[&name])
                .inc_by(o.packets);
            self.metrics
                .budget_overflow_bytes
                .with_label_values(&[&name])
                .inc_by(o.bytes);
        }
        Ok(())
    }
}

/// The first report of a connection the kernel announced: its first
/// packet, as the event describes it.
pub(crate) fn announcement(ev: &FlowEvent) -> flows::RawReport {
    let key = FlowKey::new(&ev.key, ev.ifindex);
    let mut stats = monitor_common::FlowStats {
        opener: ev.opener,
        first_ns: ev.ts_ns,
        last_ns: ev.ts_ns,
        ..Default::default()
    };
    let dir = usize::from(
        ev.opener == monitor_common::opener::HI || ev.opener == monitor_common::opener::HI_INFERRED,
    );
    stats.tcp_flags[dir] = ev.tcp_flags;
    stats.packets[dir] = 1;
    stats.bytes[dir] = u64::from(ev.bytes);
    flows::RawReport {
        key,
        stats,
        packets: stats.packets,
        bytes: stats.bytes,
        start_ns: ev.ts_ns,
        end_ns: ev.ts_ns,
        ended: false,
        generation: ev.gen,
        first: true,
    }
}

/// Reads new-flow events from the ring buffer into `tx` until it closes.
async fn read_events(
    rb: RingBuf<MapData>,
    tx: mpsc::Sender<FlowEvent>,
    metrics: Metrics,
) -> Result<()> {
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the
    // RingBuf, and always returns that same fd.
    let mut fd = unsafe { AsyncFd::register(rb) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?;
    loop {
        let mut guard = fd
            .readable_mut()
            .await
            .context("waiting on the ring buffer")?;
        // Readiness is cleared BEFORE draining, so a record committed during
        // the drain always leaves a wakeup behind (the kernel wakes the
        // reader only when it has caught up: BPF_RB adaptive notification).
        // tokio's readiness tick guards the other order too; this one does
        // not depend on it.
        guard.clear_ready();
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            if item.len() < std::mem::size_of::<FlowEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a FlowEvent (repr(C), any bit
            // pattern valid) of at least this size.
            let ev: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if tx.try_send(ev).is_err() {
                // The daemon is behind; the flow is still in the table and
                // will be reported at the next sweep, only not announced.
                metrics
                    .events_lost
                    .with_label_values(&[stage::EVENT_QUEUE_FULL])
                    .inc();
            }
        }
        if tx.is_closed() {
            return Ok(());
        }
    }
}

/// Keeps the listeners up for `hold` (or until SIGTERM/SIGINT) after a
/// failed load, so that the reason is on /readyz, not only in the log.
async fn hold_after_load_failure(hold: Duration, e: &anyhow::Error) {
    if hold.is_zero() {
        return;
    }
    tracing::error!(
        error = %format!("{e:#}"),
        hold_secs = hold.as_secs(),
        "cannot load the eBPF programs; /readyz says so until exiting"
    );
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = tokio::time::sleep(hold) => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Runs the daemon until SIGTERM or SIGINT. `metrics` is shared with the
/// cluster sources (their error counters live in the same registry).
pub async fn run(cfg: Config, judge: Box<dyn Judge>, metrics: Metrics) -> Result<()> {
    let selector = Selector::new(cfg.interfaces.clone());
    for name in selector.literal_names() {
        if links::ifindex(name).is_none() {
            bail!("--interface {name}: unknown interface");
        }
    }
    let mut log = FlowLog::open(&cfg.flow_log)?;
    log.flush().ok();
    // Listening before the load: a slow or failing load shows on /readyz.
    let health = Arc::new(http::Health::default());
    let server = http::serve(cfg.http.clone(), metrics.clone(), health.clone()).await?;
    let exporters = crate::export::Exporters::start(&cfg.export, &metrics).await?;
    let mut dp = match Datapath::load(cfg.max_flows, cfg.attach_mode) {
        Ok(dp) => dp,
        Err(e) => {
            let e = anyhow::Error::from(e);
            health.set_load_failed(&format!("{e:#}"));
            hold_after_load_failure(cfg.load_failure_hold, &e).await;
            return Err(e);
        }
    };
    dp.set_new_flow_budget(cfg.new_flow_budget)
        .context("setting the new-flow budget")?;
    tracing::info!(mode = ?dp.mode(), max_flows = dp.max_flows(), new_flow_budget = cfg.new_flow_budget, "programs loaded");
    metrics.flow_table_capacity.set(i64::from(dp.max_flows()));

    let (ev_tx, mut ev_rx) = mpsc::channel::<FlowEvent>(65_536);
    let rb = dp.take_events().context("ring buffer already taken")?;
    tracing::debug!(fd = rb.as_raw_fd(), "ring buffer");
    let ev_task = tokio::spawn(read_events(rb, ev_tx, metrics.clone()));

    let (link_tx, mut link_rx) = mpsc::channel::<LinkEvent>(4096);
    let link_task = tokio::spawn(links::watch(link_tx));

    let mut daemon = Daemon {
        dp,
        selector,
        metrics,
        judge,
        tracker: Tracker::new(cfg.timeouts),
        log,
        log_filter: cfg.flow_log_filter,
        exporters,
        observer: cfg.node_name.clone(),
        names: HashMap::new(),
        last_counters: [0; Counter::COUNT as usize],
        budget_overflow: Default::default(),
        health: health.clone(),
        links_synced: false,
        last_trim: std::time::Instant::now(),
    };
    daemon.last_counters = daemon.dp.counters()?;

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut tick = tokio::time::interval(cfg.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut links_done = false;
    loop {
        tokio::select! {
            ev = link_rx.recv(), if !links_done => match ev {
                Some(ev) => daemon.on_link(ev),
                None => {
                    // Keep monitoring what is attached; new veths are missed
                    // until a restart, which /readyz now asks for.
                    links_done = true;
                    tracing::error!("the netlink link feed stopped: new interfaces are no longer attached");
                    daemon.health.set_degraded(http::Component::LinkFeed, "netlink link feed stopped");
                }
            },
            Some(ev) = ev_rx.recv() => daemon.on_event(ev),
            _ = tick.tick() => {
                if let Err(e) = daemon.sweep(false) {
                    tracing::error!(error = %format!("{e:#}"), "sweep failed");
                }
                daemon.health.set_ready(daemon.links_synced, daemon.judge.ready());
                match daemon.judge.degraded() {
                    Some(why) => daemon.health.set_degraded(http::Component::ClusterSources, &why),
                    None => daemon.health.clear_degraded(http::Component::ClusterSources),
                }
            }
            _ = sighup.recv() => match daemon.log.reopen() {
                Ok(()) => tracing::info!(path = %cfg.flow_log, "flow log reopened"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot reopen the flow log; still writing the old file"),
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    tracing::info!("shutting down: flushing open flows");
    // Everything still in the ring buffer belongs to flows the sweep reports.
    while let Ok(ev) = ev_rx.try_recv() {
        daemon.on_event(ev);
    }
    daemon.sweep(true)?;
    daemon.dp.detach_all();
    // The datapath is released first; then the exporters get their grace
    // period to deliver the last reports (what is left is counted lost).
    std::mem::take(&mut daemon.exporters).shutdown().await;
    daemon.metrics.interfaces_attached.set(0);
    ev_task.abort();
    link_task.abort();
    server.abort();
    tracing::info!("detached from every interface; bye");
    Ok(())
}
