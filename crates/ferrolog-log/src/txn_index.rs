//! The aborted-transaction index of one segment (`<base>.txnindex`, Kafka's
//! `TransactionIndex`): one entry per ABORT marker in the segment, so that a read_committed
//! fetch can tell its consumer which producers' batches to drop without the broker reading
//! the markers.
//!
//! Each entry is Kafka's, 34 bytes big-endian:
//!
//! | field              | type | notes                                               |
//! |--------------------|------|-----------------------------------------------------|
//! | version            | i16  | 0                                                   |
//! | producer id        | i64  |                                                     |
//! | first offset       | i64  | the aborted transaction's first offset              |
//! | last offset        | i64  | the ABORT marker's offset, inside this segment      |
//! | last stable offset | i64  | the LSO once the transaction was complete           |
//!
//! An entry lives in the segment holding its marker, so it goes with that segment
//! (retention, truncation, cleaning). The file is created on the first entry: most segments
//! never hold an abort. It is fsynced with its segment; entries after the last producer
//! state snapshot are rebuilt on open by replaying the markers, so a torn or corrupt tail
//! is cut at the last whole, well-formed entry and never trusted further.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, LogError};
use crate::fsutil::remove_if_exists;
use crate::types::Offset;

/// Suffix of a segment's aborted-transaction index file.
pub(crate) const TXN_INDEX_SUFFIX: &str = ".txnindex";
/// Size of one entry on disk.
pub const TXN_INDEX_ENTRY_BYTES: usize = 2 + 8 + 8 + 8 + 8;
/// The only entry version Kafka defines.
const ENTRY_VERSION: i16 = 0;

/// A transaction that ended with an ABORT marker: read_committed consumers drop the
/// producer's transactional batches from `first_offset` up to the marker at `last_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: Offset,
    pub last_offset: Offset,
}

/// One entry of a `.txnindex` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnIndexEntry {
    pub txn: AbortedTxn,
    pub last_stable_offset: Offset,
}

impl TxnIndexEntry {
    fn encode(&self) -> [u8; TXN_INDEX_ENTRY_BYTES] {
        let mut out = [0u8; TXN_INDEX_ENTRY_BYTES];
        out[0..2].copy_from_slice(&ENTRY_VERSION.to_be_bytes());
        out[2..10].copy_from_slice(&self.txn.producer_id.to_be_bytes());
        out[10..18].copy_from_slice(&self.txn.first_offset.0.to_be_bytes());
        out[18..26].copy_from_slice(&self.txn.last_offset.0.to_be_bytes());
        out[26..34].copy_from_slice(&self.last_stable_offset.0.to_be_bytes());
        out
    }

    /// Parses one entry; `None` for an unknown version or offsets out of order.
    fn decode(raw: &[u8; TXN_INDEX_ENTRY_BYTES]) -> Option<TxnIndexEntry> {
        let i64_at = |at: usize| {
            let mut field = [0u8; 8];
            field.copy_from_slice(&raw[at..at + 8]);
            i64::from_be_bytes(field)
        };
        if i16::from_be_bytes([raw[0], raw[1]]) != ENTRY_VERSION {
            return None;
        }
        let entry = TxnIndexEntry {
            txn: AbortedTxn {
                producer_id: i64_at(2),
                first_offset: Offset(i64_at(10)),
                last_offset: Offset(i64_at(18)),
            },
            last_stable_offset: Offset(i64_at(26)),
        };
        let ordered = entry.txn.producer_id >= 0
            && 0 <= entry.txn.first_offset.0
            && entry.txn.first_offset <= entry.txn.last_offset;
        ordered.then_some(entry)
    }
}

