//! Kafka RecordBatch v2 (magic 2): the fixed header, validation, CRC and offset assignment.
//!
//! Layout of the 61-byte header (big endian):
//!
//! | bytes  | field                  | covered by CRC |
//! |--------|------------------------|----------------|
//! | 0..8   | base offset            | no             |
//! | 8..12  | batch length           | no             |
//! | 12..16 | partition leader epoch | no             |
//! | 16     | magic (2)              | no             |
//! | 17..21 | CRC-32C                | no             |
//! | 21..23 | attributes             | yes            |
//! | 23..27 | last offset delta      | yes            |
//! | 27..35 | base timestamp         | yes            |
//! | 35..43 | max timestamp          | yes            |
//! | 43..51 | producer id            | yes            |
//! | 51..53 | producer epoch         | yes            |
//! | 53..57 | base sequence          | yes            |
//! | 57..61 | record count           | yes            |
//!
//! Because the base offset and leader epoch sit outside the CRC, the log can stamp them on
//! append without recomputing it.

use std::borrow::Cow;

use crate::compression::{Compression, DEFAULT_MAX_DECOMPRESSED_BYTES, decompress};
use crate::error::LogError;
use crate::types::{LeaderEpoch, Offset};
use crate::varint::Cursor;

/// Size of the fixed batch header; records follow it.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before the batch length field counts from (base offset + length).
pub(crate) const LOG_OVERHEAD_BYTES: usize = 12;
/// The only batch format this engine reads and writes.
pub(crate) const MAGIC_V2: i8 = 2;
/// The CRC covers everything from the attributes to the end of the batch.
pub(crate) const CRC_START: usize = 21;
/// Attribute bit saying the broker replaced record timestamps by the batch max timestamp.
const LOG_APPEND_TIME_FLAG: i16 = 0x08;
/// Attribute bit of a batch written inside a transaction (Kafka's `TRANSACTIONAL_FLAG_MASK`).
pub(crate) const TRANSACTIONAL_FLAG: i16 = 0x10;
/// Attribute bit of a control batch: a transaction marker (Kafka's `CONTROL_FLAG_MASK`).
pub(crate) const CONTROL_FLAG: i16 = 0x20;

/// Parsed fixed header of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    pub batch_length: i32,
    pub partition_leader_epoch: LeaderEpoch,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i64(buf: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(raw)
}

fn be_i32(buf: &[u8], at: usize) -> i32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&buf[at..at + 4]);
    i32::from_be_bytes(raw)
}

fn be_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

impl BatchHeader {
    /// Parses the fixed header from the start of `buf` (at least 61 bytes). Rejects a magic other
    /// than 2 and a batch length too small to hold the header, so that `total_size_bytes` can
    /// be trusted to make progress when walking a file, and a base offset whose last offset
    /// overflows, so that `last_offset` and `next_offset` cannot.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, LogError> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(LogError::corrupt(format!(
                "batch header needs {BATCH_HEADER_BYTES} bytes, got {}",
                buf.len()
            )));
        }
        let header = BatchHeader {
            base_offset: Offset(be_i64(buf, 0)),
            batch_length: be_i32(buf, 8),
            partition_leader_epoch: LeaderEpoch(be_i32(buf, 12)),
            magic: buf[16] as i8,
            crc: be_i32(buf, 17) as u32,
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp_ms: be_i64(buf, 27),
            max_timestamp_ms: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        };
        if header.magic != MAGIC_V2 {
            return Err(LogError::corrupt(format!(
                "unsupported magic {}, expected {MAGIC_V2}",
                header.magic
            )));
        }
        if (header.batch_length as i64) < (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i64 {
            return Err(LogError::corrupt(format!(
                "batch length {} is smaller than the header",
                header.batch_length
            )));
        }
        // The base offset is outside the CRC, so a flipped bit passes it: refuse offsets that
        // `last_offset` and `next_offset` cannot compute.
        let next_offset = header
            .base_offset
            .0
            .checked_add(i64::from(header.last_offset_delta))
            .and_then(|last| last.checked_add(1));
        if next_offset.is_none() {
            return Err(LogError::corrupt(format!(
                "base offset {} with last offset delta {} overflows",
                header.base_offset, header.last_offset_delta
            )));
        }
        Ok(header)
    }

    /// Size of the whole batch: the 12 bytes of base offset and length, plus the length.
    pub fn total_size_bytes(&self) -> usize {
        LOG_OVERHEAD_BYTES + self.batch_length.max(0) as usize
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset.0 + i64::from(self.last_offset_delta))
    }

    /// Offset right after the batch.
    pub fn next_offset(&self) -> Offset {
        self.last_offset().next()
    }

    /// The compression codec named by the attributes; ids 5 to 7 are an error.
    pub fn compression(&self) -> Result<Compression, LogError> {
        Compression::from_attributes(self.attributes)
    }

    /// Whether the broker stamped the batch with its append time, which then replaces every
    /// record's own timestamp.
    pub fn has_log_append_time(&self) -> bool {
        self.attributes & LOG_APPEND_TIME_FLAG != 0
    }

    /// Whether the batch belongs to a transaction: its records are visible to read_committed
    /// consumers only once the transaction's COMMIT marker is in the log.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_FLAG != 0
    }

    /// Whether the batch is a control batch (a transaction marker, see `control`): it holds
    /// no data for consumers.
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG != 0
    }
}

