//! Rebuilding one batch with only the records the cleaner keeps.
//!
//! As Kafka does for v2 batches, a rebuilt batch keeps its base offset and last offset
//! delta (so every surviving record keeps its offset, and the batch still ends where it
//! ended), its partition leader epoch, producer id, epoch and base sequence, max timestamp
//! and attribute bits; only the record count, length, CRC and records change. Records are
//! copied byte for byte, except that their timestamp delta moves when the batch gets a
//! delete horizon (below). A batch with no record left is dropped, or written as an empty
//! header when it must stay (the last batch of a cleaned segment, which fixes where the
//! segment ends).
//!
//! Tombstones follow KIP-534: the first cleaning that keeps a tombstone stamps its batch
//! with a delete horizon, `now + delete.retention.ms`, stored as the batch's base
//! timestamp with the `DELETE_HORIZON_FLAG` attribute bit; a later cleaning after the
//! horizon drops the tombstone. The horizon lives in the batch, so it survives restarts and
//! replication needs no extra state.

use bytes::BufMut;

use super::codec::{encode_records, records_of};
use super::{BatchContext, RecordRef};
use crate::batch::{BATCH_HEADER_BYTES, BatchHeader, CRC_START, LOG_OVERHEAD_BYTES};
use crate::error::LogError;
use crate::types::Offset;
use crate::varint::{Cursor, put_varlong, varlong_len};

/// Attribute bit: the base timestamp is the batch's delete horizon (Kafka's
/// `DELETE_HORIZON_FLAG_MASK`).
pub(crate) const DELETE_HORIZON_FLAG: i16 = 0x40;
/// Attribute bits naming the compression codec.
const COMPRESSION_BITS: i16 = 0x07;

/// What filtering did to a batch.
#[derive(Debug)]
pub(crate) enum Filtered {
    /// Every record stays and nothing changes: the original bytes are kept.
    Unchanged,
    /// Nothing of the batch stays.
    Dropped,
    /// The batch as rebuilt.
    Rewritten(Vec<u8>),
}

/// One record as stored, borrowing from the records section.
struct RawRecord<'a> {
    attributes: i8,
    timestamp_delta_ms: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    /// The record body from the offset delta on, copied unchanged.
    tail: &'a [u8],
}

/// Walks the stored records of a records section; every length is bounds-checked.
fn raw_records(records: &[u8], count: i32) -> Result<Vec<RawRecord<'_>>, LogError> {
    let mut cursor = Cursor::new(records);
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(records.len()));
    for _ in 0..count {
        let length = cursor.varint("record length")?;
        let length = usize::try_from(length)
            .map_err(|_| LogError::corrupt(format!("negative record length {length}")))?;
        let body = cursor.bytes(length, "record body")?;
        let mut rec = Cursor::new(body);
        let attributes = rec.i8("record attributes")?;
        let timestamp_delta_ms = rec.varlong("timestamp delta")?;
        let tail_start = rec.position();
        let offset_delta = rec.varint("offset delta")?;
        let key = rec.nullable_bytes("record key")?;
        let value = rec.nullable_bytes("record value")?;
        out.push(RawRecord {
            attributes,
            timestamp_delta_ms,
            offset_delta,
            key,
            value,
            tail: &body[tail_start..],
        });
    }
    if cursor.remaining() != 0 {
        return Err(LogError::corrupt(format!(
            "{} bytes follow the last of {count} records",
            cursor.remaining()
        )));
    }
    Ok(out)
}

/// Calls `visit` with the offset and key of every record of a batch (for the offset map).
pub(crate) fn for_each_key(
    batch: &[u8],
    header: &BatchHeader,
    max_decompressed_bytes: usize,
    mut visit: impl FnMut(Offset, Option<&[u8]>),
) -> Result<(), LogError> {
    if header.record_count == 0 {
        return Ok(());
    }
    let records = records_of(batch, header, max_decompressed_bytes)?;
    for record in raw_records(&records, header.record_count)? {
        visit(offset_of(header, record.offset_delta)?, record.key);
    }
    Ok(())
}

fn offset_of(header: &BatchHeader, delta: i32) -> Result<Offset, LogError> {
    if delta < 0 || delta > header.last_offset_delta {
        return Err(LogError::corrupt(format!(
            "offset delta {delta} is outside 0..={}",
            header.last_offset_delta
        )));
    }
    Ok(Offset(header.base_offset.0 + i64::from(delta)))
}

