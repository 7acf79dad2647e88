//! The cleaner's I/O rate limit (Kafka's `log.cleaner.io.max.bytes.per.second`), shared by
//! every cleaning of a broker so that compaction cannot starve produce and fetch of disk.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the limiter remembers: after an idle period the rate is measured afresh, so a
/// cleaner that slept does not earn a burst.
const THROTTLE_WINDOW: Duration = Duration::from_secs(1);

/// Limits the bytes read plus written per second by sleeping the calling thread.
pub struct Throttle {
    bytes_per_second: Option<u64>,
    window: Mutex<(Instant, u64)>,
}

impl Throttle {
    /// `None` or 0 means no limit.
    pub fn new(bytes_per_second: Option<u64>) -> Self {
        Throttle {
            bytes_per_second: bytes_per_second.filter(|rate| *rate > 0),
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(None)
    }

    /// Charges `bytes` of I/O, sleeping until the rate since the window began is within the
    /// limit again.
    pub fn charge(&self, bytes: u64) {
        let Some(rate) = self.bytes_per_second else {
            return;
        };
        let sleep = {
            let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if now.duration_since(window.0) > THROTTLE_WINDOW {
                *window = (now, 0);
            }
            window.1 += bytes;
            let due = Duration::from_secs_f64(window.1 as f64 / rate as f64);
            due.checked_sub(now.duration_since(window.0))
        };
        if let Some(sleep) = sleep {
            std::thread::sleep(sleep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_throttle_slows_io_to_its_rate_and_an_unlimited_one_never_sleeps() {
        let unlimited = Throttle::unlimited();
        let started = Instant::now();
        unlimited.charge(u64::MAX / 2);
        assert!(started.elapsed() < Duration::from_millis(100));
        let limited = Throttle::new(Some(1_000_000));
        let started = Instant::now();
        for _ in 0..10 {
            limited.charge(10_000);
        }
        assert!(started.elapsed() >= Duration::from_millis(90));
    }
}
