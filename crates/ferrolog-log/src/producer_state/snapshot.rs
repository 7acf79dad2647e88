//! Producer state snapshot files: `<offset>.snapshot` (the offset padded to 20 digits, like
//! segments) holds every producer entry as of that offset, i.e. after every batch below it.
//!
//! Binary, big endian, written atomically (`write_atomically`):
//!
//! | field               | type | notes                                              |
//! |---------------------|------|----------------------------------------------------|
//! | magic               | 4 B  | `FLPS`                                             |
//! | version             | u16  | 1                                                  |
//! | crc                 | u32  | CRC-32C of everything after this field             |
//! | offset              | i64  | must equal the file name's                         |
//! | producer count      | u32  |                                                    |
//! | per producer:       |      |                                                    |
//! |   producer id       | i64  |                                                    |
//! |   epoch             | i16  |                                                    |
//! |   last timestamp    | i64  |                                                    |
//! |   txn first offset  | i64  | -1 for none                                        |
//! |   batch count       | u8   | 0 to `PRODUCER_BATCHES_CACHED`, oldest first (0:   |
//! |                     |      | a marker moved the producer to a new epoch)        |
//! |   per batch:        |      | first seq i32, last seq i32, first offset i64,     |
//! |                     |      | last offset i64, max timestamp i64                 |
//!
//! Unlike Kafka's snapshot, which keeps only each producer's last batch, all cached batches
//! are kept, so a retry of any of the last five batches is still recognised after a
//! restart. A snapshot is never trusted blindly: a bad magic, version, CRC, offset or
//! length makes the reader refuse it, and the log then rebuilds from an older one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use bytes::BufMut;

use super::{BatchMetadata, PRODUCER_BATCHES_CACHED, ProducerEntry};
use crate::error::{IoContext, LogError};
use crate::fsutil::{remove_if_exists, write_atomically};
use crate::segment::{parse_segment_file_name, segment_file_name};
use crate::types::Offset;

pub(crate) const SNAPSHOT_SUFFIX: &str = ".snapshot";
const MAGIC: &[u8; 4] = b"FLPS";
const VERSION: u16 = 1;
/// Magic, version and CRC: the part the CRC does not cover.
const PREAMBLE_BYTES: usize = 4 + 2 + 4;
const ENTRY_FIXED_BYTES: usize = 8 + 2 + 8 + 8 + 1;
const BATCH_BYTES: usize = 4 + 4 + 8 + 8 + 8;
const NO_OFFSET: i64 = -1;
/// Named in `LogError::CorruptCheckpoint`.
const FILE_KIND: &str = "producer state snapshot";

/// Offsets of the snapshot files in `dir`.
pub(super) fn list(dir: &Path) -> Result<BTreeSet<Offset>, LogError> {
    let mut offsets = BTreeSet::new();
    for entry in std::fs::read_dir(dir).context("list producer state snapshots")? {
        let entry = entry.context("list producer state snapshots")?;
        if let Some(offset) = entry
            .file_name()
            .to_str()
            .and_then(|name| parse_segment_file_name(name, SNAPSHOT_SUFFIX))
        {
            offsets.insert(offset);
        }
    }
    Ok(offsets)
}

pub(super) fn write(
    dir: &Path,
    offset: Offset,
    producers: &BTreeMap<i64, ProducerEntry>,
) -> Result<(), LogError> {
    write_atomically(
        dir,
        &segment_file_name(offset, SNAPSHOT_SUFFIX),
        &encode(offset, producers),
    )
}

pub(super) fn read(dir: &Path, offset: Offset) -> Result<BTreeMap<i64, ProducerEntry>, LogError> {
    let bytes = std::fs::read(dir.join(segment_file_name(offset, SNAPSHOT_SUFFIX)))
        .context("read producer state snapshot")?;
    decode(&bytes, offset)
}

pub(super) fn remove(dir: &Path, offset: Offset) -> Result<(), LogError> {
    remove_if_exists(&dir.join(segment_file_name(offset, SNAPSHOT_SUFFIX)))
}