/// The delete horizon a batch carries, if stamped.
pub(crate) fn delete_horizon_ms(header: &BatchHeader) -> Option<i64> {
    (header.attributes & DELETE_HORIZON_FLAG != 0).then_some(header.base_timestamp_ms)
}

/// Filters the records of one stored, CRC-checked batch through `keep`. A kept tombstone in
/// a batch without a horizon gets `new_horizon_ms`; `horizon_out` is lowered to the horizon
/// of every batch that keeps a tombstone.
pub(crate) fn filter_batch(
    batch: &[u8],
    header: &BatchHeader,
    now_ms: i64,
    new_horizon_ms: i64,
    max_decompressed_bytes: usize,
    mut keep: impl FnMut(&BatchContext<'_>, &RecordRef<'_>) -> bool,
    horizon_out: &mut Option<i64>,
) -> Result<Filtered, LogError> {
    if header.record_count == 0 {
        return Ok(Filtered::Unchanged);
    }
    let stamped = delete_horizon_ms(header);
    let context = BatchContext {
        header,
        delete_horizon_passed: stamped.is_some_and(|horizon| now_ms >= horizon),
    };
    let records = records_of(batch, header, max_decompressed_bytes)?;
    let raw = raw_records(&records, header.record_count)?;
    let mut kept = Vec::with_capacity(raw.len());
    let mut kept_tombstone = false;
    for record in &raw {
        let view = RecordRef {
            offset: offset_of(header, record.offset_delta)?,
            key: record.key,
            value: record.value,
        };
        if keep(&context, &view) {
            kept_tombstone |= record.key.is_some() && record.value.is_none();
            kept.push(record);
        }
    }
    if kept.is_empty() {
        return Ok(Filtered::Dropped);
    }
    let horizon = match (kept_tombstone, stamped) {
        (false, _) => None,
        (true, Some(stamped)) => Some(stamped),
        (true, None) => Some(new_horizon_ms),
    };
    if let Some(horizon) = horizon {
        *horizon_out = Some(horizon_out.map_or(horizon, |h| h.min(horizon)));
    }
    let restamp = horizon.is_some() && stamped.is_none();
    if kept.len() == raw.len() && !restamp {
        return Ok(Filtered::Unchanged);
    }
    let (base_timestamp_ms, attributes) = if restamp {
        (new_horizon_ms, header.attributes | DELETE_HORIZON_FLAG)
    } else {
        (header.base_timestamp_ms, header.attributes)
    };
    let mut out_records = Vec::with_capacity(records.len());
    for record in &kept {
        let timestamp_ms = header
            .base_timestamp_ms
            .wrapping_add(record.timestamp_delta_ms);
        let delta = timestamp_ms.wrapping_sub(base_timestamp_ms);
        let body_len = 1 + varlong_len(delta) + record.tail.len();
        put_varlong(&mut out_records, body_len as i64);
        out_records.put_i8(record.attributes);
        put_varlong(&mut out_records, delta);
        out_records.put_slice(record.tail);
    }
    let payload = encode_records(header, out_records)?;
    let rebuilt = BatchHeader {
        attributes,
        base_timestamp_ms,
        record_count: kept.len() as i32,
        ..*header
    };
    Ok(Filtered::Rewritten(assemble(&rebuilt, &payload)))
}

/// The batch as an empty header: no records, no codec, the same offsets and producer
/// fields. Kafka writes the same to keep a producer's last sequence; here it also keeps
/// the end offset of a cleaned segment.
pub(crate) fn empty_batch(header: &BatchHeader) -> Vec<u8> {
    let empty = BatchHeader {
        attributes: header.attributes & !(COMPRESSION_BITS | DELETE_HORIZON_FLAG),
        record_count: 0,
        ..*header
    };
    assemble(&empty, &[])
}

/// Writes `header` (length and CRC computed) followed by `payload`.
fn assemble(header: &BatchHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + payload.len());
    out.put_i64(header.base_offset.0);
    out.put_i32((BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES + payload.len()) as i32);
    out.put_i32(header.partition_leader_epoch.0);
    out.put_i8(header.magic);
    out.put_u32(0);
    out.put_i16(header.attributes);
    out.put_i32(header.last_offset_delta);
    out.put_i64(header.base_timestamp_ms);
    out.put_i64(header.max_timestamp_ms);
    out.put_i64(header.producer_id);
    out.put_i16(header.producer_epoch);
    out.put_i32(header.base_sequence);
    out.put_i32(header.record_count);
    out.put_slice(payload);
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}
