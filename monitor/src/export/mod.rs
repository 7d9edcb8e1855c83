//! Flow export to the engines security teams already run: OTLP logs and
//! IPFIX. Exporters run off the report path and are never awaited by it.
//!
//! ```text
//!  sweep ─► FlowReport ─► flow log (synchronous, as before)
//!                     └─► Exporters::offer ─► Queue (bounded by bytes, no disk)
//!                              │ refused: queue_full ─► lost{export_*}
//!                              ▼
//!                         worker task ─► Sink::send ─► collector
//!                              │ error: backoff, retry until --export-retry-timeout
//!                              └─► sent | failed ─► segwatch_export_records_total
//! ```
//!
//! Every report handed to an exporter ends in exactly one result of
//! `segwatch_export_records_total{exporter,result}`: `sent`, or one of the
//! losses `queue_full`, `failed`, `shutdown`, which are also counted in
//! `segwatch_events_lost_total{stage="export_otlp"|"export_ipfix"}`.

pub mod ipfix;
pub mod otlp;
pub mod queue;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{stage, Metrics};
use crate::report::FlowReport;
pub use queue::{Backoff, PushError, Queue};

/// Bad export settings, named by flag.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{flag} {value}: {reason}")]
    Config {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

/// Delivery results (the `result` label; a bounded set).
pub mod result {
    pub const SENT: &str = "sent";
    /// Refused at the queue: over the memory budget.
    pub const QUEUE_FULL: &str = "queue_full";
    /// Given up after retrying for `--export-retry-timeout`.
    pub const FAILED: &str = "failed";
    /// Still queued or in flight when the agent stopped.
    pub const SHUTDOWN: &str = "shutdown";
    pub const ALL: [&str; 4] = [SENT, QUEUE_FULL, FAILED, SHUTDOWN];
}

/// A send that failed after delivering the first `delivered` reports of the
/// batch.
#[derive(Debug)]
pub struct Partial {
    pub delivered: usize,
    pub error: String,
}

/// One export protocol.
pub trait Sink: Send + 'static {
    /// The `exporter` label.
    const NAME: &'static str;
    /// Reports per send.
    const MAX_BATCH: usize;
    fn send(
        &mut self,
        batch: &[Arc<FlowReport>],
    ) -> impl Future<Output = Result<(), Partial>> + Send;
}

/// Settings shared by the exporters.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub otlp: Option<otlp::OtlpConfig>,
    /// `HOST:PORT` of the IPFIX collector.
    pub ipfix: Option<String>,
    /// Bytes of reports each exporter may hold (queued plus in flight).
    pub memory_budget: usize,
    /// How long one batch is retried before it is given up.
    pub retry_timeout: Duration,
    /// First retry delay (doubles up to `max_backoff`).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long the agent waits at shutdown for queued reports to go out.
    pub shutdown_grace: Duration,
}

impl ExportConfig {
    pub fn enabled(&self) -> bool {
        self.otlp.is_some() || self.ipfix.is_some()
    }
}

/// Counts one exporter's results in both metrics.
#[derive(Clone)]
pub struct Outcome {
    exporter: &'static str,
    stage: &'static str,
    metrics: Metrics,
}

impl Outcome {
    pub fn new(exporter: &'static str, metrics: Metrics) -> Self {
        let stage = match exporter {
            "otlp" => stage::EXPORT_OTLP,
            _ => stage::EXPORT_IPFIX,
        };
        // Every series exists from the start (at 0), so alerts on
        // increase() see the first loss.
        for r in result::ALL {
            metrics.export_records.with_label_values(&[exporter, r]);
        }
        Outcome {
            exporter,
            stage,
            metrics,
        }
    }

    pub fn count(&self, result: &str, n: usize) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        self.metrics
            .export_records
            .with_label_values(&[self.exporter, result])
            .inc_by(n);
        if result != result::SENT {
            self.metrics
                .events_lost
                .with_label_values(&[self.stage])
                .inc_by(n);
        }
    }
}

