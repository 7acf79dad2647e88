//! Transaction markers: the control batches a transaction coordinator has the partition
//! leader append to end a producer's transaction (Kafka's `EndTransactionMarker`).
//!
//! A marker is a RecordBatch v2 with the transactional (0x10) and control (0x20) attribute
//! bits, the producer's id and epoch, base sequence -1 (markers take no part in sequence
//! checks) and exactly one record, whose key and value are fixed-width big-endian fields:
//!
//! | part  | field             | type | value                         |
//! |-------|-------------------|------|-------------------------------|
//! | key   | version           | i16  | 0                             |
//! | key   | type              | i16  | 0 abort, 1 commit             |
//! | value | version           | i16  | 0                             |
//! | value | coordinator epoch | i32  | the coordinator's epoch       |
//!
//! Kafka's consumers read these bytes directly, so the layout is Kafka's to the byte.

use bytes::BytesMut;

use crate::batch::{BatchHeader, records_section, walk_records};
use crate::builder::RecordBatchBuilder;
use crate::compression::DEFAULT_MAX_DECOMPRESSED_BYTES;
use crate::error::LogError;

/// The only control record key version Kafka defines.
const CONTROL_KEY_VERSION: i16 = 0;
/// The only marker value version Kafka defines.
const MARKER_VALUE_VERSION: i16 = 0;
/// Key: version and type.
const CONTROL_KEY_BYTES: usize = 2 + 2;
/// Value: version and coordinator epoch.
const MARKER_VALUE_BYTES: usize = 2 + 4;
/// Sequence of a batch that takes no part in sequence checks.
const NO_SEQUENCE: i32 = -1;

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlType {
    /// The transaction's records are dropped by read_committed consumers.
    Abort,
    /// The transaction's records become visible to read_committed consumers.
    Commit,
}

impl ControlType {
    /// Kafka's control record type id.
    pub const fn id(self) -> i16 {
        match self {
            ControlType::Abort => 0,
            ControlType::Commit => 1,
        }
    }

    fn from_id(id: i16) -> Option<ControlType> {
        match id {
            0 => Some(ControlType::Abort),
            1 => Some(ControlType::Commit),
            _ => None,
        }
    }
}

/// Builds the marker that ends `producer_id`'s transaction, ready for `Log::append_batch`
/// (base offset 0 and leader epoch -1 until the log stamps them). Under transactions v2
/// (KIP-890) the coordinator passes the producer's bumped epoch: the partition then expects
/// the producer's next batch at that epoch and sequence 0.
pub fn build_control_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: ControlType,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> BytesMut {
    let mut key = [0u8; CONTROL_KEY_BYTES];
    key[..2].copy_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
    key[2..].copy_from_slice(&marker.id().to_be_bytes());
    let mut value = [0u8; MARKER_VALUE_BYTES];
    value[..2].copy_from_slice(&MARKER_VALUE_VERSION.to_be_bytes());
    value[2..].copy_from_slice(&coordinator_epoch.to_be_bytes());
    let mut builder = RecordBatchBuilder::with_capacity(timestamp_ms, 128)
        .with_producer(producer_id, producer_epoch, NO_SEQUENCE)
        .transactional()
        .control();
    // A negative timestamp cannot be a record's; Kafka's coordinator never writes one.
    builder.push(timestamp_ms.max(0), Some(&key), Some(&value), &[]);
    builder.build()
}

/// Reads the marker in a control batch (one whole batch, CRC already checked by the caller
/// or not: only the record is interpreted here): its type and coordinator epoch. `None` for
/// a batch without the control bit. A control batch with no record (one the cleaner
/// emptied), an unknown key version or type, or a malformed value is `CorruptBatch`.
pub fn parse_control_batch(batch: &[u8]) -> Result<Option<(ControlType, i32)>, LogError> {
    let header = BatchHeader::parse(batch)?;
    if !header.is_control() {
        return Ok(None);
    }
    if header.total_size_bytes() != batch.len() {
        return Err(LogError::corrupt(format!(
            "control batch length says {} bytes but the buffer holds {}",
            header.total_size_bytes(),
            batch.len()
        )));
    }
    if header.record_count < 1 {
        return Err(LogError::corrupt("control batch holds no record"));
    }
    let records = records_section(batch, &header, DEFAULT_MAX_DECOMPRESSED_BYTES)?;
    let mut marker = None;
    walk_records(&records, header.record_count, |record| {
        if marker.is_none() {
            marker = Some(parse_marker_record(record.key, record.value)?);
        }
        Ok(())
    })?;
    marker
        .map(Some)
        .ok_or_else(|| LogError::corrupt("control batch holds no record"))
}

