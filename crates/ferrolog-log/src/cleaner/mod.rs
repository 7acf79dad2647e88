//! The log cleaner: compaction of a log whose topic has `cleanup.policy=compact`. It keeps
//! the latest record of every key, removes tombstones (a key with no value) once they are
//! older than `delete.retention.ms`, and keeps every surviving record at its offset.
//!
//! A cleaning has three phases, so that the broker holds a partition's lock only for the
//! last, short one:
//! 1. `Log::prepare_cleaning` (a shared borrow: the broker's read lock) takes a snapshot of
//!    the closed segments that may be cleaned: below the active segment, the high watermark
//!    and `min.compaction.lag.ms`. Closed segments are immutable, so the snapshot's open files
//!    stay valid while the log carries on.
//! 2. `CleanTask::run` (no lock) builds the key -> latest offset map over the dirty part
//!    (from the cleaner checkpoint on, as far as `dedupe_buffer_bytes` allows), then rewrites
//!    the segments below the map's end, a group of small segments at a time, into
//!    `.cleaned` files: every record is kept unless a later record of its key is mapped, or
//!    it is an expired tombstone (see `rebuild`). Reads and writes pass the I/O throttle.
//! 3. `Log::install_cleaned` (`&mut`: the broker's write lock) checks that the segments
//!    cleaned are still the log's (retention or truncation may have changed them meanwhile;
//!    the work is then thrown away), swaps the cleaned segments in crash-safely (`swap`),
//!    and records the new first dirty offset in the cleaner checkpoint.
//!
//! What stays whole: the active segment, everything at or above the high watermark and the
//! last stable offset (an open transaction's batches are not decided yet), and batches that
//! a `BatchRetention` keeps (control batches, by default).
//!
//! Transactions (`txn`): before the `BatchRetention` is asked, batches of aborted
//! transactions (as the aborted-transaction index names them) are removed and never mapped,
//! and a marker is removed once `delete.retention.ms` has passed since it was written and
//! no batch of its transaction is left before it. The cleaned segment's aborted-transaction
//! index holds the entries of the ABORT markers it keeps. Records without a
//! key cannot be compacted: a compacted log refuses them on append (as Kafka's broker does
//! with INVALID_RECORD), and the cleaner keeps any it finds (written before the topic
//! became compacted).

pub(crate) mod checkpoint;
pub(crate) mod codec;
mod offset_map;
mod rebuild;
pub(crate) mod swap;
mod throttle;
mod txn;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub use throttle::Throttle;

use crate::batch::{BATCH_HEADER_BYTES, BatchHeader, LOG_OVERHEAD_BYTES, verify_crc};
use crate::config::CompactionConfig;
use crate::error::{IoContext, LogError};
use crate::segment::Segment;
use crate::types::Offset;
use offset_map::OffsetMap;
use rebuild::{Filtered, empty_batch, filter_batch, for_each_key};
use swap::CLEANED_SUFFIX;
pub(crate) use txn::AbortedIndex;

pub(crate) use rebuild::for_each_key as for_each_record_key;

/// Kafka's `log.cleaner.dedupe.buffer.size` default: what one cleaning may spend on its
/// key -> offset map.
pub const DEFAULT_DEDUPE_BUFFER_BYTES: usize = 128 * 1024 * 1024;
/// How much the cleaner reads from a segment at once.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// What the cleaner does with one batch before looking at its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchVerdict {
    /// Keep the batch as it is; its keys do not count for compaction.
    Keep,
    /// Remove the whole batch; its keys do not count for compaction.
    Discard,
    /// Compact its records by key.
    Compact,
}

/// The seam through which the cleaner asks which batches it may compact, keep whole or
/// remove whole. The compaction rule (latest record per key, tombstones expire) applies to
/// `Compact` batches only.
///
/// Why a batch-level hook: transactions (a later issue) remove records a batch at a time,
/// as Kafka's cleaner does: a batch of an aborted transaction is `Discard`ed, a transaction
/// marker is `Keep` until every batch of its transaction is cleaned and then `Discard`ed,
/// and the last batch of each producer is kept (at least as an empty header) for
/// idempotence. An implementation must be deterministic for a given batch: the cleaner
/// asks once while building its offset map and once while rewriting.
pub trait BatchRetention: Send + Sync {
    fn verdict(&self, header: &BatchHeader) -> BatchVerdict;
}

