//! `Log`: one partition's ordered segments, with the positions that matter for replication
//! (log start, log end, flushed, high watermark) and the leader-epoch cache.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

use crate::batch::{BatchHeader, BatchIter, assign_offsets, validate_batch_within, verify_crc};
use crate::builder::RecordBatchBuilder;
use crate::checkpoint::{
    read_high_watermark, read_log_start_offset, write_high_watermark, write_log_start_offset,
};
use crate::cleaner::checkpoint::CleanerCheckpoint;
use crate::cleaner::swap::Steps;
use crate::cleaner::{
    self, BatchRetention, CleanOutcome, CleanTask, CleanedLog, CleanerOptions, DirtyState,
    SegmentRef, Throttle,
};
use crate::config::LogConfig;
use crate::control::{ControlType, parse_control_batch};
use crate::epoch_cache::LeaderEpochCache;
use crate::error::{IoContext, LogError};
use crate::fsutil::{TEMP_SUFFIX, remove_if_exists, sync_dir};
use crate::producer_state::{
    AppendCheck, CompletedTxn, ProducerSnapshotEntry, ProducerStateManager, ProducerStateRecovery,
};
use crate::recent::{RecentBatchBudget, RecentBatches};
use crate::record::decode_records;
use crate::segment::{
    INDEX_SUFFIX, LOG_SUFFIX, ReadProgress, Segment, TIME_INDEX_SUFFIX, parse_segment_file_name,
    segment_file_name,
};
use crate::test_faults;
use crate::txn_index::{AbortedTxn, TXN_INDEX_SUFFIX, TxnIndexEntry};
use crate::types::{LeaderEpoch, Offset};

/// What an append stored.
#[derive(Clone, Copy, Debug)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub max_timestamp_ms: i64,
    pub record_count: u32,
    /// Bytes written: 0 for a duplicate.
    pub size_bytes: u32,
    /// The batch was an idempotent producer's retry of a batch already in the log: nothing
    /// was written, and the offsets and max timestamp are the original batch's. The caller
    /// answers it as a success once those offsets are as safe as `acks` asks.
    pub duplicate: bool,
}

/// The answer to a read: whole batches, plus the log's bounds at the time of the read so a
/// fetch response can report them.
#[derive(Debug)]
pub struct ReadResult {
    /// Zero or more whole batches, each CRC-verified, concatenated.
    pub batches: Bytes,
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
    /// The batches came from the kept recent batches, not the segment files.
    pub from_memory: bool,
}

/// A handle to fsync the active segment outside the Log's lock (group commit: the broker
/// takes it under its lock, fsyncs without the lock, then calls `Log::mark_flushed`).
///
/// Syncing is enough for everything below `end_offset`: segments older than the handle's
/// were fsynced when they rolled, and the active segment's indexes are rebuilt on recovery.
#[derive(Clone)]
pub struct SyncHandle {
    file: Arc<File>,
    /// The file's path, for the test fault hook (`test_faults`).
    path: Arc<Path>,
    end_offset: Offset,
    /// The log's truncation count when the handle was taken; see `Log::mark_synced`.
    truncations: u64,
}

impl SyncHandle {
    /// The log end offset when the handle was taken: durable once `sync` returns.
    pub fn end_offset(&self) -> Offset {
        self.end_offset
    }

    /// Fsyncs the segment file's data (`File::sync_data`). An error means the data may
    /// never reach the disk, whatever a later fsync says: the caller must not acknowledge it.
    pub fn sync(&self) -> Result<(), LogError> {
        test_faults::before_fsync(&self.path)
            .and_then(|()| self.file.sync_data())
            .context("fsync active segment")?;
        crate::sync_probe::synced(&self.file);
        Ok(())
    }
}

/// What `enforce_retention` deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    pub log_start_offset: Offset,
}

/// One partition's log. Not internally synchronized: the broker wraps it in a lock; `read`
/// takes `&self` so readers can share a read lock.
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Never empty; the last segment is the active one.
    segments: BTreeMap<Offset, Segment>,
    /// The first offset a reader may ask for: the first segment's base offset, or further
    /// inside it when DeleteRecords moved it there (then persisted in `log-start-offset`).
    log_start_offset: Offset,
    flushed_offset: Offset,
    high_watermark: Offset,
    checkpointed_high_watermark: Option<Offset>,
    epochs: LeaderEpochCache,
    /// Counts `truncate_to` calls, so that a sync handle taken before a truncation cannot
    /// vouch for data appended after it.
    truncations: u64,
    /// The newest batches in memory, for followers (see `keep_recent_batches`). Behind a
    /// mutex so readers holding `&self` can release them.
    recent: Mutex<RecentBatches>,
    /// An fsync of this log failed (`LogError::SyncFailed`): set by a failed roll or flush,
    /// or by the broker after a failed `SyncHandle::sync`, and never cleared.
    sync_failed: bool,
    /// Where the cleaner stopped (persisted in `cleaner-offset-checkpoint`).
    cleaner: CleanerCheckpoint,
    /// Idempotent producers and their snapshot files (`producer_state`).
    producers: ProducerStateManager,
    producer_recovery: ProducerStateRecovery,
}

/// How much of a segment rebuilding the producer state reads at once.
const PRODUCER_REPLAY_CHUNK_BYTES: usize = 1024 * 1024;

/// Lists the segment base offsets in `dir`, removing leftovers of interrupted writes and
/// deletions: temporary files, and index files whose log file is gone.
fn list_segments(dir: &Path) -> Result<Vec<Offset>, LogError> {
    let mut logs = Vec::new();
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir).context("list partition directory")? {
        let entry = entry.context("list partition directory")?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TEMP_SUFFIX) {
            tracing::info!(file = %entry.path().display(), "removing leftover temporary file");
            remove_if_exists(&entry.path())?;
        } else if let Some(base) = parse_segment_file_name(name, LOG_SUFFIX) {
            logs.push(base);
        } else if let Some(base) = parse_segment_file_name(name, INDEX_SUFFIX)
            .or_else(|| parse_segment_file_name(name, TIME_INDEX_SUFFIX))
            .or_else(|| parse_segment_file_name(name, TXN_INDEX_SUFFIX))
        {
            indexes.push((base, entry.path()));
        }
    }
    logs.sort();
    for (base, path) in indexes {
        if logs.binary_search(&base).is_err() {
            tracing::info!(file = %path.display(), "removing index file without a segment");
            remove_if_exists(&path)?;
        }
    }
    Ok(logs)
}

/// Whether a stored batch is an ABORT marker. A control batch that cannot be read (one a
/// leader's cleaner emptied) is not: it ends its producer's transaction all the same, but
/// there is nothing left for the index to describe.
fn is_abort_marker(batch: &[u8]) -> bool {
    matches!(
        parse_control_batch(batch),
        Ok(Some((ControlType::Abort, _)))
    )
}

