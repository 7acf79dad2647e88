//! Compaction of a partition's log, run by the broker's log cleaner (`crate::cleaner`).
//!
//! Every replica cleans its own log, as in Kafka: the leader and its followers hold the same
//! batches below the high watermark, and the same rule gives them the same latest values,
//! though their segments may be cleaned at different moments. The slow part of a cleaning
//! runs without the partition's lock: it only reads closed segments, which nothing appends
//! to; the swap of cleaned segments takes the write lock, so no read, fetch or follower
//! ever sees a half-swapped log.

use ferrolog_log::{
    CleanOutcome, CleanTask, CleanedLog, CleanerOptions, CompactEveryDataBatch, DirtyState, Offset,
    Throttle,
};

use super::{Partition, PartitionState};
use crate::BrokerError;

impl Partition {
    /// How much of the log awaits cleaning, below the high watermark; `None` for a log that
    /// is not compacted or a partition that is closed.
    pub fn dirty_state(&self, now_ms: i64) -> Option<DirtyState> {
        if self.state() != PartitionState::Open {
            return None;
        }
        let high_watermark = self.high_watermark();
        self.log_read().dirty_state(now_ms, high_watermark)
    }

    /// Cleans the log once, whatever its dirty ratio (the cleaner checks `dirty_state`
    /// first); `None` when there is nothing to clean. Runs the three phases in turn:
    /// `prepare_cleaning` (read lock), `CleanTask::run` (no lock), `install_cleaned` (write
    /// lock).
    pub fn clean(
        &self,
        now_ms: i64,
        options: &CleanerOptions,
        throttle: &Throttle,
    ) -> Result<Option<CleanOutcome>, BrokerError> {
        let Some(task) = self.prepare_cleaning(now_ms)? else {
            return Ok(None);
        };
        let cleaned = task.run(options, &CompactEveryDataBatch, throttle)?;
        self.install_cleaned(cleaned).map(Some)
    }

    /// Phase 1 of a cleaning, under the read lock: a snapshot of the segments to clean,
    /// below the high watermark; `None` when there is nothing to clean. Public so the
    /// simulation can run the phases apart, with other steps (and crashes) between them.
    pub fn prepare_cleaning(&self, now_ms: i64) -> Result<Option<CleanTask>, BrokerError> {
        self.check_open()?;
        let high_watermark = self.high_watermark();
        Ok(self.log_read().prepare_cleaning(now_ms, high_watermark))
    }

    /// Phase 3 of a cleaning, under the write lock: swaps the cleaned segments in (or
    /// abandons them if the log changed meanwhile). A failed swap takes the partition
    /// offline, as a failed fsync does.
    pub fn install_cleaned(&self, cleaned: CleanedLog) -> Result<CleanOutcome, BrokerError> {
        let mut log = self.log_write();
        self.check_open()?;
        let installed = log.install_cleaned(cleaned);
        self.offline_on_sync_failure(&mut log, installed)
    }

    /// The first offset this replica's cleaner has not cleaned: below it the log holds at
    /// most one record per key.
    pub fn cleaner_first_dirty(&self) -> Offset {
        self.log_read().cleaner_first_dirty()
    }
}
