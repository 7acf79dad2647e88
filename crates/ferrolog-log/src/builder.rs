//! Builds RecordBatch v2 batches in memory (the producer side of the format), uncompressed or
//! with one of Kafka's codecs.

use bytes::{BufMut, BytesMut};

use crate::batch::{
    BATCH_HEADER_BYTES, BatchHeader, CONTROL_FLAG, CRC_START, LOG_OVERHEAD_BYTES, MAGIC_V2,
    TRANSACTIONAL_FLAG,
};
use crate::compression::{Compression, compress};
use crate::error::LogError;
use crate::record::Header;
use crate::varint::{put_varlong, varlong_len};

/// Kafka's "no producer id / epoch / sequence" marker: the batch is not idempotent.
const NO_PRODUCER: i64 = -1;
/// Written as the partition leader epoch until the leader stamps its own on append.
const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// Builds one v2 batch in memory; base offset written as 0 (the log assigns offsets on append).
pub struct RecordBatchBuilder {
    buf: BytesMut,
    base_timestamp_ms: i64,
    max_timestamp_ms: i64,
    record_count: u32,
    producer: ProducerFields,
    /// Transactional and control attribute bits; the codec bits are added on `build`.
    flags: i16,
}

/// The idempotence fields of a batch header: producer id, producer epoch and the sequence
/// number of the batch's first record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProducerFields {
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl ProducerFields {
    const NONE: ProducerFields = ProducerFields {
        producer_id: NO_PRODUCER,
        producer_epoch: NO_PRODUCER as i16,
        base_sequence: NO_PRODUCER as i32,
    };
}

fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varlong_len(-1),
        Some(bytes) => varlong_len(bytes.len() as i64) + bytes.len(),
    }
}

fn put_nullable(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varlong(buf, -1),
        Some(bytes) => {
            put_varlong(buf, bytes.len() as i64);
            buf.put_slice(bytes);
        }
    }
}

impl RecordBatchBuilder {
    /// Starts a batch whose record timestamps are stored relative to `base_timestamp_ms`.
    pub fn new(base_timestamp_ms: i64) -> Self {
        Self::with_capacity(base_timestamp_ms, 1024)
    }