/// The index entry of a completed transaction.
fn index_entry(txn: CompletedTxn) -> TxnIndexEntry {
    TxnIndexEntry {
        txn: AbortedTxn {
            producer_id: txn.producer_id,
            first_offset: txn.first_offset,
            last_offset: txn.last_offset,
        },
        last_stable_offset: txn.last_stable_offset,
    }
}

/// A compacted log cannot compact a record without a key: it refuses the batch, as Kafka's
/// broker does (INVALID_RECORD).
fn refuse_null_keys(
    batch: &[u8],
    header: &BatchHeader,
    max_decompressed_bytes: usize,
) -> Result<(), LogError> {
    let mut missing = None;
    cleaner::for_each_record_key(batch, header, max_decompressed_bytes, |offset, key| {
        if key.is_none() && missing.is_none() {
            missing = Some(offset.0 - header.base_offset.0);
        }
    })?;
    match missing {
        Some(index) => Err(LogError::corrupt(format!(
            "record {index} has no key; a compacted topic needs a key on every record"
        ))),
        None => Ok(()),
    }
}

fn remove_segment_files(dir: &Path, base_offset: Offset) -> Result<(), LogError> {
    for suffix in [
        LOG_SUFFIX,
        INDEX_SUFFIX,
        TIME_INDEX_SUFFIX,
        TXN_INDEX_SUFFIX,
    ] {
        remove_if_exists(&dir.join(segment_file_name(base_offset, suffix)))?;
    }
    Ok(())
}

impl Log {
    /// Opens or creates the log in `dir` (one partition's directory, e.g. <data>/orders-0/).
    /// Runs recovery: the last segment (and any segment with a missing or malformed index)
    /// is validated batch by batch and truncated at the first torn or corrupt batch, so the
    /// log end offset is right after the last intact record. Everything recovered counts as
    /// flushed.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log, LogError> {
        std::fs::create_dir_all(dir).context("create partition directory")?;
        // An interrupted cleaning is finished or undone before segments are listed.
        cleaner::swap::recover(dir)?;
        let bases = list_segments(dir)?;
        let mut segments = BTreeMap::new();
        let mut changed_files = false;
        for (i, &base) in bases.iter().enumerate() {
            let is_last = i + 1 == bases.len();
            let (segment, truncated_bytes) =
                Segment::open(dir, base, config.index_interval_bytes, is_last)?;
            let emptied = truncated_bytes > 0 && segment.is_empty();
            segments.insert(base, segment);
            if truncated_bytes > 0 {
                changed_files = true;
                for &later in &bases[i + 1..] {
                    tracing::warn!(dir = %dir.display(), base_offset = %later,
                        "deleting segment after a truncated one");
                    remove_segment_files(dir, later)?;
                }
                if emptied
                    && segments.len() > 1
                    && let Some(segment) = segments.remove(&base)
                {
                    segment.delete_files()?;
                }
                break;
            }
        }
        if segments.is_empty() {
            segments.insert(Offset::ZERO, Segment::create(dir, Offset::ZERO)?);
            changed_files = true;
        }
        if changed_files {
            sync_dir(dir)?;
        }
        let mut previous: Option<&Segment> = None;
        for segment in segments.values() {
            // Compaction may leave a gap between segments, never an overlap.
            if let Some(prev) = previous
                && prev.next_offset() > segment.base_offset()
            {
                return Err(LogError::InconsistentSegments {
                    reason: format!(
                        "{} ends at offset {} but the next segment starts at {}",
                        prev.path().display(),
                        prev.next_offset(),
                        segment.base_offset()
                    ),
                });
            }
            previous = Some(segment);
        }

        let epochs = LeaderEpochCache::load(dir)?;
        let checkpointed_high_watermark = read_high_watermark(dir)?;
        let cleaner = cleaner::checkpoint::read(dir)?;
        let checkpointed_log_start = read_log_start_offset(dir)?;
        let segments_end = segments
            .values()
            .next_back()
            .map_or(Offset::ZERO, Segment::next_offset);
        let (producers, replay_from) = ProducerStateManager::open(dir, segments_end)?;
        let mut log = Log {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset: Offset::ZERO,
            flushed_offset: Offset::ZERO,
            high_watermark: Offset::ZERO,
            checkpointed_high_watermark,
            epochs,
            truncations: 0,
            recent: Mutex::default(),
            sync_failed: false,
            cleaner,
            producers,
            producer_recovery: ProducerStateRecovery::default(),
        };
        // A checkpoint beyond the log end (recovery truncated what it pointed into) gives way.
        log.log_start_offset = checkpointed_log_start
            .unwrap_or(Offset::ZERO)
            .max(log.first_segment_base())
            .min(log.log_end_offset());
        let (start, end) = (log.log_start_offset(), log.log_end_offset());
        log.flushed_offset = end;
        log.high_watermark = checkpointed_high_watermark
            .unwrap_or(start)
            .clamp(start, end);
        log.epochs.truncate_from_end(end)?;
        log.epochs.truncate_from_start(start)?;
        log.producer_recovery = ProducerStateRecovery {
            snapshot_offset: replay_from,
            replayed_batches: log.replay_producer_state(replay_from),
        };
        tracing::info!(
            dir = %dir.display(),
            segments = log.segments.len(),
            log_start_offset = %start,
            log_end_offset = %end,
            high_watermark = %log.high_watermark,
            producer_snapshot = ?replay_from,
            producer_batches_replayed = log.producer_recovery.replayed_batches,
            "opened log"
        );
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings; they apply from the next append, roll or retention pass.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    /// Validates (validate_batch), checks max_message_bytes, recompresses if the log's
    /// `compression` asks for another codec, rolls if needed (size or age), assigns offsets
    /// starting at the log end offset (assign_offsets with `epoch`), appends to the active
    /// segment, updates indexes. Does NOT fsync (except on roll). `now_ms` is wall-clock used
    /// for segment.ms.
    pub fn append_batch(
        &mut self,
        batch: &mut [u8],
        epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let header = self.check_batch(batch)?;
        if let Some(original) = self.check_producer(&header)? {
            return Ok(original);
        }
        if let Some(mut rebuilt) = self.recompress(batch, &header)? {
            let header = self.stamp(&mut rebuilt, epoch)?;
            return self.append_validated(&rebuilt, &header, now_ms, None);
        }
        let header = self.stamp(batch, epoch)?;
        self.append_validated(batch, &header, now_ms, None)
    }

