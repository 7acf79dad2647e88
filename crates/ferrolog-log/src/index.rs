//! The two sparse indexes beside each segment: offset -> file position, and timestamp ->
//! offset. Entries live in memory for lookups and are appended to their files; the files are
//! a cache that recovery can always rebuild from the log, so a malformed one is discarded.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, LogError};

/// One fixed-size entry of an index file.
pub(crate) trait IndexEntry: Copy {
    const BYTES: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(raw: &[u8]) -> Self;
    /// Whether `self` may follow `prev` in a well-formed index.
    fn follows(&self, prev: &Self) -> bool;
    /// Whether the entry can point into a log file of `log_size_bytes`.
    fn fits(&self, log_size_bytes: u64) -> bool;
}

/// `(relative offset, file position)` of a batch start, one per `index_interval_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    /// Batch base offset minus the segment base offset.
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
}

impl IndexEntry for OffsetEntry {
    const BYTES: usize = 8;

    fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        out[4..8].copy_from_slice(&self.position.to_be_bytes());
    }

    fn decode(raw: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            position: u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]),
        }
    }

    fn follows(&self, prev: &Self) -> bool {
        self.relative_offset > prev.relative_offset && self.position > prev.position
    }

    fn fits(&self, log_size_bytes: u64) -> bool {
        u64::from(self.position) < log_size_bytes
    }
}

/// `(max timestamp so far, relative offset of the batch where it first appeared)`, added only
/// when the maximum grows. Every batch before that offset has a smaller max timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub(crate) timestamp_ms: i64,
    pub(crate) relative_offset: u32,
}

impl IndexEntry for TimeEntry {
    const BYTES: usize = 12;

    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out[8..12].copy_from_slice(&self.relative_offset.to_be_bytes());
    }

    fn decode(raw: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[0..8]);
        TimeEntry {
            timestamp_ms: i64::from_be_bytes(ts),
            relative_offset: u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]),
        }
    }

    fn follows(&self, prev: &Self) -> bool {
        self.timestamp_ms > prev.timestamp_ms && self.relative_offset > prev.relative_offset
    }

    fn fits(&self, _log_size_bytes: u64) -> bool {
        true
    }
}

/// An index file and its in-memory copy.
pub(crate) struct IndexFile<E> {
    path: PathBuf,
    file: File,
    entries: Vec<E>,
    /// How many entries are written to the file; the rest wait for `write_pending`.
    persisted: usize,
    /// While rebuilding, entries are only written at the end, in one write.
    deferred: bool,
}

fn open_rw(path: &Path, truncate: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .open(path)
}

impl<E: IndexEntry> IndexFile<E> {
    /// Creates an empty index, discarding any file already at `path`.
    pub(crate) fn create(path: &Path) -> Result<Self, LogError> {
        let file = open_rw(path, true).context("create index file")?;
        Ok(IndexFile {
            path: path.to_path_buf(),
            file,
            entries: Vec::new(),
            persisted: 0,
            deferred: false,
        })
    }