    /// Like `new`, reserving `capacity_bytes` up front to avoid regrowth for large batches.
    pub fn with_capacity(base_timestamp_ms: i64, capacity_bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity_bytes.max(BATCH_HEADER_BYTES));
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        RecordBatchBuilder {
            buf,
            base_timestamp_ms,
            max_timestamp_ms: -1,
            record_count: 0,
            producer: ProducerFields::NONE,
            flags: 0,
        }
    }

    /// Stamps the batch as an idempotent producer's: its producer id, epoch and the sequence
    /// number of its first record (the log checks them on append). Without it the batch
    /// carries Kafka's "no producer" marker (-1) and the log checks nothing.
    pub fn with_producer(
        mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> Self {
        self.producer = ProducerFields {
            producer_id,
            producer_epoch,
            base_sequence,
        };
        self
    }

    /// Marks the batch as part of its producer's open transaction (attribute bit 0x10). Only
    /// meaningful with `with_producer`: the log refuses a transactional batch without a
    /// producer id as corrupt, since no marker could ever end its transaction.
    pub fn transactional(mut self) -> Self {
        self.flags |= TRANSACTIONAL_FLAG;
        self
    }

    /// Marks the batch as a control batch (a transaction marker); `control` builds them.
    pub(crate) fn control(mut self) -> Self {
        self.flags |= CONTROL_FLAG;
        self
    }

    /// Appends a record; timestamp_ms must be >= 0.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) {
        debug_assert!(timestamp_ms >= 0, "record timestamps must not be negative");
        let timestamp_delta_ms = timestamp_ms - self.base_timestamp_ms;
        let offset_delta = i64::from(self.record_count);
        let headers_len: usize = headers
            .iter()
            .map(|h| nullable_len(Some(h.key.as_bytes())) + nullable_len(h.value.as_deref()))
            .sum();
        let body_len = 1
            + varlong_len(timestamp_delta_ms)
            + varlong_len(offset_delta)
            + nullable_len(key)
            + nullable_len(value)
            + varlong_len(headers.len() as i64)
            + headers_len;
        self.buf.reserve(varlong_len(body_len as i64) + body_len);
        put_varlong(&mut self.buf, body_len as i64);
        self.buf.put_i8(0);
        put_varlong(&mut self.buf, timestamp_delta_ms);
        put_varlong(&mut self.buf, offset_delta);
        put_nullable(&mut self.buf, key);
        put_nullable(&mut self.buf, value);
        put_varlong(&mut self.buf, headers.len() as i64);
        for header in headers {
            put_nullable(&mut self.buf, Some(header.key.as_bytes()));
            put_nullable(&mut self.buf, header.value.as_deref());
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        self.record_count += 1;
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Bytes the finished batch would take (header + records), cheap.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Finishes: writes header fields (length, lastOffsetDelta, timestamps, producer id,
    /// epoch and base sequence (-1 unless `with_producer` set them), count), computes CRC-32C.
    pub fn build(self) -> BytesMut {
        let fields = self.header_fields();
        finish(self.buf, Compression::None, fields)
    }

    fn header_fields(&self) -> HeaderFields {
        HeaderFields {
            record_count: self.record_count,
            base_timestamp_ms: self.base_timestamp_ms,
            max_timestamp_ms: self.max_timestamp_ms,
            producer: self.producer,
            flags: self.flags,
        }
    }

    /// Finishes with the records section compressed by `codec` (the codec's id goes into the
    /// attributes); `Compression::None` is `build`.
    pub fn build_compressed(self, codec: Compression) -> Result<BytesMut, LogError> {
        if codec == Compression::None {
            return Ok(self.build());
        }
        let packed = compress(codec, &self.buf[BATCH_HEADER_BYTES..])?;
        Ok(self.finish_packed(codec, &packed))
    }

    fn finish_packed(self, codec: Compression, packed: &[u8]) -> BytesMut {
        let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + packed.len());
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        buf.put_slice(packed);
        finish(buf, codec, self.header_fields())
    }
}

/// Stamps producer id, epoch and base sequence on an already built batch (one whole batch,
/// uncompressed or not) and recomputes its CRC. A producer assigns sequences when it sends a
/// batch, not when it builds it, so it stamps them here; a retry sends the same stamp again.
pub fn set_producer_fields(
    batch: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<(), LogError> {
    let header = BatchHeader::parse(batch)?;
    if header.total_size_bytes() != batch.len() {
        return Err(LogError::corrupt(format!(
            "batch length says {} bytes but the buffer holds {}",
            header.total_size_bytes(),
            batch.len()
        )));
    }
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// The header fields `finish` writes besides length, codec and CRC.
struct HeaderFields {
    record_count: u32,
    base_timestamp_ms: i64,
    max_timestamp_ms: i64,
    producer: ProducerFields,
    flags: i16,
}

/// Compresses an uncompressed batch built by `RecordBatchBuilder::build` (or read from a log)
/// with `codec`: the same header with the codec in its attributes, a new length and CRC. A
/// producer seals batches uncompressed under its lock and compresses them here outside it.
pub fn compress_batch(batch: &[u8], codec: Compression) -> Result<BytesMut, LogError> {
    let header = crate::batch::verify_crc(batch)?;
    if header.compression()? != Compression::None {
        return Err(LogError::corrupt(format!(
            "batch is already compressed with {}",
            header.compression()?
        )));
    }
    let packed = compress(codec, &batch[BATCH_HEADER_BYTES..])?;
    let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + packed.len());
    buf.put_slice(&batch[..BATCH_HEADER_BYTES]);
    buf.put_slice(&packed);
    let attributes = (header.attributes & !0x07) | codec.id();
    let batch_length = (buf.len() - LOG_OVERHEAD_BYTES) as i32;
    buf[8..12].copy_from_slice(&batch_length.to_be_bytes());
    buf[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(buf)
}

/// Writes the header of a batch whose records section already follows it in `buf`, and its
/// CRC-32C.
fn finish(mut buf: BytesMut, codec: Compression, fields: HeaderFields) -> BytesMut {
    let batch_length = (buf.len() - LOG_OVERHEAD_BYTES) as i32;
    let count = fields.record_count as i32;
    let mut header = &mut buf[..BATCH_HEADER_BYTES];
    header.put_i64(0);
    header.put_i32(batch_length);
    header.put_i32(NO_PARTITION_LEADER_EPOCH);
    header.put_i8(MAGIC_V2);
    header.put_u32(0);
    header.put_i16(codec.id() | fields.flags);
    header.put_i32(count - 1);
    header.put_i64(fields.base_timestamp_ms);
    header.put_i64(fields.max_timestamp_ms);
    header.put_i64(fields.producer.producer_id);
    header.put_i16(fields.producer.producer_epoch);
    header.put_i32(fields.producer.base_sequence);
    header.put_i32(count);
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    buf
}

/// Marks an already built batch (one whole batch, uncompressed or not) as part of its
/// producer's open transaction (attribute bit 0x10, Kafka's `TRANSACTIONAL_FLAG_MASK`) and
/// recomputes its CRC. A transactional producer marks its batches when it sends them, beside
/// `set_producer_fields`, so the accumulator builds the same batches either way.
pub fn set_transactional(batch: &mut [u8]) -> Result<(), LogError> {
    /// Kafka's `TRANSACTIONAL_FLAG_MASK`.
    const TRANSACTIONAL_FLAG: i16 = 0x10;
    let header = BatchHeader::parse(batch)?;
    if header.total_size_bytes() != batch.len() {
        return Err(LogError::corrupt(format!(
            "batch length says {} bytes but the buffer holds {}",
            header.total_size_bytes(),
            batch.len()
        )));
    }
    let attributes = header.attributes | TRANSACTIONAL_FLAG;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate_batch;

    #[test]
    fn compressing_a_built_batch_equals_building_it_compressed() {
        let fill = |builder: &mut RecordBatchBuilder| {
            for i in 0..20u8 {
                builder.push(10 + i64::from(i), Some(&[i]), Some(&[i; 100]), &[]);
            }
        };
        for codec in Compression::ALL {
            let mut direct = RecordBatchBuilder::new(10);
            fill(&mut direct);
            let mut plain = RecordBatchBuilder::new(10);
            fill(&mut plain);
            let later = compress_batch(&plain.build(), codec).expect("compresses");
            assert_eq!(
                later,
                direct.build_compressed(codec).expect("builds"),
                "{codec}"
            );
            validate_batch(&later).expect("valid");
        }
    }

    #[test]
    fn producer_fields_survive_building_compressing_and_restamping() -> Result<(), LogError> {
        let mut builder = RecordBatchBuilder::new(10).with_producer(42, 3, 7);
        builder.push(10, Some(b"k"), Some(b"v"), &[]);
        builder.push(11, Some(b"k"), Some(b"w"), &[]);
        let built = builder.build();
        let header = validate_batch(&built)?;
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (42, 3, 7)
        );
        let compressed = compress_batch(&built, Compression::Zstd)?;
        let header = validate_batch(&compressed)?;
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (42, 3, 7)
        );
        let mut restamped = compressed.clone();
        set_producer_fields(&mut restamped, 9, 1, i32::MAX)?;
        let header = validate_batch(&restamped)?;
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (9, 1, i32::MAX),
            "the CRC was recomputed, so the batch still validates"
        );
        let mut plain = RecordBatchBuilder::new(10);
        plain.push(10, None, Some(b"v"), &[]);
        let header = validate_batch(&plain.build())?;
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (-1, -1, -1)
        );
        Ok(())
    }

    #[test]
    fn setting_producer_fields_refuses_a_partial_batch() {
        let mut builder = RecordBatchBuilder::new(10);
        builder.push(10, None, Some(b"v"), &[]);
        let mut built = builder.build();
        let len = built.len();
        assert!(set_producer_fields(&mut built[..len - 1], 1, 0, 0).is_err());
        assert!(set_producer_fields(&mut built[..20], 1, 0, 0).is_err());
    }

    #[test]
    fn size_bytes_predicts_the_finished_size() {
        let mut builder = RecordBatchBuilder::with_capacity(10, 0);
        assert!(builder.is_empty());
        assert_eq!(builder.size_bytes(), BATCH_HEADER_BYTES);
        let header = Header {
            key: "h".into(),
            value: None,
        };
        for i in 0..200u8 {
            let value = vec![i; usize::from(i)];
            builder.push(
                10 + i64::from(i),
                Some(&[i]),
                Some(&value),
                std::slice::from_ref(&header),
            );
        }
        let predicted = builder.size_bytes();
        let buf = builder.build();
        assert_eq!(buf.len(), predicted);
        let parsed = validate_batch(&buf).expect("valid");
        assert_eq!(parsed.record_count, 200);
        assert_eq!(parsed.max_timestamp_ms, 209);
    }
}
