//! The bounded, memory-budgeted queue between the report path and one
//! exporter, and the retry backoff.
//!
//! The report path only ever calls [`Queue::push`], which never waits: when
//! the exporter has fallen behind (collector down, slow network) and the
//! queue holds its budget, the report is refused and the caller counts the
//! loss. Nothing is written to disk.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::report::FlowReport;

/// What a queued report is charged against the budget: the struct itself
/// plus the strings it owns or shares (shared `Arc<str>`s are charged in
/// full: the estimate errs on the side of the budget).
pub fn estimated_size(r: &FlowReport) -> usize {
    let ep = |e: &crate::report::Endpoint| {
        [
            e.namespace.as_deref(),
            e.pod.as_deref(),
            e.workload.as_deref(),
            e.service_account.as_deref(),
            e.node.as_deref(),
            e.service.as_ref().map(|s| &*s.namespace),
            e.service.as_ref().map(|s| &*s.name),
        ]
        .iter()
        .flatten()
        .map(|s| s.len())
        .sum::<usize>()
            + e.labels
                .as_ref()
                .map(|l| l.iter().map(|(k, v)| k.len() + v.len() + 48).sum())
                .unwrap_or(0)
    };
    std::mem::size_of::<FlowReport>()
        + r.interface.len()
        + r.protocol.len()
        + ep(&r.src)
        + ep(&r.dst)
        + r.observer.as_ref().map_or(0, String::len)
        + r.tcp
            .as_ref()
            .map_or(0, |t| t.flags.iter().map(|f| f.len() + 24).sum())
        + r.netpol.as_ref().map_or(0, |n| {
            (n.ingress.len() + n.egress.len()) * 16
                + n.ingress
                    .iter()
                    .chain(&n.egress)
                    .map(|s| s.len())
                    .sum::<usize>()
        })
        + r.violations
            .iter()
            .map(|v| std::mem::size_of_val(v) + v.rule.len() + v.reason.len())
            .sum::<usize>()
}

/// Why a report was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("export queue over its memory budget")]
    Full,
    #[error("export queue closed")]
    Closed,
}

/// A batch taken from the queue; its bytes stay charged against the budget
/// until [`Queue::finish`] (a batch being retried still holds memory).
#[derive(Debug)]
pub struct Batch {
    pub reports: Vec<Arc<FlowReport>>,
    bytes: usize,
}

#[derive(Default)]
struct State {
    items: VecDeque<(Arc<FlowReport>, usize)>,
    /// Bytes of queued and in-flight reports.
    bytes: usize,
    /// Reports taken by the worker and not yet finished.
    in_flight: usize,
    closed: bool,
}

/// One exporter's queue. Cheap to share (`Arc`).
pub struct Queue {
    state: Mutex<State>,
    notify: Notify,
    budget: usize,
}