/// Plain compaction: control batches stay whole, every other batch is compacted.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompactEveryDataBatch;

impl BatchRetention for CompactEveryDataBatch {
    fn verdict(&self, header: &BatchHeader) -> BatchVerdict {
        if header.is_control() {
            BatchVerdict::Keep
        } else {
            BatchVerdict::Compact
        }
    }
}

/// The batch a record belongs to, as the compaction rule sees it.
pub(crate) struct BatchContext<'a> {
    #[allow(dead_code)]
    pub(crate) header: &'a BatchHeader,
    /// The batch carries a delete horizon that has passed: its tombstones may go.
    pub(crate) delete_horizon_passed: bool,
}

/// One record as the compaction rule sees it.
pub(crate) struct RecordRef<'a> {
    pub(crate) offset: Offset,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
}

/// Settings of the cleaner itself (the broker's, not a topic's).
#[derive(Clone, Copy, Debug)]
pub struct CleanerOptions {
    /// Memory for the key -> offset map of one cleaning (`log.cleaner.dedupe.buffer.size`).
    pub dedupe_buffer_bytes: usize,
}

impl Default for CleanerOptions {
    fn default() -> Self {
        CleanerOptions {
            dedupe_buffer_bytes: DEFAULT_DEDUPE_BUFFER_BYTES,
        }
    }
}

/// How much of a compacted log awaits cleaning.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DirtyState {
    /// Bytes of cleanable segments below the first dirty offset.
    pub clean_bytes: u64,
    /// Bytes of cleanable segments at or above it.
    pub dirty_bytes: u64,
    /// The log's `min.cleanable.dirty.ratio`.
    pub min_ratio: f64,
    /// The oldest dirty segment is older than `max.compaction.lag.ms`.
    pub past_max_lag: bool,
    /// A kept tombstone's delete horizon has passed.
    pub tombstones_due: bool,
}

impl DirtyState {
    /// dirty / (clean + dirty), 0 for nothing cleanable.
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }

    /// Whether the cleaner should take this log now.
    pub fn is_due(&self) -> bool {
        let dirty =
            self.dirty_bytes > 0 && (self.dirty_ratio() >= self.min_ratio || self.past_max_lag);
        dirty || self.tombstones_due
    }
}

/// What one cleaning read, wrote and kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_read: u64,
    pub records_kept: u64,
    /// Distinct keys in the offset map.
    pub keys_mapped: usize,
    pub segments_before: usize,
    pub segments_after: usize,
}

/// The result of installing a cleaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanOutcome {
    /// The cleaned segments are in service; everything below `first_dirty` is clean.
    Installed {
        stats: CleanStats,
        first_dirty: Offset,
    },
    /// The log changed under the cleaning (retention, truncation): nothing was replaced.
    Abandoned,
}

/// A closed segment as the cleaner found it; `file` stays readable whatever the log does.
#[derive(Clone)]
pub(crate) struct SegmentRef {
    pub(crate) base: Offset,
    pub(crate) next: Offset,
    pub(crate) size: u64,
    pub(crate) file: Arc<File>,
}

impl SegmentRef {
    pub(crate) fn of(segment: &Segment) -> Self {
        SegmentRef {
            base: segment.base_offset(),
            next: segment.next_offset(),
            size: segment.size_bytes(),
            file: segment.log_file(),
        }
    }

    /// Whether `segment` is still this very file, unchanged.
    pub(crate) fn matches(&self, segment: &Segment) -> bool {
        Arc::ptr_eq(&self.file, &segment.log_file())
            && self.size == segment.size_bytes()
            && self.next == segment.next_offset()
    }
}