/// Decodes an index file's bytes: the longest prefix of whole, well-formed entries whose
/// marker offsets strictly increase. Never panics; whatever follows the prefix (a torn
/// write, garbage) is what the caller cuts off.
pub fn decode_txn_index(bytes: &[u8]) -> Vec<TxnIndexEntry> {
    let mut entries: Vec<TxnIndexEntry> = Vec::with_capacity(bytes.len() / TXN_INDEX_ENTRY_BYTES);
    for raw in bytes.chunks_exact(TXN_INDEX_ENTRY_BYTES) {
        let Ok(raw) = <&[u8; TXN_INDEX_ENTRY_BYTES]>::try_from(raw) else {
            break;
        };
        let Some(entry) = TxnIndexEntry::decode(raw) else {
            break;
        };
        if entries
            .last()
            .is_some_and(|prev| prev.txn.last_offset >= entry.txn.last_offset)
        {
            break;
        }
        entries.push(entry);
    }
    entries
}

/// Encodes entries as an index file holds them.
pub fn encode_txn_index(entries: &[TxnIndexEntry]) -> Vec<u8> {
    entries.iter().flat_map(TxnIndexEntry::encode).collect()
}

/// The aborted-transaction index of one segment: entries in memory, appended to the file.
pub(crate) struct TxnIndex {
    path: PathBuf,
    entries: Vec<TxnIndexEntry>,
    /// Open once the file exists.
    file: Option<File>,
}

impl TxnIndex {
    /// A new, empty index at `path`, removing any stale file there (as `Segment::create`
    /// replaces stray segment files).
    pub(crate) fn create(path: PathBuf) -> Result<TxnIndex, LogError> {
        remove_if_exists(&path)?;
        Ok(TxnIndex {
            path,
            entries: Vec::new(),
            file: None,
        })
    }

    /// A placeholder for an index `load` replaces; touches no file.
    pub(crate) fn create_unloaded(path: PathBuf) -> TxnIndex {
        TxnIndex {
            path,
            entries: Vec::new(),
            file: None,
        }
    }

