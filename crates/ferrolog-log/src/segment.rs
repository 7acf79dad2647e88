//! One segment: a file of whole batches named by its base offset, plus its two indexes and
//! its aborted-transaction index (`txn_index`).
//!
//! Only the log's active (last) segment is ever appended to. Reads use positioned reads on a
//! shared `Arc<File>`, so they need no `&mut` access.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;

use crate::batch::{BATCH_HEADER_BYTES, BatchHeader, LOG_OVERHEAD_BYTES, verify_crc};
use crate::error::{IoContext, LogError};
use crate::fsutil::remove_if_exists;
use crate::index::{IndexFile, OffsetEntry, TimeEntry};
use crate::record::decode_records;
use crate::stored_batch::validate_stored_batch;
use crate::test_faults;
use crate::txn_index::{TXN_INDEX_SUFFIX, TxnIndex, TxnIndexEntry};
use crate::types::Offset;

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";
/// How much recovery reads at once while scanning a segment.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

/// The file name of a segment file: the base offset padded to 20 digits, then the suffix.
pub(crate) fn segment_file_name(base_offset: Offset, suffix: &str) -> String {
    format!("{:020}{suffix}", base_offset.0)
}

/// Parses `00000000000000000042.log`-style names back into the base offset.
pub(crate) fn parse_segment_file_name(name: &str, suffix: &str) -> Option<Offset> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// Where a read stopped inside one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadProgress {
    /// The segment has no more batches; the read may continue in the next one.
    SegmentExhausted,
    /// The byte budget or the upper bound was reached.
    Stopped,
}

pub(crate) struct Segment {
    base_offset: Offset,
    /// The offset right after the last batch.
    next_offset: Offset,
    /// Shared with sync handles, which name the file to the test fault hook.
    log_path: Arc<Path>,
    log: Arc<File>,
    /// Bytes of whole batches in the file; appends write here.
    size_bytes: u64,
    offset_index: IndexFile<OffsetEntry>,
    time_index: IndexFile<TimeEntry>,
    /// ABORT markers in this segment (`txn_index`).
    txn_index: TxnIndex,
    /// Largest batch max timestamp in the segment, -1 if none.
    max_timestamp_ms: i64,
    /// Base offset of the first batch that reached `max_timestamp_ms`.
    offset_of_max_timestamp: Offset,
    bytes_since_index_entry: u64,
    /// When the segment's age starts for `segment.ms`: wall clock of the first append, or the
    /// first batch's max timestamp for a recovered segment (as Kafka does).
    roll_base_ms: Option<i64>,
}

fn segment_paths(dir: &Path, base_offset: Offset) -> [PathBuf; 3] {
    segment_paths_in_state(dir, base_offset, "")
}

/// The segment's three paths with `state` appended (the cleaner's `.cleaned`, `.swap`).
fn segment_paths_in_state(dir: &Path, base_offset: Offset, state: &str) -> [PathBuf; 3] {
    [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX]
        .map(|s| dir.join(format!("{}{state}", segment_file_name(base_offset, s))))
}

/// The segment's aborted-transaction index path, with `state` appended as for the others.
pub(crate) fn txn_index_path(dir: &Path, base_offset: Offset, state: &str) -> PathBuf {
    dir.join(format!(
        "{}{state}",
        segment_file_name(base_offset, TXN_INDEX_SUFFIX)
    ))
}

/// Reads a segment file in large chunks while recovery walks it batch by batch.
struct ChunkReader {
    chunk: Vec<u8>,
    chunk_start: u64,
    file_len: u64,
}

impl ChunkReader {
    fn new(file_len: u64) -> Self {
        ChunkReader {
            chunk: Vec::new(),
            chunk_start: 0,
            file_len,
        }
    }