/// Checks the CRC of exactly one batch: `buf` must hold the whole batch and nothing else.
/// This is what the read path runs before serving bytes from disk.
pub fn verify_crc(buf: &[u8]) -> Result<BatchHeader, LogError> {
    let header = BatchHeader::parse(buf)?;
    if header.total_size_bytes() != buf.len() {
        return Err(LogError::corrupt(format!(
            "batch length says {} bytes but the buffer holds {}",
            header.total_size_bytes(),
            buf.len()
        )));
    }
    let computed = crc32c::crc32c(&buf[CRC_START..]);
    if computed != header.crc {
        return Err(LogError::corrupt(format!(
            "CRC mismatch at base offset {}: stored {:#010x}, computed {computed:#010x}",
            header.base_offset, header.crc
        )));
    }
    Ok(header)
}

/// A record as laid out in a batch, borrowing from it. Walking records this way costs no
/// allocation, which keeps validation cheap on the produce path.
pub(crate) struct RecordView<'a> {
    pub(crate) timestamp_delta_ms: i64,
    pub(crate) offset_delta: i32,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) header_count: i32,
    /// The encoded headers, already bounds-checked by the walk.
    pub(crate) headers: &'a [u8],
}

/// Walks the `count` records in `records`, checking every length against the bounds, and calls
/// `visit` on each. Fails if the records do not fill `records` exactly.
pub(crate) fn walk_records<'a>(
    records: &'a [u8],
    count: i32,
    mut visit: impl FnMut(RecordView<'a>) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let mut cursor = Cursor::new(records);
    for index in 0..count {
        if cursor.remaining() == 0 {
            return Err(LogError::corrupt(format!(
                "record count is {count} but the batch holds only {index} records"
            )));
        }
        let length = cursor.varint("record length")?;
        if length < 0 {
            return Err(LogError::corrupt(format!(
                "negative record length {length}"
            )));
        }
        let body = cursor.bytes(length as usize, "record body")?;
        let mut rec = Cursor::new(body);
        let _attributes = rec.i8("record attributes")?;
        let timestamp_delta_ms = rec.varlong("timestamp delta")?;
        let offset_delta = rec.varint("offset delta")?;
        let key = rec.nullable_bytes("record key")?;
        let value = rec.nullable_bytes("record value")?;
        let header_count = rec.varint("header count")?;
        if header_count < 0 {
            return Err(LogError::corrupt(format!(
                "negative header count {header_count}"
            )));
        }
        let headers_start = rec.position();
        for _ in 0..header_count {
            let key_len = rec.varint("header key length")?;
            if key_len < 0 {
                return Err(LogError::corrupt("header key is null"));
            }
            let key = rec.bytes(key_len as usize, "header key")?;
            if std::str::from_utf8(key).is_err() {
                return Err(LogError::corrupt("header key is not UTF-8"));
            }
            rec.nullable_bytes("header value")?;
        }
        if rec.remaining() != 0 {
            return Err(LogError::corrupt(format!(
                "record {index} has {} bytes beyond its fields",
                rec.remaining()
            )));
        }
        visit(RecordView {
            timestamp_delta_ms,
            offset_delta,
            key,
            value,
            header_count,
            headers: &body[headers_start..],
        })?;
    }
    if cursor.remaining() != 0 {
        return Err(LogError::corrupt(format!(
            "{} bytes follow the last of {count} records",
            cursor.remaining()
        )));
    }
    Ok(())
}

/// The records section of a batch (everything after the header), decompressed if the batch is
/// compressed: borrowed for an uncompressed batch, at most `max_bytes` long otherwise.
pub(crate) fn records_section<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
    max_bytes: usize,
) -> Result<Cow<'a, [u8]>, LogError> {
    let raw = &batch[BATCH_HEADER_BYTES..];
    match header.compression()? {
        Compression::None => Ok(Cow::Borrowed(raw)),
        codec => Ok(Cow::Owned(decompress(codec, raw, max_bytes)?)),
    }
}