fn parse_marker_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(ControlType, i32), LogError> {
    let Some(&[v0, v1, t0, t1]) = key else {
        return Err(LogError::corrupt(
            "control record key is not 4 bytes (version, type)",
        ));
    };
    let version = i16::from_be_bytes([v0, v1]);
    if version != CONTROL_KEY_VERSION {
        return Err(LogError::corrupt(format!(
            "unknown control record key version {version}"
        )));
    }
    let type_id = i16::from_be_bytes([t0, t1]);
    let Some(kind) = ControlType::from_id(type_id) else {
        return Err(LogError::corrupt(format!(
            "control record type {type_id} is not a transaction marker"
        )));
    };
    // Kafka reads the value's version and epoch and ignores anything after them, so that a
    // newer version may append fields.
    let value = value.unwrap_or_default();
    if value.len() < MARKER_VALUE_BYTES {
        return Err(LogError::corrupt(format!(
            "transaction marker value of {} bytes is shorter than {MARKER_VALUE_BYTES}",
            value.len()
        )));
    }
    let coordinator_epoch = i32::from_be_bytes([value[2], value[3], value[4], value[5]]);
    Ok((kind, coordinator_epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{CONTROL_FLAG, TRANSACTIONAL_FLAG, validate_batch};
    use crate::record::decode_records;

    #[test]
    fn a_marker_is_a_valid_transactional_control_batch_with_kafkas_record_layout()
    -> Result<(), LogError> {
        let batch = build_control_batch(42, 3, ControlType::Commit, 9, 1_700_000_000_000);
        let header = validate_batch(&batch)?;
        assert!(header.is_control() && header.is_transactional());
        assert_eq!(header.attributes, TRANSACTIONAL_FLAG | CONTROL_FLAG);
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (42, 3, -1)
        );
        assert_eq!((header.base_offset.0, header.record_count), (0, 1));
        let records = decode_records(&batch)?;
        assert_eq!(records[0].key.as_deref(), Some(&[0u8, 0, 0, 1][..]));
        assert_eq!(records[0].value.as_deref(), Some(&[0u8, 0, 0, 0, 0, 9][..]));
        Ok(())
    }

    #[test]
    fn markers_round_trip_and_data_batches_are_not_markers() -> Result<(), LogError> {
        for kind in [ControlType::Abort, ControlType::Commit] {
            let batch = build_control_batch(1, 0, kind, -5, 0);
            assert_eq!(parse_control_batch(&batch)?, Some((kind, -5)));
        }
        let mut builder = RecordBatchBuilder::new(0)
            .with_producer(1, 0, 0)
            .transactional();
        builder.push(0, Some(b"k"), Some(b"v"), &[]);
        let data = builder.build();
        let header = validate_batch(&data)?;
        assert!(header.is_transactional() && !header.is_control());
        assert_eq!(parse_control_batch(&data)?, None);
        Ok(())
    }

    #[test]
    fn a_control_batch_with_an_unknown_type_or_short_value_is_corrupt() {
        let mut builder = RecordBatchBuilder::new(0).with_producer(1, 0, -1).control();
        builder.push(0, Some(&[0, 0, 0, 7]), Some(&[0, 0, 0, 0, 0, 1]), &[]);
        assert!(parse_control_batch(&builder.build()).is_err());
        let mut builder = RecordBatchBuilder::new(0).with_producer(1, 0, -1).control();
        builder.push(0, Some(&[0, 0, 0, 0]), Some(&[0, 0]), &[]);
        assert!(parse_control_batch(&builder.build()).is_err());
        let mut builder = RecordBatchBuilder::new(0).with_producer(1, 0, -1).control();
        builder.push(0, None, None, &[]);
        assert!(parse_control_batch(&builder.build()).is_err());
    }
}
