//! Per-partition storage settings, with Kafka's defaults.

use crate::compression::{Compression, DEFAULT_MAX_DECOMPRESSED_BYTES};

const MINUTE_MS: u64 = 60 * 1000;
const DAY_MS: u64 = 24 * 60 * MINUTE_MS;
/// Kafka's `producer.id.expiration.ms` default: a day.
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: u64 = DAY_MS;

/// When appended data is fsynced. The log itself never fsyncs on append (except when it rolls a
/// segment); the broker reads this policy and drives `Log::flush` / `SyncHandle::sync`, which
/// lets it share one fsync among concurrent producers (group commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every acknowledged produce is on disk: a killed single-node server loses nothing.
    EveryAppend,
    /// Data is fsynced at most `interval_ms` after it was appended.
    Interval { interval_ms: u64 },
    /// The page cache decides; only segment rolls fsync.
    Os,
}

/// Storage settings of one partition log (Kafka topic config names in parentheses).
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Rolls the active segment before an append would make it larger (`segment.bytes`).
    pub segment_bytes: u64,
    /// Rolls the active segment once it is older than this (`segment.ms`).
    pub segment_ms: u64,
    /// Deletes closed segments whose newest record is older than this; `None` keeps them
    /// forever (`retention.ms`).
    pub retention_ms: Option<u64>,
    /// Deletes the oldest closed segments while the log is larger than this; `None` keeps
    /// everything (`retention.bytes`).
    pub retention_bytes: Option<u64>,
    /// Adds one offset-index entry per this many bytes of log data (`index.interval.bytes`).
    pub index_interval_bytes: u32,
    /// The largest single batch accepted on append (`max.message.bytes`).
    pub max_message_bytes: u32,
    /// When appended data is fsynced (`flush.messages` / `flush.ms`, simplified).
    pub flush_policy: FlushPolicy,
    /// The codec batches are stored with: `None` keeps each batch as the producer compressed
    /// it (`compression.type=producer`); a codec makes the log recompress batches that arrive
    /// with another one.
    pub compression: Option<Compression>,
    /// The most bytes a compressed batch may decompress to when it is validated on append; a
    /// batch past it is refused (`LogError::DecompressedTooLarge`).
    pub max_decompressed_bytes: usize,
    /// Compaction settings when the log is compacted (`cleanup.policy` includes `compact`);
    /// `None` for a log that is never compacted.
    pub compaction: Option<CompactionConfig>,
    /// How long the partition remembers an idempotent producer after its last batch
    /// (`producer.id.expiration.ms`): after that a retry is no longer recognised as a
    /// duplicate, and the producer may start over at any sequence.
    pub producer_id_expiration_ms: u64,
}

/// How a compacted log is cleaned (Kafka topic config names in parentheses).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompactionConfig {
    /// The cleaner takes the log once dirty bytes / (clean + dirty bytes) reach this
    /// (`min.cleanable.dirty.ratio`).
    pub min_cleanable_dirty_ratio: f64,
    /// A segment whose newest record is younger than this is not cleaned yet
    /// (`min.compaction.lag.ms`).
    pub min_compaction_lag_ms: u64,
    /// A dirty segment older than this is cleaned whatever the dirty ratio
    /// (`max.compaction.lag.ms`); `u64::MAX`-like values mean never.
    pub max_compaction_lag_ms: u64,
    /// How long a tombstone stays after the cleaner first sees it (`delete.retention.ms`).
    pub delete_retention_ms: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX as u64,
            delete_retention_ms: DAY_MS,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * DAY_MS,
            retention_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            index_interval_bytes: 4096,
            max_message_bytes: 1024 * 1024 + 12,
            flush_policy: FlushPolicy::EveryAppend,
            compression: None,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            compaction: None,
            producer_id_expiration_ms: DEFAULT_PRODUCER_ID_EXPIRATION_MS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_kafka() {
        let config = LogConfig::default();
        assert_eq!(config.segment_bytes, 1_073_741_824);
        assert_eq!(config.segment_ms, 604_800_000);
        assert_eq!(config.retention_ms, Some(604_800_000));
        assert_eq!(config.retention_bytes, None);
        assert_eq!(config.index_interval_bytes, 4096);
        assert_eq!(config.max_message_bytes, 1_048_588);
        assert_eq!(config.flush_policy, FlushPolicy::EveryAppend);
        assert_eq!(config.producer_id_expiration_ms, 86_400_000);
    }
}