/// A snapshot of what one cleaning works on (phase 1).
pub struct CleanTask {
    pub(crate) dir: PathBuf,
    /// Cleanable closed segments from the log start, in order.
    pub(crate) segments: Vec<SegmentRef>,
    pub(crate) first_dirty: Offset,
    /// Where the cleanable segments end.
    pub(crate) cleanable_end: Offset,
    pub(crate) compaction: CompactionConfig,
    /// Cleaned groups stay within this size, as a segment does.
    pub(crate) segment_bytes: u64,
    pub(crate) index_interval_bytes: u32,
    /// The most a compressed batch may decompress to.
    pub(crate) max_decompressed_bytes: usize,
    pub(crate) now_ms: i64,
    /// Producer id -> last offset of its last batch. That batch stays, empty if compaction
    /// removes all its records (as Kafka's cleaner keeps it), so the producer's sequence
    /// and epoch survive in the log for a rebuild of the producer state.
    pub(crate) producer_last_offsets: HashMap<i64, Offset>,
    /// The log's aborted transactions, by marker offset (from every segment's index: a
    /// cleanable batch's marker may lie in a later segment).
    pub(crate) aborted: txn::AbortedIndex,
}

impl CleanTask {
    /// Whether `header` is the last batch its idempotent producer wrote.
    fn is_producers_last_batch(&self, header: &BatchHeader) -> bool {
        header.producer_id >= 0
            && self.producer_last_offsets.get(&header.producer_id) == Some(&header.last_offset())
    }
}

/// One cleaned segment waiting in `.cleaned` files, and the segments it replaces.
pub(crate) struct CleanedGroup {
    pub(crate) base: Offset,
    pub(crate) originals: Vec<SegmentRef>,
}

/// The output of phase 2, to be installed by `Log::install_cleaned`. Dropped without being
/// installed, it deletes its `.cleaned` files.
pub struct CleanedLog {
    pub(crate) dir: PathBuf,
    pub(crate) groups: Vec<CleanedGroup>,
    /// Where the mapped range ends: the new first dirty offset.
    pub(crate) first_dirty: Offset,
    pub(crate) tombstone_horizon_ms: Option<i64>,
    pub stats: CleanStats,
}

impl Drop for CleanedLog {
    fn drop(&mut self) {
        for group in &self.groups {
            if let Err(error) = swap::discard_cleaned(&self.dir, group.base) {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot remove cleaned files");
            }
        }
    }
}

/// A batch read by `BatchReader`: its header, its bytes, and whether it is the file's last.
type ReadBatch<'a> = (BatchHeader, &'a [u8], bool);

/// Reads the whole batches of a segment file in large chunks, CRC-checking each.
struct BatchReader<'a> {
    file: &'a File,
    size: u64,
    pos: u64,
    chunk: Vec<u8>,
    chunk_start: u64,
}

impl<'a> BatchReader<'a> {
    fn new(segment: &'a SegmentRef) -> Self {
        BatchReader {
            file: &segment.file,
            size: segment.size,
            pos: 0,
            chunk: Vec::new(),
            chunk_start: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.size
    }

    fn ensure(
        &mut self,
        pos: u64,
        len: usize,
        throttle: &Throttle,
        stats: &mut CleanStats,
    ) -> Result<&[u8], LogError> {
        let chunk_end = self.chunk_start + self.chunk.len() as u64;
        if pos < self.chunk_start || pos + len as u64 > chunk_end {
            let want = (len.max(READ_CHUNK_BYTES) as u64).min(self.size - pos) as usize;
            self.chunk.resize(want, 0);
            self.file
                .read_exact_at(&mut self.chunk, pos)
                .context("read segment for cleaning")?;
            self.chunk_start = pos;
            throttle.charge(want as u64);
            stats.bytes_read += want as u64;
        }
        let from = (pos - self.chunk_start) as usize;
        Ok(&self.chunk[from..from + len])
    }

    fn next(
        &mut self,
        throttle: &Throttle,
        stats: &mut CleanStats,
    ) -> Result<Option<ReadBatch<'_>>, LogError> {
        if self.at_end() {
            return Ok(None);
        }
        let pos = self.pos;
        let left = self.size - pos;
        if left < BATCH_HEADER_BYTES as u64 {
            return Err(LogError::corrupt(format!(
                "cleaning: torn batch of {left} bytes"
            )));
        }
        let head = self.ensure(pos, LOG_OVERHEAD_BYTES, throttle, stats)?;
        let length = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        let total = LOG_OVERHEAD_BYTES as i64 + i64::from(length);
        if total < BATCH_HEADER_BYTES as i64 || total as u64 > left {
            return Err(LogError::corrupt(format!(
                "cleaning: batch length {length} at position {pos} is malformed"
            )));
        }
        self.pos = pos + total as u64;
        let size = self.size;
        let batch = self.ensure(pos, total as usize, throttle, stats)?;
        let header = verify_crc(batch)?;
        Ok(Some((header, batch, pos + total as u64 >= size)))
    }
}