    /// `append_batch` for a batch the caller gives up: if the log keeps recent batches
    /// (`keep_recent_batches`), it keeps these very bytes (or their recompressed form) for
    /// followers.
    pub fn append_owned_batch(
        &mut self,
        mut batch: BytesMut,
        epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let header = self.check_batch(&batch)?;
        if let Some(original) = self.check_producer(&header)? {
            return Ok(original);
        }
        if let Some(rebuilt) = self.recompress(&batch, &header)? {
            batch = rebuilt;
        }
        let header = self.stamp(&mut batch, epoch)?;
        let footprint = batch.capacity();
        let batch = batch.freeze();
        self.append_validated(&batch, &header, now_ms, Some((batch.clone(), footprint)))
    }

    /// Checks a producer's batch: its size against `max_message_bytes` (before any work), then
    /// everything `validate_batch` checks, decompressing at most `max_decompressed_bytes`.
    fn check_batch(&self, batch: &[u8]) -> Result<BatchHeader, LogError> {
        if batch.len() > self.config.max_message_bytes as usize {
            return Err(LogError::RecordTooLarge {
                size_bytes: batch.len(),
                max_bytes: self.config.max_message_bytes,
            });
        }
        let header = validate_batch_within(batch, self.config.max_decompressed_bytes)?;
        if header.is_control() {
            // A marker the leader appends must say what it is; followers copy it as stored.
            parse_control_batch(batch)?;
        }
        if self.config.compaction.is_some() {
            refuse_null_keys(batch, &header, self.config.max_decompressed_bytes)?;
        }
        Ok(header)
    }

    /// Checks, without appending, whether a producer's batch would pass the idempotent
    /// producer checks now (`OutOfOrderSequence`, `ProducerFenced`); a duplicate passes. The
    /// broker uses it to let a batch that arrived just ahead of its predecessor wait for it.
    pub fn check_producer_batch(&self, batch: &[u8]) -> Result<(), LogError> {
        let header = BatchHeader::parse(batch)?;
        self.producers.check_leader_append(&header).map(|_| ())
    }

    /// Checks an idempotent producer's batch against the producer state (fenced epoch, out
    /// of order sequence); `Some` answers a duplicate with the original batch's offsets.
    fn check_producer(&self, header: &BatchHeader) -> Result<Option<AppendInfo>, LogError> {
        self.check_not_sync_failed()?;
        match self.producers.check_leader_append(header)? {
            AppendCheck::Append => Ok(None),
            AppendCheck::Duplicate(original) => {
                tracing::debug!(dir = %self.dir.display(), producer_id = header.producer_id,
                    base_sequence = header.base_sequence, base_offset = %original.first_offset,
                    "duplicate batch from an idempotent producer; answered with its offsets");
                Ok(Some(AppendInfo {
                    base_offset: original.first_offset,
                    last_offset: original.last_offset,
                    max_timestamp_ms: original.max_timestamp_ms,
                    record_count: header.record_count as u32,
                    size_bytes: 0,
                    duplicate: true,
                }))
            }
            AppendCheck::StaleMarker => {
                tracing::debug!(dir = %self.dir.display(), producer_id = header.producer_id,
                    epoch = header.producer_epoch, "transaction marker already applied; skipped");
                // Answered at the log end: once that is committed, so is the marker that
                // made this one stale.
                let last = Offset(self.log_end_offset().0.saturating_sub(1).max(0));
                Ok(Some(AppendInfo {
                    base_offset: last,
                    last_offset: last,
                    max_timestamp_ms: header.max_timestamp_ms,
                    record_count: 0,
                    size_bytes: 0,
                    duplicate: true,
                }))
            }
        }
    }

    /// The batch rebuilt with the log's codec, if the topic's `compression.type` names one and
    /// the producer used another (Kafka recompresses then too); `None` keeps the producer's
    /// bytes.
    fn recompress(&self, batch: &[u8], header: &BatchHeader) -> Result<Option<BytesMut>, LogError> {
        let Some(codec) = self.config.compression else {
            return Ok(None);
        };
        // Markers stay as the coordinator built them: uncompressed, as Kafka writes them.
        if header.compression()? == codec || header.is_control() {
            return Ok(None);
        }
        // Producer id, epoch and sequence carry over: the producer state checked them and
        // records them from the stored batch, and a follower rebuilds its state from it.
        let records = decode_records(batch)?;
        let mut builder = RecordBatchBuilder::with_capacity(header.base_timestamp_ms, batch.len())
            .with_producer(
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
            );
        if header.is_transactional() {
            builder = builder.transactional();
        }
        for record in &records {
            builder.push(
                record.timestamp_ms,
                record.key.as_deref(),
                record.value.as_deref(),
                &record.headers,
            );
        }
        Ok(Some(builder.build_compressed(codec)?))
    }

    /// Gives a checked batch its offsets, from the log end, and `epoch`.
    fn stamp(&self, batch: &mut [u8], epoch: LeaderEpoch) -> Result<BatchHeader, LogError> {
        let header = BatchHeader::parse(batch)?;
        let base_offset = self.log_end_offset();
        assign_offsets(batch, base_offset, epoch);
        Ok(BatchHeader {
            base_offset,
            partition_leader_epoch: epoch,
            ..header
        })
    }

    /// Keeps the newest batches appended with `append_owned_batch` in memory, charged to
    /// `budget`, so that `read` answers followers at the log end without the disk; `None`
    /// stops and drops them. For a leader with followers.
    pub fn keep_recent_batches(&mut self, budget: Option<Arc<RecentBatchBudget>>) {
        self.recent_mut().set_budget(budget);
    }

    /// Drops kept batches that end below `offset`: every in-sync follower has them.
    pub fn release_recent_below(&self, offset: Offset) {
        self.recent().release_below(offset);
    }

    fn recent(&self) -> MutexGuard<'_, RecentBatches> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recent_mut(&mut self) -> &mut RecentBatches {
        self.recent.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a batch as-is keeping its offsets (follower path): base_offset must equal
    /// log_end_offset. Only the CRC is checked: the leader validated every record before
    /// storing the batch, and the CRC proves these are its bytes, so replication never
    /// decodes records.
    pub fn append_replicated(&mut self, batch: &[u8], now_ms: i64) -> Result<AppendInfo, LogError> {
        let header = verify_crc(batch)?;
        self.append_replicated_verified(batch, &header, now_ms)
    }

    /// `append_replicated` for every batch of a fetch response (whole batches, back to
    /// back), checking each CRC once. Stops at the first batch that fails, after appending
    /// those before it; returns the new log end.
    pub fn append_replicated_batches(
        &mut self,
        batches: &[u8],
        now_ms: i64,
    ) -> Result<Offset, LogError> {
        for batch in BatchIter::new(batches) {
            let (header, batch) = batch?;
            self.append_replicated_verified(batch, &header, now_ms)?;
        }
        Ok(self.log_end_offset())
    }

    fn append_replicated_verified(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        // A gap is the leader's compaction at work (Kafka accepts it too); going back is not.
        if header.base_offset < self.log_end_offset() {
            return Err(LogError::NonContiguousAppend {
                expected: self.log_end_offset(),
                actual: header.base_offset,
            });
        }
        self.append_validated(batch, header, now_ms, None)
    }