    /// Returns `len` bytes at `pos`; the caller ensures they lie within the file.
    fn slice(&mut self, file: &File, pos: u64, len: usize) -> Result<&[u8], LogError> {
        let chunk_end = self.chunk_start + self.chunk.len() as u64;
        if pos < self.chunk_start || pos + len as u64 > chunk_end {
            let want = (len.max(SCAN_CHUNK_BYTES) as u64).min(self.file_len - pos);
            self.chunk.resize(want as usize, 0);
            file.read_exact_at(&mut self.chunk, pos)
                .context("read segment during recovery")?;
            self.chunk_start = pos;
        }
        let from = (pos - self.chunk_start) as usize;
        Ok(&self.chunk[from..from + len])
    }

    /// Returns the batch at `pos` as framed by its length field, or `CorruptBatch` when the
    /// length is nonsense or the batch is torn by the end of the file.
    fn batch_at(&mut self, file: &File, pos: u64) -> Result<&[u8], LogError> {
        let left = self.file_len - pos;
        if left < LOG_OVERHEAD_BYTES as u64 {
            return Err(LogError::corrupt(format!(
                "torn batch: {left} trailing bytes"
            )));
        }
        let head = self.slice(file, pos, LOG_OVERHEAD_BYTES)?;
        let length = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        let total = LOG_OVERHEAD_BYTES as i64 + i64::from(length);
        if total < BATCH_HEADER_BYTES as i64 {
            return Err(LogError::corrupt(format!(
                "batch length {length} is too small"
            )));
        }
        if total as u64 > left {
            return Err(LogError::corrupt(format!(
                "torn batch: needs {total} bytes, {left} left"
            )));
        }
        self.slice(file, pos, total as usize)
    }
}

impl Segment {
    /// Creates a new, empty segment, replacing any stray files with the same base offset.
    pub(crate) fn create(dir: &Path, base_offset: Offset) -> Result<Segment, LogError> {
        Self::create_in_state(dir, base_offset, "")
    }

    /// `create` with `state` appended to the file names: the log cleaner writes a segment
    /// as `.cleaned` files, which `cleaner::swap` later renames into service.
    pub(crate) fn create_in_state(
        dir: &Path,
        base_offset: Offset,
        state: &str,
    ) -> Result<Segment, LogError> {
        let [log_path, index_path, time_index_path] =
            segment_paths_in_state(dir, base_offset, state);
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .context("create segment file")?;
        crate::sync_probe::created(&log);
        Ok(Segment {
            base_offset,
            next_offset: base_offset,
            log_path: log_path.into(),
            log: Arc::new(log),
            size_bytes: 0,
            offset_index: IndexFile::create(&index_path)?,
            time_index: IndexFile::create(&time_index_path)?,
            txn_index: TxnIndex::create(txn_index_path(dir, base_offset, state))?,
            max_timestamp_ms: -1,
            offset_of_max_timestamp: base_offset,
            bytes_since_index_entry: 0,
            roll_base_ms: None,
        })
    }

    /// Opens an existing segment. With `full_scan`, or when an index is missing or malformed,
    /// every batch is validated from position 0, the file is truncated at the first torn or
    /// corrupt one and the indexes are rebuilt; otherwise only the batch headers after the
    /// last index entry are walked. Returns the segment and how many bytes were truncated.
    pub(crate) fn open(
        dir: &Path,
        base_offset: Offset,
        index_interval_bytes: u32,
        full_scan: bool,
    ) -> Result<(Segment, u64), LogError> {
        let [log_path, index_path, time_index_path] = segment_paths(dir, base_offset);
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .context("open segment file")?;
        let file_len = log.metadata().context("stat segment file")?.len();
        let loaded = if full_scan {
            None
        } else {
            match (
                IndexFile::load(&index_path, file_len)?,
                IndexFile::load(&time_index_path, file_len)?,
            ) {
                (Some(offsets), Some(times)) => Some((offsets, times)),
                _ => None,
            }
        };
        let needs_scan = loaded.is_none();
        let (offset_index, time_index) = match loaded {
            Some(indexes) => indexes,
            None => (
                IndexFile::create(&index_path)?,
                IndexFile::create(&time_index_path)?,
            ),
        };
        let mut segment = Segment {
            base_offset,
            next_offset: base_offset,
            log_path: log_path.into(),
            log: Arc::new(log),
            size_bytes: file_len,
            offset_index,
            time_index,
            // Loaded below, once the segment's end is known.
            txn_index: TxnIndex::create_unloaded(txn_index_path(dir, base_offset, "")),
            max_timestamp_ms: -1,
            offset_of_max_timestamp: base_offset,
            bytes_since_index_entry: 0,
            roll_base_ms: None,
        };
        let mut truncated_bytes = 0;
        let mut scan = needs_scan;
        if !needs_scan {
            match segment.load_tail() {
                Ok(()) => {}
                Err(err @ LogError::Io { .. }) => return Err(err),
                Err(err) => {
                    tracing::warn!(segment = %segment.log_path.display(), error = %err,
                        "segment does not match its index; scanning it");
                    scan = true;
                }
            }
        }
        if scan {
            truncated_bytes = segment.recover(index_interval_bytes)?;
        }
        segment.txn_index = TxnIndex::load(
            txn_index_path(dir, base_offset, ""),
            base_offset,
            segment.next_offset,
        )?;
        Ok((segment, truncated_bytes))
    }