/// The compaction rule: a record goes if a later record of its key is mapped, or if it is
/// a tombstone whose batch's delete horizon passed. Records at or past the mapped range,
/// and records without a key, stay.
fn keep_record(
    map: &OffsetMap,
    map_end: Offset,
    batch: &BatchContext<'_>,
    record: &RecordRef<'_>,
) -> bool {
    if record.offset >= map_end {
        return true;
    }
    let Some(key) = record.key else {
        return true;
    };
    if map
        .latest(key)
        .is_some_and(|latest| latest > record.offset.0)
    {
        return false;
    }
    record.value.is_some() || !batch.delete_horizon_passed
}

impl CleanTask {
    /// Phase 2: maps the dirty part and writes the cleaned segments as `.cleaned` files.
    pub fn run(
        &self,
        options: &CleanerOptions,
        retention: &dyn BatchRetention,
        throttle: &Throttle,
    ) -> Result<CleanedLog, LogError> {
        let started = Instant::now();
        let mut stats = CleanStats {
            segments_before: self.segments.len(),
            ..CleanStats::default()
        };
        let (map, map_end) = self.build_offset_map(options, retention, throttle, &mut stats)?;
        stats.keys_mapped = map.len();
        let mut cleaned = CleanedLog {
            dir: self.dir.clone(),
            groups: Vec::new(),
            first_dirty: map_end,
            tombstone_horizon_ms: None,
            stats,
        };
        let delete_retention_ms =
            i64::try_from(self.compaction.delete_retention_ms).unwrap_or(i64::MAX);
        let new_horizon_ms = self.now_ms.saturating_add(delete_retention_ms);
        let mut txns = txn::TxnTracker::new(&self.aborted, self.now_ms, delete_retention_ms);
        for group in self.groups(map_end) {
            let base = group[0].base;
            // Registered first, so that a failure below removes its files too.
            cleaned.groups.push(CleanedGroup {
                base,
                originals: group.to_vec(),
            });
            let mut out = Segment::create_in_state(&self.dir, base, CLEANED_SUFFIX)?;
            for (i, segment) in group.iter().enumerate() {
                let last_segment = i + 1 == group.len();
                let mut reader = BatchReader::new(segment);
                while let Some((header, batch, at_end)) =
                    reader.next(throttle, &mut cleaned.stats)?
                {
                    let last_batch = last_segment && at_end;
                    cleaned.stats.records_read += header.record_count.max(0) as u64;
                    let filtered = if header.base_offset >= map_end {
                        Filtered::Unchanged
                    } else {
                        let verdict = txns
                            .verdict(&header)
                            .unwrap_or_else(|| retention.verdict(&header));
                        match verdict {
                            BatchVerdict::Keep => Filtered::Unchanged,
                            BatchVerdict::Discard => Filtered::Dropped,
                            BatchVerdict::Compact => filter_batch(
                                batch,
                                &header,
                                self.now_ms,
                                new_horizon_ms,
                                self.max_decompressed_bytes,
                                |context, record| keep_record(&map, map_end, context, record),
                                &mut cleaned.tombstone_horizon_ms,
                            )?,
                        }
                    };
                    let must_stay = last_batch || self.is_producers_last_batch(&header);
                    // An empty batch left by an earlier cleaning goes once nothing needs it.
                    let stale_empty = header.record_count == 0
                        && header.base_offset < map_end
                        && matches!(filtered, Filtered::Unchanged);
                    let rebuilt = match filtered {
                        _ if stale_empty && !must_stay => continue,
                        Filtered::Unchanged => None,
                        Filtered::Rewritten(bytes) => Some(bytes),
                        // The group's last batch fixes where the cleaned segment ends.
                        Filtered::Dropped if must_stay => Some(empty_batch(&header)),
                        Filtered::Dropped => continue,
                    };
                    let bytes = rebuilt.as_deref().unwrap_or(batch);
                    let written = match &rebuilt {
                        Some(bytes) => BatchHeader::parse(bytes)?,
                        None => header,
                    };
                    if let Some(entry) = txns.written(&written) {
                        out.append_aborted_txn(entry)?;
                    }
                    cleaned.stats.records_kept += written.record_count.max(0) as u64;
                    out.append(bytes, &written, self.index_interval_bytes, self.now_ms)?;
                    throttle.charge(bytes.len() as u64);
                    cleaned.stats.bytes_written += bytes.len() as u64;
                }
            }
            out.seal()?;
            out.sync_all()?;
        }
        cleaned.stats.segments_after = cleaned.groups.len();
        tracing::debug!(dir = %self.dir.display(), elapsed_ms = started.elapsed().as_millis() as u64,
            "cleaned segments written");
        Ok(cleaned)
    }