/// Delivery policy of a worker.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub retry_timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// Takes batches from `queue` and delivers them through `sink` until the
/// queue is closed and drained.
pub async fn run_worker<S: Sink>(mut sink: S, queue: Arc<Queue>, outcome: Outcome, policy: Policy) {
    let mut backoff = Backoff::new(policy.initial_backoff, policy.max_backoff);
    while let Some(mut batch) = queue.pop(S::MAX_BATCH).await {
        let started = Instant::now();
        let mut attempts = 0u32;
        while !batch.reports.is_empty() {
            attempts += 1;
            match sink.send(&batch.reports).await {
                Ok(()) => {
                    let n = batch.reports.len();
                    // Counted before release, so a reader never sees the
                    // queue empty with the result still missing.
                    outcome.count(result::SENT, n);
                    queue.finish(&mut batch, n);
                    backoff.reset();
                }
                Err(p) => {
                    let delivered = p.delivered.min(batch.reports.len());
                    outcome.count(result::SENT, delivered);
                    queue.finish(&mut batch, delivered);
                    if started.elapsed() >= policy.retry_timeout {
                        let n = batch.reports.len();
                        tracing::warn!(
                            exporter = S::NAME,
                            reports = n,
                            attempts,
                            error = %p.error,
                            "export failed; reports dropped (counted in segwatch_events_lost_total)"
                        );
                        outcome.count(result::FAILED, n);
                        queue.finish(&mut batch, n);
                    } else {
                        // Never sleep past the retry timeout: the next
                        // attempt is the last one if it fails too.
                        let left = policy.retry_timeout.saturating_sub(started.elapsed());
                        let delay = backoff.next_delay().min(left);
                        tracing::debug!(exporter = S::NAME, attempts, error = %p.error, ?delay, "export failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }
}

/// One running exporter.
struct Running {
    name: &'static str,
    queue: Arc<Queue>,
    outcome: Outcome,
    task: tokio::task::JoinHandle<()>,
}

/// The running exporters. `offer` is what the report path calls; it never
/// waits.
#[derive(Default)]
pub struct Exporters {
    running: Vec<Running>,
    shutdown_grace: Duration,
}

impl Exporters {
    /// Nothing exported.
    pub fn none() -> Self {
        Exporters::default()
    }

    /// Starts the configured exporters on the current tokio runtime.
    pub async fn start(cfg: &ExportConfig, metrics: &Metrics) -> Result<Self, ExportError> {
        let policy = Policy {
            retry_timeout: cfg.retry_timeout,
            initial_backoff: cfg.initial_backoff,
            max_backoff: cfg.max_backoff,
        };
        let mut running = Vec::new();
        if let Some(o) = &cfg.otlp {
            let sink = otlp::OtlpSink::new(o)?;
            tracing::info!(endpoint = %o.endpoint, protocol = ?o.protocol, "OTLP export on");
            running.push(spawn(sink, cfg.memory_budget, metrics, policy));
        }
        if let Some(c) = &cfg.ipfix {
            let sink = ipfix::IpfixSink::connect(c, 1).await?;
            tracing::info!(collector = %c, "IPFIX export on");
            running.push(spawn(sink, cfg.memory_budget, metrics, policy));
        }
        Ok(Exporters {
            running,
            shutdown_grace: cfg.shutdown_grace,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Hands a report to every exporter without waiting; a refusal is
    /// counted as a loss.
    pub fn offer(&self, report: &FlowReport) {
        if self.running.is_empty() {
            return;
        }
        let shared = Arc::new(report.clone());
        for r in &self.running {
            match r.queue.push(shared.clone()) {
                Ok(()) => {}
                Err(PushError::Full) => {
                    r.outcome.count(result::QUEUE_FULL, 1);
                    tracing::debug!(exporter = r.name, "export queue full; report dropped");
                }
                Err(PushError::Closed) => r.outcome.count(result::SHUTDOWN, 1),
            }
        }
    }

    /// Closes the queues, gives the workers the grace period to deliver,
    /// then counts whatever is left as lost.
    pub async fn shutdown(self) {
        for r in &self.running {
            r.queue.close();
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        for mut r in self.running {
            if tokio::time::timeout_at(deadline, &mut r.task)
                .await
                .is_err()
            {
                r.task.abort();
                let _ = (&mut r.task).await;
            }
            let left = r.queue.abandon();
            if left > 0 {
                tracing::warn!(
                    exporter = r.name,
                    reports = left,
                    "export not finished at shutdown; reports dropped"
                );
            }
            r.outcome.count(result::SHUTDOWN, left);
        }
    }
}

fn spawn<S: Sink>(sink: S, budget: usize, metrics: &Metrics, policy: Policy) -> Running {
    let queue = Arc::new(Queue::new(budget));
    let outcome = Outcome::new(S::NAME, metrics.clone());
    let task = tokio::spawn(run_worker(sink, queue.clone(), outcome.clone(), policy));
    Running {
        name: S::NAME,
        queue,
        outcome,
        task,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A sink that fails its first `fail` attempts, and delivers `partial`
    /// reports on each failure.
    struct Flaky {
        fail: usize,
        partial: usize,
        attempts: Arc<AtomicUsize>,
        delivered: Arc<AtomicUsize>,
    }

    impl Sink for Flaky {
        const NAME: &'static str = "otlp";
        const MAX_BATCH: usize = 4;
        async fn send(&mut self, batch: &[Arc<FlowReport>]) -> Result<(), Partial> {
            let n = self.attempts.fetch_add(1, Ordering::SeqCst);
            if n < self.fail {
                let d = self.partial.min(batch.len());
                self.delivered.fetch_add(d, Ordering::SeqCst);
                return Err(Partial {
                    delivered: d,
                    error: "collector down".into(),
                });
            }
            self.delivered.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    fn value(m: &Metrics, result: &str) -> u64 {
        m.export_records.with_label_values(&["otlp", result]).get()
    }

    fn lost(m: &Metrics) -> u64 {
        m.events_lost.with_label_values(&[stage::EXPORT_OTLP]).get()
    }

    fn policy(retry_ms: u64) -> Policy {
        Policy {
            retry_timeout: Duration::from_millis(retry_ms),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        }
    }

    async fn run(
        fail: usize,
        partial: usize,
        retry_ms: u64,
        reports: usize,
    ) -> (Metrics, usize, usize) {
        let m = Metrics::new();
        let q = Arc::new(Queue::new(1 << 20));
        let attempts = Arc::new(AtomicUsize::new(0));
        let delivered = Arc::new(AtomicUsize::new(0));
        let sink = Flaky {
            fail,
            partial,
            attempts: attempts.clone(),
            delivered: delivered.clone(),
        };
        for _ in 0..reports {
            q.push(Arc::new(FlowReport::default())).expect("room");
        }
        q.close();
        run_worker(
            sink,
            q.clone(),
            Outcome::new("otlp", m.clone()),
            policy(retry_ms),
        )
        .await;
        assert_eq!(q.bytes(), 0, "every batch released");
        (
            m,
            attempts.load(Ordering::SeqCst),
            delivered.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn retries_until_delivered_without_duplicates() {
        let (m, attempts, delivered) = run(3, 1, 60_000, 6).await;
        assert_eq!(value(&m, "sent"), 6);
        assert_eq!(
            delivered, 6,
            "a partially delivered batch is not resent whole"
        );
        assert_eq!(attempts, 3 + 2, "3 failures, then one send per batch");
        assert_eq!(lost(&m), 0);
    }

    #[tokio::test]
    async fn gives_up_after_the_retry_timeout_and_counts_the_loss() {
        let (m, _, delivered) = run(usize::MAX, 0, 0, 10).await;
        assert_eq!(delivered, 0);
        assert_eq!(value(&m, "failed"), 10);
        assert_eq!(value(&m, "sent"), 0);
        assert_eq!(lost(&m), 10, "every report given up is a loss");
    }

    #[tokio::test]
    async fn queue_full_and_shutdown_are_counted_losses() {
        let m = Metrics::new();
        let one = queue::estimated_size(&FlowReport::default());
        // A worker that never finishes (the collector hangs).
        struct Hang;
        impl Sink for Hang {
            const NAME: &'static str = "otlp";
            const MAX_BATCH: usize = 2;
            async fn send(&mut self, _: &[Arc<FlowReport>]) -> Result<(), Partial> {
                std::future::pending().await
            }
        }
        let mut ex = Exporters {
            running: vec![spawn(Hang, one * 5, &m, policy(1000))],
            shutdown_grace: Duration::from_millis(20),
        };
        for _ in 0..8 {
            ex.offer(&FlowReport::default());
        }
        assert_eq!(value(&m, "queue_full"), 3, "5 fit the budget");
        ex.shutdown_grace = Duration::from_millis(20);
        ex.shutdown().await;
        assert_eq!(value(&m, "shutdown"), 5, "in flight and queued at stop");
        assert_eq!(lost(&m), 8, "every report not sent is counted lost");
        assert_eq!(value(&m, "sent"), 0);
    }
}