impl Queue {
    /// A queue that holds at most `budget` bytes of reports (queued plus in
    /// flight).
    pub fn new(budget: usize) -> Self {
        Queue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this short lock leaves consistent counters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a report without waiting.
    pub fn push(&self, report: Arc<FlowReport>) -> Result<(), PushError> {
        let size = estimated_size(&report);
        {
            let mut st = self.lock();
            if st.closed {
                return Err(PushError::Closed);
            }
            if st.bytes + size > self.budget {
                return Err(PushError::Full);
            }
            st.bytes += size;
            st.items.push_back((report, size));
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Waits for at least one report and takes up to `max`; `None` once the
    /// queue is closed and empty.
    pub async fn pop(&self, max: usize) -> Option<Batch> {
        loop {
            // Registered before looking, so a push between the look and the
            // wait is not missed (Notify keeps one permit as well).
            let notified = self.notify.notified();
            {
                let mut st = self.lock();
                if !st.items.is_empty() {
                    let n = max.max(1).min(st.items.len());
                    let mut bytes = 0;
                    let reports = st
                        .items
                        .drain(..n)
                        .map(|(r, s)| {
                            bytes += s;
                            r
                        })
                        .collect::<Vec<_>>();
                    st.in_flight += reports.len();
                    return Some(Batch { reports, bytes });
                }
                if st.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The worker is done with `n` reports of `batch` (delivered or given
    /// up); once every report of it is done, its memory is released.
    pub fn finish(&self, batch: &mut Batch, n: usize) {
        let n = n.min(batch.reports.len());
        let mut st = self.lock();
        st.in_flight -= n;
        let share = if n == batch.reports.len() {
            batch.bytes
        } else {
            batch.bytes * n / batch.reports.len().max(1)
        };
        st.bytes -= share;
        batch.bytes -= share;
        batch.reports.drain(..n);
    }

    /// No more pushes; the worker drains what is queued, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Empties the queue and returns how many reports it held, queued or in
    /// flight (for the loss count when the worker was stopped).
    pub fn abandon(&self) -> usize {
        let mut st = self.lock();
        let n = st.items.len() + st.in_flight;
        st.items.clear();
        st.in_flight = 0;
        st.bytes = 0;
        st.closed = true;
        n
    }

    /// Bytes charged now (queued plus in flight).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Exponential backoff between delivery attempts: `initial`, doubling up to
/// `max`, each delay shortened by up to a quarter at random so that the
/// agents of a cluster do not retry in lockstep after a collector outage.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.subsec_nanos() as u64 | 1);
        Backoff {
            initial,
            max,
            next: initial,
            seed,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64: jitter only, no quality needed.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let quarter = base / 4;
        let cut = quarter.mul_f64((self.seed % 1000) as f64 / 1000.0);
        base - cut
    }

    /// Back to `initial` after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pod: &str) -> Arc<FlowReport> {
        let mut r = FlowReport::default();
        r.src.pod = Some(pod.into());
        Arc::new(r)
    }

    #[tokio::test]
    async fn the_budget_refuses_and_finishing_releases() {
        let one = estimated_size(&report("a"));
        let q = Queue::new(one * 3);
        for _ in 0..3 {
            q.push(report("a")).expect("within budget");
        }
        assert_eq!(q.push(report("a")), Err(PushError::Full), "a 4th is over");
        let mut b = q.pop(2).await.expect("two queued");
        assert_eq!(b.reports.len(), 2);
        // Taken but not finished: still charged.
        assert_eq!(q.push(report("a")), Err(PushError::Full));
        assert_eq!(q.bytes(), one * 3);
        q.finish(&mut b, 1);
        assert_eq!(q.bytes(), one * 2, "one finished report is released");
        q.push(report("a")).expect("room for one again");
        q.finish(&mut b, 1);
        assert_eq!(q.bytes(), one * 2);
        assert!(b.reports.is_empty());
        assert_eq!(q.len(), 2);
    }

    #[tokio::test]
    async fn close_drains_then_ends_and_abandon_counts_in_flight() {
        let q = Queue::new(1 << 20);
        for p in ["a", "b", "c"] {
            q.push(report(p)).expect("room");
        }
        q.close();
        assert_eq!(q.push(report("d")), Err(PushError::Closed));
        let b = q.pop(1).await.expect("still drains after close");
        assert_eq!(b.reports[0].src.pod.as_deref(), Some("a"), "FIFO");
        // One in flight, two queued.
        assert_eq!(q.abandon(), 3);
        assert!(q.pop(10).await.is_none(), "closed and empty");
        assert_eq!(q.bytes(), 0);
    }

    #[tokio::test]
    async fn a_waiting_worker_wakes_on_push() {
        let q = Arc::new(Queue::new(1 << 20));
        let q2 = q.clone();
        let worker = tokio::spawn(async move { q2.pop(8).await.map(|b| b.reports.len()) });
        tokio::task::yield_now().await;
        q.push(report("a")).expect("room");
        assert_eq!(worker.await.expect("joins"), Some(1));
    }

    #[test]
    fn a_bigger_report_costs_more() {
        let small = estimated_size(&report("a"));
        let big = estimated_size(&report(&"x".repeat(300)));
        assert_eq!(big - small, 299);
    }

    #[test]
    fn backoff_doubles_to_the_cap_within_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let bases = [100u64, 200, 400, 800, 800, 800];
        for base in bases {
            let d = b.next_delay().as_millis() as u64;
            assert!(
                d <= base && d >= base - base / 4,
                "delay {d} ms must lie in [{}, {base}] ms",
                base - base / 4
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