    /// Maps key -> latest offset from the first dirty offset on, until the map is full.
    /// Returns the map and where the mapped range ends.
    fn build_offset_map(
        &self,
        options: &CleanerOptions,
        retention: &dyn BatchRetention,
        throttle: &Throttle,
        stats: &mut CleanStats,
    ) -> Result<(OffsetMap, Offset), LogError> {
        let mut map = OffsetMap::with_budget(options.dedupe_buffer_bytes);
        let first_dirty = self.first_dirty;
        for segment in self.segments.iter().filter(|s| s.next > first_dirty) {
            let mut reader = BatchReader::new(segment);
            while let Some((header, batch, _)) = reader.next(throttle, stats)? {
                if header.last_offset() < first_dirty
                    || self.aborted.is_aborted_data(&header)
                    || retention.verdict(&header) != BatchVerdict::Compact
                {
                    continue;
                }
                let records = usize::try_from(header.record_count).unwrap_or(0);
                if !map.has_room_for(records) {
                    if header.base_offset <= first_dirty {
                        return Err(LogError::InconsistentSegments {
                            reason: format!(
                                "the cleaner's dedupe buffer of {} bytes cannot map one \
                                 batch of {records} records",
                                options.dedupe_buffer_bytes
                            ),
                        });
                    }
                    return Ok((map, header.base_offset));
                }
                for_each_key(
                    batch,
                    &header,
                    self.max_decompressed_bytes,
                    |offset, key| {
                        if let Some(key) = key
                            && offset >= first_dirty
                        {
                            map.put(key, offset.0);
                        }
                    },
                )?;
            }
        }
        Ok((map, self.cleanable_end))
    }

    /// The segments below `map_end`, in consecutive groups that each fit one segment.
    fn groups(&self, map_end: Offset) -> Vec<&[SegmentRef]> {
        let limit_bytes = self.segment_bytes.min(u64::from(u32::MAX));
        let segments: Vec<&SegmentRef> =
            self.segments.iter().filter(|s| s.base < map_end).collect();
        let mut groups = Vec::new();
        let mut start = 0;
        while start < segments.len() {
            let base = segments[start].base;
            let mut end = start + 1;
            let mut bytes = segments[start].size;
            while end < segments.len() {
                let next = segments[end];
                let fits_offsets = next.next.0 - 1 - base.0 <= i64::from(u32::MAX);
                if bytes + next.size > limit_bytes || !fits_offsets {
                    break;
                }
                bytes += next.size;
                end += 1;
            }
            groups.push(&self.segments[start..end]);
            start = end;
        }
        groups
    }
}
