//! How Ferrolog's clients and servers pace retries against a peer: exponential backoff
//! from a first delay to a cap, with optional jitter, as Kafka's `ExponentialBackoff`.
//! One policy for every retry loop (client sends, metadata refreshes, group calls, broker
//! registration, replica fetch retries, the metadata follower), so each loop names only its
//! two durations.

use std::time::Duration;

/// Relative jitter of [`Backoff::jittered`]: ±20%, so many clients that failed together do
/// not retry in lockstep.
pub const JITTER: f64 = 0.2;

/// Retry delays that double from `first` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// Delays from `first`, doubling per retry, never above `max` (at least `first`).
    pub const fn new(first: Duration, max: Duration) -> Self {
        let max = if max.as_nanos() < first.as_nanos() {
            first
        } else {
            max
        };
        Self { first, max }
    }

    /// Like [`Backoff::new`], in milliseconds (the unit of Kafka's `retry.backoff.ms`).
    pub const fn from_millis(first_ms: u64, max_ms: u64) -> Self {
        Self::new(
            Duration::from_millis(first_ms),
            Duration::from_millis(max_ms),
        )
    }

    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The delay before retry number `attempt` (1 for the first retry; 0 counts as 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// [`Backoff::delay`] scaled by a factor within ±[`JITTER`], chosen by `unit` in
    /// `[0, 1]` (a random draw), and never above the cap.
    pub fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0);
        self.delay(attempt).mul_f64(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_until_the_cap() {
        let backoff = Backoff::from_millis(100, 1_000);
        let delays: Vec<u64> = (0..7)
            .map(|a| backoff.delay(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_millis(1_000));
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_under_the_cap() {
        let backoff = Backoff::from_millis(100, 1_000);
        for unit in [0.0, 0.25, 0.5, 1.0, -3.0, 7.0] {
            let delay = backoff.jittered(1, unit).as_millis() as u64;
            assert!((80..=120).contains(&delay), "unit {unit}: {delay} ms");
            assert!(backoff.jittered(40, unit) <= Duration::from_millis(1_000));
        }
    }

    #[test]
    fn a_cap_below_the_first_delay_is_the_first_delay() {
        let backoff = Backoff::from_millis(500, 10);
        assert_eq!(backoff.delay(3), Duration::from_millis(500));
        assert_eq!(backoff.max(), Duration::from_millis(500));
    }
}
