//! The probe's pacing: at most `rate` connection attempts per second, and
//! nothing running past the deadline. Pure logic over a time given by the
//! caller, so tests drive it with any clock they like (stalls, jumps).
//!
//! Each attempt gets a start slot at least `1/rate` after the previous one
//! (never earlier than now): a stalled process catches up by starting late,
//! never by starting a burst. An attempt starts only if it can start before
//! the deadline, and its timeout is cut so it ends by the deadline.

use std::time::Duration;

/// What to do next with one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Start it at `at` (wait until then), with this timeout.
    Start { at: Duration, timeout: Duration },
    /// The deadline is reached: this attempt and every later one are not tried.
    Stop,
}

/// Hands out start slots. Times are offsets from the probe's start.
#[derive(Clone, Debug)]
pub struct Pacer {
    interval: Duration,
    timeout: Duration,
    deadline: Duration,
    next_free: Duration,
    started: u64,
}

impl Pacer {
    /// `rate` attempts per second (at least 1), each with `timeout`, all
    /// done by `deadline`.
    pub fn new(rate: u32, timeout: Duration, deadline: Duration) -> Self {
        let rate = rate.max(1);
        Pacer {
            // Rounded up: `rate` intervals must cover a full second, or
            // rate + 1 starts could fall into one (1 s / 3 rounds down).
            interval: Duration::from_nanos(1_000_000_000u64.div_ceil(u64::from(rate))),
            timeout,
            deadline,
            next_free: Duration::ZERO,
            started: 0,
        }
    }

    /// The slot for the next attempt, asked at time `now`.
    pub fn next(&mut self, now: Duration) -> Step {
        let at = self.next_free.max(now);
        if at >= self.deadline {
            return Step::Stop;
        }
        self.next_free = at + self.interval;
        self.started += 1;
        Step::Start {
            at,
            timeout: self.timeout.min(self.deadline - at),
        }
    }

    /// Attempts started so far.
    pub fn started(&self) -> u64 {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the pacer like the probe does, with a clock that can stall:
    /// `stall(i)` is extra time lost before asking for attempt `i`.
    fn drive(
        pacer: &mut Pacer,
        attempts: usize,
        stall: impl Fn(usize) -> Duration,
    ) -> Vec<(Duration, Duration)> {
        let mut now = Duration::ZERO;
        let mut out = Vec::new();
        for i in 0..attempts {
            now += stall(i);
            match pacer.next(now) {
                Step::Start { at, timeout } => {
                    assert!(at >= now, "never starts in the past");
                    now = at;
                    out.push((at, timeout));
                }
                Step::Stop => break,
            }
        }
        out
    }

    fn max_in_any_second(starts: &[Duration]) -> usize {
        starts
            .iter()
            .map(|&s| {
                starts
                    .iter()
                    .filter(|&&t| t >= s && t < s + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn never_more_than_rate_attempts_in_any_second() {
        for rate in [1u32, 3, 10, 50] {
            let starts = |stalls: bool| -> Vec<Duration> {
                let mut p = Pacer::new(rate, Duration::from_millis(500), Duration::from_secs(3600));
                // Stalls of 2.5 s before every 7th attempt: late starts,
                // never a burst to catch up.
                drive(&mut p, 500, |i| {
                    if stalls && i % 7 == 3 {
                        Duration::from_millis(2500)
                    } else {
                        Duration::ZERO
                    }
                })
                .into_iter()
                .map(|(at, _)| at)
                .collect()
            };
            let steady = starts(false);
            assert_eq!(steady.len(), 500, "a long deadline lets all start");
            assert_eq!(
                max_in_any_second(&steady),
                rate as usize,
                "at full speed, {rate}/s is exactly the most attempts in any one-second window"
            );
            let stalled = starts(true);
            assert_eq!(stalled.len(), 500);
            assert!(
                max_in_any_second(&stalled) <= rate as usize,
                "after a stall, {rate}/s must still hold in every window"
            );
        }
    }

    #[test]
    fn stops_within_the_deadline() {
        let deadline = Duration::from_secs(2);
        let mut p = Pacer::new(10, Duration::from_millis(800), deadline);
        let steps = drive(&mut p, 1000, |_| Duration::ZERO);
        // Slots 0, 0.1, ..., 1.9 s: 20 attempts, then the deadline.
        assert_eq!(steps.len(), 20);
        assert_eq!(p.started(), 20);
        for (at, timeout) in &steps {
            assert!(
                *at + *timeout <= deadline,
                "attempt at {at:?} with timeout {timeout:?} runs past the deadline"
            );
        }
        // The last ones get a shortened timeout.
        assert_eq!(
            steps[19],
            (Duration::from_millis(1900), Duration::from_millis(100))
        );
        assert_eq!(steps[0].1, Duration::from_millis(800));
        // Asked after the deadline: stop, whatever is left.
        assert_eq!(p.next(Duration::from_secs(5)), Step::Stop);
    }

    #[test]
    fn a_clock_jump_past_the_deadline_stops_at_once() {
        let mut p = Pacer::new(5, Duration::from_secs(1), Duration::from_secs(10));
        let steps = drive(&mut p, 10, |i| {
            if i == 2 {
                Duration::from_secs(11)
            } else {
                Duration::ZERO
            }
        });
        assert_eq!(steps.len(), 2, "two started before the jump, none after");
    }
}