/// Fully validates one batch from a client or peer before it is stored: magic 2, length equal
/// to `buf.len()`, CRC, a known codec, at least one record, record count and offset deltas
/// consistent (delta `i` for record `i`), and every varint and length in bounds. A compressed
/// batch is decompressed (at most `DEFAULT_MAX_DECOMPRESSED_BYTES`) to check its records, as
/// Kafka's broker does; it is stored as sent.
pub fn validate_batch(buf: &[u8]) -> Result<BatchHeader, LogError> {
    validate_batch_within(buf, DEFAULT_MAX_DECOMPRESSED_BYTES)
}

/// `validate_batch` with an explicit bound on the decompressed records.
pub fn validate_batch_within(
    buf: &[u8],
    max_decompressed_bytes: usize,
) -> Result<BatchHeader, LogError> {
    let header = verify_crc(buf)?;
    if header.record_count < 1 {
        return Err(LogError::corrupt(format!(
            "record count {} is not positive",
            header.record_count
        )));
    }
    if header.last_offset_delta != header.record_count - 1 {
        return Err(LogError::corrupt(format!(
            "last offset delta {} does not match record count {}",
            header.last_offset_delta, header.record_count
        )));
    }
    let records = records_section(buf, &header, max_decompressed_bytes)?;
    let mut expected_delta = 0i32;
    walk_records(&records, header.record_count, |record| {
        if record.offset_delta != expected_delta {
            return Err(LogError::corrupt(format!(
                "record {expected_delta} has offset delta {}",
                record.offset_delta
            )));
        }
        expected_delta += 1;
        Ok(())
    })?;
    Ok(header)
}

/// Stamps the base offset and partition leader epoch on a batch, in place. Neither is covered
/// by the CRC, so the batch stays valid.
///
/// # Panics
///
/// Panics if `buf` is shorter than the batch header; callers validate the batch first.
pub fn assign_offsets(buf: &mut [u8], base_offset: Offset, epoch: LeaderEpoch) {
    buf[0..8].copy_from_slice(&base_offset.0.to_be_bytes());
    buf[12..16].copy_from_slice(&epoch.0.to_be_bytes());
}

/// Iterates the whole batches of a buffer of concatenated batches (a fetch response, a
/// segment). Each item has its CRC verified; a truncated or corrupt batch yields one `Err`,
/// after which the iterator stops.
pub struct BatchIter<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> BatchIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BatchIter { buf, failed: false }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let result = next_batch(self.buf);
        match &result {
            Ok((_, batch)) => self.buf = &self.buf[batch.len()..],
            Err(_) => self.failed = true,
        }
        Some(result)
    }
}