    /// Appends a checked batch, and keeps `kept` (its bytes, and the memory they pin) in
    /// memory if given; an append without drops what is kept, which must stay a suffix of
    /// the log.
    fn append_validated(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        now_ms: i64,
        kept: Option<(Bytes, usize)>,
    ) -> Result<AppendInfo, LogError> {
        self.check_not_sync_failed()?;
        self.maybe_roll(batch.len(), header.last_offset(), now_ms)?;
        let epoch = header.partition_leader_epoch;
        // Every epoch change is recorded, a lower one too, as Kafka does for each appended
        // batch: a replica that began an epoch without writing in it and then follows an
        // older leader must not leave that epoch's entry in front of the batches it
        // replicates (assign drops the superseded entry), or a later divergence check
        // would attribute them to the wrong epoch and truncate committed records.
        if epoch.0 >= 0
            && self
                .epochs
                .latest()
                .is_none_or(|latest| epoch != latest.epoch)
        {
            self.epochs.assign(epoch, header.base_offset)?;
        }
        let index_interval_bytes = self.config.index_interval_bytes;
        let appended = self
            .active_mut()
            .append(batch, header, index_interval_bytes, now_ms);
        let recent = self.recent_mut();
        match kept {
            Some((bytes, footprint)) if appended.is_ok() => {
                recent.push(header.base_offset, header.last_offset(), bytes, footprint)
            }
            _ => recent.clear(),
        }
        appended?;
        if let Some(txn) = self.producers.record_batch(header)
            && is_abort_marker(batch)
        {
            // The marker is stored but unindexed: read_committed consumers would see the
            // aborted data. The log goes offline; reopening rebuilds the entry by replay.
            if let Err(error) = self.active_mut().append_aborted_txn(index_entry(txn)) {
                tracing::error!(dir = %self.dir.display(), %error,
                    "cannot index an aborted transaction; the log takes no more writes");
                self.sync_failed = true;
                return Err(error);
            }
        }
        Ok(AppendInfo {
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            max_timestamp_ms: header.max_timestamp_ms,
            record_count: header.record_count as u32,
            size_bytes: batch.len() as u32,
            duplicate: false,
        })
    }

    /// Rolls before an append of `size_bytes` ending at `last_offset` if the active segment is
    /// non-empty and would grow past `segment_bytes`, is older than `segment_ms`, or could not
    /// address the offsets in 32 bits.
    fn maybe_roll(
        &mut self,
        size_bytes: usize,
        last_offset: Offset,
        now_ms: i64,
    ) -> Result<bool, LogError> {
        let active = self.active();
        if active.is_empty() {
            return Ok(false);
        }
        let limit_bytes = self.config.segment_bytes.min(u64::from(u32::MAX));
        let reason = if active.size_bytes() + size_bytes as u64 > limit_bytes {
            "size"
        } else if active.is_older_than(now_ms, self.config.segment_ms) {
            "age"
        } else if !active.fits_relative(last_offset) {
            "offset range"
        } else {
            return Ok(false);
        };
        self.roll(reason)?;
        Ok(true)
    }

    /// Seals the active segment (fsyncs it and its indexes) and starts a new one at the log
    /// end offset, fsyncing the directory so the new file survives a crash.
    fn roll(&mut self, reason: &'static str) -> Result<(), LogError> {
        let base_offset = self.log_end_offset();
        self.active_mut().seal()?;
        self.sync_active()?;
        self.mark_flushed(base_offset);
        let segment = Segment::create(&self.dir, base_offset)?;
        sync_dir(&self.dir)?;
        self.segments.insert(base_offset, segment);
        tracing::info!(dir = %self.dir.display(), base_offset = %base_offset, reason, "rolled segment");
        self.snapshot_producers(base_offset);
        Ok(())
    }

    /// Snapshots the producer state at `offset`, the log end, whose batches are all fsynced.
    /// A failure only costs a longer replay at the next open, so it is logged, not returned:
    /// the append or flush that asked for it has already succeeded.
    fn snapshot_producers(&mut self, offset: Offset) {
        if let Err(error) = self.producers.take_snapshot(offset) {
            tracing::warn!(dir = %self.dir.display(), %offset, %error,
                "cannot snapshot the producer state; the next open replays more of the log");
        }
    }