    pub(crate) fn base_offset(&self) -> Offset {
        self.base_offset
    }

    pub(crate) fn next_offset(&self) -> Offset {
        self.next_offset
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    pub(crate) fn max_timestamp_ms(&self) -> i64 {
        self.max_timestamp_ms
    }

    /// When the segment's age began (see `roll_base_ms`), `None` while it is empty.
    pub(crate) fn first_append_ms(&self) -> Option<i64> {
        self.roll_base_ms
    }

    pub(crate) fn log_file(&self) -> Arc<File> {
        Arc::clone(&self.log)
    }

    /// The log file's path, shared (for sync handles).
    pub(crate) fn shared_path(&self) -> Arc<Path> {
        Arc::clone(&self.log_path)
    }

    /// A positioned read of whole `buf` at `pos`, behind the test fault hook (inert unless
    /// armed, see `test_faults`) so the disk-fault tests can make it fail with EIO.
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        test_faults::before_read(&self.log_path)?;
        self.log.read_exact_at(buf, pos)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the segment holds data older than `segment_ms` and should roll.
    pub(crate) fn is_older_than(&self, now_ms: i64, segment_ms: u64) -> bool {
        let segment_ms = i64::try_from(segment_ms).unwrap_or(i64::MAX);
        !self.is_empty()
            && self
                .roll_base_ms
                .is_some_and(|base| now_ms.saturating_sub(base) > segment_ms)
    }

    /// Offsets in a segment are stored relative to its base in 32 bits; the log rolls before
    /// a batch would overflow them.
    pub(crate) fn fits_relative(&self, last_offset: Offset) -> bool {
        last_offset.0 - self.base_offset.0 <= i64::from(u32::MAX)
    }

    fn relative(&self, offset: Offset) -> u32 {
        debug_assert!(self.fits_relative(offset) && offset >= self.base_offset);
        (offset.0 - self.base_offset.0) as u32
    }

    /// Appends one validated batch whose offsets were already assigned. Not fsynced.
    pub(crate) fn append(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        index_interval_bytes: u32,
        now_ms: i64,
    ) -> Result<(), LogError> {
        debug_assert!(
            header.base_offset >= self.next_offset,
            "offsets only move forward"
        );
        let position = self.size_bytes;
        if let Err(err) = self.log.write_all_at(batch, position) {
            // Drops any partial write so the file again ends with a whole batch.
            let _ = self.log.set_len(position);
            return Err(err).context("append batch to segment");
        }
        self.size_bytes += batch.len() as u64;
        self.track_batch(header, position, index_interval_bytes, now_ms)
    }

    /// Updates the in-memory state and the indexes for a batch now stored at `position`.
    fn track_batch(
        &mut self,
        header: &BatchHeader,
        position: u64,
        index_interval_bytes: u32,
        roll_base_ms: i64,
    ) -> Result<(), LogError> {
        if header.max_timestamp_ms > self.max_timestamp_ms {
            self.max_timestamp_ms = header.max_timestamp_ms;
            self.offset_of_max_timestamp = header.base_offset;
        }
        let index_due = self.bytes_since_index_entry >= u64::from(index_interval_bytes);
        if index_due {
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += header.total_size_bytes() as u64;
        self.next_offset = header.next_offset();
        self.roll_base_ms.get_or_insert(roll_base_ms);
        if index_due {
            let entry = OffsetEntry {
                relative_offset: self.relative(header.base_offset),
                position: u32::try_from(position).expect("segments roll before 4 GiB"),
            };
            self.offset_index.append(entry)?;
            self.maybe_append_time_entry()?;
        }
        Ok(())
    }

    /// Adds a time-index entry if the max timestamp grew since the last one.
    fn maybe_append_time_entry(&mut self) -> Result<(), LogError> {
        let grew = self
            .time_index
            .last()
            .is_none_or(|last| self.max_timestamp_ms > last.timestamp_ms);
        if grew && self.max_timestamp_ms >= 0 {
            let entry = TimeEntry {
                timestamp_ms: self.max_timestamp_ms,
                relative_offset: self.relative(self.offset_of_max_timestamp),
            };
            self.time_index.append(entry)?;
        }
        Ok(())
    }

    /// Reads and sanity-checks the header of the batch at `pos`; it must lie within the
    /// segment's whole batches.
    fn read_header_at(&self, pos: u64) -> Result<BatchHeader, LogError> {
        if pos + BATCH_HEADER_BYTES as u64 > self.size_bytes {
            return Err(LogError::corrupt(format!(
                "segment {}: truncated batch header at position {pos}",
                self.log_path.display()
            )));
        }
        let mut raw = [0u8; BATCH_HEADER_BYTES];
        self.read_exact_at(&mut raw, pos)
            .context("read batch header")?;
        let header = BatchHeader::parse(&raw).map_err(|err| {
            LogError::corrupt(format!(
                "segment {} position {pos}: {err}",
                self.log_path.display()
            ))
        })?;
        if pos + header.total_size_bytes() as u64 > self.size_bytes || header.last_offset_delta < 0
        {
            return Err(LogError::corrupt(format!(
                "segment {}: batch at position {pos} is malformed or runs past the end",
                self.log_path.display()
            )));
        }
        Ok(header)
    }

    /// Restores the in-memory state of a segment whose indexes are trusted, walking only the
    /// batch headers after the last offset-index entry.
    fn load_tail(&mut self) -> Result<(), LogError> {
        let (mut pos, mut expected) = match self.offset_index.last() {
            Some(entry) => (
                u64::from(entry.position),
                Offset(self.base_offset.0 + i64::from(entry.relative_offset)),
            ),
            None => (0, self.base_offset),
        };
        self.bytes_since_index_entry = self.size_bytes - pos;
        match self.time_index.last() {
            Some(entry) => {
                self.max_timestamp_ms = entry.timestamp_ms;
                self.offset_of_max_timestamp =
                    Offset(self.base_offset.0 + i64::from(entry.relative_offset));
            }
            None => {
                self.max_timestamp_ms = -1;
                self.offset_of_max_timestamp = self.base_offset;
            }
        }
        if self.size_bytes == 0 {
            self.roll_base_ms = None;
        } else if self.roll_base_ms.is_none() {
            self.roll_base_ms = Some(self.read_header_at(0)?.max_timestamp_ms);
        }
        while pos < self.size_bytes {
            let header = self.read_header_at(pos)?;
            // A cleaned segment has gaps where whole batches were removed; offsets still
            // only grow.
            if header.base_offset < expected {
                return Err(LogError::corrupt(format!(
                    "batch at position {pos} starts at offset {}, below {expected}",
                    header.base_offset
                )));
            }
            if header.max_timestamp_ms > self.max_timestamp_ms {
                self.max_timestamp_ms = header.max_timestamp_ms;
                self.offset_of_max_timestamp = header.base_offset;
            }
            expected = header.next_offset();
            pos += header.total_size_bytes() as u64;
        }
        self.next_offset = expected;
        Ok(())
    }

    /// Validates every batch from position 0, truncates the file at the first torn or corrupt
    /// one (or one whose offsets do not continue the segment) and rebuilds the indexes.
    /// Returns how many bytes were cut off.
    fn recover(&mut self, index_interval_bytes: u32) -> Result<u64, LogError> {
        let file_len = self.log.metadata().context("stat segment file")?.len();
        self.offset_index.truncate(0)?;
        self.time_index.truncate(0)?;
        self.next_offset = self.base_offset;
        self.max_timestamp_ms = -1;
        self.offset_of_max_timestamp = self.base_offset;
        self.bytes_since_index_entry = 0;
        self.roll_base_ms = None;
        self.offset_index.begin_deferred();
        self.time_index.begin_deferred();
        let log = Arc::clone(&self.log);
        let mut reader = ChunkReader::new(file_len);
        let mut pos = 0u64;
        let stop_reason = loop {
            if pos == file_len {
                break None;
            }
            // Stored batches, not a producer's: compaction leaves gaps in offset deltas and
            // empty batches, and followers store the leader's cleaned batches as they are.
            let header = match reader.batch_at(&log, pos).and_then(validate_stored_batch) {
                Ok(header) => header,
                Err(err @ LogError::Io { .. }) => return Err(err),
                Err(err) => break Some(err.to_string()),
            };
            if header.base_offset < self.next_offset {
                break Some(format!(
                    "batch starts at offset {}, below {}",
                    header.base_offset, self.next_offset
                ));
            }
            if !self.fits_relative(header.last_offset()) {
                break Some(format!(
                    "offset {} overflows the segment",
                    header.last_offset()
                ));
            }
            self.size_bytes = pos + header.total_size_bytes() as u64;
            self.track_batch(&header, pos, index_interval_bytes, header.max_timestamp_ms)?;
            pos = self.size_bytes;
        };
        self.size_bytes = pos;
        self.offset_index.end_deferred()?;
        self.time_index.end_deferred()?;
        if let Some(reason) = stop_reason {
            tracing::warn!(
                segment = %self.log_path.display(),
                position = pos,
                truncated_bytes = file_len - pos,
                next_offset = %self.next_offset,
                %reason,
                "truncating segment at the first torn or corrupt batch"
            );
            self.log.set_len(pos).context("truncate segment")?;
            self.log.sync_all().context("fsync truncated segment")?;
            crate::sync_probe::synced(&self.log);
        }
        Ok(file_len - pos)
    }

    /// Finds the batch containing `from`: its position and header, or `None` if `from` is
    /// beyond the segment.
    fn locate(&self, from: Offset) -> Result<Option<(u64, BatchHeader)>, LogError> {
        if from >= self.next_offset {
            return Ok(None);
        }
        let target = self.relative(from.max(self.base_offset));
        let mut pos = self
            .offset_index
            .floor(|e| e.relative_offset <= target)
            .map_or(0, |e| u64::from(e.position));
        while pos < self.size_bytes {
            let header = self.read_header_at(pos)?;
            if header.last_offset() >= from {
                return Ok(Some((pos, header)));
            }
            pos += header.total_size_bytes() as u64;
        }
        Ok(None)
    }

    /// Appends to `out` whole, CRC-verified batches starting with the one containing `from`,
    /// while `out` stays within `max_bytes` (the first batch of the whole read always fits)
    /// and batches end below `upper_bound`. A corrupt batch is never appended: the error is
    /// returned and `out` keeps the batches before it.
    pub(crate) fn read_into(
        &self,
        from: Offset,
        max_bytes: usize,
        upper_bound: Offset,
        out: &mut BytesMut,
    ) -> Result<ReadProgress, LogError> {
        let Some((mut pos, mut header)) = self.locate(from)? else {
            return Ok(ReadProgress::SegmentExhausted);
        };
        loop {
            if header.last_offset() >= upper_bound {
                return Ok(ReadProgress::Stopped);
            }
            let total = header.total_size_bytes();
            if !out.is_empty() && out.len() + total > max_bytes {
                return Ok(ReadProgress::Stopped);
            }
            let start = out.len();
            out.resize(start + total, 0);
            let checked = self
                .read_exact_at(&mut out[start..], pos)
                .context("read batch")
                .and_then(|()| verify_crc(&out[start..]));
            if let Err(err) = checked {
                out.truncate(start);
                return Err(match err {
                    LogError::CorruptBatch { reason } => LogError::corrupt(format!(
                        "segment {} position {pos}: {reason}",
                        self.log_path.display()
                    )),
                    other => other,
                });
            }
            pos += total as u64;
            if pos >= self.size_bytes {
                return Ok(ReadProgress::SegmentExhausted);
            }
            header = self.read_header_at(pos)?;
        }
    }

    /// Returns the first offset in this segment whose record timestamp is `>= timestamp_ms`.
    /// The time index gives a batch before which every batch is older than the target; the
    /// scan starts there.
    pub(crate) fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
        floor: Offset,
    ) -> Result<Option<Offset>, LogError> {
        if self.max_timestamp_ms < timestamp_ms {
            return Ok(None);
        }
        let mut pos = match self.time_index.floor(|e| e.timestamp_ms <= timestamp_ms) {
            Some(entry) => self
                .offset_index
                .floor(|e| e.relative_offset <= entry.relative_offset)
                .map_or(0, |e| u64::from(e.position)),
            None => 0,
        };
        while pos < self.size_bytes {
            let header = self.read_header_at(pos)?;
            let total = header.total_size_bytes();
            if header.max_timestamp_ms >= timestamp_ms && header.last_offset() >= floor {
                let mut batch = vec![0u8; total];
                self.read_exact_at(&mut batch, pos).context("read batch")?;
                verify_crc(&batch)?;
                let found = decode_records(&batch)?
                    .into_iter()
                    .find(|record| record.offset >= floor && record.timestamp_ms >= timestamp_ms);
                if let Some(record) = found {
                    return Ok(Some(record.offset));
                }
            }
            pos += total as u64;
        }
        Ok(None)
    }

    /// Prepares the segment to become read-only: records its final max timestamp in the time
    /// index. The caller then fsyncs it (`sync_all`), so that only the active segment can
    /// ever hold unflushed data.
    pub(crate) fn seal(&mut self) -> Result<(), LogError> {
        self.maybe_append_time_entry()
    }

    /// Fsyncs the log file and the indexes.
    pub(crate) fn sync_all(&self) -> Result<(), LogError> {
        test_faults::before_fsync(&self.log_path)
            .and_then(|()| self.log.sync_data())
            .context("fsync segment")?;
        crate::sync_probe::synced(&self.log);
        self.offset_index.sync()?;
        self.time_index.sync()?;
        self.txn_index.sync()
    }

    /// Records an aborted transaction whose marker this segment holds.
    pub(crate) fn append_aborted_txn(&mut self, entry: TxnIndexEntry) -> Result<(), LogError> {
        debug_assert!(
            entry.txn.last_offset >= self.base_offset,
            "a marker lies in its segment"
        );
        self.txn_index.append(entry)
    }

    /// The aborted transactions whose markers this segment holds, in marker order.
    pub(crate) fn aborted_txns(&self) -> &[TxnIndexEntry] {
        self.txn_index.entries()
    }

    /// Forgets the aborted transactions whose markers are at or after `from`.
    pub(crate) fn truncate_aborted_txns_from(&mut self, from: Offset) -> Result<(), LogError> {
        self.txn_index.truncate_from(from)
    }

    /// Removes the batch containing `offset` and everything after it (Kafka truncates to the
    /// start of that batch), then restores the in-memory state from what is left.
    pub(crate) fn truncate_to(&mut self, offset: Offset) -> Result<(), LogError> {
        let Some((pos, header)) = self.locate(offset)? else {
            return Ok(());
        };
        self.log.set_len(pos).context("truncate segment")?;
        self.log.sync_all().context("fsync truncated segment")?;
        crate::sync_probe::synced(&self.log);
        self.size_bytes = pos;
        let new_end = self.relative(header.base_offset);
        let keep_offsets = self
            .offset_index
            .entries()
            .partition_point(|e| u64::from(e.position) < pos);
        self.offset_index.truncate(keep_offsets)?;
        let keep_times = self
            .time_index
            .entries()
            .partition_point(|e| e.relative_offset < new_end);
        self.time_index.truncate(keep_times)?;
        self.load_tail()?;
        self.txn_index.truncate_from(self.next_offset)
    }

    /// Deletes the segment's files. Open handles (readers, sync handles) stay valid.
    pub(crate) fn delete_files(&self) -> Result<(), LogError> {
        remove_if_exists(&self.log_path)?;
        remove_if_exists(self.offset_index.path())?;
        remove_if_exists(self.time_index.path())?;
        remove_if_exists(self.txn_index.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{assign_offsets, validate_batch};
    use crate::builder::RecordBatchBuilder;
    use crate::types::LeaderEpoch;

    fn batch(base: Offset, count: u32, timestamp_ms: i64) -> BytesMut {
        let mut builder = RecordBatchBuilder::new(timestamp_ms);
        for i in 0..count {
            builder.push(
                timestamp_ms,
                None,
                Some(format!("value-{i}").as_bytes()),
                &[],
            );
        }
        let mut buf = builder.build();
        assign_offsets(&mut buf, base, LeaderEpoch(0));
        buf
    }

    fn append(segment: &mut Segment, count: u32, timestamp_ms: i64) -> Result<(), LogError> {
        let buf = batch(segment.next_offset(), count, timestamp_ms);
        let header = validate_batch(&buf)?;
        segment.append(&buf, &header, 100, 0)
    }

    #[test]
    fn segment_file_names_round_trip() {
        let name = segment_file_name(Offset(42), LOG_SUFFIX);
        assert_eq!(name, "00000000000000000042.log");
        assert_eq!(parse_segment_file_name(&name, LOG_SUFFIX), Some(Offset(42)));
        assert_eq!(parse_segment_file_name("42.log", LOG_SUFFIX), None);
        assert_eq!(parse_segment_file_name(&name, INDEX_SUFFIX), None);
    }

    #[test]
    fn given_appended_batches_when_reopened_with_trusted_indexes_then_state_matches()
    -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segment = Segment::create(dir.path(), Offset(10))?;
        for i in 0..20 {
            append(&mut segment, 3, 1_000 + i)?;
        }
        segment.seal()?;
        segment.sync_all()?;
        let (size, next, max) = (
            segment.size_bytes(),
            segment.next_offset(),
            segment.max_timestamp_ms(),
        );
        assert!(
            segment.offset_index.entries().len() > 1,
            "index interval of 100 bytes"
        );
        drop(segment);

        let (reopened, truncated) = Segment::open(dir.path(), Offset(10), 100, false)?;
        assert_eq!(truncated, 0);
        assert_eq!(reopened.size_bytes(), size);
        assert_eq!(reopened.next_offset(), next);
        assert_eq!(next, Offset(70));
        assert_eq!(reopened.max_timestamp_ms(), max);
        for target in 10..70 {
            let (_, header) = reopened
                .locate(Offset(target))?
                .expect("offset is in segment");
            assert!(header.base_offset.0 <= target && target <= header.last_offset().0);
        }
        assert_eq!(reopened.locate(Offset(70))?, None);
        Ok(())
    }

    #[test]
    fn truncation_restores_the_state_of_the_shorter_segment() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segment = Segment::create(dir.path(), Offset(0))?;
        for i in 0..10 {
            append(&mut segment, 2, 100 * i)?;
        }
        segment.truncate_to(Offset(9))?;
        assert_eq!(
            segment.next_offset(),
            Offset(8),
            "the whole batch holding 9 is cut"
        );
        assert_eq!(segment.max_timestamp_ms(), 300);
        append(&mut segment, 2, 5)?;
        assert_eq!(segment.next_offset(), Offset(10));
        Ok(())
    }
}