fn next_batch(buf: &[u8]) -> Result<(BatchHeader, &[u8]), LogError> {
    if buf.len() < LOG_OVERHEAD_BYTES {
        return Err(LogError::corrupt(format!(
            "truncated batch: {} trailing bytes",
            buf.len()
        )));
    }
    let length = be_i32(buf, 8);
    let total = LOG_OVERHEAD_BYTES as i64 + i64::from(length);
    if total < BATCH_HEADER_BYTES as i64 {
        return Err(LogError::corrupt(format!(
            "batch length {length} is smaller than the header"
        )));
    }
    if total > buf.len() as i64 {
        return Err(LogError::corrupt(format!(
            "truncated batch: needs {total} bytes, {} left",
            buf.len()
        )));
    }
    let batch = &buf[..total as usize];
    let header = verify_crc(batch)?;
    Ok((header, batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::RecordBatchBuilder;

    fn one_record_batch() -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
        builder.push(1_700_000_000_000, Some(b"key"), Some(b"value"), &[]);
        builder.build().to_vec()
    }

    fn rewrite_crc(buf: &mut [u8]) {
        let crc = crc32c::crc32c(&buf[CRC_START..]);
        buf[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn known_answer_layout_of_a_one_record_batch() {
        let buf = one_record_batch();
        // Record: length, attributes, ts delta 0, offset delta 0, key len 3 ("key"),
        // value len 5 ("value"), header count 0.
        let record: Vec<u8> = [
            vec![0x1c, 0x00, 0x00, 0x00, 0x06],
            b"key".to_vec(),
            vec![0x0a],
            b"value".to_vec(),
            vec![0x00],
        ]
        .concat();
        assert_eq!(record.len(), 15);
        assert_eq!(buf.len(), BATCH_HEADER_BYTES + record.len());
        assert_eq!(&buf[0..8], &0i64.to_be_bytes(), "base offset");
        assert_eq!(
            &buf[8..12],
            &((buf.len() - 12) as i32).to_be_bytes(),
            "length"
        );
        assert_eq!(
            &buf[12..16],
            &(-1i32).to_be_bytes(),
            "partition leader epoch"
        );
        assert_eq!(buf[16], 2, "magic");
        assert_eq!(
            &buf[17..21],
            &crc32c::crc32c(&buf[21..]).to_be_bytes(),
            "crc"
        );
        assert_eq!(&buf[21..23], &0i16.to_be_bytes(), "attributes");
        assert_eq!(&buf[23..27], &0i32.to_be_bytes(), "last offset delta");
        assert_eq!(
            &buf[27..35],
            &1_700_000_000_000i64.to_be_bytes(),
            "base timestamp"
        );
        assert_eq!(
            &buf[35..43],
            &1_700_000_000_000i64.to_be_bytes(),
            "max timestamp"
        );
        assert_eq!(&buf[43..51], &(-1i64).to_be_bytes(), "producer id");
        assert_eq!(&buf[51..53], &(-1i16).to_be_bytes(), "producer epoch");
        assert_eq!(&buf[53..57], &(-1i32).to_be_bytes(), "base sequence");
        assert_eq!(&buf[57..61], &1i32.to_be_bytes(), "record count");
        assert_eq!(&buf[61..], &record[..], "record");
        let header = validate_batch(&buf).expect("valid batch");
        assert_eq!(header.crc, crc32c::crc32c(&buf[21..]));
        assert_eq!(header.total_size_bytes(), buf.len());
        assert_eq!(header.next_offset(), Offset(1));
    }

    #[test]
    fn crc_detects_any_single_bit_flip_in_covered_bytes() {
        let buf = one_record_batch();
        for byte in CRC_START..buf.len() {
            for bit in 0..8 {
                let mut flipped = buf.clone();
                flipped[byte] ^= 1 << bit;
                assert!(
                    verify_crc(&flipped).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn assigning_offsets_keeps_the_batch_valid() {
        let mut buf = one_record_batch();
        assign_offsets(&mut buf, Offset(1234), LeaderEpoch(7));
        let header = validate_batch(&buf).expect("still valid");
        assert_eq!(header.base_offset, Offset(1234));
        assert_eq!(header.partition_leader_epoch, LeaderEpoch(7));
    }

    #[test]
    fn validate_rejects_bad_magic() {
        let mut buf = one_record_batch();
        buf[16] = 1;
        assert!(matches!(
            validate_batch(&buf),
            Err(LogError::CorruptBatch { .. })
        ));
    }

    #[test]
    fn validate_rejects_unknown_codecs_and_records_that_are_not_compressed_as_claimed() {
        let mut buf = one_record_batch();
        buf[22] |= 0x05;
        rewrite_crc(&mut buf);
        assert!(matches!(
            validate_batch(&buf),
            Err(LogError::UnsupportedCompression { codec: 5 })
        ));
        let mut buf = one_record_batch();
        buf[22] |= 0x02;
        rewrite_crc(&mut buf);
        assert!(matches!(
            validate_batch(&buf),
            Err(LogError::CorruptBatch { .. })
        ));
    }

    #[test]
    fn compressed_batches_validate_and_keep_their_bytes() {
        for codec in Compression::ALL {
            let mut builder = RecordBatchBuilder::new(1_000);
            for i in 0..50u32 {
                let value = format!("value {i} of a compressible batch");
                builder.push(
                    1_000 + i64::from(i),
                    Some(b"k"),
                    Some(value.as_bytes()),
                    &[],
                );
            }
            let buf = builder.build_compressed(codec).expect("builds").to_vec();
            let header = validate_batch(&buf).unwrap_or_else(|e| panic!("{codec}: {e}"));
            assert_eq!(header.compression().expect("known"), codec);
            assert_eq!(header.record_count, 50);
            assert_eq!(header.max_timestamp_ms, 1_049);
        }
    }

    #[test]
    fn a_compressed_batch_past_the_decompression_bound_is_refused() {
        let mut builder = RecordBatchBuilder::new(0);
        let zeros = vec![0u8; 256 * 1024];
        for _ in 0..8 {
            builder.push(0, None, Some(&zeros), &[]);
        }
        let buf = builder
            .build_compressed(Compression::Zstd)
            .expect("builds")
            .to_vec();
        assert!(buf.len() < 4096, "zeros compress: {} bytes", buf.len());
        assert!(matches!(
            validate_batch_within(&buf, 1024 * 1024),
            Err(LogError::DecompressedTooLarge {
                codec: Compression::Zstd,
                ..
            })
        ));
        validate_batch_within(&buf, 4 * 1024 * 1024).expect("fits a larger bound");
    }

    #[test]
    fn validate_rejects_truncated_and_padded_buffers() {
        let buf = one_record_batch();
        for len in 0..buf.len() {
            assert!(
                validate_batch(&buf[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut padded = buf.clone();
        padded.push(0);
        assert!(validate_batch(&padded).is_err());
    }

    #[test]
    fn validate_rejects_wrong_record_counts() {
        let mut builder = RecordBatchBuilder::new(0);
        builder.push(0, None, Some(b"a"), &[]);
        builder.push(1, None, Some(b"b"), &[]);
        let buf = builder.build().to_vec();
        for (count, last_delta) in [(1, 0), (3, 2), (2, 0), (0, -1)] {
            let mut bad = buf.clone();
            bad[57..61].copy_from_slice(&i32::to_be_bytes(count));
            bad[23..27].copy_from_slice(&i32::to_be_bytes(last_delta));
            rewrite_crc(&mut bad);
            assert!(
                matches!(validate_batch(&bad), Err(LogError::CorruptBatch { .. })),
                "count {count}, last delta {last_delta}"
            );
        }
    }

    #[test]
    fn validate_rejects_offset_deltas_out_of_order() {
        let mut builder = RecordBatchBuilder::new(0);
        builder.push(0, None, Some(b"a"), &[]);
        builder.push(0, None, Some(b"b"), &[]);
        let mut buf = builder.build().to_vec();
        // Second record: length, attributes, ts delta, offset delta (zig-zag 1 = 2).
        let second = BATCH_HEADER_BYTES + 1 + usize::from(buf[BATCH_HEADER_BYTES] / 2);
        assert_eq!(buf[second + 3], 2);
        buf[second + 3] = 4;
        rewrite_crc(&mut buf);
        assert!(validate_batch(&buf).is_err());
    }

    /// Found by the `record_batch` fuzz target: `last_offset` overflowed on a header whose base
    /// offset (outside the CRC) sat at the end of the `i64` range.
    #[test]
    fn headers_whose_last_offset_overflows_are_corrupt() {
        for (base, last_delta) in [(i64::MAX, 0), (i64::MAX - 1, 1), (i64::MIN, -1)] {
            let mut buf = one_record_batch();
            buf[0..8].copy_from_slice(&base.to_be_bytes());
            buf[23..27].copy_from_slice(&i32::to_be_bytes(last_delta));
            rewrite_crc(&mut buf);
            let parsed = BatchHeader::parse(&buf);
            assert!(
                matches!(parsed, Err(LogError::CorruptBatch { .. })),
                "base {base}, last delta {last_delta}"
            );
            assert!(verify_crc(&buf).is_err());
            assert_eq!(BatchIter::new(&buf).filter(Result::is_ok).count(), 0);
        }
        let mut near_end = one_record_batch();
        near_end[0..8].copy_from_slice(&(i64::MAX - 1).to_be_bytes());
        let header = validate_batch(&near_end).expect("the last offset still fits");
        assert_eq!(header.next_offset(), Offset(i64::MAX));
    }

    #[test]
    fn batch_iter_yields_whole_batches_then_one_error_for_a_torn_tail() {
        let one = one_record_batch();
        let mut buf = [one.clone(), one.clone(), one[..30].to_vec()].concat();
        let items: Vec<_> = BatchIter::new(&buf).collect();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[1].is_ok());
        assert!(items[2].is_err());

        buf.truncate(one.len() * 2);
        let sizes: Vec<usize> = BatchIter::new(&buf)
            .map(|item| item.expect("intact").1.len())
            .collect();
        assert_eq!(sizes, vec![one.len(), one.len()]);
    }

    #[test]
    fn batch_iter_stops_at_a_corrupt_batch() {
        let one = one_record_batch();
        let mut buf = [one.clone(), one.clone(), one.clone()].concat();
        let last = buf.len() - 1;
        buf[one.len() + 40] ^= 0xff;
        buf[last] ^= 0xff;
        let items: Vec<_> = BatchIter::new(&buf).collect();
        assert_eq!(items.len(), 2, "stops after the first error");
        assert!(items[0].is_ok() && items[1].is_err());
    }
}