pub(crate) fn encode(offset: Offset, producers: &BTreeMap<i64, ProducerEntry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        PREAMBLE_BYTES + 12 + producers.len() * (ENTRY_FIXED_BYTES + 2 * BATCH_BYTES),
    );
    out.put_slice(MAGIC);
    out.put_u16(VERSION);
    out.put_u32(0);
    out.put_i64(offset.0);
    out.put_u32(producers.len() as u32);
    for (&producer_id, entry) in producers {
        out.put_i64(producer_id);
        out.put_i16(entry.epoch);
        out.put_i64(entry.last_timestamp_ms);
        out.put_i64(entry.current_txn_first_offset.map_or(NO_OFFSET, |o| o.0));
        out.put_u8(entry.batches.len() as u8);
        for batch in &entry.batches {
            out.put_i32(batch.first_seq);
            out.put_i32(batch.last_seq);
            out.put_i64(batch.first_offset.0);
            out.put_i64(batch.last_offset.0);
            out.put_i64(batch.max_timestamp_ms);
        }
    }
    let crc = crc32c::crc32c(&out[PREAMBLE_BYTES..]);
    out[6..10].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Reads big-endian fixed-width fields, refusing to read past the end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LogError> {
        let Some((head, rest)) = self.buf.split_first_chunk::<N>() else {
            return Err(corrupt(format!("truncated at {what}")));
        };
        self.buf = rest;
        Ok(*head)
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn u8(&mut self, what: &str) -> Result<u8, LogError> {
        Ok(u8::from_be_bytes(self.take(what)?))
    }

    fn i16(&mut self, what: &str) -> Result<i16, LogError> {
        Ok(i16::from_be_bytes(self.take(what)?))
    }

    fn i32(&mut self, what: &str) -> Result<i32, LogError> {
        Ok(i32::from_be_bytes(self.take(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, LogError> {
        Ok(u32::from_be_bytes(self.take(what)?))
    }

    fn i64(&mut self, what: &str) -> Result<i64, LogError> {
        Ok(i64::from_be_bytes(self.take(what)?))
    }
}

fn corrupt(reason: impl Into<String>) -> LogError {
    LogError::CorruptCheckpoint {
        file: FILE_KIND,
        reason: reason.into(),
    }
}

/// Parses a snapshot expected to be at `offset`, checking everything it can.
pub(crate) fn decode(
    bytes: &[u8],
    offset: Offset,
) -> Result<BTreeMap<i64, ProducerEntry>, LogError> {
    if bytes.len() < PREAMBLE_BYTES {
        return Err(corrupt(format!("{} bytes is too short", bytes.len())));
    }
    if &bytes[..4] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let version = u16::from_be_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(corrupt(format!("unknown version {version}")));
    }
    let stored = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    let computed = crc32c::crc32c(&bytes[PREAMBLE_BYTES..]);
    if stored != computed {
        return Err(corrupt(format!(
            "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let mut cursor = Reader {
        buf: &bytes[PREAMBLE_BYTES..],
    };
    let written_at = cursor.i64("snapshot offset")?;
    if written_at != offset.0 {
        return Err(corrupt(format!(
            "file named for offset {offset} holds the state at {written_at}"
        )));
    }
    let count = cursor.u32("producer count")? as usize;
    if count > cursor.remaining() / ENTRY_FIXED_BYTES {
        return Err(corrupt(format!(
            "{count} producers cannot fit in {} bytes",
            cursor.remaining()
        )));
    }
    let mut producers = BTreeMap::new();
    for _ in 0..count {
        let producer_id = cursor.i64("producer id")?;
        let epoch = cursor.i16("producer epoch")?;
        let last_timestamp_ms = cursor.i64("last timestamp")?;
        let txn_first_offset = cursor.i64("transaction first offset")?;
        let batch_count = usize::from(cursor.u8("batch count")?);
        if batch_count > PRODUCER_BATCHES_CACHED {
            return Err(corrupt(format!(
                "producer {producer_id} has {batch_count} batches, expected at most \
                 {PRODUCER_BATCHES_CACHED}"
            )));
        }
        if txn_first_offset != NO_OFFSET && !(0..offset.0).contains(&txn_first_offset) {
            return Err(corrupt(format!(
                "producer {producer_id} has a transaction open from offset \
                 {txn_first_offset} in a snapshot at {offset}"
            )));
        }
        let mut batches = VecDeque::with_capacity(batch_count);
        for _ in 0..batch_count {
            let batch = BatchMetadata {
                first_seq: cursor.i32("first sequence")?,
                last_seq: cursor.i32("last sequence")?,
                first_offset: Offset(cursor.i64("first offset")?),
                last_offset: Offset(cursor.i64("last offset")?),
                max_timestamp_ms: cursor.i64("batch max timestamp")?,
            };
            if batch.first_offset > batch.last_offset || batch.last_offset >= offset {
                return Err(corrupt(format!(
                    "producer {producer_id} has a batch at offsets {}..={} in a snapshot \
                     at {offset}",
                    batch.first_offset, batch.last_offset
                )));
            }
            batches.push_back(batch);
        }
        let entry = ProducerEntry {
            epoch,
            batches,
            last_timestamp_ms,
            current_txn_first_offset: (txn_first_offset != NO_OFFSET)
                .then_some(Offset(txn_first_offset)),
        };
        if producers.insert(producer_id, entry).is_some() {
            return Err(corrupt(format!("producer {producer_id} appears twice")));
        }
    }
    if cursor.remaining() != 0 {
        return Err(corrupt(format!(
            "{} bytes follow the last producer",
            cursor.remaining()
        )));
    }
    Ok(producers)
}
