//! Exponential retry backoff with jitter, as Kafka's `ExponentialBackoff`: the delay doubles per
//! attempt from `retry_backoff_ms` up to `retry_backoff_max_ms`, and ±20% jitter keeps many
//! clients that failed together from retrying in lockstep.

use std::time::Duration;

use rand::Rng;

/// Relative jitter applied to each delay.
const JITTER: f64 = 0.2;

/// Retry delays for one retry loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) initial_ms: u64,
    pub(crate) max_ms: u64,
}

impl Backoff {
    pub(crate) fn new(initial_ms: u64, max_ms: u64) -> Self {
        Self {
            initial_ms,
            max_ms: max_ms.max(initial_ms),
        }
    }

    /// The delay before retry number `attempt` (1 for the first retry), never above `max_ms`.
    pub(crate) fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let base = self
            .initial_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_ms);
        let factor = rng.random_range((1.0 - JITTER)..=(1.0 + JITTER));
        let jittered = (base as f64 * factor) as u64;
        Duration::from_millis(jittered.min(self.max_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn delays_stay_within_bounds_for_every_attempt() {
        let backoff = Backoff::new(100, 1_000);
        let mut rng = StdRng::seed_from_u64(1);
        for attempt in 0..100 {
            let delay_ms = backoff.delay(attempt, &mut rng).as_millis() as u64;
            assert!(delay_ms >= 80, "attempt {attempt}: {delay_ms} ms");
            assert!(delay_ms <= 1_000, "attempt {attempt}: {delay_ms} ms");
        }
    }

    #[test]
    fn delays_grow_exponentially_until_the_cap() {
        let backoff = Backoff::new(100, 1_000);
        let mut rng = StdRng::seed_from_u64(2);
        let first = backoff.delay(1, &mut rng).as_millis();
        let third = backoff.delay(3, &mut rng).as_millis();
        assert!((80..=120).contains(&first), "{first}");
        assert!((320..=480).contains(&third), "{third}");
        for _ in 0..20 {
            let late = backoff.delay(20, &mut rng).as_millis();
            assert!((800..=1_000).contains(&late), "{late}");
        }
    }

    #[test]
    fn max_below_initial_is_raised_to_initial() {
        let backoff = Backoff::new(500, 10);
        let mut rng = StdRng::seed_from_u64(3);
        assert!(backoff.delay(5, &mut rng).as_millis() <= 500);
    }
}