    /// Loads an index, or returns `None` (after a warning) when it is missing or malformed
    /// and must be rebuilt from the log.
    pub(crate) fn load(path: &Path, log_size_bytes: u64) -> Result<Option<Self>, LogError> {
        let raw = match std::fs::read(path) {
            Ok(raw) => raw,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "index file is missing; rebuilding it");
                return Ok(None);
            }
            Err(err) => return Err(err).context("read index file"),
        };
        if raw.len() % E::BYTES != 0 {
            tracing::warn!(path = %path.display(), len = raw.len(), "index file has a partial entry; rebuilding it");
            return Ok(None);
        }
        let entries: Vec<E> = raw.chunks_exact(E::BYTES).map(E::decode).collect();
        let ordered = entries.windows(2).all(|pair| pair[1].follows(&pair[0]));
        if !ordered || !entries.iter().all(|e| e.fits(log_size_bytes)) {
            tracing::warn!(path = %path.display(), "index file is malformed; rebuilding it");
            return Ok(None);
        }
        let file = open_rw(path, false).context("open index file")?;
        Ok(Some(IndexFile {
            path: path.to_path_buf(),
            file,
            persisted: entries.len(),
            entries,
            deferred: false,
        }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn entries(&self) -> &[E] {
        &self.entries
    }

    pub(crate) fn last(&self) -> Option<E> {
        self.entries.last().copied()
    }

    /// Appends an entry to memory and, unless deferred, to the file (not fsynced).
    pub(crate) fn append(&mut self, entry: E) -> Result<(), LogError> {
        self.entries.push(entry);
        if self.deferred {
            return Ok(());
        }
        self.write_pending()
    }

    /// Writes entries to memory only until `end_deferred`; a rebuild of a large segment then
    /// costs one write instead of one per entry.
    pub(crate) fn begin_deferred(&mut self) {
        self.deferred = true;
    }

    pub(crate) fn end_deferred(&mut self) -> Result<(), LogError> {
        self.deferred = false;
        self.write_pending()
    }

    fn write_pending(&mut self) -> Result<(), LogError> {
        let pending = &self.entries[self.persisted..];
        if pending.is_empty() {
            return Ok(());
        }
        let mut raw = vec![0u8; pending.len() * E::BYTES];
        for (entry, out) in pending.iter().zip(raw.chunks_exact_mut(E::BYTES)) {
            entry.encode(out);
        }
        self.file
            .write_all_at(&raw, (self.persisted * E::BYTES) as u64)
            .context("write index entries")?;
        self.persisted = self.entries.len();
        Ok(())
    }

    /// Returns the last entry for which `is_at_or_before` holds; entries are sorted, so the
    /// predicate holds on a prefix.
    pub(crate) fn floor(&self, is_at_or_before: impl Fn(&E) -> bool) -> Option<E> {
        let count = self.entries.partition_point(is_at_or_before);
        count.checked_sub(1).map(|i| self.entries[i])
    }

    /// Keeps only the first `len` entries.
    pub(crate) fn truncate(&mut self, len: usize) -> Result<(), LogError> {
        if len < self.entries.len() {
            self.entries.truncate(len);
            self.persisted = self.persisted.min(len);
            self.file
                .set_len((len * E::BYTES) as u64)
                .context("truncate index file")?;
        }
        Ok(())
    }

    pub(crate) fn sync(&self) -> Result<(), LogError> {
        self.file.sync_data().context("sync index file")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(relative_offset: u32, position: u32) -> OffsetEntry {
        OffsetEntry {
            relative_offset,
            position,
        }
    }

    #[test]
    fn floor_finds_the_last_entry_at_or_before_the_target() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        let mut index = IndexFile::<OffsetEntry>::create(&path)?;
        for (rel, pos) in [(10, 100), (20, 200), (30, 300)] {
            index.append(entry(rel, pos))?;
        }
        let floor = |target: u32| index.floor(|e| e.relative_offset <= target);
        assert_eq!(floor(5), None);
        assert_eq!(floor(10), Some(entry(10, 100)));
        assert_eq!(floor(29), Some(entry(20, 200)));
        assert_eq!(floor(1000), Some(entry(30, 300)));
        Ok(())
    }

    #[test]
    fn given_a_written_index_when_loaded_then_entries_match() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.timeindex");
        let mut index = IndexFile::<TimeEntry>::create(&path)?;
        let entries = [
            TimeEntry {
                timestamp_ms: 5,
                relative_offset: 1,
            },
            TimeEntry {
                timestamp_ms: 9,
                relative_offset: 4,
            },
        ];
        for e in entries {
            index.append(e)?;
        }
        let loaded = IndexFile::<TimeEntry>::load(&path, 0)?.expect("well formed");
        assert_eq!(loaded.entries(), &entries);
        Ok(())
    }

    #[test]
    fn malformed_or_missing_indexes_are_rejected() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        assert!(
            IndexFile::<OffsetEntry>::load(&path, 100)?.is_none(),
            "missing"
        );
        std::fs::write(&path, [0u8; 7]).expect("write");
        assert!(
            IndexFile::<OffsetEntry>::load(&path, 100)?.is_none(),
            "partial entry"
        );
        let mut index = IndexFile::<OffsetEntry>::create(&path)?;
        index.append(entry(2, 50))?;
        index.append(entry(1, 60))?;
        assert!(
            IndexFile::<OffsetEntry>::load(&path, 100)?.is_none(),
            "unordered"
        );
        index.truncate(1)?;
        assert!(
            IndexFile::<OffsetEntry>::load(&path, 40)?.is_none(),
            "beyond the log"
        );
        assert!(IndexFile::<OffsetEntry>::load(&path, 100)?.is_some());
        Ok(())
    }
}
