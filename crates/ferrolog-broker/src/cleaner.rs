//! The broker's log cleaner: one background loop that compacts the logs of topics with
//! `cleanup.policy` including `compact`, the dirtiest first (Kafka's `LogCleaner` with one
//! cleaner thread).
//!
//! Each pass looks at every hosted compacted log, exports the largest dirty ratio, and cleans
//! the dirtiest log that is due (dirty ratio at least `min.cleanable.dirty.ratio`, a dirty
//! segment past `max.compaction.lag.ms`, or a tombstone past its delete horizon). After a
//! cleaning it looks again at once; with nothing due it sleeps `backoff`. Cleanings run on
//! the blocking pool, one at a time, and all share one I/O throttle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolog_log::{CleanOutcome, CleanerOptions, DEFAULT_DEDUPE_BUFFER_BYTES, Throttle};

use crate::metrics::BrokerMetrics;
use crate::partition::now_ms;
use crate::partition_manager::PartitionManager;

/// Kafka's `log.cleaner.backoff.ms`: the pause when no log needs cleaning.
pub const DEFAULT_CLEANER_BACKOFF: Duration = Duration::from_secs(15);
/// The default of `log.cleaner.io.max.bytes.per.second`. Kafka leaves it unlimited; a bound
/// keeps a large first compaction from taking the disk from produce and fetch, and 64 MiB/s
/// cleans a 1 GiB segment in well under a minute.
pub const DEFAULT_CLEANER_IO_MAX_BYTES_PER_SECOND: u64 = 64 * 1024 * 1024;

/// The cleaner's settings (the broker's, not a topic's).
#[derive(Clone, Debug)]
pub struct CleanerSettings {
    /// Kafka's `log.cleaner.enable`.
    pub enabled: bool,
    /// Kafka's `log.cleaner.io.max.bytes.per.second` (reads plus writes); `None` is no limit.
    pub io_max_bytes_per_second: Option<u64>,
    /// Kafka's `log.cleaner.dedupe.buffer.size`: memory for one cleaning's key map.
    pub dedupe_buffer_bytes: usize,
    /// Kafka's `log.cleaner.backoff.ms`.
    pub backoff: Duration,
}

impl Default for CleanerSettings {
    fn default() -> Self {
        CleanerSettings {
            enabled: true,
            io_max_bytes_per_second: Some(DEFAULT_CLEANER_IO_MAX_BYTES_PER_SECOND),
            dedupe_buffer_bytes: DEFAULT_DEDUPE_BUFFER_BYTES,
            backoff: DEFAULT_CLEANER_BACKOFF,
        }
    }
}

/// Cleans at most one log: the dirtiest that is due. Returns whether it cleaned one.
/// Blocking: reads and writes segment files.
pub(crate) fn clean_dirtiest(
    partitions: &PartitionManager,
    settings: &CleanerSettings,
    throttle: &Throttle,
    metrics: &BrokerMetrics,
) -> bool {
    let now = now_ms();
    let mut max_ratio = 0.0f64;
    let mut dirtiest = None;
    for partition in partitions.all() {
        let Some(state) = partition.dirty_state(now) else {
            continue;
        };
        let ratio = state.dirty_ratio();
        max_ratio = max_ratio.max(ratio);
        // A log past a deadline (max lag, tombstone horizon) goes before any ratio.
        let urgency = if state.past_max_lag || state.tombstones_due {
            1.0 + ratio
        } else {
            ratio
        };
        if state.is_due() && dirtiest.as_ref().is_none_or(|(best, _)| urgency > *best) {
            dirtiest = Some((urgency, partition));
        }
    }
    metrics.cleaner.max_dirty_ratio.set(max_ratio);
    let Some((_, partition)) = dirtiest else {
        return false;
    };
    let options = CleanerOptions {
        dedupe_buffer_bytes: settings.dedupe_buffer_bytes,
    };
    let span = tracing::info_span!("clean", topic = partition.topic(), partition = %partition.id());
    let _entered = span.enter();
    let started = Instant::now();
    let outcome = partition.clean(now, &options, throttle);
    let elapsed = started.elapsed();
    metrics
        .cleaner
        .last_run_duration_seconds
        .set(elapsed.as_secs_f64());
    metrics
        .cleaner
        .last_run_timestamp_seconds
        .set(now_ms() as f64 / 1000.0);
    match outcome {
        Ok(Some(CleanOutcome::Installed { stats, first_dirty })) => {
            metrics.cleaner.runs.inc();
            metrics.cleaner.bytes_read.inc_by(stats.bytes_read);
            metrics.cleaner.bytes_written.inc_by(stats.bytes_written);
            tracing::info!(
                elapsed_ms = elapsed.as_millis() as u64,
                bytes_read = stats.bytes_read,
                bytes_written = stats.bytes_written,
                records_read = stats.records_read,
                records_kept = stats.records_kept,
                keys = stats.keys_mapped,
                segments_before = stats.segments_before,
                segments_after = stats.segments_after,
                %first_dirty,
                "cleaned log"
            );
            true
        }
        Ok(Some(CleanOutcome::Abandoned)) => true,
        Ok(None) => false,
        Err(error) => {
            metrics.cleaner.failures.inc();
            tracing::warn!(%error, "cleaning failed; the log is tried again later");
            false
        }
    }
}

/// Runs the cleaner until `stopped` says so.
pub(crate) async fn run(
    partitions: Arc<PartitionManager>,
    settings: CleanerSettings,
    metrics: Arc<BrokerMetrics>,
    stopped: impl Fn() -> bool,
) {
    let throttle = Arc::new(Throttle::new(settings.io_max_bytes_per_second));
    loop {
        if stopped() {
            return;
        }
        let (partitions2, settings2, throttle2, metrics2) = (
            Arc::clone(&partitions),
            settings.clone(),
            Arc::clone(&throttle),
            Arc::clone(&metrics),
        );
        let cleaned = tokio::task::spawn_blocking(move || {
            clean_dirtiest(&partitions2, &settings2, &throttle2, &metrics2)
        })
        .await
        .unwrap_or_else(|error| {
            tracing::error!(%error, "log cleaner task failed");
            false
        });
        if !cleaned {
            tokio::time::sleep(settings.backoff).await;
        }
    }
}