    /// Loads the index of a segment holding offsets `base..next`: keeps the well-formed
    /// prefix whose markers lie in that range, and cuts the file to it.
    pub(crate) fn load(path: PathBuf, base: Offset, next: Offset) -> Result<TxnIndex, LogError> {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                return Ok(TxnIndex {
                    path,
                    entries: Vec::new(),
                    file: None,
                });
            }
            Err(err) => return Err(err).context("read transaction index"),
        };
        let mut entries = decode_txn_index(&bytes);
        let in_segment = entries
            .iter()
            .take_while(|e| e.txn.last_offset >= base && e.txn.last_offset < next)
            .count();
        entries.truncate(in_segment);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .context("open transaction index")?;
        let kept_bytes = (entries.len() * TXN_INDEX_ENTRY_BYTES) as u64;
        if kept_bytes != bytes.len() as u64 {
            tracing::warn!(file = %path.display(), kept_entries = entries.len(),
                cut_bytes = bytes.len() as u64 - kept_bytes,
                "cutting the transaction index at its last whole entry within the segment");
            file.set_len(kept_bytes)
                .context("truncate transaction index")?;
        }
        Ok(TxnIndex {
            path,
            entries,
            file: Some(file),
        })
    }

    pub(crate) fn entries(&self) -> &[TxnIndexEntry] {
        &self.entries
    }

    /// Appends an entry (not fsynced). An entry whose marker is not after the last one is
    /// already recorded (a replay over indexed markers) and is skipped.
    pub(crate) fn append(&mut self, entry: TxnIndexEntry) -> Result<(), LogError> {
        if self
            .entries
            .last()
            .is_some_and(|last| last.txn.last_offset >= entry.txn.last_offset)
        {
            return Ok(());
        }
        let position = (self.entries.len() * TXN_INDEX_ENTRY_BYTES) as u64;
        let file = match &mut self.file {
            Some(file) => file,
            empty => empty.insert(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&self.path)
                    .context("create transaction index")?,
            ),
        };
        if let Err(err) = file.write_all_at(&entry.encode(), position) {
            let _ = file.set_len(position);
            return Err(err).context("append to transaction index");
        }
        self.entries.push(entry);
        Ok(())
    }

    /// Removes the entries whose marker is at or after `end` (a truncation, or markers that
    /// a replay is about to record again).
    pub(crate) fn truncate_from(&mut self, end: Offset) -> Result<(), LogError> {
        let keep = self.entries.partition_point(|e| e.txn.last_offset < end);
        if keep == self.entries.len() {
            return Ok(());
        }
        self.entries.truncate(keep);
        if let Some(file) = &self.file {
            file.set_len((keep * TXN_INDEX_ENTRY_BYTES) as u64)
                .context("truncate transaction index")?;
        }
        Ok(())
    }

    pub(crate) fn sync(&self) -> Result<(), LogError> {
        match &self.file {
            Some(file) => file.sync_data().context("fsync transaction index"),
            None => Ok(()),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(producer_id: i64, first: i64, last: i64) -> TxnIndexEntry {
        TxnIndexEntry {
            txn: AbortedTxn {
                producer_id,
                first_offset: Offset(first),
                last_offset: Offset(last),
            },
            last_stable_offset: Offset(last + 1),
        }
    }

    #[test]
    fn an_entry_is_kafkas_34_bytes_big_endian() {
        let bytes = encode_txn_index(&[entry(7, 3, 9)]);
        assert_eq!(bytes.len(), 34);
        assert_eq!(&bytes[0..2], &[0, 0]);
        assert_eq!(&bytes[2..10], &7i64.to_be_bytes());
        assert_eq!(&bytes[10..18], &3i64.to_be_bytes());
        assert_eq!(&bytes[18..26], &9i64.to_be_bytes());
        assert_eq!(&bytes[26..34], &10i64.to_be_bytes());
        assert_eq!(decode_txn_index(&bytes), vec![entry(7, 3, 9)]);
    }

    #[test]
    fn decoding_stops_at_a_torn_tail_a_bad_version_or_offsets_going_back() {
        let good = [entry(1, 0, 4), entry(2, 1, 8)];
        let mut bytes = encode_txn_index(&good);
        bytes.extend_from_slice(&[0, 0, 1]);
        assert_eq!(decode_txn_index(&bytes), good.to_vec());
        let mut bad_version = encode_txn_index(&[entry(1, 0, 4), entry(3, 9, 12)]);
        bad_version[35] = 1;
        assert_eq!(decode_txn_index(&bad_version), vec![entry(1, 0, 4)]);
        let backwards = encode_txn_index(&[entry(1, 0, 4), entry(2, 0, 4)]);
        assert_eq!(decode_txn_index(&backwards), vec![entry(1, 0, 4)]);
        let inverted = encode_txn_index(&[entry(1, 5, 4)]);
        assert!(decode_txn_index(&inverted).is_empty());
    }

    #[test]
    fn a_loaded_index_keeps_entries_within_its_segment_and_cuts_the_file() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("00000000000000000010.txnindex");
        let mut index = TxnIndex::create(path.clone())?;
        assert!(!path.exists(), "created on the first entry only");
        for e in [entry(1, 10, 12), entry(2, 11, 15), entry(1, 16, 20)] {
            index.append(e)?;
        }
        index.append(entry(1, 10, 12))?;
        assert_eq!(
            index.entries().len(),
            3,
            "an entry already recorded is skipped"
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &[0xff; 20]))
            .expect("append garbage");
        let loaded = TxnIndex::load(path.clone(), Offset(10), Offset(16))?;
        assert_eq!(loaded.entries(), &[entry(1, 10, 12), entry(2, 11, 15)]);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 68);
        let mut loaded = loaded;
        loaded.truncate_from(Offset(13))?;
        assert_eq!(loaded.entries(), &[entry(1, 10, 12)]);
        loaded.sync()?;
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 34);
        Ok(())
    }
}