    /// Records in the producer state every batch from `from` (a snapshot's offset; `None`
    /// for the start of the files) to the log end, and returns how many it read. The
    /// aborted-transaction index follows: its entries from `from` on are dropped and
    /// rebuilt from the markers replayed, so an entry torn or lost in a crash comes back,
    /// with the first offset the producer state knows. A batch
    /// that cannot be read ends the replay with a warning: producers it would have named
    /// are then unknown, which the producer state tolerates (as after expiry), and the read
    /// path reports the batch itself.
    fn replay_producer_state(&mut self, from: Option<Offset>) -> u64 {
        let Log {
            segments,
            producers,
            dir,
            sync_failed,
            ..
        } = self;
        let start = from.unwrap_or(Offset::ZERO);
        let mut next = start;
        let mut replayed = 0u64;
        let mut buf = BytesMut::new();
        let mut aborted = Vec::new();
        let mut index_ok = true;
        for segment in segments.values_mut().filter(|s| s.next_offset() > start) {
            if let Err(error) = segment.truncate_aborted_txns_from(start) {
                tracing::warn!(dir = %dir.display(), %error,
                    "cannot cut the transaction index before rebuilding it");
                index_ok = false;
            }
        }
        'segments: for segment in segments.values().filter(|s| s.next_offset() > start) {
            loop {
                buf.clear();
                let target = next.max(segment.base_offset());
                let progress = match segment.read_into(
                    target,
                    PRODUCER_REPLAY_CHUNK_BYTES,
                    Offset(i64::MAX),
                    &mut buf,
                ) {
                    Ok(progress) => progress,
                    Err(error) => {
                        tracing::warn!(dir = %dir.display(), offset = %target, %error,
                            "producer state replay stopped at an unreadable batch");
                        break 'segments;
                    }
                };
                let mut rest = &buf[..];
                while let Ok(header) = BatchHeader::parse(rest) {
                    // `read_into` returns whole batches, CRC-checked.
                    let size = header.total_size_bytes();
                    let (Some(batch), Some(after)) = (rest.get(..size), rest.get(size..)) else {
                        break;
                    };
                    rest = after;
                    if header.base_offset >= next {
                        if let Some(txn) = producers.record_batch(&header)
                            && is_abort_marker(batch)
                        {
                            aborted.push(index_entry(txn));
                        }
                        replayed += 1;
                    }
                    next = next.max(header.next_offset());
                }
                if progress == ReadProgress::SegmentExhausted {
                    break;
                }
            }
        }
        for entry in aborted {
            let indexed = match segments.range_mut(..=entry.txn.last_offset).next_back() {
                Some((_, segment)) => segment.append_aborted_txn(entry),
                None => Ok(()),
            };
            if let Err(error) = indexed {
                tracing::warn!(dir = %dir.display(), %error,
                    "cannot rebuild a transaction index entry");
                index_ok = false;
            }
        }
        if !index_ok {
            // read_committed must not serve aborted data as committed: no more writes until
            // a reopen rebuilds the index.
            *sync_failed = true;
        }
        replayed
    }

    /// Every idempotent producer this partition knows, ordered by producer id (for
    /// `ferrolog producer list` and Kafka's DescribeProducers).
    pub fn producers(&self) -> Vec<ProducerSnapshotEntry> {
        self.producers.entries()
    }

    /// Forgets producers whose last batch is older than `producer_id_expiration_ms` at
    /// `now_ms` (never one with an open transaction); returns how many. The broker calls it
    /// periodically, as Kafka's `producer.id.expiration.check.interval.ms` task does.
    pub fn expire_producers(&mut self, now_ms: i64) -> usize {
        let expired = self
            .producers
            .expire(now_ms, self.config.producer_id_expiration_ms);
        if expired > 0 {
            tracing::info!(dir = %self.dir.display(), expired, "expired idempotent producers");
        }
        expired
    }

    /// How `open` rebuilt the producer state (snapshot used, batches replayed).
    pub fn producer_state_recovery(&self) -> ProducerStateRecovery {
        self.producer_recovery
    }

    /// The first offset of the earliest open transaction, `None` when none is open.
    pub fn first_unstable_offset(&self) -> Option<Offset> {
        self.producers.first_unstable_offset()
    }

    /// The last stable offset (Kafka's LSO): read_committed consumers read below it only.
    /// It is `high_watermark` (the broker's, which may be ahead of the checkpointed
    /// `Log::high_watermark`) unless a transaction opened below it is still open, in which
    /// case it is that transaction's first offset: its outcome is not known yet.
    pub fn last_stable_offset(&self, high_watermark: Offset) -> Offset {
        let high_watermark = high_watermark.min(self.log_end_offset());
        self.first_unstable_offset()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// Every open transaction as (producer id, first offset), earliest first (Kafka's
    /// DescribeTransactions / ListTransactions view of a partition).
    pub fn open_transactions(&self) -> Vec<(i64, Offset)> {
        self.producers.open_transactions()
    }

    /// Every aborted transaction whose range overlaps `[from, upper)`: what a read_committed
    /// fetch from `from` up to `upper` (the LSO) hands its consumer, ordered by marker offset.
    /// Entries come from the segments' aborted-transaction indexes, held in memory.
    pub fn aborted_transactions(
        &self,
        from: Offset,
        upper: Offset,
    ) -> Result<Vec<AbortedTxn>, LogError> {
        // An entry sits in the segment of its marker, which is at or after `from` when the
        // entry overlaps, so earlier segments cannot hold one; later ones may (a transaction
        // that began below `upper` and ended above it).
        let floor = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(Offset(i64::MIN), |(base, _)| *base);
        Ok(self
            .segments
            .range(floor..)
            .flat_map(|(_, segment)| segment.aborted_txns())
            .map(|entry| entry.txn)
            .filter(|txn| txn.last_offset >= from && txn.first_offset < upper)
            .collect())
    }

    /// Reads whole batches starting at the batch that contains `from`, up to `max_bytes`
    /// (always at least one batch if any is available, like Kafka's KIP-74), stopping before
    /// any batch whose last offset is at or above `upper_bound` (the high watermark). Reading
    /// from the log end, or from at or above the upper bound, returns nothing; reading below
    /// the log start or beyond the log end fails with `OffsetOutOfRange`. A batch whose CRC fails is never returned: if it is the first batch
    /// of the read, the read fails with CorruptBatch; otherwise the batches before it are
    /// returned and the next read starting at it fails.
    pub fn read(
        &self,
        from: Offset,
        max_bytes: u32,
        upper_bound: Offset,
    ) -> Result<ReadResult, LogError> {
        let (log_start, log_end) = (self.log_start_offset(), self.log_end_offset());
        if from < log_start || from > log_end {
            return Err(LogError::OffsetOutOfRange {
                requested: from,
                log_start,
                log_end,
            });
        }
        if from < log_end
            && let Some(batches) = self.recent().read(from, max_bytes as usize, upper_bound)
        {
            return Ok(ReadResult {
                batches,
                log_start_offset: log_start,
                log_end_offset: log_end,
                from_memory: true,
            });
        }
        let mut out = BytesMut::new();
        if from < log_end && from < upper_bound {
            let floor = self
                .segments
                .range(..=from)
                .next_back()
                .map(|(base, _)| *base)
                .expect("from >= log start, the first segment's base");
            for segment in self.segments.range(floor..).map(|(_, s)| s) {
                let target = from.max(segment.base_offset());
                match segment.read_into(target, max_bytes as usize, upper_bound, &mut out) {
                    Ok(ReadProgress::SegmentExhausted) => continue,
                    Ok(ReadProgress::Stopped) => break,
                    Err(err) if out.is_empty() => return Err(err),
                    Err(err) => {
                        tracing::warn!(dir = %self.dir.display(), error = %err,
                            "read stopped before a corrupt batch");
                        break;
                    }
                }
            }
        }
        Ok(ReadResult {
            batches: out.freeze(),
            log_start_offset: log_start,
            log_end_offset: log_end,
            from_memory: false,
        })
    }

    /// First offset at or above the log start whose record timestamp >= `timestamp_ms` (Kafka
    /// ListOffsets by timestamp), None if none. Uses the time index.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<Offset>, LogError> {
        for segment in self.segments.values() {
            if segment.max_timestamp_ms() < timestamp_ms {
                continue;
            }
            if segment.next_offset() <= self.log_start_offset {
                continue;
            }
            if let Some(offset) =
                segment.offset_for_timestamp(timestamp_ms, self.log_start_offset)?
            {
                return Ok(Some(offset));
            }
        }
        Ok(None)
    }

    /// The first offset still in the log: reads below it fail with `OffsetOutOfRange`.
    pub fn log_start_offset(&self) -> Offset {
        self.log_start_offset
    }

    fn first_segment_base(&self) -> Offset {
        self.segments
            .keys()
            .next()
            .copied()
            .expect("a log always has a segment")
    }

    /// Moves the log start offset forward to `offset` (Kafka's DeleteRecords, and a follower
    /// taking its leader's log start): records below it are no longer served, and segments
    /// wholly below it are deleted. Never past `high_watermark` (only committed records can
    /// be deleted: `BeyondHighWatermark`); a no-op at or below the current start. The new
    /// start is persisted before any file is deleted, so a crash in between leaves files
    /// that the checkpoint already hides.
    pub fn advance_log_start(
        &mut self,
        offset: Offset,
        high_watermark: Offset,
    ) -> Result<bool, LogError> {
        if offset <= self.log_start_offset {
            return Ok(false);
        }
        let high_watermark = high_watermark.min(self.log_end_offset());
        if offset > high_watermark {
            return Err(LogError::BeyondHighWatermark {
                requested: offset,
                high_watermark,
            });
        }
        write_log_start_offset(&self.dir, offset)?;
        self.log_start_offset = offset;
        let mut deleted = 0usize;
        while self.segments.len() > 1 {
            let mut bases = self.segments.keys();
            let (Some(&oldest), Some(&next_base)) = (bases.next(), bases.next()) else {
                break;
            };
            if next_base > offset {
                break;
            }
            let segment = self
                .segments
                .remove(&oldest)
                .expect("the key was just read from the map");
            segment.delete_files()?;
            deleted += 1;
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        self.flushed_offset = self.flushed_offset.max(offset);
        self.epochs.truncate_from_start(offset)?;
        self.producers.delete_snapshots_below(offset)?;
        tracing::info!(dir = %self.dir.display(), log_start_offset = %offset,
            deleted_segments = deleted, "moved the log start offset");
        Ok(true)
    }

    /// The next offset to be assigned.
    pub fn log_end_offset(&self) -> Offset {
        self.active().next_offset()
    }

    /// Everything below this offset is fsynced.
    pub fn flushed_offset(&self) -> Offset {
        self.flushed_offset
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            file: self.active().log_file(),
            path: self.active().shared_path(),
            end_offset: self.log_end_offset(),
            truncations: self.truncations,
        }
    }

    /// Records that everything below `up_to` is durable; monotonic, never beyond log end,
    /// and never after an fsync failed. Prefer `mark_synced` with the handle that was synced:
    /// it also guards against a truncation between taking the handle and syncing it.
    pub fn mark_flushed(&mut self, up_to: Offset) {
        if self.sync_failed {
            return;
        }
        let up_to = up_to.min(self.log_end_offset());
        self.flushed_offset = self.flushed_offset.max(up_to);
    }

    /// Marks flushed what `handle.sync()` made durable. Ignores the handle if the log was
    /// truncated since it was taken (its offsets may since have been reused by new, unsynced
    /// data) and returns whether the handle was applied.
    pub fn mark_synced(&mut self, handle: &SyncHandle) -> bool {
        if handle.truncations != self.truncations || self.sync_failed {
            return false;
        }
        self.mark_flushed(handle.end_offset);
        true
    }

    /// fsync everything (active segment + its indexes) and mark flushed, then snapshot the
    /// producer state at the log end, so that the next open replays nothing (the broker
    /// flushes when it closes a partition).
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.sync_active()?;
        let end = self.log_end_offset();
        self.mark_flushed(end);
        self.snapshot_producers(end);
        Ok(())
    }

    /// Fsyncs the active segment and its indexes; a failure takes the log offline for
    /// writes (`LogError::SyncFailed`), and a log already offline does not try again: a
    /// second fsync could "succeed" over pages the kernel already dropped.
    fn sync_active(&mut self) -> Result<(), LogError> {
        self.check_not_sync_failed()?;
        let synced = self.active().sync_all();
        if let Err(error) = &synced {
            tracing::error!(dir = %self.dir.display(), %error,
                "fsync failed; the log takes no more writes");
            self.sync_failed = true;
        }
        synced
    }

    /// Records that a `SyncHandle::sync` of this log failed: from now on the log refuses
    /// appends, rolls and flushes, and marks nothing more flushed.
    pub fn mark_sync_failed(&mut self) {
        self.sync_failed = true;
    }

    /// Whether an fsync of this log failed (see `LogError::SyncFailed`).
    pub fn sync_failed(&self) -> bool {
        self.sync_failed
    }

    fn check_not_sync_failed(&self) -> Result<(), LogError> {
        if self.sync_failed {
            return Err(LogError::SyncFailed);
        }
        Ok(())
    }

    /// Deletes whole non-active segments past retention.ms (by the segment's largest
    /// timestamp) and while total size exceeds retention.bytes; never deletes a segment
    /// containing offsets >= `upper_bound` (the high watermark); moves the log start offset
    /// forward. Deletes oldest first and stops at the first segment that must stay.
    pub fn enforce_retention(
        &mut self,
        now_ms: i64,
        upper_bound: Offset,
    ) -> Result<RetentionOutcome, LogError> {
        let retention_ms = self
            .config
            .retention_ms
            .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
        let retention_bytes = self.config.retention_bytes;
        let mut total_bytes = self.size_bytes();
        let mut outcome = RetentionOutcome {
            deleted_segments: 0,
            deleted_bytes: 0,
            log_start_offset: self.log_start_offset(),
        };
        while self.segments.len() > 1 {
            let mut bases = self.segments.keys();
            let (Some(&oldest), Some(&next_base)) = (bases.next(), bases.next()) else {
                break;
            };
            if next_base > upper_bound {
                break;
            }
            let segment = &self.segments[&oldest];
            let age_ms = now_ms.saturating_sub(segment.max_timestamp_ms());
            let expired = retention_ms.is_some_and(|limit| age_ms > limit);
            let over_size =
                retention_bytes.is_some_and(|limit| total_bytes - segment.size_bytes() >= limit);
            if !expired && !over_size {
                break;
            }
            let segment = self
                .segments
                .remove(&oldest)
                .expect("the key was just read from the map");
            segment.delete_files()?;
            total_bytes -= segment.size_bytes();
            outcome.deleted_segments += 1;
            outcome.deleted_bytes += segment.size_bytes();
            tracing::info!(
                segment = %segment.path().display(),
                size_bytes = segment.size_bytes(),
                reason = if expired { "retention.ms" } else { "retention.bytes" },
                "deleted segment by retention"
            );
        }
        if outcome.deleted_segments > 0 {
            sync_dir(&self.dir)?;
            self.log_start_offset = self.log_start_offset.max(self.first_segment_base());
            let start = self.log_start_offset();
            outcome.log_start_offset = start;
            self.high_watermark = self.high_watermark.max(start);
            self.flushed_offset = self.flushed_offset.max(start);
            self.epochs.truncate_from_start(start)?;
            self.producers.delete_snapshots_below(start)?;
        }
        Ok(outcome)
    }

    /// Rolls the active segment if it is older than segment.ms and non-empty (called
    /// periodically by the broker).
    pub fn roll_if_due(&mut self, now_ms: i64) -> Result<bool, LogError> {
        self.check_not_sync_failed()?;
        if self.active().is_older_than(now_ms, self.config.segment_ms) {
            self.roll("age")?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Truncates everything at and above `offset` (follower leader-epoch truncation). The
    /// offset should be a batch boundary; otherwise the whole batch containing it is removed
    /// too (as Kafka does) and the log ends at that batch's base offset. A no-op if `offset`
    /// is at or beyond the log end; `OffsetOutOfRange` below the log start.
    pub fn truncate_to(&mut self, offset: Offset) -> Result<(), LogError> {
        // The files' start, not the log start: a start DeleteRecords moved inside the first
        // segment follows the end down (below).
        let (log_start, log_end) = (self.first_segment_base(), self.log_end_offset());
        if offset >= log_end {
            // No batch to remove, but an epoch this replica began as leader and never
            // wrote a batch in (it starts at the log end) is not shared with the new
            // leader either: it goes, or the follower keeps asking about it.
            self.epochs.truncate_from_end(offset)?;
            return Ok(());
        }
        if offset < log_start {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                log_start,
                log_end,
            });
        }
        // First: whatever fails below, nothing kept may outlive the batches it mirrors.
        self.recent_mut().clear();
        let doomed: Vec<Offset> = self
            .segments
            .range((Bound::Excluded(offset), Bound::Unbounded))
            .map(|(base, _)| *base)
            .collect();
        for base in doomed.into_iter().rev() {
            if let Some(segment) = self.segments.remove(&base) {
                segment.delete_files()?;
            }
        }
        self.truncations += 1;
        self.active_mut().truncate_to(offset)?;
        sync_dir(&self.dir)?;
        let end = self.log_end_offset();
        if self.log_start_offset > end {
            // The log now ends below the start DeleteRecords set: it starts where it ends.
            write_log_start_offset(&self.dir, end)?;
            self.log_start_offset = end;
        }
        self.flushed_offset = self.flushed_offset.min(end);
        self.high_watermark = self.high_watermark.min(end);
        self.epochs.truncate_from_end(end)?;
        self.lower_first_dirty(end)?;
        // The state goes back to the newest snapshot at or below the new end, plus the
        // batches after it: a removed batch is no longer a duplicate.
        let replay_from = self.producers.truncate_to(end)?;
        self.replay_producer_state(replay_from);
        tracing::info!(dir = %self.dir.display(), requested = %offset, log_end_offset = %end,
            "truncated log");
        Ok(())
    }

    /// Empties the log and restarts it at `offset` (Kafka's `truncateFullyAndStartAt`): a
    /// follower whose log ends below the leader's log start (retention deleted what it
    /// lacks) cannot catch up batch by batch, so it starts over where the leader's log
    /// starts. A crash midway leaves an empty log at 0, which asks for the same again.
    pub fn truncate_fully_and_start_at(&mut self, offset: Offset) -> Result<(), LogError> {
        self.recent_mut().clear();
        let bases: Vec<Offset> = self.segments.keys().copied().collect();
        for base in bases {
            if let Some(segment) = self.segments.remove(&base) {
                segment.delete_files()?;
            }
        }
        self.segments
            .insert(offset, Segment::create(&self.dir, offset)?);
        sync_dir(&self.dir)?;
        // An older checkpoint may name a start beyond `offset` (a leader that had not yet
        // taken its predecessor's log start); the new first segment is the start now.
        write_log_start_offset(&self.dir, offset)?;
        self.log_start_offset = offset;
        self.truncations += 1;
        self.flushed_offset = offset;
        self.high_watermark = offset;
        self.epochs.clear()?;
        self.lower_first_dirty(offset)?;
        self.producers.truncate_fully()?;
        tracing::warn!(dir = %self.dir.display(), log_start_offset = %offset,
            "emptied the log to restart at the leader's log start");
        Ok(())
    }

    /// The high watermark, loaded from its checkpoint on open (clamped to the log's range).
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// Sets the high watermark (capped at the log end) and persists it atomically (tmp file,
    /// fsync, rename, fsync dir); an unchanged value is not rewritten.
    pub fn checkpoint_high_watermark(&mut self, hw: Offset) -> Result<(), LogError> {
        let hw = hw.min(self.log_end_offset());
        self.high_watermark = hw;
        if self.checkpointed_high_watermark != Some(hw) {
            write_high_watermark(&self.dir, hw)?;
            self.checkpointed_high_watermark = Some(hw);
        }
        Ok(())
    }

    /// Epoch of the last batch in the log (the latest cache entry that starts below the
    /// log end), `None` for an empty log. A follower reports this, not `leader_epoch`:
    /// an epoch it began as leader without writing anything is not in its log.
    pub fn last_batch_epoch(&self) -> Option<LeaderEpoch> {
        let end = self.log_end_offset();
        self.epochs
            .entries()
            .iter()
            .rev()
            .find(|entry| entry.start_offset < end)
            .map(|entry| entry.epoch)
    }

    /// Latest epoch in the cache, 0 if none.
    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.epochs
            .latest()
            .map_or(LeaderEpoch(0), |entry| entry.epoch)
    }

    /// Records a leader-epoch cache entry (epoch -> start offset), persisted to
    /// `leader-epoch-checkpoint`. Appends also record the epoch of their batches.
    pub fn assign_leader_epoch(
        &mut self,
        epoch: LeaderEpoch,
        start_offset: Offset,
    ) -> Result<(), LogError> {
        self.epochs.assign(epoch, start_offset)?;
        Ok(())
    }

    /// KIP-101/279 lookup: the largest epoch <= `epoch` known here and its end offset.
    pub fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> Option<(LeaderEpoch, Offset)> {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// The closed segments the cleaner may take now: from the log start, below the active
    /// segment and `upper_bound` (the high watermark), stopping at the first segment holding
    /// a record younger than `min.compaction.lag.ms`.
    fn cleanable_segments(&self, now_ms: i64, upper_bound: Offset) -> Vec<&Segment> {
        let Some(compaction) = self.config.compaction else {
            return Vec::new();
        };
        // Never above the LSO: whether an open transaction's batches stay is not known yet.
        let upper_bound = self.last_stable_offset(upper_bound);
        let min_lag_ms = i64::try_from(compaction.min_compaction_lag_ms).unwrap_or(i64::MAX);
        let closed = self.segments.len() - 1;
        self.segments
            .values()
            .take(closed)
            .take_while(|s| {
                s.next_offset() <= upper_bound
                    && now_ms.saturating_sub(s.max_timestamp_ms()) >= min_lag_ms
            })
            .collect()
    }

    /// The first offset the cleaner has not cleaned: below it, a compacted log holds at most
    /// one record per key.
    pub fn cleaner_first_dirty(&self) -> Offset {
        self.first_dirty_offset()
    }

    /// The first offset the cleaner has not cleaned, within the log.
    fn first_dirty_offset(&self) -> Offset {
        self.cleaner
            .first_dirty
            .clamp(self.log_start_offset(), self.log_end_offset())
    }

    /// How much of the log awaits the cleaner; `None` unless the log is compacted.
    pub fn dirty_state(&self, now_ms: i64, upper_bound: Offset) -> Option<DirtyState> {
        let compaction = self.config.compaction?;
        let first_dirty = self.first_dirty_offset();
        let cleanable = self.cleanable_segments(now_ms, upper_bound);
        let (clean, dirty): (Vec<&Segment>, Vec<&Segment>) = cleanable
            .iter()
            .partition(|s| s.next_offset() <= first_dirty);
        let max_lag_ms = i64::try_from(compaction.max_compaction_lag_ms).unwrap_or(i64::MAX);
        let past_max_lag = dirty
            .first()
            .and_then(|s| s.first_append_ms())
            .is_some_and(|first| now_ms.saturating_sub(first) > max_lag_ms);
        Some(DirtyState {
            clean_bytes: clean.iter().map(|s| s.size_bytes()).sum(),
            dirty_bytes: dirty.iter().map(|s| s.size_bytes()).sum(),
            min_ratio: compaction.min_cleanable_dirty_ratio,
            past_max_lag,
            tombstones_due: !cleanable.is_empty()
                && self
                    .cleaner
                    .tombstone_horizon_ms
                    .is_some_and(|h| now_ms >= h),
        })
    }

    /// Phase 1 of a cleaning (see `cleaner`): a snapshot of the cleanable segments, or
    /// `None` when the log is not compacted or has nothing to clean. It does not look at
    /// the dirty ratio; a caller that should wait for it checks `dirty_state` first.
    pub fn prepare_cleaning(&self, now_ms: i64, upper_bound: Offset) -> Option<CleanTask> {
        let compaction = self.config.compaction?;
        let state = self.dirty_state(now_ms, upper_bound)?;
        if state.dirty_bytes == 0 && !state.tombstones_due {
            return None;
        }
        let segments: Vec<SegmentRef> = self
            .cleanable_segments(now_ms, upper_bound)
            .into_iter()
            .map(SegmentRef::of)
            .collect();
        let cleanable_end = segments.last()?.next;
        Some(CleanTask {
            dir: self.dir.clone(),
            segments,
            first_dirty: self.first_dirty_offset(),
            cleanable_end,
            compaction,
            segment_bytes: self.config.segment_bytes,
            index_interval_bytes: self.config.index_interval_bytes,
            max_decompressed_bytes: self
                .config
                .max_decompressed_bytes
                .max(crate::compression::DEFAULT_MAX_DECOMPRESSED_BYTES),
            now_ms,
            producer_last_offsets: self.producers.last_batch_offsets(),
            aborted: cleaner::AbortedIndex::new(
                self.segments
                    .values()
                    .flat_map(|segment| segment.aborted_txns().iter().copied()),
            ),
        })
    }

    /// Phase 3 of a cleaning: swaps the cleaned segments in, crash-safely, if the segments
    /// they replace are unchanged, and moves the cleaner checkpoint. A failure midway
    /// leaves the files in a state that `Log::open` completes, but this log's view of them
    /// uncertain: it then takes no more writes (as after a failed fsync) until reopened.
    pub fn install_cleaned(&mut self, cleaned: CleanedLog) -> Result<CleanOutcome, LogError> {
        self.install_cleaned_with(cleaned, &mut Steps::unlimited())
    }

    pub(crate) fn install_cleaned_with(
        &mut self,
        mut cleaned: CleanedLog,
        steps: &mut Steps,
    ) -> Result<CleanOutcome, LogError> {
        self.check_not_sync_failed()?;
        let active_base = self.active().base_offset();
        let unchanged = cleaned
            .groups
            .iter()
            .flat_map(|g| &g.originals)
            .all(|original| {
                original.base != active_base
                    && self
                        .segments
                        .get(&original.base)
                        .is_some_and(|segment| original.matches(segment))
            });
        if !unchanged {
            tracing::info!(dir = %self.dir.display(),
                "the log changed while it was cleaned; discarding the cleaned segments");
            return Ok(CleanOutcome::Abandoned);
        }
        let groups = std::mem::take(&mut cleaned.groups);
        for (i, group) in groups.iter().enumerate() {
            let bases: Vec<Offset> = group.originals.iter().map(|s| s.base).collect();
            let swapped =
                cleaner::swap::swap_in(&self.dir, group.base, &bases, steps).and_then(|()| {
                    Segment::open(
                        &self.dir,
                        group.base,
                        self.config.index_interval_bytes,
                        false,
                    )
                });
            let segment = match swapped {
                Ok((segment, _)) => segment,
                Err(error) => {
                    // What is left unstarted is removed when `cleaned` drops.
                    cleaned.groups = groups.into_iter().skip(i + 1).collect();
                    tracing::error!(dir = %self.dir.display(), %error,
                        "swapping cleaned segments failed; the log takes no more writes");
                    self.sync_failed = true;
                    return Err(error);
                }
            };
            for base in &bases {
                self.segments.remove(base);
            }
            self.segments.insert(group.base, segment);
        }
        let checkpoint = CleanerCheckpoint {
            first_dirty: self.cleaner.first_dirty.max(cleaned.first_dirty),
            tombstone_horizon_ms: cleaned.tombstone_horizon_ms,
        };
        cleaner::checkpoint::write(&self.dir, checkpoint)?;
        self.cleaner = checkpoint;
        Ok(CleanOutcome::Installed {
            stats: cleaned.stats,
            first_dirty: checkpoint.first_dirty,
        })
    }

    /// Runs all three phases of a cleaning while holding the log, whatever the dirty ratio;
    /// `None` if there is nothing to clean. For callers that need no concurrency (tests,
    /// tools); the broker runs the phases apart.
    pub fn clean(
        &mut self,
        now_ms: i64,
        upper_bound: Offset,
        options: &CleanerOptions,
        retention: &dyn BatchRetention,
        throttle: &Throttle,
    ) -> Result<Option<CleanOutcome>, LogError> {
        let Some(task) = self.prepare_cleaning(now_ms, upper_bound) else {
            return Ok(None);
        };
        let cleaned = task.run(options, retention, throttle)?;
        self.install_cleaned(cleaned).map(Some)
    }

    /// Lowers the cleaner's first dirty offset to `end` after a truncation: offsets at and
    /// above it will hold new, uncleaned records.
    fn lower_first_dirty(&mut self, end: Offset) -> Result<(), LogError> {
        if self.cleaner.first_dirty > end {
            self.cleaner.first_dirty = end;
            cleaner::checkpoint::write(&self.dir, self.cleaner)?;
        }
        Ok(())
    }

    /// Closes and removes the partition directory.
    pub fn delete(self) -> Result<(), LogError> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).context("remove partition directory")?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        tracing::info!(dir = %dir.display(), "deleted log");
        Ok(())
    }
}
